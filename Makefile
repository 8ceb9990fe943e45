# The few commands people run. `make demo` and `make test` each set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test test-fast docs docs-serve mutate bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,docs]'
	touch $(STAMP)

# Generates the synthetic NIH-format dataset once (~/.cache/chexnet_pl/demo_nih) and trains on it.
# ARGS: more overrides (make demo ARGS="trainer.max_epochs=1 hydra.run.dir=/tmp/demo").
demo: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/python -m chexnet_pl.train experiment=demo $(ARGS)

# Debian's chromium + chromium-driver for the browser test of the web page (tests/test_serve.py).
# Installed only when missing, and only as root with apt-get; otherwise that test skips, saying why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (apt-get) for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "apt-get could not install chromium: the browser test will skip"; \
	else \
		echo "chromium/chromedriver missing and apt-get unavailable or not root: the browser test will skip"; \
	fi

# The full suite and the documentation site built strictly (what CI runs through .ci/run).
test: setup browser docs
	WANDB_MODE=offline $(BIN)/python -m pytest -q

# For iterating: everything but the tests that train or launch commands (~2 min on 2 cores).
# One pytest worker per logical CPU, each test file on one worker (its module fixtures built once),
# one torch thread per worker (these tests are Python-bound: two workers share 2 cores best).
test-fast: setup
	OMP_NUM_THREADS=1 WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow" -n logical --dist loadfile

# The documentation site (mkdocs.yml, docs/) into site/ (git-ignored); --strict: a broken link,
# anchor or API reference fails the build.
docs: setup
	$(BIN)/python -m mkdocs build --strict --site-dir site

# The site on http://127.0.0.1:8000/, rebuilt as pages change (Ctrl-C stops it).
docs-serve: setup
	$(BIN)/python -m mkdocs serve --dev-addr 127.0.0.1:8000

# Mutation testing, not part of CI nor of `make test`: mutmut changes the checkpoint, export and
# threshold modules one operator, constant or argument at a time ([tool.mutmut] in pyproject.toml)
# and runs their fast tests on each change, then lists the survivors (changes no test caught).
# Slow (hundreds of mutants; an hour or more on 2 cores); `$(BIN)/mutmut show <name>` shows one.
mutate: setup
	-OMP_NUM_THREADS=1 WANDB_MODE=offline CHEXNET_SHARED_DATA=$(CURDIR)/../shared/data $(BIN)/mutmut run
	$(BIN)/mutmut results

# Not part of the tests: timings are noisy on shared machines.
bench: setup
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/backbones.py
	$(BIN)/python benchmarks/heatmaps.py
	$(BIN)/python benchmarks/subgroups.py
	$(BIN)/python benchmarks/tables.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/serve.py --backend torch
	$(BIN)/python benchmarks/serve.py --backend onnx
	$(BIN)/python benchmarks/startup.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
