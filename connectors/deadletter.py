"""The dead-letter store: events we could not apply, kept with the reason and the raw message.

Nothing is ever dropped silently. Whatever cannot be applied (a malformed message, an unregistered
table, a value that does not fit its column) is written here and the command says so; a person
fixes the cause and re-drives the entry (``cdc dead-letters ls|show|retry``).

Layout: JSON Lines files in one folder (``<state_dir>/dead_letters`` by default), one file per
``put_many`` call, named ``<UTC time>-<counter>-<random>.jsonl`` so that the folder lists in the order the
letters arrived. Files are created whole (written to a temporary name, then renamed), so a reader
never sees half a file and writers never append to each other's files. ``remove`` rewrites the one
file concerned the same way. One line is one :class:`DeadLetter`::

    {"id": "20261126T101500123456Z-000000-3f9a01.0", "at": "2026-11-26T10:15:00.123456Z",
     "reason": "column 'amount': ...", "error_type": "SchemaChangeError",
     "source": "billing", "table": "billing.public.subscriptions",
     "raw": "<the message as received>", "raw_encoding": "text", "context": {"file": "x.jsonl", "line": 7}}

``raw`` is the exact message text; a message that is not UTF-8 is kept as base64
(``raw_encoding: "base64"``), so a retry can feed the original bytes back to the decoder.

Delivery is at least once, so the same failure can be reported twice (a Pub/Sub message redelivered
after its ack deadline, a bundle retried, a batch re-read after a crash). Each letter carries a
``fingerprint``, a hash of everything but its id and time (reason, type, source, table, raw message,
context such as the event's ``seq`` or a file and offset, but not the Pub/Sub message id or publish
time, which change when a publisher sends the same bytes again); the store lists a fingerprint once,
the earliest copy with ``copies`` saying how often it came, and ``remove`` takes every copy.
"""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import hashlib
import itertools
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from connectors.capture.offsets import write_atomically
from state_models.errors import CdcError, ConfigError, TerminalError
from state_models.pii import DEFAULT_KEY_ENV, environment_key
from state_models.registry import Registry, table_infos
from state_models.tables import TableInfo
from state_models.types import format_timestamp

FOLDER_NAME = "dead_letters"
#: Context fields that differ between two deliveries of the same content (a message republished
#: after a failed acknowledgement gets a new id and time): left out of the fingerprint.
_DELIVERY_FIELDS = frozenset({"message_id", "publish_time", "delivery_attempt", "ack_id"})
_sequence = itertools.count()


def default_folder(state_dir: str | os.PathLike[str]) -> Path:
    """Where a registry's dead letters live: ``<state_dir>/dead_letters``."""
    return Path(state_dir) / FOLDER_NAME


@dataclass(frozen=True)
class NewDeadLetter:
    """What a caller hands in; the store adds ``id`` and ``at``."""

    reason: str
    error_type: str
    raw: str | bytes | None
    source: str | None = None
    table: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_error(
        cls,
        error: TerminalError,
        *,
        raw: str | bytes | None = None,
        source: str | None = None,
        table: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> NewDeadLetter:
        """From a terminal error; its own ``raw`` is used unless one is given."""
        return cls(
            reason=error.reason,
            error_type=type(error).__name__,
            raw=raw if raw is not None else error.raw,
            source=source,
            table=table if table is not None else error.table,
            context=dict(context or {}),
        )

    def fingerprint(self) -> str:
        """Equal for two reports of the same failure of the same message (see the module doc)."""
        raw, encoding = _raw_for_storage(self.raw)
        identity = [
            self.reason,
            self.error_type,
            self.source,
            self.table,
            raw,
            encoding,
            {k: v for k, v in self.context.items() if k not in _DELIVERY_FIELDS},
        ]
        text = json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class DeadLetter:
    """One stored dead letter."""

    id: str
    at: str  # ISO-8601 UTC, microseconds
    reason: str
    error_type: str
    source: str | None
    table: str | None
    raw: str | None
    raw_encoding: str  # "text" | "base64" | "sealed" (see ``Sealing``)
    context: dict[str, Any]
    fingerprint: str | None = None  # None in files written before fingerprints existed
    copies: int = 1  # how many times this failure was reported (set by ``list``, not stored)

    @property
    def sealed(self) -> bool:
        return self.raw_encoding == SEALED

    def raw_bytes(self) -> bytes | None:
        """The original message as bytes, whatever encoding it was stored in (a sealed one is
        opened with the PII key from this process's environment)."""
        if self.raw is None:
            return None
        if self.raw_encoding == "base64":
            return base64.b64decode(self.raw)
        if self.raw_encoding == SEALED:
            return unseal(self.raw, self.context.get("pii_key_env"))
        return self.raw.encode("utf-8")

    def raw_text(self) -> str | None:
        """The original message as text (non-UTF-8 bytes replaced)."""
        data = self.raw_bytes()
        return None if data is None else data.decode("utf-8", errors="replace")


class DeadLetterSink(Protocol):
    """Where a step hands the letters it could not apply: the store, or a Beam step's collector
    that emits them downstream (``merge_jobs.transforms``)."""

    def put_many(self, letters: Iterable[NewDeadLetter]) -> builtins.list[DeadLetter]: ...


class DeadLetterNotFound(CdcError):
    """No dead letter has that id."""


class DeadLetterStore:
    """Dead letters as JSONL files in ``folder`` (created on first write): a local folder, or a
    ``gs://bucket/prefix`` (any fsspec URL) for jobs whose workers share no disk (Dataflow)."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        clock: Callable[[], dt.datetime] | None = None,
        sealing: Sealing | None = None,
    ):
        text = os.fspath(folder)
        self.sealing = sealing
        self._files_at: _Folder = _ObjectFolder(text) if "://" in text else _LocalFolder(text)
        self.folder: Path | str = text if "://" in text else Path(text)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def __repr__(self) -> str:
        return f"DeadLetterStore({str(self.folder)!r})"

    # ----------------------------------------------------------------- writing

    def put(
        self,
        reason: str,
        error_type: str,
        raw: str | bytes | None,
        source: str | None = None,
        table: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> DeadLetter:
        """Store one dead letter; returns it with its id."""
        [letter] = self.put_many(
            [NewDeadLetter(reason, error_type, raw, source, table, dict(context or {}))]
        )
        return letter

    def put_many(self, letters: Iterable[NewDeadLetter]) -> builtins.list[DeadLetter]:
        """Store several dead letters in one new file (atomically); returns them with their ids."""
        pending = list(letters)
        if not pending:
            return []
        now = self._clock().astimezone(dt.UTC)
        # the counter keeps one process's files in call order when the clock does not move
        stem = f"{now:%Y%m%dT%H%M%S%fZ}-{next(_sequence):06d}-{secrets.token_hex(3)}"
        at = format_timestamp(now)
        if self.sealing is not None:
            pending = [self.sealing.seal(letter) for letter in pending]
        stored = [_stored(f"{stem}.{i}", at, letter) for i, letter in enumerate(pending)]
        self._write(self._files_at.path(stem), stored)
        return stored

    # ----------------------------------------------------------------- reading

    def list(self, *, source: str | None = None, table: str | None = None) -> list[DeadLetter]:
        """Every dead letter, oldest first (optionally only one source's or one table's); a failure
        reported more than once is listed once, its earliest copy, with ``copies`` counting them."""
        first: dict[str, DeadLetter] = {}
        for letter in self._distinct():
            if (source is None or letter.source == source) and (
                table is None or letter.table == table
            ):
                first[letter.id] = letter
        return list(first.values())

    def show(self, letter_id: str) -> DeadLetter:
        """One dead letter by id; ``DeadLetterNotFound`` names the closest ids if it is not there."""
        for _, letter in self._entries(_file_of(letter_id)):
            if letter.id == letter_id:
                return letter
        raise self._not_found(letter_id)

    def __len__(self) -> int:
        return sum(1 for _ in self._distinct())

    def _distinct(self) -> Iterator[DeadLetter]:
        seen: dict[str, DeadLetter] = {}
        order: list[str] = []
        for _, letter in self._entries():
            key = letter.fingerprint or letter.id
            if key in seen:
                seen[key] = replace(seen[key], copies=seen[key].copies + 1)
            else:
                seen[key] = letter
                order.append(key)
        return (seen[key] for key in order)

    # ----------------------------------------------------------------- removing

    def remove(self, letter_ids: Iterable[str]) -> int:
        """Remove dead letters (after a successful retry) with every copy of each; returns how many
        distinct letters were removed."""
        wanted = set(letter_ids)
        if not wanted:
            return 0
        # the fingerprints of the ids asked for: their copies (in other files) go as well
        gone = {
            letter.fingerprint or letter.id for _, letter in self._entries() if letter.id in wanted
        }
        by_file: dict[str, set[str]] = {}
        for path, letter in self._entries():
            if (letter.fingerprint or letter.id) in gone:
                by_file.setdefault(path, set()).add(letter.id)
        for path, ids in by_file.items():
            kept = [letter for letter in self._read(path) if letter.id not in ids]
            if kept:
                self._write(path, kept)
            else:
                self._files_at.remove(path)
        return len(gone)

    # ----------------------------------------------------------------- files

    def _entries(self, stem: str | None = None) -> Iterator[tuple[str, DeadLetter]]:
        for path in self._files_at.files(stem):
            for letter in self._read(path):
                yield path, letter

    def _read(self, path: str) -> Iterator[DeadLetter]:
        # one letter per "\n": str.splitlines() would also split inside a letter at U+2028,
        # U+2029 or U+0085, which json.dumps(ensure_ascii=False) writes as they are
        for number, line in enumerate(self._files_at.read(path).split("\n"), 1):
            if not line.strip():
                continue
            try:
                yield DeadLetter(**json.loads(line))
            except (ValueError, TypeError) as exc:
                raise CdcError(
                    f"{path}:{number}: not a dead letter ({exc}); the file was edited by hand?"
                ) from exc

    def _write(self, path: str, letters: Iterable[DeadLetter]) -> None:
        text = "".join(
            json.dumps(_for_file(letter), ensure_ascii=False, default=str) + "\n"
            for letter in letters
        )
        self._files_at.write(path, text.encode("utf-8"))

    def _not_found(self, letter_id: str) -> DeadLetterNotFound:
        import difflib

        known = [letter.id for _, letter in self._entries()]
        close = difflib.get_close_matches(letter_id, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return DeadLetterNotFound(f"no dead letter {letter_id!r} in {self.folder}{hint}")


class _Folder(Protocol):
    """Where the JSONL files are: the only place a local folder and an object store differ."""

    def path(self, stem: str) -> str: ...
    def files(self, stem: str | None = None) -> builtins.list[str]: ...
    def read(self, path: str) -> str: ...
    def write(self, path: str, data: bytes) -> None: ...
    def remove(self, path: str) -> None: ...


class _LocalFolder:
    def __init__(self, folder: str):
        self.folder = Path(folder)

    def path(self, stem: str) -> str:
        return str(self.folder / f"{stem}.jsonl")

    def files(self, stem: str | None = None) -> builtins.list[str]:
        if not self.folder.is_dir():
            return []
        if stem is not None:
            path = self.folder / f"{stem}.jsonl"
            return [str(path)] if path.exists() else []
        return [str(p) for p in sorted(self.folder.glob("*.jsonl"))]

    def read(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def write(self, path: str, data: bytes) -> None:
        write_atomically(Path(path), data)  # temporary file, fsync, rename

    def remove(self, path: str) -> None:
        Path(path).unlink()


class _ObjectFolder:
    """A ``gs://`` prefix: an object becomes visible only when its upload completes, so a file is
    written whole by one upload, and replaced (``remove``) by another."""

    def __init__(self, url: str):
        # as for the changelog (connectors.changelog.storage): gcsfs's bucket-type probe hangs
        # against emulators and plain buckets do not need it; read when gcsfs is first imported
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import fsspec

        self.url = url.rstrip("/")
        self.fs, base = fsspec.core.url_to_fs(self.url)
        self.base = str(base).rstrip("/")

    def path(self, stem: str) -> str:
        return f"{self.base}/{stem}.jsonl"

    def files(self, stem: str | None = None) -> builtins.list[str]:
        self.fs.invalidate_cache(self.base)
        if stem is not None:
            return [self.path(stem)] if self.fs.exists(self.path(stem)) else []
        return sorted(self.fs.glob(f"{self.base}/*.jsonl"))

    def read(self, path: str) -> str:
        return bytes(self.fs.cat_file(path)).decode("utf-8")

    def write(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def remove(self, path: str) -> None:
        self.fs.rm_file(path)


def _for_file(letter: DeadLetter) -> dict[str, Any]:
    record = asdict(letter)
    del record["copies"]  # a property of the listing, not of the letter
    return record


def _file_of(letter_id: str) -> str:
    return letter_id.rsplit(".", 1)[0]


def _stored(letter_id: str, at: str, letter: NewDeadLetter) -> DeadLetter:
    if isinstance(letter, _SealedLetter):
        raw, encoding = (None if letter.raw is None else str(letter.raw)), SEALED
    else:
        raw, encoding = _raw_for_storage(letter.raw)
    return DeadLetter(
        id=letter_id,
        at=at,
        reason=letter.reason,
        error_type=letter.error_type,
        source=letter.source,
        table=letter.table,
        raw=raw,
        raw_encoding=encoding,
        context=dict(letter.context),
        fingerprint=letter.fingerprint(),
    )


def _raw_for_storage(raw: str | bytes | None) -> tuple[str | None, str]:
    """The original message as stored: UTF-8 text when it is that, else base64 of its exact bytes
    (bytes that are not UTF-8; text holding lone surrogates, kept as the bytes they stood for)."""
    if raw is None:
        return None, "text"
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")
            return raw, "text"
        except UnicodeEncodeError:
            try:
                data = raw.encode("utf-8", "surrogateescape")  # bytes decoded with surrogateescape
            except UnicodeEncodeError:
                data = raw.encode("utf-8", "surrogatepass")
            return base64.b64encode(data).decode("ascii"), "base64"
    try:
        return bytes(raw).decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(bytes(raw)).decode("ascii"), "base64"


# --------------------------------------------------------------------------- sealing (pii:)

SEALED = "sealed"
_SEAL_PURPOSE = b"dead letters"
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


@dataclass(frozen=True)
class _SealedLetter(NewDeadLetter):
    """A letter whose ``raw`` is already the sealed text."""


@dataclass(frozen=True)
class Sealing:
    """Dead letters of tables with ``pii:`` columns, and of a source holding such tables when the
    letter names no table (a line that could not be parsed): their original message is stored
    sealed (AES-256-GCM under a key derived from the PII key, so whoever holds the key can still
    retry them), and their reason shows no quoted value but the table's column names."""

    tables: frozenset[str]
    sources: frozenset[str]
    names: frozenset[str]  # column names a reason may quote
    key_env: str | None = None

    @classmethod
    def of(cls, registry: Registry) -> Sealing | None:
        return cls.of_tables(i for name in registry.sources for i in table_infos(registry, name))

    @classmethod
    def of_tables(cls, tables: Iterable[TableInfo]) -> Sealing | None:
        """For the tables with a ``pii:`` policy among ``tables`` (None when there are none)."""
        protected = [(t, t.pii) for t in tables if t.pii is not None]
        if not protected:
            return None
        names = {
            n
            for t, policy in protected
            for n in (
                *(t.columns or {}),
                *policy.columns,
                *(t.primary_key or ()),
                t.id,
                t.spec_name,
            )
        }
        return cls(
            tables=frozenset(t.id for t, _ in protected),
            sources=frozenset(t.source for t, _ in protected),
            names=frozenset(names),
            key_env=protected[0][1].key_env,
        )

    def applies(self, letter: NewDeadLetter) -> bool:
        if letter.table is not None and letter.table in self.tables:
            return True
        return letter.source in self.sources and (
            letter.table is None or (letter.table not in self.tables and "." not in letter.table)
        )

    def seal(self, letter: NewDeadLetter) -> NewDeadLetter:
        if isinstance(letter, _SealedLetter) or not self.applies(letter):
            return letter
        raw = letter.raw
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        return _SealedLetter(
            reason=_QUOTED.sub(self._hide, letter.reason),
            error_type=letter.error_type,
            raw=None if raw is None else seal(bytes(raw), self.key_env),
            source=letter.source,
            table=letter.table,
            context={**letter.context, "pii_key_env": self.key_env or DEFAULT_KEY_ENV},
        )

    def _hide(self, match: re.Match[str]) -> str:
        text = match.group(0)
        return text if text[1:-1] in self.names else text[0] + "<hidden>" + text[0]


def seal(data: bytes, key_env: str | None) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(12)
    box = AESGCM(environment_key(key_env).derive(_SEAL_PURPOSE))
    return base64.b64encode(nonce + box.encrypt(nonce, data, None)).decode("ascii")


def unseal(text: str, key_env: str | None) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    data = base64.b64decode(text)
    box = AESGCM(environment_key(key_env).derive(_SEAL_PURPOSE))
    try:
        return box.decrypt(data[:12], data[12:], None)
    except InvalidTag:
        raise ConfigError(
            f"a sealed dead letter does not open with the key in {key_env or DEFAULT_KEY_ENV}: it "
            "was sealed with another PII key"
        ) from None
