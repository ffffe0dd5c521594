"""Adding a runbook is its module (its spec, thresholds and steps), its catalog entry if the
installation needs one, and a test: a toy runbook added exactly that way answers a real alert end to
end (real `responder up`, real Prefect server, real HTTP).

The toy runbook lives in a module outside the repository (on PYTHONPATH, named by its catalog entry's
``module``), checks a file this test controls, proposes a risky step (the registered ``drill_step``)
while the file says "bad", and verifies by reading the file again.
"""

from __future__ import annotations

import textwrap
import uuid

import yaml

from support.prefect import answer, paused_run, report, wait_run_final
from support.responder import fire, make_config, running_responder

TOY_MODULE = '''
from pathlib import Path

from core.alerts import Alert
from core.catalog import Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from flows.lifecycle import Assessment, runbook_flow, step
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction

STATE = Path({state!r})

SPEC = RunbookSpec(
    name="toy-runbook",
    title="Toy runbook",
    alertnames=("ToyAlert",),
    severity="warning",
    seeds=("The toy's own runbook: check the state file, fix it, check again",),
    verify=VerifySpec(budget_seconds=20, interval_seconds=1),
    approval_timeout_seconds=60,
    mitigations=("drill_step",),  # risky: the registry says so
)


class Limits(Thresholds):
    healthy_word: str = seed("good", "the toy's state file says this word when it is healthy")


def toy_state(healthy_word: str) -> ProbeResult:
    text = STATE.read_text().strip()
    return ProbeResult(probe="toy_state", ok=text == healthy_word, summary=f"the toy says {{text}}")


check_toy_state = step("check-toy-state", toy_state)


def assess(runbook: Runbook, alert: Alert) -> Assessment:
    limits = runbook.limits(Limits, alert.alertname)
    state = check_toy_state(limits.healthy_word)
    plans = [] if state.ok else [PlannedAction(action="drill_step", target="toy", params={{"name": "toy"}},
                                               why=state.summary)]  # risky: the registry says so
    return Assessment(evidence=[state], plans=plans, verify=lambda: check_toy_state(limits.healthy_word))


toy_runbook = runbook_flow(SPEC, assess, Limits, "The toy's runbook: check its state file, ask, verify.")
'''


def test_a_toy_runbook_added_as_the_readme_says_answers_a_real_alert(prefect_server, tmp_path):
    state = tmp_path / "toy-state"
    state.write_text("good")  # the module's default word, but this installation says "fine"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "toy_runbook.py").write_text(textwrap.dedent(TOY_MODULE.format(state=str(state))))

    config = make_config(tmp_path)
    (config / "runbooks" / "toy.yaml").write_text(yaml.safe_dump({"runbooks": [{
        "name": "toy-runbook", "module": "toy_runbook",  # an installation's own runbook: where it is declared
        "thresholds": {"healthy_word": "fine"},  # this installation's word, checked against the module's Limits
    }]}))

    with running_responder(tmp_path, prefect_server.api_url, config, PYTHONPATH=str(modules)) as responder:
        fingerprint = uuid.uuid4().hex[:16]
        labels = {"alertname": "ToyAlert", "severity": "warning", "instance": "app-1:9100"}
        incident_id = fire(responder, {
            "version": "4", "groupKey": f"toy:{fingerprint}", "status": "firing", "receiver": "responder",
            "groupLabels": {}, "commonLabels": labels, "commonAnnotations": {}, "externalURL": "",
            "alerts": [{"status": "firing", "labels": labels, "annotations": {"summary": "the toy is bad"},
                        "startsAt": "2026-12-06T09:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                        "fingerprint": fingerprint}],
        })
        run = paused_run(prefect_server.api_url, incident_id)  # its risky step waits like any runbook's
        assert run["name"] == f"ToyAlert {fingerprint}"
        state.write_text("fine")  # the fix (what the approved step would do)
        answer(prefect_server.api_url, run, True, "toy-owner")
        final = wait_run_final(prefect_server.api_url, incident_id)
    assert final["state"]["name"] == "Resolved", final["state"]
    text = report(prefect_server.api_url, incident_id)
    assert "# Toy runbook: VERIFIED" in text and "toy-owner" in text and "| verify: toy_state | yes |" in text
