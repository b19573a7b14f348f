"""Debezium Server configuration for production: the same connector settings as the embedded engine,
with the Google Cloud Pub/Sub sink.

Both paths are built from ``debezium.connector_properties``; here each connector setting becomes
``debezium.source.<key>``, the converter settings become ``debezium.format.*``, offsets go to a file on
the container's data volume, and the password is read from the environment, never written.

Pub/Sub: one topic per table, named like the Debezium destination ``<source>.<schema>.<table>``
(create them before starting; Debezium Server does not), message ordering on, with the record key
(``{"id":1}``) as the ordering key, so the changes of one row arrive in commit order. Transaction
metadata is on: each transaction's BEGIN/END records go to ``<source>.transaction``, from which the
merge job keeps the source's watermark (``merge_jobs/watermark.py``). Debezium's
heartbeat records (``__debezium-heartbeat.<source>``, a name Pub/Sub refuses) are dropped before the
sink by Kafka Connect's ``Filter`` transform: they still advance the offsets and the slot, as in the
embedded engine, but publish nothing. ``address`` (``host:port``) points the sink at a Pub/Sub
emulator (``debezium.sink.pubsub.address``: plaintext gRPC, no credentials).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from connectors.capture.debezium import (
    FORMAT_KEYS,
    HEARTBEAT_PREFIX,
    connector_properties,
    format_properties,
)
from state_models.registry import Source
from state_models.tables import TableInfo

#: The Debezium Server image matching the embedded engine's Debezium version (pydbzengine 3.6.3.0).
IMAGE = "quay.io/debezium/server:3.6.3.Final"
OFFSETS_FILE = "/debezium/data/offsets.dat"


def password_variable(source_name: str) -> str:
    return f"CDC_{source_name.upper()}_DB_PASSWORD"


def server_properties(
    source_name: str,
    source: Source,
    tables: Sequence[TableInfo] | None = None,
    *,
    project: str,
    address: str | None = None,
) -> dict[str, str]:
    """Every ``application.properties`` entry for one source, in file order; ``address``
    (``host:port``) sends to a Pub/Sub emulator instead of Google Cloud."""
    props: dict[str, str] = {
        "debezium.sink.type": "pubsub",
        "debezium.sink.pubsub.project.id": project,
        "debezium.sink.pubsub.ordering.enabled": "true",
    }
    if address:
        props["debezium.sink.pubsub.address"] = address
    props |= {
        "debezium.format.key": "json",
        "debezium.format.value": "json",
    }
    for key, value in format_properties(source).items():
        # key.converter.schemas.enable -> debezium.format.key.schemas.enable
        props[f"debezium.format.{key.replace('.converter', '')}"] = value
    connector = connector_properties(source_name, source, tables)
    # BEGIN/END records on <source>.transaction: the merge job keeps the source's watermark from
    # them (merge_jobs/watermark.py); the registry's debezium: may still turn them off
    connector.setdefault("provide.transaction.metadata", "true")
    for key, value in connector.items():
        props[f"debezium.source.{key}"] = value
    props["debezium.source.database.password"] = "${" + password_variable(source_name) + "}"
    heartbeats = props.get("debezium.source.topic.heartbeat.prefix", HEARTBEAT_PREFIX)
    props.update(
        {
            "debezium.transforms": "dropheartbeats",
            "debezium.transforms.dropheartbeats.type": "org.apache.kafka.connect.transforms.Filter",
            "debezium.transforms.dropheartbeats.predicate": "heartbeat",
            "debezium.predicates": "heartbeat",
            "debezium.predicates.heartbeat.type": (
                "org.apache.kafka.connect.transforms.predicates.TopicNameMatches"
            ),
            "debezium.predicates.heartbeat.pattern": re.escape(heartbeats) + r"\..*",
        }
    )
    props.update(
        {
            "debezium.source.offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "debezium.source.offset.storage.file.filename": OFFSETS_FILE,
            "debezium.source.offset.flush.interval.ms": "0",
            "quarkus.log.console.json": "false",
        }
    )
    return props


def connector_settings_of(props: Mapping[str, str]) -> dict[str, str]:
    """Back from server properties to the embedded engine's connector + format settings."""
    out = {
        k[len("debezium.source.") :]: v
        for k, v in props.items()
        if k.startswith("debezium.source.")
    }
    for key in FORMAT_KEYS:
        out[key] = props[f"debezium.format.{key.replace('.converter', '')}"]
    return out


def render_properties(props: Mapping[str, str], header: str = "") -> str:
    """A Java ``.properties`` file (keys and values escaped as ``Properties.load`` reads them)."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines += [f"{_escape(k, key=True)}={_escape(v)}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def _escape(text: str, *, key: bool = False) -> str:
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[ch])
        elif ch in "=:#!" or (ch == " " and (key or i == 0)):
            out.append("\\" + ch)
        elif ord(ch) > 126:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def compose_service(source_name: str, config_dir: str = "./conf") -> str:
    """A docker-compose file running Debezium Server for one source."""
    service = f"debezium-{source_name.replace('_', '-')}"
    password = password_variable(source_name)
    return f"""\
# Debezium Server for source {source_name!r}: PostgreSQL -> Google Cloud Pub/Sub.
# Needs {password} in the environment and Google credentials (the mounted key file, or run on
# GCP with a service account that may publish to the topics).
services:
  {service}:
    image: {IMAGE}
    restart: unless-stopped
    environment:
      {password}: ${{{password}:?set the database password}}
      GOOGLE_APPLICATION_CREDENTIALS: /secrets/gcp-key.json
    volumes:
      - {config_dir}:/debezium/config:ro
      - ${{GOOGLE_APPLICATION_CREDENTIALS:-./gcp-key.json}}:/secrets/gcp-key.json:ro
      - {service}-data:/debezium/data
volumes:
  {service}-data: {{}}
"""
