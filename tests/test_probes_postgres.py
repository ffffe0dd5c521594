"""PostgreSQL probes against a real server.

The server comes from ``RESPONDER_TEST_POSTGRES_URL``, else ``postgresql://postgres@127.0.0.1:5432/test``
(then the ``root`` user), else a throwaway server (``tests/conftest.py``); with none the
session fails. The role must be allowed to create databases and terminate
backends (a superuser on the build machine).

Long-running queries, idle transactions and lock waits are real sessions opened here; every
session is ended with ``pg_terminate_backend`` and every table or database dropped afterwards.

``pg_stat_statements``: on the build machine the extension can be created but is not in
``shared_preload_libraries``, so the "not installed" and "installed but not loaded" paths run
for real; the "loaded" path runs only on a server that preloads the extension.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from tasks.base import ErrorCode, ResponderError
from tasks.probes import postgres


@pytest.fixture(scope="module")
def pg_url(postgres_url) -> str:
    """The suite's PostgreSQL (tests/conftest.py: env, local server or a throwaway one; never skipped)."""
    return postgres_url


@pytest.fixture
def admin(pg_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def sessions(pg_url, admin):
    """Opens extra real sessions on demand; terminates and closes them all at teardown."""
    opened: list[psycopg.Connection] = []

    def open_session(autocommit: bool = True, **kwargs) -> psycopg.Connection:
        conn = psycopg.connect(pg_url, autocommit=autocommit, **kwargs)
        opened.append(conn)
        return conn

    yield open_session
    pids = [c.info.backend_pid for c in opened if not c.closed]
    if pids:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
    for conn in opened:
        conn.close()


def _send(conn: psycopg.Connection, query: str) -> None:
    """Start a query without waiting for it (libpq async send), so it keeps running server-side."""
    conn.pgconn.send_query(query.encode())


def _wait_for(admin: psycopg.Connection, pids: list[int], condition: str, timeout_s: float = 5.0) -> None:
    """Wait until every pid's pg_stat_activity row matches ``condition`` (a fixed SQL text from this file)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = admin.execute(
            f"SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND {condition}", [pids]
        ).fetchone()[0]
        if n == len(pids):
            return
        time.sleep(0.05)
    raise AssertionError(f"sessions {pids} never reached: {condition}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def scratch_db(pg_url, admin) -> Iterator[str]:
    """A throwaway database, dropped (with its sessions) afterwards; yields its connection string."""
    name = f"responder_probe_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(pg_url, dbname=name)
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_readiness_reports_a_live_server(pg_url):
    result = postgres.readiness(SecretStr(pg_url))
    assert result.ok is True
    assert result.value is not None and result.value > 0
    assert result.evidence["dbname"] == conninfo_to_dict(pg_url)["dbname"]
    assert result.evidence["in_recovery"] is False
    assert "password" not in result.evidence["target"]


def test_readiness_reports_unreachable_without_raising_or_leaking_the_password():
    url = SecretStr(f"postgresql://responder:s3cr3t-pw@127.0.0.1:{_free_port()}/test")
    started = time.monotonic()
    result = postgres.readiness(url, connect_timeout_s=2)
    assert time.monotonic() - started < 5
    assert result.ok is False and result.value is None
    assert "refused" in result.evidence["error"].lower()
    assert result.evidence["target"]["port"] == url.get_secret_value().split(":")[3].split("/")[0]
    assert "s3cr3t-pw" not in result.model_dump_json()


def test_unparseable_connection_string_is_a_config_error_without_the_secret():
    with pytest.raises(ResponderError) as err:
        postgres.readiness(SecretStr("postgresql://u:s3cr3t@h:5432/db?nonsense=1"))
    assert err.value.code is ErrorCode.CONFIG
    assert "s3cr3t" not in str(err.value) and err.value.__cause__ is None


def test_other_probes_raise_the_transient_error_when_unreachable():
    with pytest.raises(psycopg.OperationalError):
        postgres.long_running_queries(f"postgresql://postgres@127.0.0.1:{_free_port()}/test")


def test_long_running_queries_names_real_sleeping_sessions(pg_url, admin, sessions):
    sleepers = [sessions() for _ in range(2)]
    pids = [c.info.backend_pid for c in sleepers]
    for conn in sleepers:
        _send(conn, "SELECT pg_sleep(30)")
    _wait_for(admin, pids, "state = 'active' AND query LIKE '%%pg_sleep%%'")
    time.sleep(0.8)  # older than the 0.6 s threshold below

    result = postgres.long_running_queries(pg_url, min_minutes=0.01)
    found = {s["pid"]: s for s in result.evidence["sessions"]}
    assert set(pids) <= set(found)
    assert result.ok is False
    assert result.threshold == pytest.approx(0.6)
    assert result.value >= 0.8
    truth = {
        row[0]: row[1:]
        for row in admin.execute(
            "SELECT pid, backend_start, query_start, usename, datname FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]
        )
    }
    for pid in pids:
        row = found[pid]
        backend_start, query_start, usename, datname = truth[pid]
        # The identity a later cancel action re-checks must be exactly the server's.
        assert (row["backend_start"], row["query_start"]) == (backend_start.isoformat(), query_start.isoformat())
        assert (row["usename"], row["datname"], row["state"]) == (usename, datname, "active")
        assert row["query"] == "SELECT pg_sleep(30)" and row["query_truncated"] is False
        assert row["duration_s"] >= 0.8

    # Evidence goes into artifacts and events as JSON: no datetimes or other objects in it.
    assert json.loads(json.dumps(result.evidence)) == result.evidence

    calm = postgres.long_running_queries(pg_url, min_minutes=5)
    assert not set(pids) & {s["pid"] for s in calm.evidence["sessions"]}
    assert calm.threshold == 300 and calm.value >= 0.8


def test_long_running_query_text_is_truncated(pg_url, admin, sessions):
    conn = sessions()
    long_sql = "SELECT pg_sleep(30) /* " + "y" * 2000 + " */"
    _send(conn, long_sql)
    _wait_for(admin, [conn.info.backend_pid], "state = 'active'")
    time.sleep(0.7)
    result = postgres.long_running_queries(pg_url, min_minutes=0.01)
    [row] = [s for s in result.evidence["sessions"] if s["pid"] == conn.info.backend_pid]
    assert len(row["query"]) == postgres.QUERY_TEXT_LIMIT and row["query_truncated"] is True


def test_connections_counts_real_sessions_by_state(pg_url, admin, sessions, scratch_db):
    """Three idle sessions on a database of the test's own: the suite's other workers open and close
    sessions on the shared databases at the same time, so only this database's count is exact."""
    dbname = conninfo_to_dict(scratch_db)["dbname"]
    before = postgres.connections(pg_url)
    idle = [sessions(dbname=dbname) for _ in range(3)]
    for conn in idle:
        conn.execute("SELECT 1")
    _wait_for(admin, [c.info.backend_pid for c in idle], "state = 'idle'")
    after = postgres.connections(pg_url)

    max_connections = int(admin.execute("SHOW max_connections").fetchone()[0])
    assert after.evidence["max_connections"] == max_connections
    assert before.evidence["by_database"].get(dbname, 0) == 0
    assert after.evidence["by_database"][dbname] == 3
    assert after.evidence["by_state"]["idle"] >= 3
    assert after.evidence["total"] == sum(after.evidence["by_state"].values())
    assert after.value == pytest.approx(after.evidence["total"] / max_connections, abs=1e-4)
    assert after.ok is (after.value <= 0.8)
    tiny = postgres.connections(pg_url, threshold=1 / (max_connections * 10))
    assert tiny.ok is False


def test_long_transactions_sees_idle_in_transaction(pg_url, admin, sessions):
    conn = sessions(autocommit=False)
    conn.execute("SELECT 1")  # opens a transaction and leaves it idle
    pid = conn.info.backend_pid
    _wait_for(admin, [pid], "state = 'idle in transaction'")
    time.sleep(0.7)
    result = postgres.long_transactions(pg_url, min_minutes=0.01)
    [row] = [s for s in result.evidence["sessions"] if s["pid"] == pid]
    assert row["state"] == "idle in transaction" and row["xact_start"] is not None
    assert result.ok is False and result.value >= 0.7


def test_connection_holders_groups_real_sessions_and_names_their_pids(pg_url, admin, sessions):
    """Two applications hold six sessions: some idle in a transaction (BEGIN; SELECT 1; left open),
    one running a query, the rest idle. The probe groups them with the right counts and pids."""
    tag = uuid.uuid4().hex[:8]
    billing_app, reports_app = f"billing-{tag}", f"reports-{tag}"
    billing = [sessions(application_name=billing_app) for _ in range(4)]
    reports = [sessions(application_name=reports_app) for _ in range(2)]
    long_sql = "SELECT 1 /* " + "y" * 2000 + " */"
    for conn, text in ((billing[0], "SELECT 1"), (billing[1], long_sql)):
        conn.execute("BEGIN")
        conn.execute(text)
    _send(billing[2], "SELECT pg_sleep(30)")
    for conn in reports:
        conn.execute("SELECT 1")
    in_transaction = [c.info.backend_pid for c in billing[:2]]
    _wait_for(admin, in_transaction, "state = 'idle in transaction'")
    _wait_for(admin, [billing[2].info.backend_pid], "state = 'active'")
    time.sleep(0.8)  # idle longer than the 0.6 s threshold below

    result = postgres.connection_holders(pg_url, idle_in_transaction_minutes=0.01, oldest=500)
    me = admin.execute(
        "SELECT usename, host(client_addr) FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    groups = {g["application_name"]: g for g in result.evidence["groups"]}
    assert groups[billing_app] == {
        "application_name": billing_app, "usename": me[0], "client_addr": me[1], "count": 4,
        "by_state": {"idle in transaction": 2, "active": 1, "idle": 1},
        "pids": sorted(c.info.backend_pid for c in billing),
    }
    assert groups[reports_app]["count"] == 2 and groups[reports_app]["by_state"] == {"idle": 2}
    assert groups[reports_app]["pids"] == sorted(c.info.backend_pid for c in reports)
    counts = [g["count"] for g in result.evidence["groups"]]
    assert counts == sorted(counts, reverse=True)
    assert result.evidence["total"] == sum(counts) + result.evidence["other_groups"]["connections"]
    assert result.evidence["max_connections"] == int(admin.execute("SHOW max_connections").fetchone()[0])

    # The summary names the biggest holders, with their states and pids.
    assert result.summary.startswith(f"{result.evidence['total']} of {result.evidence['max_connections']}: ")
    top = result.evidence["groups"][0]
    assert f"{top['count']} app={top['application_name'] or '(none)'} user={top['usename']}" in result.summary
    if billing_app in [g["application_name"] for g in result.evidence["groups"][:3]]:  # not crowded out by others
        pids = ", ".join(str(p) for p in groups[billing_app]["pids"])
        assert (f"4 app={billing_app} user={me[0]} from {me[1]} (idle in transaction 2, active 1, idle 1)"
                f" pids {pids}") in result.summary

    # Idle in transaction: longest idle first, both ages, the identity an action re-checks.
    idle = {s["pid"]: s for s in result.evidence["idle_in_transaction"]}
    assert set(in_transaction) <= set(idle)
    truth = {row[0]: tuple(t.isoformat() for t in row[1:]) for row in admin.execute(
        "SELECT pid, backend_start, xact_start, state_change FROM pg_stat_activity WHERE pid = ANY(%s)",
        [in_transaction])}
    for pid in in_transaction:
        row = idle[pid]
        assert (row["backend_start"], row["xact_start"], row["state_change"]) == truth[pid]
        assert row["state"] == "idle in transaction" and row["application_name"] == billing_app
        assert row["xact_age_s"] >= row["state_age_s"] >= 0.8
        assert f"pid {pid} (" in result.summary.split("idle in transaction over 0.6 s: ")[1]
    assert idle[in_transaction[0]]["query"] == "SELECT 1" and idle[in_transaction[0]]["query_truncated"] is False
    cut = idle[in_transaction[1]]
    assert len(cut["query"]) == postgres.QUERY_TEXT_LIMIT and cut["query_truncated"] is True
    ages = [s["state_age_s"] for s in result.evidence["idle_in_transaction"]]
    assert ages == sorted(ages, reverse=True)
    assert result.ok is False and result.threshold == pytest.approx(0.6) and result.value >= 0.8

    # The oldest sessions: by connection age, with what they wait on; never the probe's own.
    oldest = result.evidence["oldest"]
    assert [s["age_s"] for s in oldest] == sorted((s["age_s"] for s in oldest), reverse=True)
    sleeper = next(s for s in oldest if s["pid"] == billing[2].info.backend_pid)
    assert (sleeper["state"], sleeper["wait_event_type"], sleeper["wait_event"]) == ("active", "Timeout", "PgSleep")
    assert not any("idle_rank" in (s["query"] or "") for s in oldest), "the probe listed its own session"
    assert json.loads(json.dumps(result.evidence)) == result.evidence

    calm = postgres.connection_holders(pg_url, idle_in_transaction_minutes=5)
    assert calm.threshold == 300 and calm.ok is (calm.value <= 300)
    assert f"pid {in_transaction[0]} (" not in calm.summary  # listed as holders, not as over the threshold


def test_connection_holders_rejects_nonsense_limits(pg_url):
    for bad in ({"idle_in_transaction_minutes": -1}, {"oldest": 0}, {"limit": 0}, {"groups": 0}):
        with pytest.raises(ResponderError) as err:
            postgres.connection_holders(pg_url, **bad)
        assert err.value.code is ErrorCode.CONFIG


def test_lock_waits_names_the_blocker(pg_url, admin, sessions):
    table = f"responder_lock_{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(table)
    admin.execute(sql.SQL("CREATE TABLE {} (id int)").format(ident))
    holder = sessions(autocommit=False)
    waiter = sessions()
    try:
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ident))
        _send(waiter, sql.SQL("SELECT count(*) FROM {}").format(ident).as_string(admin))
        _wait_for(admin, [waiter.info.backend_pid], "wait_event_type = 'Lock'")

        result = postgres.lock_waits(pg_url)
        [row] = [w for w in result.evidence["waiting"] if w["pid"] == waiter.info.backend_pid]
        assert row["blocked_by"] == [holder.info.backend_pid]
        assert holder.info.backend_pid in result.evidence["blocking_pids"]
        assert result.ok is False and result.value >= 1 and result.threshold == 0

        assert postgres.connections(pg_url).evidence["waiting_on_locks"] >= 1
    finally:
        # The lock must go before the table can be dropped.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)",
            [[holder.info.backend_pid, waiter.info.backend_pid]],
        )
        admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))


def test_slow_statements_reports_a_missing_or_unloaded_extension(scratch_db):
    missing = postgres.slow_statements(scratch_db)
    assert missing.ok is True and missing.value is None
    assert missing.evidence["available"] is False
    assert "not installed" in missing.evidence["reason"]

    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        loaded = "pg_stat_statements" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]

    installed = postgres.slow_statements(scratch_db, min_mean_ms=20)
    if not loaded:
        assert installed.ok is True and installed.value is None
        assert installed.evidence["available"] is False
        assert "not loaded" in installed.evidence["reason"]
        assert "shared_preload_libraries" in installed.evidence["reason"]
        return

    # Only on a server that preloads the extension: a statement averaging ~50 ms is found.
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        for _ in range(3):
            conn.execute("SELECT pg_sleep(0.05)")
    present = postgres.slow_statements(scratch_db, min_mean_ms=20)
    assert present.evidence["available"] is True and present.ok is False
    assert any("pg_sleep" in s["query"] and s["mean_ms"] >= 45 for s in present.evidence["statements"])


def test_database_sizes_and_largest_tables(scratch_db):
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE big AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
        conn.execute("CREATE INDEX ON big (id)")
        conn.execute("CREATE TABLE small (id int)")
        expected_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        expected_big = conn.execute("SELECT pg_total_relation_size('big')").fetchone()[0]

    tables = postgres.largest_tables(scratch_db, n=5)
    assert [(t["schema"], t["table"]) for t in tables.evidence["tables"]] == [("public", "big"), ("public", "small")]
    big = tables.evidence["tables"][0]
    assert big["total_bytes"] == expected_big and big["index_bytes"] > 0
    assert big["total_bytes"] >= big["table_bytes"] + big["index_bytes"]
    assert tables.value == expected_big

    sizes = postgres.database_sizes(scratch_db)
    dbname = conninfo_to_dict(scratch_db)["dbname"]
    by_name = {d["datname"]: d["size_bytes"] for d in sizes.evidence["databases"]}
    assert by_name[dbname] == expected_size
    assert sizes.evidence["current_database"] == dbname
    assert list(by_name.values()) == sorted(by_name.values(), reverse=True)
    assert postgres.database_sizes(scratch_db, threshold_bytes=1).ok is False
