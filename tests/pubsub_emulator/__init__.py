"""A Pub/Sub stand-in for tests: the real ``google.pubsub.v1`` gRPC API, in-process or as a process.

``PubSubStandIn`` is the server (see ``server.py`` for what it does and refuses); the pytest fixture
``pubsub_emulator`` (``fixture.py``) points ``PUBSUB_EMULATOR_HOST`` at it, or at the official
emulator when ``PUBSUB_EMULATOR_HOST`` is already set. ``python -m tests.pubsub_emulator`` runs it as
a separate process (for benchmarks, or to poke at it by hand).
"""

from tests.pubsub_emulator.server import PubSubStandIn

__all__ = ["PubSubStandIn"]
