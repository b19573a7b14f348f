"""Run the README's walkthroughs against throwaway servers and print their transcript.

    .venv/bin/python scripts/walkthrough.py [--postgres-only | --mariadb-only]

"Your own tables, start to finish" (PostgreSQL) and "The same with MySQL / MariaDB": a fresh
project folder per walkthrough with the README's cdc.yaml, every command run as a user types it
(`bash -c`, in that folder, .venv/bin first on PATH, the DSN in SHOP_DSN / PAY_DSN), the README's
SQL applied while `cdc run` runs in the background; then the same changelog rebuilt into BigQuery
when the emulator of the tests is set up (`make bqemu`). The output is Markdown-ready:
`    $ command` and its stdout+stderr indented by 4 spaces. A docs tool, not a test: a command that
fails is shown with its exit code, the walkthrough goes on, and the script exits 1 at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.local_servers import MariaDBServer, PostgresServer  # noqa: E402

RUN = "cdc run --archive-interval 5"
PG_YAML = """\
# cdc.yaml
changelog: ./.cdc/changelog
warehouse: duckdb:///.cdc/warehouse.duckdb
state_dir: ./.cdc
sources:
  shop:
    kind: postgres
    engine: pgoutput
    dsn: ${SHOP_DSN}
    tables: []
"""
PG_SETUP = """\
CREATE TABLE subscriptions (id bigint PRIMARY KEY, user_email text, plan text,
                            amount numeric(12,2), renews_at timestamptz);
INSERT INTO subscriptions VALUES (1, 'al@example.com', 'basic', 9.99, '2026-12-01 00:00Z'),
                                 (2, 'bo@example.com', 'pro', 29.00, '2026-12-05 00:00Z');
"""
PG_CHANGES = """\
UPDATE subscriptions SET plan = 'pro', amount = 29.00 WHERE id = 1;
BEGIN; UPDATE subscriptions SET renews_at = '2027-01-01 00:00Z' WHERE id = 1;
       UPDATE subscriptions SET plan = 'team', amount = 79.00 WHERE id = 2; COMMIT;
DELETE FROM subscriptions WHERE id = 2;
INSERT INTO subscriptions VALUES (3, 'cy@example.com', 'basic', 9.99, NULL);
"""
MY_YAML = """\
# cdc.yaml
changelog: ./.cdc/changelog
warehouse: duckdb:///.cdc/warehouse.duckdb
state_dir: ./.cdc
sources:
  pay:
    kind: mysql
    engine: binlog
    dsn: ${PAY_DSN}
    tables: []
"""
MY_SETUP = """\
CREATE DATABASE shop;
CREATE TABLE shop.payments (id BIGINT PRIMARY KEY, subscription_id BIGINT, amount DECIMAL(12,2),
                            status VARCHAR(16), paid_at DATETIME(6));
INSERT INTO shop.payments VALUES (1, 1, 29.00, 'pending', NULL), (2, 3, 9.99, 'pending', NULL);
CREATE USER 'cdc'@'%' IDENTIFIED BY 'cdc-secret';
GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc'@'%';
"""
MY_CHANGES = """\
UPDATE payments SET status = 'paid', paid_at = '2026-12-06 10:00:00' WHERE id = 1;
UPDATE payments SET status = 'failed' WHERE id = 2;
BEGIN; UPDATE payments SET status = 'paid', paid_at = '2026-12-06 10:05:00' WHERE id = 2;
       INSERT INTO payments VALUES (3, 1, 29.00, 'refunded', NULL); COMMIT;
"""


def out(text: str = "") -> None:
    print(text, flush=True)


FAILED: list[str] = []


def show(command: str, output: str, code: int = 0) -> None:
    out(f"    $ {command}")
    for line in output.rstrip("\n").splitlines():
        out(f"    {line}".rstrip())
    if code:
        out(f"    [exit {code}]")
        print(f"walkthrough: `{command}` exited {code}", file=sys.stderr)
        FAILED.append(command)
    out()


def block(lang: str, text: str) -> None:
    out(f"```{lang}\n{text.rstrip()}\n```\n")


def statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


class Project:
    """A project folder with a cdc.yaml; runs commands there as a user would."""

    def __init__(self, yaml_text: str, env: dict[str, str]):
        self.dir = Path(tempfile.mkdtemp(prefix="cdc-walkthrough-"))
        (self.dir / "cdc.yaml").write_text(yaml_text)
        path = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, **env, "PATH": path}
        self.proc: subprocess.Popen[str] | None = None
        for name, value in env.items():
            out(f"    $ export {name}={value}")

    def sh(self, command: str, quiet: bool = False) -> str:
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if not quiet or result.returncode:
            show(command, result.stdout, result.returncode)
        return result.stdout

    def start(self, command: str) -> None:
        """In the background, its output into run.log (shown when it stops)."""
        self.proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.dir,
            env=self.env,
            stdout=(self.dir / "run.log").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def stop(self, command: str, merged: int) -> None:
        """SIGTERM once its status line (logged every 10 s) shows the merged count."""
        assert self.proc is not None
        log = self.dir / "run.log"
        deadline = time.monotonic() + 30
        while f"merged {merged} " not in log.read_text() and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.kill()
        show(command, log.read_text(), self.proc.wait(timeout=120))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=120)

    def wait_versions(self, table: str, versions: int, timeout: float = 90) -> None:
        """Until `cdc status` shows that many versions merged into the state table."""
        deadline = time.monotonic() + timeout
        have = None
        while time.monotonic() < deadline:
            try:
                doc = json.loads(self.sh("cdc status --format json", quiet=True))
            except ValueError:
                doc = {"tables": []}
            have = next((t["versions"] for t in doc["tables"] if t["state_table"] == table), None)
            if have == versions:
                return
            time.sleep(0.5)
        print(f"walkthrough: {table} has {have} versions, expected {versions}", file=sys.stderr)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def between(history_jsonl: str, version: int) -> str:
    """A moment between the given version of a row (0-based) and the next one."""
    rows = [json.loads(line) for line in history_jsonl.splitlines() if line.startswith("{")]
    start = datetime.fromisoformat(rows[version]["_valid_from"])
    end = datetime.fromisoformat(rows[version + 1]["_valid_from"])
    moment = start + (end - start) / 2
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def apply(execute, sql: str) -> None:
    """The statements of each line group one after the other, a second apart (MySQL commit
    times have whole seconds); BEGIN ... COMMIT stays on one connection."""
    for group in sql.replace("\n       ", " ").splitlines():
        execute(statements(group))
        time.sleep(1.1)


def postgres() -> None:
    out("## PostgreSQL\n")
    server = PostgresServer().start()
    project = None
    try:
        server.create_database("shop")
        for s in statements(PG_SETUP):
            server.execute(s, database="shop")
        block("sql", PG_SETUP)
        block("yaml", PG_YAML)
        project = Project(PG_YAML, {"SHOP_DSN": server.dsn("shop")})
        project.sh("cdc preflight")
        project.sh("cdc register --source shop public.subscriptions")
        project.sh("cat cdc.yaml")
        project.start(RUN)
        project.wait_versions("shop_subscriptions", 2)

        def execute(group: list[str]) -> None:
            import psycopg

            with psycopg.connect(server.dsn("shop"), autocommit=True) as conn:
                for s in group:
                    conn.execute(s)

        apply(execute, PG_CHANGES)
        block("sql", PG_CHANGES)
        project.wait_versions("shop_subscriptions", 7)
        project.sh("cdc status")
        history = project.sh("cdc history subscriptions --key id=2 --format jsonl")
        at = between(history, 1)  # id 2 on 'team', before its delete
        project.sh(f"cdc as-of subscriptions --at {at}")
        project.sh("cdc dead-letters ls")
        project.stop(RUN, merged=7)
        project.sh("cdc changelog ls")
        since = at[:13] + ":00:00Z"
        project.sh(f"cdc replay subscriptions --since {since}")
        project.sh("cdc rebuild subscriptions --shadow")
        project.sh("cdc verify subscriptions --against shop_subscriptions__shadow")
        ts = at.replace("T", " ").replace("Z", "+00")
        query = (
            "SELECT id, plan, amount FROM shop_subscriptions "
            f"WHERE _valid_from <= TIMESTAMPTZ '{ts}' "
            f"AND (_valid_to IS NULL OR _valid_to > TIMESTAMPTZ '{ts}') "
            "AND NOT _is_deleted ORDER BY id"
        )
        project.sh(
            "python -c \"import duckdb; con = duckdb.connect('.cdc/warehouse.duckdb', "
            f'read_only=True); con.sql(\\"{query}\\").show()"'
        )
        bigquery(project, at)
    finally:
        if project:
            project.remove()
        server.destroy()


BQ_QUERIES = [
    """\
-- every version of one subscription, in source order
SELECT id, plan, amount, _valid_from, _valid_to, _op
FROM `acme-data.cdc_state.shop_subscriptions` WHERE id = 2 ORDER BY _seq;""",
    """\
-- the live rows at a time, through the table function created with the table
SELECT id, plan, amount
FROM `acme-data.cdc_state.shop_subscriptions_as_of`(TIMESTAMP '{at}') ORDER BY id;""",
]


def bigquery(project: Project, at: str) -> None:
    """The same changelog rebuilt into BigQuery, here the emulator the tests use when its
    virtualenv is there (`make bqemu`); each query is printed with its rows as SQL comments."""
    from connectors.warehouse.bigquery import make_client
    from tests.bqemu import BigQueryEmulator, BootstrapError, ensure_venv

    try:
        ensure_venv()
    except BootstrapError as exc:
        print(f"walkthrough: no bqemulator ({exc}), BigQuery left out", file=sys.stderr)
        return
    out("### BigQuery (bqemulator)\n")
    emulator = BigQueryEmulator(project="acme-data").start()
    try:
        os.environ["BIGQUERY_EMULATOR_HOST"] = project.env["BIGQUERY_EMULATOR_HOST"] = (
            emulator.api_endpoint
        )
        yaml_text = (project.dir / "cdc.yaml").read_text()
        bq_yaml = yaml_text.replace(
            "duckdb:///.cdc/warehouse.duckdb", "bigquery://acme-data/cdc_state"
        )
        (project.dir / "cdc-bq.yaml").write_text(bq_yaml)
        project.sh("cdc rebuild subscriptions --config cdc-bq.yaml")
        client = make_client("acme-data", None)
        shown = []
        for query in BQ_QUERIES:
            query = query.format(at=at.replace("T", " "))
            rows = [[_bq_value(v) for v in row.values()] for row in client.query(query).result()]
            widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
            shown.append(query)
            for row in rows:
                cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                shown.append(("-- " + "  ".join(cells)).rstrip())
            shown.append("")
        block("sql", "\n".join(shown))
    finally:
        emulator.destroy()


def _bq_value(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    return str(value)


def mariadb() -> None:
    out("## MySQL / MariaDB\n")
    server = MariaDBServer().start()
    project = None
    try:
        for s in statements(MY_SETUP):
            server.execute(s)
        block("sql", MY_SETUP)
        block("yaml", MY_YAML)
        dsn = f"mysql://cdc:cdc-secret@127.0.0.1:{server.port}/shop"
        project = Project(MY_YAML, {"PAY_DSN": dsn})
        project.sh("cdc register --source pay shop.payments")
        project.sh("cdc preflight")
        project.sh("cdc tables")
        project.start(RUN)
        project.wait_versions("pay_payments", 2)

        def execute(group: list[str]) -> None:
            import pymysql

            conn = pymysql.connect(
                host="127.0.0.1", port=server.port, user="root", database="shop", autocommit=True
            )
            with conn, conn.cursor() as cur:
                for s in group:
                    cur.execute(s)

        apply(execute, MY_CHANGES)
        block("sql", MY_CHANGES)
        project.wait_versions("pay_payments", 6)
        history = project.sh("cdc history payments --key id=2 --format jsonl")
        at = between(history, 1)  # id 2 'failed', before it was paid
        project.sh(f"cdc as-of payments --at {at}")
        project.stop(RUN, merged=6)
    finally:
        if project:
            project.remove()
        server.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--postgres-only", action="store_true")
    only.add_argument("--mariadb-only", action="store_true")
    args = parser.parse_args()
    os.environ.update(NO_GCE_CHECK="true", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    started = time.monotonic()
    if not args.mariadb_only:
        postgres()
    if not args.postgres_only:
        mariadb()
    print(f"walkthrough: done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
