"""The lifecycle's decisions, in-process: no `responder up`, the real thing otherwise.

The real drill runbook (a risky no-op step that waits for approval) runs as a real Prefect flow in
this test process against the suite's real Prefect server, on a real store (a SQLite file) and a
real notifier posting to a local capture server (Slack and other receivers are unreachable here).
The test builds the services itself and binds them around each run, as the executor does; answers
go through the server's resume API, as the UI's Resume button does.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from prefect.settings import PREFECT_API_URL, temporary_settings

from core.alerts import Alert
from core.catalog import load_catalog
from core.services import Services, bound, build
from core.settings import ResponderSettings
from flows.drill import responder_drill
from support.capture import CaptureServer
from support.common import wait_for
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


def drill_alert(**labels: str) -> Alert:
    return Alert(status="firing", labels={"alertname": "ResponderDrill", **labels}, startsAt=datetime.now(timezone.utc),
                 annotations={"summary": "decision test"}, fingerprint=uuid.uuid4().hex[:16])


class Run:
    """The drill flow running in a thread of this process, with ``services`` bound, as the executor runs it."""

    def __init__(self, services: Services, alert: Alert, api_url: str) -> None:
        self.alert, self.state = alert, None
        self.thread = threading.Thread(target=self._run, args=(services, api_url), daemon=True)
        self.thread.start()

    def _run(self, services: Services, api_url: str) -> None:
        # Prefect read its settings when this process imported it, before the suite's server existed.
        with temporary_settings({PREFECT_API_URL: api_url}), bound(services):
            self.state = responder_drill(alert=self.alert, return_state=True)

    def paused(self, api: str) -> dict[str, Any]:
        body = {"flow_runs": {"name": {"any_": [f"ResponderDrill {self.alert.fingerprint}"]}}}
        return wait_for(lambda: next((r for r in prefect_post(api, "/flow_runs/filter", body)
                                      if r["state"]["type"] == "PAUSED"), None), 60, what="the run to pause")

    def final(self, timeout: float = 60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not finish"
        return self.state

    def timeline(self, services: Services) -> list[dict[str, Any]]:
        incident = services.store.incident_by_run(str(self.state.state_details.flow_run_id))
        return services.store.timeline(incident.id)


def test_approved_step_runs_and_the_incident_is_resolved(services, prefect_server, webhook):
    run = Run(services, drill_alert(), prefect_server.api_url)
    paused = run.paused(prefect_server.api_url)
    resume(prefect_server.api_url, paused["id"], True, "looks safe", "alice")
    state = run.final()
    assert state.name == "Resolved", state
    texts = [row["text"] for row in run.timeline(services)]
    assert any("drill_step" in t and "done" in t and "approved by alice" in t for t in texts), texts
    asked = [r for r in webhook.requests if r["body"].get("kind") == "approval-asked"
             and r["body"].get("flow_run_id") == paused["id"]]
    assert len(asked) == 1  # people were told, once, with the run to answer


def test_rejected_step_does_not_run_and_the_incident_escalates(services, prefect_server):
    run = Run(services, drill_alert(), prefect_server.api_url)
    paused = run.paused(prefect_server.api_url)
    resume(prefect_server.api_url, paused["id"], False, "not now", "bob")
    state = run.final()
    assert state.name == "Escalated" and "rejected by bob: not now" in state.message, state
    assert not any("drill step done" in row["text"] for row in run.timeline(services))


def test_no_answer_before_the_deadline_counts_as_no(tmp_path, prefect_server, webhook):
    quick = services_for(tmp_path, webhook, approval_timeout=2)
    run = Run(quick, drill_alert(), prefect_server.api_url)
    state = run.final(timeout=90)
    assert state.name == "Escalated" and "no answer within 2 s" in state.message, state
    assert any(row["actor"] == "responder (deadline)" for row in run.timeline(quick))


def test_dry_run_asks_nobody_and_only_reports(tmp_path, prefect_server, webhook):
    dry = services_for(tmp_path, webhook, dry_run=True)
    run = Run(dry, drill_alert(), prefect_server.api_url)
    state = run.final()
    assert state.name == "Resolved", state  # the drill counts "would do" as its verification
    rows = run.timeline(dry)
    assert any("would_do (dry run)" in row["text"] for row in rows), rows
    assert not any(row["kind"] == "approval-asked" for row in rows), rows


def test_loop_guard_holds_the_fourth_run_on_one_target_without_asking(services, prefect_server):
    target = f"svc-{uuid.uuid4().hex[:6]}"
    for _ in range(3):  # the same action on the same target three times within the hour
        services.store.record_action(f"drill_step:{target}", "earlier-incident", "done")
    run = Run(services, drill_alert(target=target), prefect_server.api_url)
    state = run.final()
    assert state.name == "Escalated" and "a loop is suspected" in state.message, state


def test_incident_closed_while_waiting_runs_nothing(services, prefect_server):
    run = Run(services, drill_alert(), prefect_server.api_url)
    paused = run.paused(prefect_server.api_url)
    incident = services.store.incident_by_run(paused["id"])
    services.store.close_incident(incident.id, "alert resolved")  # what the intake does on a resolved alert
    resume(prefect_server.api_url, paused["id"], True, "too late", "carol")
    state = run.final()
    assert state.name == "ResolvedByAlert", state
    assert not any("drill step done" in row["text"] for row in run.timeline(services))
