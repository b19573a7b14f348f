"""Pub/Sub: the capture's publisher sink, and creating the topics and subscriptions it needs.

``PubSubSink`` is an ``EventSink`` (``connectors.capture.base``): ``write`` publishes every event of
a batch (names, ordering keys and message contents: ``state_models.pubsub``) and returns only once
Pub/Sub has acknowledged every one, so the capture saves its position only then. The client
batches (``publish.max_messages`` / ``max_bytes`` / ``max_latency_ms``), blocks ``write`` when too
much is in flight (``max_outstanding_*``) and retries transient errors (with ordering keys it never
gives up on a message by itself). ``write`` waits at most ``publish.timeout_seconds`` for the whole
batch, then raises ``TransientError`` and the capture does not advance; a permanent error (missing
topic, no permission, a refused message) raises at once. A batch written again after a failure may
publish some events twice (the first attempt may still land): consumers dedupe by ``event_id``
(at-least-once, ARCHITECTURE.md §3).

``ensure_pubsub`` creates the change topics, their ordered subscriptions (ack deadline, dead-letter
policy) and the dead-letter topic with its subscription; what already exists is checked, not
changed. Both talk to ``PUBSUB_EMULATOR_HOST`` when it is set (the official emulator or the
stand-in under ``tests/``), else to Google Cloud with Application Default Credentials.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from state_models.errors import CdcError, ConfigError, TerminalError, TransientError
from state_models.events import ChangeEvent
from state_models.pubsub import (
    PubSubLayout,
    PubSubPublishing,
    SubscriptionSpec,
    message_for,
    ordering_key,
)
from state_models.registry import Registry

#: gRPC codes worth retrying a publish on (the client library's own default set).
_TRANSIENT_CODES = (
    "Aborted",
    "Cancelled",
    "DeadlineExceeded",
    "InternalServerError",
    "ResourceExhausted",
    "ServiceUnavailable",
    "Unknown",
)


def where() -> str:
    """Which Pub/Sub we talk to, for messages."""
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return (
        f"the Pub/Sub emulator at {host} (PUBSUB_EMULATOR_HOST)" if host else "Google Cloud Pub/Sub"
    )


def _no_credentials(exc: Exception) -> ConfigError:
    return ConfigError(
        "no Google credentials to reach Pub/Sub: run `gcloud auth application-default login`, or "
        "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or "
        "PUBSUB_EMULATOR_HOST=host:port for an emulator)"
    )


def make_publisher(publishing: PubSubPublishing) -> Any:
    """A PublisherClient with ordering, batching, flow control and bounded retries."""
    from google.api_core import exceptions, retry
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1 import types

    transient = retry.if_exception_type(*(getattr(exceptions, n) for n in _TRANSIENT_CODES))
    try:
        return pubsub_v1.PublisherClient(
            batch_settings=types.BatchSettings(
                max_bytes=publishing.max_bytes,
                max_latency=publishing.max_latency_ms / 1000,
                max_messages=publishing.max_messages,
            ),
            publisher_options=types.PublisherOptions(
                enable_message_ordering=True,
                flow_control=types.PublishFlowControl(
                    message_limit=publishing.max_outstanding_messages,
                    byte_limit=publishing.max_outstanding_bytes,
                    limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK,
                ),
                # With ordering on, the client keeps the backoff and the predicate but retries
                # without a deadline (a message of a key must not be skipped); how long `write`
                # waits is bounded by the sink instead.
                retry=retry.Retry(initial=0.1, maximum=10.0, multiplier=2.0, predicate=transient),
            ),
        )
    except DefaultCredentialsError as exc:
        raise _no_credentials(exc) from exc


def make_subscriber() -> Any:
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import pubsub_v1

    try:
        return pubsub_v1.SubscriberClient()
    except DefaultCredentialsError as exc:
        raise _no_credentials(exc) from exc


class PubSubSink:
    """Publishes change events; ``write`` returns once Pub/Sub has acknowledged the whole batch."""

    def __init__(
        self,
        layout: PubSubLayout,
        kinds: Mapping[str, str],
        *,
        client: Any = None,
    ):
        self.layout = layout
        self.kinds = dict(kinds)  # source name -> postgres | mysql, to render envelopes
        self.client = client if client is not None else make_publisher(layout.settings.publish)
        self._wait = layout.settings.publish.timeout_seconds

    @classmethod
    def from_registry(cls, registry: Registry, *, client: Any = None) -> PubSubSink:
        layout = registry.pubsub_layout()
        if layout is None:
            raise ConfigError(
                "the registry has no pubsub: section (project, topics); add one to publish changes"
            )
        kinds = {name: source.kind for name, source in registry.sources.items()}
        return cls(layout, kinds, client=client)

    def write(self, events: Sequence[ChangeEvent]) -> None:
        """Publish the batch and wait for every publish; raise (naming the cause) if any failed."""
        pending: list[tuple[ChangeEvent, str, Any]] = []
        failures: list[tuple[ChangeEvent, str, BaseException]] = []
        for event in events:
            topic = self.layout.topic_path(self.layout.topic(event.table))
            message = message_for(event, self._kind(event))
            try:
                future = self.client.publish(
                    topic,
                    message.data,
                    ordering_key=message.ordering_key,
                    **message.attributes,
                )
            except Exception as exc:  # a paused ordering key, a closed client, ...
                failures.append((event, topic, exc))
                continue
            pending.append((event, topic, future))
        _, not_done = concurrent.futures.wait([f for _, _, f in pending], timeout=self._wait)
        for event, topic, future in pending:
            if future in not_done:
                failures.append((event, topic, TimeoutError(f"no answer in {self._wait:.0f} s")))
            elif future.exception() is not None:
                failures.append((event, topic, future.exception()))
        if failures:
            self._resume(failures)
            raise self._error(failures, len(events))

    def close(self) -> None:
        """Send what is batched and stop the client's threads."""
        self.client.stop()

    def __enter__(self) -> PubSubSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kind(self, event: ChangeEvent) -> str:
        if event.raw is not None:
            return ""  # the original message is published as it is
        kind = self.kinds.get(event.source)
        if kind is None:
            raise ConfigError(
                f"event for {event.table}: source {event.source!r} is not in the registry "
                f"(sources: {', '.join(sorted(self.kinds)) or 'none'})"
            )
        return kind

    def _resume(self, failures: list[tuple[ChangeEvent, str, BaseException]]) -> None:
        # After a failed publish the client refuses every later message of that ordering key, so
        # that nothing overtakes it; the capture will send the batch again, so let the keys go.
        for topic, key in {(topic, ordering_key(event)) for event, topic, _ in failures}:
            if key:
                with contextlib.suppress(RuntimeError):  # "not paused": nothing to resume
                    self.client.resume_publish(topic, key)

    def _error(
        self, failures: list[tuple[ChangeEvent, str, BaseException]], total: int
    ) -> CdcError:
        from google.api_core import exceptions

        event, topic, exc = failures[0]
        causes = [f[2] for f in failures]
        summary = (
            f"Pub/Sub did not accept {len(failures)} of {total} events "
            f"(first: {event.table} seq {event.seq} to {topic}: {type(exc).__name__}: {exc})"
        )
        if any(isinstance(c, exceptions.NotFound) for c in causes):
            return ConfigError(f"{summary}; the topic does not exist: run `cdc pubsub setup`")
        if any(
            isinstance(c, exceptions.PermissionDenied | exceptions.Unauthenticated) for c in causes
        ):
            return ConfigError(
                f"{summary}; the credentials may not publish there (needs roles/pubsub.publisher)"
            )
        if any(isinstance(c, exceptions.InvalidArgument) for c in causes):
            return TerminalError(f"{summary}; Pub/Sub refused the message", raw=event.raw)
        return TransientError(f"{summary}; {where()} is unreachable or overloaded, retry later")


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class SetupStep:
    """What ``ensure_pubsub`` did with one topic or subscription."""

    kind: str  # topic | subscription
    name: str  # id inside the project
    status: str  # created | exists | mismatch
    detail: str = ""


def ensure_pubsub(layout: PubSubLayout, publisher: Any, subscriber: Any) -> list[SetupStep]:
    """Create what is missing; check what exists. Idempotent."""
    _probe(layout, publisher)
    steps = [
        _ensure_topic(layout, publisher, t) for t in [*layout.topics(), layout.dead_letter_topic]
    ]
    # The dead letters get a subscription too: Pub/Sub drops what is published to a topic that
    # has none.
    steps += [_ensure_subscription(layout, subscriber, spec) for spec in layout.subscriptions()]
    return steps


def _probe(layout: PubSubLayout, publisher: Any) -> None:
    from google.api_core import exceptions

    try:
        # One page is enough to know the service answers for this project.
        publisher.list_topics(
            request={"project": f"projects/{layout.settings.project}", "page_size": 1},
            timeout=15,
            retry=None,
        )
    except (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded) as exc:
        hint = (
            "start the emulator, or unset PUBSUB_EMULATOR_HOST to use Google Cloud"
            if os.environ.get("PUBSUB_EMULATOR_HOST")
            else "check the network, or set PUBSUB_EMULATOR_HOST=host:port to use an emulator"
        )
        raise TransientError(f"cannot reach {where()}: {exc.message}; {hint}") from exc
    except (exceptions.PermissionDenied, exceptions.Unauthenticated) as exc:
        raise CdcError(
            f"{where()} refused project {layout.settings.project!r}: {exc.message} "
            "(needs roles/pubsub.editor to create topics and subscriptions)"
        ) from exc


def _ensure_topic(layout: PubSubLayout, publisher: Any, topic: str) -> SetupStep:
    from google.api_core import exceptions

    try:
        publisher.create_topic(name=layout.topic_path(topic))
    except exceptions.AlreadyExists:
        return SetupStep("topic", topic, "exists")
    return SetupStep("topic", topic, "created")


def _ensure_subscription(
    layout: PubSubLayout, subscriber: Any, spec: SubscriptionSpec
) -> SetupStep:
    from google.api_core import exceptions

    wanted = layout.subscription_request(spec)
    try:
        subscriber.create_subscription(request=wanted)
    except exceptions.AlreadyExists:
        existing = subscriber.get_subscription(subscription=wanted["name"])
        differences, fixable = _differences(wanted, existing)
        if differences:
            fix = (
                f"update it: gcloud pubsub subscriptions update {spec.name} {' '.join(fixable)}"
                if len(fixable) == len(differences)
                else "topic and ordering cannot change on a subscription: delete it (its "
                "undelivered messages are lost) and run setup again"
            )
            return SetupStep(
                "subscription", spec.name, "mismatch", f"{'; '.join(differences)}; {fix}"
            )
        return SetupStep("subscription", spec.name, "exists", spec.describe())
    return SetupStep("subscription", spec.name, "created", spec.describe())


def _differences(wanted: Mapping[str, Any], existing: Any) -> tuple[list[str], list[str]]:
    """What differs, and the gcloud flags that fix the differences that can be updated."""
    out, flags = [], []
    if existing.topic != wanted["topic"]:
        out.append(f"it reads {existing.topic}, not {wanted['topic']}")
    if existing.enable_message_ordering != wanted["enable_message_ordering"]:
        on = {True: "on", False: "off"}
        out.append(
            f"message ordering is {on[existing.enable_message_ordering]}, "
            f"wanted {on[wanted['enable_message_ordering']]}"
        )
    if existing.ack_deadline_seconds != wanted["ack_deadline_seconds"]:
        out.append(
            f"ack deadline is {existing.ack_deadline_seconds} s, "
            f"wanted {wanted['ack_deadline_seconds']} s"
        )
        flags.append(f"--ack-deadline={wanted['ack_deadline_seconds']}")
    dlp = wanted.get("dead_letter_policy")
    have = existing.dead_letter_policy
    if dlp and (
        have.dead_letter_topic != dlp["dead_letter_topic"]
        or have.max_delivery_attempts != dlp["max_delivery_attempts"]
    ):
        out.append(
            f"dead letters go to {have.dead_letter_topic or 'nowhere'} after "
            f"{have.max_delivery_attempts} attempts, wanted {dlp['dead_letter_topic']} after "
            f"{dlp['max_delivery_attempts']}"
        )
        flags.append(
            f"--dead-letter-topic={dlp['dead_letter_topic']} "
            f"--max-delivery-attempts={dlp['max_delivery_attempts']}"
        )
    return out, flags
