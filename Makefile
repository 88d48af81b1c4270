# `make test` / `make sweep` create .venv (python3 -m venv + pip) on first use and reuse it after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test test-fast sweep lint clean

SWEEP ?= sweeps/quick.yaml
SWEEP_ARGS ?=

$(BIN)/vggbn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	@touch $@

# Two pytest-xdist workers (TEST_JOBS=0: one process), a module each at a time (module fixtures
# run once), the modules with the most Ray runs first (tests/conftest.py)
TEST_JOBS ?= 2

test: $(BIN)/vggbn
	$(BIN)/lint-imports  # the layer contracts in pyproject.toml (docs/architecture.md)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

# The inner loop: no Ray, no subprocess sweeps (the `ray` and `slow` markers, tests/conftest.py)
test-fast: $(BIN)/vggbn
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not ray and not slow"

# Runs $(SWEEP) (default: the laptop-scale ablation on CIFAR-10), resuming the spec's own experiment
# wherever its storage is if it exists already, then writes the report (<storage>/NAME/report/ locally, reports/NAME/ for a bucket).
# Another dataset: make sweep SWEEP_ARGS="--set base.dataset=fashion_mnist --set base.data_dir=DIR"
sweep: $(BIN)/vggbn
	$(BIN)/vggbn sweep $(SWEEP) $(SWEEP_ARGS) --resume --report

lint: $(BIN)/vggbn
	$(BIN)/ruff check vggbn analysis tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
