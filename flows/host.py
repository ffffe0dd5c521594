"""Steps the host runbooks (CPU, memory, disk) share: which machine alerted, and what may act on it.

``locate-host`` is each host runbook's first step after acknowledging: it decides whether the
alert's ``instance`` is this machine (psutil), another machine Prometheus scrapes with
node_exporter (PromQL), or one that cannot be measured (the runbook reports that and
escalates). See :mod:`tasks.probes.hosts`.

Actions follow the same rule. A process is terminated only on this machine. A service's
commands (``restart``, ``rollback``, ``scale``) run only for an alert of the machine the
service entry names in ``host`` (unset: this machine), so ``ssh web-3 systemctl restart app`` is
configuration, and nothing from a label becomes a host name in an argv::

    services:
      app-web-3:
        host: web-3
        match: {service: app, instance: "web-3:9100"}
        restart: [ssh, web-3, systemctl, restart, app]
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from prefect import Task
from core.results import resumable

from flows.lifecycle import runtime, step
from core.alerts import Alert
from tasks.base import ProbeResult
from tasks.probes import hosts, node


def prometheus_url() -> str:
    return runtime()[1].targets.monitoring.prometheus_url or ""


def locate(instance: str) -> hosts.Host:
    """The machine an instance label names, and how its figures are read (``config/targets.yaml`` hosts)."""
    return hosts.locate(instance, runtime()[1].targets.hosts, prometheus_url())


@resumable(name="locate-host", retries=1, retry_delay_seconds=1)
def locate_host(alert: Alert) -> hosts.Host:
    """The machine the alert is about, and how its figures are read."""
    return locate(alert.instance)


def host_step(name: str, measure: Callable[..., ProbeResult], retries: int = 2) -> Task[..., ProbeResult]:
    """A host runbook's step: a :mod:`tasks.probes.hosts` measure ``(host, prometheus_url, ...)`` as a
    task with the measure's own parameters but the Prometheus URL, which comes from the configuration::

        check_cpu_usage = host_step("check-cpu-usage", hosts.cpu_percent)
        check_cpu_usage(host, 80)
    """
    def measured(host: hosts.Host, *args: Any, **kwargs: Any) -> ProbeResult:
        return measure(host, prometheus_url(), *args, **kwargs)

    signature = inspect.signature(measure)
    measured.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "prometheus_url"])
    measured.__name__ = measured.__qualname__ = measure.__name__
    measured.__doc__ = measure.__doc__
    return step(name, measured, retries=retries)


def host_service(alert: Alert, host: hosts.Host) -> tuple[str, Any] | None:
    """The configured service the alert's labels select, if its commands act on the alerting machine."""
    selected = runtime()[1].targets.select("services", alert.labels)
    if selected is None:
        return None
    configured = selected[1].host
    if configured is None:
        return selected if host.local else None
    wanted = (node.host_part(host.instance) or "").lower()
    return selected if (configured.lower() == wanted or (host.local and configured.lower() in hosts.local_names())) else None
