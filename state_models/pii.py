"""Personal data never kept in clear: the registry's ``pii:`` policies applied to a change event.

A table's policy names columns and what happens to each (docs/architecture.md §7):

- ``hash``: the value becomes ``h1:`` + the 64 hex digits of HMAC-SHA256 over its canonical text,
  keyed with the deployment's PII key. Full length (no truncation: no collisions), deterministic
  (equal values give equal tokens in every table, source and path, so joins still work), and
  useless without the key (no dictionary attack on e-mail addresses).
- ``mask``: every character but the last four becomes ``*`` (a value of four characters or fewer
  is masked whole).
- ``drop``: the column is gone from the event: images, key, names, raw message.

Applying a policy twice changes nothing (a token stays a token, a masked text stays masked), so a
replay of an already protected changelog, or a message delivered twice, gives the same event.
Hashed and masked columns are text, whatever their source type.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from state_models.debezium import encode_debezium
from state_models.errors import ConfigError
from state_models.events import ChangeEvent, json_value, make_event_id

PiiPolicy = Literal["hash", "mask", "drop"]
#: The environment variable holding the PII key, unless the registry's ``pii_key_env`` names another.
DEFAULT_KEY_ENV = "CDC_PII_KEY"
#: A key shorter than this is refused: HMAC is only as strong as its key.
MIN_KEY_BYTES = 16
TOKEN_PREFIX = "h1:"
_TOKEN_RE = re.compile(r"h1:[0-9a-f]{64}")
MASK_CHAR = "*"


@dataclass(frozen=True)
class PiiKey:
    """The secret every hash is keyed with. Its ``repr`` never shows it."""

    secret: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """Which key this is, shown and stored without revealing it (16 hex digits)."""
        return hmac.new(
            self.secret, b"cdc-history pii key fingerprint", hashlib.sha256
        ).hexdigest()[:16]

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte key for another use (sealing dead letters), independent of the hashes'."""
        return hmac.new(self.secret, b"cdc-history " + purpose, hashlib.sha256).digest()

    def token(self, value: Any) -> str:
        digest = hmac.digest(self.secret, canonical_text(value).encode(), "sha256")
        return TOKEN_PREFIX + digest.hex()


def key_from_environment(
    environ: Mapping[str, str], variable: str | None, tables: list[str]
) -> PiiKey | None:
    """The PII key from ``environ`` (``variable``, default ``CDC_PII_KEY``), or None when no table
    has a policy. With policies and no usable key, a ``ConfigError`` that says how to set one."""
    if not tables:
        return None
    name = variable or DEFAULT_KEY_ENV
    value = environ.get(name, "")
    shown = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
    if not value:
        raise ConfigError(
            f"{shown} {'has' if len(tables) == 1 else 'have'} pii: columns, and their values are "
            f"hashed with a secret key: set the environment variable {name} (for instance "
            f"`export {name}=$(openssl rand -hex 32)`, kept in your secret store; every process "
            "that captures or merges needs the same one)"
        )
    secret = value.encode("utf-8")
    if len(secret) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{name} is {len(secret)} bytes long; a PII key needs at least {MIN_KEY_BYTES} "
            f"(for instance `export {name}=$(openssl rand -hex 32)`)"
        )
    return PiiKey(secret)


def canonical_text(value: Any) -> str:
    """The text a value is hashed or masked as: itself for text; for other types the text the
    changelog holds (exact decimals, ISO times, base64 bytes, compact JSON), so a value gives one
    token whatever path carried it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    plain = json_value(value)
    if isinstance(plain, str):
        return plain
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_token(value: Any) -> bool:
    return isinstance(value, str) and _TOKEN_RE.fullmatch(value) is not None


def mask(value: Any) -> str:
    text = canonical_text(value)
    if len(text) <= 4:
        return MASK_CHAR * len(text)
    return MASK_CHAR * (len(text) - 4) + text[-4:]


def environment_key(variable: str | None, tables: list[str] | None = None) -> PiiKey:
    """The PII key from this process's environment (read once per variable and value). Workers of
    a Beam job read their own environment: the key never travels inside a pipeline."""
    name = variable or DEFAULT_KEY_ENV
    value = os.environ.get(name, "")
    cached = _KEYS.get(name)
    if cached is not None and cached[0] == value:
        return cached[1]
    key = key_from_environment({name: value}, name, tables or ["a table"])
    assert key is not None
    _KEYS[name] = (value, key)
    return key


_KEYS: dict[str, tuple[str, PiiKey]] = {}


@dataclass(frozen=True)
class TablePolicy:
    """One table's ``pii:`` columns (under the names events carry), where its key comes from, and
    the source kind its wire messages are rendered for.

    The raw message an event carries is replaced by the protected event's own Debezium rendering;
    an event the format cannot carry keeps no raw message rather than the clear one.
    """

    columns: Mapping[str, PiiPolicy]
    kind: str = "postgres"  # the source kind: postgres | mysql
    key_env: str | None = None  # the variable holding the key (default CDC_PII_KEY)

    @property
    def key(self) -> PiiKey:
        return environment_key(self.key_env)

    def protect_value(self, column: str, value: Any, key: PiiKey | None = None) -> Any:
        policy = self.columns.get(column)
        if value is None or policy is None or policy == "drop":
            return value
        if policy == "hash":
            return value if is_token(value) else (key or self.key).token(value)
        return mask(value)

    def _image(self, image: Mapping[str, Any] | None, tokens: _Tokens) -> dict[str, Any] | None:
        if image is None:
            return None
        out = dict(image)
        for name, policy in self.columns.items():
            if name not in out:
                continue
            value = out[name]
            if policy == "drop":
                del out[name]
            elif value is None:
                continue
            elif policy == "hash":
                out[name] = tokens(value)
            else:
                out[name] = mask(value)
        return out

    def protect(self, event: ChangeEvent) -> ChangeEvent:
        """``event`` with its policy columns hashed, masked or dropped everywhere it holds them."""
        return self.protect_many([event])[0]

    def protect_many(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
        """Each event with its policy columns hashed, masked or dropped everywhere it holds them.

        A hashed key column changes the key, so the event id is computed again from the
        protected key (an id made from a clear e-mail address could be matched by anyone who
        hashes guesses). A value repeated in the batch is hashed once.
        """
        columns = self.columns
        tokens = _Tokens(self.key)
        out = []
        for event in events:
            key = self._image(event.key, tokens) or {}
            before = self._image(event.before, tokens)
            after = self._image(event.after, tokens)
            if (
                (key, before, after) == (event.key, event.before, event.after)
                and not any(columns.get(n) == "drop" for n in event.unavailable)
                and self._typed_as_protected(event.source_types)
            ):
                # protected already (a replay, a redelivery, the warehouse's second pass): it
                # keeps its raw message, which was rendered from these protected images
                out.append(event)
                continue
            protected = ChangeEvent(  # not dataclasses.replace: a third of the cost
                table=event.table,
                op=event.op,
                key=key,
                before=before,
                after=after,
                seq=event.seq,
                commit_ts=event.commit_ts,
                tx_id=event.tx_id,
                event_id=make_event_id(event.table, key, event.seq)
                if any(k in columns for k in event.key)
                else event.event_id,
                unavailable=tuple(n for n in event.unavailable if columns.get(n) != "drop")
                if event.unavailable
                else (),
                source_types=None
                if event.source_types is None
                else {
                    n: ("string" if n in columns else t)
                    for n, t in event.source_types.items()
                    if columns.get(n) != "drop"
                },
            )
            if event.raw is not None:
                # the wire message is the protected event's; one the format cannot carry keeps none
                with contextlib.suppress(ValueError, TypeError):
                    protected = replace(protected, raw=encode_debezium(protected, self.kind))
            out.append(protected)
        return out

    def _typed_as_protected(self, types: Mapping[str, str] | None) -> bool:
        """A schema block names no dropped column and types every protected one as text."""
        if types is None:
            return True
        return all(
            n not in types if p == "drop" else types.get(n, "string") == "string"
            for n, p in self.columns.items()
        )


class _Tokens:
    """Tokens of one batch: a value seen again is not hashed again (statuses, countries, plans)."""

    def __init__(self, key: PiiKey):
        self._key = key
        self._seen: dict[tuple[type, Any], str] = {}

    def __call__(self, value: Any) -> str:
        seen = (type(value), value)  # 1, 1.0, True and Decimal("1.0") are equal keys, not texts
        try:
            return self._seen[seen]
        except (KeyError, TypeError):
            pass
        token = value if is_token(value) else self._key.token(value)
        with contextlib.suppress(TypeError):  # a list or dict value is not kept
            self._seen[seen] = token
        return token


def protect_all(
    events: Sequence[ChangeEvent], policies: Mapping[str, TablePolicy]
) -> list[ChangeEvent]:
    """Each event protected by its table's policy (``policies``: table id -> policy)."""
    if not policies:
        return list(events)
    by_table: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        if e.table in policies:
            by_table.setdefault(e.table, []).append(i)
    out = list(events)
    for table, places in by_table.items():
        for i, protected in zip(
            places, policies[table].protect_many([events[i] for i in places]), strict=True
        ):
            out[i] = protected
    return out
