"""Start-up and whole-process end-to-end timings of the featx commands, as a user's shell sees
them: every figure is the wall time of a fresh process, interpreter start and imports included.

- start-up: ``featx --help``, ``featx extract --help``, ``featx version``, ``featx inspect`` and
  ``import featx``, each run ``--repeats`` times; median, min and max reported;
- end-to-end: ``featx extract MODEL.onnx`` over ``--images`` JPEGs against
  benchmarks/eager_extract.py (the hand-written PyTorch loop) over the same files with the same
  ResNet-50 weights, run alternately in the same session; the ratio of the medians, and the
  minimum cosine between the two sides' features.

It drives the commands of the virtual environment given by ``--venv`` and imports nothing from
featx itself, so the same script measures any checkout (before and after a change):

    python benchmarks/startup.py --venv .venv --output benchmarks/results/startup-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
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

HERE = Path(__file__).resolve().parent

MAKE_INPUTS = """
import sys, torch, torchvision
from featx.bench.corpus import make_corpus
make_corpus(sys.argv[1], count=int(sys.argv[2]))
torch.manual_seed(0)
torch.save(torchvision.models.resnet50().state_dict(), sys.argv[3])
"""


def timed(command: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return seconds


def spread(samples: list[float]) -> dict:
    return {
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
        "samples_s": [round(s, 4) for s in samples],
    }


def featx_features(out: Path):
    import numpy as np

    manifest = json.loads((out / "manifest.json").read_text())
    return np.concatenate([np.load(out / s["files"]["features"]) for s in manifest["shards"]])


def min_cosine(a, b) -> float:
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=".venv", help="virtual environment holding featx")
    parser.add_argument("--eager-venv", help="environment with torch for the eager side")
    parser.add_argument("--commit", help="commit measured (default: this checkout's HEAD)")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5, help="start-up runs per command")
    parser.add_argument("--e2e-repeats", type=int, default=2, help="end-to-end runs per side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--label", default="", help="free text stored with the result")
    parser.add_argument("--output", help="result JSON to write")
    args = parser.parse_args()

    venv = Path(args.venv).resolve()
    featx = str(venv / "bin" / "featx")
    python = str(venv / "bin" / "python")
    eager_python = str(Path(args.eager_venv or args.venv).resolve() / "bin" / "python")
    work = Path(tempfile.mkdtemp(prefix="featx-startup-"))
    try:
        images, weights, model = work / "images", work / "resnet50.pt", work / "resnet50.onnx"
        subprocess.run(
            [eager_python, "-c", MAKE_INPUTS, str(images), str(args.images), str(weights)],
            check=True,
        )
        subprocess.run(
            [
                str(venv / "bin" / "featx-export"),
                str(weights),
                "--arch",
                "resnet50",
                "-o",
                str(model),
            ],
            check=True,
            capture_output=True,
        )
        commands = {
            "featx --help": [featx, "--help"],
            "featx extract --help": [featx, "extract", "--help"],
            "featx version": [featx, "version"],
            "featx inspect MODEL.onnx": [featx, "inspect", str(model)],
            "python -c 'import featx'": [python, "-c", "import featx"],
        }
        startup = {}
        for name, command in commands.items():
            timed(command)  # file cache warm, as on a machine in use
            startup[name] = spread([timed(command) for _ in range(args.repeats)])
            print(f"{name:32s} median {startup[name]['median_s']:.3f} s", flush=True)

        featx_out, eager_out = work / "featx-out", work / "eager.npy"
        featx_command = [featx, "extract", str(model), str(images), "-o", str(featx_out)]
        featx_command += ["--batch-size", str(args.batch_size), "--quiet"]
        # The eager side preprocesses as the exported model says (resnet50: resize 232, crop 224).
        inspect = subprocess.run(
            [featx, "inspect", str(model), "--json"], capture_output=True, text=True, check=True
        )
        preprocess = json.loads(inspect.stdout)["featx.preprocess"]
        eager_command = [eager_python, str(HERE / "eager_extract.py"), str(weights), str(images)]
        eager_command += [str(eager_out), "--batch-size", str(args.batch_size)]
        eager_command += ["--resize", str(preprocess["resize_size"])]
        eager_command += ["--crop", str(preprocess["crop_size"])]
        eager_command += ["--interpolation", preprocess["interpolation"]]
        featx_runs, eager_runs = [], []
        for _ in range(args.e2e_repeats):
            shutil.rmtree(featx_out, ignore_errors=True)
            featx_runs.append(timed(featx_command))
            eager_runs.append(timed(eager_command))
            print(f"e2e featx {featx_runs[-1]:.1f} s, eager {eager_runs[-1]:.1f} s", flush=True)
        import numpy as np

        cosine = min_cosine(featx_features(featx_out), np.load(eager_out))
        e2e = {
            "images": args.images,
            "batch_size": args.batch_size,
            "featx_extract": spread(featx_runs),
            "eager": spread(eager_runs),
            "speedup": round(statistics.median(eager_runs) / statistics.median(featx_runs), 3),
            "min_cosine": round(cosine, 6),
        }
        print(f"e2e speedup {e2e['speedup']:.2f}x over eager (min cosine {cosine:.6f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
    )
    result = {
        "label": args.label,
        "commit": commit,
        "machine": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "startup": startup,
        "end_to_end": e2e,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
