# The few commands people run. `make demo` and `make test` each set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Generates the synthetic NIH-format dataset once (~/.cache/chexnet_pl/demo_nih) and trains on it.
demo: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/python -m chexnet_pl.train experiment=demo

# The full suite (what CI runs through .ci/run).
test: setup
	WANDB_MODE=offline $(BIN)/python -m pytest -q

# For iterating: everything but the tests that train or launch commands (< 3 min on 2 cores).
test-fast: setup
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow"

# Not part of the tests: timings are noisy on shared machines.
bench: setup
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/backbones.py
	$(BIN)/python benchmarks/heatmaps.py
	$(BIN)/python benchmarks/subgroups.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
