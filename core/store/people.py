"""People who answer: personal tokens (stored as SHA-256 digests, never the token) and the answers
the responder verified before passing them to a waiting run.

An answer reaches a suspended run through Prefect's resume API, which anyone who can reach the
Prefect server can call under any name. So the responder records each answer it verified itself
(a personal token through the intake, a signed Slack request, its own deadline) with a random
nonce, and passes the nonce in the answer; the run checks the nonce here. An answer without a
recorded nonce (the Prefect UI's Resume form, a curl to the API) is "not verified".
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from core.store.audit import Audit
from core.store.base import iso, utcnow


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class People(Audit):
    def add_token(self, name: str) -> str:
        """A new personal token for ``name`` (earlier ones stay valid until revoked); shown once."""
        token = "rsp_" + secrets.token_urlsafe(32)
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO personal_tokens (token_hash, name, created_at) VALUES (%s, %s, %s)",
                       (_digest(token), name, iso(utcnow())))
        return token

    def token_owner(self, token: str) -> str | None:
        with self._tx() as cur:
            row = self._exec(cur, "SELECT name FROM personal_tokens WHERE token_hash = %s AND revoked_at IS NULL",
                             (_digest(token),)).fetchone()
        return row[0] if row else None

    def revoke_tokens(self, name: str) -> int:
        with self._tx() as cur:
            return self._exec(cur, "UPDATE personal_tokens SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL",
                              (iso(utcnow()), name)).rowcount

    def tokens(self) -> list[dict[str, Any]]:
        with self._tx() as cur:
            rows = self._exec(cur, "SELECT name, created_at, revoked_at FROM personal_tokens ORDER BY name, created_at"
                              ).fetchall()
        return [{"name": r[0], "created_at": r[1], "revoked_at": r[2]} for r in rows]

    def record_verified_answer(self, flow_run_id: str, pause_key: str, approver: str, via: str) -> str:
        """Record an answer the responder verified; the nonce to pass with it."""
        nonce = secrets.token_urlsafe(18)
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO verified_answers (nonce, flow_run_id, pause_key, approver, via, at) "
                            "VALUES (%s, %s, %s, %s, %s, %s)", (nonce, flow_run_id, pause_key, approver, via, iso(utcnow())))
        return nonce

    def verified_answer(self, flow_run_id: str, pause_key: str, nonce: str) -> tuple[str, str] | None:
        """(approver, via) when ``nonce`` was recorded for this run's question; None otherwise."""
        with self._tx() as cur:
            row = self._exec(cur, "SELECT approver, via FROM verified_answers WHERE nonce = %s AND flow_run_id = %s "
                                  "AND pause_key = %s", (nonce, flow_run_id, pause_key)).fetchone()
        return (row[0], row[1]) if row else None
