"""What response runs need from the store: kept step results, approval deadlines, leases, action claims.

A run that asks for approval is suspended (it holds no thread while it waits) and, once answered,
runs again from its first step; each step done before returns its stored result instead of
running again (``core/results.py``). The results live here, in the store every responder shares,
so any responder can carry the run on. Approval deadlines live here too, so the "no" given at a
deadline is given on time by whichever responder is running then, also after a restart.

Several responders share one store (PostgreSQL) and one Prefect server. A **lease** says which
responder holds a run it executes (or the delivery of events) and until when; the holder renews
it every few seconds, and a run whose lease expired is taken over by a live responder. An
**action claim** (incident, action, target) makes an action run once even when the responder
running it dies half-way: the run carried on elsewhere finds the claim and does not run it again.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

from core.store.base import iso, utcnow
from core.store.timeline import Timeline


class Runs(Timeline):
    # -- step results --------------------------------------------------------------
    def put_result(self, key: str, content: bytes) -> None:
        """Keep one step's result record (Prefect's serialized record; no secrets: see core/results.py)."""
        with self._tx() as cur:
            self._exec(cur, "DELETE FROM step_results WHERE key = %s", (key,))
            self._exec(cur, "INSERT INTO step_results (key, content, created_at) VALUES (%s, %s, %s)",
                       (key, base64.b64encode(content).decode("ascii"), iso(utcnow())))

    def get_result(self, key: str) -> bytes | None:
        with self._tx() as cur:
            row = self._exec(cur, "SELECT content FROM step_results WHERE key = %s", (key,)).fetchone()
        return base64.b64decode(row[0]) if row else None

    # -- approval deadlines ------------------------------------------------------------
    def approval_asked(self, flow_run_id: str, key: str, incident_id: str | None, deadline: datetime) -> None:
        """Record a question and its deadline (idempotent: a run asking again keeps the first deadline)."""
        with self._tx() as cur:
            self._exec(
                cur,
                "INSERT INTO approvals (flow_run_id, pause_key, incident_id, asked_at, deadline_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (flow_run_id, pause_key) DO NOTHING",
                (flow_run_id, key, incident_id, iso(utcnow()), iso(deadline)),
            )

    def approval_deadline(self, flow_run_id: str, key: str) -> datetime | None:
        with self._tx() as cur:
            row = self._exec(cur, "SELECT deadline_at FROM approvals WHERE flow_run_id = %s AND pause_key = %s",
                             (flow_run_id, key)).fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    def approval_settled(self, flow_run_id: str, key: str, how: str) -> None:
        """The question has its answer (``how``: approved, rejected, deadline, not-paused…)."""
        with self._tx() as cur:
            self._exec(cur, "UPDATE approvals SET settled_at = %s, settled = %s "
                            "WHERE flow_run_id = %s AND pause_key = %s AND settled_at IS NULL",
                       (iso(utcnow()), how[:200], flow_run_id, key))

    def approvals_past_deadline(self, now: datetime) -> list[dict[str, Any]]:
        with self._tx() as cur:
            rows = self._exec(
                cur, "SELECT flow_run_id, pause_key, incident_id, deadline_at FROM approvals "
                     "WHERE settled_at IS NULL AND deadline_at <= %s ORDER BY deadline_at", (iso(now),)).fetchall()
        return [{"flow_run_id": r[0], "key": r[1], "incident_id": r[2], "deadline": r[3]} for r in rows]

    def approvals_waiting(self) -> int:
        with self._tx() as cur:
            return self._exec(cur, "SELECT COUNT(*) FROM approvals WHERE settled_at IS NULL").fetchone()[0]

    # -- leases: which responder holds what, for how long --------------------------------
    def take_lease(self, name: str, holder: str, ttl_seconds: float, steal_from: str | None = None) -> bool:
        """Hold ``name`` for ``ttl_seconds``: True when it was free, expired, already ours, or held by
        ``steal_from`` (a holder known to be dead). One statement decides, so two responders never both win."""
        now = utcnow()
        expires = iso(now + timedelta(seconds=ttl_seconds))
        with self._tx() as cur:
            taken = self._exec(
                cur, "UPDATE leases SET holder = %s, expires_at = %s "
                     "WHERE name = %s AND (holder = %s OR expires_at < %s OR holder = %s)",
                (holder, expires, name, holder, iso(now), steal_from or holder)).rowcount
            if taken:
                return True
            return self._exec(
                cur, "INSERT INTO leases (name, holder, expires_at) VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING",
                (name, holder, expires)).rowcount == 1

    def renew_leases(self, holder: str, ttl_seconds: float) -> int:
        """Extend every lease ``holder`` holds (its heartbeat); returns how many."""
        with self._tx() as cur:
            return self._exec(cur, "UPDATE leases SET expires_at = %s WHERE holder = %s",
                              (iso(utcnow() + timedelta(seconds=ttl_seconds)), holder)).rowcount

    def release_lease(self, name: str, holder: str) -> None:
        with self._tx() as cur:
            self._exec(cur, "DELETE FROM leases WHERE name = %s AND holder = %s", (name, holder))

    def lease(self, name: str) -> tuple[str, datetime] | None:
        """Who holds ``name`` and until when, or None."""
        with self._tx() as cur:
            row = self._exec(cur, "SELECT holder, expires_at FROM leases WHERE name = %s", (name,)).fetchone()
        return (row[0], datetime.fromisoformat(row[1])) if row else None

    # -- actions: each (incident, action, target) once ------------------------------------
    def claim_action(self, key: str, flow_run_id: str, action: str | None = None,
                     limit: tuple[int, datetime] | None = None) -> dict[str, Any] | None:
        """Claim running an action once (``key``: incident, action, target). None when claimed now;
        otherwise the earlier claim: its run, and its status (None while it was never finished).

        ``limit`` = (most, since) is the action's blast radius: when ``most`` claims of ``action``
        (any target, any incident) were made since then, nothing is claimed and ``{"over_limit": n}``
        comes back. Counting and claiming are one transaction under a lock of the action, so three
        incidents claiming at once cannot all pass a limit of two."""
        with self._tx() as cur:
            if limit is not None and action is not None:
                self._lock_group(cur, f"blast-radius:{action}")
                earlier = self._exec(cur, "SELECT 1 FROM action_claims WHERE key = %s", (key,)).fetchone()
                used = self._exec(cur, "SELECT count(*) FROM action_claims WHERE action = %s AND claimed_at >= %s",
                                  (action, iso(limit[1]))).fetchone()[0]
                if earlier is None and used >= limit[0]:
                    return {"over_limit": used}
            claimed = self._exec(
                cur, "INSERT INTO action_claims (key, flow_run_id, claimed_at, action) VALUES (%s, %s, %s, %s) "
                     "ON CONFLICT (key) DO NOTHING", (key, flow_run_id, iso(utcnow()), action)).rowcount
            if claimed:
                return None
            row = self._exec(cur, "SELECT flow_run_id, claimed_at, status FROM action_claims WHERE key = %s",
                             (key,)).fetchone()
        return {"flow_run_id": row[0], "claimed_at": row[1], "status": row[2]}

    def finish_action(self, key: str, status: str) -> None:
        with self._tx() as cur:
            self._exec(cur, "UPDATE action_claims SET status = %s, finished_at = %s WHERE key = %s",
                       (status, iso(utcnow()), key))
