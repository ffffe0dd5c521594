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

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.lifecycle import runtime
from core.alerts import Alert
from tasks.probes import hosts, node


def prometheus_url() -> str:
    return runtime()[1].targets.monitoring.prometheus_url or ""


def locate(instance: str) -> hosts.Host:
    """The machine an instance label names, and how its figures are read (``config/targets.yaml`` hosts)."""
    return hosts.locate(instance, runtime()[1].targets.hosts, prometheus_url())


@task(name="locate-host", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def locate_host(alert: Alert) -> hosts.Host:
    """The machine the alert is about, and how its figures are read."""
    return locate(alert.instance)


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
