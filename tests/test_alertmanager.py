"""A real Alertmanager (Debian `prometheus-alertmanager`) delivers to the real intake.

The alert is pushed into Alertmanager through its own v2 API (as Prometheus would), Alertmanager
groups it and posts the webhook with the bearer token; resolving it in Alertmanager sends the
resolved notification. The CPU threshold is 0 % and no process is killable here, so the run keeps
verifying (CPU never "recovers") until the resolved notification closes the incident.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from datetime import datetime, timezone

import pytest
import yaml

from support.common import HTTP, free_port, wait_for
from support.prefect import runs_for_incident, wait_run_final
from support.responder import make_config, running_responder


@pytest.fixture(scope="module")
def responder(prefect_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("am")
    config = make_config(tmp, thresholds={"high-cpu-usage": {"cpu_percent": 0}},
                         runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 120, "interval_seconds": 1}}},
                         targets={"processes": {"killable_cmdline": [], "protected_names": []}})
    with running_responder(tmp, prefect_server.api_url, config) as proc:
        yield proc


@pytest.fixture(scope="module")
def alertmanager(responder, tmp_path_factory):
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("Alertmanager is not installed: apt-get install prometheus-alertmanager (make test does this)")
    tmp = tmp_path_factory.mktemp("alertmanager")
    config = {
        "route": {"receiver": "responder", "group_by": ["alertname", "test_id"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "responder", "webhook_configs": [{
            "url": f"{responder.url}/alerts", "send_resolved": True,
            "http_config": {"authorization": {"credentials": responder.token}}}]}],
    }
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=open(tmp / "am.log", "wb"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: HTTP.get(f"{url}/-/ready").status_code == 200, 30, what="Alertmanager ready")
    yield url
    proc.terminate()
    proc.wait(10)


def _incident_for(responder, test_id: str):
    incidents = HTTP.get(f"{responder.url}/incidents", params={}, headers={"Authorization": f"Bearer {responder.token}"}).json()
    return next((i for i in incidents if test_id in i["group_key"]), None)


def test_alertmanager_delivers_firing_and_resolved(responder, alertmanager, prefect_server):
    test_id = uuid.uuid4().hex[:8]
    starts = datetime.now(timezone.utc)
    alert = {
        "labels": {"alertname": "HIGH_CPU_USAGE", "severity": "warning", "instance": "app-1:9100",
                   "service": "medianest-backend", "test_id": test_id},
        "annotations": {"summary": "CPU usage above 80% for 5 minutes"},
        "startsAt": starts.isoformat(),
    }
    HTTP.post(f"{alertmanager}/api/v2/alerts", json=[alert]).raise_for_status()

    incident = wait_for(lambda: _incident_for(responder, test_id), 30, what="Alertmanager's webhook to open an incident")
    assert incident["runbook"] == "high-cpu-usage" and incident["status"] == "open"
    wait_for(lambda: any(r["state"]["type"] == "RUNNING" for r in runs_for_incident(prefect_server.api_url, incident["id"])),
             30, what="the triggered run to be verifying")

    resolved = {**alert, "endsAt": datetime.now(timezone.utc).isoformat()}
    resolved["startsAt"] = starts.isoformat()
    HTTP.post(f"{alertmanager}/api/v2/alerts", json=[resolved]).raise_for_status()

    closed = wait_for(lambda: (i := _incident_for(responder, test_id)) and i["status"] == "closed" and i, 30,
                      what="the resolved notification to close the incident")
    assert closed["close_reason"] == "alerts-resolved"
    run = wait_run_final(prefect_server.api_url, incident["id"])
    assert run["state"]["name"] == "ResolvedByAlert", run["state"]
