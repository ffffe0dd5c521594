"""Scheduling and cancelling escalation pages on the Prefect server (see ``flows/escalation.py``)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled, Scheduled

from core.catalog import Catalog
from core.store import Incident

log = logging.getLogger("responder.escalation")

PAGE_DEPLOYMENT = "escalation-page/escalation-page"


def page_request(incident: Incident, catalog: Catalog, time_scale: float, after_level: int | None = None) -> dict | None:
    """The next page of an incident's policy (after ``after_level``, or the first): level and when."""
    steps = catalog.escalation.steps_for(incident.severity)
    following = [s for s in steps if after_level is None or s.level > after_level]
    if not following:
        return None
    step = following[0]
    when = datetime.fromisoformat(incident.opened_at) + timedelta(minutes=step.after_minutes * time_scale)
    return {"level": step.level, "when": when}


async def schedule_next_page(
    incident: Incident, catalog: Catalog, time_scale: float, deployment_id: UUID, after_level: int | None = None
) -> UUID | None:
    """Schedule the incident's next page as a run of the page deployment (idempotent per level).

    Only the next level is scheduled; each page run schedules the one after it. Times count from
    the incident's opening, so a late page never pushes the later ones back.
    """
    request = page_request(incident, catalog, time_scale, after_level)
    if request is None:
        return None
    level = request["level"]
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            deployment_id,
            parameters={"incident_id": incident.id, "level": level},
            state=Scheduled(scheduled_time=request["when"], message=f"page level {level} unless resolved or acknowledged"),
            idempotency_key=f"page-{incident.id}-{level}",
            tags=["escalation", f"level:{level}"],
        )
    return run.id


async def cancel_pages(incident_id: str, deployment_id: UUID, reason: str) -> int:
    """Cancel the incident's pages that have not run yet."""
    cancelled = 0
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            limit=200,
        )
        for run in runs:
            if (run.parameters or {}).get("incident_id") == incident_id:
                await client.set_flow_run_state(run.id, Cancelled(message=reason), force=True)
                cancelled += 1
    return cancelled
