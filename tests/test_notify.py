"""Notification channels over real HTTP to local capture servers (Slack, Discord and PagerDuty are
unreachable from here): 429 with Retry-After and 5xx are retried, a channel that stays down is
recorded and never raised."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from pydantic import SecretStr

from core.catalog import load_catalog
from core.notify import Notifier
from core.settings import ResponderSettings
from core.store import open_store
from support.capture import CaptureServer
from support.responder import make_config


def _setup(tmp_path: Path, slack_url: str, notify: dict):
    settings = ResponderSettings(home=tmp_path / "home", slack_token=SecretStr("xoxb-t"), slack_api_url=slack_url)
    catalog = load_catalog(make_config(tmp_path, notify=notify))
    store = open_store(None, tmp_path / "store.db")
    incident = store.open_manual_incident("responder-drill", "critical", "notify test", f"run-{uuid.uuid4()}")
    return Notifier(settings, catalog, store), store, incident


def test_slack_429_is_retried_after_retry_after_and_threads_follow(tmp_path):
    answers = iter([(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"})])

    def slack(request):
        return next(answers, (200, {"ok": True, "channel": "C1", "ts": f"17.{len(slack_server.requests)}"}, {}))

    slack_server = CaptureServer(slack)
    try:
        notifier, store, incident = _setup(tmp_path, f"{slack_server.url}/api/", {})
        started = time.monotonic()
        assert notifier.send(incident, "opened", "first") == []
        assert time.monotonic() - started >= 1.0, "Retry-After was not honoured"
        assert notifier.send(incident, "action", "second") == []
        first, retried, second = slack_server.requests
        assert first["body"] == retried["body"] and first["body"]["channel"] == "#critical-alerts"
        assert second["body"]["thread_ts"] == "17.2" and store.note(incident.id, "slack_ts") == "17.2"
    finally:
        slack_server.close()


def test_a_channel_that_stays_down_is_recorded_not_raised(tmp_path):
    down = CaptureServer(lambda r: (503, {"ok": False}, {}))
    discord = CaptureServer(lambda r: (204, {}, {}))
    pagerduty = CaptureServer(lambda r: (202, {"status": "success"}, {}))
    try:
        import os

        os.environ["RESPONDER_TEST_DISCORD"] = f"{discord.url}/webhook"
        notifier, store, incident = _setup(tmp_path, f"{down.url}/api/", {
            "discord": {"webhook_url": "${RESPONDER_TEST_DISCORD}"},
            "pagerduty": {"routing_key": "rk", "events_url": f"{pagerduty.url}/v2/enqueue", "severities": ["critical"]},
        })
        failed = notifier.send(incident, "page", "level 1 page", discord=True, pagerduty="trigger")
        assert failed == ["slack"]
        assert len(down.requests) == 4  # tenacity: 4 attempts, then recorded
        assert discord.requests[0]["body"] == {"content": "level 1 page"}
        event = pagerduty.requests[0]["body"]
        assert event["event_action"] == "trigger" and event["dedup_key"] == f"responder-{incident.id}"
        assert event["payload"]["severity"] == "critical" and event["routing_key"] == "rk"
        timeline = store.timeline(incident.id)
        assert timeline[-1]["kind"] == "notify-failed" and "slack" in timeline[-1]["text"]
        assert "xoxb-t" not in str(timeline) and "rk" not in timeline[-1]["text"]
    finally:
        for server in (down, discord, pagerduty):
            server.close()
