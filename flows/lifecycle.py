"""The response lifecycle every runbook shares: acknowledge → assess → mitigate → verify → close or escalate.

A runbook flow supplies what is specific (its probes, its plan, its verification)
and calls these steps; approval pauses, the loop guard, dry runs, incident state,
escalation and the run's report artifact live here once.

Approval: a risky action suspends the run with an :class:`Approval` form (Prefect UI
"Resume", or ``POST /api/flow_runs/{id}/resume`` with ``{"run_input": {...}}``). While it
waits it holds no thread, slot or server request; the answer schedules the run again and it
carries on from its kept step results (``core/results.py``). At the approval deadline (kept
in the store) the responder answers the form itself with ``approve: false`` (Prefect's own
timeout would leave the run Failed), so the action does not run and the incident escalates.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from prefect import Task, flow, get_run_logger, task
import prefect.runtime as prefect_runtime
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.settings import PREFECT_UI_URL
from prefect.states import Completed, State
from pydantic import Field, ValidationError

from core.alerts import Alert, IncidentRef
from core import metrics
from core.catalog import Catalog, Runbook, RunbookSpec, Thresholds
from core.collected import LEAD, Collected, chart_markdown, chart_svg, collect, keep, section
from core.maintenance import covering, in_force
from core.notify import Notifier
from core.results import RESULTS_BLOCK, resumable
from core.services import current
from core.settings import ResponderSettings
from core.store import Store
from tasks.base import ActionOutcome, ErrorCode, ProbeResult, ResponderError, Risk
from tasks.mitigations import REGISTRY, PlannedAction

log = logging.getLogger("responder.lifecycle")

LOOP_GUARD_LIMIT = 3
LOOP_GUARD_WINDOW = timedelta(hours=1)


def runtime() -> tuple[ResponderSettings, Catalog, Store]:
    """Settings, catalog and store of the services bound to this run (see :mod:`core.services`)."""
    services = current()
    return services.settings, services.catalog, services.store


def notifier() -> Notifier:
    return current().notifier


def run_url(flow_run_id: str) -> str:
    base = (PREFECT_UI_URL.value() or "").rstrip("/")
    return f"{base}/runs/flow-run/{flow_run_id}" if base else flow_run_id


def current_flow_run_id() -> str:
    return str(prefect_runtime.flow_run.id)


class Approval(RunInput):
    """The form a human fills in to let a risky action run."""

    approve: bool = Field(default=False, description="Tick to let the responder run the action described above.")
    reason: str = Field(default="", description="Why (recorded in the incident timeline).")
    approver: str = Field(default="", description="Who you are (recorded as not verified: the Prefect UI has no login).")
    verification: str = Field(default="", description="Leave empty: the responder fills it in for answers it "
                                                      "verified (a personal token, a signed Slack request).")


def response_failed(flow: Any, flow_run: Any, state: State) -> None:
    """A response that broke must not leave its incident open and silent: escalate and close it.

    Closing lets the next firing open a fresh incident (and a fresh run) instead of joining
    a dead one.
    """
    _, catalog, store = runtime()
    incident = store.incident_by_run(str(flow_run.id))
    if incident is None or incident.status != "open":
        return
    reason = f"the response run {flow_run.name} ended {state.name}: {state.message or ''}".strip()
    store.record_event(incident.id, "escalated", {"reason": reason})
    store.add_timeline(incident.id, "escalated", reason)
    notifier().send(incident, "escalated", f":warning: *Escalated*: {reason}", details={"reason": reason})
    store.close_incident(incident.id, "response-failed")


RUN_NAME = "{alert.labels[alertname]} {alert.fingerprint}"


def runbook_flow(spec: RunbookSpec, assess: Callable[[Runbook, Alert], "Assessment"],
                 thresholds: type[Thresholds] = Thresholds, doc: str = "") -> Any:
    """A runbook's Prefect flow, built from its spec: the shared response (:func:`respond`) with the
    runbook's own ``assess``, named after the runbook (flow, deployment, task graph).

    ``spec`` is the runbook's :class:`core.catalog.RunbookSpec` (alert names, severity, seeds,
    verification, mitigations) and ``thresholds`` its typed model (:class:`core.catalog.Thresholds`);
    ``responder up`` checks the installation's overrides against both before anything starts. The flow
    belongs to the runbook's module (its deployment's entrypoint is ``flows/<module>.py:<name_with_underscores>``)::

        disk_space = runbook_flow(SPEC, assess, Limits, "Respond to a full disk the way seeds 000-002 say to.")
    """
    name = spec.name
    def respond_to(alert: Alert, incident: IncidentRef | None = None):
        return run(name, alert, incident, assess)

    run = respond
    module = sys.modules[assess.__module__]
    # The same code, with the runbook module as its home: Prefect takes the entrypoint from there.
    fn = types.FunctionType(respond_to.__code__, vars(module), name.replace("-", "_"), respond_to.__defaults__,
                            respond_to.__closure__)
    fn.__qualname__, fn.__module__, fn.__doc__ = fn.__name__, module.__name__, doc
    fn.__annotations__ = {"alert": Alert, "incident": Optional[IncidentRef]}
    return runbook_composition(spec, thresholds)(fn)


def runbook_composition(spec: RunbookSpec, thresholds: type[Thresholds] = Thresholds) -> Callable[[Callable[..., Any]], Any]:
    """``@flow`` for a runbook that composes the lifecycle's steps itself instead of :func:`respond`
    (the drill verifies on its own outcomes; service health measures before it acknowledges)."""
    as_flow = flow(name=spec.name, flow_run_name=RUN_NAME, on_failure=[response_failed], on_crashed=[response_failed],
                   validate_parameters=True, persist_result=True, result_storage=RESULTS_BLOCK)

    def decorate(fn: Callable[..., Any]) -> Any:
        made = as_flow(fn)
        made.spec, made.thresholds_model = spec, thresholds
        return made

    return decorate


def publish_timeline(incident_id: str) -> None:
    """The incident's timeline as a table artifact (a new version each time: the UI shows the latest).

    Written at the phase boundaries only (acknowledged, waiting on people, concluded): each version
    is a full copy and several events on the server; the store has every entry as it happens."""
    _, _, store = runtime()
    create_table_artifact(store.timeline(incident_id), key=f"timeline-{incident_id.lower()}",
                          description="Incident timeline (updated as the response goes)")


# -- a seed's step ----------------------------------------------------------------


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: everything but a ``ResponderError`` (configuration, refusal) is retried."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - the failure we are classifying
        error = exc
    return not isinstance(error, ResponderError)


def step(name: str, probe: Callable[..., ProbeResult], retries: int = 2,
         retry_delay_seconds: float = 1) -> Task[..., ProbeResult]:
    """A seed's step as a Prefect task named as the seed names it: the probe itself, with the probe's
    own parameters, retried unless it failed with a ``ResponderError``::

        check_lock_waits = step("check-lock-waits", postgres.lock_waits, retry_delay_seconds=2)
        check_lock_waits(dsn)
    """
    return resumable(probe, name=name, retries=retries, retry_delay_seconds=retry_delay_seconds,
                retry_condition_fn=transient)


# -- acknowledge ------------------------------------------------------------------


@resumable(name="acknowledge", retries=3, retry_delay_seconds=1)
def acknowledge(runbook_name: str, alert: Alert, incident: IncidentRef | None) -> IncidentRef | None:
    """Claim the incident for this run. Returns None when another run already responds to it."""
    _, catalog, store = runtime()
    run_id = current_flow_run_id()
    if incident is None:
        runbook = catalog.get(runbook_name)
        opened = store.open_manual_incident(runbook.name, alert.labels.get("severity") or runbook.severity, alert.summary, run_id)
        incident = IncidentRef(id=opened.id, runbook=opened.runbook, group_key=opened.group_key, severity=opened.severity)
    logger = get_run_logger()
    text = (f":fire: *{alert.alertname}* on `{alert.instance or '?'}` ({incident.severity}): {alert.summary}\n"
            f"Runbook `{runbook_name}` is responding: {run_url(run_id)}")
    before = store.incident(incident.id)
    assert before is not None, f"incident {incident.id} is not in the store"
    # The claim, its timeline lines and the "opened" messages are one transaction, written once: an
    # execution killed after it (and run again) finds the incident already its own and tells nobody twice.
    claim, record = store.respond(incident.id, run_id, [
        ("detected", f"{alert.alertname} on {alert.instance or '?'} fired at {alert.startsAt.isoformat()}"),
        ("response", f"runbook {runbook_name} started (run {run_id})"),
    ], notifier().messages(before, "opened", text, details={"alert": alert.model_dump(mode="json")},
                           pagerduty="trigger" if incident.severity == "critical" else None))
    if claim == "taken":
        logger.warning("Incident %s is already handled by run %s; this run stops here", incident.id, record.flow_run_id)
        return None
    logger.info("Acknowledged %s on %s (%s): %s%s", alert.alertname, alert.instance or "?", incident.severity,
                alert.summary, "" if claim == "claimed" else " (claimed by this run before it was restarted)")
    publish_timeline(incident.id)
    return incident


# -- mitigate ---------------------------------------------------------------------


def clock(moment: datetime) -> str:
    """A deadline as people read it: the UTC clock time, with the date when it is not today."""
    moment = moment.astimezone(timezone.utc)
    today = datetime.now(timezone.utc).date()
    return f"{moment:%H:%M:%S} UTC" if moment.date() == today else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _approval_description(plan: PlannedAction, runbook: Runbook, evidence: list[ProbeResult],
                          because: str | None = None, deadline: str | None = None) -> str:
    lines = [
        f"## Approve: {plan.action} on {plan.target}",
        "",
        *([f"**Asked because the {because}.** Approving runs it anyway.", ""] if because else []),
        *([f"**Answer by {clock(datetime.fromisoformat(deadline))}**: no answer by then counts as no.", ""]
          if deadline else []),
        f"**Runbook:** {runbook.title}  ",
        f"**Risk:** {plan.risk.value}  ",
        f"**What will be done:** `{plan.action}` with {json.dumps(plan.params)}  ",
        f"**Why:** {plan.why}",
        "",
        "### Evidence",
        "",
    ]
    lines += [f"- {result.line()}" for result in evidence]
    lines += ["", "Tick **approve** and press Resume to run it; leave it unticked to reject."]
    return "\n".join(lines)


def current_incident_id() -> str | None:
    """The incident this run claimed in ``acknowledge`` (the store records the claim)."""
    incident = runtime()[2].incident_by_run(current_flow_run_id())
    return incident.id if incident is not None else None


def next_question(plan: PlannedAction) -> str:
    """The key of the run's next question: its position among the questions of this execution, so it
    is the same each time the run reaches it (the run starts again from the top after the answer, and
    finds the answer under this key). Prefect allows [a-z0-9-] only."""
    counters = FlowRunContext.get().task_run_dynamic_keys  # per execution; our entries are prefixed
    position = int(counters.get("responder:questions", -1)) + 1
    counters["responder:questions"] = position
    return f"approve-{position}-{plan.action.replace('_', '-')}"


@resumable(name="ask-approval", retries=2, retry_delay_seconds=1)
def announce_approval(plan: PlannedAction, key: str, deadline_seconds: float, because: str | None = None,
                      deadline_of: str | None = None) -> str:
    """Say who must answer what by when (timeline, Slack, webhooks), and keep the deadline in the store,
    where the responder's clock answers "no" when it passes. Returns the deadline (ISO 8601).
    ``deadline_of``: asked again (an answer was refused), with that question's deadline."""
    flow_run_id = current_flow_run_id()
    _, _, store = runtime()
    deadline = store.approval_deadline(flow_run_id, deadline_of) if deadline_of else None
    deadline = deadline or datetime.now(timezone.utc) + timedelta(seconds=max(1.0, deadline_seconds))
    incident_id = current_incident_id()
    store.approval_asked(flow_run_id, key, incident_id, deadline)
    if incident_id:
        record = store.incident(incident_id)
        text = (f":raised_hand: *Approval needed* by {deadline:%H:%M:%S} UTC: `{plan.action}` on {plan.target}. "
                f"{f'Asked because the {because}. ' if because else ''}"
                f"Why: {plan.why}. Approve in Slack, in the Prefect UI ({run_url(flow_run_id)}) or with "
                f"`responder approve {flow_run_id}`.")
        store.add_timeline(incident_id, "approval-asked", f"{plan.action} on {plan.target}: {plan.why}"
                           + (f" (asked because the {because})" if because else ""))
        store.set_note(incident_id, "waiting_on", f"approval of {plan.action} on {plan.target} (run {flow_run_id})")
        if record is not None:
            notifier().send(record, "approval-asked", text,
                            details={"flow_run_id": flow_run_id, "plan": plan.model_dump(mode="json"),
                                     "deadline": deadline.isoformat()})
        publish_timeline(incident_id)  # a phase boundary: the response now waits on people
    return deadline.isoformat()


def ask_approval(plan: PlannedAction, runbook: Runbook, evidence: list[ProbeResult], deadline_seconds: float,
                 key: str, because: str | None = None, deadline_of: str | None = None) -> Approval:
    """Suspend the run until a human answers the :class:`Approval` form; the answer comes back here.

    While it waits the run holds nothing: no thread, no executor slot, no request to the server
    (``suspend_flow_run``). The answer makes Prefect schedule the run again; it runs from the top,
    its earlier steps return their kept results (``core/results.py``), and this call returns the
    answer. At the deadline the responder answers "no" itself (``responder/clock.py``).
    """
    deadline = announce_approval(plan, key, deadline_seconds, because, deadline_of)
    return suspend_flow_run(
        wait_for_input=Approval.with_initial_data(
            description=_approval_description(plan, runbook, evidence, because, deadline)),
        key=key, timeout=None,
    )


def held_by_window(plan: PlannedAction, incident: IncidentRef | None, runbook: str, labels: dict[str, str],
                   dry_run: bool) -> ActionOutcome | None:
    """The outcome "held" when a maintenance window covers the alert (recorded with the window, so the
    incident gets a fresh response when the window is over); None otherwise."""
    _, catalog, store = runtime()
    window = covering(in_force(store, catalog), runbook, labels)
    if window is None:
        return None
    if incident is not None:
        store.hold(window.id, window.ends, incident.id)
    outcome = ActionOutcome(action=plan.action, target=plan.target, risk=plan.risk, dry_run=dry_run,
                            status="held", detail=f"held by {window.line()}; set by {window.by}")
    _record_outcome(incident, outcome)
    return outcome


@resumable(name="check-approver")
def check_approver(plan: PlannedAction, runbook: str, answer: Approval, question: str,
                   earlier: list[str] | None = None) -> tuple[str, str | None]:
    """Who answered, and why the answer cannot approve (None: it can). Checked here, in the response,
    against the store, whichever way the answer came (the responder's CLI and Slack paths record the
    answers they verified; the Prefect UI's form and any other call to Prefect's resume API are "not
    verified"). A "no" is always honoured: refusing to act needs no rights."""
    settings, catalog, store = runtime()
    verified = store.verified_answer(current_flow_run_id(), question, answer.verification) if answer.verification else None
    who = f"{verified[0]} ({verified[1]})" if verified else f"{answer.approver or 'someone'} (not verified)"
    allowed = catalog.policy.approvers.allowed_for(runbook, plan.risk)
    if not answer.approve:
        return who, None
    if who in (earlier or []):
        refusal = f"answer of {who} refused: {who} already approved {plan.action}; a second, different person must"
    elif allowed is None:
        return who, None
    elif verified is None:
        refusal = (f"answer of {who} refused: approving {plan.action} in {runbook} needs a verified answer "
                   f"(`responder approve` with a personal token, or Slack) of {', '.join(allowed)}")
    elif verified[0] not in allowed:
        refusal = f"answer of {who} refused: {verified[0]} may not approve {plan.action} in {runbook} (allowed: {', '.join(allowed)})"
    else:
        return who, None
    store.approval_settled(current_flow_run_id(), question, "refused")
    incident_id = current_incident_id()
    if incident_id:
        store.add_timeline(incident_id, "approval-refused", refusal, actor=who)
        record = store.incident(incident_id)
        if record is not None:
            notifier().send(record, "approval-refused", f":no_entry: {refusal}. Asked again, same deadline.",
                            details={"flow_run_id": current_flow_run_id(), "who": who})
    get_run_logger().warning(refusal)
    return who, refusal


def ask_until_allowed(plan: PlannedAction, runbook: Runbook, evidence: list[ProbeResult], deadline: float,
                      because: str | None = None) -> tuple[Approval, str]:
    """Ask; an answer that may not approve lets nothing run and the question is asked again, with the
    first question's deadline. Returns the answer that counts (its approver the checked name) and its key."""
    spec = next((m for m in runbook.mitigations if m.name == plan.action), None)
    needed = 2 if spec is not None and spec.needs == "two" else 1
    first = question = next_question(plan)
    answer = ask_approval(plan, runbook, evidence, deadline, question, because)
    approvers: list[str] = []
    while True:
        who, refusal = check_approver(plan, runbook.name, answer, question, approvers)
        if refusal is None:
            if not answer.approve:  # a "no" from anyone ends it
                return answer.model_copy(update={"approver": who}), question
            approvers.append(who)
            if len(approvers) >= needed:
                return answer.model_copy(update={"approver": " and ".join(approvers)}), question
            refusal = f"{plan.action} needs two approvers: {who} approved, a second, different person must too"
        question = next_question(plan)
        answer = ask_approval(plan, runbook, evidence, deadline, question, because=refusal, deadline_of=first)


@resumable(name="check-loop-guard")
def check_guards(plan: PlannedAction, incident: IncidentRef | None, dry_run: bool, runbook: str = "",
                 labels: dict[str, str] | None = None) -> ActionOutcome | None:
    """Before acting or asking: is the incident already over, does a maintenance window hold it, or was
    this done too often on this target? None means go on. Kept as a step, so a run carried on after an
    answer decides as it did."""
    _, _, store = runtime()
    base = dict(action=plan.action, target=plan.target, risk=plan.risk, dry_run=dry_run)
    if incident is not None:  # the audit trail's "action planned" (once: this step's result is kept)
        store.add_timeline(incident.id, "planned", f"{plan.action} on {plan.target} ({plan.risk.value}"
                           f"{', dry run' if dry_run else ''}): {plan.why}")
    if incident is not None and store.incident_status(incident.id) == "closed":
        return ActionOutcome(**base, status="not_needed", detail="the incident closed (alert resolved)")
    if (held := held_by_window(plan, incident, runbook, labels or {}, dry_run)) is not None:
        return held
    since = datetime.now(timezone.utc) - LOOP_GUARD_WINDOW
    if not dry_run and store.actions_since(plan.guard_key, since) >= LOOP_GUARD_LIMIT:
        outcome = ActionOutcome(
            **base, status="loop_guarded",
            detail=f"already done {LOOP_GUARD_LIMIT} times in the last hour on this target: a loop is suspected",
        )
        _record_outcome(incident, outcome)
        return outcome
    return None


@resumable(name="run-mitigation")
def run_mitigation(plan: PlannedAction, dry_run: bool, incident: IncidentRef | None = None,
                   answer: Approval | None = None, question: str | None = None, runbook: str = "",
                   labels: dict[str, str] | None = None, limit_named: bool = False) -> ActionOutcome:
    """Record the human's answer (if one was asked), then run the planned action once.

    No retries: actions re-check and report, and a rollback must not run twice. Kept as a step, so a
    run carried on after a later answer does not run it again; claimed in the store per incident,
    action and target, so a run taken over after its responder died half-way does not either.

    Right before acting it looks again for a maintenance window (one started while the question
    waited holds the action), and claims a place within the action's blast radius
    (``config/policy.yaml``): beyond the limit it returns ``awaiting_approval`` with the limit named,
    and :func:`mitigate` asks a human (``limit_named``: this answer was given to that question).
    """
    settings, catalog, store = runtime()
    logger = get_run_logger()
    base = dict(action=plan.action, target=plan.target, risk=plan.risk, dry_run=dry_run)
    who = ""
    if answer is not None:
        who = answer.approver or "someone"
        if question:
            store.approval_settled(current_flow_run_id(), question, "approved" if answer.approve else "rejected")
        if incident is not None:
            store.set_note(incident.id, "waiting_on", "")
            store.add_timeline(incident.id, "approved" if answer.approve else "rejected",
                               f"{plan.action} on {plan.target}: {answer.reason or '(no reason given)'}", actor=who)
            if store.incident_status(incident.id) == "closed":
                return ActionOutcome(**base, status="not_needed", detail=f"the incident closed: {answer.reason}")
        if not answer.approve:
            outcome = ActionOutcome(**base, status="rejected", detail=f"rejected by {who}: {answer.reason}")
            store.record_action(plan.guard_key, incident.id if incident else None, "rejected")
            _record_outcome(incident, outcome)
            return outcome
        logger.info("Approved by %s: %s", who, answer.reason or "(no reason given)")
    if (held := held_by_window(plan, incident, runbook, labels or {}, dry_run)) is not None:
        return held
    claim = f"{incident.id if incident else current_flow_run_id()}:{plan.guard_key}"
    radius = catalog.policy.blast_radius.get(plan.action)
    limit = None
    if radius is not None and not limit_named:
        window = timedelta(minutes=radius.per_minutes * settings.time_scale)
        limit = (radius.max, datetime.now(timezone.utc) - window)
    earlier = None if dry_run else store.claim_action(claim, current_flow_run_id(), plan.action, limit)
    if earlier is not None and "over_limit" in earlier:
        return ActionOutcome(**base, status="awaiting_approval", detail=(
            f"blast-radius limit of {plan.action} is reached: {earlier['over_limit']} run(s) across all targets "
            f"in the last {radius.per_minutes:g} min, at most {radius.max} without a person's approval"))
    if earlier is not None:
        # Once per incident, action and target, also when the responder that ran it died half-way.
        if earlier["status"] is None:
            outcome = ActionOutcome(**base, status="failed", detail=(
                f"a responder stopped while running it (run {earlier['flow_run_id']}, {earlier['claimed_at']}): "
                "not run again; check the target by hand"))
        else:
            outcome = ActionOutcome(**base, status="not_needed", detail=(
                f"already {earlier['status']} for this incident (run {earlier['flow_run_id']}): not run twice"))
        _record_outcome(incident, outcome)
        return outcome
    kwargs = dict(plan.params)
    try:
        if plan.target_ref is not None:
            kind, name = plan.target_ref
            entry = getattr(catalog.targets, kind).get(name)
            if entry is None or entry.url is None:
                raise ResponderError(ErrorCode.CONFIG, f"{kind} target {name!r} has no URL configured")
            kwargs["dsn" if kind == "postgres" else "url"] = entry.url
        outcome = REGISTRY[plan.action].act(**kwargs, dry_run=dry_run)
    except Exception as error:  # reported, never retried: a half-done action must not run twice
        detail = error.message if isinstance(error, ResponderError) else f"{type(error).__name__}: {error}"
        logger.error("%s on %s failed: %s", plan.action, plan.target, detail)
        outcome = ActionOutcome(**base, status="failed", detail=detail[:500])
    if who:
        outcome.detail = f"{outcome.detail} (approved by {who})"
    if not dry_run:
        store.finish_action(claim, outcome.status)
    store.record_action(plan.guard_key, incident.id if incident else None, outcome.status)
    _record_outcome(incident, outcome)
    return outcome


def mitigate(
    runbook: Runbook, incident: IncidentRef | None, plans: list[PlannedAction], evidence: list[ProbeResult],
    alert: Alert | None = None,
) -> list[ActionOutcome]:
    """Run each planned action: safe ones at once, risky ones after approval; guarded against loops,
    held by maintenance windows that cover ``alert``, and asked about beyond the action's blast radius.

    ``incident`` (and ``alert``) is None for a scheduled runbook: the same rules apply, and what
    happened is in the run's report instead of an incident's timeline.
    """
    settings, _, _ = runtime()
    dry_run = settings.dry_run or runbook.dry_run
    deadline = runbook.approval_timeout_seconds * settings.time_scale
    labels = dict(alert.labels) if alert is not None else {}
    outcomes: list[ActionOutcome] = []
    for plan in plans:
        held = check_guards(plan, incident, dry_run, runbook.name, labels)
        if held is not None:
            outcomes.append(held)
            continue
        answer = question = None
        if plan.risk is Risk.RISKY and not dry_run:
            answer, question = ask_until_allowed(plan, runbook, evidence, deadline)
        outcome = run_mitigation(plan, dry_run, incident, answer, question, runbook.name, labels)
        if outcome.status == "awaiting_approval":  # over its blast radius: a person decides, even for a safe action
            answer, question = ask_until_allowed(plan, runbook, evidence, deadline, because=outcome.detail)
            outcome = run_mitigation(plan, dry_run, incident, answer, question, runbook.name, labels, limit_named=True)
        outcomes.append(outcome)
    return outcomes


def held(outcomes: list[ActionOutcome]) -> bool:
    """Whether a maintenance window held an action: the response ends *HeldForMaintenance* (see conclude)."""
    return any(outcome.status == "held" for outcome in outcomes)


def _record_outcome(incident: IncidentRef | None, outcome: ActionOutcome) -> None:
    metrics.ACTIONS.labels(outcome.status).inc()
    if incident is None:
        return
    _, _, store = runtime()
    text = f"{outcome.action} on {outcome.target}: {outcome.status}{' (dry run)' if outcome.dry_run else ''} — {outcome.detail}"
    store.add_timeline(incident.id, "action", text)
    record = store.incident(incident.id)
    if record is not None:
        notifier().send(record, "action", f":hammer_and_wrench: {text}", details={"outcome": outcome.model_dump(mode="json")})


# -- verify -----------------------------------------------------------------------


PROGRESS_EVERY_SECONDS = 5.0


class WindowProgress:
    """A wait shown in the Prefect UI as a progress artifact (the run's Artifacts tab), so a verification
    that watches for minutes does not look stuck. Updated at most every :data:`PROGRESS_EVERY_SECONDS`:
    each update is a request to the server. Showing progress never fails the response."""

    def __init__(self, key: str, budget_seconds: float, what: str) -> None:
        self.key, self.budget, self.what = key, max(budget_seconds, 1e-9), what
        self.started = self.shown_at = time.monotonic()
        self.artifact_id: Any = self._call(
            lambda: create_progress_artifact(0.0, key=key, description=f"{what}: up to {self.budget:.0f} s"))

    def _call(self, request: Callable[[], Any]) -> Any:
        try:
            return request()
        except Exception as exc:  # noqa: BLE001 - a progress bar is never worth a failed response
            log.warning("Progress artifact %s not updated: %s: %s", self.key, type(exc).__name__, exc)
            return None

    def tick(self) -> None:
        """Show the elapsed share of the budget, unless it was shown less than a few seconds ago."""
        now = time.monotonic()
        if self.artifact_id is None or now - self.shown_at < PROGRESS_EVERY_SECONDS:
            return
        self.shown_at = now
        share = min(99.0, 100.0 * (now - self.started) / self.budget)
        self._call(lambda: update_progress_artifact(self.artifact_id, share))

    def done(self, outcome: str) -> None:
        if self.artifact_id is not None:
            elapsed = time.monotonic() - self.started
            self._call(lambda: update_progress_artifact(self.artifact_id, 100.0,
                                                        description=f"{self.what}: {outcome} after {elapsed:.0f} s"))

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, showing progress on the way."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(left, PROGRESS_EVERY_SECONDS))
            self.tick()


def verify_until_ok(
    measure: Callable[[], ProbeResult], incident: IncidentRef, runbook: Runbook
) -> tuple[ProbeResult | None, str]:
    """Measure again until healthy, the incident closes, or the runbook's verification budget runs out.

    Budget and interval are the runbook's ``verify`` (times ``RESPONDER_TIME_SCALE``). Returns the
    last result and a verdict: ``verified``, ``resolved-by-alert`` or ``not-verified``. The window
    shows as a progress artifact (``verify-<incident>``) while it lasts.
    """
    settings, _, store = runtime()
    budget_seconds = runbook.verify.budget_seconds * settings.time_scale
    interval_seconds = runbook.verify.interval_seconds * settings.time_scale
    deadline = time.monotonic() + budget_seconds
    progress = WindowProgress(f"verify-{incident.id.lower()}", budget_seconds, "Verification window")
    result = None
    while True:
        result = measure()
        if result.ok:
            progress.done("verified")
            return result, "verified"
        if store.incident_status(incident.id) == "closed":
            progress.done("the incident closed (alert resolved)")
            return result, "resolved-by-alert"
        if time.monotonic() + interval_seconds > deadline:
            progress.done("not verified")
            return result, "not-verified"
        progress.sleep(interval_seconds)


# -- close or escalate ------------------------------------------------------------


def telling_findings(evidence: list[ProbeResult], n: int = 3) -> list[ProbeResult]:
    """What a person should read first: failing figures furthest past their threshold, then other
    failures (not measured), then the healthy figures closest to their threshold."""
    def rank(r: ProbeResult) -> tuple[int, float]:
        if r.value is not None and r.threshold:
            distance = abs(r.value - r.threshold) / abs(r.threshold)
            return (0, -distance) if not r.ok else (2, -(r.value / r.threshold))
        return (1, 0.0) if not r.ok else (3, 0.0)
    candidates = [r for r in evidence if r.probe != "host" or not r.ok]
    return sorted(candidates, key=rank)[:n]


# Evidence lists shown as tables in the report (who holds connections, process groups of another machine).
TABLES = (("groups", "who holds the connections"), ("idle_in_transaction", "idle in a transaction"),
          ("process_groups", "process groups"))


def _table(rows: list[dict[str, Any]], limit: int = 20) -> list[str]:
    columns = list(rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value[:10]) + (", …" if len(value) > 10 else "")
        elif isinstance(value, float):
            value = f"{value:g}"
        return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")[:120]
    return [f"| {' | '.join(columns)} |", f"|{' --- |' * len(columns)}",
            *[f"| {' | '.join(cell(row.get(c)) for c in columns)} |" for row in rows[:limit]]]


def _report(
    runbook: Runbook, alert: Alert, incident: IncidentRef, verdict: str, evidence: list[ProbeResult],
    outcomes: list[ActionOutcome], extra: str = "", around: str = "",
) -> str:
    lines = [
        f"# {runbook.title}: {verdict.upper()}",
        "",
        *[f"{i}. {r.line()}" for i, r in enumerate(telling_findings(evidence), 1)],
        "",
        f"**Alert:** `{alert.alertname}` on `{alert.instance or '?'}` ({incident.severity}) — {alert.summary}  ",
        f"**Incident:** `{incident.id}`  ",
        f"**Seeds:** {'; '.join(runbook.seeds)}",
        "",
        *(["## Around the incident", "", around, ""] if around else []),
        "## Assessment",
        "",
        "| probe | ok | value | threshold | summary |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in evidence:
        value = "" if r.value is None else f"{r.value:g}{r.unit}"
        threshold = "" if r.threshold is None else f"{r.threshold:g}{r.unit}"
        lines.append(f"| {r.probe} | {'yes' if r.ok else '**no**'} | {value} | {threshold} | {r.summary} |")
    for r in evidence:
        for key, title in TABLES:
            rows = r.evidence.get(key)
            if rows and isinstance(rows, list) and isinstance(rows[0], dict):
                lines += ["", f"### {r.probe}: {title}", "", *_table(rows)]
        processes = r.evidence.get("processes") if isinstance(r.evidence, dict) else None
        if processes:
            lines += ["", f"### {r.probe}", "", "| pid | name | user | cpu % | mem % | command |", "| --- | --- | --- | --- | --- | --- |"]
            for p in processes:
                command = (p.get("cmdline") or "").replace("|", "\\|")[:80]
                lines.append(
                    f"| {p['pid']} | {p.get('name')} | {p.get('username')} | {p.get('cpu_percent')} | "
                    f"{p.get('memory_percent')} | `{command}` |"
                )
    lines += ["", "## Actions", ""]
    if outcomes:
        lines += ["| action | target | risk | status | detail |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {o.action} | {o.target} | {o.risk.value} | {o.status} | {o.detail} |" for o in outcomes]
    else:
        lines.append("No automated action was needed or configured.")
    if runbook.left_to_humans:
        lines += ["", "## Left to humans", ""] + [f"- {item}" for item in runbook.left_to_humans]
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


@resumable(name="escalate")
def escalate(runbook: Runbook, alert: Alert, incident: IncidentRef, reason: str, outcomes: list[ActionOutcome]) -> None:
    """Tell people the responder could not fix it (the notification outbox delivers it, however long
    a channel is down)."""
    _, _, store = runtime()
    logger = get_run_logger()
    store.record_event(incident.id, "escalated", {"reason": reason})
    store.add_timeline(incident.id, "escalated", reason)
    record = store.incident(incident.id)
    text = (f":warning: *Escalated*: {runbook.title} could not resolve `{alert.alertname}` on "
            f"`{alert.instance or '?'}`: {reason}. Pages follow the escalation policy until acknowledged.")
    if record:
        notifier().send(record, "escalated", text, details={
            "runbook": runbook.name, "alertname": alert.alertname, "instance": alert.instance,
            "summary": alert.summary, "reason": reason, "actions": [o.model_dump(mode="json") for o in outcomes],
            "flow_run_id": current_flow_run_id(),
        })
    logger.warning("Escalated incident %s: %s", incident.id, reason)


@task(name="collect-at-close", cache_policy=NO_CACHE, persist_result=False)
def collect_at_close(runbook: Runbook, alert: Alert, incident: IncidentRef, verdict: str) -> Collected:
    """Seed 000 "collect artifacts: save logs, metrics, and configuration" (``core/collected.py``):
    the alert's metric around the incident, the last error lines of its logs, the configuration in
    force. Kept with the incident (the post-mortem reads it after Prometheus dropped the series) and
    shown as the run's ``collected-<incident>`` artifact. The window ends at the close: now for a
    verified incident (this runs before it is closed), when the alert resolved for one closed meanwhile.
    The minutes before the alert are :data:`core.collected.LEAD` times ``RESPONDER_TIME_SCALE``."""
    settings, catalog, store = runtime()
    record = store.incident(incident.id)
    closed_at = record.closed_at if record is not None and record.status == "closed" else None
    until = datetime.fromisoformat(closed_at) if closed_at else datetime.now(timezone.utc)
    collected = collect(catalog, runbook, alert, incident.id, store.timeline(incident.id), until,
                        closed=closed_at is not None or verdict == "verified", verdict=verdict,
                        lead=LEAD * settings.time_scale)
    keep(store, collected)
    metric = collected.metric
    lines = sum(len(source.lines) for source in collected.logs)
    store.add_timeline(incident.id, "collected", (
        f"kept {len(metric.series)} series of the alert's metric" if metric.series else f"no metric kept: {metric.note}")
        + f"; {lines} error log line(s); the configuration in force")
    create_markdown_artifact(section(collected), key=f"collected-{incident.id.lower()}",
                             description=f"Collected at close: {runbook.title}")
    return collected


def _collected_chart(runbook: Runbook, alert: Alert, incident: IncidentRef, verdict: str) -> str:
    """The report's picture (or one line why there is none); what was kept is in ``collected-<id>``.
    Never raises: the response does not fail for its record."""
    try:
        collected = collect_at_close(runbook, alert, incident, verdict)
    except Exception as exc:  # noqa: BLE001 - recorded in one line, the response goes on
        get_run_logger().warning("Nothing was collected at close: %s: %s", type(exc).__name__, exc)
        return f"_Nothing was collected at close ({type(exc).__name__}: {str(exc)[:200]})._"
    picture, record = chart_svg(collected), runtime()[2].incident(incident.id)
    if picture is not None and record is not None:  # the same picture in the incident's Slack thread
        notifier().chart(record, f"{runbook.title}: {alert.alertname} around the incident ({verdict})", picture)
    return (chart_markdown(collected) + "\n\nThe error lines of the logs and the configuration in force: "
            f"artifact `collected-{incident.id.lower()}`.")


def conclude(
    runbook: Runbook, alert: Alert, incident: IncidentRef, evidence: list[ProbeResult],
    outcomes: list[ActionOutcome], verdict: str, last: ProbeResult | None,
) -> State:
    """Close the incident when verified or resolved; escalate otherwise. Writes the run's report, with
    what is kept of the incident (collected before a verified incident is closed, so that the close's
    post-mortem finds it)."""
    _, _, store = runtime()
    if last is not None and last not in evidence:
        evidence = [*evidence, last.model_copy(update={"probe": f"verify: {last.probe}"})]
    summary = {"verdict": verdict, "incident": incident.id, "actions": [o.status for o in outcomes]}
    findings = telling_findings(evidence)
    record = store.incident(incident.id)
    if record is not None:
        text = (f"*{runbook.title}: {verdict.upper()}* on `{alert.instance or '?'}`\n"
                + "\n".join(f"• {r.line()}" for r in findings))
        notifier().send(record, "verdict", text, details={"verdict": verdict,
                                                          "findings": [r.line() for r in findings]})
    if verdict != "held":
        store.add_timeline(incident.id, "verify", f"{verdict}: {last.line() if last else 'no measurement'}")
    around = _collected_chart(runbook, alert, incident, verdict)
    if verdict == "held":
        window = next(o.detail for o in outcomes if o.status == "held")
        store.set_note(incident.id, "waiting_on", f"the end of the maintenance window ({window}): a fresh response then")
        name, message = "HeldForMaintenance", f"Assessed and reported; no action run: {window}."
        publish_timeline(incident.id)
    elif verdict == "verified":
        store.add_timeline(incident.id, "resolution", "verification passed")
        store.close_incident(incident.id, "verified")
        name, message = "Resolved", "Verification passed; incident closed."
    elif verdict == "resolved-by-alert":
        name, message = "ResolvedByAlert", "The alert resolved while the response was running."
    else:
        reasons = [o.detail for o in outcomes if o.status in ("rejected", "loop_guarded", "failed")]
        reason = "; ".join(reasons) or (last.line() if last else "verification did not pass")
        escalate(runbook, alert, incident, reason, outcomes)
        name, message = "Escalated", f"Not resolved by the runbook; escalated: {reason}"
        publish_timeline(incident.id)  # the incident stays open: the timeline as it is now
    # (a closed incident's final timeline is published once, at its close, with its post-mortem)
    create_markdown_artifact(
        _report(runbook, alert, incident, verdict, evidence, outcomes, around=around),
        key=f"response-{incident.id}",
        description=f"{runbook.title}: {verdict}",
    )
    return Completed(name=name, message=message, data=summary)


# -- the whole response, once -----------------------------------------------------


@dataclass
class Assessment:
    """What a runbook's own steps found: evidence for people, the actions it proposes, how to verify.

    ``verify`` measures again (a step of the runbook) until healthy; ``None`` means nothing can be
    measured (no target configured, a machine nobody measures): the response reports the evidence
    and escalates without acting.
    """

    evidence: list[ProbeResult]
    plans: list[PlannedAction] = field(default_factory=list)
    verify: Callable[[], ProbeResult] | None = None


def cannot_measure(result: ProbeResult) -> Assessment:
    """The assessment of a response that cannot measure anything: ``result`` says why."""
    return Assessment(evidence=[result])


class RunbookDefect(Exception):
    """The runbook itself is wrong (not the system it measures): the run fails and escalates, naming it."""


def respond(runbook_name: str, alert: Alert, incident: IncidentRef | None,
            assess: Callable[[Runbook, Alert], Assessment]) -> State | str:
    """acknowledge → the runbook's assessment → mitigate (approval, loop guard, dry run) → verify →
    close or escalate. Every alert-driven runbook is this, with its own ``assess``."""
    runbook = runtime()[1].get(runbook_name)
    incident = acknowledge(runbook_name, alert, incident)
    if incident is None:
        return "duplicate"
    try:
        found = assess(runbook, alert)
    except ValidationError as exc:  # a plan that does not fit its action, a threshold of the wrong type
        raise RunbookDefect(f"runbook {runbook.name!r}: {exc}") from None
    if found.verify is None:
        return conclude(runbook, alert, incident, found.evidence, [], "not-verified", found.evidence[-1])
    outcomes = mitigate(runbook, incident, found.plans, found.evidence, alert)
    if held(outcomes):  # maintenance: reported, not verified, not escalated
        return conclude(runbook, alert, incident, found.evidence, outcomes, "held", None)
    last, verdict = verify_until_ok(found.verify, incident, runbook)
    return conclude(runbook, alert, incident, found.evidence, outcomes, verdict, last)


def proposals(found: list[PlannedAction] | ProbeResult, evidence: list[ProbeResult]) -> list[PlannedAction]:
    """A planning step answers with actions, or with a result saying why it has none (kept as evidence)."""
    if isinstance(found, ProbeResult):
        evidence.append(found)
        return []
    return found
