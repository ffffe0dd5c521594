"""Maintenance windows: the times automation holds its hands, and the incidents each one held.

A window is made by a person (``responder maintenance start``), comes from an Alertmanager silence
(``source = "alertmanager"``, its id is the silence's), or recurs from ``config/maintenance.yaml``
(computed, never stored). An incident a window held is recorded with the window's end, so that when
the window is over (ended early, or its time ran out) the responder gives each held incident that is
still open a fresh response, once (``released_at``).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from core.store.base import iso, utcnow
from core.store.episodes import Heartbeats

_COLUMNS = "id, source, service, runbook, matchers, starts_at, ends_at, reason, created_by, created_at, ended_at, ended_by"


def _window(row: Any) -> dict[str, Any]:
    keys = [c.strip() for c in _COLUMNS.split(",")]
    window = dict(zip(keys, row))
    window["matchers"] = json.loads(window["matchers"])
    return window


class Maintenance(Heartbeats):
    def add_window(self, *, service: str | None, runbook: str | None, matchers: dict[str, str], starts: datetime,
                   ends: datetime, reason: str, by: str, source: str = "cli", window_id: str | None = None
                   ) -> dict[str, Any]:
        """Store a window (``window_id`` given: replace that window, as a changed silence does)."""
        if ends <= starts:
            raise ValueError(f"the window ends ({iso(ends)}) before it starts ({iso(starts)})")
        window_id = window_id or f"mw-{uuid.uuid4().hex[:8]}"
        with self._tx() as cur:
            self._exec(cur, "DELETE FROM maintenance_windows WHERE id = %s", (window_id,))
            self._exec(
                cur, f"INSERT INTO maintenance_windows ({_COLUMNS}) VALUES "
                     "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL)",
                (window_id, source, service, runbook, json.dumps(matchers, sort_keys=True), iso(starts), iso(ends),
                 reason, by, iso(utcnow())))
            row = self._exec(cur, f"SELECT {_COLUMNS} FROM maintenance_windows WHERE id = %s", (window_id,)).fetchone()
        return _window(row)

    def end_window(self, window_id: str, by: str, at: datetime) -> dict[str, Any] | None:
        """End a window now (idempotent); None when there is no such window."""
        with self._tx() as cur:
            self._exec(cur, "UPDATE maintenance_windows SET ended_at = %s, ended_by = %s "
                            "WHERE id = %s AND ended_at IS NULL", (iso(at), by, window_id))
            self._exec(cur, "UPDATE maintenance_holds SET window_ends_at = %s WHERE window_id = %s "
                            "AND released_at IS NULL AND window_ends_at > %s", (iso(at), window_id, iso(at)))
            row = self._exec(cur, f"SELECT {_COLUMNS} FROM maintenance_windows WHERE id = %s", (window_id,)).fetchone()
        return _window(row) if row else None

    def windows(self, at: datetime | None = None, source: str | None = None) -> list[dict[str, Any]]:
        """Stored windows, newest first; ``at``: only those in force then (started, not over, not ended)."""
        sql, params = f"SELECT {_COLUMNS} FROM maintenance_windows WHERE 1 = 1", []
        if at is not None:
            sql += " AND starts_at <= %s AND ends_at > %s AND (ended_at IS NULL OR ended_at > %s)"
            params += [iso(at)] * 3
        if source is not None:
            sql += " AND source = %s"
            params.append(source)
        with self._tx() as cur:
            rows = self._exec(cur, sql + " ORDER BY starts_at DESC", tuple(params)).fetchall()
        return [_window(row) for row in rows]

    # -- incidents held ---------------------------------------------------------------------
    def hold(self, window_id: str, window_ends: datetime, incident_id: str) -> None:
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO maintenance_holds (window_id, incident_id, window_ends_at, held_at) "
                            "VALUES (%s, %s, %s, %s) ON CONFLICT (window_id, incident_id) DO NOTHING",
                       (window_id, incident_id, iso(window_ends), iso(utcnow())))

    def holds_over(self, now: datetime) -> list[tuple[str, str]]:
        """(window, incident) for each hold whose window is over and that was not released yet."""
        with self._tx() as cur:
            rows = self._exec(cur, "SELECT window_id, incident_id FROM maintenance_holds "
                                   "WHERE released_at IS NULL AND window_ends_at <= %s", (iso(now),)).fetchall()
        return [(row[0], row[1]) for row in rows]

    def release_hold(self, window_id: str, incident_id: str, why: str) -> bool:
        """The window is over: give the held incident, if still open, a fresh response, once.

        In one transaction: the hold is released; the incident's run is forgotten and a firing
        event for its latest alert that is still firing is queued with ``opens``, so the runbook's
        trigger starts a new run, which claims the incident. Returns whether a response was queued."""
        with self._tx() as cur:
            released = self._exec(cur, "UPDATE maintenance_holds SET released_at = %s WHERE window_id = %s "
                                       "AND incident_id = %s AND released_at IS NULL",
                                  (iso(utcnow()), window_id, incident_id)).rowcount
            if not released:
                return False
            incident = self._incident(cur, incident_id)
            if incident.status != "open":
                return False
            incident.flow_run_id = None  # as the event says: no run yet (the new one claims the incident)
            if not self._queue_opening(cur, incident, "maintenance-over", why):
                return False
            self._exec(cur, "UPDATE incidents SET flow_run_id = NULL WHERE id = %s", (incident_id,))
        return True

