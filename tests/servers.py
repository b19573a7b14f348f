"""Throwaway servers for tests: see ``connectors.local_servers`` (the demo uses them too)."""

from connectors.local_servers import (
    MariaDBServer,
    PostgresServer,
    ServerError,
    free_port,
    mariadb_binaries,
    postgres_bindir,
)

__all__ = [
    "MariaDBServer",
    "PostgresServer",
    "ServerError",
    "free_port",
    "mariadb_binaries",
    "postgres_bindir",
]
