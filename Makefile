# Two commands do everything on a fresh machine:
#   make demo   set up, prepare Tiny Shakespeare, train the cpu-small preset, print a sample
#   make test   set up, lint, run the test suite
# Setup makes a virtual environment in .venv and installs torch==2.13.0 into it only when
# no torch is importable there (an unpinned torch could pull a multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PRESET ?= cpu-small
# the playground's browser test (tests/test_serve_browser.py) drives it
CHROMIUM ?= /usr/bin/chromium
BIN := $(VENV)/bin

.PHONY: setup demo test pytest lint clean

$(BIN)/quill: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,export,track]"
	@touch $@

setup: $(BIN)/quill

demo: setup
	$(BIN)/quill prepare shakespeare
	$(BIN)/quill train --preset $(PRESET)

lint: setup
	$(BIN)/ruff check src tests

test: lint pytest

# The suite alone (TESTS narrows it). A run that collects no test fails: pytest exits 5 then.
pytest:
	@test -x $(CHROMIUM) || echo "make test: no $(CHROMIUM), so the playground's browser test is skipped (install it: apt-get install chromium)"
	$(BIN)/python -m pytest -q $(TESTS)

clean:
	rm -rf $(VENV) runs data .pytest_cache .ruff_cache .hypothesis
