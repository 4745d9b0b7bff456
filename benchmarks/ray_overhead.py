"""What `featx extract --ray` costs and gains on one machine: the same 1,000-JPEG ResNet-50 job
as whole `featx extract` processes, run alternately in one session (Ray's start-up included, as
users pay it):

- ``plain``: featx extract as it is (all cores);
- ``ray-1x2``: --ray with one actor holding both cores (the overhead of Ray itself, starting
  and stopping a local Ray instance included);
- ``ray-1x2-cluster``: the same joining a running one-node cluster by its address, as jobs on a
  real cluster do (`ray start --head` before the run and `ray stop` after it, both untimed);
- ``plain-1thread``: featx extract with one decode worker and one ORT thread;
- ``ray-1x1`` and ``ray-2x1``: --ray with one, then two actors of one CPU, one decode worker and
  one ORT thread each (what a second actor adds on the 2 cores).

Every run writes shards of --shard-size inputs (100: ten shards to spread over actors), and its
output is compared byte for byte with the first ``plain`` run's.

    python benchmarks/ray_overhead.py --output benchmarks/results/ray-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLUSTER_ADDRESS = "127.0.0.1:6390"
CLIENT_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}
"""`ray start` (Ray 2.60) turns token authentication on; a driver joining by address must too
(README, On a Ray cluster)."""
CONFIGS = {
    "plain": [],
    "ray-1x2": ["--ray", "--ray-actors", "1", "--ray-cpus-per-actor", "2"],
    "ray-1x2-cluster": ["--ray", CLUSTER_ADDRESS, "--ray-actors", "1", "--ray-cpus-per-actor", "2"],
    "plain-1thread": ["--workers", "1", "--threads", "1"],
    "ray-1x1": ["--ray", "--ray-actors", "1", "--workers", "1", "--threads", "1"],
    "ray-2x1": ["--ray", "--ray-actors", "2", "--workers", "1", "--threads", "1"],
}
MAKE_INPUTS = """
import sys, torch, torchvision, featx
from featx.bench.corpus import make_corpus
from featx.models.checkpoint import save_checkpoint
make_corpus(sys.argv[1], count=int(sys.argv[2]))
torch.manual_seed(0)
checkpoint = save_checkpoint(sys.argv[3] + ".pt", torchvision.models.resnet50(), "resnet50")
featx.export(checkpoint, sys.argv[3])
"""


def start_cluster(ray_cli: Path) -> None:
    port = CLUSTER_ADDRESS.rsplit(":", 1)[1]
    subprocess.run(
        [ray_cli, "start", "--head", "--port", port, "--num-cpus", "2", "--include-dashboard",
         "false", "--disable-usage-stats"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def output_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != ".featx.lock"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--shard-size", type=int, default=100, help="output rows per shard: shards to spread"
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    featx = Path(sys.executable).parent / "featx"
    ray_cli = Path(sys.executable).parent / "ray"
    with tempfile.TemporaryDirectory() as tmp:
        corpus, model = Path(tmp) / "corpus", Path(tmp) / "resnet50.onnx"
        subprocess.run(
            [sys.executable, "-c", MAKE_INPUTS, corpus, str(args.images), model], check=True
        )
        seconds: dict[str, list[float]] = {name: [] for name in CONFIGS}
        reference = None
        identical = {name: True for name in CONFIGS}
        for _ in range(args.repeats):
            for name, extra in CONFIGS.items():
                out = Path(tmp) / "out"
                shutil.rmtree(out, ignore_errors=True)
                command = [featx, "extract", model, corpus, "-o", out, "--quiet"]
                command += ["--shard-size", str(args.shard_size), *extra]
                if name == "ray-1x2-cluster":
                    start_cluster(ray_cli)
                started = time.perf_counter()
                try:
                    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=CLIENT_ENV)
                    seconds[name].append(time.perf_counter() - started)
                finally:
                    if name == "ray-1x2-cluster":
                        subprocess.run([ray_cli, "stop"], check=True, stdout=subprocess.DEVNULL)
                produced = output_bytes(out)
                reference = reference or produced
                identical[name] &= produced == reference
    rows = {
        name: {
            "median_s": round(statistics.median(times), 2),
            "images_per_s": round(args.images / statistics.median(times), 2),
            "runs_s": [round(t, 2) for t in times],
            "output_identical_to_plain": identical[name],
        }
        for name, times in seconds.items()
    }
    document = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
        "images": args.images,
        "shard_size": args.shard_size,
        "model": "resnet50 (torchvision, random init), featx-export fp32",
        "configs": {name: " ".join(extra) or "(defaults)" for name, extra in CONFIGS.items()},
        "rows": rows,
        "ray_1x2_overhead_vs_plain": round(
            rows["ray-1x2"]["median_s"] / rows["plain"]["median_s"] - 1, 4
        ),
        "ray_1x2_cluster_overhead_vs_plain": round(
            rows["ray-1x2-cluster"]["median_s"] / rows["plain"]["median_s"] - 1, 4
        ),
        "ray_2x1_vs_1x1_speedup": round(
            rows["ray-1x1"]["median_s"] / rows["ray-2x1"]["median_s"], 3
        ),
    }
    print(json.dumps(document, indent=1))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
