"""The audit trail: every decision the responder and people made, read back as one trail.

Each decision is already written, append-only, where it happens, in the transaction that made it:
alerts accepted (``alerts``), incident opened, action planned, acknowledged, approval asked, approved, rejected,
action held or run with its outcome, page sent, escalated, closed (``timeline``, with who), and
maintenance windows started and ended (``maintenance_windows``, with who). Nothing in the store's
API edits or deletes those rows (retention deletes raw bodies and delivered events, never these).
This reads them as one trail, oldest first: ``responder audit`` and ``GET /audit``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from core.store.base import iso
from core.store.maintenance import Maintenance


class Audit(Maintenance):
    def audit(self, since: datetime | None = None, incident_id: str | None = None, limit: int = 5000
              ) -> list[dict[str, Any]]:
        """Decisions at or after ``since`` (about ``incident_id`` only, if given), oldest first: each
        ``{at, kind, incident, who, what}``; ``who`` is a person, or "responder" for its own decisions."""
        after = iso(since) if since else ""
        where_incident = " AND incident_id = %s" if incident_id else ""
        scoped = (incident_id,) if incident_id else ()
        with self._tx() as cur:
            timeline = self._exec(cur, "SELECT at, kind, incident_id, actor, text FROM timeline WHERE at >= %s"
                                  + where_incident, (after, *scoped)).fetchall()
            alerts = self._exec(cur, "SELECT received_at, incident_id, alertname, status, labels, fingerprint "
                                     "FROM alerts WHERE received_at >= %s" + where_incident, (after, *scoped)).fetchall()
            windows = [] if incident_id else self._exec(
                cur, "SELECT id, created_at, created_by, ended_at, ended_by, reason, source, starts_at, ends_at "
                     "FROM maintenance_windows WHERE created_at >= %s OR ended_at >= %s", (after, after)).fetchall()
        trail = [{"at": at, "kind": kind, "incident": incident, "who": actor or "responder", "what": text}
                 for at, kind, incident, actor, text in timeline]
        for received, incident, alertname, status, labels, fingerprint in alerts:
            instance = json.loads(labels).get("instance", "")
            trail.append({"at": received, "kind": "alert-accepted", "incident": incident, "who": "Alertmanager",
                          "what": f"{alertname} {status}{f' on {instance}' if instance else ''} ({fingerprint})"
                                  + ("" if incident else ": no runbook routes it")})
        for wid, created, by, ended, ended_by, reason, source, starts, ends in windows:
            if created >= after:
                trail.append({"at": created, "kind": "window-started", "incident": None, "who": by,
                              "what": f"maintenance window {wid} ({source}) {starts} → {ends}: {reason}"})
            if ended and ended >= after:
                trail.append({"at": ended, "kind": "window-ended", "incident": None, "who": ended_by,
                              "what": f"maintenance window {wid} ended early"})
        trail.sort(key=lambda row: row["at"])
        return trail[-limit:]
