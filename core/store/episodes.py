"""Alert episodes: each Alertmanager body, and every alert in it keyed on (fingerprint, startsAt);
heartbeats: when an always-firing alert (Alertmanager's Watchdog) last arrived."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator, Mapping, Sequence

from core.alerts import Alert, AlertmanagerPayload, Route
from core.jsontext import to_json
from core.store.base import iso, new_id, utcnow
from core.store.outbox import alert_record, alerts_record
from core.store.runs import Runs


@dataclass
class IngestResult:
    receipt_id: str
    new_firing: int = 0
    duplicates: int = 0
    resolved: int = 0
    unrouted: int = 0
    incidents_opened: list[str] = field(default_factory=list)
    runbooks_opened: list[str] = field(default_factory=list)
    incidents_closed: list[str] = field(default_factory=list)


def _labels_json(labels: Mapping[str, str]) -> str:
    """Labels or annotations as JSON text with sorted keys (two per alert), by the outbox's orjson helper: 0.7
    µs for an alert's two maps against 3.0 µs with the json module's escaping, about 115 µs of a 50-alert
    post's 1.5 ms of writer CPU (README, "The intake"). Rows an earlier release wrote (``json.dumps``'s
    spacing) read back the same."""
    return to_json(labels, sort_keys=True)


_ALERT_ROW = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_INSERT_ALERTS = {n: "INSERT INTO alerts (fingerprint, starts_at, alertname, status, labels, annotations, group_key, "
                     "incident_id, received_at, resolved_at) VALUES " + ", ".join([_ALERT_ROW] * n) for n in (1, 2, 4, 8, 16, 32, 64)}
_STORED_ALERTS = {n: "SELECT fingerprint, starts_at, status, incident_id FROM alerts WHERE fingerprint IN ("
                     + ", ".join(["%s"] * n) + ")" for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)}


def _pieces(items: list, sizes: Mapping[int, str], pad: bool) -> Iterator[tuple[str, list]]:
    """``items`` cut into pieces whose lengths are among ``sizes`` (powers of two), so that a few statement texts
    serve every length and SQLite's statement cache keeps them: the largest that fits first, or, with ``pad``
    (for an ``IN`` list, where a repeated value changes nothing), one piece padded with its last item."""
    largest = max(sizes)
    while items:
        if pad:
            n = min(size for size in sizes if size >= min(len(items), largest))
        else:
            n = max(size for size in sizes if size <= len(items))
        piece, items = items[:n], items[n:]
        yield sizes[n], piece + [piece[-1]] * (n - len(piece))


@dataclass
class _Body:
    """What the ingest of one body has read and holds back: its alerts already stored, (fingerprint,
    starts_at) → [status, incident id], read in one query; the rows of its new alerts, written together;
    the open incident of each runbook in its group as far as this body has looked."""

    stored: dict[tuple[str, str], list]
    new_rows: list[tuple] = field(default_factory=list)
    open_incidents: dict[str, str] = field(default_factory=dict)


class Episodes(Runs):
    def ingest(self, payload: AlertmanagerPayload, raw: bytes, routes: Mapping[str, Route]) -> IngestResult:
        """Store one Alertmanager body and queue its events, all or nothing.

        ``routes``: alert name → the runbook that responds (the catalog's decision, made by the caller);
        an alert whose name is not in it is stored and announced as unrouted."""
        [result] = self.ingest_many([(payload, raw, routes)])
        if isinstance(result, Exception):
            raise result
        return result

    def ingest_many(self, bodies: Sequence[tuple[AlertmanagerPayload, bytes, Mapping[str, Route]]]
                    ) -> list[IngestResult | Exception]:
        """Several bodies in one transaction (the intake's group commit), each all or nothing on its own.

        Each body is stored under a savepoint: one that fails (its error is its result) is rolled back
        alone, the others commit together. The groups' locks are taken first, in order, so two responders
        sharing a PostgreSQL store never wait on each other in a cycle. A failure of the transaction
        itself (the store unreachable) raises for all of them."""
        results: list[IngestResult | Exception] = []
        with self._tx() as cur:
            for group_key in sorted({payload.groupKey for payload, _, _ in bodies}):
                self._lock_group(cur, group_key)
            for payload, raw, routes in bodies:
                self._exec(cur, "SAVEPOINT one_body")
                try:
                    results.append(self._ingest_body(cur, payload, raw, routes))
                except Exception as exc:  # this body's own failure; the savepoint undoes it alone
                    self._exec(cur, "ROLLBACK TO SAVEPOINT one_body")
                    results.append(exc)
                self._exec(cur, "RELEASE SAVEPOINT one_body")
        return results

    def _ingest_body(self, cur: Any, payload: AlertmanagerPayload, raw: bytes, routes: Mapping[str, Route]) -> IngestResult:
        now = iso(utcnow())
        result = IngestResult(receipt_id=new_id())
        self._exec(
            cur,
            "INSERT INTO receipts (id, received_at, group_key, body) VALUES (%s, %s, %s, %s)",
            (result.receipt_id, now, payload.groupKey, raw.decode("utf-8", "replace")),
        )
        # (alerts.joined | alerts.resolved, incident id) or (alerts.unrouted, None) → this body's alerts
        # of that kind: one event each
        batched: dict[tuple[str, str | None], list[Alert]] = {}
        body = _Body(self._stored_alerts(cur, payload.alerts))
        for alert in payload.alerts:
            self._ingest_alert(cur, payload, alert, now, routes.get(alert.alertname), result, batched, body)
        self._insert_new_alerts(cur, body)
        for kind, incident_id in list(batched):
            self._flush_alerts(cur, payload, batched, kind, incident_id)
        if payload.truncatedAlerts:
            self._note_truncation(cur, payload, now)
        return result

    def _note_truncation(self, cur: Any, payload: AlertmanagerPayload, now: str) -> None:
        """Alertmanager cut the group (its ``max_alerts``): each open incident of the group says so, once per count."""
        said = f"{payload.truncatedAlerts}"
        rows = self._exec(cur, "SELECT id FROM incidents WHERE group_key = %s AND status = 'open'",
                          (payload.groupKey,)).fetchall()
        for (incident_id,) in rows:
            before = self._exec(cur, "SELECT value FROM notes WHERE incident_id = %s AND key = 'truncated_alerts'",
                                (incident_id,)).fetchone()
            if before is not None and before[0] == said:
                continue
            self._exec(cur, "DELETE FROM notes WHERE incident_id = %s AND key = 'truncated_alerts'", (incident_id,))
            self._exec(cur, "INSERT INTO notes (incident_id, key, value) VALUES (%s, 'truncated_alerts', %s)",
                       (incident_id, said))
            self._exec(cur, "INSERT INTO timeline (id, incident_id, at, kind, text, actor) VALUES (%s, %s, %s, %s, %s, %s)",
                       (new_id(), incident_id, now, "truncated",
                        f"Alertmanager cut this group: {said} more alert(s) were not sent (its max_alerts); "
                        "see Alertmanager for the whole group", "alertmanager"))

    def _stored_alerts(self, cur: Any, alerts: Sequence[Alert]) -> dict[tuple[str, str], list]:
        stored: dict[tuple[str, str], list] = {}
        for sql, fingerprints in _pieces(sorted({alert.fingerprint for alert in alerts}), _STORED_ALERTS, pad=True):
            for fingerprint, starts_at, status, incident_id in self._exec(cur, sql, tuple(fingerprints)).fetchall():
                stored[(fingerprint, starts_at)] = [status, incident_id]
        return stored

    def _insert_new_alerts(self, cur: Any, body: _Body) -> None:
        for sql, rows in _pieces(body.new_rows, _INSERT_ALERTS, pad=False):
            self._exec(cur, sql, tuple(value for row in rows for value in row))
        body.new_rows = []

    def _ingest_alert(
        self, cur: Any, payload: AlertmanagerPayload, alert: Alert, now: str, runbook: Route | None, result: IngestResult,
        batched: dict[tuple[str, str | None], list[Alert]], body: _Body,
    ) -> None:
        starts_at = iso(alert.startsAt)
        row = body.stored.get((alert.fingerprint, starts_at))

        if alert.status == "firing":
            if row is not None:
                result.duplicates += 1
                return
            incident_id = None
            opens = False
            if runbook is not None:
                incident_id = body.open_incidents.get(runbook.runbook)
                if incident_id is None:
                    open_row = self._exec(
                        cur,
                        "SELECT id FROM incidents WHERE group_key = %s AND runbook = %s AND status = 'open'",
                        (payload.groupKey, runbook.runbook),
                    ).fetchone()
                    incident_id = open_row[0] if open_row is not None else None
                if incident_id is None:
                    incident_id = new_id()
                    opens = True
                    severity = alert.labels.get("severity") or runbook.severity
                    self._exec(
                        cur,
                        "INSERT INTO incidents (id, runbook, group_key, severity, title, status, opened_at) "
                        "VALUES (%s, %s, %s, %s, %s, 'open', %s)",
                        (incident_id, runbook.runbook, payload.groupKey, severity, alert.summary[:300], now),
                    )
                    result.incidents_opened.append(incident_id)
                    result.runbooks_opened.append(runbook.runbook)
                body.open_incidents[runbook.runbook] = incident_id
            self._insert_alert(body, payload, alert, starts_at, incident_id, now, status="firing")
            if runbook is None:  # one event for all of this body's alerts that no runbook routes, after the loop
                result.unrouted += 1
                batched.setdefault(("alerts.unrouted", None), []).append(alert)
                return
            result.new_firing += 1
            if not opens:  # one event for all of this body's alerts that join the incident, after the loop
                batched.setdefault(("alerts.joined", incident_id), []).append(alert)
                return
            incident = self._incident(cur, incident_id)
            self._enqueue(cur, alert_record("alert.firing", alert, payload, incident, opens=True))
            return

        # resolved
        if row is not None and row[0] == "resolved":
            result.duplicates += 1
            return
        if row is None:
            # Never saw it fire (sent before we existed, or silenced); keep the record only.
            self._insert_alert(body, payload, alert, starts_at, None, now, status="resolved", resolved_at=now)
            result.resolved += 1
            return
        incident_id = row[1]
        self._insert_new_alerts(cur, body)  # the rows held back go in before this alert's incident is counted
        self._exec(
            cur,
            "UPDATE alerts SET status = 'resolved', resolved_at = %s WHERE fingerprint = %s AND starts_at = %s",
            (now, alert.fingerprint, starts_at),
        )
        row[0] = "resolved"
        result.resolved += 1
        if incident_id is None:
            return
        batched.setdefault(("alerts.resolved", incident_id), []).append(alert)
        still_firing = self._exec(
            cur,
            "SELECT COUNT(*) FROM alerts WHERE incident_id = %s AND status = 'firing'",
            (incident_id,),
        ).fetchone()[0]
        if still_firing == 0:
            incident = self._incident(cur, incident_id)
            if incident.status == "open":
                # the resolved alerts' event goes before the close it causes, as they happened
                self._flush_alerts(cur, payload, batched, "alerts.resolved", incident_id)
                self._close(cur, incident, "alerts-resolved", now)
                result.incidents_closed.append(incident_id)
                body.open_incidents = {name: open_id for name, open_id in body.open_incidents.items()
                                       if open_id != incident_id}

    def _flush_alerts(self, cur: Any, payload: AlertmanagerPayload, batched: dict[tuple[str, str | None], list[Alert]],
                      kind: str, incident_id: str | None) -> None:
        """Queue the one event for this body's alerts of ``kind`` (joined, resolved) of an incident, or
        (unrouted) of none."""
        alerts = batched.pop((kind, incident_id), None)
        if alerts:
            incident = self._incident(cur, incident_id) if incident_id is not None else None
            self._enqueue(cur, alerts_record(kind, alerts, payload, incident))

    def _queue_opening(self, cur: Any, incident: Any, kind: str, why: str) -> bool:
        """Queue a firing event with ``opens`` for the incident's latest alert still firing, so the
        runbook's trigger starts a run (which claims the incident), and say why on its timeline as
        ``kind``; False, and nothing written, when none of its alerts fires any more."""
        row = self._exec(cur, "SELECT fingerprint, starts_at, status, labels, annotations FROM alerts "
                              "WHERE incident_id = %s AND status = 'firing' ORDER BY starts_at DESC",
                         (incident.id,)).fetchone()
        if row is None:
            return False
        alert = Alert(status="firing", labels=json.loads(row[3]), annotations=json.loads(row[4]),
                      startsAt=row[1], fingerprint=row[0])
        group = AlertmanagerPayload(version="4", groupKey=incident.group_key, status="firing", alerts=[alert])
        self._exec(cur, "INSERT INTO timeline (id, incident_id, at, kind, text, actor) VALUES (%s, %s, %s, %s, %s, %s)",
                   (new_id(), incident.id, iso(utcnow()), kind, why, None))
        self._enqueue(cur, alert_record("alert.firing", alert, group, incident, opens=True))
        return True

    def resend_unanswered(self, opened_before: datetime, resent_before: datetime, max_tries: int = 3,
                          limit: int = 20) -> list[str]:
        """Open incidents that no run has claimed, opened before ``opened_before``: their opening event
        is queued again (``response-resent`` on the timeline), at most ``max_tries`` times each and not
        again before ``resent_before``; up to ``limit`` per call, the newest first. Nothing while any
        event waits for delivery (the Prefect server is down, or delivery is behind: the opening event
        may not have gone out yet). A second run for an incident that a first one claims meanwhile
        ends as a duplicate, acting on nothing. Returns the incidents whose event was queued."""
        resent: list[str] = []
        with self._tx() as cur:
            if self._exec(cur, "SELECT 1 FROM outbox WHERE delivered_at IS NULL LIMIT 1").fetchone():
                return resent
            # One statement finds them with their tries so far (an incident past its tries is not read again).
            rows = self._exec(
                cur,
                "SELECT i.id, COUNT(t.id) FROM incidents i LEFT JOIN timeline t ON t.incident_id = i.id "
                "AND t.kind = 'response-resent' WHERE i.status = 'open' AND i.flow_run_id IS NULL AND i.opened_at < %s "
                "GROUP BY i.id, i.opened_at HAVING COUNT(t.id) < %s AND (MAX(t.at) IS NULL OR MAX(t.at) < %s) "
                "ORDER BY i.opened_at DESC LIMIT %s",
                (iso(opened_before), max_tries, iso(resent_before), limit)).fetchall()
            for incident_id, tries in rows:
                why = (f"no run has claimed this incident since it opened: its opening event was sent to Prefect "
                       f"again (try {tries + 1} of {max_tries})")
                if self._queue_opening(cur, self._incident(cur, incident_id), "response-resent", why):
                    resent.append(incident_id)
        return resent

    def _insert_alert(self, body: _Body, payload, alert, starts_at, incident_id, now, status, resolved_at=None) -> None:
        """Hold the alert's row back for the body's one INSERT; the body knows it is stored from now on."""
        body.new_rows.append((alert.fingerprint, starts_at, alert.alertname, status, _labels_json(alert.labels),
                              _labels_json(alert.annotations), payload.groupKey, incident_id, now, resolved_at))
        body.stored[(alert.fingerprint, starts_at)] = [status, incident_id]



class Heartbeats(Episodes):
    """When an always-firing alert last arrived, and whether its silence was reported (one row per name)."""

    def heartbeat_seen(self, name: str, at: datetime) -> None:
        """Record an arrival (a later one wins; an earlier one, from a slow responder, changes nothing)."""
        with self._tx() as cur:
            self._exec(
                cur,
                "INSERT INTO heartbeats (name, last_seen) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET last_seen = EXCLUDED.last_seen "
                "WHERE heartbeats.last_seen < EXCLUDED.last_seen",
                (name, iso(at)),
            )

    def heartbeat(self, name: str) -> tuple[datetime, datetime | None] | None:
        """(last arrival, start of the silence reported and not yet over) or None when it never arrived."""
        with self._tx() as cur:
            row = self._exec(cur, "SELECT last_seen, reported_since FROM heartbeats WHERE name = %s", (name,)).fetchone()
        if row is None:
            return None
        return datetime.fromisoformat(row[0]), datetime.fromisoformat(row[1]) if row[1] else None

    def heartbeat_reported(self, name: str, since: datetime | None) -> None:
        """Record that the silence starting at ``since`` was raised as an alert (None: it was resolved)."""
        with self._tx() as cur:
            self._exec(cur, "UPDATE heartbeats SET reported_since = %s WHERE name = %s",
                       (iso(since) if since else None, name))
