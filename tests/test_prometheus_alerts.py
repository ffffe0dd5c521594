"""Seed alerts fired by a real Prometheus, delivered by a real Alertmanager, start their runbooks.

The chain is the production one: :class:`AppTarget` (an application on a free port) exports
series this test controls; a real Prometheus scrapes it every second and evaluates the seeds'
rules from ``deploy/prometheus/alert-rules.yml`` (expressions unchanged, ``for:`` shortened to
1 s); a real Alertmanager (group_wait 1 s) posts to the real intake of ``responder up``; each
alert's event trigger starts its runbook deployment, whose probes query the same Prometheus.

Three seed alerts, three endings:

* ``HIGH_ERROR_RATE`` (seed 000): 20 % of requests fail and keep failing; dependencies are
  healthy and no rollback is configured, so the run assesses and **escalates** (webhook).
* ``NoProductsSynced`` (seed 003): the runbook retries the sync through the configured HTTP job;
  the application then counts synced products, Prometheus sees them, the run is **Resolved**.
* ``USER_AUTHENTICATION_ISSUES`` (seed 000): one address brute-forces logins (auth.log and the
  login counter); the runbook asks to block it, the test approves through the API, the address
  lands in the Redis blocklist with an expiry, the application stops counting its attempts, and
  the failed-login rate measured by Prometheus drops: **Resolved**.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis

from support.capture import CaptureServer
from support.common import HTTP, wait_for
from support.prefect import report, resume, runs_for_incident, wait_run_final
from support.prometheus import AlertmanagerServer, AppTarget, PrometheusServer, seed_rules
from support.responder import ResponderProcess, make_config

ATTACKER, USERS = "203.0.113.7", "198.51.100.20"


class World:
    pass


@pytest.fixture(scope="module")
def world(prefect_server, redis_url, postgres_url, tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("prom-alerts")
    w = World()
    w.test_id = uuid.uuid4().hex[:8]
    w.prefix = f"responder-test-{w.test_id}"
    w.blocklist = f"{w.prefix}:blocked"
    w.redis = redis.Redis.from_url(redis_url, decode_responses=True)
    w.auth_log, w.access_log = tmp / "auth.log", tmp / "access.log"
    w.auth_log.write_text("")
    stamp = datetime.now(timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000")
    w.access_log.write_text("".join(f'10.0.0.1 - - [{stamp}] "GET /api/v1/books HTTP/1.1" {s} 10 "-" "t"\n'
                                    for s in ["200"] * 8 + ["500", "503"]))
    w.webhook = CaptureServer()
    w.app = AppTarget()
    w.app.status_pages["stripe"] = (200, {"status": {"indicator": "none", "description": "All Systems Operational"}})

    w.responder = ResponderProcess(tmp / "home", tmp / "config", prefect_server.api_url)
    w.am = AlertmanagerServer(tmp, f"{w.responder.url}/alerts", w.responder.token)
    w.prom = PrometheusServer(tmp, {"shop": [f"127.0.0.1:{w.app.port}"]},
                              rules=seed_rules("HIGH_ERROR_RATE", "NoProductsSynced", "USER_AUTHENTICATION_ISSUES",
                                               test_id=w.test_id),
                              alertmanager=w.am.url)
    make_config(
        tmp,
        targets={
            "processes": {"killable_cmdline": [], "protected_names": []},
            "postgres": {"default": {"url": postgres_url}},
            "redis": {"default": {"url": redis_url, "blocklist_key": w.blocklist, "ratelimit_prefix": f"{w.prefix}:rl:"}},
            "monitoring": {"prometheus_url": w.prom.url, "alertmanager_url": w.am.url},
            "external": [{"name": "stripe", "url": f"{w.app.url}/status/stripe", "timeout_s": 2}],
            "jobs": {"sync-products": {"url": f"{w.app.url}/api/orchestrator/sync-products", "method": "POST"}},
            "logs": {"auth": {"path": str(w.auth_log)}, "access": {"path": str(w.access_log), "format": "access"}},
        },
        notify={"webhooks": [f"{w.webhook.url}/escalations"]},
        thresholds={
            "high-error-rate": {"window_seconds": 10, "window_seconds.HIGH_ERROR_RATE": 10},
            "no-products-synced": {"verify_window_seconds": 30},
            "user-authentication-issues": {"window_seconds": 3, "failed_logins_per_address": 5},
        },
        runbook_overrides={
            "high-error-rate": {"verify": {"budget_seconds": 3, "interval_seconds": 1}},
            "no-products-synced": {"verify": {"budget_seconds": 30, "interval_seconds": 0.5}},
            "user-authentication-issues": {"verify": {"budget_seconds": 40, "interval_seconds": 1},
                                           "approval_timeout_seconds": 60},
        },
    )
    w.responder.start()
    try:
        yield w
    finally:
        w.responder.stop()
        w.prom.stop()
        w.am.stop()
        w.app.close()
        w.webhook.close()
        keys = list(w.redis.scan_iter(match=f"*{w.prefix}*"))
        if keys:
            w.redis.delete(*keys)
        w.redis.close()


def _incident(w: World, runbook: str) -> dict | None:
    incidents = HTTP.get(f"{w.responder.url}/incidents", headers={"Authorization": f"Bearer {w.responder.token}"}).json()
    return next((i for i in incidents if i["runbook"] == runbook and w.test_id in i["group_key"]), None)


def _start_login_traffic(w: World) -> None:
    """Users log in (5/s, succeed); the attacker tries 3/s and fails, until the blocklist holds it."""
    def hook(dt: float) -> None:
        w.app.inc("auth_login_attempts_total", {"result": "success"}, 5 * dt)
        score = w.redis.zscore(w.blocklist, ATTACKER)
        if score is not None and score > time.time():
            return  # blocked at the edge: no login attempt reaches the application
        w.app.inc("auth_login_attempts_total", {"result": "failure"}, 3 * dt)
        now = datetime.now(timezone.utc).isoformat()
        with w.auth_log.open("a") as fh:
            fh.write(f"{now} WARN authentication failed for user admin from {ATTACKER}\n")
    w.app.inc("auth_login_attempts_total", {"result": "success"}, 0)
    w.app.inc("auth_login_attempts_total", {"result": "failure"}, 0)
    w.app.hooks.append(hook)


@pytest.fixture(scope="module")
def fired(world):
    """Make the three conditions true once the responder is ready; Prometheus does the rest."""
    w = world
    w.app.requests("/api/v1/books", per_second=20, error_share=0.2, latency_s=0.05)        # HIGH_ERROR_RATE
    w.app.inc("affiliate_products_synced_total", None, 120)                                # exists, stands still
    w.app.on_post["sync-products"] = lambda: w.app.inc("affiliate_products_synced_total", None, 5)
    _start_login_traffic(w)                                                                # USER_AUTHENTICATION_ISSUES
    incidents = wait_for(lambda: all(_incident(w, r) for r in ("high-error-rate", "no-products-synced",
                                                                "user-authentication-issues"))
                         and {r: _incident(w, r) for r in ("high-error-rate", "no-products-synced",
                                                            "user-authentication-issues")},
                         60, interval=0.5, what="Alertmanager to deliver the three seed alerts")
    return incidents


def _deployment_id(api: str, flow: str, name: str) -> str:
    return HTTP.get(f"{api}/deployments/name/{flow}/{name}").json()["id"]


def test_high_error_rate_from_prometheus_is_assessed_and_escalated(world, fired, prefect_server):
    api, incident = prefect_server.api_url, fired["high-error-rate"]
    run = wait_run_final(api, incident["id"], timeout=90)
    assert run["deployment_id"] == _deployment_id(api, "high-error-rate", "high-error-rate")
    assert run["created_by"]["type"] == "AUTOMATION"
    assert run["parameters"]["alert"]["labels"]["alertname"] == "HIGH_ERROR_RATE"
    assert run["state"]["name"] == "Escalated", run["state"]
    text = report(api, incident["id"])
    assert "| error_ratio | **no** |" in text          # measured by Prometheus: 20 % > 5 %
    assert "| access_log_5xx | **no** | 20%" in text   # 2 of 10 lines of the access log
    assert "| service_dependencies | yes |" in text     # real PostgreSQL and Redis answered
    escalations = wait_for(lambda: [r["body"] for r in world.webhook.requests if r["body"].get("kind") == "escalated"
                                    and r["body"].get("incident", {}).get("id") == incident["id"]], 10,
                           what="the escalation message")
    assert escalations and "error_ratio" in escalations[0]["reason"]


def test_no_products_synced_retries_the_sync_and_verifies_through_prometheus(world, fired, prefect_server):
    api, incident = prefect_server.api_url, fired["no-products-synced"]
    run = wait_run_final(api, incident["id"], timeout=90)
    assert run["deployment_id"] == _deployment_id(api, "no-products-synced", "no-products-synced")
    assert run["state"]["name"] == "Resolved", run["state"]
    posts = [p for p in world.app.posts if p["path"].endswith("/sync-products")]
    assert len(posts) == 1
    assert {k.lower(): v for k, v in posts[0]["headers"].items()}["idempotency-key"] == f"{incident['id']}-sync-products"
    synced = world.prom.query("affiliate_products_synced_total")
    assert float(synced[0]["value"][1]) == 125


def test_brute_force_is_blocked_after_approval_and_failed_logins_drop(world, fired, prefect_server):
    api, incident = prefect_server.api_url, fired["user-authentication-issues"]

    def paused():
        runs = runs_for_incident(api, incident["id"])
        return runs[0] if runs and runs[0]["state"]["type"] == "PAUSED" else None
    run = wait_for(paused, 90, what="the block to wait for approval")
    assert world.redis.zscore(world.blocklist, ATTACKER) is None, "nothing is blocked before approval"
    resume(api, run["id"], True, "brute force from one address", "carol")

    final = wait_run_final(api, incident["id"], timeout=90)
    assert final["deployment_id"] == _deployment_id(api, "user-authentication-issues", "user-authentication-issues")
    assert final["state"]["name"] == "Resolved", final["state"]
    until = world.redis.zscore(world.blocklist, ATTACKER)
    assert until is not None and time.time() + 3000 < until <= time.time() + 3600  # block_seconds 3600
    assert world.redis.zscore(world.blocklist, USERS) is None
    text = report(api, incident["id"])
    assert f"| block_address | address {ATTACKER} | risky | done |" in text and "carol" in text
