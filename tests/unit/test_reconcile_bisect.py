"""`cdc reconcile`'s bisection (state_models.reconcile.compare) over two in-memory sides: it finds
exactly the missing, extra and different keys, names the differing columns, and moves few rows."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

import pytest

from state_models.reconcile import Digest, Key, Segment, combine, compare, cut, recheck


class MemorySide:
    """A side over a dict key -> {column: value}; hashes computed in Python."""

    def __init__(self, rows: dict[Key, dict[str, object]]):
        self.rows_by_key = rows
        self.keys = sorted(rows)
        self.calls: list[str] = []

    def _hash(self, key: Key) -> int:
        return hash((key, tuple(sorted(self.rows_by_key[key].items())))) & ((1 << 60) - 1)

    def _in(self, segment: Segment) -> list[Key]:
        lo = 0 if segment.lo is None else bisect.bisect_left(self.keys, segment.lo)
        hi = len(self.keys) if segment.hi is None else bisect.bisect_left(self.keys, segment.hi)
        return self.keys[lo:hi]

    def digests(self, parents: Sequence[Segment], bounds: Sequence[Key]) -> list[Digest]:
        self.calls.append("digests")
        inside = {k for p in parents for k in self._in(p)}
        out = []
        for part in cut(Segment(), bounds):
            keys = [k for k in self._in(part) if k in inside]
            x = 0
            for k in keys:
                x ^= self._hash(k)
            out.append(Digest(len(keys), x))
        return out

    def split(self, segment: Segment, parts: int) -> list[Key]:
        keys = self._in(segment)
        step = max(1, -(-len(keys) // parts))
        return keys[step::step][: parts - 1]

    def rows(self, segments: Sequence[Segment]) -> dict[Key, int]:
        return {k: self._hash(k) for s in segments for k in self._in(s)}

    def lookup(self, keys: Sequence[Key]) -> dict[Key, int]:
        return {k: self._hash(k) for k in keys if k in self.rows_by_key}

    def column_hashes(self, keys: Sequence[Key]) -> dict[Key, dict[str, int]]:
        return {
            k: {c: hash(v) for c, v in self.rows_by_key[k].items()}
            for k in keys
            if k in self.rows_by_key
        }


def table(n: int) -> dict[Key, dict[str, object]]:
    return {(i,): {"plan": f"p{i % 7}", "amount": i * 3} for i in range(n)}


def test_equal_tables_compare_equal_reading_only_digests():
    a, b = MemorySide(table(50_000)), MemorySide(table(50_000))
    diff = compare(a, b)
    assert diff.equal and diff.segments == 64
    assert diff.rows_transferred == 63  # the top-level cut keys, nothing else


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scattered_differences_are_found_exactly_with_few_rows_moved(seed):
    rng = random.Random(seed)
    source, state = table(300_000), table(300_000)
    keys = rng.sample(sorted(source), 9)
    del state[keys[0]], state[keys[1]], state[keys[2]]  # missing in the state
    for k in keys[3:6]:
        state[k] = {**state[k], "amount": -1}  # a changed value
    state[keys[6]] = {**state[keys[6]], "plan": None, "amount": 0}
    for extra in [(10**9,), (-5,), (50_000,)]:  # phantom keys, one between two real ones
        state.setdefault(extra, {"plan": "ghost", "amount": 0})
    state[(50_000,)] = {"plan": "ghost", "amount": 0}
    diff = compare(MemorySide(source), MemorySide(state))
    assert set(diff.missing) == set(keys[:3])
    assert set(diff.extra) == {(10**9,), (-5,)}
    assert diff.different[(50_000,)] == ["amount", "plan"]
    for k in keys[3:6]:
        assert diff.different[k] == ["amount"]
    assert diff.different[keys[6]] == ["amount", "plan"]
    assert diff.rows_transferred < 0.01 * len(source)


def test_an_empty_state_or_source_is_all_missing_or_all_extra():
    source = table(3_000)
    diff = compare(MemorySide(source), MemorySide({}))
    assert sorted(diff.missing) == sorted(source) and not diff.extra
    diff = compare(MemorySide({}), MemorySide(source))
    assert sorted(diff.extra) == sorted(source) and not diff.missing


def test_recheck_keeps_only_keys_that_still_differ():
    source, state = table(100), table(100)
    state[(5,)] = {"plan": "x", "amount": 0}
    diff = recheck(MemorySide(source), MemorySide(state), [(5,), (6,)])
    assert list(diff.different) == [(5,)] and not diff.missing and not diff.extra


def test_the_differing_segments_of_a_level_are_compared_in_one_query():
    source, state = table(300_000), table(300_000)
    keys = random.Random(4).sample(sorted(source), 10)
    for k in keys:
        state[k] = {**state[k], "amount": -1}
    a, b = MemorySide(source), MemorySide(state)
    diff = compare(a, b)
    assert sorted(diff.different) == sorted(keys)
    assert a.calls.count("digests") == b.calls.count("digests") == 2  # one query per level
    # a cap on the query's size splits a level into several queries, with the same answer
    a, b = MemorySide(source), MemorySide(state)
    levels: list[tuple[int, int, int]] = []
    capped = compare(a, b, max_bounds=100, on_level=lambda *level: levels.append(level))
    assert sorted(capped.different) == sorted(keys)
    assert a.calls.count("digests") == 1 + levels[0][2]  # a query per differing segment


def test_parents_combine_into_one_cut_of_the_key_space():
    groups = [(Segment(None, (10,)), [(5,)]), (Segment((10,), (20,)), [(15,)])]
    edges, index = combine(groups)
    assert edges == [(5,), (10,), (10,), (15,), (20,)]  # [10, 10) between the parents: empty
    assert index == [[0, 1], [3, 4]]
    parts = cut(Segment(), edges)
    assert [parts[i] for i in index[1]] == cut(*groups[1])
