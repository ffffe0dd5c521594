"""The monitoring stack's own troubleshooting (seed 004) and external service failures.

The seeds name no alert for these; each runbook's spec (``EXTERNAL_SERVICE_FAILURES`` ...)
routes the spellings it lists (a rule that fires them is the operator's, e.g. on
``up{job="prometheus"} == 0`` or ``alertmanager_notifications_failed_total``). Each runbook's
thresholds are a typed model declared next to its flow; an installation may override them.

* ``external_service_failures``: seed 004 "External Service Failures: API downtime", seed 001
  "Verify External Service Status", seed 003 "External API down ... graceful degradation".
* ``prometheus_not_scraping``: seed 004 "Prometheus Not Scraping".
* ``grafana_not_loading``: seed 004 "Grafana Dashboard Not Loading".
* ``alertmanager_not_sending``: seed 004 "AlertManager Not Sending Notifications".
"""

from __future__ import annotations

from urllib.parse import urlsplit

from core.results import resumable

from flows import checks
from flows.checks import collect, compact, measured
from flows.lifecycle import Assessment, runbook_flow
from core.alerts import Alert
from core.catalog import Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from tasks.base import ProbeResult
from tasks.probes import http


# -- External Service Failures ---------------------------------------------------------------------


class ExternalServiceFailuresLimits(Thresholds):
    slow_ms: float = seed(2000, "chosen: a status page slower than 2 s is reported as degraded", ge=0)
    log_window_minutes: float = seed(15, "chosen: how far back the logs are read", gt=0)


check_external_services = checks.external_services.with_options(name="check-external-services")
check_circuit_breakers = checks.log_probe.with_options(name="check-circuit-breakers")


def _externals_named(alert: Alert) -> list[str] | None:
    """The alert's ``service``/``name`` label selects one configured external service; else all."""
    configured = {s.name for s in checks.targets().external}
    for label in ("external_service", "service", "name"):
        if alert.labels.get(label) in configured:
            return [alert.labels[label]]
    return None


def assess_external_services(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 004 "External Service Failures", seeds 001 and 003's checks, in order."""
    limits = runbook.limits(ExternalServiceFailuresLimits, alert.alertname)
    names = _externals_named(alert)
    slow_ms = limits.slow_ms
    services = collect(check_external_services, names, slow_ms, required=True)
    breakers = collect(check_circuit_breakers, "errors", ("app", "error"), probe="circuit_breaker_open",
                       pattern=r"(?i)circuit.*open", since_minutes=limits.log_window_minutes)
    plans = []
    if measured(services) and not services.ok:  # seed 003 "graceful degradation (if external API down)"
        plans = compact([checks.flag_plan("degraded-mode", f"{services.line()}: disable non-critical features, "
                                                            "return cached data, queue jobs for retry")])
    return Assessment(evidence=[services, breakers], plans=plans,
                      verify=lambda: check_external_services(names, slow_ms, required=True))


EXTERNAL_SERVICE_FAILURES = RunbookSpec(
    name="external-service-failures",
    title="External service failures",
    alertnames=(
        "ExternalServiceFailure",  # seed 004 "External Service Failures: API downtime"
        "ExternalServiceFailures",
        "ExternalServiceDown",
    ),
    severity="warning",
    seeds=(
        "004 Business Alerts: External Service Failures: API downtime",
        "001 Verify External Service Status (Stripe, Mux, S3/R2 status pages)",
        "003 External API down: check the API status page, implement fallback (graceful degradation)",
    ),
    verify=VerifySpec(budget_seconds=900, interval_seconds=30),
    approval_timeout_seconds=1800,
    mitigations=(
        "set_flag",  # risky: seed 003 "Graceful degradation: enable cache fallback, queue jobs for later": flag degraded-mode
    ),
    left_to_humans=(
        "Contact the vendor or follow its status page; API integration escalation: Content Team (seed 003)",
        "Implement circuit breakers and fallbacks for the dependency (seeds 000, 001)",
    ),
)


external_service_failures = runbook_flow(EXTERNAL_SERVICE_FAILURES, assess_external_services, ExternalServiceFailuresLimits,
                                         "Check every configured status/health URL; degrade gracefully while one is down; verify.")


# -- Prometheus Not Scraping ---------------------------------------------------------------------


class PrometheusNotScrapingLimits(Thresholds):
    """No thresholds: seed 004's steps read the scrape targets (up or down), the network to them, the configuration."""


check_prometheus_targets = checks.prometheus_api.with_options(name="check-prometheus-targets")
check_configuration = checks.prometheus_api.with_options(name="check-configuration")
check_rule_evaluation = checks.prometheus_api.with_options(name="check-rule-evaluation")


@resumable(name="verify-network-connectivity", **checks.PROBE)
def verify_network_connectivity(targets: ProbeResult) -> ProbeResult:
    """Seed 004 ``docker exec prometheus ping medianest-backend``: TCP connect to each down target.

    From the responder's host, which may see the network differently from Prometheus: a target
    that answers here but not there points at Prometheus' network or DNS.
    """
    rows = []
    for target in targets.evidence.get("down", [])[:20]:
        parts = urlsplit(target.get("scrape_url") or "")
        if not parts.hostname:
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        result = http.port_listening(parts.hostname, port)
        rows.append({"job": target.get("job"), "instance": target.get("instance"), "reachable": result.ok,
                     "detail": result.summary})
    unreachable = [r for r in rows if not r["reachable"]]
    return ProbeResult(probe="network_connectivity", ok=not unreachable, value=float(len(unreachable)), threshold=0,
                       unit=" unreachable",
                       summary=("unreachable from here: " + ", ".join(f"{r['job']} {r['instance']}" for r in unreachable))
                       if unreachable else f"{len(rows)} down targets reachable from here" if rows else "no down target to test",
                       evidence={"targets": rows})


def _job_targets(result: ProbeResult, job: str | None) -> ProbeResult:
    """The scrape-target result narrowed to the alert's ``job`` (when the alert names one)."""
    if job is None or not measured(result):
        return result
    down = [t for t in result.evidence.get("down", []) if t.get("job") == job]
    count = (result.evidence.get("jobs", {}).get(job) or {})
    return result.model_copy(update={
        "ok": not down and bool(count), "value": float(len(down)),
        "summary": f"job {job}: {count.get('up', 0)} up, {len(down)} down" + (
            f" ({down[0].get('last_error')})" if down else "") if count else f"job {job} has no active target",
    })


@resumable(name="check-job-targets", **checks.PROBE)
def check_job_targets(job: str | None) -> ProbeResult:
    return _job_targets(checks.prometheus_api.fn("scrape_targets"), job)


def assess_scraping(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 004 "Prometheus Not Scraping", in order."""
    job = alert.labels.get("target_job") or (alert.labels.get("job") if alert.labels.get("job") != "prometheus" else None)
    targets = collect(check_prometheus_targets, "scrape_targets")                                            # 1
    scoped = _job_targets(targets, job)
    network = collect(verify_network_connectivity, targets)                                                  # 2
    config = collect(check_configuration, "runtime_info")                                                    # 3
    rules = collect(check_rule_evaluation, "rule_health", required=False)
    evidence = [scoped, targets, network, config, rules] if scoped is not targets else [targets, network, config, rules]
    return Assessment(evidence=evidence, plans=[],  # network and configuration fixes are a person's
                      verify=lambda: check_job_targets(job))


PROMETHEUS_NOT_SCRAPING = RunbookSpec(
    name="prometheus-not-scraping",
    title="Prometheus not scraping",
    alertnames=(
        "PrometheusNotScraping",  # seed 004 "Prometheus Not Scraping"
        "PrometheusTargetMissing",
    ),
    severity="warning",
    seeds=(
        "004 Troubleshooting / Prometheus Not Scraping: curl /api/v1/targets; ping the target; docker logs prometheus | grep -i error",
    ),
    verify=VerifySpec(budget_seconds=600, interval_seconds=30),
    approval_timeout_seconds=1800,
    left_to_humans=(
        "Network between Prometheus and the target (docker network, DNS, firewall): the report tells what the responder's host reaches",
        "Fix the scrape configuration and reload Prometheus (seed 004 'Check configuration')",
    ),
)


prometheus_not_scraping = runbook_flow(PROMETHEUS_NOT_SCRAPING, assess_scraping, PrometheusNotScrapingLimits,
                                       "Seed 004: check the targets, the network to them, the configuration; verify scraping resumed.")


# -- Grafana Dashboard Not Loading -----------------------------------------------------------------


class GrafanaNotLoadingLimits(Thresholds):
    """No thresholds: seed 004's steps read Grafana's health, its data sources, ``up`` and Grafana's logs."""


check_grafana_health = checks.grafana_api.with_options(name="check-grafana-health")
check_data_source_connectivity = checks.grafana_api.with_options(name="check-data-source-connectivity")
verify_prometheus_queries = checks.prometheus_query.with_options(name="verify-prometheus-queries")
check_grafana_logs = checks.log_probe.with_options(name="check-grafana-logs")


@resumable(name="check-grafana-serving", **checks.PROBE)
def check_grafana_serving() -> ProbeResult:
    health = checks.grafana_api.fn("health")
    if not health.ok:
        return health
    return checks.combine("grafana", [health, checks.grafana_api.fn("datasources")])


def assess_grafana(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 004 "Grafana Dashboard Not Loading", in order."""
    health = collect(check_grafana_health, "health")
    sources = collect(check_data_source_connectivity, "datasources")                                          # 1
    queries = collect(verify_prometheus_queries, "up", probe="prometheus_query_up", no_data_ok=False)        # 2
    logs = collect(check_grafana_logs, "errors", ("grafana",), probe="grafana_log_errors",
                   pattern=r"(?i)\blvl=(eror|crit)\b|level=error|\bERROR\b", since_minutes=60)              # 3
    plans = []
    if measured(health) and not health.ok:
        plans = compact([checks.service_plan("restart_service", alert, f"{health.line()}", service="grafana")])
    return Assessment(evidence=[health, sources, queries, logs], plans=plans, verify=check_grafana_serving)


GRAFANA_NOT_LOADING = RunbookSpec(
    name="grafana-not-loading",
    title="Grafana dashboard not loading",
    alertnames=(
        "GrafanaDashboardNotLoading",  # seed 004 "Grafana Dashboard Not Loading"
        "GrafanaDown",
    ),
    severity="warning",
    seeds=(
        "004 Troubleshooting / Grafana Dashboard Not Loading: curl /api/datasources; curl /api/v1/query?query=up; docker logs grafana",
    ),
    verify=VerifySpec(budget_seconds=600, interval_seconds=30),
    approval_timeout_seconds=1800,
    mitigations=(
        "restart_service",  # risky: services.grafana.restart when configured (the seed's own steps only read)
    ),
    left_to_humans=(
        "Slow dashboards: recording rules for complex queries, shorter time ranges, Grafana caching (seed 004 performance)",
    ),
)


grafana_not_loading = runbook_flow(GRAFANA_NOT_LOADING, assess_grafana, GrafanaNotLoadingLimits,
                                   "Seed 004: data sources, Prometheus queries, Grafana logs; restart Grafana if configured; verify.")


# -- AlertManager Not Sending Notifications -----------------------------------------------------------


class AlertmanagerNotSendingLimits(Thresholds):
    """No thresholds: seed 004's steps read Alertmanager's status and its notification counters (against
    their first reading)."""


check_alertmanager_status = checks.alertmanager_api.with_options(name="check-alertmanager-status")
verify_webhook_configuration = checks.alertmanager_api.with_options(name="verify-webhook-configuration")
check_prometheus_to_alertmanager = checks.prometheus_api.with_options(name="check-prometheus-sends-to-alertmanager")
read_counters = checks.alertmanager_counters


@resumable(name="check-notifications-flowing", **checks.PROBE)
def check_notifications_flowing(baseline: dict[str, dict[str, float]], require_delivery: bool) -> ProbeResult:
    """Verification: Alertmanager up and no notification failed since the first reading (and, when
    failures had been seen, at least one delivered since)."""
    status = checks.alertmanager_api.fn("status")
    if not status.ok:
        return status
    return checks.combine("alertmanager_notifications", [
        status, checks.alertmanager_api.fn("notification_failures", baseline=baseline, require_delivery=require_delivery)])


def assess_alertmanager(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 004 "AlertManager Not Sending Notifications", in order; the counters' first reading is
    the baseline verification compares with."""
    status = collect(check_alertmanager_status, "status")                                                  # 1
    failures = collect(verify_webhook_configuration, "notification_failures")                               # 2
    sending = collect(check_prometheus_to_alertmanager, "connected_alertmanagers", required=False)
    baseline = read_counters(return_state=True)
    baseline = baseline.result() if baseline.is_completed() else {}
    plans = []
    if measured(status) and not status.ok:
        plans = compact([checks.service_plan("restart_service", alert, f"{status.line()}", service="alertmanager")])
    had_failures = measured(failures) and bool(failures.value)
    return Assessment(evidence=[status, failures, sending], plans=plans,
                      verify=lambda: check_notifications_flowing(baseline, had_failures))


ALERTMANAGER_NOT_SENDING = RunbookSpec(
    name="alertmanager-not-sending",
    title="Alertmanager not sending notifications",
    alertnames=(
        "AlertmanagerNotSending",  # seed 004 "AlertManager Not Sending Notifications"
        "AlertmanagerNotificationsFailing",
    ),
    severity="critical",
    seeds=(
        "004 Troubleshooting / AlertManager Not Sending Notifications: curl /api/v1/status; verify webhook configuration; test notification channels",
    ),
    verify=VerifySpec(budget_seconds=600, interval_seconds=30),
    approval_timeout_seconds=900,
    mitigations=(
        "restart_service",  # risky: services.alertmanager.restart when configured
    ),
    left_to_humans=(
        "Test notification channels end to end (seed 004 ./scripts/validate-alerts.sh): Slack #alerts / #critical-alerts, email, PagerDuty",
        "Receiver credentials (Slack webhook URL, PagerDuty key) are not visible to the responder",
    ),
)


alertmanager_not_sending = runbook_flow(ALERTMANAGER_NOT_SENDING, assess_alertmanager, AlertmanagerNotSendingLimits,
                                        "Seed 004: status, webhook configuration and failures, Prometheus' side; restart if configured.")
