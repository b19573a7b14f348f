"""``cdc run --metrics-port``: the runtime's figures as Prometheus metrics on ``/metrics``.

Everything is read from the running ``Runtime`` when Prometheus scrapes (a custom collector over
``Runtime.status()``, the same figures as ``status.json``), except the commit-to-visible latency,
a cumulative histogram the runtime fills as it merges. Names (all prefixed ``cdc_``):

- ``cdc_up`` 1 while the run is serving;
- ``cdc_events_merged_total``, ``cdc_events_archived_total``, ``cdc_dead_letters``;
- per table (``table``): ``cdc_table_events_merged_total``, ``cdc_table_versions_written_total``,
  ``cdc_table_dead_letters_total``, ``cdc_table_lag_seconds`` (now minus the newest merged commit);
- per source (``source``, ``engine``): ``cdc_capture_events_total``, ``cdc_capture_set_aside_total``,
  ``cdc_capture_retries_total``, ``cdc_capture_lag_seconds``, ``cdc_capture_phase`` (1 for the
  current ``phase`` label);
- ``cdc_capture_source_contact_age_seconds``: since the source last answered (pgoutput, binlog,
  Debezium heartbeats);
- ``cdc_table_freshness_seconds`` (``table``): since the table last held everything its source had
  written (heartbeat-attested: small while the source is idle, grows when we fall behind or stall);
  ``cdc_table_commit_to_visible_seconds``: source commit -> visible for the newest merged change;
- ``cdc_capture_retained_log_bytes`` (``source``, ``engine``): source log held for the capture
  (PostgreSQL: the slot's retained WAL; MySQL/MariaDB: binlog bytes after our position), read
  from the source every 30 s by a thread of its own (a stuck source freezes only this figure);
- ``cdc_check_failed`` (``table``, ``check``, ``level``): 1 when that check failed in the last
  ``cdc check``, else 0; ``cdc_check_last_run_timestamp_seconds``;
- ``cdc_commit_to_visible_seconds``: histogram of source commit -> merged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

log = logging.getLogger("cdc.metrics")

#: Upper bounds (seconds) of the commit-to-visible histogram's buckets.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
PHASES = ("starting", "snapshot", "streaming", "retrying", "stopped", "failed")


class LatencyHistogram:
    """Cumulative bucket counts, sum and count of observed seconds (thread-safe)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.bounds):
                if seconds <= bound:
                    self.counts[i] += 1
                    break
            else:
                self.counts[-1] += 1
            self.sum += seconds

    def buckets(self) -> tuple[list[tuple[str, float]], float]:
        with self._lock:
            running, out = 0, []
            for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
                running += n
                out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
            return out, self.sum


class SourceLogPoller:
    """Every ``interval_s``, how much log each source holds for its capture, read on a daemon
    thread of its own (a source that hangs freezes only this figure, never a scrape)."""

    def __init__(self, registry: Any, state_dir: Path, interval_s: float = 30.0):
        self.registry = registry
        self.state_dir = state_dir
        self.interval_s = interval_s
        self.values: dict[str, tuple[str, int]] = {}  # source -> (engine, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="source-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            # soon again while a capture has not made its slot yet (a first start)
            known = len(self.values) >= sum(
                1
                for s in self.registry.sources.values()
                if s.engine in ("pgoutput", "debezium", "binlog")
            )
            self._stop.wait(self.interval_s if known else min(2.0, self.interval_s))

    def poll(self) -> None:
        from connectors.capture.offsets import OffsetStore

        for name, source in self.registry.sources.items():
            try:
                if source.kind == "postgres" and source.engine != "datastream":
                    from connectors.capture.slots import slot_status

                    slot = slot_status(name, source)
                    if slot.exists and slot.retained_bytes is not None:
                        self.values[name] = (source.engine, int(slot.retained_bytes))
                elif source.engine == "binlog":
                    from connectors.capture.binlogs import binlog_status

                    stored = OffsetStore(self.state_dir, name, source.engine).load()
                    lag = binlog_status(name, source, stored).lag_bytes
                    if lag is not None:
                        self.values[name] = (source.engine, int(lag))
            except Exception as exc:  # the source may be down: the capture says so; keep the last
                log.debug("cannot read the log position of source %r: %s", name, exc)


class RuntimeCollector:
    """Reads the runtime's status at each scrape."""

    def __init__(self, runtime: Any, source_log: SourceLogPoller | None = None):
        self.runtime = runtime
        self.source_log = source_log

    def collect(self) -> Iterator[Metric]:
        status = self.runtime.status()
        yield GaugeMetricFamily("cdc_up", "1 while cdc run serves", value=1)
        yield CounterMetricFamily(
            "cdc_events_merged", "events merged into state tables", value=status["events_merged"]
        )
        yield CounterMetricFamily(
            "cdc_events_archived",
            "events rolled into changelog files",
            value=status["events_archived"],
        )
        yield GaugeMetricFamily(
            "cdc_dead_letters", "dead letters waiting in the store", value=status["dead_letters"]
        )
        tables = status["tables"]
        for name, help_text, field in (
            ("cdc_table_events_merged", "events merged into the table", "events"),
            ("cdc_table_versions_written", "versions the merges wrote", "versions_written"),
            ("cdc_table_dead_letters", "events of the table dead-lettered", "dead_letters"),
        ):
            counter = CounterMetricFamily(name, help_text, labels=["table"])
            for table_id, t in tables.items():
                counter.add_metric([table_id], t[field])
            yield counter
        lag = GaugeMetricFamily(
            "cdc_table_lag_seconds",
            "now minus the commit time of the newest change merged into the table",
            labels=["table"],
        )
        for table_id, t in tables.items():
            if t["lag_s"] is not None:
                lag.add_metric([table_id], t["lag_s"])
        yield lag
        captures = status["captures"]
        labels = ["source", "engine"]
        for name, help_text, field in (
            ("cdc_capture_events", "changes captured and acknowledged", "events"),
            ("cdc_capture_set_aside", "changes set aside as unreadable", "set_aside"),
            ("cdc_capture_retries", "reconnections to an unreachable source", "retries"),
        ):
            counter = CounterMetricFamily(name, help_text, labels=labels)
            for source, c in captures.items():
                counter.add_metric([source, c["engine"]], c[field])
            yield counter
        capture_lag = GaugeMetricFamily(
            "cdc_capture_lag_seconds",
            "now minus the commit time of the newest change captured",
            labels=labels,
        )
        phase = GaugeMetricFamily(
            "cdc_capture_phase", "1 for the capture's current phase", labels=[*labels, "phase"]
        )
        contact = GaugeMetricFamily(
            "cdc_capture_source_contact_age_seconds",
            "seconds since the source last answered the capture (a change, a keepalive or a "
            "heartbeat): grows only when the source or the path to it is stuck, not when idle",
            labels=labels,
        )
        now = time.time()
        for source, c in captures.items():
            if c.get("source_contact_at") is not None:
                contact.add_metric([source, c["engine"]], max(0.0, now - c["source_contact_at"]))
        yield contact
        for source, c in captures.items():
            if c["lag_s"] is not None:
                capture_lag.add_metric([source, c["engine"]], c["lag_s"])
            for p in PHASES:
                phase.add_metric([source, c["engine"], p], 1.0 if c["phase"] == p else 0.0)
        yield capture_lag
        yield phase
        fresh = GaugeMetricFamily(
            "cdc_table_freshness_seconds",
            "seconds since the table last held everything its source had written (attested by "
            "the source's keepalives or heartbeats): small while the source is idle",
            labels=["table"],
        )
        visible = GaugeMetricFamily(
            "cdc_table_commit_to_visible_seconds",
            "seconds from the newest merged change's source commit to the end of its MERGE",
            labels=["table"],
        )
        for table_id, t in tables.items():
            if t.get("caught_up_at") is not None:
                fresh.add_metric([table_id], max(0.0, now - t["caught_up_at"]))
            if t.get("commit_to_visible_s") is not None:
                visible.add_metric([table_id], t["commit_to_visible_s"])
        yield fresh
        yield visible
        retained = GaugeMetricFamily(
            "cdc_capture_retained_log_bytes",
            "source log held for the capture: the slot's retained WAL (PostgreSQL), binlog bytes "
            "after our position (MySQL/MariaDB); read every 30 s",
            labels=labels,
        )
        for source, (engine, size) in sorted(
            (self.source_log.values if self.source_log else {}).items()
        ):
            retained.add_metric([source, engine], float(size))
        yield retained
        yield from _last_check(getattr(self.runtime, "state_dir", None))
        buckets, total = self.runtime.latency_histogram.buckets()
        yield HistogramMetricFamily(
            "cdc_commit_to_visible_seconds",
            "seconds from a change's source commit to the end of the MERGE that made it visible",
            buckets=buckets,
            sum_value=total,
        )


def _last_check(state_dir: Path | None) -> Iterator[Metric]:
    """The last ``cdc check``'s results, from the file it leaves in the state folder."""
    from state_models.checks import LAST_CHECK_FILE

    failed = GaugeMetricFamily(
        "cdc_check_failed",
        "1 when the check failed in the last `cdc check`, 0 when it passed",
        labels=["table", "check", "level"],
    )
    last = GaugeMetricFamily(
        "cdc_check_last_run_timestamp_seconds", "when `cdc check` last ran (unix time)"
    )
    try:
        doc = json.loads((Path(state_dir or ".") / LAST_CHECK_FILE).read_text())
        for r in doc["results"]:
            if r["status"] in ("pass", "fail"):
                failed.add_metric(
                    [r["table"], r["check"], r["level"]], 1.0 if r["status"] == "fail" else 0.0
                )
        last.add_metric([], float(doc["at"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # never checked here (or a file being replaced): no samples
    yield failed
    yield last


def serve(runtime: Any, host: str, port: int) -> tuple[WSGIServer, int]:
    """Serve ``/metrics`` for ``runtime`` on ``host:port`` (0: a free port); returns the server
    (``shutdown()`` stops it, and the source log poller with it) and the port it listens on."""
    registry = CollectorRegistry(auto_describe=False)
    poller = SourceLogPoller(runtime.registry, runtime.state_dir)
    poller.start()
    registry.register(RuntimeCollector(runtime, poller))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    stop = server.shutdown

    def shutdown() -> None:
        poller.stop()
        stop()

    server.shutdown = shutdown  # type: ignore[method-assign]
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return server, bound
