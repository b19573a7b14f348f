"""Airflow with the Google and Apache Beam providers, for the tests of the Composer operators
(``composer/cdc_airflow``), in its own locked virtualenv (``$CDC_AIRFLOW_VENV``, default
``~/.cache/cdc-history/airflow-venv``) from ``composer/requirements.lock``, with ``composer/``
installed in place. ``python -m tests.airflow_env`` builds it ahead (``make airflow-env``)."""

from __future__ import annotations

from pathlib import Path

from tests.bqemu import _clean_env, cached_venv
from tests.locked_venv import ensure_locked_venv

COMPOSER = Path(__file__).resolve().parents[1] / "composer"
LOCK = COMPOSER / "requirements.lock"


def venv_dir() -> Path:
    return cached_venv("CDC_AIRFLOW_VENV", "airflow-venv")


def ensure_venv(venv: Path | None = None) -> Path:
    """The Airflow virtualenv, built unless an up-to-date one exists."""
    return ensure_locked_venv(venv or venv_dir(), LOCK, "Airflow", editable=[COMPOSER])


def airflow_env(home: Path) -> dict[str, str]:
    """The environment Airflow runs in: ours without our virtualenv, its home (config, SQLite
    metadata database, logs) in ``home``, no example DAGs, no telemetry."""
    return {
        **_clean_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "SCARF_ANALYTICS": "false",
        "DO_NOT_TRACK": "1",
    }


if __name__ == "__main__":
    print(f"Airflow: virtualenv {ensure_venv()} ready")
