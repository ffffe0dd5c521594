"""ServiceDown / health_check_failure through the real responder and Prefect server, against real
HTTP services: small Python HTTP servers on free ports that this module starts and stops.

Each service's configured ``restart`` (or ``rollback``) argv is a launcher script that starts its
server again, detached, as a process manager would. ``ai-affiliate-backend`` (seed 003's job
name, from the ServiceDown fixture) comes back with its restart. ``video-api``'s restart runs but
does not help (it is ``python -c pass``), so the runbook goes on to its last resort, the rollback,
which brings it back: both after approval, in seed 000's order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from support.alerts import load_fixture
from support.common import HTTP, free_port, wait_for
from support.prefect import answer, form_description, paused_run, report, wait_run_final
from support.responder import fire, make_config, running_responder

SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, pidfile = int(sys.argv[1]), sys.argv[2]
BODIES = {"/health": {"status": "ok"},
          "/health/detailed": {"status": "ok", "checks": {"database": {"status": "ok"}, "redis": "connected"}}}

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = BODIES.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body or {}).encode())

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", port), Handler)
open(pidfile, "w").write(str(os.getpid()))
server.serve_forever()
"""

# What a process manager's "start" does: start the server detached, return once it listens.
LAUNCHER = """
import socket, subprocess, sys, time
server, port, pidfile = sys.argv[1], sys.argv[2], sys.argv[3]
subprocess.Popen([sys.executable, server, port, pidfile], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL, start_new_session=True)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(port)), 0.2).close()
        break
    except OSError:
        time.sleep(0.05)
print("started on", port)
"""


class Service:
    def __init__(self, tmp: Path, name: str):
        self.name, self.port, self.pidfile = name, free_port(), tmp / f"{name}.pid"
        self.start_argv = [sys.executable, str(tmp / "launcher.py"), str(tmp / "server.py"), str(self.port),
                           str(self.pidfile)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            return HTTP.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def start(self) -> None:
        subprocess.run(self.start_argv, check=True, timeout=20, capture_output=True)
        assert self.healthy()

    def stop(self) -> None:
        if self.pidfile.exists():
            try:
                os.kill(int(self.pidfile.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.pidfile.unlink()
        wait_for(lambda: not self.healthy(), 10, what=f"{self.name} to stop")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("health-services")
    (tmp / "server.py").write_text(SERVER)
    (tmp / "launcher.py").write_text(LAUNCHER)
    made = {name: Service(tmp, name) for name in ("ai-affiliate-backend", "video-api")}
    yield made
    for service in made.values():
        service.stop()


@pytest.fixture(scope="module")
def responder(prefect_server, tmp_path_factory, services):
    tmp = tmp_path_factory.mktemp("runbook-health")
    backend, video = services["ai-affiliate-backend"], services["video-api"]
    config = make_config(
        tmp,
        runbook_overrides={"service-health": {"verify": {"budget_seconds": 3, "interval_seconds": 1},
                                              "approval_timeout_seconds": 40}},
        targets={"services": {
            backend.name: {"health_url": f"{backend.url}/health", "health_detailed_url": f"{backend.url}/health/detailed",
                           "restart": backend.start_argv},
            video.name: {"health_url": f"{video.url}/health", "restart": [sys.executable, "-c", "pass"],
                         "rollback": video.start_argv},
        }},
    )
    with running_responder(tmp, prefect_server.api_url, config) as proc:
        yield proc


def alert_body(alertname: str, labels: dict) -> dict:
    fingerprint = uuid.uuid4().hex[:16]
    labels = {"alertname": alertname, "severity": "critical", **labels}
    annotations = {"summary": "Health check endpoint returned unhealthy"}
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{alertname}", test="{fingerprint}"}}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "responder", "groupLabels": {"alertname": alertname},
        "commonLabels": labels, "commonAnnotations": annotations, "externalURL": "http://alertmanager.test",
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations,
                    "startsAt": datetime.now(timezone.utc).isoformat(), "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "", "fingerprint": fingerprint}],
    }


def test_service_down_is_restarted_after_approval_and_verified_healthy(responder, prefect_server, services):
    api = prefect_server.api_url
    backend = services["ai-affiliate-backend"]
    backend.start()
    backend.stop()

    incident_id = fire(responder, load_fixture("service_down_critical.json", unique=uuid.uuid4().hex[:6]))
    run = paused_run(api, incident_id)
    description = form_description(api, run)
    assert "Approve: restart_service on ai-affiliate-backend" in description, description
    assert "after 3 tries" in description and f"nothing accepting on 127.0.0.1:{backend.port}" in description
    assert not backend.healthy(), "nothing may be restarted before approval"

    answer(api, run, True, "oncall-erin")
    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Resolved", final["state"]
    assert backend.healthy()
    text = report(api, incident_id)
    assert "| restart_service | ai-affiliate-backend | risky | done |" in text and "oncall-erin" in text
    assert "rollback_release" not in text
    assert "| http_health_check | **no** |" in text and "| verify: http_health_check | yes |" in text


def test_health_check_failure_rolls_back_when_the_restart_does_not_help(responder, prefect_server, services):
    api = prefect_server.api_url
    video = services["video-api"]
    assert not video.healthy()

    incident_id = fire(responder, alert_body("health_check_failure", {"service": "video-api", "instance": video.url}))
    run = paused_run(api, incident_id)
    assert "Approve: restart_service on video-api" in form_description(api, run)
    answer(api, run, True, "oncall-erin")

    run = paused_run(api, incident_id, not_state=run["state"]["id"])
    description = form_description(api, run)
    assert "Approve: rollback_release on video-api" in description and "still unhealthy after the restart" in description
    assert not video.healthy(), "the rollback may not run before its own approval"
    answer(api, run, True, "oncall-frank")

    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Resolved", final["state"]
    assert video.healthy()
    text = report(api, incident_id)
    assert "| restart_service | video-api | risky | done |" in text
    assert "| rollback_release | video-api | risky | done |" in text and "oncall-frank" in text


def test_an_alert_that_selects_no_service_says_so_and_escalates(responder, prefect_server):
    api = prefect_server.api_url
    incident_id = fire(responder, alert_body("ServiceDown", {"job": "unknown-service", "severity": "warning"}))
    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Escalated", final["state"]
    assert "no service configured for this alert" in report(api, incident_id)
