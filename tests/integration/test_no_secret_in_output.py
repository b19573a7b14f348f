"""No password shows anywhere: every command, run with a password in each DSN form, prints none, logs
none and writes none into the project folder (every file there, read as bytes: status.json,
offsets, dead letters, changelog, the DuckDB warehouse, debezium-config's output; a clean stop leaves
no journal), except the registry file that holds it by the user's choice.

DSN forms: a URL with a password; a password holding an unescaped ``@`` (``app:P@W@host``); the
password as ``?password=`` in the query; a libpq keyword DSN (``host=... password=...``); a URL with
an empty user (``:P@host``); a ``mysql://`` DSN for a MariaDB source. Each with the DSN coming from
``${SHOP_DSN}`` in the environment, and written literally in cdc.yaml.

Real throwaway servers, shared by the module, with password authentication: PostgreSQL with
scram-sha-256 lines in pg_hba.conf for every role but the fixtures' superuser, MariaDB with users
identified by a password. A wrong password takes the refusal path, which must not echo it either.
The scenarios run in parallel (their `cdc run`s mostly wait), each in its own project folder, with
its own source name (so its own slot, publication and binlog server id).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import MariaDBServer, PostgresServer, mariadb_binaries, postgres_bindir

pytestmark = pytest.mark.integration

RUN_SECONDS = 6
PROJECT = "cdc-secret-test"


@dataclass(frozen=True)
class Form:
    """One way of writing a password into a DSN."""

    id: str
    kind: str  # postgres | mysql
    user: str  # the role/user the DSN logs in as ("" = the OS user, as libpq does)
    password: str
    wrong: str
    dsn: Callable[[int, str, str], str]  # (port, user, password) -> DSN

    def secrets(self, password: str) -> list[str]:
        """What must never show: the password, its URL-encoded form, and each part of it around an
        '@' (a parser that splits at the first '@' shows the rest as a host name)."""
        out = {password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password)}
        out.update(part for part in password.split("@") if len(part) >= 6)
        return sorted(out)


OS_USER = pwd.getpwuid(os.geteuid()).pw_name

FORMS = [
    Form(
        "url",
        "postgres",
        "app1",
        "Zq7-secret-1",
        "Zq7-wrong-1",
        lambda port, user, pw: f"postgresql://{user}:{pw}@127.0.0.1:{port}/shop1",
    ),
    Form(
        "unescaped_at",
        "postgres",
        "app2",
        "Zq7-secret-2@Zq7-tail-2",
        "Zq7-wrong-2@Zq7-wtail-2",
        lambda port, user, pw: f"postgresql://{user}:{pw}@127.0.0.1:{port}/shop2",
    ),
    Form(
        "query_password",
        "postgres",
        "app3",
        "Zq7-secret-3",
        "Zq7-wrong-3",
        lambda port, user, pw: f"postgresql://{user}@127.0.0.1:{port}/shop3?password={pw}",
    ),
    Form(
        "libpq_keywords",
        "postgres",
        "app4",
        "Zq7-secret-4",
        "Zq7-wrong-4",
        lambda port, user, pw: f"host=127.0.0.1 port={port} user={user} password={pw} dbname=shop4",
    ),
    Form(
        "empty_user",
        "postgres",
        "",
        "Zq7-secret-5",
        "Zq7-wrong-5",
        lambda port, user, pw: f"postgresql://:{pw}@127.0.0.1:{port}/shop5",
    ),
    Form(
        "mysql_url",
        "mysql",
        "app6",
        "Zq7-secret-6",
        "Zq7-wrong-6",
        lambda port, user, pw: f"mysql://{user}:{pw}@127.0.0.1:{port}/shop",
    ),
]
VARIANTS = ["env", "literal"]


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def password_postgres() -> Iterator[PostgresServer]:
    """PostgreSQL where every role but `postgres` (the fixtures' superuser) logs in by password."""
    if postgres_bindir() is None:
        pytest.skip("needs local PostgreSQL server binaries (apt-get install postgresql)")
    if OS_USER == "postgres":
        pytest.skip("the empty-user DSN logs in as the OS user, here the trusted superuser")
    server = PostgresServer().start()
    try:
        for n, form in enumerate(FORMS, start=1):
            if form.kind != "postgres":
                continue
            role = form.user or OS_USER
            server.execute(f"CREATE ROLE \"{role}\" LOGIN REPLICATION PASSWORD '{form.password}'")
            server.execute(f'CREATE DATABASE shop{n} OWNER "{role}"')
            server.execute(
                "CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price numeric)",
                database=f"shop{n}",
            )
            server.execute(f'ALTER TABLE public.items OWNER TO "{role}"', database=f"shop{n}")
            # the NaN row is set aside as a dead letter: the dead-letter store gets a file too
            server.execute(
                "INSERT INTO public.items VALUES (1, 'a', 1.5), (2, 'b', 2.5), (3, 'c', 'NaN')",
                database=f"shop{n}",
            )
        hba = server.data / "pg_hba.conf"
        hba.write_text(
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n" + hba.read_text()
        )
        server.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def password_mariadb() -> Iterator[MariaDBServer]:
    if mariadb_binaries() is None:
        pytest.skip("needs local MariaDB server binaries (apt-get install mariadb-server)")
    server = MariaDBServer().start()
    try:
        server.execute("CREATE DATABASE shop")
        server.execute("CREATE TABLE shop.items (id BIGINT PRIMARY KEY, name TEXT)")
        server.execute("INSERT INTO shop.items VALUES (1, 'a'), (2, 'b')")
        for form in FORMS:
            if form.kind == "mysql":
                server.execute(
                    f"CREATE USER '{form.user}'@'127.0.0.1' IDENTIFIED BY '{form.password}'"
                )
                server.execute(f"GRANT ALL ON *.* TO '{form.user}'@'127.0.0.1'")
        yield server
    finally:
        server.destroy()


# --------------------------------------------------------------------------- one scenario


@dataclass
class Result:
    command: str
    code: int
    output: str  # stdout and stderr
    stdout: str
    seconds: float


@dataclass
class Scenario:
    form: Form
    variant: str
    folder: Path
    source: str
    results: list[Result] = field(default_factory=list)
    error: str = ""

    def result(self, command: str) -> Result:
        return next(r for r in self.results if r.command == command)


def _registry_text(source: str, kind: str, dsn_value: str) -> str:
    engine = "pgoutput" if kind == "postgres" else "binlog"
    return textwrap.dedent(f"""\
        changelog: ./changelog
        warehouse: duckdb:///warehouse.duckdb
        state_dir: ./state
        sources:
          {source}:
            kind: {kind}
            engine: {engine}
            dsn: {dsn_value}
        """)


def _table_entry(kind: str) -> str:
    # what `cdc register` would have appended, for a DSN form it refuses
    table, price = (
        ("public.items", ", price: numeric") if kind == "postgres" else ("shop.items", "")
    )
    return (
        "    tables:\n"
        f"      - name: {table}\n"
        "        primary_key: [id]\n"
        f"        columns: {{id: bigint, name: text{price}}}\n"
    )


def _cdc(scenario: Scenario, label: str, args: list[str], env: dict[str, str]) -> Result:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cdc", *args],
        cwd=scenario.folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    result = Result(
        label, proc.returncode, proc.stdout + proc.stderr, proc.stdout, time.monotonic() - started
    )
    scenario.results.append(result)
    return result


def _play(scenario: Scenario, port: int) -> None:
    """Every command, in the order a user would run them, then the wrong password."""
    form, folder, source = scenario.form, scenario.folder, scenario.source
    folder.mkdir(parents=True)
    right = form.dsn(port, form.user, form.password)
    wrong = form.dsn(port, form.user, form.wrong)
    table = "public.items" if form.kind == "postgres" else "shop.items"
    env = {k: v for k, v in os.environ.items() if k not in ("SHOP_DSN", "CDC_CONFIG", "PGPASSWORD")}
    env.update(
        NO_GCE_CHECK="true",
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        GOOGLE_CLOUD_PROJECT=PROJECT,
    )
    config = folder / "cdc.yaml"
    if scenario.variant == "env":
        env["SHOP_DSN"] = right
        config.write_text(_registry_text(source, form.kind, "${SHOP_DSN}"))
    else:
        # json.dumps: a YAML double-quoted scalar, whatever the DSN holds
        config.write_text(_registry_text(source, form.kind, json.dumps(right)))

    _cdc(scenario, "validate", ["validate"], env)
    register = _cdc(scenario, "register", ["register", "--source", source, table], env)
    if register.code != 0:
        with config.open("a") as fh:
            fh.write(_table_entry(form.kind))
    _cdc(scenario, "tables", ["tables"], env)
    _cdc(scenario, "preflight", ["preflight"], env)
    _cdc(scenario, "run", ["run", "--duration", str(RUN_SECONDS)], env)
    _cdc(
        scenario,
        "run --log-format json",
        ["run", "--duration", str(RUN_SECONDS), "--log-format", "json"],
        env,
    )
    # the wrong password: the same registry with SHOP_DSN set wrong, or a copy of the file with
    # the wrong password written in it (same state folder: status then shows its refusal)
    wrong_args = ["run", "--duration", str(RUN_SECONDS)]
    if scenario.variant == "env":
        wrong_env = {**env, "SHOP_DSN": wrong}
    else:
        wrong_env = env
        wrong_config = folder / "cdc-wrong.yaml"
        wrong_config.write_text(config.read_text().replace(right, wrong))
        assert form.wrong in wrong_config.read_text()
        wrong_args += ["--config", str(wrong_config)]
    _cdc(scenario, "run (wrong password)", wrong_args, wrong_env)
    _cdc(scenario, "status", ["status"], env)
    _cdc(scenario, "status --format json", ["status", "--format", "json"], env)
    _cdc(scenario, "dead-letters ls", ["dead-letters", "ls"], env)
    _cdc(
        scenario,
        "debezium-config",
        ["debezium-config", "--source", source, "--out", "debezium"],
        env,
    )


@pytest.fixture(scope="module")
def scenarios(
    tmp_path_factory: pytest.TempPathFactory,
    password_postgres: PostgresServer,
    password_mariadb: MariaDBServer,
) -> dict[str, Scenario]:
    root = tmp_path_factory.mktemp("secrets")
    played: dict[str, Scenario] = {}
    for n, form in enumerate(FORMS, start=1):
        for variant in VARIANTS:
            played[f"{form.id}-{variant}"] = Scenario(
                form, variant, root / f"{form.id}-{variant}", source=f"shop_{n}_{variant[0]}"
            )

    def play(s: Scenario) -> None:
        port = password_postgres.port if s.form.kind == "postgres" else password_mariadb.port
        try:
            _play(s, port)
        except Exception as exc:  # reported by the scenario's own test
            s.error = f"{type(exc).__name__}: {exc}"

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(play, played.values()))
    print(f"played {len(played)} scenarios in {time.monotonic() - started:.1f}s")
    return played


# --------------------------------------------------------------------------- checks


def _leaks(text: str | bytes, secrets: list[str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in secrets if s.encode() in data]


def _context(text: str, secret: str, width: int = 160) -> str:
    i = text.find(secret)
    return text[max(0, i - width) : i + len(secret) + width]


#: Which commands must succeed with the right password, per form (the others may refuse, with a
#: clear error that must not show the password either).
def _must_succeed(form: Form) -> set[str]:
    everything = {
        "validate",
        "register",
        "tables",
        "preflight",
        "run",
        "run --log-format json",
        "status",
        "status --format json",
        "dead-letters ls",
        "debezium-config",
    }
    if form.kind == "mysql":
        everything.discard("debezium-config")  # PostgreSQL connectors only
    return everything


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("form", FORMS, ids=[f.id for f in FORMS])
def test_no_password_in_any_output_or_file(
    scenarios: dict[str, Scenario], form: Form, variant: str
) -> None:
    s = scenarios[f"{form.id}-{variant}"]
    assert not s.error, s.error
    secrets = sorted({*form.secrets(form.password), *form.secrets(form.wrong)})

    problems = []
    for r in s.results:
        for secret in _leaks(r.output, secrets):
            problems.append(
                f"`cdc {r.command}` printed {secret!r}: ...{_context(r.output, secret)}..."
            )
    for path in sorted(p for p in s.folder.rglob("*") if p.is_file()):
        rel = path.relative_to(s.folder).as_posix()
        data = path.read_bytes()
        allowed: set[str] = set()
        if variant == "literal" and rel == "cdc.yaml":
            allowed = set(form.secrets(form.password))
        if variant == "literal" and rel == "cdc-wrong.yaml":
            allowed = set(form.secrets(form.wrong))
        for secret in _leaks(data, secrets):
            if secret not in allowed:
                text = data.decode("utf-8", "replace")
                problems.append(f"{rel} holds {secret!r}: ...{_context(text, secret)}...")
    assert not problems, "\n".join(problems)

    # the commands did what they do: a leak test of commands that all failed early proves little
    outputs = "\n".join(f"--- cdc {r.command} (exit {r.code})\n{r.output}" for r in s.results)
    for command in _must_succeed(form):
        assert s.result(command).code == 0, f"cdc {command} failed:\n{outputs}"
    wrong = s.result("run (wrong password)")
    assert wrong.code == 1, outputs
    assert "refused the connection" in wrong.output or "Access denied" in wrong.output, outputs
    assert "***" in wrong.output or form.kind == "mysql", outputs  # where it shows the DSN, masked
    # the registry keeps what the user wrote: ${SHOP_DSN}, or the literal DSN (register rewrites it)
    registry = (s.folder / "cdc.yaml").read_text()
    if variant == "env":
        assert "${SHOP_DSN}" in registry
    else:
        assert form.password in registry
    if form.kind == "postgres" and s.result("debezium-config").code == 0:
        properties = (
            s.folder / "debezium" / s.source / "conf" / "application.properties"
        ).read_text()
        variable = f"CDC_{s.source.upper()}_DB_PASSWORD"
        assert f"debezium.source.database.password=${{{variable}}}" in properties
    # the rows were captured into the warehouse, and status.json holds the wrong run's refusal:
    # the files walked above hold what they are meant to
    status = json.loads(s.result("status --format json").stdout)
    assert status["tables"][0]["live_rows"] == 2, outputs
    refusal = "refused the connection" if form.kind == "postgres" else "Access denied"
    assert refusal in status["runtime"]["error"], outputs
    if form.kind == "postgres":  # the NaN row
        assert "1 dead letter(s)" in s.result("dead-letters ls").output, outputs
        assert any(p.is_file() for p in (s.folder / "state" / "dead_letters").rglob("*")), outputs
    assert (s.folder / "warehouse.duckdb").exists() and any((s.folder / "changelog").rglob("*"))
