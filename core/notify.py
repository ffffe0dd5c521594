"""Telling people: Slack (threaded per incident), Discord, PagerDuty Events v2, plain webhooks and the
public status page (Atlassian Statuspage, or a JSON webhook for a self-hosted one).

Two halves. :class:`Notifier` decides what each channel is told and *writes it down*: one row per
channel in the store's notification outbox (``core/store/messages.py``), committed before the step
that called it goes on, so nothing said is lost to an outage or a restart. :class:`Channels` sends
one such message, once, and says how it went; the courier (``core/courier.py``) calls it, in order
per incident, with retries, rate limits and storm roll-ups. Secrets are unwrapped only where a
request is made (a row holds no token, routing key or webhook URL).

Slack: an incident's first message goes to the severity's channel (``config/notify.yaml``); its
``ts`` is stored, and every later message is a reply in that thread. Approval requests and pages
carry buttons (approve / reject / acknowledge) that come back to ``POST /slack/actions``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import ssl
from datetime import timedelta
from typing import Any

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from tenacity import retry, retry_if_exception_type, stop_after_attempt

from core.catalog import Catalog
from core.settings import ResponderSettings
from core.store import Incident, Store, utcnow
from core.store.messages import Message, new_message
from tasks.http_client import http_client

log = logging.getLogger("responder.notify")

# Kinds that ask something of a person: in a storm, an incident's Slack thread starts with the first of these.
FOR_A_PERSON = frozenset({"approval-asked", "approval-refused", "page", "escalated"})


class Retry(Exception):
    """Not delivered this time; worth trying again (a 429, a 5xx, a connection that failed).

    ``retry_after`` is the channel's own Retry-After; ``channel_down`` means the whole channel failed
    (not just this message's target), so the courier holds every message for it, not only this one."""

    def __init__(self, message: str, retry_after: float | None = None, channel_down: bool = False):
        super().__init__(message)
        self.retry_after, self.channel_down = retry_after, channel_down


class Refused(Exception):
    """The channel answered that it will never take this message (a 4xx other than 429, a Slack error)."""


def webhook_target(url: str) -> str:
    """A webhook's name in the outbox: a digest of its URL (which may hold a secret), never the URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


# A kept connection the other side closed while it idled fails at once on reuse, before anything was
# sent: one more try on a fresh connection, at once (an outage is the courier's to wait out, not this).
_fresh_connection = retry(retry=retry_if_exception_type(httpx.RemoteProtocolError), stop=stop_after_attempt(2),
                          reraise=True)


def send_json(method: str, url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
              http: httpx.Client | None = None) -> httpx.Response:
    """One request (on ``http``, a client kept for many, when given); raises :class:`Retry` or
    :class:`Refused` when it was not taken."""
    try:
        if http is None:
            response = httpx.request(method, url, json=body, headers=headers, timeout=10)
        else:
            response = _fresh_connection(http.request)(method, url, json=body, headers=headers)
    except httpx.TransportError as exc:
        raise Retry(f"{type(exc).__name__}", channel_down=True) from None
    if response.status_code == 429:
        raise Retry("HTTP 429", _retry_after(response.headers.get("retry-after")))
    if response.status_code >= 500:
        raise Retry(f"HTTP {response.status_code}", _retry_after(response.headers.get("retry-after")), channel_down=True)
    if response.status_code >= 400:
        raise Refused(f"HTTP {response.status_code}")
    return response




# What the status page says for each incident event (the rest are not public): its status, and which text.
STATUS_OF = {"opened": ("investigating", "investigating"), "action": ("identified", "identified"),
             "escalated": ("investigating", "escalated"), "resolved": ("resolved", "resolved")}


class Notifier:
    """Writes what each channel is to be told into the notification outbox; sends nothing itself."""

    def __init__(self, settings: ResponderSettings, catalog: Catalog, store: Store) -> None:
        self.settings, self.catalog, self.store = settings, catalog, store

    def _expires(self, kind: str):
        if kind == "page":
            return None
        ages = self.catalog.notify.delivery.max_age_minutes
        return utcnow() + timedelta(minutes=ages.get(kind, ages.get("default", 60)))

    def slack_configured(self) -> bool:
        token = self.settings.slack_token
        return token is not None and bool(token.get_secret_value())

    def channel_for(self, severity: str) -> str:
        channels = self.catalog.notify.slack.channels
        return channels.get(severity) or channels.get("warning", "#alerts")

    def send(self, incident: Incident, kind: str, text: str, *, details: dict[str, Any] | None = None,
             discord: bool = False, pagerduty: str | None = None, person: dict[str, str] | None = None) -> None:
        """Write one incident event for every channel it belongs on (one transaction); the courier sends it."""
        self.store.enqueue_messages(self.messages(incident, kind, text, details=details, discord=discord,
                                                  pagerduty=pagerduty, person=person))

    def messages(self, incident: Incident, kind: str, text: str, *, details: dict[str, Any] | None = None,
                 discord: bool = False, pagerduty: str | None = None, person: dict[str, str] | None = None,
                 fallback_for: set[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """The outbox rows of one incident event, one per channel it belongs on (written by :meth:`send`, or
        by the caller in a transaction of its own, as a page is with its claim).

        ``fallback_for``: a page that did not get through on the (channel, target) pairs given, sent
        again on every other configured channel (PagerDuty whatever the severity), marked ``fell_back``.

        How it looks is decided here, per channel: in Slack, an ``opened`` incident and a ``page``
        carry an Acknowledge button, an ``approval-asked`` (``details["flow_run_id"]``) Approve and
        Reject buttons. ``person`` (a page's, from ``oncall.yaml``: name, slack, discord, pagerduty) is
        @-mentioned in Slack and Discord by user id and named in PagerDuty's custom details.
        """
        person = person or {}
        details = details or {}
        who = str(details.get("who") or person.get("name") or "") if kind == "page" else ""
        about = {"title": incident.title, "runbook": incident.runbook, "severity": incident.severity,
                 "opened_at": incident.opened_at, "line": text,
                 **({"page": {"level": details.get("level"), "who": who}} if kind == "page" else {})}
        if fallback_for is not None:
            about["fell_back"] = True
        expires, rows = self._expires(kind), []
        if self.slack_configured():
            slack_text = f"<@{person['slack']}> {text}" if person.get("slack") else text
            rows.append(new_message(incident.id, "slack", self.channel_for(incident.severity), kind, {
                **about, "text": slack_text, "blocks": _slack_blocks(incident, kind, slack_text, details),
                "mention": person.get("slack", "")}, who, expires))
        for url in self.catalog.notify.webhooks:
            rows.append(new_message(incident.id, "webhook", webhook_target(url), kind, {
                **about, "json": {"kind": kind, "text": text, "incident": _incident_body(incident), **details}},
                who, expires))
        if discord and self.catalog.notify.discord.webhook_url is not None:
            rows.append(new_message(incident.id, "discord", "", kind, {
                **about, "content": (f"<@{person['discord']}> {text}" if person.get("discord") else text)[:1900],
                "mention": person.get("discord", "")}, who, expires))
        config = self.catalog.notify.pagerduty
        if pagerduty and config.routing_key is not None and (incident.severity in config.severities or fallback_for):
            rows.append(new_message(incident.id, "pagerduty", "", kind, {
                **about, "event": pagerduty_event(incident, pagerduty, text, person)}, who, expires))
        if fallback_for is not None:  # the channels (Slack: any of its channels) that do not carry it yet
            return [row for row in rows if (row["channel"], row["target"]) not in fallback_for
                    and not (row["channel"] != "webhook" and any(c == row["channel"] for c, _ in fallback_for))]
        public = self._status_update(incident, kind, details)
        if public is not None:
            rows.append(new_message(incident.id, "statuspage", "", kind, public))  # never too old: it must end right
        return rows

    def _status_update(self, incident: Incident, kind: str, details: dict[str, Any]) -> dict[str, Any] | None:
        """What the public status page is told of this event, or None: only public severities, only
        incidents whose alerts name a mapped service, only what ``notify.yaml`` says in words."""
        page = self.catalog.notify.statuspage
        if kind not in STATUS_OF or not page.enabled or incident.severity not in page.public_severities:
            return None
        if kind == "action" and (details.get("outcome") or {}).get("status") != "done":
            return None  # a fix that was not applied has not identified anything for the public
        services = {alert["labels"].get("service") for alert in self.store.incident_alerts(incident.id)}
        components = [page.components[s] for s in sorted(s for s in services if s in page.components)]
        if not components:
            return None
        status, text = STATUS_OF[kind]
        names = ", ".join(c.name for c in components)
        return {"status": status, "title": page.title.format(components=names),
                "message": page.text[text].format(components=names),
                "components": {c.id or c.name: "operational" if status == "resolved" else page.impact
                               for c in components},
                "component_names": [c.name for c in components]}

    def chart(self, incident: Incident, title: str, svg: bytes) -> None:
        """A picture for the incident's Slack thread (uploaded with slack-sdk's ``files_upload_v2``)."""
        if self.slack_configured():
            self.store.enqueue_messages([new_message(incident.id, "slack", self.channel_for(incident.severity), "chart", {
                "title": title, "runbook": incident.runbook, "severity": incident.severity, "line": title,
                "filename": f"incident-{incident.id[:8]}.svg", "svg": base64.b64encode(svg).decode()},
                expires_at=self._expires("chart"))])

    def announce(self, kind: str, severity: str, text: str, *, details: dict[str, Any] | None = None) -> None:
        """A message that belongs to no incident (a scheduled check's findings): the severity's Slack
        channel and every webhook, through the same outbox."""
        expires, rows = self._expires(kind), []
        if self.slack_configured():
            rows.append(new_message(None, "slack", self.channel_for(severity), kind, {"text": text, "line": text},
                                    expires_at=expires))
        for url in self.catalog.notify.webhooks:
            rows.append(new_message(None, "webhook", webhook_target(url), kind,
                                    {"line": text, "json": {"kind": kind, "text": text, **(details or {})}},
                                    expires_at=expires))
        self.store.enqueue_messages(rows)


def pagerduty_event(incident: Incident, action: str, summary: str, person: dict[str, str] | None = None) -> dict[str, Any]:
    """A PagerDuty Events v2 body without its routing key (added when it is sent)."""
    event: dict[str, Any] = {"event_action": action, "dedup_key": f"responder-{incident.id}"}
    if action == "trigger":
        event["payload"] = {
            "summary": summary[:1000],
            "source": incident.runbook,
            "severity": "critical" if incident.severity == "critical" else "warning",
            "custom_details": {"incident": incident.id, "group_key": incident.group_key,
                               **({"on_call": person} if person else {})},
        }
    return event


class Channels:
    """Sends one outbox message on its channel, once; raises :class:`Retry` or :class:`Refused` when it
    was not taken. Returns what the channel said (Slack's ``ts``), for the record."""

    def __init__(self, settings: ResponderSettings, catalog: Catalog, store: Store) -> None:
        self.settings, self.catalog, self.store = settings, catalog, store
        # One client for every request, kept: building one per request loads the CA bundle each time
        # (about 25 ms of CPU), which made the storm's 200 pages wait for each other.
        self.http = http_client(timeout=10, limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
        self._slack: WebClient | None = None
        self._thread_channels: dict[str, str] = {}  # incident → its Slack thread's channel

    def close(self) -> None:
        self.http.close()

    def send(self, message: Message) -> str:
        if message.channel == "slack":
            return self.slack(message)
        if message.channel == "discord":
            url = self.catalog.notify.discord.webhook_url
            if url is None:
                raise Refused("Discord is no longer configured")
            send_json("POST", url.get_secret_value(), {"content": message.body["content"]}, http=self.http)
            return ""
        if message.channel == "pagerduty":
            key = self.catalog.notify.pagerduty.routing_key
            if key is None:
                raise Refused("PagerDuty is no longer configured")
            send_json("POST", self.catalog.notify.pagerduty.events_url,
                      {"routing_key": key.get_secret_value(), **message.body["event"]}, http=self.http)
            return ""
        if message.channel == "statuspage":
            return self.statuspage(message)
        if message.channel == "webhook":
            url = next((u for u in self.catalog.notify.webhooks if webhook_target(u) == message.target), None)
            if url is None:
                raise Refused("that webhook is no longer configured")
            send_json("POST", url, message.body["json"], http=self.http)
            return ""
        raise Refused(f"unknown channel {message.channel!r}")

    def statuspage(self, message: Message) -> str:
        """Atlassian Statuspage: the incident's first update creates a status page incident (its id kept
        as the incident's note), later ones update it. The webhook provider: one JSON POST per update."""
        page, update = self.catalog.notify.statuspage, message.body
        if not page.enabled:
            raise Refused("the status page is no longer configured")
        if page.provider == "webhook":
            assert page.webhook_url is not None
            send_json("POST", page.webhook_url.get_secret_value(), {
                "id": f"responder-{message.incident_id}", "status": update["status"], "title": update["title"],
                "message": update["message"], "components": update["component_names"], "at": message.created_at},
                http=self.http)
            return ""
        assert page.api_key is not None and message.incident_id is not None
        headers = {"Authorization": f"OAuth {page.api_key.get_secret_value()}"}
        base = f"{page.api_url.rstrip('/')}/pages/{page.page_id}/incidents"
        public_id = self.store.note(message.incident_id, "statuspage_id")
        if public_id is None:
            if update["status"] == "resolved":
                raise Refused("the status page has no incident to resolve (its first update was not delivered)")
            answer = send_json("POST", base, {"incident": {
                "name": update["title"], "status": update["status"], "body": update["message"],
                "component_ids": list(update["components"]), "components": update["components"]}}, headers, self.http)
            public_id = str(answer.json().get("id") or "")
            if not public_id:
                raise Refused("the status page answered without an incident id")
            self.store.set_note(message.incident_id, "statuspage_id", public_id)
            return public_id
        send_json("PATCH", f"{base}/{public_id}", {"incident": {
            "status": update["status"], "body": update["message"], "components": update["components"]}}, headers,
                  self.http)
        return public_id

    def slack_channel(self, message: Message) -> str:
        """Where a Slack message goes: its incident's thread's channel, else its own target. A thread's
        channel never changes once known, so it is remembered (the courier asks for every waiting message)."""
        if not message.incident_id:
            return message.target
        known = self._thread_channels.get(message.incident_id)
        if known is None:
            known = self.store.note(message.incident_id, "slack_channel")
            if known is not None:
                if len(self._thread_channels) >= 10_000:  # bounded: forgetting only costs a lookup
                    self._thread_channels.clear()
                self._thread_channels[message.incident_id] = known
        return known or message.target

    def slack(self, message: Message) -> str:
        token = self.settings.slack_token
        if token is None or not token.get_secret_value():
            raise Refused("Slack is no longer configured (RESPONDER_SLACK_TOKEN)")
        if self._slack is None or self._slack.token != token.get_secret_value():  # built once, like the HTTP client
            self._slack = WebClient(token=token.get_secret_value(), base_url=self.settings.slack_api_url.rstrip("/") + "/",
                                    timeout=10, retry_handlers=[], ssl=ssl.create_default_context())
        client = self._slack
        incident = message.incident_id
        thread = self.store.note(incident, "slack_ts") if incident else None
        channel = self.slack_channel(message)
        if message.kind == "chart":
            self._slack_call("files_upload_v2", lambda: client.files_upload_v2(
                channel=channel, thread_ts=thread, content=base64.b64decode(message.body["svg"]),
                filename=message.body["filename"], title=message.body["title"]))
            return ""
        text = message.body["text"]
        if incident and not thread and message.kind not in ("opened", "page"):  # a late thread says what it is about
            text = f"*{message.body['title']}* — `{message.body['runbook']}`, {message.body['severity']}\n{text}"
        body: dict[str, Any] = {"channel": channel, "text": text}
        if message.body.get("blocks"):
            body["blocks"] = message.body["blocks"]
        if thread:
            body["thread_ts"] = thread
        data = self._slack_call("chat.postMessage", lambda: client.api_call("chat.postMessage", json=body).data)
        ts = str(data.get("ts") or "")
        if incident and not thread and ts:
            self.store.set_note(incident, "slack_ts", ts)
            self.store.set_note(incident, "slack_channel", data.get("channel") or channel)
        return ts

    @staticmethod
    def _slack_call(method: str, call: Any) -> Any:
        """``call()``, its failures sorted into :class:`Retry` (429, 5xx, no connection) and :class:`Refused`."""
        try:
            return call()
        except SlackApiError as exc:
            status = exc.response.status_code
            headers = exc.response.headers or {}
            after = _retry_after(headers.get("Retry-After") or headers.get("retry-after"))
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            if status == 429 or error == "ratelimited":
                raise Retry(f"Slack {method}: HTTP {status} rate limited", after) from None
            if status >= 500:
                raise Retry(f"Slack {method}: HTTP {status}", after, channel_down=True) from None
            raise Refused(f"Slack {method}: {error or f'HTTP {status}'}") from None
        except SlackRequestError as exc:
            raise Refused(f"Slack {method}: {exc}") from None
        except OSError as exc:  # urllib's connection errors, and HTTP errors of the upload URL
            status = getattr(exc, "code", None)
            if isinstance(status, int) and 400 <= status < 500 and status != 429:
                raise Refused(f"Slack {method}: HTTP {status}") from None
            raise Retry(f"Slack {method}: {type(exc).__name__}", channel_down=True) from None


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
