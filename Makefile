# camvid — run `make help` for the targets.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.camvid-installed
# Offline by default: tests and the demo never touch the network.
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export PYTHONHASHSEED ?= 0

DEMO_DIR ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: help setup demo test test-full lint format train sample eval table notebooks benchmark clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB build; 2.13.0 is the tested release.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]" torch==2.13.0
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install camvid with dev extras (torch pinned to 2.13.0)

demo: $(STAMP)  ## synthetic data -> shards -> train tiny CamI2V -> sample -> camera accuracy
	$(PY) scripts/demo.py --out $(DEMO_DIR)

test: $(STAMP)  ## fast test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-full: $(STAMP)  ## every test, slow ones included
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check src tests data_prep benchmarks scripts

format: $(STAMP)  ## ruff format + import sorting
	$(PY) -m ruff check --fix --select I src tests data_prep benchmarks scripts
	$(PY) -m ruff format src tests data_prep benchmarks scripts

train: $(STAMP)  ## python src/train.py $(ARGS), e.g. make train ARGS="model=cami2v attn=epipolar data=synthetic"
	$(PY) src/train.py $(ARGS)

sample: $(STAMP)  ## python src/sample.py $(ARGS)
	$(PY) src/sample.py $(ARGS)

EVAL_SAMPLES ?= $(DEMO_DIR)/samples
eval: $(STAMP)  ## evaluate a samples folder (default: the demo's): make eval EVAL_SAMPLES=DIR ARGS="metrics=[camera]"
	$(PY) src/evaluate.py samples_dir=$(EVAL_SAMPLES) $(ARGS)

TABLE ?= cami2v_t2
SCALE ?= full
TABLE_ROOT ?=
table: $(STAMP)  ## a table sweep beside the paper: make table TABLE=cami2v_t2 [SCALE=tiny] [TABLE_ROOT=DIR] (docs/experiments.md)
	PYTHONPATH=src $(PY) -m camvid.experiments.tables $(TABLE) --scale $(SCALE) $(if $(TABLE_ROOT),--root $(TABLE_ROOT))

NB_OUT ?= outputs/notebooks
NB_ARGS ?=
notebooks: $(STAMP)  ## run notebooks/*.ipynb on the demo run -> HTML in outputs/notebooks (NB_ARGS="--run DIR ...")
	$(PY) scripts/run_notebooks.py --demo $(DEMO_DIR) --out $(NB_OUT) $(NB_ARGS)

benchmark: $(STAMP)  ## attention and evaluation benchmarks (writes numbers for docs/performance.md)
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/eval_validation.py

clean:  ## remove outputs (keeps .venv)
	rm -rf outputs multirun .pytest_cache
