"""HIGH_CPU_USAGE: seed 000 (MediaNest) "CPU usage >80% for 5 minutes", seed 004 "High CPU Usage".

Started by the ``responder.alert.firing`` event for any spelling of its spec (:data:`SPEC`). The
steps, in the seed's order:

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

from core.results import resumable

from flows.host import host_service, host_step, locate_host
from flows.lifecycle import Assessment, cannot_measure, runbook_flow, runtime
from core.alerts import Alert
from core.catalog import Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction, plan_process_terminations
from tasks.probes import hosts
from tasks.probes.hosts import Host


SPEC = RunbookSpec(
    name="high-cpu-usage",
    title="High CPU usage",
    alertnames=(
        "HIGH_CPU_USAGE",  # seed 000
        "HighCPUUsage",  # seed 004 "High CPU Usage", Prometheus rule style
        "HighCpuUsage",
        "high_cpu_usage",
    ),
    severity="warning",
    seeds=(
        "000 Infrastructure Alerts / HIGH_CPU_USAGE: CPU usage >80% for 5 minutes",
        "004 Infrastructure thresholds: High CPU Usage >80% for 5 minutes",
    ),
    verify=VerifySpec(budget_seconds=300, interval_seconds=15),  # measure again for up to 5 minutes (the alert's own window)
    approval_timeout_seconds=900,
    mitigations=(
        "terminate_process",  # risky: seed 000: "Kill processes: Terminate non-critical processes if needed"
        "restart_service",  # risky: seed 000: "Restart services: Last resort for stuck processes"
    ),
    left_to_humans=(
        "Scale up: add more instances if auto-scaling is available (needs a configured scale command)",
        "Reduce load: enable maintenance mode if necessary (a product decision)",
        "Root cause: high traffic, database queries, memory pressure or background jobs (seed 000 table)",
    ),
)


class Limits(Thresholds):
    cpu_percent: float = seed(80, "seed 000 HIGH_CPU_USAGE: \"CPU usage >80% for 5 minutes\"", ge=0)
    load_per_core: float = seed(1.0, "uptime, /proc/loadavg: more runnable tasks than cores", gt=0)


check_cpu_usage = host_step("check-cpu-usage", hosts.cpu_percent)
identify_top_processes = host_step("identify-top-processes", hosts.top_processes)
check_system_load = host_step("check-system-load", hosts.load_average)


@resumable(name="plan-immediate-actions")
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
    top = identify_top_processes(host, by="cpu")
    load = check_system_load(host, limits.load_per_core)
    return Assessment(evidence=[host.result(), cpu, load, top], plans=plan_immediate_actions(alert, host, cpu, top),
                      verify=lambda: check_cpu_usage(host, limits.cpu_percent))


high_cpu_usage = runbook_flow(SPEC, assess, Limits,
                              "Respond to HIGH_CPU_USAGE the way seed 000 says to.")
