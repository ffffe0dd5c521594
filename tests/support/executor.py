"""`responder up`'s own executor and approval-deadline clock, in a thread of the test process.

The in-process test layer: a real runbook flow, run as a real deployment run on the suite's real
Prefect server by the real :class:`~responder.executor.Executor` (suspended for approval, scheduled
again by the answer, carried on from its kept step results), with the test's own services bound,
without a `responder up` subprocess. Each instance serves a deployment of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from prefect import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from core.alerts import Alert, IncidentRef
from core.courier import Courier
from core.results import register_result_storage
from core.services import Services
from responder.deadlines import ApprovalDeadlines
from responder.executor import Executor
from responder.leases import new_holder

from .common import wait_for
from .prefect import prefect_post


class InProcessResponder:
    def __init__(self, services: Services, api_url: str, flow: Any, runbook: str, deployment_id: Any = None) -> None:
        self.services, self.api_url, self.flow, self.runbook = services, api_url, flow, runbook
        self.deployment_id: Any = deployment_id
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._main: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="in-process-responder")
        self._thread.start()
        if not self._ready.wait(60):
            raise AssertionError(f"the in-process executor did not start: {self._error!r}")
        if self._error:
            raise self._error

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            try:
                self._loop.run_until_complete(self._run())
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # reported by the constructor or stop()
                self._error = exc
                self._ready.set()
            finally:  # every task of the loop ends before it closes (none is left to be collected half-run)
                left = asyncio.all_tasks(self._loop)
                for task in left:
                    task.cancel()
                self._loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
                self._loop.close()

    async def _run(self) -> None:
        await register_result_storage([self.flow])
        if self.deployment_id is None:
            deployment = await self.flow.ato_deployment(name=f"in-process-{uuid.uuid4().hex[:8]}")
            self.deployment_id = await deployment.aapply()
        executor = Executor({self.deployment_id: (self.runbook, self.flow)}, self.services, poll_seconds=0.5)
        self._main = asyncio.gather(executor.run(), ApprovalDeadlines(self.services, interval_seconds=0.5).run(),
                                    self._deliver_messages())
        self._ready.set()
        await self._main

    async def _deliver_messages(self) -> None:
        """The courier, as ``responder up`` runs it: one at a time among the responders on this store."""
        courier, holder = Courier(self.services.notifier), new_holder()
        try:
            while True:
                if await asyncio.to_thread(self.services.store.take_lease, "notifications", holder, 5.0):
                    await asyncio.to_thread(courier.pass_once)
                await asyncio.sleep(0.1)
        finally:
            courier.close()
            self.services.store.release_lease("notifications", holder)

    @classmethod
    def for_deployment(cls, services: Services, api_url: str, flow: Any, runbook: str,
                       deployment_id: Any) -> "InProcessResponder":
        """Another responder for the same deployment (a restart, or a second responder)."""
        return cls(services, api_url, flow, runbook, deployment_id)

    def start(self, alert: Alert, incident: IncidentRef | None = None) -> str:
        """A run of the deployment for ``alert`` (and the incident the store opened for it, if given), as a
        deployment trigger creates it; returns its id. Without an incident the run opens one itself."""
        async def create() -> str:
            async with get_client() as client:
                run = await client.create_flow_run_from_deployment(
                    self.deployment_id, parameters={"alert": alert.model_dump(mode="json"),
                                                    "incident": incident.model_dump(mode="json") if incident else None})
            return str(run.id)
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return asyncio.run(create())

    def run(self, run_id: str) -> dict[str, Any]:
        return prefect_post(self.api_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})[0]

    def final(self, run_id: str, timeout: float = 90) -> dict[str, Any]:
        """The run once it reached a final state (its state: name, message, type)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(0.3)
        raise AssertionError(f"run {run_id} did not finish within {timeout:.0f} s: {self.run(run_id)['state']}")

    def stop(self) -> None:
        if self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)
        self._thread.join(15)


# -- what the in-process tests of the drill runbook share ------------------------------------------


def drill_alert(**labels: str) -> Alert:
    return Alert(status="firing", labels={"alertname": "ResponderDrill", **labels}, startsAt=datetime.now(timezone.utc),
                 annotations={"summary": "decision test"}, fingerprint=uuid.uuid4().hex[:16])


def suspended(api: str, run_id: str, not_state: str | None = None) -> dict[str, Any]:
    """The run once it waits for approval: suspended, so it holds no thread of the executor."""
    def waiting():
        [run] = prefect_post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        state = run["state"]
        ok = state["type"] == "PAUSED" and state["state_details"]["pause_reschedule"] and state["id"] != not_state
        return run if ok else None
    return wait_for(waiting, 60, what="the run to be suspended for approval")


def timeline(services: Services, run_id: str) -> list[dict[str, Any]]:
    return services.store.timeline(services.store.incident_by_run(run_id).id)
