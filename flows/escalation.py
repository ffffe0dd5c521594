"""Escalation pages: one scheduled flow run per (incident, level), visible in the Prefect UI.

When an incident opens, the responder creates a run of the ``escalation-page`` deployment for the
first step of the severity's policy (``config/escalation.yaml``), scheduled at
``opened_at + after_minutes × RESPONDER_TIME_SCALE`` with an idempotency key per (incident, level);
each page run schedules the next level the same way, so the UI shows the next page as a
Scheduled run.
The Prefect server keeps them, so a restarted responder still pages on time, and the key plus the
``pages`` table make each page go out once. Acknowledging or resolving the incident cancels the
pending runs; a run that starts anyway re-checks and ends ``NotNeeded``.
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow, get_run_logger
from prefect.runtime import deployment
from prefect.states import Completed, State
from prefect.utilities.asyncutils import run_coro_as_sync

from core import metrics
from core.escalation import schedule_next_page
from flows.lifecycle import notifier, runtime


@flow(name="escalation-page", flow_run_name="page L{level} {incident_id}")
def escalation_page(incident_id: str, level: int) -> State:
    """Page one escalation level unless the incident was resolved or acknowledged meanwhile."""
    _, catalog, store = runtime()
    logger = get_run_logger()
    incident = store.incident(incident_id)
    if incident is None:
        return Completed(name="NotNeeded", message=f"no incident {incident_id}")
    if incident.status == "closed":
        return Completed(name="NotNeeded", message=f"incident closed ({incident.close_reason})")
    if incident.acknowledged_at:
        return Completed(name="NotNeeded", message=f"acknowledged by {incident.acknowledged_by}")
    target = catalog.escalation.levels[level]
    if not store.record_page(incident_id, level, target.who):
        return Completed(name="AlreadyPaged", message=f"level {level} was already paged")
    text = (f":rotating_light: *Level {level} page* for {target.who} ({target.title or 'on call'}): "
            f"{incident.title} — `{incident.runbook}`, {incident.severity}, open since {incident.opened_at}")
    first = level == min(step.level for step in catalog.escalation.steps_for(incident.severity))
    notifier().send(incident, "page", text, details={"level": level, "who": target.who},
                    discord=True,
                    pagerduty="trigger" if first else None)
    store.add_timeline(incident_id, "page", f"paged level {level}: {target.who}")
    store.record_event(incident_id, "paged", {"level": level, "who": target.who})
    metrics.PAGES.labels(str(level)).inc()
    logger.warning("Paged level %s (%s) for incident %s", level, target.who, incident_id)
    _schedule_next(incident, level)
    return Completed(name=f"Paged L{level}", message=f"paged {target.who}")


def _schedule_next(incident, level: int) -> None:
    settings, catalog, _ = runtime()
    if deployment.id:
        run_coro_as_sync(schedule_next_page(incident, catalog, settings.time_scale, UUID(deployment.id), after_level=level))
