"""The notification outbox: every message to people, one row per channel, until it is delivered.

:class:`core.notify.Notifier` writes the rows (the step that decided to tell someone commits them
and goes on); the courier (``core/courier.py``) sends them, oldest first and in order per incident
and channel, retries through outages and restarts, and records here when each was delivered, how
late, or why it was not (too old to matter, refused, rolled into a storm message).

States: ``waiting`` (to send; ``next_attempt_at`` says when), ``sent``, ``rolled`` (delivered as
part of another message, or quiet during a storm: ``outcome`` says which), ``dropped`` (too old to
matter) and ``refused`` (the channel answered that it never will take it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.jsontext import from_json, to_json
from core.store.base import iso, new_id, utcnow
from core.store.people import People

COLUMNS = ("id, seq, incident_id, channel, target, kind, person, body, created_at, expires_at, next_attempt_at, "
           "attempts, last_error, state, outcome, done_at")


@dataclass(frozen=True)
class Message:
    id: str
    seq: int
    incident_id: str | None
    channel: str  # slack | discord | pagerduty | webhook
    target: str  # slack: the channel of a new thread; webhook: its URL's digest; else ""
    kind: str  # opened, action, page, escalated, … ; page-rollup and storm for the courier's own
    person: str  # the paged person's name (pages and their roll-ups), else ""
    body: dict[str, Any]
    created_at: str
    expires_at: str | None  # None: never too old (pages)
    next_attempt_at: str
    attempts: int
    last_error: str | None
    state: str
    outcome: str | None
    done_at: str | None

    @property
    def lane(self) -> tuple[str, str, str]:
        """Messages of one lane go out one at a time, in order: an incident's Slack thread starts with its
        first message, and a webhook receiver sees an incident's events in the order they happened."""
        return self.channel, self.target if self.channel == "webhook" else "", self.incident_id or self.id


def _message(row: tuple) -> Message:
    return Message(*row[:7], from_json(row[7]), *row[8:])  # type: ignore[arg-type]


def new_message(incident_id: str | None, channel: str, target: str, kind: str, body: dict[str, Any],
                person: str = "", expires_at: datetime | None = None) -> dict[str, Any]:
    now = iso(utcnow())
    return {"id": new_id(), "incident_id": incident_id, "channel": channel, "target": target, "kind": kind,
            "person": person, "body": body, "created_at": now, "next_attempt_at": now,
            "expires_at": iso(expires_at) if expires_at else None}


class Messages(People):
    def enqueue_messages(self, rows: list[dict[str, Any]]) -> None:
        """Write messages (rows of :func:`new_message`) in one transaction, in the order given."""
        if rows:
            with self._tx() as cur:
                self._enqueue_messages(cur, rows)

    def waiting_messages(self, limit: int = 2000) -> list[Message]:
        with self._tx() as cur:
            rows = self._exec(cur, f"SELECT {COLUMNS} FROM messages WHERE state = 'waiting' ORDER BY seq LIMIT %s",
                              (limit,)).fetchall()
        return [_message(r) for r in rows]

    def messages(self, incident_id: str) -> list[Message]:
        """An incident's messages, every state, in the order they were written."""
        with self._tx() as cur:
            rows = self._exec(cur, f"SELECT {COLUMNS} FROM messages WHERE incident_id = %s ORDER BY seq",
                              (incident_id,)).fetchall()
        return [_message(r) for r in rows]

    def message(self, message_id: str) -> Message | None:
        with self._tx() as cur:
            row = self._exec(cur, f"SELECT {COLUMNS} FROM messages WHERE id = %s", (message_id,)).fetchone()
        return _message(row) if row else None

    def finish_message(self, message_id: str, state: str, outcome: str, body: dict[str, Any] | None = None) -> None:
        """Settle one message (sent, dropped, refused, rolled), optionally rewriting its body."""
        with self._tx() as cur:
            self._exec(cur, "UPDATE messages SET state = %s, outcome = %s, done_at = %s, body = COALESCE(%s, body) "
                       "WHERE id = %s AND state = 'waiting'",
                       (state, outcome[:500], iso(utcnow()), to_json(body) if body is not None else None, message_id))

    def retry_message(self, message_id: str, next_attempt_at: datetime, error: str,
                      body: dict[str, Any] | None = None) -> None:
        with self._tx() as cur:
            self._exec(cur, "UPDATE messages SET attempts = attempts + 1, last_error = %s, next_attempt_at = %s, "
                       "body = COALESCE(%s, body) WHERE id = %s AND state = 'waiting'",
                       (error[:500], iso(next_attempt_at), to_json(body) if body is not None else None, message_id))

    def roll_up(self, message_ids: list[str], rollup: dict[str, Any]) -> None:
        """Replace waiting messages by one that carries them all (a :func:`new_message` row), in one transaction:
        the originals are ``rolled`` into it, and it is delivered like any message."""
        with self._tx() as cur:
            self._enqueue_messages(cur, [rollup])
            for message_id in message_ids:
                self._exec(cur, "UPDATE messages SET state = 'rolled', outcome = %s, done_at = %s "
                           "WHERE id = %s AND state = 'waiting'",
                           (f"rolled into {rollup['kind']} {rollup['id']}", iso(utcnow()), message_id))

    def count_written(self, channel: str, kind: str, target: str, since: datetime) -> int:
        """Messages of ``kind`` for ``channel`` and ``target`` written since ``since``, whatever became of them."""
        with self._tx() as cur:
            return self._exec(cur, "SELECT COUNT(*) FROM messages WHERE channel = %s AND kind = %s AND target = %s "
                              "AND created_at >= %s", (channel, kind, target, iso(since))).fetchone()[0]
