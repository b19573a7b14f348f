"""`pii:` on a real PostgreSQL captured by `cdc run` (pgoutput): no clear value of a hashed,
masked or dropped column anywhere we write or print.

The search reads what compression would hide from a byte search: every Parquet file of the
changelog column by column, every table of the DuckDB warehouse, plus the journal, the dead
letters (one is a change pgoutput could not read, whose original message holds the row), the
status file, the logs and the output of every command run afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration


KEY = "pii-test-key-0123456789abcdef"
ALICE, BOB = "alice@example.com", "bob.secret@example.org"
CARD = "4111111111111111"
NOTE = "note-that-must-never-land"
SECRETS = [ALICE, BOB, CARD, NOTE, "Bob-Clear-Name", KEY]  # the key itself is never shown either

SCHEMA = """
CREATE TABLE public.customers (
    id bigint PRIMARY KEY, email text, card text, note text, plan text, score numeric(8,2)
);
CREATE TABLE public.subscribers (email text PRIMARY KEY, plan text, name text);
"""


def _cdc(tmp_path: Path, *args: str, key: str | None = KEY) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "CDC_PII_KEY"}
    if key is not None:
        env["CDC_PII_KEY"] = key
    result = subprocess.run(
        [sys.executable, "-m", "cdc", *args, "--config", str(tmp_path / "cdc.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return result.returncode, result.stdout + result.stderr


def _registry(dsn: str, engine: str = "pgoutput") -> str:
    return textwrap.dedent(f"""\
        changelog: ./changelog
        warehouse: duckdb:///warehouse.duckdb
        state_dir: ./state
        sources:
          billing:
            kind: postgres
            engine: {engine}
            dsn: {dsn}
            tables:
              - name: public.customers
                primary_key: [id]
                pii: {{email: hash, card: mask, note: drop}}
              - name: public.subscribers
                primary_key: [email]
                pii: {{email: hash, name: mask}}
        """)


def _texts_in_files(root: Path) -> list[tuple[str, str]]:
    """(where, text) for everything under ``root``: Parquet column by column, DuckDB table by
    table, other files as bytes decoded."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                out.append(
                    (f"{rel}:{name}", json.dumps(table.column(name).to_pylist(), default=str))
                )
        elif path.suffix == ".duckdb":
            with duckdb.connect(str(path), read_only=True) as con:
                for (name,) in con.sql(
                    "SELECT table_name FROM information_schema.tables"
                ).fetchall():
                    rows = con.sql(f'SELECT * FROM "{name}"').fetchall()
                    out.append((f"{rel}:{name}", json.dumps(rows, default=str)))
        else:
            out.append((rel, path.read_bytes().decode("utf-8", "replace")))
    return out


@pytest.mark.parametrize("engine", ["pgoutput", "debezium"])
def test_cdc_run_keeps_no_clear_value_of_a_pii_column_anywhere(
    postgres, source_dsn, tmp_path, engine
):
    pg_database = source_dsn
    seconds = "10" if engine == "pgoutput" else "30"  # the JVM takes its time to start
    db = pg_database.rsplit("/", 1)[1]
    postgres.execute(
        SCHEMA
        + f"INSERT INTO public.customers VALUES (1, '{ALICE}', '{CARD}', '{NOTE}', 'basic', 1.5);"
        + f"INSERT INTO public.customers VALUES (2, '{ALICE}', NULL, 'x', 'pro', 2);"
        + f"INSERT INTO public.subscribers VALUES ('{BOB}', 'basic', 'Bob-Clear-Name');",
        database=db,
    )
    (tmp_path / "cdc.yaml").write_text(_registry(pg_database, engine))
    outputs: list[tuple[str, str]] = []

    code, out = _cdc(tmp_path, "run", "--duration", "8", key=None)
    assert code == 2 and "CDC_PII_KEY" in out, out  # no key: refused before anything is written
    assert not (tmp_path / "state").exists() and not (tmp_path / "warehouse.duckdb").exists()

    code, out = _cdc(tmp_path, "run", "--duration", seconds)
    outputs.append(("run", out))
    assert code == 0, out
    postgres.execute(
        f"UPDATE public.customers SET plan = 'pro', note = '{NOTE}-2' WHERE id = 1;"
        # a value pgoutput cannot read: the change is set aside as a dead letter, sealed
        # (Debezium's precise decimal mode makes it null: `cdc preflight` warns of that)
        f"INSERT INTO public.customers VALUES (3, '{ALICE}', '{CARD}', '{NOTE}', 'x', 'NaN');"
        f"UPDATE public.subscribers SET plan = 'pro' WHERE email = '{BOB}';",
        database=db,
    )
    code, out = _cdc(tmp_path, "run", "--duration", seconds, "--log-format", "json")
    outputs.append(("run --log-format json", out))
    assert code == 0, out

    code, out = _cdc(tmp_path, "run", "--duration", "3", key="another-key-of-enough-length")
    assert code == 2 and "not the key" in out, out  # another key would give other tokens

    for args in (
        ["status"],
        ["status", "--format", "json"],
        ["dead-letters", "ls"],
        ["history", "billing.public.customers"],
        ["history", "billing.public.subscribers", "--key", f"email={BOB}", "--format", "jsonl"],
        ["as-of", "billing.public.customers", "--at", "2999-01-01T00:00:00Z"],
        ["changelog", "ls"],
        ["tables"],
        ["rebuild", "billing.public.customers", "--shadow"],
        ["verify", "billing.public.customers"],
    ):
        code, out = _cdc(tmp_path, *args)
        outputs.append((" ".join(args), out))
        assert code == 0, f"cdc {' '.join(args)}: {out}"

    found = [
        f"{where} holds {secret!r}"
        for where, text in [*outputs, *_texts_in_files(tmp_path)]
        for secret in SECRETS
        if secret in text
    ]
    assert not found, "\n".join(found)

    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        rows = con.sql(
            "SELECT id, email, card, plan, _op FROM billing_customers ORDER BY id, _seq"
        ).fetchall()
        columns = [c[0] for c in con.sql("DESCRIBE billing_customers").fetchall()]
        subscribers = con.sql(
            "SELECT email, plan, name FROM billing_subscribers_current"
        ).fetchall()
    assert "note" not in columns  # dropped: never a column
    tokens = {r[1] for r in rows}
    assert len(tokens) == 1 and next(iter(tokens)).startswith("h1:")  # equal e-mails, one token
    assert rows[0][2] == "*" * 12 + CARD[-4:] and rows[2][2] is None
    expected = [("basic", "r"), ("pro", "u"), ("pro", "r")]
    if engine == "debezium":
        expected.append(("x", "c"))  # its NaN arrived as null (precise decimal mode)
    assert [r[3:] for r in rows] == expected
    [(email, plan, name)] = subscribers
    assert email.startswith("h1:") and email != rows[0][1] and plan == "pro"
    assert name == "*" * 10 + "Name"
    history = dict(outputs)[f"history billing.public.subscribers --key email={BOB} --format jsonl"]
    assert email in history and '"pro"' in history  # the clear --key value was hashed

    if engine == "debezium":
        return
    assert "billing.public.customers" in dict(outputs)["dead-letters ls"]
    store = tmp_path / "state" / "dead_letters"
    stored = [
        json.loads(line) for f in store.glob("*.jsonl") for line in f.read_text().splitlines()
    ]
    assert stored and all(letter["raw_encoding"] == "sealed" for letter in stored), stored


def test_the_binlog_capture_keeps_no_clear_value_either(mariadb, mysql_database, tmp_path):
    mariadb.execute(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, email VARCHAR(100), card VARCHAR(20), "
        "note TEXT, plan VARCHAR(10))",
        database=mysql_database,
    )
    mariadb.execute(
        f"INSERT INTO customers VALUES (1, '{ALICE}', '{CARD}', '{NOTE}', 'basic'), "
        f"(2, '{ALICE}', NULL, 'x', 'pro')",
        database=mysql_database,
    )
    (tmp_path / "cdc.yaml").write_text(
        textwrap.dedent(f"""\
            changelog: ./changelog
            warehouse: duckdb:///warehouse.duckdb
            state_dir: ./state
            sources:
              shop:
                kind: mysql
                engine: binlog
                dsn: {mariadb.dsn(mysql_database)}
                tables:
                  - name: {mysql_database}.customers
                    primary_key: [id]
                    pii: {{email: hash, card: mask, note: drop}}
            """)
    )
    code, out = _cdc(tmp_path, "run", "--duration", "8")
    assert code == 0, out
    mariadb.execute(
        f"UPDATE customers SET plan = 'pro', note = '{NOTE}-2' WHERE id = 1",
        database=mysql_database,
    )
    code, again = _cdc(tmp_path, "run", "--duration", "8")
    assert code == 0, again
    table = f"shop.{mysql_database}.customers"
    code, history = _cdc(tmp_path, "history", table)
    assert code == 0, history
    found = [
        f"{where} holds {secret!r}"
        for where, text in [
            ("run", out),
            ("run", again),
            ("history", history),
            *_texts_in_files(tmp_path),
        ]
        for secret in SECRETS
        if secret in text
    ]
    assert not found, "\n".join(found)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        rows = con.sql(
            "SELECT id, email, card, plan FROM shop_customers ORDER BY id, _seq"
        ).fetchall()
    assert len({r[1] for r in rows}) == 1 and rows[0][1].startswith("h1:")
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (1, "************1111", "basic"),
        (1, "************1111", "pro"),
        (2, None, "pro"),
    ]
