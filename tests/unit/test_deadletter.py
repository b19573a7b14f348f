"""The dead-letter store: put, list, show, remove; files written whole; raw bytes kept exactly."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from connectors.deadletter import (
    DeadLetterNotFound,
    DeadLetterStore,
    NewDeadLetter,
    default_folder,
)
from state_models.errors import DecodeError

CLOCK = lambda: dt.datetime(2026, 11, 26, 10, 15, 0, 123456, tzinfo=dt.UTC)  # noqa: E731


def test_put_list_show_remove(tmp_path):
    store = DeadLetterStore(default_folder(tmp_path), clock=CLOCK)
    assert store.list() == [] and len(store) == 0
    one = store.put("bad json", "DecodeError", "{x", source="billing", context={"line": 3})
    two, three = store.put_many(
        [
            NewDeadLetter("unknown table", "UnknownTableError", "{}", "billing", "billing.a.b"),
            NewDeadLetter("too wide", "SchemaChangeError", "{}", "shop", "shop.a.c"),
        ]
    )
    assert one.at == "2026-11-26T10:15:00.123456Z"
    assert [d.id for d in store.list()] == [one.id, two.id, three.id]
    assert [d.id for d in store.list(source="shop")] == [three.id]
    assert [d.id for d in store.list(table="billing.a.b")] == [two.id]
    assert store.show(one.id) == one and one.context == {"line": 3} and one.raw == "{x"

    assert store.remove([two.id, "nope.0"]) == 1
    assert [d.id for d in store.list()] == [one.id, three.id]
    assert store.remove([one.id, three.id]) == 2
    assert list((tmp_path / "dead_letters").iterdir()) == []  # empty files are removed


def test_each_call_writes_one_whole_jsonl_file(tmp_path):
    store = DeadLetterStore(tmp_path / "dl", clock=CLOCK)
    store.put_many([NewDeadLetter("r", "E", "a"), NewDeadLetter("r", "E", "b")])
    store.put("r", "E", "c")
    files = sorted((tmp_path / "dl").glob("*.jsonl"))
    assert len(files) == 2 and not list((tmp_path / "dl").glob(".*"))
    lines = files[0].read_text().splitlines() + files[1].read_text().splitlines()
    assert sorted(json.loads(line)["raw"] for line in lines) == ["a", "b", "c"]


def test_raw_bytes_that_are_not_utf8_round_trip(tmp_path):
    store = DeadLetterStore(tmp_path, clock=CLOCK)
    letter = store.put("binary", "DecodeError", b"\xff\x00ok")
    assert letter.raw_encoding == "base64"
    assert store.show(letter.id).raw_bytes() == b"\xff\x00ok"
    text = store.put("text", "DecodeError", "h\u00e9".encode())
    assert text.raw_encoding == "text" and text.raw == "h\u00e9"


def test_from_error_keeps_the_errors_raw_message(tmp_path):
    error = DecodeError("not valid JSON", raw="{oops")
    letter = DeadLetterStore(tmp_path).put_many([NewDeadLetter.from_error(error, source="s")])[0]
    assert (letter.reason, letter.error_type, letter.raw) == (
        "not valid JSON",
        "DecodeError",
        "{oops",
    )


def test_unknown_ids_say_what_is_close(tmp_path):
    store = DeadLetterStore(tmp_path, clock=CLOCK)
    letter = store.put("r", "E", "x")
    with pytest.raises(DeadLetterNotFound, match=f"did you mean '{letter.id}'"):
        store.show(letter.id[:-1] + "9")


def test_a_hand_edited_file_is_reported_with_its_place(tmp_path):
    store = DeadLetterStore(tmp_path, clock=CLOCK)
    store.put("r", "E", "x")
    path = next(tmp_path.glob("*.jsonl"))
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(Exception, match=f"{path.name}:2: not a dead letter"):
        store.list()


def test_the_same_failure_reported_twice_is_one_letter(tmp_path):
    # at-least-once delivery: a redelivered message fails again with the same reason and context
    store = DeadLetterStore(default_folder(tmp_path), clock=CLOCK)
    bad = NewDeadLetter(
        "not valid JSON", "DecodeError", b"{x", "billing", "billing.a.b", {"message_id": "7"}
    )
    first = store.put_many([bad])[0]
    store.put_many([bad, NewDeadLetter("other", "DecodeError", b"{y", "billing", "billing.a.b")])
    other_message = NewDeadLetter(
        "not valid JSON", "DecodeError", b"{x", "billing", "billing.a.b", {"line": 8}
    )
    store.put_many([other_message])
    listed = store.list()
    assert [(d.raw, d.copies) for d in listed] == [("{x", 2), ("{y", 1), ("{x", 1)]
    assert listed[0].id == first.id and len(store) == 3
    assert first.fingerprint == bad.fingerprint() != other_message.fingerprint()
    # the same bytes published again (a new message id and time) are the same failure
    again = NewDeadLetter(
        "not valid JSON",
        "DecodeError",
        b"{x",
        "billing",
        "billing.a.b",
        {"message_id": "9", "publish_time": "t"},
    )
    assert again.fingerprint() == bad.fingerprint()
    # retrying it removes every copy, and counts it once
    assert store.remove([first.id]) == 1
    assert [(d.raw, d.copies) for d in store.list()] == [("{y", 1), ("{x", 1)]


def test_letters_written_before_fingerprints_still_list(tmp_path):
    folder = default_folder(tmp_path)
    folder.mkdir()
    old = {
        "id": "20261126T101500123456Z-000000-3f9a01.0",
        "at": "2026-11-26T10:15:00.123456Z",
        "reason": "r",
        "error_type": "DecodeError",
        "source": None,
        "table": None,
        "raw": "{",
        "raw_encoding": "text",
        "context": {},
    }
    (folder / "20261126T101500123456Z-000000-3f9a01.jsonl").write_text(json.dumps(old) + "\n")
    [letter] = DeadLetterStore(folder).list()
    assert letter.fingerprint is None and letter.copies == 1
    assert DeadLetterStore(folder).remove([letter.id]) == 1
