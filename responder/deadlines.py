"""Approval deadlines: when nobody answered a question in time, the responder answers "no".

A run waiting for approval is suspended and holds nothing (``flows/lifecycle.py``), so no timer of
its own can fire. Each question's deadline is in the store instead (``core/store/runs.py``), and
this loop, about once a second, answers every question whose deadline passed through the same
Prefect ``resume`` a person's answer takes: the action does not run, and the response goes on
(verification, then close or escalate). The store is durable and shared, so the deadline holds
across a restart and is kept by whichever responder is running.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from uuid import UUID

from prefect import get_client
from prefect.exceptions import ObjectNotFound

from core.services import Services
from core.store import StoreUnavailable
from responder.approvals import SCHEMA_NOT_YET

logger = logging.getLogger("responder.deadlines")

DEADLINE_APPROVER = "responder (deadline)"


class ApprovalDeadlines:
    def __init__(self, services: Services, interval_seconds: float = 1.0) -> None:
        self.store = services.store
        self.interval_seconds = interval_seconds

    async def run(self) -> None:
        while True:
            try:
                await self.answer_expired()
            except StoreUnavailable as exc:
                logger.error("Cannot read approval deadlines: %s", exc)
            except Exception as exc:  # the Prefect server may be down: the next pass tries again
                logger.warning("Answering expired approvals failed (%s: %s); trying again", type(exc).__name__, exc)
            await asyncio.sleep(self.interval_seconds)

    async def answer_expired(self) -> int:
        """Answer "no" to each question past its deadline that still waits; returns how many were answered."""
        expired = await asyncio.to_thread(self.store.approvals_past_deadline, datetime.now(timezone.utc))
        answered = 0
        if not expired:
            return 0
        async with get_client() as client:
            for question in expired:
                run_id, key = question["flow_run_id"], question["key"]
                try:
                    run = await client.read_flow_run(UUID(run_id))
                except (ObjectNotFound, ValueError):
                    await asyncio.to_thread(self.store.approval_settled, run_id, key, "the run is gone")
                    continue
                state = run.state
                if state is None or state.is_final():
                    await asyncio.to_thread(self.store.approval_settled, run_id, key, f"the run ended {run.state_name}")
                    continue
                if not state.is_paused():
                    continue  # answered and carrying on, or not yet suspended: its step settles it
                if state.state_details.pause_key != key:
                    await asyncio.to_thread(self.store.approval_settled, run_id, key, "answered; a later question waits")
                    continue
                nonce = await asyncio.to_thread(self.store.record_verified_answer, run_id, key, "responder", "deadline")
                result = await client.resume_flow_run(UUID(run_id), run_input={
                    "approve": False, "reason": f"no answer by the deadline ({question['deadline']})",
                    "approver": DEADLINE_APPROVER, "verification": nonce})
                if getattr(result.details, "reason", "") == SCHEMA_NOT_YET:
                    continue  # suspended a moment ago: its form is being written; next pass
                if result.status.value == "ACCEPT":
                    answered += 1
                    logger.warning("Approval %s of run %s: no answer by %s, answered no", key, run.name, question["deadline"])
                await asyncio.to_thread(self.store.approval_settled, run_id, key, "deadline")
        return answered
