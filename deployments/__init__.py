"""Every runbook in the catalog as a Prefect deployment with its event trigger.

A runbook deployment starts when the intake's ``responder.alert.firing`` event
opens an incident for one of the runbook's alert names::

    DeploymentEventTrigger(
        expect={"responder.alert.firing"},
        match={"responder.alertname": ["HIGH_CPU_USAGE", "HighCPUUsage", ...],
               "responder.opens": "true"},
        parameters={"alert": "{{ event.payload.alert }}",
                    "incident": "{{ event.payload.incident }}"},
    )

Alerts that join an already-open incident carry ``responder.opens = "false"`` and
start nothing. The deployments have no work pool: ``responder up`` executes their
runs in-process (see ``responder/executor.py``).
"""

from __future__ import annotations

from typing import Any

from prefect.events import DeploymentEventTrigger

from core.catalog import Catalog, Runbook

FIRING_EVENT = "responder.alert.firing"


def trigger_for(runbook: Runbook) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name=f"{runbook.name}: {', '.join(runbook.alertnames[:3])} firing",
        description=f"Start the {runbook.title} runbook when an incident opens for {', '.join(runbook.alertnames)}.",
        expect={FIRING_EVENT},
        match={"responder.alertname": list(runbook.alertnames), "responder.opens": "true"},
        parameters={"alert": "{{ event.payload.alert }}", "incident": "{{ event.payload.incident }}"},
    )


async def build_deployments(catalog: Catalog, flows: dict[str, Any]) -> list[Any]:
    """One RunnerDeployment per runbook, with its trigger and any cron schedules."""
    deployments = []
    for runbook in catalog.runbooks:
        flow = flows[runbook.name]
        deployments.append(
            await flow.ato_deployment(
                name=runbook.deployment_name,
                description=f"{runbook.title}. Seeds: " + "; ".join(runbook.seeds),
                tags=["runbook", f"severity:{runbook.severity}"],
                triggers=[trigger_for(runbook)] if runbook.alertnames else [],
                cron=runbook.schedules or None,
            )
        )
    return deployments
