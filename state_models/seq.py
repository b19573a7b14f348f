"""``seq``: the canonical source position (docs/architecture.md §4).

A seq is a lower-case hex string of 16-digit sections joined by ``/`` — the format BigQuery CDC uses
for ``_CHANGE_SEQUENCE_NUMBER``. Because every section has the same width, plain string order is
numeric order section by section, so the warehouses can ``ORDER BY _seq`` on a STRING column.

- PostgreSQL: ``commit-ordering LSN / change LSN``. Raw change LSNs alone are not a total order
  across interleaved transactions; the LSN of the last commit before the change's transaction is.
- MySQL/MariaDB: ``binlog file number / position / row index inside the rows event``.
"""

from __future__ import annotations

import re

SECTION_DIGITS = 16
_MAX = (1 << 64) - 1
#: hex digits per section of a seq's text form
SEQ_SECTION_WIDTH = 16
_SEQ_RE = re.compile(r"^[0-9a-f]{16}(/[0-9a-f]{16})*$")
_PG_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_BINLOG_FILE_RE = re.compile(r"\.(\d+)$")


def make_seq(*sections: int) -> str:
    """Encode non-negative integers (< 2**64) as a seq string."""
    if not sections:
        raise ValueError("a seq needs at least one section")
    out = []
    for s in sections:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0 or s > _MAX:
            raise ValueError(f"seq section must be an integer in [0, 2**64), got {s!r}")
        out.append(format(s, "016x"))
    return "/".join(out)


def parse_seq(seq: str) -> tuple[int, ...]:
    """Decode a seq string back into its integer sections."""
    if not is_seq(seq):
        raise ValueError(f"not a seq (16-hex-digit sections joined by '/'): {seq!r}")
    return tuple(int(part, 16) for part in seq.split("/"))


def is_seq(value: object) -> bool:
    return isinstance(value, str) and bool(_SEQ_RE.match(value))


def pg_lsn_to_int(lsn: str | int | None) -> int:
    """Accept an LSN as an int, a decimal string (Debezium) or ``X/Y`` text (PostgreSQL); None is 0."""
    if lsn is None:
        return 0
    if isinstance(lsn, bool):
        raise ValueError(f"not an LSN: {lsn!r}")
    if isinstance(lsn, int):
        return lsn
    text = str(lsn).strip()
    m = _PG_LSN_RE.match(text)
    if m:
        return (int(m.group(1), 16) << 32) | int(m.group(2), 16)
    if text.isdigit():
        return int(text)
    raise ValueError(f"not a PostgreSQL LSN (expected 'X/Y' hex or a decimal number): {lsn!r}")


def int_to_pg_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def pg_seq(commit_lsn: str | int | None, change_lsn: str | int | None) -> str:
    """Seq of a PostgreSQL change: (LSN that orders its transaction, LSN of the change)."""
    return make_seq(pg_lsn_to_int(commit_lsn), pg_lsn_to_int(change_lsn))


def binlog_file_number(file_name: str) -> int:
    """``mysql-bin.000042`` -> 42. The index is what orders binlog files."""
    m = _BINLOG_FILE_RE.search(file_name or "")
    if not m:
        raise ValueError(f"not a binlog file name (expected '<base>.<number>'): {file_name!r}")
    return int(m.group(1))


def binlog_seq(file_name: str | int, position: int, row: int = 0) -> str:
    """Seq of a MySQL/MariaDB row change: (binlog file number, event position, row in the event)."""
    number = file_name if isinstance(file_name, int) else binlog_file_number(file_name)
    return make_seq(number, int(position), int(row))
