"""The online store, in a real redis-server of the test's own (never the machine's service) and
in the Bigtable emulator (cbtemulator, through the official client): every test runs on both.

The fence (a late older write never replaces a newer one, a tombstone keeps a deleted row deleted),
`cdc run` feeding it through duplicated, reordered and late deliveries (including a late older
update after a delete) until `cdc online verify` equals `_current`, a Redis outage that never
blocks the merge and is caught up, and `cdc online rebuild` after keys were lost.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cdc.cli import main as cdc_main
from cdc.config import load_config
from cdc.runtime import Runtime, RuntimeOptions
from connectors.local_servers import BigtableEmulator, RedisServer, cbtemulator_binary
from connectors.online import OnlineBackend, OnlineRow
from connectors.online_stores import open_online
from state_models.events import ChangeEvent, Op
from state_models.registry import OnlineStore
from state_models.seq import make_seq
from tests.unit.test_runtime import factory, run_until

pytestmark = [pytest.mark.integration]

TABLE = "billing.public.subscriptions"


@pytest.fixture(params=["redis", "bigtable"])
def online_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RedisServer | BigtableEmulator]:
    """A store of the test's own: redis-server, or the Bigtable emulator."""
    server: RedisServer | BigtableEmulator
    if request.param == "redis":
        if shutil.which("redis-server") is None:
            pytest.skip(
                "needs redis-server (apt-get install redis-server; scripts/install-system-deps.sh)"
            )
        server = RedisServer()
    else:
        if cbtemulator_binary() is None:
            pytest.skip(
                "needs the Bigtable emulator: apt-get install google-cloud-cli-bigtable-emulator "
                "(Google's Cloud SDK repository) or set CDC_CBTEMULATOR"
            )
        server = BigtableEmulator()
        monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", server.host)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def backend(server: RedisServer | BigtableEmulator, key_prefix: str) -> OnlineBackend:
    return open_online(OnlineStore(url=server.url, key_prefix=key_prefix))


def row(key: int, seq: int, plan: str | None = "basic", deleted: bool = False) -> OnlineRow:
    fields = {} if deleted else {"id": str(key), "plan": f'"{plan}"'}
    return OnlineRow(TABLE, f'{{"id":{key}}}', make_seq(seq, seq), deleted, fields)


def test_the_fence_keeps_the_newest_and_a_tombstone_keeps_a_row_deleted(online_server):
    store = backend(online_server, "t:")
    try:
        store.ping()  # ready (Bigtable: its table made)
        assert store.write([row(1, 2, "team")]) == 1
        assert store.write([row(1, 1, "basic")]) == 0  # late and older: refused
        assert store.write([row(1, 2, "team")]) == 0  # the same again: nothing to do
        assert dict(store.rows(TABLE))['{"id":1}']["plan"] == '"team"'
        assert store.write([row(1, 3, deleted=True)]) == 1
        assert store.write([row(1, 2, "pro")]) == 0  # an older update after the delete
        held = dict(store.rows(TABLE))['{"id":1}']
        assert held == {"_seq": make_seq(3, 3), "_deleted": "1"}
        if isinstance(online_server, RedisServer):
            assert store.client.ttl(store.key(TABLE, '{"id":1}')) > 0  # tombstones expire
        assert store.write([row(1, 4, "pro")]) == 1  # re-inserted later: live again
        assert dict(store.rows(TABLE))['{"id":1}']["plan"] == '"pro"'
    finally:
        store.close()


def registry(tmp_path: Path, url: str) -> Path:
    p = tmp_path / "cdc.yaml"
    p.write_text(f"""
changelog: ./changelog
warehouse: duckdb:///{tmp_path}/warehouse.duckdb
state_dir: {tmp_path}/state
online:
  url: {url}
  key_prefix: "test:"
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://nobody@127.0.0.1:1/none
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns: {{id: bigint, plan: text}}
""")
    return p


def change(n: int, key: int, plan: str | None, op: Op = Op.UPDATE) -> ChangeEvent:
    after = None if op is Op.DELETE else {"id": key, "plan": plan}
    return ChangeEvent(
        TABLE,
        op,
        {"id": key},
        {"id": key} if op is Op.DELETE else None,
        after,
        make_seq(n, n),
        1_790_000_000_000_000 + n * 1000,
        tx_id=str(n),
    )


def cli(config: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cdc_main([*args, "--config", str(config)])
    return code, out.getvalue()


def test_cdc_run_keeps_the_store_equal_to_current_through_disorder_and_an_outage(
    online_server, tmp_path
):
    config = registry(tmp_path, online_server.url)
    cfg = load_config(config)
    inserts = [change(i, i, "basic", Op.INSERT) for i in range(1, 21)]
    updates = [change(100 + i, i, "team") for i in range(1, 21)]
    delete = change(200, 5, None, Op.DELETE)
    late = change(150, 5, "pro")  # older than the delete, arrives after it
    batches: list[list[ChangeEvent]] = [
        inserts[10:] + inserts[:10],  # reordered
        updates[:10] + inserts[:3],  # duplicates
        [delete],
        [late, *updates[10:]],
        [replace(updates[0])],  # redelivered
    ]
    rt = Runtime(cfg, RuntimeOptions(max_latency_s=0), capture_factory=factory(batches))
    run_until(rt, lambda r: r.summary.events_merged >= 45)
    assert cli(config, "online", "verify", TABLE)[0] == 0
    store = open_online(cfg.registry.online)  # type: ignore[arg-type]
    try:
        assert dict(store.rows(TABLE))['{"id":5}'].get("_deleted") == "1"
        # keys lost (an eviction, a flush): verify names them, rebuild puts them back
        store.delete(TABLE, ['{"id":7}', '{"id":8}'])
        code, said = cli(config, "online", "verify", TABLE)
        assert code == 1 and '{"id":7}' in said and '{"id":8}' in said, said
        assert cli(config, "online", "rebuild", TABLE)[0] == 0
        assert cli(config, "online", "verify", TABLE)[0] == 0
    finally:
        store.close()

    # an outage: merges go on, the store catches up once it is back (empty: no persistence)
    online_server.stop()
    more = [[change(300 + i, i, "enterprise")] for i in range(1, 6)]
    rt = Runtime(cfg, RuntimeOptions(max_latency_s=0), capture_factory=factory(more))
    stop_at: dict[str, Any] = {}

    def merged_then_back(r: Runtime) -> bool:
        if not r.online:
            return False  # not started yet
        if r.summary.events_merged >= 5 and "back" not in stop_at:
            stop_at["back"] = time.monotonic()
            online_server.start()
        syncer = next(iter(r.online.values()))
        # written, and the store (back empty: no persistence) refilled from the state table
        return "back" in stop_at and syncer.idle() and not syncer.stale and syncer.written >= 5

    run_until(rt, merged_then_back, timeout=60)
    assert rt.summary.events_merged >= 5  # merged while Redis was down
    code, said = cli(config, "online", "verify", TABLE)
    assert code == 0, said


def test_a_run_that_stops_before_its_store_has_everything_refills_it_at_the_next_start(
    online_server, tmp_path, monkeypatch
):
    """Merged, then stopped while the store still owed writes (here: its writes hang, as on a
    store that stopped answering mid-write or a process killed before its writer caught up): the
    owed tables stay noted in the state folder, and the next run refills them from the state
    table, so the store ends equal to `_current` without a new change to those keys."""
    from cdc.runtime import ONLINE_UNSYNCED
    from connectors.online import OnlineSyncer

    config = registry(tmp_path, online_server.url)
    cfg = load_config(config)
    hang, writing = threading.Event(), threading.Event()
    real_run = OnlineSyncer._run

    def hung_writer(self):  # takes a batch off the queue and never writes it
        with self._lock:
            while not self._queue:
                self._lock.wait(0.05)
            self._queue.clear()
            self._busy = True
        writing.set()
        hang.wait(60)

    monkeypatch.setattr(OnlineSyncer, "_run", hung_writer)
    batches = [
        [change(i, i, "basic", Op.INSERT) for i in range(1, 11)],
        [change(20, 3, None, Op.DELETE)],
    ]
    rt = Runtime(cfg, RuntimeOptions(max_latency_s=0), capture_factory=factory(batches))
    try:
        run_until(rt, lambda r: r.summary.events_merged >= 11 and writing.is_set(), timeout=60)
    finally:
        hang.set()
    owed = cfg.state_dir / ONLINE_UNSYNCED
    assert json.loads(owed.read_text()) == [TABLE]  # the store never got them: noted
    code, said = cli(config, "online", "verify", TABLE)
    assert code == 1, said  # indeed behind

    monkeypatch.setattr(OnlineSyncer, "_run", real_run)
    rt = Runtime(cfg, RuntimeOptions(max_latency_s=0), capture_factory=factory([]))
    run_until(rt, lambda r: not owed.exists(), timeout=60)
    assert not owed.exists()
    code, said = cli(config, "online", "verify", TABLE)
    assert code == 0, said
    store = backend(online_server, "test:")
    try:
        assert dict(store.rows(TABLE))['{"id":3}'].get("_deleted") == "1"
    finally:
        store.close()


@pytest.mark.parametrize("per_bundle", [False, True], ids=["group_into_batches", "per_bundle"])
def test_the_beam_merge_feeds_the_store_through_disorder(online_server, tmp_path, per_bundle):
    """The streaming job's merge step (as `cdc job streaming` builds it from the registry) writes
    each touched key's current version to Redis: duplicated, reordered and late deliveries,
    including a late older update after a delete, leave the store equal to `_current`."""
    beam = pytest.importorskip("apache_beam")
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing import test_stream

    from merge_jobs.pool import POOL
    from merge_jobs.settings import online_stores, registered_tables
    from merge_jobs.transforms import DecodeMessages, MergeIntoWarehouse, WarehouseConnector
    from state_models.pubsub import message_for

    config = registry(tmp_path, online_server.url)
    loaded = load_config(config)
    infos, defs = registered_tables(loaded.registry)
    online = online_stores(loaded.registry)
    assert set(online) == {TABLE}

    events = [change(n, key=n % 5, plan=f"p{n}") for n in range(1, 31)]
    events.append(change(31, key=3, plan=None, op=Op.DELETE))
    late = change(29, key=3, plan="late")  # older than the delete, arrives after it
    deliveries = [*events[::-1][:10], *events, events[4], events[30], late]

    stream = test_stream.TestStream().advance_watermark_to(0)
    for i, e in enumerate(deliveries):
        m = message_for(e, "postgres")
        stream = stream.add_elements([PubsubMessage(m.data, m.attributes, message_id=f"m{i}")])
        stream = stream.advance_processing_time(0.2)
    stream = stream.advance_watermark_to_infinity()
    pipeline = beam.Pipeline(options=PipelineOptions([], streaming=True))
    decoded = pipeline | stream | "Decode" >> DecodeMessages(infos)
    _ = decoded.events | "Merge" >> MergeIntoWarehouse(
        WarehouseConnector(loaded.warehouse_url),
        defs,
        batch_size=7,
        max_latency_s=1,
        per_bundle=per_bundle,
        online=online,
    )
    pipeline.run().wait_until_finish()
    POOL.close_idle()

    code, out = cli(config, "online", "verify", TABLE, "--format", "json")
    assert code == 0, out
    store = backend(online_server, "test:")
    try:
        held = dict(store.rows(TABLE))
    finally:
        store.close()
    assert held['{"id":3}'] == {"_seq": make_seq(31, 31), "_deleted": "1"}
    assert held['{"id":4}']["plan"] == '"p29"' and held['{"id":4}']["_seq"] == make_seq(29, 29)
    assert held['{"id":0}']["plan"] == '"p30"'


@pytest.mark.slow
def test_cdc_run_on_a_live_source_keeps_the_store_equal_to_the_source_through_a_crash(
    online_server, postgres, source_dsn, tmp_path, monkeypatch
):
    """A real PostgreSQL with a workload of inserts, updates and deletes, captured by `cdc run`
    (pgoutput), SIGKILLed once mid-workload and restarted (it re-merges and re-sends what it had
    not marked done): at the end the store equals `_current` (`cdc online verify`) and holds the
    source's rows exactly, deleted keys as tombstones; the `pii: hash` column only as its token,
    its clear text nowhere in the store."""
    import signal

    import psycopg

    from state_models.pii import TOKEN_PREFIX, PiiKey
    from tests.integration.test_run_crash import (
        PG_SCHEMA,
        Source,
        start_run,
        stop_run,
        wait_streaming,
        workload,
    )

    db = source_dsn.rsplit("/", 1)[1]
    postgres.execute(PG_SCHEMA, database=db)
    source = Source(
        registry="",
        table="billing.public.accounts",
        connect=lambda: psycopg.connect(source_dsn),
        query=lambda sql: postgres.execute(sql.replace("{t}", "public."), database=db),
    )
    config = tmp_path / "cdc.yaml"
    config.write_text(f"""
changelog: ./changelog
warehouse: duckdb:///{tmp_path}/warehouse.duckdb
state_dir: {tmp_path}/state
online:
  url: {online_server.url}
  key_prefix: "live:"
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: {source_dsn}
    slot: cdc_online_{db}
    publication: cdc_online_{db}
    tables:
      - name: public.accounts
        primary_key: [id]
        columns: {{id: bigint, balance: "numeric(12,2)", note: text}}
        pii: {{note: hash}}
""")
    secret = "online-test-key-0123456789abcdef"
    monkeypatch.setenv("CDC_PII_KEY", secret)
    state, log = tmp_path / "state", tmp_path / "run.log"
    proc = start_run(config, log)
    try:
        wait_streaming(state, proc)
        done = threading.Event()
        writer = threading.Thread(target=workload, args=(source, 600, 5, done))
        writer.start()
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)  # mid-workload: merged, maybe not yet in the store
        proc.wait(30)
        proc = start_run(config, log)
        wait_streaming(state, proc)
        writer.join(180)
        assert done.is_set(), "the workload did not finish"
        deadline = time.monotonic() + 180
        table = "billing.public.accounts"
        while True:  # the store catches up while cdc run runs (writes go out concurrently)
            time.sleep(1.0)
            code, said = cli(config, "online", "verify", table)
            if code == 0:
                store = backend(online_server, "live:")
                try:
                    if '{"id":-1}' in dict(store.rows(table)):  # the workload's end is in
                        break
                finally:
                    store.close()
            assert time.monotonic() < deadline, said
        assert stop_run(proc, log) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    code, said = cli(config, "online", "verify", table)
    assert code == 0, said
    live = {
        f'{{"id":{key}}}': (str(balance), note)
        for key, balance, note in source.query("SELECT id, balance, note FROM {t}accounts")
    }
    store = backend(online_server, "live:")
    try:
        held = dict(store.rows(table))
    finally:
        store.close()
    rows = {k: v for k, v in held.items() if v.get("_deleted") != "1"}
    assert len(live) > 100  # the workload left rows to compare
    pii = PiiKey(secret.encode())
    assert {k: (json.loads(v["balance"]), json.loads(v["note"])) for k, v in rows.items()} == {
        k: (b, pii.token(n)) for k, (b, n) in live.items()
    }
    held_text = json.dumps(held)
    assert all(json.loads(v["note"]).startswith(TOKEN_PREFIX) for v in rows.values())
    assert not [n for _, n in live.values() if f'\\"{n}\\"' in held_text]  # no clear note
    deleted = {k for k, v in held.items() if v.get("_deleted") == "1"}
    assert deleted and not deleted & set(live)  # the workload deleted keys: tombstones
