"""The outbox's records as Prefect events: the one place that knows Prefect's event shape.

Deployment triggers match ``responder.alert.firing`` with ``responder.alertname`` in its resource and
pass ``event.payload.alert`` and ``event.payload.incident`` to the runbook's flow (``deployments/``).
A record keeps its id, so delivering it twice is the same event.
"""

from __future__ import annotations

import hashlib
from typing import Any


def _incident_resource(incident: dict[str, Any]) -> dict[str, str]:
    return {
        "prefect.resource.id": f"responder.incident.{incident['id']}",
        "prefect.resource.name": f"{incident['runbook']}: {incident['title']}"[:200],
        "responder.runbook": incident["runbook"],
        "responder.severity": incident["severity"],
    }


def _incident_ref(incident: dict[str, Any]) -> dict[str, str]:
    """The flow parameter ``incident`` (``core.alerts.IncidentRef``)."""
    return {key: incident[key] for key in ("id", "runbook", "group_key", "severity")}


def _group_payload(group: dict[str, Any]) -> dict[str, Any]:
    return {"group_key": group["key"], "group_labels": group["labels"], "external_url": group["external_url"],
            "truncated_alerts": group["truncated_alerts"]}


def _alert_related(alert: dict[str, Any]) -> dict[str, str]:
    return {"prefect.resource.id": f"responder.alert.{alert['fingerprint']}", "prefect.resource.role": "alert",
            "prefect.resource.name": alert["labels"].get("alertname", "")}


def _group_resource(record: dict[str, Any]) -> dict[str, str]:
    """Alerts of no incident (unrouted): the Alertmanager group they came in, named by its alert names.
    A group key is Alertmanager's label-set text (quotes, braces), so the resource id carries its hash."""
    names = record.get("alertnames") or sorted({alert["labels"].get("alertname", "") for alert in record["alerts"]})
    digest = hashlib.sha256(record["group"]["key"].encode()).hexdigest()[:16]
    resource = {"prefect.resource.id": f"responder.alert-group.{digest}", "prefect.resource.name": ", ".join(names)[:200]}
    if len(names) == 1:
        resource["responder.alertname"] = names[0]
    return resource


def prefect_event(record: dict[str, Any]) -> dict[str, Any]:
    if "prefect_event" in record:  # written before the outbox kept records (store migration 2): as it was
        return record["prefect_event"]
    incident = record.get("incident")
    if "alerts" in record:  # alerts.*: the alerts of one body that joined or resolved an incident, or no runbook routes
        return {
            "id": record["id"],
            "occurred": record["occurred"],
            "event": f"responder.{record['kind']}",
            "resource": _incident_resource(incident) if incident else _group_resource(record),
            "related": [_alert_related(alert) for alert in record["alerts"]],
            "payload": {"alerts": record["alerts"], "count": record["count"],
                        "incident": _incident_ref(incident) if incident else None, **_group_payload(record["group"])},
        }
    if "alert" in record:
        alert = record["alert"]
        fingerprint, alertname = alert["fingerprint"], alert["labels"].get("alertname", "")
        resource = _incident_resource(incident) if incident else {
            "prefect.resource.id": f"responder.alert.{fingerprint}",
            "prefect.resource.name": alertname,
        }
        resource["responder.alertname"] = alertname
        resource["responder.opens"] = "true" if record.get("opens") else "false"
        group = record["group"]
        return {
            "id": record["id"],
            "occurred": record["occurred"],
            "event": f"responder.{record['kind']}",
            "resource": resource,
            "related": [_alert_related(alert)],
            "payload": {"alert": alert, "incident": _incident_ref(incident) if incident else None, **_group_payload(group)},
        }
    return {
        "id": record["id"],
        "occurred": record["occurred"],
        "event": f"responder.{record['kind']}",
        "resource": _incident_resource(incident),
        "related": [],
        "payload": {
            "incident": _incident_ref(incident),
            "status": incident["status"],
            "close_reason": incident["close_reason"],
            "flow_run_id": incident["flow_run_id"],
            **(record.get("details") or {}),
        },
    }
