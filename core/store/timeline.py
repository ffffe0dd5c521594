"""What happened to an incident, in order: timeline entries, pages sent, notes; and the loop-guard log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from core.store.base import iso, new_id, utcnow
from core.store.incidents import INCIDENT_COLUMNS, Incident, Incidents
from core.store.outbox import incident_record


class Timeline(Incidents):
    # -- loop guard ----------------------------------------------------------------
    def actions_since(self, guard_key: str, since: datetime) -> int:
        with self._tx() as cur:
            return self._exec(
                cur,
                "SELECT COUNT(*) FROM actions_log WHERE guard_key = %s AND at >= %s AND status = 'done'",
                (guard_key, iso(since)),
            ).fetchone()[0]

    def record_action(self, guard_key: str, incident_id: str | None, status: str) -> None:
        with self._tx() as cur:
            self._exec(
                cur,
                "INSERT INTO actions_log (id, guard_key, incident_id, status, at) VALUES (%s, %s, %s, %s, %s)",
                (new_id(), guard_key, incident_id, status, iso(utcnow())),
            )

    # -- timeline, pages, notes ------------------------------------------------------
    def add_timeline(self, incident_id: str, kind: str, text: str, actor: str | None = None) -> None:
        with self._tx() as cur:
            self._exec(
                cur,
                "INSERT INTO timeline (id, incident_id, at, kind, text, actor) VALUES (%s, %s, %s, %s, %s, %s)",
                (new_id(), incident_id, iso(utcnow()), kind, text[:2000], actor),
            )

    def timeline(self, incident_id: str) -> list[dict[str, Any]]:
        with self._tx() as cur:
            rows = self._exec(
                cur, "SELECT at, kind, text, actor FROM timeline WHERE incident_id = %s ORDER BY at, id", (incident_id,)
            ).fetchall()
        return [{"at": r[0], "kind": r[1], "text": r[2], "actor": r[3] or ""} for r in rows]

    def respond(self, incident_id: str, flow_run_id: str, timeline: list[tuple[str, str]],
                messages: list[dict[str, Any]]) -> tuple[str, Incident]:
        """Claim an incident for a run and record it (``timeline`` lines, ``messages`` to people) in one
        transaction. Returns ``"claimed"`` (this call claimed it: all of it was written), ``"ours"``
        (this run had claimed it before, say in an execution killed after the claim: nothing written
        again, so nobody is told twice) or ``"taken"`` (another run responds; nothing written)."""
        with self._tx() as cur:
            claimed = self._exec(cur, "UPDATE incidents SET flow_run_id = %s WHERE id = %s AND flow_run_id IS NULL",
                                 (flow_run_id, incident_id)).rowcount == 1
            if claimed:
                for kind, text in timeline:
                    self._exec(cur, "INSERT INTO timeline (id, incident_id, at, kind, text, actor) "
                               "VALUES (%s, %s, %s, %s, %s, %s)",
                               (new_id(), incident_id, iso(utcnow()), kind, text[:2000], None))
                self._enqueue_messages(cur, messages)
            incident = self._incident(cur, incident_id)
        if claimed:
            return "claimed", incident
        return ("ours" if incident.flow_run_id == flow_run_id else "taken"), incident

    def page_claimed(self, incident_id: str, level: int, who: str, details: dict[str, Any],
                     messages: list[dict[str, Any]] | None = None, reason: str = "") -> bool:
        """Claim a page and record it (timeline line, ``incident.paged`` event, why it came early, its
        ``messages`` to people) in one transaction, the pager's one write per page: a responder killed
        at any moment has either paged (and the courier delivers it) or not (the next pass does).
        False when it was already claimed (nothing is written then)."""
        with self._tx() as cur:
            claimed = self._exec(
                cur,
                "INSERT INTO pages (incident_id, level, sent_at, who) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (incident_id, level) DO NOTHING",
                (incident_id, level, iso(utcnow()), who),
            ).rowcount == 1
            if claimed:
                self._exec(cur, "INSERT INTO timeline (id, incident_id, at, kind, text, actor) VALUES (%s, %s, %s, %s, %s, %s)",
                           (new_id(), incident_id, iso(utcnow()), "page", f"paged level {level}: {who}", None))
                if reason:
                    self._exec(cur, "INSERT INTO timeline (id, incident_id, at, kind, text, actor) "
                               "VALUES (%s, %s, %s, %s, %s, %s)",
                               (new_id(), incident_id, iso(utcnow()), "page", reason[:2000], None))
                self._enqueue(cur, incident_record("incident.paged", self._incident(cur, incident_id), details))
                self._enqueue_messages(cur, messages or [])
            return claimed

    def paging_candidates(self) -> list[tuple[Incident, set[int]]]:
        """Open, unacknowledged incidents with the levels already paged: what the pager looks at."""
        with self._tx() as cur:
            rows = self._exec(
                cur, f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE status = 'open' AND acknowledged_at IS NULL"
            ).fetchall()
            paged = self._exec(
                cur,
                "SELECT incident_id, level FROM pages WHERE incident_id IN "
                "(SELECT id FROM incidents WHERE status = 'open' AND acknowledged_at IS NULL)",
            ).fetchall()
        levels: dict[str, set[int]] = {}
        for incident_id, level in paged:
            levels.setdefault(incident_id, set()).add(level)
        return [(incident, levels.get(incident.id, set())) for incident in (Incident(*row) for row in rows)]

    def pages(self, incident_id: str) -> list[dict[str, Any]]:
        with self._tx() as cur:
            rows = self._exec(
                cur, "SELECT level, sent_at, who FROM pages WHERE incident_id = %s ORDER BY level", (incident_id,)
            ).fetchall()
        return [{"level": r[0], "sent_at": r[1], "who": r[2]} for r in rows]

    def set_note(self, incident_id: str, key: str, value: str) -> None:
        with self._tx() as cur:
            self._exec(cur, "DELETE FROM notes WHERE incident_id = %s AND key = %s", (incident_id, key))
            self._exec(cur, "INSERT INTO notes (incident_id, key, value) VALUES (%s, %s, %s)", (incident_id, key, value))

    def note(self, incident_id: str, key: str) -> str | None:
        with self._tx() as cur:
            row = self._exec(cur, "SELECT value FROM notes WHERE incident_id = %s AND key = %s", (incident_id, key)).fetchone()
        return row[0] if row else None

    def waiting_on(self, incident: Incident) -> str:
        """Who or what an open incident waits on, for `responder incidents`."""
        if incident.status != "open":
            return ""
        waiting = self.note(incident.id, "waiting_on")
        if waiting:
            return waiting
        if incident.acknowledged_by:
            return f"{incident.acknowledged_by} (acknowledged)"
        pages = self.pages(incident.id)
        if pages:
            return f"level {pages[-1]['level']}: {pages[-1]['who']} (paged)"
        return "the runbook"
