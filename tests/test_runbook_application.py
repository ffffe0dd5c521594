"""Application runbooks end to end: an Alertmanager body posted to the real intake starts the
runbook deployment; its probes read a real Prometheus scraping :class:`AppTarget`, real log files
and the real Redis; risky steps are approved or rejected through the Prefect API.

* ``response_time_p95`` (seed 001, 1 s): /api/v1/toc answers in 1.5 s; once the assessment is
  done the application gets fast again and the verification (P95 from Prometheus) passes: Resolved.
* ``QueueBacklog`` (seed 004): a BullMQ queue with a job stuck in *active* without a lock; the
  dead-letter move is approved, the job lands in ``bull:<q>:dead``, the queue checks clean: Resolved.
* ``HighEndpointErrorRate`` (seed 002): errors on /api/v1/books in Prometheus and in the JSON
  log (grouped by error type and user, as the seed's ``jq`` does); an external dependency is
  down, so the runbook asks to switch the ``degraded-mode`` flag; approved, the flag is set in
  Redis; errors go on, so the run escalates.
* ``MemoryKeepsGrowing`` (seed 003): the heap grows; the configured restart command (a real
  process that calls the application's restart endpoint) is approved; the heap drops: Resolved.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from datetime import datetime, timezone

import pytest
import redis

from support.alerts import alert_body
from support.common import HTTP, wait_for
from support.prefect import prefect_post, report, resume, runs_for_incident, wait_run_final
from support.prometheus import AppTarget, PrometheusServer
from support.queues import bullmq_queue
from support.responder import make_config, running_responder


@pytest.fixture(scope="module")
def env(prefect_server, redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runbook-app")
    test_id = uuid.uuid4().hex[:8]
    prefix = f"responder-test-{test_id}"
    app = AppTarget()
    app.requests("/api/v1/toc", per_second=20, error_share=0.0, latency_s=1.5)
    app.requests("/api/v1/books", per_second=20, error_share=0.3, latency_s=0.05)
    app.status_pages["mux"] = (200, {"status": {"indicator": "major", "description": "Video API outage"}})
    app.gauge("nodejs_heap_size_limit_bytes", None, 1000.0)
    heap = {"value": 100.0, "growth": 0.0}  # the memory test makes it grow
    app.gauge("nodejs_heap_used_bytes", None, heap["value"])

    def grow(dt: float) -> None:
        heap["value"] += heap["growth"] * dt
        app.gauge("nodejs_heap_used_bytes", None, heap["value"])

    def restart() -> None:
        heap.update(value=80.0, growth=0.0)
    app.hooks.append(grow)
    app.on_post["restart"] = restart
    (tmp / "app.log").write_text("".join(json.dumps(r) + "\n" for r in (
        [{"timestamp": datetime.now(timezone.utc).isoformat(), "level": "ERROR", "path": "/api/v1/books",
          "error_type": "DatabaseError", "user_id": "u1"}] * 3
        + [{"timestamp": datetime.now(timezone.utc).isoformat(), "level": "ERROR", "path": "/api/v1/books",
            "error_type": "ValidationError", "user_id": "u2"}]
        + [{"timestamp": datetime.now(timezone.utc).isoformat(), "level": "INFO", "path": "/api/v1/books"}] * 5)))
    prom = PrometheusServer(tmp, {"shop": [f"127.0.0.1:{app.port}"]})
    queue = f"video-transcoding-{test_id}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    bullmq_queue(client, queue, waiting=2, active=[("stuck-1", 20 * 60, False)], completed_ago_s=20)
    restart_argv = [sys.executable, "-c", "import urllib.request as u; "
                    f"u.urlopen(u.Request('{app.url}/api/orchestrator/restart', data=b'', method='POST'), timeout=5)"]
    config = make_config(
        tmp,
        targets={
            "processes": {"killable_cmdline": [], "protected_names": []},
            "services": {"shop": {"restart": restart_argv}},
            "redis": {"default": {"url": redis_url, "queues": [{"name": queue, "kind": "bullmq", "threshold": 100}]}},
            "monitoring": {"prometheus_url": prom.url},
            "external": [{"name": "mux", "url": f"{app.url}/status/mux", "timeout_s": 2}],
            "logs": {"app": {"path": str(tmp / "app.log"), "format": "json"}},
            "flags": {"degraded-mode": {"redis": "default", "key": f"{prefix}:flags:degraded-mode"}},
        },
        thresholds={"high-response-time": {"window_seconds": 3}, "high-error-rate": {"window_seconds": 10},
                    "memory-keeps-growing": {"watch_minutes": 0.05, "growth_ratio": 0.1}},
        runbook_overrides={
            "high-response-time": {"verify": {"budget_seconds": 40, "interval_seconds": 1}},
            "queue-backlog": {"verify": {"budget_seconds": 10, "interval_seconds": 1}, "approval_timeout_seconds": 60},
            "high-error-rate": {"verify": {"budget_seconds": 2, "interval_seconds": 1}, "approval_timeout_seconds": 60},
            "memory-keeps-growing": {"verify": {"budget_seconds": 30, "interval_seconds": 1}, "approval_timeout_seconds": 60},
        },
    )
    prom.wait_scraped("shop", 4)
    try:
        with running_responder(tmp, prefect_server.api_url, config) as responder:
            yield {"responder": responder, "app": app, "prom": prom, "redis": client, "queue": queue, "prefix": prefix,
                   "test_id": test_id, "heap": heap}
    finally:
        prom.stop()
        app.close()
        keys = list(client.scan_iter(match=f"*{test_id}*"))
        if keys:
            client.delete(*keys)
        client.close()


def _fire(env, alertname: str, **labels: str) -> str:
    answer = env["responder"].post(alert_body(alertname, env["test_id"], **labels))
    assert answer.status_code == 200, answer.text
    [incident_id] = answer.json()["incidents_opened"]
    return incident_id


def _task_names(api: str, run_id: str) -> set[str]:
    return {t["name"].rsplit("-", 1)[0] for t in prefect_post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})}


def _approve_next(api: str, incident_id: str, approve: bool = True, after: str | None = None) -> str:
    """Answer the run's next approval form (one not answered yet); returns its pause key."""
    def paused():
        runs = runs_for_incident(api, incident_id)
        if runs and runs[0]["state"]["type"] == "PAUSED":
            key = runs[0]["state"]["state_details"].get("pause_key")
            return (runs[0], key) if key != after else None
        return None
    run, key = wait_for(paused, 60, what="the run to pause for approval")
    resume(api, run["id"], approve, "test", "dana")
    return key


def _deployment(api: str, name: str) -> str:
    return HTTP.get(f"{api}/deployments/name/{name}/{name}").json()["id"]


def test_slow_responses_are_assessed_and_verified_after_they_recover(env, prefect_server):
    api = prefect_server.api_url
    incident = _fire(env, "response_time_p95")

    def assessed():
        runs = runs_for_incident(api, incident)
        return runs and "check-system-resources" in _task_names(api, runs[0]["id"]) and runs[0]
    run = wait_for(assessed, 60, what="the assessment steps")
    env["app"].requests("/api/v1/toc", per_second=20, error_share=0.0, latency_s=0.05)  # the application recovers
    final = wait_run_final(api, incident, timeout=60)
    assert final["deployment_id"] == _deployment(api, "high-response-time")
    assert final["state"]["name"] == "Resolved", final["state"]
    assert {"acknowledge", "check-endpoint-performance", "identify-slow-endpoints", "check-database-performance",
            "check-external-api-calls", "check-system-resources"} <= _task_names(api, run["id"])
    text = report(api, incident)
    # 1.5 s answers fall in the (1 s, 2 s] bucket: histogram_quantile interpolates 1.95 s; seed 001's threshold 1 s
    assert re.search(r"\| p95_latency \| \*\*no\*\* \| 1\.9\d*s \| 1s \|", text), text[:1500]
    assert "VERIFIED" in text


def test_stuck_bullmq_job_goes_to_the_dead_letter_list_after_approval(env, prefect_server):
    api, client, queue = prefect_server.api_url, env["redis"], env["queue"]
    incident = _fire(env, "QueueBacklog", queue=queue)
    first = _approve_next(api, incident)                      # move the stuck job to the dead-letter list
    assert "move-to-dead-letter" in first
    assert "restart-service" in _approve_next(api, incident, approve=False, after=first)  # "restart workers": no
    final = wait_run_final(api, incident, timeout=60)
    assert final["deployment_id"] == _deployment(api, "queue-backlog")
    assert final["state"]["name"] == "Resolved", final["state"]
    assert client.lrange(f"bull:{queue}:dead", 0, -1) == ["stuck-1"]
    assert client.lrange(f"bull:{queue}:active", 0, -1) == [] and client.llen(f"bull:{queue}:wait") == 2
    text = report(api, incident)
    assert f"| move_to_dead_letter | queue {queue} | risky | done |" in text and "dana" in text
    assert "| restart_service | shop | risky | rejected |" in text


def test_endpoint_errors_switch_degraded_mode_when_a_dependency_is_down(env, prefect_server):
    api, client = prefect_server.api_url, env["redis"]
    flag = f"{env['prefix']}:flags:degraded-mode"
    incident = _fire(env, "HighEndpointErrorRate", path="/api/v1/books")
    _approve_next(api, incident)
    final = wait_run_final(api, incident, timeout=60)
    assert final["deployment_id"] == _deployment(api, "high-error-rate")
    assert final["state"]["name"] == "Escalated", final["state"]  # errors go on: people take over
    assert client.get(flag) == "1"
    text = report(api, incident)
    assert "| log_group_by_error_type | yes | 4 lines |" in text and "largest DatabaseError (3)" in text
    assert "| log_group_by_user_id | yes | 4 lines |" in text and "largest u1 (3)" in text
    assert "| external_services | **no** |" in text and "mux (Video API outage)" in text
    assert "| set_flag | flag degraded-mode | risky | done |" in text


def test_growing_heap_is_confirmed_and_the_approved_restart_stops_it(env, prefect_server):
    api = prefect_server.api_url
    env["heap"]["growth"] = 40.0  # +40 % of the starting heap per second
    wait_for(lambda: env["prom"].query('deriv(nodejs_heap_used_bytes[5s]) > 10'), 20, what="Prometheus to see the heap grow")
    time.sleep(3)  # the 3 s watch window (watch_minutes 0.05) is all growth now
    incident = _fire(env, "MemoryKeepsGrowing")
    _approve_next(api, incident)
    final = wait_run_final(api, incident, timeout=60)
    assert final["deployment_id"] == _deployment(api, "memory-keeps-growing")
    assert final["state"]["name"] == "Resolved", final["state"]
    assert env["heap"]["growth"] == 0.0, "the configured restart command reached the application"
    text = report(api, incident)
    assert "| heap_growth | **no** |" in text and "| restart_service | shop | risky | done |" in text
