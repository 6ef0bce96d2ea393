# The two entry points of the README: `make demo` and `make test`. Both create the virtual
# environment first (torch and torchvision pinned in pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/bench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/bench

# Quick preset on the built-in toy data: pretrain, transfer, table -> runs/suite-quick/table.md
demo: install
	$(BIN)/bench suite --preset quick

test: install
	$(BIN)/python -m pytest -q -n auto --dist worksteal

clean:
	rm -rf $(VENV) runs .pytest_cache
