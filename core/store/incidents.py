"""Incidents: opened by alert episodes or by hand, claimed by one run, acknowledged, closed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core.store.base import iso, new_id, utcnow
from core.store.outbox import Outbox, incident_record


@dataclass
class Incident:
    id: str
    runbook: str
    group_key: str
    severity: str
    title: str
    status: str
    opened_at: str
    closed_at: str | None
    close_reason: str | None
    flow_run_id: str | None
    acknowledged_at: str | None = None
    acknowledged_by: str | None = None


INCIDENT_COLUMNS = (
    "id, runbook, group_key, severity, title, status, opened_at, closed_at, close_reason, "
    "flow_run_id, acknowledged_at, acknowledged_by"
)


class Incidents(Outbox):
    # -- incidents ---------------------------------------------------------------
    def _incident(self, cur: Any, incident_id: str) -> Incident:
        row = self._exec(cur, f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = %s", (incident_id,)).fetchone()
        if row is None:
            raise KeyError(incident_id)
        return Incident(*row)

    def incident(self, incident_id: str) -> Incident | None:
        with self._tx() as cur:
            try:
                return self._incident(cur, incident_id)
            except KeyError:
                return None

    def incidents(self, status: str | None = None) -> list[Incident]:
        with self._tx() as cur:
            if status is None:
                rows = self._exec(cur, f"SELECT {INCIDENT_COLUMNS} FROM incidents ORDER BY opened_at").fetchall()
            else:
                rows = self._exec(
                    cur, f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE status = %s ORDER BY opened_at", (status,)
                ).fetchall()
        return [Incident(*row) for row in rows]

    def incident_alerts(self, incident_id: str) -> list[dict[str, Any]]:
        with self._tx() as cur:
            rows = self._exec(
                cur,
                "SELECT fingerprint, starts_at, alertname, status, labels FROM alerts WHERE incident_id = %s "
                "ORDER BY starts_at",
                (incident_id,),
            ).fetchall()
        return [
            {"fingerprint": r[0], "startsAt": r[1], "alertname": r[2], "status": r[3], "labels": json.loads(r[4])}
            for r in rows
        ]

    def incident_by_run(self, flow_run_id: str) -> Incident | None:
        with self._tx() as cur:
            row = self._exec(cur, f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE flow_run_id = %s", (flow_run_id,)).fetchone()
        return Incident(*row) if row else None

    def incident_status(self, incident_id: str) -> str | None:
        with self._tx() as cur:
            row = self._exec(cur, "SELECT status FROM incidents WHERE id = %s", (incident_id,)).fetchone()
        return row[0] if row else None

    def open_manual_incident(self, runbook: str, severity: str, title: str, flow_run_id: str) -> Incident:
        """An incident for a run started by hand (UI "Run", CLI), not by an alert."""
        incident_id = new_id()
        with self._tx() as cur:
            self._exec(
                cur,
                "INSERT INTO incidents (id, runbook, group_key, severity, title, status, opened_at) "
                "VALUES (%s, %s, %s, %s, %s, 'open', %s)",
                (incident_id, runbook, f"manual:{flow_run_id}", severity, title[:300], iso(utcnow())),
            )
            return self._incident(cur, incident_id)

    def close_incident(self, incident_id: str, reason: str) -> bool:
        """Close an open incident (idempotent). Returns True when this call closed it."""
        with self._tx() as cur:
            incident = self._incident(cur, incident_id)
            if incident.status != "open":
                return False
            self._close(cur, incident, reason, iso(utcnow()))
            return True

    def _close(self, cur: Any, incident: Incident, reason: str, now: str) -> None:
        self._exec(
            cur,
            "UPDATE incidents SET status = 'closed', closed_at = %s, close_reason = %s WHERE id = %s AND status = 'open'",
            (now, reason, incident.id),
        )
        incident.status, incident.closed_at, incident.close_reason = "closed", now, reason
        self._enqueue(cur, incident_record("incident.closed", incident))

    def record_event(self, incident_id: str, event: str, payload: dict[str, Any]) -> None:
        """Queue an incident event (escalated, action taken…) for delivery to Prefect."""
        with self._tx() as cur:
            incident = self._incident(cur, incident_id)
            self._enqueue(cur, incident_record(f"incident.{event}", incident, payload))

    def acknowledge(self, incident_id: str, who: str) -> Incident:
        """Mark an incident acknowledged (idempotent: the first acknowledgement is kept)."""
        with self._tx() as cur:
            incident = self._incident(cur, incident_id)
            if incident.acknowledged_at is None:
                now = iso(utcnow())
                self._exec(
                    cur,
                    "UPDATE incidents SET acknowledged_at = %s, acknowledged_by = %s WHERE id = %s",
                    (now, who[:200], incident_id),
                )
                incident.acknowledged_at, incident.acknowledged_by = now, who[:200]
                self._enqueue(cur, incident_record("incident.acknowledged", incident, {"by": who[:200]}))
            return incident

    def counts(self) -> dict[tuple[str, str], int]:
        """Incidents by (state, severity); state is open, acknowledged or closed."""
        with self._tx() as cur:
            rows = self._exec(
                cur,
                "SELECT CASE WHEN status = 'open' AND acknowledged_at IS NOT NULL THEN 'acknowledged' ELSE status END, "
                "severity, COUNT(*) FROM incidents GROUP BY 1, 2",
            ).fetchall()
        return {(r[0], r[1]): r[2] for r in rows}
