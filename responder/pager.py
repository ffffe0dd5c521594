"""The pager: sends escalation pages when they are due, in a lane of its own.

Twice a second it reads the open, unacknowledged incidents and the levels already paged
(one indexed read of the store), and sends every page that is due (``core/escalation.py``). It
runs beside the intake, not behind the Prefect side: a page waits for no response run, no
executor slot and no Prefect server request, so a storm that keeps the server busy, or a server
that is down, does not make it late. Pages go out on a thread pool of their own, 16 wide (a slow
Slack call delays no other incident's page, and in a storm the senders hold their share of the
process against the response runs' threads); one incident's levels go out in order. While a
maintenance window covers an incident's alert, its pages wait for the window's end, unless
``config/policy.yaml`` says ``page_during_maintenance: true``.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from core import metrics
from core.escalation import Page, due_pages, send_page
from core.maintenance import Window, covering, in_force
from core.services import Services
from core.store import Incident, StoreUnavailable

logger = logging.getLogger("responder.pager")


class Pager:
    def __init__(self, services: Services, interval_seconds: float = 0.5, senders: int = 16) -> None:
        self.services = services
        self.interval_seconds = interval_seconds
        self._pool = ThreadPoolExecutor(max_workers=senders, thread_name_prefix="pager")
        self._sending: set[str] = set()  # incidents whose pages are being sent right now
        self.last_pass: datetime | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.page_due(loop)
            except StoreUnavailable as exc:
                logger.error("The pager cannot read the store: %s", exc)
            except Exception:  # a pager that stops is a silent responder: log and go on
                logger.exception("The pager's pass failed; trying again")
            await asyncio.sleep(self.interval_seconds)

    async def page_due(self, loop: asyncio.AbstractEventLoop) -> int:
        """One pass: start sending every due page; returns how many were due."""
        settings, catalog, store = self.services.settings, self.services.catalog, self.services.store
        candidates = await loop.run_in_executor(self._pool, store.paging_candidates)
        now = datetime.now(timezone.utc)
        windows = [] if catalog.policy.page_during_maintenance else await loop.run_in_executor(
            self._pool, in_force, store, catalog, now)
        due, oldest = 0, 0.0
        for incident, paged in candidates:
            pages = due_pages(incident, paged, catalog, settings.time_scale, now)
            if pages and windows and await loop.run_in_executor(self._pool, self._held, incident, windows):
                continue  # a maintenance window covers it: its pages wait for the window's end
            due += len(pages)
            oldest = max([oldest, *((now - page.due).total_seconds() for page in pages)])
            if pages and incident.id not in self._sending:
                self._sending.add(incident.id)
                loop.run_in_executor(self._pool, self._send, incident, pages).add_done_callback(
                    lambda _, incident_id=incident.id: self._sending.discard(incident_id))
        metrics.PAGES_DUE.set(due)
        metrics.PAGES_OLDEST_DUE.set(oldest)
        metrics.PAGER_LAST_PASS.set(now.timestamp())
        self.last_pass = now
        return due

    def _held(self, incident: Incident, windows: list[Window]) -> bool:
        firing = [alert["labels"] for alert in self.services.store.incident_alerts(incident.id)
                  if alert["status"] == "firing"]
        return any(covering(windows, incident.runbook, labels) for labels in firing or [{}])  # {}: a drill's own

    def _send(self, incident: Incident, pages: list[Page]) -> None:
        for page in pages:
            try:
                send_page(incident, page, self.services.store, self.services.notifier, datetime.now(timezone.utc))
            except Exception:  # the next pass sees it again unless its claim was recorded
                logger.exception("Paging level %s for incident %s failed", page.level, incident.id)
                return

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
