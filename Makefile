# The commands a developer runs are the commands CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
export NO_GCE_CHECK := true
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT := false

# Every Python package the tests, CI and the demo install, at exact versions with their hashes
LOCK := requirements.lock
EXTRAS := dev gcp debezium mysql online

.PHONY: install lock bqemu dbt-env airflow-env system-deps test test-unit lint format typecheck demo check clean

system-deps:
	bash scripts/install-system-deps.sh

# The lock, then this project itself (editable, nothing else resolved: every dependency is locked)
$(VENV)/.installed: $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed bqemu dbt-env airflow-env

# dbt with dbt-duckdb for the tests of `cdc dbt sources`, in its own locked virtualenv (tests/dbt_env.py)
dbt-env: $(VENV)/.installed
	$(PY) -m tests.dbt_env

# Airflow with the Google and Beam providers for the tests of the Composer operators (composer/), in
# its own locked virtualenv (tests/airflow_env.py)
airflow-env: $(VENV)/.installed
	$(PY) -m tests.airflow_env

# Re-resolve the lock from pyproject.toml's ranges (newest allowed versions, every platform,
# Python 3.11 and up); run the tests on it before committing it
lock: $(VENV)/.installed
	$(VENV)/bin/uv pip compile pyproject.toml $(addprefix --extra ,$(EXTRAS)) --universal \
		--python-version 3.11 --generate-hashes --upgrade --custom-compile-command "make lock" \
		-q -o $(LOCK)

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

# the demo needs no BigQuery emulator: only the locked environment
demo: system-deps $(VENV)/.installed
	$(VENV)/bin/cdc demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
