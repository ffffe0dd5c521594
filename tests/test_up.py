"""`responder up` as `make run` runs it: no PREFECT_API_URL, so it starts an embedded Prefect server
(SQLite under a private PREFECT_HOME, port from PREFECT_SERVER_API_PORT), applies every runbook
deployment, serves the intake, runs an alert end to end, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid

import httpx

from support.alerts import load_fixture
from support.common import BIN, ROOT, free_port, wait_for
from support.prefect import wait_run_final
from support.responder import make_config


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_make_run_starts_everything_and_ctrl_c_stops_it(tmp_path):
    prefect_port, intake_port, token = free_port(), free_port(), uuid.uuid4().hex
    config = make_config(tmp_path, thresholds={"high-cpu-usage": {"cpu_percent": 100}},
                         runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 5, "interval_seconds": 1}}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_API_PORT=str(prefect_port),
               RESPONDER_HOME=str(tmp_path / "home"), RESPONDER_CONFIG_DIR=str(config),
               RESPONDER_INTAKE_PORT=str(intake_port), RESPONDER_INTAKE_TOKEN=token)
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([str(BIN / "responder"), "up"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{intake_port}/healthz").status_code == 200, 120,
                 what="the embedded stack to be ready")
        printed = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{prefect_port}" in printed and f"http://127.0.0.1:{intake_port}/alerts" in printed
        assert (tmp_path / "prefect-home").exists()
        # The embedded server is the tuned one (responder/prefect_server.py), on SQLite.
        assert "database configuration: sqlite, BEGIN IMMEDIATE" in (tmp_path / "prefect-home" / "server.log").read_text()

        answer = httpx.post(f"http://127.0.0.1:{intake_port}/alerts", headers={"Authorization": f"Bearer {token}"},
                            json=load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6]))
        [incident] = answer.json()["incidents_opened"]
        run = wait_run_final(f"http://127.0.0.1:{prefect_port}/api", incident)
        assert run["state"]["name"] == "Resolved"

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        proc.wait(60)
        wait_for(lambda: not _listening(prefect_port) and not _listening(intake_port), 30,
                 what="the embedded Prefect server and the intake to stop")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
