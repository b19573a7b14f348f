"""A throwaway GCS: ``gcp-storage-emulator`` as a subprocess on a free loopback port.

It is the GCS emulator that Beam's file IO also works against (research/local_gcp_emulators.md §2).
Clients find it through ``STORAGE_EMULATOR_HOST`` (official client, gcsfs, Beam), which the
``gcs_emulator`` fixture sets for the session. gcsfs must see
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` before it is imported (tests/conftest.py sets it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServerError, free_port


def emulator_command() -> list[str] | None:
    """How to start gcp-storage-emulator here; None when it is not installed."""
    beside = Path(sys.executable).with_name("gcp-storage-emulator")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("gcp-storage-emulator")
    return [found] if found else None


class GcsEmulator:
    """gcp-storage-emulator in memory on 127.0.0.1."""

    def __init__(self) -> None:
        cmd = emulator_command()
        if cmd is None:
            raise ServerError("gcp-storage-emulator not found (pip install gcp-storage-emulator)")
        self.cmd = cmd
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # The emulator logs every request; a pipe nobody reads would fill up and block it.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed in stop())
            prefix="gcs-emulator-", suffix=".log", delete=False
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GcsEmulator:
        self.proc = subprocess.Popen(
            [
                *self.cmd,
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--in-memory",
                "--default-bucket",
                "cdc-default",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = Path(self.log.name).read_text(errors="replace")[-2000:]
                raise ServerError(f"gcp-storage-emulator exited with {self.proc.returncode}: {err}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"gcp-storage-emulator did not answer on {self.endpoint} in {timeout}s")

    def create_bucket(self, prefix: str = "cdc-test") -> str:
        """A new empty bucket; returns its name."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        client = storage.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )
        client.create_bucket(name)
        return name

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- fixtures
# Imported into tests/conftest.py.


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """One gcp-storage-emulator for the session; ``STORAGE_EMULATOR_HOST`` points at it."""
    if emulator_command() is None:
        pytest.skip("gcp-storage-emulator not installed: pip install -e '.[dev]'")
    emulator = GcsEmulator().start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.endpoint
    try:
        yield emulator
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        emulator.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator) -> str:
    """A fresh empty bucket on the emulator."""
    return gcs_emulator.create_bucket()


@pytest.fixture(params=["local", "gcs"])
def changelog_root(request: Any, tmp_path: Path) -> str:
    """A changelog root: a local folder, then ``gs://`` on the emulator (the same tests run on both)."""
    if request.param == "local":
        return str(tmp_path / "changelog")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/raw"
