"""The dead man's switch for Alertmanager: its always-firing ``Watchdog`` alert must keep arriving.

Alertmanager re-sends the Watchdog every ``RESPONDER_WATCHDOG_INTERVAL_SECONDS`` (the shipped route
in ``deploy/alertmanager/alertmanager.yml``: about every 60 s). The intake records each arrival in
the store (``heartbeats``), so every responder sharing the store sees it. When none has arrived for
twice the interval, Alertmanager is broken or cut off, and nothing else would tell anyone, because
every other alert goes through it: the responder raises an ``AlertmanagerNotSending`` alert itself,
through the same ingest as a posted one, so the catalog's runbook for it runs, the incident opens
and the critical escalation policy pages at once. When the Watchdog arrives again, the same alert
is resolved, which closes the incident.

* **Armed by the first arrival.** A responder whose Alertmanager has no Watchdog route never raises
  it (the README shows the route).
* **A responder that was not listening expects nothing.** The silence is counted from the later of
  the last arrival and this responder's start, so a restart after downtime is not reported as a
  broken Alertmanager; Alertmanager sends the Watchdog again within one interval.
* **Once.** The raised alert's ``startsAt`` is the moment the silence became too long (last
  arrival + 2 × interval), so raising it twice (two responders, a restart half-way) stores one
  episode: the store keys episodes on (fingerprint, startsAt). One responder at a time does the
  checking (a lease, like event delivery).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone

from core import metrics
from core.alerts import AlertmanagerPayload, Route
from core.services import Services
from core.store import IngestResult

logger = logging.getLogger("responder.watchdog")

HEARTBEAT = "alertmanager-watchdog"
RAISED_ALERTNAME = "AlertmanagerNotSending"  # routed by flows/monitoring_stack.py ALERTMANAGER_NOT_SENDING
FINGERPRINT = hashlib.sha256(b"runbook-responder:alertmanager-watchdog").hexdigest()[:16]

Ingest = Callable[[AlertmanagerPayload, bytes, Mapping[str, Route]], Awaitable[IngestResult]]


class AlertmanagerWatchdog:
    def __init__(self, services: Services, ingest: Ingest) -> None:
        self.store = services.store
        self.catalog = services.catalog
        self.alertname = services.settings.watchdog_alertname
        self.silence = timedelta(seconds=2 * services.settings.watchdog_interval_seconds)
        self.ingest = ingest
        self.started = datetime.now(timezone.utc)

    @property
    def interval_seconds(self) -> float:
        """How often to look: a small share of the silence that raises the alert."""
        return min(5.0, self.silence.total_seconds() / 8)

    def is_watchdog(self, payload: AlertmanagerPayload) -> bool:
        return any(alert.alertname == self.alertname and alert.status == "firing" for alert in payload.alerts)

    async def arrived(self, at: datetime) -> None:
        await asyncio.to_thread(self.store.heartbeat_seen, HEARTBEAT, at)
        metrics.WATCHDOG_LAST_SEEN.set(at.timestamp())

    async def check(self, now: datetime | None = None) -> str | None:
        """One look: raise the alert for a silence that became too long, resolve it once the Watchdog is
        back. Returns "raised", "resolved" or None."""
        now = now or datetime.now(timezone.utc)
        beat = await asyncio.to_thread(self.store.heartbeat, HEARTBEAT)
        if beat is None:
            return None  # never arrived: not armed
        last_seen, reported_since = beat
        metrics.WATCHDOG_LAST_SEEN.set(last_seen.timestamp())
        if reported_since is None:
            since = max(last_seen, self.started)
            if now - since <= self.silence:
                return None
            raised_at = since + self.silence
            result = await self._send("firing", raised_at, None, last_seen)
            await asyncio.to_thread(self.store.heartbeat_reported, HEARTBEAT, raised_at)
            logger.error("Alertmanager's %s has not arrived since %s: raised %s (incident %s)", self.alertname,
                         last_seen.isoformat(), RAISED_ALERTNAME, ", ".join(result.incidents_opened) or "already open")
            return "raised"
        if last_seen > reported_since:
            await self._send("resolved", reported_since, last_seen, last_seen)
            await asyncio.to_thread(self.store.heartbeat_reported, HEARTBEAT, None)
            logger.warning("Alertmanager's %s arrived again at %s: %s resolved", self.alertname,
                           last_seen.isoformat(), RAISED_ALERTNAME)
            return "resolved"
        return None

    async def _send(self, status: str, starts: datetime, ends: datetime | None, last_seen: datetime) -> IngestResult:
        labels = {"alertname": RAISED_ALERTNAME, "severity": "critical", "source": "responder-watchdog"}
        silent_for = int(self.silence.total_seconds())
        alert = {
            "status": status,
            "labels": labels,
            "annotations": {
                "summary": f"Alertmanager's {self.alertname} alert stopped arriving",
                "description": (f"No {self.alertname} alert from Alertmanager since {last_seen.isoformat()} "
                                f"(expected every {silent_for // 2} s, silent for over {silent_for} s): "
                                "Alertmanager is down, cannot reach the responder, or its route changed, "
                                "so no other alert is being delivered either."),
            },
            "startsAt": starts.isoformat(),
            "endsAt": ends.isoformat() if ends else "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": FINGERPRINT,
        }
        body = {
            "version": "4", "groupKey": f'responder/watchdog:{{alertname="{RAISED_ALERTNAME}"}}', "truncatedAlerts": 0,
            "status": status, "receiver": "responder-watchdog", "groupLabels": {"alertname": RAISED_ALERTNAME},
            "commonLabels": labels, "commonAnnotations": {}, "externalURL": "", "alerts": [alert],
        }
        raw = json.dumps(body).encode()
        payload = AlertmanagerPayload.model_validate(body)
        return await self.ingest(payload, raw, self.catalog.routes([RAISED_ALERTNAME]))
