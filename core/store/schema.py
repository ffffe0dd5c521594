"""The store's schema: numbered, forward-only migrations, applied when a store is opened.

``schema_version`` holds one row per applied migration. A store written before versioning
(the tables without ``schema_version``) is version 0: migration 1 is exactly that layout, written
with ``IF NOT EXISTS``, so it applies to such a store without touching its rows. A store whose
version is newer than this code knows is refused with :class:`SchemaError` before anything is
written. All migrations run in one transaction (PostgreSQL: under the store's advisory lock, so
several responders starting at once migrate once).

Add a migration by appending to ``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from core.store.base import StoreBase, iso, utcnow


class SchemaError(Exception):
    """The store's schema cannot be used by this code (it is newer); nothing was changed."""


LAYOUT_1 = [
    """CREATE TABLE IF NOT EXISTS receipts (
        id TEXT PRIMARY KEY,
        received_at TEXT NOT NULL,
        group_key TEXT NOT NULL,
        body TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS incidents (
        id TEXT PRIMARY KEY,
        runbook TEXT NOT NULL,
        group_key TEXT NOT NULL,
        severity TEXT NOT NULL,
        title TEXT NOT NULL,
        status TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        closed_at TEXT,
        close_reason TEXT,
        flow_run_id TEXT,
        acknowledged_at TEXT,
        acknowledged_by TEXT
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open_per_group
        ON incidents (group_key, runbook) WHERE status = 'open'""",
    """CREATE TABLE IF NOT EXISTS alerts (
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        alertname TEXT NOT NULL,
        status TEXT NOT NULL,
        labels TEXT NOT NULL,
        annotations TEXT NOT NULL,
        group_key TEXT NOT NULL,
        incident_id TEXT,
        received_at TEXT NOT NULL,
        resolved_at TEXT,
        PRIMARY KEY (fingerprint, starts_at)
    )""",
    "CREATE INDEX IF NOT EXISTS alerts_by_incident ON alerts (incident_id)",
    """CREATE TABLE IF NOT EXISTS outbox (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        delivered_at TEXT,
        followed_up_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (delivered_at, seq)",
    """CREATE TABLE IF NOT EXISTS actions_log (
        id TEXT PRIMARY KEY,
        guard_key TEXT NOT NULL,
        incident_id TEXT,
        status TEXT NOT NULL,
        at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS actions_by_key ON actions_log (guard_key, at)",
    """CREATE TABLE IF NOT EXISTS timeline (
        id TEXT PRIMARY KEY,
        incident_id TEXT NOT NULL,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        text TEXT NOT NULL,
        actor TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS timeline_by_incident ON timeline (incident_id, at)",
    """CREATE TABLE IF NOT EXISTS pages (
        incident_id TEXT NOT NULL,
        level INTEGER NOT NULL,
        sent_at TEXT NOT NULL,
        who TEXT NOT NULL,
        PRIMARY KEY (incident_id, level)
    )""",
    """CREATE TABLE IF NOT EXISTS notes (
        incident_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (incident_id, key)
    )""",
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
]


def _outbox_records(store: StoreBase, cur: Any) -> None:
    """Layout 1 kept Prefect's wire format in the outbox; from 2 it keeps the responder's own event
    records. Each old row keeps its Prefect event as sent (``prefect_event``: delivered unchanged,
    same id) and gains what the follow-ups read (``kind``, ``incident``, ``opens``)."""
    rows = store._exec(cur, "SELECT id, kind, body FROM outbox").fetchall()
    for row_id, kind, body in rows:
        old = json.loads(body)
        if "event" not in old or "kind" in old:
            continue
        name = old["event"].removeprefix("responder.")
        record = {
            "id": old["id"],
            "occurred": old["occurred"],
            "kind": name,
            "incident": (old.get("payload") or {}).get("incident"),
            "opens": (old.get("resource") or {}).get("responder.opens") == "true",
            "prefect_event": old,
        }
        store._exec(cur, "UPDATE outbox SET kind = %s, body = %s WHERE id = %s", (name, json.dumps(record), row_id))


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: list[str]
    then: Callable[[StoreBase, Any], None] | None = None


MIGRATIONS = [
    Migration(1, "receipts, incidents, alert episodes, outbox, loop guard, timeline, pages, notes", LAYOUT_1),
    Migration(2, "the outbox keeps the responder's event records, not Prefect's wire format", [], _outbox_records),
    # Each event takes MAX(seq) + 1: without this index that read scans the outbox (17 ms at 200,000 rows,
    # growing with it), so the intake slowed down as the store aged.
    Migration(3, "index the outbox's sequence", ["CREATE INDEX IF NOT EXISTS outbox_by_seq ON outbox (seq)"]),
    # The pager reads the open, unacknowledged incidents every second; closed ones pile up for months.
    Migration(4, "index open incidents", ["CREATE INDEX IF NOT EXISTS incidents_open ON incidents (status, acknowledged_at)"]),
    Migration(5, "step results of suspended runs, approval deadlines", [
        """CREATE TABLE IF NOT EXISTS step_results (
            key TEXT PRIMARY KEY,
            content TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS step_results_by_age ON step_results (created_at)",
        """CREATE TABLE IF NOT EXISTS approvals (
            flow_run_id TEXT NOT NULL,
            pause_key TEXT NOT NULL,
            incident_id TEXT,
            asked_at TEXT NOT NULL,
            deadline_at TEXT NOT NULL,
            settled_at TEXT,
            settled TEXT,
            PRIMARY KEY (flow_run_id, pause_key)
        )""",
        "CREATE INDEX IF NOT EXISTS approvals_open ON approvals (settled_at, deadline_at)",
    ]),
    Migration(6, "leases of runs and delivery, action claims (several responders on one store)", [
        """CREATE TABLE IF NOT EXISTS leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS leases_by_holder ON leases (holder)",
        """CREATE TABLE IF NOT EXISTS action_claims (
            key TEXT PRIMARY KEY,
            flow_run_id TEXT NOT NULL,
            claimed_at TEXT NOT NULL,
            finished_at TEXT,
            status TEXT
        )""",
    ]),
    # The dead man's switch: when Alertmanager's Watchdog alert last arrived, and the start of the
    # "not sending" alert the responder raised for its silence (NULL when none is open).
    Migration(7, "heartbeats (Alertmanager's Watchdog)", [
        """CREATE TABLE IF NOT EXISTS heartbeats (
            name TEXT PRIMARY KEY,
            last_seen TEXT NOT NULL,
            reported_since TEXT
        )""",
    ]),
    Migration(8, "maintenance windows and the incidents they held; the action of each claim (blast radius)", [
        """CREATE TABLE IF NOT EXISTS maintenance_windows (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            service TEXT,
            runbook TEXT,
            matchers TEXT NOT NULL,
            starts_at TEXT NOT NULL,
            ends_at TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            ended_at TEXT,
            ended_by TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS maintenance_by_end ON maintenance_windows (ends_at)",
        """CREATE TABLE IF NOT EXISTS maintenance_holds (
            window_id TEXT NOT NULL,
            incident_id TEXT NOT NULL,
            window_ends_at TEXT NOT NULL,
            held_at TEXT NOT NULL,
            released_at TEXT,
            PRIMARY KEY (window_id, incident_id)
        )""",
        "ALTER TABLE action_claims ADD COLUMN action TEXT",
        "CREATE INDEX IF NOT EXISTS action_claims_by_action ON action_claims (action, claimed_at)",
    ]),
    Migration(9, "personal tokens (stored hashed) and the answers the responder verified", [
        """CREATE TABLE IF NOT EXISTS personal_tokens (
            token_hash TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS personal_tokens_by_name ON personal_tokens (name)",
        """CREATE TABLE IF NOT EXISTS verified_answers (
            nonce TEXT PRIMARY KEY,
            flow_run_id TEXT NOT NULL,
            pause_key TEXT NOT NULL,
            approver TEXT NOT NULL,
            via TEXT NOT NULL,
            at TEXT NOT NULL
        )""",
    ]),
    # Every message to a person goes through this table: written with the step that caused it, sent
    # later by the courier (core/courier.py), retried through outages and restarts, in order per incident.
    Migration(10, "the notification outbox: each message per channel, its delivery and how late it was", [
        """CREATE TABLE IF NOT EXISTS messages (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            incident_id TEXT,
            channel TEXT NOT NULL,
            target TEXT NOT NULL,
            kind TEXT NOT NULL,
            person TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            next_attempt_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            state TEXT NOT NULL,
            outcome TEXT,
            done_at TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS messages_waiting ON messages (state, seq)",
        "CREATE INDEX IF NOT EXISTS messages_by_incident ON messages (incident_id, seq)",
        "CREATE INDEX IF NOT EXISTS messages_recent ON messages (channel, kind, created_at)",
    ]),
    # The follow-up pass (``Outbox.pending_followups``) read the delivered events not yet followed up
    # through the delivery index, so it scanned every delivered row the outbox keeps (until retention),
    # on every pass: 7.6 % of the responder's samples in py-spy at about 1,800 single-alert posts/s.
    # This index holds only the rows that wait for a follow-up; a row leaves it when it is marked.
    Migration(11, "index the delivered events that wait for a follow-up", [
        "CREATE INDEX IF NOT EXISTS outbox_awaiting_follow_up ON outbox (seq) "
        "WHERE delivered_at IS NOT NULL AND followed_up_at IS NULL",
    ]),
]
LATEST_VERSION = MIGRATIONS[-1].version

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""


def current_version(store: StoreBase, cur: Any) -> int:
    if "schema_version" not in store._tables(cur):
        return 0  # new, or written before versioning (layout 1, which migration 1 leaves as it is)
    return store._exec(cur, "SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]


def migrate(store: StoreBase, where: str) -> int:
    """Bring the store to :data:`LATEST_VERSION`; returns the version it had."""
    with store._tx() as cur:
        found = current_version(store, cur)
        if found > LATEST_VERSION:
            raise SchemaError(
                f"{where} has schema version {found}, newer than this responder knows ({LATEST_VERSION}): "
                "it was written by a newer release. Run that release, or point RESPONDER_DATABASE_URL at another "
                "store. Nothing was changed."
            )
        if found == LATEST_VERSION:
            return found
        store._exec(cur, VERSION_TABLE)
        for migration in MIGRATIONS:
            if migration.version <= found:
                continue
            for statement in migration.statements:
                store._exec(cur, statement)
            if migration.then is not None:
                migration.then(store, cur)
            store._exec(cur, "INSERT INTO schema_version (version, description, applied_at) VALUES (%s, %s, %s)",
                        (migration.version, migration.description, iso(utcnow())))
        return found
