"""database_connections, DATABASE_SLOW_QUERIES and DatabaseConnectionFailure through the real
responder and Prefect server, against the real PostgreSQL.

* Long queries are real sessions running ``SELECT pg_sleep(60)`` in a database of this module.
  The long-query limits are 0.03 minutes (1.8 s) here instead of the seeds' 5 minutes, so the
  runbooks find them after a few seconds; nothing else changes.
* ``pg_stat_statements`` is not preloaded on this server: the slow-query runbook's missing
  extension paths (not installed; installed but not loaded) run for real.
* The shared PostgreSQL cannot be stopped by a test, so DatabaseConnectionFailure points at a
  second target, ``down``, on a free port where nothing listens. Its configured restart (the
  ``services.postgres`` argv) starts a TCP forwarder from that port to the real server: after
  approval the database "comes back", and verification connects to real PostgreSQL through it.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from urllib.parse import urlsplit

import psycopg
import pytest

from support.alerts import load_fixture
from support.common import free_port, wait_for
from support.prefect import answer, form_description, paused_run, report, wait_run_final
from support.responder import fire, make_config, running_responder

LONG_QUERY_MINUTES = 0.03

PROXY = """
import socket, sys, threading
listen_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", listen_port))
server.listen(16)

def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def serve(client):
    upstream = socket.create_connection((host, port))
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    pipe(upstream, client)

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# The configured restart of the `postgres` service: start the forwarder, detached, and wait until it listens.
LAUNCHER = """
import socket, subprocess, sys, time
proxy, listen_port, host, port, pidfile = sys.argv[1:6]
proc = subprocess.Popen([sys.executable, proxy, listen_port, host, port], stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
open(pidfile, "w").write(str(proc.pid))
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(listen_port)), 0.2).close()
        break
    except OSError:
        time.sleep(0.05)
print("postgres forwarder started on", listen_port)
"""


@pytest.fixture(scope="module")
def database(postgres_url):
    name = f"responder_rb_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def down_port():
    return free_port()


@pytest.fixture(scope="module")
def responder(prefect_server, tmp_path_factory, database, down_port):
    tmp = tmp_path_factory.mktemp("runbook-database")
    (tmp / "proxy.py").write_text(PROXY)
    (tmp / "launcher.py").write_text(LAUNCHER)
    real = urlsplit(database)
    down_url = real._replace(netloc=f"{real.username or 'postgres'}@127.0.0.1:{down_port}").geturl()
    restart = [sys.executable, str(tmp / "launcher.py"), str(tmp / "proxy.py"), str(down_port),
               real.hostname, str(real.port or 5432), str(tmp / "proxy.pid")]
    budget = {"verify": {"budget_seconds": 2, "interval_seconds": 1}, "approval_timeout_seconds": 40}
    config = make_config(
        tmp,
        thresholds={"database-connections": {"long_query_minutes": LONG_QUERY_MINUTES},
                    "database-slow-queries": {"cancel_after_minutes": LONG_QUERY_MINUTES}},
        runbook_overrides={name: budget for name in
                           ("database-connections", "database-slow-queries", "database-connection-failure")},
        # no "default": an alert whose labels select neither target must say so
        targets={"postgres": {"app": {"url": database}, "down": {"url": down_url}},
                 "services": {"postgres": {"restart": restart}},
                 "paths": {"disk": [str(tmp)]}},
    )
    with running_responder(tmp, prefect_server.api_url, config) as proc:
        yield proc
    pidfile = tmp / "proxy.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass


@contextmanager
def sleeping_sessions(url: str, n: int):
    """``n`` real sessions each running ``SELECT pg_sleep(60)``; yields their backend pids."""
    conns = [psycopg.connect(url, autocommit=True) for _ in range(n)]
    errors: list[BaseException] = []

    def sleep(conn):
        try:
            conn.execute("SELECT pg_sleep(60)")
        except psycopg.Error as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sleep, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    pids = [c.info.backend_pid for c in conns]
    try:
        wait_for(lambda: len(active(url, pids)) == n, 10, what="the sleeping sessions")
        yield pids
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_cancel_backend(%s)", [pid])
        for t in threads:
            t.join(10)
        for c in conns:
            c.close()


def active(url: str, pids: list[int]) -> set[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s) AND state = 'active'", [pids]).fetchall()
    return {row[0] for row in rows}


def alive(url: str, pids: list[int]) -> set[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]).fetchall()
    return {row[0] for row in rows}


def alert_body(alertname: str, labels: dict) -> dict:
    fingerprint = uuid.uuid4().hex[:16]
    labels = {"alertname": alertname, "severity": "warning", "instance": "db-1:9187", "job": "postgres", **labels}
    annotations = {"summary": f"{alertname} test"}
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{alertname}", test="{fingerprint}"}}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "responder", "groupLabels": {"alertname": alertname},
        "commonLabels": labels, "commonAnnotations": annotations, "externalURL": "http://alertmanager.test",
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations,
                    "startsAt": datetime.now(timezone.utc).isoformat(), "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "", "fingerprint": fingerprint}],
    }


# -- database_connections (seed 001) ----------------------------------------------------------


def test_long_queries_are_terminated_only_after_approval_and_verification_passes(responder, prefect_server, database):
    api = prefect_server.api_url
    with sleeping_sessions(database, 2) as pids:
        time.sleep(LONG_QUERY_MINUTES * 60 + 0.5)
        incident_id = fire(responder, load_fixture("db_connections_critical.json", unique=uuid.uuid4().hex[:6]))

        asked = []
        state = None
        for _ in pids:
            run = paused_run(api, incident_id, not_state=state)
            state = run["state"]["id"]
            description = form_description(api, run)
            assert "terminate_backend" in description and "pg_sleep" in description, description
            asked += [int(pid) for pid in re.findall(r"Approve: terminate_backend on backend pid (\d+)", description)]
            assert alive(database, pids) == set(pids) - set(asked[:-1]), "a backend went before its approval"
            assert "postgresql://" not in description  # the URL stays out of the form (target_ref)
            answer(api, run, True, "dba-alice")

        final = wait_run_final(api, incident_id)
        assert sorted(asked) == sorted(pids)
        assert final["state"]["name"] == "Resolved", final["state"]
        assert alive(database, pids) == set()
    text = report(api, incident_id)
    for pid in pids:
        assert f"backend pid {pid}" in text
    assert text.count("| terminate_backend |") == 2 and "dba-alice" in text
    assert "| pg_connections |" in text and "| pg_lock_waits |" in text and "| pg_long_transactions |" in text


# -- DATABASE_SLOW_QUERIES (seed 000) ---------------------------------------------------------


def test_pg_stat_statements_installed_but_not_loaded_is_evidence_not_a_crash(responder, prefect_server, database):
    api = prefect_server.api_url
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    try:
        incident_id = fire(responder, alert_body("DatabaseSlowQueries", {"datname": "app"}))
        final = wait_run_final(api, incident_id)
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("DROP EXTENSION pg_stat_statements")
    assert final["state"]["name"] == "Resolved", final["state"]  # no query running over 1 s
    assert "is installed but not loaded" in report(api, incident_id)


def test_rejected_cancel_leaves_the_query_running_and_escalates(responder, prefect_server, database):
    api = prefect_server.api_url
    with sleeping_sessions(database, 1) as [pid]:
        time.sleep(LONG_QUERY_MINUTES * 60 + 0.5)
        incident_id = fire(responder, alert_body("DATABASE_SLOW_QUERIES", {"datname": "app"}))
        run = paused_run(api, incident_id)
        description = form_description(api, run)
        assert f"Approve: cancel_backend on backend pid {pid}" in description, description
        answer(api, run, False, "dba-bob")
        final = wait_run_final(api, incident_id)
        assert final["state"]["name"] == "Escalated", final["state"]
        assert active(database, [pid]) == {pid}
    text = report(api, incident_id)
    assert "rejected by dba-bob" in text
    # pg_stat_statements is not installed in this database: said in the report, the run went on
    assert "not measured: extension pg_stat_statements is not installed" in text


# -- DatabaseConnectionFailure (seed 003) -----------------------------------------------------


def test_unreachable_database_is_restarted_after_approval(responder, prefect_server, database, down_port):
    api = prefect_server.api_url
    incident_id = fire(responder, alert_body("DatabaseConnectionFailure", {"datname": "down"}))
    run = paused_run(api, incident_id)
    description = form_description(api, run)
    assert "restart_service" in description and "PostgreSQL unreachable" in description, description
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{down_port}/postgres", connect_timeout=2).close()

    answer(api, run, True, "ops-carol")
    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Resolved", final["state"]
    text = report(api, incident_id)
    assert "PostgreSQL unreachable" in text and "answering" in text and "| restart_service |" in text


def test_no_configured_target_is_said_and_escalated(responder, prefect_server):
    api = prefect_server.api_url
    incident_id = fire(responder, alert_body("DatabaseConnectionFailure", {"datname": "elsewhere", "job": "pg"}))
    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Escalated", final["state"]
    assert "no PostgreSQL target configured" in report(api, incident_id)
