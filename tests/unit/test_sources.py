"""Source DSNs as users see them (password hidden), and refusals told apart from network failures."""

from __future__ import annotations

import textwrap

import pytest

from cdc.cli import main
from connectors.capture.slots import connection_error
from connectors.sources import redact, refused
from state_models.errors import SourceAccessError, SourceUnavailableError


@pytest.mark.parametrize(
    "dsn, shown",
    [
        ("postgresql://app:s3cret@db:5432/shop", "postgresql://app:***@db:5432/shop"),
        ("postgresql://app@db/shop", "postgresql://app@db/shop"),
        # an unescaped '@' in the password must not leak its tail
        ("postgresql://app:p@ss@db/shop", "postgresql://app:***@db/shop"),
        ("mysql://root:x@db/pay?password=y&ssl=1", "mysql://root:***@db/pay?password=***&ssl=1"),
        ("host=db password=s3cret dbname=shop", "host=db password=*** dbname=shop"),
        ("host=db password='a b' user=app", "host=db password=*** user=app"),
        ("host=db password=a:b@c dbname=x", "host=db password=*** dbname=x"),
        ("postgresql://:s3cret@db/shop", "postgresql://:***@db/shop"),  # no user
        ("postgres:/app:s3cret@db/shop", "postgres:***@db/shop"),  # malformed: '://' mistyped
        (
            "postgresql://app:s3cret@db/shop?password=s3cret",
            "postgresql://app:***@db/shop?password=***",
        ),
    ],
)
def test_a_dsn_is_shown_without_its_password(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown


@pytest.mark.parametrize(
    "message, terminal",
    [
        ('FATAL:  password authentication failed for user "app"', True),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "app", database "x"', True),
        ('FATAL:  role "app" does not exist', True),
        ('FATAL:  database "shop" does not exist', True),
        ("fe_sendauth: no password supplied", True),
        ("FATAL:  must be superuser or replication role to start walsender", True),
        ("Connection refused\n\tIs the server running on that host?", False),
        ("timeout expired", False),
        ("FATAL:  the database system is starting up", False),
        ("FATAL:  sorry, too many clients already", False),
    ],
)
def test_refusals_are_terminal_and_network_failures_transient(message: str, terminal: bool) -> None:
    assert refused(message) is terminal
    error = connection_error(
        "shop",
        "postgresql://app:s3cret@127.0.0.1:5432/shop",
        f'connection failed: connection to server at "127.0.0.1", port 5432 failed: {message}',
    )
    assert isinstance(error, SourceAccessError if terminal else SourceUnavailableError)
    assert "s3cret" not in str(error) and "app:***@127.0.0.1" in str(error)


def test_register_names_the_dsn_as_written_with_the_password_hidden(tmp_path, capsys) -> None:
    config = tmp_path / "cdc.yaml"
    config.write_text(
        textwrap.dedent("""\
            sources:
              shop:
                kind: postgres
                engine: pgoutput
                dsn: postgresql://app:s3cret@127.0.0.1:1/shop
                tables: []
            """)
    )
    code = main(["register", "--config", str(config), "--source", "shop", "public.items"])
    err = capsys.readouterr().err
    assert code == 1
    assert "postgresql://app:***@127.0.0.1:1/shop" in err
    assert "+psycopg" not in err and "s3cret" not in err


def test_a_debezium_engine_refused_by_the_source_is_not_retried_as_unreachable() -> None:
    from connectors.capture.debezium import _looks_unreachable, _Outcome

    refused_run = _Outcome(
        success=False,
        message="Unable to connect to the database",
        error=RuntimeError('FATAL: password authentication failed for user "app"'),
    )
    network = _Outcome(success=False, message="Connection refused", error=None)
    assert not _looks_unreachable(refused_run)
    assert _looks_unreachable(network)


@pytest.mark.parametrize(
    "dsn, escaped",
    [
        # the userinfo ends at the LAST '@' (as in redact and urllib), not the first (libpq's way)
        ("postgresql://app:P@W@db:5432/shop", "postgresql://app:P%40W@db:5432/shop"),
        ("postgresql://app:PW@db/shop", "postgresql://app:PW@db/shop"),
        ("postgresql://db/shop", "postgresql://db/shop"),
        ("host=db password=P@W", "host=db password=P@W"),
    ],
)
def test_an_at_sign_in_a_password_stays_in_the_password(dsn: str, escaped: str) -> None:
    from connectors.sources import escape_userinfo

    assert escape_userinfo(dsn) == escaped


@pytest.mark.parametrize(
    ("kind", "dsn", "why"),
    [
        ("mysql", "host=db user=app password=S3cret-9", "is not a URL like mysql://"),
        ("postgres", "host=db password=S3 cret-9", "neither a URL like postgresql://"),
        ("postgres", "postgresql://app:S3cret-9@db:port/x", "is not a URL like postgresql://"),
        ("postgres", "mysql://app:S3cret-9@db/x", "must start postgresql://, not mysql://"),
        ("mysql", "postgresql://app:S3cret-9@db/x", "must start mysql://, not postgresql://"),
    ],
)
def test_a_dsn_no_command_can_use_is_a_registry_problem_without_its_value(
    tmp_path, capsys, kind, dsn, why
):
    engine = "pgoutput" if kind == "postgres" else "binlog"
    path = tmp_path / "cdc.yaml"
    path.write_text(
        f"sources:\n  s:\n    kind: {kind}\n    engine: {engine}\n    dsn: {dsn}\n    tables: []\n"
    )
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:5: error: sources.s.dsn: " in err and why in err, err
    assert "S3" not in err and "cret" not in err


def test_a_libpq_keyword_dsn_is_read_like_its_url():
    from connectors.sources import dsn_problem, sqlalchemy_url

    dsn = "host=127.0.0.1 port=6543 user=app password='p w' dbname=billing sslmode=require"
    assert dsn_problem("postgres", dsn) is None
    url = sqlalchemy_url("postgres", dsn)
    assert (url.drivername, url.host, url.port, url.username, url.password, url.database) == (
        "postgresql+psycopg",
        "127.0.0.1",
        6543,
        "app",
        "p w",
        "billing",
    )
    assert url.query == {"sslmode": "require"}
