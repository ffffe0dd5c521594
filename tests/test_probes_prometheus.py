"""PromQL, Alertmanager and Grafana probes against real servers.

A real Prometheus (Debian ``prometheus``, 1 s scrape and evaluation, TSDB in tmp) scrapes
:class:`AppTarget`, a small HTTP application started here that serves the series the seeds'
queries read (``http_requests_total``, ``http_request_duration_seconds_bucket``, business
counters) at rates the test sets, plus a job pointing at a port where nothing listens. A real
Alertmanager (Debian ``prometheus-alertmanager``) takes alerts through its v2 API. No Grafana can
run here (no package), so the Grafana probes are tested against :class:`GrafanaStub`, which
answers ``/api/health``, ``/api/datasources`` and the data-source health check with the shapes
Grafana 10 returns; that is the one stand-in in this module.

The helpers (AppTarget, PrometheusServer, AlertmanagerServer, GrafanaStub) live in
``tests/support/prometheus.py``, shared with the runbook test modules.
"""

from __future__ import annotations

import json

import httpx
import pytest

from support.common import free_port, wait_for
from support.prometheus import AlertmanagerServer, AppTarget, GrafanaStub, PrometheusServer
from tasks.base import ErrorCode, ResponderError
from tasks.probes import prometheus

# -- this module's tests ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def app():
    target = AppTarget()
    target.requests("/api/v1/books", per_second=20, error_share=0.10, latency_s=2.5)
    target.requests("/api/v1/toc", per_second=20, error_share=0.0, latency_s=0.07)
    target.rate("affiliate_api_cost_dollars", {"service": "openai"}, 0.02)
    target.gauge("nodejs_heap_used_bytes", None, 95.0)
    target.gauge("nodejs_heap_size_limit_bytes", None, 100.0)
    yield target
    target.close()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    server = AlertmanagerServer(tmp_path_factory.mktemp("am-probes"), "http://127.0.0.1:9/unreachable")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prom(app, alertmanager, tmp_path_factory):
    ghost = free_port()
    rules = [{"alert": "AlwaysFiring", "expr": "vector(1)", "labels": {"severity": "info"},
              "annotations": {"summary": "s", "description": "d"}},
             {"alert": "BrokenRule", "expr": 'label_replace(up, "x", "$1", "job", "(.*)") + on() group_left up',
              "labels": {"severity": "info"}, "annotations": {"summary": "s", "description": "d"}}]
    server = PrometheusServer(tmp_path_factory.mktemp("prom-probes"), {"shop": [f"127.0.0.1:{app.port}"],
                                                                         "ghost": [f"127.0.0.1:{ghost}"]},
                              rules=rules, alertmanager=alertmanager.url)
    server.wait_scraped("shop", 4)
    yield server
    server.stop()


def test_error_ratio_uses_the_seed_query_and_finds_the_failing_job(prom):
    result = prometheus.error_ratio(prom.url, threshold=0.05, window="1m", match={"job": "shop"})
    # 10 % of /api/v1/books and 0 % of /api/v1/toc, equal traffic: 5 % for the job
    assert result.value == pytest.approx(0.05, abs=0.01)
    assert 'status=~"5.."' in result.evidence["query"] and 'job="shop"' in result.evidence["query"]
    by_endpoint = prometheus.error_ratio(prom.url, threshold=0.05, window="1m", by=("job", "path"), match={"job": "shop"})
    assert by_endpoint.ok is False
    assert by_endpoint.evidence["bad"][0]["labels"]["path"] == "/api/v1/books"
    assert by_endpoint.value == pytest.approx(0.10, abs=0.02)


def test_p95_latency_from_the_histogram(prom):
    slow = prometheus.p95_latency(prom.url, threshold_s=2.0, window="1m", by=("path",), match={"job": "shop"})
    assert slow.ok is False and slow.unit == "s"
    worst = slow.evidence["series"][0]
    assert worst["labels"]["path"] == "/api/v1/books" and 2.0 < worst["value"] <= 3.0
    assert prometheus.p95_latency(prom.url, threshold_s=5.0, window="1m", match={"job": "shop"}).ok is True


def test_instant_query_thresholds_directions_and_no_data(prom):
    heap = prometheus.instant_query(prom.url, "nodejs_heap_used_bytes / nodejs_heap_size_limit_bytes", 0.9)
    assert heap.ok is False and heap.value == pytest.approx(0.95)
    below = prometheus.instant_query(prom.url, "sum(increase(affiliate_api_cost_dollars[1m]))", 100, bad_when="below")
    assert below.ok is False  # cents, not the $100 the check wants
    none = prometheus.instant_query(prom.url, "no_such_metric", 1)
    assert none.ok is True and none.value is None and "no data" in none.summary
    assert prometheus.instant_query(prom.url, "no_such_metric", 1, no_data_ok=False).ok is False
    with pytest.raises(ResponderError) as refused:
        prometheus.instant_query(prom.url, "sum(", 1)
    assert refused.value.code is ErrorCode.CONFIG


def test_label_values_are_escaped_into_promql(prom):
    hostile = 'shop"} or vector(1) or {x="'
    result = prometheus.error_ratio(prom.url, threshold=0.05, window="1m", match={"job": hostile})
    assert result.value is None and result.ok is True  # matched nothing: the value stayed a string
    assert prometheus.matchers({"job": 'a"b\\c'}) == 'job="a\\"b\\\\c"'


def test_scrape_targets_report_the_down_job_and_its_error(prom):
    result = prometheus.scrape_targets(prom.url)
    assert result.ok is False and result.value == 1
    (down,) = result.evidence["down"]
    assert down["job"] == "ghost" and "refused" in down["last_error"]
    assert result.evidence["jobs"]["shop"] == {"up": 1, "down": 0}


def test_rules_runtime_retention_and_alertmanager_discovery(prom, alertmanager):
    rules = prometheus.rule_health(prom.url)
    assert "AlwaysFiring" in wait_for(lambda: prometheus.rule_health(prom.url).evidence["firing"], 15, what="firing rule")
    assert rules.ok is False and rules.evidence["broken"][0]["rule"] == "BrokenRule"
    assert prometheus.runtime_info(prom.url).ok is True
    retention = prometheus.retention(prom.url, expected="15d")
    assert retention.ok is True and retention.value == 15
    assert prometheus.retention(prom.url, expected="30d").ok is False
    connected = prometheus.connected_alertmanagers(prom.url)
    assert connected.ok is True and f"127.0.0.1:{alertmanager.port}" in connected.evidence["active"][0]


def test_firing_history_and_cardinality(prom):
    history = wait_for(lambda: (h := prometheus.firing_history(prom.url, over="1h")).value and h, 15, what="ALERTS history")
    names = {a["alertname"] for a in history.evidence["alerts"]}
    assert "AlwaysFiring" in names and history.evidence["evaluation_interval_s"] == 1
    top = prometheus.tsdb_top_series(prom.url)
    assert top.value > 0 and any(m["name"] == "http_request_duration_seconds_bucket" for m in top.evidence["by_metric"])


def test_alertmanager_status_alerts_and_notification_failures(alertmanager):
    status = prometheus.alertmanager_status(alertmanager.url)
    assert status.ok is True and status.evidence["cluster"] == "disabled"
    assert status.evidence["receivers"] == ["responder"] and status.evidence["integrations"] == ["webhook"]
    alertmanager.post_alert({"alertname": "ProbeTest", "severity": "warning", "test_id": "probes"}, minutes=5)
    alerts = wait_for(lambda: (a := prometheus.alertmanager_alerts(alertmanager.url, expected=["AlwaysFiring"])).value and a,
                      15, what="the alert in Alertmanager")
    assert alerts.ok is False and "ProbeTest" in alerts.summary
    assert prometheus.alertmanager_alerts(alertmanager.url, expected=["ProbeTest", "AlwaysFiring", "BrokenRule"]).ok is True
    # the receiver URL is unreachable: Alertmanager's own counters show the failed deliveries
    failures = wait_for(lambda: (f := prometheus.notification_failures(alertmanager.url)).value and f, 30,
                        what="a failed webhook delivery")
    assert failures.ok is False and "webhook" in failures.summary
    baseline = prometheus.notification_counters(alertmanager.url)
    since = prometheus.notification_failures(alertmanager.url, baseline=baseline, require_delivery=True)
    assert since.evidence["integrations"][0]["delivered"] <= 0 and since.ok is False


def test_readiness_probes_answer_for_unreachable_servers():
    dead = f"http://127.0.0.1:{free_port()}"
    assert prometheus.ready(dead).ok is False
    status = prometheus.alertmanager_status(dead)
    assert status.ok is False and "unreachable" in status.summary
    assert prometheus.grafana_health(dead).ok is False
    with pytest.raises(httpx.ConnectError):
        prometheus.scrape_targets(dead)


def test_grafana_health_and_datasources_against_the_stub():
    stub = GrafanaStub()
    try:
        health = prometheus.grafana_health(stub.url)
        assert health.ok is True and "10.4.2" in health.summary and "secret" not in json.dumps(health.evidence)
        sources = prometheus.grafana_datasources(stub.url)
        assert sources.ok is True and sources.summary == "all 2 data sources answer"
        assert stub.seen_auth[-1] == "Basic YWRtaW46c2VjcmV0"
        stub.datasources["prom"] = ("Prometheus", "prometheus", "ERROR", "Post \"http://prometheus:9090\": connection refused")
        failing = prometheus.grafana_datasources(stub.url)
        assert failing.ok is False and failing.value == 1 and "connection refused" in failing.summary
        with pytest.raises(ResponderError) as denied:
            prometheus.grafana_datasources(stub.public)
        assert denied.value.code is ErrorCode.CONFIG
        stub.healthy = False
        assert prometheus.grafana_health(stub.url).ok is False
    finally:
        stub.close()
