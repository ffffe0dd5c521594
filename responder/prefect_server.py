"""The embedded Prefect server: ``prefect server start``'s foreground path, with three changes.

Run as ``python -m responder.prefect_server --host H --port P`` (``responder up`` does). It is the
stock Prefect server app (API, UI and every service in one process, the same call ``prefect
server start`` makes, with the same keep-alive and log level settings) with three changes, each
measured (README, "Measured") and each only inside this process:

1. On SQLite, every transaction the server opens starts with ``BEGIN IMMEDIATE`` instead of
   ``BEGIN DEFERRED``, made through Prefect's own injection point for the database configuration
   (``prefect.server.database.dependencies.set_database_config``).

   Why: a DEFERRED transaction reads first and asks for SQLite's write lock at its first write.
   When another connection wrote in between, SQLite refuses the upgrade at once (``SQLITE_BUSY``,
   no busy wait: "database is locked"), the server answers 503, and Prefect's client backs off 2,
   4, 8… s before retrying. Under a burst of alerts that was most of the time from alert to run.
   ``BEGIN IMMEDIATE`` takes the write lock first, waiting in SQLite's busy handler, so writers
   queue for milliseconds instead of failing. Reads outside a transaction are unchanged, and WAL
   mode still lets them run beside a writer. Prefect itself already does this for the
   transactions it marks ``with_for_update`` (flow and task run state changes). On PostgreSQL the
   stock configuration is used unchanged.

2. The server's own in-process clients get the served app directly (``serve_one_app``).

3. A parameter schema is checked against JSON Schema's meta-schema once, not at every validation
   (``check_schemas_once``).

With ``--split`` (``RESPONDER_EMBEDDED_SERVER=split``) this process serves the API and UI only and
runs Prefect's services in a child process (``--services-only``), the two joined by Prefect's
messaging on Redis. Measured on 2 cores it does not win (README, "The embedded Prefect server").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import AsyncGenerator

import uvicorn
from prefect.server.database.configurations import SQLITE_BEGIN_MODE, AioSqliteConfiguration
from prefect.server.database.dependencies import set_database_config
from prefect.server.utilities.database import get_dialect
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, get_current_settings

from responder.embedded import die_with_parent, health_answers


logger = logging.getLogger("responder.prefect_server")


# Open write transactions of the current task (and of tasks it started): a transaction opened while
# one is held waits for the first one's lock, so if the first waits for it, both wait out SQLite's
# busy timeout. Said in the server log, with how long a write lock was held when that was long.
_HELD: ContextVar[int] = ContextVar("responder_sqlite_write_locks_held", default=0)
LONG_HOLD_SECONDS = 2.0


class QueuedWritesSqliteConfiguration(AioSqliteConfiguration):
    """Prefect's SQLite configuration, with every transaction ``BEGIN IMMEDIATE``."""

    @asynccontextmanager
    async def begin_transaction(self, session, with_for_update: bool = False) -> AsyncGenerator:
        if _HELD.get():
            logger.warning("a write transaction opens while this task holds another: it waits for that one's lock")
        held = _HELD.set(_HELD.get() + 1)
        token = SQLITE_BEGIN_MODE.set("IMMEDIATE")
        started = time.monotonic()
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            SQLITE_BEGIN_MODE.reset(token)
            _HELD.reset(held)
            if (seconds := time.monotonic() - started) > LONG_HOLD_SECONDS:
                logger.warning("a write transaction took %.1f s (other writers waited meanwhile)", seconds)


def configure_database() -> str:
    """Install the queued-writes configuration when the server's database is SQLite; say which."""
    url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    if get_dialect(url).name != "sqlite":
        return "stock"
    set_database_config(QueuedWritesSqliteConfiguration(connection_url=url))
    return "sqlite, BEGIN IMMEDIATE"


def serve_one_app():
    """Build the server app once, and hand that same app to the server's own in-process clients.

    The automations' actions reach the API through an in-process client, and each one it builds
    calls ``create_app()`` with no arguments to find "the currently running server instance".
    In prefect 3.8.8 and 3.9.1 that call re-runs ``setup_logging()`` and serializes every setting to compute
    its cache key before it returns the cached app: about 0.1 s of CPU per triggered run, measured
    at 15 % of the server's CPU during a 30-alert burst. This process serves exactly one app, the
    one built here, which is what that call returns anyway; the shortcut returns it directly.
    Calls with arguments go to Prefect's own function unchanged.
    """
    # heavy: Prefect's whole server app (about 1.5 s more); only this process's main() needs it, not the importers
    # of QueuedWritesSqliteConfiguration (tests)
    import prefect.server.api.server as prefect_server_app

    build = prefect_server_app.create_app
    app = build(final=True)

    def create_app(*args, **kwargs):
        return app if not args and not kwargs else build(*args, **kwargs)

    prefect_server_app.create_app = create_app
    return app


SCHEMAS_REMEMBERED = 256  # distinct schemas that passed their check (a deployment's is about 2 KB)


def check_schemas_once() -> None:
    """Check each parameter schema against the meta-schema once, not at every run it validates.

    Every flow run the server creates from a deployment (each alert's run, through its automation)
    is validated against the deployment's parameter schema with ``jsonschema.validate``, which first
    checks the schema itself against JSON Schema's meta-schema: 8.5-9.4 ms of CPU for a runbook's
    schema, against 0.2-0.3 ms for validating the parameters (measured in-process; 5 % of the server's
    samples in a 30-alert burst). A schema that passed keeps passing, so this process remembers the
    last :data:`SCHEMAS_REMEMBERED` that did, by their JSON text with sorted keys. A schema that
    fails is checked (and refused) every time, and a call with other arguments goes to Prefect's
    check unchanged.
    """
    import functools

    import orjson
    from prefect.utilities.schema_tools import validation

    validator = validation._VALIDATOR  # the class every validation in Prefect's server uses
    check = validator.check_schema

    @functools.lru_cache(maxsize=SCHEMAS_REMEMBERED)  # a check that raises is not remembered
    def check_text(text: bytes) -> None:
        check(orjson.loads(text))

    def check_schema(cls, schema, *args, **kwargs):
        if args or kwargs:
            return check(schema, *args, **kwargs)
        try:
            text = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # not plain JSON (it cannot come from the database): no shortcut
            return check(schema)
        return check_text(text)

    validator.check_schema = classmethod(check_schema)


def messaging_crosses_processes() -> bool:
    """Whether Prefect's messaging (events, task-run records, triggers) can reach another process:
    its in-memory broker cannot, prefect-redis's can."""
    settings = get_current_settings()
    return settings.server.events.messaging_broker != "prefect.server.utilities.messaging.memory" \
        and settings.server.events.messaging_cache != "prefect.server.utilities.messaging.memory"


async def run_services() -> None:
    """Prefect's services alone (what ``prefect server services start`` runs): the event persister,
    task-run recorder, triggers and actions, and the periodic services."""
    # heavy: Prefect's docket worker and services (imported only in the services process)
    from docket import Docket
    from prefect.server.api.background_workers import background_worker
    from prefect.server.services.base import Service

    settings = get_current_settings()
    async with Docket(name=settings.server.docket.name, url=settings.server.docket.url,
                      execution_ttl=timedelta(0)) as docket:
        async with background_worker(docket, ephemeral=False, webserver_only=False):
            await Service.run_services()


def _start_services_process(host: str, port: int) -> subprocess.Popen:
    """The services as a child process of this one (same process group: stopping the server stops both).
    It starts them once this process's API answers, so the database is migrated first. When it
    exits, this process stops too: an API without its services would accept alerts' events and
    start no run, while looking healthy."""
    services = subprocess.Popen([sys.executable, "-m", "responder.prefect_server", "--services-only",
                                 "--host", host, "--port", str(port)], preexec_fn=die_with_parent)

    def stop_with_services() -> None:
        code = services.wait()
        if code in (0, -signal.SIGTERM):  # the server's process group is being stopped: nothing to add
            return
        logger.error("Prefect's services process exited (code %s): stopping the API as well", code)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_with_services, name="services-process", daemon=True).start()
    return services


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m responder.prefect_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--split", action="store_true",
                        help="API and UI in this process, Prefect's services in a second one (needs Redis messaging)")
    parser.add_argument("--services-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.split and not messaging_crosses_processes():
        raise SystemExit("runbook-responder: --split needs Prefect's messaging on Redis (PREFECT_MESSAGING_BROKER and "
                         "PREFECT_MESSAGING_CACHE = prefect_redis.messaging): the in-memory broker does not reach "
                         "another process")
    print(f"runbook-responder: embedded Prefect server, database configuration: {configure_database()}", flush=True)
    check_schemas_once()
    if args.services_only:
        if not health_answers(f"http://{args.host}:{args.port}/api", 120):
            raise SystemExit(f"runbook-responder: the Prefect API on {args.host}:{args.port} did not answer; "
                             "services not started")
        serve_one_app()  # the actions' in-process clients get this app (see serve_one_app)
        asyncio.run(run_services())
        return
    if args.split:
        os.environ["PREFECT__SERVER_WEBSERVER_ONLY"] = "1"
        _start_services_process(args.host, args.port)
    server = get_current_settings().server  # what `prefect server start` reads for these two
    uvicorn.run(
        app=serve_one_app(),
        host=args.host,
        port=args.port,
        timeout_keep_alive=server.api.keepalive_timeout,
        log_level=server.logging_level.lower(),
    )


if __name__ == "__main__":
    main()
