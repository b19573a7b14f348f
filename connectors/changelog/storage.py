"""The changelog root as a filesystem: one code path for local folders and ``gs://`` (fsspec).

The only place where local and object stores differ is publishing a finished file:

- a local folder stages the bytes in ``<root>/_tmp/``, fsyncs them, then hard-links them to their
  final name (atomic, and refuses to replace an existing file), then fsyncs the folder;
- an object store (GCS) uploads straight to the final name: an object only becomes visible when its
  upload completes, so a crash mid-upload leaves nothing under the layout.

Either way a file is visible under the layout only once complete, and an existing file is never
replaced: a name that is taken gets a ``~N`` suffix on the writer id instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# gcsfs's experimental bucket-type probe talks gRPC to the storage endpoint and hangs for about a
# minute per call against emulators (research/local_gcp_emulators.md §2); plain buckets do not need it.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec
from fsspec.implementations.local import LocalFileSystem

from state_models.changelog import TMP_DIR
from state_models.errors import TransientError


class StorageError(TransientError):
    """The changelog storage failed (a timeout, a refused connection): retrying may help."""


@dataclass(frozen=True)
class Root:
    """A changelog root: the filesystem and the base path inside it (no trailing slash)."""

    fs: Any  # fsspec.AbstractFileSystem
    base: str
    url: str  # as the user gave it, for messages

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def full(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def display(self, path: str) -> str:
        """A path as a user would type it (``gs://bucket/...`` rather than ``bucket/...``)."""
        if self.is_local:
            return path
        return self.fs.unstrip_protocol(path)

    def relative(self, path: str) -> str:
        path = self.fs._strip_protocol(path)
        return path[len(self.base) + 1 :] if path.startswith(self.base + "/") else path

    def refresh(self, path: str | None = None) -> None:
        """Forget cached listings, so that files published by anyone since are seen."""
        with contextlib.suppress(AttributeError):
            self.fs.invalidate_cache(path or self.base)


def open_root(
    root: str, *, storage_options: Mapping[str, Any] | None = None, fs: Any = None
) -> Root:
    """Resolve ``gs://bucket/prefix`` or a local folder to a ``Root``."""
    if fs is None:
        fs, base = fsspec.core.url_to_fs(root, **dict(storage_options or {}))
    else:
        base = fs._strip_protocol(root)
    return Root(fs=fs, base=str(base).rstrip("/"), url=root)


def publish(root: Root, rel_dir: str, make_name: Any, data: bytes | memoryview) -> tuple[str, int]:
    """Store ``data`` as a new file in ``rel_dir``; ``make_name(n)`` names attempt ``n`` (0, 1, ...).

    Returns the final path and its size once the file is complete, synced and listed.
    """
    try:
        if root.is_local:
            path = _publish_local(root, rel_dir, make_name, data)
        else:
            path = _publish_object(root, rel_dir, make_name, data)
        root.refresh(root.full(rel_dir))
        size = int(root.fs.info(path)["size"])
    except (OSError, TimeoutError) as exc:
        raise StorageError(
            f"could not publish a changelog file in {root.display(root.full(rel_dir))}: {exc}"
        ) from exc
    except Exception as exc:  # vendor errors (gcsfs HttpError, aiohttp) have no common base
        if type(exc).__module__.split(".")[0] in ("gcsfs", "aiohttp", "google", "requests"):
            raise StorageError(
                f"could not publish a changelog file in {root.display(root.full(rel_dir))}: {exc}"
            ) from exc
        raise
    if size != len(data):
        raise StorageError(
            f"{root.display(path)} is listed with {size} bytes, {len(data)} were written"
        )
    return path, size


def _publish_local(root: Root, rel_dir: str, make_name: Any, data: bytes | memoryview) -> str:
    tmp_dir = root.full(TMP_DIR)
    final_dir = root.full(rel_dir)
    os.makedirs(tmp_dir, exist_ok=True)
    os.makedirs(final_dir, exist_ok=True)
    tmp = os.path.join(tmp_dir, f"{secrets.token_hex(8)}.parquet.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for attempt in range(1000):
            final = os.path.join(final_dir, make_name(attempt))
            try:
                os.link(tmp, final)
            except FileExistsError:
                continue
            _fsync_dir(final_dir)
            return final
        raise FileExistsError(f"no free file name in {final_dir} after 1000 attempts")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_object(root: Root, rel_dir: str, make_name: Any, data: bytes | memoryview) -> str:
    final_dir = root.full(rel_dir)
    root.refresh(final_dir)
    for attempt in range(1000):
        final = f"{final_dir}/{make_name(attempt)}"
        # Writer ids are unique per writer instance and one instance publishes one file at a time,
        # so check-then-write cannot race with another writer on the same name.
        if root.fs.exists(final):
            continue
        root.fs.pipe_file(final, bytes(data))
        return final
    raise FileExistsError(f"no free file name in {root.display(final_dir)} after 1000 attempts")
