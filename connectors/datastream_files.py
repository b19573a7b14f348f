"""Read the files Datastream writes to GCS: JSON lines (optionally gzip) or Avro.

Each file becomes a ``FileBatch``: the decoded events, and the records that could not be decoded
with the file and the place in it (line and byte offset for JSON, block offset and index for Avro)
so the caller can dead-letter them. A bad record never stops the rest of the file. Paths are local
files or any fsspec URL (``gs://bucket/...`` with gcsfs installed).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from connectors.deadletter import NewDeadLetter
from state_models.datastream import (
    DatastreamChange,
    SourceKind,
    decode_datastream,
    fold_update_halves,
)
from state_models.errors import DecodeError, TerminalError
from state_models.events import ChangeEvent
from state_models.tables import TableResolver

FileFormat = Literal["json", "avro"]
_AVRO_MAGIC = b"Obj\x01"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Rejected:
    """A record that could not be decoded, and where it is."""

    file: str
    where: str  # "line 3 (byte 812)" or "block at byte 4096, record 2"
    error: TerminalError
    offset: int | None = None  # byte offset of the line, or of the Avro block, when known

    @property
    def reason(self) -> str:
        return self.error.reason

    @property
    def raw(self) -> bytes | str | None:
        return self.error.raw

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.reason}"

    def dead_letter(self, source: str | None, table: str | None = None) -> NewDeadLetter:
        """This record as a dead letter: the reason, the record as read, the file and offset."""
        context: dict[str, Any] = {"stage": "decode", "file": self.file, "where": self.where}
        if self.offset is not None:
            context["offset"] = self.offset
        return NewDeadLetter.from_error(self.error, source=source, table=table, context=context)


@dataclass
class FileBatch:
    """Everything one Datastream file holds."""

    file: str
    format: FileFormat
    events: list[ChangeEvent] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    records: int = 0


def read_datastream_file(
    path: str,
    resolve: TableResolver,
    *,
    kind: SourceKind | None = None,
    keep_raw: bool = True,
) -> FileBatch:
    """Decode one Datastream output file (local path or fsspec URL)."""
    with _open(path) as fh:
        return read_datastream_stream(fh, path, resolve, kind=kind, keep_raw=keep_raw)


def read_datastream_stream(
    fh: BinaryIO,
    name: str,
    resolve: TableResolver,
    *,
    kind: SourceKind | None = None,
    keep_raw: bool = True,
) -> FileBatch:
    """Decode an already opened Datastream file; ``name`` is what rejects are reported against."""
    head = fh.read(4)
    fh.seek(0)
    fmt: FileFormat = "avro" if head.startswith(_AVRO_MAGIC) else "json"
    batch = FileBatch(file=name, format=fmt)
    records = _avro_records(fh) if fmt == "avro" else _json_records(fh, head)
    changes: list[DatastreamChange] = []
    for where, offset, record in records:
        batch.records += 1
        if isinstance(record, TerminalError):
            batch.rejected.append(Rejected(name, where, record, offset))
            continue
        try:
            changes.append(decode_datastream(record, resolve, kind=kind, keep_raw=keep_raw))
        except TerminalError as exc:
            batch.rejected.append(Rejected(name, where, exc, offset))
    batch.events = fold_update_halves(changes)
    return batch


def _open(path: str) -> Any:
    if "://" in path and not path.startswith("file://"):
        import fsspec  # gcsfs for gs://; only needed for remote files

        return fsspec.open(path, "rb").open()
    return open(path.removeprefix("file://"), "rb")


def _json_records(fh: BinaryIO, head: bytes) -> Iterator[tuple[str, int | None, Any]]:
    stream: BinaryIO = gzip.GzipFile(fileobj=fh) if head.startswith(_GZIP_MAGIC) else fh  # type: ignore[assignment]
    offset, line_no = 0, 0
    while True:
        try:
            line = stream.readline()
        except (OSError, EOFError, zlib.error) as exc:
            # a truncated or corrupt gzip member: what was read stands, the rest is one reject
            yield (
                f"line {line_no + 1} (byte {offset})",
                offset,
                DecodeError(f"file unreadable from here on: {exc}"),
            )
            return
        if not line:
            return
        line_no += 1
        at = offset
        where = f"line {line_no} (byte {at})"
        offset += len(line)
        if not line.strip():
            continue
        try:
            yield where, at, line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield where, at, DecodeError(f"not UTF-8 text: {exc}", raw=line)


def _avro_records(fh: BinaryIO) -> Iterator[tuple[str, int | None, Any]]:
    import fastavro

    try:
        blocks = fastavro.block_reader(fh)
    except (ValueError, EOFError, OSError) as exc:
        yield "header", 0, DecodeError(f"not a readable Avro file: {exc}")
        return
    offset = 0
    try:
        for block in blocks:
            offset = block.offset
            for i, record in enumerate(block):
                yield f"block at byte {block.offset}, record {i}", block.offset, record
    except (ValueError, EOFError, OSError, zlib.error, StopIteration) as exc:
        yield (
            f"block at byte {offset}",
            offset,
            DecodeError(f"Avro file unreadable from here on: {type(exc).__name__}: {exc}"),
        )


def read_datastream_bytes(
    data: bytes,
    name: str,
    resolve: TableResolver,
    *,
    kind: SourceKind | None = None,
    keep_raw: bool = True,
) -> FileBatch:
    """Decode a file already in memory (e.g. the body of a GCS object notification)."""
    return read_datastream_stream(io.BytesIO(data), name, resolve, kind=kind, keep_raw=keep_raw)
