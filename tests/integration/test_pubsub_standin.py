"""The Pub/Sub stand-in, driven by the official google-cloud-pubsub client, unmodified.

Every test here runs against the official emulator too when ``PUBSUB_EMULATOR_HOST`` is set
(see ``tests/pubsub_emulator/fixture.py``); only the refusal test is about the stand-in itself.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1

from tests.pubsub_emulator.fixture import PubSubEndpoint
from tests.pubsub_emulator.receive import pull_once, pull_until

pytestmark = pytest.mark.integration


@pytest.fixture
def publisher(pubsub_emulator: PubSubEndpoint) -> Iterator[pubsub_v1.PublisherClient]:
    client = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    yield client
    client.stop()


@pytest.fixture
def subscriber(pubsub_emulator: PubSubEndpoint) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


def make_topic(publisher: Any, ps: PubSubEndpoint, name: str = "events") -> str:
    topic = ps.topic_path(name)
    publisher.create_topic(name=topic)
    return topic


def make_subscription(
    subscriber: Any, ps: PubSubEndpoint, topic: str, name: str = "reader", **settings: Any
) -> str:
    path = ps.subscription_path(name)
    subscriber.create_subscription(request={"name": path, "topic": topic, **settings})
    return path


def data_of(received: list[Any]) -> list[bytes]:
    return [m.message.data for m in received]


def test_publish_pull_ack(publisher, subscriber, pubsub_emulator):
    topic = make_topic(publisher, pubsub_emulator)
    sub = make_subscription(subscriber, pubsub_emulator, topic)
    info = subscriber.get_subscription(subscription=sub)
    assert info.ack_deadline_seconds == 10  # 0 (unset) means the real default

    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    ids = [
        publisher.publish(topic, f"m{i}".encode(), ordering_key="k1", table="t", n=str(i)).result()
        for i in range(3)
    ]
    assert len(set(ids)) == 3

    got = pull_until(subscriber, sub, 3)
    assert sorted(data_of(got)) == [b"m0", b"m1", b"m2"]
    by_data = {m.message.data: m.message for m in got}
    assert by_data[b"m1"].attributes == {"table": "t", "n": "1"}
    assert by_data[b"m1"].ordering_key == "k1"
    assert {m.message_id for m in by_data.values()} == set(ids)
    assert all(
        before <= m.publish_time <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        for m in by_data.values()
    )

    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
    assert pull_once(subscriber, sub) == []


def test_nack_redelivers_at_once(publisher, subscriber, pubsub_emulator):
    topic = make_topic(publisher, pubsub_emulator)
    sub = make_subscription(subscriber, pubsub_emulator, topic, ack_deadline_seconds=60)
    publisher.publish(topic, b"again").result()

    (first,) = pull_until(subscriber, sub, 1)
    subscriber.modify_ack_deadline(subscription=sub, ack_ids=[first.ack_id], ack_deadline_seconds=0)
    started = time.monotonic()
    (second,) = pull_until(subscriber, sub, 1)
    assert time.monotonic() - started < 5  # far sooner than the 60 s deadline
    assert second.message.message_id == first.message.message_id
    assert second.ack_id != first.ack_id

    subscriber.acknowledge(subscription=sub, ack_ids=[second.ack_id])
    assert pull_once(subscriber, sub) == []


def test_expired_deadline_redelivers(publisher, subscriber, pubsub_emulator):
    topic = make_topic(publisher, pubsub_emulator)
    sub = make_subscription(subscriber, pubsub_emulator, topic)
    publisher.publish(topic, b"slow").result()

    (first,) = pull_until(subscriber, sub, 1)
    subscriber.modify_ack_deadline(subscription=sub, ack_ids=[first.ack_id], ack_deadline_seconds=1)
    assert pull_once(subscriber, sub, timeout=0.5) == []  # still leased
    (again,) = pull_until(subscriber, sub, 1, timeout=10)
    assert again.message.message_id == first.message.message_id

    # An ack with the expired ack id does not settle the new delivery.
    subscriber.acknowledge(subscription=sub, ack_ids=[first.ack_id])
    subscriber.modify_ack_deadline(subscription=sub, ack_ids=[again.ack_id], ack_deadline_seconds=0)
    (third,) = pull_until(subscriber, sub, 1)
    assert third.message.message_id == first.message.message_id
    subscriber.acknowledge(subscription=sub, ack_ids=[third.ack_id])


def test_subscribe_streams_every_message(publisher, subscriber, pubsub_emulator):
    topic = make_topic(publisher, pubsub_emulator)
    sub = make_subscription(subscriber, pubsub_emulator, topic)
    n = 300
    for f in [publisher.publish(topic, str(i).encode()) for i in range(n)]:
        f.result()

    seen: set[bytes] = set()
    done = threading.Event()
    lock = threading.Lock()

    def callback(message: Any) -> None:
        with lock:
            seen.add(message.data)
            if len(seen) == n:
                done.set()
        message.ack()

    future = subscriber.subscribe(sub, callback)
    try:
        assert done.wait(30), f"received {len(seen)} of {n}"
    finally:
        future.cancel()
        future.result(timeout=10)
    assert seen == {str(i).encode() for i in range(n)}


def test_subscribe_redelivers_nacked_and_expired(publisher, subscriber, pubsub_emulator):
    topic = make_topic(publisher, pubsub_emulator)
    sub = make_subscription(subscriber, pubsub_emulator, topic)
    publisher.publish(topic, b"nack-me").result()
    publisher.publish(topic, b"let-me-expire").result()

    deliveries: dict[bytes, list[float]] = defaultdict(list)
    done = threading.Event()

    def callback(message: Any) -> None:
        deliveries[message.data].append(time.monotonic())
        if len(deliveries[message.data]) > 1:
            message.ack()
        elif message.data == b"nack-me":
            message.nack()
        else:
            # Stop leasing it and let the server's deadline run out (1 s).
            message.modify_ack_deadline(1)
            message.drop()
        if all(len(deliveries[k]) >= 2 for k in (b"nack-me", b"let-me-expire")):
            done.set()

    future = subscriber.subscribe(sub, callback)
    try:
        assert done.wait(30), dict(deliveries)
    finally:
        future.cancel()
        future.result(timeout=10)
    expired = deliveries[b"let-me-expire"]
    assert expired[1] - expired[0] >= 0.9  # redelivered by expiry, not at once


def test_streaming_pull_flow_control(publisher, subscriber, pubsub_emulator):
    """The server stops sending at max_outstanding_messages and resumes after acks."""
    topic = make_topic(publisher, pubsub_emulator)
    sub = make_subscription(subscriber, pubsub_emulator, topic)
    for f in [publisher.publish(topic, str(i).encode()) for i in range(10)]:
        f.result()

    acks: list[list[str]] = []
    sent_acks = 0
    stop = threading.Event()
    wake = threading.Condition()

    def requests() -> Iterator[Any]:
        nonlocal sent_acks
        yield pubsub_v1.types.StreamingPullRequest(
            subscription=sub, stream_ack_deadline_seconds=60, max_outstanding_messages=3
        )
        while True:
            with wake:
                wake.wait_for(lambda: acks or stop.is_set(), timeout=30)
                if stop.is_set() or not acks:
                    return
                ack_ids = acks.pop(0)
                sent_acks += len(ack_ids)
            yield pubsub_v1.types.StreamingPullRequest(ack_ids=ack_ids)

    stream = subscriber.streaming_pull(requests=requests())
    received: list[bytes] = []
    try:
        for response in stream:
            batch = list(response.received_messages)
            received.extend(m.message.data for m in batch)
            with wake:
                # The server can only have seen the acks sent so far.
                assert len(received) - sent_acks <= 3, (len(received), sent_acks)
                if len(received) == 10:
                    break
                acks.append([m.ack_id for m in batch])
                wake.notify_all()
    finally:
        with wake:
            stop.set()
            wake.notify_all()
        stream.cancel()
    assert sorted(received, key=int) == [str(i).encode() for i in range(10)]


def test_ordering_key_holds_back_until_batch_acked(publisher, subscriber, pubsub_emulator):
    topic = make_topic(publisher, pubsub_emulator)
    sub = make_subscription(
        subscriber, pubsub_emulator, topic, enable_message_ordering=True, ack_deadline_seconds=60
    )
    for f in [publisher.publish(topic, f"a{i}".encode(), ordering_key="A") for i in range(5)]:
        f.result()

    first = pull_once(subscriber, sub, max_messages=2)
    assert data_of(first) == [b"a0", b"a1"]
    assert pull_once(subscriber, sub, timeout=2) == []  # the key waits for its batch
    subscriber.acknowledge(subscription=sub, ack_ids=[first[0].ack_id])
    assert pull_once(subscriber, sub, timeout=2) == []  # a1 is still outstanding
    subscriber.acknowledge(subscription=sub, ack_ids=[first[1].ack_id])

    second = pull_once(subscriber, sub, max_messages=2)
    assert data_of(second) == [b"a2", b"a3"]
    # Ack a3, nack a2: a2 comes back, and so does a3 although it was acked (real Pub/Sub does so).
    subscriber.acknowledge(subscription=sub, ack_ids=[second[1].ack_id])
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[second[0].ack_id], ack_deadline_seconds=0
    )
    third = pull_until(subscriber, sub, 3, ack=True)
    assert data_of(third) == [b"a2", b"a3", b"a4"]


def test_per_key_order_under_concurrency(publisher, subscriber, pubsub_emulator):
    """Concurrent publishers and callbacks, random nacks: each key is seen in order, no gaps."""
    topic = make_topic(publisher, pubsub_emulator)
    sub = make_subscription(
        subscriber, pubsub_emulator, topic, enable_message_ordering=True, ack_deadline_seconds=30
    )
    keys, per_key = [f"key-{k}" for k in range(6)], 40

    def publish_key(key: str) -> None:
        futures = [
            publisher.publish(topic, f"{key}:{i}".encode(), ordering_key=key)
            for i in range(per_key)
        ]
        for f in futures:
            f.result()

    with ThreadPoolExecutor(len(keys)) as pool:
        list(pool.map(publish_key, keys))

    rng = random.Random(7)
    lock = threading.Lock()
    deliveries: dict[str, list[int]] = defaultdict(list)
    acked: dict[str, set[int]] = defaultdict(set)
    done = threading.Event()

    def callback(message: Any) -> None:
        key, i = message.data.decode().split(":")
        with lock:
            deliveries[key].append(int(i))
            nack = rng.random() < 0.1
        time.sleep(rng.random() / 500)
        if nack:
            message.nack()
            return
        message.ack()
        with lock:
            acked[key].add(int(i))
            if all(len(acked[k]) == per_key for k in keys):
                done.set()

    future = subscriber.subscribe(sub, callback)
    try:
        assert done.wait(60), {k: len(v) for k, v in acked.items()}
    finally:
        future.cancel()
        future.result(timeout=10)

    for key in keys:
        seen = deliveries[key]
        firsts = list(dict.fromkeys(seen))
        assert firsts == list(range(per_key)), f"{key}: first deliveries out of order: {seen}"
        for prev, nxt in itertools.pairwise(seen):
            # The next delivery is the next message, or a rewind to an earlier one (redelivery).
            assert nxt <= prev + 1, f"{key}: {prev} then {nxt} in {seen}"


def test_dead_letter_after_max_delivery_attempts(publisher, subscriber, pubsub_emulator):
    topic = make_topic(publisher, pubsub_emulator)
    dead = make_topic(publisher, pubsub_emulator, "events-dead")
    dead_sub = make_subscription(subscriber, pubsub_emulator, dead, "dead-reader")
    sub = make_subscription(
        subscriber,
        pubsub_emulator,
        topic,
        dead_letter_policy={"dead_letter_topic": dead, "max_delivery_attempts": 5},
    )
    publisher.publish(topic, b"poison", table="t").result()
    publisher.publish(topic, b"fine").result()

    attempts = []
    while len(attempts) < 5:
        for m in pull_until(subscriber, sub, 1):
            if m.message.data == b"fine":
                subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id])
                continue
            attempts.append(m.delivery_attempt)
            subscriber.modify_ack_deadline(
                subscription=sub, ack_ids=[m.ack_id], ack_deadline_seconds=0
            )
    assert attempts == [1, 2, 3, 4, 5]

    (forwarded,) = pull_until(subscriber, dead_sub, 1, ack=True)
    assert forwarded.message.data == b"poison"
    assert forwarded.message.attributes["table"] == "t"
    assert forwarded.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert pull_once(subscriber, sub, timeout=2) == []


def test_admin_calls(publisher, subscriber, pubsub_emulator):
    topic = make_topic(publisher, pubsub_emulator)
    with pytest.raises(exceptions.AlreadyExists):
        publisher.create_topic(name=topic)
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=pubsub_emulator.topic_path("missing"))
    with pytest.raises(exceptions.NotFound):
        subscriber.create_subscription(
            name=pubsub_emulator.subscription_path("orphan"),
            topic=pubsub_emulator.topic_path("missing"),
        )
    with pytest.raises(exceptions.InvalidArgument):
        make_subscription(subscriber, pubsub_emulator, topic, "short", ack_deadline_seconds=5)

    for i in range(3):
        make_topic(publisher, pubsub_emulator, f"extra-{i}")
    project = f"projects/{pubsub_emulator.project}"
    pages = publisher.list_topics(request={"project": project, "page_size": 2})
    assert sorted(t.name for t in pages) == sorted(
        [topic] + [pubsub_emulator.topic_path(f"extra-{i}") for i in range(3)]
    )
    subs = [make_subscription(subscriber, pubsub_emulator, topic, f"sub-{i}") for i in range(2)]
    assert sorted(publisher.list_topic_subscriptions(topic=topic)) == sorted(subs)
    assert sorted(s.name for s in subscriber.list_subscriptions(project=project)) == sorted(subs)

    subscriber.delete_subscription(subscription=subs[0])
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(subscription=subs[0])
    publisher.delete_topic(topic=topic)
    assert subscriber.get_subscription(subscription=subs[1]).topic == "_deleted-topic_"


def test_stand_in_refuses_what_it_does_not_do(publisher, subscriber, pubsub_emulator):
    if pubsub_emulator.kind != "stand-in":
        pytest.skip("documents the stand-in's own limits; the official emulator has others")
    topic = make_topic(publisher, pubsub_emulator)
    with pytest.raises(exceptions.MethodNotImplemented, match="filter is not supported"):
        make_subscription(subscriber, pubsub_emulator, topic, filter='attributes.op = "c"')
    sub = make_subscription(subscriber, pubsub_emulator, topic)
    with pytest.raises(exceptions.MethodNotImplemented, match="Seek"):
        subscriber.seek(request={"subscription": sub, "time": dt.datetime.now(dt.UTC)})
