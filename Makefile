# One-command setup and the test command CI runs (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: setup lock test test-slow

setup:  ## venv + install (CPU torch pinned in the same install) + offline assets
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,ray]" torch==2.13.0 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/adamole-bench setup

lock:  ## rewrite constraints.txt from the installed stack (after a deliberate upgrade; review the diff)
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable --disable-pip-version-check | grep -v '^adamole' | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.new && mv constraints.new constraints.txt

test:  ## the fast suite (tiny model, local data): minutes
	$(BIN)/python -m pytest

test-slow:  ## end-to-end on the embedded SmolLM2 and real data
	$(BIN)/python -m pytest -m slow
