# Two commands do everything on a fresh machine (see README):
#   make demo   -- set up .venv, run the full 3D pipeline on a generated phantom, end in a report
#   make test   -- set up .venv, run ruff and the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on disk here; asking for it explicitly keeps pip from pulling a CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

# MONAI Label app (apps/synthcp_pancreas) and its server tests run from a SECOND venv with the [label] extra:
# monailabel 0.8.5 pulls ~3.7 GB, pins numpy < 2 and (through pydicom-seg) jsonschema < 4, so .venv stays the
# core install users get and `make test` keeps testing exactly that; .venv-label runs only tests/monailabel.
LABEL_VENV := .venv-label
LABEL_BIN := $(LABEL_VENV)/bin

.PHONY: demo study test lint setup clean setup-label test-label

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)" -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/synthcp3d demo --out $(DEMO_OUT)

# Does the alarm predict segmentation quality? Phantom settings x 3 seeds, CV and held-out scores + diagnostics
# (synthcp3d/study.py; ~50 min on 2 idle CPU cores, add --threads 1 on a busy machine). Rerunning resumes;
# results in runs/study/study.{md,json,csv}.
study: setup
	$(BIN)/synthcp3d study --out runs/study --seeds 3

lint: setup
	$(BIN)/python -m ruff check .

test: lint
	$(BIN)/python -m pytest -q tests

setup-label: $(LABEL_VENV)/.installed

$(LABEL_VENV)/.installed: pyproject.toml
	test -x $(LABEL_BIN)/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)" -e ".[label,dev]"
	touch $@

# SYNTHCP3D_LABEL_TESTS=1 turns "monailabel not installed" from a skip into a failure.
test-label: setup-label
	SYNTHCP3D_LABEL_TESTS=1 $(LABEL_BIN)/python -m pytest -q tests/monailabel

clean:
	rm -rf $(VENV) $(LABEL_VENV) runs .pytest_cache .ruff_cache
