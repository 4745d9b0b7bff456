"""Scale run of featx extract on dataset-scale input: many small images in WebDataset tar
shards or parquet files through a small model, as one `featx extract` process; images/s, and its
peak RSS after the first output shard is finished and at the end (memory must stay flat: the
input listing is made before the first shard, and nothing after it grows with the number of
images).

    python benchmarks/input_scale.py --kind tar --output benchmarks/results/tar-scale-cpu.json
    python benchmarks/input_scale.py --kind parquet \
        --output benchmarks/results/parquet-scale-cpu.json

Both follow img2dataset's layouts, 10,000 samples per file: tar shards hold KEY.jpg, KEY.json,
KEY.txt per sample; parquet files hold key, caption and jpg columns in one row group (pyarrow's
default), so the reader must stream it. The images are small JPEG crops of featx's parity
photos (64-160 px sides), so the job is decode-bound. The model is the runtime tests'
small_cnn.onnx (32 px input).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "tests" / "runtime" / "fixtures" / "small_cnn.onnx"
PHOTOS = HERE.parent / "tests" / "runtime" / "fixtures" / "photos"
DISTINCT_IMAGES = 200


def small_jpegs() -> list[bytes]:
    """DISTINCT_IMAGES small JPEG crops of the fixture photos, of varied sizes."""
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.iterdir())]
    rng = np.random.default_rng(0)
    jpegs = []
    for index in range(DISTINCT_IMAGES):
        photo = photos[index % len(photos)]
        width, height = photo.size
        left, top = int(rng.integers(0, width // 3)), int(rng.integers(0, height // 3))
        size = (int(rng.integers(64, 161)), int(rng.integers(64, 161)))
        buffer = io.BytesIO()
        photo.crop((left, top, width, height)).resize(size).save(buffer, "JPEG", quality=85)
        jpegs.append(buffer.getvalue())
    return jpegs


def write_shards(folder: Path, images: int, per_shard: int, kind: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    jpegs = small_jpegs()
    shards = []
    for shard in range(-(-images // per_shard)):
        path = folder / f"{shard:05d}.{kind}"
        shards.append(path)
        if kind == "parquet":
            rows = range(shard * per_shard, min((shard + 1) * per_shard, images))
            table = pa.table(
                {
                    "key": [f"{index:09d}" for index in rows],
                    "caption": ["a caption"] * len(rows),
                    "jpg": pa.array([jpegs[index % len(jpegs)] for index in rows], pa.binary()),
                }
            )
            pq.write_table(table, path)
            continue
        with tarfile.open(path, "w") as tar:
            for index in range(shard * per_shard, min((shard + 1) * per_shard, images)):
                key = f"{index:09d}"
                members = {
                    "jpg": jpegs[index % len(jpegs)],
                    "json": json.dumps({"key": key, "status": "success"}).encode(),
                    "txt": b"a caption",
                }
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return shards


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set so far; None once it has exited (a zombie has none)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def run_job(featx: Path, pattern: str, out: Path, shard_size: int) -> dict:
    """The job as a user runs it; peak RSS sampled from /proc while it runs."""
    command = [str(featx), "extract", str(MODEL), pattern, "-o", str(out)]
    command += ["--shard-size", str(shard_size), "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    after_first_shard = None
    last = 0
    manifest = out / "manifest.json"
    while process.poll() is None:
        peak = peak_rss_kib(process.pid)
        if peak is None:
            break
        last = peak
        finished = manifest.exists() and json.loads(manifest.read_text())["shards"]
        if after_first_shard is None and finished:
            after_first_shard = last
        time.sleep(0.01)
    _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"featx extract failed ({process.returncode}): {stderr}")
    final = json.loads(manifest.read_text())
    return {
        "seconds": round(seconds, 2),
        "rows": final["rows"],
        "errors": final["errors"],
        "images_per_s": round(final["rows"] / seconds, 1),
        "peak_rss_mib_after_first_shard": round((after_first_shard or 0) / 1024, 1),
        "peak_rss_mib_at_end": round(last / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("tar", "parquet"), default="tar")
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--per-shard", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=4096, help="output rows per shard")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    featx = Path(sys.executable).parent / "featx"
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        shards = write_shards(Path(tmp) / "shards", args.images, args.per_shard, args.kind)
        written = time.perf_counter() - started
        pattern = f"{Path(tmp) / 'shards'}/{{00000..{len(shards) - 1:05d}}}.{args.kind}"
        result = run_job(featx, pattern, Path(tmp) / "out", args.shard_size)
    growth = result["peak_rss_mib_at_end"] / result["peak_rss_mib_after_first_shard"] - 1
    document = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
        "images": args.images,
        "kind": args.kind,
        "input_files": len(shards),
        "shards_written_s": round(written, 1),
        **result,
        "rss_growth_after_first_shard": round(growth, 4),
    }
    print(json.dumps(document, indent=1))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
