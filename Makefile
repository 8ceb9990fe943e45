# The few commands people run. `make demo` and `make test` each set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Generates the synthetic NIH-format dataset once (~/.cache/chexnet_pl/demo_nih) and trains on it.
demo: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/python -m chexnet_pl.train experiment=demo

test: setup
	WANDB_MODE=offline $(BIN)/python -m pytest -q

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
