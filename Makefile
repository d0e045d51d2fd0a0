# One-command setup and the test command CI runs (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: setup lock typecheck test test-integration test-all test-slow test-latest

setup:  ## venv + install (CPU torch pinned in the same install) + offline assets
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,ray,tune]" torch==2.13.0 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/adamole-bench setup

lock:  ## rewrite constraints.txt from the installed stack (after a deliberate upgrade; review the diff)
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable --disable-pip-version-check | grep -v '^adamole' | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.new && mv constraints.new constraints.txt

typecheck:  ## mypy on the whole tree, seen as the package `adamole_bench` (the repository root is the package)
	link=$$(mktemp -d) && ln -s "$(CURDIR)" $$link/adamole_bench && cd $$link && \
	  $(abspath $(BIN))/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache -p adamole_bench; \
	  status=$$?; rm -rf $$link; exit $$status

test:  ## the unit tier: method math, configs, tables, tasks, errors (tiny model, no sweeps): about a minute
	$(BIN)/python -m pytest -m "not slow and not integration"

test-integration:  ## real sweeps, subprocesses, Ray, servers and faults on the tiny model: minutes
	$(BIN)/python -m pytest -m "integration and not slow"

test-all: test test-integration  ## both tiers (what CI runs before the SmolLM2 tests)

test-latest:  ## the unit tier on the newest releases pyproject allows (torch kept at the CPU build): an upstream break shows the day it ships
	test -x .venv-latest/bin/python || $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet --disable-pip-version-check --upgrade --upgrade-strategy eager -e ".[dev,ray,tune]" torch==2.13.0 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	.venv-latest/bin/pip list --disable-pip-version-check 2>/dev/null | grep -iE "^(transformers|peft|lm.eval|mlflow|datasets|ray|tokenizers) "
	.venv-latest/bin/adamole-bench setup
	.venv-latest/bin/python -m pytest -m "not slow and not integration" -p no:cacheprovider

test-slow:  ## end-to-end on the embedded SmolLM2 and real data
	$(BIN)/python -m pytest -m slow
