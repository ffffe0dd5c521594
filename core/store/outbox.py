"""The outbox: incident and alert events, written in the transaction that caused them, delivered later.

A record is the responder's own shape, not Prefect's::

    {"id", "occurred",
     "kind": "alert.firing" | "alerts.joined" | "alerts.resolved" | "alerts.unrouted" | "incident.<what>",
     "incident": {id, runbook, group_key, severity, title, status, close_reason, flow_run_id} | None,
     "alert": {...}, "opens": bool, "group": {key, labels, external_url, truncated_alerts},   (alert events)
     "alerts": [{...}, …], "count": int, "alertnames": [...], "group": {…},   (alerts.*: per body and incident, or body)
     "details": {...}}                                                                         (incident events)

An alert that opens an incident is a record of its own; the alerts of one body that join an open
incident are one ``alerts.joined`` record, those that resolve one ``alerts.resolved`` record per
incident (written before the incident's close when they close it), those no runbook routes one
``alerts.unrouted`` record. Records of kind ``alert.resolved`` and ``alert.unrouted`` (one alert each)
written by earlier releases are delivered as they are.

``responder/events.py`` turns a record into a Prefect event when it is delivered (the id is kept,
so a re-delivery is the same event).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.alerts import Alert, AlertmanagerPayload
from core.jsontext import from_json, to_json
from core.store.base import StoreBase, iso, new_id, utcnow

if TYPE_CHECKING:  # typing only: incidents imports this module
    from core.store.incidents import Incident


def incident_fields(incident: "Incident") -> dict[str, Any]:
    return {
        "id": incident.id, "runbook": incident.runbook, "group_key": incident.group_key, "severity": incident.severity,
        "title": incident.title, "status": incident.status, "close_reason": incident.close_reason,
        "flow_run_id": incident.flow_run_id,
    }


def incident_record(kind: str, incident: "Incident", details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": new_id(), "occurred": iso(utcnow()), "kind": kind,
            "incident": incident_fields(incident), "details": details or {}}


def _group_fields(group: AlertmanagerPayload) -> dict[str, Any]:
    return {"key": group.groupKey, "labels": group.groupLabels, "external_url": group.externalURL,
            "truncated_alerts": group.truncatedAlerts}


def alert_record(kind: str, alert: Alert, group: AlertmanagerPayload, incident: "Incident | None",
                 opens: bool = False) -> dict[str, Any]:
    return {
        "id": new_id(),
        "occurred": iso(utcnow()),
        "kind": kind,
        "alert": alert.model_dump(mode="json"),
        "incident": incident_fields(incident) if incident is not None else None,
        "opens": opens,
        "group": _group_fields(group),
    }


ALERTS_LISTED = 20  # the alerts an ``alerts.*`` record lists; its ``count`` says how many there were


def alerts_record(kind: str, alerts: list[Alert], group: AlertmanagerPayload, incident: "Incident | None") -> dict[str, Any]:
    """The alerts of one Alertmanager body that joined an incident already open (``alerts.joined``) or
    resolved (``alerts.resolved``): one record per incident; those no runbook routes
    (``alerts.unrouted``, ``incident`` None): one record per body. Each alert used to be an event of
    its own (a 50-alert group made 50; Prefect's in-memory messaging drops events when a consumer
    falls 10,000 behind, and a storm of alerts nobody routes must not crowd out an incident's opening
    event)."""
    return {
        "id": new_id(),
        "occurred": iso(utcnow()),
        "kind": kind,
        "alerts": [alert.model_dump(mode="json") for alert in alerts[:ALERTS_LISTED]],
        "count": len(alerts),
        "alertnames": sorted({alert.alertname for alert in alerts})[:ALERTS_LISTED],
        "incident": incident_fields(incident) if incident is not None else None,
        "group": _group_fields(group),
    }


class Outbox(StoreBase):
    def _enqueue(self, cur: Any, record: dict[str, Any]) -> None:
        seq = self._exec(cur, "SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox").fetchone()[0]
        self._exec(
            cur,
            "INSERT INTO outbox (id, seq, created_at, kind, body) VALUES (%s, %s, %s, %s, %s)",
            (record["id"], seq, record["occurred"], record["kind"], to_json(record)),
        )

    def _enqueue_messages(self, cur: Any, rows: list[dict[str, Any]]) -> None:
        """Messages to people (rows of ``core.store.messages.new_message``), in the order given, in the
        caller's transaction: the notification outbox (``core/store/messages.py``) delivers them."""
        seq = self._exec(cur, "SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
        for offset, row in enumerate(rows, start=1):
            self._exec(
                cur,
                "INSERT INTO messages (id, seq, incident_id, channel, target, kind, person, body, created_at, "
                "expires_at, next_attempt_at, attempts, state) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, "
                "'waiting')",
                (row["id"], seq + offset, row["incident_id"], row["channel"], row["target"], row["kind"], row["person"],
                 to_json(row["body"]), row["created_at"], row["expires_at"], row["next_attempt_at"]),
            )

    def pending_events(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._tx() as cur:
            rows = self._exec(
                cur, "SELECT body FROM outbox WHERE delivered_at IS NULL ORDER BY seq LIMIT %s", (limit,)
            ).fetchall()
        return [from_json(r[0]) for r in rows]

    def mark_delivered(self, event_ids: list[str], settled: list[str] | tuple[str, ...] = ()) -> None:
        """One statement for the whole batch (its ids bound as parameters: only their count shapes the SQL).
        ``settled``: those of them that have nothing to follow up, marked followed up in the same transaction
        (so :meth:`pending_followups` never reads them back)."""
        if not event_ids:
            return
        now = iso(utcnow())
        with self._tx() as cur:
            self._exec(cur, "UPDATE outbox SET delivered_at = %s, attempts = attempts + 1 WHERE id IN ("
                       + _marks(event_ids) + ")", (now, *event_ids))
            if settled:
                self._exec(cur, "UPDATE outbox SET followed_up_at = %s WHERE id IN ("
                           + _marks(settled) + ")", (now, *settled))

    def pending_followups(self, limit: int = 100) -> list[dict[str, Any]]:
        """Delivered events whose local follow-up (pages, notifications, artifacts) has not completed."""
        with self._tx() as cur:
            rows = self._exec(
                cur,
                "SELECT body FROM outbox WHERE delivered_at IS NOT NULL AND followed_up_at IS NULL ORDER BY seq LIMIT %s",
                (limit,),
            ).fetchall()
        return [from_json(r[0]) for r in rows]

    def mark_followed_up(self, event_ids: list[str]) -> None:
        """Mark a pass's followed-up events in one statement (one commit, not one per event)."""
        if not event_ids:
            return
        with self._tx() as cur:
            self._exec(cur, "UPDATE outbox SET followed_up_at = %s WHERE id IN ("
                       + _marks(event_ids) + ")", (iso(utcnow()), *event_ids))

    def mark_failed(self, event_ids: list[str], error: str) -> None:
        if not event_ids:
            return
        with self._tx() as cur:
            self._exec(cur, "UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE id IN ("
                       + _marks(event_ids) + ")", (error[:500], *event_ids))

    def prune(self, before: datetime) -> dict[str, int]:
        """Delete what is only history older than ``before``: raw Alertmanager bodies (their alerts,
        incidents and timelines stay), events delivered and followed up, the step results kept for
        suspended runs (a run waiting longer than that starts its steps afresh when answered), and messages
        to people that were settled (delivered, dropped, refused). Events and messages still waiting are
        never deleted, however old. Returns the counts deleted."""
        cutoff = iso(before)
        with self._tx() as cur:
            receipts = self._exec(cur, "DELETE FROM receipts WHERE received_at < %s", (cutoff,)).rowcount
            events = self._exec(cur, "DELETE FROM outbox WHERE followed_up_at IS NOT NULL AND created_at < %s",
                                (cutoff,)).rowcount
            results = self._exec(cur, "DELETE FROM step_results WHERE created_at < %s", (cutoff,)).rowcount
            messages = self._exec(cur, "DELETE FROM messages WHERE state <> 'waiting' AND created_at < %s",
                                  (cutoff,)).rowcount
        return {"receipts": receipts, "events": events, "step_results": results, "messages": messages}

    def outbox_backlog(self) -> tuple[int, float]:
        """Events not yet delivered: how many, and the oldest one's age in seconds (0 when none)."""
        with self._tx() as cur:
            count, oldest = self._exec(
                cur, "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL").fetchone()
        if not oldest:
            return count, 0.0
        return count, max(0.0, (utcnow() - datetime.fromisoformat(oldest)).total_seconds())


def _marks(ids: list[str] | tuple[str, ...]) -> str:
    """The placeholders of an ``IN (...)`` list of these ids (bound as parameters: only their count shapes the SQL)."""
    return ", ".join(["%s"] * len(ids))
