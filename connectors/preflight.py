"""Checks that a source database is ready for log-based CDC, each failure with its exact fix."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from connectors.capture.slots import read_slot
from connectors.sources import libpq_dsn, mysql_params, redact, require_dsn
from state_models.errors import SourceUnavailableError
from state_models.registry import Source, TableSpec, default_slot, unholdable_columns


@dataclass(frozen=True)
class Check:
    source: str
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"


def preflight(source_name: str, source: Source, state_dir: str | Path | None = None) -> list[Check]:
    """Run every check for one source. A source that cannot be reached is one failed check.

    With ``state_dir``, a binlog capture's stored position is checked against the server too.
    """
    try:
        if source.kind == "postgres":
            return check_postgres(source_name, source)
        return check_mysql(source_name, source, state_dir)
    except SourceUnavailableError as exc:
        return [
            Check(
                source_name,
                "connect",
                "fail",
                str(exc),
                "check the dsn, that the server runs, and the network path",
            )
        ]


# --------------------------------------------------------------------------- PostgreSQL


def check_postgres(source_name: str, source: Source) -> list[Check]:
    dsn = libpq_dsn(require_dsn(source, source_name))
    try:
        conn = psycopg.connect(dsn, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        raise SourceUnavailableError(
            f"cannot connect to {redact(dsn)}: {str(exc).strip()}"
        ) from exc
    checks: list[Check] = []
    add = checks.append
    with conn:
        version = conn.info.server_version
        add(
            Check(
                source_name,
                "connect",
                "ok",
                f"PostgreSQL {version // 10000}.{version % 10000} at {redact(dsn)}",
            )
        )

        def one(sql: str, *params: Any) -> Any:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None

        wal_level = one("SHOW wal_level")
        if wal_level == "logical":
            add(Check(source_name, "wal_level", "ok", "wal_level = logical"))
        else:
            add(
                Check(
                    source_name,
                    "wal_level",
                    "fail",
                    f"wal_level = {wal_level}; logical decoding needs 'logical'",
                    "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL "
                    "(Cloud SQL: set the flag cloudsql.logical_decoding=on)",
                )
            )

        user = one("SELECT current_user")
        can_replicate = one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        if can_replicate:
            add(Check(source_name, "replication privilege", "ok", f"role {user} may replicate"))
        else:
            add(
                Check(
                    source_name,
                    "replication privilege",
                    "fail",
                    f"role {user} has no REPLICATION attribute",
                    f"ALTER ROLE {user} WITH REPLICATION;",
                )
            )

        slot = default_slot(source_name, source)
        max_slots = int(one("SHOW max_replication_slots"))
        used = int(one("SELECT count(*) FROM pg_replication_slots"))
        ours = read_slot(conn, slot)
        if ours.exists:
            retained_mb = (ours.retained_bytes or 0) / 1024 / 1024
            lag_mb = (ours.lag_bytes or 0) / 1024 / 1024
            state = "active" if ours.active else "inactive"
            warnings = ours.warnings()
            if ours.wal_status == "lost":
                add(
                    Check(
                        source_name,
                        "replication slot",
                        "fail",
                        warnings[0],
                        f"SELECT pg_drop_replication_slot('{slot}'); then re-snapshot the source",
                    )
                )
            elif warnings:
                add(
                    Check(
                        source_name,
                        "replication slot",
                        "warn",
                        f"{warnings[0]} (confirmed position {lag_mb:.1f} MiB behind)",
                        "start the capture (`cdc run`) or drop the slot if the source is retired",
                    )
                )
            else:
                add(
                    Check(
                        source_name,
                        "replication slot",
                        "ok",
                        f"slot {slot} exists ({state}, retaining {retained_mb:.1f} MiB of WAL, "
                        f"confirmed position {lag_mb:.1f} MiB behind)",
                    )
                )
        elif used < max_slots:
            add(
                Check(
                    source_name,
                    "replication slot",
                    "ok",
                    f"{max_slots - used} of {max_slots} slots free; {slot} will be created",
                )
            )
        else:
            add(
                Check(
                    source_name,
                    "replication slot",
                    "fail",
                    f"all {max_slots} replication slots are in use",
                    "ALTER SYSTEM SET max_replication_slots = <more>; then restart, or drop an unused slot "
                    "(SELECT slot_name, active FROM pg_replication_slots)",
                )
            )

        senders = int(one("SHOW max_wal_senders"))
        if senders < 1:
            add(
                Check(
                    source_name,
                    "wal senders",
                    "fail",
                    "max_wal_senders = 0",
                    "ALTER SYSTEM SET max_wal_senders = 10; then restart PostgreSQL",
                )
            )

        for t in source.tables:
            schema, table = t.schema_name, t.table_name
            row = conn.execute(
                "SELECT c.relreplident, "
                "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
                "has_table_privilege(c.oid, 'SELECT') "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (schema, table),
            ).fetchone()
            name = f"table {t.name}"
            if row is None:
                add(
                    Check(
                        source_name,
                        name,
                        "fail",
                        f"{t.name} does not exist",
                        "create the table or fix its name in the registry",
                    )
                )
                continue
            ident, has_pk, can_select = row
            columns = conn.execute(
                "SELECT a.attname, a.atttypid = 'numeric'::regtype FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = "
                "c.relnamespace WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 "
                "AND NOT a.attisdropped ORDER BY a.attnum",
                (schema, table),
            ).fetchall()
            add(column_names_check(source_name, t, [r[0] for r in columns]))
            numeric = [r[0] for r in columns if r[1]]
            mode = (source.debezium or {}).get("decimal.handling.mode", "precise")
            if source.engine == "debezium" and numeric and mode == "precise":
                add(
                    Check(
                        source_name,
                        f"numeric columns of {t.name}",
                        "warn",
                        f"Debezium's precise decimal mode sends numeric 'NaN' and 'Infinity' as "
                        f"null, so such a value in {', '.join(numeric)} would be stored as null "
                        "(pgoutput sets the change aside as a dead letter instead)",
                        "with the columns declared (cdc register), set debezium: "
                        "{decimal.handling.mode: string} on the source: such a value then arrives "
                        "as text and is dead-lettered; or forbid it in the source (CHECK (col <> "
                        "'NaN'))",
                    )
                )
            ident = ident.decode() if isinstance(ident, bytes) else ident
            quoted = f"{_pg_ident(schema)}.{_pg_ident(table)}"
            if not can_select:
                add(
                    Check(
                        source_name,
                        name,
                        "fail",
                        f"role {user} cannot SELECT {t.name} (needed for the snapshot)",
                        f"GRANT SELECT ON {quoted} TO {user};",
                    )
                )
            elif ident == "n":
                add(
                    Check(
                        source_name,
                        name,
                        "fail",
                        "REPLICA IDENTITY NOTHING: updates and deletes carry no key",
                        f"ALTER TABLE {quoted} REPLICA IDENTITY FULL;",
                    )
                )
            elif ident == "d" and not has_pk:
                add(
                    Check(
                        source_name,
                        name,
                        "fail",
                        "REPLICA IDENTITY DEFAULT without a primary key: updates and deletes carry no key",
                        f"ALTER TABLE {quoted} ADD PRIMARY KEY (...); or ALTER TABLE {quoted} REPLICA IDENTITY FULL;",
                    )
                )
            elif ident == "d":
                add(
                    Check(
                        source_name,
                        name,
                        "ok",
                        "REPLICA IDENTITY DEFAULT (deletes carry the key; for full before-images use FULL)",
                    )
                )
            else:
                label = {"f": "FULL", "i": "USING INDEX"}.get(ident, ident)
                add(Check(source_name, name, "ok", f"REPLICA IDENTITY {label}"))
    return checks


def _pg_ident(name: str) -> str:
    return name if re.match(r"^[a-z_][a-z0-9_]*$", name) else '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- MySQL / MariaDB


def check_mysql(
    source_name: str, source: Source, state_dir: str | Path | None = None
) -> list[Check]:
    import pymysql

    params = mysql_params(require_dsn(source, source_name))
    try:
        conn = pymysql.connect(connect_timeout=5, **params)
    except pymysql.err.OperationalError as exc:
        raise SourceUnavailableError(
            f"cannot connect to {params['host']}:{params['port']} as {params['user']}: {exc.args[-1]}"
        ) from exc
    checks: list[Check] = []
    add = checks.append
    with conn, conn.cursor() as cur:

        def variable(name: str) -> str | None:
            cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
            row = cur.fetchone()
            return None if row is None else str(row[1])

        cur.execute("SELECT VERSION()")
        version = cur.fetchone()[0]
        mariadb = "mariadb" in version.lower()
        add(
            Check(
                source_name,
                "connect",
                "ok",
                f"{'MariaDB' if mariadb else 'MySQL'} {version} at {params['host']}:{params['port']}",
            )
        )

        log_bin = (variable("log_bin") or "OFF").upper()
        if log_bin in ("ON", "1"):
            add(Check(source_name, "log_bin", "ok", "binary log is on"))
        else:
            add(
                Check(
                    source_name,
                    "log_bin",
                    "fail",
                    "binary log is off",
                    "start the server with log_bin (my.cnf [mysqld]: log_bin = mysql-bin, server_id = 1) and restart",
                )
            )

        if log_bin in ("ON", "1"):
            add(_binlog_check(source_name, source, cur, mariadb, state_dir))

        expected = {
            "binlog_format": ("ROW", "row events carry the changed rows; STATEMENT/MIXED do not"),
            "binlog_row_image": ("FULL", "before and after images with every column"),
            "binlog_row_metadata": (
                "FULL",
                "column names in the binlog (MySQL 8.0.14+, MariaDB 10.5+)",
            ),
        }
        for name, (want, why) in expected.items():
            have = variable(name)
            if have is None:
                add(
                    Check(
                        source_name,
                        name,
                        "warn",
                        f"{name} is not supported by this server ({why})",
                        "upgrade to MySQL 8.0.14+ / MariaDB 10.5+ for column names in the binlog",
                    )
                )
            elif have.upper() == want:
                add(Check(source_name, name, "ok", f"{name} = {have}"))
            else:
                add(
                    Check(
                        source_name,
                        name,
                        "fail",
                        f"{name} = {have}; expected {want}: {why}",
                        f"SET GLOBAL {name} = '{want}'; and in my.cnf [mysqld]: {name} = {want}",
                    )
                )

        cur.execute("SHOW GRANTS FOR CURRENT_USER()")
        grants = " ".join(str(r[0]) for r in cur.fetchall()).upper()
        user = params["user"]
        if "ALL PRIVILEGES ON *.*" in grants:
            add(Check(source_name, "privileges", "ok", f"{user} has ALL PRIVILEGES"))
        else:
            needed = ["REPLICATION SLAVE", "SELECT"]
            needed.append("BINLOG MONITOR" if mariadb else "REPLICATION CLIENT")
            missing = [
                p
                for p in needed
                if p not in grants
                and not (p == "BINLOG MONITOR" and "REPLICATION CLIENT" in grants)
            ]
            if missing:
                add(
                    Check(
                        source_name,
                        "privileges",
                        "fail",
                        f"{user} lacks {', '.join(missing)}",
                        f"GRANT {', '.join(missing)} ON *.* TO '{user}'@'%';",
                    )
                )
            else:
                add(Check(source_name, "privileges", "ok", f"{user} has {', '.join(needed)}"))

        for t in source.tables:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                (t.schema_name, t.table_name),
            )
            name = f"table {t.name}"
            if not cur.fetchone()[0]:
                add(
                    Check(
                        source_name,
                        name,
                        "fail",
                        f"{t.name} does not exist",
                        "create the table or fix its name in the registry",
                    )
                )
                continue
            cur.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = %s ORDER BY ordinal_position",
                (t.schema_name, t.table_name),
            )
            add(column_names_check(source_name, t, [r[0] for r in cur.fetchall()]))
            cur.execute(
                # statistics, not table_constraints: MariaDB hides constraints from a SELECT-only user
                "SELECT COUNT(*) FROM information_schema.statistics "
                "WHERE table_schema = %s AND table_name = %s AND index_name = 'PRIMARY'",
                (t.schema_name, t.table_name),
            )
            if cur.fetchone()[0] or t.primary_key:
                add(
                    Check(
                        source_name,
                        name,
                        "ok",
                        "exists" + ("" if not t.primary_key else f", key {t.primary_key}"),
                    )
                )
            else:
                add(
                    Check(
                        source_name,
                        name,
                        "fail",
                        "no primary key and none declared in the registry",
                        f"ALTER TABLE {t.name} ADD PRIMARY KEY (...); or declare primary_key: in the registry",
                    )
                )
    return checks


def column_names_check(source_name: str, table: TableSpec, names: list[str]) -> Check:
    """Can the state table hold every column of the live table under its name (``rename:``)?"""
    bad = unholdable_columns(table, names)
    if not bad:
        return Check(
            source_name, f"columns of {table.name}", "ok", f"{len(names)} columns, names distinct"
        )
    fixes = [b.rename_entry() for b in bad if b.fix is not None]
    return Check(
        source_name,
        f"columns of {table.name}",
        "fail",
        "; ".join(b.why for b in bad) + " (every change of the table would be dead-lettered)",
        f"under {table.name} in the registry: {', '.join(fixes)}"
        if fixes
        else "rename to another name under rename: in the registry",
    )


def _binlog_check(
    source_name: str, source: Source, cur: Any, mariadb: bool, state_dir: str | Path | None
) -> Check:
    """Where the server's binlog stands, how long it is kept, and (given the state dir) whether
    the binlog capture's stored position is still on the server and how far behind it is."""
    from connectors.capture.binlogs import read_binlogs, resnapshot_fix

    stored = None
    if state_dir is not None and source.engine == "binlog":
        from connectors.capture.offsets import OffsetStore

        try:
            stored = OffsetStore(state_dir, source_name, "binlog").load()
        except Exception:  # an unreadable offset file is the capture's to report
            stored = None
    status = read_binlogs(cur, mariadb, stored)
    kept = sum(size for _, size in status.files)
    cur.execute(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
        "('expire_logs_days', 'binlog_expire_logs_seconds')"
    )
    expiry = ", ".join(f"{k}={v}" for k, v in cur.fetchall())
    detail = (
        f"{status.describe()}; {len(status.files)} binlog file(s), {kept / 2**20:.1f} MiB kept"
        + (f" ({expiry})" if expiry else "")
    )
    if status.purged:
        return Check(
            source_name,
            "binlog position",
            "fail",
            status.warnings(source_name)[0],
            resnapshot_fix(source_name),
        )
    warnings = status.warnings(source_name)
    if warnings:
        return Check(
            source_name,
            "binlog position",
            "warn",
            f"{detail}; {warnings[0]}",
            "start the capture (`cdc run`) so that it catches up",
        )
    return Check(source_name, "binlog position", "ok", detail)
