"""HIGH_CPU_USAGE: seed 000 (MediaNest) "CPU usage >80% for 5 minutes", seed 004 "High CPU Usage".

Started by the ``responder.alert.firing`` event for any spelling in the catalog
(``config/runbooks.yaml``, entry ``high-cpu-usage``). The steps, in the seed's order:

1. Check current CPU usage (``top -o %CPU``)            → ``check_cpu_usage``
2. Identify top processes (``ps aux --sort=-%cpu``)      → ``identify_top_processes``
3. Check system load (``uptime``, ``/proc/loadavg``)      → ``check_system_load``
4. Immediate actions: kill non-critical processes, restart services as a last resort
   (both risky: they wait for a human's approval)         → ``mitigate``
5. Verify: measure again until below the threshold         → ``verify_until_ok``
6. Close, or escalate when it is not resolved              → ``conclude``
"""

from __future__ import annotations

import psutil
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.lifecycle import acknowledge, conclude, mitigate, runbook_flow, runtime, verify_until_ok
from responder.alerts import Alert, IncidentRef
from tasks.base import ProbeResult, Risk
from tasks.mitigations import PlannedAction, plan_process_terminations
from tasks.probes import system

RUNBOOK = "high-cpu-usage"


@task(name="check-cpu-usage", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def check_cpu_usage(threshold: float) -> ProbeResult:
    return system.cpu_percent(threshold=threshold, interval=1.0)


@task(name="identify-top-processes", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def identify_top_processes() -> ProbeResult:
    result = system.top_processes(by="cpu", n=10)
    for proc in result.evidence["processes"]:
        try:
            proc["create_time"] = psutil.Process(proc["pid"]).create_time()
        except psutil.Error:
            proc["create_time"] = None
    return result


@task(name="check-system-load", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def check_system_load(threshold_per_core: float) -> ProbeResult:
    return system.load_average(threshold_per_core=threshold_per_core)


@task(name="plan-immediate-actions", cache_policy=NO_CACHE)
def plan_immediate_actions(alert: Alert, cpu: ProbeResult, top: ProbeResult) -> list[PlannedAction]:
    """Seed 000 "Immediate Actions", within what the configuration allows."""
    if cpu.ok:
        return []
    _, catalog, _ = runtime()
    procs = [p for p in top.evidence["processes"] if p.get("create_time")]
    plans = plan_process_terminations(
        procs, catalog.targets.processes.killable_cmdline, catalog.targets.processes.protected_names
    )
    service = catalog.targets.services.get(alert.labels.get("service", ""))
    if not plans and service is not None and service.restart:
        # "Restart services: last resort for stuck processes"
        plans.append(
            PlannedAction(
                action="restart_service",
                risk=Risk.RISKY,
                target=alert.labels["service"],
                params={"service": alert.labels["service"], "argv": service.restart},
                why=f"{cpu.line()}; no non-critical process to terminate",
            )
        )
    return plans


@runbook_flow(name="high-cpu-usage", run_name="HIGH_CPU_USAGE {alert.fingerprint}")
def high_cpu_usage(alert: Alert, incident: IncidentRef | None = None):
    """Respond to HIGH_CPU_USAGE the way seed 000 says to."""
    _, catalog, _ = runtime()
    runbook = catalog.get(RUNBOOK)
    threshold = runbook.thresholds.get("cpu_percent", 80)

    incident = acknowledge(RUNBOOK, alert, incident)
    if incident is None:
        return "duplicate"

    cpu = check_cpu_usage(threshold)
    top = identify_top_processes()
    load = check_system_load(runbook.thresholds.get("load_per_core", 1.0))
    evidence = [cpu, load, top]

    outcomes = mitigate(runbook, incident, plan_immediate_actions(alert, cpu, top), evidence)

    settings, _, _ = runtime()
    last, verdict = verify_until_ok(
        lambda: check_cpu_usage(threshold),
        incident,
        budget_seconds=runbook.verify.budget_seconds * settings.time_scale,
        interval_seconds=runbook.verify.interval_seconds * settings.time_scale,
    )
    return conclude(runbook, alert, incident, evidence, outcomes, verdict, last)
