"""The catalog: what `responder runbooks` prints, how a broken configuration is refused at start-up,
and that docs/runbooks.md is generated from the catalog as it is now."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from conftest import BIN, ROOT, make_config


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
    assert "HIGH_CPU_USAGE" in cpu["alertnames"] and cpu["thresholds"]["cpu_percent"] == 80


def _broken(tmp_path: Path, mutate) -> subprocess.CompletedProcess:
    config = make_config(tmp_path)
    path = config / "runbooks" / "infrastructure.yaml"
    data = yaml.safe_load(path.read_text())
    mutate(data["runbooks"])
    path.write_text(yaml.safe_dump(data))
    return _run("up", env={"RESPONDER_CONFIG_DIR": str(config), "RESPONDER_HOME": str(tmp_path / "home"),
                           "PREFECT_API_URL": "http://127.0.0.1:9/api"})


def test_a_runbook_naming_a_missing_flow_stops_start_up(tmp_path):
    out = _broken(tmp_path, lambda rbs: rbs[0].update(flow="flows.nowhere:nothing"))
    assert out.returncode == 2 and "high-cpu-usage" in out.stderr and "flows.nowhere" in out.stderr


def test_a_mitigation_without_a_risk_stops_start_up(tmp_path):
    out = _broken(tmp_path, lambda rbs: rbs[0]["mitigations"][0].pop("risk"))
    assert out.returncode == 2 and "high-cpu-usage" in out.stderr and "risk" in out.stderr


def test_an_unknown_mitigation_stops_start_up(tmp_path):
    out = _broken(tmp_path, lambda rbs: rbs[0]["mitigations"].append({"name": "reboot_everything", "risk": "safe"}))
    assert out.returncode == 2 and "reboot_everything" in out.stderr and "not a registered mitigation" in out.stderr


def test_an_alert_name_claimed_twice_stops_start_up(tmp_path):
    out = _broken(tmp_path, lambda rbs: rbs[1]["alertnames"].append(rbs[0]["alertnames"][0]) if len(rbs) > 1
                  else rbs.append({**rbs[0], "name": "copy"}))
    assert out.returncode == 2 and "claimed by both" in out.stderr


def test_docs_runbooks_md_is_current():
    out = _run("runbooks", "--markdown")
    assert out.returncode == 0, out.stderr
    current = (ROOT / "docs" / "runbooks.md").read_text()
    assert out.stdout == current, "docs/runbooks.md is stale: run `responder runbooks --markdown > docs/runbooks.md`"
