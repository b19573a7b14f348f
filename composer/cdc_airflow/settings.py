"""The example DAGs' settings, from the environment of the Composer environment (or the Airflow
workers): nothing secret is read here, only names of Airflow connections."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Settings:
    config: str | None = None
    cdc_command: str | None = None
    tables: tuple[str, ...] = ()
    connections: dict[str, str] = field(default_factory=dict)

    @property
    def operator_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"config": self.config, "connections": self.connections}
        if self.cdc_command:
            args["cdc_command"] = self.cdc_command
        return args


def from_environment(environ: dict[str, str] | None = None) -> Settings:
    """``CDC_CONFIG``, ``CDC_COMMAND``, ``CDC_TABLES`` (comma-separated) and
    ``CDC_CONNECTIONS`` (``VAR=conn_id,...``: the registry's ``${VAR}`` from an Airflow
    connection's URI)."""
    env = os.environ if environ is None else environ
    connections = {}
    for item in _items(env.get("CDC_CONNECTIONS", "")):
        variable, sep, conn_id = item.partition("=")
        if not sep or not variable.strip() or not conn_id.strip():
            raise ValueError(
                f"CDC_CONNECTIONS: expected VAR=connection_id items separated by commas, got "
                f"{item!r}"
            )
        connections[variable.strip()] = conn_id.strip()
    return Settings(
        config=env.get("CDC_CONFIG") or None,
        cdc_command=env.get("CDC_COMMAND") or None,
        tables=tuple(_items(env.get("CDC_TABLES", ""))),
        connections=connections,
    )


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
