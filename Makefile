# The commands a developer runs are the commands CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
export NO_GCE_CHECK := true
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT := false

.PHONY: install bqemu system-deps test test-unit lint format typecheck demo check clean

system-deps:
	bash scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[dev,gcp,debezium,mysql]'
	touch $@

install: $(VENV)/.installed bqemu

# bqemulator, the BigQuery stand-in of the tests, in its own cached virtualenv (tests/bqemu.py);
# quick when it is already built
bqemu: $(VENV)/.installed
	$(PY) -m tests.bqemu

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

demo: system-deps install
	$(VENV)/bin/cdc demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
