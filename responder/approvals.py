"""Answering an approval: the Prefect UI's Resume form, ``responder approve|reject`` and Slack buttons
all end here, in the same ``resume`` with the same ``Approval`` input. Answers the responder verified
(``answer_verified``) carry a nonce recorded in the store, which the run checks (``check-approver``)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import httpx
from prefect import get_client
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from core.store import Store
from flows.lifecycle import Approval


# Prefect pauses a run first and writes its input form just after: an answer in between is refused with this.
SCHEMA_NOT_YET = "Run input schema not found."


class ApprovalError(Exception):
    """The run cannot take an answer (unknown, not paused, already answered)."""


async def answer_verified(store: Store, flow_run_id: str, approve: bool, reason: str, approver: str, via: str) -> None:
    """Answer for someone the responder verified (a personal token, a signed Slack request, its own
    deadline): recorded with a nonce the run checks (``core/store/people.py``), then passed on."""
    async with get_client() as client:
        run = await _paused(client, flow_run_id)
    key = run.state.state_details.pause_key or ""
    nonce = await asyncio.to_thread(store.record_verified_answer, flow_run_id, key, approver, via)
    await answer(flow_run_id, approve, reason, approver, verification=nonce)


async def _paused(client, flow_run_id: str):
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        raise ApprovalError(f"{flow_run_id!r} is not a flow run id") from None
    try:
        run = await client.read_flow_run(run_id)
    except ObjectNotFound:
        raise ApprovalError(f"no flow run {flow_run_id}") from None
    if not (run.state and run.state.is_paused()):
        raise ApprovalError(f"run {run.name} is {run.state_name if run.state else 'unknown'}, not waiting for approval")
    return run


async def answer(flow_run_id: str, approve: bool, reason: str, approver: str, verification: str = "") -> None:
    async with get_client() as client:
        run = await _paused(client, flow_run_id)
        for _ in range(20):
            result = await client.resume_flow_run(
                run.id, run_input={"approve": approve, "reason": reason, "approver": approver, "verification": verification}
            )
            if getattr(result.details, "reason", "") != SCHEMA_NOT_YET:
                break
            await asyncio.sleep(0.25)  # the run paused a moment ago: its form is being written
        if result.status.value != "ACCEPT":
            detail = getattr(result.details, "reason", "") or result.status.value
            raise ApprovalError(f"the server refused the answer: {detail}")


# The run writes its form milliseconds after suspending, and its responder lets go of the run's lease
# only after that (the caller checks the lease first); this is a margin on top.
FORM_GRACE_SECONDS = 2.0


async def restore_lost_form(client: Any, store: Store, run: Any) -> bool:
    """Write the approval form of a run suspended without one; True when it was written here.

    Prefect suspends a run first and writes its input form just after, from the process running it.
    A responder killed in between leaves a run suspended with no form: every answer (the UI's Resume,
    ``responder approve``, Slack, the deadline's own "no") is refused with "Run input schema not
    found." and the response would wait forever. The form is the same ``Approval`` model; its
    description is rebuilt from the store (the question as the timeline says it, and its deadline),
    as the evidence the run had gathered is in its kept results and on its timeline, not here."""
    state = run.state
    keyset = state.state_details.run_input_keyset if state else None
    if not keyset or (datetime.now(timezone.utc) - state.timestamp).total_seconds() < FORM_GRACE_SECONDS:
        return False  # not a question, or asked a moment ago: its run is writing the form
    try:
        await client.read_flow_run_input(run.id, keyset["schema"])
        return False
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 404:
            raise
    incident = ((run.parameters or {}).get("incident") or {}).get("id")
    asked = await asyncio.to_thread(_last_question, store, incident) if incident else None
    deadline = await asyncio.to_thread(store.approval_deadline, str(run.id), state.state_details.pause_key or "")
    description = "\n".join([
        f"## Approve: {asked or 'the step this response asked about'}",
        "",
        *([f"**Answer by {deadline:%Y-%m-%d %H:%M:%S} UTC**: no answer by then counts as no.", ""] if deadline else []),
        "The responder that asked stopped before this form was written; another responder wrote it again. "
        "The evidence is on the incident's timeline and in the run's earlier steps.",
        "",
        "Tick **approve** and press Resume to run it; leave it unticked to reject.",
    ])
    try:
        await Approval.with_initial_data(description=description).asave(keyset, flow_run_id=run.id)
    except ObjectAlreadyExists:
        return False  # written meanwhile (the run itself, late, or another responder)
    return True


def _last_question(store: Store, incident_id: str) -> str | None:
    asked = [entry for entry in store.timeline(incident_id) if entry["kind"] == "approval-asked"]
    return asked[-1]["text"] if asked else None
