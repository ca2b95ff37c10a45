# The two commands of the README: `make demo` and `make test`.
# Both create the environment first (python3 -m venv + pip), once.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,tools,chart,bench,cluster]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python scripts/demo.py

# compileall: bytecode for every process the suite starts (five per walnode); with
# PYTHONDONTWRITEBYTECODE set, as on the CI box, each compiled the repository's modules again.
# -n 3 --dist worksteal: docs/TESTING.md
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy wal actors
	$(BIN)/python -m compileall -q wal actors walctl walnode node.py supervisor.py tests
	$(BIN)/python -m pytest -q -n 3 --dist worksteal

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
