"""Answering an approval: the Prefect UI's Resume form, ``responder approve|reject`` and Slack buttons
all end here, in the same ``resume`` with the same ``Approval`` input."""

from __future__ import annotations

import asyncio
from uuid import UUID

from prefect import get_client
from prefect.exceptions import ObjectNotFound


# Prefect pauses a run first and writes its input form just after: an answer in between is refused with this.
SCHEMA_NOT_YET = "Run input schema not found."


class ApprovalError(Exception):
    """The run cannot take an answer (unknown, not paused, already answered)."""


async def answer(flow_run_id: str, approve: bool, reason: str, approver: str) -> None:
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        raise ApprovalError(f"{flow_run_id!r} is not a flow run id") from None
    async with get_client() as client:
        try:
            run = await client.read_flow_run(run_id)
        except ObjectNotFound:
            raise ApprovalError(f"no flow run {flow_run_id}") from None
        if not (run.state and run.state.is_paused()):
            raise ApprovalError(f"run {run.name} is {run.state_name if run.state else 'unknown'}, not waiting for approval")
        for _ in range(20):
            result = await client.resume_flow_run(
                run_id, run_input={"approve": approve, "reason": reason, "approver": approver}
            )
            if getattr(result.details, "reason", "") != SCHEMA_NOT_YET:
                break
            await asyncio.sleep(0.25)  # the run paused a moment ago: its form is being written
        if result.status.value != "ACCEPT":
            detail = getattr(result.details, "reason", "") or result.status.value
            raise ApprovalError(f"the server refused the answer: {detail}")
