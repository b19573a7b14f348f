"""The Beam steps of the merge jobs on the DirectRunner: TestStream in, DuckDB and files out.

The streaming steps run on ``TestStream`` (the BundleBasedDirectRunner, as the real job locally);
metrics are asserted on batch pipelines only, because Beam 2.77's BundleBasedDirectRunner counts
only the first bundle of each step (``StateSampler.scoped_state`` caches the first bundle's metrics
container), while the FnApiRunner and Dataflow count every bundle.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

beam = pytest.importorskip("apache_beam", reason="needs apache-beam (pip install -e '.[gcp]')")

from apache_beam.io.gcp.pubsub import PubsubMessage  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing import test_stream  # noqa: E402

from connectors.changelog import ChangelogWriter  # noqa: E402
from connectors.changelog.reader import ChangelogReader  # noqa: E402
from connectors.deadletter import DeadLetterStore  # noqa: E402
from connectors.warehouse import open_warehouse  # noqa: E402
from connectors.warehouse.duckdb import DuckDBWarehouse  # noqa: E402
from merge_jobs.backfill import build_replay, plan_replay  # noqa: E402
from merge_jobs.pool import POOL, ResourcePool  # noqa: E402
from merge_jobs.settings import JobSettings  # noqa: E402
from merge_jobs.transforms import (  # noqa: E402
    DecodeMessages,
    MergeIntoWarehouse,
    RetryPolicy,
    StoreDeadLetters,
    WarehouseConnector,
    WriteChangelog,
)
from state_models.changelog import ChangeRange  # noqa: E402
from state_models.errors import TransientError  # noqa: E402
from state_models.events import ChangeEvent  # noqa: E402
from state_models.pubsub import message_for  # noqa: E402
from state_models.scd2 import INGESTED_AT, TableDef  # noqa: E402
from state_models.tables import TableInfo  # noqa: E402
from tests.scd2_histories import BASE_TS, INGESTED, event  # noqa: E402

TABLE = TableDef(
    "billing.public.subscriptions",
    "billing_subscriptions",
    "postgres",
    ("id",),
    {"id": "bigint", "plan": "text", "amount": "numeric(12,2)"},
)
INFOS = (TableInfo(TABLE.table_id, TABLE.primary_key, TABLE.declared),)
SECOND = 1_000_000


def history_events() -> list[ChangeEvent]:
    """Inserts, same-second updates, a delete and a re-insert, over three keys."""
    e = []
    for i in range(3):
        e.append(
            event(
                TABLE, "c", {"id": i}, (1, i), BASE_TS, {"plan": "basic", "amount": Decimal("9.99")}
            )
        )
    e.append(
        event(
            TABLE,
            "u",
            {"id": 0},
            (2, 1),
            BASE_TS + SECOND,
            {"plan": "pro", "amount": Decimal("19.99")},
        )
    )
    e.append(
        event(
            TABLE,
            "u",
            {"id": 0},
            (3, 1),
            BASE_TS + SECOND,
            {"plan": "team", "amount": Decimal("49.00")},
        )
    )
    e.append(event(TABLE, "d", {"id": 1}, (4, 1), BASE_TS + 2 * SECOND))
    e.append(
        event(
            TABLE,
            "c",
            {"id": 1},
            (5, 1),
            BASE_TS + 3 * SECOND,
            {"plan": "pro", "amount": Decimal("19.99")},
        )
    )
    e.append(
        event(
            TABLE,
            "u",
            {"id": 2},
            (6, 1),
            BASE_TS + 4 * SECOND,
            {"plan": "basic", "amount": Decimal("5.00")},
        )
    )
    return e


def pubsub_message(e: ChangeEvent) -> PubsubMessage:
    m = message_for(e, "postgres")
    return PubsubMessage(m.data, m.attributes, message_id=f"m-{e.event_id[:8]}")


def direct_history(events: list[ChangeEvent]) -> list[dict[str, Any]]:
    """What applying the events once, directly, gives (the warehouse is checked against the oracle
    by the contract suite)."""
    wh = DuckDBWarehouse()
    try:
        wh.apply(TABLE, events, INGESTED)
        return strip(wh.history(TABLE))
    finally:
        wh.close()


def beam_history(url: str) -> list[dict[str, Any]]:
    POOL.close_idle()  # the job's pooled connection, so that the file is read as committed
    wh = open_warehouse(url)
    try:
        return strip(wh.history(TABLE))
    finally:
        wh.close()


def beam_progress(url: str) -> dict[str, Any]:
    """The job's one ``cdc_progress`` row (the table's)."""
    POOL.close_idle()
    wh = open_warehouse(url)
    try:
        [row] = wh.progress()
        return row
    finally:
        wh.close()


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != INGESTED_AT} for r in rows]


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {
        "warehouse": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        "changelog": str(tmp_path / "changelog"),
        "dead_letters": str(tmp_path / "dead_letters"),
    }
    POOL.close_idle()


# per_bundle: the DirectRunner's batching (one batch per table per bundle, MERGEs serialized by a
# process lock) instead of GroupIntoBatches
@pytest.mark.parametrize("per_bundle", [False, True], ids=["group_into_batches", "per_bundle"])
def test_streaming_steps_merge_archive_and_dead_letter(
    paths: dict[str, str], per_bundle: bool
) -> None:
    events = history_events()
    messages = [pubsub_message(e) for e in events]
    # Pub/Sub redelivers and reorders: a late duplicate of the first insert, the delete twice.
    messages += [messages[0], messages[5]]
    messages[3], messages[4] = messages[4], messages[3]
    malformed = PubsubMessage(
        b'{"op": "u", "source": ', {"table": TABLE.table_id}, message_id="m-malformed"
    )
    stranger = dataclasses.replace(events[0], table="billing.public.nope", event_id="")
    unregistered = pubsub_message(stranger)
    tombstone = PubsubMessage(b"", {"table": TABLE.table_id}, message_id="m-tombstone")
    messages[2:2] = [malformed, tombstone]
    messages.append(unregistered)

    stream = test_stream.TestStream().advance_watermark_to(0)
    for i, m in enumerate(messages):
        stream = stream.add_elements([m]).advance_processing_time(0.4)
        if i == len(messages) // 2:
            stream = stream.advance_watermark_to(30)  # closes the first changelog window
    stream = stream.advance_watermark_to_infinity()

    pipeline = beam.Pipeline(options=PipelineOptions([], streaming=True))
    decoded = pipeline | stream | "Decode" >> DecodeMessages(INFOS)
    _, archive_rejects = decoded.events | "Changelog" >> WriteChangelog(
        paths["changelog"], window_s=10
    )
    _, merge_rejects = decoded.events | "Merge" >> MergeIntoWarehouse(
        WarehouseConnector(paths["warehouse"]),
        {TABLE.table_id: TABLE},
        batch_size=3,
        max_latency_s=1,
        per_bundle=per_bundle,
    )
    letters = (decoded.dead_letters, archive_rejects, merge_rejects) | beam.Flatten()
    _ = letters | "DeadLetters" >> StoreDeadLetters(paths["dead_letters"])
    pipeline.run().wait_until_finish()

    assert beam_history(paths["warehouse"]) == direct_history(events)
    progress = beam_progress(paths["warehouse"])
    newest = max(events, key=lambda e: e.commit_ts)
    assert (progress["table_id"], progress["writer"]) == (TABLE.table_id, "beam")
    assert progress["applied_seq"] == max(e.seq for e in events)
    assert progress["applied_commit_at"].timestamp() == newest.commit_ts / 1e6
    assert progress["caught_up_at"] is None  # the job reads Pub/Sub: it cannot attest the source

    # every event is archived (duplicates may be too), in complete files under the layout
    reader = ChangelogReader(paths["changelog"])
    archived = [e for batch in reader.events(TABLE.table_id) for e in batch]
    assert {e.event_id for e in archived} == {e.event_id for e in events}
    assert all(Path(f.path).parent.name.startswith("hour=") for f in reader.files(TABLE.table_id))

    letters_by_type = {d.error_type: d for d in DeadLetterStore(paths["dead_letters"]).list()}
    assert set(letters_by_type) == {"DecodeError", "UnknownTableError"}
    bad = letters_by_type["DecodeError"]
    assert bad.raw == '{"op": "u", "source": ' and "not valid JSON" in bad.reason
    assert bad.context["message_id"] == "m-malformed" and bad.context["stage"] == "decode"
    assert "nope is not registered" in letters_by_type["UnknownTableError"].reason
    assert letters_by_type["UnknownTableError"].raw == unregistered.data.decode()


# --------------------------------------------------------------------------- retries, metrics

_FAILURES: dict[str, int] = {}


class _Flaky:
    """A warehouse whose first ``apply`` calls fail as a busy server would."""

    def __init__(self, inner: Any, token: str):
        self.inner, self.token = inner, token

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        if _FAILURES[self.token] > 0:
            _FAILURES[self.token] -= 1
            raise TransientError("warehouse busy (test)")
        return self.inner.apply(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass(frozen=True)
class FlakyWarehouse:
    url: str
    token: str

    def __call__(self) -> Any:
        return _Flaky(open_warehouse(self.url), self.token)


def counters(result: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in result.metrics().query()["counters"]:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + c.committed
    return out


def distributions(result: Any) -> dict[str, Any]:
    return {d.key.metric.name: d.committed for d in result.metrics().query()["distributions"]}


def test_transient_errors_are_retried_and_unfit_events_dead_lettered(
    paths: dict[str, str],
) -> None:
    events = history_events()
    too_precise = event(
        TABLE,
        "u",
        {"id": 2},
        (7, 1),
        BASE_TS + 5 * SECOND,
        {"plan": "x", "amount": Decimal("0.001")},
    )
    messages = [pubsub_message(e) for e in [*events, too_precise]]
    _FAILURES["t1"] = 2

    pipeline = beam.Pipeline(options=PipelineOptions([], streaming=False))
    decoded = pipeline | beam.Create(messages) | "Decode" >> DecodeMessages(INFOS)
    _, rejects = decoded.events | "Merge" >> MergeIntoWarehouse(
        FlakyWarehouse(paths["warehouse"], "t1"),
        {TABLE.table_id: TABLE},
        batch_size=100,
        max_latency_s=None,
        retry=RetryPolicy(attempts=3, first_delay_s=0.01),
    )
    _ = (decoded.dead_letters, rejects) | beam.Flatten() | StoreDeadLetters(paths["dead_letters"])
    result = pipeline.run()
    result.wait_until_finish()

    assert _FAILURES["t1"] == 0
    # the batch with the unfit value is dead-lettered whole (one MERGE per batch is atomic)
    letters = DeadLetterStore(paths["dead_letters"]).list()
    assert {d.context["stage"] for d in letters} == {"merge"}
    assert {d.error_type for d in letters} == {"SchemaChangeError"}
    assert any("decimal places" in d.reason for d in letters)
    assert {json.loads(d.raw)["source"]["sequence"] for d in letters}  # the original message
    n = len(messages)
    c = counters(result)
    assert c["events_decoded"] == n
    assert c.get("transient_retries") == 2, c
    assert c["events_merged"] + c["dead_letters"] == n
    assert c["dead_letters"] == len(letters)
    d = distributions(result)
    assert d["batch_size"].sum == n and d["batch_size"].count == c["merges"] == 1
    # the lag of what was applied: a refused event's commit time is what may be wrong
    lag = d["commit_to_merge_lag_ms"]
    assert lag.count == c["events_merged"] == n - len(letters) and lag.min > 0


def test_streaming_merge_gives_up_after_the_retry_budget(paths: dict[str, str]) -> None:
    _FAILURES["t2"] = 10
    pipeline = beam.Pipeline(options=PipelineOptions([], streaming=False))
    decoded = (
        pipeline
        | beam.Create([pubsub_message(e) for e in history_events()])
        | "Decode" >> DecodeMessages(INFOS)
    )
    _ = decoded.events | "Merge" >> MergeIntoWarehouse(
        FlakyWarehouse(paths["warehouse"], "t2"),
        {TABLE.table_id: TABLE},
        max_latency_s=None,
        retry=RetryPolicy(attempts=2, first_delay_s=0.01),
    )
    with pytest.raises(Exception, match="warehouse busy"):
        pipeline.run().wait_until_finish()


# --------------------------------------------------------------------------- replay


def test_replay_applies_a_range_and_is_idempotent(paths: dict[str, str], tmp_path: Path) -> None:
    events = history_events()
    with ChangelogWriter(paths["changelog"]) as writer:  # two writers, two files, a duplicate
        writer.append(events[:5])
    with ChangelogWriter(paths["changelog"]) as writer:
        writer.append(events[4:])
    settings = JobSettings(
        tables=INFOS,
        table_defs={TABLE.table_id: TABLE},
        warehouse_url=paths["warehouse"],
        changelog_root=paths["changelog"],
        dead_letter_folder=paths["dead_letters"],
        batch_size=2,
    )
    # commit times from BASE_TS + 1 s on: the three inserts stay out
    rng = ChangeRange(since_us=BASE_TS + SECOND)
    plan = plan_replay(paths["changelog"], [TABLE.table_id], rng)
    assert len(plan.files) == 2 and not plan.unreadable

    def replay() -> Any:
        pipeline = beam.Pipeline(options=PipelineOptions([], streaming=False))
        build_replay(pipeline, settings, plan.files, rng)
        result = pipeline.run()
        result.wait_until_finish()
        return result

    first = replay()
    expected = direct_history([e for e in events if e.commit_ts >= BASE_TS + SECOND])
    assert beam_history(paths["warehouse"]) == expected
    c = counters(first)
    assert c["events_replayed"] == 6  # five in range, one of them in both files
    assert c["changelog_rows_read"] == len(events) + 1
    replay()
    assert beam_history(paths["warehouse"]) == expected
    assert beam_progress(paths["warehouse"])["applied_seq"] == max(e.seq for e in events)


def test_pool_lends_each_object_to_one_borrower_at_a_time() -> None:
    pool = ResourcePool()
    made: list[object] = []

    def make() -> object:
        made.append(object())
        return made[-1]

    a = pool.acquire("k", make)
    b = pool.acquire("k", make)
    assert a is not b
    pool.release("k", a)
    assert pool.acquire("k", make) is a
    assert pool.acquire("other", make) is made[-1] and len(made) == 3
    pool.release("k", b)
    assert pool.close_idle() == 1
    # one lock per key, shared by every borrower of the process
    assert pool.lock(("wh", "t1")) is pool.lock(("wh", "t1"))
    assert pool.lock(("wh", "t1")) is not pool.lock(("wh", "t2"))


def _direct_pipeline() -> beam.Pipeline:
    return beam.Pipeline(runner="DirectRunner")


def test_direct_runner_hooks_fit_the_installed_beam() -> None:
    import apache_beam

    from merge_jobs.direct_runner import CHECKED_BEAM, missing_internals

    assert apache_beam.__version__.startswith(tuple(f"{v}." for v in CHECKED_BEAM))
    assert missing_internals() == []


def test_direct_runner_hooks_only_for_the_direct_runner_and_removable(caplog: Any) -> None:
    import apache_beam
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms import userstate

    from merge_jobs import direct_runner

    overrides = transform_evaluator.TransformEvaluatorRegistry._test_evaluators_overrides
    beams_specs = userstate.get_dofn_specs
    assert not direct_runner.install(beam.Pipeline(runner=FnApiRunner()))
    assert _DirectReadFromPubSub not in overrides and userstate.get_dofn_specs is beams_specs

    assert direct_runner.install(_direct_pipeline()) and direct_runner.installed()
    assert _DirectReadFromPubSub in overrides and userstate.get_dofn_specs is not beams_specs
    direct_runner.uninstall()
    assert _DirectReadFromPubSub not in overrides and not direct_runner.installed()
    assert userstate.get_dofn_specs is beams_specs
    assert transform_evaluator.get_dofn_specs is beams_specs

    # a Beam the hooks were not checked against: a warning, Beam's own read
    real = apache_beam.__version__
    try:
        apache_beam.__version__ = "2.99.0"
        with caplog.at_level("WARNING", logger="merge_jobs.direct_runner"):
            assert not direct_runner.install(_direct_pipeline())
    finally:
        apache_beam.__version__ = real
    assert "Beam 2.99.0 is not one they were checked against" in caplog.text
    assert _DirectReadFromPubSub not in overrides and userstate.get_dofn_specs is beams_specs


def test_direct_runner_reads_pubsub_in_large_pulls() -> None:
    from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub
    from apache_beam.runners.direct.transform_evaluator import (
        TransformEvaluatorRegistry,
        _PubSubReadEvaluator,
    )
    from apache_beam.utils.timestamp import Timestamp
    from google.pubsub_v1.types import pubsub as types

    from merge_jobs.direct_runner import install, received_elements

    assert install(_direct_pipeline())
    evaluator = TransformEvaluatorRegistry._test_evaluators_overrides[_DirectReadFromPubSub]
    assert issubclass(evaluator, _PubSubReadEvaluator)

    # the same elements as Beam's own conversion, built from the raw protobuf
    sent = types.PubsubMessage(
        data=b"{}",
        attributes={"table": TABLE.table_id},
        message_id="7",
        ordering_key="k",
        publish_time={"seconds": 1_700_000_000, "nanos": 123_456_789},
    )
    response = types.PullResponse(
        received_messages=[types.ReceivedMessage(ack_id="a1", message=sent)]
    )
    [(timestamp, message)], ack_ids = received_elements(response)
    beams = PubsubMessage._from_message(response.received_messages[0].message)
    assert ack_ids == ["a1"]
    assert timestamp == Timestamp.from_utc_datetime(beams.publish_time)
    assert message == beams
    assert (message.message_id, message.publish_time, message.ordering_key) == (
        beams.message_id,
        beams.publish_time,
        beams.ordering_key,
    )


def test_direct_runner_remembers_dofn_specs_by_class() -> None:
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import userstate
    from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
    from apache_beam.utils.timestamp import Timestamp

    from merge_jobs.direct_runner import install

    class Stateful(beam.DoFn):
        BUFFER = BagStateSpec("buffer", beam.coders.PickleCoder())
        FLUSH = TimerSpec("flush", beam.TimeDomain.REAL_TIME)

        def process(
            self,
            element: Any,
            buffer: Any = beam.DoFn.StateParam(BUFFER),  # noqa: B008 - how Beam declares state
            flush: Any = beam.DoFn.TimerParam(FLUSH),  # noqa: B008
        ) -> None:
            flush.set(Timestamp.now())

        @on_timer(FLUSH)
        def on_flush(self) -> None:
            pass

    class Plain(beam.DoFn):
        def process(self, element: Any) -> Iterator[Any]:
            yield element

    install(_direct_pipeline())
    get_specs = userstate.get_dofn_specs
    assert transform_evaluator.get_dofn_specs is get_specs
    assert get_specs(Stateful()) == ({Stateful.BUFFER}, {Stateful.FLUSH})
    assert get_specs(Stateful()) == ({Stateful.BUFFER}, {Stateful.FLUSH})  # remembered
    assert userstate.is_stateful_dofn(Stateful()) and not userstate.is_stateful_dofn(Plain())
    # a method set on one instance is not a property of the class: derived afresh, not remembered
    odd = Plain()
    odd.start_bundle = Stateful().process  # type: ignore[method-assign]
    assert get_specs(odd) == ({Stateful.BUFFER}, {Stateful.FLUSH})
    assert get_specs(Plain()) == (set(), set())
    install(_direct_pipeline())
    assert userstate.get_dofn_specs is get_specs  # installed once
