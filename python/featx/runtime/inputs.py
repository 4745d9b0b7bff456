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
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from braceexpand import braceexpand

from featx.runtime.errors import FeatxError
from featx.runtime.native import native

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
TAR_SUFFIX = ".tar"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "jpe", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
"""A tar sample's image member: its member with the first of these extensions (--image-ext)."""


@dataclass
class Inputs:
    """A job's inputs in order. Input i is named ``ids[i]`` in the output and read from
    ``files[i]``: the whole file, or with ``offsets``/``sizes`` the byte range of a tar member.
    ``unusable`` maps inputs known to be unusable from the listing (a tar sample without an
    image, a truncated tar) to the reason."""

    ids: list[str]
    files: list[str]
    fingerprint: str
    offsets: list[int] | None = None
    sizes: list[int] | None = None
    unusable: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def ranges(self, order: list[int]) -> tuple[list[int], list[int]]:
        """The byte ranges (offsets, sizes) of inputs ``order``; empty lists when every input is
        a whole file."""
        if self.offsets is None or self.sizes is None:
            return [], []
        return [self.offsets[i] for i in order], [self.sizes[i] for i in order]


def read_inputs(
    source: str | Path | Sequence[str | Path], image_extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> Inputs:
    """The inputs named by ``source`` (see the module doc; a sequence is a list of image files)."""
    if not isinstance(source, (str, Path)):
        paths = [str(p) for p in source]
        return Inputs(paths, paths, inputs_fingerprint(paths))
    names, shards = _named_files(source)
    if not shards:
        return Inputs(names, names, inputs_fingerprint(names))
    extensions = [e.lower().lstrip(".") for e in image_extensions if e.strip(" .")]
    if not extensions:
        raise FeatxError("--image-ext names no extension; give e.g. jpg,png")
    return _tar_inputs(names, extensions)


def list_inputs(source: str | Path) -> list[str]:
    """The image paths named by ``source``, in featx's documented order."""
    names, shards = _named_files(source)
    if shards:
        raise FeatxError(f"{source} names {TAR_SUFFIX} shards, not image files")
    return names


def _named_files(source: str | Path) -> tuple[list[str], bool]:
    """The files ``source`` names, in order, and whether they are tar shards (else images);
    the source is read once (a folder walked once, a list file read once)."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        found = [
            p
            for p in path.rglob("*")
            if (p.suffix == TAR_SUFFIX or p.suffix.lower() in IMAGE_SUFFIXES) and not p.is_dir()
        ]
        found.sort(key=lambda p: p.relative_to(path).as_posix())
        tars = [str(p) for p in found if p.suffix == TAR_SUFFIX]
        if tars and len(tars) != len(found):
            raise FeatxError(
                f"{path} holds both image files and {TAR_SUFFIX} shards; point INPUT at one "
                "kind (a folder of images, or the shards: a pattern or a list file of them)."
            )
        return (tars, True) if tars else ([str(p) for p in found], False)
    if path.is_file() and path.suffix == TAR_SUFFIX:
        return [text], True
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        entries = _read_list(path)
        tars = [e for e in entries if e.endswith(TAR_SUFFIX)]
        if tars and len(tars) != len(entries):
            raise FeatxError(
                f"{path} lists both {TAR_SUFFIX} shards and other files; a list file names "
                "images or shards, not both."
            )
        return (_existing(tars, text), True) if tars else (entries, False)
    if "{" in text and text.endswith(TAR_SUFFIX):
        return _existing(list(braceexpand(text)), text), True
    if glob.has_magic(text):
        shards = text.endswith(TAR_SUFFIX)
        matches = sorted(
            m
            for m in glob.glob(text, recursive=True)
            if (m.endswith(TAR_SUFFIX) if shards else Path(m).suffix.lower() in IMAGE_SUFFIXES)
            and not Path(m).is_dir()
        )
        if not matches:
            kind = f"{TAR_SUFFIX}" if shards else "image"
            raise FeatxError(f"the pattern {text!r} matches no {kind} files")
        return matches, shards
    if path.is_file():
        raise FeatxError(
            f"{path} is a single file; INPUT is a folder, a glob pattern (quote it) or a list "
            f"file ({', '.join(sorted(LIST_SUFFIXES))}) with one path per line, or {TAR_SUFFIX} "
            "shards."
        )
    raise FeatxError(
        f"input {text!r} does not exist (expected a folder, a glob, a list file or "
        f"{TAR_SUFFIX} shards)"
    )


def _existing(tars: list[str], named_by: str) -> list[str]:
    missing = [t for t in tars if not Path(t).is_file()]
    if missing:
        raise FeatxError(
            f"{named_by} names {len(missing)} shards that do not exist ({missing[0]}, ...); "
            "fix the pattern or the list."
        )
    return tars


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
    return Inputs(
        ids,
        files,
        digest.hexdigest(),
        np.concatenate(offsets).tolist(),
        np.concatenate(sizes).tolist(),
        unusable,
    )


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
