"""redis_connection_failure: seed 001 "Redis Connection Failure", as one flow.

Started by the ``responder.alert.firing`` event for any alert name of its spec (:data:`SPEC`; the
Prometheus rule is ``redis_up == 0``). The steps:

1. Check Redis status: ``redis-cli -u $REDIS_URL ping``              → ``check-redis-ping``
   (refused, timed out or authentication failed: the error is the evidence for "check network
   connectivity" and "verify REDIS_URL / credentials")
2. Check Redis memory usage, when it answers                         → ``check-redis-memory``
   "Redis connection errors" while it answers: who holds the clients (``CLIENT LIST`` grouped by
   name and client host, against ``maxclients``)                     → ``identify-redis-clients``
3. "If Redis down: Restart Redis service": the restart argv of the ``services`` entry named
   ``redis``, risky (approval)                                        → ``mitigate``
4. Verify: ping again until PONG; close or escalate.

The alert's labels select one ``redis`` entry of ``config/targets.yaml`` (name equal to the
``service``/``job``/``datname`` label, its ``match``, else ``default``); its URL is a
``SecretStr`` handed to the probes only. No entry (or no URL): "no Redis target configured",
escalation. The restart is never chosen by labels: on a data-store alert they name the exporter
or the application that noticed, and restarting that would not bring Redis back::

    services:
      redis:
        restart: [systemctl, restart, redis-server]
"""

from __future__ import annotations

from core.results import resumable
from pydantic import SecretStr

from flows import checks
from flows.lifecycle import Assessment, cannot_measure, proposals, runbook_flow, step
from core.alerts import Alert
from core.catalog import Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction
from tasks.probes import redis


SPEC = RunbookSpec(
    name="redis-connection-failure",
    title="Redis connection failure",
    alertnames=(
        "redis_connection_failure",  # seed 001
        "RedisConnectionFailure",
        "REDIS_CONNECTION_FAILURE",
    ),
    severity="warning",  # seed 001 "Application may still function (Redis is optional)"
    seeds=(
        "001 Redis Connection Failure / redis_connection_failure: Redis connection failed",
    ),
    verify=VerifySpec(budget_seconds=60, interval_seconds=5),
    approval_timeout_seconds=900,  # seed 001 escalation level 1: 0-15 minutes
    mitigations=(
        "restart_service",  # risky: seed 001 "If Redis down: Restart Redis service" (the `redis` entry of targets.yaml services)
    ),
    left_to_humans=(
        "Check application logs for Redis errors and whether it degrades gracefully (seed 001)",
        "Configuration: verify REDIS_URL and credentials (seed 001)",
        "Network: connectivity, firewall rules, DNS resolution (seed 001)",
    ),
)

DATABASE_SERVICE = "redis"


class Limits(Thresholds):
    memory_ratio: float = seed(
        0.85, "seed 001 \"Check Redis memory usage\" gives no figure: seed 000's \">85%\" of maxmemory", gt=0)
    clients_ratio: float = seed(
        0.8, "connected clients / maxclients; ours (seed 001's 80 % connection warning for PostgreSQL)", gt=0)


@resumable(name="select-redis-target")
def select_redis_target(alert: Alert) -> tuple[str, SecretStr] | ProbeResult:
    return checks.data_store("redis", alert)


check_redis_ping = step("check-redis-ping", redis.ping, retries=1)
identify_redis_clients = step("identify-redis-clients", redis.connection_holders)
check_redis_memory = step("check-redis-memory", redis.memory)


@resumable(name="plan-redis-restart")
def plan_redis_restart(ping: ProbeResult) -> list[PlannedAction] | ProbeResult:
    """Seed 001 "If Redis down: Restart Redis service", only while it does not answer."""
    return checks.data_store_restart("redis", DATABASE_SERVICE, ping)


def assess(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 001's steps, in order, on the Redis the alert's labels select."""
    limits = runbook.limits(Limits, alert.alertname)
    target = select_redis_target(alert)
    if isinstance(target, ProbeResult):
        return cannot_measure(target)
    _, url = target
    ping = check_redis_ping(url)
    evidence = [ping]
    if ping.ok:
        evidence.append(check_redis_memory(url, limits.memory_ratio))
        evidence.append(identify_redis_clients(url, limits.clients_ratio))
    return Assessment(evidence=evidence, plans=proposals(plan_redis_restart(ping), evidence),
                      verify=lambda: check_redis_ping(url))


redis_connection_failure = runbook_flow(SPEC, assess, Limits,
                                        "Respond to an unreachable Redis the way seed 001 says to.")
