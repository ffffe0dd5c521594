"""ResponderDrill: a fire drill of the whole lifecycle that touches nothing.

Fire it with ``responder drill`` (or an Alertmanager alert named ``ResponderDrill``). It
acknowledges, assesses (the evidence says it is a drill), asks approval for a risky no-op step,
passes verification only once that step was approved and run, and otherwise escalates, so the
escalation policy, Slack set-up and approval paths can be rehearsed for real.
"""

from __future__ import annotations

from core.results import resumable

from flows.lifecycle import acknowledge, conclude, held, mitigate, runbook_composition, runtime, verify_until_ok
from core.alerts import Alert, IncidentRef
from core.catalog import RunbookSpec, Thresholds, VerifySpec
from tasks.base import ActionOutcome, ProbeResult
from tasks.mitigations import PlannedAction


SPEC = RunbookSpec(
    name="responder-drill",
    title="Responder fire drill",
    alertnames=(
        "ResponderDrill",
    ),
    severity="warning",
    seeds=(
        "000 General Alert Response Workflow: acknowledge, assess, mitigate, verify, close or escalate",
        "001 Escalation: levels at 0-15, 15-30, 30+ minutes",
    ),
    verify=VerifySpec(budget_seconds=5, interval_seconds=1),
    approval_timeout_seconds=300,
    mitigations=(
        "drill_step",  # risky
    ),
    left_to_humans=(
        "Answer the approval (UI Resume form, `responder approve RUN`, or Slack) and acknowledge the pages",
    ),
)

RUNBOOK = "responder-drill"


class Limits(Thresholds):
    """None: a drill measures nothing, so an entry's ``thresholds:`` override is an error."""


@resumable(name="assess-drill")
def assess_drill(alert: Alert) -> ProbeResult:
    return ProbeResult(probe="drill", ok=False, summary="this is a drill: nothing is wrong, nothing will be touched",
                       evidence={"labels": alert.labels, "drill": True})


@resumable(name="plan-drill-step")
def plan_drill_step(alert: Alert) -> list[PlannedAction]:
    # Each drill has its own target (so repeated drills are not taken for a loop) unless the alert
    # names one with a `target` label: then the loop guard can be rehearsed too.
    target = alert.labels.get("target") or f"drill {alert.labels.get('drill_id') or alert.fingerprint}"
    return [PlannedAction(action="drill_step", target=target, params={"name": target},
                          why="a drill asks for approval like a real risky step does")]


def drill_verified(outcomes: list[ActionOutcome]) -> ProbeResult:
    done = any(o.action == "drill_step" and o.status in ("done", "would_do") for o in outcomes)
    return ProbeResult(probe="drill-verify", ok=done,
                       summary="the drill step was approved and run" if done else "the drill step did not run")


@runbook_composition(SPEC, Limits)
def responder_drill(alert: Alert, incident: IncidentRef | None = None):
    _, catalog, _ = runtime()
    runbook = catalog.get(RUNBOOK)
    incident = acknowledge(RUNBOOK, alert, incident)
    if incident is None:
        return "duplicate"
    evidence = [assess_drill(alert)]
    outcomes = mitigate(runbook, incident, plan_drill_step(alert), evidence, alert)
    if held(outcomes):
        return conclude(runbook, alert, incident, evidence, outcomes, "held", None)
    last, verdict = verify_until_ok(lambda: drill_verified(outcomes), incident, runbook)
    return conclude(runbook, alert, incident, evidence, outcomes, verdict, last)
