"""Escalation pages from the store's clock, in-process: real stores (a SQLite file and a real PostgreSQL),
the real catalog and notifier, and no Prefect server at all (a page needs none).

The webhook receiver is a local capture server: no real pager is reachable from here.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone

import pytest

from prefect import flow, get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Scheduled

from flows.registry import load_catalog
from core.escalation import due_pages, next_page, send_page
from core.services import build
from core.settings import ResponderSettings
from core.store import open_store
from responder.pager import Pager
from responder.prefect_api import retire_page_deployment
from support.capture import CaptureServer
from support.delivery import deliver, delivering
from support.responder import make_config


@pytest.fixture
def webhook():
    server = CaptureServer()
    yield server
    server.close()


def _services(tmp_path, webhook, url: str | None = None, time_scale: float = 1.0):
    catalog = load_catalog(make_config(tmp_path, notify={"webhooks": [f"{webhook.url}/hook"]}))
    settings = ResponderSettings(home=tmp_path / "home", time_scale=time_scale)
    return build(settings, catalog, open_store(url, tmp_path / "store.db"))


def _pages_sent(webhook, incident_id: str) -> list[int]:
    return [r["body"]["level"] for r in webhook.requests
            if r["body"].get("kind") == "page" and r["body"]["incident"]["id"] == incident_id]


def test_each_level_is_due_at_its_time_and_none_once_acknowledged_or_closed(tmp_path, webhook):
    services = _services(tmp_path, webhook)
    store, catalog = services.store, services.catalog
    incident = store.open_manual_incident("responder-drill", "warning", "drill", "run-1")
    opened = datetime.fromisoformat(incident.opened_at)

    assert due_pages(incident, set(), catalog, 1.0, opened + timedelta(minutes=4, seconds=59)) == []
    [first] = due_pages(incident, set(), catalog, 1.0, opened + timedelta(minutes=5))
    assert (first.level, first.first, first.due) == (1, True, opened + timedelta(minutes=5))
    # A responder that was away for 20 minutes owes levels 1 and 2, in order; level 3 is still to come.
    assert [p.level for p in due_pages(incident, set(), catalog, 1.0, opened + timedelta(minutes=20))] == [1, 2]
    assert [p.level for p in due_pages(incident, {1}, catalog, 1.0, opened + timedelta(minutes=20))] == [2]
    assert next_page(incident, {1, 2}, catalog, 1.0).level == 3

    critical = store.open_manual_incident("responder-drill", "critical", "drill", "run-2")
    assert [p.level for p in due_pages(critical, set(), catalog, 1.0, datetime.now(timezone.utc))] == [1]

    acknowledged = store.acknowledge(incident.id, "carol")
    assert due_pages(acknowledged, set(), catalog, 1.0, opened + timedelta(hours=1)) == []
    store.close_incident(critical.id, "verified")
    assert due_pages(store.incident(critical.id), set(), catalog, 1.0, datetime.now(timezone.utc)) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_responders_racing_for_the_same_page_send_it_once(tmp_path, webhook, backend, request):
    """Two responders on one store: each has its own store connection and notifier, both find the page due
    at the same instant; the store's claim lets exactly one send it."""
    url = request.getfixturevalue("fresh_database") if backend == "postgresql" else None
    one = _services(tmp_path / "one", webhook, url)
    two = _services(tmp_path / "two", webhook, url) if url else one  # one SQLite file: one store per process
    incident = one.store.open_manual_incident("responder-drill", "critical", "drill", "run-1")
    [page] = due_pages(incident, set(), one.catalog, 1.0, datetime.now(timezone.utc))
    start = threading.Barrier(8)
    sent: list[bool] = []

    def race(services) -> None:
        start.wait()
        sent.append(send_page(incident, page, services.store, services.notifier, datetime.now(timezone.utc)))

    threads = [threading.Thread(target=race, args=(one if i % 2 else two,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(sent) == [False] * 7 + [True]
    # The winner's messages were written with its claim, in one transaction: one page to deliver, not eight.
    assert [(m.channel, m.kind) for m in one.store.messages(incident.id)] == [("webhook", "page")]
    deliver(one)
    assert _pages_sent(webhook, incident.id) == [1]
    assert [p["level"] for p in one.store.pages(incident.id)] == [1]
    timeline = [e["text"] for e in two.store.timeline(incident.id)]
    assert timeline.count("paged level 1: @on-call-primary") == 1


def test_the_pager_sends_what_is_due_without_any_prefect_server(tmp_path, webhook):
    """The pager's pass reads the store and sends; no Prefect API is configured or reachable here.
    Time scale 0.001: the default policy's 5/15/30 minutes are 0.3/0.9/1.8 s."""
    services = _services(tmp_path, webhook, time_scale=0.001)
    incident = services.store.open_manual_incident("responder-drill", "warning", "drill", "run-1")
    pager = Pager(services, interval_seconds=0.05)

    async def until_three_pages() -> None:
        task = asyncio.create_task(pager.run())
        try:
            for _ in range(200):
                if len(_pages_sent(webhook, incident.id)) == 3:
                    return
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            pager.close()

    with delivering(services):
        asyncio.run(until_three_pages())
    assert _pages_sent(webhook, incident.id) == [1, 2, 3]
    events = [e for e in services.store.pending_events() if e["kind"] == "incident.paged"]
    assert [e["details"]["level"] for e in events] == [1, 2, 3]


@flow(name="escalation-page")
def old_escalation_page(incident_id: str, level: int) -> None:
    """What earlier releases deployed: one flow run per page."""


def test_start_up_retires_the_page_runs_earlier_releases_scheduled(prefect_server):
    """On the suite's real Prefect server: the old deployment with a page scheduled an hour ahead (it would
    stay Scheduled, then Late, forever) is gone after start-up's retirement step, its run cancelled saying why."""
    async def main() -> tuple[int, str, str, int]:
        deployment_id = await (await old_escalation_page.ato_deployment(name="escalation-page")).aapply()
        async with get_client() as client:
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"incident_id": "inc-old", "level": 2},
                state=Scheduled(scheduled_time=datetime.now(timezone.utc) + timedelta(hours=1)))
            retired = await retire_page_deployment()
            state = (await client.read_flow_run(run.id)).state
            again = await retire_page_deployment()
        return retired, state.type.value, state.message, again

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        retired, state, message, again = asyncio.run(main())
    assert (retired, state, again) == (1, "CANCELLED", 0)
    assert "pager" in message
