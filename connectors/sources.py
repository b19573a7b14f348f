"""Connections to the source databases, and introspection of their tables (SQLAlchemy).

Users write plain DSNs (``postgresql://user@host:5432/db``, ``mysql://root@host:3306/db``); this
module turns them into driver URLs, opens connections, and reads a table's columns and key.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from state_models.errors import (
    ConfigError,
    SourceAccessError,
    SourceUnavailableError,
    UnknownTableError,
)
from state_models.registry import Registry, Source, unresolved_variables

_PG_SCHEMES = ("postgresql", "postgres")
_MYSQL_SCHEMES = ("mysql", "mariadb")


def require_dsn(source: Source, source_name: str) -> str:
    """The source's DSN, or a ConfigError when a ${VAR} in it was not set."""
    missing = unresolved_variables(source.dsn)
    if missing:
        raise ConfigError(
            f"sources.{source_name}.dsn needs environment variable(s) {', '.join(missing)}, which are not set"
        )
    return escape_userinfo(source.dsn)


def escape_userinfo(dsn: str) -> str:
    """A URL DSN with any ``@`` inside its user or password written ``%40``.

    libpq and SQLAlchemy end the userinfo at the FIRST ``@``: ``app:P@W@host`` would log in with
    password ``P`` to host ``W@host``, and every error would show ``W`` as a host name. Like
    ``redact`` (and ``urllib``), the userinfo ends at the LAST ``@`` before the path here.
    """
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return dsn
    head, q, query = rest.partition("?")
    userinfo, at, host = head.rpartition("@")
    if not at or "@" not in userinfo or "/" in userinfo:
        return dsn
    return f"{scheme}{sep}{userinfo.replace('@', '%40')}{at}{host}{q}{query}"


def sqlalchemy_url(kind: str, dsn: str) -> URL:
    """A SQLAlchemy URL with our chosen driver (psycopg 3, PyMySQL) for a source's DSN: a URL, or
    for PostgreSQL a libpq ``key=value`` string (``host=db port=5432 user=app dbname=billing``)."""
    problem = dsn_problem(kind, dsn)
    if problem is not None:
        raise ConfigError(f"dsn {problem}")
    if "://" not in dsn:
        from psycopg.conninfo import conninfo_to_dict

        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
        port = params.pop("port", None)
        return URL.create(
            "postgresql+psycopg",
            username=params.pop("user", None),
            password=params.pop("password", None),
            host=params.pop("host", None),
            port=int(port) if port and port.isdigit() else None,
            database=params.pop("dbname", None),
            query=params,
        )
    url = make_url(dsn)
    return url.set(drivername="postgresql+psycopg" if kind == "postgres" else "mysql+pymysql")


def dsn_problem(kind: str, dsn: str) -> str | None:
    """Why ``dsn`` cannot reach a ``kind`` source, never showing the value (it may hold a
    password); None when it can. A PostgreSQL DSN is a URL or a libpq ``key=value`` string; a
    MySQL one is a URL."""
    example = (
        "postgresql://user@host:5432/db" if kind == "postgres" else "mysql://user@host:3306/db"
    )
    if "://" not in dsn:
        if kind != "postgres":
            return f"is not a URL like {example} (the value is not shown: it may hold a password)"
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        try:
            if conninfo_to_dict(dsn):
                return None
        except ProgrammingError:
            pass
        return (
            f"is neither a URL like {example} nor a libpq key=value string like 'host=db "
            "dbname=billing user=app' (the value is not shown: it may hold a password)"
        )
    try:
        url = make_url(dsn)
    except Exception:  # SQLAlchemy's ArgumentError repeats the value
        return f"is not a URL like {example} (the value is not shown: it may hold a password)"
    backend = url.get_backend_name()
    schemes = _PG_SCHEMES if kind == "postgres" else _MYSQL_SCHEMES
    if backend not in schemes:
        return f"of a {kind} source must start {schemes[0]}://, not {backend}://"
    return None


def libpq_dsn(dsn: str) -> str:
    """A DSN psycopg / libpq accept (no SQLAlchemy driver suffix)."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", dsn)


def mysql_params(dsn: str) -> dict[str, Any]:
    """Connection keyword arguments for PyMySQL / mysql-replication."""
    url = make_url(dsn)
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
        "database": url.database,
    }


def redact(dsn: str) -> str:
    """The DSN as the user wrote it, with any password replaced by ``***``.

    ``password=`` anywhere (a URL's query, a libpq ``key=value`` DSN) is hidden first; then a URL's
    password, which ends at the LAST ``@`` before the query, so an unescaped ``@`` in it leaks
    nothing. A malformed URL (no ``://``) is read the same way: whatever stands between the first
    ``:`` and the last ``@`` is hidden.
    """
    dsn = _PASSWORD_PARAM.sub(_HIDDEN, dsn)
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        scheme, rest = "", dsn
    head, q, query = rest.partition("?")
    userinfo, at, host = head.rpartition("@")
    if at and ":" in userinfo:
        head = f"{userinfo.partition(':')[0]}:***@{host}"
    return f"{scheme}{sep}{head}{q}{query}"


_PASSWORD_PARAM = re.compile(r"((?:^|[\s&?])password\s*=\s*)('[^']*'|[^\s&]*)", re.IGNORECASE)
_HIDDEN = r"\1***"

#: What PostgreSQL says when it refuses who we are or what we may do (libpq puts no SQLSTATE on a
#: failed connection, so the server's message is all there is): retrying cannot help.
_PG_REFUSALS = (
    "authentication failed",  # password, peer, ident, scram
    "no pg_hba.conf entry",
    "no password supplied",
    "does not exist",  # role, database
    "permission denied",
    "must be superuser",
    "must have replication",
    "must have the replication attribute",
    "not permitted to log in",
)
#: MySQL/MariaDB error codes of a refusal: access denied (to the server, a database, a privilege),
#: unknown database, host not allowed, unsupported authentication method.
MYSQL_REFUSALS = (1044, 1045, 1049, 1130, 1142, 1227, 1251, 1698)


def refused(reason: str) -> bool:
    """Whether a PostgreSQL connection error is a refusal (terminal), not a network failure."""
    lowered = reason.lower()
    return any(r in lowered for r in _PG_REFUSALS)


def display_url(url: URL) -> str:
    """A driver URL shown in the user's plain DSN form (no ``+psycopg``), password hidden."""
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)


def create_engine(source: Source, source_name: str) -> sa.Engine:
    url = sqlalchemy_url(source.kind, require_dsn(source, source_name))
    return sa.create_engine(url, pool_pre_ping=True)


def connect(engine: sa.Engine, source_name: str) -> sa.Connection:
    try:
        return engine.connect()
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        where = f"source {source_name!r} at {display_url(engine.url)}"
        code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
        if refused(reason) or code in MYSQL_REFUSALS:
            raise SourceAccessError(f"{where} refused the connection: {reason}") from exc
        raise SourceUnavailableError(f"cannot connect to {where}: {reason}") from exc


@dataclass(frozen=True)
class IntrospectedTable:
    name: str  # schema.table
    columns: dict[str, str]  # column -> source type name, in table order
    primary_key: list[str]  # [] when the table has none


def introspect_table(engine: sa.Engine, source_name: str, qualified: str) -> IntrospectedTable:
    """Columns (with readable source type names) and primary key of ``schema.table``."""
    schema, _, table = qualified.partition(".")
    if not table:
        raise ConfigError(f"expected schema.table (e.g. public.payments), got {qualified!r}")
    with connect(engine, source_name) as conn:
        insp = sa.inspect(conn)
        if not insp.has_table(table, schema=schema):
            try:
                names = [f"{schema}.{t}" for t in insp.get_table_names(schema=schema)]
            except sa.exc.SQLAlchemyError:
                names = []
            close = difflib.get_close_matches(qualified, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownTableError(f"source {source_name!r} has no table {qualified!r}{hint}")
        cols = insp.get_columns(table, schema=schema)
        pk = insp.get_pk_constraint(table, schema=schema).get("constrained_columns") or []
        dialect = conn.dialect
        columns = {c["name"]: readable_type(c["type"].compile(dialect=dialect)) for c in cols}
    return IntrospectedTable(name=qualified, columns=columns, primary_key=list(pk))


_TYPE_ALIASES = {
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time with time zone": "timetz",
    "time without time zone": "time",
    "character varying": "varchar",
}


def readable_type(compiled: str) -> str:
    """``NUMERIC(12, 2)`` -> ``numeric(12,2)``, ``TIMESTAMP WITH TIME ZONE`` -> ``timestamptz``."""
    t = re.sub(r"\s*,\s*", ",", compiled.strip().lower())
    t = re.sub(r"\s+", " ", t)
    for long, short in _TYPE_ALIASES.items():
        if t.startswith(long):
            t = short + t[len(long) :]
    # MySQL integer display widths are cosmetic (and gone in 8.0); tinyint(1) conventionally means bool
    if t != "tinyint(1)":
        t = re.sub(r"^(tinyint|smallint|mediumint|int|integer|bigint)\(\d+\)", r"\1", t)
    return t


def fill_primary_keys(registry: Registry) -> Registry:
    """The registry with every omitted ``primary_key`` read from the live table.

    Raises ConfigError for a table that has neither a declared nor a database primary key: its
    rows could not be told apart in history.
    """
    sources = {}
    for name, source in registry.sources.items():
        missing = [t for t in source.tables if not t.primary_key]
        if not missing:
            sources[name] = source
            continue
        engine = create_engine(source, name)
        try:
            tables = []
            for t in source.tables:
                if t.primary_key:
                    tables.append(t)
                    continue
                found = introspect_table(engine, name, t.name).primary_key
                if not found:
                    raise ConfigError(
                        f"sources.{name}: table {t.name} has no primary key in the database and none "
                        "in the registry; declare primary_key: [...] naming the columns that identify a row"
                    )
                tables.append(t.model_copy(update={"primary_key": found}))
        finally:
            engine.dispose()
        sources[name] = source.model_copy(update={"tables": tables})
    return registry.model_copy(update={"sources": sources})
