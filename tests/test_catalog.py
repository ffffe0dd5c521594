"""The catalog: what `responder runbooks` prints, how a broken configuration is refused at start-up,
and that docs/runbooks.md is generated from the catalog as it is now."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from support.common import BIN, ROOT
from support.responder import make_config


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([str(BIN / "responder"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_runbooks_json_lists_every_runbook_with_flow_alertnames_and_severity():
    out = _run("runbooks", "--json")
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)
    names = {e["name"] for e in entries}
    assert {"high-cpu-usage", "responder-drill"} <= names
    for entry in entries:
        assert entry["flow"] and entry["severity"] in ("info", "warning", "critical")
        assert entry["alertnames"] or entry["schedules"]
    cpu = next(e for e in entries if e["name"] == "high-cpu-usage")
    assert "HIGH_CPU_USAGE" in cpu["alertnames"] and cpu["thresholds"]["cpu_percent"] == 80  # the seed's, in force
    response = next(e for e in entries if e["name"] == "high-response-time")
    assert response["thresholds"]["p95_seconds"] == 2
    assert response["thresholds_by_alertname"]["response_time_p95"]["p95_seconds"] == 1  # seed 001's spelling


def _broken(tmp_path: Path, mutate, **env: str) -> subprocess.CompletedProcess:
    config = make_config(tmp_path)
    path = config / "runbooks" / "infrastructure.yaml"
    data = yaml.safe_load(path.read_text())
    mutate(data["runbooks"])
    path.write_text(yaml.safe_dump(data))
    return _run("up", env={"RESPONDER_CONFIG_DIR": str(config), "RESPONDER_HOME": str(tmp_path / "home"),
                           "PREFECT_API_URL": "http://127.0.0.1:9/api", **env})


def test_a_runbook_naming_a_missing_flow_stops_start_up(tmp_path):
    out = _broken(tmp_path, lambda rbs: rbs[0].update(flow="flows.nowhere:nothing"))
    assert out.returncode == 2 and "high-cpu-usage" in out.stderr and "flows.nowhere" in out.stderr


def test_a_mitigation_without_a_risk_stops_start_up(tmp_path):
    out = _broken(tmp_path, lambda rbs: rbs[0]["mitigations"][0].pop("risk"))
    assert out.returncode == 2 and "high-cpu-usage" in out.stderr and "risk" in out.stderr


def test_an_unknown_mitigation_stops_start_up(tmp_path):
    out = _broken(tmp_path, lambda rbs: rbs[0]["mitigations"].append({"name": "reboot_everything", "risk": "safe"}))
    assert out.returncode == 2 and "reboot_everything" in out.stderr and "not a registered mitigation" in out.stderr


@pytest.mark.parametrize("thresholds, says", [
    ({"cpu_percnt": 90}, "thresholds.cpu_percnt: unknown threshold 'cpu_percnt' (this runbook's thresholds: "
                         "cpu_percent, load_per_core)"),
    ({"cpu_percent": "lots"}, "thresholds.cpu_percent: Input should be a valid number"),
    ({"cpu_percent": -5}, "thresholds.cpu_percent: Input should be greater than or equal to 0"),
    ({"cpu_percent.DiskFull": 90}, "thresholds.cpu_percent.DiskFull: 'DiskFull' is not one of this runbook's alert names"),
])
def test_a_wrong_threshold_override_stops_start_up_naming_file_runbook_and_field(tmp_path, thresholds, says):
    out = _broken(tmp_path, lambda rbs: rbs[0].update(thresholds=thresholds))
    assert out.returncode == 2, out.stderr
    assert "infrastructure.yaml: runbook 'high-cpu-usage': " + says in out.stderr


def test_a_flow_without_a_runbook_spec_stops_start_up(tmp_path):
    (tmp_path / "plain_flows.py").write_text(
        "from prefect import flow\n\n\n@flow\ndef plain(alert: dict, incident: dict | None = None):\n    return 'done'\n")
    out = _broken(tmp_path, lambda rbs: rbs[0].update(flow="plain_flows:plain"), PYTHONPATH=str(tmp_path))
    assert out.returncode == 2 and "runbook 'high-cpu-usage'" in out.stderr and "declares no runbook spec" in out.stderr


def test_a_runbook_step_that_would_run_again_after_an_approval_stops_start_up(tmp_path):
    (tmp_path / "forgetful.py").write_text(
        "from prefect import task\nfrom prefect.cache_policies import NO_CACHE\n"
        "from flows.lifecycle import Assessment, runbook_flow\n\n\n"
        "@task(name='check-thing', cache_policy=NO_CACHE)\ndef check_thing():\n    return None\n\n\n"
        "def assess(runbook, alert):\n    return Assessment(evidence=[check_thing()])\n\n\n"
        "forgetful = runbook_flow('forgetful', assess)\n")
    out = _broken(tmp_path, lambda rbs: rbs[0].update(flow="forgetful:forgetful"), PYTHONPATH=str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert ("infrastructure.yaml: runbook 'high-cpu-usage': step 'check-thing' (forgetful.check_thing) is not "
            "resumable") in out.stderr


def test_an_installation_override_is_in_force_and_shown(tmp_path):
    config = make_config(tmp_path, thresholds={"high-response-time": {"p95_seconds": 5, "p95_seconds.SlowRequests": 7}})
    out = _run("runbooks", "--json", env={"RESPONDER_CONFIG_DIR": str(config)})
    assert out.returncode == 0, out.stderr
    entry = next(e for e in json.loads(out.stdout) if e["name"] == "high-response-time")
    assert entry["thresholds"]["p95_seconds"] == 5
    by_name = entry["thresholds_by_alertname"]
    assert "response_time_p95" not in by_name  # listed only where it differs: the installation's 5 beats seed 001's 1
    assert by_name["SlowRequests"]["p95_seconds"] == 7  # and its own spelling's figure beats its general one
    assert entry["threshold_overrides"] == {"p95_seconds": 5, "p95_seconds.SlowRequests": 7}


def test_an_alert_name_claimed_twice_stops_start_up(tmp_path):
    out = _broken(tmp_path, lambda rbs: rbs[1]["alertnames"].append(rbs[0]["alertnames"][0]) if len(rbs) > 1
                  else rbs.append({**rbs[0], "name": "copy"}))
    assert out.returncode == 2 and "claimed by both" in out.stderr


def test_docs_runbooks_md_is_current():
    out = _run("runbooks", "--markdown")
    assert out.returncode == 0, out.stderr
    current = (ROOT / "docs" / "runbooks.md").read_text()
    assert out.stdout == current, "docs/runbooks.md is stale: run `responder runbooks --markdown > docs/runbooks.md`"
