"""Messages to people through the notification outbox and the courier, over real HTTP to local capture
servers that stand in for Slack, Discord, PagerDuty and webhooks (none of them is reachable from
here). Real store (SQLite file), real courier, real HTTP; the capture servers decide the answers:
outages (503), rate limits (429 with Retry-After), refusals, and record what arrived and when."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.alerts import AlertmanagerPayload
from core.catalog import CatalogError
from flows.registry import load_catalog
from core.courier import Courier
from core.notify import Notifier
from core.settings import ResponderSettings
from core.store import Route, open_store
from support.alerts import alert_body
from support.capture import CaptureServer
from support.responder import make_config


def _setup(tmp_path: Path, slack_url: str, notify: dict, delivery: dict | None = None):
    settings = ResponderSettings(home=tmp_path / "home", slack_token=SecretStr("xoxb-t"), slack_api_url=slack_url)
    catalog = load_catalog(make_config(tmp_path, notify={**notify, "delivery": delivery or {}}))
    store = open_store(None, tmp_path / "store.db")
    notifier = Notifier(settings, catalog, store)
    return notifier, Courier(notifier), store


def _incident(store, title: str = "notify test", severity: str = "critical"):
    return store.open_manual_incident("responder-drill", severity, title, f"run-{uuid.uuid4()}")


def _slack_ok(server: CaptureServer):
    return 200, {"ok": True, "channel": "C1", "ts": f"17.{len(server.requests)}"}, {}


def test_slack_429_is_retried_after_retry_after_and_threads_follow(tmp_path):
    answers = iter([(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"})])
    slack = CaptureServer(lambda request: next(answers, None) or _slack_ok(slack))
    try:
        notifier, courier, store = _setup(tmp_path, f"{slack.url}/api/", {})
        incident = _incident(store)
        notifier.send(incident, "opened", "first")
        notifier.send(incident, "action", "second")
        assert slack.requests == []  # written down, not sent: the step that said it went on at once
        courier.drain(timeout=15)
        first, retried, second = slack.requests
        assert first["body"] == retried["body"] and first["body"]["channel"] == "#critical-alerts"
        assert retried["at"] - first["at"] >= 1.0, "Retry-After was not honoured"
        assert second["body"]["text"] == "second" and second["body"]["thread_ts"] == "17.2"
        assert store.note(incident.id, "slack_ts") == "17.2"
        [late] = [row["text"] for row in store.timeline(incident.id) if row["kind"] == "delivered"]
        assert late.startswith("'opened' message delivered via slack") and late.endswith("after 2 attempts")
    finally:
        slack.close()


def test_an_outage_then_rate_limits_every_message_arrives_once_in_order(tmp_path):
    """Slack answers 503 for 3 s, then 429 with Retry-After once, then takes everything: each incident's
    messages arrive once, in the order they were written; the outage was not hammered."""
    outage_ends = time.monotonic() + 3
    limited = []

    def answer(request):
        if time.monotonic() < outage_ends:
            return 503, {"ok": False}, {}
        if not limited:
            limited.append(request)
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}
        return _slack_ok(slack)

    slack = CaptureServer(answer)
    webhook = CaptureServer()
    try:
        notifier, courier, store = _setup(tmp_path, f"{slack.url}/api/", {"webhooks": [f"{webhook.url}/hook"]},
                                          {"slack_per_second": 20})
        incidents = [_incident(store, f"incident {n}") for n in range(3)]
        written = {i.id: [f"{i.title}: {kind}" for kind in ("opened", "action", "verdict", "resolved")] for i in incidents}
        for kind_index, kind in enumerate(("opened", "action", "verdict", "resolved")):
            for incident in incidents:
                notifier.send(incident, kind, written[incident.id][kind_index])
        courier.drain(timeout=40)
        taken = [r for r in slack.requests if r["at"] >= outage_ends and r is not limited[0]]
        # Only what the notifier posted to its webhook: the capture server's port came from the kernel and
        # may have served an earlier test, whose stray requests (once in the suite, one whose body was not JSON)
        # are not ours.
        posted_to_hook = [r for r in webhook.requests if r["method"] == "POST" and r["path"] == "/hook"]
        assert len(posted_to_hook) == sum(map(len, written.values()))
        for incident in incidents:
            texts = [r["body"]["text"] for r in taken if r["body"]["text"].startswith(f"{incident.title}:")]
            assert texts == written[incident.id]
            hook = [r["body"]["text"] for r in posted_to_hook if r["body"]["incident"]["id"] == incident.id]
            assert hook == written[incident.id]  # the webhook was up all along: on time, in order
        assert len(slack.requests) - len(taken) <= 12, "a channel that is down is held, not hammered"
        assert store.waiting_messages() == []
        timeline = store.timeline(incidents[0].id)
        assert any(row["kind"] == "notify-failed" and "HTTP 503" in row["text"] and "trying again" in row["text"]
                   for row in timeline)
        assert any(row["kind"] == "delivered" and "via slack" in row["text"] and "attempts" in row["text"]
                   for row in timeline)
        assert "xoxb-t" not in str(timeline)
    finally:
        slack.close()
        webhook.close()


def test_a_page_slack_refuses_goes_out_on_the_other_channels_and_says_so(tmp_path):
    slack = CaptureServer(lambda r: (200, {"ok": False, "error": "channel_not_found"}, {}))
    discord = CaptureServer(lambda r: (204, {}, {}))
    pagerduty = CaptureServer(lambda r: (202, {"status": "success"}, {}))
    os.environ["RESPONDER_TEST_DISCORD"] = f"{discord.url}/webhook"
    try:
        notifier, courier, store = _setup(tmp_path, f"{slack.url}/api/", {
            "discord": {"webhook_url": "${RESPONDER_TEST_DISCORD}"},
            "pagerduty": {"routing_key": "rk", "events_url": f"{pagerduty.url}/v2/enqueue", "severities": ["critical"]},
        })
        incident = _incident(store, severity="warning")  # PagerDuty takes critical only, until a page cannot get through
        notifier.send(incident, "page", "level 2 page for carol", details={"level": 2, "who": "carol"}, discord=True)
        courier.drain(timeout=15)
        assert len(slack.requests) == 1  # refused: not retried
        assert [r["body"] for r in discord.requests] == [{"content": "level 2 page for carol"}]
        [event] = [r["body"] for r in pagerduty.requests]
        assert event["event_action"] == "trigger" and event["dedup_key"] == f"responder-{incident.id}"
        assert event["routing_key"] == "rk" and event["payload"]["summary"] == "level 2 page for carol"
        timeline = [row["text"] for row in store.timeline(incident.id)]
        assert any("slack refused the level 2 page (Slack chat.postMessage: channel_not_found)" in t for t in timeline)
        assert any("the level 2 page did not get through on slack" in t and "also sent via pagerduty" in t
                   for t in timeline)
        assert any(t.startswith("level 2 page delivered via pagerduty") for t in timeline)
        assert not any("rk" in t.split() for t in timeline)
    finally:
        for server in (slack, discord, pagerduty):
            server.close()


def test_a_message_too_old_to_matter_is_dropped_and_said_but_a_page_never_is(tmp_path):
    down = CaptureServer(lambda r: (503, {}, {}))
    try:
        notifier, courier, store = _setup(tmp_path, f"{down.url}/api/", {"webhooks": [f"{down.url}/hook"]},
                                          {"max_age_minutes": {"default": 0.02}, "page_fallback_seconds": 3600})
        incident = _incident(store)
        notifier.send(incident, "action", "restarted nginx")
        notifier.send(incident, "page", "level 1 page", details={"level": 1, "who": "carol"})
        courier.drain(timeout=4)  # 1.2 s age limit for the action; the page is still being tried when this gives up
        states = {(m.channel, m.kind): m.state for m in store.messages(incident.id)}
        assert states == {("slack", "action"): "dropped", ("webhook", "action"): "dropped",
                          ("slack", "page"): "waiting", ("webhook", "page"): "waiting"}
        dropped = [row["text"] for row in store.timeline(incident.id) if row["kind"] == "notify-dropped"]
        assert len(dropped) == 2 and all("too old to matter" in text and "HTTP 503" in text for text in dropped)
    finally:
        down.close()


def test_the_sender_keeps_to_slacks_rate_rather_than_meeting_429s(tmp_path):
    slack = CaptureServer(lambda r: _slack_ok(slack))
    try:
        notifier, courier, store = _setup(tmp_path, f"{slack.url}/api/", {}, {"slack_per_second": 4})
        started = time.monotonic()  # the channel's bucket is made after this, holding the burst of 3
        for n in range(11):
            notifier.announce("scheduled-check", "warning", f"check {n}")
        courier.drain(timeout=20)
        times = [r["at"] for r in slack.requests]
        assert sorted(r["body"]["text"] for r in slack.requests) == sorted(f"check {n}" for n in range(11))
        # A burst of 3, then 4 a second: the 11th send cannot start before 8 / 4 = 2 s after the bucket was
        # made, whatever delayed the first ones (a loaded machine); all at once would be a few milliseconds.
        assert times[-1] - started >= 1.95, [round(t - started, 3) for t in times]
    finally:
        slack.close()


def test_fifty_incidents_within_seconds_make_a_handful_of_messages_that_name_every_one(tmp_path):
    """A storm: 50 incidents open in one channel within a few seconds and each pages carol. She gets a
    handful of messages, every incident is in them, and a storm incident's thread starts only when it
    needs someone."""
    slack = CaptureServer(lambda r: _slack_ok(slack))
    try:
        notifier, courier, store = _setup(tmp_path, f"{slack.url}/api/", {}, {"rollup_seconds": 1, "slack_per_second": 50})
        incidents = [_incident(store, f"storm {n:02d}", "warning") for n in range(50)]
        carol = {"name": "carol", "slack": "UCAROL"}
        for n, incident in enumerate(incidents):
            notifier.send(incident, "opened", f"storm {n:02d} opened")
            notifier.send(incident, "action", f"storm {n:02d}: restarted the drill")
            notifier.send(incident, "page", f"level 1 page: storm {n:02d}", details={"level": 1, "who": "carol"},
                          person=carol)
            if n % 10 == 9:
                courier.pass_once(wait_for_sends=True)
                time.sleep(0.15)
        courier.drain(timeout=20)
        top_level = [r["body"]["text"] for r in slack.requests if "thread_ts" not in r["body"]]
        assert len(top_level) <= 8, top_level
        storm = "\n".join(t for t in top_level if "opened in #alerts within a minute" in t)
        paged = "\n".join(t for t in top_level if t.startswith("<@UCAROL>") and "incidents need you" in t)
        for incident in incidents:
            opened_alone = any(t == f"{incident.title} opened" for t in top_level)
            assert opened_alone or f"(incident {incident.id})" in storm
            paged_alone = any(f"level 1 page: {incident.title}" in r["body"]["text"] for r in slack.requests)
            assert paged_alone or f"(incident {incident.id})" in paged
        quiet = [m for i in incidents for m in store.messages(i.id) if m.kind == "action" and m.state == "rolled"]
        assert len(quiet) >= 40  # the storm's incidents had no thread: their actions are in their timelines
        timeline = [row["text"] for row in store.timeline(incidents[-1].id)]
        assert any(t.startswith("level 1 page delivered via slack in a roll-up of pages of") and "to carol" in t
                   for t in timeline)
        # An incident of the storm that needs a person gets its own thread, saying what it is about.
        notifier.send(incidents[-1], "approval-asked", "Approve restarting the drill?")
        courier.drain(timeout=10)
        asked = slack.requests[-1]["body"]
        assert "thread_ts" not in asked and asked["text"].startswith("*storm 49* — `responder-drill`, warning\n")
    finally:
        slack.close()


# -- the public status page ---------------------------------------------------------------------------


def _public_incident(store, severity: str, service: str = "video-upload"):
    """An incident opened from a real Alertmanager body: its alert names a service and a host."""
    body = alert_body("VideoUploadFailures", f"status-{uuid.uuid4().hex[:6]}", severity=severity, service=service,
                      instance="app-1.internal:9100")
    result = store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(),
                          {"VideoUploadFailures": Route("video-upload-failures", severity)})
    return store.incident(result.incidents_opened[0])


STATUSPAGE = {"page_id": "PG1", "api_key": "${RESPONDER_TEST_STATUSPAGE_KEY}",
              "components": {"video-upload": {"id": "cmp1", "name": "Video uploads"}}}


def test_atlassian_statuspage_hears_create_update_and_resolve_and_nothing_private(tmp_path, monkeypatch):
    """A capture server answering as Atlassian's Statuspage REST API (unreachable from here)."""
    monkeypatch.setenv("RESPONDER_TEST_STATUSPAGE_KEY", "sp-secret-key")
    statuspage = CaptureServer(lambda r: (201, {"id": "SP1", "status": r["body"]["incident"]["status"]}, {}))
    try:
        notifier, courier, store = _setup(tmp_path, "http://127.0.0.1:9/api/", {
            "statuspage": {**STATUSPAGE, "api_url": f"{statuspage.url}/v1"}})
        notifier.settings.slack_token = None  # only the status page here
        incident = _public_incident(store, "critical")
        notifier.send(incident, "opened", "VideoUploadFailures on app-1.internal:9100: 37 failed uploads")
        notifier.send(incident, "action", "restart_service failed", details={"outcome": {"status": "failed"}})
        notifier.send(incident, "action", "restarted video-worker on app-1", details={"outcome": {"status": "done"}})
        notifier.send(incident, "verdict", "verified: queue drained")  # not a public event
        notifier.send(incident, "resolved", "Resolved (verified).")
        warning = _public_incident(store, "warning")  # public severities: critical only (the default)
        notifier.send(warning, "opened", "a warning")
        unmapped = _public_incident(store, "critical", service="billing")  # no component: never guessed
        notifier.send(unmapped, "opened", "billing is down")
        courier.drain(timeout=15)
        create, identified, resolved = statuspage.requests
        assert (create["method"], create["path"]) == ("POST", "/v1/pages/PG1/incidents")
        assert create["body"] == {"incident": {
            "name": "Problem affecting Video uploads", "status": "investigating",
            "body": "We are investigating a problem affecting Video uploads.",
            "component_ids": ["cmp1"], "components": {"cmp1": "major_outage"}}}
        assert (identified["method"], identified["path"]) == ("PATCH", "/v1/pages/PG1/incidents/SP1")
        assert identified["body"]["incident"]["status"] == "identified"
        assert resolved["body"] == {"incident": {"status": "resolved", "components": {"cmp1": "operational"},
                                                 "body": "The problem affecting Video uploads has been resolved."}}
        assert all(r["headers"]["Authorization"] == "OAuth sp-secret-key" for r in statuspage.requests)
        public = json.dumps([r["body"] for r in statuspage.requests])
        for private in ("app-1", "VideoUploadFailures", "video-worker", "37 failed", "video-upload", incident.id):
            assert private not in public
        assert "sp-secret-key" not in json.dumps([m.body for m in store.messages(incident.id)])
        assert store.note(incident.id, "statuspage_id") == "SP1"
    finally:
        statuspage.close()


def test_a_self_hosted_status_page_gets_the_same_updates_as_json(tmp_path, monkeypatch):
    hook = CaptureServer()
    monkeypatch.setenv("RESPONDER_TEST_STATUS_HOOK", f"{hook.url}/status")
    try:
        notifier, courier, store = _setup(tmp_path, "http://127.0.0.1:9/api/", {"statuspage": {
            "provider": "webhook", "webhook_url": "${RESPONDER_TEST_STATUS_HOOK}", "public_severities": ["critical"],
            "components": {"video-upload": {"name": "Video uploads"}}, "title": "Video trouble",
            "text": {"investigating": "Uploads of videos may fail; we are on it."}}})
        notifier.settings.slack_token = None
        incident = _public_incident(store, "critical")
        notifier.send(incident, "opened", "private text")
        notifier.send(incident, "resolved", "private text")
        courier.drain(timeout=15)
        assert [r["body"]["status"] for r in hook.requests] == ["investigating", "resolved"]
        first = hook.requests[0]["body"]
        assert first["title"] == "Video trouble" and first["message"] == "Uploads of videos may fail; we are on it."
        assert first["components"] == ["Video uploads"] and first["id"] == f"responder-{incident.id}"
    finally:
        hook.close()


def test_a_status_page_text_may_only_name_the_components(tmp_path):
    config = make_config(tmp_path, notify={"statuspage": {"text": {"investigating": "{host} is down"}}})
    with pytest.raises(CatalogError, match=r"the only placeholder a public text may use is \{components\}"):
        load_catalog(config)


def test_a_chart_goes_up_to_the_incidents_thread_with_slacks_file_upload(tmp_path):
    """slack-sdk's files_upload_v2 against a capture server answering Slack's three steps: the upload
    URL (its own), the bytes, and the completion that shares the file in the thread."""
    def slack(request):
        if "files.getUploadURLExternal" in request["path"]:
            return 200, {"ok": True, "upload_url": f"{server.url}/upload/F1", "file_id": "F1"}, {}
        if request["path"].startswith("/upload/"):
            return 200, {}, {}
        if "files.completeUploadExternal" in request["path"]:
            return 200, {"ok": True, "files": [{"id": "F1", "title": "chart"}]}, {}
        return _slack_ok(server)

    server = CaptureServer(slack)
    try:
        notifier, courier, store = _setup(tmp_path, f"{server.url}/api/", {})
        incident = _incident(store)
        notifier.send(incident, "opened", "opened")
        svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><line x1="0" y1="0" x2="9" y2="9"/></svg>'
        notifier.chart(incident, "CPU around the incident", svg)
        courier.drain(timeout=15)
        paths = [r["path"].split("?")[0] for r in server.requests]
        assert paths == ["/api/chat.postMessage", "/api/files.getUploadURLExternal", "/upload/F1",
                         "/api/files.completeUploadExternal"]
        assert server.requests[2]["body"] == svg.decode()
        complete = server.requests[3]
        sent = complete["path"] + " " + json.dumps(complete["body"])
        assert "C1" in sent and "17.1" in sent  # the thread's channel id and its ts
        assert [m.state for m in store.messages(incident.id)] == ["sent", "sent"]
    finally:
        server.close()


def test_a_closed_incident_s_post_mortem_is_written_again_with_what_became_of_its_last_message(
        tmp_path, prefect_server, monkeypatch):
    """The close writes the post-mortem and timeline artifacts at once, before its own 'resolved' message
    has gone out. Slack (a local capture server: Slack is not reachable from here) refuses that message:
    the refusal goes on the incident's timeline, and a few seconds later the responder writes both
    artifacts again on the real Prefect server, with it. The version written at the close lacks it."""
    import asyncio

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from core.services import build
    from responder import runtime
    from support.common import wait_for
    from support.prefect import prefect_post

    slack = CaptureServer(lambda request: (200, {"ok": False, "error": "channel_not_found"}, {}))
    monkeypatch.setattr(runtime, "REWRITE_CLOSED_AFTER_SECONDS", 0.5)
    try:
        settings = ResponderSettings(home=tmp_path / "home", slack_token=SecretStr("xoxb-t"),
                                     slack_api_url=f"{slack.url}/api/")
        store = open_store(None, tmp_path / "store.db")
        services = build(settings, load_catalog(make_config(tmp_path)), store)
        body = alert_body("ResponderDrill", f"rewrite-{uuid.uuid4().hex[:8]}")
        [incident_id] = store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(),
                                     {"ResponderDrill": Route("responder-drill", "warning")}).incidents_opened
        store.close_incident(incident_id, "alerts-resolved")
        closed = store.incident(incident_id)
        api, key = prefect_server.api_url, incident_id.lower()

        def newest(kind: str) -> dict:
            return prefect_post(api, "/artifacts/filter", {"artifacts": {"key": {"any_": [f"{kind}-{key}"]}},
                                                           "sort": "CREATED_DESC"})[0]

        async def scenario() -> None:
            responder = runtime.Responder(services)
            await responder._publish_closed(closed)  # what the close's follow-up writes
            services.notifier.send(closed, "resolved", ":white_check_mark: Resolved (alerts-resolved).")
            courier = asyncio.create_task(responder.deliver_messages_forever())
            try:
                # both artifacts, written one after the other (the post-mortem first), before the loop ends
                await asyncio.to_thread(
                    wait_for, lambda: "slack refused" in newest("postmortem")["data"]
                    and any("slack refused" in row["text"] for row in newest("timeline")["data"]), 30,
                    interval=0.3, what="the post-mortem and the timeline written again with the refusal")
            finally:
                courier.cancel()
                responder.courier.close()

        with temporary_settings({PREFECT_API_URL: api}):
            asyncio.run(scenario())
        newest_first = prefect_post(api, "/artifacts/filter", {"artifacts": {"key": {"any_": [f"postmortem-{key}"]}},
                                                               "sort": "CREATED_DESC"})
        assert len(newest_first) == 2 and "slack refused" not in newest_first[1]["data"]  # the close's version
        assert len(slack.requests) == 1  # refused: not sent again
        refusal = "slack refused the 'resolved' message (Slack chat.postMessage: channel_not_found)"
        assert any(refusal in row["text"] for row in newest("timeline")["data"])
        assert any(refusal in row["text"] for row in store.timeline(incident_id))
    finally:
        slack.close()
