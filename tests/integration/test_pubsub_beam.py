"""Beam's own Pub/Sub IO (``ReadFromPubSub``) on the DirectRunner, streaming, against the fixture.

Proves that the pipelines in ``merge_jobs`` can be tested locally with Beam's IO unmodified. A
streaming pipeline never ends by itself: the sink appends every element to a file, the test
watches the file until it has seen every published message, then cancels the pipeline.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import pubsub_v1

from tests.pubsub_emulator.fixture import PubSubEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

apache_beam = pytest.importorskip(
    "apache_beam", reason="needs apache-beam[gcp] (pip install -e '.[gcp]')"
)


class AppendLines(apache_beam.DoFn):
    """Test-only sink: one JSON line per element, so the test thread can watch progress."""

    def __init__(self, path: str):
        self.path = path

    def process(
        self, message: Any, timestamp: Any = apache_beam.DoFn.TimestampParam
    ) -> Iterable[Any]:
        line = {
            "data": message.data.decode(),
            "attributes": dict(message.attributes),
            "message_id": message.message_id,
            "timestamp_ms": int(timestamp.micros // 1000),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        return ()  # annotated Iterable, not None: Beam 2.78 refuses a `-> None` process


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.fixture
def publisher(pubsub_emulator: PubSubEndpoint) -> Iterator[pubsub_v1.PublisherClient]:
    client = pubsub_v1.PublisherClient()
    yield client
    client.stop()


@pytest.mark.parametrize("read_from", ["subscription", "topic"])
def test_read_from_pubsub_on_direct_runner(
    read_from: str, publisher: Any, pubsub_emulator: PubSubEndpoint, tmp_path: Path
) -> None:
    from apache_beam.io.gcp.pubsub import ReadFromPubSub
    from apache_beam.options.pipeline_options import PipelineOptions

    topic = pubsub_emulator.topic_path("changes")
    publisher.create_topic(name=topic)
    source: dict[str, str] = {"topic": topic}
    if read_from == "subscription":
        subscription = pubsub_emulator.subscription_path("merge-job")
        with pubsub_v1.SubscriberClient() as subscriber:
            subscriber.create_subscription(name=subscription, topic=topic)
        source = {"subscription": subscription}

    out = tmp_path / "seen.jsonl"
    options = PipelineOptions(
        runner="DirectRunner", streaming=True, project=pubsub_emulator.project
    )
    pipeline = apache_beam.Pipeline(options=options)
    _ = (
        pipeline
        | "Read" >> ReadFromPubSub(**source, with_attributes=True, timestamp_attribute="ts")
        | "Record" >> apache_beam.ParDo(AppendLines(str(out)))
    )
    result = pipeline.run()
    try:
        n, base_ms = 25, 1_700_000_000_000
        published: dict[str, str] = {}
        deadline = time.monotonic() + 90
        # With a topic, Beam creates its own subscription once the pipeline starts: messages
        # published before that are not delivered to it, so keep publishing until one arrives.
        while read_from == "topic" and not read_lines(out):
            assert time.monotonic() < deadline, "Beam never read the warm-up message"
            publisher.publish(topic, b"warm-up", ts=str(base_ms - 1)).result()
            time.sleep(0.5)
        for i in range(n):
            mid = publisher.publish(
                topic, f"event-{i}".encode(), table="billing.public.t", ts=str(base_ms + i)
            ).result()
            published[mid] = f"event-{i}"
        while True:
            seen = [r for r in read_lines(out) if r["data"] != "warm-up"]
            if {r["message_id"] for r in seen} >= set(published):
                break
            assert time.monotonic() < deadline, f"Beam read {len(seen)} of {n} messages"
            time.sleep(0.2)
    finally:
        result.cancel()
        # Beam deletes the subscription it made for a topic read when the transform is collected;
        # make that happen now, while the server is up, not at interpreter exit.
        del pipeline, result
        gc.collect()

    if read_from == "topic":
        with pubsub_v1.SubscriberClient() as subscriber:
            project = f"projects/{pubsub_emulator.project}"
            assert list(subscriber.list_subscriptions(project=project)) == []

    by_id = {r["message_id"]: r for r in seen}
    for mid, data in published.items():
        record = by_id[mid]
        assert record["data"] == data
        assert record["attributes"]["table"] == "billing.public.t"
        # timestamp_attribute: the element's event time comes from the message attribute.
        assert record["timestamp_ms"] == int(record["attributes"]["ts"])
