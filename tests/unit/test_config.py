"""The registry file: validation, every problem at once, with places and suggestions."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cdc.cli import main
from cdc.config import load_config
from state_models.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cdc.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cdc.yaml"
    p.write_text(text)
    return p


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path, env=env or {})
    return [p.render(str(path)) for p in exc.value.problems]


def test_example_registry_is_valid(capsys):
    assert main(["validate", "--config", str(EXAMPLE)]) == 0
    assert "valid (3 sources, 6 tables)" in capsys.readouterr().out


def test_misspelt_primary_key_names_the_key_its_path_and_the_suggestion(tmp_path, capsys):
    bad = tmp_path / "cdc.yaml"
    bad.write_text(EXAMPLE.read_text().replace("primary_key: [id]  ", "primay_key: [id]  ", 1))
    assert "primay_key" in bad.read_text()
    assert main(["validate", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sources.billing.tables[0].primay_key" in err
    assert "did you mean 'primary_key'?" in err
    assert f"{bad}:14:" in err  # file and line


def test_every_problem_is_reported_at_once(tmp_path):
    p = write(
        tmp_path,
        """
warehouse: duckdb:///w.duckdb
sources:
  billing:
    kind: postgress
    engine: debezum
    dsn: postgresql://x@h/db
    tables:
      - name: subscriptions
      - name: public.payments
        primary_key: []
        pii: {email: encrypt}
""",
    )
    problems = problems_of(p)
    text = "\n".join(problems)
    assert "sources.billing.kind: 'postgress' is not valid; did you mean 'postgres'?" in text
    assert "sources.billing.engine: 'debezum' is not valid; did you mean 'debezium'?" in text
    assert "sources.billing.tables[0].name: expected 'schema.table'" in text
    assert "sources.billing.tables[1].primary_key: expected at least one column" in text
    assert "sources.billing.tables[1].pii.email: 'encrypt' is not valid" in text
    assert "(expected one of: hash, mask, drop)" in text
    assert len(problems) == 5


def test_engine_must_fit_kind(tmp_path):
    p = write(
        tmp_path,
        """
sources:
  pay:
    kind: mysql
    engine: pgoutput
    dsn: mysql://root@h/db
""",
    )
    (problem,) = problems_of(p)
    assert "sources.pay" in problem and "engine 'pgoutput' cannot read a mysql source" in problem
    assert "['debezium', 'binlog', 'datastream']" in problem


def test_missing_required_and_wrong_types(tmp_path):
    p = write(
        tmp_path,
        """
sources:
  billing:
    kind: postgres
    tables: nope
""",
    )
    text = "\n".join(problems_of(p))
    assert "sources.billing.engine: required field is missing" in text
    assert "sources.billing.dsn: required field is missing" in text
    assert "sources.billing.tables:" in text and "'nope'" in text


def test_colliding_state_tables_need_an_explicit_name(tmp_path):
    p = write(
        tmp_path,
        """
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://h/db
    tables:
      - {name: public.subscriptions, primary_key: [id]}
      - {name: archive.subscriptions, primary_key: [id]}
""",
    )
    (problem,) = problems_of(p)
    assert "billing_subscriptions" in problem and "state_table" in problem


def test_env_interpolation_and_defaults(tmp_path):
    p = write(
        tmp_path,
        """
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: ${BILLING_DSN}
    tables:
      - {name: public.subscriptions, primary_key: [id]}
  other:
    kind: postgres
    engine: pgoutput
    dsn: ${OTHER_DSN:-postgresql://fallback/db}
""",
    )
    cfg = load_config(p, env={"BILLING_DSN": "postgresql://secret@db/billing"})
    assert cfg.registry.sources["billing"].dsn == "postgresql://secret@db/billing"
    assert cfg.registry.sources["other"].dsn == "postgresql://fallback/db"
    assert cfg.warnings == []
    cfg = load_config(p, env={})
    assert [w.path for w in cfg.warnings] == ["sources.billing.dsn"]
    assert "BILLING_DSN is not set" in cfg.warnings[0].message


def test_unknown_top_level_key_and_invalid_yaml(tmp_path):
    p = write(tmp_path, "warehous: duckdb:///x.duckdb\n")
    (problem,) = problems_of(p)
    assert "unknown field 'warehous'; did you mean 'warehouse'?" in problem
    p = write(tmp_path, "sources: [\n")
    (problem,) = problems_of(p)
    assert "not valid YAML" in problem


def test_missing_file_is_a_usage_error(tmp_path, capsys):
    assert main(["tables", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_relative_paths_are_relative_to_the_file(tmp_path):
    d = tmp_path / "proj"
    d.mkdir()
    shutil.copy(EXAMPLE, d / "cdc.yaml")
    cfg = load_config(d / "cdc.yaml", env={})
    assert cfg.warehouse_url == f"duckdb:///{d / '.cdc' / 'warehouse.duckdb'}"
    assert cfg.changelog_root == str(d / ".cdc" / "changelog")


def test_tables_command_lists_keys_engines_and_state_tables(capsys):
    assert main(["tables", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "billing.public.subscriptions" in out and "billing_subscriptions" in out
    assert "payments.payments.refunds" in out and "(from database)" in out


def test_table_lookup_suggests(tmp_path):
    cfg = load_config(EXAMPLE, env={})
    assert cfg.registry.table("billing.public.subscriptions").state_table == "billing_subscriptions"
    assert cfg.registry.table("billing_invoices").id == "billing.public.invoices"
    with pytest.raises(ConfigError, match=r"did you mean 'billing\.public\.subscriptions'"):
        cfg.registry.table("billing.public.subscription")


def test_a_dsn_written_as_a_mapping_is_refused_without_echoing_it(tmp_path, capsys):
    p = write(
        tmp_path,
        """
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: {host: db, user: app, password: S3cret-pw}
    tables: []
""",
    )
    assert main(["validate", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "sources.billing.dsn" in err and "a dict, not shown" in err
    assert "S3cret-pw" not in err


def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    import time

    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        rows.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    p = write(tmp_path, "\n".join(rows) + "\n")  # ~700 bytes, 9**9 values once expanded
    started = time.monotonic()
    assert main(["validate", "--config", str(p)]) == 2
    assert time.monotonic() - started < 5
    assert "YAML aliases" in capsys.readouterr().err


def test_aliases_that_repeat_a_few_values_are_fine(tmp_path):
    p = write(
        tmp_path,
        """
defaults: &pg {kind: postgres, engine: pgoutput, dsn: "postgresql://u@h/db"}
sources:
  billing: {<<: *pg, tables: []}
  payments: {<<: *pg, tables: []}
""",
    )
    problems = "\n".join(problems_of(p))
    assert "defaults" in problems and "unknown field" in problems  # not a size refusal
    assert "YAML aliases" not in problems


def test_a_registry_that_is_not_utf8_names_the_byte_and_line(tmp_path, capsys):
    p = tmp_path / "cdc.yaml"
    p.write_bytes(b"sources:\n  billing:\n    kind: postgr\xe9s\n")
    assert main(["validate", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "cdc.yaml:3: error: not UTF-8: byte 0xe9" in err and "Traceback" not in err


def test_declared_columns_are_checked_each_at_its_place(tmp_path, capsys):
    p = write(
        tmp_path,
        """
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://u@h/db
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns:
          id: bigitn
          amount: numerc(12,2)
          status: subscription_status
          mood: '"intx"'
          _seq: text
          name: text
          NAME: text
  pay:
    kind: mysql
    engine: binlog
    dsn: mysql://u@h/db
    tables:
      - name: shop.payments
        primary_key: [id]
        columns: {id: bigint, note: mediumtxt, at: datetime(6)}
""",
    )
    found = problems_of(p)
    text = "\n".join(found)
    assert len(found) == 5, text
    assert (
        ":11: error: sources.billing.tables[0].columns.id: 'bigitn' is not a postgres type; "
        in text
    )
    assert "did you mean 'bigint'?" in text and "(did you mean 'numeric'?)" in text
    assert "columns._seq: column '_seq' clashes" in text
    # of two names a warehouse holds as one, the first keeps it; the fix for the other is given
    assert (
        ":17: error: sources.billing.tables[0].columns.NAME: columns 'NAME' and 'name' differ "
        'only in case; a warehouse holds them as one; keep it under another name: rename: {"NAME": '
        "name_2}" in text
    )
    assert (
        "sources.pay.tables[0].columns.note: 'mediumtxt' is not a mysql type; did you mean 'mediumtext'?"
        in text
    )
    # a type of the user's own (an enum, a domain) and a quoted name are fine
    assert "status" not in text and "mood" not in text


def test_the_registry_is_read_as_yaml_1_2_not_1_1(tmp_path):
    """YAML 1.1 (PyYAML's own schema) reads a column named ``on`` or ``no`` as a boolean and ``0777``
    as octal 511; YAML 1.2 keeps the words and reads 777. A date stays the text written."""
    from cdc.config import load_yaml

    doc = load_yaml(
        "columns: {on: text, no: text, yes: bigint}\n"
        "server_id: 0777\nhex: 0x1F\noctal: 0o17\nsince: 2024-01-01\nflag: True\nnothing: ~\n"
        "ratio: .5\nquoted: '42'\ntagged: !!str 7\n"
    )
    assert doc["columns"] == {"on": "text", "no": "text", "yes": "bigint"}
    assert (doc["server_id"], doc["hex"], doc["octal"]) == (777, 31, 15)
    assert doc["since"] == "2024-01-01" and doc["flag"] is True and doc["nothing"] is None
    assert (doc["ratio"], doc["quoted"], doc["tagged"]) == (0.5, "42", "7")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys):
    p = write(
        tmp_path,
        "warehouse: duckdb:///w.duckdb\nsources:\n  billing:\n    kind: postgres\n"
        "    engine: pgoutput\n    dsn: postgresql://u@h/db\n    tables: []\n"
        "    engine: debezium\n",
    )
    assert main(["validate", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:8:" in err and "'engine' is given twice (first on line 5)" in err


def test_merge_keys_fill_in_what_the_mapping_does_not_say_itself(tmp_path):
    from cdc.config import load_yaml

    doc = load_yaml(
        "base: &b {kind: postgres, engine: pgoutput}\nother: &o {engine: debezium, dsn: x}\n"
        "s:\n  <<: [*b, *o]\n  kind: mysql\n"
    )
    assert doc["s"] == {"kind": "mysql", "engine": "pgoutput", "dsn": "x"}
    assert doc["s"].lines == {"kind": 5, "engine": 1, "dsn": 2}
    with pytest.raises(Exception, match="merge key"):
        load_yaml("s:\n  <<: 5\n")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a: *nowhere\n", "names no anchor"),
        ("a: !!int twelve\n", "cannot read 'twelve'"),
        ("a: !python/object:os.system x\n", "cannot read"),
        ("a: 1\n---\nb: 2\n", "one YAML document"),
        ("? [a, b]\n: 1\n", "a key must be a plain value"),
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", "nesting depth"),
    ],
)
def test_yaml_a_registry_cannot_hold_is_a_problem_with_its_line(tmp_path, text, why):
    problems = "\n".join(problems_of(write(tmp_path, text)))
    assert why in problems
    assert re.search(r"cdc.yaml:[13]: error", problems), problems


def test_a_rename_lets_the_state_table_hold_twins_in_case(tmp_path):
    base = """
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://u@h/db
    tables:
      - name: public.people
        primary_key: [id]
        columns: {id: bigint, name: text, NAME: text}
"""
    assert load_config(write(tmp_path, base + '        rename: {"NAME": name_2}\n'), env={})
    for rename, why in [
        (
            "{NAME: Name}",
            "columns.name: columns 'name' and 'NAME' (renamed 'Name') differ only in case",
        ),
        ("{NAME: _seq}", "rename.NAME: 'NAME' is renamed '_seq', but column '_seq' clashes"),
        ("{NAME: 'x y'}", "'NAME' is renamed to 'x y': expected a plain column name"),
        ("{NAME: n, name: N}", "two columns are renamed to the same name: ['n']"),
        ("{nmae: n}", "rename column(s) ['nmae'] are not in columns"),
    ]:
        text = "\n".join(problems_of(write(tmp_path, base + f"        rename: {rename}\n")))
        assert why in text, text


def test_pii_and_policy_tags_are_checked(tmp_path):
    base = """
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://u@h/db
    tables:
      - name: public.people
        primary_key: [email]
        columns: {email: text, card: text}
"""
    for extra, why in [
        ("        pii: {email: mask}\n", "key column(s) ['email'] cannot be masked or dropped"),
        ("        pii: {email: drop}\n", "key column(s) ['email'] cannot be masked or dropped"),
        ("        pii: {email: encrypt}\n", "'encrypt' is not valid"),
        ("        policy_tags: {card: secret}\n", "expected projects/PROJECT/locations/LOCATION"),
        (
            "        policy_tags: {cardd: projects/p/locations/us/taxonomies/1/policyTags/2}\n",
            "policy_tags column(s) ['cardd']",
        ),
    ]:
        text = "\n".join(problems_of(write(tmp_path, base + extra)))
        assert why in text, text
    text = "\n".join(
        problems_of(
            write(
                tmp_path,
                "pii_policy_tags: {drop: projects/p/locations/us/taxonomies/1/policyTags/2}\n"
                + base,
            )
        )
    )
    assert "a dropped column is never stored" in text
    assert load_config(write(tmp_path, base + "        pii: {email: hash, card: mask}\n"), env={})


def test_checks_are_validated_where_they_are_written_and_a_table_inherits_each_from_its_source(
    tmp_path,
):
    registry = """
sources:
  pay:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://u@h/db
    checks: {volume: {min_ratio: 0.2}, schema_drift: {level: error}}
    tables:
      - name: public.a
        primary_key: [id]
        checks: {volume: {level: error, max_ratio: 4, baseline_hours: 48}}
      - name: public.b
        primary_key: [id]
"""
    cfg = load_config(write(tmp_path, registry), env={})
    a, b = cfg.registry.table("pay.public.a").checks, cfg.registry.table("pay.public.b").checks
    assert (a.volume.level, a.volume.max_ratio, a.volume.baseline_hours) == ("error", 4, 48)
    assert a.volume.min_ratio == 0.5  # the table's own volume: check replaces the source's whole
    assert b.volume.min_ratio == 0.2 and b.volume.level == "warn"
    assert a.schema_drift.level == b.schema_drift.level == "error"
    bad = registry.replace("max_ratio: 4", "max_ratio: 0.1").replace(
        "schema_drift: {level: error}", "schema_drift: {level: loud}"
    )
    found = problems_of(write(tmp_path, bad))
    assert any("min_ratio (0.5) must be below max_ratio (0.1)" in p for p in found), found
    assert any("schema_drift.level" in p and "loud" in p for p in found), found


def test_online_names_registered_tables_and_a_source_section_decides_for_its_tables(tmp_path):
    text = """
online: {{url: "redis://127.0.0.1:6390/0", tables: [{top}]}}
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://h/db
    tables:
      - {{name: public.subscriptions, primary_key: [id]}}
      - {{name: public.invoices, primary_key: [id]}}
  payments:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://h/pay
    online: {{url: "redis://127.0.0.1:6391/0", key_prefix: "pay:", tables: [public.refunds]}}
    tables:
      - {{name: public.refunds, primary_key: [id]}}
      - {{name: public.charges, primary_key: [id]}}
"""
    (problem,) = problems_of(write(tmp_path, text.format(top="billing.public.invoice")))
    assert "online.tables" in problem and "billing.public.invoice" in problem
    cfg = load_config(write(tmp_path, text.format(top="billing.public.invoices")), env={})
    stores = {t.id: cfg.registry.online_for(t) for t in cfg.registry.tables()}
    assert stores["billing.public.subscriptions"] is None
    assert stores["billing.public.invoices"].url.endswith(":6390/0")
    assert stores["payments.public.refunds"].key_prefix == "pay:"
    assert stores["payments.public.charges"] is None  # its source's section does not name it


ONLINE_REGISTRY = """
online: {{url: {url}}}
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://h/db
    tables: [{{name: public.subscriptions, primary_key: [id]}}]
"""


def test_a_wrong_online_url_is_refused_without_echoing_it(tmp_path):
    for url in ('"http://:hunter2@cache:6379/0"', "{host: cache, password: hunter2}"):
        p = write(tmp_path, ONLINE_REGISTRY.format(url=url))
        (problem,) = problems_of(p)
        assert "online" in problem and "url" in problem, problem
        assert "hunter2" not in problem, problem


def test_a_bigtable_online_url_names_project_instance_and_table(tmp_path):
    body = ONLINE_REGISTRY
    good = load_config(write(tmp_path, body.format(url="bigtable://acme/features/cdc_online")))
    assert good.registry.online is not None
    assert good.registry.online.url == "bigtable://acme/features/cdc_online"
    for bad in ("bigtable://acme/features", "bigtable://acme//cdc_online", "bigtable://a/b/c/d"):
        (problem,) = problems_of(write(tmp_path, body.format(url=bad)))
        assert "expected bigtable://project/instance/table" in problem, problem
        assert "acme" not in problem and "features" not in problem, problem
