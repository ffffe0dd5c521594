"""Markdown the Prefect UI shows for an incident (Artifacts page, and the run page).

The post-mortem carries what the response kept at its close (``core/collected.py``: the alert's
metric as a chart, the last error lines of the logs, the configuration in force), read from the
store, where it outlives Prometheus' retention::

    await publish_postmortem(incident, alerts, timeline, pages, kept(store, incident.id))
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import ArtifactCreate

from core.collected import Collected, section
from core.store import Incident


def incident_markdown(incident: Incident, alerts: list[dict[str, Any]]) -> str:
    state = "CLOSED" if incident.status == "closed" else "OPEN"
    lines = [
        f"# Incident {state}: {incident.title}",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| runbook | `{incident.runbook}` |",
        f"| severity | {incident.severity} |",
        f"| opened | {incident.opened_at} |",
        f"| closed | {incident.closed_at or '—'} |",
        f"| closed because | {incident.close_reason or '—'} |",
        f"| response run | {incident.flow_run_id or '—'} |",
        "",
        "## Alerts",
        "",
        "| alert | fingerprint | starts at | status |",
        "| --- | --- | --- | --- |",
    ]
    for alert in alerts:
        lines.append(f"| {alert['alertname']} | `{alert['fingerprint']}` | {alert['startsAt']} | {alert['status']} |")
    return "\n".join(lines)


def artifact_key(incident_id: str) -> str:
    return f"incident-{incident_id.lower()}"


async def publish_incident_artifact(incident: Incident, alerts: list[dict[str, Any]]) -> None:
    async with get_client() as client:
        await client.create_artifact(
            ArtifactCreate(
                key=artifact_key(incident.id),
                type="markdown",
                description=f"Incident {incident.status}: {incident.title}",
                data=incident_markdown(incident, alerts),
                flow_run_id=UUID(incident.flow_run_id) if incident.flow_run_id else None,
            )
        )


def _first(timeline: list[dict[str, Any]], *kinds: str) -> dict[str, Any] | None:
    return next((t for t in timeline if t["kind"] in kinds), None)


def postmortem_markdown(
    incident: Incident, alerts: list[dict[str, Any]], timeline: list[dict[str, Any]], pages: list[dict[str, Any]],
    collected: Collected | None = None,
) -> str:
    """Seed 000's post-mortem template, filled with what the responder knows; the rest is for people.

    ``collected``: what the response kept at its close (``core.collected.kept``); without it, one line says so."""
    opened = datetime.fromisoformat(incident.opened_at)
    closed = datetime.fromisoformat(incident.closed_at) if incident.closed_at else None
    minutes = f"{(closed - opened).total_seconds() / 60:.1f} minutes" if closed else "still open"

    def line(entry: dict[str, Any] | None, fallback: str) -> str:
        if entry is None:
            return fallback
        who = f" ({entry['actor']})" if entry.get("actor") else ""
        return f"{entry['at']}: {entry['text']}{who}"

    assessed = [t for t in timeline if t["kind"] == "verify"]
    actions = [t for t in timeline if t["kind"] == "action"]
    approvals = [t for t in timeline if t["kind"] in ("approved", "rejected")]
    services = sorted({a["labels"].get("service") or a["labels"].get("job") or a["labels"].get("instance", "?") for a in alerts})
    lines = [
        f"# Incident Post-Mortem: {incident.opened_at[:10]} - {incident.title}",
        "",
        "## Summary",
        "",
        f"`{incident.runbook}` incident ({incident.severity}) opened {incident.opened_at}, closed "
        f"{incident.closed_at or '—'} because: **{incident.close_reason or 'still open'}**. "
        f"{len(alerts)} alert(s); {len(actions)} automated action(s); {len(pages)} page(s).",
        "",
        "## Timeline",
        "",
        f"- **Detection**: {line(_first(timeline, 'detected'), incident.opened_at + ': alert received')}",
        f"- **Response**: {line(_first(timeline, 'response'), 'no runbook run recorded')}",
        f"- **Resolution**: {line(_first(timeline, 'resolution', 'closed'), 'not resolved')}",
        f"- **Recovery**: {line(_first(timeline, 'closed'), 'not recovered yet')}",
        "",
        "### Full timeline",
        "",
        "| at | what | detail | who |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {t['at']} | {t['kind']} | {t['text'].replace('|', '/')} | {t['actor']} |" for t in timeline]
    lines += [
        "",
        "## Root Cause",
        "",
        "_For the team to fill in: the responder records symptoms and actions, not causes._",
        "",
        "## Impact",
        "",
        "- Users affected: _to fill in_",
        f"- Duration: {minutes}",
        f"- Services impacted: {', '.join(services) or '—'}",
        "- Business impact: _to fill in_",
        "",
        "## What was assessed and done",
        "",
    ]
    lines += [f"- {t['text']}" for t in assessed + actions] or ["- nothing automated"]
    lines += ["", "### Who approved", ""]
    lines += [f"- {t['kind']} by {t['actor'] or '?'}: {t['text']}" for t in approvals] or ["- no approval was needed"]
    lines += ["", "### Pages", ""]
    lines += [f"- level {p['level']} ({p['who']}) at {p['sent_at']}" for p in pages] or ["- nobody was paged"]
    lines += [""]
    if collected is not None:
        lines.append(section(collected, level=2))
    else:
        lines += ["## Collected at close", "",
                  "_Nothing was kept at close: no response run concluded for this incident._"]
    lines += [
        "",
        "## Action Items",
        "",
        "- [ ] Root cause analysis (seed 000: within 2-24 hours)",
        "- [ ] Update the runbook for this alert if a step was missing",
        "- [ ] Blameless post-mortem meeting (seed 000: within 1-7 days)",
    ]
    if any(t["kind"] == "escalated" for t in timeline):
        lines.append("- [ ] The runbook could not resolve this alone: decide what to automate next")
    lines += ["", "## Lessons Learned", "", "_For the team to fill in._"]
    return "\n".join(lines)


async def publish_postmortem(
    incident: Incident, alerts: list[dict[str, Any]], timeline: list[dict[str, Any]], pages: list[dict[str, Any]],
    collected: Collected | None = None,
) -> None:
    async with get_client() as client:
        await client.create_artifact(
            ArtifactCreate(
                key=f"postmortem-{incident.id.lower()}",
                type="markdown",
                description=f"Post-mortem draft: {incident.title}",
                data=postmortem_markdown(incident, alerts, timeline, pages, collected),
                flow_run_id=UUID(incident.flow_run_id) if incident.flow_run_id else None,
            )
        )
        await client.create_artifact(
            ArtifactCreate(
                key=f"timeline-{incident.id.lower()}",
                type="table",
                description=f"Incident timeline: {incident.title}",
                data=timeline,
                flow_run_id=UUID(incident.flow_run_id) if incident.flow_run_id else None,
            )
        )
