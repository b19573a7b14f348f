"""How registered tables map onto Pub/Sub: the ``pubsub:`` registry section, names, and messages.

Names (ids inside the project; ``<prefix>`` is ``topic_prefix``, default ``cdc.``):

- topic, ``topics: per_table`` (default): ``<prefix><source>.<schema>.<table>``, e.g.
  ``cdc.billing.public.subscriptions``; ``topics: per_source``: ``<prefix><source>``
  (``cdc.billing``). Characters Pub/Sub does not allow in names (``$`` in a MySQL name) are
  percent-encoded (``%24``).
- the merge job's subscription of a topic: ``<topic>.<subscription>`` (``subscription``, default
  ``merge``): ordered, with the dead-letter policy.
- tables of ``engine: datastream`` sources get no topic: Datastream writes files to GCS.
- the transaction topic of a PostgreSQL source captured by Debezium: ``<prefix><source>.transaction``
  (Debezium's BEGIN/END records, ``provide.transaction.metadata``), with its ``.<subscription>``
  (not ordered): the merge job keeps the source's watermark from it (``merge_jobs.watermark``).
- dead-letter topic: ``dead_letter_topic`` (default ``<prefix>dead-letter``), with the subscription
  ``<dead-letter topic>.<subscription>`` so that dead letters are kept (Pub/Sub drops messages
  published to a topic that has no subscription).

A message (``message_for``): data is the Debezium JSON envelope (the original message when the event
came from Debezium, else ``encode_debezium``); attributes ``table``, ``op``, ``seq``, ``event_id``,
``commit_ts`` (microseconds) and, when it fits Pub/Sub's 1024-byte attribute limit, ``key`` (the
canonical JSON of the primary key, usable as ``decode_debezium(record_key=...)``).

Ordering key (``ordering_key``): ``<table id>:<canonical JSON of the key>`` (keys sorted, values in
their JSON form), e.g. ``billing.public.subscriptions:{"id":42}``; when that exceeds Pub/Sub's
1024-byte limit, ``<table id>:#<blake2b of the key JSON>``. Every change of one row shares its key,
so Pub/Sub delivers them in commit order, and different rows spread over many keys. A publish call
carries the messages of one ordering key only, so with a key per row the publisher makes about one
call per change (measured here: about 1,000 changes/s per publishing process with 2,000 busy rows,
against 22,000/s with one key). ``ordering_buckets: N`` trades per-row keys for N keys per table,
``<table id>:b<blake2b(key JSON) mod N>``: a row still always has the same key (its changes stay in
order) while calls carry many rows; each bucket is limited like any key (1 MB/s, one outstanding
batch per subscriber), so N should stay well above the number of merge workers. Events without
a key (a truncate; a table captured without key columns) are published without an ordering key:
Pub/Sub spreads them freely instead of funnelling a whole table through one hot key (1 MB/s and
one-at-a-time delivery per key). Ordering only saves the merge work; correctness never depends on
it, because the merge orders versions by ``seq`` and is idempotent (docs/architecture.md §5).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from state_models.debezium import encode_debezium
from state_models.events import ChangeEvent, json_value

TopicMode = Literal["per_table", "per_source"]

#: Pub/Sub's limits on an ordering key and on one attribute value, in bytes.
MAX_ORDERING_KEY_BYTES = 1024
MAX_ATTRIBUTE_BYTES = 1024

_ALLOWED = re.compile(r"[A-Za-z0-9\-_.~+]")
_RESOURCE_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
_PREFIX_RE = re.compile(r"^([A-Za-z][A-Za-z0-9\-_.~+%]*)?$")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9\-_.~+%]+$")
_PROJECT_RE = re.compile(r"^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")


class PubSubPublishing(BaseModel):
    """How the sink publishes: calls of at most ``max_messages``/``max_bytes``, several at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_messages: int = Field(default=1000, ge=1, le=1000, description="messages per publish call")
    max_bytes: int = Field(
        default=5_000_000, ge=1000, le=9_000_000, description="message bytes per publish call"
    )
    max_concurrent_requests: int = Field(
        default=8, ge=1, le=128, description="publish calls in flight at once"
    )
    timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=600,
        description="how long `write` retries transient errors before it fails",
    )


class PubSubSettings(BaseModel):
    """The registry's optional ``pubsub:`` section: where the capture publishes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(description="Google Cloud project of the topics and subscriptions")
    topics: TopicMode = Field(default="per_table", description="one topic per table or per source")
    topic_prefix: str = Field(default="cdc.", description="prepended to every topic id")
    subscription: str = Field(
        default="merge", description="the merge job's subscription of a topic: <topic>.<this>"
    )
    ack_deadline_seconds: int = Field(default=60, ge=10, le=600)
    max_delivery_attempts: int = Field(
        default=10, ge=5, le=100, description="deliveries before a message goes to the dead letters"
    )
    ordering_buckets: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="N ordering keys per table, rows hashed into them (default: one key per row)",
    )
    dead_letter_topic: str | None = Field(
        default=None, description="topic id for dead letters (default <topic_prefix>dead-letter)"
    )
    publish: PubSubPublishing = Field(default_factory=PubSubPublishing)

    @field_validator("project")
    @classmethod
    def _project_id(cls, v: str) -> str:
        if "${" not in v and not _PROJECT_RE.match(v):
            raise ValueError(
                "expected a Google Cloud project id (6-30 lower-case letters, digits and '-', "
                f"starting with a letter), got {v!r}"
            )
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX_RE.match(v) or v.startswith("goog"):
            raise ValueError(
                "expected letters, digits and - _ . ~ + %, starting with a letter and not with "
                f"'goog' (e.g. 'cdc.'), got {v!r}"
            )
        return v

    @field_validator("subscription")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if not _SUFFIX_RE.match(v):
            raise ValueError(f"expected letters, digits and - _ . ~ + % (e.g. 'merge'), got {v!r}")
        return v

    @field_validator("dead_letter_topic")
    @classmethod
    def _dead_letter(cls, v: str | None) -> str | None:
        if v is not None:
            check_resource_id(v, "topic")
        return v


def check_resource_id(name: str, kind: str) -> None:
    """Raise ValueError unless ``name`` is a valid Pub/Sub topic or subscription id."""
    if not _RESOURCE_ID_RE.match(name) or name.startswith("goog"):
        raise ValueError(
            f"{kind} id {name!r} is not valid in Pub/Sub: 3-255 characters from letters, digits "
            "and - _ . ~ + %, starting with a letter, not with 'goog'"
        )


def _safe(name: str) -> str:
    return "".join(c if _ALLOWED.match(c) else f"%{ord(c):02X}" for c in name)


class PubSubLayout:
    """Topic and subscription names for a set of registered tables (see the module docstring)."""

    def __init__(
        self,
        settings: PubSubSettings,
        table_ids: Iterable[str],
        transaction_sources: Iterable[str] = (),
    ):
        self.settings = settings
        self.table_ids = sorted(set(table_ids))
        #: sources whose Debezium publishes transaction metadata (PostgreSQL, engine: debezium)
        self.transaction_sources = sorted(set(transaction_sources))

    def transaction_topic(self, source: str) -> str:
        """Where Debezium publishes a source's BEGIN/END records (``<source>.transaction``)."""
        return f"{self.settings.topic_prefix}{_safe(source)}.transaction"

    def transaction_topics(self) -> dict[str, str]:
        """source -> its transaction topic, for the sources that have one."""
        return {s: self.transaction_topic(s) for s in self.transaction_sources}

    def topic(self, table_id: str) -> str:
        """The topic id the changes of a table (``source.schema.table``) are published to."""
        name = table_id if self.settings.topics == "per_table" else table_id.split(".", 1)[0]
        return self.settings.topic_prefix + _safe(name)

    def topics(self) -> list[str]:
        """Every change topic of the registered tables (without the dead-letter topic)."""
        return sorted({self.topic(t) for t in self.table_ids})

    def subscription(self, topic: str) -> str:
        return f"{topic}.{self.settings.subscription}"

    @property
    def dead_letter_topic(self) -> str:
        return self.settings.dead_letter_topic or f"{self.settings.topic_prefix}dead-letter"

    def subscriptions(self) -> list[SubscriptionSpec]:
        """The merge job's ordered subscription of every change topic, then the dead letters' one."""
        s = self.settings
        specs = [
            SubscriptionSpec(
                name=self.subscription(topic),
                topic=topic,
                ordered=True,
                ack_deadline_seconds=s.ack_deadline_seconds,
                dead_letter_topic=self.dead_letter_topic,
                max_delivery_attempts=s.max_delivery_attempts,
            )
            for topic in self.topics()
        ]
        specs += [
            SubscriptionSpec(
                name=self.subscription(topic),
                topic=topic,
                ordered=False,  # the watermark walks the commit chain, in any order
                ack_deadline_seconds=s.ack_deadline_seconds,
                dead_letter_topic=self.dead_letter_topic,
                max_delivery_attempts=s.max_delivery_attempts,
            )
            for topic in self.transaction_topics().values()
        ]
        dead = self.dead_letter_topic
        specs.append(SubscriptionSpec(self.subscription(dead), dead, False, s.ack_deadline_seconds))
        return specs

    def subscription_request(self, spec: SubscriptionSpec) -> dict[str, Any]:
        """The CreateSubscription request (a ``google.pubsub.v1.Subscription``) for a spec."""
        request: dict[str, Any] = {
            "name": self.subscription_path(spec.name),
            "topic": self.topic_path(spec.topic),
            "enable_message_ordering": spec.ordered,
            "ack_deadline_seconds": spec.ack_deadline_seconds,
        }
        if spec.dead_letter_topic:
            request["dead_letter_policy"] = {
                "dead_letter_topic": self.topic_path(spec.dead_letter_topic),
                "max_delivery_attempts": spec.max_delivery_attempts,
            }
        return request

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.settings.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        return f"projects/{self.settings.project}/subscriptions/{subscription}"

    def check(self) -> None:
        """Raise ValueError naming the first topic or subscription id Pub/Sub would refuse."""
        for topic in [*self.topics(), *self.transaction_topics().values(), self.dead_letter_topic]:
            check_resource_id(topic, "topic")
            check_resource_id(self.subscription(topic), "subscription")
        if self.dead_letter_topic in self.topics():
            raise ValueError(f"dead_letter_topic {self.dead_letter_topic!r} is also a change topic")


@dataclass(frozen=True)
class SubscriptionSpec:
    """One subscription ``cdc pubsub setup`` creates (ids inside the project)."""

    name: str
    topic: str
    ordered: bool
    ack_deadline_seconds: int
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = 0

    def describe(self) -> str:
        parts = [
            "ordered" if self.ordered else "unordered",
            f"ack deadline {self.ack_deadline_seconds} s",
        ]
        if self.dead_letter_topic:
            parts.append(
                f"dead letters after {self.max_delivery_attempts} attempts to {self.dead_letter_topic}"
            )
        return ", ".join(parts)


@dataclass(frozen=True)
class OutgoingMessage:
    """One Pub/Sub message as the sink publishes it."""

    data: bytes
    attributes: dict[str, str]
    ordering_key: str


def key_json(event: ChangeEvent) -> str:
    """The canonical JSON of an event's key: columns sorted, values in their JSON form."""
    return json.dumps(
        {k: json_value(event.key[k]) for k in sorted(event.key)},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def ordering_key(event: ChangeEvent, buckets: int | None = None) -> str:
    """``<table>:<key JSON>`` (hashed when too long), or ``<table>:b<n>`` with ``buckets``;
    "" (no ordering) for an event without a key."""
    if not event.key:
        return ""
    text = key_json(event)
    if buckets:
        bucket = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        return f"{event.table}:b{bucket % buckets}"
    ordering = f"{event.table}:{text}"
    if len(ordering.encode()) <= MAX_ORDERING_KEY_BYTES:
        return ordering
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return f"{event.table}:#{digest}"


def message_for(event: ChangeEvent, kind: str, buckets: int | None = None) -> OutgoingMessage:
    """The message for one event; ``kind`` (postgres | mysql) shapes an envelope we must render,
    ``buckets`` is ``ordering_buckets``."""
    data = event.raw if event.raw is not None else encode_debezium(event, kind)
    attributes = {
        "table": event.table,
        "op": event.op.value,
        "seq": event.seq,
        "event_id": event.event_id,
        "commit_ts": str(event.commit_ts),
    }
    if event.key:
        key = key_json(event)
        if len(key.encode()) <= MAX_ATTRIBUTE_BYTES:
            attributes["key"] = key
    return OutgoingMessage(data.encode(), attributes, ordering_key(event, buckets))
