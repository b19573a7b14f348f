"""``cdc changelog ls|show`` on a local folder and on GCS (gcp-storage-emulator)."""

from __future__ import annotations

import json

from cdc.cli import main
from connectors.changelog import ChangelogWriter
from connectors.changelog.storage import open_root
from tests.integration.test_changelog_store import events


def registry_file(tmp_path, changelog_root):
    path = tmp_path / "cdc.yaml"
    path.write_text(
        f"""
changelog: {changelog_root}
warehouse: duckdb:///{tmp_path}/wh.duckdb
sources:
  billing:
    kind: postgres
    engine: debezium
    dsn: postgresql://localhost/billing
    tables:
      - name: public.subscriptions
        primary_key: [id]
      - name: public.payments
        primary_key: [id]
"""
    )
    return str(path)


def test_ls_and_show(changelog_root, tmp_path, capsys):
    cfg = registry_file(tmp_path, changelog_root)
    w = ChangelogWriter(changelog_root, row_group_rows=100, max_file_bytes=1)
    w.write(events(250, spacing_us=30_000_000))  # hours 08 and 09 (120 per hour), 3 + 2 files
    w.write(events(3, table="shop.inventory.items"))

    assert main(["changelog", "ls", "--config", cfg, "--format", "json"]) == 0
    rows = {r["table"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {
        "billing.public.subscriptions",
        "billing.public.payments",
        "shop.inventory.items",
    }
    subs = rows["billing.public.subscriptions"]
    assert (subs["partitions"], subs["files"], subs["events"]) == (
        3,
        sum(1 for f in w.published if f.table == "billing.public.subscriptions"),
        250,
    )
    assert subs["first_commit"] == "2024-05-01 08:00:00"
    assert subs["last_commit"] == "2024-05-01 10:04:30"
    assert rows["billing.public.payments"]["events"] == 0
    assert rows["shop.inventory.items"]["note"] == "not registered"

    assert main(["changelog", "show", "subscriptions", "--config", cfg, "--format", "json"]) == 0
    parts = json.loads(capsys.readouterr().out)
    assert [(p["partition"], p["events"]) for p in parts] == [
        ("dt=2024-05-01/hour=08", 120),
        ("dt=2024-05-01/hour=09", 120),
        ("dt=2024-05-01/hour=10", 10),
    ]
    assert parts[0]["first_seq"] == events(1)[0].seq

    assert (
        main(
            ["changelog", "show", "subscriptions", "--config", cfg, "--since", "2024-05-01T09:30Z"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "hour=08" not in out and "hour=09" in out and "hour=10" in out
    assert "2 partitions" in out

    assert main(["changelog", "show", "subscriptions", "--config", cfg, "--files"]) == 0
    out = capsys.readouterr().out
    assert out.count(".parquet") == sum(
        1 for f in w.published if f.table == "billing.public.subscriptions"
    )


def test_unreadable_files_are_listed_and_fail_the_command(changelog_root, tmp_path, capsys):
    cfg = registry_file(tmp_path, changelog_root)
    w = ChangelogWriter(changelog_root)
    w.write(events(10))
    root = open_root(changelog_root)
    good = root.fs._strip_protocol(w.published[0].path)
    bad = good.replace(f"-{w.writer_id}.parquet", "-broken.parquet")
    root.fs.pipe_file(bad, b"not parquet")

    assert main(["changelog", "show", "billing.public.subscriptions", "--config", cfg]) == 1
    captured = capsys.readouterr()
    assert "10 events" in captured.out
    assert "unreadable:" in captured.err and "-broken.parquet" in captured.err


def test_bad_range_is_a_usage_error(tmp_path, capsys):
    cfg = registry_file(tmp_path, str(tmp_path / "changelog"))
    assert (
        main(["changelog", "show", "subscriptions", "--config", cfg, "--since", "yesterday"]) == 2
    )
    assert "--since 'yesterday' is not a time" in capsys.readouterr().err
    assert main(["changelog", "show", "subscriptions", "--config", cfg, "--from-seq", "12"]) == 2
    assert "from_seq must be a seq" in capsys.readouterr().err
    assert main(["changelog", "show", "nosuch", "--config", cfg]) == 2
