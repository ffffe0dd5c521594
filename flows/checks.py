"""Steps shared by the application, business, monitoring-stack and scheduled runbooks.

Thin Prefect tasks over :mod:`tasks.probes`, each resolving *what* to probe from
``config/targets.yaml`` inside the task (a Redis URL with a password never becomes a task
parameter), plus the small helpers the flows plan with. A flow gives each use its seed's name::

    check_error_logs = checks.log_probe.with_options(name="check-error-logs")
    check_error_logs("errors", sources=("error", "app"), since_minutes=15)

A step that only calls a probe is the probe itself as a task (:func:`flows.lifecycle.step`)::

    check_lock_waits = step("check-lock-waits", postgres.lock_waits, retry_delay_seconds=2)

Failure rule: a probe that cannot reach its target raises and is retried (twice, 1 s apart);
a ``ResponderError`` (configuration) is not retried (:func:`flows.lifecycle.transient`).
:func:`collect` turns a step that still failed into a ``ProbeResult`` with ``ok=False`` and
``evidence["unmeasured"]``, so one broken evidence step does not stop the response: the report
shows it and verification decides.

A target that is not configured gives ``ok=False`` ("cannot measure") when the step is
``required`` (the runbook cannot verify without it) and ``ok=True`` ("skipped") otherwise.

Log sources are ``config/targets.yaml`` ``logs`` entries found by role name: ``app`` (the
application's JSON log), ``error``, ``access`` (nginx), ``auth``, ``worker``, ``grafana``.
Flags the runbooks may switch are found by purpose: ``degraded-mode``, ``media-fallback``,
``reduce-generation``, ``maintenance-mode`` and ``endpoint:<path>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from prefect import Task
from core.results import resumable
from pydantic import SecretStr

from flows.host import locate, prometheus_url
from flows.lifecycle import runtime, step, transient
from core.alerts import Alert
from tasks.base import ProbeResult, ResponderError
from tasks.mitigations import PlannedAction
from tasks.probes import backups, external, hosts, http, logs, prometheus, queues, system

ENDPOINT_LABELS = ("path", "route", "handler", "endpoint")


PROBE = dict(retries=2, retry_delay_seconds=1, retry_condition_fn=transient)


def targets():
    return runtime()[1].targets


def job_match(alert: Alert) -> dict[str, str] | None:
    """The alert's ``job`` as a PromQL matcher (escaped when the query is built)."""
    return {"job": alert.labels["job"]} if alert.labels.get("job") else None


def endpoint_of(alert: Alert) -> str | None:
    for label in ENDPOINT_LABELS:
        if alert.labels.get(label):
            return alert.labels[label]
    return None


def endpoint_match(alert: Alert) -> dict[str, str]:
    """The alert's endpoint label as a matcher, under the label name the alert uses."""
    for label in ENDPOINT_LABELS:
        if alert.labels.get(label):
            return {label: alert.labels[label]}
    return {}


def unconfigured(probe: str, what: str, required: bool) -> ProbeResult:
    return ProbeResult(probe=probe, ok=not required,
                       summary=f"{'cannot measure' if required else 'skipped'}: {what} is not configured",
                       evidence={"configured": False})


def collect(step: Any, *args: Any, **kwargs: Any) -> ProbeResult:
    """Run a probe task; a step that failed after its retries becomes an ``ok=False`` result."""
    state = step(*args, return_state=True, **kwargs)
    if state.is_completed():
        return state.result()
    error = state.result(raise_on_failure=False)
    message = error.message if isinstance(error, ResponderError) else f"{type(error).__name__}: {error}"
    return ProbeResult(probe=step.name, ok=False, summary=f"not measured: {message}"[:300],
                       evidence={"unmeasured": True, "error": message[:1000]})


def measured(result: ProbeResult) -> bool:
    return not result.evidence.get("unmeasured") and result.evidence.get("configured", True)


def combine(probe: str, results: Sequence[ProbeResult], unit: str = "") -> ProbeResult:
    """One result over several (all must be ok); ``value`` is how many are not."""
    bad = [r for r in results if not r.ok]
    return ProbeResult(probe=probe, ok=not bad, value=float(len(bad)), threshold=0, unit=unit or " failing",
                       summary="; ".join(r.line() for r in bad) if bad else f"all {len(results)} checks ok",
                       evidence={"checks": [r.model_dump() for r in results]})


# -- Prometheus, Alertmanager, Grafana -------------------------------------------------


@resumable(name="prometheus-query", **PROBE)
def prometheus_query(promql: str, threshold: float | None = None, bad_when: prometheus.BadWhen = "above",
                     probe: str = "prometheus_query", unit: str = "", no_data_ok: bool = True,
                     required: bool = True) -> ProbeResult:
    url = targets().monitoring.prometheus_url
    if not url:
        return unconfigured(probe, "Prometheus (monitoring.prometheus_url)", required)
    return prometheus.instant_query(url, promql, threshold, bad_when, probe=probe, unit=unit, no_data_ok=no_data_ok)


@resumable(name="check-error-ratio", **PROBE)
def error_ratio(threshold: float, window: str, by: Sequence[str] = ("job",), match: dict[str, str] | None = None,
                required: bool = True, no_data_ok: bool = True) -> ProbeResult:
    url = targets().monitoring.prometheus_url
    if not url:
        return unconfigured("error_ratio", "Prometheus (monitoring.prometheus_url)", required)
    return _no_data(prometheus.error_ratio(url, threshold, window, by, match), no_data_ok)


@resumable(name="check-p95-latency", **PROBE)
def p95_latency(threshold_s: float, window: str, by: Sequence[str] = ("job",), match: dict[str, str] | None = None,
                required: bool = True, no_data_ok: bool = True) -> ProbeResult:
    url = targets().monitoring.prometheus_url
    if not url:
        return unconfigured("p95_latency", "Prometheus (monitoring.prometheus_url)", required)
    return _no_data(prometheus.p95_latency(url, threshold_s, window, by, match), no_data_ok)


def _no_data(result: ProbeResult, ok: bool) -> ProbeResult:
    """Verification passes ``no_data_ok=False``: no traffic to measure is not a recovery."""
    if result.value is None and not ok:
        return result.model_copy(update={"ok": False, "summary": f"{result.summary} (cannot verify without data)"})
    return result


_PROMETHEUS_API: dict[str, Callable[..., ProbeResult]] = {
    "ready": lambda url, **kw: prometheus.ready(url, "prometheus", **kw),
    "scrape_targets": prometheus.scrape_targets,
    "rule_health": prometheus.rule_health,
    "runtime_info": prometheus.runtime_info,
    "retention": prometheus.retention,
    "connected_alertmanagers": prometheus.connected_alertmanagers,
    "tsdb_top_series": prometheus.tsdb_top_series,
    "firing_history": prometheus.firing_history,
}
_ALERTMANAGER_API: dict[str, Callable[..., ProbeResult]] = {
    "ready": lambda url, **kw: prometheus.ready(url, "alertmanager", **kw),
    "status": prometheus.alertmanager_status,
    "alerts": prometheus.alertmanager_alerts,
    "notification_failures": prometheus.notification_failures,
}
_GRAFANA_API: dict[str, Callable[..., ProbeResult]] = {
    "health": prometheus.grafana_health,
    "datasources": prometheus.grafana_datasources,
}


@resumable(name="check-prometheus", **PROBE)
def prometheus_api(check: str, required: bool = True, **kwargs: Any) -> ProbeResult:
    url = targets().monitoring.prometheus_url
    if not url:
        return unconfigured(f"prometheus_{check}", "Prometheus (monitoring.prometheus_url)", required)
    return _PROMETHEUS_API[check](url, **kwargs)


@resumable(name="check-alertmanager", **PROBE)
def alertmanager_api(check: str, required: bool = True, **kwargs: Any) -> ProbeResult:
    url = targets().monitoring.alertmanager_url
    if not url:
        return unconfigured(f"alertmanager_{check}", "Alertmanager (monitoring.alertmanager_url)", required)
    return _ALERTMANAGER_API[check](url, **kwargs)


@resumable(name="read-notification-counters", **PROBE)
def alertmanager_counters() -> dict[str, dict[str, float]]:
    url = targets().monitoring.alertmanager_url
    return prometheus.notification_counters(url) if url else {}


@resumable(name="check-grafana", **PROBE)
def grafana_api(check: str, required: bool = True) -> ProbeResult:
    url = targets().monitoring.grafana_url
    if not url:
        return unconfigured(f"grafana_{check}", "Grafana (monitoring.grafana_url)", required)
    return _GRAFANA_API[check](url)


# -- logs ------------------------------------------------------------------------------

_LOG_PROBES: dict[str, Callable[..., ProbeResult]] = {
    "errors": logs.error_counts,
    "access_5xx": logs.access_5xx,
    "failed_logins": logs.failed_logins,
    "group_by": logs.json_group_by,
    "slow_requests": logs.slow_requests,
}


@resumable(name="check-logs", **PROBE)
def log_probe(kind: str, sources: Sequence[str], probe: str | None = None, **kwargs: Any) -> ProbeResult:
    """The first configured log source among ``sources`` (role names), probed by ``kind``."""
    configured = targets().logs
    name = next((s for s in sources if s in configured), None)
    if name is None:
        return unconfigured(probe or f"log_{kind}", f"a log source named {' or '.join(sources)} (logs)", False)
    if kind in ("errors", "group_by") and probe:
        kwargs["probe"] = probe
    result = _LOG_PROBES[kind](configured[name].path, **kwargs)
    result.evidence["source"] = name
    return result


# -- external services, Redis queues, rate limits -----------------------------------------


@resumable(name="check-external-services", **PROBE)
def external_services(names: Sequence[str] | None = None, slow_ms: float | None = None,
                      probe: str = "external_services", required: bool = False) -> ProbeResult:
    services = [s.model_dump() for s in targets().external]
    if required and not services:
        return unconfigured(probe, "an external service (external)", True)
    return external.status_pages(services, names=names, slow_ms=slow_ms, probe=probe)


def _redis(name: str) -> tuple[SecretStr | None, Any]:
    entry = targets().redis.get(name)
    return (entry.url if entry is not None else None), entry


@resumable(name="check-queue-status", **PROBE)
def queue_statuses(redis_name: str = "default", only: Sequence[str] | None = None, backlog: int | None = None,
                   stall_minutes: float = 10, stuck_minutes: float = 10, required: bool = True) -> ProbeResult:
    """Every configured queue (or those named in ``only``) of one Redis target, combined."""
    url, entry = _redis(redis_name)
    if url is None or not entry.queues:
        return unconfigured("queues", f"redis.{redis_name} with queues", required)
    chosen = [q for q in entry.queues if not only or q.name in set(only)] or list(entry.queues)
    results = [queues.queue_status(url, q.name, q.kind, backlog if backlog is not None else q.threshold,
                                   stall_minutes, stuck_minutes) for q in chosen]
    combined = combine("queues", results, unit=" queues with problems")
    combined.value = float(max(r.value or 0 for r in results))
    combined.unit = " jobs (largest backlog)"
    combined.evidence = {"queues": [r.evidence for r in results], "redis": redis_name}
    return combined


@resumable(name="check-rate-limits", **PROBE)
def ratelimits(redis_name: str = "default", threshold: float | None = None) -> ProbeResult:
    url, entry = _redis(redis_name)
    if url is None or not entry.ratelimit_prefix:
        return unconfigured("ratelimit_keys", f"redis.{redis_name}.ratelimit_prefix", False)
    return queues.ratelimit_keys(url, entry.ratelimit_prefix, threshold)


@resumable(name="check-blocklist", **PROBE)
def blocklist(addresses: list[str], redis_name: str = "default") -> ProbeResult:
    url, entry = _redis(redis_name)
    if url is None or not entry.blocklist_key:
        return unconfigured("blocklist_members", f"redis.{redis_name}.blocklist_key", False)
    if not addresses:
        return ProbeResult(probe="blocklist_members", ok=True, value=0, summary="no address to look up")
    return queues.blocklist_members(url, entry.blocklist_key, addresses)


# -- this host, backups -------------------------------------------------------------------


@resumable(name="check-system-resources", **PROBE)
def system_resources(instance: str, cpu_percent: float = 80.0, memory_percent: float = 85.0) -> ProbeResult:
    """Seed 001 "Check System Resources: CPU usage, Memory usage" of the machine that alerted."""
    host = locate(instance)
    return combine("system_resources", [hosts.cpu_percent(host, prometheus_url(), cpu_percent),
                                        hosts.memory(host, prometheus_url(), memory_percent)])


@resumable(name="check-disk-space", **PROBE)
def disk_space(threshold: float = 85.0) -> ProbeResult:
    return system.disk_usage(targets().paths.disk, threshold)


@resumable(name="check-backups", **PROBE)
def backup_freshness() -> ProbeResult:
    return backups.freshness([b.model_dump() for b in targets().backups])


# -- a service's detailed health ---------------------------------------------------------------

check_application_health = step("check-application-health", http.health_detailed, retries=1)


def detailed_health(url: str, service: str, check: Task[..., ProbeResult] = check_application_health) -> ProbeResult:
    """Seed 002 ``curl /health/detailed`` of a service as evidence: a service that still does not answer
    after the step's retry is a finding (``ok=False``), not the end of the response."""
    state = check(url, return_state=True)
    return state.result() if state.is_completed() else ProbeResult(
        probe="http_health_detailed", ok=False, summary=f"{service}: no answer ({state.message})")


def application_health(alert: Alert) -> ProbeResult | None:
    """``check-application-health`` of the service the alert's labels select, if it has a ``health_detailed_url``."""
    selected = targets().select("services", alert.labels)
    if selected is None or not selected[1].health_detailed_url:
        return None
    return detailed_health(selected[1].health_detailed_url, selected[0])


# -- data stores (PostgreSQL, Redis, MongoDB) ---------------------------------------------------

_STORE_TITLES = {"postgres": "PostgreSQL", "redis": "Redis", "mongodb": "MongoDB"}


def data_store(kind: str, alert: Alert) -> tuple[str, SecretStr] | ProbeResult:
    """The configured data store of ``kind`` the alert's labels select, or a result saying there is none."""
    title = _STORE_TITLES[kind]
    chosen = targets().select(kind, alert.labels)
    if chosen is None:
        return ProbeResult(probe=f"{kind}_target", ok=False,
                           summary=f"no {title} target configured (config/targets.yaml {kind}) for this alert")
    name, target = chosen
    if target.url is None:
        return ProbeResult(probe=f"{kind}_target", ok=False, summary=f"no {title} target configured: {kind}.{name} has no URL")
    return name, target.url


def data_store_restart(kind: str, service: str, down: ProbeResult) -> list[PlannedAction] | ProbeResult:
    """Restart a data store that does not answer, with the ``services`` entry named for it (never one the
    alert's labels choose: they name the exporter or the application that noticed)."""
    if down.ok:
        return []
    entry = targets().services.get(service)
    if entry is None or not entry.restart:
        return ProbeResult(probe=f"{kind}_restart", ok=False,
                           summary=f"no restart configured for {_STORE_TITLES[kind]} (config/targets.yaml services.{service})")
    return [PlannedAction(action="restart_service", target=service,
                          params={"service": service, "argv": entry.restart},
                          why=f"{down.line()}: {str(down.evidence.get('error', ''))[:200]}")]


# -- planning helpers -----------------------------------------------------------------------


def compact(plans: Sequence[PlannedAction | None]) -> list[PlannedAction]:
    """The plans a runbook could make (a helper returns None when its target is not configured)."""
    return [p for p in plans if p is not None]


def flag_plan(name: str, why: str, on: bool = True) -> PlannedAction | None:
    """``set_flag`` for a configured flag, else None (the step is left to a human)."""
    flag = targets().flags.get(name)
    if flag is None:
        return None
    return PlannedAction(
        action="set_flag", target=f"flag {name}",
        params={"flag": name, "key": flag.key, "value": flag.on_value if on else flag.off_value},
        target_ref=("redis", flag.redis), why=why,
    )


def service_plan(action: str, alert: Alert, why: str, service: str | None = None) -> PlannedAction | None:
    """``restart_service``/``rollback_release``/``scale_service`` with the service's configured argv."""
    field = {"restart_service": "restart", "rollback_release": "rollback", "scale_service": "scale"}[action]
    if service is not None:
        entry = targets().services.get(service)
        selected = (service, entry) if entry is not None else None
    else:
        selected = targets().select("services", alert.labels)
    if selected is None or not getattr(selected[1], field):
        return None
    name, entry = selected
    argv = getattr(entry, field)
    if action == "scale_service" and any("{replicas}" in item for item in argv):
        return None  # the replica count is a person's decision
    return PlannedAction(action=action, target=name, params={"service": name, "argv": argv}, why=why)


def dead_letter_plans(queue_result: ProbeResult, older_than_minutes: float, why: str) -> list[PlannedAction]:
    """``move_to_dead_letter`` for every queue the probe found stuck items in."""
    if not measured(queue_result):
        return []
    redis_name = queue_result.evidence.get("redis", "default")
    entry = targets().redis.get(redis_name)
    plans = []
    for snap in queue_result.evidence.get("queues", []):
        if snap.get("stuck"):
            plans.append(PlannedAction(
                action="move_to_dead_letter", target=f"queue {snap['queue']}",
                params={"queue": snap["queue"], "kind": snap["kind"], "older_than_minutes": older_than_minutes,
                        "dead_letter_suffix": entry.dead_letter_suffix if entry else ":dead"},
                target_ref=("redis", redis_name),
                why=f"{why}: {'; '.join(snap.get('problems', []))}",
            ))
    return plans


def job_plan(job: str, why: str, idempotency_key: str) -> PlannedAction | None:
    entry = targets().jobs.get(job)
    if entry is None:
        return None
    return PlannedAction(action="trigger_job", target=f"job {job}",
                         params={"job": job, "method": entry.method, "idempotency_key": idempotency_key},
                         target_ref=("jobs", job), why=why)
