"""Reading Datastream output files: JSON lines (plain and gzip) and Avro, with bad records located."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from connectors.datastream_files import read_datastream_bytes, read_datastream_file
from state_models.errors import DecodeError, UnknownTableError
from tests.unit.test_datastream import BILLING, GOLDEN, SHOP

GOLDEN_FILES = [
    ("mysql_binlog", SHOP, 8),
    ("mysql_gtid", SHOP, 4),
    ("postgres", BILLING, 5),
]


@pytest.mark.parametrize(("stem", "resolve", "n_events"), GOLDEN_FILES)
def test_avro_json_and_gzip_json_decode_to_the_same_events(stem, resolve, n_events, tmp_path):
    json_path = GOLDEN / f"{stem}.jsonl"
    gz_path = tmp_path / f"{stem}.jsonl.gz"
    gz_path.write_bytes(gzip.compress(json_path.read_bytes()))

    plain = read_datastream_file(str(json_path), resolve)
    zipped = read_datastream_file(str(gz_path), resolve)
    avro = read_datastream_file(str(GOLDEN / f"{stem}.avro"), resolve)

    assert (plain.format, zipped.format, avro.format) == ("json", "json", "avro")
    assert plain.rejected == zipped.rejected == avro.rejected == []
    assert len(plain.events) == n_events
    assert avro.events == plain.events == zipped.events
    assert [e.after for e in avro.events] == [e.after for e in plain.events]
    assert [e.before for e in avro.events] == [e.before for e in plain.events]
    assert all(e.raw for e in avro.events)  # the Avro record, as JSON text


def test_bad_lines_are_reported_with_line_and_byte_offset_and_the_rest_is_decoded(tmp_path):
    good = (GOLDEN / "mysql_binlog.jsonl").read_text().splitlines()
    unknown = json.loads(good[2])
    unknown["source_metadata"]["table"] = "refunds"
    content = "\n".join([good[0], "{not json", "", json.dumps(unknown), good[2]]) + "\n"
    path = tmp_path / "mixed.jsonl"
    path.write_text(content)

    batch = read_datastream_file(str(path), SHOP)

    assert [e.key for e in batch.events] == [{"id": 1}, {"id": 3}]
    assert batch.records == 4
    bad_json, bad_table = batch.rejected
    second_line_at = len(good[0]) + 1
    assert bad_json.where == f"line 2 (byte {second_line_at})"
    assert content.encode()[second_line_at:].startswith(b"{not json")
    assert isinstance(bad_json.error, DecodeError) and bad_json.raw == "{not json\n"
    assert bad_table.where.startswith("line 4 ")
    assert isinstance(bad_table.error, UnknownTableError) and "refunds" in bad_table.reason
    assert str(bad_json).startswith(f"{path}: line 2 (byte {second_line_at}): not valid JSON")


def test_truncated_gzip_keeps_what_was_readable_and_rejects_the_rest():
    data = gzip.compress((GOLDEN / "postgres.jsonl").read_bytes())
    batch = read_datastream_bytes(data[: len(data) - 12], "cut.jsonl.gz", BILLING)
    assert batch.events  # the records before the cut
    assert len(batch.rejected) == 1
    assert "unreadable from here on" in batch.rejected[0].reason


def test_corrupt_avro_block_is_rejected_with_its_offset():
    data = (GOLDEN / "postgres.avro").read_bytes()
    batch = read_datastream_bytes(data[:-40], "cut.avro", BILLING)
    assert batch.format == "avro"
    assert batch.events == []
    [rejected] = batch.rejected
    assert rejected.where.startswith("block at byte ")
    assert "Avro file unreadable" in rejected.reason


def test_not_an_avro_file_is_rejected_at_the_header():
    batch = read_datastream_bytes(b"Obj\x01garbage", "bad.avro", BILLING)
    assert [r.where for r in batch.rejected] == ["header"]


def test_non_utf8_line_is_rejected_with_its_bytes():
    batch = read_datastream_bytes(b"\xff\xfe{}\n", "latin.jsonl", BILLING)
    [rejected] = batch.rejected
    assert rejected.raw == b"\xff\xfe{}\n" and "not UTF-8" in rejected.reason


def test_missing_file_is_an_os_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        read_datastream_file(str(tmp_path / "nope.jsonl"), SHOP)
