"""Load ``cdc.yaml`` into a validated ``Registry``; report every problem at once, with its place.

Errors name the file, the line, the path inside the file (``sources.billing.tables[1].primary_key``),
what was expected and, for a misspelt key or value, the closest valid one.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from state_models.errors import ConfigError, ConfigProblem
from state_models.registry import ENV_VAR_RE, Registry, column_problems

DEFAULT_CONFIG = "cdc.yaml"
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
        doc = YAML(typ="rt").load(text)
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
        doc = CommentedMap()
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
            for loc, message in column_problems(registry)
        ]
    if problems:
        raise ConfigError(
            f"{file} has {len(problems)} problem{'s' if len(problems) != 1 else ''}",
            problems,
            file=file,
        )
    return LoadedConfig(registry=registry, path=p, warnings=warnings)


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
    """1-based line of the deepest node of ``loc`` that exists in the round-trip document."""
    node, line = doc, None
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            with contextlib.suppress(KeyError, TypeError):
                line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            with contextlib.suppress(KeyError, TypeError):
                line = node.lc.item(part)[0] + 1
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
_SECRET_FIELDS = ("dsn", "password", "secret", "token")


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
