"""The lifecycle's decisions, in-process: no `responder up`, the real thing otherwise.

The real drill runbook (a risky no-op step that waits for approval) runs as a real deployment run
on the suite's real Prefect server, executed in this test process by the responder's own executor
and approval-deadline clock (``support/executor.py``), on a real store (a SQLite file) and a real
notifier posting to a local capture server (Slack and other receivers are unreachable here).
Answers go through the server's resume API, as the UI's Resume button does.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.registry import load_catalog
from core.services import Services, build
from core.settings import ResponderSettings
from flows.drill import responder_drill
from responder.executor import Executor
from support.capture import CaptureServer
from support.common import wait_for
from support.executor import InProcessResponder, drill_alert, suspended, timeline
from support.prefect import prefect_post, resume
from support.responder import make_config


def services_for(tmp, webhook: CaptureServer, dry_run: bool = False, approval_timeout: float = 60) -> Services:
    config = make_config(tmp, runbook_overrides={"responder-drill": {"approval_timeout_seconds": approval_timeout}},
                         notify={"webhooks": [f"{webhook.url}/hooks"]})
    settings = ResponderSettings(home=tmp / "home", config_dir=config, database_url=None, dry_run=dry_run,
                                 slack_token=None, time_scale=1.0)
    return build(settings, load_catalog(config))


@pytest.fixture(scope="module")
def services(tmp_path_factory, prefect_server, webhook) -> Services:
    return services_for(tmp_path_factory.mktemp("decisions"), webhook)


@pytest.fixture(scope="module")
def responder(services, prefect_server) -> Iterator[InProcessResponder]:
    serving = InProcessResponder(services, prefect_server.api_url, responder_drill, "responder-drill")
    yield serving
    serving.stop()


@contextmanager
def own_responder(services: Services, api_url: str) -> Iterator[InProcessResponder]:
    serving = InProcessResponder(services, api_url, responder_drill, "responder-drill")
    try:
        yield serving
    finally:
        serving.stop()


def task_runs(api: str, run_id: str) -> list[dict[str, Any]]:
    return prefect_post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "sort": "EXPECTED_START_TIME_ASC"})


def test_approved_step_runs_once_and_the_run_carries_on_from_its_kept_steps(responder, services, prefect_server, webhook):
    api = prefect_server.api_url
    run_id = responder.start(drill_alert())
    waiting = suspended(api, run_id)
    assert waiting["state"]["name"] == "Suspended"
    # Task runs reach the server through events, after the run is suspended: wait for the five.
    asked_first = {"acknowledge", "assess-drill", "plan-drill-step", "check-loop-guard", "ask-approval"}
    def steps_before() -> set[str]:
        return {t["name"].rsplit("-", 1)[0] for t in task_runs(api, run_id)}
    wait_for(lambda: asked_first <= steps_before(), 30, what="the steps before the question on the server")
    resume(api, run_id, True, "looks safe", "alice")
    final = responder.final(run_id)
    assert final["state"]["name"] == "Resolved", final["state"]
    texts = [row["text"] for row in timeline(services, run_id)]
    assert sum("drill_step" in t and "done" in t and "approved by alice" in t for t in texts) == 1, texts
    assert sum(t.startswith("runbook responder-drill started") for t in texts) == 1, texts  # acknowledged once
    asked = [r for r in webhook.requests if r["body"].get("kind") == "approval-asked"
             and r["body"].get("flow_run_id") == run_id]
    assert len(asked) == 1  # people were told, once, with the run to answer
    # The second execution took the steps done before the question from the store without a task run of
    # their own: the run page shows each once (Prefect's own cache would add a Cached copy of each).
    # Task runs reach the server through events: wait until each one has its final state recorded.
    def recorded() -> dict[str, list[str]] | None:
        runs = task_runs(api, run_id)
        if any(t["state"] is None or t["state"]["type"] in ("PENDING", "RUNNING") for t in runs):
            return None
        found: dict[str, list[str]] = {}
        for t in runs:
            found.setdefault(t["name"].rsplit("-", 1)[0], []).append(t["state"]["name"])
        return found if "run-mitigation" in found else None

    states = wait_for(recorded, 30, what="every task run's final state on the server")
    assert all(states[name] == ["Completed"] for name in asked_first), states
    assert states["run-mitigation"] == ["Completed"], states
    assert not any("Cached" in names for names in states.values()), states
    # Liveness is the run's lease in the store: the executor runs flows without Prefect's flow-run
    # heartbeats (a thread and an event per execution otherwise, the first one at its start).
    def run_events() -> list[str] | None:
        found = [e["event"] for e in prefect_post(api, "/events/filter", {"filter": {
            "resource": {"id": [f"prefect.flow-run.{run_id}"]}, "event": {"prefix": ["prefect.flow-run."]}}, "limit": 50})["events"]]
        return found if "prefect.flow-run.Resolved" in found else None
    names = wait_for(run_events, 30, what="the run's own events on the server")
    assert "prefect.flow-run.Running" in names and "prefect.flow-run.heartbeat" not in names, names


def test_a_run_executes_without_a_suspension_observer_and_still_suspends_for_approval(responder, prefect_server):
    # Prefect 3.9 starts, for each execution of a deployment run, a thread ("observer_thread") with an
    # event loop, a client and an events websocket of its own, watching for a suspension made from
    # outside the run. The executor runs flows without it (responder/executor.py); the run's own
    # suspension for approval needs none. The threads are sampled every 2 ms while the run executes
    # (the run's own thread, "run-…", is seen too, so the samples covered its execution).
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(thread.name for thread in threading.enumerate())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run_id = responder.start(drill_alert())
        waiting = suspended(prefect_server.api_url, run_id)
    finally:
        stop.set()
        watcher.join(5)
    assert waiting["state"]["name"] == "Suspended"
    assert any(name.startswith("run-") for name in seen), seen
    assert not any("observer_thread" in name for name in seen), sorted(seen)


def test_rejected_step_does_not_run_and_the_incident_escalates(responder, services, prefect_server):
    run_id = responder.start(drill_alert())
    suspended(prefect_server.api_url, run_id)
    resume(prefect_server.api_url, run_id, False, "not now", "bob")
    state = responder.final(run_id)["state"]
    assert state["name"] == "Escalated" and "rejected by bob (not verified): not now" in state["message"], state
    assert not any("drill step done" in row["text"] for row in timeline(services, run_id))


def test_no_answer_before_the_deadline_counts_as_no(tmp_path, prefect_server, webhook):
    quick = services_for(tmp_path, webhook, approval_timeout=2)
    with own_responder(quick, prefect_server.api_url) as serving:
        run_id = serving.start(drill_alert())
        state = serving.final(run_id)["state"]
    assert state["name"] == "Escalated" and "no answer by the deadline" in state["message"], state
    assert any(row["actor"] == "responder (deadline)" for row in timeline(quick, run_id))


def test_the_deadline_is_kept_in_the_store_and_answered_by_a_later_responder(tmp_path, prefect_server, webhook):
    """The responder that asked stops while the run waits; the deadline passes with no responder running;
    the next one (on the same store) answers "no" at once and the response escalates."""
    quick = services_for(tmp_path, webhook, approval_timeout=3)
    with own_responder(quick, prefect_server.api_url) as first:
        run_id = first.start(drill_alert())
        suspended(prefect_server.api_url, run_id)
        deployment = first.deployment_id
    time.sleep(4)  # past the deadline, nobody running
    assert suspended(prefect_server.api_url, run_id)  # still waiting: a suspended run holds nothing and ends nothing
    later = InProcessResponder.for_deployment(quick, prefect_server.api_url, responder_drill, "responder-drill", deployment)
    try:
        state = later.final(run_id)["state"]
    finally:
        later.stop()
    assert state["name"] == "Escalated" and "no answer by the deadline" in state["message"], state


def test_dry_run_asks_nobody_and_only_reports(tmp_path, prefect_server, webhook):
    dry = services_for(tmp_path, webhook, dry_run=True)
    with own_responder(dry, prefect_server.api_url) as serving:
        run_id = serving.start(drill_alert())
        state = serving.final(run_id)["state"]
    assert state["name"] == "Resolved", state  # the drill counts "would do" as its verification
    rows = timeline(dry, run_id)
    assert any("would_do (dry run)" in row["text"] for row in rows), rows
    assert not any(row["kind"] == "approval-asked" for row in rows), rows


def test_loop_guard_holds_the_fourth_run_on_one_target_without_asking(responder, services, prefect_server):
    target = f"svc-{uuid.uuid4().hex[:6]}"
    for _ in range(3):  # the same action on the same target three times within the hour
        services.store.record_action(f"drill_step:{target}", "earlier-incident", "done")
    run_id = responder.start(drill_alert(target=target))
    state = responder.final(run_id)["state"]
    assert state["name"] == "Escalated" and "a loop is suspected" in state["message"], state


def test_incident_closed_while_waiting_runs_nothing(responder, services, prefect_server):
    run_id = responder.start(drill_alert())
    suspended(prefect_server.api_url, run_id)
    incident = services.store.incident_by_run(run_id)
    services.store.close_incident(incident.id, "alert resolved")  # what the intake does on a resolved alert
    resume(prefect_server.api_url, run_id, True, "too late", "carol")
    state = responder.final(run_id)["state"]
    assert state["name"] == "ResolvedByAlert", state
    assert not any("drill step done" in row["text"] for row in timeline(services, run_id))


def test_a_take_over_leaves_alone_a_run_suspended_since_the_runs_were_listed(responder, services, prefect_server,
                                                                             monkeypatch):
    """A responder takes over the runs a stopped one left Running, deciding from a list read a moment
    before. A run seen Running may have been suspended for approval since (letting go of its lease):
    forcing it Scheduled started it again under its own question, where Prefect hands back an empty
    form, so the question counted as "rejected by someone". In the storm bench that was 16 and 26 of
    200 drills. Here the list is the run as the server showed it while it was Running (read then and
    kept: the server's own answer, a moment old), given to a take-over pass after the run was suspended."""
    api = prefect_server.api_url
    run_id = responder.start(drill_alert())

    async def read_run():
        async with get_client() as client:
            return await client.read_flow_run(UUID(run_id))
    with temporary_settings({PREFECT_API_URL: api}):
        running = wait_for(lambda: (run := asyncio.run(read_run())).state.type == StateType.RUNNING and run, 60,
                           interval=0.02, what="the run to be Running")
    asked = suspended(api, run_id)
    wait_for(lambda: services.store.lease(f"run:{run_id}") is None, 30, what="the executor to let go of the run")

    other = Executor({responder.deployment_id: ("responder-drill", responder_drill)}, services)

    async def listed_a_moment_ago(client):
        return [running]
    monkeypatch.setattr(other, "_unfinished_runs", listed_a_moment_ago)  # this executor only
    with temporary_settings({PREFECT_API_URL: api}):
        assert asyncio.run(other.take_over()) == 0
    assert responder.run(run_id)["state"]["id"] == asked["state"]["id"]  # still the same question, waiting
    lease = services.store.lease(f"run:{run_id}")
    assert lease is None or lease[0] != other.holder  # the lease it took to decide was let go again
    resume(api, run_id, True, "still answerable", "alice")
    assert responder.final(run_id)["state"]["name"] == "Resolved"
