"""database_connections: who holds the connections, and the leaked idle transactions ended only
after approval, through the real ``responder up``, the real Prefect server and real PostgreSQL.

* The holders are real sessions of two applications (psycopg connections with
  ``application_name=``), in a database of this module: some ran ``BEGIN; SELECT 1`` and left the
  transaction open (``idle in transaction``), the others are plain idle connections.
* The connection count is the server's, not this database's, so this module runs a PostgreSQL
  server of its own (``private_postgres``, from the local binaries): on the shared server the
  rest of the suite runs at the same time and its sessions move the count (pools of Prefect
  servers on PostgreSQL in other modules), and in CI this test once ended *Escalated* instead
  of *Resolved* with the right sessions terminated. On its own server the only client sessions are this test's and the probe's. The test
  counts them right before starting the responder and sets ``connections_ratio`` halfway
  between "with the idle transactions" and "without them". Holding them puts the runbook over
  the ratio; terminating them brings it back under, which is what verification must see.
  ``idle_in_transaction_minutes`` is 0.03 (1.8 s) instead of the catalog's 5.
* This module starts its own responder. Its store is SQLite (as ``make_config`` leaves it), so
  it holds no PostgreSQL connection of its own.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from support.alerts import load_fixture
from support.databases import private_postgres, temporary_database
from support.prefect import answer, form_description, paused_run, report, wait_run_final
from support.responder import fire, make_config, running_responder

IDLE_MINUTES = 0.03


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with private_postgres() as server:
        with temporary_database(server, "responder_holders") as url:
            yield url


@contextmanager
def holding(url: str, application_name: str, in_transaction: int, idle: int) -> Iterator[tuple[list[int], list[int]]]:
    """Real sessions of one application: ``in_transaction`` ran ``BEGIN; SELECT 1`` and left it open,
    ``idle`` ran ``SELECT 1`` and wait. Yields their pids (in transaction, idle); all are ended afterwards."""
    conns = [psycopg.connect(url, autocommit=True, application_name=application_name)
             for _ in range(in_transaction + idle)]
    pids = [c.info.backend_pid for c in conns]
    try:
        for conn in conns[:in_transaction]:
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
        for conn in conns[in_transaction:]:
            conn.execute("SELECT 1")
        yield pids[:in_transaction], pids[in_transaction:]
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
        for conn in conns:
            conn.close()


def other_sessions(url: str, mine: list[int]) -> tuple[int, int]:
    """(client sessions on the server that are neither ``mine`` nor this query's, ``max_connections``)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE pid <> ALL(%s)), current_setting('max_connections')::int"
            " FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()", [mine]
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def holder(url: str) -> str:
    """How the probe names this test's sessions: user and client address."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT usename, host(client_addr) FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return f"user={row[0]} from {row[1] or 'local socket'}"


def alive(url: str, pids: list[int]) -> set[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]).fetchall()
    return {row[0] for row in rows}


def test_holders_are_named_and_idle_transactions_end_only_after_approval(prefect_server, tmp_path, database):
    api = prefect_server.api_url
    tag = uuid.uuid4().hex[:6]
    billing_app, reports_app = f"billing-{tag}", f"reports-{tag}"
    with holding(database, billing_app, in_transaction=3, idle=2) as (billing_tx, billing_idle), \
            holding(database, reports_app, in_transaction=2, idle=1) as (reports_tx, reports_idle):
        opened = time.monotonic()
        in_transaction = billing_tx + reports_tx
        held = in_transaction + billing_idle + reports_idle
        others, max_connections = other_sessions(database, held)
        # over with all 8 held (others + 8), under once the 5 idle transactions are gone (others + 3)
        ratio = (others + len(held) - len(in_transaction) / 2) / max_connections
        config = make_config(
            tmp_path,
            thresholds={"database-connections": {"connections_ratio": ratio,
                                                 "idle_in_transaction_minutes": IDLE_MINUTES}},
            runbook_overrides={"database-connections": {"verify": {"budget_seconds": 20, "interval_seconds": 1},
                                                        "approval_timeout_seconds": 60}},
            targets={"postgres": {"app": {"url": database}}, "paths": {"disk": [str(tmp_path)]}},
        )
        with running_responder(tmp_path, api, config) as responder:
            time.sleep(max(0.0, opened + IDLE_MINUTES * 60 + 0.5 - time.monotonic()))
            incident_id = fire(responder, load_fixture("db_connections_critical.json", unique=tag))

            asked: list[int] = []
            state = None
            for _ in in_transaction:
                run = paused_run(api, incident_id, not_state=state)
                state = run["state"]["id"]
                description = form_description(api, run)
                asked += [int(pid) for pid in
                          re.findall(r"Approve: terminate_idle_transaction on backend pid (\d+)", description)]
                assert "idle in transaction for" in description and "postgresql://" not in description, description
                assert alive(database, held) == set(held) - set(asked[:-1]), "a backend went before its approval"
                answer(api, run, True, "dba-dana")

            final = wait_run_final(api, incident_id)
        assert sorted(asked) == sorted(in_transaction)
        assert final["state"]["name"] == "Resolved", final["state"]
        assert alive(database, held) == set(billing_idle + reports_idle)  # only the leaked transactions went

    text = report(api, incident_id)
    [holders] = [line for line in text.splitlines() if line.startswith("| pg_connection_holders |")]
    for app, tx, idle in ((billing_app, billing_tx, billing_idle), (reports_app, reports_tx, reports_idle)):
        pids = ", ".join(str(pid) for pid in sorted(tx + idle))
        assert (f"{len(tx) + len(idle)} app={app} {holder(database)}"
                f" (idle in transaction {len(tx)}, idle {len(idle)}) pids {pids}") in holders, holders
    for pid in in_transaction:
        assert f"pid {pid} (" in holders.split("idle in transaction over")[1]
    assert text.count("| terminate_idle_transaction |") == len(in_transaction) and "dba-dana" in text
    assert "| verify: pg_connections_and_long_queries | yes |" in text
