# The README names these targets. Every target installs what it needs first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit integration bench broker-start broker-stop clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## setup: virtualenv, Python packages, Prometheus, Chromium, gcc, compiled modules, Kafka jars
setup: $(STAMP)
	./scripts/system-deps
	./scripts/compile
	$(BIN)/scorestream broker fetch

## demo: local broker + topics + worker + simulated traffic; prints sales-ready leads
demo: setup
	./scripts/demo

## test: lint, type check, unit/property/golden tests and integration tests on a real broker
test: setup lint typecheck
	$(BIN)/pytest
	./scripts/test-pure

# bench/ is linted once it exists (ruff fails on a missing path).
LINT_PATHS := src tests setup.py $(wildcard bench)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m 'not integration'

integration: setup
	$(BIN)/pytest -m integration

# The quix-streams peer of bench/worker_bench.py has a virtualenv of its own: quix-streams
# pins Kafka client versions of its own, and the project must not depend on it.
PEER := .venv-peer
$(PEER)/.installed: pyproject.toml
	test -x $(PEER)/bin/python || $(PY) -m venv $(PEER)
	$(PEER)/bin/pip install --quiet --upgrade pip
	$(PEER)/bin/pip install --quiet 'quixstreams==3.28.1' -e .
	touch $@

## bench: engine and worker benchmarks (the worker's against Faust and a quix-streams peer)
bench: setup $(PEER)/.installed
	$(BIN)/python bench/engine_bench.py
	$(BIN)/scorestream broker start
	$(BIN)/python bench/worker_bench.py

broker-start: setup
	$(BIN)/scorestream broker start

broker-stop: $(STAMP)
	$(BIN)/scorestream broker stop

# Stops the local broker first: var/ holds its data and pid file.
clean:
	if [ -x $(BIN)/scorestream ]; then $(BIN)/scorestream broker stop; fi
	rm -rf $(VENV) $(PEER) var build dist src/*.egg-info
	find src -name '*.so' -delete
