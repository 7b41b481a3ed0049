# One entry point for everything: `make run` (main job on the embedded default), `make check` (format, lint,
# types, tests). Both create the virtual environment they need from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/onex: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install run test lint types format check bench
install: $(BIN)/onex

# The main job on the embedded default (in-process bus, SQLite under .onex/): validate the contracts, list the
# nodes, stamp a fresh copy of examples/ through every node, verify it offline, show one workflow's trace.
run: install
	$(BIN)/onex validate
	$(BIN)/onex nodes
	rm -rf .onex/demo && mkdir -p .onex && cp -R examples .onex/demo
	$(BIN)/onex stamp .onex/demo --namespace demo
	$(BIN)/onex verify .onex/demo
	$(BIN)/onex trace --latest

# Tests in parallel workers (-n: one per core, at most 4; each has its own broker, schemas and temp dirs): most of
# the suite waits on brokers, databases and the processes it starts. --durations: the slowest tests, each run.
test: install
	$(BIN)/pytest -n auto --maxprocesses=4 --durations=15 --cov --cov-report=term

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

types: install
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: lint types test

bench: install
	$(BIN)/python bench/run.py
