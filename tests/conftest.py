"""Shared fixtures: real throwaway source databases (docs/architecture.md §8).

Where a source comes from, in order:
1. a DSN in the environment (``CDC_TEST_PG_DSN``, ``CDC_TEST_MYSQL_DSN``): an existing server;
2. the Debian server binaries on this machine: a throwaway server on a free loopback port;
3. testcontainers, when a Docker engine answers.
When none is available the test is skipped with what to install; nothing is faked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.bqemu import BigQueryEmulator, BootstrapError, ensure_venv
from tests.gcs import changelog_root, gcs_bucket, gcs_emulator  # noqa: F401  (fixtures)
from tests.pubsub_emulator.fixture import pubsub_emulator, pubsub_host  # noqa: F401
from tests.servers import (
    MariaDBServer,
    PostgresServer,
    ServerError,
    mariadb_binaries,
    postgres_bindir,
)

os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class ExternalPostgres:
    """A PostgreSQL we did not start (env DSN or a container): same interface, no restarts."""

    def __init__(self, dsn: str):
        from sqlalchemy.engine import make_url

        self.url = make_url(dsn)

    def dsn(self, database: str = "postgres", user: str | None = None) -> str:
        url = self.url.set(database=database)
        if user:
            url = url.set(username=user, password=None)
        return url.render_as_string(hide_password=False)

    def execute(
        self, sql: str, database: str = "postgres", params: Any = None
    ) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def destroy(self) -> None:
        pass


class ExternalMySQL:
    def __init__(self, dsn: str):
        from sqlalchemy.engine import make_url

        self.url = make_url(dsn)
        self.port = self.url.port or 3306

    def dsn(self, database: str = "", user: str | None = None, password: str = "") -> str:
        url = self.url.set(database=database or None)
        if user:
            url = url.set(username=user, password=password or None)
        return url.render_as_string(hide_password=False)

    def execute(
        self, sql: str, database: str | None = None, params: Any = None
    ) -> list[tuple[Any, ...]]:
        import pymysql

        with (
            pymysql.connect(
                host=self.url.host,
                port=self.port,
                user=self.url.username or "root",
                password=self.url.password or "",
                database=database,
                autocommit=True,
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def destroy(self) -> None:
        pass


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL with wal_level=logical for the whole session."""
    if os.environ.get("CDC_TEST_PG_DSN"):
        yield ExternalPostgres(os.environ["CDC_TEST_PG_DSN"])
        return
    if postgres_bindir() is not None:
        server = PostgresServer().start()
        try:
            yield server
        finally:
            server.destroy()
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16").with_command("postgres -c wal_level=logical") as c:
            yield ExternalPostgres(c.get_connection_url().replace("+psycopg2", ""))
        return
    pytest.skip(
        "no PostgreSQL: apt-get install postgresql, or set CDC_TEST_PG_DSN, or run a Docker engine"
    )


@pytest.fixture(scope="session")
def mariadb() -> Iterator[Any]:
    """A MariaDB/MySQL with a ROW binlog (full images, full metadata) for the whole session."""
    if os.environ.get("CDC_TEST_MYSQL_DSN"):
        yield ExternalMySQL(os.environ["CDC_TEST_MYSQL_DSN"])
        return
    if mariadb_binaries() is not None:
        server = MariaDBServer().start()
        try:
            yield server
        finally:
            server.destroy()
        return
    if _docker_available():
        from testcontainers.mysql import MySqlContainer

        with MySqlContainer("mariadb:11").with_command(
            "--log-bin --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL --server-id=1"
        ) as c:
            yield ExternalMySQL(c.get_connection_url().replace("+pymysql", ""))
        return
    pytest.skip(
        "no MariaDB/MySQL: apt-get install mariadb-server, or set CDC_TEST_MYSQL_DSN, or run a Docker engine"
    )


@pytest.fixture
def pg_database(postgres: Any) -> str:
    """A fresh database on the session PostgreSQL; returns its DSN."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def source_dsn(pg_database: str) -> Iterator[str]:
    """``pg_database`` for a test that captures it: its replication slots are dropped afterwards
    (slot names are per server: a later test's source of the same name needs the name free)."""
    from tests.integration.capture_support import drop_slots

    yield pg_database
    drop_slots(pg_database)


@pytest.fixture
def mysql_database(mariadb: Any) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    mariadb.execute(f"CREATE DATABASE `{name}`")
    return name


@pytest.fixture
def postgres_factory() -> Iterator[Any]:
    """Fresh local PostgreSQL servers whose settings a test may break and restart."""
    if postgres_bindir() is None:
        pytest.skip("needs local PostgreSQL server binaries (apt-get install postgresql)")
    made: list[PostgresServer] = []

    def make(**kwargs: Any) -> PostgresServer:
        s = PostgresServer(**kwargs)
        made.append(s)
        return s.start()

    try:
        yield make
    finally:
        for s in made:
            s.destroy()


@pytest.fixture
def mariadb_factory() -> Iterator[Any]:
    if mariadb_binaries() is None:
        pytest.skip("needs local MariaDB server binaries (apt-get install mariadb-server)")
    made: list[MariaDBServer] = []

    def make(**kwargs: Any) -> MariaDBServer:
        s = MariaDBServer(**kwargs)
        made.append(s)
        return s.start()

    try:
        yield make
    finally:
        for s in made:
            s.destroy()


# --------------------------------------------------------------------------- BigQuery


def _unavailable(reason: str) -> None:
    # CI installs everything (make install builds the emulator): a missing component there is a bug
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def bigquery_emulator() -> Iterator[BigQueryEmulator]:
    """bqemulator on loopback for the session; its virtualenv is built on first use (tests/bqemu.py)."""
    try:
        venv = ensure_venv()
    except BootstrapError as exc:
        _unavailable(
            f"no BigQuery emulator: {exc}\nFix: run `make bqemu` where PyPI is reachable, or set "
            "CDC_BQEMU_VENV to a prepared virtualenv, or set CDC_TEST_BIGQUERY_PROJECT (with "
            "Application Default Credentials) to test against real BigQuery"
        )
    emulator = BigQueryEmulator(venv=venv).start()
    try:
        yield emulator
    finally:
        emulator.destroy()


@pytest.fixture(scope="session")
def bigquery_client(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """A factory of ``bigquery.Client``: real BigQuery when ``CDC_TEST_BIGQUERY_PROJECT`` is set
    (Application Default Credentials), else the session's bqemulator."""
    from google.cloud import bigquery

    project = os.environ.get("CDC_TEST_BIGQUERY_PROJECT")
    if project:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        problem = None
        try:
            google.auth.default()
        except DefaultCredentialsError as exc:
            problem = str(exc)
        if problem:
            pytest.fail(
                f"CDC_TEST_BIGQUERY_PROJECT={project} but no credentials ({problem}); run "
                "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS",
                pytrace=False,
            )
        return lambda: bigquery.Client(project=project)

    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    emulator: BigQueryEmulator = request.getfixturevalue("bigquery_emulator")
    return lambda: bigquery.Client(
        project=emulator.project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=emulator.api_endpoint),
    )


@pytest.fixture(scope="session")
def bigquery_dataset(bigquery_client: Callable[[], Any]) -> Iterator[str]:
    """A throwaway dataset for the session, ``project.dataset``; deleted with its tables at the end."""
    from google.cloud import bigquery

    client = bigquery_client()
    dataset = bigquery.Dataset(f"{client.project}.cdc_test_{uuid.uuid4().hex[:10]}")
    dataset.location = os.environ.get("CDC_TEST_BIGQUERY_LOCATION", "US")
    # a session killed before its teardown must not leave billed tables behind for long
    dataset.default_table_expiration_ms = 24 * 3600 * 1000
    created = client.create_dataset(dataset)
    try:
        yield f"{created.project}.{created.dataset_id}"
    finally:
        client.delete_dataset(created, delete_contents=True, not_found_ok=True)
        client.close()


__all__ = ["ServerError"]


@pytest.fixture(autouse=True)
def _beam_as_shipped() -> Iterator[None]:
    """A test that ran a streaming job on the DirectRunner leaves Beam as it found it."""
    yield
    import sys

    if "merge_jobs.direct_runner" in sys.modules:
        sys.modules["merge_jobs.direct_runner"].uninstall()
