"""Load ``cdc.yaml`` into a validated ``Registry``; report every problem at once, with its place.

Errors name the file, the line, the path inside the file (``sources.billing.tables[1].primary_key``),
what was expected and, for a misspelt key or value, the closest valid one.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError
from yaml.cyaml import CParser
from yaml.error import YAMLError

from state_models.errors import ConfigError, ConfigProblem
from state_models.pii import DEFAULT_KEY_ENV, PiiKey, key_from_environment
from state_models.registry import ENV_VAR_RE, Registry, column_problems

DEFAULT_CONFIG = "cdc.yaml"
#: In the state folder: the fingerprint of the PII key (never the key).
PII_KEY_FILE = "pii_key.json"
#: How many values one byte of a registry may expand to (through YAML aliases) before it is refused.
EXPANSION_PER_BYTE = 20


@dataclass
class LoadedConfig:
    registry: Registry
    path: Path
    warnings: list[ConfigProblem] = field(default_factory=list)

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent

    def resolve_path(self, value: str) -> Path:
        """A path from the file, relative to the file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def state_dir(self) -> Path:
        return self.resolve_path(self.registry.state_dir)

    @property
    def changelog_root(self) -> str:
        root = self.registry.changelog
        if "://" in root:
            return root
        return str(self.resolve_path(root))

    def datastream_output(self, source_name: str) -> str:
        """Where an ``engine: datastream`` source's files are read from (a local ``output:``
        relative to the file's folder)."""
        source = self.registry.sources[source_name]
        if source.datastream is None:
            raise ConfigError(
                f"source {source_name!r} is engine: datastream but has no datastream: section: "
                "set its bucket (and prefix), or output: for a folder holding the stream's files"
            )
        url = source.datastream.output_url(source_name)
        return url if "://" in url else str(self.resolve_path(url))

    def pii_key(self) -> PiiKey | None:
        """The key the registry's ``pii:`` columns are hashed with, from the environment; None
        when no table has any. The key's fingerprint is kept in the state folder: a process
        started later with another key is refused (its tokens would not match the stored ones)."""
        key = key_from_environment(
            os.environ, self.registry.pii_key_env, self.registry.pii_tables()
        )
        if key is None:
            return None
        variable = self.registry.pii_key_env or DEFAULT_KEY_ENV
        record = self.state_dir / PII_KEY_FILE
        if record.exists():
            stored = json.loads(record.read_text()).get("fingerprint")
            if stored != key.fingerprint:
                raise ConfigError(
                    f"{variable} is not the key this deployment's pii: values were hashed with "
                    f"(fingerprint {key.fingerprint}; {record} records {stored}): set the key used "
                    "before: another key gives other tokens for the same values, which would no "
                    "longer match (or join with) the ones stored"
                )
        else:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(
                json.dumps({"fingerprint": key.fingerprint, "variable": variable}) + "\n"
            )
        return key

    @property
    def warehouse_url(self) -> str:
        """The warehouse URL with a relative DuckDB path made absolute against the file's folder."""
        url = self.registry.warehouse
        if url.startswith("duckdb:///"):
            rest = url[len("duckdb:///") :]
            if rest == ":memory:" or rest.startswith("/"):
                return url
            return "duckdb:///" + str(self.resolve_path(rest))
        return url


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file a command uses: ``--config``, else ``$CDC_CONFIG``, else ``./cdc.yaml``."""
    return Path(explicit or os.environ.get("CDC_CONFIG") or DEFAULT_CONFIG)


def load_config(
    path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None
) -> LoadedConfig:
    """Read, interpolate and validate a registry file. Raises ``ConfigError`` listing every problem."""
    p = config_path(path)
    file = str(p)
    if not p.exists():
        raise ConfigError(
            f"config file {file} not found (pass --config FILE, set CDC_CONFIG, or copy examples/cdc.yaml)",
            file=file,
        )
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = ConfigProblem(
            "",
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} (save the file as UTF-8)",
            raw[: exc.start].count(b"\n") + 1,
        )
        raise ConfigError(f"{file} is not UTF-8 text", [problem], file=file) from None
    try:
        doc = load_yaml(text)
    except RecursionError:
        problem = ConfigProblem("", "nested too deeply to be a registry", None)
        raise ConfigError(f"{file} is not a registry", [problem], file=file) from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = ConfigProblem(
            path="", message=f"not valid YAML: {getattr(exc, 'problem', exc)}", line=line
        )
        raise ConfigError(f"{file} is not valid YAML", [problem], file=file) from exc
    if doc is None:
        doc = _Mapping()
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{file} must hold a mapping (changelog:, warehouse:, sources:)",
            [
                ConfigProblem(
                    "", f"expected a mapping at the top level, got {type(doc).__name__}", 1
                )
            ],
            file=file,
        )
    warnings: list[ConfigProblem] = []
    # every value of a registry is written out in the file, a few bytes each; YAML aliases may
    # repeat some, but a document that expands far beyond its size is an alias bomb (a few hundred
    # bytes that expand to billions of values): refused before it is expanded
    budget = [EXPANSION_PER_BYTE * len(text) + 10_000]
    try:
        data = _interpolate(
            doc, (), env if env is not None else dict(os.environ), doc, warnings, budget
        )
    except (_TooLarge, RecursionError):
        problem = ConfigProblem(
            "",
            f"expands to more than {EXPANSION_PER_BYTE} values per byte of the file: YAML aliases "
            "(*name) nested in each other? Write the values out",
            None,
        )
        raise ConfigError(f"{file} is not a registry", [problem], file=file) from None
    try:
        registry = Registry.model_validate(data)
    except ValidationError as exc:
        problems = [_problem_from_error(err, doc) for err in exc.errors()]
    else:
        problems = [
            ConfigProblem(format_loc(loc), message, _line_of(doc, loc))
            for loc, message in [*column_problems(registry), *_dsn_problems(registry)]
        ]
    if problems:
        raise ConfigError(
            f"{file} has {len(problems)} problem{'s' if len(problems) != 1 else ''}",
            problems,
            file=file,
        )
    return LoadedConfig(registry=registry, path=p, warnings=warnings)


# --------------------------------------------------------------------------- YAML 1.2


class _Mapping(dict[Any, Any]):
    """A mapping of the file with the 1-based line of each of its keys."""

    lines: dict[Any, int]


class _Sequence(list[Any]):
    """A sequence of the file with the 1-based line of each of its items."""

    lines: list[int]


_NO_KEY = object()
_MERGE = object()
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT_RE = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT_RE = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_TAGS = {
    "tag:yaml.org,2002:str": "str",
    "tag:yaml.org,2002:int": "int",
    "tag:yaml.org,2002:float": "float",
    "tag:yaml.org,2002:bool": "bool",
    "tag:yaml.org,2002:null": "null",
}


def _plain(text: str) -> Any:
    """A plain scalar as the YAML 1.2 core schema reads it (https://yaml.org/spec/1.2.2/#103-core-schema):
    ``on``, ``yes`` and ``no`` stay words, ``0777`` is 777, a date stays text."""
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if text[0] in "-+.0123456789":
        if _INT_RE.fullmatch(text):
            digits = text.lstrip("+-")
            sign = -1 if text[0] == "-" else 1
            if digits[:2] == "0o":
                return int(digits[2:], 8)
            if digits[:2] == "0x":
                return int(digits[2:], 16)
            return sign * int(digits, 10)
        if _FLOAT_RE.fullmatch(text):
            return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))
    return text


def _scalar(event: yaml.ScalarEvent) -> Any:
    tag = event.tag
    if tag is None or tag == "!":
        return _plain(event.value) if event.implicit[0] else event.value  # [0]: written plain
    kind = _TAGS.get(tag)
    value = _plain(event.value)
    if kind == "str":
        return event.value
    if kind == "int" and type(value) is int:
        return value
    if kind == "float" and type(value) in (int, float):
        return float(value)
    if kind == "bool" and type(value) is bool:
        return value
    if kind == "null" and value is None:
        return None
    raise ConstructorError(
        None,
        None,
        f"cannot read {event.value!r} as {tag} (a registry holds text, numbers, true/false, lists "
        "and mappings)",
        event.start_mark,
    )


class _Open:
    """A mapping or sequence being read, with the key whose value comes next."""

    __slots__ = ("key", "line", "merges", "start", "value")

    def __init__(self, start: Any) -> None:
        self.start = start  # the event that opened it: where it is, its anchor
        if type(start) is yaml.MappingStartEvent:
            self.value: _Mapping | _Sequence = _Mapping()
            self.value.lines = {}
        else:
            self.value = _Sequence()
            self.value.lines = []
        self.key: Any = _NO_KEY
        self.line = 0
        self.merges: list[_Mapping] = []

    def add(self, value: Any, event: Any) -> None:
        line = event.start_mark.line + 1
        container = self.value
        if isinstance(container, _Sequence):
            container.append(value)
            container.lines.append(line)
        elif self.key is _NO_KEY:
            if isinstance(value, (dict, list)):
                raise ConstructorError(
                    None,
                    None,
                    "a key must be a plain value, not a list or mapping",
                    event.start_mark,
                )
            first = container.lines.get(value)
            if first is not None:
                raise ConstructorError(
                    None,
                    None,
                    f"key {value!r} is given twice (first on line {first}): remove one",
                    event.start_mark,
                )
            self.key, self.line = value, line
        else:
            if self.key is _MERGE:
                merged = value if isinstance(value, list) else [value]
                if not all(isinstance(m, _Mapping) for m in merged):
                    raise ConstructorError(
                        None,
                        None,
                        "a merge key (<<) takes a mapping or a list of mappings",
                        event.start_mark,
                    )
                self.merges.extend(merged)
            else:
                container[self.key] = value
                container.lines[self.key] = self.line
            self.key = _NO_KEY

    def close(self) -> Any:
        container = self.value
        if isinstance(container, _Mapping):
            for merged in self.merges:  # YAML merge keys: the keys written here win, then the first
                for key, value in merged.items():
                    if key not in container:
                        container[key] = value
                        container.lines[key] = merged.lines[key]
        return container


def load_yaml(text: str) -> Any:
    """One YAML 1.2 document; its mappings and sequences carry the line of each entry.

    libyaml (C) parses; the values are built straight from its events. PyYAML's own loader builds
    a node graph first (two position objects per value) and took four times as long: a
    100,000-table registry is read in seconds, where a pure-Python round-trip parser took minutes.
    A key given twice is an error, not the last one silently winning; libyaml refuses nesting
    deeper than 1,000 levels.
    """
    parser = CParser(text)
    anchors: dict[str, Any] = {}
    stack: list[_Open] = []
    documents: list[Any] = []
    try:
        while (event := parser.get_event()) is not None:
            kind = type(event)
            if kind is yaml.ScalarEvent:
                value = _scalar(event)
                top = stack[-1] if stack else None
                if value == "<<" and event.implicit[0] and top and top.key is _NO_KEY:
                    value = _MERGE if isinstance(top.value, _Mapping) else value  # <<: *defaults
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if event.tag not in (None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
                    raise ConstructorError(None, None, f"unknown tag {event.tag}", event.start_mark)
                stack.append(_Open(event))
                if event.anchor is not None:
                    anchors[event.anchor] = stack[-1].value
                continue
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                closed = stack.pop()
                value, event = closed.close(), closed.start
            elif kind is yaml.AliasEvent:
                if event.anchor not in anchors:
                    raise ConstructorError(
                        None,
                        None,
                        f"alias *{event.anchor} names no anchor (&{event.anchor})",
                        event.start_mark,
                    )
                value = anchors[event.anchor]
            else:  # the stream's and documents' starts and ends
                continue
            if kind is yaml.ScalarEvent and event.anchor is not None:
                anchors[event.anchor] = value
            if stack:
                stack[-1].add(value, event)
            else:
                documents.append(value)
                if len(documents) > 1:
                    raise ConstructorError(
                        None,
                        None,
                        "a registry is one YAML document: remove the second (---)",
                        event.start_mark,
                    )
    finally:
        parser.dispose()
    return documents[0] if documents else None


def _dsn_problems(registry: Registry) -> list[tuple[tuple[str, ...], str]]:
    """Each source's DSN in a form every command reads alike (one with an unset ``${VAR}`` is
    checked when the variable is set)."""
    from connectors.sources import dsn_problem

    out: list[tuple[tuple[str, ...], str]] = []
    for name, source in registry.sources.items():
        if not ENV_VAR_RE.search(source.dsn):
            problem = dsn_problem(source.kind, source.dsn)
            if problem is not None:
                out.append((("sources", name, "dsn"), problem))
    return out


# --------------------------------------------------------------------------- interpolation


class _TooLarge(Exception):
    """The document expands to more values than its size can explain (YAML aliases nested)."""


def _interpolate(
    node: Any,
    loc: tuple[Any, ...],
    env: dict[str, str],
    doc: Any,
    warnings: list[ConfigProblem],
    budget: list[int],
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge
    if isinstance(node, dict):
        return {k: _interpolate(v, (*loc, k), env, doc, warnings, budget) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*loc, i), env, doc, warnings, budget) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            warnings.append(
                ConfigProblem(
                    path=format_loc(loc),
                    message=f"environment variable {name} is not set; commands that need this value will fail",
                    line=_line_of(doc, loc),
                    severity="warning",
                )
            )
            return m.group(0)

        return ENV_VAR_RE.sub(sub, node)
    return node


# --------------------------------------------------------------------------- error rendering


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_of(doc: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest node of ``loc`` that exists in the document."""
    node, line = doc, None
    for part in loc:
        if isinstance(node, _Mapping) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        elif isinstance(node, _Sequence) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lines[part]
            node = node[part]
        else:
            break
    return line


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds the validator kind ("function-after[...]") or a Literal tag to some locations
    return tuple(
        p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
    )


def _problem_from_error(err: Any, doc: Any) -> ConfigProblem:
    loc = _clean_loc(tuple(err["loc"]))
    kind = err["type"]
    path = format_loc(loc)
    line = _line_of(doc, loc)
    if kind == "extra_forbidden":
        field_name = str(loc[-1])
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(field_name, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        expected = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return ConfigProblem(path, f"unknown field {field_name!r}{hint}{expected}", line)
    if kind == "literal_error":
        allowed = _allowed_values(loc)
        given = err.get("input")
        close = difflib.get_close_matches(str(given), allowed, n=1, cutoff=0.5) if allowed else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return ConfigProblem(
            path, f"{given!r} is not valid{hint} (expected one of: {', '.join(allowed)})", line
        )
    if kind == "missing":
        return ConfigProblem(path, "required field is missing", line)
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind in ("list_type", "dict_type", "string_type", "int_type", "int_parsing", "bool_type"):
        msg = f"{msg} (got {_shown(loc, err.get('input'))})"
    return ConfigProblem(path, msg, line)


#: Fields whose values may hold a secret: a problem with one never echoes the value.
_SECRET_FIELDS = ("dsn", "password", "secret", "token", "url")


def _shown(loc: tuple[Any, ...], value: Any) -> str:
    """A value as a problem may show it: a secret field's value only by its type."""
    if any(isinstance(p, str) and any(s in p.lower() for s in _SECRET_FIELDS) for p in loc):
        return f"a {type(value).__name__}, not shown: it may hold a secret"
    return repr(value)


def _field_type_at(loc: tuple[Any, ...]) -> Any:
    """Walk the Registry model along ``loc`` and return the annotation found there."""
    tp: Any = Registry
    for part in loc:
        tp = _unwrap_optional(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            f = tp.model_fields.get(str(part))
            if f is None:
                return None
            tp = f.annotation
            continue
        origin = get_origin(tp)
        if origin in (dict, typing.Mapping) or origin is list:
            tp = get_args(tp)[-1]
            continue
        return None
    return _unwrap_optional(tp)


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    tp = _field_type_at(loc)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _allowed_values(loc: tuple[Any, ...]) -> list[str]:
    tp = _field_type_at(loc)
    origin = get_origin(tp)
    if origin in (dict, list):
        tp = get_args(tp)[-1]
    if get_origin(tp) is Literal:
        return [str(a) for a in get_args(tp)]
    return []
