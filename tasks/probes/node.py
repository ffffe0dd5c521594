"""Another machine's CPU, load, memory, swap, disks and processes from node_exporter's series in Prometheus.

The host runbooks use these for an alert whose ``instance`` is not the responder's own machine
(:mod:`tasks.probes.hosts` decides which). Every figure is as recent as a verification interval
can see: CPU is ``rate(node_cpu_seconds_total[1m])`` (not a 5-minute average, so a fix shows
within a minute), and every gauge is the newest raw sample no older than ``stale_after_s``. A
series that is missing or older than that is *not measured* (``ok=False`` with
``evidence["unmeasured"]``), never healthy.

Queries name one node_exporter ``instance`` exactly (escaped as a PromQL string, see
:func:`~tasks.probes.prometheus.matchers`); :func:`find_instance` maps an alert's instance to it
by its host part, so ``web-3:9100`` and ``web-3:3000`` both find ``web-3:9100``. Per-process
figures come from process-exporter series (``namedprocess_namegroup_*``) of the same host when
Prometheus has them.

Wiring (``config/targets.yaml``)::

    monitoring:
      prometheus_url: http://prometheus:9090
    hosts:
      stale_after_seconds: 60
      rate_window: 1m
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tasks.base import ProbeResult
from tasks.probes import human_bytes, prometheus

# File systems that are not disks (node_exporter's own default exclusions, plus overlay).
PSEUDO_FS = ("autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|fuse\\\\..*|hugetlbfs|iso9660"
             "|mqueue|nsfs|overlay|proc|procfs|pstore|ramfs|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs"
             "|tmpfs|tracefs|nfsd|erofs")
HOST_PART = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+|[0-9A-Fa-f:]+::?[0-9A-Fa-f:]*))(?::\d+)?$")


def host_part(instance: str) -> str | None:
    """``web-3:9100`` → ``web-3``; ``[::1]:9100`` → ``::1``; None when it is not a host name or address."""
    match = HOST_PART.match(instance.strip())
    if not match:
        return None
    return match.group("v6") or match.group("name")


def _regex_for_host(host: str) -> str:
    """An RE2 pattern for ``host`` with any port (the host is already checked by :data:`HOST_PART`)."""
    escaped = re.escape(host)
    return f"(?:{escaped}|\\[{escaped}\\])(?::[0-9]+)?"


def find_instance(url: str, instance: str, stale_after_s: float) -> dict[str, Any]:
    """The node_exporter instance of the alert's machine, and whether its samples are fresh.

    Returns ``{"status": "found" | "stale" | "unknown", "instance": …, "age_s": …, "detail": …}``.
    An exact match of the alert's instance wins over another port of the same host.
    """
    host = host_part(instance)
    if host is None:
        return {"status": "unknown", "instance": None, "detail": f"{instance!r} is not a host name or address"}
    match = f'instance=~"{_escape(_regex_for_host(host))}"'
    rows = prometheus.vector(url, f'time() - max by (instance) (timestamp(node_cpu_seconds_total{{{match},mode="idle"}}))')
    if rows:
        ages = {labels["instance"]: age for labels, age in rows}
        chosen = instance if instance in ages else min(ages, key=ages.get)
        age = round(ages[chosen], 1)
        if age > stale_after_s:
            return {"status": "stale", "instance": chosen, "age_s": age,
                    "detail": f"node_exporter series of {chosen} are {age:g} s old (limit {stale_after_s:g} s)"}
        return {"status": "found", "instance": chosen, "age_s": age, "detail": f"node_exporter {chosen}"}
    scraped = prometheus.vector(url, f"max by (instance, job) (last_over_time(up{{{match}}}[1h]))")
    if scraped:
        targets = ", ".join(f"{labels.get('job')}/{labels.get('instance')} up={value:g}" for labels, value in scraped)
        return {"status": "stale", "instance": None,
                "detail": f"Prometheus scrapes {targets} but has no current node_exporter series for {host}"}
    return {"status": "unknown", "instance": None, "detail": f"Prometheus has no series for {host}"}


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _exact(instance: str, extra: str = "") -> str:
    return prometheus.matchers({"instance": instance}, extra)


def not_measured(probe: str, host: str, why: str, threshold: float | None = None, unit: str = "") -> ProbeResult:
    return ProbeResult(probe=probe, ok=False, threshold=threshold, unit=unit, summary=f"not measured: {why}",
                       evidence={"unmeasured": True, "host": host, "error": why})


def cpu_percent(url: str, instance: str, threshold: float = 80.0, rate_window: str = "1m") -> ProbeResult:
    """CPU busy share over ``rate_window``: 100 × (1 − (idle + iowait) / all modes), as psutil counts it."""
    promql = f"sum by (mode) (rate(node_cpu_seconds_total{{{_exact(instance)}}}[{rate_window}]))"
    modes = {labels.get("mode", ""): value for labels, value in prometheus.vector(url, promql)}
    total = sum(modes.values())
    if total <= 0:
        return not_measured("cpu_percent", instance, f"no node_cpu_seconds_total samples in the last {rate_window}",
                            threshold, "%")
    value = round(100 * (1 - (modes.get("idle", 0) + modes.get("iowait", 0)) / total), 1)
    # counted, not derived from the rates (their sum is only about the number of cores)
    idle = _exact(instance, 'mode="idle"')
    counted = prometheus.vector(url, f"count(node_cpu_seconds_total{{{idle}}})")
    cores = int(counted[0][1]) if counted else round(total)
    share = {mode: round(100 * v / total, 1) for mode, v in sorted(modes.items(), key=lambda kv: -kv[1])}
    return ProbeResult(
        probe="cpu_percent", ok=value <= threshold, value=value, threshold=threshold, unit="%",
        summary=f"CPU {value:g}% busy over {rate_window} on {cores} cores",
        evidence={"cores": cores, "modes_percent": share, "window": rate_window, "query": promql},
    )


def load_average(url: str, instance: str, threshold_per_core: float = 1.0, stale_after_s: float = 60) -> ProbeResult:
    """``node_load5`` per core (cores counted from ``node_cpu_seconds_total``), 1 and 15 minutes as evidence."""
    selector = f'{{__name__=~"node_load1|node_load5|node_load15|node_cpu_seconds_total",mode=~"idle|",{_exact(instance)}}}'
    rows = prometheus.latest(url, selector, stale_after_s)
    loads = {labels["__name__"]: value for labels, value, _ in rows if labels["__name__"].startswith("node_load")}
    cores = sum(1 for labels, _, _ in rows if labels["__name__"] == "node_cpu_seconds_total")
    if "node_load5" not in loads or not cores:
        return not_measured("load_average", instance, f"no node_load5 sample newer than {stale_after_s:g} s",
                            threshold_per_core, " per core")
    value = round(loads["node_load5"] / cores, 2)
    load1, load5, load15 = (loads.get(f"node_load{n}", float("nan")) for n in (1, 5, 15))
    return ProbeResult(
        probe="load_average", ok=value <= threshold_per_core, value=value, threshold=threshold_per_core,
        unit=" per core", summary=f"load {load1:.2f} {load5:.2f} {load15:.2f} on {cores} cores",
        evidence={"load1": load1, "load5": load5, "load15": load15, "cores": cores, "query": selector},
    )


_MEMORY = ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree")


def _memory_figures(url: str, instance: str, stale_after_s: float) -> tuple[dict[str, float], str]:
    selector = f'{{__name__=~"node_memory_({"|".join(_MEMORY)})_bytes",{_exact(instance)}}}'
    rows = prometheus.latest(url, selector, stale_after_s)
    return {labels["__name__"][len("node_memory_"):-len("_bytes")]: value for labels, value, _ in rows}, selector


def memory(url: str, instance: str, threshold: float = 85.0, stale_after_s: float = 60) -> ProbeResult:
    """Memory in use: 100 × (1 − MemAvailable / MemTotal), with swap in the evidence."""
    figures, selector = _memory_figures(url, instance, stale_after_s)
    if not figures.get("MemTotal") or "MemAvailable" not in figures:
        return not_measured("memory", instance, f"no node_memory_MemAvailable_bytes sample newer than {stale_after_s:g} s",
                            threshold, "%")
    total, available = figures["MemTotal"], figures["MemAvailable"]
    value = round(100 * (1 - available / total), 1)
    swap_total, swap_free = figures.get("SwapTotal", 0.0), figures.get("SwapFree", 0.0)
    swap_percent = round(100 * (1 - swap_free / swap_total), 1) if swap_total else 0.0
    return ProbeResult(
        probe="memory", ok=value <= threshold, value=value, threshold=threshold, unit="%",
        summary=f"{available / 2**30:.1f} GiB available of {total / 2**30:.1f} GiB; swap {swap_percent:g}% used",
        evidence={"total_bytes": total, "available_bytes": available, "used_bytes": total - available, "percent": value,
                  "swap_total_bytes": swap_total, "swap_used_bytes": swap_total - swap_free,
                  "swap_percent": swap_percent, "query": selector},
    )


def swap(url: str, instance: str, stale_after_s: float = 60) -> ProbeResult:
    """Swap in use (evidence only, like ``swapon -s``)."""
    figures, selector = _memory_figures(url, instance, stale_after_s)
    if "SwapTotal" not in figures:
        return not_measured("swap", instance, f"no node_memory_SwapTotal_bytes sample newer than {stale_after_s:g} s")
    total, free = figures["SwapTotal"], figures.get("SwapFree", figures["SwapTotal"])
    percent = round(100 * (1 - free / total), 1) if total else 0.0
    summary = f"{human_bytes(total - free)} of {human_bytes(total)} swap used" if total else "no swap configured"
    return ProbeResult(probe="swap", ok=True, value=percent, unit="%", summary=summary,
                       evidence={"total_bytes": total, "used_bytes": total - free, "query": selector})


def disk_usage(url: str, instance: str, threshold: float = 90.0, stale_after_s: float = 60,
               mountpoints: Sequence[str] | None = None) -> ProbeResult:
    """Each writable disk file system like ``df``: used / (used + available), reserved blocks excluded.

    Pseudo file systems (tmpfs, overlay, proc, …) and read-only mounts are ignored. With
    ``mountpoints``, only those are reported.
    """
    selector = (f'{{__name__=~"node_filesystem_(size|avail|free)_bytes|node_filesystem_readonly",'
                f'fstype!~"{PSEUDO_FS}",{_exact(instance)}}}')
    mounts: dict[tuple[str, str, str], dict[str, float]] = {}
    for labels, value, _ in prometheus.latest(url, selector, stale_after_s):
        key = (labels.get("mountpoint", ""), labels.get("device", ""), labels.get("fstype", ""))
        mounts.setdefault(key, {})[labels["__name__"].removeprefix("node_filesystem_").removesuffix("_bytes")] = value
    rows = []
    for (path, device, fstype), f in sorted(mounts.items()):
        if f.get("readonly") == 1 or not f.get("size") or "avail" not in f or "free" not in f:
            continue
        if mountpoints and path not in mountpoints:
            continue
        used = f["size"] - f["free"]
        percent = round(100 * used / (used + f["avail"]), 1) if used + f["avail"] else 0.0
        rows.append({"path": path, "device": device, "fstype": fstype, "total_bytes": f["size"], "used_bytes": used,
                     "free_bytes": f["avail"], "percent": percent})
    if not rows:
        return not_measured("disk_usage", instance, f"no writable file system with samples newer than {stale_after_s:g} s",
                            threshold, "%")
    worst = max(rows, key=lambda m: m["percent"])
    over = [m["path"] for m in rows if m["percent"] > threshold]
    return ProbeResult(
        probe="disk_usage", ok=not over, value=worst["percent"], threshold=threshold, unit="%",
        summary=(f"over threshold: {', '.join(over)}" if over else f"fullest: {worst['path']}"),
        evidence={"mounts": rows, "query": selector},
    )


def process_groups(url: str, instance: str, by: str = "cpu", n: int = 10, rate_window: str = "1m") -> ProbeResult | None:
    """process-exporter's groups on the same host, by CPU (% of one core) or resident memory; None without them."""
    host = host_part(instance) or instance
    match = f'instance=~"{_escape(_regex_for_host(host))}"'
    cpu_q = f"sum by (groupname) (rate(namedprocess_namegroup_cpu_seconds_total{{{match}}}[{rate_window}])) * 100"
    mem_q = f'sum by (groupname) (namedprocess_namegroup_memory_bytes{{{match},memtype="resident"}})'
    procs_q = f"sum by (groupname) (namedprocess_namegroup_num_procs{{{match}}})"
    cpu = {labels.get("groupname", "?"): value for labels, value in prometheus.vector(url, cpu_q)}
    mem = {labels.get("groupname", "?"): value for labels, value in prometheus.vector(url, mem_q)}
    if not cpu and not mem:
        return None
    count = {labels.get("groupname", "?"): value for labels, value in prometheus.vector(url, procs_q)}
    groups = [{"group": name, "cpu_percent": round(cpu.get(name, 0.0), 1), "memory_bytes": mem.get(name, 0.0),
               "processes": int(count.get(name, 0))} for name in set(cpu) | set(mem)]
    key = "cpu_percent" if by == "cpu" else "memory_bytes"
    groups.sort(key=lambda g: -g[key])
    head = groups[0]
    return ProbeResult(
        probe=f"top_processes_{by}", ok=True, value=head[key] if by == "cpu" else round(head[key] / 2**20, 1),
        unit="%" if by == "cpu" else " MiB",
        summary=f"top by {by}: process group {head['group']} ({head['processes']} processes)",
        evidence={"by": by, "process_groups": groups[:n], "query": cpu_q if by == "cpu" else mem_q},
    )
