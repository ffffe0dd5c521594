"""What a response run waiting for people needs from the store: its steps' results and its approval deadlines.

A run that asks for approval is suspended (it holds no thread while it waits) and, once answered,
runs again from its first step; each step done before returns its stored result instead of
running again (``core/results.py``). The results live here, in the store every responder shares,
so any responder can carry the run on. Approval deadlines live here too, so the "no" given at a
deadline is given on time by whichever responder is running then, also after a restart.
"""

from __future__ import annotations

import base64
from datetime import datetime
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
