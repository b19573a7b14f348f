"""dbt with dbt-duckdb, for the tests of ``cdc dbt sources``, in its own locked virtualenv.

dbt is heavy and pins its own dependencies, so it stays out of the service's environment: a cached
virtualenv (``$CDC_DBT_VENV``, default ``~/.cache/cdc-history/dbt-venv``) installed from
``tests/dbt/requirements.lock`` (hashes; regenerate with the command at its top) and rebuilt
whenever that lock or the Python version changes. ``python -m tests.dbt_env`` builds it ahead.
"""

from __future__ import annotations

from pathlib import Path

from tests.bqemu import _clean_env, cached_venv
from tests.locked_venv import ensure_locked_venv

LOCK = Path(__file__).parent / "dbt" / "requirements.lock"


def venv_dir() -> Path:
    return cached_venv("CDC_DBT_VENV", "dbt-venv")


def ensure_venv(venv: Path | None = None) -> Path:
    """The dbt virtualenv, built unless an up-to-date one exists."""
    return ensure_locked_venv(venv or venv_dir(), LOCK, "dbt")


def dbt_env() -> dict[str, str]:
    """The environment dbt runs in: ours without our virtualenv, no telemetry."""
    return {**_clean_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}


if __name__ == "__main__":
    print(f"dbt: virtualenv {ensure_venv()} ready")
