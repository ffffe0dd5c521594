"""PostgreSQL mitigations: cancel or terminate one backend, only while it runs the *same* query
(or, for an idle transaction, only while it is still idle in the *same* transaction).

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

``terminate_idle_transaction`` closes a connection left ``idle in transaction`` (seed 001's leak:
"Transactions not being committed/rolled back"), the rows of
:func:`tasks.probes.postgres.connection_holders`. Its identity is ``backend_start``,
``xact_start`` and ``state_change``: it is ``not_needed`` when the transaction has ended (or
another one began), when the session is no longer idle in it, or when it ran a statement since
it was seen idle (``state_change`` moved: the transaction is in use, not forgotten). The same
refusals apply.

The role needs ``pg_signal_backend`` (or superuser) to signal other roles' backends, and
``pg_monitor`` to see their ``backend_start``; without the latter the action raises
``ResponderError(CONFIG)`` instead of guessing. A superuser's backends can only be signalled by
a superuser; PostgreSQL's refusal is raised as ``ResponderError(REFUSED)``.

Wiring (``params`` straight from a probe row)::

    rows = postgres_probes.long_running_queries(settings.postgres_url, min_minutes=5).evidence["sessions"]
    PlannedAction(action="cancel_backend", target=f"pid {row['pid']}",
                  params={"dsn": settings.postgres_url, "pid": row["pid"],
                          "backend_start": row["backend_start"], "query_start": row["query_start"]})

    row = postgres_probes.connection_holders(settings.postgres_url).evidence["idle_in_transaction"][0]
    params = {k: row[k] for k in ("pid", "backend_start", "xact_start", "state_change")}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
import psycopg.errors

from tasks.base import ActionOutcome, ErrorCode, ResponderError
from tasks.probes.postgres import IDLE_IN_TRANSACTION, Dsn, _connect

Kind = Literal["cancel", "terminate", "terminate_idle"]
Timestamp = str | datetime

_INSPECT_SQL = """
SELECT a.pid, a.backend_type, a.usename, a.datname, a.state,
       a.backend_start, a.query_start, a.xact_start, a.state_change,
       a.pid = pg_backend_pid() AS is_self,
       a.datname IS NOT DISTINCT FROM current_database() AS same_database,
       extract(epoch FROM clock_timestamp() - a.query_start)::float8 AS running_s,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS xact_s,
       extract(epoch FROM clock_timestamp() - a.state_change)::float8 AS idle_s
FROM pg_stat_activity a
WHERE a.pid = %(pid)s
"""

# Each signal statement repeats every check, so it acts only on the row that was inspected.
_SAME_QUERY = """
WHERE pid = %(pid)s AND backend_start = %(backend_start)s AND query_start = %(query_start)s
  AND state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND (%(all)s OR datname = current_database())
"""
_SAME_IDLE_TRANSACTION = """
WHERE pid = %(pid)s AND backend_start = %(backend_start)s AND xact_start = %(xact_start)s
  AND state_change = %(state_change)s AND state IN ('idle in transaction', 'idle in transaction (aborted)')
  AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND (%(all)s OR datname = current_database())
"""

# What "it worked" means: the query stopped running (cancel), the backend exited (terminate).
_QUERY_STILL_RUNNING = """
SELECT count(*) AS n FROM pg_stat_activity
WHERE pid = %(pid)s AND backend_start = %(backend_start)s AND query_start = %(query_start)s AND state = 'active'
"""
_BACKEND_STILL_THERE = """
SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %(pid)s AND backend_start = %(backend_start)s
"""


def _query_changed(row: Mapping[str, Any], params: Mapping[str, Any]) -> str | None:
    if row["query_start"] != params["query_start"]:
        return "the query has finished; the session runs another one now"
    if row["state"] != "active":
        return f"the query has finished; the session is {row['state']}"
    return None


def _transaction_changed(row: Mapping[str, Any], params: Mapping[str, Any]) -> str | None:
    if row["xact_start"] != params["xact_start"]:
        if row["xact_start"] is None:
            return f"the transaction has ended; the session is {row['state']}"
        return "the transaction has ended; the session is in another one now"
    if row["state"] not in IDLE_IN_TRANSACTION:
        return f"the transaction is no longer idle; the session is {row['state']}"
    if row["state_change"] != params["state_change"]:
        return "the transaction ran a statement since it was seen idle: it is in use"
    return None


@dataclass(frozen=True)
class _Signal:
    """One way of signalling a backend: what identifies its target and what success looks like."""

    action: str  # the registered mitigation's name
    verb: str  # for refusals: "refusing to terminate backend ..."
    function: str  # the PostgreSQL function, for the outcome's text
    done: str  # "terminated" backend pid N
    identity: tuple[str, ...]  # timestamps that must still match, besides backend_start
    changed: Callable[[Mapping[str, Any], Mapping[str, Any]], str | None]  # why it is not the same any more
    signal_sql: str
    still_there_sql: str
    gone: str  # what must disappear: "query" or "backend"
    raced: str  # not_needed text when the signal statement matched nothing
    now: str  # the target's state, formatted with the inspected row
    then: str


_QUERY_NOW, _QUERY_THEN = "the query is running {running_s:.1f} s", "the query had been running {running_s:.1f} s"
_SIGNALS: dict[Kind, _Signal] = {
    "cancel": _Signal(
        "cancel_backend", "cancel", "pg_cancel_backend", "cancelled the query of", ("query_start",), _query_changed,
        "SELECT pg_cancel_backend(pid) AS signalled FROM pg_stat_activity" + _SAME_QUERY, _QUERY_STILL_RUNNING,
        "query", "the query ended between the check and the signal", _QUERY_NOW, _QUERY_THEN,
    ),
    "terminate": _Signal(
        "terminate_backend", "terminate", "pg_terminate_backend", "terminated", ("query_start",), _query_changed,
        "SELECT pg_terminate_backend(pid) AS signalled FROM pg_stat_activity" + _SAME_QUERY, _BACKEND_STILL_THERE,
        "backend", "the query ended between the check and the signal", _QUERY_NOW, _QUERY_THEN,
    ),
    "terminate_idle": _Signal(
        "terminate_idle_transaction", "terminate", "pg_terminate_backend", "terminated",
        ("xact_start", "state_change"), _transaction_changed,
        "SELECT pg_terminate_backend(pid) AS signalled FROM pg_stat_activity" + _SAME_IDLE_TRANSACTION,
        _BACKEND_STILL_THERE, "backend", "the transaction moved on between the check and the signal",
        "its transaction is idle for {idle_s:.1f} s (open {xact_s:.1f} s)",
        "its transaction had been idle for {idle_s:.1f} s (open {xact_s:.1f} s)",
    ),
}


def _timestamp(name: str, value: Timestamp) -> datetime:
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
    backend_start: Timestamp,
    identity: Mapping[str, Timestamp],
    dry_run: bool,
    all_databases: bool,
    wait_seconds: float,
) -> ActionOutcome:
    """Check, then signal, on an open autocommit connection (``dict_row`` rows).

    ``identity`` holds the timestamps ``kind`` compares besides ``backend_start``, as the probe
    reported them (``query_start``; or ``xact_start`` and ``state_change``).
    """
    spec = _SIGNALS[kind]
    base = dict(action=spec.action, target=f"backend pid {pid}", dry_run=dry_run)
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ResponderError(ErrorCode.CONFIG, f"{spec.action}: pid must be a positive integer, not {pid!r}")
    if set(identity) != set(spec.identity):
        raise ResponderError(
            ErrorCode.CONFIG, f"{spec.action}: needs {', '.join(spec.identity)}, got {sorted(identity)}")
    params: dict[str, Any] = {
        "pid": pid,
        "backend_start": _timestamp("backend_start", backend_start),
        **{name: _timestamp(name, value) for name, value in identity.items()},
        "all": all_databases,
    }

    row = conn.execute(_INSPECT_SQL, params).fetchone()
    if row is None:
        return ActionOutcome(**base, status="not_needed", detail="the backend has already exited")
    who = f"{row['usename'] or '?'}@{row['datname'] or '?'}"
    base["target"] = f"backend pid {pid} ({who})"
    if row["is_self"]:
        raise ResponderError(
            ErrorCode.REFUSED, f"refusing to {spec.verb} backend {pid}: it is the responder's own connection")
    if row["backend_type"] is None or row["backend_start"] is None:
        raise ResponderError(
            ErrorCode.CONFIG,
            f"cannot see backend {pid}'s session (owned by {row['usename']!r}): grant the responder's role pg_monitor",
        )
    if row["backend_type"] != "client backend":
        raise ResponderError(
            ErrorCode.REFUSED,
            f"refusing to {spec.verb} backend {pid}: it is a {row['backend_type']!r} process, not a client backend",
        )
    if not row["same_database"] and not all_databases:
        raise ResponderError(
            ErrorCode.REFUSED,
            f"refusing to {spec.verb} backend {pid}: it is connected to database {row['datname']!r}, not this one"
            " (pass all_databases=True to allow it)",
        )
    if row["backend_start"] != params["backend_start"]:
        return ActionOutcome(**base, status="not_needed", detail="the pid now belongs to another connection")
    changed = spec.changed(row, params)
    if changed is not None:
        return ActionOutcome(**base, status="not_needed", detail=changed)

    if dry_run:
        detail = f"would call {spec.function}({pid}); {spec.now.format(**row)}"
        return ActionOutcome(**base, status="would_do", detail=detail)

    try:
        signalled = conn.execute(spec.signal_sql, params).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ResponderError(
            ErrorCode.REFUSED, f"PostgreSQL refused {spec.function}({pid}): {exc.diag.message_primary}"
        ) from None
    if signalled is None or not signalled["signalled"]:
        return ActionOutcome(**base, status="not_needed", detail=spec.raced)

    deadline = time.monotonic() + wait_seconds
    while True:
        still = conn.execute(spec.still_there_sql, params).fetchone()
        if still is not None and still["n"] == 0:
            break
        if time.monotonic() >= deadline:
            return ActionOutcome(
                **base,
                status="failed",
                detail=f"{spec.function}({pid}) was sent but the {spec.gone} was still there after {wait_seconds:g} s",
            )
        time.sleep(0.05)
    return ActionOutcome(
        **base,
        status="done",
        detail=f"{spec.done} backend {pid} ({who}); {spec.then.format(**row)}",
        changes=[f"{spec.done} backend pid {pid} ({who})"],
    )


def cancel_backend(
    dsn: Dsn,
    pid: int,
    backend_start: Timestamp,
    query_start: Timestamp,
    dry_run: bool = False,
    all_databases: bool = False,
    wait_seconds: float = 5.0,
) -> ActionOutcome:
    """``pg_cancel_backend``: end one long-running query, keep its connection (try this first)."""
    with _connect(dsn) as conn:
        return _signal(conn, "cancel", pid, backend_start, {"query_start": query_start},
                       dry_run, all_databases, wait_seconds)


def terminate_backend(
    dsn: Dsn,
    pid: int,
    backend_start: Timestamp,
    query_start: Timestamp,
    dry_run: bool = False,
    all_databases: bool = False,
    wait_seconds: float = 5.0,
) -> ActionOutcome:
    """``pg_terminate_backend``: close the connection running one long-running query (seed 001)."""
    with _connect(dsn) as conn:
        return _signal(conn, "terminate", pid, backend_start, {"query_start": query_start},
                       dry_run, all_databases, wait_seconds)


def terminate_idle_transaction(
    dsn: Dsn,
    pid: int,
    backend_start: Timestamp,
    xact_start: Timestamp,
    state_change: Timestamp,
    dry_run: bool = False,
    all_databases: bool = False,
    wait_seconds: float = 5.0,
) -> ActionOutcome:
    """``pg_terminate_backend``: close one connection left idle in the *same* transaction (seed 001 leak).

    Its open transaction is rolled back and its connection slot freed.
    """
    with _connect(dsn) as conn:
        return _signal(conn, "terminate_idle", pid, backend_start,
                       {"xact_start": xact_start, "state_change": state_change},
                       dry_run, all_databases, wait_seconds)
