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

``install(pipeline)`` changes Beam only when ``pipeline`` runs on the DirectRunner, and only on a
Beam release these hooks were checked against (``CHECKED_BEAM``: the private names and signatures
they rely on, listed by ``missing_internals()``, which a unit test runs on the installed Beam);
otherwise it logs a warning and Beam runs as it is, slower but correct. It registers a subclass of
Beam's evaluator through the runner's evaluator overrides (a class-level table the DirectRunner
consults for every run in this process) and replaces ``get_dofn_specs`` in the two modules that
look it up. ``uninstall()`` puts Beam's own back (the tests do after each test). Dataflow and the
other runners are never touched: Dataflow reads Pub/Sub with its own streaming pull. Like Beam's,
this read acknowledges what it pulled at once (see the README's DirectRunner caveats).
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import threading
import types
from typing import Any

#: The most messages one Pull returns (Pub/Sub's limit per response).
PULL_MAX_MESSAGES = 1000
#: How long one Pull may wait for messages (Beam's own value).
PULL_TIMEOUT_S = 30.0

#: Beam releases whose DirectRunner internals these hooks were checked against.
CHECKED_BEAM = ("2.77", "2.78")

log = logging.getLogger(__name__)
_lock = threading.Lock()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Beam's own ``get_dofn_specs`` while ours is installed (None: nothing installed).
_beam_get_dofn_specs: Any = None


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


def missing_internals() -> list[str]:
    """What of the DirectRunner's private parts the hooks rely on this Beam lacks (empty: all there)."""
    try:
        from apache_beam.runners.direct import direct_runner, transform_evaluator
        from apache_beam.transforms import userstate
    except ImportError as exc:  # pragma: no cover - Beam without the direct runner
        return [f"apache_beam.runners.direct ({exc})"]
    missing = []
    if not hasattr(direct_runner, "_DirectReadFromPubSub"):
        missing.append("direct_runner._DirectReadFromPubSub")
    registry = getattr(transform_evaluator, "TransformEvaluatorRegistry", None)
    if not isinstance(getattr(registry, "_test_evaluators_overrides", None), dict):
        missing.append("TransformEvaluatorRegistry._test_evaluators_overrides (a dict)")
    evaluator = getattr(transform_evaluator, "_PubSubReadEvaluator", None)
    expected = {
        "_read_from_pubsub": ["self", "timestamp_attribute"],
        "_get_subscriber_client": ["transform"],  # a classmethod: cls is bound
    }
    for name, params in expected.items():
        method = getattr(evaluator, name, None)
        if method is None or list(inspect.signature(method).parameters) != params:
            missing.append(f"_PubSubReadEvaluator.{name}({', '.join(params)})")
    # attributes the read uses, set by the evaluator's constructors (checked in their source)
    for name, owner in (("_sub_name", evaluator), ("_applied_ptransform", _base(evaluator))):
        try:
            assigned = owner is not None and f"self.{name} =" in inspect.getsource(owner.__init__)
        except (OSError, TypeError):  # no source shipped: cannot tell, so do not refuse
            assigned = True
        if not assigned:
            missing.append(f"_PubSubReadEvaluator.{name}")
    if getattr(transform_evaluator, "get_dofn_specs", None) is not getattr(
        userstate, "get_dofn_specs", None
    ):
        missing.append("transform_evaluator.get_dofn_specs (imported from userstate)")
    # is_stateful_dofn must look get_dofn_specs up in userstate's globals, where we replace it
    stateful = getattr(userstate, "is_stateful_dofn", None)
    if stateful is None or stateful.__globals__ is not vars(userstate):
        missing.append("userstate.is_stateful_dofn (calling userstate.get_dofn_specs)")
    return missing


def _base(cls: Any) -> Any:
    return cls.__mro__[1] if isinstance(cls, type) and len(cls.__mro__) > 1 else None


def install(pipeline: Any, max_messages: int = PULL_MAX_MESSAGES) -> bool:
    """Make ``pipeline``'s DirectRunner pull up to ``max_messages`` per bundle and remember DoFn
    specs by class. Idempotent.

    Returns False, changing nothing, when the pipeline runs elsewhere; logs a warning and returns
    False when this Beam is not one the hooks were checked against or lacks their internals.
    """
    if not runs_on(pipeline):
        return False
    import apache_beam

    version = apache_beam.__version__
    if not version.startswith(tuple(f"{v}." for v in CHECKED_BEAM)):
        log.warning(
            "DirectRunner speed-ups off: Beam %s is not one they were checked against (%s); "
            "the job runs with Beam's own Pub/Sub read (10 messages per bundle), slower",
            version,
            ", ".join(CHECKED_BEAM),
        )
        return False
    missing = missing_internals()
    if missing:
        log.warning(
            "DirectRunner speed-ups off: Beam %s lacks %s; the job runs with Beam's own read",
            version,
            "; ".join(missing),
        )
        return False
    return _install(max_messages)


def _install(max_messages: int) -> bool:
    from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub
    from apache_beam.runners.direct.transform_evaluator import (
        TransformEvaluatorRegistry,
        _PubSubReadEvaluator,
    )

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


def uninstall() -> None:
    """Put Beam's own Pub/Sub read and ``get_dofn_specs`` back (no-op when nothing is installed)."""
    global _beam_get_dofn_specs
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub
    from apache_beam.transforms import userstate

    with _lock:
        transform_evaluator.TransformEvaluatorRegistry._test_evaluators_overrides.pop(
            _DirectReadFromPubSub, None
        )
        if _beam_get_dofn_specs is not None:
            userstate.get_dofn_specs = _beam_get_dofn_specs
            transform_evaluator.get_dofn_specs = _beam_get_dofn_specs
            _beam_get_dofn_specs = None


def installed() -> bool:
    """Whether the hooks are in place in this process."""
    return _beam_get_dofn_specs is not None


def _memoize_dofn_specs() -> None:
    """Make Beam's ``get_dofn_specs`` (and ``is_stateful_dofn``, which calls it) remember by class."""
    global _beam_get_dofn_specs
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import userstate

    if _beam_get_dofn_specs is not None:
        return
    derive = _beam_get_dofn_specs = userstate.get_dofn_specs
    known: dict[type, tuple[frozenset[Any], frozenset[Any]]] = {}

    def get_dofn_specs(dofn: Any) -> tuple[set[Any], set[Any]]:
        if any(isinstance(v, types.MethodType) for v in getattr(dofn, "__dict__", {}).values()):
            return derive(dofn)  # methods set on the instance: not a property of the class
        specs = known.get(type(dofn))
        if specs is None:
            state, timers = derive(dofn)
            specs = known[type(dofn)] = (frozenset(state), frozenset(timers))
        return set(specs[0]), set(specs[1])

    userstate.get_dofn_specs = get_dofn_specs
    # transform_evaluator imported both names; is_stateful_dofn looks get_dofn_specs up in userstate
    transform_evaluator.get_dofn_specs = get_dofn_specs
