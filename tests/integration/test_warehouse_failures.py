"""A warehouse that cannot be written (full disk, read-only file system) stops a command with the
real reason, exit 1, and dead-letters nothing: it is not the data's fault.

Both hold as root (who ignores file permissions): a 1 MiB tmpfs fills up, and a read-only bind
mount refuses writes. Mounting needs root (CAP_SYS_ADMIN); elsewhere these tests are skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs / bind mount: {result.stderr.strip()}")


@pytest.fixture
def mounted() -> Iterator[list[Path]]:
    points: list[Path] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", str(point)], capture_output=True)


def _project(folder: Path, warehouse: str) -> Path:
    config = folder / "cdc.yaml"
    config.write_text(
        textwrap.dedent(f"""\
            warehouse: duckdb:///{warehouse}
            state_dir: ./state
            sources:
              billing:
                kind: postgres
                engine: debezium
                dsn: postgresql://nobody@127.0.0.1:9/none
                tables:
                  - name: public.subscriptions
                    primary_key: [id]
                    columns: {{id: bigint, plan: text}}
            """)
    )
    return config


def _events(path: Path, n: int) -> Path:
    rows = (
        {
            "op": "c",
            "after": {"id": i, "plan": "x" * 200 + str(i)},
            "source": {
                "connector": "postgresql",
                "schema": "public",
                "table": "subscriptions",
                "lsn": 1000 + i,
                "sequence": json.dumps([str(900 + i), str(1000 + i)]),
                "ts_ms": 1_700_000_000_000,
            },
        }
        for i in range(n)
    )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _apply(config: Path, events: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cdc",
            "apply",
            "--config",
            str(config),
            "--source",
            "billing",
            str(events),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=config.parent,
    )


def _says_only_the_real_reason(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 1, result.stderr
    assert reason in result.stderr
    assert "cannot write" in result.stderr or "cannot open" in result.stderr
    assert "rollback" not in result.stderr and "Traceback" not in result.stderr


def test_a_full_disk_stops_apply_with_its_reason(tmp_path: Path, mounted: list[Path]) -> None:
    small = tmp_path / "wh"
    small.mkdir()
    _mount("-t", "tmpfs", "-o", "size=1M", "tmpfs", str(small))
    mounted.append(small)
    config = _project(tmp_path, "./wh/w.duckdb")

    result = _apply(config, _events(tmp_path / "in.jsonl", 20_000))

    _says_only_the_real_reason(result, "No space left on device")
    assert not (tmp_path / "state" / "dead_letters").exists()  # nothing blamed on the data


def test_a_read_only_warehouse_stops_apply_with_its_reason(
    tmp_path: Path, mounted: list[Path]
) -> None:
    source, view = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    writable = _project(source, "./w.duckdb")
    assert _apply(writable, _events(tmp_path / "first.jsonl", 10)).returncode == 0
    _mount("--bind", str(source), str(view))
    mounted.append(view)
    _mount("-o", "remount,ro,bind", str(view))
    config = _project(tmp_path, "./ro/w.duckdb")

    result = _apply(config, _events(tmp_path / "more.jsonl", 20))

    _says_only_the_real_reason(result, "Read-only file system")
    assert not (tmp_path / "state" / "dead_letters").exists()
