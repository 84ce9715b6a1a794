# make demo   run the demo pipeline (creates .venv on first use)
# make test   run the whole test suite against the local broker: the Python
#             suite (which holds the Node, Ruby and Go workers to the contract)
#             and each of those workers' own tests
# make check  lint, type check and test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: reinstall when pyproject.toml is newer,
# or when the venv lost its leveret script (deleted or recreated by hand).
STAMP := $(VENV)/.installed

# The AsyncAPI parser (npm) that the tests validate docs/asyncapi.json with.
NODE_TOOLS := tools/asyncapi/node_modules/.installed

.PHONY: venv tools consumers demo example test lint typecheck check FORCE

venv: $(STAMP)

$(STAMP): pyproject.toml $(if $(wildcard $(BIN)/leveret),,FORCE)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

FORCE:

# promtool (Debian's prometheus package, unpacked, nothing started) checks the
# example alert rules and the metrics; without apt-get its tests skip.
PROMTOOL := tools/promtool/promtool

tools: $(NODE_TOOLS) $(PROMTOOL)

$(PROMTOOL): scripts/promtool.sh
	scripts/promtool.sh || echo "promtool: not installed; tests/test_metrics.py will skip what needs it"

$(NODE_TOOLS): tools/asyncapi/package-lock.json
	npm ci --prefix tools/asyncapi --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NODE_TOOLS)

# The other languages' workers: npm ci for Node, an offline build for Go
# (scripts/consumers.sh; a missing toolchain is skipped with how to install it).
consumers:
	scripts/consumers.sh install

demo: venv
	$(BIN)/leveret demo

# make example  the example web app (examples/webapp, docs/webapp.md) with its
#               workers, on http://127.0.0.1:8000/; Ctrl-C stops it
example: venv
	$(BIN)/python -m examples.webapp

test: venv tools consumers
	$(BIN)/pytest
	scripts/consumers.sh test

lint: venv
	$(BIN)/ruff check leveret tests examples consumers/python bench
	$(BIN)/ruff format --check leveret tests examples consumers/python bench

typecheck: venv
	$(BIN)/mypy leveret tests

check: lint typecheck test

# make bench        the benchmark suite against the local broker (bench/.venv; ~30 min)
# make bench-smoke  its smoke test in .venv, no peers to install (leveret, raw pika and
#                   aio-pika, Go: 100 messages per scenario; bench/test_smoke.py)
BENCH_VENV := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet -e . -r bench/requirements.txt
	touch $(BENCH_STAMP)

.PHONY: bench bench-smoke
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python bench/run.py

bench-smoke: venv
	$(BIN)/python -m pytest -c bench/pytest.ini bench/test_smoke.py
