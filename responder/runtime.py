"""``responder up``: one process with the intake, event delivery and the run executor.

Start-up order matters for "nothing posted is lost": the intake listens (and
stores) first; deployments and triggers are applied next, retried while the
Prefect server is unreachable; event delivery starts only after the readiness
canary proved that triggers fire. ``GET /healthz`` turns 200 when all of it holds.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Mapping

import httpx
import uvicorn
from prefect.context import AsyncClientContext

from core import metrics
from core.collected import kept
from core.courier import Courier
from core.results import register_result_storage
from core.services import Services
from core.alerts import AlertmanagerPayload, Route
from core.store import Incident, IngestResult, StoreUnavailable
from deployments import apply_deployments
from flows.registry import flows_of
from responder.executor import Executor
from responder.ingest import GroupCommit, store_call
from responder.leases import known_dead, new_holder
from responder.deadlines import ApprovalDeadlines
from responder.pager import Pager
from responder.maintenance import MaintenanceKeeper
from responder.watchdog import AlertmanagerWatchdog
from responder.events import prefect_events
from responder.prefect_api import (ensure_canary, post_events, probe_triggers, release_waiting_run,
                                   retire_page_deployment, server_healthy)
from responder.reports import publish_incident_artifact, publish_postmortem
from tasks.http_client import async_http_client

logger = logging.getLogger("responder")

STORE_OUTAGE_PAUSE_SECONDS = 2.0  # a loop stopped by a store outage starts again after this
DUTY_LEASE_SECONDS = 10.0  # delivery and follow-ups move to a stand-by responder this long after their holder stops
MAINTENANCE_EVERY_SECONDS = 2.0  # how soon a held incident gets its fresh response after its window is over
COURIER_EVERY_SECONDS = 0.25  # how soon a message written now starts on its way
UNANSWERED_EVERY_SECONDS = 15.0  # how often open incidents that no run claimed are looked for
DELIVERY_BATCH = 100  # outbox records one delivery pass sends at most (one request, one commit)
DELIVERY_GATHER_SECONDS = 0.01  # after a pass that was not full, wait this long for more before the next
UNROUTED_GATHER_SECONDS = 0.5  # the same after a pass of only unrouted alerts, unless one that matters arrives
CHECKPOINT_EVERY_SECONDS = 0.2  # the store's log copied into its file this often while it is written
REWRITE_CLOSED_AFTER_SECONDS = 5.0  # a closed incident's record is written again this long after the courier's first new line
DEPLOY_LEASE_SECONDS = 120.0  # applying 30 deployments takes seconds; a start that died holding it frees it after this


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Once, when the responder is up: the objects of its start (Prefect's and the runbooks' modules, the
    built flows, the catalog) leave the garbage collector's view (``gc.freeze``), so its collections, which
    the intake's allocations set off, stop scanning them again and again. Measured with
    ``bench/intake.py --all-new-unrouted`` (two pairs, alternately): 50-alert posts 14,906/15,337 →
    17,994/17,852 alerts/s, p99 168/174 → 75/81 ms, the responder's CPU 3.0/2.9 → 2.5/2.4 ms per post."""
    global _heap_frozen
    if not _heap_frozen:
        gc.freeze()
        _heap_frozen = True


class Responder:
    """The service: intake hooks, deployments, event delivery, follow-ups and the executor, on one set
    of :class:`~core.services.Services` that the executor also binds around every run."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # /healthz asks the Prefect server on every call: through one kept client (a new one loads the
        # CA bundle, 22 ms of CPU), opened by serve() on its loop.
        self._health_http: httpx.AsyncClient | None = None
        self.settings = services.settings
        self.catalog = services.catalog
        self.store = services.store
        self.notifier = services.notifier
        self.group_commit = GroupCommit(self.store)
        self.pager = Pager(services)
        self.courier = Courier(services.notifier, on_timeline=self._courier_wrote)
        self.deadlines = ApprovalDeadlines(services)
        self.watchdog = AlertmanagerWatchdog(services, self.ingest)
        self.maintenance = MaintenanceKeeper(services, self.wake_delivery)
        self.executor: Any = None
        self.prefect_ready = False
        self.triggers_ready = False
        self._deliver_wake: asyncio.Event | None = None
        self._deliver_urgent: asyncio.Event | None = None
        self._follow_up_wake: asyncio.Event | None = None
        self.deployment_ids: dict[str, Any] = {}
        self.holder = new_holder()  # this responder in the store's leases (several may share a store)
        self._led: dict[str, float] = {}
        self._courier_loop: tuple[asyncio.AbstractEventLoop, contextvars.Context] | None = None
        self._rewriting: dict[str, asyncio.Task] = {}  # closed incidents whose record is written again soon

    # -- called by the intake ----------------------------------------------------
    async def ingest(self, payload: AlertmanagerPayload, raw: bytes, routes: Mapping[str, Route]) -> IngestResult:
        """Store one body durably (the next group commit) and count it; the intake's path and the watchdog's."""
        result = await self.group_commit.ingest(payload, raw, routes)
        self.after_ingest(result)
        return result

    def after_ingest(self, result: IngestResult) -> None:
        for outcome, count in (("firing", result.new_firing), ("resolved", result.resolved),
                               ("duplicate", result.duplicates), ("unrouted", result.unrouted)):
            if count:
                metrics.ALERTS_BY_OUTCOME[outcome].inc(count)
        for runbook in result.runbooks_opened:
            metrics.INCIDENTS_OPENED.labels(runbook).inc()
        self._wake_delivery(urgent=bool(result.new_firing or result.resolved or result.incidents_opened
                                        or result.incidents_closed))

    def wake_delivery(self) -> None:
        self._wake_delivery(urgent=True)

    def _wake_delivery(self, urgent: bool) -> None:
        """Something to deliver; ``urgent``: it starts, joins or ends a response (anything but alerts no
        runbook routes), so it does not wait for the gathering of unrouted alerts."""
        if self._deliver_wake is not None and self._deliver_urgent is not None:
            self._deliver_wake.set()
            if urgent:
                self._deliver_urgent.set()

    async def readiness(self) -> dict[str, bool]:
        try:
            await asyncio.to_thread(self.store.ping)
            store_ok = True
        except StoreUnavailable:
            store_ok = False
        if self._health_http is not None:
            server_ok = await server_healthy(self._health_http)
        else:
            async with async_http_client() as http:
                server_ok = await server_healthy(http)
        if not server_ok:
            # After an outage the server reloads its automations: prove triggers again before delivering.
            self.triggers_ready = False
        return {
            "store": store_ok,
            "prefect_server": server_ok,
            "deployments": len(self.deployment_ids) == len(self.catalog.runbooks),
            "triggers": self.triggers_ready,
            "executor": bool(self.executor and self.executor.polling_ok),
        }

    # -- Prefect set-up ------------------------------------------------------------
    async def apply_deployments(self) -> None:
        """Register every runbook deployment and its trigger; retried until the server answers."""
        flows = flows_of(self.catalog)
        delay = 1.0
        while True:
            try:
                # One responder at a time: applying a deployment replaces its trigger's automation
                # (delete, then create), and two responders doing it at once left two automations,
                # so every alert started two runs.
                await self._wait_for_lease("deployments", DEPLOY_LEASE_SECONDS)
                try:
                    self.deployment_ids.update(await apply_deployments(self.catalog, flows))
                    await register_result_storage(flows.values())
                    await retire_page_deployment()
                    await ensure_canary()
                finally:
                    await asyncio.to_thread(self.store.release_lease, "deployments", self.holder)
                break
            except (httpx.HTTPError, OSError, RuntimeError, StoreUnavailable) as exc:
                logger.warning("Prefect server or store not reachable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        self.prefect_ready = True
        self.executor = Executor(
            {self.deployment_ids[name]: (name, flows[name]) for name in self.deployment_ids},
            services=self.services,
            holder=self.holder,
            lease_seconds=self.settings.lease_seconds,
            poll_seconds=self.settings.poll_seconds,
            max_concurrent_runs=self.settings.max_concurrent_runs,
            on_run_started=lambda runbook: metrics.RUNS_STARTED.labels(runbook).inc(),
        )

    async def _wait_for_lease(self, name: str, ttl_seconds: float) -> None:
        """Hold ``name`` once the responder holding it releases it (or stops: known dead, or expired)."""
        while not await asyncio.to_thread(self.store.take_lease, name, self.holder, ttl_seconds):
            lease = await asyncio.to_thread(self.store.lease, name)
            if lease and known_dead(lease[0]):
                await asyncio.to_thread(self.store.take_lease, name, self.holder, ttl_seconds, lease[0])
                continue
            await asyncio.sleep(0.5)

    async def _leads(self, duty: str) -> bool:
        """Whether this responder does ``duty`` (delivery, follow-ups) now: one responder of those sharing
        a store does each, holding its lease; a stand-by takes over when the holder stops renewing."""
        if time.monotonic() - self._led.get(duty, float("-inf")) < DUTY_LEASE_SECONDS / 3:
            return True
        try:
            held = await asyncio.to_thread(self.store.take_lease, duty, self.holder, DUTY_LEASE_SECONDS)
            if not held and (lease := await asyncio.to_thread(self.store.lease, duty)) and known_dead(lease[0]):
                held = await asyncio.to_thread(self.store.take_lease, duty, self.holder, DUTY_LEASE_SECONDS, lease[0])
        except StoreUnavailable:
            return False
        if held:
            self._led[duty] = time.monotonic()
        else:
            self._led.pop(duty, None)
        return held

    # -- event delivery ----------------------------------------------------------
    async def deliver_forever(self) -> None:
        """Send stored events to Prefect, oldest first, until each one is accepted."""
        self._deliver_wake = asyncio.Event()
        self._deliver_urgent = asyncio.Event()
        retry = self.settings.delivery_retry_seconds
        async with async_http_client() as http:
            while True:
                if not self.triggers_ready:
                    self.prefect_ready = await server_healthy(http)
                    if self.prefect_ready and await probe_triggers(http):
                        self.triggers_ready = True
                        _freeze_startup_heap()
                        logger.info("Triggers are live: delivering alerts")
                    else:
                        await asyncio.sleep(retry)
                        continue
                try:
                    if not await self._leads("delivery"):
                        await asyncio.sleep(1.0)  # another responder delivers; this one stands by
                        continue
                    self._deliver_urgent.clear()  # before the read: what arrives from now on is in the next pass
                    events = await store_call(self.store, self.store.pending_events, DELIVERY_BATCH)
                except StoreUnavailable as exc:
                    logger.error("Cannot read the outbox: %s", exc)
                    await asyncio.sleep(retry)
                    continue
                if events:
                    ids = [e["id"] for e in events]
                    try:
                        await post_events(http, prefect_events(events))
                    except (httpx.HTTPError, OSError) as exc:
                        metrics.DELIVERY_FAILURES.inc()
                        logger.warning("Delivering %d events failed (%s); retrying", len(events), exc)
                        await asyncio.to_thread(self.store.mark_failed, ids, str(exc))
                        self.triggers_ready = False  # the server may have restarted: prove triggers again
                        continue
                    settled = [event["id"] for event in events if not _has_follow_up(event)]
                    await store_call(self.store, self.store.mark_delivered, ids, settled)
                    metrics.EVENTS_DELIVERED.inc(len(ids))
                    if self._follow_up_wake is not None and len(settled) < len(ids):
                        self._follow_up_wake.set()
                    if len(events) < DELIVERY_BATCH:
                        # Alerts are arriving: the next pass carries what comes meanwhile, so a busy intake
                        # makes fewer passes (a commit and a request each) of more events. An alert after a
                        # quiet spell is not delayed: an idle loop wakes at once.
                        if all(event["kind"] == "alerts.unrouted" for event in events):
                            await self._gather_unrouted()
                        else:
                            await asyncio.sleep(DELIVERY_GATHER_SECONDS)
                    continue
                try:
                    await asyncio.wait_for(self._deliver_wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                self._deliver_wake.clear()

    async def _gather_unrouted(self) -> None:
        """After a pass of only alerts that no runbook routes: wait UNROUTED_GATHER_SECONDS for more, or less
        if an alert that starts, joins or ends a response arrives. Every pass is a request and about 6 events
        for the Prefect server (README, "The intake"), which a stream of unrouted alerts need not cost it."""
        assert self._deliver_urgent is not None
        try:
            await asyncio.wait_for(self._deliver_urgent.wait(), UNROUTED_GATHER_SECONDS)
        except asyncio.TimeoutError:
            pass

    async def follow_up_forever(self) -> None:
        """Runs beside delivery, so a slow follow-up never delays the next alert's event."""
        self._follow_up_wake = asyncio.Event()
        checked = time.monotonic()
        while True:
            if self.triggers_ready and await self._leads("follow-ups"):
                await self._follow_up()
                if time.monotonic() - checked >= min(UNANSWERED_EVERY_SECONDS, self.settings.response_start_grace_seconds):
                    checked = time.monotonic()
                    await self._resend_unanswered()
            try:
                await asyncio.wait_for(self._follow_up_wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            self._follow_up_wake.clear()

    async def _follow_up(self) -> None:
        """Local consequences of delivered events, each retried until it completes.

        Acknowledged → say so (the pager sends no further pages); closed → release a run waiting for
        approval, notify, incident and post-mortem artifacts. Each step is idempotent (keys, versioned artifacts), notifications never raise.
        """
        try:
            events = await store_call(self.store, self.store.pending_followups)
        except StoreUnavailable:
            return
        if not events:
            return
        # Most delivered events need nothing here (an alert that fired, resolved or is unrouted): they are
        # marked with the others in one statement at the end of the pass, not one commit each.
        done = [event["id"] for event in events if not _has_follow_up(event)]
        todo = [event for event in events if _has_follow_up(event)]
        try:
            if todo:
                # One Prefect client for the whole pass (each step's get_client() returns it): building a
                # client costs CPU, and a burst of alerts can close many incidents at once.
                async with AsyncClientContext.get_or_create():
                    for event in todo:
                        try:
                            await self._follow_up_one(event)
                        except Exception as exc:  # the server may be down again: retried on the next pass
                            logger.warning("Follow-up of %s failed (%s); will retry", event["kind"], exc)
                            break
                        done.append(event["id"])
        except Exception as exc:  # the client's version check met a server that is down, or the store
            logger.warning("Follow-ups paused (%s: %s); will retry", type(exc).__name__, exc)
        finally:
            try:
                await store_call(self.store, self.store.mark_followed_up, done)
            except StoreUnavailable as exc:  # done again on the next pass: every step is idempotent
                logger.warning("Follow-ups done but not recorded (%s); they will be repeated", exc)

    async def _resend_unanswered(self) -> None:
        """An incident whose opening event Prefect accepted but no run claimed gets the event again
        (``Store.resend_unanswered``). Prefect's in-memory messaging drops events when one of its
        consumers falls 10,000 behind, as in an alert storm; this is what brings such a response back."""
        grace = timedelta(seconds=self.settings.response_start_grace_seconds)
        now = datetime.now(timezone.utc)
        try:
            resent = await asyncio.to_thread(self.store.resend_unanswered, now - grace, now - grace)
        except StoreUnavailable:
            return
        if resent:
            logger.warning("No run claimed %d incident(s) %.0f s after their opening event was delivered; sent it "
                           "again: %s", len(resent), grace.total_seconds(), ", ".join(resent))
            self.wake_delivery()

    async def _follow_up_one(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        incident = await asyncio.to_thread(self.store.incident, event["incident"]["id"])
        if incident is None:
            return
        if kind == "incident.acknowledged":
            metrics.TIME_TO_ACK.observe(_seconds_between(incident.opened_at, incident.acknowledged_at))
            await asyncio.to_thread(self.store.add_timeline, incident.id, "acknowledged",
                                    "no further pages", incident.acknowledged_by)
            await asyncio.to_thread(self.notifier.send, incident, "acknowledged",
                                    f":eyes: Acknowledged by {incident.acknowledged_by}; no further pages.",
                                    pagerduty="acknowledge")
        elif kind == "incident.closed":
            if incident.close_reason == "alerts-resolved" and incident.flow_run_id:
                # A run waiting for approval must not act on a problem that went away.
                await release_waiting_run(incident.flow_run_id, "the alert resolved in Alertmanager")
            metrics.TIME_TO_RESOLVE.observe(_seconds_between(incident.opened_at, incident.closed_at))
            await asyncio.to_thread(self.store.add_timeline, incident.id, "closed", f"incident closed: {incident.close_reason}")
            await asyncio.to_thread(self.notifier.send, incident, "resolved",
                                    f":white_check_mark: Resolved ({incident.close_reason}).", pagerduty="resolve",
                                    details={"close_reason": incident.close_reason})
            await self._publish_closed(incident, with_incident_artifact=True)

    async def _publish_closed(self, incident: Incident, with_incident_artifact: bool = False) -> None:
        """A closed incident's record in the Prefect UI: its post-mortem and final timeline (and the
        incident artifact), from the store."""
        alerts = await asyncio.to_thread(self.store.incident_alerts, incident.id)
        timeline = await asyncio.to_thread(self.store.timeline, incident.id)
        pages = await asyncio.to_thread(self.store.pages, incident.id)
        collected = await asyncio.to_thread(kept, self.store, incident.id)  # what the response kept at close
        if with_incident_artifact:
            await publish_incident_artifact(incident, alerts)
        await publish_postmortem(incident, alerts, timeline, pages, collected)

    def _courier_wrote(self, incident_id: str) -> None:
        """From the courier's threads, after it added a line to an incident's timeline. The close writes the
        post-mortem and timeline at once, before its own messages (the resolve to PagerDuty, the Slack
        message) have gone out; what happens to them later (refused, late, dropped, a page's fallback)
        would otherwise be missing from the record people read afterwards."""
        if self._courier_loop is not None:  # in the loop's context (its Prefect settings), not the thread's
            loop, context = self._courier_loop
            loop.call_soon_threadsafe(self._rewrite_closed_soon, incident_id, context=context)

    def _rewrite_closed_soon(self, incident_id: str) -> None:
        if incident_id not in self._rewriting:  # lines that come meanwhile are in the same write
            self._rewriting[incident_id] = asyncio.create_task(self._rewrite_closed(incident_id))

    async def _rewrite_closed(self, incident_id: str) -> None:
        try:
            await asyncio.sleep(REWRITE_CLOSED_AFTER_SECONDS)
        finally:
            self._rewriting.pop(incident_id, None)  # a line added from now on is written again after this one
        try:
            incident = await asyncio.to_thread(self.store.incident, incident_id)
            if incident is not None and incident.status == "closed":  # an open one's run writes its timeline
                await self._publish_closed(incident)
        except Exception as exc:  # the store or the Prefect server is down: the store keeps every line
            logger.warning("Could not write incident %s's post-mortem again after a delivery's outcome: %s: %s",
                           incident_id, type(exc).__name__, exc)

    # -- the dead man's switch ----------------------------------------------------------
    async def watch_alertmanager_forever(self) -> None:
        """Raise AlertmanagerNotSending when the Watchdog stops arriving (``responder/watchdog.py``); one
        responder of those sharing a store does it. Needs only the store: it raises the alert while the
        Prefect side is down too (its event is delivered when the server is back)."""
        while True:
            try:
                if await self._leads("watchdog"):
                    await self.watchdog.check()
            except StoreUnavailable as exc:
                logger.error("The Alertmanager watchdog cannot read the store: %s", exc)
            except Exception:  # a watchdog that stops is a silent responder: log and go on
                logger.exception("The Alertmanager watchdog's check failed; trying again")
            await asyncio.sleep(self.watchdog.interval_seconds)

    async def deliver_messages_forever(self) -> None:
        """The notification outbox to people (``core/courier.py``); one responder of those sharing a store
        does it. Needs only the store and the channels: messages go out while the Prefect side is down."""
        self._courier_loop = asyncio.get_running_loop(), contextvars.copy_context()
        while True:
            try:
                if await self._leads("notifications"):
                    await asyncio.to_thread(self.courier.pass_once)
            except StoreUnavailable as exc:
                logger.error("The courier cannot read the notification outbox: %s", exc)
            except Exception:  # a courier that stops is a silent responder: log and go on
                logger.exception("The courier's pass failed; trying again")
            await asyncio.sleep(COURIER_EVERY_SECONDS)

    async def checkpoint_forever(self) -> None:
        """The SQLite store's write-ahead log copied into its database file from a worker thread, every
        :data:`CHECKPOINT_EVERY_SECONDS` when it was written, instead of inside the commit that took it past
        its threshold (``Store.defer_checkpoints``)."""
        while True:
            try:
                await asyncio.to_thread(self.store.checkpoint)
            except StoreUnavailable as exc:  # the commits' own threshold still bounds the log meanwhile
                logger.error("The store's checkpoint failed: %s", exc)
            except Exception:  # a checkpointer that stops leaves the log to the commits: log and go on
                logger.exception("The store's checkpoint failed; trying again")
            await asyncio.sleep(CHECKPOINT_EVERY_SECONDS)

    async def keep_maintenance_forever(self) -> None:
        """Silences in, held incidents out (``responder/maintenance.py``); one responder does it."""
        async with async_http_client() as http:
            while True:
                try:
                    if await self._leads("maintenance"):
                        await self.maintenance.check(http)
                except StoreUnavailable as exc:
                    logger.error("Maintenance windows: the store is unavailable: %s", exc)
                except Exception:  # never let window keeping stop silently
                    logger.exception("Keeping maintenance windows failed; trying again")
                await asyncio.sleep(MAINTENANCE_EVERY_SECONDS)

    # -- the whole process ---------------------------------------------------------
    async def serve(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            host=self.settings.intake_host,
            port=self.settings.intake_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,  # nothing reads the client's address: no X-Forwarded-* parsing per request
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # the CLI owns Ctrl-C

        async def prefect_side() -> None:
            await self.apply_deployments()
            await asyncio.gather(*(through_store_outages(name, loop) for name, loop in (
                ("event delivery", self.deliver_forever), ("follow-ups", self.follow_up_forever),
                ("executor", self.executor.run), ("approval deadlines", self.deadlines.run),
                ("maintenance", self.keep_maintenance_forever))))

        self._health_http = async_http_client()
        intake = asyncio.create_task(server.serve(), name="intake")
        # Pages need only the store: they go out while the Prefect side starts, or is down.
        pager = asyncio.create_task(through_store_outages("pager", self.pager.run), name="pager")
        courier = asyncio.create_task(through_store_outages("courier", self.deliver_messages_forever), name="courier")
        watchdog = asyncio.create_task(through_store_outages("watchdog", self.watch_alertmanager_forever),
                                       name="watchdog")
        prefect = asyncio.create_task(prefect_side(), name="prefect")
        tasks = [intake, pager, courier, watchdog, prefect]
        if self.store.defer_checkpoints():  # SQLite: the log copied beside the writers (PostgreSQL: nothing to do)
            tasks.append(asyncio.create_task(self.checkpoint_forever(), name="checkpoints"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.pager.close()
            self.courier.close()
            await self._health_http.aclose()
            self._health_http = None
        for task in tasks:
            if task not in done:
                task.cancel()
        for task in done:
            task.result()


async def through_store_outages(name: str, loop: Callable[[], Awaitable[None]],
                                pause: float = STORE_OUTAGE_PAUSE_SECONDS) -> None:
    """Run one of the responder's loops; a store outage it did not handle itself starts it again after
    ``pause`` instead of stopping the responder. What the loop had not recorded it does again: an event
    delivered but not yet marked is sent again (a second run for an incident finds it claimed and ends
    as a duplicate, acting on nothing), a message not yet marked sent goes out again (at least once, as
    the README says)."""
    while True:
        try:
            return await loop()
        except StoreUnavailable as exc:
            logger.error("%s: the store is unreachable (%s); starting again in %.0f s", name, exc, pause)
            await asyncio.sleep(pause)


def _has_follow_up(event: dict[str, Any]) -> bool:
    """Whether a delivered event has a local consequence (:meth:`Responder._follow_up_one`)."""
    return bool(event.get("incident")) and event["kind"] in ("incident.acknowledged", "incident.closed")


def _seconds_between(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
