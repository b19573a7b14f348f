"""Retrying an unreachable source with exponential backoff, saying so each time.

Why not tenacity: this backoff waits on the capture's stop event (Ctrl-C ends a wait at once),
starts counting ``max_seconds`` afresh whenever a session connects (``reset``: a source that ran
for an hour and then dropped gets its full patience again, where tenacity's ``stop_after_delay``
counts from the first attempt of one call), and writes every wait into the capture's status.
With tenacity each of those is a callback of ours around its loop, and the code does not get
shorter. Only ``SourceUnavailableError`` (the network) is retried; a refusal
(``SourceAccessError``: wrong password, missing grant) stops the capture at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from connectors.capture.base import Capture
from state_models.errors import SourceUnavailableError


class Backoff:
    """Waits 1, 2, 4, ... seconds (capped) between attempts; gives up after ``max_seconds``
    of continuous failure (None: never). ``reset`` once connected again."""

    def __init__(
        self,
        capture: Capture,
        max_seconds: float | None,
        initial: float,
        maximum: float,
        logger: logging.Logger,
    ):
        self.capture = capture
        self.max_seconds = max_seconds
        self.initial = initial
        self.maximum = maximum
        self.log = logger
        self.reset()

    def reset(self) -> None:
        self.delay = self.initial
        self.failing_since: float | None = None

    def wait(self, exc: SourceUnavailableError, stop: threading.Event) -> bool:
        """Sleep before the next attempt; False if ``stop`` was set meanwhile. Raises ``exc`` (with
        how long it lasted) once the source has been unreachable for longer than ``max_seconds``."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        failing = now - self.failing_since
        if self.max_seconds is not None and failing >= self.max_seconds:
            raise SourceUnavailableError(
                f"{exc} (unreachable for {failing:.0f}s, giving up)"
            ) from exc
        attempt = self.capture.stats().retries + 1
        self.capture._update(phase="retrying", retries=attempt, last_error=str(exc))
        self.log.warning("%s; retrying in %.0fs (attempt %d)", exc, self.delay, attempt)
        stopped = stop.wait(self.delay)
        self.delay = min(self.delay * 2, self.maximum)
        return not stopped

    def run(self, session: Callable[[], None], stop: threading.Event) -> None:
        """Run ``session`` until it returns, retrying it with backoff while the source is
        unreachable (``SourceUnavailableError``); other errors propagate."""
        while not stop.is_set():
            try:
                session()
                return
            except SourceUnavailableError as exc:
                if not self.wait(exc, stop):
                    return
