"""Application runbooks: slow responses, errors, one broken endpoint, growing memory, queues, uploads.

Each runbook's spec (``HIGH_RESPONSE_TIME`` ...) is declared next to its flow, which is started by the
``responder.alert.firing`` event of any of its alert spellings and follows its seeds' steps
in order (task names are the steps). Each runbook's thresholds are a typed model declared next to
its flow (``HighResponseTimeLimits`` ...): the seeds' figures as defaults, per alert spelling where the
seeds differ (``spellings``: ``response_time_p95`` fires at 1 s where ``HIGH_RESPONSE_TIME`` fires at 2 s);
an installation may override them in ``config/runbooks/*.yaml`` (``thresholds: {name: value}`` or ``{name.ALERTNAME: value}``).

* ``high_response_time``: HIGH_RESPONSE_TIME (seed 000), response_time_p95 (001), seed 002
  "Slow requests", seed 003 "Production is Slow", seed 004 "High Response Time".
* ``high_error_rate``: HIGH_ERROR_RATE (000), error_rate (001), HighErrorRate (003, 004),
  seed 002 "High error rate on /api/v1/books".
* ``endpoint_broken``: seed 003 "One Endpoint is Broken".
* ``memory_keeps_growing``: seed 003 "Memory Keeps Growing".
* ``queue_backlog``: queue_processing_time (001), seed 004 "Queue Backlog" and "Download Queue Stalled".
* ``video_upload_failures``: seed 001 "Video Upload Failures".
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import httpx

from core.results import resumable

from flows import checks
from flows.checks import collect, compact, measured
from flows.host import locate, prometheus_url
from flows.lifecycle import Assessment, runbook_flow
from core.alerts import Alert
from core.catalog import Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction
from tasks.probes import hosts, http, postgres, prometheus
from tasks.probes import redis as redis_probes

ENDPOINTS = ("job", *checks.ENDPOINT_LABELS)  # sum by these: whichever label the application uses
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9/_.\-]{0,200}$")


@resumable(name="check-database-performance", **checks.PROBE)
def check_database_performance(slow_query_ms: float, connections_ratio: float) -> ProbeResult:
    """Seed 000 "SELECT query, mean_time, calls FROM pg_stat_statements ...", seed 001 "check connection pool usage"."""
    entry = checks.targets().postgres.get("default")
    if entry is None or entry.url is None:
        return checks.unconfigured("database_performance", "postgres.default", False)
    return checks.combine("database_performance", [
        postgres.slow_statements(entry.url, min_mean_ms=slow_query_ms),
        postgres.connections(entry.url, threshold=connections_ratio),
    ])


@resumable(name="check-service-dependencies", **checks.PROBE)
def check_service_dependencies() -> ProbeResult:
    """Seed 000 "pg_isready", "redis-cli ping", "curl -I https://api.themoviedb.org/..." (externals separately)."""
    results = []
    pg = checks.targets().postgres.get("default")
    if pg is not None and pg.url is not None:
        results.append(postgres.readiness(pg.url))
    rd = checks.targets().redis.get("default")
    if rd is not None and rd.url is not None:
        results.append(redis_probes.ping(rd.url))
    if not results:
        return checks.unconfigured("service_dependencies", "postgres.default or redis.default", False)
    return checks.combine("service_dependencies", results)


# -- HIGH_RESPONSE_TIME -----------------------------------------------------------------------


class HighResponseTimeLimits(Thresholds):
    p95_seconds: float = seed(2, "seed 000/004: \"P95 response time >2s for 2 minutes\"", ge=0)
    window_seconds: float = seed(300, "seed 001: \"over 5 minutes\"; rate window of the P95 query", gt=0)
    slow_query_ms: float = seed(1000, "seed 000 DATABASE_SLOW_QUERIES: \"Queries taking >1s\" (mean_time > 1000)", ge=0)
    connections_ratio: float = seed(0.8, "seed 001: \"Connection pool usage exceeds 80%\"", ge=0, le=1)
    external_slow_ms: float = seed(1000, "chosen: an external call slower than 1 s is reported as slow", ge=0)
    cpu_percent: float = seed(80, "seed 000 HIGH_CPU_USAGE \">80%\": \"If CPU bound: Scale horizontally\"",
                              ge=0, le=100)
    memory_percent: float = seed(85, "seed 000 HIGH_MEMORY_USAGE \">85%\": \"Temporary: Restart to clear memory\"",
                                 ge=0, le=100)
    heap_ratio: float = seed(0.9, "seed 003: \"nodejs_heap_used_bytes / nodejs_heap_size_limit_bytes > 0.9\"",
                             ge=0, le=1)
    log_window_minutes: float = seed(15, "chosen: how far back the logs are read", gt=0)

    spellings: ClassVar[dict[str, dict[str, Any]]] = {
        "response_time_p95": {"p95_seconds": 1},  # seed 001: "P95 response time exceeds 1 second over 5 minutes"
        "SlowRequests": {"p95_seconds": 3},       # seed 002: "(>3s threshold)"
    }


check_endpoint_performance = checks.p95_latency.with_options(name="check-endpoint-performance")
identify_slow_endpoints = checks.p95_latency.with_options(name="identify-slow-endpoints")
check_slow_request_logs = checks.log_probe.with_options(name="check-request-logs-for-slow-requests")
check_slow_query_logs = checks.log_probe.with_options(name="check-slow-query-logs")
check_external_api_calls = checks.external_services.with_options(name="check-external-api-calls")
check_system_resources = checks.system_resources.with_options(name="check-system-resources")
check_heap_usage = checks.prometheus_query.with_options(name="check-memory-pressure")


@resumable(name="restart-or-scale-horizontally")
def plan_response_time(alert: Alert, p95: ProbeResult, resources: ProbeResult, heap: ProbeResult) -> list[PlannedAction]:
    """Seed 002 "Temporary: Restart to clear memory", seeds 001/003 "If CPU bound: Scale horizontally"."""
    if p95.ok:
        return []
    bad = {c["probe"] for c in resources.evidence.get("checks", [])
           if c["ok"] is False and not c["evidence"].get("unmeasured")}  # "not measured" is not "too high"
    memory_bad = "memory" in bad or (measured(heap) and not heap.ok)
    cpu_bad = "cpu_percent" in bad
    plans: list[PlannedAction | None] = []
    if memory_bad:
        plans.append(checks.service_plan("restart_service", alert, f"{p95.line()}; memory pressure: {heap.line()}"))
    if cpu_bad:
        plans.append(checks.service_plan("scale_service", alert, f"{p95.line()}; CPU bound"))
    return compact(plans)


def assess_response_time(runbook: Runbook, alert: Alert) -> Assessment:
    """The high-response-time steps of seeds 000-004, in order (each line names its seed)."""
    limits = runbook.limits(HighResponseTimeLimits, alert.alertname)
    threshold = limits.p95_seconds
    window = prometheus.window(limits.window_seconds)
    match = checks.job_match(alert)
    p95 = collect(check_endpoint_performance, threshold, window, ("job",), match)                      # 000 step 1
    endpoints = collect(identify_slow_endpoints, threshold, window, ENDPOINTS, match, required=False)  # 001, 002
    slow_logs = collect(check_slow_request_logs, "slow_requests", ("app",), threshold_ms=threshold * 1000,
                        since_minutes=limits.log_window_minutes)
    slow_queries_log = collect(check_slow_query_logs, "errors", ("app",), probe="slow_query_log",
                               pattern="Slow query detected", since_minutes=limits.log_window_minutes)
    database = collect(check_database_performance, limits.slow_query_ms, limits.connections_ratio)     # 000 step 2
    externals = collect(check_external_api_calls, slow_ms=limits.external_slow_ms)                     # 000 step 3
    resources = collect(check_system_resources, alert.instance, limits.cpu_percent,
                        limits.memory_percent)                                                         # 001, 002
    heap = collect(check_heap_usage,
                   f"max by (job, instance) (nodejs_heap_used_bytes{{{prometheus.matchers(match)}}}"
                   f" / nodejs_heap_size_limit_bytes{{{prometheus.matchers(match)}}})",
                   limits.heap_ratio, probe="nodejs_heap_ratio", required=False)                          # 003
    return Assessment(evidence=[p95, endpoints, slow_logs, slow_queries_log, database, externals, resources, heap],
                      plans=plan_response_time(alert, p95, resources, heap),
                      verify=lambda: check_endpoint_performance(threshold, window, ("job",), match, no_data_ok=False))


HIGH_RESPONSE_TIME = RunbookSpec(
    name="high-response-time",
    title="High response time",
    alertnames=(
        "HIGH_RESPONSE_TIME",  # seed 000, alert-rules.yml
        "response_time_p95",  # seed 001, alert-rules.yml
        "HighResponseTime",  # seed 004 "High Response Time", Prometheus rule style
        "SlowRequests",  # seed 002 "Slow requests on /api/v1/toc/generate: p95=4250ms (>3s threshold)"
        "ProductionSlow",  # seed 003 "Scenario: Production is Slow"
    ),
    severity="warning",
    seeds=(
        "000 Application Alerts / HIGH_RESPONSE_TIME: P95 response time >2s for 2 minutes",
        "001 High Response Time / response_time_p95: P95 response time exceeds 1 second over 5 minutes",
        "002 3. Slow Requests: p95=4250ms (>3s threshold)",
        "003 Common Alert Playbooks / Scenario: Production is Slow",
        "004 Application Alerts: High Response Time: P95 >2s for 2 minutes",
    ),
    verify=VerifySpec(budget_seconds=300, interval_seconds=15),  # measure again for 5 minutes (seed 001's window)
    approval_timeout_seconds=900,
    mitigations=(
        "restart_service",  # risky: seed 002 "Temporary: Restart to clear memory" (only under memory pressure)
        "scale_service",  # risky: seed 001/003 "If CPU bound: Scale horizontally" (configured argv without {replicas})
    ),
    left_to_humans=(
        "Database: optimize slow queries, add indexes, run ANALYZE (seeds 000, 001, 003); the slow statements are in the report",
        "Caching: implement or fix Redis caching (seed 000); external APIs: circuit breakers, timeouts, fallbacks (000, 001)",
        "Code: profile and optimize hot paths (seed 000)",
    ),
)


high_response_time = runbook_flow(HIGH_RESPONSE_TIME, assess_response_time, HighResponseTimeLimits,
                                  "P95 response time over the alert's threshold: find where the time goes, relieve, verify.")


# -- HIGH_ERROR_RATE --------------------------------------------------------------------------


class HighErrorRateLimits(Thresholds):
    error_ratio: float = seed(0.05, "every seed: \"more than 5%\" (seed 003 query: rate(5xx)/rate(all))", ge=0, le=1)
    window_seconds: float = seed(300, "seed 003: \"rate(http_requests_total{status=~\"5..\"}[5m])\"", gt=0)
    log_window_minutes: float = seed(15, "chosen: how far back the logs are read", gt=0)
    slow_query_ms: float = seed(1000, "seed 000 DATABASE_SLOW_QUERIES \">1s\"", ge=0)
    connections_ratio: float = seed(0.8, "seed 001 step 3 \"Check Database Connection Pool\", alerts at 80%",
                                    ge=0, le=1)

    spellings: ClassVar[dict[str, dict[str, Any]]] = {
        "HIGH_ERROR_RATE": {"window_seconds": 60},  # seed 000: "for 1 minute" (alert-rules.yml uses [1m])
    }


check_error_rate = checks.error_ratio.with_options(name="check-error-rate")
identify_failing_endpoints = checks.error_ratio.with_options(name="identify-failing-endpoints")
check_error_logs = checks.log_probe.with_options(name="check-error-logs")
identify_error_patterns = checks.log_probe.with_options(name="identify-error-patterns")
group_errors_by_type = checks.log_probe.with_options(name="group-errors-by-type")
group_errors_by_user = checks.log_probe.with_options(name="group-errors-by-user")
check_circuit_breakers = checks.log_probe.with_options(name="check-circuit-breakers")
verify_external_service_status = checks.external_services.with_options(name="verify-external-service-status")


@resumable(name="degrade-gracefully-or-roll-back")
def plan_error_rate(alert: Alert, rate: ProbeResult, dependencies: ProbeResult, externals: ProbeResult,
                    database: ProbeResult) -> list[PlannedAction]:
    """Seed 003 "graceful degradation (if external API down)"; seed 001 "If code issue: Rollback"."""
    if rate.ok:
        return []
    if measured(externals) and not externals.ok:
        plan = checks.flag_plan("degraded-mode", f"{rate.line()}; {externals.line()}: disable non-critical features, "
                                                 "return cached data (seed 003 graceful degradation)")
        return compact([plan])
    deps = [dependencies, externals, database]
    if all(measured(d) and d.ok for d in deps):
        plan = checks.service_plan(
            "rollback_release", alert,
            f"{rate.line()} while the database, Redis and external services are healthy: likely a code issue "
            "(seed 001 'Rollback deployment immediately'); check the deployment history before approving")
        return compact([plan])
    return []


def assess_error_rate(runbook: Runbook, alert: Alert) -> Assessment:
    """The high-error-rate steps of seeds 000-004, in order (each line names its seed)."""
    limits = runbook.limits(HighErrorRateLimits, alert.alertname)
    threshold = limits.error_ratio
    window = prometheus.window(limits.window_seconds)
    since = limits.log_window_minutes
    match = checks.job_match(alert)
    endpoint = checks.endpoint_of(alert)
    rate = collect(check_error_rate, threshold, window, ("job",), match)                                     # 003 1
    endpoints = collect(identify_failing_endpoints, threshold, window, ENDPOINTS, match, required=False)     # 002, 003
    error_logs = collect(check_error_logs, "errors", ("error", "app"), since_minutes=since)                  # 000 1
    patterns = collect(identify_error_patterns, "access_5xx", ("access",), since_minutes=since,
                       threshold_percent=threshold * 100)                                                    # 000 2
    by_type = collect(group_errors_by_type, "group_by", ("app",), field="error_type", where={"level": "ERROR"},
                      contains=endpoint, since_minutes=since)                                                # 002 4
    by_user = collect(group_errors_by_user, "group_by", ("app",), field="user_id", where={"level": "ERROR"},
                      contains=endpoint, since_minutes=since)                                                # 002 Q2
    breakers = collect(check_circuit_breakers, "errors", ("app", "error"), probe="circuit_breaker_open",
                       pattern=r"(?i)circuit.*open", since_minutes=since)                                    # 003 3
    dependencies = collect(check_service_dependencies)                                                       # 000 3
    database = collect(check_database_performance, limits.slow_query_ms, limits.connections_ratio)          # 001 3
    externals = collect(verify_external_service_status)                                                      # 001 4
    return Assessment(
        evidence=[rate, endpoints, error_logs, patterns, by_type, by_user, breakers, dependencies, database, externals],
        plans=plan_error_rate(alert, rate, dependencies, externals, database),
        verify=lambda: check_error_rate(threshold, window, ("job",), match, no_data_ok=False),
    )


HIGH_ERROR_RATE = RunbookSpec(
    name="high-error-rate",
    title="High error rate",
    alertnames=(
        "HIGH_ERROR_RATE",  # seed 000, alert-rules.yml
        "error_rate",  # seed 001, alert-rules.yml
        "HighErrorRate",  # seed 003 (and seed 004 "High Error Rate"), alert-rules.yml
        "HighEndpointErrorRate",  # seed 002 "High error rate on /api/v1/books: 8.5% (42/500 requests)"
    ),
    severity="critical",
    seeds=(
        "000 Application Alerts / HIGH_ERROR_RATE: Error rate >5% for 1 minute",
        "001 High Error Rate Alert / error_rate: Error rate exceeds 5% over 5 minutes",
        "002 2. High Error Rate: High error rate on /api/v1/books: 8.5% (42/500 requests)",
        "003 CRITICAL / HighErrorRate: More than 5% of requests are returning errors (5xx)",
        "004 Application Alerts: High Error Rate: >5% for 1 minute",
    ),
    verify=VerifySpec(budget_seconds=300, interval_seconds=15),
    approval_timeout_seconds=600,  # critical: seed 003 "< 5 min response", seed 000 on-call 5 minutes
    mitigations=(
        "set_flag",  # risky: seed 003 "graceful degradation (if external API down)": flag degraded-mode
        "rollback_release",  # risky: seed 001 "If code issue: Rollback deployment immediately"
    ),
    left_to_humans=(
        "Sentry: most frequent errors, stack traces, affected users and regions (seeds 001, 003)",
        "Review recent deployments and commits before approving a rollback (seed 001 step 2, seed 002 Q3)",
        "Traffic spike: legitimate or attack? Scale up or enable rate limiting (seed 001 step 5)",
        "Post in #incidents with severity, status and ETA; mention @on-call-primary for critical (seed 001 step 6)",
        "Follow-up: bug report, validation fix, monitoring for the specific error pattern (seed 002)",
    ),
)


high_error_rate = runbook_flow(HIGH_ERROR_RATE, assess_error_rate, HighErrorRateLimits,
                               "More than 5 % of requests fail: read the errors, check dependencies, degrade or roll back, verify.")


# -- one endpoint broken (seed 003) -----------------------------------------------------------


class EndpointBrokenLimits(Thresholds):
    error_ratio: float = seed(0.05, "seed 003 HighErrorRate \"> 5%\", for the one endpoint (path/route/handler label)",
                              ge=0, le=1)
    window_seconds: float = seed(300, "seed 003 query window [5m]", gt=0)
    log_window_minutes: float = seed(15, "chosen: how far back the logs are read", gt=0)


@resumable(name="verify-endpoint", retries=1, retry_delay_seconds=1)
def verify_endpoint(alert: Alert) -> ProbeResult:
    """Seed 003 ``curl -i http://localhost:3000/api/broken-endpoint``: GET it on the configured service.

    The path comes from the alert's label, so it is only used when it is a plain path (letters,
    digits, ``/_.-``), only with GET, and only against the service's configured origin.
    """
    path = checks.endpoint_of(alert)
    selected = checks.targets().select("services", alert.labels)
    if not path or not _SAFE_PATH.match(path) or selected is None or not selected[1].health_url:
        return checks.unconfigured("endpoint_status", "a service with health_url and a plain path label", False)
    origin = httpx.URL(selected[1].health_url).copy_with(path="/", query=None)
    result = http.health_check(str(origin.join(path)), attempts=1)
    return result.model_copy(update={"probe": "endpoint_status"})


check_endpoint_errors = checks.error_ratio.with_options(name="check-endpoint-error-rate")
check_endpoint_error_logs = checks.log_probe.with_options(name="check-endpoint-errors-in-logs")


def assess_endpoint(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 003 "One Endpoint is Broken", in order."""
    limits = runbook.limits(EndpointBrokenLimits, alert.alertname)
    endpoint = checks.endpoint_of(alert)
    threshold = limits.error_ratio
    window = prometheus.window(limits.window_seconds)
    match = {**(checks.job_match(alert) or {}), **checks.endpoint_match(alert)} or None
    status = collect(verify_endpoint, alert)                                                                 # 1
    rate = collect(check_endpoint_errors, threshold, window, ENDPOINTS, match)
    errors = collect(check_endpoint_error_logs, "group_by", ("app",), field="error_type", where={"level": "ERROR"},
                     contains=endpoint, since_minutes=limits.log_window_minutes)                            # 2
    plans = []
    if not rate.ok or not status.ok:  # 3 "Disable endpoint temporarily / Return 503 with maintenance message"
        plans = compact([checks.flag_plan(f"endpoint:{endpoint}", f"{rate.line()}; {status.line()}")]) if endpoint else []
    return Assessment(evidence=[status, rate, errors], plans=plans,
                      verify=lambda: check_endpoint_errors(threshold, window, ENDPOINTS, match, no_data_ok=False))


ENDPOINT_BROKEN = RunbookSpec(
    name="endpoint-broken",
    title="One endpoint is broken",
    alertnames=(
        "EndpointBroken",  # seed 003 "Scenario: One Endpoint is Broken"
    ),
    severity="warning",
    seeds=(
        "003 Common Alert Playbooks / Scenario: One Endpoint is Broken",
    ),
    verify=VerifySpec(budget_seconds=300, interval_seconds=15),
    approval_timeout_seconds=900,
    mitigations=(
        "set_flag",  # risky: seed 003 "Disable endpoint temporarily / Return 503 with maintenance message": flag endpoint:<path>
    ),
    left_to_humans=(
        "Sentry: filter for the endpoint, read the stack trace (seed 003 step 2)",
        "Roll back if a deployment caused it, or fix the code and re-deploy (seed 003 step 3)",
    ),
)


endpoint_broken = runbook_flow(ENDPOINT_BROKEN, assess_endpoint, EndpointBrokenLimits,
                               "Seed 003 \"One Endpoint is Broken\": verify, read its errors, disable it temporarily, verify.")


# -- memory keeps growing (seed 003) ----------------------------------------------------------


class MemoryKeepsGrowingLimits(Thresholds):
    watch_minutes: float = seed(30, "seed 003: \"Watch for 30+ minutes\" (heap now against 30 minutes ago)", gt=0)
    growth_ratio: float = seed(0.2, "chosen: the seed gives no figure; +20 % heap in 30 minutes counts as growing",
                               ge=0)
    heap_ratio: float = seed(0.9, "seed 003 HighMemoryUsage: \"> 90% of heap memory\"", ge=0, le=1)


confirm_memory_leak = checks.prometheus_query.with_options(name="confirm-memory-leak")
check_heap_ratio = checks.prometheus_query.with_options(name="check-heap-usage")


@resumable(name="identify-memory-consumers", **checks.PROBE)
def identify_memory_consumers(instance: str) -> ProbeResult:
    return hosts.top_processes(locate(instance), prometheus_url(), by="memory")


def _growth_query(match: dict[str, str] | None, minutes: float) -> str:
    """Heap now against ``minutes`` ago, relative (seed 003: "watch for 30+ minutes")."""
    m, ago = prometheus.matchers(match), f"{max(1, int(minutes * 60))}s"
    return (f"(max by (job, instance) (nodejs_heap_used_bytes{{{m}}})"
            f" - max by (job, instance) (nodejs_heap_used_bytes{{{m}}} offset {ago}))"
            f" / max by (job, instance) (nodejs_heap_used_bytes{{{m}}} offset {ago})")


def assess_memory_growth(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 003 "Memory Keeps Growing", in order."""
    limits = runbook.limits(MemoryKeepsGrowingLimits, alert.alertname)
    growth = limits.growth_ratio
    minutes = limits.watch_minutes
    match = checks.job_match(alert)
    query = _growth_query(match, minutes)
    # no data from 30 minutes ago: the growth cannot be confirmed, so it is not called healthy either
    leak = collect(confirm_memory_leak, query, growth, probe="heap_growth", no_data_ok=False)                 # 1
    heap = collect(check_heap_ratio, f"max by (job, instance) (nodejs_heap_used_bytes{{{prometheus.matchers(match)}}}"
                   f" / nodejs_heap_size_limit_bytes{{{prometheus.matchers(match)}}})",
                   limits.heap_ratio, probe="nodejs_heap_ratio", required=False)
    consumers = collect(identify_memory_consumers, alert.instance)                                            # 2
    plans = []
    if not leak.ok and measured(leak):  # 3 "Temporary fix: docker-compose restart backend"
        plans = compact([checks.service_plan("restart_service", alert, f"{leak.line()}: memory keeps growing")])
    return Assessment(evidence=[leak, heap, consumers], plans=plans,
                      verify=lambda: confirm_memory_leak(query, growth, probe="heap_growth", no_data_ok=False))


MEMORY_KEEPS_GROWING = RunbookSpec(
    name="memory-keeps-growing",
    title="Memory keeps growing",
    alertnames=(
        "MemoryKeepsGrowing",  # seed 003 "Scenario: Memory Keeps Growing"
    ),
    severity="warning",
    seeds=(
        "003 Common Alert Playbooks / Scenario: Memory Keeps Growing: watch for 30+ minutes",
    ),
    verify=VerifySpec(budget_seconds=600, interval_seconds=30),
    approval_timeout_seconds=1800,  # seed 003 warning alerts: "< 30 min response"
    mitigations=(
        "restart_service",  # risky: seed 003 "Temporary fix: docker-compose restart backend"
    ),
    left_to_humans=(
        "Identify the cause: event listener leaks, recent code changes, profile with clinic.js or a debugger (seed 003 step 2)",
        "Permanent fix: fix the code, add a memory test to CI/CD, monitor over 24 hours after the fix (seed 003 step 4)",
    ),
)


memory_keeps_growing = runbook_flow(MEMORY_KEEPS_GROWING, assess_memory_growth, MemoryKeepsGrowingLimits,
                                    "Seed 003 \"Memory Keeps Growing\": confirm over 30 minutes, find the consumer, restart, watch.")


# -- queue_processing_time / Queue Backlog / Download Queue Stalled ------------------------------


class QueueBacklogLimits(Thresholds):
    processing_p95_seconds: float = seed(300, "seed 001: \"P95 queue processing time exceeds 5 minutes\"", ge=0)
    backlog_jobs: int = seed(100, "seed 004: \"Queue Backlog: >100 pending jobs\"", ge=0)
    stall_minutes: float = seed(10, "seed 004: \"No progress for 10 minutes\"", gt=0)
    stuck_minutes: float = seed(10, "chosen (= seed 004's 10 minutes): an active job without a lock that long is stuck",
                                gt=0)
    log_window_minutes: float = seed(15, "chosen: how far back the logs are read", gt=0)


check_queue_status = checks.queue_statuses.with_options(name="check-queue-status")
check_worker_logs = checks.log_probe.with_options(name="check-worker-status")
check_processing_times = checks.prometheus_query.with_options(name="check-processing-times")


@resumable(name="clear-stuck-jobs-or-scale-workers")
def plan_queue(alert: Alert, queue: ProbeResult, stuck_minutes: float) -> list[PlannedAction]:
    """Seed 001: "If stuck jobs: Clear stuck jobs, restart workers"; "If workers overloaded: Scale up workers"."""
    if queue.ok or not measured(queue):
        return []
    plans: list[PlannedAction | None] = list(checks.dead_letter_plans(queue, stuck_minutes, "stuck jobs"))
    snaps = queue.evidence.get("queues", [])
    stalled = any("no progress" in p for s in snaps for p in s.get("problems", []))
    backlog = any("backlog" in p for s in snaps for p in s.get("problems", []))
    if stalled or plans:
        plans.append(checks.service_plan("restart_service", alert, f"{queue.line()}: workers stuck, restart them"))
    elif backlog:
        plans.append(checks.service_plan("scale_service", alert, f"{queue.line()}: workers overloaded, scale up"))
    return compact(plans)


def assess_queue(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 001 "Queue Processing Delays" and seed 004 "Queue Backlog" / "Download Queue Stalled", in order."""
    limits = runbook.limits(QueueBacklogLimits, alert.alertname)
    backlog = limits.backlog_jobs
    stall = limits.stall_minutes
    stuck = limits.stuck_minutes
    only = [alert.labels["queue"]] if alert.labels.get("queue") else None
    queue_match = {"queue": alert.labels["queue"]} if alert.labels.get("queue") else None
    queue = collect(check_queue_status, "default", only, backlog, stall, stuck)                              # 1
    workers = collect(check_worker_logs, "errors", ("worker",), since_minutes=limits.log_window_minutes)    # 2
    times = collect(check_processing_times,
                    "histogram_quantile(0.95, sum by (queue, le) (rate(queue_job_duration_seconds_bucket"
                    f"{{{prometheus.matchers(queue_match)}}}[10m])))",
                    limits.processing_p95_seconds, probe="queue_processing_p95", unit="s",
                    required=False)                                                                          # 3
    return Assessment(evidence=[queue, workers, times], plans=plan_queue(alert, queue, stuck),           # resolution
                      verify=lambda: check_queue_status("default", only, backlog, stall, stuck))


QUEUE_BACKLOG = RunbookSpec(
    name="queue-backlog",
    title="Queue processing delays, backlog or stalled queue",
    alertnames=(
        "queue_processing_time",  # seed 001, alert-rules.yml
        "QueueBacklog",  # seed 004 "Queue Backlog: >100 pending jobs"
        "DownloadQueueStalled",  # seed 004 "Download Queue Stalled: No progress for 10 minutes"
    ),
    severity="warning",
    seeds=(
        "001 Queue Processing Delays / queue_processing_time: P95 queue processing time exceeds 5 minutes",
        "004 Application Alerts: Queue Backlog: >100 pending jobs",
        "004 Business Alerts: Download Queue Stalled: No progress for 10 minutes",
    ),
    verify=VerifySpec(budget_seconds=600, interval_seconds=30),
    approval_timeout_seconds=1800,
    mitigations=(
        "move_to_dead_letter",  # risky: seed 001 "If stuck jobs: Clear stuck jobs" (to the dead-letter list, not deleted)
        "restart_service",  # risky: seed 001 "restart workers"
        "scale_service",  # risky: seed 001 "If workers overloaded: Scale up workers"
    ),
    left_to_humans=(
        "Slow jobs: optimize job processing, add timeouts (seed 001)",
        "Dependencies: external API response times, database query performance, network latency (seed 001)",
        "Replay or drop the items moved to the dead-letter list (<queue>:dead)",
    ),
)


queue_backlog = runbook_flow(QUEUE_BACKLOG, assess_queue, QueueBacklogLimits,
                             "Seed 001 \"Queue Processing Delays\", seed 004 \"Queue Backlog\" / \"Download Queue Stalled\".")


# -- video upload failures (seed 001) ------------------------------------------------------------


class VideoUploadFailuresLimits(Thresholds):
    disk_percent: float = seed(85, "seed 001 disk_usage: \"Disk usage exceeds 85%\"", ge=0, le=100)
    stall_minutes: float = seed(10, "seed 004 \"No progress for 10 minutes\" for the transcoding queue", gt=0)
    stuck_minutes: float = seed(60, "seed 001: stuck uploads \"createdAt < NOW() - INTERVAL '1 hour'\"", gt=0)
    log_window_minutes: float = seed(15, "chosen: how far back the logs are read", gt=0)
    verify_window_minutes: float = seed(5, "chosen: no upload error logged for 5 minutes", gt=0)


check_storage_status = checks.external_services.with_options(name="check-s3-bucket-status")
verify_transcoding_service = checks.external_services.with_options(name="verify-transcoding-service-status")
check_transcoding_worker_logs = checks.log_probe.with_options(name="check-transcoding-worker-logs")
review_upload_logs = checks.log_probe.with_options(name="review-upload-logs")
check_disk_space_on_workers = checks.disk_space.with_options(name="check-disk-space-on-workers")
check_worker_queue = checks.queue_statuses.with_options(name="check-worker-queue-status")


def _names(*words: str) -> list[str]:
    return [s.name for s in checks.targets().external if any(w in s.name.lower() for w in words)]


@resumable(name="clean-up-or-restart-workers")
def plan_uploads(alert: Alert, disk: ProbeResult, queue: ProbeResult, stuck_minutes: float) -> list[PlannedAction]:
    """Seed 001: "If disk space full: clean up temp files"; "If worker stuck: restart workers, clear stuck jobs"."""
    plans: list[PlannedAction | None] = []
    paths = checks.targets().paths
    if measured(disk) and not disk.ok and paths.temp:
        plans.append(PlannedAction(action="remove_temp_files", target=", ".join(paths.temp),
                                   params={"directories": paths.temp, "older_than_days": paths.retention_days},
                                   why=f"{disk.line()}: remove temporary files"))
    if measured(queue) and not queue.ok:
        plans += checks.dead_letter_plans(queue, stuck_minutes, "transcoding jobs stuck in processing")
        plans.append(checks.service_plan("restart_service", alert, f"{queue.line()}: restart transcoding workers"))
    return compact(plans)


@resumable(name="check-upload-pipeline", **checks.PROBE)
def check_upload_pipeline(queue_only: list[str] | None, stall: float, stuck: float, since_minutes: float) -> ProbeResult:
    """Verification: the worker queue progresses and no upload error was logged in the last minutes."""
    queue = checks.queue_statuses.fn("default", queue_only, None, stall, stuck, required=False)
    errors = checks.log_probe.fn("errors", ("error", "app"), probe="upload_errors", pattern=r"(?i)upload|video|transcod",
                                 since_minutes=since_minutes, threshold=0)
    if not (measured(queue) or measured(errors)):
        return checks.unconfigured("upload_pipeline", "a transcoding queue (redis queues) or an error log (logs)", True)
    return checks.combine("upload_pipeline", [queue, errors])


def assess_uploads(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 001 "Video Upload Failures", in order."""
    limits = runbook.limits(VideoUploadFailuresLimits, alert.alertname)
    since = limits.log_window_minutes
    stall = limits.stall_minutes
    stuck = limits.stuck_minutes
    only = [alert.labels["queue"]] if alert.labels.get("queue") else None
    storage = collect(check_storage_status, _names("s3", "r2", "storage"), probe="storage_status")          # 1
    transcoding = collect(verify_transcoding_service, _names("mux", "cloudflare", "transcod"), probe="transcoding_status")  # 2
    worker_logs = collect(check_transcoding_worker_logs, "errors", ("worker", "app"), probe="transcoding_log",
                          pattern=r"(?i)video|transcode", since_minutes=since)
    uploads = collect(review_upload_logs, "errors", ("error", "app"), probe="upload_errors",
                      pattern=r"(?i)upload|video", since_minutes=since)                                      # 3
    disk = collect(check_disk_space_on_workers, limits.disk_percent)                                        # 4
    queue = collect(check_worker_queue, "default", only, None, stall, stuck, required=False)                 # 5
    return Assessment(evidence=[storage, transcoding, worker_logs, uploads, disk, queue],
                      plans=plan_uploads(alert, disk, queue, stuck),
                      verify=lambda: check_upload_pipeline(
                          only, stall, stuck, limits.verify_window_minutes))


VIDEO_UPLOAD_FAILURES = RunbookSpec(
    name="video-upload-failures",
    title="Video upload failures",
    alertnames=(
        "VideoUploadFailures",  # seed 001 "Video Upload Failures" (the seed names no alert)
        "video_upload_failures",
    ),
    severity="warning",
    seeds=(
        "001 Video Upload Failures: Video uploads failing or stuck in processing",
    ),
    verify=VerifySpec(budget_seconds=600, interval_seconds=30),
    approval_timeout_seconds=1800,
    mitigations=(
        "remove_temp_files",  # safe: seed 001 "If disk is full: Remove temporary files" (configured temp dirs)
        "move_to_dead_letter",  # risky: seed 001 "clear stuck jobs from queue"
        "restart_service",  # risky: seed 001 "Restart Transcoding Workers if Stuck"
    ),
    left_to_humans=(
        "S3/R2 credentials, IAM permissions and bucket policy (seed 001 step 1): only reachability is checked here",
        "Mux credentials and API connectivity with the token (seed 001 step 2)",
        "Uploads stuck in PENDING_REVIEW/PROCESSING in the content table; the user's uploads (seed 001 steps 3, 5)",
        "File size limit (multer 500 MB) and upload rate limits (seed 001 investigation 1, 3)",
    ),
)


video_upload_failures = runbook_flow(VIDEO_UPLOAD_FAILURES, assess_uploads, VideoUploadFailuresLimits,
                                     "Seed 001 \"Video uploads failing or stuck in processing\".")
