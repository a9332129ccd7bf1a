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

test: data lint unit notebooks browser
	@echo "make test: all checks passed"

lint: $(BIN)/.installed
	$(BIN)/ruff format --check helpers tests benchmarks notebooks
	$(BIN)/ruff check helpers tests benchmarks notebooks

unit: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not browser" tests

# nbval re-runs every notebook and compares its outputs with the committed ones. Each notebook
# is first staged alone in a folder of its own, so the same run proves it needs no other notebook.
notebooks: data
	rm -rf artifacts/standalone
	$(BIN)/python -m pytest -q --nbval \
	  $$($(BIN)/python tests/test_notebooks_standalone.py artifacts/standalone)

# Debian's Chromium for the browser tests; Playwright drives it and never downloads a browser.
# apt-get needs root: without root and without /usr/bin/chromium the browser tests skip.
.PHONY: chromium
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium (log: artifacts/apt-chromium.log)"; mkdir -p artifacts; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    >artifacts/apt-chromium.log 2>&1 || { tail -n 30 artifacts/apt-chromium.log; exit 1; }; \
	else echo "no /usr/bin/chromium and not root: the browser tests will skip"; fi

browser: data chromium
	$(BIN)/python -m pytest -q -m browser tests

bench: data
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache artifacts
