"""MongoDB connection lost (seed 002) through the real responder and Prefect server.

No MongoDB server can run on these machines, so only the paths of a server that is gone are
tested, and they are tested for real: the ``orders`` target points at a free port where nothing
listens, the real pymongo ping fails, the evidence says the connection is lost, the configured
restart of the ``mongodb`` service (here a command that leaves a marker file) runs only after
approval, verification fails because nothing came back, and the incident escalates. An alert
whose labels select no MongoDB target says so and escalates.

What stays untested: every path where MongoDB answers (``db.serverStatus().connections``, the
"connection pool exhausted" restart of the application, the "stays up for 30 s" verification
succeeding), because they need a live ``mongod``.
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timezone

import pytest

from support.common import HTTP, free_port, wait_for
from support.prefect import report, runs_for_incident, wait_run_final
from support.responder import fire, make_config, running_responder


@pytest.fixture(scope="module")
def marker(tmp_path_factory):
    return tmp_path_factory.mktemp("mongodb-marker") / "mongodb.restarted"


@pytest.fixture(scope="module")
def responder(prefect_server, tmp_path_factory, marker):
    tmp = tmp_path_factory.mktemp("runbook-mongodb")
    restart = [sys.executable, "-c", "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()", str(marker)]
    config = make_config(
        tmp,
        runbook_overrides={"mongodb-connection-lost": {"verify": {"budget_seconds": 2, "interval_seconds": 1},
                                                       "approval_timeout_seconds": 40}},
        # no "default": an alert whose labels select no entry must say so
        targets={"mongodb": {"orders": {"url": f"mongodb://127.0.0.1:{free_port()}/orders"}},
                 "services": {"mongodb": {"restart": restart}}},
    )
    with running_responder(tmp, prefect_server.api_url, config) as proc:
        yield proc


def alert_body(alertname: str, labels: dict) -> dict:
    fingerprint = uuid.uuid4().hex[:16]
    labels = {"alertname": alertname, "severity": "warning", "instance": "mongodb-exporter:9216", **labels}
    annotations = {"summary": "MongoDB connection lost"}
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{alertname}", test="{fingerprint}"}}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "responder", "groupLabels": {"alertname": alertname},
        "commonLabels": labels, "commonAnnotations": annotations, "externalURL": "http://alertmanager.test",
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations,
                    "startsAt": datetime.now(timezone.utc).isoformat(), "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "", "fingerprint": fingerprint}],
    }


def test_lost_connection_is_evidence_restart_waits_for_approval_and_escalates(responder, prefect_server, marker):
    api = prefect_server.api_url
    incident_id = fire(responder, alert_body("MongoDBConnectionLost", {"job": "orders"}))
    run = wait_for(lambda: (runs := runs_for_incident(api, incident_id)) and runs[0]["state"]["type"] == "PAUSED"
                   and runs[0], 60, what="the run to pause for approval")
    key = run["state"]["state_details"]["run_input_keyset"]["description"]
    description = wait_for(lambda: (r := HTTP.get(f"{api}/flow_runs/{run['id']}/input/{key}")).is_success and r.json(),
                           10, what="the approval form")
    assert "Approve: restart_service on mongodb" in description, description
    assert "MongoDB connection lost: MongoDB unreachable" in description and "mongodb://" not in description
    assert not marker.exists(), "nothing may be restarted before approval"

    body = {"run_input": {"approve": True, "reason": "mongod is down", "approver": "dba-gina"}}
    wait_for(lambda: HTTP.post(f"{api}/flow_runs/{run['id']}/resume", json=body).status_code in (200, 201),
             20, interval=0.5, what="the resume to be accepted")
    final = wait_run_final(api, incident_id)
    assert marker.exists()
    assert final["state"]["name"] == "Escalated", final["state"]  # nothing really came back
    text = report(api, incident_id)
    assert "| restart_service | mongodb | risky | done |" in text and "dba-gina" in text
    assert "| mongo_ping | **no** |" in text and "| verify: mongo_ping | **no** |" in text


def test_an_alert_that_selects_no_mongodb_target_says_so_and_escalates(responder, prefect_server):
    api = prefect_server.api_url
    incident_id = fire(responder, alert_body("MongodbDown", {"job": "billing"}))
    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Escalated", final["state"]
    assert "no MongoDB target configured" in report(api, incident_id)
