"""PostgreSQL replication slots: their lag, and whether a stored position is still servable.

A slot keeps WAL on the source until its consumer confirms it. An inactive slot (capture stopped)
grows without bound, and a slot that was dropped and recreated behind our back silently skips every
change in between: both are checked here, for ``cdc preflight`` / ``cdc status`` and for the
capture engines before they stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from connectors.capture.base import PositionLostError
from connectors.sources import libpq_dsn, redact, refused, require_dsn
from state_models.errors import CdcError, SourceAccessError, SourceUnavailableError
from state_models.registry import Source, default_slot
from state_models.seq import int_to_pg_lsn, pg_lsn_to_int

#: An inactive slot retaining more than this much WAL is worth a warning.
RETAINED_WARN_BYTES = 1 << 30


@dataclass(frozen=True)
class SlotStatus:
    """One replication slot as ``pg_replication_slots`` reports it, with lag in bytes."""

    slot: str
    exists: bool
    active: bool = False
    restart_lsn: int | None = None
    confirmed_flush_lsn: int | None = None
    current_lsn: int | None = None
    wal_status: str | None = None  # reserved | extended | unreserved | lost

    @property
    def retained_bytes(self) -> int | None:
        """WAL the server keeps for this slot (current position minus the slot's restart point)."""
        if self.current_lsn is None or self.restart_lsn is None:
            return None
        return max(0, self.current_lsn - self.restart_lsn)

    @property
    def lag_bytes(self) -> int | None:
        """WAL written since the consumer last confirmed a position."""
        if self.current_lsn is None or self.confirmed_flush_lsn is None:
            return None
        return max(0, self.current_lsn - self.confirmed_flush_lsn)

    def warnings(self) -> list[str]:
        """What a human should know about this slot (empty when all is well)."""
        if not self.exists:
            return []
        out = []
        if self.wal_status == "lost":
            out.append(
                f"slot {self.slot} lost WAL it still needed (wal_status=lost): changes are gone; "
                "drop the slot and re-snapshot the source"
            )
        retained = self.retained_bytes or 0
        if not self.active and retained > RETAINED_WARN_BYTES:
            out.append(
                f"slot {self.slot} is inactive and retains {retained / 2**20:.0f} MiB of WAL: start "
                "the capture, or drop the slot if the source is retired"
            )
        elif not self.active:
            out.append(
                f"slot {self.slot} is inactive (no capture is reading it); it retains WAL until one does"
            )
        return out


def connect_source(source_name: str, source: Source, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection to a PostgreSQL source, or SourceUnavailableError."""
    dsn = libpq_dsn(require_dsn(source, source_name))
    try:
        return psycopg.connect(dsn, connect_timeout=5, autocommit=True, **kwargs)
    except psycopg.OperationalError as exc:
        raise connection_error(source_name, dsn, str(exc)) from exc


def connection_error(source_name: str, dsn: str, message: str) -> CdcError:
    """A failed PostgreSQL connection as our error: a refusal (wrong password, no grant, unknown
    role or database) is terminal, anything else is the network and is retried."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    reason = lines[0] if lines else "connection failed"
    # libpq leads with `connection to server at "h", port p failed:`; the server's word follows
    reason = reason.rpartition(" failed: ")[2] if "FATAL:" in reason else reason
    if refused(reason):
        return SourceAccessError(
            f"source {source_name!r} at {redact(dsn)} refused the connection: {reason} "
            "(check the user, password and grants in the DSN; `cdc preflight` lists what is needed)"
        )
    return SourceUnavailableError(
        f"source {source_name!r} at {redact(dsn)} is unreachable: {reason}"
    )


def read_slot(conn: psycopg.Connection[Any], slot: str) -> SlotStatus:
    row = conn.execute(
        "SELECT active, restart_lsn::text, confirmed_flush_lsn::text, wal_status, "
        "pg_current_wal_lsn()::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        current = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        return SlotStatus(slot, exists=False, current_lsn=_lsn(current[0] if current else None))
    active, restart, confirmed, wal_status, current = row
    return SlotStatus(
        slot,
        exists=True,
        active=bool(active),
        restart_lsn=_lsn(restart),
        confirmed_flush_lsn=_lsn(confirmed),
        current_lsn=_lsn(current),
        wal_status=wal_status,
    )


def slot_status(source_name: str, source: Source) -> SlotStatus:
    """The status of a PostgreSQL source's replication slot (for ``cdc status`` / ``cdc preflight``)."""
    with connect_source(source_name, source) as conn:
        return read_slot(conn, default_slot(source_name, source))


def check_resumable(source_name: str, slot: SlotStatus, stored_lsn: int | None) -> None:
    """Raise PositionLostError unless the slot can still serve everything after ``stored_lsn``.

    ``stored_lsn`` is the position our durable offset says was delivered (None: never captured, so
    anything goes). The capture confirms a position to the slot only after saving it, so a slot
    whose confirmed position is ahead of ours was recreated (or advanced by someone else), and a
    missing slot was dropped: either way the changes in between are gone from the stream.
    """
    if stored_lsn is None:
        return
    fix = (
        f"re-snapshot the source: stop the capture, delete its offsets (state_dir/offsets/{source_name}.*), "
        "and start it again (it creates a fresh slot and snapshots every table)"
    )
    if not slot.exists:
        raise PositionLostError(
            f"replication slot {slot.slot} of source {source_name!r} is gone, but our offsets say we "
            f"delivered up to {int_to_pg_lsn(stored_lsn)}; a new slot would silently skip the changes "
            f"made since. {fix}"
        )
    if slot.wal_status == "lost":
        raise PositionLostError(
            f"replication slot {slot.slot} of source {source_name!r} lost WAL it still needed "
            f"(wal_status=lost, e.g. max_slot_wal_keep_size exceeded). {fix}"
        )
    if slot.confirmed_flush_lsn is not None and slot.confirmed_flush_lsn > stored_lsn:
        raise PositionLostError(
            f"replication slot {slot.slot} of source {source_name!r} starts at "
            f"{int_to_pg_lsn(slot.confirmed_flush_lsn)}, after our stored position "
            f"{int_to_pg_lsn(stored_lsn)}: it was dropped and recreated (or advanced) behind our "
            f"back, and the changes in between are gone. {fix}"
        )


def _lsn(text: str | None) -> int | None:
    return None if text is None else pg_lsn_to_int(text)
