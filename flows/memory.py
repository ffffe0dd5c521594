"""HIGH_MEMORY_USAGE and its other spellings: seeds 000, 001, 002, 003 and 004 in one flow.

Started by the ``responder.alert.firing`` event for any spelling of its spec (:data:`SPEC`,
``high-memory-usage``): ``HIGH_MEMORY_USAGE`` (seed 000,
004), ``memory_usage`` (seed 001), ``HighMemoryUsage`` (seed 003). Each spelling keeps its seed's
threshold: ``memory_percent`` is 85 (seed 000), 90 for ``memory_usage`` and ``HighMemoryUsage``
(:class:`Limits` and its ``spellings``). The steps, in seed 000's order, with what the other seeds add:

0. Which machine alerted (this one: psutil; another: node_exporter in Prometheus; neither:
   report that and escalate)                                           → ``locate-host``
1. Check memory consumption (``free -h``, ``/proc/meminfo``)           → ``check-memory-usage``
2. Identify memory-consuming processes (``ps aux --sort=-%mem``)       → ``identify-memory-processes``
3. Check swap usage (``swapon -s``)                                     → ``check-swap-usage``
   Seed 002 "Check application metrics: /health/detailed ...
   memory_percent", when the alert's service has a detailed health URL  → ``check-application-health``
4. Resolutions: terminate processes ``config/targets.yaml`` calls killable (this machine only),
   else restart the alert's service with the command configured for that machine ("Restart
   Node.js: pm2 restart all"; seeds 001-003 "restart application"). Both risky: they wait for a
   human's approval                                                     → ``mitigate``
5. Verify: measure the same machine again until below the threshold     → ``verify_until_ok``
6. Close, or escalate                                                   → ``conclude``

Seed 003's ``HighMemoryUsage`` is a different measurement: a Node.js heap above 90 % of *its*
limit (``nodejs_heap_used_bytes / nodejs_heap_size_limit_bytes``), which the responder cannot read
from outside the process while host memory may be fine. For that spelling the host figures are
evidence, seed 003's fix ("restart service") is proposed whatever they say, and verification
waits for Prometheus to resolve the alert instead of declaring a healthy host "verified".

Seed 000's "Clear caches: redis-cli FLUSHDB if safe" and "Scale memory" are left to humans
(listed in the catalog and in every report).
"""

from __future__ import annotations

from typing import Any, ClassVar

from core.results import resumable

from flows import checks
from flows.host import host_service, host_step, locate_host
from flows.lifecycle import Assessment, cannot_measure, runbook_flow, runtime
from core.alerts import Alert
from core.catalog import Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction, plan_process_terminations
from tasks.probes import hosts
from tasks.probes.hosts import Host


SPEC = RunbookSpec(
    name="high-memory-usage",
    title="High memory usage",
    alertnames=(
        "HIGH_MEMORY_USAGE",  # seed 000; seed 004 "High Memory Usage"
        "HighMemoryUsage",  # seed 003 (a Node.js heap alert: see flows/memory.py)
        "memory_usage",  # seed 001
        "high_memory_usage",
    ),
    severity="warning",
    seeds=(
        "000 Infrastructure Alerts / HIGH_MEMORY_USAGE: Memory usage >85% for 3 minutes",
        "001 High Memory Usage / memory_usage: Memory usage exceeds 90% (alerts at 80% warning, 90% critical)",
        "002 6. Memory High: \"High memory usage: 92%\" (Severity: High)",
        "003 WARNING / HighMemoryUsage: Node.js process using > 90% of heap memory (nodejs_heap_used_bytes / nodejs_heap_size_limit_bytes > 0.9 for 10m)",
        "004 Infrastructure Alerts: High Memory Usage >85% for 3 minutes",
    ),
    verify=VerifySpec(budget_seconds=180, interval_seconds=15),  # measure again for up to the alert's own window ("for 3 minutes")
    approval_timeout_seconds=900,  # seed 000 contacts: High → team lead within 15 minutes
    mitigations=(
        "terminate_process",  # risky: only processes config/targets.yaml calls killable (as for CPU, seed 000 "Kill processes")
        "restart_service",  # risky: seed 000 "Restart Node.js: Clear memory leaks `pm2 restart all`"; 001 "restart application"; 002 "Immediate (restart): sudo systemctl restart auto-author"; 003 "docker-compose restart backend"
    ),
    left_to_humans=(
        "Check for memory leaks: valgrind / clinic.js / tracemalloc profiling, review recent code changes (seeds 000, 001, 002, 003)",
        "Optimize queries: reduce database connection pools (seed 000)",
        "Clear caches: `redis-cli FLUSHDB` if safe (seed 000): whether emptying the cache is safe is a judgement (a cold cache moves the load to the database)",
        "Scale memory: add more RAM or instances; raise NODE_OPTIONS --max-old-space-size (seeds 000, 001, 003)",
        "Is it a gradual increase, more traffic, a leak? (seed 002 investigation questions: sar -r, request rate, uptime vs memory)",
    ),
)

# Spellings whose figure is a process heap measured by Prometheus, not host memory (seed 003).
HEAP_ALERTNAMES = frozenset({"HighMemoryUsage"})


class Limits(Thresholds):
    # seed 002 quotes a reading ("High memory usage: 92%"), not a threshold: memory_percent applies.
    memory_percent: float = seed(85, "seed 000 HIGH_MEMORY_USAGE: \"Memory usage >85% for 3 minutes\" (seed 004 the same)",
                                 ge=0)
    spellings: ClassVar[dict[str, dict[str, Any]]] = {
        "memory_usage": {"memory_percent": 90},     # seed 001 "`memory_usage` - Memory usage exceeds 90%"
        "HighMemoryUsage": {"memory_percent": 90},  # seed 003 "> 90% of heap memory": the heap itself is Prometheus's figure
    }


check_memory_usage = host_step("check-memory-usage", hosts.memory)
identify_memory_processes = host_step("identify-memory-processes", hosts.top_processes)
# ``swapon -s``: evidence only (seed 000's table: "Memory pressure: high swap usage")
check_swap_usage = host_step("check-swap-usage", hosts.swap)


@resumable(name="await-alert-resolution")
def await_alert_resolution(alertname: str) -> ProbeResult:
    """For a heap alert the responder has no figure of its own: only the alert resolving verifies."""
    return ProbeResult(
        probe="nodejs_heap", ok=False,
        summary=f"the heap ratio is Prometheus's figure; waiting for {alertname} to resolve",
    )


@resumable(name="plan-resolutions")
def plan_resolutions(alert: Alert, host: Host, memory: ProbeResult, top: ProbeResult,
                     heap_alert: bool) -> list[PlannedAction]:
    """Seed 000 "Resolutions" within what the configuration allows: killable processes, else a restart."""
    if memory.ok and not heap_alert:
        return []
    _, catalog, _ = runtime()
    plans: list[PlannedAction] = []
    if not memory.ok and host.local:  # a pid means something only on this machine
        procs = [p for p in top.evidence.get("processes", []) if p.get("create_time")]
        by_pid = {p["pid"]: p for p in procs}
        for plan in plan_process_terminations(
            procs, catalog.targets.processes.killable_cmdline, catalog.targets.processes.protected_names
        ):
            proc = by_pid[plan.params["pid"]]
            plan.why = (f"uses {proc['memory_percent']:.1f}% of memory ({memory.line()}) and matches a killable "
                        f"pattern: {(proc.get('cmdline') or '')[:120]}")
            plans.append(plan)
    selected = host_service(alert, host)
    if not plans and selected is not None and selected[1].restart:
        name, service = selected
        why = (f"{alert.alertname}: the heap of {name} is above its limit (seed 003 'restart service')" if heap_alert
               else f"{memory.line()}; no killable process to terminate")
        plans.append(
            PlannedAction(
                action="restart_service", target=name,
                params={"service": name, "argv": service.restart}, why=why,
            )
        )
    return plans


def assess(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 000's steps, in order, on the machine that alerted; seed 002's detailed health; seed 003's heap."""
    limits = runbook.limits(Limits, alert.alertname)
    heap_alert = alert.alertname in HEAP_ALERTNAMES
    host = locate_host(alert)
    if host.how == "unmeasured" and not heap_alert:
        return cannot_measure(host.result())
    memory = check_memory_usage(host, limits.memory_percent)
    top = identify_memory_processes(host, by="memory")
    swap = check_swap_usage(host)
    evidence = [host.result(), memory, swap, top]
    app_health = checks.application_health(alert)  # seed 002 "/health/detailed ... memory_percent"
    if app_health is not None:
        evidence.append(app_health)
    if heap_alert:
        evidence.append(await_alert_resolution(alert.alertname))
    return Assessment(
        evidence=evidence, plans=plan_resolutions(alert, host, memory, top, heap_alert),
        verify=(lambda: await_alert_resolution(alert.alertname)) if heap_alert else (lambda: check_memory_usage(host, limits.memory_percent)),
    )


high_memory_usage = runbook_flow(SPEC, assess, Limits,
                                 "Respond to high memory the way seeds 000-004 say to.")
