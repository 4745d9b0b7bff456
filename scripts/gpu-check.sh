#!/usr/bin/env bash
# The GPU proof in one command, on a GPU machine that reaches no package registry (issue 16):
# installs from the kit only (scripts/gpu-prepare.sh made it; pass it to the machine as a carried
# path), builds featx._runner against the kit's TurboJPEG and ONNX Runtime headers, then runs,
# each step timed, logged and capped: the kernels at ResNet-50's and ViT-B/16's own shapes, the
# other gpu tests, `featx bench` on CUDA, and `featx extract --backend torch --fuse` against the
# eager DataLoader loop over 2,048 JPEGs. Exits non-zero if any step fails.
#
#   scripts/gpu-check.sh             on the GPU machine, from the source tree
#   scripts/gpu-check.sh --dry-run   on a CPU machine (make gpu-dry-run): every step short of the
#                                    GPU, at CPU sizes; the gpu tests collect and skip
#
# Environment: GPU_KIT (the kit folder, default gpu-kit), OUT (where the results go, default
# gpu-results), PYTHON (the machine's interpreter holding PyTorch, default python3).
# Results in $OUT, seven files: summary.md, gpu-check.log (every step's output), pytest-gpu.xml
# and kernel-shapes.xml (JUnit), bench.json + bench.png, extract.json.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  "") ;;
  --dry-run) MODE=dry-run ;;
  *) echo "usage: scripts/gpu-check.sh [--dry-run]" >&2; exit 2 ;;
esac

KIT=$(realpath -m "${GPU_KIT:-gpu-kit}")
OUT=$(realpath -m "${OUT:-gpu-results}")
PYTHON=${PYTHON:-python3}
WORK=$PWD/build/gpu-check
SITE=$WORK/site
PREFIX=$WORK/prefix
for part in wheels debs commit; do
  if [ ! -e "$KIT/$part" ]; then
    echo "gpu-check: $KIT/$part is missing: run scripts/gpu-prepare.sh on a machine with network" \
      "and carry the kit folder along (GPU_KIT names it)" >&2
    exit 2
  fi
done

# Only the kit: no registry, and no pip configuration of the machine's own (find-links, indexes,
# constraints) may pick what gets installed.
while IFS= read -r variable; do unset "$variable"; done < <(compgen -e | grep '^PIP_' || true)
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONPATH=$SITE PATH=$SITE/bin:$PATH
# Autotuning results kept on disk: the kernel-shapes step reuses what the fused-model parity test
# tuned at batch 16, the extraction what the benchmark's fused ResNet-50 tuned at batch 64
# (24 conv shapes x 11 tiles, ~35 s each time otherwise).
export TRITON_CACHE_AUTOTUNING=1
# The results name the commit they measured; the GPU machine's copy of the tree has no .git.
FEATX_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || cat "$KIT/commit")
export FEATX_COMMIT

# Sizes. The GPU run has one <= 8 minute slot (10 at most per command, 15 for the whole check
# with the machine's start), so each step has a cap; the caps sum to 555 s (a killed step still
# leaves the summary) and the expected times, estimates until the first H200 run, to ~6.5 min.
# The dry run keeps the steps and arguments and shrinks only the work.
if [ "$MODE" = gpu ]; then
  DEVICE=cuda
  BENCH_MODELS=resnet50,vit_b_16
  BENCH_BATCHES=64,256
  # Each timed repeat of a whole model is 10-100 ms on an H200; compiling dominates the step.
  BENCH_REPEATS=10
  BENCH_WARMUP=2
  # A multiple of the batch (64): a last, smaller batch would autotune every conv shape again.
  EXTRACT_IMAGES=2048
  EXTRACT_WORKERS=$(nproc)
  # Test processes (pytest-xdist): Triton compiles each kernel variant and autotune tile on one
  # core, ~1 s each (estimated), ~300 in the gpu tests; in parallel they take ~1/16 of that. The
  # tests check results, so timing noise between processes sharing the GPU only changes which
  # tile wins there.
  PYTEST_WORKERS=$(nproc)
  CAP_FACTOR=1
else
  DEVICE=cpu
  # The smallest registered model: the harness, its rows and its JSON/PNG, not CPU speed.
  BENCH_MODELS=small_cnn
  BENCH_BATCHES=2
  BENCH_REPEATS=2
  BENCH_WARMUP=1
  EXTRACT_IMAGES=16
  EXTRACT_WORKERS=2
  PYTEST_WORKERS=2
  # The caps are the GPU slot's; on a shared 2-core machine the CPU-side steps (the C++ build,
  # ResNet-50 on the CPU) take several times longer, so there they only catch a hang.
  CAP_FACTOR=4
fi
# The model backends the claims need and torch.compile; the conv kind without its compile rows
# (48 inductor builds of single blocks, ~1-2 min: the claim is featx against cuDNN, which stays);
# the conv reference (cuDNN channels_last) comes with conv:featx.
BENCH_BACKENDS=eager,eager-fp16,eager-bf16,compile,fused,conv:eager-nchw,conv:featx,attention

rm -rf "$WORK"
mkdir -p "$WORK/logs" "$OUT"
rm -f "$OUT"/{summary.md,gpu-check.log,pytest-gpu.xml,kernel-shapes.xml} \
  "$OUT"/{bench.json,bench.png,extract.json}
STEPS=$WORK/steps.tsv
: >"$STEPS"
failed=0

# run_step NAME CAP_SECONDS COMMAND...: runs COMMAND under the cap (times CAP_FACTOR), its output
# shown, kept in $WORK/logs/NAME.log and appended to $OUT/gpu-check.log; records status, seconds.
run_step() {
  local name=$1 cap=$(($2 * CAP_FACTOR)) log=$WORK/logs/$1.log started=$SECONDS status
  shift 2
  echo "=== gpu-check $name (cap ${cap}s): $*" | tee -a "$OUT/gpu-check.log"
  set +e
  # A new shell runs the command, so the step functions below (exported) run under the cap too.
  timeout --kill-after=10 "$cap" bash -euo pipefail -c '"$@"' "$name" "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  cat "$log" >>"$OUT/gpu-check.log"
  local seconds=$((SECONDS - started)) verdict=ok
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    verdict="timed out"
  elif [ "$status" -ne 0 ]; then
    verdict="failed (exit $status)"
  fi
  echo "=== gpu-check $name: $verdict in ${seconds}s" | tee -a "$OUT/gpu-check.log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$verdict" "$seconds" "$cap" >>"$STEPS"
  if [ "$verdict" != ok ]; then failed=1; fi
  [ "$verdict" = ok ]
}

machine_facts() {
  "$PYTHON" - "$MODE" <<'PY'
import importlib.metadata, os, platform, sys
import torch
mode = sys.argv[1]
print(f"python {platform.python_version()} at {sys.executable}; {os.cpu_count()} cores; "
      f"glibc {platform.libc_ver()[1]}")
for name in ("torch", "torchvision", "triton", "onnx", "onnxscript", "onnxruntime", "numpy"):
    try:
        print(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"{name} not installed")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}, "
          f"CUDA {torch.version.cuda}")
elif mode == "gpu":
    sys.exit("torch sees no CUDA GPU here; on a CPU machine run scripts/gpu-check.sh --dry-run")
else:
    print("no CUDA GPU (dry run)")
PY
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; fi
}

# Expected ~20 s: unpacking and a handful of wheels take seconds, the C++ build ~15 s (16 s on
# the 2-core build machine).
install_featx() {
  "$PYTHON" scripts/gpu_kit.py unpack-debs "$PREFIX" "$KIT"/debs/*.deb
  "$PYTHON" scripts/gpu_kit.py install "$KIT/wheels" "$SITE"
  # The native build against the kit's headers, with the machine's own scikit-build-core and
  # pybind11 (or the kit's where those are missing or too old): no isolated build environment,
  # which would need a registry.
  FEATX_TURBOJPEG_ROOT=$PREFIX/usr FEATX_ORT_INCLUDE_DIR=$PREFIX/usr/include/onnxruntime \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PYTHON" -m pip install --no-build-isolation --no-deps --target "$SITE" --upgrade \
    --config-settings=build-dir="$WORK/cmake" .
  local cache=$WORK/cmake/CMakeCache.txt runner
  for variable in ONNXRUNTIME_INCLUDE_DIR TURBOJPEG_INCLUDE_DIR TURBOJPEG_LIBRARY; do
    local value
    value=$(sed -n "s/^$variable:[A-Z]*=//p" "$cache")
    echo "built with $variable=$value"
    if [[ $value != "$PREFIX"/* ]]; then
      echo "gpu-check: $variable is not the kit's ($PREFIX): the build found another copy" >&2
      return 1
    fi
  done
  runner=$(echo "$SITE"/featx/_runner*.so)
  local turbojpeg
  turbojpeg=$(ldd "$runner" | awk '/libturbojpeg/ {print $3}')
  echo "featx._runner loads TurboJPEG from $turbojpeg"
  if [[ $turbojpeg != "$PREFIX"/* ]]; then
    echo "gpu-check: $runner does not load the kit's TurboJPEG" >&2
    return 1
  fi
  "$PYTHON" -c "
from featx.runtime.native import native, onnxruntime_library
version = native().onnxruntime_version()
print('featx._runner runs ONNX Runtime', version, 'from', onnxruntime_library())"
}

pytest_gpu() {
  local selection=$1 junit=$2
  "$PYTHON" -m pytest tests -m gpu -k "$selection" -n "$PYTEST_WORKERS" -p no:cacheprovider -q \
    -rs --durations=15 --junitxml="$junit"
}

export MODE PYTHON KIT SITE PREFIX WORK PYTEST_WORKERS
export -f machine_facts install_featx pytest_gpu

write_summary() { "$PYTHON" scripts/gpu_kit.py summary "$STEPS" "$OUT" "$MODE"; }

# Nothing else can run without the machine's stack or the build.
run_step machine 15 machine_facts || { write_summary; exit 1; }
run_step install 60 install_featx || { write_summary; exit 1; }
# Expected ~40 s: ResNet-50's 24 conv blocks and ViT-B/16's attention, fp16 and bf16, batch 16.
# First, so that its parallel compiles and tunings serve fuse(resnet50)/fuse(vit_b_16)'s parity
# test below (the same shapes, batch and fp16), which alone would take ~100 s in one process.
run_step kernel-shapes 60 pytest_gpu "model_shapes" "$OUT/kernel-shapes.xml" || true
# Expected ~40 s: 10 odd-shaped kernel cases x 3 dtypes, opcheck on CUDA, the fused models'
# parity, the bench's own gpu test.
run_step pytest-gpu 70 pytest_gpu "not model_shapes" "$OUT/pytest-gpu.xml" || true
# Expected ~230 s: four torch.compile builds of whole models (~30 s each) and autotuning the
# fused conv shapes at both batches (~70 s) dominate; 2 models x 2 batches x 5 backends, 24 conv
# blocks x 2 batches x 3 backends, 2 x 3 attention rows, each 2 + 10 runs of 1-100 ms.
run_step bench 300 featx bench --device "$DEVICE" --model "$BENCH_MODELS" \
  --batch-sizes "$BENCH_BATCHES" --backends "$BENCH_BACKENDS" --repeats "$BENCH_REPEATS" \
  --warmup "$BENCH_WARMUP" --output "$OUT/bench.json" --plot "$OUT/bench.png" || true
# Expected ~35 s: writing the JPEGs ~15 s (7 ms each), then each side twice (the first warms up).
run_step extract 50 "$PYTHON" benchmarks/extract_torch_fused.py --device "$DEVICE" \
  --images "$EXTRACT_IMAGES" --workers "$EXTRACT_WORKERS" --output "$OUT/extract.json" \
  --work-dir "$WORK/extract" || true

write_summary
exit "$failed"
