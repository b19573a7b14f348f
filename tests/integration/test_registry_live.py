"""`cdc register` and `cdc preflight` against real throwaway PostgreSQL and MariaDB servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.cli import main
from cdc.config import load_config

pytestmark = pytest.mark.integration

PG_TABLES = """
CREATE TABLE public.payments (
    id bigint PRIMARY KEY, subscription_id bigint NOT NULL, amount numeric(12,2) NOT NULL,
    status varchar(32), paid_at timestamptz, meta jsonb
);
CREATE TABLE public.line_items (invoice_id bigint, line_no int, sku text, PRIMARY KEY (invoice_id, line_no));
CREATE TABLE public.events_nokey (happened_at timestamptz, payload text);
"""


def registry(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "cdc.yaml"
    p.write_text(body)
    return p


def pg_registry(tmp_path: Path, dsn: str, tables: str = "") -> Path:
    return registry(
        tmp_path,
        f"""# billing side
changelog: ./changelog   # kept forever
warehouse: duckdb:///w.duckdb
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: {dsn}   # the throwaway server
    tables:
      - name: public.subscriptions   # registered by hand
        primary_key: [id]
{tables}""",
    )


def test_register_introspects_columns_and_key_and_keeps_comments(
    postgres, pg_database, tmp_path, capsys
):
    postgres.execute(PG_TABLES, database=pg_database.rsplit("/", 1)[1])
    cfg_path = pg_registry(tmp_path, pg_database)
    assert (
        main(["register", "--config", str(cfg_path), "--source", "billing", "public.payments"]) == 0
    )
    assert "registered billing.public.payments" in capsys.readouterr().out
    text = cfg_path.read_text()
    assert (
        "# billing side" in text
        and "# the throwaway server" in text
        and "# registered by hand" in text
    )
    table = load_config(cfg_path).registry.table("billing.public.payments")
    assert table.primary_key == ["id"]
    assert table.spec.columns == {
        "id": "bigint",
        "subscription_id": "bigint",
        "amount": "numeric(12,2)",
        "status": "varchar(32)",
        "paid_at": "timestamptz",
        "meta": "jsonb",
    }
    # order kept: the hand-registered table first
    assert [t.spec.name for t in load_config(cfg_path).registry.tables()] == [
        "public.subscriptions",
        "public.payments",
    ]

    assert (
        main(["register", "--config", str(cfg_path), "--source", "billing", "public.line_items"])
        == 0
    )
    assert load_config(cfg_path).registry.table("billing.public.line_items").primary_key == [
        "invoice_id",
        "line_no",
    ]


def test_register_refuses_a_keyless_table_unless_key_is_given(
    postgres, pg_database, tmp_path, capsys
):
    postgres.execute(PG_TABLES, database=pg_database.rsplit("/", 1)[1])
    cfg_path = pg_registry(tmp_path, pg_database)
    before = cfg_path.read_text()
    assert (
        main(["register", "--config", str(cfg_path), "--source", "billing", "public.events_nokey"])
        == 2
    )
    err = capsys.readouterr().err
    assert "has no primary key" in err and "--key" in err
    assert cfg_path.read_text() == before
    assert (
        main(
            [
                "register",
                "--config",
                str(cfg_path),
                "--source",
                "billing",
                "public.events_nokey",
                "--key",
                "nope",
            ]
        )
        == 2
    )
    assert "not columns of public.events_nokey" in capsys.readouterr().err
    assert (
        main(
            [
                "register",
                "--config",
                str(cfg_path),
                "--source",
                "billing",
                "public.events_nokey",
                "--key",
                "happened_at",
            ]
        )
        == 0
    )
    assert load_config(cfg_path).registry.table("billing.public.events_nokey").primary_key == [
        "happened_at"
    ]


def test_register_unknown_table_and_source_say_what_exists(postgres, pg_database, tmp_path, capsys):
    postgres.execute(PG_TABLES, database=pg_database.rsplit("/", 1)[1])
    cfg_path = pg_registry(tmp_path, pg_database)
    assert (
        main(["register", "--config", str(cfg_path), "--source", "billing", "public.payment"]) == 1
    )
    assert "did you mean 'public.payments'?" in capsys.readouterr().err
    assert (
        main(["register", "--config", str(cfg_path), "--source", "biling", "public.payments"]) == 2
    )
    assert "did you mean 'billing'?" in capsys.readouterr().err


def test_register_refuses_columns_a_warehouse_cannot_hold_apart(
    postgres, pg_database, tmp_path, capsys
):
    postgres.execute(
        'CREATE TABLE public.people (id bigint PRIMARY KEY, name text, "NAME" text, _seq text)',
        database=pg_database.rsplit("/", 1)[1],
    )
    cfg_path = pg_registry(tmp_path, pg_database)
    before = cfg_path.read_text()
    code = main(["register", "--config", str(cfg_path), "--source", "billing", "public.people"])
    err = capsys.readouterr().err
    assert code == 2
    assert "columns 'NAME' and 'name' differ only in case" in err
    assert "keep it under another name: --rename NAME=name_2" in err
    assert "column '_seq' clashes" in err and "--rename _seq=seq" in err and "RENAME COLUMN" in err
    assert cfg_path.read_text() == before  # nothing written
    assert main(["validate", "--config", str(cfg_path)]) == 0

    args = ["register", "--config", str(cfg_path), "--source", "billing", "public.people"]
    assert main([*args, "--rename", "NAME=_valid_to", "_seq=seq"]) == 2
    assert (
        "'NAME' is renamed '_valid_to', but column '_valid_to' clashes" in capsys.readouterr().err
    )
    assert main([*args, "--rename", "NAME=name_2", "_seq=seq"]) == 0
    assert "NAME kept as name_2; _seq kept as seq" in capsys.readouterr().out
    table = load_config(cfg_path).registry.table("billing.public.people")
    assert table.spec.rename == {"NAME": "name_2", "_seq": "seq"}


def test_register_mysql_table(mariadb, mysql_database, tmp_path):
    mariadb.execute(
        "CREATE TABLE payments (id BIGINT PRIMARY KEY, amount DECIMAL(12,2) NOT NULL, card_last4 CHAR(4), "
        "created_at DATETIME(6))",
        database=mysql_database,
    )
    cfg_path = registry(
        tmp_path,
        f"""sources:
  payments:
    kind: mysql
    engine: binlog
    dsn: {mariadb.dsn(mysql_database)}
    tables: []
""",
    )
    assert (
        main(
            [
                "register",
                "--config",
                str(cfg_path),
                "--source",
                "payments",
                f"{mysql_database}.payments",
            ]
        )
        == 0
    )
    t = load_config(cfg_path).registry.table(f"payments.{mysql_database}.payments")
    assert t.primary_key == ["id"]
    assert t.spec.columns == {
        "id": "bigint",
        "amount": "decimal(12,2)",
        "card_last4": "char(4)",
        "created_at": "datetime(6)",
    }


# --------------------------------------------------------------------------- preflight


def test_postgres_preflight_fails_with_fixes_then_passes(postgres_factory, tmp_path, capsys):
    server = postgres_factory(wal_level="replica")
    server.execute(
        "CREATE ROLE app LOGIN; CREATE TABLE public.subscriptions (id bigint PRIMARY KEY, plan text);"
        "CREATE TABLE public.audit (at timestamptz, what text); "
        "ALTER TABLE public.audit REPLICA IDENTITY NOTHING; GRANT SELECT ON public.subscriptions TO app;"
    )
    cfg_path = registry(
        tmp_path,
        f"""sources:
  billing:
    kind: postgres
    engine: debezium
    dsn: {server.dsn("postgres", user="app")}
    tables:
      - {{name: public.subscriptions, primary_key: [id]}}
      - {{name: public.audit, primary_key: [at]}}
      - {{name: public.missing, primary_key: [id]}}
""",
    )
    assert main(["preflight", "--config", str(cfg_path)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] billing: wal_level: wal_level = replica" in out
    assert "fix: ALTER SYSTEM SET wal_level = logical" in out
    assert "[FAIL] billing: replication privilege: role app has no REPLICATION" in out
    assert "fix: ALTER ROLE app WITH REPLICATION;" in out
    assert "[FAIL] billing: table public.audit: role app cannot SELECT" in out
    assert "[FAIL] billing: table public.missing: public.missing does not exist" in out
    assert "[ok  ] billing: table public.subscriptions: REPLICA IDENTITY DEFAULT" in out

    # apply the fixes the command printed, then it passes
    server.execute(
        "ALTER ROLE app WITH REPLICATION; GRANT SELECT ON public.audit TO app; "
        "ALTER TABLE public.audit REPLICA IDENTITY FULL; CREATE TABLE public.missing (id bigint PRIMARY KEY); "
        "GRANT SELECT ON public.missing TO app"
    )
    server.restart(wal_level="logical")
    assert main(["preflight", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert "[ok  ] billing: table public.audit: REPLICA IDENTITY FULL" in out
    assert "cdc_billing will be created" in out


def test_postgres_preflight_reports_an_unreachable_source(tmp_path, capsys):
    from tests.servers import free_port

    cfg_path = registry(
        tmp_path,
        f"""sources:
  billing: {{kind: postgres, engine: pgoutput, dsn: "postgresql://postgres@127.0.0.1:{free_port()}/x"}}
""",
    )
    assert main(["preflight", "--config", str(cfg_path)]) == 1
    assert "[FAIL] billing: connect: cannot connect" in capsys.readouterr().out


def test_mysql_preflight_fails_with_fixes_then_passes(mariadb_factory, tmp_path, capsys):
    server = mariadb_factory(
        log_bin=False,
        settings={
            "binlog-format": "STATEMENT",
            "binlog-row-image": "MINIMAL",
            "binlog-row-metadata": "NO_LOG",
        },
    )
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE shop.payments (id BIGINT PRIMARY KEY, amount DECIMAL(12,2))")
    server.execute("CREATE TABLE shop.logs (at DATETIME, msg TEXT)")
    server.execute("CREATE USER 'cdc'@'%' IDENTIFIED BY 'pw'")
    server.execute("GRANT SELECT ON shop.* TO 'cdc'@'%'")
    cfg_path = registry(
        tmp_path,
        f"""sources:
  payments:
    kind: mysql
    engine: binlog
    dsn: {server.dsn("shop", user="cdc", password="pw")}
    tables:
      - {{name: shop.payments}}
      - {{name: shop.logs}}
""",
    )
    assert main(["preflight", "--config", str(cfg_path)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] payments: log_bin: binary log is off" in out
    assert "[FAIL] payments: binlog_format: binlog_format = STATEMENT; expected ROW" in out
    assert "fix: SET GLOBAL binlog_format = 'ROW'" in out
    assert "[FAIL] payments: binlog_row_image: binlog_row_image = MINIMAL" in out
    assert "[FAIL] payments: binlog_row_metadata: binlog_row_metadata = NO_LOG" in out
    assert "[FAIL] payments: privileges: cdc lacks REPLICATION SLAVE" in out
    assert "[FAIL] payments: table shop.logs: no primary key" in out
    assert "[ok  ] payments: table shop.payments: exists" in out

    server.execute("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc'@'%'")
    server.execute("ALTER TABLE shop.logs ADD COLUMN id BIGINT AUTO_INCREMENT PRIMARY KEY")
    server.restart(
        log_bin=True, binlog_format="ROW", binlog_row_image="FULL", binlog_row_metadata="FULL"
    )
    assert main(["preflight", "--config", str(cfg_path)]) == 0
    assert "FAIL" not in capsys.readouterr().out
