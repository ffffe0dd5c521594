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
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from responder.embedded import server_command

ROOT = Path(__file__).resolve().parent.parent
# Alertmanager v4 bodies, copied from the project's shared samples (see their README.md).
FIXTURES = ROOT / "tests" / "fixtures" / "alertmanager"
BIN = Path(sys.executable).parent


# Every responder a test started; a failing test's report carries the tail of their logs.
LIVE_RESPONDERS: list["ResponderProcess"] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in LIVE_RESPONDERS:
            if proc.process is not None and proc.log_path.exists():
                report.sections.append((f"responder log ({proc.home})", proc.log()[-4000:]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # the thing waited for may not answer yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def load_fixture(name: str, **changes: Any) -> dict[str, Any]:
    body = json.loads((FIXTURES / name).read_text())
    group_key = changes.pop("groupKey", None)
    if group_key:
        body["groupKey"] = group_key
    suffix = changes.pop("unique", None)
    if suffix:
        body["groupKey"] = f"{body['groupKey']}-{suffix}"
        for alert in body["alerts"]:
            alert["fingerprint"] = f"{alert['fingerprint']}{suffix}"
    body.update(changes)
    return body


# -- Prefect server -----------------------------------------------------------------


class PrefectServer:
    """A real Prefect server process: on PostgreSQL, ``prefect server start`` as in docker-compose.yml;
    on SQLite, the server ``responder up`` embeds (``python -m responder.prefect_server``)."""

    def __init__(self, home: Path, port: int | None = None, database_url: str | None = None):
        self.home = home
        self.port = port or free_port()
        self.database_url = database_url
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_API_URL": self.api_url}
        env.pop("PREFECT_API_URL", None)
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        self.process = subprocess.Popen(
            [*server_command("stock" if self.database_url else "tuned"), "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=open(self.home / "server.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200, 90, what="Prefect server")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


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


@contextmanager
def sqlite_prefect_server(home: Path) -> Iterator[PrefectServer]:
    """A Prefect server of its own on SQLite (the embedded default's database), as PREFECT_API_URL."""
    with serving(PrefectServer(home)) as server:
        yield server


@contextmanager
def serving(server: PrefectServer) -> Iterator[PrefectServer]:
    """Start the server and make it PREFECT_API_URL; stop it and put the old value back afterwards."""
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


# -- PostgreSQL and Redis ------------------------------------------------------------


def _pg_ok(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[str]:
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
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.fail("No PostgreSQL: set RESPONDER_TEST_POSTGRES_URL, run one on 127.0.0.1:5432, "
                    "or install PostgreSQL binaries (apt-get install postgresql)")
    bindir = Path(initdb[-1]).parent
    data = tmp_path_factory.mktemp("pgdata")
    port = free_port()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres")
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", f"-p {port} -k /tmp -h 127.0.0.1",
                    "-l", str(data / "log"), "-w", "start"], check=True, capture_output=True)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    yield url
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)


@contextmanager
def temporary_database(postgres_url: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of ``postgres_url``, dropped afterwards; its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


class CaptureServer:
    """A real HTTP server that records every request (Slack, PagerDuty and webhooks are unreachable here)."""

    def __init__(self, respond=None) -> None:
        """``respond(request) -> (status, body, headers)`` decides the answer (default 200 {"ok": true})."""
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.respond = respond
        captured = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                request = {"path": self.path, "headers": dict(self.headers), "body": body}
                captured.requests.append(request)
                status, answer, headers = (captured.respond(request) if captured.respond
                                           else (captured.status, {"ok": True}, {}))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(json.dumps(answer).encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


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


# -- the responder process ----------------------------------------------------------


class ResponderProcess:
    def __init__(self, home: Path, config_dir: Path, api_url: str, extra_env: dict[str, str] | None = None):
        self.home = home
        self.config_dir = config_dir
        self.api_url = api_url
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            "RESPONDER_HOME": str(home),
            "RESPONDER_CONFIG_DIR": str(config_dir),
            "RESPONDER_INTAKE_PORT": str(self.port),
            "RESPONDER_INTAKE_TOKEN": self.token,
            **(extra_env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.log_path = home / "responder.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> "ResponderProcess":
        self.home.mkdir(parents=True, exist_ok=True)
        if self not in LIVE_RESPONDERS:
            LIVE_RESPONDERS.append(self)
        self.process = subprocess.Popen(
            [str(BIN / "responder"), "up"], env=self.env, cwd=ROOT,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"responder exited {self.process.returncode}:\n{self.log()}")
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        wait_for(ready, timeout, what="responder /healthz 200")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def post(self, body: Any, token: str | None = None, raw: bytes | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token if token is not None else self.token}"}
        if raw is not None:
            return httpx.post(f"{self.url}/alerts", content=raw, headers={**headers, "content-type": "application/json"}, timeout=30)
        return httpx.post(f"{self.url}/alerts", json=body, headers=headers, timeout=30)

    def stop(self) -> None:
        if self in LIVE_RESPONDERS:
            LIVE_RESPONDERS.remove(self)
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def make_config(tmp: Path, thresholds: dict[str, dict[str, float]] | None = None, targets: dict | None = None,
                notify: dict | None = None, runbook_overrides: dict[str, dict] | None = None) -> Path:
    """A copy of config/ with test overrides (thresholds, targets, notify) applied; app-1 is this machine."""
    config = tmp / "config"
    shutil.copytree(ROOT / "config", config, dirs_exist_ok=True)
    for path in sorted((config / "runbooks").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for runbook in data["runbooks"]:
            runbook.setdefault("thresholds", {}).update((thresholds or {}).get(runbook["name"], {}))
            for key, value in (runbook_overrides or {}).get(runbook["name"], {}).items():
                runbook[key] = value
        path.write_text(yaml.safe_dump(data))
    # The shared Alertmanager samples and most tests name the machine "app-1": in these tests that is
    # this machine (``hosts.local``), as a one-host installation would configure it.
    targets = targets if targets is not None else yaml.safe_load((config / "targets.yaml").read_text())
    hosts = targets.setdefault("hosts", {})
    hosts["local"] = [*hosts.get("local", []), "app-1"]
    (config / "targets.yaml").write_text(yaml.safe_dump(targets))
    if notify is not None:
        (config / "notify.yaml").write_text(yaml.safe_dump(notify))
    return config


@contextmanager
def running_responder(tmp: Path, api_url: str, config_dir: Path | None = None, **env: str) -> Iterator[ResponderProcess]:
    proc = ResponderProcess(tmp / "home", config_dir or make_config(tmp), api_url, env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# -- reading Prefect ------------------------------------------------------------------


def prefect_post(api_url: str, path: str, body: dict | None = None) -> Any:
    response = httpx.post(f"{api_url}{path}", json=body or {}, timeout=10)
    response.raise_for_status()
    return response.json()


def runs_for_incident(api_url: str, incident_id: str) -> list[dict[str, Any]]:
    runs = prefect_post(api_url, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 200})
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

    def accepted() -> bool:
        response = httpx.post(f"{api_url}/flow_runs/{flow_run_id}/resume", json=body, timeout=10)
        if response.status_code not in (200, 201):
            return False  # busy: ask again
        result = response.json()
        if (result.get("details") or {}).get("reason") == "Run input schema not found.":
            return False  # paused a moment ago: Prefect writes the form just after the state; ask again
        if result.get("status") != "ACCEPT":
            raise AssertionError(f"the server refused the answer for run {flow_run_id}: {result}")
        return True
    deadline = time.monotonic() + 20
    while not _attempt(accepted):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after 20 s waiting for the server to take the answer for run {flow_run_id}")
        time.sleep(0.3)


def _attempt(call) -> bool:
    try:
        return call()
    except httpx.HTTPError:
        return False


# -- runbook tests: fire an alert, find the pause, answer it, read the report ------------------


def fire(responder: "ResponderProcess", body: dict) -> str:
    """Post an Alertmanager body to the intake; the id of the incident it opened."""
    answer_ = responder.post(body)
    assert answer_.status_code == 200, answer_.text
    return answer_.json()["incidents_opened"][0]


def paused_run(api: str, incident_id: str, not_state: str | None = None) -> dict:
    """The incident's run once it waits for approval (``not_state``: a pause already answered)."""
    def paused():
        runs = runs_for_incident(api, incident_id)
        if runs and runs[0]["state"]["type"] == "PAUSED" and runs[0]["state"]["id"] != not_state:
            return runs[0]
        return None
    return wait_for(paused, 60, what="the run to pause for approval")


def form_description(api: str, run: dict) -> str:
    """The approval form's description, as the UI shows it above the Resume form."""
    key = run["state"]["state_details"]["run_input_keyset"]["description"]
    return wait_for(lambda: (r := httpx.get(f"{api}/flow_runs/{run['id']}/input/{key}")).is_success and r.json(),
                    10, what="the approval form")


def answer(api: str, run: dict, approve: bool, who: str) -> None:
    """Resume the paused run with the approval form filled in."""
    resume(api, run["id"], approve, "test", who)


def report(api: str, incident_id: str) -> str:
    """The response artifact (verdict, evidence, actions) of the incident's run."""
    body = {"artifacts": {"key": {"any_": [f"response-{incident_id}"]}}}
    return wait_for(lambda: prefect_post(api, "/artifacts/filter", body)[0]["data"], 30, interval=0.5,
                    what="the response artifact")
