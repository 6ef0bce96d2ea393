# The two entry points of the README: `make demo` and `make test`. Both create the virtual
# environment first (torch and torchvision pinned in pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

# --no-compile: Python compiles the modules it imports when it first imports them; compiling all of
# torch's files during the install costs time that most of them never repay.
$(BIN)/bench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[test]'
	touch $@

install: $(BIN)/bench

# Quick preset on the built-in toy data: pretrain, transfer, table -> runs/suite-quick/table.md
demo: install
	$(BIN)/bench suite --preset quick

test: install
	$(BIN)/python -m pytest -q -n auto

clean:
	rm -rf $(VENV) runs .pytest_cache
