"""A MySQL/MariaDB server's binary logs: where they stand, how far a stored position lags behind,
and whether that position can still be served.

The binlog is the source's only record of past changes; the server deletes old files on its own
(``binlog_expire_logs_seconds`` / ``expire_logs_days``) or on ``PURGE BINARY LOGS``, whether or not a
reader still needs them. A stored position in a purged file means the changes in between are gone:
the capture must stop and the user re-snapshot. This module answers that for the capture (before it
streams) and shows the lag in ``cdc status`` / ``cdc preflight``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from connectors.capture.base import PositionLostError
from connectors.sources import mysql_params, require_dsn
from state_models.errors import SourceUnavailableError
from state_models.registry import Source
from state_models.seq import binlog_file_number

#: Binlog bytes written since the stored position worth a warning (the capture is far behind).
LAG_WARN_BYTES = 1 << 30


def default_server_id(source_name: str) -> int:
    """A stable replica server id for a source: MySQL/MariaDB know replicas by it, and a second
    reader with the same id makes the server drop the first. Set ``server_id`` to choose one."""
    return 0x40000000 + zlib.crc32(source_name.encode()) % 0x3FFFFFFF


def resnapshot_fix(source_name: str) -> str:
    return (
        f"re-snapshot the source: stop the capture, delete its offsets "
        f"(state_dir/offsets/{source_name}.json) and start it again (it snapshots every table and "
        "streams from there); keep binlogs longer than the longest capture outage "
        "(binlog_expire_logs_seconds, MariaDB expire_logs_days) so that it does not recur"
    )


@dataclass(frozen=True)
class BinlogStatus:
    """The server's binlog files and current position, against a stored capture position."""

    files: list[tuple[str, int]]  # (name, size) oldest first, as SHOW BINARY LOGS lists them
    current_file: str | None
    current_pos: int | None
    gtid_pos: str | None  # MariaDB gtid_binlog_pos / MySQL gtid_executed
    stored: dict[str, Any] | None = None
    warnings_: list[str] = field(default_factory=list)

    @property
    def purged(self) -> bool:
        """The stored file is no longer on the server (file/position resume is impossible)."""
        if not self.stored or not self.stored.get("file") or not self.files:
            return False
        return self.stored["file"] not in {name for name, _ in self.files}

    @property
    def lag_bytes(self) -> int | None:
        """Binlog bytes written after the stored position (None when unknown or purged)."""
        if not self.stored or self.purged or not self.stored.get("file"):
            return None
        file, pos = self.stored["file"], int(self.stored.get("pos") or 0)
        total, seen = 0, False
        for name, size in self.files:
            if name == file:
                seen = True
                total += max(0, size - pos)
            elif seen:
                total += size
        return total if seen else None

    def describe(self) -> str:
        here = f"{self.current_file}:{self.current_pos}" if self.current_file else "unknown"
        text = f"server at {here}" + (f" (gtid {self.gtid_pos})" if self.gtid_pos else "")
        if self.stored:
            text += f"; stored position {self.stored.get('file')}:{self.stored.get('pos')}"
            lag = self.lag_bytes
            if lag is not None:
                text += f", {lag / 2**20:.1f} MiB behind"
        return text

    def warnings(self, source_name: str) -> list[str]:
        out = list(self.warnings_)
        if self.purged and self.stored:
            oldest = self.files[0][0] if self.files else "none"
            out.append(
                f"binlog file {self.stored['file']} of the stored position is purged from the "
                f"server (oldest is {oldest}): the capture cannot resume; "
                + resnapshot_fix(source_name)
            )
        lag = self.lag_bytes
        if lag is not None and lag > LAG_WARN_BYTES:
            out.append(
                f"the capture is {lag / 2**20:.0f} MiB of binlog behind; the server may purge "
                "those files before it catches up"
            )
        return out


def read_binlogs(cur: Any, mariadb: bool, stored: dict[str, Any] | None = None) -> BinlogStatus:
    """The binlog status through an open PyMySQL cursor."""
    cur.execute("SHOW BINARY LOGS")
    files = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
    file, pos = master_status(cur)
    cur.execute("SELECT @@GLOBAL.gtid_binlog_pos" if mariadb else "SELECT @@GLOBAL.gtid_executed")
    row = cur.fetchone()
    gtid = str(row[0]).replace("\n", "") if row and row[0] else None
    return BinlogStatus(files, file, pos, gtid, stored)


def master_status(cur: Any) -> tuple[str | None, int | None]:
    """(file, position) the server writes next: SHOW BINARY LOG STATUS (MySQL 8.2+), else the
    older SHOW MASTER STATUS (MariaDB, MySQL before 8.4)."""
    import pymysql

    try:
        cur.execute("SHOW BINARY LOG STATUS")
    except pymysql.err.ProgrammingError:
        cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if not row:
        return None, None
    return str(row[0]), int(row[1])


def check_resumable(source_name: str, status: BinlogStatus, by_gtid: bool) -> None:
    """Raise PositionLostError unless the server still has the binlog our stored position is in.

    With GTID positions the server itself decides (it refuses a GTID state it no longer has, which
    the stream maps to PositionLostError); here only file/position resumes are checked.
    """
    stored = status.stored
    if not stored or by_gtid or not stored.get("file"):
        return
    if status.purged:
        oldest = status.files[0][0] if status.files else "none"
        raise PositionLostError(
            f"source {source_name!r}: the stored binlog position {stored['file']}:{stored.get('pos')} "
            f"is in a file the server no longer has (its oldest binlog is {oldest}: purged by "
            "PURGE BINARY LOGS or binlog expiry); the changes in between are gone from the log and "
            f"continuing would silently skip them. {resnapshot_fix(source_name)}"
        )
    if status.current_file and binlog_file_number(stored["file"]) > binlog_file_number(
        status.current_file
    ):
        raise PositionLostError(
            f"source {source_name!r}: the stored binlog position {stored['file']}:{stored.get('pos')} "
            f"is ahead of the server ({status.current_file}:{status.current_pos}): the server's "
            f"binlogs were reset (RESET MASTER) or this is another server. {resnapshot_fix(source_name)}"
        )


def binlog_status(
    source_name: str, source: Source, stored: dict[str, Any] | None = None
) -> BinlogStatus:
    """Connect to a MySQL/MariaDB source and read its binlog status (``cdc status``, preflight)."""
    import pymysql

    params = mysql_params(require_dsn(source, source_name))
    params.pop("database", None)
    try:
        # read/write timeouts too: a frozen server or network path must not hang `cdc status`
        conn = pymysql.connect(connect_timeout=5, read_timeout=5, write_timeout=5, **params)
    except pymysql.err.OperationalError as exc:
        raise SourceUnavailableError(
            f"cannot connect to source {source_name!r} at {params['host']}:{params['port']}: "
            f"{exc.args[-1]}"
        ) from exc
    with conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        mariadb = "mariadb" in str(cur.fetchone()[0]).lower()
        return read_binlogs(cur, mariadb, stored)


__all__ = [
    "BinlogStatus",
    "binlog_status",
    "check_resumable",
    "default_server_id",
    "master_status",
    "read_binlogs",
    "resnapshot_fix",
]
