"""Alerts accepted while the Prefect server is down start their runs when it is back, even when the
responder was killed with SIGKILL right after accepting them.

This module has its own Prefect server (SQLite in a temporary PREFECT_HOME) so that it can stop
and restart it on the same port and data without disturbing the other tests. Its tests share it: each
stops it and starts it again, and each leaves it running.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid

import pytest

from support.alerts import load_fixture
from support.common import HTTP, wait_for
from support.prefect import PrefectServer, wait_run_final
from support.responder import ResponderProcess, make_config, running_responder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("outage") / "prefect").start()
    yield server
    server.stop()


def test_alert_posted_while_prefect_is_down_runs_after_it_returns(tmp_path, server):
    config = make_config(tmp_path, thresholds={"high-cpu-usage": {"cpu_percent": 100}},
                         runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 5, "interval_seconds": 1}}})
    try:
        with running_responder(tmp_path, server.api_url, config) as responder:
            server.stop()
            wait_for(lambda: HTTP.get(f"{responder.url}/healthz").status_code == 503, 30,
                     what="/healthz to report the Prefect server gone")

            answer = responder.post(load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6]))
            assert answer.status_code == 200, answer.text  # stored, although Prefect is down
            [incident_id] = answer.json()["incidents_opened"]
            metrics = HTTP.get(f"{responder.url}/metrics").text
            assert "responder_outbox_backlog 1.0" in metrics or "responder_outbox_backlog 2.0" in metrics
            time.sleep(1.1)
            oldest = float(re.search(r"^responder_outbox_oldest_undelivered_seconds (\S+)$",
                                     HTTP.get(f"{responder.url}/metrics").text, re.M).group(1))
            assert oldest >= 1.0  # what an alert on a stuck delivery reads

            server.start()
            run = wait_run_final(server.api_url, incident_id, timeout=120)
            assert run["state"]["name"] == "Resolved"
            assert run["created_by"]["type"] == "AUTOMATION"
            wait_for(lambda: HTTP.get(f"{responder.url}/healthz").status_code == 200, 30, what="ready again")
    finally:
        if server.process.poll() is not None:
            server.start()


def test_an_accepted_alert_survives_kill_9_of_the_responder(tmp_path, server):
    """A 2xx means the body is in the store: the responder killed with SIGKILL right after answering,
    then started again on the same store, runs the alert. The Prefect server is stopped meanwhile, so
    the alert can reach it only through what the second process reads from the store."""
    config = make_config(tmp_path, thresholds={"high-cpu-usage": {"cpu_percent": 100}},
                         runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 5, "interval_seconds": 1}}})
    first = ResponderProcess(tmp_path / "home", config, server.api_url).start()
    second = ResponderProcess(tmp_path / "home", config, server.api_url)
    try:
        server.stop()
        answer = first.post(load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6]))
        os.killpg(first.process.pid, signal.SIGKILL)
        assert answer.status_code == 200, answer.text
        [incident_id] = answer.json()["incidents_opened"]
        first.process.wait(10)

        server.start()
        second.start()
        run = wait_run_final(server.api_url, incident_id, timeout=120)
        assert run["state"]["name"] == "Resolved" and run["created_by"]["type"] == "AUTOMATION"
    finally:
        second.stop()
        first.stop()
        if server.process.poll() is not None:
            server.start()
