"""cancel_backend / terminate_backend against a real PostgreSQL (``postgres_url`` from conftest).

Every target is a real session opened here, running a real ``pg_sleep`` or waiting on an
advisory lock the test holds (so "the query finished" happens exactly when the test says).
The rows the actions get are the ones :func:`tasks.probes.postgres.long_running_queries`
returns, so the timestamps are the probe's strings. Every session is terminated, and the role
created for the privilege tests dropped, at teardown.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.pq import DiagnosticField, ExecStatus
from pydantic import SecretStr

from tasks.mitigations import REGISTRY
from tasks.actions import postgres as actions
from tasks.base import ErrorCode, ResponderError
from tasks.probes import postgres as probes


@pytest.fixture
def admin(postgres_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def sessions(postgres_url, admin):
    """Opens real sessions on demand; terminates and closes them all at teardown."""
    opened: list[psycopg.Connection] = []

    def open_session(url: str | None = None, **kwargs) -> psycopg.Connection:
        conn = psycopg.connect(url or postgres_url, autocommit=True, **kwargs)
        opened.append(conn)
        return conn

    yield open_session
    pids = [c.info.backend_pid for c in opened if not c.closed]
    if pids:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
    for conn in opened:
        conn.close()


def _activity(admin: psycopg.Connection, pid: int) -> tuple | None:
    return admin.execute(
        "SELECT state, backend_start, query_start FROM pg_stat_activity WHERE pid = %s", [pid]
    ).fetchone()


def _probe_row(url: str, pid: int, query_start_not: str | None = None, timeout_s: float = 5.0) -> dict:
    """The probe's row for ``pid`` once it is active (and, optionally, on a newer query)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = probes.long_running_queries(url, min_minutes=0, limit=500).evidence["sessions"]
        for row in rows:
            if row["pid"] == pid and row["state"] == "active" and row["query_start"] != query_start_not:
                return row
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never showed up as an active long-running query")


def _sleeping(open_session, url: str, seconds: int = 60) -> tuple[psycopg.Connection, dict]:
    conn = open_session(url)
    conn.pgconn.send_query(f"SELECT pg_sleep({int(seconds)})".encode())
    return conn, _probe_row(url, conn.info.backend_pid)


def _wait_gone(admin: psycopg.Connection, pid: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _activity(admin, pid) is not None:
        assert time.monotonic() < deadline, f"backend {pid} is still there"
        time.sleep(0.02)


def _params(row: dict) -> dict:
    return {"pid": row["pid"], "backend_start": row["backend_start"], "query_start": row["query_start"]}


def test_terminate_backend_ends_the_same_long_query(postgres_url, admin, sessions):
    conn, row = _sleeping(sessions, postgres_url)
    pid = row["pid"]
    outcome = REGISTRY["terminate_backend"].act(SecretStr(postgres_url), **_params(row))
    assert outcome.status == "done", outcome.detail
    assert outcome.risk.value == "risky" and outcome.dry_run is False
    assert outcome.changes == [f"terminated backend pid {pid} ({row['usename']}@{row['datname']})"]
    assert _activity(admin, pid) is None  # the action waited until the backend had exited
    result = conn.pgconn.get_result()
    assert result is None or result.status == ExecStatus.FATAL_ERROR


def test_cancel_backend_ends_the_query_and_keeps_the_connection(postgres_url, admin, sessions):
    conn, row = _sleeping(sessions, postgres_url)
    pid = row["pid"]
    outcome = actions.cancel_backend(postgres_url, **_params(row))
    assert outcome.status == "done", outcome.detail
    assert outcome.changes == [f"cancelled the query of backend pid {pid} ({row['usename']}@{row['datname']})"]
    result = conn.pgconn.get_result()
    assert result.status == ExecStatus.FATAL_ERROR
    assert result.error_field(DiagnosticField.SQLSTATE) == b"57014"  # query_canceled
    while conn.pgconn.get_result() is not None:
        pass
    state, backend_start, _ = _activity(admin, pid)
    assert state == "idle" and backend_start.isoformat() == row["backend_start"]
    assert conn.execute("SELECT 42").fetchone() == (42,)


@pytest.mark.parametrize("action", [actions.cancel_backend, actions.terminate_backend])
def test_dry_run_leaves_the_query_running(postgres_url, admin, sessions, action):
    _, row = _sleeping(sessions, postgres_url)
    before = _activity(admin, row["pid"])
    outcome = action(postgres_url, **_params(row), dry_run=True)
    assert outcome.status == "would_do" and outcome.dry_run is True and outcome.changes == []
    assert f"({row['pid']})" in outcome.detail
    time.sleep(0.2)
    assert _activity(admin, row["pid"]) == before
    assert before[0] == "active"


def test_a_finished_query_and_a_newer_query_are_not_needed(postgres_url, admin, sessions):
    """Record a query's start, let it finish, start another: the old record must not touch the new one."""
    key = random.randint(1, 2**62)
    admin.execute("SELECT pg_advisory_lock(%s)", [key])
    conn = sessions()
    pid = conn.info.backend_pid
    conn.pgconn.send_query(f"SELECT pg_advisory_xact_lock({key})".encode())
    old = _probe_row(postgres_url, pid)

    admin.execute("SELECT pg_advisory_unlock(%s)", [key])
    while conn.pgconn.get_result() is not None:
        pass
    idle = actions.terminate_backend(postgres_url, **_params(old))
    assert idle.status == "not_needed" and "idle" in idle.detail

    conn.pgconn.send_query(b"SELECT pg_sleep(60)")
    new = _probe_row(postgres_url, pid, query_start_not=old["query_start"])
    for action in (actions.cancel_backend, actions.terminate_backend):
        outcome = action(postgres_url, **_params(old))
        assert outcome.status == "not_needed", outcome.detail
        assert "another one" in outcome.detail and outcome.changes == []
    state, _, query_start = _activity(admin, pid)
    assert state == "active" and query_start.isoformat() == new["query_start"]


def test_a_reused_pid_is_not_needed(postgres_url, admin, sessions):
    _, row = _sleeping(sessions, postgres_url)
    other_connection = datetime.fromisoformat(row["backend_start"]) - timedelta(microseconds=1)
    outcome = actions.terminate_backend(postgres_url, **{**_params(row), "backend_start": other_connection.isoformat()})
    assert outcome.status == "not_needed" and "another connection" in outcome.detail
    assert _activity(admin, row["pid"])[0] == "active"


def test_a_gone_backend_is_not_needed(postgres_url, admin, sessions):
    _, row = _sleeping(sessions, postgres_url)
    admin.execute("SELECT pg_terminate_backend(%s)", [row["pid"]])
    _wait_gone(admin, row["pid"])
    outcome = actions.cancel_backend(postgres_url, **_params(row))
    assert outcome.status == "not_needed" and "exited" in outcome.detail


def test_refuses_its_own_backend(postgres_url):
    with probes._connect(postgres_url) as conn:
        me = conn.execute(
            "SELECT pid, backend_start, query_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        with pytest.raises(ResponderError) as err:
            actions._signal(conn, "terminate", me["pid"], me["backend_start"], {"query_start": me["query_start"]},
                            dry_run=False, all_databases=False, wait_seconds=1)
        assert conn.execute("SELECT 1 AS one").fetchone()["one"] == 1
    assert err.value.code is ErrorCode.REFUSED and "own connection" in err.value.message


def test_refuses_a_walsender(postgres_url, admin, sessions):
    walsender = sessions(replication="database")
    pid = walsender.info.backend_pid
    backend_type, backend_start = admin.execute(
        "SELECT backend_type, backend_start FROM pg_stat_activity WHERE pid = %s", [pid]
    ).fetchone()
    assert backend_type == "walsender"
    with pytest.raises(ResponderError) as err:
        actions.terminate_backend(postgres_url, pid, backend_start.isoformat(), backend_start.isoformat())
    assert err.value.code is ErrorCode.REFUSED and "walsender" in err.value.message
    assert _activity(admin, pid) is not None


@pytest.mark.parametrize("action", [actions.cancel_backend, actions.terminate_backend])
def test_refuses_server_processes(postgres_url, admin, action):
    row = admin.execute(
        "SELECT pid, backend_type, backend_start FROM pg_stat_activity"
        " WHERE backend_type IN ('autovacuum launcher', 'logical replication launcher') ORDER BY backend_type LIMIT 1"
    ).fetchone()
    assert row is not None, "no autovacuum or logical replication launcher to test with"
    pid, backend_type, backend_start = row
    with pytest.raises(ResponderError) as err:
        action(postgres_url, pid, backend_start.isoformat(), backend_start.isoformat())
    assert err.value.code is ErrorCode.REFUSED and backend_type in err.value.message
    assert _activity(admin, pid)[1] == backend_start


def test_other_databases_only_when_allowed(postgres_url, fresh_database, admin, sessions):
    conn, row = _sleeping(sessions, fresh_database)
    with pytest.raises(ResponderError) as err:
        actions.cancel_backend(postgres_url, **_params(row))
    assert err.value.code is ErrorCode.REFUSED and "all_databases" in err.value.message
    assert _activity(admin, row["pid"])[0] == "active"

    outcome = actions.cancel_backend(postgres_url, **_params(row), all_databases=True)
    assert outcome.status == "done", outcome.detail
    assert conn.pgconn.get_result().error_field(DiagnosticField.SQLSTATE) == b"57014"


def test_timestamps_must_be_the_probes_aware_iso_strings(postgres_url, sessions):
    _, row = _sleeping(sessions, postgres_url)
    for bad in ("yesterday", datetime.fromisoformat(row["query_start"]).replace(tzinfo=None).isoformat()):
        with pytest.raises(ResponderError) as err:
            actions.terminate_backend(postgres_url, **{**_params(row), "query_start": bad})
        assert err.value.code is ErrorCode.CONFIG


@pytest.fixture
def plain_role(postgres_url, admin) -> Iterator[tuple[str, str]]:
    """A login role without superuser; yields (its name, a URL connecting as it)."""
    name = f"responder_act_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield name, make_conninfo(postgres_url, user=name)
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
        )
        time.sleep(0.1)
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_without_privileges_it_raises_instead_of_guessing(postgres_url, admin, sessions, plain_role):
    """Unable to see the session: CONFIG. Seeing it but not allowed to signal a superuser: REFUSED."""
    superuser = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    assert superuser, "the test role must be a superuser to create roles and own the target session"
    name, url = plain_role
    _, row = _sleeping(sessions, postgres_url)

    with pytest.raises(ResponderError) as err:
        actions.terminate_backend(url, **_params(row))
    assert err.value.code is ErrorCode.CONFIG and "pg_monitor" in err.value.message

    admin.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(name)))
    with pytest.raises(ResponderError) as err:
        actions.terminate_backend(url, **_params(row))
    assert err.value.code is ErrorCode.REFUSED and "superuser" in err.value.message
    assert _activity(admin, row["pid"])[0] == "active"


# -- terminate_idle_transaction: sessions left "idle in transaction" -------------------------


def _idle_in_transaction(open_session, url: str) -> tuple[psycopg.Connection, dict]:
    """A real session that ran ``BEGIN; SELECT 1`` and left its transaction open; the probe's row for it."""
    conn = open_session(url)
    conn.execute("BEGIN")
    conn.execute("SELECT 1")
    return conn, _holder_row(url, conn.info.backend_pid)


def _holder_row(url: str, pid: int, state_change_not: str | None = None, timeout_s: float = 5.0) -> dict:
    """``connection_holders``' idle-in-transaction row for ``pid`` (optionally, idle since a newer moment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = probes.connection_holders(url, idle_in_transaction_minutes=0, limit=500).evidence["idle_in_transaction"]
        for row in rows:
            if row["pid"] == pid and row["state_change"] != state_change_not:
                return row
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never showed up idle in transaction")


def _idle_params(row: dict) -> dict:
    return {k: row[k] for k in ("pid", "backend_start", "xact_start", "state_change")}


def test_terminate_idle_transaction_ends_the_same_idle_transaction(postgres_url, admin, sessions):
    conn, row = _idle_in_transaction(sessions, postgres_url)
    pid = row["pid"]
    outcome = REGISTRY["terminate_idle_transaction"].act(SecretStr(postgres_url), **_idle_params(row))
    assert outcome.status == "done", outcome.detail
    assert outcome.action == "terminate_idle_transaction" and outcome.risk.value == "risky"
    assert outcome.changes == [f"terminated backend pid {pid} ({row['usename']}@{row['datname']})"]
    assert "transaction had been idle for" in outcome.detail
    assert _activity(admin, pid) is None  # the action waited until the backend had exited
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")


def test_terminate_idle_transaction_dry_run_leaves_it_open(postgres_url, admin, sessions):
    conn, row = _idle_in_transaction(sessions, postgres_url)
    outcome = actions.terminate_idle_transaction(postgres_url, **_idle_params(row), dry_run=True)
    assert outcome.status == "would_do" and outcome.dry_run is True and outcome.changes == []
    assert f"pg_terminate_backend({row['pid']})" in outcome.detail and "idle for" in outcome.detail
    assert _activity(admin, row["pid"])[0] == "idle in transaction"
    assert conn.execute("SELECT 42").fetchone() == (42,)  # still the same open transaction


def test_a_transaction_that_ended_moved_on_or_is_in_use_is_not_needed(postgres_url, admin, sessions):
    """Every way the recorded idle transaction can stop being the one a human approved to end."""
    conn, row = _idle_in_transaction(sessions, postgres_url)
    pid = row["pid"]

    conn.execute("SELECT 2")  # a statement in the same transaction: it is in use, not forgotten
    used = actions.terminate_idle_transaction(postgres_url, **_idle_params(row))
    assert used.status == "not_needed" and "in use" in used.detail, used.detail

    conn.pgconn.send_query(b"SELECT pg_sleep(60)")  # running right now, inside the same transaction
    _probe_row(postgres_url, pid)
    busy = actions.terminate_idle_transaction(postgres_url, **_idle_params(row))
    assert busy.status == "not_needed" and "no longer idle; the session is active" in busy.detail, busy.detail
    admin.execute("SELECT pg_cancel_backend(%s)", [pid])
    while conn.pgconn.get_result() is not None:
        pass
    conn.execute("ROLLBACK")

    ended = actions.terminate_idle_transaction(postgres_url, **_idle_params(row))
    assert ended.status == "not_needed" and ended.detail == "the transaction has ended; the session is idle"

    conn.execute("BEGIN")
    conn.execute("SELECT 3")
    _holder_row(postgres_url, pid, state_change_not=row["state_change"])
    another = actions.terminate_idle_transaction(postgres_url, **_idle_params(row))
    assert another.status == "not_needed" and "in another one now" in another.detail, another.detail

    reused = datetime.fromisoformat(row["backend_start"]) - timedelta(microseconds=1)
    other = actions.terminate_idle_transaction(
        postgres_url, **{**_idle_params(row), "backend_start": reused.isoformat()})
    assert other.status == "not_needed" and "another connection" in other.detail
    assert _activity(admin, pid)[0] == "idle in transaction"  # none of them touched the session


def test_terminate_idle_transaction_timestamps_must_be_the_probes(postgres_url, sessions):
    _, row = _idle_in_transaction(sessions, postgres_url)
    with pytest.raises(ResponderError) as err:
        actions.terminate_idle_transaction(postgres_url, **{**_idle_params(row), "xact_start": "yesterday"})
    assert err.value.code is ErrorCode.CONFIG
