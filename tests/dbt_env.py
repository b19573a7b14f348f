"""dbt with dbt-duckdb, for the tests of ``cdc dbt sources``, in its own locked virtualenv.

dbt is heavy and pins its own dependencies, so it stays out of the service's environment: a cached
virtualenv (``$CDC_DBT_VENV``, default ``~/.cache/cdc-history/dbt-venv``) installed from
``tests/dbt/requirements.lock`` (hashes; regenerate with the command at its top) and rebuilt
whenever that lock or the Python version changes. ``python -m tests.dbt_env`` builds it ahead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import sys
from pathlib import Path

from tests.bqemu import BootstrapError, _clean_env, _run, cached_venv

LOCK = Path(__file__).parent / "dbt" / "requirements.lock"
_STAMP = ".cdc-dbt-ready"


def venv_dir() -> Path:
    return cached_venv("CDC_DBT_VENV", "dbt-venv")


def _key() -> str:
    return json.dumps(
        {"python": sys.version_info[:2], "lock": hashlib.sha256(LOCK.read_bytes()).hexdigest()}
    )


def ensure_venv(venv: Path | None = None) -> Path:
    """The dbt virtualenv, built unless an up-to-date one exists (a file lock serialises
    builders; an interrupted build has no stamp and is built again)."""
    venv = venv or venv_dir()
    stamp = venv / _STAMP
    if stamp.exists() and stamp.read_text() == _key():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == _key():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        try:
            _run([sys.executable, "-m", "venv", str(venv)], "creating the dbt virtualenv")
            _run(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "--require-hashes",
                    "--no-deps",  # the lock holds every package (as the project's install does)
                    "-r",
                    str(LOCK),
                ],
                "pip install of the dbt virtualenv from tests/dbt/requirements.lock (needs PyPI)",
            )
        except OSError as exc:
            raise BootstrapError(f"building the dbt virtualenv in {venv} failed: {exc}") from exc
        stamp.write_text(_key())
    return venv


def dbt_env() -> dict[str, str]:
    """The environment dbt runs in: ours without our virtualenv, no telemetry."""
    return {**_clean_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}


if __name__ == "__main__":
    print(f"dbt: virtualenv {ensure_venv()} ready")
