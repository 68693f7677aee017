# mlpipe: `make setup` once, then `make run` (the pipeline on the embedded taxi data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mlpipe-installed

.PHONY: setup run test bench clean-workspace test-services lint fmt

setup: $(STAMP)

# Fully pinned lock installed without resolution (TFX 1.16 declares Python < 3.11 but runs on 3.11).
$(STAMP): requirements.lock requirements-test.lock setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "mlpipe needs Python 3.11, got " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-deps --ignore-requires-python -r requirements.lock
	$(BIN)/pip install -q --no-deps -r requirements-test.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: setup
	$(BIN)/mlpipe run $(ARGS)

test: setup lint test-services
	$(BIN)/python -m pytest -q --durations=30 $(PYTEST_ARGS)

# Lint: ruff (rules and the 120-column format, pyproject.toml) and the import-layer contract
# (lint-imports: no upward imports between pipeline/, serving/, models/, data/; docs/architecture.md).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python bench/taxi_reference_bench.py

test-services:  # MariaDB (MLMD-on-MySQL tests) and Chromium (the release report test): tools/test-services.sh
	tools/test-services.sh

clean-workspace:
	rm -rf workspace
