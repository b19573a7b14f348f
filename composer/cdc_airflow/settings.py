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
    secret_variables: dict[str, str] = field(default_factory=dict)

    @property
    def operator_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "config": self.config,
            "connections": self.connections,
            "secret_variables": self.secret_variables,
        }
        if self.cdc_command:
            args["cdc_command"] = self.cdc_command
        return args


def from_environment(environ: dict[str, str] | None = None) -> Settings:
    """``CDC_CONFIG``, ``CDC_COMMAND``, ``CDC_TABLES`` (comma-separated), ``CDC_CONNECTIONS``
    (``VAR=conn_id,...``: the registry's ``${VAR}`` from an Airflow connection's URI) and
    ``CDC_SECRET_VARIABLES`` (``VAR=variable_key,...``: e.g. ``CDC_PII_KEY`` from an Airflow
    Variable)."""
    env = os.environ if environ is None else environ
    return Settings(
        config=env.get("CDC_CONFIG") or None,
        cdc_command=env.get("CDC_COMMAND") or None,
        tables=tuple(_items(env.get("CDC_TABLES", ""))),
        connections=_pairs(env, "CDC_CONNECTIONS", "connection_id"),
        secret_variables=_pairs(env, "CDC_SECRET_VARIABLES", "variable_key"),
    )


def _pairs(env: Any, name: str, what: str) -> dict[str, str]:
    pairs = {}
    for item in _items(env.get(name, "")):
        variable, sep, value = item.partition("=")
        if not sep or not variable.strip() or not value.strip():
            raise ValueError(f"{name}: expected VAR={what} items separated by commas, got {item!r}")
        pairs[variable.strip()] = value.strip()
    return pairs


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
