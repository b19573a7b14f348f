"""``cdc run``, ``cdc status`` and ``cdc dead-letters``: the embedded runtime and its upkeep."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import faulthandler
import io
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import LOCK_WAIT_S, load, subcommands
from cdc.config import LoadedConfig
from cdc.console import LiveLine, print_table
from connectors.capture.jvm import java_threads
from state_models.errors import ConfigError, TransientError


def add_commands(add: AddCommand) -> None:
    p = add(
        "run", "capture every source into the changelog and merge into the state tables", cmd_run
    )
    p.add_argument(
        "--batch-size", type=int, default=10_000, help="events per MERGE, at most (10000)"
    )
    p.add_argument(
        "--max-latency",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="how long a captured change may wait before it is merged (0.2)",
    )
    p.add_argument(
        "--archive-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how often captured changes are rolled into changelog files (60)",
    )
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop after this long (default: run until stopped)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (0: a free port, logged)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address /metrics listens on (default 127.0.0.1: this machine only)",
    )

    p = add(
        "status",
        "per table: applied position, freshness lag, versions, live rows; captures and slots",
        cmd_status,
    )
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = add("dead-letters", "events that could not be applied: list, show, retry", _dl_usage)
    sub = subcommands(p, "dl_command")
    s = sub("ls", "list dead letters (id, time, table, reason)", cmd_dl_ls)
    s.add_argument("--table", help="only this table id")
    s.add_argument("--format", choices=["table", "json"], default="table")
    s = sub("show", "one dead letter with its raw message", cmd_dl_show)
    s.add_argument("id")
    s = sub(
        "retry", "re-drive dead letters through the merge (after fixing the cause)", cmd_dl_retry
    )
    s.add_argument("ids", nargs="*", metavar="ID", help="dead letters to retry (default: all)")
    s.add_argument("--table", help="only this table id")


# --------------------------------------------------------------------------- logging


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("status",):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(fmt: str, *, debug: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # --debug: our own loggers only (the JVM bridge and client libraries stay at INFO: at DEBUG
    # they flood the log and slow a Debezium run's shutdown past its SIGTERM budget)
    logging.getLogger("cdc").setLevel(logging.DEBUG if debug else logging.NOTSET)
    for noisy in ("py4j", "jpype", "urllib3", "google", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM set ``stop``: flush, make durable, advance offsets, exit.
    SIGUSR1 prints the stack of every Python and Java thread to stderr and changes nothing."""
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        logging.getLogger("cdc.run").info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    def dump(_signum: int, _frame: Any) -> None:  # after faulthandler's dump of Python's
        text = java_threads()
        if text:
            print(f"Java threads:\n{text}", file=sys.stderr, flush=True)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        # SIGUSR1: every thread's stack on stderr (a stuck run shows where), and the run goes on
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, dump)
        with contextlib.suppress(io.UnsupportedOperation, AttributeError, ValueError):
            # (stderr may be no file: a test's capture, an embedding; then Java's stacks only)
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=True)
    try:
        yield
    finally:
        if previous:
            faulthandler.unregister(signal.SIGUSR1)
        for sig, h in previous.items():
            signal.signal(sig, h)


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_format, debug=getattr(args, "debug", False))
    stop = threading.Event()
    # from the start: a SIGTERM while the run starts (or recovers its journal) stops it cleanly
    # once it has started, instead of killing it with 143 (which loses nothing, but says nothing)
    with stop_on_signals(stop):
        return _serve(args, stop)


def _serve(args: argparse.Namespace, stop: threading.Event) -> int:
    from cdc.runtime import Runtime, RuntimeOptions
    from connectors.sources import fill_primary_keys

    cfg = load(args, writes=True)
    if not cfg.registry.tables():
        raise ConfigError(
            f"{cfg.path} registers no tables: nothing to capture (see `cdc register`)"
        )
    if args.batch_size < 1 or args.max_latency < 0 or args.archive_interval <= 0:
        raise ConfigError(
            "--batch-size must be >= 1, --max-latency >= 0 and --archive-interval > 0"
        )
    registry = fill_primary_keys(cfg.registry)
    options = RuntimeOptions(
        batch_size=args.batch_size,
        max_latency_s=args.max_latency,
        archive_interval_s=args.archive_interval,
    )
    log = logging.getLogger("cdc.run")
    # redrawn in place on a terminal; a log line (with the whole status) every 10 s elsewhere
    live = LiveLine(
        lambda line, rt: log.info(line, extra={"status": rt.status()}),
        interactive=sys.stderr.isatty() and args.log_format == "text",
    )
    runtime = Runtime(
        cfg, options, registry=registry, on_status=lambda rt: live.update(rt.status_line(), rt)
    )
    metrics = None
    if args.metrics_port is not None:
        from cdc.metrics import serve

        if not 0 <= args.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port {args.metrics_port}: expected 0 to 65535")
        try:
            metrics, _ = serve(runtime, args.metrics_host, args.metrics_port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc.strerror}"
            ) from None
    if args.duration:
        # a daemon: a run that ends early (a capture failed) does not wait for the timer to fire
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()
    log.info(
        "capturing %s into %s; state tables in %s",
        ", ".join(f"{n} ({s.engine})" for n, s in registry.sources.items()),
        cfg.changelog_root,
        cfg.warehouse_url,
    )
    try:
        summary = runtime.run(stop)
    finally:
        live.close()
        if metrics is not None:
            metrics.shutdown()
    log.info(
        "stopped: %d events merged, %d archived, %d dead letters",
        summary.events_merged,
        summary.events_archived,
        summary.dead_letters,
    )
    if summary.error:
        print(f"cdc run: {summary.error}", file=sys.stderr)
    return summary.exit_code


# --------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load(args)
    doc = collect_status(cfg)
    if args.format == "json":
        print(json.dumps(doc, indent=2, default=str))
        return EXIT_OK
    runtime = doc["runtime"]
    if runtime:
        age = time.time() - runtime["updated_at"]
        if runtime.get("down"):
            state = f"DOWN: pid {runtime.get('pid')} is gone without stopping (killed?)"
        else:
            state = "running" if runtime.get("running") else "stopped"
            state += f" (pid {runtime.get('pid')}"
            state += ")"
        print(
            f"cdc run: {state}; its status is {age:.0f}s old"
            + (f"; error: {runtime['error']}" if runtime.get("error") else "")
        )
    else:
        print("cdc run: no status yet (it has not run with this state dir)")
    if doc["warehouse_note"]:
        print(f"warehouse: {doc['warehouse_note']}")
    print_table(
        doc["tables"],
        [
            "table",
            "state_table",
            "last_seq",
            "last_commit",
            "freshness",
            "visible_after",
            "versions",
            "live_rows",
            "dead_letters",
        ],
    )
    if doc["captures"]:
        print()
        print_table(
            doc["captures"],
            [
                "source",
                "engine",
                "freshness",
                "phase",
                "events",
                "last_seq",
                "watermark",
                "lag",
                "detail",
            ],
        )
    for w in doc["warnings"]:
        print(f"WARNING: {w}")
    return EXIT_OK


def collect_status(cfg: LoadedConfig) -> dict[str, Any]:
    """Everything ``cdc status`` shows, from the warehouse, the runtime's status file and the sources."""
    from cdc.runtime import read_status
    from connectors.deadletter import DeadLetterStore, default_folder
    from connectors.warehouse import open_warehouse
    from state_models.scd2 import TableDef

    now = time.time()
    runtime = read_status(cfg.state_dir)
    letters = DeadLetterStore(default_folder(cfg.state_dir)).list()
    per_table_letters: dict[str, int] = {}
    for letter in letters:
        per_table_letters[letter.table or "?"] = per_table_letters.get(letter.table or "?", 0) + 1
    stats: dict[str, dict[str, Any] | None] = {}
    progress: dict[str, dict[str, Any]] = {}
    note = ""
    try:
        warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=5)
    except TransientError as exc:
        warehouse = None
        note = f"busy ({exc}); figures below come from cdc run's status file"
    if warehouse is not None:
        try:
            for t in cfg.registry.tables():
                stats[t.id] = warehouse.stats(TableDef.from_registered(t))
            progress = {r["table_id"]: r for r in warehouse.progress()}
        finally:
            warehouse.close()
    captures, warnings = _capture_status(cfg, runtime, now)
    by_source = {c["source"]: c for c in captures}
    for name, capture in by_source.items():
        mark, held_by = _watermark(name, progress.values(), runtime)
        capture["watermark"] = mark or "-"
        capture["watermark_held_by"] = held_by
        if held_by:
            warnings.append(
                f"{name}: the transaction-consistent watermark is held at {mark} by dead letter "
                f"{held_by} (cdc dead-letters show {held_by}); `cdc as-of --consistent` answers "
                "stop there"
            )
    tables = []
    for t in cfg.registry.tables():
        s = stats.get(t.id)
        rt = (runtime or {}).get("tables", {}).get(t.id, {})
        last_seq = (s or {}).get("last_seq") or rt.get("last_seq")
        last_commit = (s or {}).get("last_commit")
        if last_commit is None and rt.get("last_commit_ts"):
            last_commit = dt.datetime.fromtimestamp(rt["last_commit_ts"] / 1e6, dt.UTC)
        lag = (now - last_commit.timestamp()) if isinstance(last_commit, dt.datetime) else None
        fresh = table_freshness(by_source.get(t.source_name), progress.get(t.id), rt, now)
        tables.append(
            {
                "table": t.id,
                "state_table": t.state_table,
                "last_seq": last_seq or "-",
                "last_commit": last_commit.isoformat(timespec="seconds")
                if isinstance(last_commit, dt.datetime)
                else "-",
                "freshness": fresh.pop("text"),
                "visible_after": _duration(fresh["commit_to_visible_s"]),
                "last_commit_age_s": lag,
                "freshness_detail": fresh,
                "versions": (s or {}).get("versions", "-")
                if s is not None
                else ("-" if warehouse is None else 0),
                "live_rows": (s or {}).get("live_rows", "-")
                if s is not None
                else ("-" if warehouse is None else 0),
                "dead_letters": per_table_letters.get(t.id, 0),
            }
        )
    if letters:
        warnings.append(f"{len(letters)} dead letter(s) waiting: `cdc dead-letters ls`")
    from connectors.loss_windows import LossWindows, as_json

    windows = [w for w in LossWindows(cfg.state_dir).all() if w.open_tables()]
    for w in windows:
        warnings.append(
            f"loss window {w.id}: {w.describe()}; check and fix: cdc reconcile "
            f"{' '.join(w.open_tables())} --repair"
        )
    return {
        "runtime": runtime,
        "warehouse_note": note,
        "tables": tables,
        "captures": captures,
        "loss_windows": [as_json(w) for w in windows],
        "warnings": warnings,
    }


def _watermark(
    source: str, progress: Any, runtime: dict[str, Any] | None
) -> tuple[str | None, str | None]:
    """A source's watermark and the dead letter holding it: the running `cdc run`'s, else the
    greatest recorded in ``cdc_progress``."""
    from state_models.progress import recorded_watermarks

    live = ((runtime or {}).get("watermarks") or {}).get(source) or {}
    stored, stored_held = recorded_watermarks(progress).get(source, (None, None))
    mark = max((m for m in (live.get("through"), stored) if m), default=None)
    return mark, live.get("held_by") if live else stored_held


#: position fields worth showing, per engine (pgoutput: flushed/last_commit; Debezium: lsn,
#: lsn_commit; binlog: file/pos/gtid)
_OFFSET_FIELDS = ("file", "pos", "gtid", "lsn", "lsn_commit", "flushed", "last_commit")


def _offset_text(position: dict[str, Any], *, lsn: bool) -> str:
    parts = []
    for key in _OFFSET_FIELDS:
        value = position.get(key)
        if value is None or value == "":
            continue
        if lsn and isinstance(value, int) and key != "pos":
            value = f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"  # PostgreSQL's own LSN notation
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _capture_status(
    cfg: LoadedConfig, runtime: Any, now: float
) -> tuple[list[dict[str, Any]], list[str]]:
    from connectors.capture.offsets import OffsetStore

    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for name, source in cfg.registry.sources.items():
        rt = (runtime or {}).get("captures", {}).get(name, {})
        detail = []
        try:
            stored = OffsetStore(cfg.state_dir, name, source.engine).load()
        except Exception as exc:  # an unreadable offset file is worth showing, not fatal here
            stored = None
            detail.append(f"offset unreadable: {exc}")
        shown = _offset_text(stored or {}, lsn=source.kind == "postgres")
        if shown:
            detail.append(f"offset {shown}")
        if source.kind == "postgres" and source.engine != "datastream":
            try:
                from connectors.capture.slots import slot_status

                slot = slot_status(name, source)
                if slot.exists:
                    detail.append(
                        f"slot {slot.slot} retains {(slot.retained_bytes or 0) / 2**20:.1f} MiB WAL"
                    )
                warnings.extend(f"{name}: {w}" for w in slot.warnings())
            except Exception as exc:  # the source may be down; say so and go on
                detail.append(f"slot: {type(exc).__name__}: {exc}")
        elif source.engine == "binlog":
            try:
                from connectors.capture.binlogs import binlog_status

                binlog = binlog_status(name, source, stored)
                detail.append(f"binlog: {binlog.describe()}")
                warnings.extend(f"{name}: {w}" for w in binlog.warnings(name))
            except Exception as exc:  # the source may be down; say so and go on
                detail.append(f"binlog: {type(exc).__name__}: {exc}")
        lag = rt.get("lag_s")
        fresh = freshness(runtime, rt, now, _stall_after(source))
        rows.append(
            {
                "source": name,
                "engine": source.engine,
                "freshness": fresh["text"],
                "freshness_detail": {k: v for k, v in fresh.items() if k != "text"},
                "phase": rt.get("phase", "-"),
                "events": rt.get("events", "-"),
                "last_seq": rt.get("last_seq") or "-",
                "lag": _duration(lag),
                "detail": "; ".join(detail) or "-",
            }
        )
    return rows, warnings


#: A source that has not answered for this long while `cdc run` runs is stalled (sla: stall_after).
DEFAULT_STALL_AFTER_S = 20.0


def _stall_after(source: Any) -> float:
    from state_models.registry import duration_seconds

    stall = source.sla.stall_after if source.sla is not None else None
    return duration_seconds(stall) if stall else DEFAULT_STALL_AFTER_S


def freshness(
    runtime: Any, capture: Mapping[str, Any], now: float, stall_after: float
) -> dict[str, Any]:
    """One capture's freshness: ``down`` (no ``cdc run``), ``STALLED`` (the source stopped
    answering, or the capture retries or failed), ``streaming`` (changes in the last seconds),
    ``idle`` (nothing to read: caught up with the source), or the phase before it streams."""
    contact = capture.get("source_contact_at")
    caught = capture.get("caught_up_at")
    out: dict[str, Any] = {
        "state": "",
        "caught_up_at": caught,
        "source_contact_age_s": None if contact is None else round(now - contact, 1),
        "stalled_for_s": None,
    }
    phase = capture.get("phase")
    if not runtime or not runtime.get("running"):
        out["state"], text = "down", "down (cdc run is not running)"
    elif phase in ("retrying", "failed"):
        out["state"], text = "stalled", f"STALLED ({phase})"
    elif contact is not None and now - contact > stall_after:
        out["state"], out["stalled_for_s"] = "stalled", round(now - contact, 1)
        text = f"STALLED {_duration(now - contact)} (the source has not answered)"
    elif capture.get("last_batch_at") and now - capture["last_batch_at"] < 5.0:
        out["state"], text = "streaming", "streaming"
    elif caught is not None:
        out["state"], text = "idle", f"idle (caught up {_duration(max(0.0, now - caught))} ago)"
    else:
        out["state"] = text = str(phase or "starting")
    out["text"] = text
    return out


def table_freshness(
    capture: Mapping[str, Any] | None,
    stored: Mapping[str, Any] | None,
    runtime: Mapping[str, Any],
    now: float,
) -> dict[str, Any]:
    """A table's freshness: its source's state (a table is as fresh as the capture feeding it),
    the time up to which the table holds everything its source wrote (``cdc_progress``, or the
    running ``cdc run``'s own figure when newer) and the commit-to-visible seconds of its newest
    change. A table fed by the Beam job (no capture here) has only what ``cdc_progress`` says."""
    caught = [
        v
        for v in (
            _epoch((stored or {}).get("caught_up_at")),
            runtime.get("caught_up_at"),
        )
        if v is not None
    ]
    caught_up_at = max(caught) if caught else None
    visible = runtime.get("commit_to_visible_s")
    if visible is None:
        visible = (stored or {}).get("commit_to_visible_s")
    source = (capture or {}).get("freshness_detail") or {}
    state = source.get("state") or "-"
    text = (capture or {}).get("freshness") or "-"
    if state == "idle" and caught_up_at is not None:
        text = f"idle (caught up {_duration(max(0.0, now - caught_up_at))} ago)"
    if (stored or {}).get("writer") == "beam" and state in ("down", "-"):
        # merged by the Beam job, not by a `cdc run` here: what the job last recorded
        updated = _epoch((stored or {}).get("updated_at"))
        applied = _epoch((stored or {}).get("applied_commit_at"))
        state = "beam"
        text = "Beam job: " + ", ".join(
            part
            for part in (
                None if applied is None else f"newest change {_duration(now - applied)} old",
                None if updated is None else f"progress {_duration(now - updated)} ago",
            )
            if part
        )
    return {
        "state": state,
        "caught_up_at": None
        if caught_up_at is None
        else dt.datetime.fromtimestamp(caught_up_at, dt.UTC).isoformat(),
        "caught_up_age_s": None if caught_up_at is None else round(now - caught_up_at, 1),
        "stalled_for_s": source.get("stalled_for_s"),
        "commit_to_visible_s": None if visible is None else round(float(visible), 3),
        "text": text,
    }


def _epoch(value: Any) -> float | None:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return None if value is None else float(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


# --------------------------------------------------------------------------- dead letters


def _dl_usage(args: argparse.Namespace) -> int:
    raise ConfigError("cdc dead-letters needs a subcommand: ls, show, retry")


def _store(cfg: LoadedConfig) -> Any:
    from connectors.deadletter import DeadLetterStore, Sealing, default_folder

    return DeadLetterStore(default_folder(cfg.state_dir), sealing=Sealing.of(cfg.registry))


def cmd_dl_ls(args: argparse.Namespace) -> int:
    cfg = load(args)
    letters = _store(cfg).list(table=args.table)
    if args.format == "json":
        print(json.dumps([_letter_doc(x, raw=False) for x in letters], indent=2, default=str))
        return EXIT_OK
    if not letters:
        print("no dead letters")
        return EXIT_OK
    print_table(
        [
            {
                "id": x.id,
                "at": x.at,
                "table": x.table or "-",
                "error": x.error_type,
                "copies": x.copies,
                "reason": _short(x.reason, 100),
            }
            for x in letters
        ],
        ["id", "at", "table", "error", "copies", "reason"],
    )
    print(
        f"{len(letters)} dead letter(s); `cdc dead-letters show ID` for the raw message",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_dl_show(args: argparse.Namespace) -> int:
    cfg = load(args)
    letter = _store(cfg).show(args.id)
    print(json.dumps(_letter_doc(letter, raw=True), indent=2, default=str))
    return EXIT_OK


def cmd_dl_retry(args: argparse.Namespace) -> int:
    from connectors.warehouse import open_warehouse
    from merge_jobs.redrive import redrive

    cfg = load(args, writes=True)
    store = _store(cfg)
    letters = [store.show(i) for i in args.ids] if args.ids else store.list(table=args.table)
    if not letters:
        print("no dead letters to retry")
        return EXIT_OK
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        result = redrive(
            cfg.registry, warehouse, store, letters, ingested_at=dt.datetime.now(dt.UTC)
        )
    finally:
        warehouse.close()
    for letter_id, reason in result.still_failing.items():
        print(f"still failing {letter_id}: {reason}", file=sys.stderr)
    print(
        f"retried {len(letters)}: {result.applied} applied and removed, {len(result.still_failing)} still failing"
    )
    return EXIT_FAILED if result.still_failing else EXIT_OK


def _letter_doc(letter: Any, raw: bool) -> dict[str, Any]:
    doc = {
        k: getattr(letter, k)
        for k in ("id", "at", "reason", "error_type", "source", "table", "context", "copies")
    }
    if raw:
        doc["raw"] = letter.raw_text() if letter.raw_encoding == "text" else letter.raw
        doc["raw_encoding"] = letter.raw_encoding
    return doc


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
