"""``cdc datastream plan|apply|status``: Google Datastream streams provisioned from the registry."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import load, subcommands
from cdc.config import LoadedConfig
from state_models.errors import CdcError, ConfigError


def add_commands(add: AddCommand) -> None:
    p = add(
        "datastream",
        "plan, create or update, and watch the Google Datastream streams of engine: datastream sources",
        _usage,
    )
    subcommand = subcommands(p, "datastream_command")

    s = subcommand(
        "plan",
        "show the connection profiles and stream a source needs, and what apply would change",
        cmd_plan,
    )
    s.add_argument("--source", required=True, help="source name in the registry")
    s.add_argument("--format", choices=["text", "json"], default="text")
    s.add_argument(
        "--offline", action="store_true", help="do not compare with the project; only the plan"
    )

    s = subcommand(
        "apply", "create or update the source's connection profiles and stream", cmd_apply
    )
    s.add_argument("--source", required=True, help="source name in the registry")
    s.add_argument(
        "--update-secrets",
        action="store_true",
        help="also send the database password (the API never returns it, so it cannot be compared)",
    )
    s.add_argument("--start", action="store_true", help="start the stream once it is in place")
    s.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for each operation"
    )

    s = subcommand("status", "show each stream's state, its errors and its newest file", cmd_status)
    s.add_argument("--source", help="only this source (default: every engine: datastream source)")


def _usage(args: argparse.Namespace) -> int:
    raise ConfigError("cdc datastream needs a subcommand: plan, apply or status")


def _plan(cfg: LoadedConfig, source_name: str) -> Any:
    from connectors.datastream import plan_for

    source = cfg.registry.sources.get(source_name)
    if source is None:
        raise ConfigError(
            f"no source {source_name!r} in {cfg.path} (sources: {', '.join(cfg.registry.sources)})"
        )
    return plan_for(source_name, source)


def cmd_plan(args: argparse.Namespace) -> int:
    from connectors.datastream import Action, DatastreamProvisioner, make_client

    cfg = load(args)
    plan = _plan(cfg, args.source)
    actions = [Action(r, "unknown") for r in plan.resources]
    note = "not compared with the project: --offline"
    if not args.offline:
        try:
            actions = DatastreamProvisioner(make_client()).diff(plan)
            note = ""
        except CdcError as exc:
            note = f"not compared with the project: {exc}"
    if args.format == "json":
        print(json.dumps(_plan_json(plan, actions, note), indent=2))
    else:
        print(_plan_text(plan, actions, note))
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from connectors.datastream import DatastreamProvisioner, make_client

    cfg = load(args)
    plan = _plan(cfg, args.source)
    provisioner = DatastreamProvisioner(
        make_client(), timeout=args.timeout, log=lambda msg: print(msg, file=sys.stderr)
    )
    done = provisioner.apply(plan, update_secrets=args.update_secrets, start=args.start)
    for a in done:
        detail = f" ({', '.join(a.update_mask)})" if a.update_mask else ""
        print(f"{a.resource.kind} {a.resource.id}: {_past(a.verb)}{detail}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from connectors.datastream import DatastreamProvisioner, make_client, newest_gcs_file

    cfg = load(args)
    names = (
        [args.source]
        if args.source
        else [n for n, s in cfg.registry.sources.items() if s.engine == "datastream"]
    )
    if not names:
        raise ConfigError(f"no engine: datastream source in {cfg.path}")
    plans = [_plan(cfg, n) for n in names]
    provisioner = DatastreamProvisioner(make_client())
    failed = False
    for plan in plans:
        storage, why_not = _storage_client(plan)
        st = provisioner.status(plan, newest_gcs_file(storage) if storage else None)
        reason = why_not or st.newest_file_error
        if st.newest_file_time:
            newest = f"{st.newest_file_time.isoformat()} ({st.newest_file})"
        else:
            newest = f"unknown ({reason})" if reason else "none yet"
        print(f"{plan.source_name}: stream {st.stream} {st.state}; newest file {newest}")
        for e in st.errors:
            print(f"  error: {e}")
        failed = failed or bool(st.errors) or st.state.startswith("FAILED")
    return EXIT_FAILED if failed else EXIT_OK


def _storage_client(plan: Any) -> tuple[Any, str | None]:
    """A GCS client for the newest-file lookup, or None and why (status still shows the state)."""
    import os

    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage  # type: ignore[attr-defined]

    project = plan.parent.split("/")[1]
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project, credentials=AnonymousCredentials()), None
    try:
        return storage.Client(project=project), None
    except DefaultCredentialsError:
        return None, "no Google credentials to list the bucket"


def _past(verb: str) -> str:
    return {"create": "created", "update": "updated", "unchanged": "unchanged"}.get(verb, verb)


# --------------------------------------------------------------------------- rendering


def _plan_text(plan: Any, actions: list[Any], note: str) -> str:
    lines = [f"Datastream plan for source {plan.source_name} ({plan.kind}) in {plan.parent}"]
    if note:
        lines.append(f"({note})")
    for a in actions:
        r = a.resource
        verdict = {
            "create": "create",
            "update": "update: " + ", ".join(a.update_mask),
            "unchanged": "unchanged",
            "unknown": "create or update",
        }[a.verb]
        lines.append("")
        lines.append(f"{r.kind} {r.id}  [{verdict}]")
        lines.extend("  " + line for line in _describe(r.desired, plan))
    return "\n".join(lines)


def _describe(message: Any, plan: Any) -> list[str]:
    from google.cloud import datastream_v1 as ds

    out = [f"display name: {message.display_name}"]
    if isinstance(message, ds.ConnectionProfile):
        if "gcs_profile" in message:
            g = message.gcs_profile
            out.append(f"bucket: gs://{g.bucket}  root path: {g.root_path}")
            return out
        db = message.mysql_profile if "mysql_profile" in message else message.postgresql_profile
        where = f"{db.username}@{db.hostname}:{db.port}"
        if "postgresql_profile" in message:
            where += f"/{message.postgresql_profile.database}"
        out.append(f"database: {where}  password: {'(set)' if db.password else '(empty)'}")
        if "private_connectivity" in message:
            out.append(f"connectivity: private ({message.private_connectivity.private_connection})")
        else:
            out.append(
                "connectivity: Datastream's static IP addresses (allow them in the firewall)"
            )
        return out
    src = message.source_config
    out.append(f"source profile: {src.source_connection_profile.rsplit('/', 1)[-1]}")
    if "mysql_source_config" in src:
        mysql = src.mysql_source_config
        tables = [
            f"{d.database}.{t.table}"
            for d in mysql.include_objects.mysql_databases
            for t in d.mysql_tables
        ]
        method = "GTID" if "gtid" in mysql else "binlog position"
        out.append(f"CDC method: {method}")
    else:
        pg = src.postgresql_source_config
        tables = [
            f"{s.schema}.{t.table}"
            for s in pg.include_objects.postgresql_schemas
            for t in s.postgresql_tables
        ]
        out.append(f"replication slot: {pg.replication_slot}  publication: {pg.publication}")
    out.append(f"include: {', '.join(tables)}")
    gcs = message.destination_config.gcs_destination_config
    fmt = "avro" if "avro_file_format" in gcs else "json (gzip)"
    dst = message.destination_config.destination_connection_profile.rsplit("/", 1)[-1]
    out.append(f"destination: gs://{plan.bucket}/{plan.path}/ via {dst}, {fmt} files")
    out.append(
        "backfill: every included table"
        if "backfill_all" in message
        else "backfill: none (changes from now on)"
    )
    return out


def _plan_json(plan: Any, actions: list[Any], note: str) -> dict[str, Any]:
    def desired(message: Any) -> dict[str, Any]:
        doc = type(message).to_dict(message, preserving_proto_field_name=True)
        for key in ("mysql_profile", "postgresql_profile"):
            if doc.get(key, {}).get("password"):
                doc[key]["password"] = "****"
        return doc

    return {
        "source": plan.source_name,
        "parent": plan.parent,
        "destination": f"gs://{plan.bucket}/{plan.path}/",
        "compared": not note,
        "note": note,
        "resources": [
            {
                "kind": a.resource.kind,
                "id": a.resource.id,
                "name": a.resource.name,
                "action": a.verb,
                "update_mask": list(a.update_mask),
                "desired": desired(a.resource.desired),
            }
            for a in actions
        ],
    }
