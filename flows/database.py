"""PostgreSQL runbooks: connection exhaustion (seed 001), slow queries (seeds 000, 004) and
connection failure (seed 003), one flow per spec (``DATABASE_CONNECTIONS`` ...).

``database_connections`` (``database_connections``, seed 001 "Database Connection Exhaustion"):

1. Check active connections against ``max_connections``                 → ``check-active-connections``
   and who holds them: by application, user, client address and state; the oldest sessions;
   sessions idle in a transaction (seed 001 leak "Transactions not being committed/rolled back")
                                                                         → ``identify-connection-holders``
2. Identify long-running queries ("> interval '5 minutes' AND state = 'active'")
                                                                         → ``identify-long-running-queries``
   Investigation: connections waiting on locks                           → ``check-lock-waits``
   long-running transactions ("> interval '1 minute'")                   → ``check-long-transactions``
   slow queries in ``pg_stat_statements``                                → ``check-slow-statements``
3. "Kill long-running queries if safe": ``pg_terminate_backend`` per query
                                                                         → ``plan-query-terminations``
   and, while connections are over the ratio, per session idle in a transaction longer than
   ``idle_in_transaction_minutes`` (the leak), in the target's database
                                                                         → ``plan-idle-transaction-terminations``
   Each is risky, so a human decides whether it is safe; the action re-checks it is still the
   *same* query (``backend_start``, ``query_start``), or still idle in the *same* transaction
   (``backend_start``, ``xact_start``, ``state_change``), before it signals → ``mitigate``
4. Verify: connections below the ratio and no query over the limit      → ``verify-connections``

``database_slow_queries`` (``DATABASE_SLOW_QUERIES``, seed 000, "Queries taking >1s"):

1. Identify slow queries (``pg_stat_statements WHERE mean_time > 1000``)  → ``identify-slow-queries``.
   Where the extension is missing or not preloaded that is evidence in the report, not a crash.
2. Queries running longer than the alert's 1 s right now                → ``identify-long-running-queries``
3. Cancel queries active longer than ``cancel_after_minutes`` (``pg_cancel_backend`` ends the
   query and keeps the connection), risky                                → ``mitigate``
4. Verify: no active query over 1 s. Query plans, indexes and VACUUM are left to humans.

``database_connection_failure`` (``DatabaseConnectionFailure``, seed 003, "Cannot connect to
PostgreSQL database"):

1. Test the connection (``pg_isready`` / ``SELECT 1``)                   → ``check-database-readiness``
2. If it answers: connection limit (``SELECT count(*) FROM pg_stat_activity``)
                                                                         → ``check-active-connections``
3. Disk full? (``df -h`` of the database's machine, the alert's ``instance``: this one with
   psutil on ``paths.disk``, another through Prometheus, see ``flows/host.py``) → ``check-disk-usage``
4. "If hung, force restart: docker-compose restart postgres": the restart argv of the ``postgres``
   entry of ``services`` (seed 000 "Database restart: only if absolutely necessary"), risky
                                                                         → ``mitigate``
5. Verify: the database answers again.

Targets. The alert's labels select one ``postgres`` entry of ``config/targets.yaml`` (its name
equal to the ``service``, ``job`` or ``datname`` label, or its ``match`` labels, else
``default``); its URL (a ``SecretStr``) goes to the probes, and actions get
``target_ref=("postgres", name)`` so the URL never sits in a plan, an approval form or a report.
No entry, or one without a URL: the run says "no PostgreSQL target configured" and escalates.

The database's own restart is the ``services`` entry named ``postgres``, never one chosen by
labels: a data-store alert's ``job``/``service`` labels name the exporter or the application
that noticed, and restarting *that* would not bring the database back::

    services:
      postgres:
        restart: [docker-compose, restart, postgres]
"""

from __future__ import annotations

from typing import Any

from core.results import resumable
from pydantic import SecretStr

from flows import checks
from flows.host import locate, prometheus_url
from flows.lifecycle import Assessment, cannot_measure, proposals, runbook_flow, runtime, step
from core.alerts import Alert
from core.catalog import Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction
from tasks.probes import hosts, postgres

DATABASE_SERVICE = "postgres"


# -- thresholds -------------------------------------------------------------------------------


class ConnectionsLimits(Thresholds):
    """``database-connections`` (seed 001 "Database Connection Exhaustion")."""

    connections_ratio: float = seed(0.8, "seed 001: \"Connection pool usage exceeds 80%\" (of max_connections)", gt=0)
    long_query_minutes: float = seed(
        5, "seed 001: \"(now() - pg_stat_activity.query_start) > interval '5 minutes' AND state = 'active'\"", gt=0)
    long_transaction_minutes: float = seed(1, "seed 001: \"(now() - xact_start) > interval '1 minute'\"", gt=0)
    slow_statement_ms: float = seed(
        1000, "seed 001 \"Check slow queries\" (pg_stat_statements) gives no figure: seed 000's \"mean_time > 1000\"", gt=0)
    idle_in_transaction_minutes: float = seed(
        5, "seed 001 connection leaks: \"Transactions not being committed/rolled back\" gives no figure: ours, seed 001's "
           "\"interval '5 minutes'\"; idle this long inside a transaction while connections are over the ratio is "
           "proposed for termination", gt=0)
    max_terminations: int = seed(5, "ours: at most this many backends proposed per run (of each kind), longest first", ge=0)


class SlowQueriesLimits(Thresholds):
    """``database-slow-queries`` (seed 000 DATABASE_SLOW_QUERIES, seed 004)."""

    query_seconds: float = seed(1, "seed 000: \"Queries taking >1s\"; pg_stat_statements \"WHERE mean_time > 1000\"", gt=0)
    cancel_after_minutes: float = seed(
        5, "a query active this long is proposed for cancelling (seed 001's \"> interval '5 minutes'\")", gt=0)
    max_cancellations: int = seed(5, "ours: at most this many queries proposed per run, longest first", ge=0)


class ConnectionFailureLimits(Thresholds):
    """``database-connection-failure`` (seed 003 DatabaseConnectionFailure)."""

    connections_ratio: float = seed(
        0.8, "seed 003 cause \"Connection limit\" (SELECT count(*) FROM pg_stat_activity); seed 001's 80%", gt=0)
    disk_percent: float = seed(90, "seed 003 cause \"Disk full: df -h\"; seed 000 DISK_SPACE_CRITICAL \">90%\"", ge=0)


# -- probes -----------------------------------------------------------------------------------


@resumable(name="select-postgres-target")
def select_postgres_target(alert: Alert) -> tuple[str, SecretStr] | ProbeResult:
    """The configured PostgreSQL the alert's labels point at, or a result saying there is none."""
    return checks.data_store("postgres", alert)


check_active_connections = step("check-active-connections", postgres.connections, retry_delay_seconds=2)
identify_connection_holders = step("identify-connection-holders", postgres.connection_holders, retry_delay_seconds=2)
identify_long_running_queries = step("identify-long-running-queries", postgres.long_running_queries,
                                     retry_delay_seconds=2)
check_lock_waits = step("check-lock-waits", postgres.lock_waits, retry_delay_seconds=2)
check_long_transactions = step("check-long-transactions", postgres.long_transactions, retry_delay_seconds=2)
check_slow_statements = step("check-slow-statements", postgres.slow_statements, retry_delay_seconds=2)
identify_slow_queries = step("identify-slow-queries", postgres.slow_statements, retry_delay_seconds=2)
check_database_readiness = step("check-database-readiness", postgres.readiness, retries=1)


@resumable(name="check-disk-usage", retries=1, retry_delay_seconds=1)
def check_disk_usage(instance: str, paths: list[str], threshold: float) -> ProbeResult:
    return hosts.disk_usage(locate(instance), prometheus_url(), paths, threshold)


@resumable(name="verify-connections", retries=2, retry_delay_seconds=2)
def verify_connections(dsn: SecretStr, ratio: float, long_query_minutes: float) -> ProbeResult:
    """Seed 001's two figures at once: connections below the ratio and no query over the limit."""
    connections = postgres.connections(dsn, threshold=ratio)
    long_queries = postgres.long_running_queries(dsn, min_minutes=long_query_minutes)
    return ProbeResult(
        probe="pg_connections_and_long_queries",
        ok=connections.ok and long_queries.ok,
        value=connections.value,
        threshold=ratio,
        summary=f"{connections.summary}; {long_queries.summary}",
        evidence={"connections": connections.evidence, "long_queries": long_queries.evidence},
    )


# -- plans ------------------------------------------------------------------------------------


def _query_line(session: dict[str, Any]) -> str:
    return " ".join((session.get("query") or "").split())[:160]


def _backend_plans(action: str, target_name: str, queries: ProbeResult, limit: int, why: str) -> list[PlannedAction]:
    plans = []
    for session in queries.evidence["sessions"][: max(0, limit)]:
        query = _query_line(session)
        plans.append(PlannedAction(
            action=action,
            target=f"backend pid {session['pid']}",
            params={"pid": session["pid"], "backend_start": session["backend_start"],
                    "query_start": session["query_start"]},
            target_ref=("postgres", target_name),
            why=f"{why}: pid {session['pid']} ({session['usename']}@{session['datname']}, {session['state']}) "
                f"has run {session['duration_s']:g} s: {query}",
        ))
    return plans


@resumable(name="plan-query-terminations")
def plan_query_terminations(target_name: str, long_queries: ProbeResult, limit: int) -> list[PlannedAction]:
    """Seed 001 "Kill Long-Running Queries if Safe": one risky terminate per long query, longest first."""
    if long_queries.ok:
        return []
    return _backend_plans("terminate_backend", target_name, long_queries, limit, "long-running query")


@resumable(name="plan-idle-transaction-terminations")
def plan_idle_transaction_terminations(
    target_name: str, connections: ProbeResult, holders: ProbeResult, limit: int
) -> list[PlannedAction]:
    """Over the ratio only: one risky terminate per session idle in a transaction past the
    threshold, longest idle first, in the target's own database (the seed's
    ``datname = current_database()``)."""
    if connections.ok:
        return []
    assert holders.threshold is not None
    database = holders.evidence["database"]
    idle = [s for s in holders.evidence["idle_in_transaction"]
            if s["state_age_s"] > holders.threshold and s["datname"] == database]
    return [PlannedAction(
        action="terminate_idle_transaction",
        target=f"backend pid {s['pid']}",
        params={k: s[k] for k in ("pid", "backend_start", "xact_start", "state_change")},
        target_ref=("postgres", target_name),
        why=f"{connections.line()}; pid {s['pid']} ({s['usename']}@{s['datname']},"
            f" application {s['application_name'] or '(none)'!r}) has been {s['state']} for {s['state_age_s']:g} s,"
            f" its transaction open {s['xact_age_s']:g} s: {_query_line(s)}",
    ) for s in idle[: max(0, limit)]]


@resumable(name="plan-query-cancellations")
def plan_query_cancellations(target_name: str, long_queries: ProbeResult, limit: int) -> list[PlannedAction]:
    """Cancel (not terminate) queries active longer than ``cancel_after_minutes``."""
    if long_queries.ok:
        return []
    return _backend_plans("cancel_backend", target_name, long_queries, limit, "query running too long")


@resumable(name="plan-database-restart")
def plan_database_restart(readiness: ProbeResult) -> list[PlannedAction] | ProbeResult:
    """Seed 003 "If hung, force restart": the configured ``postgres`` service, only while unreachable."""
    return checks.data_store_restart("postgres", DATABASE_SERVICE, readiness)


# -- flows ------------------------------------------------------------------------------------


def assess_connections(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 001 "Database Connection Exhaustion", in order."""
    limits = runbook.limits(ConnectionsLimits, alert.alertname)
    ratio, minutes = limits.connections_ratio, limits.long_query_minutes
    target = select_postgres_target(alert)
    if isinstance(target, ProbeResult):
        return cannot_measure(target)
    name, dsn = target
    connections = check_active_connections(dsn, ratio)
    holders = identify_connection_holders(dsn, limits.idle_in_transaction_minutes)
    long_queries = identify_long_running_queries(dsn, minutes)
    locks = check_lock_waits(dsn)
    transactions = check_long_transactions(dsn, limits.long_transaction_minutes)
    slow = check_slow_statements(dsn, limits.slow_statement_ms)
    limit = limits.max_terminations
    return Assessment(
        evidence=[connections, holders, long_queries, locks, transactions, slow],
        plans=[*plan_query_terminations(name, long_queries, limit),
               *plan_idle_transaction_terminations(name, connections, holders, limit)],
        verify=lambda: verify_connections(dsn, ratio, minutes),
    )


DATABASE_CONNECTIONS = RunbookSpec(
    name="database-connections",
    title="Database connection exhaustion",
    alertnames=(
        "database_connections",  # seed 001
        "DatabaseConnections",
        "DATABASE_CONNECTIONS",
    ),
    severity="warning",
    seeds=(
        "001 Database Connection Exhaustion / database_connections: Connection pool usage exceeds 80% (alerts at 80% warning, 95% critical)",
    ),
    verify=VerifySpec(budget_seconds=120, interval_seconds=10),
    approval_timeout_seconds=900,  # seed 001 escalation level 1: 0-15 minutes
    mitigations=(
        "terminate_backend",  # risky: seed 001 "Kill Long-Running Queries if Safe ... ⚠️ WARNING: Only kill if safe to do so"
        "terminate_idle_transaction",  # risky: seed 001 "Transactions not being committed/rolled back": ends the leaked transaction (rolled back) and frees its connection; "⚠️ Only kill if safe to do so"
    ),
    left_to_humans=(
        "Increase the connection pool temporarily (connection_limit in DATABASE_URL) and restart the application (seed 001)",
        "Review recent code changes for connection leaks (seed 001: missing await, unclosed transactions, Prisma client)",
        "Add connection timeouts (connect_timeout, pool_timeout) (seed 001)",
        "Check application load: request rate, concurrent users (seed 001)",
    ),
)


database_connections = runbook_flow(DATABASE_CONNECTIONS, assess_connections, ConnectionsLimits,
                                    "Respond to connection exhaustion the way seed 001 says to.")


def assess_slow_queries(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 000 "Queries taking >1s", in order."""
    limits = runbook.limits(SlowQueriesLimits, alert.alertname)
    seconds = limits.query_seconds
    target = select_postgres_target(alert)
    if isinstance(target, ProbeResult):
        return cannot_measure(target)
    name, dsn = target
    slow = identify_slow_queries(dsn, seconds * 1000)
    running = identify_long_running_queries(dsn, seconds / 60)
    too_long = identify_long_running_queries(dsn, limits.cancel_after_minutes)
    return Assessment(evidence=[slow, running, too_long],
                      plans=plan_query_cancellations(name, too_long, limits.max_cancellations),
                      verify=lambda: identify_long_running_queries(dsn, seconds / 60))


DATABASE_SLOW_QUERIES = RunbookSpec(
    name="database-slow-queries",
    title="Database slow queries",
    alertnames=(
        "DATABASE_SLOW_QUERIES",  # seed 000; seed 004 "Database Slow Queries"
        "DatabaseSlowQueries",
        "database_slow_queries",
    ),
    severity="warning",
    seeds=(
        "000 Application Alerts / DATABASE_SLOW_QUERIES: Queries taking >1s",
        "004 Application Alerts: Database Slow Queries >1s query time",
    ),
    verify=VerifySpec(budget_seconds=120, interval_seconds=10),
    approval_timeout_seconds=900,
    mitigations=(
        "cancel_backend",  # risky: pg_cancel_backend ends the query, keeps the connection
    ),
    left_to_humans=(
        "Check query plans: EXPLAIN ANALYZE <slow_query> (seed 000): it runs the query again",
        "Index analysis: pg_stats of the tables involved; add indexes (seed 000)",
        "Query optimization: rewrite inefficient queries (seed 000)",
        "Connection pooling: optimize pool configuration (seed 000)",
        "Vacuum analyze: run database maintenance (seed 000)",
        "Enable pg_stat_statements (shared_preload_libraries + CREATE EXTENSION) where the report says it is missing",
    ),
)


database_slow_queries = runbook_flow(DATABASE_SLOW_QUERIES, assess_slow_queries, SlowQueriesLimits,
                                     "Respond to slow queries the way seed 000 says to.")


def assess_connection_failure(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 003 "Cannot connect to PostgreSQL database", in order."""
    limits = runbook.limits(ConnectionFailureLimits, alert.alertname)
    target = select_postgres_target(alert)
    if isinstance(target, ProbeResult):
        return cannot_measure(target)
    _, dsn = target
    readiness = check_database_readiness(dsn)
    evidence = [readiness]
    if readiness.ok:
        evidence.append(check_active_connections(dsn, limits.connections_ratio))
    disk = check_disk_usage(alert.instance, runtime()[1].targets.paths.disk, limits.disk_percent,
                            return_state=True)
    # a cause to look at, not the response itself: a disk figure that cannot be taken must not stop it
    evidence.append(disk.result() if disk.is_completed() else ProbeResult(
        probe="disk_usage", ok=True, summary=f"not measured: {disk.message}"))
    return Assessment(evidence=evidence, plans=proposals(plan_database_restart(readiness), evidence),
                      verify=lambda: check_database_readiness(dsn))


DATABASE_CONNECTION_FAILURE = RunbookSpec(
    name="database-connection-failure",
    title="Database connection failure (PostgreSQL)",
    alertnames=(
        "DatabaseConnectionFailure",  # seed 003
        "database_connection_failure",
        "DATABASE_CONNECTION_FAILURE",
    ),
    severity="critical",
    seeds=(
        "003 CRITICAL / DatabaseConnectionFailure: Cannot connect to PostgreSQL database (< 5 min response)",
        "000 Recovery Procedures / Database restart: Only if absolutely necessary (sudo systemctl restart postgresql)",
    ),
    verify=VerifySpec(budget_seconds=300, interval_seconds=10),  # seed 003 "No recovery after 5 min → Contact platform team"
    approval_timeout_seconds=300,  # seed 003 CRITICAL "< 5 min response"
    mitigations=(
        "restart_service",  # risky: seed 003 "If hung, force restart: docker-compose restart postgres"; the `postgres` entry of targets.yaml services
    ),
    left_to_humans=(
        "Connection limit: increase max_connections in postgresql.conf (seed 003)",
        "Credentials wrong: check POSTGRES_URL in .env (seed 003)",
        "Network issue: backend and database on the same network (seed 003)",
        "Disk full: immediate disk expansion (seed 003); the disk-space runbook cleans logs",
        "Connection pool exhaustion: increase pool size and restart the application (seed 003 steps 5-6)",
        "DB still unreachable after restart: contact DBA/Ops (seed 003)",
    ),
)


database_connection_failure = runbook_flow(DATABASE_CONNECTION_FAILURE, assess_connection_failure, ConnectionFailureLimits,
                                           "Respond to an unreachable PostgreSQL the way seed 003 says to.")
