"""The dead man's switch for Alertmanager (``responder/watchdog.py``).

Two layers:

* In-process decisions on real stores (a SQLite file and the real PostgreSQL) and the real catalog:
  when the silence is reported, once, by whom, and when it is over. The ingest is the store's own.
* End to end: a real Alertmanager (Debian ``prometheus-alertmanager``) holds an always-firing
  ``Watchdog`` and re-sends it to the real ``responder up`` every second; Alertmanager is then
  killed. The responder raises ``AlertmanagerNotSending`` by itself: the catalog's runbook runs on
  the real Prefect server, and the critical policy's level-1 page goes out (to a local capture
  server standing in for the pager webhook: no pager is reachable from here). A new Alertmanager
  sending the Watchdog again closes the incident.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flows.registry import load_catalog
from core.services import build
from core.settings import ResponderSettings
from core.store import open_store
from responder.watchdog import FINGERPRINT, HEARTBEAT, RAISED_ALERTNAME, AlertmanagerWatchdog
from support.capture import CaptureServer
from support.common import HTTP, wait_for
from support.prefect import runs_for_incident
from support.prometheus import AlertmanagerServer
from support.responder import make_config, running_responder

INTERVAL = 60.0  # the shipped route's re-send interval; silent for twice that = reported


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, fresh_database):
    return None if request.param == "sqlite" else fresh_database


def _watchdog(tmp_path: Path, store, started: datetime) -> AlertmanagerWatchdog:
    settings = ResponderSettings(home=tmp_path / "home", watchdog_interval_seconds=INTERVAL)
    services = build(settings, load_catalog(make_config(tmp_path)), store)

    async def ingest(payload, raw, routes):
        return await asyncio.to_thread(store.ingest, payload, raw, routes)

    watchdog = AlertmanagerWatchdog(services, ingest)
    watchdog.started = started
    return watchdog


def _watchdog_incidents(store) -> list:
    return [i for i in store.incidents() if i.runbook == "alertmanager-not-sending"]


def test_silence_is_reported_once_and_closed_when_the_watchdog_is_back(tmp_path, store_url):
    store = open_store(store_url, tmp_path / "store.db")
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    watchdog = _watchdog(tmp_path, store, started=t0)

    # Never arrived: not armed, however long the silence.
    assert asyncio.run(watchdog.check(t0 + timedelta(hours=3))) is None
    assert _watchdog_incidents(store) == []

    asyncio.run(watchdog.arrived(t0))
    assert asyncio.run(watchdog.check(t0 + timedelta(seconds=2 * INTERVAL))) is None  # exactly twice: not yet
    assert asyncio.run(watchdog.check(t0 + timedelta(seconds=2 * INTERVAL + 1))) == "raised"
    [incident] = _watchdog_incidents(store)
    assert (incident.status, incident.severity) == ("open", "critical")
    [alert] = store.incident_alerts(incident.id)
    assert alert["fingerprint"] == FINGERPRINT and alert["labels"]["alertname"] == RAISED_ALERTNAME
    # It starts when the silence became too long, not when someone noticed.
    assert datetime.fromisoformat(alert["startsAt"]) == t0 + timedelta(seconds=2 * INTERVAL)

    # Still silent: nothing more. A second responder on the same store (a restart, a stand-by that took
    # the lease) raising it again stores no second episode.
    assert asyncio.run(watchdog.check(t0 + timedelta(seconds=10 * INTERVAL))) is None
    other = _watchdog(tmp_path, store, started=t0)
    store.heartbeat_reported(HEARTBEAT, None)  # as if the first one died before recording it had raised it
    assert asyncio.run(other.check(t0 + timedelta(seconds=10 * INTERVAL))) == "raised"
    assert len(_watchdog_incidents(store)) == 1 and len(store.incident_alerts(incident.id)) == 1

    # The Watchdog is back: the raised alert resolves, which closes the incident.
    back = t0 + timedelta(seconds=11 * INTERVAL)
    asyncio.run(watchdog.arrived(back))
    assert asyncio.run(watchdog.check(back + timedelta(seconds=1))) == "resolved"
    assert store.incident(incident.id).status == "closed"
    assert store.incident(incident.id).close_reason == "alerts-resolved"
    assert store.heartbeat(HEARTBEAT) == (back, None)

    # A later silence is a new episode and a new incident.
    assert asyncio.run(watchdog.check(back + timedelta(seconds=2 * INTERVAL + 1))) == "raised"
    assert [i.status for i in sorted(_watchdog_incidents(store), key=lambda i: i.opened_at)] == ["closed", "open"]


def test_a_responder_that_was_not_listening_expects_nothing_yet(tmp_path):
    """After downtime, the last arrival is old; the silence counts from this responder's start."""
    store = open_store(None, tmp_path / "store.db")
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    store.heartbeat_seen(HEARTBEAT, t0)
    watchdog = _watchdog(tmp_path, store, started=t0 + timedelta(hours=1))
    assert asyncio.run(watchdog.check(t0 + timedelta(hours=1, seconds=2 * INTERVAL))) is None
    assert asyncio.run(watchdog.check(t0 + timedelta(hours=1, seconds=2 * INTERVAL + 1))) == "raised"


def test_an_earlier_arrival_does_not_move_the_heartbeat_back(tmp_path):
    store = open_store(None, tmp_path / "store.db")
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    store.heartbeat_seen(HEARTBEAT, t0 + timedelta(seconds=30))
    store.heartbeat_seen(HEARTBEAT, t0)  # a slow responder of two recording an older post
    assert store.heartbeat(HEARTBEAT) == (t0 + timedelta(seconds=30), None)


# -- end to end: a real Alertmanager, killed ---------------------------------------------------------


def _start_alertmanager(directory: Path, responder) -> AlertmanagerServer:
    # The shipped route for the Watchdog re-sends it every group interval; here every second.
    directory.mkdir(exist_ok=True)
    alertmanager = AlertmanagerServer.with_config(directory, {
        "route": {"receiver": "responder", "group_by": ["alertname"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1s"},
        "receivers": [{"name": "responder", "webhook_configs": [{
            "url": f"{responder.url}/alerts", "send_resolved": True,
            "http_config": {"authorization": {"credentials": responder.token}}}]}],
    })
    # As Prometheus does for `expr: vector(1)`, which it pushes again and again; here once, lasting an hour.
    alertmanager.post_alert({"alertname": "Watchdog", "severity": "none"}, minutes=60, summary="always firing")
    return alertmanager


def _incidents(responder) -> list[dict]:
    response = HTTP.get(f"{responder.url}/incidents", headers={"Authorization": f"Bearer {responder.token}"})
    return [i for i in response.json() if i["runbook"] == "alertmanager-not-sending"]


def _metric(responder, name: str) -> float:
    for line in HTTP.get(f"{responder.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_a_killed_alertmanager_is_found_by_the_responder(prefect_server, tmp_path):
    pager = CaptureServer()
    config = make_config(tmp_path, notify={"webhooks": [f"{pager.url}/hook"]})
    with running_responder(tmp_path, prefect_server.api_url, config, RESPONDER_WATCHDOG_INTERVAL_SECONDS="1") as responder:
        alertmanager = _start_alertmanager(tmp_path / "am", responder)
        try:
            wait_for(lambda: _metric(responder, "responder_alertmanager_watchdog_last_seen_timestamp_seconds") > 0,
                     30, what="the Watchdog to arrive and arm the switch")
            # Arriving every second, the switch stays quiet (silence would be reported after 2 s).
            wait_for(lambda: _metric(responder, "responder_alertmanager_watchdog_last_seen_timestamp_seconds")
                     > datetime.now(timezone.utc).timestamp() - 1.5, 10, what="the Watchdog re-sent every second")
            assert _incidents(responder) == []
        finally:
            alertmanager.process.kill()  # broken, as far as anyone downstream can tell
            alertmanager.process.wait(10)
        killed = datetime.now(timezone.utc)

        incident = wait_for(lambda: next(iter(_incidents(responder)), None), 30,
                            what="the responder to raise AlertmanagerNotSending by itself")
        assert incident["severity"] == "critical" and incident["status"] == "open"
        raised = datetime.fromisoformat(incident["opened_at"])
        assert raised - killed < timedelta(seconds=10), (killed, raised)
        run = wait_for(lambda: next(iter(runs_for_incident(prefect_server.api_url, incident["id"])), None), 60,
                       what="the alertmanager-not-sending runbook to start")
        assert run["name"]
        page = wait_for(lambda: next((r["body"] for r in pager.requests if r["body"].get("kind") == "page"
                                      and r["body"]["incident"]["id"] == incident["id"]), None),
                        30, what="the critical policy's level-1 page")
        assert page["level"] == 1

        # Alertmanager back (a new one, as after a fix): the Watchdog arrives, the incident closes.
        alertmanager = _start_alertmanager(tmp_path / "am2", responder)
        try:
            closed = wait_for(lambda: (i := next(iter(_incidents(responder)), None)) and i["status"] == "closed" and i,
                              30, what="the Watchdog's return to close the incident")
            assert closed["close_reason"] == "alerts-resolved"
            assert len(_incidents(responder)) == 1
        finally:
            alertmanager.stop()
    pager.close()
