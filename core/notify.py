"""Telling people: Slack (threaded per incident), Discord, PagerDuty Events v2 and plain webhooks.

Every channel is isolated: rate limits (429 + Retry-After) and 5xx are retried with tenacity,
and a channel that stays down is *recorded* in the incident timeline, never raised: a Slack
outage must not stop a response. Secrets are unwrapped only where a client is built.

Slack: the first message of an incident goes to the severity's channel (``config/notify.yaml``);
its ``ts`` is stored, and every later event is a reply in that thread. Approval requests and
pages carry buttons (approve / reject / acknowledge) that come back to ``POST /slack/actions``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, wait_exponential

from core import metrics
from core.catalog import Catalog
from core.settings import ResponderSettings
from core.store import Incident, Store

log = logging.getLogger("responder.notify")

_thread_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()

ATTEMPTS = 4


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.retry_after is not None:
        return min(exc.retry_after, 30.0)
    return wait_exponential(multiplier=0.5, max=8)(state)


_retrying = retry(
    retry=retry_if_exception(lambda e: isinstance(e, (_Retryable, httpx.TransportError))),
    stop=stop_after_attempt(ATTEMPTS),
    wait=_wait,
    reraise=True,
)


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code == 429 or response.status_code >= 500:
        after = response.headers.get("retry-after")
        raise _Retryable(f"HTTP {response.status_code}", float(after) if after and after.isdigit() else None)
    response.raise_for_status()
    return response


@_retrying
def post_json(url: str, body: dict[str, Any]) -> None:
    _check(httpx.post(url, json=body, timeout=10))


class Notifier:
    def __init__(self, settings: ResponderSettings, catalog: Catalog, store: Store) -> None:
        self.settings, self.catalog, self.store = settings, catalog, store

    # -- channels ------------------------------------------------------------------
    def _slack_client(self):
        token = self.settings.slack_token
        if token is None or not token.get_secret_value():
            return None
        base = self.settings.slack_api_url.rstrip("/") + "/"
        return WebClient(token=token.get_secret_value(), base_url=base, timeout=10, retry_handlers=[])

    @_retrying
    def _slack_call(self, client: Any, method: str, **body: Any) -> dict[str, Any]:
        try:
            return client.api_call(method, json=body).data
        except SlackApiError as exc:
            status = exc.response.status_code
            if status == 429 or status >= 500:
                after = exc.response.headers.get("Retry-After") or exc.response.headers.get("retry-after")
                raise _Retryable(f"Slack {method}: HTTP {status}", float(after) if after else None) from exc
            raise
        except OSError as exc:  # urllib connection errors
            raise _Retryable(f"Slack {method}: {exc}") from exc

    def slack(self, incident: Incident, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        client = self._slack_client()
        if client is None:
            return
        with self._thread_lock(incident.id):  # one root message per incident, even when two steps race
            self._slack_post(client, incident, text, blocks)

    def _thread_lock(self, incident_id: str) -> threading.Lock:
        with _locks_guard:
            return _thread_locks.setdefault(incident_id, threading.Lock())

    def _slack_post(self, client: Any, incident: Incident, text: str, blocks: list[dict[str, Any]] | None) -> None:
        channel = self._channel(incident.severity)
        thread = self.store.note(incident.id, "slack_ts")
        body: dict[str, Any] = {"channel": self.store.note(incident.id, "slack_channel") or channel, "text": text}
        if blocks:
            body["blocks"] = blocks
        if thread:
            body["thread_ts"] = thread
        data = self._slack_call(client, "chat.postMessage", **body)
        if not thread and data.get("ts"):
            self.store.set_note(incident.id, "slack_ts", data["ts"])
            self.store.set_note(incident.id, "slack_channel", data.get("channel") or channel)

    def _channel(self, severity: str) -> str:
        channels = self.catalog.notify.slack.channels
        return channels.get(severity) or channels.get("warning", "#alerts")

    def pagerduty(self, incident: Incident, action: str, summary: str, person: dict[str, str] | None = None) -> None:
        config = self.catalog.notify.pagerduty
        if config.routing_key is None or incident.severity not in config.severities:
            return
        body: dict[str, Any] = {
            "routing_key": config.routing_key.get_secret_value(),
            "event_action": action,
            "dedup_key": f"responder-{incident.id}",
        }
        if action == "trigger":
            body["payload"] = {
                "summary": summary[:1000],
                "source": incident.runbook,
                "severity": "critical" if incident.severity == "critical" else "warning",
                "custom_details": {"incident": incident.id, "group_key": incident.group_key,
                                   **({"on_call": person} if person else {})},
            }
        post_json(config.events_url, body)

    def discord(self, text: str) -> None:
        url = self.catalog.notify.discord.webhook_url
        if url is not None:
            post_json(url.get_secret_value(), {"content": text[:1900]})

    def webhooks(self, body: dict[str, Any]) -> None:
        for url in self.catalog.notify.webhooks:
            post_json(url, body)

    # -- what happened ---------------------------------------------------------------
    def send(self, incident: Incident, kind: str, text: str, *, details: dict[str, Any] | None = None,
             discord: bool = False, pagerduty: str | None = None, person: dict[str, str] | None = None) -> list[str]:
        """Send one incident event everywhere it belongs; returns the channels that failed (recorded).

        How it looks is decided here, per channel: in Slack, an ``opened`` incident and a ``page``
        carry an Acknowledge button, an ``approval-asked`` (``details["flow_run_id"]``) Approve and
        Reject buttons. ``person`` (a page's, from ``oncall.yaml``: name, slack, discord, pagerduty) is
        @-mentioned in Slack and Discord by user id and named in PagerDuty's custom details.
        """
        person = person or {}
        slack_text = f"<@{person['slack']}> {text}" if person.get("slack") else text
        discord_text = f"<@{person['discord']}> {text}" if person.get("discord") else text
        blocks = _slack_blocks(incident, kind, slack_text, details or {})
        attempts: list[tuple[str, Any]] = [
            ("slack", lambda: self.slack(incident, slack_text, blocks)),
            ("webhooks", lambda: self.webhooks({"kind": kind, "text": text, "incident": _incident_body(incident),
                                                **(details or {})})),
        ]
        if discord:
            attempts.append(("discord", lambda: self.discord(discord_text)))
        if pagerduty:
            attempts.append(("pagerduty", lambda: self.pagerduty(incident, pagerduty, text, person or None)))
        return self._deliver(kind, attempts, incident.id)

    def announce(self, kind: str, severity: str, text: str, *, details: dict[str, Any] | None = None) -> list[str]:
        """A message that belongs to no incident (a scheduled check's findings): the severity's Slack
        channel and every webhook. Returns the channels that failed; a failure is logged, never raised."""
        client = self._slack_client()
        attempts: list[tuple[str, Any]] = [("webhooks", lambda: self.webhooks({"kind": kind, "text": text, **(details or {})}))]
        if client is not None:
            channel = self._channel(severity)
            attempts.insert(0, ("slack", lambda: self._slack_call(client, "chat.postMessage", channel=channel, text=text)))
        return self._deliver(kind, attempts)

    def _deliver(self, kind: str, attempts: list[tuple[str, Any]], incident_id: str | None = None) -> list[str]:
        """Try every channel; one that fails is logged (and recorded on the incident), never raised."""
        failures: list[str] = []
        for name, call in attempts:
            try:
                call()
            except Exception as exc:  # any channel failure is recorded, never fatal
                failures.append(name)
                metrics.NOTIFICATIONS_FAILED.labels(name).inc()
                log.error("Notification %s via %s failed: %s", kind, name, type(exc).__name__)
                if incident_id is not None:
                    self.store.add_timeline(incident_id, "notify-failed", f"{name} did not take the {kind} message: "
                                            f"{type(exc).__name__}: {str(exc)[:200]}")
        return failures


def _incident_body(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.id,
        "runbook": incident.runbook,
        "severity": incident.severity,
        "title": incident.title,
        "status": incident.status,
        "opened_at": incident.opened_at,
        "acknowledged_by": incident.acknowledged_by,
    }


def _slack_blocks(incident: Incident, kind: str, text: str, details: dict[str, Any]) -> list[dict[str, Any]] | None:
    if kind in ("opened", "page"):
        return [section(text), *ack_button(incident.id)]
    if kind == "approval-asked" and details.get("flow_run_id"):
        return [section(text), *action_buttons(str(details["flow_run_id"]))]
    return None


def action_buttons(flow_run_id: str) -> list[dict[str, Any]]:
    return [{
        "type": "actions",
        "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Approve"}, "style": "primary",
             "action_id": "approve", "value": flow_run_id},
            {"type": "button", "text": {"type": "plain_text", "text": "Reject"}, "style": "danger",
             "action_id": "reject", "value": flow_run_id},
        ],
    }]


def ack_button(incident_id: str) -> list[dict[str, Any]]:
    return [{
        "type": "actions",
        "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Acknowledge"},
                      "action_id": "ack", "value": incident_id}],
    }]


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}
