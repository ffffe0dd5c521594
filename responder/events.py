"""The outbox's records as Prefect events: the one place that knows Prefect's event shape.

Deployment triggers match ``responder.alert.firing`` with ``responder.alertname`` in its resource and
pass ``event.payload.alert`` and ``event.payload.incident`` to the runbook's flow (``deployments/``).
A record keeps its id, so delivering it twice is the same event.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from core.store.outbox import ALERTS_LISTED


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


# -- one delivery pass ----------------------------------------------------------------------------

UNROUTED_PER_PASS = 5  # alerts.unrouted records a delivery pass sends as events of their own
ROLLUP_GROUPS_LISTED = 10  # the groups a roll-up names as related resources (all are counted)
_ROLLUP_IDS = uuid.UUID("5f0c8a3e-6d1b-4c52-9a7e-2b4d1f9e8c10")  # namespace of roll-up event ids


def prefect_events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One delivery pass's outbox records as Prefect events: each record an event of its own, except
    alerts no runbook routes past the pass's first :data:`UNROUTED_PER_PASS`: those are rolled into
    one ``responder.alerts.unrouted`` event that counts them.

    A pass holds more only when alerts arrive faster than they are delivered, and every event costs
    the Prefect server about 0.5 ms of CPU (it validates, persists and matches each against the
    triggers): at 1,800 unrouted single-alert posts a second its event persister fell 10,000 behind
    and Prefect's in-memory messaging dropped events. Alerts that start or join responses are never
    rolled up; every unrouted alert stays in the store."""
    unrouted = [r for r in records if r.get("kind") == "alerts.unrouted" and "prefect_event" not in r]
    if len(unrouted) <= UNROUTED_PER_PASS:
        return [prefect_event(record) for record in records]
    rolled = unrouted[UNROUTED_PER_PASS:]
    rolled_ids = {record["id"] for record in rolled}
    return [prefect_event(record) for record in records if record["id"] not in rolled_ids] + [_unrouted_rollup(rolled)]


def _unrouted_rollup(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The roll-up of a pass's unrouted records. Its id is derived from theirs, so a pass delivered
    again after a failure sends the same event."""
    event_id = str(uuid.uuid5(_ROLLUP_IDS, ",".join(record["id"] for record in records)))
    groups: dict[str, dict[str, Any]] = {}
    for record in records:
        resource = _group_resource(record)
        group = groups.setdefault(resource["prefect.resource.id"], {"resource": resource, "key": record["group"]["key"],
                                                                     "count": 0, "alertnames": set()})
        group["count"] += record["count"]
        group["alertnames"].update(record.get("alertnames") or [])
    count = sum(record["count"] for record in records)
    alerts = [alert for record in records for alert in record["alerts"]][:ALERTS_LISTED]
    return {
        "id": event_id,
        "occurred": records[-1]["occurred"],
        "event": "responder.alerts.unrouted",
        "resource": {"prefect.resource.id": f"responder.alert-groups.{event_id}",
                     "prefect.resource.name": f"{count} alerts of {len(groups)} groups no runbook routes"},
        "related": [{**group["resource"], "prefect.resource.role": "alert-group"}
                    for group in list(groups.values())[:ROLLUP_GROUPS_LISTED]],
        "payload": {
            "rolled_up": len(records),
            "count": count,
            "groups": [{"group_key": group["key"], "count": group["count"], "alertnames": sorted(group["alertnames"])}
                       for group in list(groups.values())[:ALERTS_LISTED]],
            "alerts": alerts,
            "incident": None,
        },
    }
