"""Scheduled maintenance flows, each run once through its deployment on the real responder.

Each deployment is read back from the Prefect API with its cron schedule, then a run is created
from it (``POST /deployments/{id}/create_flow_run``, what the UI's *Quick run* does); the
``responder up`` process executes it. What the runs look at is real: a Prometheus scraping
:class:`AppTarget` (API spending growing at $50/s, over the seed's $100/day), an Alertmanager
holding an alert, PostgreSQL, log and backup files written here with old modification times.

Expected: daily (spending over budget), weekly, monthly and backup-freshness (one stale backup)
need attention and notify the webhook; log-retention compresses the 10-day-old log, deletes the
40-day-old archive, is all clear and notifies nobody.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from support.capture import CaptureServer
from support.common import HTTP, wait_for
from support.prefect import prefect_post
from support.prometheus import AlertmanagerServer, AppTarget, PrometheusServer
from support.responder import make_config, running_responder

SCHEDULED = {"daily-checks": "0 8 * * *", "weekly-checks": "0 8 * * 1", "monthly-checks": "0 8 1 * *",
             "log-retention": "30 3 * * *", "backup-freshness": "0 7 * * *", "store-retention": "45 3 * * *"}
DAY = 86400


def _age(path: Path, days: float) -> Path:
    moment = time.time() - days * DAY
    os.utime(path, (moment, moment))
    return path


@pytest.fixture(scope="module")
def env(prefect_server, postgres_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scheduled")
    logs, backups = tmp / "logs", tmp / "backups"
    logs.mkdir()
    backups.mkdir()
    (logs / "app.log").write_text("2026-11-22T08:00:00Z ERROR payment failed\n")
    (logs / "old.log").write_text("an old log line\n" * 100)
    _age(logs / "old.log", 10)
    (logs / "ancient.log.gz").write_bytes(b"\x1f\x8b" + b"\0" * 50)
    _age(logs / "ancient.log.gz", 40)
    (backups / "medianest_2026-11-22.sql").write_text("-- dump\n")
    (backups / "mongo_2026-11-20.archive").write_text("archive")
    _age(backups / "mongo_2026-11-20.archive", 30 / 24)  # 30 hours: stale for a daily backup (26 h)

    app = AppTarget()
    app.requests("/api/v1/books", per_second=10, error_share=0.0, latency_s=0.05)
    app.rate("affiliate_api_cost_dollars", {"service": "openai"}, 50.0)
    webhook, am_receiver = CaptureServer(), CaptureServer()
    am = AlertmanagerServer(tmp, f"{am_receiver.url}/hook")
    am.post_alert({"alertname": "DiskAlmostFull", "severity": "warning", "instance": "db-1", "test_id": "sched"}, minutes=30,
                  summary="disk 87% full")
    prom = PrometheusServer(tmp, {"shop": [f"127.0.0.1:{app.port}"]}, alertmanager=am.url,
                            rules=[{"alert": "WeeklyReviewSample", "expr": "vector(1)", "labels": {"severity": "info"},
                                    "annotations": {"summary": "s", "description": "d"}}])
    config = make_config(
        tmp,
        targets={
            "processes": {"killable_cmdline": [], "protected_names": []},
            "services": {"shop": {"health_url": f"{app.url}/health"}},
            "postgres": {"default": {"url": postgres_url}},
            "monitoring": {"prometheus_url": prom.url, "alertmanager_url": am.url},
            "paths": {"logs": [str(logs)], "disk": ["/"], "retention_days": 7, "delete_after_days": 30},
            "logs": {"app": {"path": str(logs / "app.log")}},
            "backups": [{"name": "postgres", "path_glob": str(backups / "medianest_*.sql"), "max_age_hours": 26},
                        {"name": "mongodb", "path_glob": str(backups / "mongo_*.archive"), "max_age_hours": 26}],
        },
        notify={"webhooks": [f"{webhook.url}/notify"]},
        thresholds={"weekly-checks": {"disk_percent": 100}},  # this machine's disk is not what is tested
    )
    prom.wait_scraped("shop", 4)
    try:
        with running_responder(tmp, prefect_server.api_url, config) as responder:
            yield {"responder": responder, "webhook": webhook, "logs": logs, "api": prefect_server.api_url}
    finally:
        prom.stop()
        am.stop()
        app.close()
        webhook.close()
        am_receiver.close()


def _create_run(api: str, deployment_id: str) -> str:
    """``POST /deployments/{id}/create_flow_run``; a busy SQLite Prefect server may answer 503 for a moment."""
    def created():
        response = HTTP.post(f"{api}/deployments/{deployment_id}/create_flow_run", json={}, timeout=10)
        if response.status_code >= 500:
            return None
        response.raise_for_status()
        return response.json()["id"]
    return wait_for(created, 30, interval=1, what="the Prefect server to create the run")


@pytest.fixture(scope="module")
def runs(env):
    """One run of every scheduled deployment, created through the API and executed by the responder."""
    api, created = env["api"], {}
    for name in SCHEDULED:
        deployment = HTTP.get(f"{api}/deployments/name/{name}/{name}").json()
        created[name] = _create_run(api, deployment["id"])

    def finished():
        states = {n: HTTP.get(f"{api}/flow_runs/{rid}").json() for n, rid in created.items()}
        return states if all(s["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") for s in states.values()) else None
    return wait_for(finished, 90, interval=0.5, what="the scheduled runs to finish")


def _artifact(api: str, key: str, run_id: str) -> str:
    found = wait_for(lambda: prefect_post(api, "/artifacts/filter",
                                          {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [run_id]}}}),
                     30, interval=1, what=f"the artifact {key} of run {run_id}")
    return found[0]["data"]


def _notified(env, name: str) -> list[dict]:
    return [r["body"] for r in env["webhook"].requests if r["body"].get("check") == name]


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_deployment_shows_its_cron_schedule_and_no_trigger(env, name):
    deployment = HTTP.get(f"{env['api']}/deployments/name/{name}/{name}").json()
    schedules = [s["schedule"]["cron"] for s in deployment["schedules"] if s.get("active")]
    assert schedules == [SCHEDULED[name]]
    assert "runbook" in deployment["tags"]


def test_daily_checks_report_and_notify_the_overspending(env, runs):
    run = runs["daily-checks"]
    assert run["state"]["name"] == "NeedsAttention", run["state"]
    report = _artifact(env["api"], "daily-checks", run["id"])
    assert "# Daily checks: NEEDS ATTENTION" in report
    assert "| daily_api_cost | **no** |" in report          # $50/s since start: over the $100/day budget
    assert "| overall_health | yes |" in report and "| p95_latency | yes |" in report
    assert "DiskAlmostFull" in report and "disk 87% full" in report  # the active alert, for triage
    assert "- [ ] Review the Grafana dashboards" in report
    (body,) = _notified(env, "daily-checks")
    assert any("daily_api_cost" in p for p in body["problems"]) and body["flow_run_id"] == run["id"]
    table = prefect_post(env["api"], "/artifacts/filter", {"artifacts": {"key": {"any_": ["daily-checks-table"]},
                                                                         "flow_run_id": {"any_": [run["id"]]}}})
    assert table and table[0]["type"] == "table"


def test_weekly_checks_review_alerts_retention_and_backups(env, runs):
    run = runs["weekly-checks"]
    assert run["state"]["name"] == "NeedsAttention", run["state"]
    report = _artifact(env["api"], "weekly-checks", run["id"])
    assert "WeeklyReviewSample" in report                     # fired in the past week (Prometheus ALERTS)
    assert "| prometheus_retention | yes | 15 days | 15 days |" in report
    assert "| backup_freshness | **no** | 1 bad |" in report and "mongodb stale" in report
    assert "- [ ] Export Grafana dashboards to version control" in report
    assert _notified(env, "weekly-checks")


def test_monthly_checks_list_what_people_must_do(env, runs):
    run = runs["monthly-checks"]
    assert run["state"]["type"] == "COMPLETED", run["state"]
    report = _artifact(env["api"], "monthly-checks", run["id"])
    assert "| pg_database_sizes | yes |" in report and "| tsdb_cardinality | yes |" in report
    assert "Catalog thresholds to validate" in report and "high-error-rate" in report
    for item in ("Team training", "Disaster recovery test", "Post-mortem meetings"):
        assert f"- [ ] {item}" in report


def test_log_retention_compresses_and_deletes_and_stays_quiet(env, runs):
    run, logs = runs["log-retention"], env["logs"]
    assert run["state"]["name"] == "AllClear", run["state"]
    assert (logs / "old.log.gz").exists() and not (logs / "old.log").exists()
    assert not (logs / "ancient.log.gz").exists()
    assert (logs / "app.log").exists()  # fresh: kept as is
    report = _artifact(env["api"], "log-retention", run["id"])
    assert "| compress_old_logs |" in report and "| delete_old_files |" in report
    assert _notified(env, "log-retention") == []


def test_store_retention_runs_and_reports_what_it_deleted(env, runs):
    run = runs["store-retention"]
    assert run["state"]["name"] == "AllClear", run["state"]
    report = _artifact(env["api"], "store-retention", run["id"])
    assert "raw bodies" in report and "older than 30 days" in report


def test_backup_freshness_names_the_stale_backup(env, runs):
    run = runs["backup-freshness"]
    assert run["state"]["name"] == "NeedsAttention", run["state"]
    report = _artifact(env["api"], "backup-freshness", run["id"])
    assert "| postgres | fresh |" in report and "| mongodb | stale |" in report
    (body,) = _notified(env, "backup-freshness")
    assert "mongodb stale" in body["problems"][0]
