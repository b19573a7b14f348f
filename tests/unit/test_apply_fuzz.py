"""Arbitrary lines and values through `cdc apply`: each line applies exactly, or is dead-lettered.

Hypothesis writes files of Debezium lines whose values are drawn from what an upstream system or a
careless user produces (fractions into integers, words into decimals, years 0 and 10000, lone
surrogates, nesting, floats into text, garbage lines). An oracle of its own, written here from
the column types and NOT calling the product's coercion, says for each line whether it is valid
and what row it must become. Then:

- the command never crashes: exit 0 when every line is valid, else 1, one error line;
- every valid line is a version holding exactly the oracle's values, even beside bad ones;
- every invalid line is one dead letter, with a reason and the line's place;
- `dead-letters ls`, `show` and `retry` keep working.

CI runs a fixed set of 25 files (derandomized); `CDC_FUZZ_EXAMPLES=500` explores afresh.

Every file is applied twice, into two projects: in one batch (a column with mixed types takes the
per-value staging path) and one line per batch (`--batch-size 1`: a line whose values all have
exact types takes Arrow's bulk path); both must give the same history.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from decimal import Context, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdc.cli import main

CONFIG = """\
    warehouse: duckdb:///./w.duckdb
    state_dir: ./state
    sources:
      billing:
        kind: postgres
        engine: debezium
        dsn: postgresql://nobody@127.0.0.1:9/none
        tables:
          - name: public.items
            primary_key: [id]
            columns: {id: bigint, n: bigint, amount: "numeric(12,2)", note: text, at: timestamptz, flag: boolean}
"""
INT64 = (-(2**63), 2**63 - 1)
INVALID = object()  # what the oracle says of a value no column of that type can hold

# ---------------------------------------------------------------------------- the oracle


def expect_int(value: Any) -> Any:
    if isinstance(value, bool):
        return INVALID
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or value != int(value):
            return INVALID
        value = int(value)
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            return INVALID
        value = int(value)
    if not isinstance(value, int):
        return INVALID
    return value if INT64[0] <= value <= INT64[1] else INVALID


def expect_amount(value: Any) -> Any:
    """numeric(12,2): at most 10 integer digits and 2 decimal places, exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return INVALID
    if isinstance(value, str) and not re.fullmatch(
        r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", value
    ):
        return INVALID
    try:
        d = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        return INVALID
    if not d.is_finite() or abs(d) >= Decimal(10) ** 10:
        return INVALID
    cents = d.quantize(Decimal("0.01"), context=Context(prec=100))
    # a warehouse decimal has no negative zero
    return f"{abs(cents) if cents == 0 else cents:f}" if cents == d else INVALID


def expect_note(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return INVALID  # a lone surrogate is not text
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)  # a JSON number in a text column: its JSON text
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))  # its compact JSON text
    return INVALID


#: timestamptz values and what each must be stored as (ISO-8601 UTC with microseconds), by hand.
TIMES = {
    "2026-01-01T00:00:00Z": "2026-01-01T00:00:00.000000Z",
    "2026-01-01T02:30:00.123456+02:00": "2026-01-01T00:30:00.123456Z",
    "2026-06-30T23:59:59.999999Z": "2026-06-30T23:59:59.999999Z",
    "0001-01-01T00:00:00Z": "0001-01-01T00:00:00.000000Z",
    "9999-12-31T23:59:59.999999Z": "9999-12-31T23:59:59.999999Z",
    "0000-01-01T00:00:00Z": INVALID,
    "-0001-01-01T00:00:00Z": INVALID,
    "10000-01-01T00:00:00Z": INVALID,
    "2026-13-01T00:00:00Z": INVALID,
    "2026-02-30T00:00:00Z": INVALID,
    "yesterday": INVALID,
    "": INVALID,
}


def expect_at(value: Any) -> Any:
    return TIMES.get(value, INVALID) if isinstance(value, str) else INVALID


#: a JSON true/false, the integers 1/0 (True == 1 in Python: one entry each) and the words
BOOLS = {True: True, False: False, "true": True, "false": False}


def expect_flag(value: Any) -> Any:
    if isinstance(value, float) or (
        isinstance(value, int) and not isinstance(value, bool) and value not in (0, 1)
    ):
        return INVALID
    try:
        return BOOLS.get(value, INVALID)
    except TypeError:  # unhashable: a dict or a list
        return INVALID


EXPECT = {
    "n": expect_int,
    "amount": expect_amount,
    "note": expect_note,
    "at": expect_at,
    "flag": expect_flag,
}

# ---------------------------------------------------------------------------- the generator

_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([1.5, 2.7, 2.0, -0.0, 1e300, 0.1, 0.01, 0.001, 123.45, 1e10, 9999999999.99]),
)
_words = st.one_of(
    st.text(max_size=6),
    st.sampled_from(
        [
            "7",
            " 8 ",
            "-3",
            "1.5",
            "NaN",
            "Infinity",
            "oops",
            "1e3",
            "0x10",
            "1_000",
            "٣",
            "12.34",
            "12.345",
            "true",
            "t",
            "\udc00",
            "a\u2028b",
            "",
        ]
    ),
)
_values = st.one_of(
    st.none(),
    st.booleans(),
    _numbers,
    _words,
    st.sampled_from(list(TIMES)),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from("ab"), st.integers(0, 3), max_size=2),
)


@st.composite
def lines(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """[(line text, expected row or None for a line that must be dead-lettered)]."""
    out: list[tuple[str, Any]] = []
    for i in range(1, draw(st.integers(1, 8)) + 1):
        garbage = draw(st.sampled_from([None] * 12 + ["{", "[1, 2]", '"text"', "{}", "null "]))
        if garbage is not None:
            out.append((garbage, None if garbage.strip() != "null" else "tombstone"))
            continue
        after = {"id": i}
        for column in EXPECT:
            if draw(st.booleans()):
                after[column] = draw(_values)
        expected: dict[str, Any] | None = {"id": i}
        for column, value in after.items():
            if column == "id" or value is None:
                continue
            got = EXPECT[column](value)
            if got is INVALID:
                expected = None
                break
            assert expected is not None
            expected[column] = got
        message = {
            "op": "c",
            "before": None,
            "after": after,
            "source": {
                "connector": "postgresql",
                "schema": "public",
                "table": "items",
                "lsn": 100 + i,
                "sequence": json.dumps([str(99 + i), str(100 + i)]),
                "ts_ms": 1_700_000_000_000 + i,
            },
        }
        out.append((json.dumps(message), expected))
    return out


# ---------------------------------------------------------------------------- the property


def run(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def apply_into(folder: Path, capsys: Any, text: str, *extra: str) -> tuple[int, str, Path]:
    folder.mkdir(parents=True)
    config = folder / "cdc.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    (folder / "in.jsonl").write_text(text)
    code, _, err = run(
        capsys,
        "apply",
        "--config",
        str(config),
        "--source",
        "billing",
        *extra,
        str(folder / "in.jsonl"),
    )
    return code, err, config


@settings(
    max_examples=int(os.environ.get("CDC_FUZZ_EXAMPLES", "25")),
    derandomize=not os.environ.get("CDC_FUZZ_EXAMPLES"),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(drawn=lines())
@example(
    drawn=[
        (
            json.dumps(
                {
                    "op": "c",
                    "before": None,
                    "after": {"id": 1, "n": None, "flag": 27940},
                    "source": {
                        "connector": "postgresql",
                        "schema": "public",
                        "table": "items",
                        "lsn": 101,
                        "sequence": '["100", "101"]',
                        "ts_ms": 1700000000001,
                    },
                }
            ),
            None,
        )
    ]
)
def test_every_line_applies_as_the_oracle_says_or_is_dead_lettered(tmp_path_factory, capsys, drawn):
    text = "".join(line + "\n" for line, _ in drawn)
    bad = [n for n, (_, expected) in enumerate(drawn, 1) if expected is None]
    good = {n: e for n, (_, e) in enumerate(drawn, 1) if isinstance(e, dict)}
    root = tmp_path_factory.mktemp("fuzz")
    histories = []
    for name, extra in (("one_batch", ()), ("per_line", ("--batch-size", "1"))):
        code, err, config = apply_into(root / name, capsys, text, *extra)
        assert code == (1 if bad else 0), err
        assert "Traceback" not in err and (not bad or len(err.strip().splitlines()) == 1), err

        code, out, err = run(
            capsys, "history", "--config", str(config), "items", "--format", "jsonl"
        )
        assert code == 0, err
        rows = [json.loads(r) for r in out.split("\n") if r]
        assert len(rows) == len(out.splitlines())  # one version, one line, for any reader
        got = {r["id"]: {c: r[c] for c in ("id", *EXPECT) if r.get(c) is not None} for r in rows}
        want = {e["id"]: e for e in good.values()}
        assert got == want
        histories.append([{k: v for k, v in r.items() if k != "_ingested_at"} for r in rows])

        code, out, err = run(
            capsys, "dead-letters", "ls", "--config", str(config), "--format", "json"
        )
        assert code == 0, err
        letters = json.loads(out) if out.strip() else []
        assert sorted(d["context"]["line"] for d in letters) == bad
        assert all(d["reason"] for d in letters)
        if letters:
            code, out, err = run(
                capsys, "dead-letters", "show", "--config", str(config), letters[0]["id"]
            )
            assert code == 0 and json.loads(out)["raw"] is not None, err
            code, out, err = run(capsys, "dead-letters", "retry", "--config", str(config))
            assert code == 1 and f"{len(letters)} still failing" in out, (out, err)
    assert histories[0] == histories[1]  # bulk and per-value staging store the same
