"""Connections that DoFns borrow in ``setup`` and give back in ``teardown``, one per user at a time.

Beam calls ``setup`` once per DoFn instance and reuses the instance for many bundles on Dataflow,
but the Python DirectRunner that runs streaming pipelines locally unpickles a fresh DoFn and calls
``setup``/``teardown`` around *every bundle*. Opening a warehouse connection or a Pub/Sub client
per bundle would cost more than the bundle itself, so DoFns borrow them from this process-wide
pool instead: ``setup`` takes an idle one (or makes one), ``teardown`` returns it. A borrowed
object is never shared by two DoFn instances at once, so objects that are not thread-safe (a DuckDB
connection) are safe here. Idle objects are closed when the process exits, or by ``close_idle``
(the job runner calls it once the pipeline has finished). ``lock(key)`` is a lock shared by every
DoFn of the process, for work that must not overlap there (one MERGE per table at a time).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class ResourcePool:
    """Idle objects by key; ``acquire`` hands one out exclusively, ``release`` takes it back."""

    def __init__(self) -> None:
        self._idle: dict[Hashable, list[Any]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def lock(self, key: Hashable) -> threading.Lock:
        """The process-wide lock of ``key`` (e.g. one table of one warehouse), made on first use."""
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def acquire(self, key: Hashable, make: Callable[[], T]) -> T:
        """An idle object for ``key``, or a new one from ``make()``."""
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                obj: T = idle.pop()
                return obj
        return make()

    def release(self, key: Hashable, obj: Any) -> None:
        """Give ``obj`` back for the next ``acquire`` of ``key``."""
        with self._lock:
            self._idle.setdefault(key, []).append(obj)

    def discard(self, obj: Any) -> None:
        """Close an object that failed instead of giving it back."""
        _close(obj)

    def close_idle(self) -> int:
        """Close every idle object; returns how many were closed."""
        with self._lock:
            idle = [obj for objs in self._idle.values() for obj in objs]
            self._idle.clear()
        for obj in idle:
            _close(obj)
        return len(idle)


def _close(obj: Any) -> None:
    closer = getattr(obj, "close", None) or getattr(obj, "stop", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            closer()


#: The pool every DoFn of this process uses.
POOL = ResourcePool()
atexit.register(POOL.close_idle)
