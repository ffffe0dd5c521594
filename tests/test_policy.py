"""Operations policy in the shared lifecycle: maintenance windows and the blast-radius limit.

In-process, as ``tests/test_lifecycle_decisions.py``: the real drill runbook (a risky no-op step)
runs as a real deployment run on the suite's real Prefect server, executed in this process by the
responder's own executor, on a real store (a SQLite file), with the real pager and the real
maintenance keeper; notifications go to a local capture server (no Slack or pager is reachable
here). Answers go through the server's resume API, as the UI's Resume button does. The silence
test runs a real Alertmanager; the CLI tests run the real ``responder maintenance`` command.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml

from core.alerts import AlertmanagerPayload, IncidentRef
from core.catalog import CatalogError
from flows.registry import load_catalog
from core.maintenance import in_force, recurring_in_force
from core.services import Services, build
from core.settings import ResponderSettings
from flows.drill import responder_drill
from responder import cli
from responder.maintenance import MaintenanceKeeper
from responder.pager import Pager
from support.capture import CaptureServer
from support.delivery import delivering
from support.common import BIN, HTTP, wait_for
from support.executor import InProcessResponder, drill_alert, suspended, timeline
from support.prefect import form_description, prefect_post, resume, runs_for_incident, wait_run_final
from support.prometheus import AlertmanagerServer
from support.responder import fire, make_config, running_responder


def services_for(tmp: Path, webhook: CaptureServer, policy: dict | None = None, maintenance: dict | None = None,
                 targets: dict | None = None) -> Services:
    config = make_config(tmp, runbook_overrides={"responder-drill": {"approval_timeout_seconds": 120}},
                         notify={"webhooks": [f"{webhook.url}/hooks"]}, targets=targets)
    if policy is not None:
        (config / "policy.yaml").write_text(yaml.safe_dump(policy))
    if maintenance is not None:
        (config / "maintenance.yaml").write_text(yaml.safe_dump(maintenance))
    settings = ResponderSettings(home=tmp / "home", config_dir=config, database_url=None, slack_token=None)
    return build(settings, load_catalog(config))


@pytest.fixture
def webhook():
    server = CaptureServer()
    yield server
    server.close()


def window(services: Services, **scope) -> dict:
    now = datetime.now(timezone.utc)
    return services.store.add_window(service=scope.get("service"), runbook=scope.get("runbook"),
                                     matchers=scope.get("matchers", []), starts=now - timedelta(seconds=1),
                                     ends=now + timedelta(hours=1), reason="database upgrade", by="dana")


def outbox_opens(services: Services, incident_id: str) -> list[dict]:
    with services.store._tx() as cur:
        rows = services.store._exec(cur, "SELECT body FROM outbox WHERE kind = 'alert.firing'").fetchall()
    return [b for b in (json.loads(r[0]) for r in rows) if (b["incident"] or {}).get("id") == incident_id and b["opens"]]


def opened_by_the_intake(services: Services, alert) -> IncidentRef:
    """Store ``alert`` as the intake does (an episode, an incident); the incident for the run's parameters."""
    payload = AlertmanagerPayload(version="4", groupKey=f"test:{alert.fingerprint}", status="firing", alerts=[alert])
    result = services.store.ingest(payload, payload.model_dump_json().encode(), services.catalog.routes([alert.alertname]))
    incident = services.store.incident(result.incidents_opened[0])
    return IncidentRef(id=incident.id, runbook=incident.runbook, group_key=incident.group_key, severity=incident.severity)


# -- maintenance windows -------------------------------------------------------------------------


def test_a_window_holds_every_action_and_its_end_gives_a_fresh_response(tmp_path, prefect_server, webhook):
    services = services_for(tmp_path, webhook)
    drill = uuid.uuid4().hex[:8]
    held_by = window(services, matchers=[f'drill_id="{drill}"'])
    serving = InProcessResponder(services, prefect_server.api_url, responder_drill, "responder-drill")
    try:
        alert = drill_alert(drill_id=drill)
        run_id = serving.start(alert, opened_by_the_intake(services, alert))
        state = serving.final(run_id)["state"]
        other = serving.start(drill_alert(drill_id="not-covered"))  # a window covers only what it matches
        suspended(prefect_server.api_url, other)
    finally:
        serving.stop()
    assert state["name"] == "HeldForMaintenance" and held_by["id"] in state["message"], state
    rows = timeline(services, run_id)
    assert any(r["kind"] == "action" and "drill_step" in r["text"] and f"held by maintenance window {held_by['id']}"
               in r["text"] and "set by dana" in r["text"] for r in rows), rows
    assert not any(r["kind"] in ("approval-asked", "escalated") for r in rows), rows  # nobody asked, nobody paged
    incident = services.store.incident_by_run(run_id)
    assert incident.status == "open"
    assert "maintenance window" in services.store.note(incident.id, "waiting_on")

    # The window is still on: nothing to release. Ended, the incident (still firing) gets a fresh response, once.
    keeper = MaintenanceKeeper(services, wake_delivery=lambda: None)
    [opening] = outbox_opens(services, incident.id)  # the event that started the held run
    assert asyncio.run(keeper.release_over()) == 0 and len(outbox_opens(services, incident.id)) == 1
    services.store.end_window(held_by["id"], "dana", datetime.now(timezone.utc))
    assert asyncio.run(keeper.release_over()) == 1
    assert asyncio.run(keeper.release_over()) == 0
    [fresh] = [e for e in outbox_opens(services, incident.id) if e["id"] != opening["id"]]
    assert fresh["alert"]["labels"]["drill_id"] == drill
    assert services.store.incident(incident.id).flow_run_id is None  # the new run claims it
    assert any(r["kind"] == "maintenance-over" for r in services.store.timeline(incident.id))


def test_a_window_started_while_the_question_waits_holds_the_approved_action(tmp_path, prefect_server, webhook):
    services = services_for(tmp_path, webhook)
    serving = InProcessResponder(services, prefect_server.api_url, responder_drill, "responder-drill")
    try:
        run_id = serving.start(drill_alert())
        suspended(prefect_server.api_url, run_id)
        held_by = window(services, runbook="responder-drill")
        resume(prefect_server.api_url, run_id, True, "go ahead", "erin")
        state = serving.final(run_id)["state"]
    finally:
        serving.stop()
    assert state["name"] == "HeldForMaintenance", state
    texts = [r["text"] for r in timeline(services, run_id)]
    assert any("held by maintenance window " + held_by["id"] in t for t in texts), texts
    assert not any("drill_step" in t and ": done" in t for t in texts), texts


def test_pages_wait_for_the_window_unless_the_policy_says_otherwise(tmp_path, webhook):
    """No Prefect server needed: a page is the store's clock and the notifier. The critical policy
    pages level 1 at once."""
    def pages(incident_id: str) -> list[int]:
        return [r["body"]["level"] for r in webhook.requests
                if r["body"].get("kind") == "page" and r["body"]["incident"]["id"] == incident_id]

    for during in (False, True):
        services = services_for(tmp_path / str(during), webhook, policy={"page_during_maintenance": during})
        incident = services.store.open_manual_incident("responder-drill", "critical", "drill", f"run-{during}")
        held_by = window(services, runbook="responder-drill")
        pager = Pager(services)
        try:
            with delivering(services):
                asyncio.run(_one_pass(pager))
                if during:
                    wait_for(lambda: pages(incident.id) == [1], 10, what="the page, sent during the window as configured")
                    continue
                assert pages(incident.id) == []  # held while the window is on
                services.store.end_window(held_by["id"], "dana", datetime.now(timezone.utc))
                asyncio.run(_one_pass(pager))
                wait_for(lambda: pages(incident.id) == [1], 10, what="the page once the window is over")
        finally:
            pager.close()


async def _one_pass(pager: Pager) -> None:
    await pager.page_due(asyncio.get_running_loop())
    await asyncio.sleep(0.5)  # the senders run on the pager's own threads


def test_recurring_windows_open_at_their_cron_time_in_their_time_zone(tmp_path, webhook):
    services = services_for(tmp_path, webhook, maintenance={"windows": [{
        "name": "sunday-backup", "runbook": "responder-drill", "cron": "0 3 * * sun", "duration_minutes": 90,
        "timezone": "Europe/Berlin", "reason": "weekly backup"}]})
    sunday_0230_utc = datetime(2026, 12, 6, 2, 30, tzinfo=timezone.utc)  # 03:30 in Berlin (CET, UTC+1)
    [open_] = recurring_in_force(services.catalog, sunday_0230_utc)
    assert open_.starts == datetime(2026, 12, 6, 2, 0, tzinfo=timezone.utc)
    assert open_.ends == datetime(2026, 12, 6, 3, 30, tzinfo=timezone.utc)
    assert recurring_in_force(services.catalog, datetime(2026, 12, 6, 3, 30, tzinfo=timezone.utc)) == []
    assert recurring_in_force(services.catalog, datetime(2026, 12, 6, 1, 59, tzinfo=timezone.utc)) == []
    assert [w.id for w in in_force(services.store, services.catalog, sunday_0230_utc)] == [open_.id]


@pytest.mark.parametrize("entry, complaint", [
    ({"name": "w", "cron": "61 * * * *", "duration_minutes": 5, "runbook": "responder-drill", "reason": "r"},
     "is not a cron expression"),
    ({"name": "w", "cron": "0 3 * * *", "duration_minutes": 5, "runbook": "no-such-runbook", "reason": "r"},
     "window 'w': unknown runbook 'no-such-runbook'"),
    ({"name": "w", "cron": "0 3 * * *", "duration_minutes": 5, "service": "no-such-service", "reason": "r"},
     "window 'w': unknown service 'no-such-service'"),
    ({"name": "w", "cron": "0 3 * * *", "duration_minutes": 5, "timezone": "Mars/Olympus", "runbook": "responder-drill",
      "reason": "r"}, "unknown time zone"),
    ({"name": "w", "cron": "0 3 * * *", "duration_minutes": 5, "reason": "r"}, "would cover everything"),
])
def test_a_broken_maintenance_file_is_refused_naming_the_window(tmp_path, webhook, entry, complaint):
    with pytest.raises(CatalogError) as refused:
        services_for(tmp_path, webhook, maintenance={"windows": [entry]})
    assert complaint in str(refused.value) and "maintenance.yaml" in str(refused.value)


def test_an_alertmanager_silence_made_after_the_alert_fired_is_a_window(tmp_path, webhook):
    """A real Alertmanager: a silence made through its v2 API is copied in; deleted, its window ends."""
    alertmanager = AlertmanagerServer(tmp_path, webhook_url=f"{webhook.url}/unused")
    try:
        services = services_for(tmp_path, webhook, targets={"monitoring": {"alertmanager_url": alertmanager.url}})
        now = datetime.now(timezone.utc)
        created = HTTP.post(f"{alertmanager.url}/api/v2/silences", json={
            "matchers": [{"name": "service", "value": "billing", "isRegex": False, "isEqual": True},
                         {"name": "instance", "value": "db-.*", "isRegex": True, "isEqual": True}],
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=2)).isoformat(),
            "createdBy": "frank", "comment": "failover drill"}).json()["silenceID"]
        keeper = MaintenanceKeeper(services, wake_delivery=lambda: None)

        async def sync() -> int:
            async with httpx.AsyncClient() as http:
                return await keeper.sync_silences(http, alertmanager.url)

        assert asyncio.run(sync()) == 1
        [held_by] = in_force(services.store, services.catalog)
        assert (held_by.id, held_by.source, held_by.reason) == (f"am-{created}", "alertmanager", "failover drill")
        assert held_by.scope.covers("any", {"service": "billing", "instance": "db-2"})
        assert not held_by.scope.covers("any", {"service": "billing", "instance": "app-2"})
        assert asyncio.run(sync()) == 1  # unchanged: stored once, not rewritten
        HTTP.delete(f"{alertmanager.url}/api/v2/silence/{created}").raise_for_status()
        assert asyncio.run(sync()) == 0
        assert in_force(services.store, services.catalog) == []
    finally:
        alertmanager.stop()


# -- the blast radius ----------------------------------------------------------------------------


def test_three_incidents_at_once_pass_a_limit_of_two_only_with_a_person(tmp_path, prefect_server, webhook):
    services = services_for(tmp_path, webhook, policy={"blast_radius": {"drill_step": {"max": 2, "per_minutes": 60}}})
    api = prefect_server.api_url
    serving = InProcessResponder(services, api, responder_drill, "responder-drill")
    try:
        runs = [serving.start(drill_alert()) for _ in range(3)]
        for run_id in runs:
            suspended(api, run_id)
        answers = [threading.Thread(target=resume, args=(api, run_id, True, "ok", "gina")) for run_id in runs]
        for thread in answers:  # all three approved at the same moment: their claims race
            thread.start()
        for thread in answers:
            thread.join()

        def settled():
            states = {run_id: serving.run(run_id)["state"] for run_id in runs}
            waiting = [r for r, s in states.items() if s["type"] == "PAUSED" and s["state_details"]["pause_key"].startswith("approve-1")]
            done = [r for r, s in states.items() if s["type"] == "COMPLETED"]
            return (waiting, done) if len(waiting) + len(done) == 3 else None

        waiting, done = wait_for(settled, 90, what="two runs to act and one to ask again")
        assert len(done) == 2 and len(waiting) == 1, (waiting, done)
        [third] = waiting
        [paused] = prefect_post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [third]}}})
        description = form_description(api, paused)
        assert "blast-radius limit of drill_step is reached: 2 run(s)" in description, description
        resume(api, third, True, "I checked the fleet", "hana")
        assert serving.final(third)["state"]["name"] == "Resolved"
    finally:
        serving.stop()
    texts = [r["text"] for r in timeline(services, third)]
    assert sum("drill_step" in t and ": done" in t for t in texts) == 1, texts
    assert any("asked because the blast-radius limit" in t for t in texts), texts


# -- the CLI -----------------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESPONDER_HOME": str(tmp_path / "home"), "RESPONDER_CONFIG_DIR": str(tmp_path / "config")}
    env.pop("RESPONDER_DATABASE_URL", None)
    return subprocess.run([str(BIN / "responder"), "maintenance", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def _cli_here(tmp_path: Path, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``responder maintenance ARGS`` through the CLI's own ``main`` in this process: the same parsing,
    checks and store as the installed command (which ``_cli`` runs), without a second of CPU per call
    for a new interpreter. Returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("RESPONDER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RESPONDER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("RESPONDER_DATABASE_URL", raising=False)
    capsys.readouterr()
    try:
        code = cli.main(["maintenance", *args])
    except SystemExit as exc:  # argparse refuses a value with exit code 2
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_starts_lists_and_ends_windows_and_refuses_bad_ones(tmp_path, webhook, monkeypatch, capsys):
    services = services_for(tmp_path, webhook)
    refused = _cli(tmp_path, "start", "--runbook", "nope", "--for", "1h", "--reason", "r")  # the installed command
    assert refused.returncode == 2 and "unknown runbook 'nope'" in refused.stderr, refused.stderr
    for args, complaint in (
        (["--service", "nope", "--for", "1h", "--reason", "r"], "unknown service 'nope'"),
        (["--for", "1h", "--reason", "r"], "would cover everything"),
        (["--runbook", "responder-drill", "--for", "soon", "--reason", "r"], "'soon' is not a duration"),
        (["--runbook", "responder-drill", "--for", "0m", "--reason", "r"], "longer than nothing"),
        (["--matchers", 'a=~"("', "--for", "1h", "--reason", "r"], "not a regular expression"),
        (["--matchers", "not a matcher", "--for", "1h", "--reason", "r"], "expected name=value"),
        (["--runbook", "responder-drill", "--for", "1h", "--reason", "  "], "a window needs a reason"),
    ):
        code, _, err = _cli_here(tmp_path, monkeypatch, capsys, "start", *args)
        assert code == 2 and complaint in err, (args, err)
    assert services.store.windows() == []  # nothing half-stored

    started = _cli(tmp_path, "start", "--runbook", "responder-drill", "--matchers", 'env=prod,instance=~"app-1,2"',
                   "--for", "1h30m", "--reason", "kernel upgrade", "--by", "ivan")
    assert started.returncode == 0, started.stderr
    [stored] = services.store.windows()
    assert stored["matchers"] == ['env=prod', 'instance=~"app-1,2"'] and stored["created_by"] == "ivan"
    ends = datetime.fromisoformat(stored["ends_at"]) - datetime.fromisoformat(stored["starts_at"])
    assert ends == timedelta(minutes=90)
    listed = _cli(tmp_path, "list", "--json")
    assert [w["id"] for w in json.loads(listed.stdout)] == [stored["id"]]
    assert _cli_here(tmp_path, monkeypatch, capsys, "end", "mw-nosuch")[0] == 1
    ended = _cli(tmp_path, "end", stored["id"], "--by", "ivan")
    assert ended.returncode == 0, ended.stderr
    assert json.loads(_cli_here(tmp_path, monkeypatch, capsys, "list", "--json")[1]) == []
    assert [w["id"] for w in json.loads(_cli_here(tmp_path, monkeypatch, capsys, "list", "--all", "--json")[1])] == [stored["id"]]


# -- end to end: `responder up` and the CLI ---------------------------------------------------------


def test_a_window_started_from_the_cli_holds_the_response_and_its_end_starts_a_fresh_one(prefect_server, tmp_path, webhook):
    api = prefect_server.api_url
    config = make_config(tmp_path, notify={"webhooks": [f"{webhook.url}/hooks"]},
                         runbook_overrides={"responder-drill": {"approval_timeout_seconds": 600}})
    with running_responder(tmp_path, api, config) as responder:
        started = _cli(tmp_path, "start", "--runbook", "responder-drill", "--for", "1h", "--reason", "game day")
        assert started.returncode == 0, started.stderr
        window_id = started.stdout.split()[2]
        drill = drill_alert(drill_id=uuid.uuid4().hex[:8], severity="critical")
        body = AlertmanagerPayload(version="4", groupKey=f"drill:{drill.fingerprint}", status="firing", alerts=[drill])
        incident = fire(responder, json.loads(body.model_dump_json()))
        held = wait_run_final(api, incident)
        assert held["state"]["name"] == "HeldForMaintenance" and window_id in held["state"]["message"], held["state"]
        assert not any(r["body"].get("kind") == "page" and r["body"]["incident"]["id"] == incident
                       for r in webhook.requests)  # critical pages at once, but not during the window

        assert _cli(tmp_path, "end", window_id).returncode == 0
        fresh = wait_for(lambda: next((r for r in runs_for_incident(api, incident)
                                       if r["id"] != held["id"] and r["state"]["type"] == "PAUSED"), None),
                         60, what="a fresh response after the window, asking for approval as a drill does")
        assert fresh["parameters"]["incident"]["id"] == incident
        wait_for(lambda: any(r["body"].get("kind") == "page" and r["body"]["incident"]["id"] == incident
                             for r in webhook.requests), 30, what="the page held by the window")

        # The fresh response asks as a drill does; approved, it runs. Then the whole story, read back.
        resume(api, fresh["id"], True, "window over, go", "ivy")
        final = wait_for(lambda: (r := next(r for r in runs_for_incident(api, incident) if r["id"] == fresh["id"]))
                         ["state"]["type"] == "COMPLETED" and r, 60, what="the fresh response to finish")
        assert final["state"]["name"] == "Resolved", final["state"]

        headers = {"Authorization": f"Bearer {responder.token}"}
        trail = wait_for(lambda: (t := HTTP.get(f"{responder.url}/audit", params={"incident": incident},
                                                  headers=headers).json()) and t[-1]["kind"] != "response"
                         and any(row["kind"] == "closed" for row in t) and t, 30, what="the close in the audit trail")
        kinds = [row["kind"] for row in trail]
        story = ["alert-accepted", "response", "planned", "action", "maintenance-over", "response", "planned",
                 "approval-asked", "approved", "action", "closed"]
        position = 0
        for kind in kinds:  # in this order (other rows, such as the page and the verdict, in between)
            if position < len(story) and kind == story[position]:
                position += 1
        assert position == len(story), kinds
        held_row = next(row for row in trail if row["kind"] == "action")
        assert "held by maintenance window" in held_row["what"] and held_row["who"] == "responder"
        assert next(row for row in trail if row["kind"] == "approved")["who"] == "ivy (not verified)"  # the API, as the UI
        assert HTTP.get(f"{responder.url}/audit").status_code == 401
        assert HTTP.get(f"{responder.url}/audit", params={"since": "yesterday"}, headers=headers).status_code == 422
        assert HTTP.delete(f"{responder.url}/audit", headers=headers).status_code == 405  # read only

    everything = json.loads(subprocess.run([str(BIN / "responder"), "audit", "--json"], capture_output=True, text=True,
                                           env={**os.environ, "RESPONDER_HOME": str(tmp_path / "home"),
                                                "RESPONDER_CONFIG_DIR": str(config)}, check=True).stdout)
    windows = [(row["kind"], row["who"]) for row in everything if row["kind"].startswith("window-")]
    assert [kind for kind, _ in windows] == ["window-started", "window-ended"], windows


# -- acknowledged in PagerDuty --------------------------------------------------------------------


def test_acknowledging_in_pagerduty_stops_the_responders_pages(prefect_server, tmp_path, webhook):
    """PagerDuty itself is not reachable: the test signs its V3 webhook bodies as PagerDuty does
    (HMAC-SHA256 of the body with the subscription's secret, ``X-PagerDuty-Signature: v1=…``)."""
    import hashlib
    import hmac

    secret = "whsec-test-" + uuid.uuid4().hex
    config = make_config(tmp_path, notify={"webhooks": [f"{webhook.url}/hooks"]},
                         runbook_overrides={"responder-drill": {"approval_timeout_seconds": 600}})

    def signed(body: dict, key: str = secret) -> dict:
        raw = json.dumps(body).encode()
        return {"content": raw, "headers": {"Content-Type": "application/json",
                                            "X-PagerDuty-Signature": "v1=" + hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()}}

    with running_responder(tmp_path, prefect_server.api_url, config, RESPONDER_PAGERDUTY_WEBHOOK_SECRET=secret) as responder:
        drill = drill_alert(drill_id=uuid.uuid4().hex[:8])  # warning: level 1 is paged after 5 min × time scale
        body = AlertmanagerPayload(version="4", groupKey=f"drill:{drill.fingerprint}", status="firing", alerts=[drill])
        incident = fire(responder, json.loads(body.model_dump_json()))
        event = {"event": {"id": "01ABC", "event_type": "incident.acknowledged", "resource_type": "incident",
                           "occurred_at": datetime.now(timezone.utc).isoformat(),
                           "agent": {"type": "user_reference", "summary": "Jo Oncall"},
                           "data": {"id": "Q1", "type": "incident", "status": "acknowledged",
                                    "incident_key": f"responder-{incident}"}}}
        url = f"{responder.url}/pagerduty"
        assert HTTP.post(url, **signed(event, key="not-the-secret")).status_code == 401
        assert HTTP.post(url, content=json.dumps(event), headers={"Content-Type": "application/json"}).status_code == 401
        assert HTTP.post(url, **signed({"event": "nonsense"})).status_code == 422
        other = {"event": {**event["event"], "data": {**event["event"]["data"], "incident_key": "someone-elses"}}}
        assert "ignored" in HTTP.post(url, **signed(other)).json()

        answered = HTTP.post(url, **signed(event))
        assert answered.status_code == 200, answered.text
        assert answered.json()["acknowledged_by"] == "Jo Oncall (PagerDuty, acknowledged)"
        assert "ignored" in HTTP.post(url, **signed(event)).json()  # PagerDuty re-delivers: nothing changes
        incidents = HTTP.get(f"{responder.url}/incidents", headers={"Authorization": f"Bearer {responder.token}"}).json()
        record = next(i for i in incidents if i["id"] == incident)
        assert record["acknowledged_by"] == "Jo Oncall (PagerDuty, acknowledged)"
        assert record["waiting_on"]  # still open: acknowledged is not resolved


# -- who may approve -----------------------------------------------------------------------------

PEOPLE = {"people": [{"name": "alice", "slack": "U0ALICE1"}, {"name": "bob", "slack": "U0BOB22"}]}


def with_approvers(tmp: Path, webhook: CaptureServer, allowed: list[str]) -> Services:
    config = make_config(tmp, runbook_overrides={"responder-drill": {"approval_timeout_seconds": 120}},
                         notify={"webhooks": [f"{webhook.url}/hooks"]})
    (config / "oncall.yaml").write_text(yaml.safe_dump(PEOPLE))
    (config / "policy.yaml").write_text(yaml.safe_dump({"approvers": {"runbooks": {"responder-drill": allowed}}}))
    return build(ResponderSettings(home=tmp / "home", config_dir=config, database_url=None, slack_token=None),
                 load_catalog(config))


def test_only_a_verified_allowed_person_can_approve_and_others_are_told_why(tmp_path, prefect_server, webhook):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from responder.approvals import answer_verified

    api = prefect_server.api_url
    services = with_approvers(tmp_path, webhook, ["alice"])
    serving = InProcessResponder(services, api, responder_drill, "responder-drill")
    try:
        run_id = serving.start(drill_alert())
        first = suspended(api, run_id)
        first_key = first["state"]["state_details"]["pause_key"]
        # The Prefect UI's form (or curl to the API) says "alice": not verified, so it cannot approve.
        resume(api, run_id, True, "trust me", "alice")
        second = suspended(api, run_id, not_state=first["state"]["id"])
        # Bob, verified (his personal token went through the intake), is not allowed for this runbook.
        with temporary_settings({PREFECT_API_URL: api}):
            asyncio.run(answer_verified(services.store, run_id, True, "me too", "bob", "CLI"))
        third = suspended(api, run_id, not_state=second["state"]["id"])
        keys = [first_key, second["state"]["state_details"]["pause_key"], third["state"]["state_details"]["pause_key"]]
        assert len(set(keys)) == 3, keys
        deadlines = {services.store.approval_deadline(run_id, key) for key in keys}
        assert len(deadlines) == 1, deadlines  # asked again with the first question's deadline
        with temporary_settings({PREFECT_API_URL: api}):
            asyncio.run(answer_verified(services.store, run_id, True, "checked", "alice", "CLI"))
        assert serving.final(run_id)["state"]["name"] == "Resolved"
    finally:
        serving.stop()
    rows = timeline(services, run_id)
    refusals = [r for r in rows if r["kind"] == "approval-refused"]
    assert [r["actor"] for r in refusals] == ["alice (not verified)", "bob (CLI)"], refusals
    assert "needs a verified answer" in refusals[0]["text"] and "bob may not approve" in refusals[1]["text"]
    [approved] = [r for r in rows if r["kind"] == "approved"]
    assert approved["actor"] == "alice (CLI)"
    assert sum("drill_step" in r["text"] and ": done" in r["text"] for r in rows) == 1
    told = wait_for(lambda: len(t := [r["body"] for r in webhook.requests if r["body"].get("kind") == "approval-refused"])
                    == 2 and t, 10, what="both refusals told")
    assert len(told) == 2  # the people were told why, each time


def test_approve_from_the_cli_with_a_personal_token_is_verified(prefect_server, tmp_path, webhook):
    api = prefect_server.api_url
    services = with_approvers(tmp_path, webhook, ["alice"])
    config = services.settings.config_dir
    with running_responder(tmp_path, api, config) as responder:
        env = {**responder.env}
        made = subprocess.run([str(BIN / "responder"), "tokens", "add", "alice"], env=env, capture_output=True,
                              text=True, check=True).stdout
        token = made.strip().splitlines()[-1]
        assert token.startswith("rsp_") and token not in json.dumps(responder_store_rows(tmp_path))  # kept hashed

        # Maintenance windows through the API: a person's token, never the Alertmanager one.
        mine = {"Authorization": f"Bearer {token}"}
        window_url = f"{responder.url}/maintenance"
        body = {"runbook": "responder-drill", "for": "2h", "reason": "API window"}
        assert HTTP.post(window_url, json=body, headers={"Authorization": f"Bearer {responder.token}"}).status_code == 401
        bad = HTTP.post(window_url, json={**body, "runbook": "nope"}, headers=mine)
        assert bad.status_code == 422 and "unknown runbook 'nope'" in bad.text
        assert HTTP.post(window_url, json={**body, "for": "forever"}, headers=mine).status_code == 422
        made = HTTP.post(window_url, json=body, headers=mine)
        assert made.status_code == 201, made.text
        listed = HTTP.get(window_url, headers=mine).json()
        assert [(w["id"], w["by"]) for w in listed] == [(made.json()["id"], "alice (API)")]
        assert HTTP.delete(f"{window_url}/{made.json()['id']}", headers=mine).json()["ended_by"] == "alice (API)"
        assert HTTP.delete(f"{window_url}/mw-nosuch", headers=mine).status_code == 404
        assert HTTP.get(window_url, headers=mine).json() == []
        drill = drill_alert(drill_id=uuid.uuid4().hex[:8])
        body = AlertmanagerPayload(version="4", groupKey=f"drill:{drill.fingerprint}", status="firing", alerts=[drill])
        incident = fire(responder, json.loads(body.model_dump_json()))
        run = wait_for(lambda: next((r for r in runs_for_incident(api, incident) if r["state"]["type"] == "PAUSED"), None),
                       60, what="the drill to ask")

        def approve(user_token: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(BIN / "responder"), "approve", run["id"], "--reason", "checked"],
                                  env={**env, "RESPONDER_USER_TOKEN": user_token}, capture_output=True, text=True)

        wrong = approve("rsp_not-a-token")
        assert wrong.returncode == 1 and "401" in wrong.stderr, wrong.stderr
        answered = approve(token)
        assert answered.returncode == 0 and "as alice (verified)" in answered.stdout, answered.stderr
        final = wait_run_final(api, incident)
        assert final["state"]["name"] == "Resolved", final["state"]
        trail = HTTP.get(f"{responder.url}/audit", params={"incident": incident},
                          headers={"Authorization": f"Bearer {responder.token}"}).json()
        assert [row["who"] for row in trail if row["kind"] == "approved"] == ["alice (CLI)"]
        assert subprocess.run([str(BIN / "responder"), "tokens", "revoke", "alice"], env=env).returncode == 0
        assert approve(token).returncode == 1  # revoked


def responder_store_rows(tmp_path: Path) -> list:
    import sqlite3

    with sqlite3.connect(tmp_path / "home" / "responder.db") as conn:
        return conn.execute("SELECT * FROM personal_tokens").fetchall()


def test_an_action_marked_needs_two_runs_only_after_two_different_people_approved(tmp_path, prefect_server, webhook):
    api = prefect_server.api_url
    config = make_config(tmp_path, notify={"webhooks": [f"{webhook.url}/hooks"]}, runbook_overrides={"responder-drill": {
        "approval_timeout_seconds": 120, "mitigations": [{"name": "drill_step", "needs": "two"}]}})
    services = build(ResponderSettings(home=tmp_path / "home", config_dir=config, database_url=None, slack_token=None),
                     load_catalog(config))
    serving = InProcessResponder(services, api, responder_drill, "responder-drill")
    try:
        run_id = serving.start(drill_alert())
        state = suspended(api, run_id)["state"]["id"]
        for who in ("ann", "ann"):  # the first approval, then the same person again: not a second approver
            resume(api, run_id, True, "ok", who)
            state = suspended(api, run_id, not_state=state)["state"]["id"]
        [paused] = prefect_post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        assert "ann (not verified) already approved drill_step; a second, different person must" in \
            form_description(api, paused)
        resume(api, run_id, True, "ok", "ben")
        assert serving.final(run_id)["state"]["name"] == "Resolved"
    finally:
        serving.stop()
    rows = timeline(services, run_id)
    assert [r["actor"] for r in rows if r["kind"] == "approved"] == ["ann (not verified) and ben (not verified)"]
    assert [r["actor"] for r in rows if r["kind"] == "approval-refused"] == ["ann (not verified)"]
    assert sum("drill_step" in r["text"] and ": done" in r["text"] for r in rows) == 1


def test_slack_buttons_approve_only_for_allowed_people_by_their_slack_id(prefect_server, tmp_path, webhook):
    """Slack is not reachable: the test signs the button requests as Slack does (v0 HMAC of the body)."""
    import hashlib
    import hmac
    import time as clock
    from urllib.parse import urlencode

    api, secret = prefect_server.api_url, "slack-signing-" + uuid.uuid4().hex
    services = with_approvers(tmp_path, webhook, ["alice"])

    def press(responder, user_id: str, name: str, run_id: str) -> httpx.Response:
        body = urlencode({"payload": json.dumps({"type": "block_actions", "user": {"id": user_id, "username": name},
                                                 "actions": [{"action_id": "approve", "value": run_id}]})})
        ts = str(int(clock.time()))
        signature = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
        return HTTP.post(f"{responder.url}/slack/actions", content=body, headers={
            "content-type": "application/x-www-form-urlencoded", "x-slack-request-timestamp": ts,
            "x-slack-signature": signature})

    with running_responder(tmp_path, api, services.settings.config_dir, RESPONDER_SLACK_SIGNING_SECRET=secret) as responder:
        drill = drill_alert(drill_id=uuid.uuid4().hex[:8])
        body = AlertmanagerPayload(version="4", groupKey=f"drill:{drill.fingerprint}", status="firing", alerts=[drill])
        incident = fire(responder, json.loads(body.model_dump_json()))
        state = None
        for user_id, name in (("U0BOB22", "bob"), ("U0ZED99", "zed"), ("U0ALICE1", "alice-in-slack")):
            run = wait_for(lambda: next((r for r in runs_for_incident(api, incident) if r["state"]["type"] == "PAUSED"
                                         and r["state"]["id"] != state), None), 60, what="the question")
            state = run["state"]["id"]
            pressed = press(responder, user_id, name, run["id"])
            assert pressed.status_code == 200, pressed.text
        assert wait_run_final(api, incident)["state"]["name"] == "Resolved"
        trail = HTTP.get(f"{responder.url}/audit", params={"incident": incident},
                          headers={"Authorization": f"Bearer {responder.token}"}).json()
    assert [r["who"] for r in trail if r["kind"] == "approval-refused"] == ["bob (Slack)", "slack:U0ZED99 (Slack)"]
    assert [r["who"] for r in trail if r["kind"] == "approved"] == ["alice (Slack)"]  # her name in oncall.yaml


def test_approvers_are_chosen_per_runbook_then_per_risk_and_must_be_people(tmp_path, webhook):
    from tasks.base import Risk

    config = make_config(tmp_path)
    (config / "oncall.yaml").write_text(yaml.safe_dump(PEOPLE))
    policy = {"approvers": {"default": ["alice"], "risks": {"safe": ["alice", "bob"]},
                            "runbooks": {"responder-drill": ["bob"]}}}
    (config / "policy.yaml").write_text(yaml.safe_dump(policy))
    approvers = load_catalog(config).policy.approvers
    assert approvers.allowed_for("responder-drill", Risk.SAFE) == ["bob"]
    assert approvers.allowed_for("disk-space", Risk.SAFE) == ["alice", "bob"]
    assert approvers.allowed_for("disk-space", Risk.RISKY) == ["alice"]
    for broken, complaint in (({"default": ["mallory"]}, "approvers.default: 'mallory' is not a person of oncall.yaml"),
                              ({"runbooks": {"nope": ["alice"]}}, "approvers: unknown runbook 'nope'"),
                              ({"risks": {"reckless": ["alice"]}}, "risks.reckless")):
        (config / "policy.yaml").write_text(yaml.safe_dump({"approvers": broken}))
        with pytest.raises(CatalogError) as refused:
            load_catalog(config)
        assert complaint in str(refused.value) and "policy.yaml" in str(refused.value), str(refused.value)
