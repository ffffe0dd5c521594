"""The shared response lifecycle, through the real responder, on a real Prefect server, with the
built-in ResponderDrill runbook (it touches no system).

Slack, PagerDuty and webhook receivers are unreachable from here: a local capture server stands
in for each and the tests assert what was sent. Delays are scaled by RESPONDER_TIME_SCALE=0.01 (no
time is patched), and this module's installation pages the default policy's levels at 5/15/20 minutes
(the seed's 5/15/30 would make each paging test wait 18 s for its level 3): 3/9/12 seconds. The
critical policy keeps the seed's "immediately, then +5 min".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import subprocess
import time
import uuid
from urllib.parse import urlencode

import httpx
import pytest

from support.capture import CaptureServer
from support.common import BIN, HTTP, ROOT, wait_for
from support.prefect import events, form_description, resume, runs_for_incident, wait_run_final
from support.responder import ResponderProcess, make_config

SIGNING_SECRET = "test-signing-secret"


class Receivers:
    """Slack (Web API answering like Slack), PagerDuty and a webhook, all local capture servers."""

    def __init__(self) -> None:
        self.slack_status = 200
        self.ts = 0

        def slack(request):
            if self.slack_status != 200:
                return self.slack_status, {"ok": False, "error": "down"}, {"Retry-After": "0"}
            self.ts += 1
            request["ts"] = f"1700000000.{self.ts:06d}"
            return 200, {"ok": True, "channel": "C0ALERTS", "ts": request["ts"]}, {}

        self.slack = CaptureServer(slack)
        self.pagerduty = CaptureServer(lambda r: (202, {"status": "success"}, {}))
        self.webhook = CaptureServer()

    def pages(self, incident_id: str) -> list[int]:
        return [r["body"]["level"] for r in self.webhook.requests
                if r["body"].get("kind") == "page" and r["body"]["incident"]["id"] == incident_id]

    def slack_for(self, incident_id: str) -> list[dict]:
        """The incident's root message, then the replies threaded under it."""
        root = next(r for r in self.slack.requests if incident_id in json.dumps(r["body"]) and "ts" in r)
        return [root["body"]] + [r["body"] for r in self.slack.requests if r["body"].get("thread_ts") == root["ts"]]

    def close(self) -> None:
        for server in (self.slack, self.pagerduty, self.webhook):
            server.close()


@pytest.fixture(scope="module")
def receivers():
    r = Receivers()
    yield r
    r.close()


@pytest.fixture(scope="module")
def responder(prefect_server, tmp_path_factory, receivers):
    tmp = tmp_path_factory.mktemp("lifecycle")
    config = make_config(
        tmp,
        runbook_overrides={"responder-drill": {"approval_timeout_seconds": 6000}},  # 60 s at time scale 0.01
        # Every incident of this module shares one Slack channel, opened seconds apart: Slack's 1 message/s
        # there would queue this module's messages behind earlier tests' pages, and more than 3 incidents a
        # minute is a storm (one message for all). test_notify.py tests both; here each incident is threaded.
        notify={"webhooks": [f"{receivers.webhook.url}/hook"],
                "delivery": {"slack_per_second": 50, "storm_incidents": 1000},
                "pagerduty": {"routing_key": "${RESPONDER_TEST_PD_KEY}", "events_url": f"{receivers.pagerduty.url}/v2/enqueue",
                              "severities": ["critical"]}},
        default_pages_after_minutes=(5, 15, 20),
    )
    proc = ResponderProcess(tmp / "home", config, prefect_server.api_url, {
        "RESPONDER_TIME_SCALE": "0.01",
        "RESPONDER_SLACK_TOKEN": "xoxb-test-token",
        "RESPONDER_SLACK_API_URL": f"{receivers.slack.url}/api/",
        "RESPONDER_SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "RESPONDER_TEST_PD_KEY": "pd-routing-key",
    })
    proc.start()
    yield proc
    proc.stop()


def drill(responder, severity: str = "warning") -> str:
    env = {**responder.env}
    out = subprocess.run([str(BIN / "responder"), "drill", "--severity", severity], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1]


def paused_run(api: str, incident_id: str) -> dict:
    return wait_for(lambda: next((r for r in runs_for_incident(api, incident_id) if r["state"]["type"] == "PAUSED"), None),
                    60, what="the drill to pause for approval")


def test_pages_go_out_per_level_in_order_once_across_a_restart(responder, receivers, prefect_server):
    incident = drill(responder)
    paused_run(prefect_server.api_url, incident)
    wait_for(lambda: receivers.pages(incident) == [1], 20, what="the level 1 page (+3 s)")
    responder.stop()  # the responder goes away while the incident is open …
    responder.start()  # … and comes back: pages still go out once, in order (levels due meanwhile at once)
    wait_for(lambda: len(receivers.pages(incident)) >= 3, 40, what="the level 2 (+9 s) and level 3 (+12 s) pages")
    time.sleep(2)
    assert receivers.pages(incident) == [1, 2, 3]
    # The Event Feed shows each page once, with when it was due.
    paged = wait_for(lambda: len(p := _paged_events(prefect_server.api_url, incident)) == 3 and p, 30,
                     what="three responder.incident.paged events")
    assert sorted(e["payload"]["level"] for e in paged) == [1, 2, 3]
    assert all(e["payload"]["due"] and e["payload"]["late_seconds"] >= 0 for e in paged)


def _paged_events(api: str, incident_id: str) -> list[dict]:
    return [e for e in events(api, "responder.incident.paged")
            if e["resource"]["prefect.resource.id"] == f"responder.incident.{incident_id}"]


def test_acknowledging_stops_further_pages(responder, receivers, prefect_server):
    opened = time.time()
    incident = drill(responder)
    wait_for(lambda: receivers.pages(incident) == [1], 20, what="the level 1 page")
    out = subprocess.run([str(BIN / "responder"), "ack", incident, "--by", "carol"], env=responder.env, cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # Acknowledged between the level 1 page (+3 s) and level 2 (+9 s; the CLI takes up to 3 s on a loaded
    # machine): wait past the level 2 and level 3 (+12 s) times.
    time.sleep(max(0.0, 14 - (time.time() - opened)))
    assert receivers.pages(incident) == [1]
    assert [e["payload"]["level"] for e in _paged_events(prefect_server.api_url, incident)] == [1]
    assert any("acknowledged by carol" in r["body"].get("text", "").lower() or "carol" in r["body"].get("text", "")
               for r in receivers.webhook.requests if r["body"].get("kind") == "acknowledged")


def test_approval_from_the_cli_lets_the_drill_pass(responder, receivers, prefect_server):
    incident = drill(responder)
    run = paused_run(prefect_server.api_url, incident)
    env = {**responder.env, "PREFECT_API_URL": prefect_server.api_url}
    out = subprocess.run([str(BIN / "responder"), "approve", run["id"], "--reason", "drill ok", "--by", "dave"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    final = wait_run_final(prefect_server.api_url, incident)
    assert final["state"]["name"] == "Resolved"
    artifacts = wait_for(lambda: HTTP.post(f"{prefect_server.api_url}/artifacts/filter", json={
        "artifacts": {"key": {"any_": [f"postmortem-{incident}"]}}}).json(), 20, what="the post-mortem artifact")
    assert "dave (CLI)" in artifacts[0]["data"] and "## Timeline" in artifacts[0]["data"]
    # What the response kept at its close reaches the post-mortem `responder up` publishes.
    assert "Configuration in force (secrets redacted)" in artifacts[0]["data"]
    assert "Nothing was kept at close" not in artifacts[0]["data"]
    again = subprocess.run([str(BIN / "responder"), "approve", run["id"], "--reason", "twice"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "not waiting for approval" in again.stderr


def test_a_question_whose_form_was_lost_is_written_again_and_can_be_answered(responder, prefect_server):
    """Prefect suspends a run first and writes its approval form just after, from the process running
    it. A responder killed in that instant left a question nobody could answer ("Run input schema not
    found.", for the UI, the CLI, Slack and the deadline's own "no" alike), and the response waited
    forever. Here the form is deleted through Prefect's API, the state such a kill leaves; the
    responder's lease heartbeat (every 10 s) finds it missing and writes it again, and the answer then
    carries the response on."""
    api = prefect_server.api_url
    incident = drill(responder)
    run = paused_run(api, incident)
    keyset = run["state"]["state_details"]["run_input_keyset"]
    form_description(api, run)  # written by the run itself: now lose it
    for key in (keyset["schema"], keyset["description"]):
        assert HTTP.delete(f"{api}/flow_runs/{run['id']}/input/{key}").status_code == 204
    refused = HTTP.post(f"{api}/flow_runs/{run['id']}/resume",
                        json={"run_input": {"approve": True, "reason": "too early", "approver": "tester"}}).json()
    assert refused["details"]["reason"] == "Run input schema not found."

    described = form_description(api, run, timeout=45)  # written again
    with sqlite3.connect(responder.home / "responder.db") as db:
        [(asked,)] = db.execute("SELECT text FROM timeline WHERE incident_id = ? AND kind = 'approval-asked'",
                                (incident,)).fetchall()
    assert asked in described and "another responder wrote it again" in described
    resume(api, run["id"], True, "the form came back", "tester")
    assert wait_run_final(api, incident)["state"]["name"] == "Resolved"
    with sqlite3.connect(responder.home / "responder.db") as db:
        [(acted,)] = db.execute("SELECT COUNT(*) FROM timeline WHERE incident_id = ? AND kind = 'action'", (incident,))
    assert acted == 1


def _slack_post(responder, payload: dict, secret: str = SIGNING_SECRET, age: int = 0) -> httpx.Response:
    body = urlencode({"payload": json.dumps(payload)})
    ts = str(int(time.time()) - age)
    signature = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return HTTP.post(f"{responder.url}/slack/actions", content=body, headers={
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": ts, "x-slack-signature": signature})


def test_slack_button_approves_only_when_signed(responder, receivers, prefect_server):
    incident = drill(responder)
    run = paused_run(prefect_server.api_url, incident)
    payload = {"type": "block_actions", "user": {"id": "U1", "username": "erin"},
               "actions": [{"action_id": "approve", "value": run["id"]}]}
    assert _slack_post(responder, payload, secret="wrong-secret").status_code == 401
    assert _slack_post(responder, payload, age=600).status_code == 401  # stale: replay refused
    unsigned = HTTP.post(f"{responder.url}/slack/actions", content=urlencode({"payload": json.dumps(payload)}))
    assert unsigned.status_code == 401
    assert runs_for_incident(prefect_server.api_url, incident)[0]["state"]["type"] == "PAUSED"
    answer = _slack_post(responder, payload)
    assert answer.status_code == 200, answer.text
    assert wait_run_final(prefect_server.api_url, incident)["state"]["name"] == "Resolved"

    # Slack got one message per incident in the severity's channel and threaded the rest under it
    wait_for(lambda: any("Resolved" in m["text"] for m in receivers.slack_for(incident)), 20, what="the resolution in Slack")
    messages = receivers.slack_for(incident)
    assert messages[0]["channel"] == "#alerts" and "thread_ts" not in messages[0]
    roots = [r for r in receivers.slack.requests if incident in json.dumps(r["body"]) and "thread_ts" not in r["body"]]
    assert len(roots) == 1, "one root message per incident"
    assert len(messages) >= 4
    kinds = " ".join(m["text"] for m in messages)
    assert "Approval needed" in kinds and "drill_step" in kinds and "Resolved" in kinds
    assert all(r["headers"].get("Authorization") == "Bearer xoxb-test-token" for r in receivers.slack.requests)


def test_critical_incident_pages_level_one_at_once_and_triggers_pagerduty(responder, receivers, prefect_server):
    incident = drill(responder, severity="critical")
    # Level 1 first; level 2 may already be in when a loaded machine delivers level 1 late (level 2 is 3 s on).
    wait_for(lambda: receivers.pages(incident)[:1] == [1], 10, what="the immediate level 1 page (critical)")
    wait_for(lambda: receivers.pages(incident) == [1, 2], 15, what="level 2 at +5 min (3 s)")
    events = wait_for(lambda: [r["body"] for r in receivers.pagerduty.requests
                               if r["body"].get("dedup_key") == f"responder-{incident}"], 10, what="the PagerDuty trigger")
    assert events and events[0]["event_action"] == "trigger" and events[0]["routing_key"] == "pd-routing-key"
    subprocess.run([str(BIN / "responder"), "ack", incident], env=responder.env, cwd=ROOT, check=True,
                   capture_output=True, timeout=30)
    wait_for(lambda: any(r["body"].get("event_action") == "acknowledge" and r["body"].get("dedup_key") == f"responder-{incident}"
                         for r in receivers.pagerduty.requests), 15, what="PagerDuty acknowledge")


def test_slack_down_never_stops_the_response(responder, receivers, prefect_server):
    def failure_recorded() -> list[dict]:  # the timeline published at the close holds the courier's failed attempt
        artifacts = HTTP.post(f"{prefect_server.api_url}/artifacts/filter", json={
            "artifacts": {"key": {"any_": [f"timeline-{incident}"]}}, "sort": "UPDATED_DESC"}).json()
        rows = artifacts[0]["data"] if artifacts else []
        rows = json.loads(rows) if isinstance(rows, str) else rows
        return [row for row in rows if row["kind"] == "notify-failed" and "slack" in row["text"]]

    def failure_stored() -> list[tuple]:
        with sqlite3.connect(responder.home / "responder.db") as db:
            return db.execute("SELECT text FROM timeline WHERE incident_id = ? AND kind = 'notify-failed' "
                              "AND text LIKE '%slack%'", (incident,)).fetchall()

    receivers.slack_status = 503
    try:
        incident = drill(responder)
        run = paused_run(prefect_server.api_url, incident)
        # Answered once the courier has met Slack down (a loaded machine may try Slack late), so the
        # timeline published at the close must hold it.
        wait_for(failure_stored, 60, what="the courier recording that Slack did not take a message")
        resume(prefect_server.api_url, run["id"], True, "ok", "frank")
        assert wait_run_final(prefect_server.api_url, incident)["state"]["name"] == "Resolved"
        wait_for(failure_recorded, 30, what="the timeline saying Slack did not take a message")
    finally:
        receivers.slack_status = 200


def test_ack_of_unknown_incident_is_404(responder):
    response = HTTP.post(f"{responder.url}/incidents/{uuid.uuid4()}/ack", headers={"Authorization": f"Bearer {responder.token}"})
    assert response.status_code == 404


def _drill_body(target: str) -> dict:
    tag = uuid.uuid4().hex[:12]
    alert = {"status": "firing", "labels": {"alertname": "ResponderDrill", "severity": "warning", "instance": "drill",
                                            "target": target, "drill_id": tag},
             "annotations": {"summary": "loop guard drill"}, "startsAt": "2026-11-22T08:00:00Z",
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": tag}
    return {"version": "4", "groupKey": f"drill:{tag}", "truncatedAlerts": 0, "status": "firing", "receiver": "t",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "", "alerts": [alert]}


def test_incidents_list_says_what_each_waits_on(responder, prefect_server):
    incident = drill(responder)
    run = paused_run(prefect_server.api_url, incident)
    # Waited for through the intake's own listing (what the CLI prints); the CLI is run once it is there:
    # each `responder` process is about a second of CPU, which polling it every 0.2 s spent many times over.
    headers = {"Authorization": f"Bearer {responder.token}"}
    wait_for(lambda: any(i["id"] == incident and run["id"] in (i["waiting_on"] or "")
                         for i in HTTP.get(f"{responder.url}/incidents", headers=headers).json()), 10,
             what="the incident listed as waiting on approval")
    listing = subprocess.run([str(BIN / "responder"), "incidents"], env=responder.env, cwd=ROOT,
                             capture_output=True, text=True, timeout=30).stdout
    line = next(line for line in listing.splitlines() if line.startswith(incident))
    assert "responder-drill" in line and "warning" in line and "approval of drill_step" in line
    resume(prefect_server.api_url, run["id"], False, "not now", "gus")
    assert wait_run_final(prefect_server.api_url, incident)["state"]["name"] == "Escalated"


def test_loop_guard_stops_the_fourth_action_on_the_same_target_within_the_hour(responder, prefect_server):
    target = f"box-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        [incident] = responder.post(_drill_body(target)).json()["incidents_opened"]
        run = paused_run(prefect_server.api_url, incident)
        resume(prefect_server.api_url, run["id"], True, "again", "hal")
        assert wait_run_final(prefect_server.api_url, incident)["state"]["name"] == "Resolved"
    [incident] = responder.post(_drill_body(target)).json()["incidents_opened"]
    final = wait_run_final(prefect_server.api_url, incident)
    assert final["state"]["name"] == "Escalated" and "loop is suspected" in final["state"]["message"]
