# Every target creates .venv and installs what it needs: torch==2.13.0 (a CPU wheel) first, then the package.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bayesclust demo --out bayesclust-report

test: $(STAMP)
	$(BIN)/ruff check bayesclust tests benchmarks examples
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench,peers]"
	for b in gmm dpgmm dti discriminative; do $(BIN)/python benchmarks/bench_$$b.py || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check bayesclust tests benchmarks examples

clean:
	rm -rf $(VENV) bayesclust-report example-output .pytest_cache
