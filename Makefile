# make demo   run the demo pipeline (creates .venv on first use)
# make test   run the whole test suite against the local broker
# make check  lint, type check and test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: reinstall when pyproject.toml is newer,
# or when the venv lost its leveret script (deleted or recreated by hand).
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck check FORCE

venv: $(STAMP)

$(STAMP): pyproject.toml $(if $(wildcard $(BIN)/leveret),,FORCE)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

FORCE:

demo: venv
	$(BIN)/leveret demo

test: venv
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check leveret tests examples
	$(BIN)/ruff format --check leveret tests examples

typecheck: venv
	$(BIN)/mypy leveret

check: lint typecheck test
