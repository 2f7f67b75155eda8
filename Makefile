# Two entry points (see README): `make run` and `make test`. Both create .venv on first use.
# torch is pinned to the CPU build through constraints.txt so that a fresh machine does not pull CUDA packages.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# Reference data: ../shared/data beside the checkout unless the caller points elsewhere.
UNITEDNET_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)
export UNITEDNET_DATA_DIR

.PHONY: venv run test lint unit docs nb clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,docs]"
	touch $@

venv: $(BIN)/.installed

## Main job: train UnitedNet on the default dataset (Patch-seq) and write results/ (h5mu, metrics JSON, UMAP PNG).
run: venv
	$(BIN)/unitednet fit patchseq --out results/patchseq

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: venv
	$(BIN)/python -m pytest

nb: venv
	$(BIN)/python -m pytest --nbmake tutorials/quickstart_patchseq.ipynb

docs: venv
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

## Lint, the test suite, the fastest tutorial and the docs build: what CI runs.
test: lint unit nb docs

clean:
	rm -rf $(VENV) docs/_build docs/generated .pytest_cache .ruff_cache
