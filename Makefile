# Two commands do everything on a fresh machine:
#   make demo   set up, prepare Tiny Shakespeare, train the cpu-small preset, print a sample
#   make test   set up, lint, run the test suite
# Setup makes a virtual environment in .venv and installs torch==2.13.0 into it only when
# no torch is importable there (an unpinned torch could pull a multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PRESET ?= cpu-small
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

$(BIN)/quill: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,export]"
	@touch $@

setup: $(BIN)/quill

demo: setup
	$(BIN)/quill prepare shakespeare
	$(BIN)/quill train --preset $(PRESET)

lint: setup
	$(BIN)/ruff check src tests

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: lint
	$(BIN)/python -m pytest -q || [ $$? -eq 5 ]

clean:
	rm -rf $(VENV) runs data .pytest_cache .ruff_cache .hypothesis
