"""Parquet files as featx extract's input: one image per row, its encoded bytes in a column.

The image column is a binary column (img2dataset's ``jpg``) or a struct with a binary ``bytes``
field (Hugging Face's Image feature: ``{bytes, path}``); ``--image-column`` names it, and it is
detected when exactly one column has such a type. A row's id is its ``--id-column`` value, or
``FILE/ROW`` (the file's path, then the row's index in the file). Files are taken in the order
of featx.runtime.inputs, rows in file order.

Reading: the listing reads only each file's footer (and the id column, when one is named). The
pipeline's reading thread then calls the block reader of ParquetItems.pipeline_items, which reads
the image column with pyarrow one record batch at a time and hands the batch's data buffer and
value offsets to the C++ decoder as they are: no image is copied or touched in Python. Batches
hold about BLOCK_BYTES of images, so memory stays flat whatever the row groups' size.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featx.runtime.errors import FeatxError
from featx.runtime.pipeline import EncodedBlock, FallbackDecoder, PipelineItems

PARQUET_SUFFIX = ".parquet"
BLOCK_BYTES = 32 << 20
"""About how many bytes of encoded images one block (record batch) holds."""
MAX_BLOCK_ROWS = 1024
OUTPUT_COLUMNS = ("id", "embedding")
"""The columns featx writes itself; --keep-columns cannot add columns of these names."""


@dataclass(frozen=True)
class ParquetColumns:
    """Which columns of parquet input hold the image, the id and what is copied to the output."""

    image: str | None = None
    id: str | None = None
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParquetListing:
    """The rows of a list of parquet files: ids in order, rows known to be unusable (a null id),
    the fingerprint of the files and columns, and the reader of the rows' images."""

    ids: list[str]
    unusable: dict[int, str]
    fingerprint: str
    items: ParquetItems


def list_parquet(files: Sequence[str], columns: ParquetColumns) -> ParquetListing:
    """The rows of ``files``, with the image column found or checked (see the module doc)."""
    if not files:
        raise FeatxError("no parquet files to read")
    first = _open(files[0])
    image = columns.image or _detect_image_column(files[0], first.schema_arrow)
    layout = _ColumnLayout.of(files[0], first.schema_arrow, image, columns)
    ids: list[str] = []
    unusable: dict[int, str] = {}
    group_rows: list[list[int]] = []
    digest = hashlib.sha256(f"image={image}\0id={columns.id}\0".encode())
    for index, path in enumerate(files):
        parquet = first if index == 0 else _open(path)
        if index:
            layout.check(path, parquet.schema_arrow)
        metadata = parquet.metadata
        rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        group_rows.append(rows)
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{rows}\0".encode())
        if columns.id is None:
            ids.extend(f"{path}/{row}" for row in range(metadata.num_rows))
        else:
            ids.extend(_read_ids(parquet, path, columns.id, len(ids), unusable))
    for row_id in ids:
        digest.update(row_id.encode("utf-8", "surrogateescape") + b"\0")
    kept = pa.schema([(name, layout.named[name]) for name in columns.keep])
    items = ParquetItems(list(files), group_rows, image, layout.image_type, kept)
    return ParquetListing(ids, unusable, digest.hexdigest(), items)


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise FeatxError(
            f"{path} is not a readable parquet file ({err}); check that it was written "
            "completely, or leave it out of INPUT."
        ) from err


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _bytes_field(kind: pa.DataType) -> int | None:
    """The index of a struct's binary ``bytes`` field (Hugging Face's Image feature), or None."""
    if not pa.types.is_struct(kind):
        return None
    index = kind.get_field_index("bytes")
    return index if index >= 0 and _is_binary(kind.field(index).type) else None


def _path_field(kind: pa.DataType) -> int | None:
    """The index of a struct's string ``path`` field (Hugging Face's Image feature), or None."""
    if not pa.types.is_struct(kind):
        return None
    index = kind.get_field_index("path")
    return index if index >= 0 and pa.types.is_string(kind.field(index).type) else None


def _detect_image_column(path: str, schema: pa.Schema) -> str:
    candidates = [f.name for f in schema if _is_binary(f.type) or _bytes_field(f.type) is not None]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise FeatxError(
            f"{path} has several columns that may hold images ({', '.join(candidates)}); "
            "choose one with --image-column."
        )
    described = ", ".join(f"{f.name} ({f.type})" for f in schema)
    raise FeatxError(
        f"{path} has no image column: featx reads encoded images from a binary column or a "
        f"struct with a binary 'bytes' field (Hugging Face's Image feature). Its columns: "
        f"{described}."
    )


@dataclass(frozen=True)
class _ColumnLayout:
    """The columns a job reads, as the first file has them; every other file must match."""

    image: str
    image_type: pa.DataType
    named: dict[str, pa.DataType]

    @classmethod
    def of(cls, path: str, schema: pa.Schema, image: str, columns: ParquetColumns) -> _ColumnLayout:
        clashing = [name for name in columns.keep if name in OUTPUT_COLUMNS]
        if clashing:
            raise FeatxError(
                f"--keep-columns cannot copy a column named {clashing[0]!r}: the output has its "
                f"own {' and '.join(OUTPUT_COLUMNS)} columns."
            )
        names = [image, *([columns.id] if columns.id else []), *columns.keep]
        missing = [name for name in names if schema.get_field_index(name) < 0]
        if missing:
            raise FeatxError(
                f"{path} has no column {missing[0]!r}; its columns are {', '.join(schema.names)}."
            )
        image_type = schema.field(image).type
        if not _is_binary(image_type) and _bytes_field(image_type) is None:
            raise FeatxError(
                f"{path}: column {image!r} is {image_type}; an image column is binary, or a "
                "struct with a binary 'bytes' field (Hugging Face's Image feature)."
            )
        return cls(image, image_type, {n: schema.field(n).type for n in names})

    def check(self, path: str, schema: pa.Schema) -> None:
        for name, kind in self.named.items():
            index = schema.get_field_index(name)
            if index < 0 or schema.field(index).type != kind:
                found = "no such column" if index < 0 else f"type {schema.field(index).type}"
                raise FeatxError(
                    f"{path}: column {name!r} has {found}, but {kind} in the first file; all "
                    "parquet files of one job need the same columns."
                )


def _read_ids(
    parquet: pq.ParquetFile, path: str, column: str, first: int, unusable: dict[int, str]
) -> list[str]:
    try:
        values = parquet.read(columns=[column]).column(0).to_pylist()
    except (OSError, pa.ArrowException) as err:
        raise FeatxError(f"cannot read the id column {column!r} of {path}: {err}") from err
    ids = []
    for row, value in enumerate(values):
        if value is None:
            unusable[first + row] = f"the id column {column!r} is null in this row"
            ids.append(f"{path}/{row}")
        else:
            ids.append(str(value))
    return ids


class ParquetItems:
    """The images of a job's parquet rows, for the pipeline, and the columns kept beside them.
    Input i is row i of the files' rows in order."""

    def __init__(
        self,
        files: list[str],
        group_rows: list[list[int]],
        image_column: str,
        image_type: pa.DataType,
        kept_schema: pa.Schema,
    ):
        self.files = files
        self.image_column = image_column
        self.bytes_field = _bytes_field(image_type)
        self.path_field = _path_field(image_type)
        self.kept_schema = kept_schema
        counts = [n for rows in group_rows for n in rows]
        self._group_file = np.repeat(np.arange(len(files)), [len(r) for r in group_rows])
        self._group_index = np.concatenate([np.arange(len(r)) for r in group_rows])
        self._group_starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._kept_cache: tuple[int, pa.Table] | None = None

    def pipeline_items(self, order: list[int], fallback: FallbackDecoder | None) -> PipelineItems:
        """Pipeline items reading inputs ``order`` from their record batches."""
        blocks = self._blocks(self._runs(order))
        return PipelineItems([], blocks=functools.partial(next, blocks, None), fallback=fallback)

    def _runs(self, order: list[int]) -> list[tuple[int, int, int]]:
        """``order`` as runs of consecutive rows of one row group: (row group, first row, stop
        row), rows counted within the row group."""
        if not order:
            return []
        inputs = np.asarray(order, dtype=np.int64)
        groups = np.searchsorted(self._group_starts, inputs, side="right") - 1
        breaks = np.flatnonzero((np.diff(inputs) != 1) | (np.diff(groups) != 0)) + 1
        firsts = np.concatenate([[0], breaks])
        lasts = np.concatenate([breaks, [len(inputs)]]) - 1
        starts = self._group_starts[groups[firsts]]
        return [
            (int(g), int(a - s), int(b - s + 1))
            for g, a, b, s in zip(
                groups[firsts], inputs[firsts], inputs[lasts], starts, strict=True
            )
        ]

    def _where(self, group: int) -> tuple[str, int]:
        return self.files[int(self._group_file[group])], int(self._group_index[group])

    def _blocks(self, runs: list[tuple[int, int, int]]) -> Iterator[EncodedBlock]:
        """The blocks of ``runs`` in order; a row group that cannot be read (damaged pages, a
        file changed meanwhile) is a block of errors for the rows left in its run."""
        opened: tuple[str, pq.ParquetFile] | None = None
        for group, start, stop in runs:
            path, row_group = self._where(group)
            done = start
            try:
                if opened is None or opened[0] != path:
                    opened = (path, pq.ParquetFile(path))
                parquet = opened[1]
                position = 0
                batches = parquet.iter_batches(
                    batch_size=self._block_rows(parquet, row_group),
                    row_groups=[row_group],
                    columns=[self.image_column],
                    use_threads=False,
                )
                for batch in batches:
                    first, position = position, position + batch.num_rows
                    if position <= done:
                        continue
                    piece = batch.column(0).slice(done - first, min(stop, position) - done)
                    done += len(piece)
                    yield from self._piece_blocks(piece, path)
                    if done == stop:
                        break
                if done < stop:
                    raise FeatxError(f"the row group ended after {position} rows")
            except (OSError, pa.ArrowException, FeatxError) as err:
                opened = None
                yield stop - done, f"cannot read row group {row_group} of {path}: {err}"

    def _block_rows(self, parquet: pq.ParquetFile, row_group: int) -> int:
        """Rows per record batch such that a batch holds about BLOCK_BYTES of images."""
        metadata = parquet.metadata.row_group(row_group)
        image_bytes = sum(
            metadata.column(c).total_uncompressed_size
            for c in range(metadata.num_columns)
            if metadata.column(c).path_in_schema.split(".")[0] == self.image_column
        )
        per_row = max(image_bytes // max(metadata.num_rows, 1), 1)
        return int(min(max(BLOCK_BYTES // per_row, 1), MAX_BLOCK_ROWS))

    def _piece_blocks(self, piece: pa.Array, parquet_path: str) -> Iterator[EncodedBlock]:
        """The blocks of one slice of the image column. A Hugging Face Image value may hold a
        path instead of bytes (``Dataset.to_parquet`` of images loaded from files writes them
        so): such rows are read from that file (relative to the parquet file's folder), one
        block each; the rest stay zero-copy views of the batch."""
        if self.bytes_field is None:
            yield _encoded(piece)
            return
        fields = piece.flatten()  # with the struct's offset and nulls
        images = fields[self.bytes_field]
        if self.path_field is None or not images.null_count:
            yield _encoded(images)
            return
        paths = fields[self.path_field]
        by_path = images.is_null().to_numpy(zero_copy_only=False) & paths.is_valid().to_numpy(
            zero_copy_only=False
        )
        edges = [0, *(np.flatnonzero(np.diff(by_path)) + 1).tolist(), len(by_path)]
        folder = Path(parquet_path).parent
        for first, stop in itertools.pairwise(edges):
            if not by_path[first]:
                yield _encoded(images.slice(first, stop - first))
                continue
            for row in range(first, stop):
                yield _file_block(paths[row].as_py(), folder)

    def kept_columns(self, inputs: list[int]) -> pa.Table:
        """The --keep-columns values of ``inputs`` (ascending), one row each."""
        rows = np.asarray(inputs, dtype=np.int64)
        groups = np.searchsorted(self._group_starts, rows, side="right") - 1
        pieces = []
        for group in np.unique(groups):
            local = rows[groups == group] - self._group_starts[group]
            pieces.append(self._kept_group(int(group)).take(pa.array(local)))
        return pa.concat_tables(pieces) if pieces else self.kept_schema.empty_table()

    def _kept_group(self, group: int) -> pa.Table:
        """The kept columns of one row group; the last one read is cached, since consecutive
        shards share row groups."""
        if self._kept_cache is not None and self._kept_cache[0] == group:
            return self._kept_cache[1]
        path, row_group = self._where(group)
        try:
            table = pq.ParquetFile(path).read_row_group(row_group, columns=self.kept_schema.names)
        except (OSError, pa.ArrowException) as err:
            raise FeatxError(
                f"cannot read the --keep-columns of row group {row_group} of {path}: {err}"
            ) from err
        self._kept_cache = (group, table)
        return table


def _encoded(values: pa.Array) -> tuple[Any, np.ndarray, np.ndarray]:
    """A block of the C++ pipeline over a binary array's own buffers: the data buffer, and each
    row's start and size in it (-1 for a null)."""
    offset_type = np.int64 if pa.types.is_large_binary(values.type) else np.int32
    _, offsets_buffer, data = values.buffers()
    offsets = np.frombuffer(offsets_buffer, offset_type)[
        values.offset : values.offset + len(values) + 1
    ]
    starts = offsets[:-1].astype(np.int64)
    sizes = np.diff(offsets).astype(np.int64)
    if values.null_count:
        sizes[values.is_null().to_numpy(zero_copy_only=False)] = -1
    return (data if data is not None else b""), starts, sizes


def _file_block(path: str, folder: Path) -> EncodedBlock:
    """The one-row block of an image that a parquet row names by path."""
    resolved = Path(path) if Path(path).is_absolute() else folder / path
    try:
        data = resolved.read_bytes()
    except OSError as err:
        return 1, f"the row holds no image bytes but the path {path}, which cannot be read: {err}"
    return data, np.zeros(1, np.int64), np.array([len(data)], np.int64)
