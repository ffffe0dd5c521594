"""The machine an alert is about, and its figures measured the right way.

A responder usually runs once, next to Prometheus, not on every host. So the host runbooks
(CPU, memory, disk) first :func:`locate` the alert's ``instance``:

* **local**: its host part (port ignored) is one of this machine's host names or addresses, or is
  listed in ``hosts.local``: measured with psutil (:mod:`tasks.probes.system`);
* **prometheus**: Prometheus has fresh node_exporter series for that host: measured with PromQL
  (:mod:`tasks.probes.node`);
* **unmeasured**: neither (no instance label, a host Prometheus does not know, samples too old,
  Prometheus not configured or not answering): every step says "not measured" and the runbook
  escalates. It never falls back to measuring the responder's own machine.

Every result names the host it measured and how (``evidence["host"]``,
``evidence["measured_by"]``, and the summary starts with the instance).

Wiring (``config/targets.yaml``)::

    hosts:
      local: [app-1]            # more names for this machine (its own names and addresses count anyway)
      stale_after_seconds: 60   # an older sample is "not measured"
      rate_window: 1m           # CPU busy share over this window
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Literal

import httpx
import psutil
from pydantic import BaseModel, ConfigDict, Field

from tasks.base import ProbeResult, ResponderError
from tasks.probes import node, system


class HostTargets(BaseModel):
    """``hosts`` in ``config/targets.yaml``: which instances are this machine, how others are read."""

    model_config = ConfigDict(extra="forbid")

    local: list[str] = Field(default_factory=list, description="more names or addresses that mean this machine")
    detect_local: bool = Field(default=True, description="this machine's own host names and addresses are local")
    stale_after_seconds: float = Field(default=60, gt=0, description="a sample older than this is not measured")
    rate_window: str = Field(default="1m", pattern=r"^[0-9]+(s|m)$", description="window of the CPU busy share")


class Host(BaseModel):
    """Where an alert's figures come from; handed to every host step of a runbook."""

    instance: str
    how: Literal["local", "prometheus", "unmeasured"]
    node_instance: str | None = None
    machine: str = ""
    detail: str = ""
    stale_after_seconds: float = 60
    rate_window: str = "1m"

    @property
    def label(self) -> str:
        return self.instance or "(no instance label)"

    @property
    def local(self) -> bool:
        return self.how == "local"

    @property
    def measured_by(self) -> str:
        if self.how == "local":
            return f"psutil on this machine ({self.machine})"
        if self.how == "prometheus":
            return f"Prometheus, node_exporter {self.node_instance}"
        return "nothing: " + self.detail

    def result(self) -> ProbeResult:
        """The first line of an assessment: which machine, and how it is measured."""
        summary = (f"{self.label}: measured with {self.measured_by}" if self.how != "unmeasured"
                   else f"{self.label}: cannot be measured: {self.detail}")
        return ProbeResult(probe="host", ok=self.how != "unmeasured", summary=summary,
                           evidence={"host": self.instance, "how": self.how, "measured_by": self.measured_by,
                                     "node_instance": self.node_instance, "detail": self.detail,
                                     **({"unmeasured": True} if self.how == "unmeasured" else {})})


def local_names() -> set[str]:
    """This machine's host names and interface addresses, lower case."""
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    names |= {name.split(".", 1)[0] for name in list(names)}
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                names.add(address.address.split("%", 1)[0])
    return {name.lower() for name in names if name}


def locate(instance: str, config: HostTargets, prometheus_url: str | None) -> Host:
    """Decide how the alert's machine is measured (see the module docstring)."""
    base = dict(instance=instance, stale_after_seconds=config.stale_after_seconds, rate_window=config.rate_window)
    if not instance:
        return Host(**base, how="unmeasured", detail="the alert has no instance label, so it names no machine")
    host = node.host_part(instance)
    if host is None:
        return Host(**base, how="unmeasured", detail=f"{instance!r} is not a host name or address")
    local = {name.lower() for name in config.local} | (local_names() if config.detect_local else set())
    if host.lower() in local:
        return Host(**base, how="local", machine=socket.gethostname(), detail="this machine")
    if not prometheus_url:
        return Host(**base, how="unmeasured",
                    detail=f"{host} is not this machine and no Prometheus is configured (monitoring.prometheus_url)")
    try:
        found = node.find_instance(prometheus_url, instance, config.stale_after_seconds)
    except (httpx.HTTPError, ResponderError) as exc:  # Prometheus down is an answer here: not measured
        message = exc.message if isinstance(exc, ResponderError) else f"{type(exc).__name__}"
        return Host(**base, how="unmeasured", detail=f"{host} is not this machine and Prometheus did not answer ({message})")
    if found["status"] == "found":
        return Host(**base, how="prometheus", node_instance=found["instance"], detail=found["detail"])
    return Host(**base, how="unmeasured", node_instance=found.get("instance"),
                detail=f"{host} is not this machine and {found['detail']}")


def _stamp(host: Host, result: ProbeResult) -> ProbeResult:
    evidence = {**result.evidence, "host": host.instance, "measured_by": host.measured_by}
    return result.model_copy(update={"summary": f"{host.label}: {result.summary}", "evidence": evidence})


def _measure(host: Host, probe: str, local: Callable[[], ProbeResult], remote: Callable[[str], ProbeResult],
             threshold: float | None = None, unit: str = "") -> ProbeResult:
    if host.how == "local":
        return _stamp(host, local())
    if host.how == "prometheus" and host.node_instance:
        return _stamp(host, remote(host.node_instance))
    return _stamp(host, node.not_measured(probe, host.instance, host.detail, threshold, unit))


def cpu_percent(host: Host, prometheus_url: str, threshold: float = 80.0) -> ProbeResult:
    return _measure(host, "cpu_percent", lambda: system.cpu_percent(threshold, interval=1.0),
                    lambda inst: node.cpu_percent(prometheus_url, inst, threshold, host.rate_window), threshold, "%")


def load_average(host: Host, prometheus_url: str, threshold_per_core: float = 1.0) -> ProbeResult:
    return _measure(host, "load_average", lambda: system.load_average(threshold_per_core),
                    lambda inst: node.load_average(prometheus_url, inst, threshold_per_core, host.stale_after_seconds),
                    threshold_per_core, " per core")


def memory(host: Host, prometheus_url: str, threshold: float = 85.0) -> ProbeResult:
    return _measure(host, "memory", lambda: system.memory(threshold),
                    lambda inst: node.memory(prometheus_url, inst, threshold, host.stale_after_seconds), threshold, "%")


def swap(host: Host, prometheus_url: str) -> ProbeResult:
    return _measure(host, "swap", system.swap, lambda inst: node.swap(prometheus_url, inst, host.stale_after_seconds))


def disk_usage(host: Host, prometheus_url: str, local_paths: Sequence[str], threshold: float = 90.0) -> ProbeResult:
    """``local_paths`` (``paths.disk``) on this machine; every writable disk of another machine."""
    return _measure(host, "disk_usage", lambda: system.disk_usage(local_paths, threshold=threshold),
                    lambda inst: node.disk_usage(prometheus_url, inst, threshold, host.stale_after_seconds),
                    threshold, "%")


def _needs_own_view(host: Host, probe: str, what: str) -> ProbeResult:
    """Evidence another machine cannot give through Prometheus: said plainly, never measured here instead."""
    return _stamp(host, ProbeResult(probe=probe, ok=True, summary=f"not measured: {what} of another machine need "
                                    "the host's own view (a person on the host, or an exporter that reports them)",
                                    evidence={"unmeasured": True}))


def top_processes(host: Host, prometheus_url: str, by: Literal["cpu", "memory"], n: int = 10) -> ProbeResult:
    """``ps aux --sort``: psutil here; process-exporter groups of another machine when Prometheus has them."""
    if host.how == "local":
        return _stamp(host, system.top_processes(by=by, n=n))
    if host.how == "prometheus":
        groups = node.process_groups(prometheus_url, host.instance, by=by, n=n, rate_window=host.rate_window)
        if groups is not None:
            return _stamp(host, groups)
    return _needs_own_view(host, f"top_processes_{by}", "per-process figures (no process-exporter series)")


def largest_entries(host: Host, paths: Sequence[str]) -> ProbeResult:
    """``du -sh /* | sort -hr``: only on this machine."""
    if host.how == "local":
        return _stamp(host, system.largest_entries(paths, n=10, max_entries=100_000))
    return _needs_own_view(host, "largest_entries", "directory sizes")


def dir_sizes(host: Host, paths: Sequence[str], probe: str) -> ProbeResult:
    """Sizes of configured directories (logs, temp): they are this machine's directories."""
    if host.how == "local":
        return _stamp(host, system.log_dir_sizes(paths).model_copy(update={"probe": probe}))
    return _needs_own_view(host, probe, "directory sizes")
