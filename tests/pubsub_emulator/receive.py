"""Pulling with the official client in tests, the same way against the stand-in and the emulator."""

from __future__ import annotations

import time
from typing import Any

from google.api_core import exceptions


def pull_once(
    subscriber: Any, subscription: str, max_messages: int = 100, timeout: float = 3.0
) -> list[Any]:
    """One Pull; an idle server may answer empty or let the call time out: both mean 'nothing'."""
    try:
        response = subscriber.pull(
            subscription=subscription, max_messages=max_messages, timeout=timeout, retry=None
        )
    except exceptions.DeadlineExceeded:
        return []
    return list(response.received_messages)


def pull_until(
    subscriber: Any, subscription: str, count: int, timeout: float = 15.0, ack: bool = False
) -> list[Any]:
    """Pull until at least ``count`` messages arrived (acking them when ``ack``); fail on timeout."""
    got: list[Any] = []
    until = time.monotonic() + timeout
    while len(got) < count:
        if time.monotonic() > until:
            raise AssertionError(f"expected {count} messages on {subscription}, got {len(got)}")
        batch = pull_once(subscriber, subscription, count - len(got))
        if ack and batch:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in batch])
        got.extend(batch)
    return got
