"""``cdc apply``, ``cdc history`` and ``cdc as-of`` through the real command line (DuckDB warehouse).

The headline property: applying a file, or the same file shuffled and split into batches of 7,
leaves ``cdc history --format jsonl`` identical apart from ``_ingested_at``.
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest

from cdc.cli import main
from state_models.debezium import encode_debezium
from state_models.events import ChangeEvent
from tests.scd2_histories import BASE_TS, event, table_def

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "debezium"
CONFIG = """\
    warehouse: duckdb:///./warehouse.duckdb
    state_dir: ./state
    sources:
      billing:
        kind: postgres
        engine: debezium
        dsn: postgresql://nobody@127.0.0.1:9/none   # never contacted by these commands
        tables:
          - name: public.subscriptions
            primary_key: [id]
            columns: {id: bigint, plan: text, amount: "numeric(12,2)", note: text, n: int}
          - name: public.plan_prices
            primary_key: [plan, currency]
            columns: {plan: text, currency: text, price: "numeric(10,2)", note: text}
"""


def project(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "cdc.yaml").write_text(textwrap.dedent(CONFIG))
    return folder / "cdc.yaml"


def cdc(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def apply_file(capsys, config: Path, path: Path, *extra: str) -> tuple[int, str, str]:
    return cdc(capsys, "apply", "--config", str(config), "--source", "billing", *extra, str(path))


def a_history(seed: int) -> list[ChangeEvent]:
    """A few hundred changes to a handful of keys: re-inserts, TOAST, deletes, a truncate."""
    rnd = random.Random(seed)
    subs, prices = table_def(), table_def(composite=True)
    live: dict[int, dict] = {}
    out: list[ChangeEvent] = []
    for tx in range(1, 120):
        ts = BASE_TS + tx // 3 * 1_000_000  # three transactions per second: equal commit times
        for i in range(rnd.randint(1, 3)):
            k = rnd.randint(1, 12)
            seq = (tx, tx * 10 + i)
            if k not in live:
                live[k] = {
                    "plan": rnd.choice(["basic", "pro"]),
                    "note": "x" * rnd.randint(0, 9),
                    "n": tx,
                }
                out.append(event(subs, "c", {"id": k}, seq, ts, live[k]))
            elif rnd.random() < 0.2:
                del live[k]
                out.append(event(subs, "d", {"id": k}, seq, ts))
            else:
                live[k] = {**live[k], "amount": f"{rnd.randint(0, 9999) / 100:.2f}"}
                toast = rnd.random() < 0.5
                after = {c: v for c, v in live[k].items() if not (toast and c == "note")}
                out.append(event(subs, "u", {"id": k}, seq, ts, after, ("note",) if toast else ()))
        if tx == 60:
            out.append(event(subs, "t", {}, (tx, tx * 10 + 9), ts))
            live.clear()
    out.append(
        event(prices, "c", {"plan": "ab", "currency": "c"}, (200, 1), BASE_TS, {"price": "1.00"})
    )
    out.append(
        event(prices, "c", {"plan": "a", "currency": "bc"}, (200, 2), BASE_TS, {"price": "2.00"})
    )
    return out


def write_events(path: Path, events: list[ChangeEvent]) -> Path:
    path.write_text("".join(encode_debezium(e, "postgres") + "\n" for e in events))
    return path


def jsonl(capsys, command: str, config: Path, table: str, *args: str) -> list[dict]:
    code, out, err = cdc(
        capsys, command, "--config", str(config), table, *args, "--format", "jsonl"
    )
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def history_jsonl(capsys, config: Path, table: str) -> list[dict]:
    rows = jsonl(capsys, "history", config, table)
    for r in rows:
        assert r.pop("_ingested_at").endswith("Z")
    return rows


def test_a_file_and_the_same_file_shuffled_in_batches_of_7_give_the_same_history(tmp_path, capsys):
    events = a_history(seed=3)
    file = write_events(tmp_path / "events.jsonl", events)
    shuffled_lines = file.read_text().splitlines()
    random.Random(4).shuffle(shuffled_lines)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(shuffled_lines + shuffled_lines[:40]) + "\n")  # + duplicates

    first, second = project(tmp_path, "a"), project(tmp_path, "b")
    code, out, err = cdc(capsys, "apply", "--config", str(first), "--source", "billing", str(file))
    assert code == 0, err
    assert "billing.public.subscriptions" in out and "billing_subscriptions" in out
    code, out, err = cdc(
        capsys,
        "apply",
        "--config",
        str(second),
        "--source",
        "billing",
        "--batch-size",
        "7",
        str(shuffled),
    )
    assert code == 0, err

    for table in ("billing.public.subscriptions", "plan_prices"):
        in_order = history_jsonl(capsys, first, table)
        assert in_order == history_jsonl(capsys, second, table)
    subs = history_jsonl(capsys, first, "subscriptions")
    assert len(subs) > len(events) // 2
    assert {r["_op"] for r in subs} == {"c", "u", "d", "t"}
    assert all(isinstance(r["amount"], str | None) for r in subs)  # decimals as strings
    assert all(r["_valid_from"].endswith("Z") and len(r["_valid_from"]) == 27 for r in subs)

    # and applying the shuffled file again to the first warehouse changes nothing
    before = history_jsonl(capsys, first, "subscriptions")
    code, out, _ = cdc(
        capsys, "apply", "--config", str(first), "--source", "billing", str(shuffled)
    )
    assert code == 0 and history_jsonl(capsys, first, "subscriptions") == before


def test_what_cannot_be_applied_goes_to_dead_letters_and_exit_1(tmp_path, capsys):
    config = project(tmp_path, "p")
    golden = [
        json.loads(line)["value"]
        for line in (GOLDEN / "pg_schemas_string.jsonl").read_text().splitlines()
    ]
    lines = [v if v is not None else "null" for v in golden]
    unregistered = json.loads(lines[0])
    unregistered["payload"]["source"]["table"] = "refunds"
    wide = json.loads(lines[0])
    wide["payload"]["after"]["id"] = 99
    wide["payload"]["after"]["amount"] = "1.001"  # numeric(12,2) cannot hold it
    lines += ["{not json", json.dumps(unregistered), json.dumps(wide)]
    file = tmp_path / "in.jsonl"
    file.write_text("\n".join(lines) + "\n")

    code, out, err = cdc(capsys, "apply", "--config", str(config), "--source", "billing", str(file))
    assert code == 1
    folder = tmp_path / "p" / "state" / "dead_letters"
    assert "3 event(s) could not be applied" in err and str(folder) in err
    letters = [
        json.loads(line)
        for f in sorted(folder.glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    by_type = {d["error_type"]: d for d in letters}
    assert set(by_type) == {"DecodeError", "UnknownTableError", "SchemaChangeError"}
    assert by_type["DecodeError"]["raw"] == "{not json"
    assert by_type["DecodeError"]["context"] == {"file": str(file), "line": len(golden) + 1}
    assert "refunds is not registered" in by_type["UnknownTableError"]["reason"]
    assert json.loads(by_type["SchemaChangeError"]["raw"]) == wide
    assert "more than 2 decimal places" in by_type["SchemaChangeError"]["reason"]
    # everything else was applied
    code, out, _ = cdc(
        capsys,
        "as-of",
        "--config",
        str(config),
        "subscriptions",
        "--at",
        "2100-01-01T00:00:00Z",
        "--format",
        "jsonl",
    )
    assert code == 0 and sorted(json.loads(r)["id"] for r in out.splitlines()) == [1, 3]


def test_history_filters_by_key_and_as_of_by_seq(tmp_path, capsys):
    config = project(tmp_path, "p")
    apply_file(capsys, config, write_events(tmp_path / "e.jsonl", a_history(seed=5)))
    rows = history_jsonl(capsys, config, "subscriptions")
    some = rows[len(rows) // 2]
    mine = jsonl(capsys, "history", config, "subscriptions", "--key", f"id={some['id']}")
    assert {r["id"] for r in mine} == {some["id"]}
    assert [r["_seq"] for r in mine] == sorted(r["_seq"] for r in mine)

    live = {
        r["id"]: r for r in jsonl(capsys, "as-of", config, "subscriptions", "--seq", some["_seq"])
    }
    expected = {}
    for r in rows:  # the latest version at or before the seq, if it is not a tombstone
        if r["_seq"] <= some["_seq"]:
            expected[r["id"]] = r
    assert {k: v["_seq"] for k, v in live.items()} == {
        k: v["_seq"] for k, v in expected.items() if not v["_is_deleted"]
    }
    code, out, _ = cdc(
        capsys, "history", "--config", str(config), "subscriptions", "--format", "csv"
    )
    assert code == 0 and out.splitlines()[0].startswith("id,plan,amount,note,n,_valid_from")


@pytest.mark.parametrize(
    "args, message",
    [
        (["apply", "--source", "biling", "x.jsonl"], "no source 'biling'"),
        (["apply", "--source", "billing", "missing.jsonl"], "event file missing.jsonl not found"),
        (["history", "subscriptionz"], "did you mean"),
        (["history", "subscriptions", "--key", "idd=1"], "has no column 'idd'; did you mean 'id'"),
        (["history", "subscriptions", "--key", "id"], "expected COLUMN=VALUE"),
        (["as-of", "subscriptions", "--at", "yesterday"], "not an ISO-8601 time"),
        (["as-of", "subscriptions", "--seq", "0/16B3748"], "is not a seq"),
        (["as-of", "subscriptions", "--at", ""], "--at '' is not an ISO-8601 time"),
        (["as-of", "subscriptions", "--seq", ""], "--seq '' is not a seq"),
        (["history", "subscriptions", "--key", "id=abc"], "holds int64 values, not 'abc'"),
        (["history", "subscriptions", "--key", "amount=1.2.3"], "values, not '1.2.3'"),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(tmp_path, capsys, monkeypatch, args, message):
    config = project(tmp_path, "p")
    monkeypatch.chdir(tmp_path / "p")
    # a table must exist for the --key check to know its columns
    apply_file(capsys, config, write_events(tmp_path / "e.jsonl", a_history(seed=1)[:5]))
    code, _, err = cdc(capsys, args[0], "--config", str(config), *args[1:])
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_global_options_go_before_or_after_the_command(tmp_path, capsys):
    config = project(tmp_path, "p")
    apply_file(capsys, config, write_events(tmp_path / "e.jsonl", a_history(seed=2)[:5]))
    before = cdc(capsys, "--config", str(config), "history", "subscriptions", "--format", "jsonl")
    after = cdc(capsys, "history", "--config", str(config), "subscriptions", "--format", "jsonl")
    assert before[0] == 0 and before == after and before[1].strip()
    # a subcommand's own default never overwrites the global value
    code, out, _ = cdc(capsys, "--config", str(config), "--debug", "tables")
    assert code == 0 and "billing.public.subscriptions" in out


def test_the_table_format_in_a_pipe_cuts_nothing(tmp_path, capsys):
    config = project(tmp_path, "p")
    long_note = "n" * 120
    events = a_history(seed=3)[:3]
    events[0].after["note"] = long_note
    apply_file(capsys, config, write_events(tmp_path / "e.jsonl", events))
    code, out, _ = cdc(capsys, "history", "--config", str(config), "subscriptions")
    assert code == 0 and long_note in out and "…" not in out
    seqs = [r["_seq"] for r in history_jsonl(capsys, config, "subscriptions")]
    assert all(s in out for s in seqs)


def test_odd_bytes_and_line_separators_are_kept_exactly_and_never_break_the_dead_letter_commands(
    tmp_path, capsys
):
    import base64

    config = project(tmp_path, "p")
    events = a_history(seed=4)[:3]
    good = [encode_debezium(e, "postgres").encode() for e in events]
    not_utf8 = good[0][:-1] + b', "note": "caf\xe9"}'  # Latin-1 bytes in a UTF-8 stream
    separators = '{"payload": {"op": "c", "after": {"note": "a\u2028b\u2029c\u0085d"}}}'.encode()
    file = tmp_path / "in.jsonl"
    file.write_bytes(b"\n".join([good[0], not_utf8, separators, *good[1:]]) + b"\n")

    code, _, err = apply_file(capsys, config, file)
    assert code == 1 and "2 event(s) could not be applied" in err
    code, out, err = cdc(capsys, "dead-letters", "ls", "--config", str(config), "--format", "json")
    assert code == 0, err
    letters = {d["context"]["line"]: d for d in json.loads(out)}
    assert set(letters) == {2, 3}
    assert "not UTF-8 text: byte 0xe9" in letters[2]["reason"]
    for line, original in ((2, not_utf8), (3, separators)):
        code, out, err = cdc(
            capsys, "dead-letters", "show", "--config", str(config), letters[line]["id"]
        )
        assert code == 0, err
        shown = json.loads(out)
        stored = (
            base64.b64decode(shown["raw"])
            if shown["raw_encoding"] == "base64"
            else shown["raw"].encode()
        )
        assert stored == original  # the exact bytes, nothing replaced
    # the good lines applied, and retry / status keep working
    assert len(history_jsonl(capsys, config, "subscriptions")) == 3
    code, out, _ = cdc(capsys, "dead-letters", "retry", "--config", str(config))
    assert code == 1 and "2 still failing" in out
    code, _, err = cdc(capsys, "status", "--config", str(config))
    assert code == 0, err


def test_an_event_with_a_column_no_state_table_can_hold_is_rejected_alone(tmp_path, capsys):
    config = project(tmp_path, "p")
    events = [e for e in a_history(seed=6) if e.after is not None][:4]
    lines = [json.loads(encode_debezium(e, "postgres")) for e in events]
    ours = json.loads(json.dumps(lines[1]))
    ours["after"]["_seq"] = "forged"  # named like one of our metadata columns
    twin = json.loads(json.dumps(lines[2]))
    twin["after"]["NOTE"] = "shouting"  # `note` is a column already
    empty = json.loads(json.dumps(lines[2]))
    empty["after"][""] = "nameless"
    file = tmp_path / "in.jsonl"
    file.write_text(
        "\n".join(json.dumps(x) for x in [lines[0], ours, twin, empty, lines[3]]) + "\n"
    )

    code, out, err = apply_file(capsys, config, file)
    assert code == 1 and "3 event(s) could not be applied" in err
    code, out, _ = cdc(capsys, "dead-letters", "ls", "--config", str(config), "--format", "json")
    reasons = sorted(d["reason"] for d in json.loads(out))
    assert len(reasons) == 3
    assert any("column '_seq' clashes" in r for r in reasons)
    assert any("'NOTE' and 'note' differ only in case" in r for r in reasons)
    assert any("column name '' is empty" in r for r in reasons)
    # the good events beside them applied
    seqs = {r["_seq"] for r in history_jsonl(capsys, config, "subscriptions")}
    assert seqs == {events[0].seq, events[3].seq}


HOSTILE_CONFIG = """\
warehouse: duckdb:///./w.duckdb
state_dir: ./state
sources:
  billing:
    kind: postgres
    engine: debezium
    dsn: postgresql://nobody@127.0.0.1:9/none
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns: {id: bigint, plan: text, amount: "numeric(12,2)", at: timestamptz, n: int}
"""


def _line(n: int, after: dict, **source: object) -> str:
    src = {
        "connector": "postgresql",
        "schema": "public",
        "table": "subscriptions",
        "lsn": 1000 + n,
        "sequence": json.dumps([str(900 + n), str(1000 + n)]),
        "ts_ms": 1_700_000_000_000 + n,
        **source,
    }
    return json.dumps({"op": "c", "before": None, "after": after, "source": src})


def test_hostile_lines_are_dead_lettered_one_by_one_and_the_rest_applies(tmp_path, capsys):
    config = tmp_path / "cdc.yaml"
    config.write_text(HOSTILE_CONFIG)
    deep = "[" * 100_000 + "]" * 100_000
    hostile = {
        "deep nesting": _line(2, {"id": 2}).replace(
            '"after": {"id": 2}', f'"after": {{"id": 2, "plan": {deep}}}'
        ),
        "lone surrogate": _line(3, {"id": 3, "plan": "\udc00"}),
        "ts_ms beyond 2^63": _line(4, {"id": 4}, ts_ms=2**64),
        "ts_us beyond 2^63": _line(5, {"id": 5}, ts_us=2**64),
        "year 0": _line(6, {"id": 6, "at": "0000-01-01T00:00:00Z"}),
        "BC": _line(7, {"id": 7, "at": "-0001-01-01T00:00:00Z"}),
        "Infinity in numeric": _line(8, {"id": 8, "amount": "Infinity"}),
        "text in numeric": _line(9, {"id": 9, "amount": "oops"}),
        "2.7 into int": _line(10, {"id": 10, "n": 2.7}),
        "1.5 as the key": _line(11, {"id": 11.5, "plan": "x"}),
    }
    good = [_line(1, {"id": 1, "plan": "a"}), _line(12, {"id": 12, "plan": "b", "n": 3})]
    file = tmp_path / "in.jsonl"
    file.write_text("\n".join([good[0], *hostile.values(), good[1]]) + "\n")

    code, _, err = cdc(capsys, "apply", "--config", str(config), "--source", "billing", str(file))
    assert code == 1 and f"{len(hostile)} event(s) could not be applied" in err
    assert "Traceback" not in err
    code, out, err = cdc(capsys, "dead-letters", "ls", "--config", str(config), "--format", "json")
    assert code == 0, err
    by_line = {d["context"]["line"]: d for d in json.loads(out)}
    assert sorted(by_line) == list(range(2, 2 + len(hostile)))  # each bad line, on its own
    reasons = [by_line[n]["reason"] for n in sorted(by_line)]
    for reason, expected in zip(
        reasons,
        [
            "nested too deeply",
            "lone UTF-16 surrogate",
            "not a time in years 1 to 9999",
            "not a time in years 1 to 9999",
            "year 0 is out of range",
            "cannot store '-0001-01-01T00:00:00Z' as timestamp",
            "not a finite number",
            "'oops' is not a decimal number",
            "cannot store 2.7 as int64 (has a fraction)",
            "cannot store 11.5 as int64 (has a fraction)",
        ],
        strict=True,
    ):
        assert expected in reason, (expected, reason)
    # the good lines applied, and every reading command works on the table afterwards
    rows = jsonl(capsys, "history", config, "subscriptions")
    assert [(r["id"], r["plan"], r["n"]) for r in rows] == [(1, "a", None), (12, "b", 3)]
    assert len(jsonl(capsys, "as-of", config, "subscriptions", "--at", "2100-01-01T00:00:00Z")) == 2
    code, _, err = cdc(capsys, "status", "--config", str(config))
    assert code == 0, err
