# make demo   run the demo pipeline (creates .venv on first use)
# make test   run the whole test suite against the local broker
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

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
