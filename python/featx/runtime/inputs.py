"""Which images a job reads, in which order.

INPUT is a directory (searched recursively), a glob pattern, or a text file listing paths.
Ordering is stable and documented: a directory's images sorted by their path relative to it
(compared as strings, '/'-separated); a glob's matches sorted; a list file's paths in file order
(relative paths are relative to the list file's folder; blank lines and lines starting with '#'
are skipped). Directories and globs take files with an image suffix (case-insensitive); a list
file is taken as is, so whatever it names is accounted for, as an image or as an error.

WebDataset tar shards are an INPUT too: a ``.tar`` file, a folder holding ``.tar`` files (and no
images), a brace or glob pattern of them (``data/{00000..00099}.tar``), or a list file of them.
Shards are taken in the order above, and the samples of each in file order; a sample's id is
``SHARD/KEY`` (its tar's path, then its WebDataset key). The tar headers are indexed once by
the C++ module (featx._runner.index_webdataset); the pipeline reads each sample's image by byte
range, so nothing is extracted and no Python runs per sample on the way to the model.

Parquet files with a column of encoded images are an INPUT the same ways (a ``.parquet`` file, a
folder of them, a pattern, a list file); featx.runtime.parquet says which columns are read. A
folder holding ``.tar`` shards is read as shards even with ``.parquet`` files beside them (the
metadata tables img2dataset writes next to its tars).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from braceexpand import braceexpand

from featx.runtime.errors import FeatxError
from featx.runtime.native import native
from featx.runtime.parquet import PARQUET_SUFFIX, ParquetColumns, list_parquet
from featx.runtime.pipeline import FallbackDecoder, PipelineItems

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
TAR_SUFFIX = ".tar"
IMAGES = "images"
SHARD_KINDS = {TAR_SUFFIX: "tar", PARQUET_SUFFIX: "parquet"}
"""What a file of each suffix holds many images of, by name."""
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "jpe", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
"""A tar sample's image member: its member with the first of these extensions (--image-ext)."""


class ItemReader(Protocol):
    """How a job's inputs reach the C++ pipeline."""

    def pipeline_items(
        self, order: list[int], fallback: FallbackDecoder | None
    ) -> PipelineItems: ...


@dataclass(frozen=True)
class FileItems:
    """Input i is the whole file ``files[i]``."""

    files: list[str]

    def pipeline_items(self, order: list[int], fallback: FallbackDecoder | None) -> PipelineItems:
        return PipelineItems([self.files[i] for i in order], fallback=fallback)


@dataclass(frozen=True)
class RangeItems:
    """Input i is the ``sizes[i]`` bytes at ``offsets[i]`` of ``files[i]`` (a tar member; a
    negative size: an input known to be unusable)."""

    files: list[str]
    offsets: list[int]
    sizes: list[int]

    def pipeline_items(self, order: list[int], fallback: FallbackDecoder | None) -> PipelineItems:
        return PipelineItems(
            [self.files[i] for i in order],
            [self.offsets[i] for i in order],
            [self.sizes[i] for i in order],
            fallback=fallback,
        )


@dataclass
class Inputs:
    """A job's inputs in order: input i is named ``ids[i]`` in the output and read through
    ``items``. ``unusable`` maps inputs known to be unusable from the listing (a tar sample
    without an image, a truncated tar, a parquet row without an id) to the reason.
    ``kept_columns(inputs)``, for parquet input with --keep-columns, returns those columns'
    values of ``inputs`` (a pyarrow table)."""

    ids: list[str]
    fingerprint: str
    items: ItemReader
    unusable: dict[int, str] = field(default_factory=dict)
    kept_columns: Callable[[list[int]], Any] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def read_inputs(
    source: str | Path | Sequence[str | Path],
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    columns: ParquetColumns | None = None,
) -> Inputs:
    """The inputs named by ``source`` (see the module doc; a sequence is a list of image files).
    ``image_extensions`` choose a tar sample's image member; ``columns`` name parquet input's
    image, id and kept columns."""
    if not isinstance(source, (str, Path)):
        paths = [str(p) for p in source]
        kind = IMAGES
    else:
        paths, kind = _named_files(source)
    columns = columns or ParquetColumns()
    if kind != "parquet" and columns != ParquetColumns():
        raise FeatxError(
            f"--image-column, --id-column and --keep-columns apply to parquet input; {source} "
            f"names {kind} files"
        )
    if kind == IMAGES:
        return Inputs(paths, inputs_fingerprint(paths), FileItems(paths))
    if kind == "parquet":
        listing = list_parquet(paths, columns)
        kept = listing.items.kept_columns if columns.keep else None
        return Inputs(listing.ids, listing.fingerprint, listing.items, listing.unusable, kept)
    extensions = [e.lower().lstrip(".") for e in image_extensions if e.strip(" .")]
    if not extensions:
        raise FeatxError("--image-ext names no extension; give e.g. jpg,png")
    return _tar_inputs(paths, extensions)


def list_inputs(source: str | Path) -> list[str]:
    """The image paths named by ``source``, in featx's documented order."""
    names, kind = _named_files(source)
    if kind != IMAGES:
        raise FeatxError(f"{source} names {kind} files, not image files")
    return names


def _named_files(source: str | Path) -> tuple[list[str], str]:
    """The files ``source`` names, in order, and what they are: IMAGES, or the kind of shard
    file (SHARD_KINDS) holding many images each; the source is read once (a folder walked once,
    a list file read once)."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        found = [
            p
            for p in path.rglob("*")
            if (p.suffix in SHARD_KINDS or p.suffix.lower() in IMAGE_SUFFIXES) and not p.is_dir()
        ]
        found.sort(key=lambda p: p.relative_to(path).as_posix())
        by_kind: dict[str, list[str]] = {}
        for p in found:
            by_kind.setdefault(SHARD_KINDS.get(p.suffix, IMAGES), []).append(str(p))
        if "tar" in by_kind:
            by_kind.pop("parquet", None)  # img2dataset's metadata tables beside its tars
        if len(by_kind) > 1:
            kinds = " and ".join(sorted(by_kind))
            raise FeatxError(
                f"{path} holds both {kinds} files; point INPUT at one kind (a folder of images, "
                "or the shards: a pattern or a list file of them)."
            )
        kind, names = next(iter(by_kind.items()), (IMAGES, []))
        return names, kind
    if path.is_file() and path.suffix in SHARD_KINDS:
        return [text], SHARD_KINDS[path.suffix]
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        entries = _read_list(path)
        kinds = {SHARD_KINDS.get(Path(e).suffix, IMAGES) for e in entries}
        if len(kinds) > 1:
            raise FeatxError(
                f"{path} lists both {' and '.join(sorted(kinds))} files; a list file names "
                "images or shards of one kind, not several."
            )
        kind = kinds.pop() if kinds else IMAGES
        return (entries if kind == IMAGES else _existing(entries, text)), kind
    shard_kind = SHARD_KINDS.get(Path(text).suffix)
    if "{" in text and shard_kind:
        return _existing(list(braceexpand(text)), text), shard_kind
    if glob.has_magic(text):
        suffix = Path(text).suffix if shard_kind else None
        matches = sorted(
            m
            for m in glob.glob(text, recursive=True)
            if (m.endswith(suffix) if suffix else Path(m).suffix.lower() in IMAGE_SUFFIXES)
            and not Path(m).is_dir()
        )
        if not matches:
            raise FeatxError(f"the pattern {text!r} matches no {suffix or 'image'} files")
        return matches, shard_kind or IMAGES
    if path.is_file():
        raise FeatxError(
            f"{path} is a single file; INPUT is a folder, a glob pattern (quote it) or a list "
            f"file ({', '.join(sorted(LIST_SUFFIXES))}) with one path per line, or "
            f"{TAR_SUFFIX} / {PARQUET_SUFFIX} shards."
        )
    raise FeatxError(
        f"input {text!r} does not exist (expected a folder, a glob, a list file, or "
        f"{TAR_SUFFIX} / {PARQUET_SUFFIX} shards)"
    )


def _existing(shards: list[str], named_by: str) -> list[str]:
    missing = [t for t in shards if not Path(t).is_file()]
    if missing:
        raise FeatxError(
            f"{named_by} names {len(missing)} shards that do not exist ({missing[0]}, ...); "
            "fix the pattern or the list."
        )
    return shards


def _tar_inputs(shards: list[str], image_extensions: list[str]) -> Inputs:
    ids: list[str] = []
    files: list[str] = []
    offsets: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    unusable: dict[int, str] = {}
    digest = hashlib.sha256()
    for shard in shards:
        try:
            keys, shard_offsets, shard_sizes, errors = native().index_webdataset(
                shard, image_extensions
            )
        except RuntimeError as err:
            raise FeatxError(f"cannot read the shard {err}") from err
        stat = os.stat(shard)
        digest.update(f"{shard}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        digest.update(shard_offsets.tobytes() + shard_sizes.tobytes())
        unusable.update({len(ids) + index: reason for index, reason in errors.items()})
        ids.extend(f"{shard}/{key}" for key in keys)
        files.extend([shard] * len(keys))
        offsets.append(shard_offsets)
        sizes.append(shard_sizes)
    for sample_id in ids:
        digest.update(sample_id.encode("utf-8", "surrogateescape") + b"\0")
    items = RangeItems(files, np.concatenate(offsets).tolist(), np.concatenate(sizes).tolist())
    return Inputs(ids, digest.hexdigest(), items, unusable)


def read_label_rows(path: Path) -> list[list[str]]:
    """The rows of a ``path,label`` CSV: empty rows and rows starting with '#' skipped, and an
    optional ``path,label`` header dropped. Shapes are left to the caller to check."""
    with path.open(newline="") as stream:
        rows = [row for row in csv.reader(stream) if row and not row[0].startswith("#")]
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    return rows


def _read_list(list_file: Path) -> list[str]:
    base = list_file.parent
    paths = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        paths.append(entry if Path(entry).is_absolute() else str(base / entry))
    return paths


def inputs_fingerprint(paths: list[str]) -> str:
    """sha256 of the ordered path list: two jobs agree on it only for the same inputs in the
    same order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()
