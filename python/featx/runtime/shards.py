"""The output of an extraction job: shards of embeddings, a manifest, and errors.jsonl.

Layout of OUTDIR:
    features-00000.npy + ids-00000.json   (--format npy: float array (rows, D) and a JSON list
                                           of the input paths of those rows, in order)
    features-00000.parquet                (--format parquet: columns `id` and `embedding`, then
                                           the input's --keep-columns)
    manifest.json                         model and input fingerprints, settings, and for every
                                          finished shard its files, rows, sha256 and errors
    errors.jsonl                          one {"path", "reason"} per input that was not usable
    .featx.lock                           the running job's lock (featx.runtime.lock)

Shard k holds the usable images among inputs [k * shard_size, (k + 1) * shard_size). Every file
is written to a temporary name, flushed to disk and renamed; the manifest is replaced last, so a
shard exists for a reader (and for --resume) exactly when the manifest lists it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.runtime.errors import FeatxError
from featx.runtime.files import TMP_MARK, sha256_bytes, write_atomic

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
MANIFEST_FORMAT = 1
FORMATS = ("npy", "parquet")


@dataclass
class Manifest:
    """What an OUTDIR holds and which job produced it."""

    model: dict[str, Any]
    inputs: dict[str, Any]
    settings: dict[str, Any]
    featx_version: str
    shards: dict[int, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False

    def same_job(self, other: Manifest) -> list[str]:
        """What differs between this job and ``other`` (empty when they are the same job)."""
        differences = []
        if self.model["sha256"] != other.model["sha256"]:
            differences.append(f"model ({other.model['path']} vs {self.model['path']})")
        if self.inputs != other.inputs:
            differences.append(
                f"input list ({other.inputs['count']} inputs vs {self.inputs['count']}, "
                "or another order)"
            )
        for key, value in self.settings.items():
            if other.settings.get(key) != value:
                differences.append(f"{key} ({other.settings.get(key)} vs {value})")
        return differences

    def to_json(self) -> dict[str, Any]:
        return {
            "featx_manifest": MANIFEST_FORMAT,
            "featx_version": self.featx_version,
            "model": self.model,
            "inputs": self.inputs,
            "settings": self.settings,
            "complete": self.complete,
            "rows": sum(s["rows"] for s in self.shards.values()),
            "errors": sum(len(s["errors"]) for s in self.shards.values()),
            "shards": [self.shards[k] for k in sorted(self.shards)],
        }

    @classmethod
    def load(cls, out_dir: Path) -> Manifest | None:
        path = out_dir / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(
                model=data["model"],
                inputs=data["inputs"],
                settings=data["settings"],
                featx_version=data["featx_version"],
                shards={int(s["index"]): s for s in data["shards"]},
                complete=bool(data["complete"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise FeatxError(
                f"{path} is damaged ({type(err).__name__}: {err}); pass --overwrite to start "
                "this output folder afresh."
            ) from err

    def save(self, out_dir: Path) -> None:
        write_atomic(out_dir / MANIFEST, json.dumps(self.to_json(), indent=1).encode())
        errors = [e for k in sorted(self.shards) for e in self.shards[k]["errors"]]
        write_atomic(out_dir / ERRORS, "".join(json.dumps(e) + "\n" for e in errors).encode())


class ShardWriter:
    """Writes one shard's files atomically and returns its manifest entry."""

    def __init__(self, out_dir: Path, fmt: str, dtype: str):
        if fmt not in FORMATS:
            raise FeatxError(f"unknown format {fmt!r}; choose {' or '.join(FORMATS)}")
        if dtype not in ("float32", "float16"):
            raise FeatxError(f"unknown dtype {dtype!r}; choose float32 or float16")
        self.out_dir = out_dir
        self.fmt = fmt
        self.dtype = np.dtype(dtype)

    def file_names(self, index: int) -> dict[str, str]:
        if self.fmt == "npy":
            return {"features": f"features-{index:05d}.npy", "ids": f"ids-{index:05d}.json"}
        return {"features": f"features-{index:05d}.parquet"}

    def write(
        self,
        index: int,
        first_input: int,
        inputs: int,
        ids: list[str],
        features: np.ndarray,
        errors: list[dict[str, str]],
        kept_columns: Any = None,
    ) -> dict[str, Any]:
        """Writes shard ``index`` and returns its manifest entry; ``kept_columns`` (a pyarrow
        table, one row per id) go into parquet output beside the embeddings."""
        features = np.ascontiguousarray(features, dtype=self.dtype)
        names = self.file_names(index)
        payloads = (
            {"features": _npy_bytes(features), "ids": json.dumps(ids).encode()}
            if self.fmt == "npy"
            else {"features": _parquet_bytes(ids, features, kept_columns)}
        )
        written = []
        try:
            for key, data in payloads.items():
                write_atomic(self.out_dir / names[key], data)
                written.append(self.out_dir / names[key])
        except BaseException:
            for path in written:  # a shard is all its files or none
                path.unlink(missing_ok=True)
            raise
        return {
            "index": index,
            "first_input": first_input,
            "inputs": inputs,
            "rows": len(ids),
            "files": names,
            "sha256": {key: sha256_bytes(data) for key, data in payloads.items()},
            "errors": errors,
        }

    def verify(self, entry: dict[str, Any]) -> bool:
        """Whether a finished shard's files are all present and intact."""
        return _damaged_file(self.out_dir, entry, {}) is None


def _damaged_file(out_dir: Path, entry: dict[str, Any], payloads: dict[str, bytes]) -> Path | None:
    """The first of a finished shard's files that is missing or does not match its checksum in
    the manifest, or None; the intact contents read on the way land in ``payloads`` by key."""
    for key, name in entry["files"].items():
        path = out_dir / name
        data = path.read_bytes() if path.is_file() else None
        if data is None or sha256_bytes(data) != entry["sha256"][key]:
            return path
        payloads[key] = data
    return None


def _npy_bytes(features: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, features, allow_pickle=False)
    return buffer.getvalue()


def _parquet_bytes(ids: list[str], features: np.ndarray, kept_columns: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = features.shape[1] if features.ndim == 2 else 0
    values = pa.array(features.reshape(-1))
    columns = {
        "id": pa.array(ids, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(values, dim),
    }
    if kept_columns is not None:
        columns.update(zip(kept_columns.column_names, kept_columns.columns, strict=True))
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def remove_stale_temporaries(out_dir: Path) -> int:
    """Deletes temporary files a killed job left behind; returns how many."""
    stale = [p for p in out_dir.glob(".*") if TMP_MARK in p.name and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def read_features(out_dir: str | Path) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """Everything a finished (or partly finished) OUTDIR holds: ids and embeddings of every row,
    in input order, and the errors; shards are found through the manifest, checksums verified."""
    out = Path(out_dir)
    manifest = Manifest.load(out) if out.is_dir() else None
    if manifest is None:
        raise FeatxError(
            f"{out} holds no {MANIFEST}: it is not an output folder of `featx extract`"
        )
    if not manifest.shards:
        raise FeatxError(f"{out}: the manifest lists no finished shards; run featx extract first")
    ids: list[str] = []
    blocks: list[np.ndarray] = []
    errors: list[dict[str, str]] = []
    for index in sorted(manifest.shards):
        entry = manifest.shards[index]
        payloads: dict[str, bytes] = {}
        damaged = _damaged_file(out, entry, payloads)
        if damaged is not None:
            raise FeatxError(
                f"{damaged} is missing or does not match its checksum in the manifest; rerun "
                "featx extract on this folder to repair it"
            )
        shard_ids, features = _decode_shard(payloads)
        ids.extend(shard_ids)
        blocks.append(features)
        errors.extend(entry["errors"])
    return ids, np.concatenate(blocks).astype(np.float32, copy=False), errors


def _decode_shard(payloads: dict[str, bytes]) -> tuple[list[str], np.ndarray]:
    import io

    if "ids" in payloads:
        features = np.load(io.BytesIO(payloads["features"]), allow_pickle=False)
        return json.loads(payloads["ids"]), features
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(payloads["features"]))
    embeddings = table.column("embedding").combine_chunks()
    dim = embeddings.type.list_size
    features = embeddings.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return table.column("id").to_pylist(), features
