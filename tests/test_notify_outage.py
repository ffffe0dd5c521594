"""A Slack outage through the real `responder up`, restarted in the middle of it.

Slack cannot be reached from here: a local capture server answers as Slack's Web API would, first
503 (down), then 429 with Retry-After once, then ok, and records every request. The webhook receiver
is a capture server too, up all along. The store is the responder's own SQLite file, read by the test.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict

import pytest

from core.store import open_store
from support.capture import CaptureServer
from support.common import BIN, ROOT, wait_for
from support.responder import ResponderProcess, make_config


class Slack:
    """Answers like Slack's chat.postMessage; ``mode`` is "down", "limited" (one 429) or "up"."""

    def __init__(self) -> None:
        self.mode = "down"
        self.ts = 0
        self.server = CaptureServer(self.answer)

    def answer(self, request: dict) -> tuple[int, dict, dict]:
        if self.mode == "down":
            return 503, {"ok": False, "error": "service_unavailable"}, {}
        if self.mode == "limited":
            self.mode = "up"
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}
        self.ts += 1
        request["ts"] = f"1700000000.{self.ts:06d}"
        return 200, {"ok": True, "channel": "C0ALERTS", "ts": request["ts"]}, {}


@pytest.fixture
def slack():
    s = Slack()
    yield s
    s.server.close()


@pytest.fixture
def webhook():
    server = CaptureServer()
    yield server
    server.close()


def drill(responder: ResponderProcess) -> str:
    out = subprocess.run([str(BIN / "responder"), "drill"], env=responder.env, cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1]


def test_every_message_arrives_once_in_order_after_an_outage_and_a_restart(tmp_path, prefect_server, slack, webhook):
    config = make_config(tmp_path, runbook_overrides={"responder-drill": {"approval_timeout_seconds": 60000}},
                         notify={"webhooks": [f"{webhook.url}/hook"]}, default_pages_after_minutes=(5, 10, 15))
    responder = ResponderProcess(tmp_path / "home", config, prefect_server.api_url, {
        "RESPONDER_TIME_SCALE": "0.01",  # pages at 3, 6 and 9 s
        "RESPONDER_SLACK_TOKEN": "xoxb-test-token",
        "RESPONDER_SLACK_API_URL": f"{slack.server.url}/api/",
    })
    responder.start()
    store = open_store(None, tmp_path / "home" / "responder.db")
    try:
        incidents = [drill(responder), drill(responder)]

        def slack_rows(incident: str):
            return [m for m in store.messages(incident) if m.channel == "slack"]

        # Down: each incident has been paged and Slack has refused messages of both.
        wait_for(lambda: all(store.pages(i) and any(m.attempts for m in slack_rows(i)) for i in incidents), 60,
                 what="pages written and Slack failing for both incidents")
        assert not [r for r in slack.server.requests if "ts" in r]
        responder.stop()  # restarted in the middle of the outage: what was written waits in the store
        responder.start()
        slack.mode = "limited"
        wait_for(lambda: all(len(store.pages(i)) == 3 for i in incidents), 60, what="all three levels paged")
        wait_for(lambda: not store.waiting_messages(), 60, what="every message delivered")
    finally:
        responder.stop()

    delivered = [r for r in slack.server.requests if "ts" in r]
    for incident in incidents:
        rows = slack_rows(incident)
        assert {m.state for m in rows} <= {"sent", "rolled"}, [(m.kind, m.state, m.outcome) for m in rows]
        sent = [m for m in rows if m.state == "sent"]
        assert sent and sent[0].kind == "opened"
        root = next(r for r in delivered if r["ts"] == store.note(incident, "slack_ts"))
        thread = [root] + [r for r in delivered if r["body"].get("thread_ts") == root["ts"]]
        assert [r["body"]["text"] for r in thread] == [m.body["text"] for m in sent]  # in order, each once
        rolled = [m for m in rows if m.state == "rolled"]  # pages to the same person, rolled into one message
        for message in rolled:
            rollup = store.message(message.outcome.rsplit(" ", 1)[-1])
            assert rollup.state == "sent" and f"(incident {incident})" in rollup.body["text"]
        # The webhook was up all along: everything, in order, once, with nothing lost to the restart.
        hooks = [r["body"] for r in webhook.requests if r["body"].get("incident", {}).get("id") == incident]
        assert [h["text"] for h in hooks] == [m.body["json"]["text"] for m in store.messages(incident)
                                              if m.channel == "webhook"]
        timeline = [e for e in store.timeline(incident) if e["kind"] in ("delivered", "notify-failed")]
        assert any(e["kind"] == "notify-failed" and "HTTP 503" in e["text"] for e in timeline)
        assert any(e["kind"] == "delivered" and "'opened' message delivered via slack" in e["text"]
                   and "attempts" in e["text"] for e in timeline)
    counted = defaultdict(int)
    for request in delivered:
        counted[request["body"]["text"]] += 1
    assert max(counted.values()) == 1, "a message arrived twice"
