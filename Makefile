# featx developer entry points. On a fresh machine: `make demo` (main job end to end, CPU) and
# `make test` (lint + test suite). Both set up everything first; setup is idempotent.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.featx-installed
PYTEST_ARGS ?=

.PHONY: setup demo test lint format bench-export bench-extract clean

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml CMakeLists.txt $(wildcard csrc/*) scripts/install-native-deps.sh
	scripts/install-native-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/featx demo -o featx-demo

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check python kernels tests benchmarks
	$(VENV)/bin/ruff format --check python kernels tests benchmarks
	$(VENV)/bin/clang-format --dry-run -Werror csrc/*.cc csrc/*.h

format: setup
	$(VENV)/bin/ruff check --fix python kernels tests benchmarks
	$(VENV)/bin/ruff format python kernels tests benchmarks
	$(VENV)/bin/clang-format -i csrc/*.cc csrc/*.h

bench-export: setup
	$(PY) benchmarks/export_report.py --output benchmarks/results/export-cpu.json
	$(PY) benchmarks/export_report.py --fp16 --output benchmarks/results/export-cpu-fp16.json

bench-extract: setup
	$(PY) benchmarks/extraction_report.py --output benchmarks/results/extraction-cpu.json

clean:
	rm -rf build featx-demo .pytest_cache .ruff_cache
