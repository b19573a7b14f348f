"""Make Beam's Python DirectRunner read Pub/Sub in large bundles (local runs and tests only).

The streaming DirectRunner (``BundleBasedDirectRunner``) reads Pub/Sub with one unary ``Pull`` of
at most **10** messages per bundle (hard-coded in Beam 2.77's ``_PubSubReadEvaluator``), and every
bundle then pays a fixed cost in each step it crosses: the runner re-inspects every DoFn's
signature per bundle (``get_dofn_specs``), unpickles a fresh DoFn, schedules and commits the bundle.
Profiled on the streaming merge job, that per-bundle work was over half of the CPU time and capped
the job near 80 changes/s. With pulls of up to 1,000 messages (Pub/Sub's own limit per response)
a backlog is read in large bundles, and a quiet subscription still yields small ones: a ``Pull``
answers with what is there as soon as something is. The runner pulls again only once the previous
bundle has gone through every step, so the cost per message decides the latency as well.

Beam converts each received message through the client's proto-plus wrappers (a field access
costs microseconds, the publish time becomes a ``DatetimeWithNanoseconds``): a quarter of the
job's CPU with large bundles. This read builds the same ``PubsubMessage`` (data, attributes,
message id, publish time, ordering key) and element timestamp (the publish time) from the raw
protobuf response. Reads with a ``timestamp_attribute`` keep Beam's own conversion.

The same runner also re-derives every DoFn's state and timer specs (``get_dofn_specs``: ``dir()``
of the DoFn and ``inspect.signature`` of each of its methods) three to five times per bundle per
step, and it runs each step on empty bundles too: about 100 ms per pulled bundle across the job's
steps. The specs are a property of the DoFn's class (the state and timer parameters are defaults
of its methods), so ``install()`` memoizes them by class, for DoFns without per-instance methods.

``install()`` registers a subclass of Beam's evaluator through the runner's evaluator overrides
(a class-level table the DirectRunner consults for every run in this process). It changes nothing
for other runners: Dataflow reads Pub/Sub with its own streaming pull. Like Beam's, this read
acknowledges what it pulled at once (see the README's DirectRunner caveats).
"""

from __future__ import annotations

import datetime as dt
import threading
import types
from typing import Any

#: The most messages one Pull returns (Pub/Sub's limit per response).
PULL_MAX_MESSAGES = 1000
#: How long one Pull may wait for messages (Beam's own value).
PULL_TIMEOUT_S = 30.0

_lock = threading.Lock()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def received_elements(response: Any) -> tuple[list[tuple[Any, Any]], list[str]]:
    """A Pull response -> ([(element timestamp, PubsubMessage)], ack ids), from the raw protobuf."""
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.utils.timestamp import Timestamp

    pb = type(response).pb(response) if hasattr(type(response), "pb") else response
    elements, ack_ids = [], []
    for received in pb.received_messages:
        m = received.message
        seconds, nanos = m.publish_time.seconds, m.publish_time.nanos
        published = _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
        message = PubsubMessage(
            m.data,
            dict(m.attributes),
            message_id=m.message_id or None,
            publish_time=published,
            ordering_key=m.ordering_key,
        )
        elements.append((Timestamp(seconds, nanos // 1000), message))
        ack_ids.append(received.ack_id)
    return elements, ack_ids


def runs_on(pipeline: Any) -> bool:
    """Whether ``pipeline`` runs on Beam's Python DirectRunner (where streaming is bundle-based)."""
    try:
        from apache_beam.runners.direct.direct_runner import (
            BundleBasedDirectRunner,
            SwitchingDirectRunner,
        )
    except ImportError:  # pragma: no cover
        return False
    return isinstance(pipeline.runner, BundleBasedDirectRunner | SwitchingDirectRunner)


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
        def _read_from_pubsub(self, timestamp_attribute: str | None) -> list[tuple[Any, Any]]:
            if timestamp_attribute:
                return list(super()._read_from_pubsub(timestamp_attribute))
            client = self._get_subscriber_client(self._applied_ptransform)
            response = client.pull(
                subscription=self._sub_name, max_messages=max_messages, timeout=PULL_TIMEOUT_S
            )
            elements, ack_ids = received_elements(response)
            if ack_ids:
                client.acknowledge(subscription=self._sub_name, ack_ids=ack_ids)
            return elements

    with _lock:
        TransformEvaluatorRegistry._test_evaluators_overrides[_DirectReadFromPubSub] = (
            _LargePullReadEvaluator
        )
        _memoize_dofn_specs()
    return True


def _memoize_dofn_specs() -> None:
    """Make Beam's ``get_dofn_specs`` (and ``is_stateful_dofn``, which calls it) remember by class."""
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import userstate

    if getattr(userstate.get_dofn_specs, "_cdc_memoized", False):
        return
    derive = userstate.get_dofn_specs
    known: dict[type, tuple[frozenset[Any], frozenset[Any]]] = {}

    def get_dofn_specs(dofn: Any) -> tuple[set[Any], set[Any]]:
        if any(isinstance(v, types.MethodType) for v in getattr(dofn, "__dict__", {}).values()):
            return derive(dofn)  # methods set on the instance: not a property of the class
        specs = known.get(type(dofn))
        if specs is None:
            state, timers = derive(dofn)
            specs = known[type(dofn)] = (frozenset(state), frozenset(timers))
        return set(specs[0]), set(specs[1])

    get_dofn_specs._cdc_memoized = True  # type: ignore[attr-defined]
    userstate.get_dofn_specs = get_dofn_specs
    # transform_evaluator imported both names; is_stateful_dofn looks get_dofn_specs up in userstate
    transform_evaluator.get_dofn_specs = get_dofn_specs
