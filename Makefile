# featx developer entry points. On a fresh machine: `make demo` (main job end to end, CPU) and
# `make test` (lint + layering + the runtime suite in a runtime-only environment + the whole
# test suite). Both set up everything first; setup is idempotent.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.featx-installed
# A runtime-only environment: featx[cpu] as a user installs it (a built wheel, no PyTorch).
RUNTIME_VENV ?= .venv-runtime
RUNTIME_PY := $(RUNTIME_VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-runtime lint format bench bench-gpu bench-extract bench-pytest \
	bench-export bench-timm bench-startup bench-inputs test-fixtures gpu-kit gpu-dry-run clean

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml CMakeLists.txt $(wildcard csrc/*) scripts/install-native-deps.sh
	scripts/install-native-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,torch,test]"
	touch $@

demo: setup
	$(VENV)/bin/featx demo -o featx-demo

test: lint test-runtime
	$(PY) -m pytest $(PYTEST_ARGS)

# The runtime tests against the committed .onnx fixtures where torch is not installed, and the
# import-linter contracts (pyproject.toml) on the installed package's real layout.
test-runtime: setup
	test -x $(RUNTIME_PY) || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_PY) -m pip install -q --upgrade pip
	$(RUNTIME_PY) -m pip install -q ".[cpu,test-runtime]" --config-settings=build-dir=build/runtime
	! $(RUNTIME_PY) -c "import torch" 2>/dev/null
	$(RUNTIME_VENV)/bin/lint-imports
	$(RUNTIME_PY) -m pytest tests/runtime $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check python kernels tests benchmarks scripts
	$(VENV)/bin/ruff format --check python kernels tests benchmarks scripts
	$(VENV)/bin/clang-format --dry-run -Werror csrc/*.cc csrc/*.h

format: setup
	$(VENV)/bin/ruff check --fix python kernels tests benchmarks scripts
	$(VENV)/bin/ruff format python kernels tests benchmarks scripts
	$(VENV)/bin/clang-format -i csrc/*.cc csrc/*.h

# Rewrites tests/runtime/fixtures (see its README) after a change to the exporter or its schema.
test-fixtures: setup
	$(PY) scripts/make-test-fixtures.py

bench-timm: setup
	$(PY) benchmarks/timm_report.py --output benchmarks/results/timm-cpu.json

bench-export: setup
	$(PY) benchmarks/export_report.py --output benchmarks/results/export-cpu.json
	$(PY) benchmarks/export_report.py --fp16 --output benchmarks/results/export-cpu-fp16.json

# Speed claims: one harness (`featx bench`). BENCH_OUT names the result by its device.
BENCH_OUT ?= benchmarks/results/bench-cpu
BENCH_ARGS ?= --model resnet18,resnet50,vgg16,vit_b_16 --batch-sizes 1,16 --repeats 5 --e2e-images 128 --e2e-repeats 2

bench: setup
	$(VENV)/bin/featx bench $(BENCH_ARGS) --output $(BENCH_OUT).json --plot $(BENCH_OUT).png

# The GPU matrix (on a GPU machine): every model backend, ResNet-50 conv blocks, ViT-B attention.
GPU_BENCH_OUT ?= benchmarks/results/bench-gpu
bench-gpu: setup
	$(VENV)/bin/featx bench --device cuda --model resnet50,vit_b_16 --batch-sizes 64,256 \
		--backends eager,eager-folded,eager-fp16,eager-bf16,compile,fused,ort-python,runner,conv,attention \
		--output $(GPU_BENCH_OUT).json --plot $(GPU_BENCH_OUT).png

# Issue 3's claims: featx extract vs eager on 2,000 JPEGs, C++ vs PIL preprocessing per core.
bench-extract: setup
	$(VENV)/bin/featx bench --model resnet50,resnet18 --batch-sizes 32 \
		--backends ort-python,runner,extract-e2e,preprocess --e2e-images 2000 --e2e-repeats 1 \
		--output $(BENCH_OUT)-extract.json --plot $(BENCH_OUT)-extract.png

# Issue 13's input kinds: 2,000 JPEGs as files, as one WebDataset tar and as one parquet file
# (extract-e2e's featx, featx-tar and featx-parquet rows), ResNet-50 and a decode-bound small
# model; then 200,000 small images in 20 tar shards, and in 20 parquet files: images/s, peak RSS.
bench-inputs: setup
	$(VENV)/bin/featx bench --model resnet50,small_cnn --batch-sizes 32 --backends extract-e2e \
		--e2e-images 2000 --e2e-repeats 1 \
		--output $(BENCH_OUT)-inputs.json --plot $(BENCH_OUT)-inputs.png
	$(PY) benchmarks/input_scale.py --kind tar --output benchmarks/results/tar-scale-cpu.json
	$(PY) benchmarks/input_scale.py --kind parquet --output benchmarks/results/parquet-scale-cpu.json

# The same cases through pytest-benchmark; add --benchmark-compare --benchmark-compare-fail=median:10%
# to PYTEST_ARGS to fail on a regression against the last saved run.
bench-pytest: setup
	$(PY) -m pytest benchmarks/ --benchmark-only --benchmark-autosave \
		--benchmark-storage=benchmarks/results/pytest-benchmark $(PYTEST_ARGS)

# Start-up of every runtime command and whole-process featx extract vs eager on 600 JPEGs.
bench-startup: setup
	$(PY) benchmarks/startup.py --venv $(VENV) --output $(BENCH_OUT)-startup.json

# Issue 16, the GPU proof on a machine without a registry (README, "On a GPU machine"):
# `make gpu-kit` downloads into GPU_KIT what that machine lacks; carry GPU_KIT there with the
# source tree and run scripts/gpu-check.sh. `make gpu-dry-run` runs the same check here, short
# of the GPU: a kit for this interpreter, a stand-in for the GPU machine's interpreter holding
# only its packages (scripts/gpu-target.txt, linked from .venv), no registry.
GPU_KIT ?= gpu-kit
GPU_DRY_RUN := build/gpu-dry-run

gpu-kit: setup
	PYTHON=$(PY) scripts/gpu-prepare.sh $(GPU_KIT)

gpu-dry-run: setup
	GPU_KIT_PYTHON=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
		PYTHON=$(PY) scripts/gpu-prepare.sh $(GPU_DRY_RUN)/kit
	$(PY) scripts/gpu_kit.py emulate $(GPU_DRY_RUN)/target
	GPU_KIT=$(GPU_DRY_RUN)/kit OUT=$(GPU_DRY_RUN)/results PYTHON=$(GPU_DRY_RUN)/target/bin/python \
		scripts/gpu-check.sh --dry-run

clean:
	rm -rf build featx-demo .pytest_cache .ruff_cache $(RUNTIME_VENV)
