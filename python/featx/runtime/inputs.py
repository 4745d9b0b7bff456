"""Which images a job reads, in which order.

INPUT is a directory (searched recursively), a glob pattern, or a text file listing paths.
Ordering is stable and documented: a directory's images sorted by their path relative to it
(compared as strings, '/'-separated); a glob's matches sorted; a list file's paths in file order
(relative paths are relative to the list file's folder; blank lines and lines starting with '#'
are skipped). Directories and globs take files with an image suffix (case-insensitive); a list
file is taken as is, so whatever it names is accounted for, as an image or as an error.
"""

from __future__ import annotations

import csv
import glob
import hashlib
from pathlib import Path

from featx.runtime.errors import FeatxError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


def read_label_rows(path: Path) -> list[list[str]]:
    """The rows of a ``path,label`` CSV: empty rows and rows starting with '#' skipped, and an
    optional ``path,label`` header dropped. Shapes are left to the caller to check."""
    with path.open(newline="") as stream:
        rows = [row for row in csv.reader(stream) if row and not row[0].startswith("#")]
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    return rows


def list_inputs(source: str | Path) -> list[str]:
    """The image paths named by ``source``, in featx's documented order."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        found = [
            p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()
        ]
        return [str(p) for p in sorted(found, key=lambda p: p.relative_to(path).as_posix())]
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    if glob.has_magic(text):
        matches = sorted(
            m
            for m in glob.glob(text, recursive=True)
            if Path(m).suffix.lower() in IMAGE_SUFFIXES and not Path(m).is_dir()
        )
        if not matches:
            raise FeatxError(f"the pattern {text!r} matches no image files")
        return matches
    if path.is_file():
        raise FeatxError(
            f"{path} is a single file; INPUT is a folder, a glob pattern (quote it) or a list "
            f"file ({', '.join(sorted(LIST_SUFFIXES))}) with one path per line."
        )
    raise FeatxError(f"input {text!r} does not exist (expected a folder, a glob or a list file)")


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
