"""A tool the tests run but the service never imports (dbt, Airflow), in its own cached
virtualenv installed from a hash-locked requirements file.

Such tools pin hundreds of packages of their own, so they stay out of the service's environment.
The virtualenv is rebuilt whenever its lock, its extra installs or the Python version change; a
file lock serialises builders and an interrupted build has no stamp, so it is built again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.bqemu import BootstrapError, _run

_STAMP = ".cdc-locked-venv-ready"


def _key(lock: Path, editable: Sequence[Path]) -> str:
    return json.dumps(
        {
            "python": sys.version_info[:2],
            "lock": hashlib.sha256(lock.read_bytes()).hexdigest(),
            "editable": [str(p.resolve()) for p in editable],
        }
    )


def ensure_locked_venv(venv: Path, lock: Path, what: str, editable: Sequence[Path] = ()) -> Path:
    """``venv`` with every package of ``lock`` (``--require-hashes --no-deps``: the lock holds
    them all) and then each of ``editable`` installed in place without dependencies."""
    stamp = venv / _STAMP
    key = _key(lock, editable)
    if stamp.exists() and stamp.read_text() == key:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == key:
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        pip.append("--disable-pip-version-check")
        try:
            _run([sys.executable, "-m", "venv", str(venv)], f"creating the {what} virtualenv")
            _run(
                [*pip, "--require-hashes", "--no-deps", "-r", str(lock)],
                f"pip install of the {what} virtualenv from {lock} (needs PyPI)",
            )
            for path in editable:
                _run(
                    [*pip, "--no-deps", "--no-build-isolation", "-e", str(path)],
                    f"installing {path} into the {what} virtualenv",
                )
        except OSError as exc:
            raise BootstrapError(f"building the {what} virtualenv in {venv} failed: {exc}") from exc
        stamp.write_text(key)
    return venv
