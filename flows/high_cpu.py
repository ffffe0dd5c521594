"""HIGH_CPU_USAGE: seed 000 (MediaNest) "CPU usage >80% for 5 minutes", seed 004 "High CPU Usage".

Started by the ``responder.alert.firing`` event for any spelling in the catalog
(``config/runbooks.yaml``, entry ``high-cpu-usage``). The steps, in the seed's order:

0. Which machine alerted: this one (psutil) or another that Prometheus scrapes
   (node_exporter); neither: report that and escalate   → ``locate_host``
1. Check current CPU usage (``top -o %CPU``)            → ``check_cpu_usage``
2. Identify top processes (``ps aux --sort=-%cpu``)      → ``identify_top_processes``
3. Check system load (``uptime``, ``/proc/loadavg``)      → ``check_system_load``
4. Immediate actions: kill non-critical processes (this machine only), restart services as a
   last resort (a command configured for that machine; both risky: they wait for a human's
   approval)                                              → ``mitigate``
5. Verify: measure the same machine again until below the threshold → ``verify_until_ok``
6. Close, or escalate when it is not resolved              → ``conclude``
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.host import host_service, locate_host, prometheus_url
from flows.lifecycle import Assessment, cannot_measure, respond, runbook_flow, runtime
from core.alerts import Alert, IncidentRef
from core.catalog import Runbook, Thresholds, seed
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction, plan_process_terminations
from tasks.probes import hosts
from tasks.probes.hosts import Host

RUNBOOK = "high-cpu-usage"


class Limits(Thresholds):
    cpu_percent: float = seed(80, "seed 000 HIGH_CPU_USAGE: \"CPU usage >80% for 5 minutes\"", ge=0)
    load_per_core: float = seed(1.0, "uptime, /proc/loadavg: more runnable tasks than cores", gt=0)


@task(name="check-cpu-usage", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def check_cpu_usage(host: Host, threshold: float) -> ProbeResult:
    return hosts.cpu_percent(host, prometheus_url(), threshold)


@task(name="identify-top-processes", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def identify_top_processes(host: Host) -> ProbeResult:
    return hosts.top_processes(host, prometheus_url(), by="cpu")


@task(name="check-system-load", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def check_system_load(host: Host, threshold_per_core: float) -> ProbeResult:
    return hosts.load_average(host, prometheus_url(), threshold_per_core)


@task(name="plan-immediate-actions", cache_policy=NO_CACHE)
def plan_immediate_actions(alert: Alert, host: Host, cpu: ProbeResult, top: ProbeResult) -> list[PlannedAction]:
    """Seed 000 "Immediate Actions", within what the configuration allows, on the machine that alerted."""
    if cpu.ok:
        return []
    _, catalog, _ = runtime()
    plans: list[PlannedAction] = []
    if host.local:  # a pid means something only on this machine
        procs = [p for p in top.evidence.get("processes", []) if p.get("create_time")]
        plans = plan_process_terminations(
            procs, catalog.targets.processes.killable_cmdline, catalog.targets.processes.protected_names
        )
    selected = host_service(alert, host)
    if not plans and selected is not None and selected[1].restart:
        # "Restart services: last resort for stuck processes"
        name, service = selected
        plans.append(
            PlannedAction(
                action="restart_service",
                target=name,
                params={"service": name, "argv": service.restart},
                why=f"{cpu.line()}; no non-critical process to terminate",
            )
        )
    return plans


def assess(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 000's steps, in order, on the machine that alerted."""
    limits = runbook.limits(Limits, alert.alertname)
    host = locate_host(alert)
    if host.how == "unmeasured":
        return cannot_measure(host.result())
    cpu = check_cpu_usage(host, limits.cpu_percent)
    top = identify_top_processes(host)
    load = check_system_load(host, limits.load_per_core)
    return Assessment(evidence=[host.result(), cpu, load, top], plans=plan_immediate_actions(alert, host, cpu, top),
                      verify=lambda: check_cpu_usage(host, limits.cpu_percent))


@runbook_flow(name="high-cpu-usage", run_name="HIGH_CPU_USAGE {alert.fingerprint}", thresholds=Limits)
def high_cpu_usage(alert: Alert, incident: IncidentRef | None = None):
    """Respond to HIGH_CPU_USAGE the way seed 000 says to."""
    return respond(RUNBOOK, alert, incident, assess)
