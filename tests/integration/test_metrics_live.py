"""`cdc run --metrics-port`: the /metrics page of a run capturing a real PostgreSQL, parsed with
prometheus_client's own parser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_page_of_a_running_capture(postgres, source_dsn, tmp_path: Path) -> None:
    db = source_dsn.rsplit("/", 1)[1]
    postgres.execute(
        "CREATE TABLE public.items (id bigint PRIMARY KEY, name text);"
        "INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 25) g;",
        database=db,
    )
    (tmp_path / "cdc.yaml").write_text(
        textwrap.dedent(f"""\
            changelog: ./changelog
            warehouse: duckdb:///warehouse.duckdb
            state_dir: ./state
            sources:
              shop:
                kind: postgres
                engine: pgoutput
                dsn: {source_dsn}
                tables:
                  - name: public.items
                    primary_key: [id]
            """)
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdc",
            "run",
            "--config",
            str(tmp_path / "cdc.yaml"),
            "--duration",
            "90",
            "--metrics-port",
            str(port),
        ],
        cwd=tmp_path,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        table = (("table", "shop.public.items"),)
        capture = (("engine", "pgoutput"), ("source", "shop"))
        deadline = time.monotonic() + 60
        metrics: dict = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                metrics = scrape(port)
            except OSError:
                time.sleep(0.3)
                continue
            if metrics.get(("cdc_table_events_merged_total", table), 0) >= 25:
                break
            time.sleep(0.3)
        assert metrics.get(("cdc_up", ())) == 1
        assert metrics[("cdc_table_events_merged_total", table)] == 25
        assert metrics[("cdc_capture_events_total", capture)] >= 25
        assert metrics[("cdc_table_lag_seconds", table)] >= 0
        assert metrics[("cdc_commit_to_visible_seconds_count", ())] >= 25
        assert metrics[
            ("cdc_capture_phase", tuple(sorted((*capture, ("phase", "streaming")))))
        ] in (0, 1)
        assert metrics[("cdc_dead_letters", ())] == 0
        postgres.execute("UPDATE public.items SET name = 'renamed' WHERE id <= 5", database=db)
        deadline = time.monotonic() + 30
        while metrics.get(("cdc_table_events_merged_total", table), 0) < 30:
            assert time.monotonic() < deadline, metrics
            time.sleep(0.3)
            metrics = scrape(port)
        assert (
            metrics[("cdc_capture_phase", tuple(sorted((*capture, ("phase", "streaming")))))] == 1
        )
        assert 0 <= metrics[("cdc_capture_source_contact_age_seconds", capture)] < 10
        # the slot's retained WAL, read from the source on a thread of its own
        deadline = time.monotonic() + 30
        while ("cdc_capture_retained_log_bytes", capture) not in metrics:
            assert time.monotonic() < deadline, metrics
            time.sleep(0.5)
            metrics = scrape(port)
        assert metrics[("cdc_capture_retained_log_bytes", capture)] >= 0
        # heartbeat-attested freshness: idle now, yet caught up a moment ago
        deadline = time.monotonic() + 30
        while metrics.get(("cdc_table_freshness_seconds", table)) is None:
            assert time.monotonic() < deadline, metrics
            time.sleep(0.5)
            metrics = scrape(port)
        # idle for 12 s: a freshness not attested by heartbeats would be past 12 s (a heartbeat
        # is asked for after 2 s of quiet; the margin is for a loaded machine)
        time.sleep(12)
        metrics = scrape(port)
        assert 0 <= metrics[("cdc_table_freshness_seconds", table)] < 12
        assert metrics[("cdc_table_commit_to_visible_seconds", table)] >= 0
        # the last `cdc check`'s results, beside the run
        checked = subprocess.run(
            [sys.executable, "-m", "cdc", "check", "--config", str(tmp_path / "cdc.yaml")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        metrics = scrape(port)
        one_current = (("check", "one_current"), ("level", "error"), ("table", "shop.public.items"))
        assert metrics[("cdc_check_failed", one_current)] == 0
        assert time.time() - metrics[("cdc_check_last_run_timestamp_seconds", ())] < 60
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert f"metrics on http://127.0.0.1:{port}/metrics" in out
