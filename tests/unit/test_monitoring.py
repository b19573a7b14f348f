"""`cdc monitoring rules`: Prometheus alerting rules from the registry's sla:, checked and unit-
tested with promtool (Debian's prometheus package; scripts/install-system-deps.sh installs it), and
Cloud Monitoring alert policies for the Dataflow job, parsed by the official client."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from google.cloud import monitoring_v3
from google.protobuf import json_format

from cdc.cli import main
from cdc.monitoring import DEAD_LETTER_COUNTER
from merge_jobs import transforms
from state_models.registry import Sla, size_bytes

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
    sla: {freshness: {error: 10m}, max_retained_log: 10GiB}
    tables:
      - name: pay.payments
"""
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="needs promtool: apt-get install prometheus (scripts/install-system-deps.sh does)",
)


def rules(tmp_path: Path, registry: str = REGISTRY, *more: str) -> Path:
    (tmp_path / "cdc.yaml").write_text(registry)
    args = ["monitoring", "rules", "--config", str(tmp_path / "cdc.yaml"), "--out", str(tmp_path)]
    assert main([*args, *more]) == 0
    return tmp_path / "prometheus-rules.yml"


def policies(tmp_path: Path, registry: str = REGISTRY, *more: str) -> dict[str, dict]:
    """The written Cloud Monitoring policies, each parsed by the official client first."""
    rules(tmp_path, registry, *more)
    out = {}
    for path in sorted((tmp_path / "cloud-monitoring").glob("*.json")):
        text = path.read_text()
        monitoring_v3.AlertPolicy.from_json(text)  # refuses a field AlertPolicy does not have
        out[path.name] = json.loads(text)
    return out


def by_alert(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for rule in yaml.safe_load(path.read_text())["groups"][0]["rules"]:
        out.setdefault(rule["alert"], []).append(rule)
    return out


def test_rules_follow_the_registrys_slas(tmp_path):
    alerts = by_alert(rules(tmp_path))
    assert set(alerts) == {
        "CdcRunDown",
        "CdcDeadLettersWaiting",
        "CdcCheckFailed",
        "CdcCheckWarning",
        "CdcCaptureNotStreaming",
        "CdcSourceStalled",
        "CdcSourceLogGrowing",
        "CdcFreshnessWarning",
        "CdcFreshnessError",
    }
    stalls = {r["labels"]["source"]: r["for"] for r in alerts["CdcCaptureNotStreaming"]}
    assert stalls == {"billing": "30s", "payments": "2m"}  # the source's own, else the default
    silent = {r["labels"]["source"]: r["expr"] for r in alerts["CdcSourceStalled"]}
    assert silent["billing"] == 'cdc_capture_source_contact_age_seconds{source="billing"} > 30'
    assert silent["payments"].endswith("> 120")
    growing = {r["labels"]["source"]: r for r in alerts["CdcSourceLogGrowing"]}
    assert growing["billing"]["expr"] == (
        'cdc_capture_retained_log_bytes{source="billing"} > 5368709120 and '
        'deriv(cdc_capture_retained_log_bytes{source="billing"}[30m]) > 0'
    )  # the default 5GiB
    assert growing["payments"]["expr"].startswith(
        'cdc_capture_retained_log_bytes{source="payments"} > 10737418240 and'
    )  # its sla: max_retained_log: 10GiB
    assert growing["payments"]["for"] == "15m"
    assert growing["payments"]["labels"]["severity"] == "warning"
    assert "fill its disk" in growing["payments"]["annotations"]["description"]
    [warning] = alerts["CdcFreshnessWarning"]
    assert warning["expr"] == (
        'cdc_table_freshness_seconds{table="billing.public.subscriptions"} > 300'
    )
    errors = {r["labels"]["table"]: r for r in alerts["CdcFreshnessError"]}
    assert errors["billing.public.subscriptions"]["expr"].endswith("> 900")
    assert errors["payments.pay.payments"]["expr"].endswith("> 600")  # the source's sla
    assert {r["labels"]["severity"] for r in errors.values()} == {"critical"}
    [failed], [warned] = alerts["CdcCheckFailed"], alerts["CdcCheckWarning"]
    assert failed["expr"] == 'cdc_check_failed{level="error"} == 1'
    assert failed["labels"]["severity"] == "critical"
    assert warned["expr"] == 'cdc_check_failed{level="warn"} == 1'
    assert warned["labels"]["severity"] == "warning"


def test_a_source_may_hold_more_log_only_in_a_size(tmp_path):
    (tmp_path / "cdc.yaml").write_text(
        REGISTRY.replace("max_retained_log: 10GiB", "max_retained_log: 10 gigs")
    )
    code = main(["monitoring", "rules", "--config", str(tmp_path / "cdc.yaml")])
    assert code == 2
    assert size_bytes("512MiB") == 512 * 2**20 and size_bytes("2GB") == 2 * 10**9
    with pytest.raises(ValueError, match="expected a size like"):
        Sla(max_retained_log="10G")
    assert Sla(max_retained_log="1.5TiB").max_retained_log == "1.5TiB"


def test_cloud_monitoring_policies_follow_the_registrys_slas(tmp_path):
    found = policies(tmp_path, REGISTRY, "--dataflow-job", "cdc-streaming")
    assert set(found) == {
        "dataflow-freshness-error.json",
        "dataflow-freshness-warn.json",
        "dataflow-failed.json",
        "dataflow-dead-letters.json",
    }
    job = 'resource.labels.job_name = "cdc-streaming"'
    error = found["dataflow-freshness-error.json"]
    assert error["severity"] == "CRITICAL" and error["combiner"] == "OR"
    watermark, lag = (c["conditionThreshold"] for c in error["conditions"])
    # the strictest error bound of the tables: payments' 10m, not subscriptions' 15m
    assert watermark["thresholdValue"] == lag["thresholdValue"] == 600
    assert watermark["filter"] == (
        'resource.type = "dataflow_job" AND '
        'metric.type = "dataflow.googleapis.com/job/data_watermark_age" AND ' + job
    )
    assert 'metric.type = "dataflow.googleapis.com/job/system_lag"' in lag["filter"]
    assert watermark["comparison"] == "COMPARISON_GT"
    warn = found["dataflow-freshness-warn.json"]
    assert warn["severity"] == "WARNING"
    assert {c["conditionThreshold"]["thresholdValue"] for c in warn["conditions"]} == {300}
    [failed] = (c["conditionThreshold"] for c in found["dataflow-failed.json"]["conditions"])
    assert 'metric.type = "dataflow.googleapis.com/job/is_failed"' in failed["filter"]
    assert job in failed["filter"] and failed["thresholdValue"] == 0
    letters = [c["conditionThreshold"] for c in found["dataflow-dead-letters.json"]["conditions"]]
    for condition in letters:
        assert condition["filter"] == (
            'resource.type = "dataflow_job" AND '
            'metric.type = "dataflow.googleapis.com/job/user_counter" AND '
            + job
            + f' AND metric.labels.metric_name = "{DEAD_LETTER_COUNTER}"'
        )
    assert [c["aggregations"][0]["perSeriesAligner"] for c in letters] == [
        "ALIGN_MAX",
        "ALIGN_PERCENT_CHANGE",
    ]
    # the name the merge job's counters use
    assert f'Metrics.counter(NAMESPACE, "{DEAD_LETTER_COUNTER}")' in inspect.getsource(transforms)


def test_without_a_freshness_sla_or_a_job_name_the_policies_use_defaults(tmp_path):
    bare = REGISTRY.replace("        sla: {freshness: {warn: 5m, error: 15m}}\n", "").replace(
        "    sla: {freshness: {error: 10m}, max_retained_log: 10GiB}\n", ""
    )
    found = policies(tmp_path, bare)
    assert "dataflow-freshness-warn.json" not in found
    [c, _] = found["dataflow-freshness-error.json"]["conditions"]
    assert c["conditionThreshold"]["thresholdValue"] == 900  # DEFAULT_DATAFLOW_FRESHNESS
    # the job `cdc job streaming` names on Dataflow unless told otherwise
    for policy in found.values():
        for condition in policy["conditions"]:
            assert 'job_name = "cdc-streaming"' in condition["conditionThreshold"]["filter"]
    # '*': every Dataflow job of the project
    for policy in policies(tmp_path, bare, "--dataflow-job", "*").values():
        for condition in policy["conditions"]:
            assert "job_name" not in condition["conditionThreshold"]["filter"]


def test_a_bad_dataflow_job_name_is_refused(tmp_path, capsys):
    (tmp_path / "cdc.yaml").write_text(REGISTRY)
    args = ["monitoring", "rules", "--config", str(tmp_path / "cdc.yaml"), "--out", str(tmp_path)]
    assert main([*args, "--dataflow-job", 'x" OR resource.type = "gce_instance']) == 2
    assert "not a Dataflow job name" in capsys.readouterr().err
    assert not (tmp_path / "cloud-monitoring").exists()


def test_the_official_client_refuses_a_field_alert_policies_do_not_have():
    with pytest.raises(json_format.ParseError, match="no field named"):
        monitoring_v3.AlertPolicy.from_json('{"displayName": "x", "threshold": 1}')


def _alert(labels: dict[str, str], summary: str, description: str) -> dict:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": description},
    }


@needs_promtool
def test_promtool_accepts_the_rules_and_they_fire_when_they_should(tmp_path):
    path = rules(tmp_path)
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the fixed descriptions, as written; the test pins what the templates render
    said = {
        (r["alert"], r["labels"].get("source")): r["annotations"]["description"]
        for rs in by_alert(path).values()
        for r in rs
    }
    subscriptions = "billing.public.subscriptions"
    payments = "payments.pay.payments"
    billing = {"source": "billing", "engine": "pgoutput"}
    fresh = (
        "The table was last known to hold everything its source had written {} ago: the "
        "pipeline is behind or stuck (an idle source keeps this small)."
    )
    checked_failed = (
        "The last `cdc check` run found the table failing a {}-level check: "
        f"`cdc check {subscriptions}` lists the offending keys."
    )

    def series(name: str, labels: dict[str, str], values: str) -> dict:
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{name}{{{inner}}}", "values": values}

    def at(minutes: int, alertname: str, *alerts: dict) -> dict:
        return {"eval_time": f"{minutes}m", "alertname": alertname, "exp_alerts": list(alerts)}

    tests = {
        "rule_files": [path.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("cdc_up", {}, "1x40"),
                    series("cdc_dead_letters", {}, "0x40"),
                    series("cdc_table_freshness_seconds", {"table": subscriptions}, "0+60x40"),
                    # an idle source's table: heartbeats keep it fresh
                    series("cdc_table_freshness_seconds", {"table": payments}, "5x40"),
                    series(
                        "cdc_capture_phase",
                        {**billing, "phase": "retrying"},
                        "0 0 1 1 1 1 1 1 1 1",
                    ),
                    series("cdc_capture_source_contact_age_seconds", billing, "1 2 1 3 45 105 1 2"),
                    # above 5GiB and growing
                    series("cdc_capture_retained_log_bytes", billing, "6e9+1e7x40"),
                    # above its 10GiB, but steady: a capture keeping up with a busy source
                    series(
                        "cdc_capture_retained_log_bytes",
                        {"source": "payments", "engine": "binlog"},
                        "2e10x40",
                    ),
                    series(
                        "cdc_check_failed",
                        {"table": subscriptions, "check": "one_current_version", "level": "error"},
                        "0 0 0 1x37",
                    ),
                    series(
                        "cdc_check_failed",
                        {"table": payments, "check": "one_current_version", "level": "error"},
                        "0x40",
                    ),
                    series(
                        "cdc_check_failed",
                        {"table": subscriptions, "check": "volume", "level": "warn"},
                        "1x40",
                    ),
                    series(
                        "cdc_check_failed",
                        {"table": payments, "check": "schema_drift", "level": "warn"},
                        "0x40",
                    ),
                    series("cdc_check_last_run_timestamp_seconds", {}, "0x40"),
                ],
                "alert_rule_test": [
                    at(2, "CdcSourceStalled"),
                    at(
                        4,
                        "CdcSourceStalled",
                        _alert(
                            {"severity": "critical", **billing},
                            "source billing has not answered for 45s",
                            said["CdcSourceStalled", "billing"],
                        ),
                    ),
                    at(
                        8,
                        "CdcFreshnessWarning",
                        _alert(
                            {"severity": "warning", "table": subscriptions},
                            f"{subscriptions} is older than its freshness SLA (5m)",
                            fresh.format("8m 0s"),
                        ),
                    ),
                    at(8, "CdcFreshnessError"),
                    at(
                        20,
                        "CdcFreshnessError",
                        _alert(
                            {"severity": "critical", "table": subscriptions},
                            f"{subscriptions} is older than its freshness SLA (15m)",
                            fresh.format("20m 0s"),
                        ),
                    ),
                    at(
                        5,
                        "CdcCaptureNotStreaming",
                        _alert(
                            {"severity": "critical", **billing, "phase": "retrying"},
                            "capture of billing is retrying",
                            said["CdcCaptureNotStreaming", "billing"],
                        ),
                    ),
                    at(5, "CdcRunDown"),
                    at(5, "CdcDeadLettersWaiting"),
                    at(10, "CdcSourceLogGrowing"),  # growing, but not for 15 minutes yet
                    at(
                        20,
                        "CdcSourceLogGrowing",
                        _alert(
                            {"severity": "warning", **billing},
                            "source billing holds 5.774GiB of its log for the capture, and it "
                            "keeps growing",
                            said["CdcSourceLogGrowing", "billing"],
                        ),
                    ),
                    at(1, "CdcCheckFailed"),
                    at(
                        5,
                        "CdcCheckFailed",
                        _alert(
                            {
                                "severity": "critical",
                                "table": subscriptions,
                                "check": "one_current_version",
                                "level": "error",
                            },
                            f"check one_current_version failed on {subscriptions}",
                            checked_failed.format("error"),
                        ),
                    ),
                    at(
                        5,
                        "CdcCheckWarning",
                        _alert(
                            {
                                "severity": "warning",
                                "table": subscriptions,
                                "check": "volume",
                                "level": "warn",
                            },
                            f"check volume failed on {subscriptions}",
                            checked_failed.format("warn"),
                        ),
                    ),
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    series("cdc_up", {}, "1 1 _ _ _ _ _"),
                    # growing, but below the bound
                    series("cdc_capture_retained_log_bytes", billing, "1e9+1e7x40"),
                ],
                "alert_rule_test": [
                    at(
                        5,
                        "CdcRunDown",
                        _alert(
                            {"severity": "critical"},
                            "cdc run is down or its metrics cannot be scraped",
                            said["CdcRunDown", None],
                        ),
                    ),
                    at(20, "CdcSourceLogGrowing"),
                ],
            },
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
