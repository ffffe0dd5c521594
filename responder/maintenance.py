"""Keeping maintenance windows: Alertmanager's silences in, held incidents out when a window is over.

* **Silences count as windows** when ``monitoring.alertmanager_url`` is set. A silence made before an
  alert fires keeps it from ever reaching the intake; what matters here is one made *after*, while a
  response is running: every 30 s the active silences are copied into the store (``am-<silence id>``),
  where the response's next mitigation and the pager find them. A silence that expired or was
  deleted ends its window.
* **When a window is over** (its time ran out, or ``responder maintenance end``), each incident it
  held that is still open gets a fresh response, once (``Store.release_hold``): the runbook's trigger
  starts a new run, which assesses again from the start.

One responder of those sharing a store does this (a lease, like event delivery).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

import httpx

from core.services import Services

logger = logging.getLogger("responder.maintenance")

SILENCES_EVERY_SECONDS = 30.0


def silence_matchers(silence: dict) -> list[str]:
    """A v2 silence's matchers in the matcher syntax windows use."""
    out = []
    for matcher in silence.get("matchers") or []:
        equal = matcher.get("isEqual", True)
        op = ("=~" if equal else "!~") if matcher.get("isRegex") else ("=" if equal else "!=")
        out.append(f'{matcher["name"]}{op}"{matcher["value"]}"')
    return out


class MaintenanceKeeper:
    def __init__(self, services: Services, wake_delivery: Callable[[], None]) -> None:
        self.store = services.store
        self.catalog = services.catalog
        self.wake_delivery = wake_delivery
        self._silences_read = float("-inf")

    async def check(self, http: httpx.AsyncClient) -> None:
        url = self.catalog.targets.monitoring.alertmanager_url
        if url and time.monotonic() - self._silences_read >= SILENCES_EVERY_SECONDS:
            try:
                await self.sync_silences(http, url)
                self._silences_read = time.monotonic()
            except (httpx.HTTPError, ValueError, KeyError) as exc:  # Alertmanager down: the windows stored stay
                logger.warning("Reading Alertmanager's silences failed (%s: %s); trying again", type(exc).__name__, exc)
        await self.release_over()

    async def sync_silences(self, http: httpx.AsyncClient, url: str) -> int:
        """Copy the active silences into the store's windows; end those no longer active. Returns how
        many are in force."""
        response = await http.get(f"{url.rstrip('/')}/api/v2/silences", timeout=10)
        response.raise_for_status()
        now = datetime.now(timezone.utc)
        stored = {w["id"]: w for w in await asyncio.to_thread(self.store.windows, now, "alertmanager")}
        active = {}
        for silence in response.json():
            if (silence.get("status") or {}).get("state") != "active":
                continue
            window = {"matchers": silence_matchers(silence),
                      "starts": datetime.fromisoformat(silence["startsAt"].replace("Z", "+00:00")),
                      "ends": datetime.fromisoformat(silence["endsAt"].replace("Z", "+00:00")),
                      "reason": silence.get("comment") or "Alertmanager silence",
                      "by": f"{silence.get('createdBy') or 'someone'} (Alertmanager silence)"}
            window_id = f"am-{silence['id']}"
            active[window_id] = window
            known = stored.get(window_id)
            if known and known["matchers"] == window["matchers"] and known["ends_at"] == window["ends"].isoformat():
                continue  # unchanged: no write every 30 s
            await asyncio.to_thread(lambda: self.store.add_window(
                service=None, runbook=None, matchers=window["matchers"], starts=window["starts"],
                ends=window["ends"], reason=window["reason"], by=window["by"], source="alertmanager",
                window_id=window_id))
            logger.warning("Alertmanager silence %s is a maintenance window until %s", silence["id"], window["ends"])
        for window_id in set(stored) - set(active):
            await asyncio.to_thread(self.store.end_window, window_id, "Alertmanager (silence expired or deleted)", now)
        return len(active)

    async def release_over(self) -> int:
        """A fresh response for each open incident held by a window that is over; returns how many."""
        now = datetime.now(timezone.utc)
        started = 0
        for window_id, incident_id in await asyncio.to_thread(self.store.holds_over, now):
            why = f"maintenance window {window_id} is over and the alert still fires: a fresh response"
            if await asyncio.to_thread(self.store.release_hold, window_id, incident_id, why):
                started += 1
                logger.warning("Incident %s: %s", incident_id, why)
        if started:
            self.wake_delivery()
        return started
