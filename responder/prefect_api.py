"""Talking to the Prefect server: event delivery and the readiness canary.

Events go to ``POST /api/events`` with their ids fixed when they were stored, so
delivering one twice is harmless (the server's trigger evaluation skips event ids
it has seen). The canary is an automation of our own (``do-nothing`` action) on a
``responder.readiness.probe`` event: when its action fires, the server's event
pipeline, trigger evaluation and action service are all up and every automation
created before it is loaded, so an alert delivered now starts its run.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx
from prefect import get_client
from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState,
                                           FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.events.actions import DoNothing
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.settings import PREFECT_API_URL, get_current_settings
from prefect.states import Cancelled

from core.jsontext import to_json

CANARY_NAME = "responder: readiness canary"
CANARY_EVENT = "responder.readiness.probe"


def api_url() -> str:
    url = PREFECT_API_URL.value()
    if not url:
        raise RuntimeError("PREFECT_API_URL is not set")
    return url.rstrip("/")


def auth_headers() -> dict[str, str]:
    """Prefect's basic auth for this process's own httpx calls (Prefect's clients add it themselves)."""
    secret = get_current_settings().api.auth_string
    if secret is None or not secret.get_secret_value():
        return {}
    return {"Authorization": "Basic " + base64.b64encode(secret.get_secret_value().encode()).decode()}


async def post_events(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    """One delivery pass's events in one request, written as the store writes records (``to_json``: httpx's
    ``json=`` encodes with the json module: 4 % of the responder's samples holding the interpreter lock, py-spy
    ``--gil``, at 1,700 unrouted posts a second)."""
    response = await client.post(f"{api_url()}/events", content=to_json(events).encode(), timeout=10,
                                 headers={**auth_headers(), "Content-Type": "application/json"})
    response.raise_for_status()


async def server_healthy(client: httpx.AsyncClient) -> bool:
    try:
        response = await client.get(f"{api_url()}/health", timeout=3)
        return response.status_code == 200
    except httpx.HTTPError:
        return False


async def ensure_canary() -> uuid.UUID:
    """Create (once) the canary automation; returns its id."""
    async with get_client() as client:
        existing = await client.read_automations_by_name(CANARY_NAME)
        if existing:
            for extra in existing[1:]:
                await client.delete_automation(extra.id)
            return existing[0].id
        return await client.create_automation(
            AutomationCore(
                name=CANARY_NAME,
                description="Lets the responder check that alert triggers are live before it reports ready.",
                trigger=EventTrigger(
                    expect={CANARY_EVENT},
                    match={"prefect.resource.id": "responder.readiness"},
                    posture=Posture.Reactive,
                    threshold=1,
                ),
                actions=[DoNothing()],
            )
        )


async def probe_triggers(http: httpx.AsyncClient, timeout: float = 20.0) -> bool:
    """Emit a canary event and wait until the canary automation's action fires for it."""
    probe_id = str(uuid.uuid4())
    wanted = f"prefect.event.{probe_id}"
    flt = EventFilter(event=EventNameFilter(prefix=["prefect.automation.action."]))

    async def wait() -> bool:
        async with get_events_subscriber(filter=flt) as subscriber:
            await post_events(
                http,
                [
                    {
                        "id": probe_id,
                        "occurred": datetime.now(timezone.utc).isoformat(),
                        "event": CANARY_EVENT,
                        "resource": {"prefect.resource.id": "responder.readiness"},
                        "payload": {},
                    }
                ],
            )
            async for event in subscriber:
                if any(r.id == wanted for r in event.related):
                    return True
        return False

    try:
        return await asyncio.wait_for(wait(), timeout)
    except (asyncio.TimeoutError, OSError, httpx.HTTPError):
        return False
    except Exception as exc:  # websockets raise their own connection errors
        if "connect" in type(exc).__name__.lower() or "websocket" in type(exc).__module__:
            return False
        raise


async def release_waiting_run(flow_run_id: str, reason: str) -> bool:
    """Answer a paused run's approval form with "no" (its incident is over). False if not paused."""
    async with get_client() as client:
        run = await client.read_flow_run(uuid.UUID(flow_run_id))
        if not (run.state and run.state.is_paused()):
            return False
        await client.resume_flow_run(
            uuid.UUID(flow_run_id), run_input={"approve": False, "reason": reason, "approver": "alertmanager"}
        )
        return True


OLD_PAGE_DEPLOYMENT = "escalation-page/escalation-page"


async def retire_page_deployment() -> int:
    """Remove the ``escalation-page`` deployment of earlier releases, which scheduled one flow run per page.

    Pages are now sent by the responder's pager from the store; runs that deployment still has
    scheduled would stay Scheduled (then Late) forever, so they are cancelled, saying why, and the
    deployment is deleted. Returns how many runs were cancelled; nothing to do on a new server.
    """
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(OLD_PAGE_DEPLOYMENT)
        except ObjectNotFound:
            return 0
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
        )
        for run in runs:
            await client.set_flow_run_state(
                run.id, Cancelled(message="pages are sent by the responder's pager now (see the incident's timeline)"),
                force=True)
        await client.delete_deployment(deployment.id)
        return len(runs)
