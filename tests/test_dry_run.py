"""RESPONDER_DRY_RUN=true: every mitigation reports what it would do and changes nothing.

The CPU runbook (threshold 0 %, so it always wants to act) finds a real CPU-burning process
that the configuration calls killable; in dry run it must neither pause for approval nor kill it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid


from support.alerts import load_fixture
from support.prefect import wait_run_final
from support.responder import make_config, running_responder
from support.common import HTTP


def test_dry_run_reports_and_touches_nothing(prefect_server, tmp_path):
    marker = f"responder-test-burner-{uuid.uuid4().hex[:8]}"
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass", marker])
    try:
        config = make_config(
            tmp_path, thresholds={"high-cpu-usage": {"cpu_percent": 0}},
            runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 2, "interval_seconds": 1}}},
            targets={"processes": {"killable_cmdline": [marker], "protected_names": []}},
        )
        with running_responder(tmp_path, prefect_server.api_url, config, RESPONDER_DRY_RUN="true") as responder:
            [incident] = responder.post(load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6])).json()["incidents_opened"]
            run = wait_run_final(prefect_server.api_url, incident)
        assert burner.poll() is None, "dry run killed the process"
        report = HTTP.post(f"{prefect_server.api_url}/artifacts/filter",
                            json={"artifacts": {"key": {"any_": [f"response-{incident}"]}}}).json()[0]["data"]
        assert f"pid {burner.pid}" in report and "would_do" in report and "would send SIGTERM" in report
        history = HTTP.get(f"{prefect_server.api_url}/flow_run_states/", params={"flow_run_id": run["id"]}).json()
        assert not any(s["type"] == "PAUSED" for s in history), "dry run must not ask for approval"
    finally:
        burner.kill()
        burner.wait()
