"""The online current-state store: each key's live row in Redis (Memorystore), fenced by ``_seq``.

One Redis hash per row at ``<key_prefix><table id>:<key as canonical JSON>`` (keys sorted, no
spaces), holding the business columns as ``cdc history --format jsonl`` renders them (each field
is that value's JSON text) and ``_seq``. A delete leaves a tombstone: ``_seq`` and ``_deleted``
(kept ``tombstone_ttl_s``), so that a late older change cannot bring the row back.

**The fence.** Every write is one Lua script (atomic in Redis): it writes only when its ``_seq`` is
greater than the one the hash holds, else leaves it. So redelivered, late or out-of-order writes,
two writers (``cdc run`` and the Beam job), a retry after an outage or a rebuild racing the live
feed can never leave an older value in place of a newer one. No peer fences an online store by
source position (Netflix/EVCache#44 shows what happens without).

**What is written.** Not the raw change but the state table's current version of each key the
merge touched, read back after the MERGE: the merge has already ordered, deduplicated and
repaired late events and carried unsent TOAST values, so the store holds exactly what ``_current``
holds (``cdc online verify`` compares them). ``pii:`` policies apply as they do to the state table
(its values are already protected).

**Outages.** The runtime hands rows to :class:`OnlineSyncer`, whose own thread writes them with
backoff; a merge never waits for Redis. A failed write marks the store's tables stale (a store
that went away may come back empty: Memorystore without persistence, a failover), and so does a
queue past ``max_pending`` rows (dropped); the runtime refills stale tables from their state
tables once Redis answers and the queue is written (``cdc online rebuild`` does the same by hand),
through the same fence, so a refill racing the live feed keeps the newer value.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from state_models.errors import ConfigError, TransientError
from state_models.registry import OnlineStore
from state_models.scd2 import IS_DELETED, SEQ, VALID_FROM, StateTable, render_version

log = logging.getLogger("cdc.online")

SEQ_FIELD = "_seq"
DELETED_FIELD = "_deleted"

#: KEYS[1] the row's hash; ARGV: seq, "1" for a tombstone, ttl seconds (0: none), then field,
#: value pairs. Writes only a newer seq; the whole hash is replaced (a column gone stays gone).
FENCED_WRITE = """
local held = redis.call('HGET', KEYS[1], '_seq')
if held and held >= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_seq', ARGV[1], unpack(ARGV, 4))
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], '_deleted', '1') end
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""


@dataclass(frozen=True)
class OnlineRow:
    """One key's current version, ready for Redis."""

    table_id: str
    key: str  # canonical JSON of the key
    seq: str
    deleted: bool
    fields: Mapping[str, str]  # column -> JSON text of its rendered value
    commit_us: int | None = None  # the version's source commit time (for latency figures)


def canonical_key(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def online_row(table_id: str, state: StateTable, row: Mapping[str, Any]) -> OnlineRow:
    """A state-table version row (current, or its tombstone) as an online row."""
    rendered = render_version(state, row)
    key = canonical_key({k: rendered[k] for k in state.key})
    deleted = bool(row.get(IS_DELETED))
    fields = (
        {}
        if deleted
        else {
            c: json.dumps(rendered.get(c), ensure_ascii=False, separators=(",", ":"))
            for c in state.business_names
        }
    )
    valid_from = row.get(VALID_FROM)
    commit_us = (
        int(valid_from.timestamp() * 1_000_000) if isinstance(valid_from, dt.datetime) else None
    )
    return OnlineRow(table_id, key, str(row[SEQ]), deleted, fields, commit_us)


def touched_keys(events: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    """Each table's distinct keys among ``events`` (the keys a merge touched)."""
    touched: dict[str, dict[str, dict[str, Any]]] = {}
    for e in events:
        if e.key:
            # repr, not JSON: a key may hold decimals or times
            touched.setdefault(e.table, {})[repr(sorted(e.key.items()))] = e.key
    return {table_id: list(keys.values()) for table_id, keys in touched.items()}


def current_online_rows(
    warehouse: Any, table: Any, keys: Sequence[Mapping[str, Any]] | None = None
) -> list[OnlineRow]:
    """The state table's current version (or tombstone) of ``keys`` (default: every key) as
    online rows; none while the table does not exist."""
    state = warehouse.state_table(table)
    if state is None:
        return []
    return [online_row(table.table_id, state, r) for r in warehouse.current_versions(table, keys)]


def redis_url(store: OnlineStore, where: str) -> str:
    from connectors.sources import unresolved_variables

    missing = unresolved_variables(store.url)
    if missing:
        raise ConfigError(f"{where}.url needs environment variable(s) {', '.join(missing)}")
    return store.url


class OnlineBackend(Protocol):
    """What the runtime, the Beam job and ``cdc online`` need of a store: Redis here, Bigtable in
    ``connectors.online_bigtable``. ``write`` raises ``TransientError`` when the store cannot
    be reached."""

    store: OnlineStore

    def key(self, table_id: str, key: str) -> str: ...
    def write(self, rows: Sequence[OnlineRow]) -> int: ...
    def rows(self, table_id: str) -> Iterator[tuple[str, dict[str, str]]]: ...
    def delete(self, table_id: str, keys: Sequence[str]) -> None: ...
    def ping(self) -> None:
        """Reach the store (raises when it cannot), ready to be written."""
        ...

    def close(self) -> None: ...


class RedisOnline:
    """One Redis (Memorystore) online store (see the module doc)."""

    def __init__(self, store: OnlineStore, *, where: str = "online", client: Any = None):
        import redis

        self.store = store
        self.client = client or redis.Redis.from_url(
            redis_url(store, where), socket_timeout=5, socket_connect_timeout=5
        )
        self._write = self.client.register_script(FENCED_WRITE)

    def key(self, table_id: str, key: str) -> str:
        return f"{self.store.key_prefix}{table_id}:{key}"

    def write(self, rows: Sequence[OnlineRow]) -> int:
        """Write each row where it is newer than what Redis holds; how many were written."""
        import redis

        if not rows:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for r in rows:
            ttl = self.store.tombstone_ttl_s if r.deleted else self.store.ttl_s
            args: list[str] = [r.seq, "1" if r.deleted else "0", str(ttl)]
            for name, value in r.fields.items():
                args += [name, value]
            self._write(keys=[self.key(r.table_id, r.key)], args=args, client=pipe)
        try:
            return sum(int(x) for x in pipe.execute())
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise TransientError(f"Redis online store: {exc}") from exc

    def delete(self, table_id: str, keys: Sequence[str]) -> None:
        """Remove rows outright (no tombstone): what an eviction or a FLUSH does."""
        if keys:
            self.client.delete(*(self.key(table_id, k) for k in keys))

    def ping(self) -> None:
        self.client.ping()

    def rows(self, table_id: str) -> Iterator[tuple[str, dict[str, str]]]:
        """(canonical key, hash fields) of every row and tombstone of a table."""
        prefix = self.key(table_id, "")
        batch: list[bytes] = []
        for name in self.client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                yield from self._fetch(batch, prefix)
                batch = []
        yield from self._fetch(batch, prefix)

    def _fetch(self, names: list[bytes], prefix: str) -> Iterator[tuple[str, dict[str, str]]]:
        if not names:
            return
        pipe = self.client.pipeline(transaction=False)
        for n in names:
            pipe.hgetall(n)
        for n, h in zip(names, pipe.execute(), strict=True):
            if h:
                yield (
                    n.decode()[len(prefix) :],
                    {k.decode(): v.decode() for k, v in h.items()},
                )

    def close(self) -> None:
        self.client.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass
class Difference:
    missing: list[str] = field(default_factory=list)  # live in _current, not in Redis
    extra: list[str] = field(default_factory=list)  # live in Redis, not in _current
    different: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different)


def compare(
    expected: Iterable[OnlineRow], held: Iterable[tuple[str, dict[str, str]]]
) -> Difference:
    """The live rows of ``_current`` against what Redis holds (tombstones are not live)."""
    want = {r.key: r for r in expected if not r.deleted}
    have = {k: h for k, h in held if h.get(DELETED_FIELD) != "1"}
    out = Difference()
    for k, r in want.items():
        h = have.get(k)
        if h is None:
            out.missing.append(k)
        elif h.get(SEQ_FIELD) != r.seq or {n: v for n, v in h.items() if n != SEQ_FIELD} != dict(
            r.fields
        ):
            out.different.append(k)
    out.extra = [k for k in have if k not in want]
    for keys in (out.missing, out.extra, out.different):
        keys.sort()
    return out


def _newest_per_key(rows: Sequence[OnlineRow]) -> list[OnlineRow]:
    """One row per key, its newest version: the fence would refuse the older ones anyway, so
    they need not travel (several merges' versions of a busy key wait in one batch)."""
    newest: dict[tuple[str, str], OnlineRow] = {}
    for r in rows:
        held = newest.get((r.table_id, r.key))
        if held is None or r.seq > held.seq:
            newest[(r.table_id, r.key)] = r
    return list(newest.values())


class OnlineSyncer:
    """Writes rows to a store on its own thread, retrying with backoff (see the module doc)."""

    def __init__(self, store: OnlineBackend, *, max_pending: int = 1_000_000):
        self.store = store
        self.max_pending = max_pending
        self._queue: list[OnlineRow] = []
        self._busy = False  # a batch is being written
        self._lock = threading.Condition()
        self._stop = False
        self.stale: set[str] = set()  # tables to refill from their state table
        self.tables: set[str] = set()  # the tables it keeps (set by its owner)
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None
        #: seconds from each written row's source commit to its write (for benchmarks)
        self.commit_to_written: deque[float] = deque(maxlen=200_000)
        self._thread = threading.Thread(target=self._run, name="online-store", daemon=True)
        self._thread.start()

    def put(self, rows: Sequence[OnlineRow]) -> None:
        with self._lock:
            if len(self._queue) + len(rows) > self.max_pending:
                # too far behind: the state table is the way back
                self.stale.update(r.table_id for r in self._queue)
                self.stale.update(r.table_id for r in rows)
                self._queue.clear()
                return
            self._queue.extend(rows)
            self._lock.notify()

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def idle(self) -> bool:
        """Everything handed over is written (nothing queued, no batch in flight)."""
        with self._lock:
            return not self._queue and not self._busy

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything handed over is written; whether it was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._thread.join(10)
        self.store.close()

    def _run(self) -> None:
        delay = 0.1
        while True:
            with self._lock:
                while not self._queue and not self._stop:
                    self._lock.wait(1.0)
                if self._stop and not self._queue:
                    return
                batch = self._queue[:5000]
                del self._queue[:5000]
                self._busy = True
            try:
                self.store.write(_newest_per_key(batch))
            except Exception as exc:  # Redis down or refusing: keep the rows, try again later
                with self._lock:
                    self._queue[:0] = batch
                    self._busy = False
                    # a store that went away may come back empty (Memorystore without
                    # persistence, a failover): its tables are refilled once it answers
                    self.stale.update(self.tables)
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.failures == 1 or self.failures % 50 == 0:
                    log.warning("online store write failed, retrying: %s", self.last_error)
                if self._stop:
                    return
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            now = time.time()
            self.commit_to_written.extend(
                now - r.commit_us / 1e6 for r in batch if r.commit_us is not None
            )
            self.written += len(batch)
            self.last_error = None
            delay = 0.1
            with self._lock:
                self._busy = False
