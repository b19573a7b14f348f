"""A source that refuses us (wrong password, missing grant) stops `cdc run` at once: exit 1, one
clear line, no password in any output, nothing advanced. Only a network failure is retried.

Real throwaway servers with password authentication: PostgreSQL with a scram-sha-256 line in
pg_hba.conf for the test role, MariaDB with a user identified by a password.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

RIGHT = "R1ght-pw"
WRONG = "Wr0ng-S3cret-pw"


def _password_postgres(postgres_factory: Any) -> Any:
    server = postgres_factory()
    server.execute(f"CREATE ROLE app LOGIN REPLICATION PASSWORD '{RIGHT}'")
    server.execute("CREATE DATABASE shop OWNER app")
    server.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name text)", database="shop")
    server.execute("ALTER TABLE public.items OWNER TO app", database="shop")
    hba = server.data / "pg_hba.conf"
    lines = (
        "host all app 127.0.0.1/32 scram-sha-256\nhost replication app 127.0.0.1/32 scram-sha-256\n"
    )
    hba.write_text(lines + hba.read_text())
    server.execute("SELECT pg_reload_conf()")
    return server


def _password_mariadb(mariadb_factory: Any) -> Any:
    server = mariadb_factory()
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE shop.items (id BIGINT PRIMARY KEY, name TEXT)")
    server.execute(f"CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY '{RIGHT}'")
    server.execute("GRANT ALL ON *.* TO 'app'@'127.0.0.1'")
    return server


def _registry(tmp_path: Path, kind: str, engine: str, dsn: str) -> Path:
    table = "public.items" if kind == "postgres" else "shop.items"
    path = tmp_path / "cdc.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            changelog: ./changelog
            warehouse: duckdb:///warehouse.duckdb
            state_dir: ./state
            sources:
              shop:
                kind: {kind}
                engine: {engine}
                dsn: ${{SHOP_DSN}}
                tables:
                  - name: {table}
                    primary_key: [id]
                    columns: {{id: bigint, name: text}}
            """)
    )
    return path


def _cdc_run(tmp_path: Path, config: Path, dsn: str) -> tuple[int, str, float]:
    """`cdc run` that would go on for a minute unless it stops by itself."""
    return _cdc_run_for(tmp_path, config, dsn, seconds=60)


@pytest.mark.parametrize("engine", ["pgoutput", "debezium"])
def test_a_wrong_postgres_password_stops_cdc_run_at_once(tmp_path, postgres_factory, engine):
    server = _password_postgres(postgres_factory)
    dsn = f"postgresql://app:{WRONG}@127.0.0.1:{server.port}/shop"
    config = _registry(tmp_path, "postgres", engine, dsn)

    code, output, seconds = _cdc_run(tmp_path, config, dsn)

    assert code == 1, output
    assert seconds < 45  # not retried until --duration ran out
    assert "refused the connection" in output and "password authentication failed" in output
    assert WRONG not in output and "app:***@" in output
    assert "retrying" not in output
    # nothing advanced: no slot, no stored position
    assert server.execute("SELECT slot_name FROM pg_replication_slots") == []
    assert not list((tmp_path / "state").glob("offsets/*"))

    # the same registry with the right password captures
    good = dsn.replace(WRONG, RIGHT)
    server.execute("INSERT INTO public.items VALUES (1, 'a')", database="shop")
    code, output, _ = _cdc_run_for(tmp_path, config, good, seconds=8)
    assert code == 0, output
    assert "password authentication failed" not in output


def test_a_wrong_mariadb_password_stops_cdc_run_at_once(tmp_path, mariadb_factory):
    server = _password_mariadb(mariadb_factory)
    dsn = f"mysql://app:{WRONG}@127.0.0.1:{server.port}/shop"
    config = _registry(tmp_path, "mysql", "binlog", dsn)

    code, output, seconds = _cdc_run(tmp_path, config, dsn)

    assert code == 1, output
    assert seconds < 45
    assert "Access denied for user 'app'" in output and "retrying" not in output
    assert WRONG not in output
    assert not list((tmp_path / "state").glob("offsets/*"))


def test_an_unreachable_source_is_retried_not_refused(tmp_path, postgres_factory):
    server = _password_postgres(postgres_factory)
    port = server.port
    server.stop()
    dsn = f"postgresql://app:{RIGHT}@127.0.0.1:{port}/shop"
    config = _registry(tmp_path, "postgres", "pgoutput", dsn)

    code, output, _ = _cdc_run_for(tmp_path, config, dsn, seconds=6)

    assert code == 0, output  # stopped by --duration, still waiting for the source
    assert "is unreachable" in output and "retrying in" in output
    assert "refused the connection" not in output and RIGHT not in output


def _cdc_run_for(tmp_path: Path, config: Path, dsn: str, seconds: int) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cdc", "run", "--config", str(config), "--duration", str(seconds)],
        cwd=tmp_path,
        env={**os.environ, "SHOP_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=180,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started
