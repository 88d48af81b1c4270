# `make test` / `make sweep` create .venv (python3 -m venv + pip) on first use and reuse it after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test sweep lint clean

SWEEP ?= sweeps/quick.yaml
SWEEP_ARGS ?=

$(BIN)/vggbn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	@touch $@

test: $(BIN)/vggbn
	$(BIN)/python -m pytest -q

# Runs $(SWEEP) (default: the laptop-scale ablation on CIFAR-10), resuming it if it was interrupted,
# then writes results/NAME/report/report.md.
# Another dataset: make sweep SWEEP_ARGS="--set base.dataset=fashion_mnist --set base.data_dir=DIR"
sweep: $(BIN)/vggbn
	@name=$$(basename $(SWEEP) .yaml); \
	if ls results/$$name/experiment_state*.json >/dev/null 2>&1; then \
	  echo "results/$$name holds this sweep already: resuming it (rm -rf results/$$name to start over)"; \
	  $(BIN)/vggbn resume results/$$name; \
	else \
	  $(BIN)/vggbn sweep $(SWEEP) $(SWEEP_ARGS) || exit $$?; \
	fi; \
	$(BIN)/vggbn report results/$$name

lint: $(BIN)/vggbn
	$(BIN)/ruff check vggbn tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
