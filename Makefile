# Two commands for readers: `make lab` and `make test`. See README.md.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED_ZIP ?= ../shared/data/ml-latest-small.zip
# Notebooks run on the CPU with quiet TensorFlow start-up logs.
export TF_CPP_MIN_LOG_LEVEL := 3
export TF_ENABLE_ONEDNN_OPTS := 0

.PHONY: lab test unit notebooks lint browser bench data clean

# The virtual environment is rebuilt when the pins change.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Fill the data cache: from the official zip in ../shared when it is there (offline, CI),
# otherwise by downloading it from GroupLens. Either way the checksum is verified.
data: $(BIN)/.installed
	if [ -f $(SHARED_ZIP) ]; then $(BIN)/python -m helpers.data seed $(SHARED_ZIP); \
	else $(BIN)/python -m helpers.data fetch; fi

lab: data
	$(BIN)/jupyter lab notebooks/

test: data lint unit notebooks
	@echo "make test: all checks passed"

lint: $(BIN)/.installed
	$(BIN)/ruff format --check helpers tests benchmarks notebooks
	$(BIN)/ruff check helpers tests benchmarks notebooks

unit: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not browser" tests

notebooks: data
	$(BIN)/python -m pytest -q --nbval notebooks

browser: data
	$(BIN)/python -m pytest -q -m browser tests

bench: data
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache artifacts
