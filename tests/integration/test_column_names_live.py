"""A live PostgreSQL table with two columns a warehouse holds as one (``name`` and ``"NAME"``):
`cdc preflight` names the `rename:` that fixes it; until it is added `cdc run` dead-letters that
table's changes and goes on with the others (no crash loop); with it, the state table holds both
columns and the dead letters apply on retry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.integration


def _cdc(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "cdc", *args, "--config", str(tmp_path / "cdc.yaml")],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    return result.returncode, result.stdout + result.stderr


def _rows(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(sql).fetchall()


def test_case_twins_in_a_live_table_are_renamed_not_a_crash_loop(postgres, source_dsn, tmp_path):
    pg_database = source_dsn
    db = pg_database.rsplit("/", 1)[1]
    postgres.execute(
        'CREATE TABLE public.people (id bigint PRIMARY KEY, name text, "NAME" text);'
        "CREATE TABLE public.accounts (id bigint PRIMARY KEY, note text);"
        "INSERT INTO public.people VALUES (1, 'ann', 'ANN');"
        "INSERT INTO public.accounts VALUES (1, 'first');",
        database=db,
    )
    registry = textwrap.dedent(f"""\
        changelog: ./changelog
        warehouse: duckdb:///warehouse.duckdb
        state_dir: ./state
        sources:
          billing:
            kind: postgres
            engine: pgoutput
            dsn: {pg_database}
            tables:
              - name: public.people
                primary_key: [id]
              - name: public.accounts
                primary_key: [id]
        """)
    (tmp_path / "cdc.yaml").write_text(registry)

    code, out = _cdc(tmp_path, "preflight")
    assert code == 1, out
    assert "columns of public.people: columns 'NAME' and 'name' differ only in case" in out
    assert 'fix: under public.people in the registry: rename: {"NAME": name_2}' in out

    code, out = _cdc(tmp_path, "run", "--duration", "10")
    assert code == 0, out
    assert "Traceback" not in out
    assert _rows(tmp_path, "SELECT id, note FROM billing_accounts_current") == [(1, "first")]
    code, out = _cdc(tmp_path, "dead-letters", "ls")
    assert code == 0 and "billing.public.people" in out and "differ only in case" in out, out

    # the fix preflight named
    (tmp_path / "cdc.yaml").write_text(
        registry.replace(
            "      - name: public.people\n        primary_key: [id]\n",
            '      - name: public.people\n        primary_key: [id]\n        rename: {"NAME": name_2}\n',
        )
    )
    code, out = _cdc(tmp_path, "preflight")
    assert code == 0, out
    code, out = _cdc(tmp_path, "dead-letters", "retry")
    assert code == 0, out
    assert _rows(tmp_path, "SELECT id, name, name_2 FROM billing_people_current") == [
        (1, "ann", "ANN")
    ]

    postgres.execute(
        "INSERT INTO public.people VALUES (2, 'bob', 'BOB');"
        "UPDATE public.people SET \"NAME\" = 'ANNE' WHERE id = 1;",
        database=db,
    )
    code, out = _cdc(tmp_path, "run", "--duration", "10")
    assert code == 0, out
    assert _rows(
        tmp_path, "SELECT id, name, name_2, _op FROM billing_people ORDER BY id, _seq"
    ) == [(1, "ann", "ANN", "r"), (1, "ann", "ANNE", "u"), (2, "bob", "BOB", "c")]
    code, out = _cdc(tmp_path, "history", "billing.public.people", "--key", "id=1")
    assert code == 0 and "ANNE" in out, out


def test_preflight_warns_that_debezium_precise_mode_makes_numeric_nan_null(
    postgres, source_dsn, tmp_path
):
    pg_database = source_dsn
    postgres.execute(
        "CREATE TABLE public.prices (id bigint PRIMARY KEY, amount numeric(12,2), note text)",
        database=pg_database.rsplit("/", 1)[1],
    )
    registry = textwrap.dedent(f"""\
        sources:
          billing:
            kind: postgres
            engine: debezium
            dsn: {pg_database}
            tables:
              - name: public.prices
                primary_key: [id]
        """)
    (tmp_path / "cdc.yaml").write_text(registry)
    code, out = _cdc(tmp_path, "preflight")
    assert "[WARN] billing: numeric columns of public.prices: Debezium's precise" in out, out
    assert "would be stored as null" in out and "decimal.handling.mode: string" in out
    (tmp_path / "cdc.yaml").write_text(registry + "    debezium: {decimal.handling.mode: string}\n")
    code, out = _cdc(tmp_path, "preflight")
    assert code == 0 and "numeric columns" not in out, out
