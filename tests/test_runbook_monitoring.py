"""The monitoring stack's own runbooks (seed 004 troubleshooting) and external service failures,
end to end through the real intake, against a real Prometheus and a real Alertmanager.

* ``PrometheusNotScraping``: a scrape job points at a port where nothing listens; the run finds
  the down target, its error and that the port refuses connections from here too. When the test
  then starts a real target on that port, Prometheus scrapes it again and the run is Resolved.
* ``AlertmanagerNotSending``: the Alertmanager's only receiver answers 500 (a real capture server);
  the run reads Alertmanager's v2 status and its failure counters, nothing gets delivered,
  so it escalates, naming the failing webhook integration.
* ``ExternalServiceFailure``: a status page reports a major outage; ``degraded-mode`` is
  approved and set in Redis; the page recovers and the run is Resolved.
* ``GrafanaDashboardNotLoading``: against :class:`GrafanaStub` (Grafana cannot be installed
  here): a data source fails its health check, Prometheus answers ``up``; the run escalates.
"""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from support.alerts import alert_body
from support.capture import CaptureServer
from support.common import HTTP, free_port, wait_for
from support.prefect import prefect_post, report, resume, runs_for_incident, wait_run_final
from support.prometheus import AlertmanagerServer, AppTarget, GrafanaStub, PrometheusServer
from support.responder import make_config, running_responder


@pytest.fixture(scope="module")
def env(prefect_server, redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runbook-monitoring")
    test_id = uuid.uuid4().hex[:8]
    prefix = f"responder-test-{test_id}"
    app = AppTarget()
    app.status_pages["stripe"] = (200, {"status": {"indicator": "major", "description": "Payments API down"}})
    failing_receiver = CaptureServer(respond=lambda r: (500, {"error": "receiver broken"}, {}))
    am = AlertmanagerServer(tmp, f"{failing_receiver.url}/hook")
    ghost_port = free_port()
    prom = PrometheusServer(tmp, {"shop": [f"127.0.0.1:{app.port}"], "ghost": [f"127.0.0.1:{ghost_port}"]},
                            alertmanager=am.url)
    grafana = GrafanaStub()
    grafana.datasources["prom"] = ("Prometheus", "prometheus", "ERROR", 'Post "http://prometheus:9090/api/v1/query": dial tcp: connection refused')
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    config = make_config(
        tmp,
        targets={
            "processes": {"killable_cmdline": [], "protected_names": []},
            "redis": {"default": {"url": redis_url}},
            "monitoring": {"prometheus_url": prom.url, "alertmanager_url": am.url, "grafana_url": grafana.url},
            "external": [{"name": "stripe", "url": f"{app.url}/status/stripe", "timeout_s": 2}],
            "flags": {"degraded-mode": {"redis": "default", "key": f"{prefix}:flags:degraded-mode"}},
        },
        runbook_overrides={name: {"verify": {"budget_seconds": budget, "interval_seconds": 1}, "approval_timeout_seconds": 60}
                           for name, budget in (("prometheus-not-scraping", 40), ("alertmanager-not-sending", 3),
                                                ("external-service-failures", 30), ("grafana-not-loading", 2))},
    )
    prom.wait_scraped("shop", 2)
    try:
        with running_responder(tmp, prefect_server.api_url, config) as responder:
            yield {"responder": responder, "app": app, "prom": prom, "am": am, "redis": client, "prefix": prefix,
                   "test_id": test_id, "ghost_port": ghost_port, "receiver": failing_receiver}
    finally:
        prom.stop()
        am.stop()
        app.close()
        grafana.close()
        failing_receiver.close()
        keys = list(client.scan_iter(match=f"*{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def _fire(env, alertname: str, **labels: str) -> str:
    answer = env["responder"].post(alert_body(alertname, env["test_id"], **labels))
    assert answer.status_code == 200, answer.text
    return answer.json()["incidents_opened"][0]


def _deployment(api: str, name: str) -> str:
    return HTTP.get(f"{api}/deployments/name/{name}/{name}").json()["id"]


def _serve_metrics(port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"ghost_up 1\n"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_prometheus_not_scraping_finds_the_down_target_and_verifies_when_it_is_back(env, prefect_server):
    api = prefect_server.api_url
    incident = _fire(env, "PrometheusNotScraping", job="ghost")

    def assessed():
        runs = runs_for_incident(api, incident)
        names = {t["name"] for t in prefect_post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [runs[0]["id"]]}}})} if runs else set()
        return any(n.startswith("check-configuration") for n in names)
    wait_for(assessed, 60, what="the assessment")
    ghost = _serve_metrics(env["ghost_port"])  # the target comes back
    try:
        final = wait_run_final(api, incident, timeout=60)
    finally:
        ghost.shutdown()
    assert final["deployment_id"] == _deployment(api, "prometheus-not-scraping")
    assert final["state"]["name"] == "Resolved", final["state"]
    text = report(api, incident)
    assert "| scrape_targets | **no** | 1 down |" in text and "job ghost: 0 up, 1 down" in text
    assert "| network_connectivity | **no** | 1 unreachable |" in text
    assert "| prometheus_runtime | yes |" in text


def test_alertmanager_not_sending_reads_status_and_failures_and_escalates(env, prefect_server):
    api = prefect_server.api_url
    env["am"].post_alert({"alertname": "SomethingForHumans", "severity": "critical", "test_id": env["test_id"]}, minutes=10)
    wait_for(lambda: env["receiver"].requests, 30, what="Alertmanager to try its receiver")
    incident = _fire(env, "AlertmanagerNotSending")
    final = wait_run_final(api, incident, timeout=60)
    assert final["deployment_id"] == _deployment(api, "alertmanager-not-sending")
    assert final["state"]["name"] == "Escalated", final["state"]
    text = report(api, incident)
    assert "| alertmanager_status | yes |" in text and "receivers responder" in text
    assert "| alertmanager_notification_failures | **no** |" in text and "failing since start: webhook" in text
    assert "| prometheus_alertmanagers | yes |" in text


def test_external_outage_switches_degraded_mode_and_verifies_recovery(env, prefect_server):
    api, flag = prefect_server.api_url, f"{env['prefix']}:flags:degraded-mode"
    incident = _fire(env, "ExternalServiceFailure", service="stripe")

    def paused():
        runs = runs_for_incident(api, incident)
        return runs[0] if runs and runs[0]["state"]["type"] == "PAUSED" else None
    run = wait_for(paused, 60, what="approval of degraded-mode")
    assert env["redis"].get(flag) is None
    resume(api, run["id"], True, "stripe is down", "erin")
    wait_for(lambda: env["redis"].get(flag) == "1", 30, what="the flag to be set")
    env["app"].status_pages["stripe"] = (200, {"status": {"indicator": "none", "description": "All Systems Operational"}})
    final = wait_run_final(api, incident, timeout=60)
    assert final["deployment_id"] == _deployment(api, "external-service-failures")
    assert final["state"]["name"] == "Resolved", final["state"]
    text = report(api, incident)
    assert "stripe (Payments API down)" in text and "| set_flag | flag degraded-mode | risky | done |" in text


def test_grafana_not_loading_names_the_failing_data_source(env, prefect_server):
    api = prefect_server.api_url
    incident = _fire(env, "GrafanaDashboardNotLoading")
    final = wait_run_final(api, incident, timeout=60)
    assert final["deployment_id"] == _deployment(api, "grafana-not-loading")
    assert final["state"]["name"] == "Escalated", final["state"]
    text = report(api, incident)
    assert "| grafana_health | yes |" in text
    assert "| grafana_datasources | **no** | 1 failing |" in text and "Prometheus (Post" in text
    assert "| prometheus_query_up | yes |" in text
    assert "secret" not in text  # the login in grafana_url is never shown
