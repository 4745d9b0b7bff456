"""featx's side of the extraction cases: the C++ decode + preprocess stage and the whole
`featx extract` job, each as one unit of work the harness times.

Each mirrors a baseline in featx.bench.eager, so the two can be set side by side.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from featx.runtime.extract import extract
from featx.runtime.metadata import Preprocess
from featx.runtime.native import native
from featx.runtime.pipeline import spec_dict


def cpp_preprocess_pass(
    paths: Sequence[str | Path], preprocess: Preprocess
) -> Callable[[], list[np.ndarray]]:
    """One pass of the C++ decode + preprocess over ``paths``, one image at a time on the calling
    thread (the counterpart of eager.pil_preprocess_pass); each call returns the tensors."""
    files = [str(path) for path in paths]
    spec = spec_dict(preprocess)
    runner = native()

    def run() -> list[np.ndarray]:
        tensors = []
        for path in files:
            status, message, tensor = runner.preprocess_file(path, spec)
            if status != "ok":
                raise ValueError(f"{path}: {status}: {message}")
            tensors.append(tensor)
        return tensors

    return run


def featx_extract_job(
    onnx_path: str | Path,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int,
    device: str = "cpu",
) -> Callable[[], None]:
    """A whole `featx extract` job (decode to saved shards) into a fresh ``out_dir``, session
    creation included as users pay it (featx.shards.read_features reads the result).
    ``inputs``: image files, or what featx extract's INPUT takes (tar shards)."""
    out_dir = Path(out_dir)
    source = inputs if isinstance(inputs, (str, Path)) else [str(path) for path in inputs]

    def run() -> None:
        shutil.rmtree(out_dir, ignore_errors=True)
        summary = extract(
            onnx_path, source, out_dir, batch_size=batch_size, device=device, progress=False
        )
        if summary.errors:
            raise ValueError(
                f"{summary.errors} benchmark images failed; see {out_dir}/errors.jsonl"
            )

    return run


def webdataset_shard(paths: Sequence[str | Path], tar_path: Path) -> Path:
    """``paths`` as one WebDataset shard in their order (img2dataset's layout: KEY.jpg and
    KEY.json per sample, keys 000000000, ...), written once; the extraction reads it in place."""
    if tar_path.exists():
        return tar_path
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    partial = tar_path.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        for index, path in enumerate(paths):
            key = f"{index:09d}"
            tar.add(str(path), arcname=f"{key}.jpg")
            meta = json.dumps({"key": key, "source": Path(path).name}).encode()
            info = tarfile.TarInfo(f"{key}.json")
            info.size = len(meta)
            tar.addfile(info, io.BytesIO(meta))
    partial.rename(tar_path)
    return tar_path


def parquet_table(paths: Sequence[str | Path], parquet_path: Path) -> Path:
    """``paths`` as one parquet file in their order, as img2dataset's parquet output writes them
    (a binary ``jpg`` column beside ``key`` and ``url``; pyarrow's default row groups), written
    once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if parquet_path.exists():
        return parquet_path
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "key": [f"{index:09d}" for index in range(len(paths))],
            "url": [Path(path).as_uri() for path in paths],
            "jpg": pa.array([Path(path).read_bytes() for path in paths], pa.binary()),
        }
    )
    partial = parquet_path.with_suffix(".partial")
    pq.write_table(table, partial)
    partial.rename(parquet_path)
    return parquet_path


def half_png_copy(paths: Sequence[str | Path], folder: Path) -> list[Path]:
    """``paths`` with every second JPEG stored as a PNG of its PIL-decoded pixels (the same
    image to the eager reference, which decodes the JPEG with PIL), written once."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index, path in enumerate(paths):
        path = Path(path)
        if index % 2 == 0:
            copies.append(path)
            continue
        png = folder / f"{path.stem}.png"
        if not png.exists():
            partial = folder / f"{path.stem}.partial.png"
            with Image.open(path) as image:
                image.convert("RGB").save(partial)
            partial.rename(png)
        copies.append(png)
    return copies
