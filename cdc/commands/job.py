"""``cdc job streaming|replay``: build and run the Beam merge jobs, locally or on Dataflow.

``python -m merge_jobs.streaming`` and ``python -m merge_jobs.replay`` are the same commands.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import load, subcommands
from cdc.config import LoadedConfig
from connectors.deadletter import Sealing
from state_models.errors import ConfigError

DATAFLOW = "DataflowRunner"
#: The streaming merge job's name on Dataflow unless --job-name says otherwise: a fixed name lets
#: `--update` replace it in place and `cdc monitoring rules` watch it
STREAMING_JOB_NAME = "cdc-streaming"
RUNNERS = ("DirectRunner", DATAFLOW)


def add_commands(add: AddCommand) -> None:
    p = add(
        "job", "run the Beam merge jobs (streaming from Pub/Sub, or a changelog replay)", _usage
    )
    subcommand = subcommands(p, "job_command")

    s = subcommand(
        "streaming",
        "Pub/Sub -> raw changelog + SCD2 state tables, until stopped (Ctrl-C locally; "
        "`gcloud dataflow jobs drain` on Dataflow)",
        cmd_streaming,
    )
    s.add_argument(
        "--subscription",
        action="append",
        metavar="SUB",
        help="Pub/Sub subscription to read (repeatable; an id inside --project or "
        "projects/P/subscriptions/S); default: every merge subscription of the registry's pubsub: "
        "section",
    )
    s.add_argument(
        *_both("--datastream-notifications"),
        action="append",
        metavar="SUB",
        help="subscription of the GCS notifications (OBJECT_FINALIZE) of the bucket Datastream "
        "writes to: read each new file of the registry's engine: datastream sources (repeatable)",
    )
    s.add_argument(
        *_both("--datastream-files"),
        action="append",
        metavar="PATTERN",
        help="or poll a file pattern for new Datastream files, e.g. "
        "gs://acme-cdc-datastream/datastream/shop/** (repeatable; files already there are read "
        "at start)",
    )
    s.add_argument(
        *_both("--datastream-poll"),
        type=float,
        metavar="SECONDS",
        help="how often --datastream-files is matched (default 60)",
    )
    s.add_argument(
        *_both("--dead-letter-topic"),
        help="topic for dead letters (id or projects/P/topics/T; default: the registry's; "
        "'none' for none)",
    )
    s.add_argument(
        *_both("--changelog-window"),
        type=float,
        metavar="SECONDS",
        help="changelog files per table every this many seconds (default 60; more when big)",
    )
    _add_common(s)

    r = subcommand(
        "replay",
        "re-apply a range of the raw changelog to the state tables (a backfill; safe to repeat)",
        cmd_replay,
    )
    r.add_argument(
        "--table",
        action="append",
        metavar="TABLE",
        help="registered table to replay (repeatable; default: all)",
    )
    r.add_argument("--since", metavar="TIME", help="commit time from (ISO-8601, inclusive)")
    r.add_argument("--until", metavar="TIME", help="commit time until (ISO-8601, exclusive)")
    r.add_argument(*_both("--from-seq"), metavar="SEQ", help="first seq (inclusive)")
    r.add_argument(*_both("--to-seq"), metavar="SEQ", help="last seq (inclusive)")
    r.add_argument(
        *_both("--no-wait"),
        action="store_true",
        help="on Dataflow: submit the job and return instead of waiting for it",
    )
    _add_common(r)


def _both(name: str) -> tuple[str, ...]:
    """``--temp-location`` and Beam's spelling ``--temp_location``: the Airflow Beam provider and
    anyone used to Beam's own options pass them that way."""
    snake = name.replace("-", "_")
    return (name,) if snake == name else (name, "--" + snake[2:])


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where")
    g.add_argument("--changelog", metavar="ROOT", help="changelog root (default: the registry's)")
    g.add_argument("--warehouse", metavar="URL", help="warehouse URL (default: the registry's)")
    g.add_argument(
        *_both("--dead-letters"),
        metavar="FOLDER",
        help="dead-letter folder (default: <state_dir>/dead_letters)",
    )
    b = p.add_argument_group("batching")
    b.add_argument(*_both("--batch-size"), type=int, help="events per MERGE at most (default 5000)")
    b.add_argument(
        *_both("--batch-max-latency"),
        type=float,
        metavar="SECONDS",
        help="longest an event waits for its batch to fill (streaming; default 1.0)",
    )
    r = p.add_argument_group("runner")
    r.add_argument("--runner", choices=RUNNERS, default="DirectRunner")
    r.add_argument("--project", help="Google Cloud project (Dataflow; Pub/Sub ids)")
    r.add_argument("--region", help="Dataflow region, e.g. europe-west1")
    r.add_argument(
        *_both("--temp-location"), metavar="GS_PATH", help="Dataflow temp files (gs://...)"
    )
    r.add_argument(
        *_both("--staging-location"), metavar="GS_PATH", help="default: the temp location"
    )
    r.add_argument(*_both("--num-workers"), type=int, help="initial Dataflow workers")
    r.add_argument(*_both("--max-num-workers"), type=int, help="autoscaling ceiling")
    r.add_argument(*_both("--worker-machine-type"), metavar="TYPE", help="e.g. n2-standard-2")
    r.add_argument(
        *_both("--service-account"),
        "--service_account_email",
        metavar="EMAIL",
        help="worker service account",
    )
    r.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Dataflow job labels (repeatable; or a JSON object, as Beam takes them)",
    )
    r.add_argument(
        *_both("--job-name"),
        help=f"Dataflow job name (the streaming job's default: {STREAMING_JOB_NAME})",
    )
    r.add_argument(
        *_both("--setup-file"),
        metavar="FILE",
        help="packaging for the workers (default: this project's pyproject.toml)",
    )
    r.add_argument(
        *_both("--pipeline-option"),
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other Beam pipeline option, e.g. experiments=enable_streaming_engine "
        "(repeatable)",
    )


def _usage(args: argparse.Namespace) -> int:
    raise ConfigError("cdc job needs a subcommand: streaming or replay")


# --------------------------------------------------------------------------- streaming


def cmd_streaming(args: argparse.Namespace) -> int:
    import apache_beam as beam

    from merge_jobs.datastream import DEFAULT_POLL_S
    from merge_jobs.settings import (
        dead_letter_topic_of,
        subscriptions_of,
        transaction_subscriptions_of,
    )
    from merge_jobs.streaming import build_streaming

    cfg = load(args, writes=True)
    registry = cfg.registry
    topic = args.dead_letter_topic
    if topic is None:
        topic = dead_letter_topic_of(registry)
    elif topic == "none":
        topic = None
    else:
        topic = _path(topic, "topics", args.project, registry)
    settings = _settings(cfg, args, dead_letter_topic=topic)
    subscriptions = [
        _path(s, "subscriptions", args.project, registry) for s in (args.subscription or [])
    ] or subscriptions_of(registry)
    # the watermark of each PostgreSQL source Debezium captures: read its transaction topic too
    # (with the registry's subscriptions; explicit --subscription reads just those)
    transactions = {} if args.subscription else transaction_subscriptions_of(registry)
    notifications = [
        _path(s, "subscriptions", args.project, registry)
        for s in (args.datastream_notifications or [])
    ]
    patterns = args.datastream_files or []
    if not (subscriptions or notifications or patterns):
        raise ConfigError(
            "no subscription to read: pass --subscription (or add a pubsub: section to "
            f"{cfg.path} and run `cdc pubsub setup`), or --datastream-notifications / "
            "--datastream-files for engine: datastream sources"
        )
    if (notifications or patterns) and not settings.datastream:
        raise ConfigError(
            f"--datastream-notifications/--datastream-files: {cfg.path} has no engine: datastream "
            "source with a datastream: section (bucket, prefix) to read files for"
        )
    if args.datastream_poll is not None and args.datastream_poll <= 0:
        raise ConfigError("--datastream-poll must be positive seconds")
    options = _pipeline_options(args, streaming=True)
    pipeline = beam.Pipeline(options=options)
    try:
        build_streaming(
            pipeline,
            settings,
            subscriptions,
            datastream_notifications=notifications,
            datastream_files=patterns,
            datastream_poll_s=args.datastream_poll or DEFAULT_POLL_S,
            transaction_subscriptions=transactions,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    result = pipeline.run()
    if args.runner == DATAFLOW:
        _print_dataflow(result, args, streaming=True)
        return EXIT_OK
    print(
        f"streaming {len(subscriptions)} subscription(s) ({len(transactions)} of transactions) and "
        f"{len(notifications) + len(patterns)} Datastream input(s) into {settings.warehouse_url} on the "
        "DirectRunner; Ctrl-C stops (events still buffered are not merged: the DirectRunner "
        "acknowledges Pub/Sub messages as it pulls them)",
        file=sys.stderr,
    )
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        result.cancel()
        return EXIT_OK
    finally:
        _close_pooled()
    return EXIT_OK


# --------------------------------------------------------------------------- replay


def cmd_replay(args: argparse.Namespace) -> int:
    import apache_beam as beam

    from merge_jobs.backfill import build_replay, plan_replay
    from state_models.changelog import ChangeRange

    cfg = load(args, writes=True)
    settings = _settings(cfg, args, dead_letter_topic=None)
    tables = (
        [cfg.registry.table(t).id for t in args.table] if args.table else list(settings.table_defs)
    )
    from_datastream = [t for t in tables if cfg.registry.table(t).source.engine == "datastream"]
    if from_datastream:
        # their raw changelog is Datastream's files, which this Beam job does not read (yet)
        hint = "; replay them with `cdc replay TABLE`, which reads Datastream's files"
        if args.table:
            raise ConfigError(f"{', '.join(from_datastream)}: engine: datastream{hint}")
        print(f"skipping {', '.join(from_datastream)}{hint}", file=sys.stderr)
        tables = [t for t in tables if t not in from_datastream]
    try:
        rng = ChangeRange(
            since_us=_micros(args.since, "--since"),
            until_us=_micros(args.until, "--until"),
            from_seq=args.from_seq,
            to_seq=args.to_seq,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    options = _pipeline_options(args, streaming=False)
    plan = plan_replay(settings.changelog_root, tables, rng, dict(settings.storage_options))
    for problem in plan.unreadable:
        print(f"warning: skipped {problem}", file=sys.stderr)
    print(
        f"replaying {len(plan.files)} changelog file(s) of {len(tables)} table(s)", file=sys.stderr
    )
    if not plan.files:
        return EXIT_FAILED if plan.unreadable else EXIT_OK
    pipeline = beam.Pipeline(options=options)
    build_replay(pipeline, settings, plan.files, rng)
    result = pipeline.run()
    if args.runner == DATAFLOW and args.no_wait:
        _print_dataflow(result, args, streaming=False)
        return EXIT_OK
    try:
        state = result.wait_until_finish()
    finally:
        _close_pooled()
    counts = _counters(result)
    print(
        f"{state}: {counts.get('events_replayed', 0)} events replayed, "
        f"{counts.get('events_merged', 0)} merged in {counts.get('merges', 0)} MERGEs, "
        f"{counts.get('dead_letters', 0)} dead-lettered (in {settings.dead_letter_folder})"
    )
    return EXIT_FAILED if counts.get("dead_letters") or plan.unreadable else EXIT_OK


# --------------------------------------------------------------------------- shared


def _settings(cfg: LoadedConfig, args: argparse.Namespace, dead_letter_topic: str | None) -> Any:
    from merge_jobs.settings import (
        DEFAULT_BATCH_MAX_LATENCY_S,
        DEFAULT_BATCH_SIZE,
        DEFAULT_CHANGELOG_WINDOW_S,
        DatastreamSource,
        JobSettings,
        online_stores,
        registered_tables,
    )

    infos, defs = registered_tables(cfg.registry)
    online = online_stores(cfg.registry) if args.job_command == "streaming" else {}
    if not defs:
        raise ConfigError(f"{cfg.path} registers no tables: nothing to merge")
    changelog = args.changelog or cfg.changelog_root
    warehouse = args.warehouse or cfg.warehouse_url
    dead_letters = args.dead_letters or str(cfg.state_dir / "dead_letters")
    if args.runner == DATAFLOW:
        _check_dataflow(
            args,
            changelog=changelog,
            warehouse=warehouse,
            dead_letters=dead_letters,
            online=online,
        )
    window = getattr(args, "changelog_window", None)
    try:
        return JobSettings(
            tables=infos,
            table_defs=defs,
            warehouse_url=warehouse,
            changelog_root=changelog,
            dead_letter_folder=dead_letters,
            dead_letter_topic=dead_letter_topic,
            sealing=Sealing.of(cfg.registry),
            batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
            batch_max_latency_s=args.batch_max_latency or DEFAULT_BATCH_MAX_LATENCY_S,
            changelog_window_s=window or DEFAULT_CHANGELOG_WINDOW_S,
            datastream=tuple(
                DatastreamSource(name, source.kind, cfg.datastream_output(name))
                for name, source in cfg.registry.sources.items()
                if source.engine == "datastream" and source.datastream is not None
            ),
            online=online,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_dataflow(
    args: argparse.Namespace,
    *,
    changelog: str,
    warehouse: str,
    dead_letters: str,
    online: Mapping[str, Any] | None = None,
) -> None:
    problems = []
    # the job's steps are pickled and staged in the temp location: a password in them would be
    # a secret stored in clear; a Memorystore reached over the VPC needs none
    for url in sorted({store.url for store in (online or {}).values()}):
        if urllib.parse.urlsplit(url).password:
            problems.append(
                "the online: store's url holds a password, which the job would carry in its "
                "staged steps: on Dataflow use a Memorystore instance without AUTH on the "
                "workers' VPC (or leave online: to `cdc run`)"
            )
    for flag in ("project", "region", "temp_location"):
        if not getattr(args, flag):
            problems.append(f"--{flag.replace('_', '-')} is required on Dataflow")
    if args.temp_location and not args.temp_location.startswith("gs://"):
        problems.append(f"--temp-location must be gs://... on Dataflow, got {args.temp_location}")
    if not changelog.startswith("gs://"):
        problems.append(
            f"the changelog must be in GCS on Dataflow (workers cannot see {changelog}): "
            "--changelog gs://bucket/prefix"
        )
    if not dead_letters.startswith("gs://"):
        problems.append(
            f"dead letters must go to GCS on Dataflow (workers cannot see {dead_letters}): "
            "--dead-letters gs://bucket/prefix"
        )
    if not warehouse.startswith("bigquery://"):
        problems.append(
            f"the warehouse must be BigQuery on Dataflow, got {warehouse}: "
            "--warehouse bigquery://project/dataset"
        )
    if problems:
        raise ConfigError("cannot run on Dataflow:\n  " + "\n  ".join(problems))


def _pipeline_options(args: argparse.Namespace, *, streaming: bool) -> Any:
    from apache_beam.options.pipeline_options import PipelineOptions

    flags = [f"--runner={args.runner}"]
    if streaming:
        flags.append("--streaming")
    for name in (
        "project",
        "region",
        "temp_location",
        "staging_location",
        "num_workers",
        "max_num_workers",
        "worker_machine_type",
        "job_name",
    ):
        value = getattr(args, name)
        if value is not None:
            flags.append(f"--{name}={value}")
    if streaming and args.runner == DATAFLOW and args.job_name is None:
        flags.append(f"--job_name={STREAMING_JOB_NAME}")
    if args.service_account:
        flags.append(f"--service_account_email={args.service_account}")
    if args.runner == DATAFLOW:
        setup = args.setup_file or _own_pyproject()
        if setup:
            flags.append(f"--setup_file={setup}")
    flags += [f"--labels={label}" for label in args.labels]
    for option in args.pipeline_option:
        name, sep, value = option.partition("=")
        if not sep or not name:
            raise ConfigError(f"--pipeline-option expects NAME=VALUE, got {option!r}")
        flags.append(f"--{name.lstrip('-')}={value}")
    options = PipelineOptions(flags)
    unknown = options.get_all_options(retain_unknown_options=True, drop_default=True)
    known = PipelineOptions([]).get_all_options()
    strange = sorted(k for k in unknown if k not in known)
    if strange:
        raise ConfigError(f"unknown Beam pipeline option(s): {', '.join(strange)}")
    return options


def _own_pyproject() -> str | None:
    """This project's pyproject.toml, which Beam builds into the package the workers install."""
    candidate = Path(__file__).resolve().parents[2] / "pyproject.toml"
    return str(candidate) if candidate.exists() else None


def _path(name: str, kind: str, project: str | None, registry: Any) -> str:
    if name.startswith("projects/"):
        return name
    project = project or (registry.pubsub.project if registry.pubsub else None)
    if not project:
        raise ConfigError(
            f"{name!r} is not a full path (projects/P/{kind}/{name}): pass --project or set "
            "pubsub.project in the registry"
        )
    return f"projects/{project}/{kind}/{name}"


def _micros(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{flag} expects an ISO-8601 time like 2026-05-01T08:00:00Z, got {text!r}"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1_000_000)


def _counters(result: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in result.metrics().query()["counters"]:
        name = c.key.metric.name
        out[name] = out.get(name, 0) + int(c.committed or 0)
    return out


def _print_dataflow(result: Any, args: argparse.Namespace, *, streaming: bool) -> None:
    job_id = getattr(result, "job_id", lambda: None)()
    # "Created job with id: [ID]" is the line Airflow's Dataflow hooks read the job id from
    print(f"Created job with id: [{job_id}] (Dataflow, {args.project}/{args.region})")
    print(
        f"  console: https://console.cloud.google.com/dataflow/jobs/{args.region}/{job_id}"
        f"?project={args.project}"
    )
    if streaming:
        print(f"  stop it cleanly: gcloud dataflow jobs drain {job_id} --region {args.region}")


def _close_pooled() -> None:
    from merge_jobs.pool import POOL

    POOL.close_idle()
