"""The catalog: what `responder runbooks` prints, how a broken configuration is refused at start-up,
and that docs/runbooks.md is generated from the catalog as it is now."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.catalog import CatalogError
from flows.registry import load_catalog
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


def _config(tmp_path: Path, *entries: dict) -> Path:
    """A copy of config/ with ``entries`` as this installation's runbooks/broken.yaml."""
    config = make_config(tmp_path)
    (config / "runbooks" / "broken.yaml").write_text(yaml.safe_dump({"runbooks": list(entries)}))
    return config


def _refused(tmp_path: Path, *entries: dict) -> str:
    """What loading the catalog says about ``entries`` (in-process: the same loader `responder up` calls)."""
    with pytest.raises(CatalogError) as refused:
        load_catalog(_config(tmp_path, *entries))
    return str(refused.value)


def _module(tmp_path: Path, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    return name


def test_a_broken_catalog_stops_responder_up_naming_file_runbook_and_field(tmp_path):
    config = _config(tmp_path, {"name": "high-cpu-usage", "thresholds": {"cpu_percnt": 90}})
    out = _run("up", env={"RESPONDER_CONFIG_DIR": str(config), "RESPONDER_HOME": str(tmp_path / "home"),
                          "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert out.returncode == 2, out.stderr
    assert "configuration error" in out.stderr
    assert "broken.yaml: runbook 'high-cpu-usage': thresholds.cpu_percnt: unknown threshold 'cpu_percnt'" in out.stderr


def test_an_entry_for_a_runbook_nobody_declares_is_refused(tmp_path):
    says = _refused(tmp_path, {"name": "high-cpu-usge", "thresholds": {"cpu_percent": 90}})
    assert "broken.yaml: runbook 'high-cpu-usge': no runbook module declares it" in says


def test_a_runbook_module_that_cannot_be_imported_is_refused(tmp_path):
    says = _refused(tmp_path, {"name": "cache-cold", "module": "ops_nowhere.cache_cold"})
    assert "cannot import runbook module 'ops_nowhere.cache_cold'" in says


def test_what_a_runbook_module_declares_cannot_be_redeclared_in_the_catalog(tmp_path):
    says = _refused(tmp_path, {"name": "high-cpu-usage", "title": "CPU", "flow": "flows.high_cpu:high_cpu_usage"})
    assert "runbook 'high-cpu-usage': flow: Extra inputs are not permitted: a runbook's flow is declared in its module" in says
    assert "title: Extra inputs are not permitted: a runbook's title is declared in its module" in says


def test_a_mitigation_risk_in_the_catalog_is_refused_it_is_the_actions_own(tmp_path):
    says = _refused(tmp_path, {"name": "high-cpu-usage", "mitigations": [{"name": "restart_service", "risk": "safe"}]})
    assert "runbook 'high-cpu-usage': mitigations.0.risk" in says and "the registered action's own" in says


def test_two_approvers_for_a_mitigation_the_runbook_does_not_propose_is_refused(tmp_path):
    says = _refused(tmp_path, {"name": "high-cpu-usage", "mitigations": [{"name": "rollback_release", "needs": "two"}]})
    assert ("runbook 'high-cpu-usage': mitigations: rollback_release not proposed by this runbook "
            "(it proposes: terminate_process, restart_service)") in says


def test_a_spec_naming_an_unregistered_mitigation_fails_when_its_module_loads(tmp_path):
    name = _module(tmp_path, "reckless_runbook", (
        "from core.catalog import RunbookSpec\n"
        "SPEC = RunbookSpec(name='reckless', title='Reckless', alertnames=('Reckless',), mitigations=('reboot_everything',))\n"))
    says = _refused(tmp_path, {"name": "reckless", "module": name})
    assert ("runbook module 'reckless_runbook': RunbookSpec.mitigations: 'reboot_everything' is not a registered "
            "mitigation (known: ") in says


@pytest.mark.parametrize("thresholds, says", [
    ({"cpu_percnt": 90}, "thresholds.cpu_percnt: unknown threshold 'cpu_percnt' (this runbook's thresholds: "
                         "cpu_percent, load_per_core)"),
    ({"cpu_percent": "lots"}, "thresholds.cpu_percent: Input should be a valid number"),
    ({"cpu_percent": -5}, "thresholds.cpu_percent: Input should be greater than or equal to 0"),
    ({"cpu_percent.DiskFull": 90}, "thresholds.cpu_percent.DiskFull: 'DiskFull' is not one of this runbook's alert names"),
])
def test_a_wrong_threshold_override_is_refused_naming_file_runbook_and_field(tmp_path, thresholds, says):
    assert "broken.yaml: runbook 'high-cpu-usage': " + says in _refused(
        tmp_path, {"name": "high-cpu-usage", "thresholds": thresholds})


def test_a_module_without_a_runbook_spec_is_refused(tmp_path):
    name = _module(tmp_path, "plain_flows", (
        "from prefect import flow\n\n\n@flow\ndef plain(alert: dict, incident: dict | None = None):\n    return 'done'\n"))
    says = _refused(tmp_path, {"name": "plain", "module": name})
    assert "runbook module 'plain_flows' declares no runbook" in says


def test_a_runbook_step_that_would_run_again_after_an_approval_is_refused(tmp_path):
    name = _module(tmp_path, "forgetful", (
        "from prefect import task\nfrom prefect.cache_policies import NO_CACHE\n"
        "from core.catalog import RunbookSpec\n"
        "from flows.lifecycle import Assessment, runbook_flow\n\n\n"
        "@task(name='check-thing', cache_policy=NO_CACHE)\ndef check_thing():\n    return None\n\n\n"
        "def assess(runbook, alert):\n    return Assessment(evidence=[check_thing()])\n\n\n"
        "forgetful = runbook_flow(RunbookSpec(name='forgetful', title='Forgetful', alertnames=('Forgetful',)), assess)\n"))
    says = _refused(tmp_path, {"name": "forgetful", "module": name})
    assert "forgetful: step 'check-thing' (check_thing) is not resumable" in says


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


def test_an_alert_name_claimed_twice_is_refused(tmp_path):
    says = _refused(tmp_path, {"name": "high-memory-usage", "alertnames": ["HIGH_CPU_USAGE"]})
    assert "alert name 'HIGH_CPU_USAGE' is claimed by both 'high-cpu-usage' and 'high-memory-usage'" in says


def test_an_installation_adds_a_spelling_and_changes_severity_and_approvers(tmp_path):
    config = _config(tmp_path, {"name": "high-cpu-usage", "alertnames": ["NodeCPUHigh"], "severity": "critical",
                                "mitigations": [{"name": "restart_service", "needs": "two"}]})
    runbook = load_catalog(config).route("NodeCPUHigh")
    assert runbook.name == "high-cpu-usage" and runbook.severity == "critical"
    assert runbook.alertnames[:2] == ["HIGH_CPU_USAGE", "HighCPUUsage"] and runbook.alertnames[-1] == "NodeCPUHigh"
    assert [(m.name, m.risk.value, m.needs) for m in runbook.mitigations] == [
        ("terminate_process", "risky", "one"), ("restart_service", "risky", "two")]


def test_docs_runbooks_md_is_current():
    out = _run("runbooks", "--markdown")
    assert out.returncode == 0, out.stderr
    current = (ROOT / "docs" / "runbooks.md").read_text()
    assert out.stdout == current, "docs/runbooks.md is stale: run `responder runbooks --markdown > docs/runbooks.md`"
