"""``cdc monitoring rules``: Prometheus alerting rules for ``cdc run``'s metrics (``cdc/metrics.py``),
from the registry's ``sla:`` (a table's own, else its source's).

Rules (group ``cdc``):

- ``CdcRunDown``: no ``cdc_up`` sample for 2 minutes (the service or its metrics are gone).
- ``CdcSourceStalled``: the source has not answered the capture (no change, keepalive or
  heartbeat) for longer than ``stall_after`` (default 2m).
- ``CdcCaptureNotStreaming``: a capture ``retrying`` or ``failed`` for ``stall_after``.
- ``CdcDeadLettersWaiting``: dead letters waiting for 5 minutes (warning).
- ``CdcFreshnessWarning`` / ``CdcFreshnessError``: per table with a ``freshness`` SLA, its
  ``cdc_table_lag_seconds`` above the bound for a minute. The lag is the age of the newest merged
  commit, so a table whose source is idle ages too: set the bounds above the longest quiet spell.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml import YAML

from state_models.registry import Registry, Sla, duration_seconds

DEFAULT_STALL = "2m"


def _sla(registry: Registry) -> dict[str, tuple[str, Sla]]:
    """table id -> (source name, the table's SLA, else its source's)."""
    out = {}
    for t in registry.tables():
        sla = t.spec.sla or t.source.sla
        if sla is not None:
            out[t.id] = (t.source_name, sla)
    return out


def _quote(text: str) -> str:
    """A PromQL string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def alerting_rules(registry: Registry) -> dict[str, Any]:
    """The rules file, as the mapping Prometheus reads."""
    rules: list[dict[str, Any]] = [
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
    for name, source in sorted(registry.sources.items()):
        stall = (source.sla.stall_after if source.sla else None) or DEFAULT_STALL
        for t in source.tables:  # one capture per source: its most demanding table decides
            if t.sla is not None and t.sla.stall_after:
                stall = min(stall, t.sla.stall_after, key=duration_seconds)
        rules.append(
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
            }
        )
        rules.append(
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
            }
        )
    for table_id, (_source, sla) in sorted(_sla(registry).items()):
        if sla.freshness is None:
            continue
        for level, bound, severity in (
            ("Warning", sla.freshness.warn, "warning"),
            ("Error", sla.freshness.error, "critical"),
        ):
            if bound is None:
                continue
            rules.append(
                {
                    "alert": f"CdcFreshness{level}",
                    "expr": f"cdc_table_lag_seconds{{table={_quote(table_id)}}} > "
                    f"{duration_seconds(bound):g}",
                    "for": "1m",
                    "labels": {"severity": severity, "table": table_id},
                    "annotations": {
                        "summary": f"{table_id} is older than its freshness SLA ({bound})",
                        "description": "The newest change merged into the table committed "
                        "{{ $value | humanizeDuration }} ago.",
                    },
                }
            )
    return {"groups": [{"name": "cdc", "rules": rules}]}


def render(rules: dict[str, Any]) -> str:
    import io

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 4096
    out = io.StringIO()
    yaml.dump(rules, out)
    return out.getvalue()
