"""PostgreSQL mitigations: cancel or terminate one backend, only while it runs the *same* query.

Seed 001, ``database_connections`` step 2, "Kill Long-Running Queries if Safe"::

    SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE pid = [PID_HERE] AND datname = current_database();   -- ⚠️ Only kill if safe to do so

"Safe" is made concrete here. A pid alone is not enough: by the time a human approves, the
query may have finished and the pid may run another query, or belong to a new connection. So
each action takes the ``pid``, ``backend_start`` and ``query_start`` exactly as
:func:`tasks.probes.postgres.long_running_queries` reported them and, right before acting:

* refuses (``ResponderError(REFUSED)``) the responder's own backend, every backend that is not a
  ``client backend`` (walsenders, autovacuum, background and parallel workers, logical
  replication workers, ...) and, unless ``all_databases=True``, sessions of another database
  (the seed's ``datname = current_database()``);
* returns ``not_needed`` when the backend is gone, is a different connection
  (``backend_start`` changed), runs a different query (``query_start`` changed) or is no longer
  ``active``;
* then signals with one statement that repeats every condition, so the window between the
  check and the signal is one statement, not a round trip. PostgreSQL offers nothing tighter:
  a cancel that lands as the query ends in that instant is the residual risk.

``cancel_backend`` (``pg_cancel_backend``) ends the query and keeps the connection: try it
first. ``terminate_backend`` (``pg_terminate_backend``) closes the connection. Both are risky.
After signalling, each waits up to ``wait_seconds`` to see the effect and reports ``failed`` if
the query (or backend) is still there.

The role needs ``pg_signal_backend`` (or superuser) to signal other roles' backends, and
``pg_monitor`` to see their ``backend_start``; without the latter the action raises
``ResponderError(CONFIG)`` instead of guessing. A superuser's backends can only be signalled by
a superuser; PostgreSQL's refusal is raised as ``ResponderError(REFUSED)``.

Wiring (``params`` straight from a probe row)::

    rows = postgres_probes.long_running_queries(settings.postgres_url, min_minutes=5).evidence["sessions"]
    PlannedAction(action="cancel_backend", risk=Risk.RISKY, target=f"pid {row['pid']}",
                  params={"dsn": settings.postgres_url, "pid": row["pid"],
                          "backend_start": row["backend_start"], "query_start": row["query_start"]})
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

import psycopg
import psycopg.errors

from tasks.base import ActionOutcome, ErrorCode, ResponderError, Risk
from tasks.probes.postgres import Dsn, _connect

Kind = Literal["cancel", "terminate"]

_INSPECT_SQL = """
SELECT a.pid, a.backend_type, a.usename, a.datname, a.state, a.backend_start, a.query_start,
       a.pid = pg_backend_pid() AS is_self,
       a.datname IS NOT DISTINCT FROM current_database() AS same_database,
       extract(epoch FROM clock_timestamp() - a.query_start)::float8 AS running_s
FROM pg_stat_activity a
WHERE a.pid = %(pid)s
"""

# Each signal statement repeats every check, so it acts only on the row that was inspected.
_SIGNAL_SQL: dict[Kind, str] = {
    "cancel": """
SELECT pg_cancel_backend(pid) AS signalled FROM pg_stat_activity
WHERE pid = %(pid)s AND backend_start = %(backend_start)s AND query_start = %(query_start)s
  AND state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND (%(all)s OR datname = current_database())
""",
    "terminate": """
SELECT pg_terminate_backend(pid) AS signalled FROM pg_stat_activity
WHERE pid = %(pid)s AND backend_start = %(backend_start)s AND query_start = %(query_start)s
  AND state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND (%(all)s OR datname = current_database())
""",
}

# What "it worked" means: the query stopped running (cancel), the backend exited (terminate).
_STILL_THERE_SQL: dict[Kind, str] = {
    "cancel": """
SELECT count(*) AS n FROM pg_stat_activity
WHERE pid = %(pid)s AND backend_start = %(backend_start)s AND query_start = %(query_start)s AND state = 'active'
""",
    "terminate": """
SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %(pid)s AND backend_start = %(backend_start)s
""",
}

_FUNCTION = {"cancel": "pg_cancel_backend", "terminate": "pg_terminate_backend"}
_DONE = {"cancel": "cancelled the query of", "terminate": "terminated"}


def _timestamp(name: str, value: str | datetime) -> datetime:
    """A probe's ISO timestamp (or a datetime) as an aware datetime; compared as instants."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise ResponderError(
                ErrorCode.CONFIG, f"{name} must be an ISO timestamp as the probe reports it, not {value!r}"
            ) from None
    if parsed.tzinfo is None:
        raise ResponderError(ErrorCode.CONFIG, f"{name} {value!r} has no time zone; pass it as the probe reports it")
    return parsed


def _signal(
    conn: psycopg.Connection[Any],
    kind: Kind,
    pid: int,
    backend_start: str | datetime,
    query_start: str | datetime,
    dry_run: bool,
    all_databases: bool,
    wait_seconds: float,
) -> ActionOutcome:
    """Check, then cancel or terminate, on an open autocommit connection (``dict_row`` rows)."""
    action = f"{kind}_backend"
    base = dict(action=action, target=f"backend pid {pid}", risk=Risk.RISKY, dry_run=dry_run)
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ResponderError(ErrorCode.CONFIG, f"{action}: pid must be a positive integer, not {pid!r}")
    params = {
        "pid": pid,
        "backend_start": _timestamp("backend_start", backend_start),
        "query_start": _timestamp("query_start", query_start),
        "all": all_databases,
    }

    row = conn.execute(_INSPECT_SQL, params).fetchone()
    if row is None:
        return ActionOutcome(**base, status="not_needed", detail="the backend has already exited")
    who = f"{row['usename'] or '?'}@{row['datname'] or '?'}"
    base["target"] = f"backend pid {pid} ({who})"
    if row["is_self"]:
        raise ResponderError(ErrorCode.REFUSED, f"refusing to {kind} backend {pid}: it is the responder's own connection")
    if row["backend_type"] is None or row["backend_start"] is None:
        raise ResponderError(
            ErrorCode.CONFIG,
            f"cannot see backend {pid}'s session (owned by {row['usename']!r}): grant the responder's role pg_monitor",
        )
    if row["backend_type"] != "client backend":
        raise ResponderError(
            ErrorCode.REFUSED,
            f"refusing to {kind} backend {pid}: it is a {row['backend_type']!r} process, not a client backend",
        )
    if not row["same_database"] and not all_databases:
        raise ResponderError(
            ErrorCode.REFUSED,
            f"refusing to {kind} backend {pid}: it is connected to database {row['datname']!r}, not this one"
            " (pass all_databases=True to allow it)",
        )
    if row["backend_start"] != params["backend_start"]:
        return ActionOutcome(**base, status="not_needed", detail="the pid now belongs to another connection")
    if row["query_start"] != params["query_start"]:
        return ActionOutcome(**base, status="not_needed", detail="the query has finished; the session runs another one now")
    if row["state"] != "active":
        return ActionOutcome(**base, status="not_needed", detail=f"the query has finished; the session is {row['state']}")

    running = f"running {row['running_s']:.1f} s"
    if dry_run:
        detail = f"would call {_FUNCTION[kind]}({pid}); the query is {running}"
        return ActionOutcome(**base, status="would_do", detail=detail)

    try:
        signalled = conn.execute(_SIGNAL_SQL[kind], params).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ResponderError(
            ErrorCode.REFUSED, f"PostgreSQL refused {_FUNCTION[kind]}({pid}): {exc.diag.message_primary}"
        ) from None
    if signalled is None or not signalled["signalled"]:
        return ActionOutcome(**base, status="not_needed", detail="the query ended between the check and the signal")

    deadline = time.monotonic() + wait_seconds
    while True:
        still = conn.execute(_STILL_THERE_SQL[kind], params).fetchone()
        if still is not None and still["n"] == 0:
            break
        if time.monotonic() >= deadline:
            return ActionOutcome(
                **base,
                status="failed",
                detail=f"{_FUNCTION[kind]}({pid}) was sent but the {'query' if kind == 'cancel' else 'backend'}"
                f" was still there after {wait_seconds:g} s",
            )
        time.sleep(0.05)
    return ActionOutcome(
        **base,
        status="done",
        detail=f"{_DONE[kind]} backend {pid} ({who}); the query had been {running}",
        changes=[f"{_DONE[kind]} backend pid {pid} ({who})"],
    )


def cancel_backend(
    dsn: Dsn,
    pid: int,
    backend_start: str | datetime,
    query_start: str | datetime,
    dry_run: bool = False,
    all_databases: bool = False,
    wait_seconds: float = 5.0,
) -> ActionOutcome:
    """``pg_cancel_backend``: end one long-running query, keep its connection (try this first)."""
    with _connect(dsn) as conn:
        return _signal(conn, "cancel", pid, backend_start, query_start, dry_run, all_databases, wait_seconds)


def terminate_backend(
    dsn: Dsn,
    pid: int,
    backend_start: str | datetime,
    query_start: str | datetime,
    dry_run: bool = False,
    all_databases: bool = False,
    wait_seconds: float = 5.0,
) -> ActionOutcome:
    """``pg_terminate_backend``: close the connection running one long-running query (seed 001)."""
    with _connect(dsn) as conn:
        return _signal(conn, "terminate", pid, backend_start, query_start, dry_run, all_databases, wait_seconds)
