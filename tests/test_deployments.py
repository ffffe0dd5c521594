"""Runbook deployments on a real Prefect server (the suite's own): a restart with the same runbooks
changes nothing there; a changed runbook, or a trigger someone deleted, is applied again."""

from __future__ import annotations

import asyncio
from typing import Any

import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments import VERSION, apply_deployments
from flows.registry import flows_of, load_catalog
from support.prefect import prefect_post
from support.responder import make_config
from support.common import HTTP


def _apply(api_url: str, config) -> dict[str, Any]:
    catalog = load_catalog(config)
    with temporary_settings({PREFECT_API_URL: api_url}):
        return asyncio.run(apply_deployments(catalog, flows_of(catalog)))


def _held(api_url: str, deployment_id) -> tuple[dict, list[dict]]:
    deployment = HTTP.get(f"{api_url}/deployments/{deployment_id}", timeout=10).json()
    automations = [a for a in prefect_post(api_url, "/automations/filter", {})
                   if any(action.get("deployment_id") == str(deployment_id) for action in a["actions"])]
    return deployment, automations


def test_a_restart_changes_nothing_and_a_changed_runbook_is_applied_again(prefect_server, tmp_path):
    api = prefect_server.api_url
    config = make_config(tmp_path)
    first = _apply(api, config)
    assert "high-cpu-usage" in first and "daily-checks" in first
    cpu, cpu_triggers = _held(api, first["high-cpu-usage"])
    assert cpu["version"].startswith(VERSION + "+")  # the responder's version and what was applied
    assert len(cpu_triggers) == 1
    memory_before, _ = _held(api, first["high-memory-usage"])

    again = _apply(api, config)  # a restart: same code, same catalog
    assert again == first
    same, same_triggers = _held(api, first["high-cpu-usage"])
    assert same["updated"] == cpu["updated"] and [a["id"] for a in same_triggers] == [a["id"] for a in cpu_triggers]

    # The installation adds a spelling: that runbook's deployment and trigger are applied again.
    (config / "runbooks" / "more.yaml").write_text(yaml.safe_dump({"runbooks": [
        {"name": "high-cpu-usage", "alertnames": ["NodeCPUHigh"]}]}))
    changed = _apply(api, config)
    assert changed["high-cpu-usage"] == first["high-cpu-usage"]  # the same deployment, updated
    updated, new_triggers = _held(api, first["high-cpu-usage"])
    assert updated["version"] != cpu["version"]
    assert len(new_triggers) == 1 and "NodeCPUHigh" in new_triggers[0]["trigger"]["match"]["responder.alertname"]
    memory, memory_triggers = _held(api, first["high-memory-usage"])  # the others were left alone
    assert memory["updated"] == memory_before["updated"] and len(memory_triggers) == 1

    # Someone deletes a trigger's automation in the UI: the next start puts it back.
    HTTP.delete(f"{api}/automations/{memory_triggers[0]['id']}", timeout=10).raise_for_status()
    assert _held(api, first["high-memory-usage"])[1] == []
    _apply(api, config)
    restored = _held(api, first["high-memory-usage"])[1]
    assert len(restored) == 1 and "HIGH_MEMORY_USAGE" in restored[0]["trigger"]["match"]["responder.alertname"]
