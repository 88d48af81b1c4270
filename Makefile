# `make test` / `make sweep` create .venv (python3 -m venv + pip) on first use and reuse it after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test lint clean

$(BIN)/vggbn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	@touch $@

test: $(BIN)/vggbn
	$(BIN)/python -m pytest -q

lint: $(BIN)/vggbn
	$(BIN)/ruff check vggbn tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
