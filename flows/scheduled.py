"""Scheduled maintenance: the daily, weekly and monthly checks of seeds 003 and 004, log
retention (seed 002) and backup freshness, as cron deployments.

Each runbook's spec (``DAILY_CHECKS`` ...) has ``schedules``, no ``alertnames``;
``deployments/__init__.py`` turns each cron list into the deployment's schedules, so every flow
is visible in the UI with its schedule and can be run from there (*Run* > *Quick run*). The
responder executes the runs like any other.

Every run:

* measures what a program can (each check a ``ProbeResult``, not configured = skipped);
* writes a report artifact: markdown (key = the runbook name: findings, tables, and the steps
  only a person can do as an unticked checklist) and a table (``<name>-table``);
* tells people only when something is wrong, through the same notifier as every response (the
  severity's Slack channel and the webhooks of ``config/notify.yaml``);
* acts (log retention) through the same mitigation path as every response: loop guard, dry run,
  approval for anything risky;
* ends ``Completed`` named ``AllClear`` or ``NeedsAttention``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from core.results import RESULTS_BLOCK, resumable
from prefect.states import Completed, State

from flows import checks
from flows.checks import collect
from flows.lifecycle import current_flow_run_id, mitigate, notifier, runtime
from core.catalog import Runbook, RunbookSpec, Thresholds, seed
from tasks.base import ActionOutcome, ProbeResult
from tasks.mitigations import PlannedAction
from tasks.probes import http, logs, postgres, prometheus, system

DAILY_COST = "sum(increase(affiliate_api_cost_dollars[24h]))"
ENDPOINTS = ("job", *checks.ENDPOINT_LABELS)


# -- report and notification ----------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _figure(value: float | None, unit: str) -> str:
    return "" if value is None else f"{value:g}{unit}"


def _rows(results: list[ProbeResult]) -> list[dict[str, Any]]:
    return [{"check": r.probe, "ok": r.ok, "value": _figure(r.value, r.unit), "threshold": _figure(r.threshold, r.unit),
             "summary": r.summary} for r in results]


def render(runbook: Runbook, results: list[ProbeResult], outcomes: list[ActionOutcome],
           sections: list[str] | None = None) -> str:
    problems = [r for r in results if not r.ok] + [o for o in outcomes if o.status == "failed"]  # type: ignore[list-item]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# {runbook.title}: {'NEEDS ATTENTION' if problems else 'ALL CLEAR'}",
        "",
        f"**Run:** {when}  ",
        f"**Schedule:** {', '.join(f'`{c}`' for c in runbook.schedules)} (UTC)  ",
        f"**Seeds:** {'; '.join(runbook.seeds)}",
        "",
        "## Checks",
        "",
        "| check | ok | value | threshold | summary |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in _rows(results):
        lines.append(f"| {row['check']} | {'yes' if row['ok'] else '**no**'} | {row['value']} | {row['threshold']} | "
                     f"{_cell(row['summary'])} |")
    if outcomes:
        lines += ["", "## Actions", "", "| action | target | status | detail |", "| --- | --- | --- | --- |"]
        lines += [f"| {o.action} | {_cell(o.target)} | {o.status}{' (dry run)' if o.dry_run else ''} | {_cell(o.detail)} |"
                  for o in outcomes]
    for section in sections or []:
        lines += ["", section]
    if runbook.left_to_humans:
        lines += ["", "## For a person to do", "",
                  "These steps of the seeds need judgement or people; tick them off in your own tracker.", ""]
        lines += [f"- [ ] {item}" for item in runbook.left_to_humans]
    return "\n".join(lines)


def table(title: str, columns: list[str], rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"### {title}\n\nNone."
    out = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    out += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(out)


@resumable(name="notify")
def notify(runbook: Runbook, problems: list[str], artifact_key: str) -> None:
    """Tell people what is wrong (the same notification outbox as every response)."""
    text = f":clipboard: *{runbook.title}* needs attention:\n" + "\n".join(f"• {p}" for p in problems)
    notifier().announce("scheduled-check", runbook.severity, text, details={
        "check": runbook.name, "title": runbook.title, "severity": runbook.severity, "problems": problems,
        "artifact": artifact_key, "flow_run_id": current_flow_run_id()})


def finish(runbook: Runbook, results: list[ProbeResult], outcomes: list[ActionOutcome] | None = None,
           sections: list[str] | None = None) -> State:
    """Write the report artifacts, notify when something is wrong, and name the final state."""
    outcomes = outcomes or []
    key = runbook.name
    create_markdown_artifact(render(runbook, results, outcomes, sections), key=key,
                             description=f"{runbook.title} report")
    create_table_artifact(_rows(results) + [{"check": f"action {o.action}", "ok": o.status != "failed", "value": o.status,
                                              "threshold": "", "summary": o.detail} for o in outcomes],
                          key=f"{key}-table", description=f"{runbook.title}: every check")
    problems = [r.line() for r in results if not r.ok] + [f"{o.action} {o.target}: {o.detail}" for o in outcomes
                                                          if o.status == "failed"]
    if problems:
        notify(runbook, problems, key)
        return Completed(name="NeedsAttention", message=f"{len(problems)} problems; notified: " + "; ".join(problems)[:500],
                         data={"problems": problems})
    return Completed(name="AllClear", message="Every check passed.", data={"problems": []})


def scheduled_failed(flow: Any, flow_run: Any, state: State) -> None:
    """A scheduled check that broke says so (it would otherwise stay silent)."""
    problem = f"the run {flow_run.name} ended {state.name}: {state.message or ''}"
    notifier().announce("scheduled-check", "warning", f":warning: scheduled check {flow.name}: {problem}",
                        details={"check": flow.name, "problems": [problem], "flow_run_id": str(flow_run.id)})


def scheduled_flow(spec: RunbookSpec, thresholds: type[Thresholds] = Thresholds):
    """``@flow`` with the scheduled checks' failure hooks, carrying the runbook's typed thresholds.

    Not :func:`flows.lifecycle.runbook_flow`: its hook escalates the run's incident, and a scheduled
    check has none (it would stay silent); ``scheduled_failed`` announces the failure instead."""
    as_flow = flow(name=spec.name, flow_run_name=lambda: f"{spec.name} {datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
                   on_failure=[scheduled_failed], on_crashed=[scheduled_failed], validate_parameters=True,
                   persist_result=True, result_storage=RESULTS_BLOCK)  # resumable after an approval

    def decorate(fn: Any) -> Any:
        made = as_flow(fn)
        made.spec, made.thresholds_model = spec, thresholds
        return made

    return decorate


def _runbook(spec: RunbookSpec) -> Runbook:
    """The runbook in force: ``spec`` with this installation's overrides."""
    return runtime()[1].get(spec.name)


# -- shared checks ---------------------------------------------------------------------------


@resumable(name="check-overall-health", **checks.PROBE)
def check_overall_health() -> ProbeResult:
    """Seed 003 daily "curl http://localhost:3000/health | jq '.status'" for every configured service."""
    services = {n: s for n, s in checks.targets().services.items() if s.health_url}
    if not services:
        return checks.unconfigured("overall_health", "a service with health_url (services)", False)
    results = [http.health_check(s.health_url, attempts=2, delay_s=1).model_copy(update={"probe": f"health {n}"})
               for n, s in services.items()]
    return checks.combine("overall_health", results)


@resumable(name="check-monitoring-stack", **checks.PROBE)
def check_monitoring_stack() -> ProbeResult:
    """Seed 003 "Monitoring Stack Status", seed 004 troubleshooting: each configured part answers and works."""
    monitoring = checks.targets().monitoring
    results = []
    if monitoring.prometheus_url:
        url = monitoring.prometheus_url
        results += [prometheus.ready(url), prometheus.scrape_targets(url), prometheus.rule_health(url),
                    prometheus.runtime_info(url)]
        if monitoring.alertmanager_url:
            results.append(prometheus.connected_alertmanagers(url))
    if monitoring.alertmanager_url:
        results.append(prometheus.alertmanager_status(monitoring.alertmanager_url))
    if monitoring.grafana_url:
        results.append(prometheus.grafana_health(monitoring.grafana_url))
    if not results:
        return checks.unconfigured("monitoring_stack", "monitoring (prometheus_url, alertmanager_url, grafana_url)", False)
    return checks.combine("monitoring_stack", results)


@resumable(name="review-logs", **checks.PROBE)
def review_logs(since_minutes: float) -> ProbeResult:
    """Seed 004 "Log Review: Check for errors and security events": every configured log, evidence only."""
    sources = checks.targets().logs
    if not sources:
        return checks.unconfigured("log_review", "logs", False)
    results = []
    for name, source in sources.items():
        try:
            if name == "auth":
                result = logs.failed_logins(source.path, since_minutes=since_minutes)
            elif source.format == "access":
                result = logs.access_5xx(source.path, since_minutes=since_minutes)
            else:
                result = logs.error_counts(source.path, source.error_pattern, since_minutes=since_minutes)
        except OSError as exc:
            result = ProbeResult(probe="log", ok=False, summary=f"cannot read: {exc}")
        results.append(result.model_copy(update={"probe": f"log {name}: {result.probe}"}))
    return checks.combine("log_review", results)


def _sub_rows(result: ProbeResult) -> list[ProbeResult]:
    """The individual checks inside a combined result, for the report table."""
    inner = result.evidence.get("checks") if isinstance(result.evidence, dict) else None
    return [ProbeResult.model_validate(c) for c in inner] if inner else [result]


# -- daily ------------------------------------------------------------------------------------

check_p95_latencies = checks.p95_latency.with_options(name="check-p95-latencies")
check_error_rates = checks.error_ratio.with_options(name="check-error-rates")
check_spending = checks.prometheus_query.with_options(name="check-spending-within-budget")
check_active_alerts = checks.alertmanager_api.with_options(name="check-active-alerts")


class DailyChecksLimits(Thresholds):
    p95_seconds: float = seed(2.0, 'seed 000/004 "P95 >2s"', gt=0)
    error_ratio: float = seed(0.05, 'seeds 000-004 "> 5%"', ge=0, le=1)
    daily_cost_dollars: float = seed(
        100, 'seed 003 HighApiCosts "$100/day": "Cost: Verify spending is within budget"', ge=0)
    window_seconds: float = seed(3600, "chosen: the last hour's latency and errors", gt=0)
    log_window_minutes: float = seed(24 * 60, 'seed 004 "Log Review": the last day', gt=0)


DAILY_CHECKS = RunbookSpec(
    name="daily-checks",
    title="Daily checks",
    schedules=("0 8 * * *",),  # seed 003 "Daily Checks (Business Hours)": before the business day
    severity="info",
    seeds=(
        "003 Scheduled Maintenance / Daily Checks (Business Hours): health, p95 latencies, spending, active alerts",
        "004 Maintenance and Operations / Daily Operations: dashboard review, alert triage, performance analysis, log review",
    ),
    left_to_humans=(
        "Review the Grafana dashboards (System Overview, Performance, Cost): red or yellow indicators (seed 003 step 2, seed 004)",
        "Triage and acknowledge the active alerts listed in this report (seed 004 'Alert Triage')",
        "Identify trends and bottlenecks in the figures above (seed 004 'Performance Analysis')",
    ),
)


@scheduled_flow(DAILY_CHECKS, thresholds=DailyChecksLimits)
def daily_checks() -> State:
    """Seed 003 "Daily Checks (Business Hours)" and seed 004 "Daily Operations"."""
    runbook = _runbook(DAILY_CHECKS)
    limits = runbook.limits(DailyChecksLimits)
    window = prometheus.window(limits.window_seconds)
    health = collect(check_overall_health)                                                                   # 003 1
    p95 = collect(check_p95_latencies, limits.p95_seconds, window, required=False)                           # 003 2
    errors = collect(check_error_rates, limits.error_ratio, window, required=False)                          # 004
    spending = collect(check_spending, DAILY_COST, limits.daily_cost_dollars, probe="daily_api_cost", unit="$",
                       required=False)                                                                       # 003 2
    alerts = collect(check_active_alerts, "alerts", required=False)                                          # 003 3, 004
    stack = collect(check_monitoring_stack)
    log_review = collect(review_logs, limits.log_window_minutes)                                             # 004
    results = [health, p95, errors, spending, alerts, stack, log_review]
    sections = [table("Active alerts (triage each)", ["alertname", "severity", "instance", "state", "starts_at", "summary"],
                      alerts.evidence.get("alerts", [])),
                table("Monitoring stack", ["probe", "ok", "summary"],
                      [{"probe": r.probe, "ok": r.ok, "summary": r.summary} for r in _sub_rows(stack)]),
                table("Logs (last day)", ["probe", "ok", "summary"],
                      [{"probe": r.probe, "ok": r.ok, "summary": r.summary} for r in _sub_rows(log_review)])]
    return finish(runbook, results, sections=sections)


# -- weekly -----------------------------------------------------------------------------------

review_past_week_alerts = checks.prometheus_api.with_options(name="review-past-week-alerts")
check_error_rates_by_endpoint = checks.error_ratio.with_options(name="check-error-rates-by-endpoint")
check_backup_status = checks.backup_freshness.with_options(name="check-backup-status")
verify_prometheus_retention = checks.prometheus_api.with_options(name="verify-prometheus-retention")
capacity_disk = checks.disk_space.with_options(name="capacity-planning-disk")


@resumable(name="review-past-week-incidents")
def past_week_incidents(days: float = 7) -> ProbeResult:
    """The responder's own record: incidents opened in the window, by runbook and how they closed."""
    _, _, store = runtime()
    since = datetime.now(timezone.utc) - timedelta(days=days)
    rows = [i for i in store.incidents() if datetime.fromisoformat(i.opened_at.replace("Z", "+00:00")) >= since]
    items = [{"opened_at": i.opened_at, "runbook": i.runbook, "severity": i.severity, "status": i.status,
              "close_reason": i.close_reason or "", "title": i.title} for i in rows]
    by_runbook: dict[str, int] = {}
    for row in items:
        by_runbook[row["runbook"]] = by_runbook.get(row["runbook"], 0) + 1
    return ProbeResult(probe="incidents_past_week", ok=True, value=float(len(items)), unit=" incidents",
                       summary=", ".join(f"{k}: {v}" for k, v in sorted(by_runbook.items(), key=lambda kv: -kv[1]))
                       or "no incidents", evidence={"incidents": items[-100:], "by_runbook": by_runbook})


@resumable(name="check-log-retention-applied")
def log_retention_applied() -> ProbeResult:
    """Seed 004 "Logs: 7 days local, 30 days compressed": no uncompressed log older than the local days."""
    paths = checks.targets().paths
    if not paths.logs:
        return checks.unconfigured("log_retention", "paths.logs", False)
    cutoff = time.time() - (paths.retention_days + 1) * 86400
    late = []
    for root in paths.logs:
        for dirpath, _, files in os.walk(root):
            for name in files:
                full = os.path.join(dirpath, name)
                if ".log" in name and not name.endswith((".gz", ".zst", ".xz", ".bz2")):
                    try:
                        if os.stat(full, follow_symlinks=False).st_mtime < cutoff:
                            late.append(full)
                    except FileNotFoundError:
                        continue
    return ProbeResult(probe="log_retention", ok=not late, value=float(len(late)), threshold=0, unit=" files",
                       summary=(f"{len(late)} uncompressed logs older than {paths.retention_days:g} days" if late else
                                f"logs compressed after {paths.retention_days:g} days, deleted after {paths.delete_after_days:g}"),
                       evidence={"late": late[:50], "retention_days": paths.retention_days,
                                 "delete_after_days": paths.delete_after_days})


class WeeklyChecksLimits(Thresholds):
    error_ratio: float = seed(0.05, 'seeds 000-004 "> 5%", per endpoint over the week', ge=0, le=1)
    prometheus_retention_days: int = seed(
        15, 'seed 003 "Settings should retain 15 days of data", seed 004 "Metrics: 15 days local"', gt=0)
    disk_percent: float = seed(80, 'seed 001 "alerts at 80% (warning)": capacity planning', ge=0, le=100)


WEEKLY_CHECKS = RunbookSpec(
    name="weekly-checks",
    title="Weekly checks",
    schedules=("0 8 * * 1",),  # seed 003 "Weekly Checks (Monday AM)"
    severity="info",
    seeds=(
        "003 Scheduled Maintenance / Weekly Checks (Monday AM): past week's alerts, error rates by endpoint, backups, Prometheus retention",
        "004 Maintenance and Operations / Weekly Operations: capacity planning, alert tuning, backup verification (monitoring data retention)",
    ),
    left_to_humans=(
        "Review Sentry for new error patterns of the last 7 days (seed 003 step 3)",
        "Alert tuning: adjust thresholds of alerts that fired without need, from the list above (seed 004)",
        "Export Grafana dashboards to version control (seed 003 step 6); dashboard updates (seed 004)",
    ),
)


@scheduled_flow(WEEKLY_CHECKS, thresholds=WeeklyChecksLimits)
def weekly_checks() -> State:
    """Seed 003 "Weekly Checks (Monday AM)" and seed 004 "Weekly Operations"."""
    runbook = _runbook(WEEKLY_CHECKS)
    limits = runbook.limits(WeeklyChecksLimits)
    alerts = collect(review_past_week_alerts, "firing_history", required=False, over="7d")                   # 003 1
    incidents = collect(past_week_incidents, 7)
    endpoints = collect(check_error_rates_by_endpoint, limits.error_ratio, "7d", ENDPOINTS, required=False)  # 003 2
    backups = collect(check_backup_status)                                                                  # 003 4
    retention = collect(verify_prometheus_retention, "retention", required=False,
                        expected=f"{limits.prometheus_retention_days}d")                                     # 003 5
    log_retention = collect(log_retention_applied)                                                          # 004
    disk = collect(capacity_disk, limits.disk_percent)                                                      # 004
    stack = collect(check_monitoring_stack)
    results = [alerts, incidents, endpoints, backups, retention, log_retention, disk, stack]
    sections = [table("Alerts that fired in the past week (alert tuning)", ["alertname", "severity", "firing_minutes"],
                      alerts.evidence.get("alerts", [])),
                table("Incidents opened in the past week", ["opened_at", "runbook", "severity", "status", "close_reason", "title"],
                      incidents.evidence.get("incidents", [])),
                table("Backups", ["name", "state", "detail"], backups.evidence.get("backups", []))]
    return finish(runbook, results, sections=sections)


# -- monthly ----------------------------------------------------------------------------------

review_monitoring_configuration = checks.prometheus_api.with_options(name="review-monitoring-configuration")
trend_api_costs = checks.prometheus_query.with_options(name="capacity-planning-api-costs")
trend_response_times = checks.p95_latency.with_options(name="capacity-planning-response-times")
trend_error_rates = checks.error_ratio.with_options(name="performance-baseline-error-rates")
trend_videos = checks.prometheus_query.with_options(name="capacity-planning-video-volume")
metrics_cleanup = checks.prometheus_api.with_options(name="metrics-cleanup")
check_backups_for_restore = checks.backup_freshness.with_options(name="disaster-recovery-backups")


@resumable(name="capacity-planning-database-size", **checks.PROBE)
def database_size() -> ProbeResult:
    entry = checks.targets().postgres.get("default")
    if entry is None or entry.url is None:
        return checks.unconfigured("pg_database_sizes", "postgres.default", False)
    return postgres.database_sizes(entry.url)


class MonthlyChecksLimits(Thresholds):
    p95_seconds: float = seed(2.0, 'seed 000/004 "P95 >2s": the 30-day baseline against it', gt=0)
    error_ratio: float = seed(0.05, 'seeds 000-004 "> 5%"', ge=0, le=1)


MONTHLY_CHECKS = RunbookSpec(
    name="monthly-checks",
    title="Monthly checks",
    schedules=("0 8 1 * *",),  # seed 003 "Monthly Checks (First of Month)"
    severity="info",
    seeds=(
        "003 Scheduled Maintenance / Monthly Checks (First of Month): monitoring configuration, capacity planning, runbooks, training, DR test",
        "004 Maintenance and Operations / Monthly Operations: performance baseline, alert runbook, metrics cleanup, security review",
    ),
    left_to_humans=(
        "Validate alert thresholds against the 30-day baseline in this report and update them (seed 003 step 1)",
        "Update runbooks: document new issues, update response procedures (seed 003 step 3, seed 004 'Alert Runbook')",
        "Team training: review alert handling procedures, share new patterns (seed 003 step 4)",
        "Disaster recovery test: run the backup restore procedure, verify RTO/RPO (seed 003 step 5)",
        "Post-mortem meetings for the month's critical incidents; blameless, with action items (seed 000, 002)",
        "Security review: audit monitoring access and configurations (seed 004)",
        "Metrics cleanup: remove unused metrics and dashboards, starting from the largest above (seed 004)",
    ),
)


@scheduled_flow(MONTHLY_CHECKS, thresholds=MonthlyChecksLimits)
def monthly_checks() -> State:
    """Seed 003 "Monthly Checks (First of Month)" and seed 004 "Monthly Operations"."""
    runbook = _runbook(MONTHLY_CHECKS)
    limits = runbook.limits(MonthlyChecksLimits)
    rules = collect(review_monitoring_configuration, "rule_health", required=False)                          # 003 1
    costs = collect(trend_api_costs, "sum(increase(affiliate_api_cost_dollars[30d]))", None,
                    probe="api_costs_30d", unit="$", required=False)                                          # 003 2
    latency = collect(trend_response_times, limits.p95_seconds, "30d", required=False)                       # 003 2, 004
    errors = collect(trend_error_rates, limits.error_ratio, "30d", required=False)                           # 004 baseline
    database = collect(database_size)                                                                        # 003 2
    videos = collect(trend_videos, "sum(increase(affiliate_videos_generated_total[30d]))", None,
                     probe="videos_generated_30d", required=False)                                            # 003 2
    cardinality = collect(metrics_cleanup, "tsdb_top_series", required=False)                                # 004
    backups = collect(check_backups_for_restore)                                                             # 003 5
    results = [rules, costs, latency, errors, database, videos, cardinality, backups]
    _, catalog, _ = runtime()
    thresholds = [{"runbook": r.name, "alertnames": ", ".join(r.alertnames[:4]), "thresholds":
                   ", ".join(f"{k}={v:g}" for k, v in r.limits(r.limits_model).model_dump().items())}
                  for r in catalog.runbooks if r.alertnames]
    sections = [table("Catalog thresholds to validate against the baseline", ["runbook", "alertnames", "thresholds"], thresholds),
                table("Largest metrics (cardinality)", ["name", "value"], cardinality.evidence.get("by_metric", []))]
    return finish(runbook, results, sections=sections)


# -- log retention (seed 002) -------------------------------------------------------------------

measure_log_directories = checks.disk_space.with_options(name="check-disk-usage")


@resumable(name="measure-log-directories", **checks.PROBE)
def log_directories() -> ProbeResult:
    paths = checks.targets().paths
    if not paths.logs:
        return checks.unconfigured("log_dir_sizes", "paths.logs", False)
    return system.log_dir_sizes(paths.logs)


class LogRetentionLimits(Thresholds):
    disk_percent: float = seed(90, 'seed 000 DISK_SPACE_CRITICAL ">90%": reported after the clean-up', ge=0, le=100)


LOG_RETENTION = RunbookSpec(
    name="log-retention",
    title="Log retention clean-up",
    schedules=("30 3 * * *",),  # seed 002 "/etc/cron.daily/auto-author-cleanup": daily, at night
    severity="info",
    seeds=(
        "002 5. Disk Space Low / Clean up logs: gzip old logs; find /var/log/auto-author -name '*.gz' -mtime +7 -delete; cron.daily",
        "004 Data Retention: Logs: 7 days local, 30 days compressed storage",
    ),
    left_to_humans=(
        "Consider a log aggregation service and review the retention policy (seed 002 follow-up)",
    ),
)


@scheduled_flow(LOG_RETENTION, thresholds=LogRetentionLimits)
def log_retention() -> State:
    """Seed 002 "Clean up logs" + "/etc/cron.daily/auto-author-cleanup"; seed 004 "Logs: 7 days local, 30 days compressed".

    ``gzip`` logs older than ``paths.retention_days`` (7), then delete compressed logs older than
    ``paths.delete_after_days`` (30), in ``paths.logs`` only.
    """
    runbook = _runbook(LOG_RETENTION)
    limits = runbook.limits(LogRetentionLimits)
    paths = runtime()[1].targets.paths
    before = collect(log_directories)
    plans = [
        PlannedAction(action="compress_old_logs", target=f"logs in {', '.join(paths.logs)}",
                      params={"directories": paths.logs, "older_than_days": paths.retention_days,
                              "patterns": ["*.log", "*.log.[0-9]*", "*.log-[0-9]*"]},
                      why=f"seed 004: logs 7 days local (retention_days {paths.retention_days:g})"),
        PlannedAction(action="delete_old_files", target=f"compressed logs in {', '.join(paths.logs)}",
                      params={"directories": paths.logs, "older_than_days": paths.delete_after_days, "patterns": ["*.gz"]},
                      why=f"seed 004: 30 days compressed (delete_after_days {paths.delete_after_days:g})"),
    ] if paths.logs else []
    # the same path as every response: loop guard, dry run, and approval for anything risky
    outcomes = mitigate(runbook, None, plans, [before])
    after = collect(log_directories) if outcomes else before
    disk = collect(measure_log_directories, limits.disk_percent)
    results = [before.model_copy(update={"probe": "log_dirs_before"}), after.model_copy(update={"probe": "log_dirs_after"}), disk]
    return finish(runbook, results, outcomes)


# -- the responder's own store ----------------------------------------------------------------------


class StoreRetentionLimits(Thresholds):
    keep_days: float = seed(
        30, "chosen: raw Alertmanager bodies and delivered events are kept 30 days (seed 004 keeps logs 30 days "
            "compressed); incidents, their alerts and timelines are kept", gt=0)


@resumable(name="prune-responder-store", retries=2, retry_delay_seconds=5)
def prune_responder_store(keep_days: float) -> ProbeResult:
    """Delete history older than ``keep_days``: raw bodies and events delivered and followed up."""
    deleted = runtime()[2].prune(datetime.now(timezone.utc) - timedelta(days=keep_days))
    return ProbeResult(probe="store_retention", ok=True, value=float(sum(deleted.values())),
                       summary=f"deleted {deleted['receipts']} raw bodies, {deleted['events']} delivered events and "
                               f"{deleted['step_results']} kept step results older than {keep_days:g} days",
                       evidence=deleted)


STORE_RETENTION = RunbookSpec(
    name="store-retention",
    title="Responder store retention",
    schedules=("45 3 * * *",),  # daily, at night, after the log clean-up
    severity="info",
    seeds=(
        "004 Data Retention: the responder keeps its own history bounded (raw bodies and delivered events, 30 days)",
    ),
    left_to_humans=(
        "Prefect's own history: events go after PREFECT_SERVER_EVENTS_RETENTION_PERIOD (7 days); deleting old flow runs (PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED=events,flow_runs) is an operator's choice",
    ),
)


@scheduled_flow(STORE_RETENTION, thresholds=StoreRetentionLimits)
def store_retention() -> State:
    """The responder's own store stays bounded: what is only history (raw bodies, delivered events) is deleted
    after ``keep_days``; incidents, alerts and timelines are kept, and nothing still waiting is touched."""
    runbook = _runbook(STORE_RETENTION)
    return finish(runbook, [collect(prune_responder_store, runbook.limits(StoreRetentionLimits).keep_days)])


# -- backup freshness -----------------------------------------------------------------------------

check_backup_freshness = checks.backup_freshness.with_options(name="check-backup-freshness")


BACKUP_FRESHNESS = RunbookSpec(
    name="backup-freshness",
    title="Backup freshness",
    schedules=("0 7 * * *",),  # seed 004 "Backups: Daily snapshots": checked every morning
    severity="info",
    seeds=(
        "003 Weekly Checks / Check backup status (./scripts/monitoring/check-backup-status.sh)",
        "004 Data Retention: Backups: Daily snapshots with encryption",
    ),
    left_to_humans=(
        "Restore a backup into a scratch database now and then: freshness is not restorability (seed 003 DR test)",
    ),
)


# No thresholds of its own: each backup set's max_age_hours is in config/targets.yaml (backups[], 26 h).
@scheduled_flow(BACKUP_FRESHNESS, thresholds=Thresholds)
def backup_freshness() -> State:
    """Seed 003 weekly "Check backup status", seed 004 "Backups: Daily snapshots": is each backup recent?"""
    runbook = _runbook(BACKUP_FRESHNESS)
    result = collect(check_backup_freshness)
    return finish(runbook, [result], sections=[table("Backups", ["name", "state", "max_age_hours", "detail"],
                                                     result.evidence.get("backups", []))])
