"""bqemulator: a BigQuery stand-in on loopback for tests, run from its own virtualenv.

bqemulator 1.4.0 requires ``sqlglot<30.12`` and runs on whatever duckdb pip picks (2.0.x, which has
no spatial extension on PyPI), so it cannot share the project's environment. It lives in a cached
virtualenv (``$CDC_BQEMU_VENV``, default ``~/.cache/cdc-history/bqemu-venv``) rebuilt whenever
``REQUIREMENTS`` or the Python version change. At start it runs ``INSTALL spatial`` and fails
offline, so the bootstrap installs the extension from the PyPI wheel ``duckdb-extension-spatial``
(which is why duckdb is pinned to the wheel's version) into a private HOME inside the venv, where
DuckDB looks for it. The server is a subprocess on free loopback ports, stopped by its pid.

Prepare the venv ahead of time with ``make bqemu`` (``make install`` does it) or
``python -m tests.bqemu``; the fixtures also build it on first use.

Gaps of bqemulator 1.4.0 the BigQuery adapter must work around (each re-checked by hand on
2026-11-26 with google-cloud-bigquery 3.47.0):

- Multipart upload is rejected (``400 ... multipart upload's second part has unsupported
  Content-Type '*/*'``), so ``load_table_from_json`` and ``load_table_from_file(..., size=N)``
  fail (and so would ``load_table_from_dataframe``). ``load_table_from_file`` of a binary file
  object without ``size=`` uses a resumable upload and works.
- ``query(...).to_arrow()`` with default arguments tries the real
  ``bigquerystorage.googleapis.com`` (``503 ... Domain name not found``) because
  google-cloud-bigquery-storage is installed: pass ``create_bqstorage_client=False`` (then it
  works), or iterate ``result()``. (``to_dataframe`` takes the same path; pandas is not installed
  here to check it.)
- Schema evolution is inconsistent: after ``ALTER TABLE ... ADD COLUMN`` the column works in SQL
  but ``get_table().schema`` does not list it; after ``update_table`` with an extra field the
  schema lists it but SQL fails with ``Binder Error: Referenced column "extra" not found``.
  Do schema changes with DDL and don't trust ``get_table()`` afterwards (on the emulator).
- ``UPDATE ... SET col = a AND b`` (also in a MERGE; any top-level AND/OR as the value) is a
  syntax error (``Unexpected identifier "WHEN"``; its sqlglot 30.11 misparses it): wrap the value
  in parentheses, e.g. an ``exp.Paren`` in the plan. ``INSERT ... VALUES (a AND b)`` is fine.
- ``PRIMARY KEY (...) NOT ENFORCED`` in DDL: ``Parser Error: syntax error at or near "ENFORCED"``.
- ``PARTITION BY DATE(ts) CLUSTER BY k`` in DDL works, but ``get_table()`` then reports no
  partitioning and no clustering; set through the ``Table`` API they round-trip.
- insertAll with a bad value (a string into INT64) answers ``500`` instead of per-row errors, and
  the client retries it until its deadline: pass ``retry=`` / ``timeout=`` in tests.
- Every write (DML, load, insertAll: ``SnapshotManager.record_change``) copies the whole table into a time-travel snapshot (20
  single-row UPDATEs of a 300k-row table: +680 MB). We start it with
  ``BQEMU_TIME_TRAVEL_RETENTION_DAYS=0``: snapshots expire at once and its GC (every 60 s) drops
  them, but ``FOR SYSTEM_TIME AS OF`` then fails with "before the retention window". Set the
  variable in the environment to override.
- Avro load/extract is off (``BQEMU_ENABLE_FORMAT_EXTENSIONS=false``): DuckDB's avro extension
  would be downloaded at start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.servers import ServerError, free_port

REQUIREMENTS = (
    "bqemulator==1.4.0",
    # the newest duckdb whose spatial extension is on PyPI; bqemulator refuses to start without it
    "duckdb==1.5.5",
    "duckdb-extension-spatial==1.5.5",
    # DuckDB needs numpy for the Python UDFs bqemulator registers; bqemulator does not declare it
    "numpy==2.4.6",
)
DEFAULT_PROJECT = "cdc-test"
STARTUP_TIMEOUT_S = 90.0
_STAMP = ".cdc-bqemu-ready"


class BootstrapError(ServerError):
    """The emulator's virtualenv could not be built (no PyPI, no venv module, ...)."""


def cached_venv(variable: str, name: str) -> Path:
    """A tool's virtualenv: ``$variable``, else ``name`` in the user cache."""
    env = os.environ.get(variable)
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cdc-history" / name


def venv_dir() -> Path:
    """Where the emulator's virtualenv lives (``$CDC_BQEMU_VENV`` or the user cache)."""
    return cached_venv("CDC_BQEMU_VENV", "bqemu-venv")


def _venv_key() -> str:
    # a version bump here or a new interpreter invalidates the venv
    return json.dumps({"python": sys.version_info[:2], "requirements": REQUIREMENTS})


def _is_ready(venv: Path) -> bool:
    stamp = venv / _STAMP
    return stamp.exists() and stamp.read_text() == _venv_key()


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        tail = "\n".join(line for line in lines if not line.startswith("WARNING:"))[-3000:]
        raise BootstrapError(f"{what} failed ({' '.join(cmd)}):\n{tail}")


def ensure_venv(venv: Path | None = None) -> Path:
    """Build the emulator's virtualenv unless an up-to-date one exists; return its path.

    Safe to call from several processes at once (a file lock serialises builders); an interrupted
    build has no stamp and is rebuilt from scratch.
    """
    venv = venv or venv_dir()
    if _is_ready(venv):
        return venv
    try:
        return _build_venv(venv)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BootstrapError(f"building the bqemulator virtualenv in {venv} failed: {exc}") from exc


def _build_venv(venv: Path) -> Path:
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_ready(venv):
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], "creating the bqemulator virtualenv")
        python = str(venv / "bin" / "python")
        _run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
            "pip install of the bqemulator virtualenv (needs PyPI)",
        )
        _install_spatial(venv)
        (venv / _STAMP).write_text(_venv_key())
    return venv


def _install_spatial(venv: Path) -> None:
    # DuckDB installs into $HOME/.duckdb/extensions/<version>/<platform>/, the directory the
    # emulator's own `INSTALL spatial` then finds without a download
    script = (
        "import pathlib, duckdb, duckdb_extension_spatial as m\n"
        "ext = next(pathlib.Path(m.__file__).parent.rglob('spatial.duckdb_extension'))\n"
        "con = duckdb.connect()\n"
        'con.execute("INSTALL \'" + str(ext) + "\'")\n'
        "con.execute('LOAD spatial')\n"
    )
    home = venv / "home"
    home.mkdir(exist_ok=True)
    _run(
        [str(venv / "bin" / "python"), "-c", script],
        "installing the DuckDB spatial extension from duckdb-extension-spatial",
        env={**_clean_env(), "HOME": str(home)},
    )


def _clean_env() -> dict[str, str]:
    # the test runner's own virtualenv must not leak into the emulator's interpreter
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _die_with_parent() -> None:
    # a test runner killed with SIGKILL must not leave an emulator holding a GB of RAM behind
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class BigQueryEmulator:
    """One bqemulator server (in-memory) on free loopback ports."""

    def __init__(self, project: str = DEFAULT_PROJECT, venv: Path | None = None):
        self.project = project
        self.venv = venv or venv_dir()
        self.rest_port = free_port()
        self.grpc_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cdc-bqemu-"))
        self.log = self.dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api_endpoint(self) -> str:
        """The REST endpoint for ``ClientOptions(api_endpoint=...)`` / ``BIGQUERY_EMULATOR_HOST``."""
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        """The Storage Read/Write API endpoint (insecure gRPC channel)."""
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> BigQueryEmulator:
        """Start the server and wait until ``/readyz`` says ok and gRPC accepts connections."""
        env = {
            **_clean_env(),
            "HOME": str(self.venv / "home"),
            "BQEMU_TIME_TRAVEL_RETENTION_DAYS": os.environ.get(
                "BQEMU_TIME_TRAVEL_RETENTION_DAYS", "0"
            ),
            # Avro loads need DuckDB's avro extension, which would be downloaded: not offline
            "BQEMU_ENABLE_FORMAT_EXTENSIONS": "false",
            "BQEMU_UPLOAD_STAGING_DIR": str(self.dir / "uploads"),
        }
        cmd = [
            str(self.venv / "bin" / "bqemulator"),
            "start",
            "--rest-host=127.0.0.1",
            f"--rest-port={self.rest_port}",
            "--grpc-host=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--project={self.project}",
            "--log-level=warning",
        ]
        with open(self.log, "wb") as log:
            # cwd: the emulator reads a .bqemu.toml from its working directory
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.destroy()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(
                    f"bqemulator exited with {self._proc.returncode} at start:\n{self._log_tail()}"
                )
            if self._ready():
                return
            time.sleep(0.1)
        raise ServerError(f"bqemulator not ready after {timeout:.0f}s:\n{self._log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_endpoint}/readyz", timeout=2) as resp:
                if json.load(resp).get("status") != "ok":
                    return False
        except (OSError, urllib.error.URLError, ValueError):
            return False
        # gRPC is bound after REST; the Storage API clients need it too
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.grpc_port)) == 0

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def destroy(self) -> None:
        """Stop the server and remove its directory (log, upload staging)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> BigQueryEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


@contextlib.contextmanager
def running_emulator(project: str = DEFAULT_PROJECT) -> Iterator[BigQueryEmulator]:
    """Bootstrap the virtualenv if needed, then run one emulator for the ``with`` block."""
    venv = ensure_venv()
    with BigQueryEmulator(project=project, venv=venv) as emulator:
        yield emulator


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.bqemu [--start]``: build (or check) the emulator's virtualenv; with
    ``--start``, also start the server once and report how long it took."""
    args = sys.argv[1:] if argv is None else argv
    started = time.monotonic()
    try:
        venv = ensure_venv()
    except BootstrapError as exc:
        print(f"bqemulator: {exc}", file=sys.stderr)
        return 1
    print(f"bqemulator: virtualenv {venv} ready ({time.monotonic() - started:.1f}s)")
    if "--start" in args:
        started = time.monotonic()
        with BigQueryEmulator(venv=venv) as emulator:
            print(
                f"bqemulator: answered on {emulator.api_endpoint} "
                f"after {time.monotonic() - started:.1f}s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())


def warehouse_class() -> type:
    """The warehouse class for the tests' BigQuery: real BigQuery when
    ``CDC_TEST_BIGQUERY_PROJECT`` is set, else bqemulator (as ``open_warehouse`` picks it)."""
    if os.environ.get("CDC_TEST_BIGQUERY_PROJECT"):
        from connectors.warehouse.bigquery import BigQueryWarehouse

        return BigQueryWarehouse
    from connectors.warehouse.bqemulator import BQEmulatorWarehouse

    return BQEmulatorWarehouse
