"""``cdc debezium-config``: the Pub/Sub emulator address, the heartbeat filter, topic naming."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cdc.cli import main
from connectors.capture.debezium_server import server_properties
from state_models.registry import Source, TableSpec

REGISTRY = """
sources:
  billing:
    kind: postgres
    engine: debezium
    dsn: postgresql://cdc:s3cret@db.internal:5432/billing
    tables:
      - name: public.subs
        primary_key: [id]
pubsub:
  project: acme-data
  topic_prefix: "{prefix}"
"""


def _source() -> Source:
    return Source(
        kind="postgres",
        engine="debezium",
        dsn="postgresql://cdc@db:5432/billing",
        tables=[TableSpec(name="public.subs")],
    )


def _write(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / "cdc.yaml"
    path.write_text(REGISTRY.replace("{prefix}", prefix))
    return path


def _run(config: Path, *options: str) -> int:
    """``cdc debezium-config`` for source billing of project acme-data, with ``options``."""
    base = ["debezium-config", "--config", str(config), "--source", "billing"]
    return main([*base, "--project", "acme-data", *options])


def test_the_emulator_address_is_the_sinks_and_only_when_asked() -> None:
    plain = server_properties("billing", _source(), project="acme-data")
    assert "debezium.sink.pubsub.address" not in plain
    local = server_properties("billing", _source(), project="acme-data", address="pubsub:8085")
    assert local["debezium.sink.pubsub.address"] == "pubsub:8085"
    assert {k: v for k, v in local.items() if k != "debezium.sink.pubsub.address"} == plain


def test_heartbeats_are_filtered_before_the_sink() -> None:
    props = server_properties("billing", _source(), project="acme-data")
    assert props["debezium.transforms"] == "dropheartbeats"
    assert props["debezium.transforms.dropheartbeats.predicate"] == "heartbeat"
    assert props["debezium.predicates"] == "heartbeat"
    pattern = props["debezium.predicates.heartbeat.pattern"]
    assert re.fullmatch(pattern, "__debezium-heartbeat.billing")
    assert not re.fullmatch(pattern, "billing.public.subs")
    # a heartbeat prefix set in the registry's debezium: mapping is the one filtered
    source = _source().model_copy(update={"debezium": {"topic.heartbeat.prefix": "hb"}})
    pattern = server_properties("billing", source, project="p-123456")[
        "debezium.predicates.heartbeat.pattern"
    ]
    assert re.fullmatch(pattern, "hb.billing") and not re.fullmatch(
        pattern, "__debezium-heartbeat.billing"
    )


def test_the_flag_writes_the_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path, "")
    out = tmp_path / "out"
    code = _run(config, "--pubsub-emulator", "pubsub:8085", "--out", str(out))
    assert code == 0
    text = (out / "billing" / "conf" / "application.properties").read_text()
    assert "debezium.sink.pubsub.address=pubsub\\:8085\n" in text
    assert "s3cret" not in text
    assert "warning" not in capsys.readouterr().out  # topic_prefix "": the names match


@pytest.mark.parametrize("bad", ["pubsub", "pubsub:", "http://pubsub:8085", "a b:1"])
def test_a_malformed_emulator_address_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    config = _write(tmp_path, "")
    code = _run(config, "--pubsub-emulator", bad, "--out", str(tmp_path / "out"))
    assert code == 2
    assert "--pubsub-emulator expects HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_topics_that_differ_from_the_registrys_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, "cdc.")
    code = _run(config, "--out", str(tmp_path / "out"))
    assert code == 0
    out = capsys.readouterr().out
    assert "warning: Debezium Server publishes to the topics billing.public.subs" in out
    assert "names them cdc.billing.public.subs" in out
