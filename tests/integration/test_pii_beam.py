"""`pii:` through the streaming merge job (Beam DirectRunner): Pub/Sub messages carrying clear
values (as a Debezium Server of the source would publish them) become a changelog in the GCS
emulator, state tables in DuckDB and dead letters, none of which holds a clear value; a replay of
that changelog (Beam's Parquet IO) rebuilds the same table.

Everything the job wrote is read back the way compression cannot hide: every Parquet object
column by column, every DuckDB table, every other object as text, and the dead-letter topic.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

beam = pytest.importorskip("apache_beam", reason="needs apache-beam[gcp] (pip install -e '.[gcp]')")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from google.cloud import pubsub_v1, storage  # noqa: E402

from connectors.deadletter import DeadLetterStore, Sealing  # noqa: E402
from connectors.pubsub import PubSubSink, ensure_pubsub  # noqa: E402
from connectors.warehouse import open_warehouse  # noqa: E402
from merge_jobs.backfill import build_replay, plan_replay  # noqa: E402
from merge_jobs.pool import POOL  # noqa: E402
from merge_jobs.settings import (  # noqa: E402
    JobSettings,
    dead_letter_topic_of,
    registered_tables,
    subscriptions_of,
)
from merge_jobs.streaming import build_streaming  # noqa: E402
from state_models.changelog import ChangeRange  # noqa: E402
from state_models.events import ChangeEvent, Op  # noqa: E402
from state_models.pubsub import PubSubSettings  # noqa: E402
from state_models.registry import Registry, Source, TableSpec  # noqa: E402
from state_models.scd2 import INGESTED_AT  # noqa: E402
from state_models.seq import make_seq  # noqa: E402
from tests.pubsub_emulator.fixture import PubSubEndpoint  # noqa: E402
from tests.pubsub_emulator.receive import pull_until  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE_ID = "billing.public.customers"
SECRETS = ["alice@example.com", "4111111111111111", "private-note-xyz"]
# names the table, then breaks: the decoder cannot read it, and it holds a clear e-mail address
MALFORMED = (
    b'{"op": "u", "source": {"connector": "postgresql", "schema": "public", "table": '
    b'"customers"}, "after": {"id": 9, "email": "alice@example.com"'
)


@pytest.fixture
def beam_gcs_anonymous(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam's GCS client settles its credentials at once (see test_pipeline_end_to_end)."""
    from apache_beam.internal.gcp import auth

    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)


def clear_changes() -> list[ChangeEvent]:
    out = []
    for i in range(1, 21):
        after = {
            "id": i,
            "email": "alice@example.com" if i % 2 else f"user{i}@example.com",
            "card": "4111111111111111",
            "note": "private-note-xyz",
            "plan": "pro" if i % 3 else "basic",
        }
        out.append(
            ChangeEvent(
                table=TABLE_ID,
                op=Op.INSERT,
                key={"id": i},
                before=None,
                after=after,
                seq=make_seq(i, i),
                commit_ts=1_790_000_000_000_000 + i,
            )
        )
    return out


def test_the_merge_job_stores_no_clear_pii_value(
    pubsub_emulator: PubSubEndpoint,
    gcs_bucket: str,
    beam_gcs_anonymous: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CDC_PII_KEY", "beam-job-pii-key-0123456789")
    registry = Registry(
        sources={
            "billing": Source(
                kind="postgres",
                engine="debezium",
                dsn="postgresql://u@h/db",
                tables=[
                    TableSpec(
                        name="public.customers",
                        primary_key=["id"],
                        pii={"email": "hash", "card": "mask", "note": "drop"},
                    )
                ],
            )
        },
        pubsub=PubSubSettings(project=pubsub_emulator.project, ack_deadline_seconds=10),
    )
    layout = registry.pubsub_layout()
    assert layout is not None
    ensure_pubsub(layout, pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient())
    [subscription] = subscriptions_of(registry)
    infos, defs = registered_tables(registry)
    table = defs[TABLE_ID]
    warehouse_url = f"duckdb:///{tmp_path / 'state.duckdb'}"
    settings = JobSettings(
        tables=infos,
        table_defs=defs,
        warehouse_url=warehouse_url,
        changelog_root=f"gs://{gcs_bucket}/changelog",
        dead_letter_folder=f"gs://{gcs_bucket}/dead_letters",
        dead_letter_topic=dead_letter_topic_of(registry),
        sealing=Sealing.of(registry),
        batch_size=50,
        batch_max_latency_s=0.5,
        changelog_window_s=2,
    )
    pipeline = beam.Pipeline(
        options=PipelineOptions(
            [], runner="DirectRunner", streaming=True, project=pubsub_emulator.project
        )
    )
    build_streaming(pipeline, settings, [subscription])
    result = pipeline.run()
    changes = clear_changes()
    try:
        PubSubSink.from_registry(registry).write(changes)  # clear values on the topic
        topic = layout.topic_path(layout.topic(TABLE_ID))
        pubsub_v1.PublisherClient().publish(topic, MALFORMED, table=TABLE_ID, op="u").result(30)
        deadline = time.monotonic() + 150
        while True:
            wh = open_warehouse(warehouse_url)
            try:
                versions = len(wh.history(table)) if wh.state_table(table) else 0
            finally:
                wh.close()
            letters = len(DeadLetterStore(settings.dead_letter_folder))
            files = [b.name for b in storage.Client().list_blobs(gcs_bucket, prefix="changelog/")]
            if versions == len(changes) and letters >= 1 and files:
                break
            assert time.monotonic() < deadline, f"{versions} versions, {letters} dead letters"
            time.sleep(1.0)
    finally:
        result.cancel()
        POOL.close_idle()

    texts: list[tuple[str, str]] = []
    for blob in storage.Client().list_blobs(gcs_bucket):
        data = blob.download_as_bytes()
        if blob.name.endswith(".parquet"):
            t = pq.read_table(io.BytesIO(data))
            texts += [
                (f"{blob.name}:{n}", json.dumps(t.column(n).to_pylist(), default=str))
                for n in t.column_names
            ]
        else:
            texts.append((blob.name, data.decode("utf-8", "replace")))
    with duckdb.connect(str(tmp_path / "state.duckdb"), read_only=True) as con:
        for (name,) in con.sql("SELECT table_name FROM information_schema.tables").fetchall():
            texts.append(
                (name, json.dumps(con.sql(f'SELECT * FROM "{name}"').fetchall(), default=str))
            )
    dead_sub = layout.subscription_path(layout.subscription(layout.dead_letter_topic))
    with pubsub_v1.SubscriberClient() as subscriber:
        [published] = pull_until(subscriber, dead_sub, 1, timeout=30, ack=True)
    texts.append(("dead-letter topic", published.message.data.decode("utf-8", "replace")))
    texts.append(("dead-letter topic attributes", json.dumps(dict(published.message.attributes))))
    found = [f"{where} holds {s!r}" for where, text in texts for s in SECRETS if s in text]
    assert not found, "\n".join(found)

    [letter] = DeadLetterStore(settings.dead_letter_folder).list()
    assert letter.sealed and letter.table == TABLE_ID
    assert letter.raw_bytes() == MALFORMED  # whoever holds the key can still read it

    reader = open_warehouse(warehouse_url)
    try:
        live = reader.history(table)
    finally:
        reader.close()
    odd = {r["email"] for r in live if r["id"] % 2}
    assert len(odd) == 1 and next(iter(odd)).startswith("h1:")  # equal e-mails, equal tokens
    assert {r["card"] for r in live} == {"************1111"} and "note" not in live[0]

    # a replay of the changelog (from GCS, Beam's Parquet IO) rebuilds the same table
    fresh = dict(defs)
    fresh[TABLE_ID] = type(table)(**{**table.__dict__, "state_table": "customers_replayed"})
    replay_settings = JobSettings(
        tables=infos,
        table_defs=fresh,
        warehouse_url=warehouse_url,
        changelog_root=settings.changelog_root,
        dead_letter_folder=str(tmp_path / "replay_dead_letters"),
        batch_size=50,
    )
    plan = plan_replay(settings.changelog_root, [TABLE_ID], ChangeRange())
    replay = beam.Pipeline(options=PipelineOptions([], runner="DirectRunner"))
    build_replay(replay, replay_settings, plan.files, ChangeRange())
    replay.run().wait_until_finish()
    reader = open_warehouse(warehouse_url)
    try:
        replayed = reader.history(fresh[TABLE_ID])
    finally:
        reader.close()

    def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != INGESTED_AT} for r in rows]

    assert strip(replayed) == strip(live)
