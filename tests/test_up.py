"""`responder up` as `make run` runs it: no PREFECT_API_URL, so it starts an embedded Prefect server
(SQLite under a private PREFECT_HOME, port from PREFECT_SERVER_API_PORT), applies every runbook
deployment, serves the intake, runs an alert end to end, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import uuid


import json

import psutil

from support.alerts import alert_body, load_fixture
from support.capture import CaptureServer
from support.common import BIN, HTTP, ROOT, free_port, wait_for
from support.prefect import login, paused_run, resume, seed_database, wait_run_final
from support.responder import make_config


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _make_run_env(tmp_path, config, prefect_port: int, intake_port: int, token: str, **extra: str) -> dict:
    """`make run`'s environment: no PREFECT_* from the test session, private homes and ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_API_PORT=str(prefect_port),
               RESPONDER_HOME=str(tmp_path / "home"), RESPONDER_CONFIG_DIR=str(config),
               RESPONDER_INTAKE_PORT=str(intake_port), RESPONDER_INTAKE_TOKEN=token, **extra)
    return env


def _make_run(tmp_path, env: dict, log_name: str = "up.log") -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "responder"), "up"], env=env, cwd=ROOT, stdout=open(tmp_path / log_name, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_make_run_starts_everything_and_ctrl_c_stops_it(tmp_path):
    prefect_port, intake_port, token = free_port(), free_port(), uuid.uuid4().hex
    config = make_config(tmp_path, thresholds={"high-cpu-usage": {"cpu_percent": 100}},
                         runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 5, "interval_seconds": 1}}})
    proc = _make_run(tmp_path, _make_run_env(tmp_path, config, prefect_port, intake_port, token))
    try:
        wait_for(lambda: HTTP.get(f"http://127.0.0.1:{intake_port}/healthz").status_code == 200, 120,
                 what="the embedded stack to be ready")
        printed = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{prefect_port}" in printed and f"http://127.0.0.1:{intake_port}/alerts" in printed
        assert (tmp_path / "prefect-home").exists()
        # The embedded server is the tuned one (responder/prefect_server.py), on SQLite.
        assert "database configuration: sqlite, BEGIN IMMEDIATE" in (tmp_path / "prefect-home" / "server.log").read_text()
        # Its UI and API ask for a login, generated on first start (0600); the health check stays open.
        api = f"http://127.0.0.1:{prefect_port}/api"
        auth_file = tmp_path / "prefect-home" / "api-auth"
        assert auth_file.stat().st_mode & 0o777 == 0o600 and f"login: {auth_file}" in printed
        assert HTTP.post(f"{api}/flow_runs/filter", json={}).status_code == 401
        assert HTTP.post(f"{api}/flow_runs/filter", json={}, auth=("responder", "guess")).status_code == 401
        assert HTTP.get(f"{api}/health").status_code == 200
        login(api, auth_file.read_text())

        answer = HTTP.post(f"http://127.0.0.1:{intake_port}/alerts", headers={"Authorization": f"Bearer {token}"},
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


def test_after_kill_9_make_run_comes_back_by_itself_and_the_response_carries_on(tmp_path):
    """A drill waits for approval; the responder is killed with SIGKILL (its embedded Prefect server is not
    signalled by the test); `make run` started again, as a service manager would, comes back without a person:
    the same question is still answerable, the answer completes the run, and each escalation page went out once (a local capture server
    stands in for the webhook receiver: no real pager is reachable from here)."""
    prefect_port, intake_port, token = free_port(), free_port(), uuid.uuid4().hex
    webhook = CaptureServer()
    config = make_config(tmp_path, notify={"webhooks": [f"{webhook.url}/hook"]},
                         runbook_overrides={"responder-drill": {"approval_timeout_seconds": 12000}})  # 120 s at 0.01
    env = _make_run_env(tmp_path, config, prefect_port, intake_port, token, RESPONDER_TIME_SCALE="0.01")
    api, intake = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{intake_port}"
    seed_database(tmp_path / "prefect-home")  # migrated already: the first start is the test above, a crash is this one
    first = _make_run(tmp_path, env, "first.log")
    second = None
    try:
        wait_for(lambda: HTTP.get(f"{intake}/healthz").status_code == 200, 120, what="the first start to be ready")
        answer = HTTP.post(f"{intake}/alerts", headers={"Authorization": f"Bearer {token}"},
                            json=alert_body("ResponderDrill", uuid.uuid4().hex[:8]))
        [incident] = answer.json()["incidents_opened"]
        login(api, (tmp_path / "prefect-home" / "api-auth").read_text())
        asked = paused_run(api, incident)
        server_pid = json.loads((tmp_path / "prefect-home" / "server.pid").read_text())["pid"]

        os.kill(first.pid, signal.SIGKILL)  # the responder only: its process group and server are not signalled
        first.wait(10)
        # The embedded server is told its parent died and stops by itself.
        wait_for(lambda: not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE,
                 30, what="the orphaned embedded server to stop")

        second = _make_run(tmp_path, env, "second.log")
        wait_for(lambda: HTTP.get(f"{intake}/healthz").status_code == 200, 120, what="the second start to be ready")
        # The run was suspended for approval when the responder died: it holds nothing, so nothing is lost; it is
        # still the same question, answerable now.
        still = paused_run(api, incident)
        assert still["id"] == asked["id"] and still["state"]["id"] == asked["state"]["id"]
        resume(api, still["id"], True, "after the crash", "tester")
        run = wait_run_final(api, incident, timeout=120)
        assert run["state"]["name"] == "Resolved", run["state"]
        # Carried on by another process from the kept results: acknowledged and asked once, the step done once.
        with sqlite3.connect(tmp_path / "home" / "responder.db") as db:
            kinds = [k for (k,) in db.execute("SELECT kind FROM timeline WHERE incident_id = ?", (incident,))]
        assert (kinds.count("response"), kinds.count("approval-asked"), kinds.count("action")) == (1, 1, 1), kinds

        def pages() -> list[int]:
            return [r["body"]["level"] for r in webhook.requests
                    if r["body"].get("kind") == "page" and r["body"]["incident"]["id"] == incident]
        assert 1 in pages()
        assert sorted(pages()) == sorted(set(pages())), f"a page went out twice: {pages()}"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        webhook.close()
