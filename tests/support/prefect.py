"""A real Prefect server process, and reading and answering Prefect over its REST API: runs of an
incident, a run's final state, events, the approval form, the response artifact."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx

from responder.embedded import server_command

from .common import HTTP, free_port, wait_for


class PrefectServer:
    """A real Prefect server process: on PostgreSQL, ``prefect server start`` as in docker-compose.yml;
    on SQLite, the server ``responder up`` embeds (``python -m responder.prefect_server``)."""

    def __init__(self, home: Path, port: int | None = None, database_url: str | None = None,
                 extra_env: dict[str, str] | None = None):
        self.home = home
        self.port = port or free_port()
        self.database_url = database_url
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        if self.database_url or (self.home / "prefect.db").exists() or seed_database(self.home):
            return self._launch()
        with _seed_lock():  # no migrated copy yet: this start makes the session's, the others wait for it
            if seed_database(self.home):
                return self._launch()
            self._launch()
            keep_migrated_database(self)
        return self

    def _launch(self) -> "PrefectServer":
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_API_URL": self.api_url}
        env.pop("PREFECT_API_URL", None)
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        env.update(self.extra_env)
        self.process = subprocess.Popen(
            [*server_command("stock" if self.database_url else "tuned"), "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=open(self.home / "server.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: HTTP.get(f"{self.api_url}/health", timeout=1).status_code == 200, 90, what="Prefect server")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


# A copy of the session's first new SQLite Prefect database, taken once its server answered: Prefect's
# migrations applied and its block types registered, nothing else. A new server on SQLite (a test's own
# PrefectServer, or the one `responder up` embeds) starts from it instead of an empty file: 6.7-6.9 s
# of CPU instead of 11.6-12.1 s (measured 2026-12-07), for the same server code on the same schema.
# It is kept in a directory every test process of the session sees (`share_migrated_database`, called
# by conftest), so a pytest-xdist worker whose first module starts servers of its own finds the copy
# another worker made; ``_MIGRATED`` is this process's path to it once known.
_MIGRATED: Path | None = None
_SHARED: Path | None = None
_LOCK_HELD = False


def share_migrated_database(directory: Path) -> None:
    global _SHARED
    directory.mkdir(parents=True, exist_ok=True)
    _SHARED = directory


@contextmanager
def _seed_lock() -> Iterator[None]:
    """Held by the process making the session's migrated copy while its server migrates and starts; a
    process that wants the copy waits for it instead of migrating a database of its own on the same cores."""
    global _LOCK_HELD
    if _SHARED is None or _LOCK_HELD:
        yield
        return
    with open(_SHARED / "prefect-migrated.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _LOCK_HELD = True
        try:
            yield
        finally:
            _LOCK_HELD = False
            fcntl.flock(lock, fcntl.LOCK_UN)


def seed_database(prefect_home: Path) -> bool:
    """Give a Prefect home without a database a copy of the migrated one; False when there is none yet."""
    global _MIGRATED
    target = prefect_home / "prefect.db"
    if target.exists():
        return True
    if _MIGRATED is None and _SHARED is not None:
        with _seed_lock():
            if (_SHARED / "prefect-migrated.db").exists():
                _MIGRATED = _SHARED / "prefect-migrated.db"
    if _MIGRATED is None:
        return False
    prefect_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_MIGRATED, target)
    return True


def keep_migrated_database(server: PrefectServer) -> None:
    """Snapshot a freshly started SQLite server's database (SQLite's online backup: consistent while it
    runs) as the session's migrated copy."""
    global _MIGRATED
    if _MIGRATED is not None or server.database_url or not (server.home / "prefect.db").exists():
        return
    folder = _SHARED or server.home.parent
    partial = folder / f"{server.home.name}-migrated.partial"
    with closing(sqlite3.connect(server.home / "prefect.db")) as source, closing(sqlite3.connect(partial)) as target:
        source.backup(target)
    _MIGRATED = partial.rename(folder / "prefect-migrated.db" if _SHARED else folder / f"{server.home.name}-migrated.db")


@contextmanager
def sqlite_prefect_server(home: Path) -> Iterator[PrefectServer]:
    """A Prefect server of its own on SQLite (the embedded default's database), as PREFECT_API_URL."""
    with serving(PrefectServer(home)) as server:
        yield server


@contextmanager
def serving(server: PrefectServer) -> Iterator[PrefectServer]:
    """Start the server (unless it runs) and make it PREFECT_API_URL; stop it and put the old value back afterwards."""
    if server.process is None:
        server.start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


_LOGINS: dict[str, str] = {}


def login(api_url: str, auth_string: str) -> None:
    """Prefect's basic auth (``user:password``) for every helper here that calls ``api_url``: the
    embedded server of ``make run`` asks for a login (PREFECT_HOME/api-auth)."""
    _LOGINS[api_url.rstrip("/")] = auth_string.strip()


def _auth(api_url: str) -> httpx.BasicAuth | None:
    login_ = _LOGINS.get(api_url.rstrip("/"))
    return httpx.BasicAuth(*login_.split(":", 1)) if login_ else None


def prefect_post(api_url: str, path: str, body: dict | None = None) -> Any:
    response = HTTP.post(f"{api_url}{path}", json=body or {}, timeout=10, auth=_auth(api_url))
    response.raise_for_status()
    return response.json()


def runs_for_incident(api_url: str, incident_id: str) -> list[dict[str, Any]]:
    """The incident's runs, latest first. Prefect cannot filter on a parameter, so this reads the runs
    most recently due (a test's own run is among them: each worker's tests run one after another)
    and leaves out the cron deployments' future runs. Tests poll this every 0.2 s: reading the last
    200 runs instead cost the suite's Prefect server 82 ms of CPU per call once it held 250 runs,
    these 40 about 18 ms."""
    soon = (datetime.now(timezone.utc) + timedelta(seconds=30)).isoformat()
    runs = prefect_post(api_url, "/flow_runs/filter", {"flow_runs": {"expected_start_time": {"before_": soon}},
                                                       "sort": "EXPECTED_START_TIME_DESC", "limit": 40})
    return [r for r in runs if (r.get("parameters") or {}).get("incident", {}) and r["parameters"]["incident"].get("id") == incident_id]


def wait_run_final(api_url: str, incident_id: str, timeout: float = 60) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def final():
        runs = runs_for_incident(api_url, incident_id)
        seen[:] = runs
        return runs[0] if runs and runs[0]["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
    try:
        return wait_for(final, timeout, what=f"a finished run for incident {incident_id}")
    except AssertionError as exc:  # say where the run stood, and what it last logged
        raise AssertionError(f"{exc}\n{describe_runs(api_url, seen)}") from None


def describe_runs(api_url: str, runs: list[dict[str, Any]]) -> str:
    lines = []
    for run in runs[:3]:
        lines.append(f"run {run['id']} {run['name']}: {run['state']['type']} {run['state'].get('name')!r} "
                     f"{(run['state'].get('message') or '')[:300]}")
        try:
            logs = prefect_post(api_url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}},
                                                           "sort": "TIMESTAMP_ASC", "limit": 200})
            lines += [f"  {entry['timestamp'][11:23]} {entry['message'][:300]}" for entry in logs[-40:]]
        except Exception as exc:
            lines.append(f"  (logs unreadable: {exc})")
    return "\n".join(lines) or "no run was created for it"


def events(api_url: str, prefix: str) -> list[dict[str, Any]]:
    return prefect_post(api_url, "/events/filter", {"filter": {"event": {"prefix": [prefix]}}})["events"]


def resume(api_url: str, flow_run_id: str, approve: bool, reason: str, approver: str) -> None:
    """Answer a paused run's approval form through the API (what the UI's Resume button does).

    The SQLite-backed server answers 503 when its database is busy; like Prefect's own client,
    retry those. The server answers 200 even when it refuses (run not paused, input invalid):
    that fails here, with its reason."""
    body = {"run_input": {"approve": approve, "reason": reason, "approver": approver}}
    last: list[str] = ["no answer yet"]

    def accepted() -> bool:
        response = HTTP.post(f"{api_url}/flow_runs/{flow_run_id}/resume", json=body, timeout=10, auth=_auth(api_url))
        last[0] = f"HTTP {response.status_code}: {response.text[:300]}"
        if response.status_code not in (200, 201):
            return False  # busy: ask again
        result = response.json()
        if (result.get("details") or {}).get("reason") == "Run input schema not found.":
            return False  # paused a moment ago: Prefect writes the form just after the state; ask again
        if result.get("status") != "ACCEPT":
            raise AssertionError(f"the server refused the answer for run {flow_run_id}: {result}")
        return True
    # A responder that has just started keeps its SQLite-backed server busy for a while (deployments,
    # recovery), and a loaded CI machine runs four such tests at once: wait as long as a person would.
    deadline = time.monotonic() + 60
    while not _attempt(accepted, last):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after 60 s waiting for the server to take the answer for run "
                                 f"{flow_run_id}; its last answer: {last[0]}")
        time.sleep(0.3)


def _attempt(call, last: list[str]) -> bool:
    try:
        return call()
    except httpx.HTTPError as exc:
        last[0] = f"{type(exc).__name__}: {exc}"
        return False


def paused_run(api: str, incident_id: str, not_state: str | None = None) -> dict:
    """The incident's run once it waits for approval (``not_state``: a pause already answered)."""
    def paused():
        runs = runs_for_incident(api, incident_id)
        if runs and runs[0]["state"]["type"] == "PAUSED" and runs[0]["state"]["id"] != not_state:
            return runs[0]
        return None
    return wait_for(paused, 120, what="the run to pause for approval")  # generous: test workers share 2 cores


def form_description(api: str, run: dict, timeout: float = 10) -> str:
    """The approval form's description, as the UI shows it above the Resume form."""
    key = run["state"]["state_details"]["run_input_keyset"]["description"]
    return wait_for(lambda: (r := HTTP.get(f"{api}/flow_runs/{run['id']}/input/{key}", auth=_auth(api))).is_success
                    and r.json(),
                    timeout, what="the approval form")


def answer(api: str, run: dict, approve: bool, who: str) -> None:
    """Resume the paused run with the approval form filled in."""
    resume(api, run["id"], approve, "test", who)


def report(api: str, incident_id: str) -> str:
    """The response artifact (verdict, evidence, actions) of the incident's run."""
    body = {"artifacts": {"key": {"any_": [f"response-{incident_id}"]}}}
    return wait_for(lambda: prefect_post(api, "/artifacts/filter", body)[0]["data"], 30, interval=0.5,
                    what="the response artifact")
