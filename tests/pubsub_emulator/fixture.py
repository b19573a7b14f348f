"""The ``pubsub_emulator`` fixture: a Pub/Sub endpoint for one test, via ``PUBSUB_EMULATOR_HOST``.

When ``PUBSUB_EMULATOR_HOST`` is set before the session starts, that server (the official
emulator: ``gcloud beta emulators pubsub start``) is used and the same tests run against it;
otherwise one in-process ``PubSubStandIn`` serves the whole session. Each test gets its own
project id, so topics and subscriptions never leak between tests on either server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.pubsub_emulator.server import PubSubStandIn


@dataclass(frozen=True)
class PubSubEndpoint:
    """Where the test's Pub/Sub is; ``kind`` is ``stand-in`` or ``external`` (official emulator)."""

    host: str
    project: str
    kind: str

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        return f"projects/{self.project}/subscriptions/{subscription}"


@pytest.fixture(scope="session")
def pubsub_host() -> Iterator[tuple[str, str]]:
    """(host:port, kind) of the session's Pub/Sub server."""
    external = os.environ.get("PUBSUB_EMULATOR_HOST")
    if external:
        yield external, "external"
        return
    server = PubSubStandIn().start()
    try:
        yield server.host, "stand-in"
    finally:
        server.stop()


@pytest.fixture
def pubsub_emulator(
    pubsub_host: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> PubSubEndpoint:
    """A fresh project on the session's Pub/Sub server, with ``PUBSUB_EMULATOR_HOST`` set."""
    host, kind = pubsub_host
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
    return PubSubEndpoint(host=host, project=f"test-{uuid.uuid4().hex[:10]}", kind=kind)
