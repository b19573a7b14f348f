"""`cdc pii apply` and `cdc erase` on a local changelog and DuckDB: what was stored in clear before
a policy existed is rewritten, one person's values are erased, and a rebuild or replay afterwards
equals the live table (nothing comes back)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from cdc.cli import main
from connectors.changelog.writer import write_events
from state_models.events import ChangeEvent, Op
from state_models.seq import make_seq

ALICE, CARD, NOTE = "alice@example.com", "4111111111111111", "a-private-note"
TABLE = "billing.public.customers"
REGISTRY = """\
changelog: ./changelog
warehouse: duckdb:///w.duckdb
state_dir: ./state
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://u@h/db
    tables:
      - name: public.customers
        primary_key: [id]
        columns: {id: bigint, email: text, card: text, note: text, plan: text}
"""


@pytest.fixture(autouse=True)
def pii_key(monkeypatch):
    monkeypatch.setenv("CDC_PII_KEY", "rewrite-test-key-0123456789")


def change(op: str, id_: int, seq: int, ts: int, **after: object) -> ChangeEvent:
    the_op = Op(op)
    image = {"id": id_, **after}
    return ChangeEvent(
        table=TABLE,
        op=the_op,
        key={} if the_op is Op.TRUNCATE else {"id": id_},
        before={"id": id_} if the_op is Op.DELETE else None,
        after=image if the_op in (Op.INSERT, Op.UPDATE, Op.READ) else None,
        seq=make_seq(seq, seq),
        commit_ts=1_790_000_000_000_000 + ts * 1_000_000,
        raw=json.dumps({"clear": after}) if after else None,
    )


def history() -> list[ChangeEvent]:
    row = {"email": ALICE, "card": CARD, "note": NOTE, "plan": "basic"}
    return [
        change("c", 1, 1, 1, **row),
        change("u", 1, 2, 2, **{**row, "plan": "pro"}),
        change("c", 2, 3, 3, **row),
        change("d", 2, 4, 4),
        change("c", 3, 5, 5, **{**row, "email": "carol@example.com", "card": "5500000000000004"}),
        change("t", 0, 6, 6),
        change("c", 1, 7, 7, **{**row, "plan": "gold"}),
    ]


def cdc(tmp_path: Path, *args: str) -> int:
    return main([*args, "--config", str(tmp_path / "cdc.yaml")])


def stored_texts(tmp_path: Path) -> str:
    texts = []
    for path in (tmp_path / "changelog").rglob("*.parquet"):
        table = pq.read_table(path)
        texts += [json.dumps(table.column(n).to_pylist(), default=str) for n in table.column_names]
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        for (name,) in con.sql("SELECT table_name FROM information_schema.tables").fetchall():
            texts.append(json.dumps(con.sql(f'SELECT * FROM "{name}"').fetchall(), default=str))
    return "\n".join(texts)


def shape(tmp_path: Path) -> list[tuple[object, ...]]:
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        return con.sql(
            "SELECT id, _seq, _op, _valid_from, _valid_to, _is_current, _is_deleted "
            "FROM billing_customers ORDER BY id, _seq"
        ).fetchall()


def test_pii_apply_rewrites_what_was_stored_before_the_policy_and_erase_removes_one_row(
    tmp_path, capsys
):
    (tmp_path / "cdc.yaml").write_text(REGISTRY)
    write_events(str(tmp_path / "changelog"), history())
    assert cdc(tmp_path, "replay", TABLE) == 0
    before = shape(tmp_path)
    assert ALICE in stored_texts(tmp_path)  # stored in clear: no policy yet

    (tmp_path / "cdc.yaml").write_text(
        REGISTRY + "        pii: {email: hash, card: mask, note: drop}\n"
    )
    assert cdc(tmp_path, "pii", "apply", TABLE) == 0
    out = capsys.readouterr().out
    assert "changelog files" in out and "rewritten under pii: email: hash" in out
    stored = stored_texts(tmp_path)
    for clear in (ALICE, CARD, NOTE, "carol@example.com"):
        assert clear not in stored, clear
    assert shape(tmp_path) == before  # every version, its validity and op kept
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        columns = [c[0] for c in con.sql("DESCRIBE billing_customers").fetchall()]
        emails = con.sql("SELECT DISTINCT email FROM billing_customers WHERE id <> 3").fetchall()
        cards = {r[0] for r in con.sql("SELECT card FROM billing_customers").fetchall()}
    assert "note" not in columns
    assert (
        len(emails) == 2
        and {e for (e,) in emails} - {None}
        and all(e is None or e.startswith("h1:") for (e,) in emails)
    )
    assert cards <= {None, "************1111", "************0004"}

    # the changelog now rebuilds the same table; applying again changes nothing
    assert cdc(tmp_path, "rebuild", TABLE, "--shadow") == 0
    assert cdc(tmp_path, "verify", TABLE) == 0
    assert cdc(tmp_path, "pii", "apply", TABLE) == 0
    assert shape(tmp_path) == before
    assert cdc(tmp_path, "verify", TABLE) == 0

    # one person asks to be forgotten: row 1
    assert cdc(tmp_path, "erase", TABLE, "--key", "id=1") == 0
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        rows = con.sql(
            "SELECT id, email, card, plan FROM billing_customers ORDER BY id, _seq"
        ).fetchall()
    # (the truncate's tombstone of row 1 holds no values)
    assert [r for r in rows if r[0] == 1] == [
        (1, None, None, p) for p in ("basic", "pro", None, "gold")
    ]
    assert any(r[0] == 3 and r[1] is not None for r in rows)  # the others are untouched
    assert shape(tmp_path) == before
    # a rebuild or a replay afterwards cannot bring the values back
    assert cdc(tmp_path, "rebuild", TABLE, "--shadow") == 0
    assert cdc(tmp_path, "verify", TABLE) == 0
    assert cdc(tmp_path, "replay", TABLE) == 0
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        again = con.sql(
            "SELECT id, email, card, plan FROM billing_customers ORDER BY id, _seq"
        ).fetchall()
    assert again == rows

    audit = [
        json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    ]
    assert [a["command"] for a in audit] == ["pii apply", "pii apply", "erase"]
    assert audit[2]["key"] == {"id": "1"} and audit[2]["columns"] == ["email", "card"]
    assert ALICE not in (tmp_path / "state" / "audit.jsonl").read_text()


def test_erase_refuses_a_key_that_is_not_the_tables(tmp_path, capsys):
    (tmp_path / "cdc.yaml").write_text(REGISTRY)
    write_events(str(tmp_path / "changelog"), history())
    assert cdc(tmp_path, "replay", TABLE) == 0
    assert cdc(tmp_path, "erase", TABLE, "--key", "plan=pro") == 2
    assert "--key must name exactly the key" in capsys.readouterr().err
    assert cdc(tmp_path, "erase", TABLE, "--key", "id=99") == 2
    assert "no row with that key" in capsys.readouterr().err
    assert cdc(tmp_path, "pii", "apply", TABLE) == 2
    assert "has no pii: columns" in capsys.readouterr().err
