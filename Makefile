# make demo: set up and run the quickstart.   make test: set up and run the test suite (CI runs this).
# CPU machines install the CPU build of torch through constraints/cpu.txt; on a CUDA machine use
#   make install CONSTRAINTS=        (no pin: pip picks your CUDA build of torch)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints/cpu.txt
SPEC ?= experiments/quickstart.yaml
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install prepare demo test lint format spec-table clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev,s3]'
	touch $@

install: $(VENV)/.installed

prepare: install
	$(PY) -m orchestrator prepare

demo: prepare
	$(PY) -m orchestrator run $(SPEC)

# The quality check (tests/quality) fine-tunes the real model on the prepared data.
test: prepare lint
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check orchestrator tests
	$(VENV)/bin/ruff format --check orchestrator tests

format: install
	$(VENV)/bin/ruff check --fix orchestrator tests
	$(VENV)/bin/ruff format orchestrator tests

# The README's table of spec fields, generated from the field descriptions in orchestrator/spec/.
spec-table: install
	$(PY) -m orchestrator.spec.reference --write README.md

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
