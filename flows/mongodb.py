"""MongoDB connection lost: seed 002 "4. Database Connection Failure", as one flow.

Started by the ``responder.alert.firing`` event for any alert name of its spec (:data:`SPEC`,
``mongodb-connection-lost``). Seed 002 names no alert (its alert text is "MongoDB
connection lost"), so the spec routes ``MongoDBConnectionLost``, ``mongodb_connection_lost``
and ``MongodbDown`` (the usual ``mongodb_exporter`` rule, ``mongodb_up == 0``). Seed 003's
``DatabaseConnectionFailure`` is PostgreSQL's (``flows/database.py``). The steps:

1. Check MongoDB status / 2. Try to connect (``mongosh --eval "db.adminCommand('ping')"``); the
   ping's error also answers 5. "Check network: telnet localhost 27017" (refused or timed out)
                                                                   → ``check-mongodb-ping``
4. Check the connection pool: ``curl /health/detailed | jq '.checks.mongodb'`` of the alert's
   service, when it has a ``health_detailed_url``                    → ``check-application-health``
   and, when MongoDB answers, ``db.serverStatus().connections``      → ``check-mongodb-connections``
   and who holds them (``currentOp`` with ``$all``: by client host and ``appName``, per
   operation; the longest-running operations)                       → ``identify-mongodb-connection-holders``
Resolution, risky (approval):
   "If MongoDB is down: sudo systemctl start mongod": the restart argv of the ``services`` entry
   named ``mongodb`` (never one chosen by labels: they name the exporter or the application)
   "If connection pool exhausted: restart application": the alert's service (selected by labels)
                                                                     → ``mitigate``
Verify: ping again, and "Check if it stays up: sleep 30; systemctl status mongod": ok only
when a second ping ``stay_up_seconds`` later also answers          → ``verify-mongodb-stays-up``

The alert's labels select one ``mongodb`` entry of ``config/targets.yaml``; its URL is a
``SecretStr`` handed to the probes only. No entry (or no URL): the run says "no MongoDB target
configured" and escalates. Reading ``mongod.log`` and authentication failures are left to humans.

Tested here: only the paths a missing server takes (no MongoDB server can run on the build
machine): nothing listening → "MongoDB unreachable" in the evidence, the restart asked for and run
after approval, verification failing, escalation; and the unconfigured target. Untested: the
reachable paths (``check-mongodb-connections``, ``identify-mongodb-connection-holders`` and the
pool-exhausted restart of the application), which need a live ``mongod``; the holders' grouping
itself is tested on hand-written ``currentOp`` documents (``tests/test_probes_mongo.py``).
"""

from __future__ import annotations

import time

from core.results import resumable
from pydantic import SecretStr

from flows import checks
from flows.lifecycle import Assessment, cannot_measure, proposals, runbook_flow, runtime, step
from core.alerts import Alert
from core.catalog import Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction
from tasks.probes import mongo


SPEC = RunbookSpec(
    name="mongodb-connection-lost",
    title="MongoDB connection lost",
    alertnames=(
        "MongoDBConnectionLost",  # seed 002 "MongoDB connection lost" (seed 002 names no alert; these are the spellings we route)
        "mongodb_connection_lost",
        "MongodbDown",  # the usual mongodb_exporter rule name (mongodb_up == 0)
    ),
    severity="critical",
    seeds=(
        "002 4. Database Connection Failure: \"MongoDB connection lost\" (Severity: Critical)",
    ),
    verify=VerifySpec(budget_seconds=120, interval_seconds=10),
    approval_timeout_seconds=300,  # critical: 5 minutes (seed 000 contacts)
    mitigations=(
        "restart_service",  # risky: seed 002 "If MongoDB is down: sudo systemctl start mongod" (the `mongodb` entry of targets.yaml services); "If connection pool exhausted: restart application" (the alert's service)
    ),
    left_to_humans=(
        "Check MongoDB logs: tail -n 100 /var/log/mongodb/mongod.log; if it crashes again, find the root cause there (seed 002)",
        "Authentication failure: verify credentials, update environment variables (seed 002)",
        "Review the application's maxPoolSize (seed 002)",
        "Investigate why MongoDB stopped; backup/failover plan (seed 002 follow-up)",
    ),
)

DATABASE_SERVICE = "mongodb"


class Limits(Thresholds):
    connections_ratio: float = seed(
        0.8, "seed 002 \"If connection pool exhausted: db.serverStatus().connections\" gives no figure: seed 001's 80%",
        gt=0)
    stay_up_seconds: float = seed(30, "seed 002 \"Check if it stays up: sleep 30; sudo systemctl status mongod\"", ge=0)


@resumable(name="select-mongodb-target")
def select_mongodb_target(alert: Alert) -> tuple[str, SecretStr] | ProbeResult:
    return checks.data_store("mongodb", alert)


@resumable(name="check-mongodb-ping", retries=1, retry_delay_seconds=1)
def check_mongodb_ping(url: SecretStr) -> ProbeResult:
    result = mongo.ping(url)
    if not result.ok:
        result.summary = f"MongoDB connection lost: {result.summary} ({result.evidence.get('error_type')})"
    return result


check_mongodb_connections = step("check-mongodb-connections", mongo.connections, retry_delay_seconds=2)
identify_mongodb_connection_holders = step("identify-mongodb-connection-holders", mongo.connection_holders,
                                           retry_delay_seconds=2)


@resumable(name="verify-mongodb-stays-up")
def verify_mongodb_stays_up(url: SecretStr, stay_up_seconds: float) -> ProbeResult:
    """Seed 002 "Check if it stays up: sleep 30": ping, wait, ping again."""
    first = mongo.ping(url)
    if not first.ok:
        return first
    time.sleep(stay_up_seconds)
    second = mongo.ping(url)
    return second.model_copy(update={
        "summary": f"{second.summary} {stay_up_seconds:g} s after a first pong" if second.ok
        else f"answered, then {second.summary} within {stay_up_seconds:g} s",
    })


@resumable(name="start-mongodb-or-restart-application")
def plan_resolution(
    alert: Alert, ping: ProbeResult, connections: ProbeResult | None, app_health: ProbeResult | None
) -> list[PlannedAction] | ProbeResult:
    """Seed 002 "Resolution Steps": start MongoDB when down; restart the application when its pool is exhausted."""
    if not ping.ok:
        return checks.data_store_restart("mongodb", DATABASE_SERVICE, ping)
    _, catalog, _ = runtime()
    exhausted = [r for r in (connections, app_health) if r is not None and not r.ok]
    selected = catalog.targets.select("services", alert.labels)
    if exhausted and selected is not None and selected[1].restart:
        name, service = selected
        return [PlannedAction(
            action="restart_service", target=name,
            params={"service": name, "argv": service.restart},
            why="MongoDB answers but " + "; ".join(r.line() for r in exhausted) + " (seed 002: restart application to reset connections)",
        )]
    return []


def assess(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 002's steps, in order, on the MongoDB the alert's labels select."""
    limits = runbook.limits(Limits, alert.alertname)
    target = select_mongodb_target(alert)
    if isinstance(target, ProbeResult):
        return cannot_measure(target)
    _, url = target
    ping = check_mongodb_ping(url)
    evidence = [ping]
    connections = None
    if ping.ok:
        connections = check_mongodb_connections(url, limits.connections_ratio)
        evidence += [connections, identify_mongodb_connection_holders(url)]
    app_health = checks.application_health(alert)
    if app_health is not None:
        evidence.append(app_health)
    stay_up = limits.stay_up_seconds * runtime()[0].time_scale
    return Assessment(evidence=evidence, plans=proposals(plan_resolution(alert, ping, connections, app_health), evidence),
                      verify=lambda: verify_mongodb_stays_up(url, stay_up))


mongodb_connection_lost = runbook_flow(SPEC, assess, Limits,
                                       "Respond to a lost MongoDB connection the way seed 002 says to.")
