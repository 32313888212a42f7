# Two commands do everything on a fresh machine (see README):
#   make demo   -- set up .venv, run the full 3D pipeline on a generated phantom, end in a report
#   make test   -- set up .venv, run ruff and the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on disk here; asking for it explicitly keeps pip from pulling a CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: demo test lint setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)" -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/synthcp3d demo --out $(DEMO_OUT)

lint: setup
	$(BIN)/python -m ruff check .

test: lint
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
