"""The docker-compose topology without Docker: a Prefect server on the real local PostgreSQL and the
responder's store on PostgreSQL too (as in docker-compose.yml), end to end from an alert to its run.
"""

from __future__ import annotations

import uuid

import psycopg

from support.alerts import load_fixture
from support.prefect import PrefectServer, wait_run_final
from support.responder import make_config, running_responder


def test_alert_to_run_with_prefect_and_the_store_on_postgresql(tmp_path, postgres_url):
    suffix = uuid.uuid4().hex[:8]
    prefect_db, store_db = f"prefect_{suffix}", f"responder_{suffix}"
    base = postgres_url.rpartition("/")[0]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{prefect_db}"')
        conn.execute(f'CREATE DATABASE "{store_db}"')
    server = PrefectServer(tmp_path / "prefect", database_url=f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{prefect_db}")
    try:
        server.start()
        config = make_config(tmp_path, thresholds={"high-cpu-usage": {"cpu_percent": 100}},
                             runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 5, "interval_seconds": 1}}})
        with running_responder(tmp_path, server.api_url, config, RESPONDER_DATABASE_URL=f"{base}/{store_db}") as responder:
            body = load_fixture("high_cpu_firing.json", unique=suffix)
            [incident_id] = responder.post(body).json()["incidents_opened"]
            run = wait_run_final(server.api_url, incident_id, timeout=90)
            assert run["state"]["name"] == "Resolved"
            assert run["created_by"]["type"] == "AUTOMATION"
        with psycopg.connect(f"{base}/{store_db}") as conn:
            status, flow_run_id = conn.execute("SELECT status, flow_run_id FROM incidents WHERE id = %s",
                                               (incident_id,)).fetchone()
        assert (status, flow_run_id) == ("closed", run["id"])
        with psycopg.connect(f"{base}/{prefect_db}") as conn:
            assert conn.execute("SELECT COUNT(*) FROM flow_run WHERE id = %s", (run["id"],)).fetchone()[0] == 1
    finally:
        server.stop()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{prefect_db}" WITH (FORCE)')
            conn.execute(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)')
