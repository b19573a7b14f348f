"""Durable capture positions: one small JSON file per source under ``<state_dir>/offsets/``.

Every save writes a temporary file next to the target, fsyncs it, renames it over the target and
fsyncs the directory, so after a crash (process or machine) the file holds either the previous or the
new position, never a torn one. A position file records which engine wrote it: switching a source's
engine must be a deliberate re-snapshot, never a silent misreading of another engine's position.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from connectors.capture.errors import CaptureError
from state_models.errors import ConfigError


def offsets_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "offsets"


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class OffsetStore:
    """The stored position of one source's capture."""

    def __init__(self, state_dir: str | Path, source_name: str, engine: str):
        self.source_name = source_name
        self.engine = engine
        self.path = offsets_dir(state_dir) / f"{source_name}.json"

    def load(self) -> dict[str, Any] | None:
        """The saved position, or None when the source was never captured."""
        if not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_text())
            position = doc["position"]
            engine = doc["engine"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CaptureError(
                f"offset file {self.path} is unreadable ({exc}); restore it from a backup, or delete "
                "it to re-snapshot the source"
            ) from exc
        if engine != self.engine:
            raise ConfigError(
                f"source {self.source_name!r} was captured with engine {engine!r} (offset file "
                f"{self.path}), the registry now says {self.engine!r}; positions of one engine mean "
                "nothing to another: delete the offset file (and the old slot) to re-snapshot with "
                f"{self.engine!r}, or set engine back to {engine!r}"
            )
        if not isinstance(position, dict):
            raise CaptureError(f"offset file {self.path}: 'position' must be an object")
        return position

    def save(self, position: dict[str, Any]) -> None:
        doc = {
            "source": self.source_name,
            "engine": self.engine,
            "position": position,
            "saved_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
        write_atomically(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
