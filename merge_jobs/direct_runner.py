"""Make Beam's Python DirectRunner read Pub/Sub in large bundles (local runs and tests only).

The streaming DirectRunner (``BundleBasedDirectRunner``) reads Pub/Sub with one unary ``Pull`` of
at most **10** messages per bundle (hard-coded in Beam 2.77's ``_PubSubReadEvaluator``), and every
bundle then pays a fixed cost in each step it crosses: the runner re-inspects every DoFn's
signature per bundle (``get_dofn_specs``), unpickles a fresh DoFn, schedules and commits the bundle.
Profiled on the streaming merge job, that per-bundle work was over half of the CPU time and capped
the job near 80 changes/s. With pulls of up to 1,000 messages (Pub/Sub's own limit per response)
a backlog is read in large bundles, and a quiet subscription still yields small ones: a ``Pull``
answers with what is there as soon as something is.

``install()`` registers a subclass of Beam's evaluator through the runner's evaluator overrides
(a class-level table the DirectRunner consults for every run in this process). It changes nothing
for other runners: Dataflow reads Pub/Sub with its own streaming pull. Like Beam's, this read
acknowledges what it pulled at once (see the README's DirectRunner caveats).
"""

from __future__ import annotations

import threading
from typing import Any

#: The most messages one Pull returns (Pub/Sub's limit per response).
PULL_MAX_MESSAGES = 1000

_lock = threading.Lock()


class _LargePulls:
    """A SubscriberClient whose ``pull`` asks for ``max_messages`` whatever the caller asked."""

    def __init__(self, client: Any, max_messages: int):
        self._client = client
        self._max_messages = max_messages

    def pull(self, *, subscription: str, max_messages: int, **kwargs: Any) -> Any:
        return self._client.pull(
            subscription=subscription, max_messages=max(max_messages, self._max_messages), **kwargs
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def install(max_messages: int = PULL_MAX_MESSAGES) -> bool:
    """Make the DirectRunner's Pub/Sub reads pull up to ``max_messages`` per bundle. Idempotent.

    Returns False (and changes nothing) when this Beam has no such evaluator to extend.
    """
    try:
        from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub
        from apache_beam.runners.direct.transform_evaluator import (
            TransformEvaluatorRegistry,
            _PubSubReadEvaluator,
        )
    except ImportError:  # pragma: no cover - Beam without the GCP extra, or a different layout
        return False

    class _LargePullReadEvaluator(_PubSubReadEvaluator):
        @classmethod
        def _get_subscriber_client(cls, transform: Any) -> Any:
            return _LargePulls(super()._get_subscriber_client(transform), max_messages)

    with _lock:
        TransformEvaluatorRegistry._test_evaluators_overrides[_DirectReadFromPubSub] = (
            _LargePullReadEvaluator
        )
    return True
