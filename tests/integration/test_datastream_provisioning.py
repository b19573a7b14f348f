"""`cdc datastream plan/apply/status` against a stand-in Datastream gRPC server (tests/datastream_fake.py).

The official google-cloud-datastream client runs unmodified over a loopback channel; the tests
assert the exact requests it sent. The newest-file lookup runs against gcp-storage-emulator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import datastream_v1 as ds

from cdc.cli import main
from cdc.config import load_config
from connectors.datastream import (
    DatastreamApiError,
    DatastreamProvisioner,
    make_client,
    newest_gcs_file,
    plan_for,
)
from connectors.local_servers import free_port
from tests.datastream_fake import FakeDatastreamServer
from tests.unit.test_datastream_plan import SHOP

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[FakeDatastreamServer]:
    with FakeDatastreamServer() as s:
        yield s


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHOP_PASSWORD", "pw")
    path = tmp_path / "cdc.yaml"
    path.write_text(SHOP)
    return path


def plan_of(path: Path, text: str | None = None):
    if text is not None:
        path.write_text(text)
    cfg = load_config(path)
    return plan_for("shop", cfg.registry.sources["shop"])


def provisioner(server: FakeDatastreamServer) -> DatastreamProvisioner:
    return DatastreamProvisioner(make_client(server.endpoint), timeout=30)


def test_apply_creates_the_profiles_then_the_stream_and_waits_for_each(server, registry):
    plan = plan_of(registry)
    done = provisioner(server).apply(plan)

    assert [(a.resource.id, a.verb) for a in done] == [
        ("cdc-shop-source", "create"),
        ("cdc-shop-gcs", "create"),
        ("cdc-shop", "create"),
    ]
    created = server.fake.mutations()
    assert [c.method for c in created] == [
        "CreateConnectionProfile",
        "CreateConnectionProfile",
        "CreateStream",
    ]
    source, gcs, stream = (c.request for c in created)
    assert source.parent == "projects/acme-data/locations/us-central1"
    assert source.connection_profile_id == "cdc-shop-source"
    assert source.connection_profile.mysql_profile == ds.MysqlProfile(
        hostname="10.20.0.5", port=3306, username="datastream", password="pw"
    )
    assert gcs.connection_profile.gcs_profile == ds.GcsProfile(
        bucket="acme-cdc", root_path="/raw/ds"
    )
    assert stream.stream_id == "cdc-shop"
    assert stream.stream == plan.stream.desired
    include = stream.stream.source_config.mysql_source_config.include_objects
    assert [(d.database, [t.table for t in d.mysql_tables]) for d in include.mysql_databases] == [
        ("crm", ["contacts"]),
        ("shop", ["customers", "orders"]),
    ]
    # each mutation returned an unfinished operation, so the client polled it
    assert len(server.fake.calls("GetOperation")) == 3
    assert server.fake.resources[plan.stream.name].state == ds.Stream.State.NOT_STARTED


def test_apply_is_idempotent(server, registry):
    plan = plan_of(registry)
    provisioner(server).apply(plan)
    server.fake.requests.clear()

    done = provisioner(server).apply(plan)

    assert [a.verb for a in done] == ["unchanged"] * 3
    assert [c.method for c in server.fake.requests] == [
        "GetConnectionProfile",
        "GetConnectionProfile",
        "GetStream",
    ]


def test_a_changed_registry_updates_only_what_changed_with_an_exact_mask(server, registry):
    provisioner(server).apply(plan_of(registry))
    server.fake.requests.clear()
    changed = SHOP.replace("format: json", "format: avro").replace(
        "      - name: crm.contacts\n", "      - name: crm.contacts\n      - name: crm.notes\n"
    )
    plan = plan_of(registry, changed)

    done = provisioner(server).apply(plan)

    assert [a.verb for a in done] == ["unchanged", "unchanged", "update"]
    [update] = server.fake.mutations()
    assert update.method == "UpdateStream"
    assert list(update.request.update_mask.paths) == [
        "source_config.mysql_source_config.include_objects",
        "destination_config.gcs_destination_config.avro_file_format",
    ]
    assert update.request.stream.name == plan.stream.name
    stored = server.fake.resources[plan.stream.name]
    tables = stored.source_config.mysql_source_config.include_objects.mysql_databases[0]
    assert [t.table for t in tables.mysql_tables] == ["contacts", "notes"]
    assert "avro_file_format" in stored.destination_config.gcs_destination_config
    assert [a.verb for a in provisioner(server).diff(plan)] == ["unchanged"] * 3


def test_update_secrets_sends_the_password_path_only(server, registry):
    plan = plan_of(registry)
    provisioner(server).apply(plan)
    server.fake.requests.clear()

    provisioner(server).apply(plan, update_secrets=True)

    [update] = server.fake.mutations()
    assert update.method == "UpdateConnectionProfile"
    assert list(update.request.update_mask.paths) == ["mysql_profile.password"]
    assert update.request.connection_profile.mysql_profile.password == "pw"


def test_validation_errors_are_reported_in_plain_words(server, registry):
    plan = plan_of(registry)
    server.fake.fail_validation(
        "cdc-shop",
        ds.Validation(
            description="Validate that Datastream can connect to the source database",
            code="SOURCE_CONNECTIVITY",
            state=ds.Validation.State.FAILED,
            message=[
                ds.ValidationMessage(
                    message="Connection to 10.20.0.5:3306 timed out",
                    level=ds.ValidationMessage.Level.ERROR,
                )
            ],
        ),
        ds.Validation(
            description="Validate binlog format",
            code="BINLOG_FORMAT",
            state=ds.Validation.State.FAILED,
            message=[ds.ValidationMessage(message="binlog_format is STATEMENT; set it to ROW")],
        ),
        ds.Validation(description="Validate GCS permissions", state=ds.Validation.State.PASSED),
    )

    with pytest.raises(DatastreamApiError) as err:
        provisioner(server).apply(plan)

    text = str(err.value)
    assert text.startswith("create stream cdc-shop failed: Validation of the created resource")
    assert (
        "- failed: Validate that Datastream can connect to the source database: "
        "Connection to 10.20.0.5:3306 timed out"
    ) in text
    assert "- failed: Validate binlog format: binlog_format is STATEMENT; set it to ROW" in text
    assert "GCS permissions" not in text
    assert plan.stream.name not in server.fake.resources


def test_start_asks_for_state_running(server, registry):
    plan = plan_of(registry)
    provisioner(server).apply(plan, start=True)
    start = server.fake.mutations()[-1]
    assert start.method == "UpdateStream"
    assert list(start.request.update_mask.paths) == ["state"]
    assert server.fake.resources[plan.stream.name].state == ds.Stream.State.RUNNING


def test_status_shows_state_and_errors(server, registry):
    plan = plan_of(registry)
    p = provisioner(server)
    assert p.status(plan, None).state == "NOT_CREATED"
    p.apply(plan)
    stored = server.fake.resources[plan.stream.name]
    stored.state = ds.Stream.State.FAILED
    stored.errors = [
        ds.Error(reason="BINLOG_PURGED", message="The binlog file mysql-bin.000041 was purged")
    ]
    st = p.status(plan, None)
    assert st.state == "FAILED"
    assert st.errors == ["? BINLOG_PURGED: The binlog file mysql-bin.000041 was purged"]


def test_cli_plan_apply_plan(server, registry, monkeypatch, capsys):
    monkeypatch.setenv("DATASTREAM_EMULATOR_HOST", server.endpoint)
    args = ["datastream", "plan", "--source", "shop", "--config", str(registry)]

    assert main(args) == 0
    assert "stream cdc-shop  [create]" in capsys.readouterr().out
    assert main(["datastream", "apply", "--source", "shop", "--config", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "stream cdc-shop: created" in out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stream cdc-shop  [unchanged]" in out and "not compared" not in out


def test_cli_apply_without_credentials_says_how_to_get_them(registry, tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "DATASTREAM_EMULATOR_HOST")
    }
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdc",
            "datastream",
            "apply",
            "--source",
            "shop",
            "-c",
            str(registry),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 2, run.stderr
    assert "no Google credentials to reach Datastream" in run.stderr
    assert "gcloud auth application-default login" in run.stderr


# --------------------------------------------------------------------------- newest file (GCS)


@pytest.fixture
def gcs_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    exe = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("gcp-storage-emulator did not start") from None
                time.sleep(0.1)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_status_finds_the_newest_file_by_following_the_date_folders(
    server, registry, gcs_emulator, monkeypatch, capsys
):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="acme-data", credentials=AnonymousCredentials())
    plan = plan_of(registry)
    p = provisioner(server)
    p.apply(plan)
    missing = p.status(plan, newest_gcs_file(client))  # the bucket does not exist yet
    assert missing.newest_file is None
    assert missing.newest_file_error.startswith("cannot list gs://acme-cdc/raw/ds/shop/")

    bucket = client.create_bucket("acme-cdc")
    base = "raw/ds/shop"
    for name in [
        f"{base}/shop_orders/2026/02/17/14/30/a.jsonl.gz",
        f"{base}/shop_orders/2026/02/17/09/00/b.jsonl.gz",
        f"{base}/shop_customers/2026/01/31/23/59/c.jsonl.gz",
        f"{base}/shop_orders/2026/02/17/15/00/d.jsonl.gz",  # newest folder, written last
        "raw/ds/other/x/2027/01/01/00/00/elsewhere.jsonl.gz",
    ]:
        bucket.blob(name).upload_from_string(b"{}\n")
        time.sleep(0.01)

    st = p.status(plan, newest_gcs_file(client))
    assert st.newest_file == f"gs://acme-cdc/{base}/shop_orders/2026/02/17/15/00/d.jsonl.gz"
    assert st.newest_file_time is not None

    monkeypatch.setenv("DATASTREAM_EMULATOR_HOST", server.endpoint)
    assert main(["datastream", "status", "--config", str(registry)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("shop: stream cdc-shop NOT_STARTED; newest file 20")
    assert "d.jsonl.gz" in out
