"""A small Pub/Sub server that speaks the real ``google.pubsub.v1`` gRPC API, for tests.

The official emulator cannot be installed on our machines (it ships with gcloud) and the Go fake
(pstest) does not keep ordering-key order (research/local_gcp_emulators.md §3). This server lets
the unmodified google-cloud-pubsub client and Beam's Pub/Sub IO run against ``PUBSUB_EMULATOR_HOST``.

google-cloud-pubsub is a proto-plus GAPIC client and ships no ``*_pb2_grpc`` servicer classes, so
the services are registered with ``grpc.method_handlers_generic_handler`` using the protobuf message
classes that the client itself ships: the same method paths and wire messages.

What it does, as real Pub/Sub does:

- topics: create, get, list, list subscriptions, delete (a deleted topic's subscriptions stay, with
  topic ``_deleted-topic_``);
- subscriptions: create, get, list, delete; ``ack_deadline_seconds`` 0 means the default of 10 s,
  otherwise 10..600; a subscription receives only messages published after it was created;
- publish: message ids, ``publish_time``, attributes, ``ordering_key``;
- pull, acknowledge, modify_ack_deadline (0 is a nack: the message is redelivered at once, or after
  the ``retry_policy`` backoff), ack deadline expiry → redelivery;
- streaming pull (what ``SubscriberClient.subscribe()`` uses): server-side flow control
  (``max_outstanding_messages``/``bytes``), acks and modacks on the stream or as unary calls,
  ``stream_ack_deadline_seconds``; when the stream closes its messages stay leased until their
  deadline expires;
- ``dead_letter_policy``: ``delivery_attempt`` is set on every delivery, and a message nacked or
  expired after ``max_delivery_attempts`` deliveries is published to the dead-letter topic (with
  the ``CloudPubSubDeadLetterSource*`` attributes) and removed from the subscription;
- ordering (``enable_message_ordering``): the messages of one ordering key are delivered in publish
  order. A delivery may carry several messages of one key (in order, as the real service does);
  the key's next messages are held back until every message of that batch is acknowledged. A nack
  or an expiry redelivers that message and every later message of its key that was already
  delivered, even ones acknowledged since ("redelivery of a message triggers redelivery of all
  subsequent messages for that key, even acknowledged ones" — Pub/Sub ordering docs). Messages
  without an ordering key are not ordered.

What it refuses (UNIMPLEMENTED, with the reason, rather than silently ignoring): snapshots, seek,
update_topic / update_subscription, detach, push / BigQuery / Cloud Storage subscriptions,
filters, exactly-once delivery, retain_acked_messages, schemas. Messages are kept until acked
(no retention expiry). No IAM, no authentication.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub as _types

log = logging.getLogger(__name__)

# The protobuf classes behind the client's proto-plus types (``.pb()`` with no argument).
Topic = _types.Topic.pb()
Subscription = _types.Subscription.pb()
PubsubMessage = _types.PubsubMessage.pb()
ReceivedMessage = _types.ReceivedMessage.pb()
PublishRequest = _types.PublishRequest.pb()
PublishResponse = _types.PublishResponse.pb()
GetTopicRequest = _types.GetTopicRequest.pb()
ListTopicsRequest = _types.ListTopicsRequest.pb()
ListTopicsResponse = _types.ListTopicsResponse.pb()
ListTopicSubscriptionsRequest = _types.ListTopicSubscriptionsRequest.pb()
ListTopicSubscriptionsResponse = _types.ListTopicSubscriptionsResponse.pb()
DeleteTopicRequest = _types.DeleteTopicRequest.pb()
GetSubscriptionRequest = _types.GetSubscriptionRequest.pb()
ListSubscriptionsRequest = _types.ListSubscriptionsRequest.pb()
ListSubscriptionsResponse = _types.ListSubscriptionsResponse.pb()
DeleteSubscriptionRequest = _types.DeleteSubscriptionRequest.pb()
AcknowledgeRequest = _types.AcknowledgeRequest.pb()
ModifyAckDeadlineRequest = _types.ModifyAckDeadlineRequest.pb()
PullRequest = _types.PullRequest.pb()
PullResponse = _types.PullResponse.pb()
StreamingPullRequest = _types.StreamingPullRequest.pb()
StreamingPullResponse = _types.StreamingPullResponse.pb()

DEFAULT_ACK_DEADLINE = 10
MIN_ACK_DEADLINE, MAX_ACK_DEADLINE = 10, 600
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
DELETED_TOPIC = "_deleted-topic_"
#: The most messages one pull / streaming-pull response carries.
MAX_MESSAGES_PER_RESPONSE = 1000

_RESOURCE_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
_TOPIC_RE = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")
_SUBSCRIPTION_RE = re.compile(r"^projects/([^/]+)/subscriptions/([^/]+)$")


class _RpcError(Exception):
    """An error to return to the caller with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _not_found(name: str) -> _RpcError:
    return _RpcError(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={name}).")


def _unsupported(what: str) -> _RpcError:
    return _RpcError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{what} is not supported by the Pub/Sub stand-in in tests/pubsub_emulator "
        "(run the official emulator and set PUBSUB_EMULATOR_HOST to test it)",
    )


def _check_name(name: str, pattern: re.Pattern[str], kind: str) -> None:
    m = pattern.match(name)
    if not m or not _RESOURCE_ID_RE.match(m.group(2)) or m.group(2).startswith("goog"):
        raise _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Invalid {kind} name {name!r}: expected projects/<project>/{kind}s/<id>, the id "
            "3-255 characters from [A-Za-z0-9-_.~+%], starting with a letter, not with 'goog'",
        )


@dataclass(eq=False)
class _Entry:
    """One message in one subscription, with its delivery state."""

    message: Any  # PubsubMessage
    size: int
    key: str  # ordering key when the subscription orders it, else ""
    attempts: int = 0
    ack_id: str | None = None  # set while outstanding
    deadline: float = 0.0
    stream: _Stream | None = None  # the stream it was delivered on (flow-control accounting)
    acked: bool = False  # ordered keys: acked, but held until the earlier messages settle
    not_before: float = 0.0  # retry-policy backoff


@dataclass(eq=False)
class _KeyQueue:
    """The unsettled messages of one ordering key; the first ``inflight`` are the delivered batch."""

    entries: deque[_Entry] = field(default_factory=deque)
    inflight: int = 0
    queued: bool = False  # in the subscription's ready queue or its delayed heap


@dataclass(eq=False)
class _Stream:
    """One open StreamingPull call."""

    max_messages: int
    max_bytes: int
    deadline_seconds: int
    count: int = 0
    bytes: int = 0
    closed: bool = False


class _Subscription:
    def __init__(self, pb: Any, lock: threading.RLock, tick: Callable[[float], None]):
        self.pb = pb
        self.ordered = pb.enable_message_ordering
        self.ready: deque[_Entry | str] = deque()  # an unordered message, or a ready ordering key
        self.keys: dict[str, _KeyQueue] = {}
        self.outstanding: dict[str, _Entry] = {}  # ack id -> message
        self.deadlines: list[
            tuple[float, str]
        ] = []  # heap of (deadline, ack id); stale ones skipped
        self.delayed: list[tuple[float, int, _Entry | str]] = []  # heap: backoff before redelivery
        self.cond = threading.Condition(lock)
        self.deleted = False
        self._tick = tick  # tells the server's clock thread about a new due time
        self._ack_ids = itertools.count(1)
        self._delay_seq = itertools.count()

    # ------------------------------------------------------------------ enqueueing

    def add(self, message: Any) -> None:
        key = message.ordering_key if self.ordered else ""
        entry = _Entry(message=message, size=message.ByteSize(), key=key)
        if key:
            kq = self.keys.setdefault(key, _KeyQueue())
            kq.entries.append(entry)
            self._maybe_queue_key(key, kq)
        else:
            self.ready.append(entry)
        self.cond.notify_all()

    def _maybe_queue_key(self, key: str, kq: _KeyQueue) -> None:
        if kq.queued or kq.inflight or not kq.entries:
            return
        kq.queued = True
        self._schedule(kq.entries[0].not_before, key)

    def _schedule(self, not_before: float, item: _Entry | str) -> None:
        if not_before > time.monotonic():
            heapq.heappush(self.delayed, (not_before, next(self._delay_seq), item))
            self._tick(not_before)
        else:
            self.ready.append(item)
            self.cond.notify_all()

    # ------------------------------------------------------------------ delivery

    def take(self, max_messages: int, max_bytes: int, stream: _Stream | None) -> list[Any]:
        """Lease up to ``max_messages`` / ``max_bytes`` messages; returns ReceivedMessages."""
        deadline_seconds = stream.deadline_seconds if stream else self.pb.ack_deadline_seconds
        now = time.monotonic()
        out: list[Any] = []
        budget_bytes = max_bytes

        def fits(e: _Entry) -> bool:
            held = (
                stream.count if stream else len(out)
            )  # _lease already counted ``out`` on a stream
            return len(out) < max_messages and (e.size <= budget_bytes or held == 0)

        while self.ready and len(out) < max_messages:
            item = self.ready[0]
            if isinstance(item, _Entry):
                if not fits(item):
                    break
                self.ready.popleft()
                out.append(self._lease(item, now, deadline_seconds, stream))
                budget_bytes -= item.size
                continue
            kq = self.keys[item]
            if not fits(kq.entries[kq.inflight]):
                break
            self.ready.popleft()
            kq.queued = False
            # One batch of the key, in publish order; the rest waits until this batch is acked.
            while kq.inflight < len(kq.entries) and fits(kq.entries[kq.inflight]):
                e = kq.entries[kq.inflight]
                kq.inflight += 1
                out.append(self._lease(e, now, deadline_seconds, stream))
                budget_bytes -= e.size
        return out

    def _lease(self, e: _Entry, now: float, seconds: int, stream: _Stream | None) -> Any:
        e.attempts += 1
        e.acked = False
        e.ack_id = f"{id(self):x}-{next(self._ack_ids)}"
        e.deadline = now + seconds
        e.stream = stream
        if stream:
            stream.count += 1
            stream.bytes += e.size
        self.outstanding[e.ack_id] = e
        heapq.heappush(self.deadlines, (e.deadline, e.ack_id))
        self._tick(e.deadline)
        attempt = e.attempts if self.pb.HasField("dead_letter_policy") else 0
        return ReceivedMessage(ack_id=e.ack_id, message=e.message, delivery_attempt=attempt)

    def _release(self, e: _Entry) -> None:
        self.outstanding.pop(e.ack_id or "", None)
        e.ack_id = None
        if e.stream:
            e.stream.count -= 1
            e.stream.bytes -= e.size
            e.stream = None
        self.cond.notify_all()

    # ------------------------------------------------------------------ settlement

    def ack(self, ack_id: str) -> None:
        e = self.outstanding.get(ack_id)
        if e is None:  # stale (expired, nacked, redelivered) or unknown: ignored, like Pub/Sub
            return
        self._release(e)
        self._settle(e)

    def _settle(self, e: _Entry) -> None:
        if not e.key:
            return
        e.acked = True
        kq = self.keys[e.key]
        while kq.entries and kq.entries[0].acked:
            kq.entries.popleft()
            kq.inflight -= 1
        if not kq.entries and not kq.queued:
            del self.keys[e.key]
        else:
            self._maybe_queue_key(e.key, kq)

    def modify(self, ack_id: str, seconds: int, forward: Callable[[_Entry, Any], None]) -> None:
        e = self.outstanding.get(ack_id)
        if e is None:
            return
        if seconds == 0:
            self.redeliver(e, forward)
            return
        e.deadline = time.monotonic() + seconds
        heapq.heappush(self.deadlines, (e.deadline, ack_id))
        self._tick(e.deadline)

    def redeliver(self, e: _Entry, forward: Callable[[_Entry, Any], None]) -> None:
        """A nack or an expired deadline: dead-letter, or deliver again (with the key's successors)."""
        self._release(e)
        policy = self.pb.dead_letter_policy if self.pb.HasField("dead_letter_policy") else None
        if policy is not None and e.attempts >= (
            policy.max_delivery_attempts or DEFAULT_MAX_DELIVERY_ATTEMPTS
        ):
            forward(e, self.pb)
            self._settle(e)
            return
        not_before = time.monotonic() + self._backoff(e.attempts)
        if not e.key:
            e.not_before = not_before
            self._schedule(not_before, e)
            return
        kq = self.keys[e.key]
        i = kq.entries.index(e)
        for later in list(kq.entries)[i + 1 : kq.inflight]:
            if later.ack_id is not None:
                self._release(later)
            later.acked = False
        kq.inflight = i
        e.not_before = not_before
        self._maybe_queue_key(e.key, kq)

    def _backoff(self, attempts: int) -> float:
        if not self.pb.HasField("retry_policy"):
            return 0.0
        rp = self.pb.retry_policy
        low = (
            rp.minimum_backoff.ToTimedelta().total_seconds()
            if rp.HasField("minimum_backoff")
            else 10
        )
        high = (
            rp.maximum_backoff.ToTimedelta().total_seconds()
            if rp.HasField("maximum_backoff")
            else 600
        )
        return float(min(high, low * 2 ** max(0, attempts - 1)))

    def due(self, now: float, forward: Callable[[_Entry, Any], None]) -> float | None:
        """Expire deadlines and end backoffs that are due; returns the next due time."""
        while self.deadlines and self.deadlines[0][0] <= now:
            deadline, ack_id = heapq.heappop(self.deadlines)
            e = self.outstanding.get(ack_id)
            if e is not None and e.deadline == deadline:
                log.debug("ack deadline expired: %s", e.message.message_id)
                self.redeliver(e, forward)
        while self.delayed and self.delayed[0][0] <= now:
            _, _, item = heapq.heappop(self.delayed)
            self.ready.append(item)
            self.cond.notify_all()
        times = [h[0][0] for h in (self.deadlines, self.delayed) if h]
        return min(times) if times else None

    def drop_stream(self, stream: _Stream) -> None:
        """The stream closed: its messages stay leased until their deadlines (as in Pub/Sub)."""
        stream.closed = True
        for e in self.outstanding.values():
            if e.stream is stream:
                e.stream = None
        self.cond.notify_all()


class PubSubStandIn:
    """The server: ``PubSubStandIn().start()``, then ``PUBSUB_EMULATOR_HOST=<.host>``.

    ``max_pull_wait`` is how long a unary Pull with no message waits before answering empty
    (real Pub/Sub also answers an idle pull with no messages after a while).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_pull_wait: float = 1.0,
        max_workers: int = 64,
    ):
        self._bind = f"{host}:{port}"
        self.max_pull_wait = max_pull_wait
        self._max_workers = max_workers
        self._lock = threading.RLock()
        self._clock = threading.Condition(self._lock)
        self._next_due = float("inf")
        self._topics: dict[str, Any] = {}  # name -> Topic
        self._subs: dict[str, _Subscription] = {}
        self._message_ids = itertools.count(1)
        self._stopping = False
        self._server: grpc.Server | None = None
        self._clock_thread: threading.Thread | None = None
        self.host = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PubSubStandIn:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="pubsub"),
            # Pub/Sub takes publish requests of up to 10 MB; gRPC's default limit is 4 MB.
            options=[("grpc.max_receive_message_length", 20 * 2**20)],
        )
        server.add_generic_rpc_handlers(self._handlers())
        port = server.add_insecure_port(self._bind)
        if port == 0:
            raise RuntimeError(f"Pub/Sub stand-in could not bind {self._bind}")
        server.start()
        self._server = server
        self.host = f"{self._bind.rsplit(':', 1)[0]}:{port}"
        self._clock_thread = threading.Thread(
            target=self._run_clock, name="pubsub-clock", daemon=True
        )
        self._clock_thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._clock.notify_all()
            for sub in self._subs.values():
                sub.cond.notify_all()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
        if self._clock_thread is not None:
            self._clock_thread.join(5)

    def __enter__(self) -> PubSubStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tick(self, due: float) -> None:
        if due < self._next_due:
            self._next_due = due
            self._clock.notify_all()

    def _run_clock(self) -> None:
        """Expires ack deadlines and ends retry backoffs; sleeps until the next one is due."""
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                dues = [sub.due(now, self._forward) for sub in list(self._subs.values())]
                self._next_due = min((d for d in dues if d is not None), default=float("inf"))
                self._clock.wait(timeout=min(max(self._next_due - now, 0.001), 1.0))

    # ------------------------------------------------------------------ gRPC wiring

    def _handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        def unary(fn: Callable[..., Any], req: Any, resp: Any) -> grpc.RpcMethodHandler:
            def handle(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return fn(request, context)
                except _RpcError as exc:
                    context.abort(exc.code, str(exc))

            return grpc.unary_unary_rpc_method_handler(
                handle,
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )

        def refuse(what: str) -> grpc.RpcMethodHandler:
            def handle(request: bytes, context: grpc.ServicerContext) -> Any:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, str(_unsupported(what)))

            return grpc.unary_unary_rpc_method_handler(handle)

        empty = empty_pb2.Empty
        publisher = {
            "CreateTopic": unary(self.create_topic, Topic, Topic),
            "GetTopic": unary(self.get_topic, GetTopicRequest, Topic),
            "ListTopics": unary(self.list_topics, ListTopicsRequest, ListTopicsResponse),
            "ListTopicSubscriptions": unary(
                self.list_topic_subscriptions,
                ListTopicSubscriptionsRequest,
                ListTopicSubscriptionsResponse,
            ),
            "DeleteTopic": unary(self.delete_topic, DeleteTopicRequest, empty),
            "Publish": unary(self.publish, PublishRequest, PublishResponse),
        }
        for name in ("UpdateTopic", "ListTopicSnapshots", "DetachSubscription"):
            publisher[name] = refuse(f"Publisher.{name}")
        subscriber = {
            "CreateSubscription": unary(self.create_subscription, Subscription, Subscription),
            "GetSubscription": unary(self.get_subscription, GetSubscriptionRequest, Subscription),
            "ListSubscriptions": unary(
                self.list_subscriptions, ListSubscriptionsRequest, ListSubscriptionsResponse
            ),
            "DeleteSubscription": unary(self.delete_subscription, DeleteSubscriptionRequest, empty),
            "Acknowledge": unary(self.acknowledge, AcknowledgeRequest, empty),
            "ModifyAckDeadline": unary(self.modify_ack_deadline, ModifyAckDeadlineRequest, empty),
            "Pull": unary(self.pull, PullRequest, PullResponse),
            "StreamingPull": grpc.stream_stream_rpc_method_handler(
                self.streaming_pull,
                request_deserializer=StreamingPullRequest.FromString,
                response_serializer=StreamingPullResponse.SerializeToString,
            ),
        }
        for name in (
            "UpdateSubscription",
            "ModifyPushConfig",
            "GetSnapshot",
            "ListSnapshots",
            "CreateSnapshot",
            "UpdateSnapshot",
            "DeleteSnapshot",
            "Seek",
        ):
            subscriber[name] = refuse(f"Subscriber.{name}")
        return (
            grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
            grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber),
        )

    # ------------------------------------------------------------------ Publisher

    def create_topic(self, topic: Any, context: grpc.ServicerContext | None = None) -> Any:
        _check_name(topic.name, _TOPIC_RE, "topic")
        if topic.HasField("schema_settings"):
            raise _unsupported("schema_settings")
        if topic.HasField("ingestion_data_source_settings"):
            raise _unsupported("ingestion_data_source_settings")
        with self._lock:
            if topic.name in self._topics:
                raise _RpcError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"Resource already exists in the project (resource={topic.name}).",
                )
            stored = Topic()
            stored.CopyFrom(topic)
            stored.state = Topic.State.ACTIVE
            self._topics[topic.name] = stored
            return stored

    def get_topic(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        with self._lock:
            return self._topic(request.topic)

    def _topic(self, name: str) -> Any:
        _check_name(name, _TOPIC_RE, "topic")
        topic = self._topics.get(name)
        if topic is None:
            raise _not_found(name)
        return topic

    def list_topics(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        prefix = request.project + "/topics/"
        with self._lock:
            names = sorted(n for n in self._topics if n.startswith(prefix))
            page, token = _page(names, request.page_size, request.page_token)
            return ListTopicsResponse(topics=[self._topics[n] for n in page], next_page_token=token)

    def list_topic_subscriptions(
        self, request: Any, context: grpc.ServicerContext | None = None
    ) -> Any:
        with self._lock:
            self._topic(request.topic)
            names = sorted(n for n, s in self._subs.items() if s.pb.topic == request.topic)
            page, token = _page(names, request.page_size, request.page_token)
            return ListTopicSubscriptionsResponse(subscriptions=page, next_page_token=token)

    def delete_topic(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        with self._lock:
            self._topic(request.topic)
            del self._topics[request.topic]
            for sub in self._subs.values():
                if sub.pb.topic == request.topic:
                    sub.pb.topic = DELETED_TOPIC
            return empty_pb2.Empty()

    def publish(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        if not request.messages:
            raise _RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, "A publish request must contain messages."
            )
        keys = {m.ordering_key for m in request.messages}
        if len(keys) > 1:
            raise _RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "All messages in one publish request must have the same ordering_key.",
            )
        for m in request.messages:
            if not m.data and not m.attributes:
                raise _RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "A message must contain either non-empty data, or at least one attribute.",
                )
            if len(m.ordering_key.encode()) > 1024:
                raise _RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT, "ordering_key is longer than 1024 bytes."
                )
        with self._lock:
            self._topic(request.topic)
            ids = [self._publish(request.topic, m) for m in request.messages]
            return PublishResponse(message_ids=ids)

    def _publish(self, topic: str, message: Any) -> str:
        stored = PubsubMessage()
        stored.CopyFrom(message)
        stored.message_id = str(next(self._message_ids))
        stored.publish_time.GetCurrentTime()
        for sub in self._subs.values():
            if sub.pb.topic == topic:
                sub.add(stored)
        return str(stored.message_id)

    def _forward(self, e: _Entry, sub: Any) -> None:
        """Publish a message that ran out of delivery attempts to the dead-letter topic."""
        dead_letter_topic = sub.dead_letter_policy.dead_letter_topic
        if dead_letter_topic not in self._topics:
            log.warning("dead-letter topic %s is gone; message dropped", dead_letter_topic)
            return
        project = sub.name.split("/")[1]
        copy = PubsubMessage(data=e.message.data, ordering_key=e.message.ordering_key)
        copy.attributes.update(e.message.attributes)
        copy.attributes.update(
            {
                "CloudPubSubDeadLetterSourceDeliveryCount": str(e.attempts),
                "CloudPubSubDeadLetterSourceSubscription": sub.name.split("/")[-1],
                "CloudPubSubDeadLetterSourceSubscriptionProject": project,
                "CloudPubSubDeadLetterSourceTopicPublishTime": e.message.publish_time.ToJsonString(),
            }
        )
        self._publish(dead_letter_topic, copy)

    # ------------------------------------------------------------------ Subscriber

    def create_subscription(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        _check_name(request.name, _SUBSCRIPTION_RE, "subscription")
        for name, present in (
            ("push_config", request.push_config.push_endpoint),
            ("bigquery_config", request.bigquery_config.table),
            ("cloud_storage_config", request.cloud_storage_config.bucket),
            ("filter", request.filter),
            ("enable_exactly_once_delivery", request.enable_exactly_once_delivery),
            ("retain_acked_messages", request.retain_acked_messages),
        ):
            if present:
                raise _unsupported(f"Subscription.{name}")
        deadline = request.ack_deadline_seconds or DEFAULT_ACK_DEADLINE
        if not MIN_ACK_DEADLINE <= deadline <= MAX_ACK_DEADLINE:
            raise _RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Invalid ack_deadline_seconds {deadline}: expected 10..600 (0 means 10).",
            )
        with self._lock:
            self._topic(request.topic)
            if request.name in self._subs:
                raise _RpcError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"Resource already exists in the project (resource={request.name}).",
                )
            pb = Subscription()
            pb.CopyFrom(request)
            pb.ack_deadline_seconds = deadline
            if not pb.HasField("message_retention_duration"):
                pb.message_retention_duration.FromSeconds(7 * 24 * 3600)
            if request.HasField("dead_letter_policy"):
                dlp = pb.dead_letter_policy
                self._topic(dlp.dead_letter_topic)
                attempts = dlp.max_delivery_attempts or DEFAULT_MAX_DELIVERY_ATTEMPTS
                if not 5 <= attempts <= 100:
                    raise _RpcError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Invalid max_delivery_attempts {attempts}: expected 5..100.",
                    )
                dlp.max_delivery_attempts = attempts
            pb.state = Subscription.State.ACTIVE
            self._subs[request.name] = _Subscription(pb, self._lock, self._tick)
            return pb

    def get_subscription(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        with self._lock:
            return self._sub(request.subscription).pb

    def _sub(self, name: str) -> _Subscription:
        _check_name(name, _SUBSCRIPTION_RE, "subscription")
        sub = self._subs.get(name)
        if sub is None:
            raise _not_found(name)
        return sub

    def list_subscriptions(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        prefix = request.project + "/subscriptions/"
        with self._lock:
            names = sorted(n for n in self._subs if n.startswith(prefix))
            page, token = _page(names, request.page_size, request.page_token)
            return ListSubscriptionsResponse(
                subscriptions=[self._subs[n].pb for n in page], next_page_token=token
            )

    def delete_subscription(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        with self._lock:
            sub = self._sub(request.subscription)
            sub.deleted = True
            sub.cond.notify_all()
            del self._subs[request.subscription]
            return empty_pb2.Empty()

    def acknowledge(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        with self._lock:
            sub = self._sub(request.subscription)
            for ack_id in request.ack_ids:
                sub.ack(ack_id)
            return empty_pb2.Empty()

    def modify_ack_deadline(self, request: Any, context: grpc.ServicerContext | None = None) -> Any:
        seconds = request.ack_deadline_seconds
        if not 0 <= seconds <= MAX_ACK_DEADLINE:
            raise _RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Invalid ack_deadline_seconds {seconds}: expected 0..600.",
            )
        with self._lock:
            sub = self._sub(request.subscription)
            for ack_id in request.ack_ids:
                sub.modify(ack_id, seconds, self._forward)
            return empty_pb2.Empty()

    def pull(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.max_messages <= 0:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "max_messages must be positive.")
        remaining = context.time_remaining()
        wait = 0.0 if request.return_immediately else self.max_pull_wait
        if remaining is not None:
            wait = min(wait, max(remaining - 0.2, 0.0))
        until = time.monotonic() + wait
        limit = min(request.max_messages, MAX_MESSAGES_PER_RESPONSE)
        with self._lock:
            sub = self._sub(request.subscription)
            while True:
                got = sub.take(limit, 2**62, None)
                left = until - time.monotonic()
                if got or left <= 0 or sub.deleted or self._stopping:
                    break
                sub.cond.wait(left)
            if sub.deleted:
                raise _not_found(request.subscription)
            return PullResponse(received_messages=got)

    def streaming_pull(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        """StreamingPull: the first request opens the stream; later ones carry acks and modacks."""
        first = next(requests, None)
        if first is None:
            return
        try:
            stream, sub = self._open_stream(first)
        except _RpcError as exc:
            context.abort(exc.code, str(exc))
        properties = StreamingPullResponse.SubscriptionProperties(
            message_ordering_enabled=sub.ordered
        )

        def closed() -> None:
            with self._lock:
                sub.drop_stream(stream)

        context.add_callback(closed)
        threading.Thread(
            target=self._read_stream, args=(requests, stream, sub), daemon=True
        ).start()
        while True:
            with self._lock:
                got: list[Any] = []
                while not (stream.closed or sub.deleted or self._stopping):
                    limit = MAX_MESSAGES_PER_RESPONSE
                    if stream.max_messages > 0:
                        limit = min(limit, stream.max_messages - stream.count)
                    room = stream.max_bytes - stream.bytes if stream.max_bytes > 0 else 2**62
                    if limit > 0 and room > 0:
                        got = sub.take(limit, room, stream)
                        if got:
                            break
                    sub.cond.wait(1.0)
                if sub.deleted:
                    context.abort(grpc.StatusCode.NOT_FOUND, str(_not_found(sub.pb.name)))
                if not got:
                    return
            yield StreamingPullResponse(received_messages=got, subscription_properties=properties)

    def _open_stream(self, first: Any) -> tuple[_Stream, _Subscription]:
        seconds = first.stream_ack_deadline_seconds
        if not MIN_ACK_DEADLINE <= seconds <= MAX_ACK_DEADLINE:
            raise _RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Invalid stream_ack_deadline_seconds {seconds}: expected 10..600.",
            )
        with self._lock:
            sub = self._sub(first.subscription)
            stream = _Stream(
                max_messages=first.max_outstanding_messages,
                max_bytes=first.max_outstanding_bytes,
                deadline_seconds=seconds,
            )
            self._apply_stream_request(first, sub)
            return stream, sub

    def _read_stream(self, requests: Iterator[Any], stream: _Stream, sub: _Subscription) -> None:
        try:
            for request in requests:
                with self._lock:
                    if request.stream_ack_deadline_seconds:
                        stream.deadline_seconds = min(
                            max(request.stream_ack_deadline_seconds, MIN_ACK_DEADLINE),
                            MAX_ACK_DEADLINE,
                        )
                    self._apply_stream_request(request, sub)
        except Exception:  # the call ended (cancelled by the client, or the server stopping)
            log.debug("streaming pull request stream ended", exc_info=True)
        finally:
            with self._lock:
                sub.drop_stream(stream)

    def _apply_stream_request(self, request: Any, sub: _Subscription) -> None:
        for ack_id in request.ack_ids:
            sub.ack(ack_id)
        for ack_id, seconds in zip(
            request.modify_deadline_ack_ids, request.modify_deadline_seconds, strict=False
        ):
            sub.modify(ack_id, min(max(seconds, 0), MAX_ACK_DEADLINE), self._forward)


def _page(names: list[str], page_size: int, token: str) -> tuple[list[str], str]:
    """One page of sorted names after ``token`` (the last name of the previous page)."""
    start = 0
    if token:
        start = next((i for i, n in enumerate(names) if n > token), len(names))
    if page_size <= 0:
        return names[start:], ""
    page = names[start : start + page_size]
    more = start + page_size < len(names)
    return page, (page[-1] if more else "")
