"""Alertmanager v4 webhook bodies for tests: made up here, or the project's shared samples."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from .common import ROOT

# Alertmanager v4 bodies, copied from the project's shared samples (see their README.md).
FIXTURES = ROOT / "tests" / "fixtures" / "alertmanager"


def alert_body(alertname: str, test_id: str, **labels: str) -> dict:
    """An Alertmanager v4 webhook body with one firing alert."""
    all_labels = {"alertname": alertname, "severity": "warning", "job": "shop", "test_id": test_id, **labels}
    fingerprint = uuid.uuid4().hex[:16]
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{alertname}", test_id="{test_id}-{fingerprint}"}}',
        "truncatedAlerts": 0, "status": "firing", "receiver": "responder",
        "groupLabels": {"alertname": alertname}, "commonLabels": all_labels, "commonAnnotations": {"summary": alertname},
        "externalURL": "http://alertmanager.test:9093",
        "alerts": [{"status": "firing", "labels": all_labels, "annotations": {"summary": f"{alertname} (test)"},
                    "startsAt": datetime.now(timezone.utc).isoformat(), "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "", "fingerprint": fingerprint}],
    }


def load_fixture(name: str, **changes: Any) -> dict[str, Any]:
    body = json.loads((FIXTURES / name).read_text())
    group_key = changes.pop("groupKey", None)
    if group_key:
        body["groupKey"] = group_key
    suffix = changes.pop("unique", None)
    if suffix:
        body["groupKey"] = f"{body['groupKey']}-{suffix}"
        for alert in body["alerts"]:
            alert["fingerprint"] = f"{alert['fingerprint']}{suffix}"
    body.update(changes)
    return body
