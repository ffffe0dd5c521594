"""The responder's durable store: alert episodes, incidents and the event outbox.

An alert body is answered 2xx only after :meth:`Store.ingest` committed it, in
one transaction: the raw receipt, each alert episode keyed on
(``fingerprint``, ``startsAt``), the incident it belongs to, and the Prefect
events to deliver (the outbox). Delivery happens later and is retried until it
succeeds, so accepting an alert never depends on the Prefect server being up.

SQLite (default, one file) or PostgreSQL (``RESPONDER_DATABASE_URL=postgresql://…``,
needed when responders run on several machines). All SQL is static text with
bound parameters: nothing from an alert is ever spliced into a statement.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from core.alerts import Alert, AlertmanagerPayload
from core.catalog import Catalog


class StoreUnavailable(Exception):
    """The store cannot take writes right now (the intake answers 503)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


SCHEMA = [
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


class Store:
    """One store per process; thread-safe. Use :func:`open_store`."""

    dialect: str

    def __init__(self) -> None:
        self._lock = threading.RLock()

    # -- backend hooks -------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Any]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    def _lock_group(self, cur: Any, group_key: str) -> None:
        """Serialise writers of one Alertmanager group (PostgreSQL only; SQLite has one writer)."""

    def _q(self, sql: str) -> str:
        return sql

    def _exec(self, cur: Any, sql: str, params: tuple = ()) -> Any:
        cur.execute(self._q(sql), params)
        return cur

    # -- schema ----------------------------------------------------------------
    def migrate(self) -> None:
        with self._tx() as cur:
            for statement in SCHEMA:
                self._exec(cur, statement)

    def ping(self) -> None:
        with self._tx() as cur:
            self._exec(cur, "SELECT 1")

    # -- intake ----------------------------------------------------------------
    def ingest(self, payload: AlertmanagerPayload, raw: bytes, catalog: Catalog) -> IngestResult:
        """Store one Alertmanager body and queue its events, all or nothing."""
        now = _iso(utcnow())
        result = IngestResult(receipt_id=str(uuid.uuid4()))
        with self._tx() as cur:
            self._lock_group(cur, payload.groupKey)
            self._exec(
                cur,
                "INSERT INTO receipts (id, received_at, group_key, body) VALUES (%s, %s, %s, %s)",
                (result.receipt_id, now, payload.groupKey, raw.decode("utf-8", "replace")),
            )
            for alert in payload.alerts:
                self._ingest_alert(cur, payload, alert, now, catalog, result)
        return result

    def _ingest_alert(
        self, cur: Any, payload: AlertmanagerPayload, alert: Alert, now: str, catalog: Catalog, result: IngestResult
    ) -> None:
        starts_at = _iso(alert.startsAt)
        row = self._exec(
            cur,
            "SELECT status, incident_id FROM alerts WHERE fingerprint = %s AND starts_at = %s",
            (alert.fingerprint, starts_at),
        ).fetchone()
        runbook = catalog.route(alert.alertname)

        if alert.status == "firing":
            if row is not None:
                result.duplicates += 1
                return
            incident_id = None
            opens = False
            if runbook is not None:
                open_row = self._exec(
                    cur,
                    "SELECT id FROM incidents WHERE group_key = %s AND runbook = %s AND status = 'open'",
                    (payload.groupKey, runbook.name),
                ).fetchone()
                if open_row is None:
                    incident_id = str(uuid.uuid4())
                    opens = True
                    severity = alert.labels.get("severity") or runbook.severity
                    self._exec(
                        cur,
                        "INSERT INTO incidents (id, runbook, group_key, severity, title, status, opened_at) "
                        "VALUES (%s, %s, %s, %s, %s, 'open', %s)",
                        (incident_id, runbook.name, payload.groupKey, severity, alert.summary[:300], now),
                    )
                    result.incidents_opened.append(incident_id)
                    result.runbooks_opened.append(runbook.name)
                else:
                    incident_id = open_row[0]
            self._insert_alert(cur, payload, alert, starts_at, incident_id, now, status="firing")
            if runbook is None:
                result.unrouted += 1
                self._enqueue(cur, "alert.unrouted", _alert_event("responder.alert.unrouted", alert, payload, None, None))
                return
            result.new_firing += 1
            incident = self._incident(cur, incident_id)
            self._enqueue(
                cur,
                "alert.firing",
                _alert_event("responder.alert.firing", alert, payload, incident, runbook.alertnames, opens=opens),
            )
            return

        # resolved
        if row is not None and row[0] == "resolved":
            result.duplicates += 1
            return
        if row is None:
            # Never saw it fire (sent before we existed, or silenced); keep the record only.
            self._insert_alert(cur, payload, alert, starts_at, None, now, status="resolved", resolved_at=now)
            result.resolved += 1
            return
        incident_id = row[1]
        self._exec(
            cur,
            "UPDATE alerts SET status = 'resolved', resolved_at = %s WHERE fingerprint = %s AND starts_at = %s",
            (now, alert.fingerprint, starts_at),
        )
        result.resolved += 1
        if incident_id is None:
            return
        incident = self._incident(cur, incident_id)
        self._enqueue(cur, "alert.resolved", _alert_event("responder.alert.resolved", alert, payload, incident, None))
        still_firing = self._exec(
            cur,
            "SELECT COUNT(*) FROM alerts WHERE incident_id = %s AND status = 'firing'",
            (incident_id,),
        ).fetchone()[0]
        if still_firing == 0 and incident.status == "open":
            self._close(cur, incident, "alerts-resolved", now)
            result.incidents_closed.append(incident_id)

    def _insert_alert(self, cur, payload, alert, starts_at, incident_id, now, status, resolved_at=None) -> None:
        self._exec(
            cur,
            "INSERT INTO alerts (fingerprint, starts_at, alertname, status, labels, annotations, group_key, "
            "incident_id, received_at, resolved_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                alert.fingerprint,
                starts_at,
                alert.alertname,
                status,
                json.dumps(alert.labels, sort_keys=True),
                json.dumps(alert.annotations, sort_keys=True),
                payload.groupKey,
                incident_id,
                now,
                resolved_at,
            ),
        )

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
        incident_id = str(uuid.uuid4())
        with self._tx() as cur:
            self._exec(
                cur,
                "INSERT INTO incidents (id, runbook, group_key, severity, title, status, opened_at) "
                "VALUES (%s, %s, %s, %s, %s, 'open', %s)",
                (incident_id, runbook, f"manual:{flow_run_id}", severity, title[:300], _iso(utcnow())),
            )
            return self._incident(cur, incident_id)

    def claim_incident(self, incident_id: str, flow_run_id: str) -> tuple[bool, Incident]:
        """Record which run responds to an incident. False when another run already does."""
        with self._tx() as cur:
            self._exec(
                cur,
                "UPDATE incidents SET flow_run_id = %s WHERE id = %s AND flow_run_id IS NULL",
                (flow_run_id, incident_id),
            )
            incident = self._incident(cur, incident_id)
        return incident.flow_run_id == flow_run_id, incident

    def close_incident(self, incident_id: str, reason: str) -> bool:
        """Close an open incident (idempotent). Returns True when this call closed it."""
        with self._tx() as cur:
            incident = self._incident(cur, incident_id)
            if incident.status != "open":
                return False
            self._close(cur, incident, reason, _iso(utcnow()))
            return True

    def _close(self, cur: Any, incident: Incident, reason: str, now: str) -> None:
        self._exec(
            cur,
            "UPDATE incidents SET status = 'closed', closed_at = %s, close_reason = %s WHERE id = %s AND status = 'open'",
            (now, reason, incident.id),
        )
        incident.status, incident.closed_at, incident.close_reason = "closed", now, reason
        self._enqueue(cur, "incident.closed", _incident_event("responder.incident.closed", incident))

    def record_event(self, incident_id: str, event: str, payload: dict[str, Any]) -> None:
        """Queue an incident event (escalated, action taken…) for delivery to Prefect."""
        with self._tx() as cur:
            incident = self._incident(cur, incident_id)
            self._enqueue(cur, event, _incident_event(f"responder.incident.{event}", incident, payload))

    # -- loop guard ----------------------------------------------------------------
    def actions_since(self, guard_key: str, since: datetime) -> int:
        with self._tx() as cur:
            return self._exec(
                cur,
                "SELECT COUNT(*) FROM actions_log WHERE guard_key = %s AND at >= %s AND status = 'done'",
                (guard_key, _iso(since)),
            ).fetchone()[0]

    def record_action(self, guard_key: str, incident_id: str | None, status: str) -> None:
        with self._tx() as cur:
            self._exec(
                cur,
                "INSERT INTO actions_log (id, guard_key, incident_id, status, at) VALUES (%s, %s, %s, %s, %s)",
                (str(uuid.uuid4()), guard_key, incident_id, status, _iso(utcnow())),
            )

    # -- timeline, pages, notes ------------------------------------------------------
    def add_timeline(self, incident_id: str, kind: str, text: str, actor: str | None = None) -> None:
        with self._tx() as cur:
            self._exec(
                cur,
                "INSERT INTO timeline (id, incident_id, at, kind, text, actor) VALUES (%s, %s, %s, %s, %s, %s)",
                (str(uuid.uuid4()), incident_id, _iso(utcnow()), kind, text[:2000], actor),
            )

    def timeline(self, incident_id: str) -> list[dict[str, Any]]:
        with self._tx() as cur:
            rows = self._exec(
                cur, "SELECT at, kind, text, actor FROM timeline WHERE incident_id = %s ORDER BY at, id", (incident_id,)
            ).fetchall()
        return [{"at": r[0], "kind": r[1], "text": r[2], "actor": r[3] or ""} for r in rows]

    def record_page(self, incident_id: str, level: int, who: str) -> bool:
        """Claim a page (incident, level). False when it was already sent: each page goes out once."""
        with self._tx() as cur:
            row = self._exec(
                cur, "SELECT 1 FROM pages WHERE incident_id = %s AND level = %s", (incident_id, level)
            ).fetchone()
            if row is not None:
                return False
            self._exec(
                cur,
                "INSERT INTO pages (incident_id, level, sent_at, who) VALUES (%s, %s, %s, %s)",
                (incident_id, level, _iso(utcnow()), who),
            )
            return True

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

    def acknowledge(self, incident_id: str, who: str) -> Incident:
        """Mark an incident acknowledged (idempotent: the first acknowledgement is kept)."""
        with self._tx() as cur:
            incident = self._incident(cur, incident_id)
            if incident.acknowledged_at is None:
                now = _iso(utcnow())
                self._exec(
                    cur,
                    "UPDATE incidents SET acknowledged_at = %s, acknowledged_by = %s WHERE id = %s",
                    (now, who[:200], incident_id),
                )
                incident.acknowledged_at, incident.acknowledged_by = now, who[:200]
                self._enqueue(cur, "incident.acknowledged", _incident_event("responder.incident.acknowledged", incident, {"by": who[:200]}))
            return incident

    # -- outbox ------------------------------------------------------------------
    def _enqueue(self, cur: Any, kind: str, event: dict[str, Any]) -> None:
        seq = self._exec(cur, "SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox").fetchone()[0]
        self._exec(
            cur,
            "INSERT INTO outbox (id, seq, created_at, kind, body) VALUES (%s, %s, %s, %s, %s)",
            (event["id"], seq, event["occurred"], kind, json.dumps(event, default=str)),
        )

    def pending_events(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._tx() as cur:
            rows = self._exec(
                cur, "SELECT body FROM outbox WHERE delivered_at IS NULL ORDER BY seq LIMIT %s", (limit,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def mark_delivered(self, event_ids: list[str]) -> None:
        now = _iso(utcnow())
        with self._tx() as cur:
            for event_id in event_ids:
                self._exec(
                    cur,
                    "UPDATE outbox SET delivered_at = %s, attempts = attempts + 1 WHERE id = %s",
                    (now, event_id),
                )

    def pending_followups(self, limit: int = 100) -> list[dict[str, Any]]:
        """Delivered events whose local follow-up (pages, notifications, artifacts) has not completed."""
        with self._tx() as cur:
            rows = self._exec(
                cur,
                "SELECT body FROM outbox WHERE delivered_at IS NOT NULL AND followed_up_at IS NULL ORDER BY seq LIMIT %s",
                (limit,),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def mark_followed_up(self, event_id: str) -> None:
        with self._tx() as cur:
            self._exec(cur, "UPDATE outbox SET followed_up_at = %s WHERE id = %s", (_iso(utcnow()), event_id))

    def mark_failed(self, event_ids: list[str], error: str) -> None:
        with self._tx() as cur:
            for event_id in event_ids:
                self._exec(
                    cur,
                    "UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s",
                    (error[:500], event_id),
                )

    def outbox_backlog(self) -> int:
        with self._tx() as cur:
            return self._exec(cur, "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0]

    def counts(self) -> dict[tuple[str, str], int]:
        """Incidents by (state, severity); state is open, acknowledged or closed."""
        with self._tx() as cur:
            rows = self._exec(
                cur,
                "SELECT CASE WHEN status = 'open' AND acknowledged_at IS NOT NULL THEN 'acknowledged' ELSE status END, "
                "severity, COUNT(*) FROM incidents GROUP BY 1, 2",
            ).fetchall()
        return {(r[0], r[1]): r[2] for r in rows}

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


class SQLiteStore(Store):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def _q(self, sql: str) -> str:
        return sql.replace("%s", "?")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        try:
            conn = self._conn()
            with self._lock:
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.cursor()
                try:
                    yield cur
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                else:
                    conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._local = threading.local()
        # Bumped when any thread's connection fails: the server may have cut all of them (restart,
        # pg_terminate_backend), so every thread checks its own before the next use.
        self._failures = 0

    def _conn(self):
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is not None and not (conn.closed or conn.broken):
            if (time.monotonic() - getattr(self._local, "used", 0) > 5
                    or getattr(self._local, "failures_seen", 0) != self._failures):
                # An idle connection may have been cut (server restart, admin): check before trusting it.
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error:
                    conn = None
        else:
            conn = None
        if conn is None:
            conn = psycopg.connect(self._url, connect_timeout=5, autocommit=True)
            self._local.conn = conn
        self._local.used = time.monotonic()
        self._local.failures_seen = self._failures
        return conn

    def _lock_group(self, cur: Any, group_key: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (group_key,))

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        import psycopg

        try:
            conn = self._conn()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL store unreachable: {type(exc).__name__}") from exc
        try:
            with conn.transaction():
                with conn.cursor() as cur:
                    # Outbox sequence numbers come from MAX(seq)+1: one writer at a time.
                    cur.execute("SELECT pg_advisory_xact_lock(7301)")
                    yield cur
        except psycopg.OperationalError as exc:
            self._local.conn = None
            self._failures += 1
            try:
                conn.close()
            except psycopg.Error:
                pass
            raise StoreUnavailable(f"PostgreSQL store: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def open_store(database_url: str | None, sqlite_path: Path) -> Store:
    if database_url and database_url.startswith(("postgresql://", "postgres://")):
        store: Store = PostgresStore(database_url)
    elif database_url and database_url.startswith("sqlite:///"):
        store = SQLiteStore(Path(database_url[len("sqlite:///"):]))
    elif database_url:
        raise ValueError("RESPONDER_DATABASE_URL must start with postgresql:// or sqlite:///")
    else:
        store = SQLiteStore(sqlite_path)
    store.migrate()
    return store


# -- events ------------------------------------------------------------------------


def _incident_resource(incident: Incident) -> dict[str, str]:
    return {
        "prefect.resource.id": f"responder.incident.{incident.id}",
        "prefect.resource.name": f"{incident.runbook}: {incident.title}"[:200],
        "responder.runbook": incident.runbook,
        "responder.severity": incident.severity,
    }


def _incident_ref(incident: Incident) -> dict[str, str]:
    return {"id": incident.id, "runbook": incident.runbook, "group_key": incident.group_key, "severity": incident.severity}


def _alert_event(
    name: str,
    alert: Alert,
    payload: AlertmanagerPayload,
    incident: Incident | None,
    route_names: list[str] | None,
    opens: bool = False,
) -> dict[str, Any]:
    if incident is not None:
        resource = _incident_resource(incident)
    else:
        resource = {
            "prefect.resource.id": f"responder.alert.{alert.fingerprint}",
            "prefect.resource.name": alert.alertname,
        }
    resource["responder.alertname"] = alert.alertname
    resource["responder.opens"] = "true" if opens else "false"
    return {
        "id": str(uuid.uuid4()),
        "occurred": _iso(utcnow()),
        "event": name,
        "resource": resource,
        "related": [
            {
                "prefect.resource.id": f"responder.alert.{alert.fingerprint}",
                "prefect.resource.role": "alert",
                "prefect.resource.name": alert.alertname,
            }
        ],
        "payload": {
            "alert": alert.model_dump(mode="json"),
            "incident": _incident_ref(incident) if incident else None,
            "group_key": payload.groupKey,
            "group_labels": payload.groupLabels,
            "external_url": payload.externalURL,
            "truncated_alerts": payload.truncatedAlerts,
        },
    }


def _incident_event(name: str, incident: Incident, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "occurred": _iso(utcnow()),
        "event": name,
        "resource": _incident_resource(incident),
        "related": [],
        "payload": {
            "incident": _incident_ref(incident),
            "status": incident.status,
            "close_reason": incident.close_reason,
            "flow_run_id": incident.flow_run_id,
            **(payload or {}),
        },
    }
