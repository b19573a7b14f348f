"""``cdc monitoring rules``: alerting as code, from the registry's ``sla:`` (a table's own, else its
source's).

Prometheus rules (group ``cdc``) for ``cdc run``'s metrics (``cdc/metrics.py``):

- ``CdcRunDown``: no ``cdc_up`` sample for 2 minutes (the service or its metrics are gone).
- ``CdcSourceStalled``: the source has not answered the capture (no change, keepalive or
  heartbeat) for longer than ``stall_after`` (default 2m).
- ``CdcCaptureNotStreaming``: a capture ``retrying`` or ``failed`` for ``stall_after``.
- ``CdcSourceLogGrowing``: the source holds more of its log for the capture
  (``cdc_capture_retained_log_bytes``: a replication slot's WAL, binlogs after our position) than
  ``max_retained_log`` (default 5GiB) and it has kept growing for 15 minutes (warning).
- ``CdcDeadLettersWaiting``: dead letters waiting for 5 minutes (warning).
- ``CdcCheckFailed`` / ``CdcCheckWarning``: a check of the last ``cdc check`` run failed
  (``cdc_check_failed``), at error level (critical) or at warn level (warning).
- ``CdcFreshnessWarning`` / ``CdcFreshnessError``: per table with a ``freshness`` SLA, its
  ``cdc_table_freshness_seconds`` above the bound for a minute. That is the time since the table
  was last known to hold everything its source had written (heartbeat-attested): an idle source
  keeps it small, so it grows only when the pipeline is behind or stuck.

The source-level settings (``stall_after``, ``max_retained_log``) belong to the one capture of a
source: the source's own value (else the default), lowered by any of its tables asking for less.

Cloud Monitoring alert policies (``alert_policies``; the AlertPolicy JSON that ``gcloud alpha
monitoring policies create --policy-from-file`` reads) for the streaming merge job on Dataflow, on
its ``dataflow_job`` metrics: freshness (``job/data_watermark_age`` or ``job/system_lag`` above the
strictest freshness bound of the registry's tables), the job failed (``job/is_failed``), and dead
letters (the job's ``dead_letters`` counter, ``job/user_counter``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from ruamel.yaml import YAML

from state_models.registry import Registry, Sla, Source, duration_seconds, size_bytes

DEFAULT_STALL = "2m"
DEFAULT_MAX_RETAINED_LOG = "5GiB"
#: The Dataflow freshness bound when no table states ``freshness.error``.
DEFAULT_DATAFLOW_FRESHNESS = "15m"
#: The counter ``merge_jobs.transforms`` increments for each change it dead-letters.
DEAD_LETTER_COUNTER = "dead_letters"
#: Dataflow's rule for a job name (its API refuses any other).
DATAFLOW_JOB_RE = re.compile(r"^[a-z]([-a-z0-9]{0,1022}[a-z0-9])?$")


# --------------------------------------------------------------------------- Prometheus


def _table_slas(registry: Registry) -> dict[str, Sla]:
    """table id -> the table's SLA, else its source's."""
    out = {}
    for t in registry.tables():
        sla = t.spec.sla or t.source.sla
        if sla is not None:
            out[t.id] = sla
    return out


def _capture_setting(
    source: Source, field: str, default: str, measure: Callable[[str], float]
) -> str:
    """A setting of the source's one capture: the source's own (else the default), lowered by any
    of its tables asking for less."""
    value: str = (getattr(source.sla, field) if source.sla else None) or default
    for t in source.tables:
        mine = getattr(t.sla, field) if t.sla else None
        if mine:
            value = min(value, mine, key=measure)
    return value


def _quote(text: str) -> str:
    """A PromQL string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run_rules() -> list[dict[str, Any]]:
    return [
        {
            "alert": "CdcRunDown",
            "expr": "absent_over_time(cdc_up[2m])",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "cdc run is down or its metrics cannot be scraped",
                "description": "No cdc_up sample for 2 minutes: nothing is captured or merged. "
                "`cdc status` tells a killed run (DOWN) from a stopped one.",
            },
        },
        {
            "alert": "CdcDeadLettersWaiting",
            "expr": "cdc_dead_letters > 0",
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $value }} dead letters waiting",
                "description": "Changes that could not be applied wait in the dead-letter store: "
                "`cdc dead-letters ls`, fix the cause, then `cdc dead-letters retry`.",
            },
        },
    ]


def _check_rules() -> list[dict[str, Any]]:
    rules = []
    for alert, level, severity in (
        ("CdcCheckFailed", "error", "critical"),
        ("CdcCheckWarning", "warn", "warning"),
    ):
        rules.append(
            {
                "alert": alert,
                "expr": f'cdc_check_failed{{level="{level}"}} == 1',
                "labels": {"severity": severity},
                "annotations": {
                    "summary": "check {{ $labels.check }} failed on {{ $labels.table }}",
                    "description": f"The last `cdc check` run found the table failing a "
                    f"{level}-level check: `cdc check {{{{ $labels.table }}}}` lists the "
                    "offending keys.",
                },
            }
        )
    return rules


def _source_rules(name: str, source: Source) -> list[dict[str, Any]]:
    stall = _capture_setting(source, "stall_after", DEFAULT_STALL, duration_seconds)
    retained = _capture_setting(
        source, "max_retained_log", DEFAULT_MAX_RETAINED_LOG, lambda s: float(size_bytes(s))
    )
    log = f"cdc_capture_retained_log_bytes{{source={_quote(name)}}}"
    return [
        {
            "alert": "CdcSourceStalled",
            "expr": f"cdc_capture_source_contact_age_seconds{{source={_quote(name)}}} > "
            f"{duration_seconds(stall):g}",
            "labels": {"severity": "critical", "source": name},
            "annotations": {
                "summary": "source {{ $labels.source }} has not answered for "
                "{{ $value | humanizeDuration }}",
                "description": "The capture has heard nothing from the source (no change, no "
                "keepalive, no heartbeat) for longer than stall_after: the server or the "
                "network path to it is stuck. An idle source still answers.",
            },
        },
        {
            "alert": "CdcCaptureNotStreaming",
            "expr": f'cdc_capture_phase{{phase=~"retrying|failed",source={_quote(name)}}} == 1',
            "for": stall,
            "labels": {"severity": "critical", "source": name},
            "annotations": {
                "summary": "capture of {{ $labels.source }} is {{ $labels.phase }}",
                "description": f"The capture has not been streaming for {stall}: the source "
                "is unreachable or refused us (see `cdc status` and the run's log).",
            },
        },
        {
            "alert": "CdcSourceLogGrowing",
            "expr": f"{log} > {size_bytes(retained)} and deriv({log}[30m]) > 0",
            "for": "15m",
            "labels": {"severity": "warning", "source": name},
            "annotations": {
                "summary": "source {{ $labels.source }} holds {{ $value | humanize1024 }}B of "
                "its log for the capture, and it keeps growing",
                "description": f"More than {retained} (max_retained_log) of the source's log "
                "is held for the capture and it has grown for 15 minutes. A stuck or dropped "
                "capture makes the source keep its log (PostgreSQL: the replication slot's WAL) "
                "and fill its disk; on MySQL/MariaDB the binlogs we have not read may expire "
                "first. Get the capture streaming (`cdc status`), or drop the slot of a capture "
                "that is gone for good.",
            },
        },
    ]


def _freshness_rules(table_id: str, sla: Sla) -> list[dict[str, Any]]:
    if sla.freshness is None:
        return []
    rules = []
    for level, bound, severity in (
        ("Warning", sla.freshness.warn, "warning"),
        ("Error", sla.freshness.error, "critical"),
    ):
        if bound is None:
            continue
        rules.append(
            {
                "alert": f"CdcFreshness{level}",
                "expr": f"cdc_table_freshness_seconds{{table={_quote(table_id)}}} > "
                f"{duration_seconds(bound):g}",
                "for": "1m",
                "labels": {"severity": severity, "table": table_id},
                "annotations": {
                    "summary": f"{table_id} is older than its freshness SLA ({bound})",
                    "description": "The table was last known to hold everything its source had "
                    "written {{ $value | humanizeDuration }} ago: the pipeline is behind or "
                    "stuck (an idle source keeps this small).",
                },
            }
        )
    return rules


def alerting_rules(registry: Registry) -> dict[str, Any]:
    """The Prometheus rules file, as the mapping Prometheus reads."""
    rules = [*_run_rules(), *_check_rules()]
    for name, source in sorted(registry.sources.items()):
        rules += _source_rules(name, source)
    for table_id, sla in sorted(_table_slas(registry).items()):
        rules += _freshness_rules(table_id, sla)
    return {"groups": [{"name": "cdc", "rules": rules}]}


def render(rules: dict[str, Any]) -> str:
    """The rules file as YAML."""
    import io

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 4096
    out = io.StringIO()
    yaml.dump(rules, out)
    return out.getvalue()


# --------------------------------------------------------------------------- Cloud Monitoring


def dataflow_job_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Dataflow job's name, or None."""
    if DATAFLOW_JOB_RE.match(name):
        return None
    return f"{name!r} is not a Dataflow job name (lower-case letters, digits and '-')"


def freshness_bounds(registry: Registry) -> dict[str, str]:
    """``{"warn": ..., "error": ...}``: the strictest bounds of the registry's tables (the
    streaming job serves them all); error falls back to ``DEFAULT_DATAFLOW_FRESHNESS``."""
    out: dict[str, str] = {}
    for sla in _table_slas(registry).values():
        if sla.freshness is None:
            continue
        for level in ("warn", "error"):
            bound = getattr(sla.freshness, level)
            if bound is not None and (
                level not in out or duration_seconds(bound) < duration_seconds(out[level])
            ):
                out[level] = bound
    out.setdefault("error", DEFAULT_DATAFLOW_FRESHNESS)
    return out


def _filter(metric: str, job: str | None, *more: str) -> str:
    """A Monitoring filter on one ``dataflow_job`` metric (the job's, when named)."""
    parts = ['resource.type = "dataflow_job"', f'metric.type = "dataflow.googleapis.com/{metric}"']
    if job is not None:
        parts.append(f'resource.labels.job_name = "{job}"')
    return " AND ".join([*parts, *more])


def _threshold(
    name: str, filter_: str, aligner: str, value: float, *, period: str = "60s", duration: str
) -> dict[str, Any]:
    return {
        "displayName": name,
        "conditionThreshold": {
            "filter": filter_,
            "aggregations": [{"alignmentPeriod": period, "perSeriesAligner": aligner}],
            "comparison": "COMPARISON_GT",
            "thresholdValue": value,
            "duration": duration,
            "trigger": {"count": 1},
        },
    }


def _policy(
    name: str, severity: str, conditions: list[dict[str, Any]], runbook: str
) -> dict[str, Any]:
    return {
        "displayName": name,
        "documentation": {"content": runbook, "mimeType": "text/markdown"},
        "userLabels": {"app": "cdc"},
        "combiner": "OR",
        "conditions": conditions,
        "severity": severity,
    }


def _freshness_policy(level: str, bound: str, job: str | None) -> dict[str, Any]:
    seconds = duration_seconds(bound)
    return _policy(
        f"cdc: streaming merge job behind its freshness SLA ({level}, {bound})",
        "CRITICAL" if level == "error" else "WARNING",
        [
            _threshold(
                f"data watermark older than {bound}",
                _filter("job/data_watermark_age", job),
                "ALIGN_MAX",
                seconds,
                duration="60s",
            ),
            _threshold(
                f"system lag above {bound}",
                _filter("job/system_lag", job),
                "ALIGN_MAX",
                seconds,
                duration="60s",
            ),
        ],
        f"The streaming merge job is more than {bound} behind (the strictest `freshness.{level}` "
        "of the registry's tables): changes wait in Pub/Sub or inside the job before they reach "
        "the state tables. Look at the job's backlog and logs in the Dataflow console; "
        "`cdc status` shows the tables' lag.",
    )


def alert_policies(registry: Registry, *, dataflow_job: str | None = None) -> dict[str, Any]:
    """file name -> Cloud Monitoring AlertPolicy (its REST JSON shape) for the streaming merge
    job on Dataflow; ``dataflow_job`` limits them to the job of that name (else every job of the
    project). Conditions compare each time series (one per job run, per step for counters)."""
    if dataflow_job is not None and (problem := dataflow_job_problem(dataflow_job)):
        raise ValueError(problem)
    bounds = freshness_bounds(registry)
    policies = {
        "dataflow-freshness-error.json": _freshness_policy("error", bounds["error"], dataflow_job)
    }
    if "warn" in bounds:
        policies["dataflow-freshness-warn.json"] = _freshness_policy(
            "warn", bounds["warn"], dataflow_job
        )
    policies["dataflow-failed.json"] = _policy(
        "cdc: streaming merge job failed",
        "CRITICAL",
        [
            _threshold(
                "job failed", _filter("job/is_failed", dataflow_job), "ALIGN_MAX", 0, duration="0s"
            )
        ],
        "The streaming merge job failed: nothing reaches the state tables, and changes pile up "
        "in Pub/Sub until their retention ends. Read the job's error in the Dataflow console, "
        "fix it, and start the job again (`cdc job streaming`).",
    )
    counter = _filter(
        "job/user_counter", dataflow_job, f'metric.labels.metric_name = "{DEAD_LETTER_COUNTER}"'
    )
    policies["dataflow-dead-letters.json"] = _policy(
        "cdc: streaming merge job dead-lettered changes",
        "WARNING",
        [
            # the counter (a GAUGE) counts since the job started: above zero says "some"...
            _threshold("dead letters in this job run", counter, "ALIGN_MAX", 0, duration="0s"),
            # ...and its change over 10 minutes says "more", so a new batch is told too
            _threshold(
                "new dead letters",
                counter,
                "ALIGN_PERCENT_CHANGE",
                0,
                period="600s",
                duration="0s",
            ),
        ],
        "The streaming merge job set changes aside as dead letters: they are not in the state "
        "tables. Each is kept with its reason in the job's dead-letter store (its "
        "`--dead-letters` gs:// prefix) and on the dead-letter topic; fix the cause, then "
        "re-drive them (`merge_jobs/redrive.py`). The counter counts since the job started, so "
        "the first condition stays open for the job's run; the second opens again for each new "
        "batch.",
    )
    return policies


def render_policy(policy: dict[str, Any]) -> str:
    """An alert policy as the JSON file ``gcloud alpha monitoring policies create
    --policy-from-file`` reads."""
    return json.dumps(policy, indent=2) + "\n"
