"""The registry's ``pubsub:`` section, topic/subscription names, ordering keys and messages."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from cdc.config import load_config
from state_models.debezium import decode_debezium
from state_models.errors import ConfigError
from state_models.events import ChangeEvent, Op
from state_models.pubsub import (
    PubSubLayout,
    PubSubSettings,
    message_for,
    ordering_key,
)
from state_models.seq import make_seq
from state_models.tables import TableInfo, resolver_for

REGISTRY = """
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://x@h/db
    tables:
      - name: public.subscriptions
        primary_key: [id]
      - name: public.plan_prices
        primary_key: [plan, currency]
  payments:
    kind: mysql
    engine: binlog
    dsn: mysql://root@h/payments
    tables:
      - name: payments.refund$s
        primary_key: [id]
"""


def load(tmp_path: Path, pubsub: str) -> object:
    p = tmp_path / "cdc.yaml"
    p.write_text(REGISTRY + pubsub)
    return load_config(p, env={}).registry


def problems(tmp_path: Path, pubsub: str) -> list[str]:
    p = tmp_path / "cdc.yaml"
    p.write_text(REGISTRY + pubsub)
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    return [pr.render(str(p)) for pr in exc.value.problems]


def event(**changes: object) -> ChangeEvent:
    base: dict = dict(
        table="billing.public.subscriptions",
        op=Op.UPDATE,
        key={"id": 42},
        before=None,
        after={"id": 42, "plan": "pro", "amount": Decimal("9.90")},
        seq=make_seq(0x100, 0x120),
        commit_ts=1_700_000_000_000_001,
        tx_id="991",
    )
    base.update(changes)
    return ChangeEvent(**base)


def test_pubsub_section_is_optional(tmp_path):
    registry = load(tmp_path, "")
    assert registry.pubsub is None and registry.pubsub_layout() is None


def test_per_table_names(tmp_path):
    registry = load(tmp_path, "pubsub:\n  project: acme-data\n")
    layout = registry.pubsub_layout()
    assert layout.topics() == [
        "cdc.billing.public.plan_prices",
        "cdc.billing.public.subscriptions",
        "cdc.payments.payments.refund%24s",  # '$' is not allowed in a Pub/Sub name
    ]
    assert layout.subscription("cdc.billing.public.subscriptions") == (
        "cdc.billing.public.subscriptions.merge"
    )
    assert layout.dead_letter_topic == "cdc.dead-letter"
    assert layout.topic_path("cdc.dead-letter") == "projects/acme-data/topics/cdc.dead-letter"
    assert layout.topic("billing.public.subscriptions") == "cdc.billing.public.subscriptions"


def test_a_postgres_source_debezium_captures_gets_its_transaction_topic(tmp_path):
    """Only a PostgreSQL source with engine: debezium: its BEGIN/END records feed the merge job's
    watermark (pgoutput and binlog sources keep theirs under `cdc run`)."""
    p = tmp_path / "cdc.yaml"
    p.write_text(
        REGISTRY.replace("engine: pgoutput", "engine: debezium") + "pubsub:\n  project: acme-data\n"
    )
    layout = load_config(p, env={}).registry.pubsub_layout()
    assert layout.transaction_topics() == {"billing": "cdc.billing.transaction"}
    assert "cdc.billing.transaction" not in layout.topics()  # not a change topic
    spec = next(s for s in layout.subscriptions() if s.topic == "cdc.billing.transaction")
    assert spec.name == "cdc.billing.transaction.merge" and not spec.ordered
    assert spec.dead_letter_topic == "cdc.dead-letter"
    layout.check()
    assert (
        load(tmp_path, "pubsub:\n  project: acme-data\n").pubsub_layout().transaction_topics() == {}
    )


def test_per_source_names(tmp_path):
    registry = load(
        tmp_path,
        """
pubsub:
  project: acme-data
  topics: per_source
  topic_prefix: changes-
  subscription: history
  dead_letter_topic: changes-rejected
""",
    )
    layout = registry.pubsub_layout()
    assert layout.topics() == ["changes-billing", "changes-payments"]
    assert layout.topic("billing.public.plan_prices") == "changes-billing"
    assert layout.subscription("changes-billing") == "changes-billing.history"
    assert layout.dead_letter_topic == "changes-rejected"


def test_misspelt_and_invalid_settings_are_reported_with_suggestions(tmp_path):
    found = problems(
        tmp_path,
        """
pubsub:
  project: Acme
  topics: per_tabel
  ack_deadline_seconds: 5
  publish: {max_mesages: 10}
""",
    )
    text = "\n".join(found)
    assert "pubsub.project: expected a Google Cloud project id" in text
    assert "pubsub.topics: 'per_tabel' is not valid; did you mean 'per_table'?" in text
    assert "pubsub.ack_deadline_seconds" in text
    assert (
        "pubsub.publish.max_mesages: unknown field 'max_mesages'; did you mean 'max_messages'?"
        in text
    )


def test_names_pubsub_would_refuse_are_a_config_error(tmp_path):
    found = problems(tmp_path, "pubsub:\n  project: acme-data\n  topic_prefix: goog-\n")
    assert any("not with 'goog'" in p for p in found)
    found = problems(tmp_path, "pubsub:\n  project: acme-data\n  subscription: 'a/b'\n")
    assert any("pubsub.subscription" in p for p in found)


def test_unresolved_project_variable_is_left_for_the_warning(tmp_path):
    registry = load(tmp_path, "pubsub:\n  project: ${GCP_PROJECT}\n")
    assert registry.pubsub.project == "${GCP_PROJECT}"


def test_ordering_key_is_the_table_and_the_canonical_key():
    assert ordering_key(event()) == 'billing.public.subscriptions:{"id":42}'
    composite = event(
        table="billing.public.plan_prices",
        key={"plan": "pro", "currency": "EUR"},
        after={"plan": "pro", "currency": "EUR"},
    )
    reordered = event(
        table="billing.public.plan_prices",
        key={"currency": "EUR", "plan": "pro"},
        after={"plan": "pro", "currency": "EUR"},
    )
    assert ordering_key(composite) == ordering_key(reordered)
    assert ordering_key(composite) == 'billing.public.plan_prices:{"currency":"EUR","plan":"pro"}'
    assert ordering_key(event(key={"id": 43}, after={"id": 43})) != ordering_key(event())


def test_long_keys_are_hashed_and_keyless_events_are_not_ordered():
    long_key = {"id": "x" * 2000}
    a = ordering_key(event(key=long_key, after=long_key))
    assert a.startswith("billing.public.subscriptions:#") and len(a.encode()) <= 1024
    assert a == ordering_key(event(key=long_key, after=long_key, seq=make_seq(9, 9)))
    truncate = event(op=Op.TRUNCATE, key={}, after=None)
    assert ordering_key(truncate) == ""


def test_message_uses_the_original_debezium_message_when_there_is_one():
    raw = '{"op":"u","source":{"connector":"postgresql"}}'
    msg = message_for(event(raw=raw), "postgres")
    assert msg.data == raw.encode()
    e = event()
    assert msg.attributes == {
        "table": "billing.public.subscriptions",
        "op": "u",
        "seq": e.seq,
        "event_id": e.event_id,
        "commit_ts": "1700000000000001",
        "key": '{"id":42}',
    }
    assert msg.ordering_key == 'billing.public.subscriptions:{"id":42}'


def test_message_renders_an_envelope_for_native_events():
    e = event()
    msg = message_for(e, "postgres")
    info = TableInfo(
        "billing.public.subscriptions",
        ("id",),
        {"id": "bigint", "plan": "text", "amount": "numeric(12,2)"},
    )
    assert json.loads(msg.data)["source"]["connector"] == "postgresql"
    assert decode_debezium(msg.data, resolver_for([info], "billing")) == e


def test_layout_refuses_a_dead_letter_topic_that_is_a_change_topic():
    settings = PubSubSettings(project="acme-data", dead_letter_topic="cdc.billing")
    with pytest.raises(ValueError, match="also a change topic"):
        PubSubLayout(
            settings.model_copy(update={"topics": "per_source"}), ["billing.public.t"]
        ).check()


def test_ordering_buckets_keep_a_row_on_one_key_and_spread_the_rows():
    keys = {ordering_key(event(key={"id": i}, after={"id": i}), buckets=16) for i in range(1000)}
    assert keys == {f"billing.public.subscriptions:b{n}" for n in range(16)}
    one_row = {
        ordering_key(event(key={"id": 5}, after={"id": 5}, seq=make_seq(i, i)), buckets=16)
        for i in range(10)
    }
    assert len(one_row) == 1
    assert ordering_key(event(op=Op.TRUNCATE, key={}, after=None), buckets=16) == ""


def test_datastream_sources_are_not_published(tmp_path):
    p = tmp_path / "cdc.yaml"
    p.write_text(
        REGISTRY
        + """  shop:
    kind: mysql
    engine: datastream
    dsn: mysql://u@h/shop
    tables:
      - name: shop.orders
        primary_key: [id]
pubsub:
  project: acme-data
"""
    )
    layout = load_config(p, env={}).registry.pubsub_layout()
    assert not any("shop" in t for t in layout.topics())
