"""Answering an approval: the Prefect UI's Resume form, ``responder approve|reject`` and Slack buttons
all end here, in the same ``resume`` with the same ``Approval`` input. Answers the responder verified
(``answer_verified``) carry a nonce recorded in the store, which the run checks (``check-approver``)."""

from __future__ import annotations

import asyncio
from uuid import UUID

from prefect import get_client
from prefect.exceptions import ObjectNotFound

from core.store import Store


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
