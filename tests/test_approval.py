"""Risky steps wait for a human: the CPU runbook proposes killing a real CPU-burning process,
pauses for approval, and acts only when approved.

The CPU threshold is 0 % in this module so the runbook always finds "high CPU" (a 2-core test
machine cannot be relied on to be above 80 %), and the only killable process is a burner this
test starts (matched by its command line). Escalations go to a local capture server standing in
for a webhook receiver.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import psutil
import pytest

from support.alerts import load_fixture
from support.common import HTTP, wait_for
from support.prefect import resume, runs_for_incident, wait_run_final
from support.responder import make_config, running_responder


@pytest.fixture(scope="module")
def responder(prefect_server, tmp_path_factory, webhook):
    tmp = tmp_path_factory.mktemp("approval")
    config = make_config(
        tmp,
        thresholds={"high-cpu-usage": {"cpu_percent": 0}},
        runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 2, "interval_seconds": 1},
                                              "approval_timeout_seconds": 8}},
        targets={"processes": {"killable_cmdline": ["responder-test-burner-"], "protected_names": ["systemd"]}},
        notify={"webhooks": [f"{webhook.url}/escalations"]},
    )
    with running_responder(tmp, prefect_server.api_url, config) as proc:
        yield proc


@pytest.fixture
def burner():
    marker = f"responder-test-burner-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass", marker])
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _sent(webhook, incident_id: str, kind: str) -> list[dict]:
    return [r for r in webhook.requests
            if r["body"].get("incident", {}).get("id") == incident_id and r["body"].get("kind") == kind]


def _paused_run(api: str, incident_id: str) -> dict:
    def paused():
        runs = runs_for_incident(api, incident_id)
        return runs[0] if runs and runs[0]["state"]["type"] == "PAUSED" else None
    return wait_for(paused, 60, what="the run to pause for approval")


def _fire(responder) -> str:
    body = load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6])
    answer = responder.post(body)
    assert answer.status_code == 200, answer.text
    return answer.json()["incidents_opened"][0]


def _form_description(api: str, run: dict) -> str:
    keyset = run["state"]["state_details"]["run_input_keyset"]
    # The form is saved just after the run turns Paused.
    response = wait_for(lambda: (r := HTTP.get(f"{api}/flow_runs/{run['id']}/input/{keyset['description']}")).is_success and r,
                        10, what="the approval form's description")
    return response.json()


def test_approved_kill_runs_and_the_unresolved_incident_escalates(responder, prefect_server, burner, webhook):
    api = prefect_server.api_url
    incident_id = _fire(responder)
    run = _paused_run(api, incident_id)
    description = _form_description(api, run)
    assert f"pid {burner.pid}" in description and "terminate_process" in description and "Evidence" in description
    assert burner.poll() is None, "nothing may be killed before approval"

    resume(api, run["id"], True, "burner is junk", "alice")
    burner.wait(timeout=30)

    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Escalated"  # CPU stays above a 0 % threshold
    escalations = wait_for(lambda: _sent(webhook, incident_id, "escalated"), 10, what="the escalation message")
    actions = escalations[0]["body"]["actions"]
    assert actions[0]["action"] == "terminate_process" and actions[0]["status"] == "done"
    assert "alice" in actions[0]["detail"]


def test_rejected_kill_does_not_run(responder, prefect_server, burner, webhook):
    api = prefect_server.api_url
    incident_id = _fire(responder)
    run = _paused_run(api, incident_id)
    resume(api, run["id"], False, "that is the batch job", "bob")
    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Escalated"
    assert burner.poll() is None and psutil.pid_exists(burner.pid)
    body = wait_for(lambda: _sent(webhook, incident_id, "escalated"), 10, what="the escalation message")[0]["body"]
    assert body["actions"][0]["status"] == "rejected" and "bob" in body["reason"]


def test_no_answer_before_the_deadline_means_no_and_escalates(responder, prefect_server, burner, webhook):
    api = prefect_server.api_url
    incident_id = _fire(responder)
    _paused_run(api, incident_id)
    final = wait_run_final(api, incident_id, timeout=60)
    assert final["state"]["type"] == "COMPLETED" and final["state"]["name"] == "Escalated", final["state"]
    assert burner.poll() is None
    body = wait_for(lambda: _sent(webhook, incident_id, "escalated"), 10, what="the escalation message")[0]["body"]
    assert "deadline" in body["reason"]


def test_alert_resolving_while_waiting_ends_the_response_without_acting(responder, prefect_server, burner):
    api = prefect_server.api_url
    suffix = uuid.uuid4().hex[:6]
    answer = responder.post(load_fixture("high_cpu_firing.json", unique=suffix)).json()
    incident_id = answer["incidents_opened"][0]
    _paused_run(api, incident_id)
    resolved = responder.post(load_fixture("high_cpu_resolved.json", unique=suffix)).json()
    assert resolved["incidents_closed"] == [incident_id]
    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "ResolvedByAlert", final["state"]
    assert burner.poll() is None
