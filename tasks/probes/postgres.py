"""PostgreSQL probes (psycopg 3) for the database steps of the seed runbooks.

Every probe opens one short autocommit connection with ``connect_timeout`` and a
``statement_timeout``, runs static SQL with bound parameters, and closes it. Nothing taken from
an alert is ever spliced into SQL text.

Defaults quote the seeds:

* ``readiness``: ``pg_isready`` / ``SELECT 1`` (seeds 000, 003 DatabaseConnectionFailure).
* ``connections``: ``database_connections`` "Connection pool usage exceeds 80%" (seed 001).
* ``connection_holders``: who holds them: sessions grouped by ``application_name``, user,
  client address and state, the oldest sessions, and the sessions idle in a transaction (seed
  001's leak "Transactions not being committed/rolled back"), with the ``backend_start``,
  ``xact_start`` and ``state_change`` a later terminate action re-checks.
* ``long_running_queries``: "(now() - query_start) > interval '5 minutes' AND state = 'active'"
  (seed 001). Each row carries ``pid``, ``backend_start`` and ``query_start``, so a later
  cancel/terminate action can re-check it is still the *same* query before acting.
* ``long_transactions``: "(now() - xact_start) > interval '1 minute'" (seed 001).
* ``lock_waits``: "connections waiting on locks: wait_event_type = 'Lock'" (seed 001), with
  the blocking pids.
* ``slow_statements``: DATABASE_SLOW_QUERIES "mean_time > 1000" from ``pg_stat_statements``
  (seeds 000, 001). Needs the extension created *and* loaded through
  ``shared_preload_libraries``; when either is missing the probe says so in its evidence and
  returns ``ok=True`` with no value rather than failing.
* ``database_sizes`` / ``largest_tables``: "Check Database Size" (seeds 001, 003).

The role used should have ``pg_monitor`` (or be a superuser): without it PostgreSQL hides the
``state`` and ``query`` of other roles' sessions and the probes undercount.

Wiring (the secret comes from settings as a ``SecretStr``)::

    postgres.long_running_queries(settings.postgres_url, min_minutes=5)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from pydantic import SecretStr

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.probes import IDS_PER_GROUP, clip, groups_summary, human_bytes, id_list, label, redact, reveal

QUERY_TEXT_LIMIT = 500
APPLICATION_NAME = "runbook-responder"

Dsn = SecretStr | str


def _parse(dsn: Dsn) -> tuple[str, dict[str, Any]]:
    """The one place the connection secret is unwrapped (for ``_connect`` and ``_target``)."""
    conninfo = reveal(dsn)
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        # "from None": libpq's parse error can quote the string, password included.
        raise ResponderError(ErrorCode.CONFIG, "PostgreSQL connection string cannot be parsed") from None
    return conninfo, params


def _target(dsn: Dsn) -> dict[str, Any]:
    """Where a probe connects, without the password, for evidence."""
    _, params = _parse(dsn)
    return {k: params.get(k) for k in ("host", "port", "dbname", "user")}


@contextmanager
def _connect(
    dsn: Dsn, connect_timeout_s: int = 5, statement_timeout_ms: int = 10_000
) -> Iterator[psycopg.Connection[DictRow]]:
    """Open an autocommit connection with timeouts; close it on exit.

    A connection error whose text would echo the connection string or password is re-raised
    with those removed, because Prefect logs the message of the exception that fails a task.
    """
    conninfo, params = _parse(dsn)
    try:
        conn = psycopg.connect(
            conninfo,
            connect_timeout=connect_timeout_s,
            autocommit=True,
            application_name=APPLICATION_NAME,
            row_factory=dict_row,
        )
    except psycopg.OperationalError as exc:
        text = str(exc).strip()
        scrubbed = redact(text, conninfo, params.get("password"))
        if scrubbed != text:
            raise psycopg.OperationalError(scrubbed) from None
        raise
    with conn:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", [str(statement_timeout_ms)])
        yield conn


def readiness(dsn: Dsn, connect_timeout_s: int = 5) -> ProbeResult:
    """Can we connect and run a query? Like ``pg_isready`` plus ``SELECT 1``.

    Unreachable is this probe's answer, not an error: it returns ``ok=False`` with the
    (password-free) error text in ``evidence["error"]``.
    """
    target = _target(dsn)
    started = time.perf_counter()
    try:
        with _connect(dsn, connect_timeout_s=connect_timeout_s) as conn:
            row = conn.execute(
                "SELECT current_setting('server_version') AS server_version,"
                " pg_is_in_recovery() AS in_recovery, current_database() AS dbname"
            ).fetchone()
    except psycopg.OperationalError as exc:
        return ProbeResult(
            probe="pg_readiness",
            ok=False,
            summary="PostgreSQL unreachable",
            evidence={"target": target, "error_type": type(exc).__name__, "error": clip(str(exc).strip(), 500)},
        )
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    assert row is not None
    return ProbeResult(
        probe="pg_readiness",
        ok=True,
        value=latency_ms,
        unit="ms",
        summary=f"PostgreSQL {row['server_version']} answering"
        + (" (standby)" if row["in_recovery"] else ""),
        evidence={"target": target, **row},
    )


def connections(dsn: Dsn, threshold: float = 0.8) -> ProbeResult:
    """Client connections as a share of ``max_connections``, with counts by state and database.

    Not ok above ``threshold`` (seed 001: 80 % warning, 95 % critical). The probe's own
    connection is not counted. ``waiting_on_locks`` counts sessions with
    ``wait_event_type = 'Lock'``.
    """
    with _connect(dsn) as conn:
        settings = conn.execute(
            "SELECT current_setting('max_connections')::int AS max_connections,"
            " current_setting('superuser_reserved_connections')::int AS superuser_reserved"
        ).fetchone()
        rows = conn.execute(
            "SELECT coalesce(state, 'unknown') AS state, coalesce(datname, '') AS datname,"
            " count(*) AS n, count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting"
            " FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " GROUP BY 1, 2"
        ).fetchall()
    assert settings is not None
    by_state: dict[str, int] = {}
    by_database: dict[str, int] = {}
    for row in rows:
        by_state[row["state"]] = by_state.get(row["state"], 0) + row["n"]
        by_database[row["datname"]] = by_database.get(row["datname"], 0) + row["n"]
    total = sum(by_state.values())
    ratio = total / settings["max_connections"]
    return ProbeResult(
        probe="pg_connections",
        ok=ratio <= threshold,
        value=round(ratio, 6),
        threshold=threshold,
        summary=f"{total} of {settings['max_connections']} connections in use",
        evidence={
            **settings,
            "total": total,
            "by_state": by_state,
            "by_database": by_database,
            "waiting_on_locks": sum(row["waiting"] for row in rows),
        },
    )


_SESSION_COLUMNS = """
    pid, usename, datname, state, application_name, client_addr::text AS client_addr,
    backend_start, xact_start, query_start, wait_event_type, wait_event,
    left(query, %(qlen)s) AS query, length(query) > %(qlen)s AS query_truncated
"""

_LONG_QUERIES_SQL = f"""
SELECT {_SESSION_COLUMNS},
       extract(epoch FROM clock_timestamp() - query_start)::float8 AS duration_s
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()
  AND query_start < clock_timestamp() - make_interval(secs => %(secs)s)
  AND (%(all)s OR datname = current_database())
ORDER BY query_start
LIMIT %(limit)s
"""

_LONGEST_QUERY_SQL = """
SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)::float8 AS longest
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()
  AND (%(all)s OR datname = current_database())
"""

_LONG_XACTS_SQL = f"""
SELECT {_SESSION_COLUMNS},
       extract(epoch FROM clock_timestamp() - xact_start)::float8 AS duration_s
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
  AND xact_start < clock_timestamp() - make_interval(secs => %(secs)s)
  AND (%(all)s OR datname = current_database())
ORDER BY xact_start
LIMIT %(limit)s
"""

_LONGEST_XACT_SQL = """
SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8 AS longest
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
  AND (%(all)s OR datname = current_database())
"""


def _session_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``pg_stat_activity`` row as JSON-ready evidence: timestamps as ISO text (exactly what an
    action later compares), durations (columns named ``*_s``) rounded to the millisecond."""
    out = dict(row)
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
        elif key.endswith("_s") and isinstance(value, float):
            out[key] = round(value, 3)
    return out


def _sessions_older_than(
    probe: str, what: str, list_sql: str, longest_sql: str,
    dsn: Dsn, min_minutes: float, all_databases: bool, limit: int,
) -> ProbeResult:
    if min_minutes < 0 or limit < 1:
        raise ResponderError(ErrorCode.CONFIG, f"{probe}: min_minutes must be >= 0 and limit >= 1")
    params = {"secs": float(min_minutes) * 60, "all": all_databases, "limit": limit, "qlen": QUERY_TEXT_LIMIT}
    with _connect(dsn) as conn:
        rows = conn.execute(list_sql, params).fetchall()
        longest_row = conn.execute(longest_sql, params).fetchone()
    assert longest_row is not None
    sessions = [_session_row(row) for row in rows]
    threshold_s = min_minutes * 60
    longest = round(longest_row["longest"], 3)
    if sessions:
        head = sessions[0]
        summary = (f"{len(sessions)} {what} longer than {min_minutes:g} min;"
                   f" longest pid {head['pid']} ({head['usename']}@{head['datname']}) {head['duration_s']:g}s")
    else:
        summary = f"no {what} longer than {min_minutes:g} min"
    return ProbeResult(
        probe=probe,
        ok=not sessions,
        value=longest,
        threshold=threshold_s,
        unit="s",
        summary=summary,
        evidence={"min_minutes": min_minutes, "all_databases": all_databases, "sessions": sessions},
    )


def long_running_queries(
    dsn: Dsn, min_minutes: float = 5.0, all_databases: bool = False, limit: int = 50
) -> ProbeResult:
    """Active queries running longer than ``min_minutes`` (fractions allowed), oldest first.

    ``value`` is the longest active query's age in seconds, so an ok result still shows how
    close things are. Only the connected database unless ``all_databases``. Query text is cut
    to ``QUERY_TEXT_LIMIT`` characters (it can contain literals; it is evidence, not a log).
    """
    return _sessions_older_than(
        "pg_long_running_queries", "queries", _LONG_QUERIES_SQL, _LONGEST_QUERY_SQL,
        dsn, min_minutes, all_databases, limit,
    )


def long_transactions(
    dsn: Dsn, min_minutes: float = 1.0, all_databases: bool = False, limit: int = 50
) -> ProbeResult:
    """Transactions open longer than ``min_minutes``, including ``idle in transaction`` ones."""
    return _sessions_older_than(
        "pg_long_transactions", "transactions", _LONG_XACTS_SQL, _LONGEST_XACT_SQL,
        dsn, min_minutes, all_databases, limit,
    )


_LOCK_WAITS_SQL = f"""
SELECT {_SESSION_COLUMNS},
       pg_blocking_pids(pid) AS blocked_by,
       extract(epoch FROM clock_timestamp() - coalesce(state_change, query_start))::float8 AS duration_s
FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()
  AND (%(all)s OR datname = current_database())
ORDER BY duration_s DESC
LIMIT %(limit)s
"""


def lock_waits(dsn: Dsn, threshold: int = 0, all_databases: bool = False, limit: int = 50) -> ProbeResult:
    """Sessions waiting on a lock, each with the pids blocking it (``pg_blocking_pids``).

    Not ok when more than ``threshold`` sessions wait.
    """
    with _connect(dsn) as conn:
        params = {"all": all_databases, "limit": limit, "qlen": QUERY_TEXT_LIMIT}
        rows = conn.execute(_LOCK_WAITS_SQL, params).fetchall()
    waiting = [_session_row(row) for row in rows]
    blockers = sorted({pid for row in waiting for pid in row["blocked_by"]})
    return ProbeResult(
        probe="pg_lock_waits",
        ok=len(waiting) <= threshold,
        value=float(len(waiting)),
        threshold=float(threshold),
        summary=f"{len(waiting)} sessions waiting on locks" + (f", blocked by pids {blockers}" if blockers else ""),
        evidence={"waiting": waiting, "blocking_pids": blockers},
    )


IDLE_IN_TRANSACTION = ("idle in transaction", "idle in transaction (aborted)")

# One row per (application, user, client address, state), and max_connections even when no
# other session exists (the LEFT JOIN keeps the settings row).
_HOLDER_GROUPS_SQL = """
SELECT s.max_connections, g.application_name, g.usename, g.client_addr, g.state, g.n, g.pids
FROM (SELECT current_setting('max_connections')::int AS max_connections) s
LEFT JOIN (
    SELECT application_name, usename, host(client_addr) AS client_addr, coalesce(state, 'unknown') AS state,
           count(*)::int AS n, (array_agg(pid ORDER BY backend_start, pid))[1:%(pids)s] AS pids
    FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
    GROUP BY 1, 2, 3, 4
) g ON true
"""

# The ``oldest`` longest-connected sessions and the ``limit`` longest idle-in-transaction ones
# (longest idle first), in one pass over pg_stat_activity.
_HOLDER_SESSIONS_SQL = f"""
SELECT * FROM (
    SELECT {_SESSION_COLUMNS}, state_change,
           extract(epoch FROM clock_timestamp() - backend_start)::float8 AS age_s,
           extract(epoch FROM clock_timestamp() - xact_start)::float8 AS xact_age_s,
           extract(epoch FROM clock_timestamp() - state_change)::float8 AS state_age_s,
           row_number() OVER (ORDER BY backend_start, pid) AS age_rank,
           row_number() OVER (PARTITION BY state IN ('idle in transaction', 'idle in transaction (aborted)')
                              ORDER BY state_change, pid) AS idle_rank
    FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
) s
WHERE age_rank <= %(oldest)s
   OR (state IN ('idle in transaction', 'idle in transaction (aborted)') AND idle_rank <= %(limit)s)
"""


def _holder_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-state rows merged into one group per (application_name, usename, client_addr), largest first."""
    groups: dict[tuple[str, str | None, str | None], dict[str, Any]] = {}
    for row in rows:
        if row["n"] is None:  # the LEFT JOIN's row when no other session exists
            continue
        key = (row["application_name"], row["usename"], row["client_addr"])
        group = groups.setdefault(key, {
            "application_name": key[0], "usename": key[1], "client_addr": key[2],
            "count": 0, "by_state": {}, "pids": [],
        })
        group["count"] += row["n"]
        group["by_state"][row["state"]] = row["n"]
        group["pids"].extend(row["pids"])
    ordered = sorted(groups.values(), key=lambda g: (-g["count"], g["application_name"] or "", g["usename"] or "",
                                                     g["client_addr"] or ""))
    for group in ordered:
        group["by_state"] = dict(sorted(group["by_state"].items(), key=lambda item: (-item[1], item[0])))
        group["pids"] = sorted(group["pids"])[:IDS_PER_GROUP]
    return ordered


def _describe_holder(group: dict[str, Any]) -> str:
    states = ", ".join(f"{state} {n}" for state, n in group["by_state"].items())
    return (f"app={label(group['application_name'], '(none)')} user={label(group['usename'], '?')}"
            f" from {group['client_addr'] or 'local socket'} ({states}) pids {id_list(group['pids'])}")


def _holders_summary(total: int, max_connections: int, groups: list[dict[str, Any]],
                     idle: list[dict[str, Any]], threshold_s: float) -> str:
    parts = [groups_summary(groups, _describe_holder)] if groups else ["no other client session"]
    over = [s for s in idle if s["state_age_s"] > threshold_s]
    if over:
        parts.append(f"idle in transaction over {threshold_s:g} s: "
                     + id_list([f"pid {s['pid']} ({s['state_age_s']:.0f} s)" for s in over]))
    return f"{total} of {max_connections}: " + "; ".join(parts)


def connection_holders(
    dsn: Dsn, idle_in_transaction_minutes: float = 5.0, oldest: int = 10, limit: int = 50, groups: int = 20
) -> ProbeResult:
    """Who holds the client connections: grouped, the oldest sessions, and the idle transactions.

    * ``groups``: one entry per ``application_name``, ``usename`` and ``client_addr`` (the host,
      ``None`` for a Unix socket), with its ``count``, counts ``by_state`` and up to
      ``IDS_PER_GROUP`` pids, largest first; the rest is summed in ``other_groups``.
    * ``oldest``: the sessions connected longest (``age_s`` since ``backend_start``), with
      ``wait_event_type``/``wait_event`` and the query cut to ``QUERY_TEXT_LIMIT``.
    * ``idle_in_transaction``: sessions ``idle in transaction`` (or ``(aborted)``), longest idle
      first, with ``xact_age_s`` (since ``xact_start``) and ``state_age_s`` (idle for, since
      ``state_change``) and the ``backend_start``/``xact_start``/``state_change`` an action
      re-checks before terminating one.

    Not ok when a session has been idle in a transaction longer than
    ``idle_in_transaction_minutes``: the connection leak of seed 001 ("Transactions not being
    committed/rolled back"). Idle time is counted as PostgreSQL's own
    ``idle_in_transaction_session_timeout`` counts it (since ``state_change``), so a transaction
    that is doing work between statements is not one. ``value`` is the longest such idle time
    in seconds. Counts cover every database (``max_connections`` is the server's); the probe's
    own connection and non-client backends are left out. Two queries on one connection.
    """
    if idle_in_transaction_minutes < 0 or min(oldest, limit, groups) < 1:
        raise ResponderError(
            ErrorCode.CONFIG, "pg_connection_holders: idle_in_transaction_minutes must be >= 0, "
            "oldest, limit and groups >= 1")
    params = {"pids": IDS_PER_GROUP, "oldest": oldest, "limit": limit, "qlen": QUERY_TEXT_LIMIT}
    with _connect(dsn) as conn:
        group_rows = conn.execute(_HOLDER_GROUPS_SQL, params).fetchall()
        session_rows = conn.execute(_HOLDER_SESSIONS_SQL, params).fetchall()
        database = conn.info.dbname
    max_connections = group_rows[0]["max_connections"]
    all_groups = _holder_groups(group_rows)
    total = sum(g["count"] for g in all_groups)
    sessions = [_session_row(row) for row in session_rows]
    oldest_sessions = sorted((s for s in sessions if s["age_rank"] <= oldest), key=lambda s: s["age_rank"])
    idle = sorted((s for s in sessions if s["state"] in IDLE_IN_TRANSACTION and s["idle_rank"] <= limit),
                  key=lambda s: s["idle_rank"])
    for s in sessions:
        del s["age_rank"], s["idle_rank"]
    threshold_s = idle_in_transaction_minutes * 60
    rest = all_groups[groups:]
    return ProbeResult(
        probe="pg_connection_holders",
        ok=not any(s["state_age_s"] > threshold_s for s in idle),
        value=idle[0]["state_age_s"] if idle else 0.0,
        threshold=threshold_s,
        unit="s",
        summary=_holders_summary(total, max_connections, all_groups, idle, threshold_s),
        evidence={
            "database": database,
            "max_connections": max_connections,
            "total": total,
            "idle_in_transaction_minutes": idle_in_transaction_minutes,
            "groups": all_groups[:groups],
            "other_groups": {"groups": len(rest), "connections": sum(g["count"] for g in rest)},
            "oldest": oldest_sessions,
            "idle_in_transaction": idle,
        },
    )


# Column names changed in PostgreSQL 13 (mean_time -> mean_exec_time); both texts are static.
_STATEMENTS_SQL = {
    13: """
SELECT queryid, left(query, %(qlen)s) AS query, calls, rows,
       mean_exec_time AS mean_ms, max_exec_time AS max_ms, total_exec_time AS total_ms
FROM {relation}
WHERE mean_exec_time > %(min_ms)s
ORDER BY mean_exec_time DESC
LIMIT %(limit)s
""",
    0: """
SELECT queryid, left(query, %(qlen)s) AS query, calls, rows,
       mean_time AS mean_ms, max_time AS max_ms, total_time AS total_ms
FROM {relation}
WHERE mean_time > %(min_ms)s
ORDER BY mean_time DESC
LIMIT %(limit)s
""",
}
_WORST_SQL = {
    13: "SELECT coalesce(max(mean_exec_time), 0)::float8 AS worst FROM {relation}",
    0: "SELECT coalesce(max(mean_time), 0)::float8 AS worst FROM {relation}",
}


def slow_statements(dsn: Dsn, min_mean_ms: float = 1000.0, limit: int = 10) -> ProbeResult:
    """Statements whose mean execution time exceeds ``min_mean_ms``, slowest first.

    ``value`` is the slowest mean in ms. When ``pg_stat_statements`` is not installed in the
    database, or installed but not loaded via ``shared_preload_libraries``, returns ``ok=True``
    with ``value=None`` and ``evidence["available"] = False`` plus the reason: the runbook
    step cannot be done, which is a finding to report, not a failure to retry.
    """
    with _connect(dsn) as conn:
        ext = conn.execute(
            "SELECT e.extversion, n.nspname FROM pg_extension e"
            " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'"
        ).fetchone()
        dbname = conn.info.dbname
        if ext is None:
            return _statements_unavailable(f"extension pg_stat_statements is not installed in database {dbname}")
        # The schema name comes from the catalog, never from an alert.
        relation = sql.Identifier(ext["nspname"], "pg_stat_statements")
        variant = 13 if conn.info.server_version >= 130000 else 0
        params = {"min_ms": min_mean_ms, "limit": limit, "qlen": QUERY_TEXT_LIMIT}
        try:
            worst = conn.execute(sql.SQL(_WORST_SQL[variant]).format(relation=relation)).fetchone()
            rows = conn.execute(sql.SQL(_STATEMENTS_SQL[variant]).format(relation=relation), params).fetchall()
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:
            return _statements_unavailable(
                f"pg_stat_statements {ext['extversion']} is installed but not loaded: {exc.diag.message_primary}"
            )
    assert worst is not None
    statements = [{**row, **{k: round(row[k], 3) for k in ("mean_ms", "max_ms", "total_ms")}} for row in rows]
    return ProbeResult(
        probe="pg_slow_statements",
        ok=not statements,
        value=round(worst["worst"], 3),
        threshold=min_mean_ms,
        unit="ms",
        summary=f"{len(statements)} statements with mean above {min_mean_ms:g} ms"
        if statements else f"no statement with mean above {min_mean_ms:g} ms",
        evidence={"available": True, "extversion": ext["extversion"], "statements": statements},
    )


def _statements_unavailable(reason: str) -> ProbeResult:
    return ProbeResult(
        probe="pg_slow_statements",
        ok=True,
        summary=f"not measured: {reason}",
        evidence={"available": False, "reason": reason},
    )


def database_sizes(dsn: Dsn, threshold_bytes: int | None = None) -> ProbeResult:
    """Size of every database we may connect to, largest first; ``value`` is the largest.

    Not ok when ``threshold_bytes`` is given and any database exceeds it.
    """
    with _connect(dsn) as conn:
        rows = conn.execute(
            "SELECT datname, pg_database_size(datname) AS size_bytes FROM pg_database"
            " WHERE datallowconn AND NOT datistemplate AND has_database_privilege(datname, 'CONNECT')"
            " ORDER BY size_bytes DESC"
        ).fetchall()
        current = conn.info.dbname
    biggest: dict[str, Any] = rows[0] if rows else {"datname": None, "size_bytes": 0}
    over = [r["datname"] for r in rows if threshold_bytes is not None and r["size_bytes"] > threshold_bytes]
    return ProbeResult(
        probe="pg_database_sizes",
        ok=not over,
        value=float(biggest["size_bytes"]),
        threshold=None if threshold_bytes is None else float(threshold_bytes),
        unit="B",
        summary=(f"over threshold: {', '.join(over)}" if over else f"largest: {biggest['datname']}")
        + f" ({human_bytes(biggest['size_bytes'])})",
        evidence={"current_database": current, "databases": rows},
    )


def largest_tables(dsn: Dsn, n: int = 10) -> ProbeResult:
    """The ``n`` largest tables of the connected database by total size (heap + indexes + TOAST)."""
    with _connect(dsn) as conn:
        rows = conn.execute(
            "SELECT n.nspname AS schema, c.relname AS table,"
            " pg_total_relation_size(c.oid) AS total_bytes,"
            " pg_relation_size(c.oid) AS table_bytes,"
            " pg_indexes_size(c.oid) AS index_bytes"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'm', 'p')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'"
            " AND n.nspname NOT LIKE 'pg_temp%%'"
            " ORDER BY total_bytes DESC LIMIT %s",
            [n],
        ).fetchall()
        current = conn.info.dbname
    return ProbeResult(
        probe="pg_largest_tables",
        ok=True,
        value=float(rows[0]["total_bytes"]) if rows else 0.0,
        unit="B",
        summary=f"largest: {rows[0]['schema']}.{rows[0]['table']} ({human_bytes(rows[0]['total_bytes'])})"
        if rows else "no user tables",
        evidence={"database": current, "tables": rows},
    )
