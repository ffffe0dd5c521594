"""Several responders on one Prefect server, as docker-compose.yml runs it without Docker: `prefect server
start` on the real local PostgreSQL with Redis messaging (prefect-redis on the real local Redis), two real
`responder up` processes sharing one store on PostgreSQL. Each run is executed by one of them; when one
is killed with SIGKILL, the other carries its work on, and nothing is done or paged twice.

Receivers are local capture servers (no real pager is reachable from here).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from urllib.parse import urlparse

import psycopg
import pytest

from prefect.settings import PREFECT_API_URL, temporary_settings

from core.results import register_result_storage
from support.alerts import alert_body, load_fixture
from support.capture import CaptureServer
from support.common import HTTP, wait_for
from support.databases import empty_redis_database, temporary_database
from support.prefect import PrefectServer, paused_run, prefect_post, resume, wait_run_final
from support.responder import ResponderProcess, fire, make_config


@pytest.fixture
def stack(tmp_path, postgres_url, redis_url):
    url = urlparse(redis_url)
    with temporary_database(postgres_url, "prefect") as prefect_db, temporary_database(postgres_url, "store") as store_db, \
            empty_redis_database(redis_url) as redis_db:
        server = PrefectServer(tmp_path / "prefect", database_url=prefect_db.replace("postgresql://", "postgresql+asyncpg://"),
                               extra_env={"PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
                                          "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
                                          "PREFECT_REDIS_MESSAGING_HOST": url.hostname or "127.0.0.1",
                                          "PREFECT_REDIS_MESSAGING_PORT": str(url.port or 6379),
                                          "PREFECT_REDIS_MESSAGING_DB": str(redis_db)})
        server.start()
        try:
            yield server, store_db
        finally:
            server.stop()


def _holder_pid(store_db: str, flow_run_id: str) -> int | None:
    with psycopg.connect(store_db) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE name = %s", (f"run:{flow_run_id}",)).fetchone()
    return int(row[0].split("/")[1]) if row else None


def _acknowledged(store_db: str, incident_id: str) -> bool:
    """The run's first step, acknowledge, finished: a step result was kept after it wrote 'response'."""
    with psycopg.connect(store_db) as conn:
        return conn.execute("SELECT COUNT(*) FROM step_results WHERE created_at >= (SELECT MIN(at) FROM timeline "
                            "WHERE incident_id = %s AND kind = 'response')", (incident_id,)).fetchone()[0] > 0


def test_two_responders_share_one_prefect_server_and_one_takes_over_when_the_other_dies(tmp_path, stack):
    server, store_db = stack
    api = server.api_url
    webhook = CaptureServer()
    config = make_config(
        tmp_path, thresholds={"high-cpu-usage": {"cpu_percent": 0}},  # never verified: the run keeps measuring
        targets={"processes": {"killable_cmdline": ["scale-out-test-matches-nothing-"], "protected_names": ["systemd"]}},
        runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 60, "interval_seconds": 2}},
                           "responder-drill": {"approval_timeout_seconds": 12000}},
        notify={"webhooks": [f"{webhook.url}/hook"]})
    env = {"RESPONDER_DATABASE_URL": store_db, "RESPONDER_LEASE_SECONDS": "9", "RESPONDER_TIME_SCALE": "0.01"}
    responders = {name: ResponderProcess(tmp_path / name, config, api, env) for name in ("a", "b", "c")}

    async def register_at_once() -> None:  # what responders starting together do on a new server
        await asyncio.gather(*(register_result_storage() for _ in range(6)))
    with temporary_settings({PREFECT_API_URL: api}):
        asyncio.run(register_at_once())  # the losers of the race find what the winner made
    try:
        responders["a"].start(wait_ready=False)
        responders["b"].start()
        responders["a"].wait_ready()

        # A run executing (verifying for up to 60 s) on whichever responder claimed it; that one is killed.
        incident = fire(responders["a"], load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6]))
        run = wait_for(lambda: next((r for r in prefect_post(api, "/flow_runs/filter", {"limit": 50})
                                     if (r["parameters"].get("incident") or {}).get("id") == incident
                                     and r["state"]["type"] == "RUNNING"), None), 90, what="the run to be running")
        pid = wait_for(lambda: _holder_pid(store_db, run["id"]), 30, what="the run's lease")
        # Killed once acknowledge has kept its result: Running alone let the kill land inside that step,
        # after its timeline entries and before its result was kept, and the survivor did it again.
        wait_for(lambda: _acknowledged(store_db, incident), 30, interval=0.05, what="the run to acknowledge")
        victim = next(name for name, proc in responders.items() if proc.process and proc.process.pid == pid)
        survivor = "b" if victim == "a" else "a"
        os.kill(pid, signal.SIGKILL)
        final = wait_run_final(api, incident, timeout=150)
        assert final["state"]["name"] == "Escalated", final["state"]  # never verified, finished by the survivor
        history = HTTP.get(f"{api}/flow_run_states/", params={"flow_run_id": run["id"]}).json()
        assert any("Taken over from" in (s.get("message") or "") for s in history), [s["message"] for s in history]
        runs = [r for r in prefect_post(api, "/flow_runs/filter", {"limit": 50})
                if (r["parameters"].get("incident") or {}).get("id") == incident]
        assert len(runs) == 1
        with psycopg.connect(store_db) as conn:
            started = conn.execute("SELECT COUNT(*) FROM timeline WHERE incident_id = %s AND kind = 'response'",
                                   (incident,)).fetchone()[0]
        assert started == 1  # acknowledged once: the survivor restored that step

        # A drill waits for approval (suspended: held by nobody); the responder that received it dies; the
        # answer is carried out by another, once.
        responders["c"].start()
        drill = fire(responders[survivor], alert_body("ResponderDrill", uuid.uuid4().hex[:8]))
        asked = paused_run(api, drill)
        os.killpg(responders[survivor].process.pid, signal.SIGKILL)
        resume(api, asked["id"], True, "carry on", "tester")
        assert wait_run_final(api, drill, timeout=120)["state"]["name"] == "Resolved"
        with psycopg.connect(store_db) as conn:
            done = conn.execute("SELECT COUNT(*) FROM timeline WHERE incident_id = %s AND kind = 'action'",
                                (drill,)).fetchone()[0]
            claims = conn.execute("SELECT COUNT(*) FROM action_claims WHERE key LIKE %s", (f"{drill}:%",)).fetchone()[0]
        assert (done, claims) == (1, 1)
        def levels(incident_id: str) -> list[int]:
            return [r["body"]["level"] for r in webhook.requests
                    if r["body"].get("kind") == "page" and r["body"]["incident"]["id"] == incident_id]
        # The escalated incident stays open: all three levels, each once, whichever responder paged. Level 3
        # (+18 s) may fall due while the pager's duty moves from the responder just killed to the last one.
        wait_for(lambda: len(levels(incident)) >= 3, 30, what="the level 3 page")
        assert sorted(levels(incident)) == [1, 2, 3], levels(incident)
        # The drill may close before its first page is due (+3 s): none twice.
        assert len(levels(drill)) == len(set(levels(drill))), levels(drill)
    finally:
        for proc in responders.values():
            proc.stop()
        webhook.close()
