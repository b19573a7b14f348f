"""The streaming merge job reading Datastream's files on Beam's DirectRunner: announced by GCS
object notifications on the Pub/Sub stand-in (files in the GCS emulator), or found by polling a
file pattern (a local folder). Both give the state the Debezium events of the same scripted
history give; a file announced again, or written twice, changes nothing; an undecodable record
and an unreadable notification land in the dead-letter store.

How the streaming pipeline stops: as in test_pipeline_end_to_end, the test polls the warehouse
until the expected state is there, then cancels the pipeline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

beam = pytest.importorskip("apache_beam", reason="needs apache-beam[gcp] (pip install -e '.[gcp]')")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from google.cloud import pubsub_v1  # noqa: E402

from connectors.deadletter import DeadLetterStore  # noqa: E402
from connectors.warehouse import open_warehouse  # noqa: E402
from merge_jobs.pool import POOL  # noqa: E402
from merge_jobs.settings import DatastreamSource, JobSettings  # noqa: E402
from merge_jobs.streaming import build_streaming  # noqa: E402
from state_models.scd2 import TableDef  # noqa: E402
from tests.integration.test_datastream_changelog import (  # noqa: E402
    _PER_DELIVERY,
    MINUTE,
    TABLE,
    debezium_state,
    put,
    write_stream,
)
from tests.pubsub_emulator.fixture import PubSubEndpoint  # noqa: E402
from tests.scenario_orders import ORDERS, datastream_files  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STATE = TableDef(TABLE, "shop_orders", "mysql", ORDERS.primary_key, dict(ORDERS.columns))
BAD_RECORD = '{"uuid": "broken", "source_metadata": {"table": "orders"\n'


def settings_for(tmp_path: Path, output: str) -> JobSettings:
    return JobSettings(
        tables=(ORDERS,),
        table_defs={TABLE: STATE},
        warehouse_url=f"duckdb:///{tmp_path / 'wh.duckdb'}",
        changelog_root=str(tmp_path / "lake"),
        dead_letter_folder=str(tmp_path / "dead_letters"),
        batch_size=100,
        batch_max_latency_s=0.5,
        datastream=(DatastreamSource("shop", "mysql", output),),
    )


def history(settings: JobSettings) -> list[dict[str, Any]] | None:
    wh = open_warehouse(settings.warehouse_url)
    try:
        if wh.state_table(STATE) is None:
            return None
        return [{k: v for k, v in r.items() if k not in _PER_DELIVERY} for r in wh.history(STATE)]
    finally:
        wh.close()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def run(settings: JobSettings, project: str | None = None, **inputs: Any) -> Any:
    options = PipelineOptions([], runner="DirectRunner", streaming=True, project=project)
    pipeline = beam.Pipeline(options=options)
    build_streaming(pipeline, settings, [], **inputs)
    return pipeline.run()


def counter(result: Any, name: str) -> int:
    found = result.metrics().query()["counters"]
    return sum(int(c.attempted or 0) for c in found if c.key.metric.name == name)


def test_files_announced_by_gcs_notifications(
    pubsub_emulator: PubSubEndpoint, gcs_bucket: str, tmp_path: Path
) -> None:
    output = f"gs://{gcs_bucket}/datastream/shop"
    files = write_stream(output)  # three files, and file 0 written a second time
    bad_file = f"{output}/{MINUTE}/mysql-cdc-binlog_9.jsonl"
    put(bad_file, BAD_RECORD.encode())
    topic = pubsub_emulator.topic_path("datastream-objects")
    subscription = pubsub_emulator.subscription_path("datastream-objects.merge")
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=topic)
    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=30)

    def announce(url: str, event: str = "OBJECT_FINALIZE", with_ids: bool = False) -> None:
        bucket, name = url.removeprefix("gs://").split("/", 1)
        attributes = {"eventType": event, "payloadFormat": "JSON_API_V1"}
        if with_ids:  # the attributes alone name the object too
            attributes |= {"bucketId": bucket, "objectId": name}
        data = json.dumps({"kind": "storage#object", "bucket": bucket, "name": name}).encode()
        publisher.publish(topic, data, **attributes).result(timeout=30)

    settings = settings_for(tmp_path, output)
    result = run(settings, pubsub_emulator.project, datastream_notifications=[subscription])
    try:
        for url in [files[2], files[0]]:  # out of order
            announce(url)
        announce(files[0], with_ids=True)  # announced again
        announce(files[1], with_ids=True)
        announce(f"{output}/{MINUTE}/mysql-cdc-binlog_0_again.jsonl")  # the same changes again
        announce(bad_file)
        announce(files[1], event="OBJECT_METADATA_UPDATE")  # not a new file: ignored
        announce(f"gs://{gcs_bucket}/changelog/shop/x.parquet")  # not Datastream's: ignored
        publisher.publish(topic, b"not json").result(timeout=30)  # a notification of nothing

        expected = debezium_state()
        wait_for(lambda: history(settings) == expected, "the Debezium state")
        store = DeadLetterStore(settings.dead_letter_folder)
        wait_for(lambda: len(store) >= 2, "two dead letters")
        # once more, after everything was merged, and now gone: were it read again, it would be
        # a dead letter (announced but missing); the job remembers it and does not read it
        fsspec.filesystem("gs").rm(files[2])
        announce(files[2])
        time.sleep(3)
        assert history(settings) == expected
        assert len(store) == 2
    finally:
        result.cancel()
        POOL.close_idle()
        publisher.stop()

    letters = {letter.context.get("stage"): letter for letter in store.list()}
    assert set(letters) == {"decode", "datastream notification"}
    bad = letters["decode"]
    assert (bad.context["file"], bad.context["offset"]) == (bad_file, 0)
    assert bad.raw_text() == BAD_RECORD and bad.source == "shop"
    assert letters["datastream notification"].raw_text() == "not json"


def test_files_found_by_polling_a_pattern(tmp_path: Path) -> None:
    """Six polls of the pattern on Beam's FnApiRunner: the Python DirectRunner cannot run the
    splittable polling step next to stateful steps in streaming mode (Beam 2.77: "Transform node
    ... ProcessKeyedElements ... was not replaced as expected"). Every poll matches every file;
    each is read once."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.utils.timestamp import Timestamp

    output = str(tmp_path / "datastream" / "shop")
    contents = datastream_files()
    for n in (2, 0, 1):
        put(f"{output}/{MINUTE}/f{n}.jsonl", contents[n].encode())
    put(f"{output}/{MINUTE}/f0-again.jsonl", contents[0].encode())  # the same changes again

    settings = settings_for(tmp_path, output)
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    build_streaming(
        pipeline,
        settings,
        [],
        datastream_files=[f"{output}/**"],
        datastream_poll_s=0.5,
        datastream_poll_until=Timestamp.now() + 3,
    )
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        POOL.close_idle()

    assert history(settings) == debezium_state()
    assert counter(result, "datastream_files_read") == 4
