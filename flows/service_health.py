"""ServiceDown / health_check_failure: seeds 001, 002, 003 and 004 in one flow, with seed 000's
restart and rollback procedures as its mitigations.

Started by the ``responder.alert.firing`` event for any spelling of its spec (:data:`SPEC`,
``service-health``): ``ServiceDown`` (seed 003, seed 004
"Service Down: Health check failures") and ``health_check_failure`` (seed 001; seed 002's
"health check failing: 3 consecutive failures"). The alert's labels select one ``services``
entry of ``config/targets.yaml`` (its name equal to the ``service`` or ``job`` label, or its
``match`` labels, else ``default``)::

    services:
      ai-affiliate-backend:
        health_url: http://127.0.0.1:3000/health
        health_detailed_url: http://127.0.0.1:3000/health/detailed
        restart: [docker-compose, restart, backend]
        rollback: [./scripts/rollback.sh]

The steps:

1. Check the health endpoint (``curl http://localhost:3000/health``), failing only after
   ``consecutive_failures`` (3, seed 002) tries in a row              → ``check-health-endpoint``
2. Check the listening port (``netstat -tlnp | grep 8000``; "Connection refused")
                                                                      → ``check-port``
3. Check individual services (``curl /health/detailed``)             → ``check-detailed-health``
4. Check service dependencies: database, Redis, MongoDB (seeds 001, 002) for the configured
   targets the labels select (readiness only; their own runbooks restart them)
                                                                      → ``check-dependencies``
5. Restart the service (seed 000 "Graceful restart", 001 "Restart application", 002 "sudo
   systemctl restart auto-author", 003 "docker-compose start backend"), risky → ``mitigate``
6. Verify: the health check passes again ("Monitor for 5 minutes")    → ``verify_until_ok``
7. Last resort, only when the restart ran and did not bring it back: the configured rollback
   (seed 000 "Application rollback"; seed 003 "Repeated crashes → Review recent deployments"),
   risky, then verify again                                           → ``mitigate``, ``verify_until_ok``
8. Close, or escalate.

Why seed 000's "Service Restart Sequence" and "Rollback Procedures" live here and not in a runbook
of their own: they are recovery procedures, not alerts, and no rule fires an alert that means
"restart required" (``deploy/prometheus/alert-rules.yml``). What a user expects is that the
alert for a service that stopped answering leads to those procedures, in seed 000's order:
graceful restart first, rollback only when the restart did not help. Their other steps are left
to humans: "Database restart: only if absolutely necessary" is the database runbooks' business
(``flows/database.py``), "Full stack restart: emergency only" and "Database rollback:
pg_restore" lose work or data, which no approval prompt at 3 a.m. should decide.

A service without a ``health_url`` cannot be verified, so nothing is restarted: the run says so
and escalates; so does an alert whose labels select no service.
"""

from __future__ import annotations

import httpx
from core.results import resumable
from pydantic import SecretStr

from flows import checks
from flows.lifecycle import acknowledge, conclude, held, mitigate, runbook_composition, runtime, step, verify_until_ok
from core.alerts import Alert, IncidentRef
from core.catalog import Runbook, RunbookSpec, ServiceTarget, Thresholds, VerifySpec, seed
from tasks.base import ActionOutcome, ProbeResult
from tasks.mitigations import PlannedAction
from tasks.probes import http, mongo, postgres, redis


SPEC = RunbookSpec(
    name="service-health",
    title="Service down / health check failing",
    alertnames=(
        "ServiceDown",  # seed 003; seed 004 "Service Down: Health check failures"
        "SERVICE_DOWN",
        "service_down",
        "health_check_failure",  # seed 001; seed 002 "health check failing: 3 consecutive failures"
        "HealthCheckFailure",
        "HEALTH_CHECK_FAILURE",
    ),
    severity="critical",
    seeds=(
        "001 Health Check Failure / health_check_failure: Health check endpoint returned unhealthy",
        "002 1. Health Check Failure: \"Auto-Author health check failing: 3 consecutive failures\" (Severity: Critical)",
        "003 CRITICAL / ServiceDown: Backend service is not responding to health checks (< 5 min response)",
        "004 Infrastructure Alerts: Service Down: Health check failures",
        "000 Recovery Procedures: Service Restart Sequence (graceful restart) and Rollback Procedures (application rollback)",
    ),
    verify=VerifySpec(budget_seconds=300, interval_seconds=15),  # seed 003 "Monitor for 5 minutes"; "No recovery after 5 min → Contact platform team"
    approval_timeout_seconds=300,  # seed 003 CRITICAL "< 5 min response"; seed 000 critical: on-call within 5 minutes
    mitigations=(
        "restart_service",  # risky: seed 000 "Graceful restart"; 001 "Restart application"; 002 "sudo systemctl restart auto-author"; 003 "docker-compose start backend"
        "rollback_release",  # risky: seed 000 "Application rollback"; 003 "Repeated crashes → Review recent deployments": last resort, proposed only when the restart did not bring the service back
    ),
    left_to_humans=(
        "Check application logs (seeds 001, 002, 003: docker logs / tail app.log / pm2 logs)",
        "Dependency down (database, Redis, MongoDB in the report): their own runbooks restart them; seed 000 \"Database restart: only if absolutely necessary\"",
        "OOM: increase the memory limit; resource exhausted: scale (seed 003)",
        "Port conflict: kill the process using the port (seed 003) - which process may go is a human decision",
        "Network issues: firewall, listening ports, DNS (seed 002)",
        "Full stack restart: docker-compose down && up (seed 000 \"Emergency only\")",
        "Database rollback: pg_restore from backup (seed 000): loses data written since the backup",
    ),
)

RUNBOOK = "service-health"


class Limits(Thresholds):
    consecutive_failures: int = seed(3, "seed 002: \"health check failing: 3 consecutive failures\"", gt=0)
    health_timeout_seconds: float = seed(5, "seed 003 \"Connection refused or timeout\" gives no figure: ours", gt=0)


@resumable(name="check-health-endpoint")
def check_health_endpoint(url: str, attempts: int, timeout_s: float) -> ProbeResult:
    """Seed 002 "3 consecutive failures": not healthy only when every try fails (the tries are the retries)."""
    return http.health_check(url, timeout_s=timeout_s, attempts=attempts, delay_s=1.0)


@resumable(name="check-port")
def check_port(url: str) -> ProbeResult:
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return http.port_listening(parsed.host, port)


check_detailed_health = step("check-detailed-health", http.health_detailed, retries=1)


@resumable(name="check-dependencies")
def check_dependencies(alert: Alert) -> list[ProbeResult]:
    """Seed 001 "Check Service Status: Database connection, Redis connection"; seed 002 "Check MongoDB status"."""
    _, catalog, _ = runtime()
    readiness = {"postgres": postgres.readiness, "redis": redis.ping, "mongodb": mongo.ping}
    results = []
    for kind, probe in readiness.items():
        chosen = catalog.targets.select(kind, alert.labels)
        if chosen is None or chosen[1].url is None:
            continue
        url: SecretStr = chosen[1].url
        result = probe(url)
        results.append(result.model_copy(update={"summary": f"{kind}.{chosen[0]}: {result.summary}"}))
    return results


def _plan(action: str, name: str, argv: list[str], why: str) -> list[PlannedAction]:
    return [PlannedAction(action=action, target=name, params={"service": name, "argv": argv}, why=why)]


@resumable(name="plan-restart")
def plan_restart(name: str, service: ServiceTarget, health: ProbeResult, dependencies: list[ProbeResult]) -> list[PlannedAction]:
    """Seed 000 "Graceful restart" of the alert's service, while its health check fails."""
    if health.ok or not service.restart:
        return []
    down = [d.line() for d in dependencies if not d.ok]
    why = health.line() + (f"; dependencies not answering: {'; '.join(down)}" if down else "")
    return _plan("restart_service", name, service.restart, why)


@resumable(name="plan-rollback")
def plan_rollback(name: str, service: ServiceTarget, last: ProbeResult) -> list[PlannedAction]:
    """Seed 000 "Application rollback", the last resort: the service's configured rollback argv."""
    if not service.rollback:
        return []
    return _plan("rollback_release", name, service.rollback, f"still unhealthy after the restart: {last.line()}")


def _verify(runbook: Runbook, incident: IncidentRef, url: str, attempts: int, timeout_s: float):
    return verify_until_ok(lambda: check_health_endpoint(url, attempts, timeout_s), incident, runbook)


@runbook_composition(SPEC, Limits)
def service_health(alert: Alert, incident: IncidentRef | None = None):
    """Respond to a service failing its health checks the way seeds 000-004 say to."""
    _, catalog, _ = runtime()
    runbook = catalog.get(RUNBOOK)
    limits = runbook.limits(Limits, alert.alertname)
    attempts, timeout_s = limits.consecutive_failures, limits.health_timeout_seconds

    incident = acknowledge(RUNBOOK, alert, incident)
    if incident is None:
        return "duplicate"
    selected = catalog.targets.select("services", alert.labels)
    if selected is None or not selected[1].health_url:
        missing = ProbeResult(
            probe="service_target", ok=False,
            summary="no service configured for this alert (config/targets.yaml services)" if selected is None
            else f"service {selected[0]} has no health_url configured: it cannot be checked or verified",
        )
        return conclude(runbook, alert, incident, [missing], [], "not-verified", missing)
    name, service = selected

    health = check_health_endpoint(service.health_url, attempts, timeout_s)
    port = check_port(service.health_url)
    evidence = [health, port]
    if service.health_detailed_url and port.ok:
        evidence.append(checks.detailed_health(service.health_detailed_url, name, check_detailed_health))
    dependencies = check_dependencies(alert)
    evidence += dependencies

    restart = plan_restart(name, service, health, dependencies)
    outcomes: list[ActionOutcome] = mitigate(runbook, incident, restart, evidence, alert)
    if held(outcomes):
        return conclude(runbook, alert, incident, evidence, outcomes, "held", None)
    last, verdict = _verify(runbook, incident, service.health_url, attempts, timeout_s)

    restart_ran = not restart or any(o.status in ("done", "failed", "would_do") for o in outcomes)
    if verdict == "not-verified" and not health.ok and restart_ran and last is not None:
        rollback = plan_rollback(name, service, last)
        if rollback:
            outcomes += mitigate(runbook, incident, rollback, [*evidence, last], alert)
            last, verdict = _verify(runbook, incident, service.health_url, attempts, timeout_s)
    return conclude(runbook, alert, incident, evidence, outcomes, verdict, last)
