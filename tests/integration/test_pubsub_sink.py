"""The capture's Pub/Sub sink and ``cdc pubsub setup``, against the ``pubsub_emulator`` fixture.

Everything is checked with the official client: what setup created, what the sink published and in
which order a subscriber sees it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.cloud import pubsub_v1

from cdc.cli import main
from cdc.config import load_config
from connectors.capture.base import EventSink
from connectors.pubsub import PubSubSink
from state_models.debezium import decode_debezium
from state_models.errors import ConfigError, TransientError
from state_models.events import ChangeEvent, Op
from state_models.registry import Registry
from state_models.seq import make_seq
from state_models.tables import TableInfo, resolver_for
from tests.pubsub_emulator import PubSubStandIn
from tests.pubsub_emulator.fixture import PubSubEndpoint
from tests.pubsub_emulator.receive import pull_once, pull_until

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "debezium" / "pg_noschemas_string.jsonl"
COLUMNS = {"id": "bigint", "plan": "text", "amount": "numeric(12,2)"}
REGISTRY = """
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://x@127.0.0.1/billing
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns: {id: bigint, plan: text, amount: "numeric(12,2)"}
      - name: public.plan_prices
        primary_key: [plan, currency]
"""


def registry_file(tmp_path: Path, project: str, extra: str = "") -> Path:
    path = tmp_path / "cdc.yaml"
    path.write_text(REGISTRY + f"pubsub:\n  project: {project}\n" + extra)
    return path


def registry(tmp_path: Path, project: str, extra: str = "") -> Registry:
    return load_config(registry_file(tmp_path, project, extra), env={}).registry


def setup(tmp_path: Path, ps: PubSubEndpoint, *args: str) -> int:
    return main(["pubsub", "setup", "--config", str(registry_file(tmp_path, ps.project)), *args])


def change(i: int, key: int, op: Op = Op.UPDATE, table: str = "subscriptions") -> ChangeEvent:
    row = {"id": key, "plan": f"plan-{i}", "amount": Decimal("9.90")}
    return ChangeEvent(
        table=f"billing.public.{table}",
        op=op,
        key={"id": key},
        before=None,
        after=None if op is Op.DELETE else row,
        seq=make_seq(1000 + i, 1000 + i),
        commit_ts=1_790_000_000_000_000 + i,
    )


def golden_events() -> list[ChangeEvent]:
    """Real Debezium messages (the original text is kept in ``raw``)."""
    tables = [
        TableInfo("billing.public.subscriptions", ("id",)),
        TableInfo("billing.public.plan_prices", ("plan", "currency")),
    ]
    resolve = resolver_for(tables, "billing")
    out = []
    for line in GOLDEN.read_text().splitlines():
        value = json.loads(line)["value"]
        if value:
            event = decode_debezium(value, resolve)
            if isinstance(event, ChangeEvent) and event.op is not Op.TRUNCATE:
                out.append(event)
    return out


@pytest.fixture
def subscriber(pubsub_emulator: PubSubEndpoint) -> Iterator[Any]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture
def sink(tmp_path: Path, pubsub_emulator: PubSubEndpoint) -> Iterator[PubSubSink]:
    assert setup(tmp_path, pubsub_emulator) == 0
    with PubSubSink.from_registry(registry(tmp_path, pubsub_emulator.project)) as s:
        yield s


def merge_subscription(ps: PubSubEndpoint, table: str = "subscriptions") -> str:
    return ps.subscription_path(f"cdc.billing.public.{table}.merge")


# --------------------------------------------------------------------------- cdc pubsub setup


def test_setup_creates_ordered_subscriptions_with_dead_letters_and_is_idempotent(
    tmp_path, pubsub_emulator, subscriber, capsys
):
    ps = pubsub_emulator
    assert setup(tmp_path, ps, "--dry-run") == 0
    assert "cdc.billing.public.subscriptions.merge" in capsys.readouterr().out
    publisher = pubsub_v1.PublisherClient()
    assert list(publisher.list_topics(project=f"projects/{ps.project}")) == []  # dry run: nothing

    assert setup(tmp_path, ps) == 0
    out = capsys.readouterr().out
    assert "6 created, 0 already there, 0 different" in out
    topics = {t.name for t in publisher.list_topics(project=f"projects/{ps.project}")}
    assert topics == {
        ps.topic_path("cdc.billing.public.subscriptions"),
        ps.topic_path("cdc.billing.public.plan_prices"),
        ps.topic_path("cdc.dead-letter"),
    }
    merge = subscriber.get_subscription(subscription=merge_subscription(ps))
    assert merge.topic == ps.topic_path("cdc.billing.public.subscriptions")
    assert merge.enable_message_ordering is True
    assert merge.ack_deadline_seconds == 60
    assert merge.dead_letter_policy.dead_letter_topic == ps.topic_path("cdc.dead-letter")
    assert merge.dead_letter_policy.max_delivery_attempts == 10
    dead = subscriber.get_subscription(subscription=ps.subscription_path("cdc.dead-letter.merge"))
    assert dead.topic == ps.topic_path("cdc.dead-letter")

    assert setup(tmp_path, ps) == 0
    assert "0 created, 6 already there, 0 different" in capsys.readouterr().out


def test_setup_reports_a_subscription_that_is_not_ordered(
    tmp_path, pubsub_emulator, subscriber, capsys
):
    ps = pubsub_emulator
    publisher = pubsub_v1.PublisherClient()
    topic = ps.topic_path("cdc.billing.public.subscriptions")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=merge_subscription(ps), topic=topic)

    assert setup(tmp_path, ps) == 1
    out = capsys.readouterr().out
    assert "mismatch" in out
    assert "message ordering is off, wanted on" in out
    assert "delete it" in out


def test_setup_without_a_reachable_emulator_says_so(tmp_path, pubsub_emulator, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
    started = time.monotonic()
    assert setup(tmp_path, pubsub_emulator) == 1
    assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert f"cannot reach the Pub/Sub emulator at 127.0.0.1:{port}" in err
    assert "start the emulator, or unset PUBSUB_EMULATOR_HOST" in err


def test_setup_without_credentials_says_how_to_get_them(tmp_path, monkeypatch, capsys):
    for var in ("PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["pubsub", "setup", "--config", str(registry_file(tmp_path, "acme-data"))]) == 2
    err = capsys.readouterr().err
    assert "no Google credentials to reach Pub/Sub" in err
    assert "PUBSUB_EMULATOR_HOST" in err


def test_setup_needs_a_pubsub_section(tmp_path, capsys):
    path = tmp_path / "cdc.yaml"
    path.write_text(REGISTRY)
    assert main(["pubsub", "setup", "--config", str(path)]) == 2
    assert "has no pubsub: section" in capsys.readouterr().err


# --------------------------------------------------------------------------- the sink


def test_sink_is_an_event_sink(sink):
    assert isinstance(sink, EventSink)


def test_written_events_are_all_there_when_write_returns(sink, subscriber, pubsub_emulator):
    events = golden_events()
    native = [change(i, key=100 + i) for i in range(3)]
    sink.write(events + native)

    by_table: dict[str, list[Any]] = defaultdict(list)
    for table in ("subscriptions", "plan_prices"):
        expected = sum(e.table.endswith(table) for e in events + native)
        got = pull_once(subscriber, merge_subscription(pubsub_emulator, table), 1000)
        assert len(got) == expected, table  # no waiting: durable when write returned
        by_table[table] = got

    received = {m.message.attributes["event_id"]: m.message for ms in by_table.values() for m in ms}
    for e in events:  # Debezium's own message, byte for byte
        msg = received[e.event_id]
        assert msg.data == e.raw.encode()
        assert msg.attributes["table"] == e.table
        assert msg.attributes["op"] == e.op.value
        assert msg.attributes["seq"] == e.seq
        assert msg.ordering_key.startswith(e.table + ":{")
    resolve = resolver_for([TableInfo("billing.public.subscriptions", ("id",), COLUMNS)], "billing")
    for e in native:  # rendered as a Debezium envelope that decodes to the same event
        msg = received[e.event_id]
        assert decode_debezium(msg.data, resolve) == e
        assert msg.ordering_key == f'billing.public.subscriptions:{{"id":{e.key["id"]}}}'
        assert msg.attributes["commit_ts"] == str(e.commit_ts)


def test_changes_of_a_row_arrive_in_commit_order(sink, subscriber, pubsub_emulator):
    keys, per_key = [1, 2, 3, 4], 25
    events = [change(i * len(keys) + k, key=k) for i in range(per_key) for k in keys]
    for start in range(0, len(events), 17):  # several writes, like a capture's batches
        sink.write(events[start : start + 17])

    seen: dict[int, list[str]] = defaultdict(list)
    lock = threading.Lock()
    done = threading.Event()

    def callback(message: Any) -> None:
        with lock:
            seen[json.loads(message.attributes["key"])["id"]].append(message.attributes["seq"])
            if sum(len(v) for v in seen.values()) >= len(events):
                done.set()
        message.ack()

    future = subscriber.subscribe(merge_subscription(pubsub_emulator), callback)
    try:
        assert done.wait(30), {k: len(v) for k, v in seen.items()}
    finally:
        future.cancel()
        future.result(timeout=10)
    for key in keys:
        published = [e.seq for e in events if e.key["id"] == key]
        assert seen[key] == published


def test_missing_topic_fails_the_write_and_a_retry_after_setup_succeeds(
    tmp_path, pubsub_emulator, subscriber
):
    ps = pubsub_emulator
    events = [change(i, key=7) for i in range(3)]
    with PubSubSink.from_registry(registry(tmp_path, ps.project)) as sink:
        with pytest.raises(ConfigError, match="run `cdc pubsub setup`"):
            sink.write(events)
        assert setup(tmp_path, ps) == 0
        sink.write(events)  # the same batch again, now that the topic exists
    got = pull_until(subscriber, merge_subscription(ps), 3, ack=True)
    assert [m.message.attributes["seq"] for m in got] == [e.seq for e in events]


def test_write_retries_while_pubsub_is_unreachable(tmp_path, monkeypatch):
    """Pub/Sub comes up two seconds into the write: the publishes are retried, write returns."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
    server = PubSubStandIn(port=port)
    reg = registry(tmp_path, "late-project")
    layout = reg.pubsub_layout()
    from tests.pubsub_emulator.server import Subscription, Topic

    for topic in layout.topics():
        server.create_topic(Topic(name=layout.topic_path(topic)))
    sub = layout.subscription_path("reader")
    server.create_subscription(
        Subscription(
            name=sub, topic=layout.topic_path(layout.topic("billing.public.subscriptions"))
        )
    )
    timer = threading.Timer(2.0, server.start)
    timer.start()
    try:
        with PubSubSink.from_registry(reg) as sink:
            started = time.monotonic()
            sink.write([change(i, key=1) for i in range(5)])
            assert time.monotonic() - started >= 1.5
        with pubsub_v1.SubscriberClient() as subscriber:
            assert len(pull_until(subscriber, sub, 5)) == 5
    finally:
        timer.join()
        server.stop()


def test_write_fails_as_transient_when_pubsub_stays_unreachable(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
    reg = registry(tmp_path, "nobody-home", "  publish: {timeout_seconds: 2}\n")
    with PubSubSink.from_registry(reg) as sink:
        started = time.monotonic()
        with pytest.raises(TransientError, match="did not acknowledge 2 of 2 events"):
            sink.write([change(0, key=1), change(1, key=2)])
        assert time.monotonic() - started < 40


def test_a_row_with_many_changes_is_cut_into_calls_in_order(tmp_path, pubsub_emulator, subscriber):
    ps = pubsub_emulator
    assert setup(tmp_path, ps) == 0
    reg = registry(tmp_path, ps.project, "  publish: {max_messages: 3, max_bytes: 5000}\n")
    big = "y" * 3000  # two of these exceed max_bytes: one message per call
    events = [change(i, key=9) for i in range(7)] + [
        ChangeEvent(
            table="billing.public.subscriptions",
            op=Op.UPDATE,
            key={"id": 9},
            before=None,
            after={"id": 9, "plan": big, "amount": Decimal("1.00")},
            seq=make_seq(2000 + i, 2000 + i),
            commit_ts=1_790_000_000_100_000 + i,
        )
        for i in range(3)
    ]
    with PubSubSink.from_registry(reg) as sink:
        sink.write(events)
    got = pull_until(subscriber, merge_subscription(ps), len(events), ack=True)
    assert [m.message.attributes["seq"] for m in got] == [e.seq for e in events]
