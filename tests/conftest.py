"""Real things for the test suite: a Prefect server, PostgreSQL, Redis, and `responder up` itself.

* Prefect: one real Prefect server per session, the one ``make run`` embeds (SQLite in a temporary
  PREFECT_HOME); ``RESPONDER_TEST_PREFECT_DATABASE=postgresql``: ``prefect server start`` on PostgreSQL.
* PostgreSQL / Redis: ``RESPONDER_TEST_POSTGRES_URL`` / ``RESPONDER_TEST_REDIS_URL`` when set,
  else the local servers on 127.0.0.1, else throwaway servers started from local binaries;
  otherwise the session fails and says how to get them.
* The responder runs as the real ``responder up`` process, reached over real HTTP.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from typing import Iterator

import pytest

from support.capture import CaptureServer
from support.common import free_port, wait_for
from support.databases import _pg_ok, private_postgres, temporary_database
from support.prefect import PrefectServer, serving, share_migrated_database, sqlite_prefect_server
from support.responder import LIVE_RESPONDERS


# The slowest modules first. `make test` hands whole modules to its workers (`--dist loadfile`) in the
# order they are collected, so a slow module that starts last sets the suite's end. Each is a few
# minutes of one worker (per-module sums of `pytest --junitxml` times, 2026-12-06); a module not listed
# keeps its place after these.
SLOW_FIRST = ("test_policy", "test_lifecycle", "test_outage", "test_up", "test_intake", "test_hosts", "test_approval",
              "test_runbook_application", "test_scale_out", "test_notify_outage", "test_e2e", "test_collected_at_close",
              "test_embedded_server", "test_scheduled", "test_runbook_health", "test_lifecycle_decisions",
              "test_runbook_database", "test_postgres_topology", "test_runbook_monitoring", "test_oncall", "test_catalog")


def pytest_collection_modifyitems(config, items):
    rank = {name: place for place, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module's tests keep their order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in LIVE_RESPONDERS:
            if proc.process is not None and proc.log_path.exists():
                report.sections.append((f"responder log ({proc.home})", proc.log()[-4000:]))


# -- Prefect server -----------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _one_migrated_prefect_database(tmp_path_factory) -> None:
    """Every new SQLite Prefect database of the session starts as a copy of one migrated database
    (support/prefect.py); pytest-xdist's workers share the session's base directory, so they share it."""
    base = tmp_path_factory.getbasetemp()
    share_migrated_database((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "prefect-migrated")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory, postgres_url) -> Iterator[PrefectServer]:
    """The suite's shared Prefect server: the one `make run` embeds, on SQLite (the default users get).

    ``RESPONDER_TEST_PREFECT_DATABASE=postgresql`` puts it on PostgreSQL instead (``prefect server
    start``, as in docker-compose.yml), in a database the suite creates and drops. The stock server on
    SQLite is not offered: under this suite's load it stalled now and then for SQLite's 60 s busy
    timeout and failed tests at random (README, "Measured")."""
    choice = os.environ.get("RESPONDER_TEST_PREFECT_DATABASE", "sqlite")
    if choice == "sqlite":
        with sqlite_prefect_server(tmp_path_factory.mktemp("prefect-home")) as server:
            yield server
        return
    if choice != "postgresql":
        pytest.fail(f"RESPONDER_TEST_PREFECT_DATABASE={choice!r}: expected 'sqlite' (default) or 'postgresql'")
    with temporary_database(postgres_url, "responder_prefect") as url:
        database_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        with serving(PrefectServer(tmp_path_factory.mktemp("prefect-home"), database_url=database_url)) as server:
            yield server


# -- PostgreSQL and Redis ------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    env = os.environ.get("RESPONDER_TEST_POSTGRES_URL")
    if env:
        assert _pg_ok(env), f"RESPONDER_TEST_POSTGRES_URL={env} does not accept connections"
        yield env
        return
    for candidate in ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test",
                      "postgresql://postgres@127.0.0.1:5432/postgres"):
        if _pg_ok(candidate):
            yield candidate
            return
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.fail("No PostgreSQL: set RESPONDER_TEST_POSTGRES_URL, run one on 127.0.0.1:5432, "
                    "or install PostgreSQL binaries (apt-get install postgresql)")
    with private_postgres() as url:
        yield url


@pytest.fixture
def fresh_database(postgres_url) -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); returns its URL."""
    with temporary_database(postgres_url, "responder_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    import redis

    env = os.environ.get("RESPONDER_TEST_REDIS_URL")
    candidates = [env] if env else ["redis://127.0.0.1:6379/0"]
    for url in candidates:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
            yield url
            return
        except redis.RedisError:
            if env:
                pytest.fail(f"RESPONDER_TEST_REDIS_URL={env} does not answer PING")
    binary = shutil.which("redis-server")
    if not binary:
        pytest.fail("No Redis: set RESPONDER_TEST_REDIS_URL, run one on 127.0.0.1:6379, or apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis.Redis.from_url(url).ping(), 10, what="throwaway Redis")
    yield url
    proc.terminate()


# -- capture server (stands in for webhooks we cannot reach from here) -----------------


@pytest.fixture(scope="module")
def webhook() -> Iterator[CaptureServer]:
    """One capture server per test module for the webhooks of ``config/notify.yaml`` (the same text
    Slack would get; Slack, PagerDuty and Discord are unreachable here)."""
    server = CaptureServer()
    yield server
    server.close()


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    server = CaptureServer()
    yield server
    server.close()
