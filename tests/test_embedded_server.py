"""The embedded Prefect server's two changes (responder/prefect_server.py), each shown on real parts:
a real SQLite file through Prefect's own database configuration classes, and the real server app."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import psutil

import pytest
import sqlalchemy as sa
from prefect.server.database.configurations import AioSqliteConfiguration

from responder.embedded import EmbeddedPrefectServer, no_csrf_tokens_when_unprotected
from responder.prefect_server import QueuedWritesSqliteConfiguration
from support.common import HTTP, free_port, wait_for
from support.databases import empty_redis_database
from support.prefect import seed_database

ROOT = Path(__file__).resolve().parent.parent


async def _read_then_write_after_another_writer(config: AioSqliteConfiguration) -> None:
    """The burst's failing pattern: a transaction reads, another connection commits a write, then the
    first one writes. Prefect's create_flow_run is such a read-then-write transaction."""
    engine = await config.engine()
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, name TEXT)"))
    session = await config.session(engine)
    other_writer_done = asyncio.Event()

    async def other_writer() -> None:
        other = await config.session(engine)
        async with other:
            async with config.begin_transaction(other):
                await other.execute(sa.text("INSERT INTO runs (name) VALUES ('other')"))
        other_writer_done.set()

    try:
        async with session:
            async with config.begin_transaction(session):
                await session.execute(sa.text("SELECT count(*) FROM runs"))
                writer = asyncio.create_task(other_writer())
                await asyncio.wait([writer], timeout=0.5)  # with IMMEDIATE it must wait for us
                await session.execute(sa.text("INSERT INTO runs (name) VALUES ('first')"))
            await writer
    finally:
        await engine.dispose()


def test_prefects_deferred_transaction_is_refused_where_the_queued_one_waits(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'stock.db'}"
    with pytest.raises(sa.exc.OperationalError, match="database is locked"):
        asyncio.run(_read_then_write_after_another_writer(AioSqliteConfiguration(connection_url=url)))

    queued = tmp_path / "queued.db"
    asyncio.run(_read_then_write_after_another_writer(QueuedWritesSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{queued}")))
    with sqlite3.connect(queued) as db:
        assert sorted(name for (name,) in db.execute("SELECT name FROM runs")) == ["first", "other"]


def test_a_queued_transaction_holds_the_write_lock_from_its_begin(tmp_path):
    path = tmp_path / "lock.db"
    config = QueuedWritesSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")

    async def main() -> None:
        engine = await config.engine()
        try:
            session = await config.session(engine)
            async with session:
                async with config.begin_transaction(session):
                    await session.execute(sa.text("SELECT 1"))  # a read only: still the write lock
                    probe = sqlite3.connect(path, timeout=0)
                    try:
                        with pytest.raises(sqlite3.OperationalError, match="locked"):
                            probe.execute("BEGIN IMMEDIATE")
                    finally:
                        probe.close()
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_the_servers_own_clients_get_the_served_app_and_other_calls_reach_prefect():
    # In a process of its own: the shortcut replaces a module attribute, as the server process does.
    code = (
        "import prefect.server.api.server as s\n"
        "from responder.prefect_server import serve_one_app\n"
        "app = serve_one_app()\n"
        "assert s.create_app() is app, 'no-argument call must return the served app'\n"
        "other = s.create_app(ephemeral=True, ignore_cache=True)\n"
        "assert other is not app, 'a call with arguments must build through Prefect'\n"
        "from prefect.server.api.clients import OrchestrationClient\n"
        "assert OrchestrationClient()._http_client._transport.app is app\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_a_schema_that_passed_its_check_is_not_checked_again_and_bad_ones_or_bad_parameters_are_still_refused():
    # In a process of its own: the shortcut replaces a class attribute of Prefect's, as the server process does.
    code = (
        "import jsonschema\n"
        "from prefect.utilities.schema_tools import validation\n"
        "from responder.prefect_server import check_schemas_once\n"
        "checks = []\n"
        "real = validation._VALIDATOR.check_schema\n"
        "validation._VALIDATOR.check_schema = classmethod(lambda cls, schema, *a, **k: (checks.append(1), real(schema, *a, **k))[1])\n"
        "check_schemas_once()\n"
        "schema = {'type': 'object', 'properties': {'n': {'type': 'integer'}}, 'required': ['n']}\n"
        "for _ in range(3):\n"
        "    validation.validate({'n': 1}, dict(schema), raise_on_error=True)\n"
        "assert len(checks) == 1, f'a schema that passed was checked {len(checks)} times'\n"
        "try:\n"
        "    validation.validate({'n': 'one'}, schema, raise_on_error=True)\n"
        "    raise SystemExit('parameters that do not match were accepted')\n"
        "except validation.ValidationError:\n"
        "    pass\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        validation.validate({'n': 1}, {'type': 12}, raise_on_error=True)\n"
        "        raise SystemExit('an invalid schema was accepted')\n"
        "    except jsonschema.SchemaError:\n"
        "        pass\n"
        "assert len(checks) == 3, f'an invalid schema must be checked every time: {len(checks)} checks'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-2000:] + done.stderr[-2000:]


def test_a_long_or_nested_write_transaction_is_said_in_the_server_log(tmp_path, monkeypatch, caplog):
    import responder.prefect_server as embedded

    monkeypatch.setattr(embedded, "LONG_HOLD_SECONDS", 0.05)
    outer = QueuedWritesSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    # A second database file, so the nested transaction below does not wait for the outer one's lock.
    inner = QueuedWritesSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")

    async def main() -> None:
        engines = [await outer.engine(), await inner.engine()]
        try:
            async with await outer.session(engines[0]) as first, outer.begin_transaction(first):
                await first.execute(sa.text("SELECT 1"))
                async with await inner.session(engines[1]) as second, inner.begin_transaction(second):
                    await second.execute(sa.text("SELECT 1"))
                await asyncio.sleep(0.1)
        finally:
            for engine in engines:
                await engine.dispose()

    with caplog.at_level("WARNING", logger="responder.prefect_server"):
        asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if r.name == "responder.prefect_server"]
    assert any("opens while this task holds another" in m for m in said), said
    assert any(m.startswith("a write transaction took ") for m in said), said


def test_a_server_a_dead_responder_left_running_is_replaced_and_a_live_ones_is_refused(tmp_path):
    """What ``make run`` does after a crash: the server recorded in PREFECT_HOME/server.pid still runs.
    When the responder recorded beside it is dead, the new start stops that server and starts its own on
    the same database; when that responder still runs, the start is refused and its server left alone."""
    home, port = tmp_path / "prefect-home", free_port()
    seed_database(home)  # a migrated database: what is tested is the start after a crash, not the first one
    leftover = EmbeddedPrefectServer(home, port)
    leftover.start()
    record = json.loads(leftover.pid_file.read_text())
    other_responder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = psutil.Process(other_responder.pid)
        leftover.pid_file.write_text(json.dumps({**record, "responder": live.pid, "responder_started": live.create_time()}))
        with pytest.raises(RuntimeError, match=rf"another responder \(pid {live.pid}\) runs the embedded Prefect server"):
            EmbeddedPrefectServer(home, port).start()
        assert leftover.process.poll() is None

        other_responder.kill()
        other_responder.wait()
        replacement = EmbeddedPrefectServer(home, port)
        replacement.start()
        try:
            assert leftover.process.wait(5) is not None  # stopped by the new start
            assert json.loads(home.joinpath("server.pid").read_text())["pid"] == replacement.process.pid
        finally:
            replacement.stop()
        assert not replacement.pid_file.exists()
    finally:
        other_responder.kill()
        leftover.stop()


def test_split_runs_prefects_services_in_a_second_process_only_with_redis_messaging(tmp_path, monkeypatch, redis_url):
    """``RESPONDER_EMBEDDED_SERVER=split``: the API and UI in one process, Prefect's services in a child of
    it, the two joined by Prefect's messaging on the real local Redis. An event posted to the API is
    persisted by the services process; when the services process dies, the API stops too. Without Redis messaging the
    split is refused, naming what is missing (Prefect's in-memory broker does not reach another process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_MESSAGING")}
    refused = subprocess.run([sys.executable, "-m", "responder.prefect_server", "--split", "--port", str(free_port())],
                             env={**env, "PREFECT_HOME": str(tmp_path / "refused")}, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "--split needs Prefect's messaging on Redis (PREFECT_MESSAGING_BROKER" in refused.stderr, refused.stderr

    url = urlparse(redis_url)
    with empty_redis_database(redis_url) as redis_db:
        for key, value in {"PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
                           "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
                           "PREFECT_REDIS_MESSAGING_HOST": url.hostname or "127.0.0.1",
                           "PREFECT_REDIS_MESSAGING_PORT": str(url.port or 6379),
                           "PREFECT_REDIS_MESSAGING_DB": str(redis_db)}.items():
            monkeypatch.setenv(key, value)
        home = tmp_path / "prefect-home"
        seed_database(home)
        server = EmbeddedPrefectServer(home, free_port(), kind="split")
        server.start()
        try:
            services = [p for p in psutil.Process(server.process.pid).children()
                        if "--services-only" in p.cmdline()]
            assert len(services) == 1
            auth = tuple(server.auth_string().split(":", 1))
            event_id = str(uuid.uuid4())
            posted = HTTP.post(f"{server.api_url}/events", auth=auth, json=[{
                "id": event_id, "occurred": datetime.now(timezone.utc).isoformat(), "event": "responder.test.split",
                "resource": {"prefect.resource.id": "responder.test.split"}}])
            assert posted.status_code == 204, posted.text

            def persisted() -> bool:
                found = HTTP.post(f"{server.api_url}/events/filter", auth=auth, json={
                    "filter": {"event": {"name": ["responder.test.split"]}}, "limit": 5})
                return found.status_code == 200 and [e["id"] for e in found.json()["events"]] == [event_id]
            wait_for(persisted, 60, what="the event persisted by the services process")
            # An API whose services died would look healthy and start no run: it stops with them.
            services[0].kill()
            assert server.process.wait(30) is not None
        finally:
            server.stop()


def test_prefect_clients_ask_no_csrf_tokens_only_of_a_server_with_the_protection_off(tmp_path, monkeypatch, prefect_server):
    """``responder up`` asks its embedded server once whether it checks CSRF tokens; only when it does
    not (Prefect's default) are this process's Prefect clients told not to ask for one each (a request
    per response). A server with the protection on, one that does not answer, or the clients' setting
    given by the user: nothing is changed."""
    monkeypatch.setenv("PREFECT_CLIENT_CSRF_SUPPORT_ENABLED", "restored after the test")
    monkeypatch.delenv("PREFECT_CLIENT_CSRF_SUPPORT_ENABLED")

    monkeypatch.setenv("PREFECT_SERVER_CSRF_PROTECTION_ENABLED", "true")  # the embedded server started below
    home = tmp_path / "prefect-home"
    seed_database(home)
    protected = EmbeddedPrefectServer(home, free_port())
    protected.start()
    try:
        user, _, password = protected.auth_string().partition(":")
        token = HTTP.get(f"{protected.api_url}/csrf-token", params={"client": "test"}, auth=(user, password))
        assert token.status_code == 200 and token.json()["token"], token.text  # the protection is on
        assert not no_csrf_tokens_when_unprotected(protected.api_url, protected.auth_string())
        assert "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED" not in os.environ
    finally:
        protected.stop()
    assert not no_csrf_tokens_when_unprotected(protected.api_url, protected.auth_string())  # stopped: no answer
    assert "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED" not in os.environ

    assert no_csrf_tokens_when_unprotected(prefect_server.api_url, "admin:unused")  # the suite's server: off
    assert os.environ["PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"] == "false"
    monkeypatch.setenv("PREFECT_CLIENT_CSRF_SUPPORT_ENABLED", "true")  # the user's own choice wins
    assert not no_csrf_tokens_when_unprotected(prefect_server.api_url, "admin:unused")
    assert os.environ["PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"] == "true"
