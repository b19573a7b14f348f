"""`cdc monitoring rules`: Prometheus alerting rules from the registry's sla:, checked and unit-
tested with promtool (Debian's prometheus package; scripts/install-system-deps.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from cdc.cli import main

REGISTRY = """\
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://u@h/db
    sla: {stall_after: 30s}
    tables:
      - name: public.subscriptions
        primary_key: [id]
        sla: {freshness: {warn: 5m, error: 15m}}
      - name: public.invoices
  payments:
    kind: mysql
    engine: binlog
    dsn: mysql://u@h/db
    tables:
      - name: pay.payments
"""
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="needs promtool: apt-get install prometheus (scripts/install-system-deps.sh does)",
)


def rules(tmp_path: Path) -> Path:
    (tmp_path / "cdc.yaml").write_text(REGISTRY)
    assert (
        main(
            ["monitoring", "rules", "--config", str(tmp_path / "cdc.yaml"), "--out", str(tmp_path)]
        )
        == 0
    )
    return tmp_path / "prometheus-rules.yml"


def test_rules_follow_the_registrys_slas(tmp_path):
    doc = yaml.safe_load(rules(tmp_path).read_text())
    by_alert: dict[str, list[dict]] = {}
    for rule in doc["groups"][0]["rules"]:
        by_alert.setdefault(rule["alert"], []).append(rule)
    assert set(by_alert) == {
        "CdcRunDown",
        "CdcDeadLettersWaiting",
        "CdcCaptureNotStreaming",
        "CdcSourceStalled",
        "CdcFreshnessWarning",
        "CdcFreshnessError",
    }
    stalls = {r["labels"]["source"]: r["for"] for r in by_alert["CdcCaptureNotStreaming"]}
    assert stalls == {"billing": "30s", "payments": "2m"}  # the source's own, else the default
    silent = {r["labels"]["source"]: r["expr"] for r in by_alert["CdcSourceStalled"]}
    assert silent["billing"] == 'cdc_capture_source_contact_age_seconds{source="billing"} > 30'
    assert silent["payments"].endswith("> 120")
    [warning] = by_alert["CdcFreshnessWarning"]
    assert warning["expr"] == 'cdc_table_lag_seconds{table="billing.public.subscriptions"} > 300'
    [error] = by_alert["CdcFreshnessError"]
    assert error["expr"].endswith("> 900") and error["labels"]["severity"] == "critical"


@needs_promtool
def test_promtool_accepts_the_rules_and_they_fire_when_they_should(tmp_path):
    path = rules(tmp_path)
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "tests.yml").write_text(
        textwrap.dedent(f"""\
            rule_files: [{path.name}]
            evaluation_interval: 1m
            tests:
              - interval: 1m
                input_series:
                  - series: 'cdc_up'
                    values: '1x20'
                  - series: 'cdc_table_lag_seconds{{table="billing.public.subscriptions"}}'
                    values: '0+60x20'
                  - series: 'cdc_capture_phase{{source="billing",engine="pgoutput",phase="retrying"}}'
                    values: '0 0 1 1 1 1 1 1 1 1'
                  - series: 'cdc_dead_letters'
                    values: '0x20'
                  - series: 'cdc_capture_source_contact_age_seconds{{source="billing",engine="pgoutput"}}'
                    values: '1 2 1 3 45 105 1 2'
                alert_rule_test:
                  - eval_time: 2m
                    alertname: CdcSourceStalled
                    exp_alerts: []
                  - eval_time: 4m
                    alertname: CdcSourceStalled
                    exp_alerts:
                      - exp_labels: {{severity: critical, source: billing, engine: pgoutput}}
                        exp_annotations:
                          summary: source billing has not answered for 45s
                          description: "The capture has heard nothing from the source (no change, no keepalive, no heartbeat) for longer than stall_after: the server or the network path to it is stuck. An idle source still answers."
                  - eval_time: 8m
                    alertname: CdcFreshnessWarning
                    exp_alerts:
                      - exp_labels: {{severity: warning, table: billing.public.subscriptions}}
                        exp_annotations:
                          summary: billing.public.subscriptions is older than its freshness SLA (5m)
                          description: The newest change merged into the table committed 8m 0s ago.
                  - eval_time: 8m
                    alertname: CdcFreshnessError
                    exp_alerts: []
                  - eval_time: 5m
                    alertname: CdcCaptureNotStreaming
                    exp_alerts:
                      - exp_labels: {{severity: critical, source: billing, engine: pgoutput, phase: retrying}}
                        exp_annotations:
                          summary: capture of billing is retrying
                          description: "The capture has not been streaming for 30s: the source is unreachable or refused us (see `cdc status` and the run's log)."
                  - eval_time: 5m
                    alertname: CdcRunDown
                    exp_alerts: []
                  - eval_time: 5m
                    alertname: CdcDeadLettersWaiting
                    exp_alerts: []
              - interval: 1m
                input_series:
                  - series: 'cdc_up'
                    values: '1 1 _ _ _ _ _'
                alert_rule_test:
                  - eval_time: 5m
                    alertname: CdcRunDown
                    exp_alerts:
                      - exp_labels: {{severity: critical}}
                        exp_annotations:
                          summary: cdc run is down or its metrics cannot be scraped
                          description: "No cdc_up sample for 2 minutes: nothing is captured or merged. `cdc status` tells a killed run (DOWN) from a stopped one."
            """)
    )
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
