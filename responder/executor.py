"""Runs the runbook deployments' flow runs inside the responder process.

Prefect's ``serve`` starts a new Python process per run (about 1.5 s of imports
before the first task) and polls every 10 s. A responder must start in well
under a second, so this executor:

* listens to the server's event stream for ``prefect.flow-run.Scheduled`` and
  starts a due run the moment it is announced; a plain read of due Scheduled runs
  every ``RESPONDER_POLL_SECONDS`` covers anything missed, and a runner poll every
  30 s keeps the deployments marked Ready in the UI;
* claims each run by proposing ``Pending`` (a run another executor claimed is
  refused by the server, so no run executes twice);
* runs the flow in a thread of this process with Prefect's own engine
  (``prefect.flow_engine.run_flow``), so the run is a normal deployment run in
  the UI: logs, task graph, artifacts, pause/resume.

Several responders may share one Prefect server and one store: each run an
executor claims is leased to it in the store (``responder/leases.py``) and the
lease renewed every few seconds. Runs left Running or Pending by a responder that
stopped (lease expired, or its process gone on this host) are taken over by a
live one, at start-up and every few seconds: a runbook starts over from its first
step, and the steps it had done return their kept results (``core/results.py``).
A run suspended for approval holds nothing and is left alone: its answer
schedules it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.exceptions import Pause
import prefect.flow_engine
from prefect.flow_engine import run_flow
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from prefect.states import Pending, Scheduled

from core import metrics
from core.services import Services, bound
from responder.approvals import FORM_GRACE_SECONDS, restore_lost_form
from responder.leases import LEASE_SECONDS, held_by_live, new_holder

logger = logging.getLogger("responder.executor")

READY_MARK_SECONDS = 30.0


@contextlib.contextmanager
def _no_suspension_observer(*args: Any, **kwargs: Any):
    yield


def _runs_without_suspension_observers() -> None:
    """Run flows without Prefect's observer of suspensions made from outside the run.

    Prefect 3.9 starts, for every execution of a deployment run and before it proposes Running, a
    thread with an event loop, a Prefect client and an events websocket of its own
    (``prefect._flow_run_suspension.observe_flow_run_suspension``), and waits until it watches, so
    that a run suspended by someone else while it executes stops at its next step. Nothing here
    suspends a response from outside: a response suspends itself for approval (``suspend_flow_run``
    in the run, which stops it at once and needs no observer); a run set to Suspended by hand goes
    on until it ends or asks. In a burst the observers were a quarter of the responder's samples
    (py-spy); in ``bench/storm.py`` (one pair, alternately): first task p50
    50.3 → 38.2 s, last 83.7 → 73.2 s, server CPU 166.1 → 154.4 s, responder CPU 45.8 → 39.3 s,
    peak RSS 484 → 468 MiB (README, "Measured"). The engine looks the name up at each execution,
    so this process-wide replacement is made once and holds for every run this process executes."""
    prefect.flow_engine.observe_flow_run_suspension = _no_suspension_observer


class Executor:
    def __init__(
        self,
        flows_by_deployment: dict[UUID, tuple[str, Any]],
        services: Services,
        poll_seconds: float = 2.0,
        max_concurrent_runs: int = 64,
        on_run_started: Callable[[str], None] | None = None,
        holder: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.flows_by_deployment = flows_by_deployment
        self.holder = holder or new_holder()  # this responder, in the store's leases
        self.lease_seconds = lease_seconds
        self.services = services
        self.poll_seconds = poll_seconds
        self._slots = threading.BoundedSemaphore(max_concurrent_runs)
        self._inflight: set[UUID] = set()
        self._forms_checked: set[tuple[UUID, UUID]] = set()  # (run, its Suspended state) whose form is there
        self._inflight_lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self.polling_ok = False
        self.last_poll: float | None = None
        self.on_run_started = on_run_started
        self._run_settings: tuple[Any, Any] | None = None
        _runs_without_suspension_observers()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        self._wake = asyncio.Event()
        await self.take_over()
        await asyncio.gather(self._poll_loop(), self._watch_loop(), self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        """Renew this responder's leases, and take over the runs of responders that stopped. One
        Prefect client for all the beats: a new one per beat asked the server for a CSRF token too."""
        async with get_client() as client:
            while True:
                await asyncio.sleep(self.lease_seconds / 3)
                try:
                    await asyncio.to_thread(self.services.store.renew_leases, self.holder, self.lease_seconds)
                    await self.take_over(client)
                except Exception as exc:  # the store or the server may be down: the next beat tries again
                    logger.warning("Lease heartbeat failed (%s: %s)", type(exc).__name__, exc)

    async def take_over(self, client: Any = None) -> int:
        """Schedule again the runs a stopped responder left Running or Pending; returns how many.

        A run counts as left when its lease expired (its holder stopped renewing it) or its holder is
        known dead (same host, process gone), or it has no lease at all (left by a release without
        leases). A run suspended for approval holds nothing and is left alone: its answer schedules it
        (its form is checked once, and written again when its responder died before writing it).
        Taking the lease first means only one live responder takes each run over; it starts again
        from its first step, and the steps it had done return their kept results.
        """
        if client is None:
            async with get_client() as client:
                return await self.take_over(client)
        store = self.services.store
        taken = 0
        runs = await self._unfinished_runs(client)
        suspended = {(run.id, run.state.id) for run in runs
                     if run.state.is_paused() and run.state.state_details.pause_reschedule}
        self._forms_checked &= suspended  # forget questions answered since
        for run in runs:
            if (run.id, run.state.id) in suspended or run.id in self._inflight:
                continue  # suspended for approval (held by nobody), or running here
            lease = await asyncio.to_thread(store.lease, f"run:{run.id}")
            holder = lease[0] if lease else None
            if held_by_live(lease):
                continue  # a live responder runs it
            if not await asyncio.to_thread(store.take_lease, f"run:{run.id}", self.holder, self.lease_seconds, holder):
                continue  # another live responder took it over first
            # The list is a moment old: a run seen Running may have been suspended for approval (and let go
            # of its lease) since, or claimed here. Forcing it Scheduled then would start it again under
            # its own question. Only a run still in the state the list showed is taken over.
            current = await client.read_flow_run(run.id)
            if run.id in self._inflight:
                continue  # claimed here meanwhile: the lease just taken is this responder's own
            if current.state is None or current.state.id != run.state.id:
                await asyncio.to_thread(store.release_lease, f"run:{run.id}", self.holder)
                continue
            logger.warning("Run %s (%s) was left %s by %s: taking it over", run.name, run.id, run.state_name,
                           holder or "a stopped responder")
            await client.set_flow_run_state(
                run.id,
                Scheduled(message=f"Taken over from {holder or 'a stopped responder'}: this response starts "
                                  "again from its first step; the steps it had done keep their results."),
                force=True,
            )
            taken += 1
        for run in runs:  # after the take-overs: checking forms asks the server once per question
            if (run.id, run.state.id) in suspended:
                await self._keep_form(client, run)
        if taken:
            self.wake()
        return taken

    async def _unfinished_runs(self, client: Any) -> list[Any]:
        """The runbook deployments' runs that are Running, Pending or Paused, as the server lists them now."""
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING, StateType.PAUSED])
                )
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(self.flows_by_deployment))),
        )

    async def _keep_form(self, client: Any, run: Any) -> None:
        """Check a suspended run's approval form once (a question whose form was lost when its
        responder died is written again: ``responder/approvals.py``); one request per question, not
        per pass, so runs waiting for people cost the server nothing after that."""
        if (run.id, run.state.id) in self._forms_checked:
            return
        lease = await asyncio.to_thread(self.services.store.lease, f"run:{run.id}")
        if held_by_live(lease):
            return  # its responder still holds it: it is writing the form itself (it lets go after)
        if await restore_lost_form(client, self.services.store, run):
            logger.warning("Run %s (%s) was suspended without its approval form (its responder stopped "
                           "in between): the form was written again", run.name, run.id)
        if (datetime.now(timezone.utc) - run.state.timestamp).total_seconds() >= FORM_GRACE_SECONDS:
            self._forms_checked.add((run.id, run.state.id))

    async def _poll_loop(self) -> None:
        assert self._wake is not None
        deployments = DeploymentFilter(id=DeploymentFilterId(any_=list(self.flows_by_deployment)))
        last_marked = float("-inf")
        async with get_client() as client:
            while True:
                try:
                    # The runner's own poll (get_scheduled_flow_runs_for_deployments) also marks the
                    # deployments Ready, in a write transaction of its own; on SQLite, one such write
                    # during an alert burst waited out the 60 s busy timeout. So: a plain read to find
                    # due runs, and the Ready-marking poll only every READY_MARK_SECONDS (the
                    # foreman marks a deployment Not Ready after 60 s without one).
                    if time.monotonic() - last_marked >= READY_MARK_SECONDS:
                        await client.get_scheduled_flow_runs_for_deployments(
                            deployment_ids=list(self.flows_by_deployment), limit=1,
                            scheduled_before=datetime.now(timezone.utc) - timedelta(days=3650),
                        )
                        last_marked = time.monotonic()
                    runs = await client.read_flow_runs(
                        deployment_filter=deployments,
                        flow_run_filter=FlowRunFilter(
                            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                            next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(
                                before_=datetime.now(timezone.utc) + timedelta(seconds=1)
                            ),
                        ),
                        sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
                        limit=200,
                    )
                    self.polling_ok = True
                    self.last_poll = time.monotonic()
                    metrics.PREFECT_LAST_CONTACT.set(time.time())
                    now = datetime.now(timezone.utc)
                    metrics.RESPONSES_WAITING.set(len(runs))
                    metrics.RESPONSES_OLDEST_WAITING.set(max(
                        ((now - due).total_seconds() for run in runs
                         if (due := run.next_scheduled_start_time or run.expected_start_time)), default=0.0))
                    # When more runs wait than slots are free, critical incidents go first (oldest first
                    # within each severity): each claim takes its slot before its first await, in order.
                    runs = sorted(runs, key=lambda r: _severity_rank(r.parameters))
                    results = await asyncio.gather(*(self._claim_and_start(client, run) for run in runs),
                                                   return_exceptions=True)
                    if failed := next((r for r in results if isinstance(r, Exception)), None):
                        raise failed
                except Exception as exc:  # the server may be down: keep polling, report not ready
                    if self.polling_ok:
                        logger.warning("Polling the Prefect server failed: %s", exc)
                    self.polling_ok = False
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()

    async def _watch_loop(self) -> None:
        """Start runs the moment the server announces them (the poll loop covers anything missed)."""
        ours = {f"prefect.deployment.{d}" for d in self.flows_by_deployment}
        flt = EventFilter(event=EventNameFilter(name=["prefect.flow-run.Scheduled"]))
        while True:
            try:
                async with get_client() as client, get_events_subscriber(filter=flt, reconnection_attempts=0) as subscriber:
                    claims: set[asyncio.Task] = set()
                    async for event in subscriber:
                        if not any(r.id in ours for r in event.related):
                            continue
                        # Each claim in a task of its own: in a burst, claiming one run after the other
                        # (two requests each) was the slowest stage once runs were created quickly.
                        claim = asyncio.create_task(self._claim_announced(client, UUID(event.resource.id.rsplit(".", 1)[1])))
                        claims.add(claim)
                        claim.add_done_callback(claims.discard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("Event stream interrupted (%s); polling covers the gap", exc)
            await asyncio.sleep(self.poll_seconds)

    async def _claim_announced(self, client: Any, flow_run_id: UUID) -> None:
        try:
            run = await client.read_flow_run(flow_run_id)
            due = run.next_scheduled_start_time or run.expected_start_time
            if run.state and run.state.is_scheduled() and (
                due is None or due <= datetime.now(timezone.utc) + timedelta(seconds=1)
            ):
                await self._claim_and_start(client, run)
            # A run scheduled for later (cron) is found by the poll when due.
        except Exception as exc:  # the poll covers it
            logger.debug("Claiming announced run %s failed (%s); the poll will retry", flow_run_id, exc)
            self.wake()

    async def _claim_and_start(self, client: Any, run: Any) -> None:
        # Reserve the run before the first await: the event watcher and the poller can both see it,
        # and the server may accept a second Pending proposal, so the guard must be local too.
        with self._inflight_lock:
            if run.id in self._inflight:
                return
            self._inflight.add(run.id)
        if not self._slots.acquire(blocking=False):
            self._release(run.id, slot=False, lease=False)
            return  # at the limit: the run stays Scheduled and is picked up later
        try:
            # The lease first: with several responders, only its holder proposes Pending, and a run
            # this responder holds is never taken over while it renews the lease.
            if not await asyncio.to_thread(self.services.store.take_lease, f"run:{run.id}", self.holder,
                                           self.lease_seconds):
                self._release(run.id, lease=False)
                return
            result = await client.set_flow_run_state(run.id, Pending(), force=False)
        except Exception:
            self._release(run.id)
            raise
        if result.status != SetStateStatus.ACCEPT:
            self._release(run.id)
            return
        # The engine gets the claimed run object as it is (it reads the run again itself when it
        # starts): reading it here too took a Prefect client of its own, about 25 ms of CPU to build
        # (its TLS context loads the CA bundle), and in a burst that CPU delays the next run.
        run.state = result.state
        runbook, flow = self.flows_by_deployment[run.deployment_id]
        # The run's thread starts in this context (the Prefect settings the executor runs with).
        thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._execute, flow, run, runbook), name=f"run-{run.name}",
            daemon=True,
        )
        thread.start()

    def _release(self, flow_run_id: UUID, slot: bool = True, lease: bool = True) -> None:
        if lease:
            try:
                self.services.store.release_lease(f"run:{flow_run_id}", self.holder)
            except Exception as exc:  # it expires by itself
                logger.debug("Releasing the lease of run %s failed: %s", flow_run_id, exc)
        with self._inflight_lock:
            self._inflight.discard(flow_run_id)
        if slot:
            self._slots.release()

    def _settings_for_runs(self) -> SettingsContext:
        """The Prefect settings runs execute with: the executor's own (its thread's context), without
        flow-run heartbeats (see _execute). Copied once: a copy costs about 50 ms of CPU."""
        if self._run_settings is None:
            context = get_settings_context()
            self._run_settings = (context.profile,
                                  context.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
        return SettingsContext(profile=self._run_settings[0], settings=self._run_settings[1])

    def _execute(self, flow: Any, flow_run: Any, runbook: str) -> None:
        try:
            if self.on_run_started:
                self.on_run_started(runbook)
            # The run's steps use the process's store and notifier. No Prefect flow-run heartbeats: each
            # execution would start a thread of its own for them and send one event at once (then one
            # every 180 s), and nothing here reads them: a run's liveness is its lease in the store
            # (responder/leases.py), which a dead responder's runs are taken over by.
            with bound(self.services), self._settings_for_runs():
                run_flow(flow, flow_run=flow_run, return_type="state")
        except Pause:  # suspended for approval: the answer schedules it again; until then it holds nothing
            logger.info("Run %s of %s waits for approval (suspended)", flow_run.id, runbook)
        except BaseException:
            logger.exception("Run %s of %s ended with an engine error", flow_run.id, runbook)
        finally:
            self._release(flow_run.id)


def _severity_rank(parameters: dict[str, Any] | None) -> int:
    """0 for a critical incident's run, 1 otherwise (scheduled checks, warnings)."""
    incident = (parameters or {}).get("incident") or {}
    return 0 if isinstance(incident, dict) and incident.get("severity") == "critical" else 1
