"""Benchmark: an alert storm, and what the responder does with it for the next minutes.

Starts `responder up` as `make run` does (the same start-up as bench/alert_to_first_task.py: embedded
Prefect server on SQLite, temporary PREFECT_HOME and RESPONDER_HOME, free ports), on a copy of
config/ where the drill's approval deadline is long (`approval_timeout_seconds` 36000, so 3600 s at
the default time scale 0.1: runs stay paused waiting for approval the whole bench, as in a real storm)
and the notify webhooks point at a capture server inside this process. Slack, PagerDuty and Discord
are unreachable from here, so the generic JSON webhook is what records when each page arrives.

The storm: --groups (200) Alertmanager groups of --alerts-per-group (50) alerts, all `ResponderDrill`
(the built-in drill: it asks approval for a no-op risky step and otherwise escalates; it touches
nothing), severity warning, each alert with its own fingerprint and labels, one groupKey per group.
Each group is re-sent as it grows, as Alertmanager does: --posts-per-group (5) cumulative posts
(10, 20, 30, 40, 50 alerts), first every group's first post, then every group's second, ..., all
posts spread evenly over --duration (60 s) and sent by --clients (16) concurrent httpx clients.
With RESPONDER_TIME_SCALE --time-scale (0.1) the default escalation policy pages level 1 at 30 s
after an incident opens, level 2 at 90 s, level 3 at 180 s.

It watches for --observe (180) seconds from the storm's start, then prints (figures, no pass/fail):

* posts: p50/p99 latency, non-2xx count (connection errors counted too);
* responses created: distinct flow runs of the responder-drill deployment (expected: one per
  group) and duplicates (a group with more than one run);
* responses started: how many, and p50/max of (first task run's start time, the Prefect server's
  own timestamp, as bench/alert_to_first_task.py measures it) minus the group's first post time; for
  a run the server shows no task run for (its events dropped), the run's own start instead, counted;
* runs paused at once: the most `/api/flow_runs/count` (state PAUSED) reported, sampled every 3 s;
* pages: level-1 page lateness p50/max, arrival at the capture server minus (the group's first post
  + the policy's level-1 delay × 60 s × time scale), how many level-1 pages (of how many were due),
  other levels, and duplicates (the same incident and level paged twice);
* memory: RSS of the whole process tree (responder + its Prefect server), idle before the storm and
  peak during it (sampled every second); CPU seconds of the server and of the responder over the
  storm and the observation;
* at the end: the drill runs by state; when pages are runs of an `escalation-page` deployment (older
  responders), those runs by state and how many are still Scheduled past their time;
* while the responses wait for approval: after the observation this bench stops asking the server
  anything for --wait-window (60) seconds and prints what the waiting runs cost then: the requests
  the Prefect server answered (counted in its access log: the server runs with
  PREFECT_SERVER_LOGGING_LEVEL=INFO so uvicorn logs each request; nothing else asks it then), the
  CPU of the server and of the responder, and the RSS of the whole tree against the idle RSS before
  the storm.

With --prefect-database-url the Prefect server runs on PostgreSQL: a plain `prefect server start`
started here as a separate process, on a fresh database `bench_storm_<random>` created on the
server that URL names (its database part is not used) and dropped at the end; the responder uses it
through PREFECT_API_URL. Every process started here is stopped at the end, also on Ctrl-C or failure.

Run: `.venv/bin/python bench/storm.py [--groups N] [--alerts-per-group N] [--posts-per-group N]
[--duration S] [--observe S] [--wait-window S] [--time-scale F] [--clients N] [--prefect-database-url
postgresql+asyncpg://postgres@127.0.0.1:5432/postgres] [--env KEY=VALUE] [--json] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alert_to_first_task import BIN, PREFECT_AUTH, PREFECT_LOGIN, ROOT, Bench, Database, free_port, pct  # noqa: E402  (the same `responder up`)

ALERTNAME = "ResponderDrill"
DRILL = "responder-drill"
DRILL_DEPLOYMENT = "responder-drill/responder-drill"
PAGE_DEPLOYMENT = "escalation-page/escalation-page"


# -- the notify webhook ----------------------------------------------------------------------------


class CaptureServer:
    """Records every POST with its arrival time (stands in for Slack/PagerDuty, unreachable here)."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, Any]] = []
        self.lock = threading.Lock()
        captured = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                arrived = time.time()
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with captured.lock:
                    captured.requests.append((arrived, body))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def pages(self) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, b) for t, b in self.requests if isinstance(b, dict) and b.get("kind") == "page"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- configuration copy ----------------------------------------------------------------------------


def config_copy(dest: Path, webhook_url: str, approval_timeout: float) -> float:
    """config/ copied to ``dest`` with the drill's approval deadline and the capture webhook;
    returns the default policy's level-1 delay in minutes."""
    shutil.copytree(ROOT / "config", dest)
    # The drill is declared in its module (flows/drill.py); an installation changes it with an entry in
    # config/runbooks/*.yaml: the copy's own entry for it is changed, or one is added.
    files = sorted((dest / "runbooks").glob("*.yaml"))
    if not files:
        raise SystemExit(f"no runbooks file in {ROOT / 'config' / 'runbooks'}")
    for path in files:
        data = yaml.safe_load(path.read_text()) or {}
        entry = next((e for e in data.get("runbooks") or [] if e.get("name") == DRILL), None)
        if entry is not None:
            break
    else:
        path, data = files[0], yaml.safe_load(files[0].read_text()) or {}
        entry = {"name": DRILL}
        data["runbooks"] = [*(data.get("runbooks") or []), entry]
    entry["approval_timeout_seconds"] = approval_timeout
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    notify = yaml.safe_load((dest / "notify.yaml").read_text()) or {}
    notify["webhooks"] = [webhook_url]
    (dest / "notify.yaml").write_text(yaml.safe_dump(notify, sort_keys=False))
    escalation = yaml.safe_load((dest / "escalation.yaml").read_text()) or {}
    steps = (escalation.get("policies") or {}).get("default") or [{"level": 1, "after_minutes": 5}]
    return float(min(steps, key=lambda s: s["level"])["after_minutes"])


# -- the storm's bodies ----------------------------------------------------------------------------


def group_alerts(storm: str, group: str, count: int, starts_at: str) -> list[dict]:
    """One group's alerts: each with its own fingerprint and labels (Alertmanager v4 alert shape)."""
    alerts = []
    for i in range(count):
        labels = {"alertname": ALERTNAME, "severity": "warning", "job": "storm", "storm": storm, "group": group,
                  "instance": f"{group}-node-{i:03d}:9100", "alert_index": str(i)}
        alerts.append({"status": "firing", "labels": labels,
                       "annotations": {"summary": f"{ALERTNAME} storm {group} alert {i}"},
                       "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                       "fingerprint": uuid.uuid4().hex[:16]})
    return alerts


def group_key(storm: str, group: str) -> str:
    return f'{{}}:{{alertname="{ALERTNAME}", group="{group}", storm="{storm}"}}'


def webhook_body(storm: str, group: str, alerts: list[dict]) -> dict:
    """An Alertmanager v4 webhook body for one group (the shape tests/support/alerts.py makes)."""
    common = {"alertname": ALERTNAME, "severity": "warning", "job": "storm", "storm": storm, "group": group}
    return {
        "version": "4", "groupKey": group_key(storm, group), "truncatedAlerts": 0, "status": "firing",
        "receiver": "responder", "groupLabels": {"alertname": ALERTNAME, "group": group, "storm": storm},
        "commonLabels": common, "commonAnnotations": {}, "externalURL": "http://alertmanager.storm:9093",
        "alerts": alerts,
    }


def plan_posts(args: argparse.Namespace, storm: str, starts_at: str) -> list[tuple[float, int, int, bytes]]:
    """(offset s from the storm's start, group, post number, body) for every post, in sending order:
    every group's first post, then every group's second, ..., evenly spread over the duration."""
    groups = [f"g{g:04d}" for g in range(args.groups)]
    alerts = [group_alerts(storm, name, args.alerts_per_group, starts_at) for name in groups]
    total = args.groups * args.posts_per_group
    posts = []
    for k in range(args.posts_per_group):
        upto = math.ceil(args.alerts_per_group * (k + 1) / args.posts_per_group)
        for g, name in enumerate(groups):
            index = len(posts)
            body = json.dumps(webhook_body(storm, name, alerts[g][:upto])).encode()
            posts.append((index * args.duration / total, g, k, body))
    return posts


# -- processes ---------------------------------------------------------------------------------------


class ExternalServer:
    """`prefect server start` on a fresh PostgreSQL database (created here, dropped by drop())."""

    def __init__(self, url: str) -> None:
        self.base_url = url
        self.db: Database | None = None
        self.database = ""
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self.startup = 0.0

    def start(self, tmp: Path) -> None:
        from sqlalchemy.engine import make_url

        self.db = Database(self.base_url, "bench_storm")
        self.database = self.db.name
        self.url = make_url(self.db.url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        home = tmp / "prefect-server"
        home.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RESPONDER_"))}
        env.update(PREFECT_HOME=str(home), PREFECT_API_DATABASE_CONNECTION_URL=self.url,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_API_URL=self.api,
                   PREFECT_SERVER_API_AUTH_STRING=PREFECT_LOGIN,
                   PREFECT_SERVER_LOGGING_LEVEL="INFO")  # its access log counts the requests while runs wait
        self.log = tmp / "prefect-server.log"
        self.proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, cwd=tmp, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        started = time.monotonic()
        while True:
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() - started > 180:
                raise SystemExit(f"prefect server start did not answer; see {self.log}")
            time.sleep(0.3)
        self.startup = time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc.pid)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                stop_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def drop(self) -> None:
        if self.db is not None:
            self.db.drop()


def stop_group(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class Watch:
    """Samples, from a thread: the process tree's RSS every second, paused drill runs every 3 s.
    Remembers every process it saw, so the clean-up can find them even after they were re-parented."""

    def __init__(self, roots: list[int], api: str, drill_id: str, server_pids: set[int]) -> None:
        self.roots, self.api, self.drill_id = roots, api, drill_id
        self.seen: dict[int, psutil.Process] = {}
        self.server_pids = server_pids  # roots of the Prefect server's tree
        self.peak_rss = 0
        self.max_paused = 0
        self.paused_samples: list[tuple[float, int]] = []
        self.paused_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def processes(self) -> list[psutil.Process]:
        found: list[psutil.Process] = []
        for pid in self.roots:
            found.extend(tree(pid))
        for proc in found:
            self.seen.setdefault(proc.pid, proc)
        return found

    def rss(self) -> int:
        total = 0
        for proc in self.processes():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of the Prefect server's processes and the responder's."""
        out = {"server": 0.0, "responder": 0.0}
        server: set[int] = set()
        for pid in self.server_pids:
            server.update(p.pid for p in tree(pid))
        for proc in self.processes():
            try:
                if proc.pid not in server and "server" in " ".join(proc.cmdline()):
                    server.update(p.pid for p in tree(proc.pid))  # the embedded server and anything it started
            except psutil.Error:
                pass
        for proc in self.processes():
            try:
                times = proc.cpu_times()
                out["server" if proc.pid in server else "responder"] += times.user + times.system
            except psutil.Error:
                pass
        return out

    def paused(self, http: httpx.Client) -> int | None:
        try:
            response = http.post(f"{self.api}/flow_runs/count", json={
                "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
                "deployments": {"id": {"any_": [self.drill_id]}}})
            response.raise_for_status()
            return int(response.json())
        except (httpx.HTTPError, ValueError):
            return None

    def start(self) -> None:
        def loop() -> None:
            next_paused = 0.0
            with httpx.Client(timeout=10, auth=PREFECT_AUTH) as http:
                while not self._stop.is_set():
                    self.peak_rss = max(self.peak_rss, self.rss())
                    if time.monotonic() >= next_paused:
                        next_paused = time.monotonic() + 3.0
                        count = self.paused(http)
                        if count is None:
                            self.paused_errors += 1
                        else:
                            self.paused_samples.append((time.time(), count))
                            self.max_paused = max(self.max_paused, count)
                    self._stop.wait(1.0)

        self._thread = threading.Thread(target=loop, name="watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)


def started_bench_tmp(me: psutil.Process) -> Path | None:
    """The temporary directory of a `responder up` this process started but whose start did not finish."""
    for child in me.children():
        try:
            home = child.environ().get("RESPONDER_HOME")
        except psutil.Error:
            continue
        if home and Path(home).parent.name.startswith("responder-bench-"):
            return Path(home).parent
    return None


def stop_leftovers(procs: list[psutil.Process]) -> None:
    """Stop the processes of this bench still running (psutil checks each is the same process)."""
    alive = []
    for proc in {p.pid: p for p in procs}.values():
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            pass
    for proc in alive:
        try:
            if os.getpgid(proc.pid) == proc.pid:
                stop_group(proc.pid)
            else:
                proc.terminate()
        except (psutil.Error, ProcessLookupError):
            pass
    _, alive = psutil.wait_procs(alive, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


# -- the storm -------------------------------------------------------------------------------------


class Sender:
    """Posts the planned bodies from a pool of clients, each post at its planned time (or at once when late)."""

    def __init__(self, bench: Bench, posts: list[tuple[float, int, int, bytes]], clients: int) -> None:
        self.bench, self.posts, self.clients = bench, posts, clients
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.next = 0
        self.threads: list[threading.Thread] = []
        self.t0 = 0.0

    def start(self, t0: float) -> None:
        self.t0 = t0
        self.threads = [threading.Thread(target=self._worker, name=f"client-{i}", daemon=True) for i in range(self.clients)]
        for thread in self.threads:
            thread.start()

    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)

    def _worker(self) -> None:
        headers = {"Authorization": f"Bearer {self.bench.token}", "Content-Type": "application/json"}
        with httpx.Client(timeout=60, headers=headers) as http:
            while True:
                with self.lock:
                    if self.next >= len(self.posts):
                        return
                    offset, group, k, body = self.posts[self.next]
                    self.next += 1
                delay = self.t0 + offset - time.time()
                if delay > 0:
                    time.sleep(delay)
                sent = time.time()
                started = time.perf_counter()
                status, opened = None, []
                try:
                    response = http.post(f"{self.bench.intake}/alerts", content=body)
                    status = response.status_code
                    if response.is_success:
                        opened = response.json().get("incidents_opened") or []
                except (httpx.HTTPError, ValueError):
                    pass
                took = time.perf_counter() - started
                with self.lock:
                    self.results.append({"group": group, "post": k, "sent": sent, "latency": took,
                                         "status": status, "opened": opened})


def api_pages(http: httpx.Client, url: str, body: dict) -> list[dict]:
    """Every row of a Prefect ``…/filter`` endpoint (200 per page)."""
    rows: list[dict] = []
    while True:
        response = http.post(url, json={**body, "limit": 200, "offset": len(rows)})
        response.raise_for_status()
        page = response.json()
        rows.extend(page)
        if len(page) < 200:
            return rows


def deployment_id(http: httpx.Client, api: str, name: str) -> str | None:
    response = http.get(f"{api}/deployments/name/{name}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()["id"]


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def p50_max(values: list[float]) -> dict[str, float | None]:
    return {"p50": statistics.median(values) if values else None, "max": max(values) if values else None}


def fmt(value: float | None, unit: str = "s", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def collect(args, api: str, sender: Sender, capture: CaptureServer, watch: Watch,
            drill_id: str, page_id: str, level1_delay: float, t_end: float) -> dict[str, Any]:
    results = sender.results
    first_post: dict[int, float] = {}
    for r in results:
        if r["post"] == 0:
            first_post[r["group"]] = r["sent"]
    key_to_group = {group_key(args.storm_tag, f"g{g:04d}"): g for g in range(args.groups)}
    incident_group: dict[str, int] = {}
    opened_per_group: Counter = Counter()
    for r in results:
        for incident in r["opened"]:
            incident_group[incident] = r["group"]
            opened_per_group[r["group"]] += 1
    latencies = [r["latency"] for r in results]
    ok = [r for r in results if r["status"] is not None and 200 <= r["status"] < 300]
    figures: dict[str, Any] = {
        "posts": {"sent": len(results), "planned": len(sender.posts), "p50_s": statistics.median(latencies) if latencies else None,
                  "p99_s": pct(latencies, 0.99) if latencies else None, "max_s": max(latencies) if latencies else None,
                  "non_2xx": len(results) - len(ok),
                  "statuses": dict(Counter(str(r["status"]) for r in results if r not in ok)),
                  "last_sent_s": max(r["sent"] for r in results) - sender.t0 if results else None},
        "incidents_opened_by_posts": sum(opened_per_group.values()),
        "groups_with_more_than_one_incident": sum(1 for n in opened_per_group.values() if n > 1),
    }

    with httpx.Client(timeout=60, auth=PREFECT_AUTH) as http:
        runs = api_pages(http, f"{api}/flow_runs/filter",
                         {"deployments": {"id": {"any_": [drill_id]}}, "sort": "ID_DESC"})
        page_runs = api_pages(http, f"{api}/flow_runs/filter",
                              {"deployments": {"id": {"any_": [page_id]}}, "sort": "ID_DESC"}) if page_id else []
        # Task runs reach the server's tables through its events (the task-run recorder), which a busy
        # server writes late: read again until every run that got past Pending shows a task run, or
        # nothing new came in 20 s. The figures are the server's own start times, so waiting for
        # them changes none of them.
        ids = [r["id"] for r in runs]
        beyond_pending = {r["id"] for r in runs if r.get("state_type") not in (None, "SCHEDULED", "PENDING")}
        deadline, last_seen = time.monotonic() + 20, -1
        while True:
            tasks: list[dict] = []
            for i in range(0, len(ids), 50):
                tasks.extend(api_pages(http, f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": ids[i:i + 50]}}}))
            seen = {t["flow_run_id"] for t in tasks if t.get("start_time")}
            if beyond_pending <= seen or time.monotonic() > deadline:
                break
            if len(seen) > last_seen:
                deadline, last_seen = time.monotonic() + 20, len(seen)
            time.sleep(5)

    runs_per_group: Counter = Counter()
    run_group: dict[str, int] = {}
    foreign = 0
    for run in runs:
        incident = (run.get("parameters") or {}).get("incident") or {}
        g = key_to_group.get(incident.get("group_key"))
        if g is None:
            foreign += 1
            continue
        runs_per_group[g] += 1
        run_group[run["id"]] = g
        if incident.get("id"):
            incident_group.setdefault(incident["id"], g)
    first_task: dict[str, float] = {}
    for task in tasks:
        if task.get("start_time") and task["flow_run_id"] in run_group:
            start = ts(task["start_time"])
            first_task[task["flow_run_id"]] = min(start, first_task.get(task["flow_run_id"], start))
    # A run the server shows no task run for (its task-run events were dropped: the embedded server's
    # in-memory messaging drops events when a consumer falls 10,000 behind) counts from its own start,
    # the server's timestamp of its first Running state, a little before its first task.
    without_tasks = {r["id"]: ts(r["start_time"]) for r in runs
                     if r["id"] in run_group and r["id"] not in first_task and r.get("start_time")}
    started = [start - first_post[run_group[run_id]] for run_id, start in {**first_task, **without_tasks}.items()
               if run_group[run_id] in first_post]
    figures["responses"] = {
        "created": len(run_group), "expected": args.groups,
        "groups_without_run": sum(1 for g in range(args.groups) if runs_per_group[g] == 0),
        "duplicates": sum(n - 1 for n in runs_per_group.values() if n > 1),
        "other_runs": foreign,
        "started": len(started), "started_without_task_runs": len(without_tasks),
        **{f"start_{k}_s": v for k, v in p50_max(started).items()},
        "max_paused_at_once": watch.max_paused, "paused_samples": len(watch.paused_samples),
        "paused_sample_errors": watch.paused_errors,
        "states_at_end": dict(Counter(r.get("state_name") or "?" for r in runs if r["id"] in run_group)),
    }

    delay = level1_delay * 60 * args.time_scale
    page_list = capture.pages()
    per_level: Counter = Counter()
    keys: Counter = Counter()
    late1: list[float] = []
    late1_opened: list[float] = []
    unknown = 0
    for arrived, body in page_list:
        incident = (body.get("incident") or {}).get("id")
        level = body.get("level")
        keys[(incident, level)] += 1
        per_level[level] += 1
        g = incident_group.get(incident)
        if g is None:
            unknown += 1
            continue
        if level == 1 and keys[(incident, level)] == 1:
            if g in first_post:
                late1.append(arrived - (first_post[g] + delay))
            opened_at = (body.get("incident") or {}).get("opened_at")
            if opened_at:
                late1_opened.append(arrived - (ts(opened_at) + delay))
    due = sum(1 for g, t in first_post.items() if t + delay <= t_end)
    overdue_page_runs = [r for r in page_runs if r.get("state_type") == "SCHEDULED" and r.get("next_scheduled_start_time")
                         and ts(r["next_scheduled_start_time"]) < t_end - 5]
    figures["pages"] = {
        "level1": per_level.get(1, 0), "level1_due": due, "by_level": {str(k): v for k, v in sorted(per_level.items(), key=str)},
        "level1_late_p50_s": statistics.median(late1) if late1 else None, "level1_late_max_s": max(late1) if late1 else None,
        "level1_late_vs_opened_at_p50_s": statistics.median(late1_opened) if late1_opened else None,
        "level1_late_vs_opened_at_max_s": max(late1_opened) if late1_opened else None,
        "duplicates": sum(n - 1 for n in keys.values() if n > 1), "unknown_incident": unknown,
        "level1_delay_s": delay,
        "page_runs_by_state": dict(Counter(r.get("state_name") or "?" for r in page_runs)) if page_id else None,
        "page_runs_overdue": len(overdue_page_runs) if page_id else None,
        "webhook_posts": len(capture.requests),
    }
    return figures


def stop_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP stop a benchmark by KeyboardInterrupt, so its clean-up runs."""
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started where SIGINT was ignored
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--alerts-per-group", type=int, default=50)
    parser.add_argument("--posts-per-group", type=int, default=5)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds over which all posts are spread")
    parser.add_argument("--observe", type=float, default=180.0, help="seconds watched from the storm's start")
    parser.add_argument("--wait-window", type=float, default=60.0,
                        help="seconds after the observation, with no request from this bench, measuring what the "
                             "runs waiting for approval cost")
    parser.add_argument("--time-scale", type=float, default=0.1, help="RESPONDER_TIME_SCALE")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--approval-timeout", type=float, default=36000.0,
                        help="the drill's approval_timeout_seconds in the config copy (× time scale)")
    parser.add_argument("--prefect-database-url",
                        help="a PostgreSQL server for a separate `prefect server start` (fresh database, dropped at the end)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for `responder up` (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories and logs; print where")
    args = parser.parse_args()
    args.storm_tag = uuid.uuid4().hex[:8]

    stop_on_signals()

    tmp = Path(tempfile.mkdtemp(prefix="responder-storm-"))
    capture = CaptureServer()
    external: ExternalServer | None = None
    bench: Bench | None = None
    watch: Watch | None = None
    me = psutil.Process()
    try:
        level1_delay = config_copy(tmp / "config", capture.url, args.approval_timeout)
        env = {"PREFECT_SERVER_LOGGING_LEVEL": "INFO"}  # uvicorn's access log: the requests while runs wait
        env.update(kv.split("=", 1) for kv in args.env)
        env["RESPONDER_TIME_SCALE"] = str(args.time_scale)
        if args.prefect_database_url:
            external = ExternalServer(args.prefect_database_url)
            external.start(tmp)
            env["PREFECT_API_URL"] = external.api
            print(f"prefect server start on PostgreSQL ({external.database}) → /api/health 200: {external.startup:.1f} s")
        bench = Bench(tmp / "config", extra_env=env)
        api = external.api if external else bench.api
        bench.api = api
        print(f"responder up → /healthz 200: {bench.startup:.1f} s (Prefect server: "
              f"{'prefect server start on PostgreSQL' if external else 'embedded, SQLite'}); time scale {args.time_scale}")
        with httpx.Client(timeout=30, auth=PREFECT_AUTH) as http:
            drill_id = deployment_id(http, api, DRILL_DEPLOYMENT)
            # Pages sent as runs of a deployment of their own, when this responder has one.
            page_id = deployment_id(http, api, PAGE_DEPLOYMENT)
        if drill_id is None:
            raise SystemExit(f"no {DRILL_DEPLOYMENT} deployment on the Prefect server")
        watch = Watch([bench.proc.pid] + ([external.proc.pid] if external and external.proc else []), api, drill_id,
                      {external.proc.pid} if external and external.proc else set())
        idle = []
        for _ in range(5):  # settled after start-up: idle RSS
            time.sleep(1)
            idle.append(watch.rss())
        idle_rss = statistics.median(idle)
        starts_at = datetime.now(timezone.utc).isoformat()
        posts = plan_posts(args, args.storm_tag, starts_at)
        sender = Sender(bench, posts, args.clients)
        print(f"storm: {args.groups} groups × {args.alerts_per_group} alerts ({ALERTNAME}), {len(posts)} posts over "
              f"{args.duration:.0f} s from {args.clients} clients; observing {args.observe:.0f} s", flush=True)
        watch.start()
        cpu0 = watch.cpu()
        t0 = time.time() + 0.2
        sender.start(t0)
        t_end = t0 + args.observe
        next_note = t0 + 30
        while time.time() < t_end:
            time.sleep(min(1.0, max(0.0, t_end - time.time())))
            if time.time() >= next_note:
                print(f"  {time.time() - t0:4.0f} s: {len(sender.results)} posts answered, "
                      f"{len(capture.pages())} pages, paused now "
                      f"{watch.paused_samples[-1][1] if watch.paused_samples else '?'}", file=sys.stderr, flush=True)
                next_note += 30
        cpu1 = watch.cpu()
        watch.stop()
        if not sender.done():
            print(f"posts still in flight at the end of the observation: {len(posts) - len(sender.results)}")
        server_log = external.log if external else bench.tmp / "prefect" / "server.log"
        waiting = measure_waiting(watch, server_log, args.wait_window, idle_rss)
        figures = collect(args, api, sender, capture, watch, drill_id, page_id, level1_delay, t_end)
        figures["waiting"] = waiting
        figures["memory"] = {"idle_rss_mib": idle_rss / 2**20, "peak_rss_mib": watch.peak_rss / 2**20}
        figures["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
        figures["config"] = {k: getattr(args, k) for k in ("groups", "alerts_per_group", "posts_per_group", "duration",
                                                          "observe", "time_scale", "clients")}
        figures["config"]["prefect_server"] = "postgresql" if external else "embedded-sqlite"
        report(figures, args)
        if args.json:
            print(json.dumps(figures, default=str))
    except KeyboardInterrupt:
        print("interrupted: stopping what was started", file=sys.stderr)
        raise SystemExit(130)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up runs to its end (its waits are bounded)
        known = list(watch.seen.values()) if watch else []
        known += me.children(recursive=True)
        bench_tmp = bench.tmp if bench is not None else started_bench_tmp(me)
        if watch:
            watch.stop()
        if bench is not None:
            try:
                bench.close(keep=args.keep)
            except (ProcessLookupError, PermissionError):  # the responder is gone already
                if not args.keep:
                    shutil.rmtree(bench.tmp, ignore_errors=True)
        if external is not None:
            external.stop()
        stop_leftovers(known + me.children(recursive=True))
        if bench is None and bench_tmp is not None and not args.keep:  # its start was interrupted
            shutil.rmtree(bench_tmp, ignore_errors=True)
        if external is not None:
            external.drop()
        capture.close()
        keep_or_remove(tmp, args.keep)


ACCESS_LINE = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|WebSocket) (/[^ ?"]*)')


def measure_waiting(watch: Watch, server_log: Path, seconds: float, idle_rss: float) -> dict[str, Any]:
    """What the runs waiting for approval cost while nothing else happens: requests the Prefect server
    answered (its access log between two offsets; this bench asks nothing meanwhile), CPU of the server
    and the responder, and RSS of the tree (sampled every 5 s, without any request)."""
    start_offset = server_log.stat().st_size if server_log.exists() else 0
    cpu0, rss = watch.cpu(), []
    started = time.monotonic()
    while (left := seconds - (time.monotonic() - started)) > 0:
        rss.append(watch.rss())
        time.sleep(min(5.0, left))
    cpu1 = watch.cpu()
    elapsed = time.monotonic() - started
    with open(server_log, "rb") as log:
        log.seek(start_offset)
        text = log.read().decode(errors="replace")
    requests = Counter(f"{m.group(1)} {m.group(2)}" for m in ACCESS_LINE.finditer(text))
    return {"seconds": elapsed, "requests": sum(requests.values()), "requests_per_s": sum(requests.values()) / elapsed,
            "top_requests": requests.most_common(5), "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
            "rss_mib": statistics.median(rss) / 2**20, "added_to_idle_mib": (statistics.median(rss) - idle_rss) / 2**20}


def keep_or_remove(tmp: Path, keep: bool) -> None:
    """A bench's temporary directory: kept (and said where) with --keep, else removed."""
    if keep:
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def report(f: dict[str, Any], args: argparse.Namespace) -> None:
    p, r, pg, m, c = f["posts"], f["responses"], f["pages"], f["memory"], f["cpu_s"]
    print(f"posts: {p['sent']} of {p['planned']} (last sent at {fmt(p['last_sent_s'], digits=1)}); latency p50 "
          f"{fmt(p['p50_s'] * 1000 if p['p50_s'] is not None else None, 'ms', 1)}, p99 "
          f"{fmt(p['p99_s'] * 1000 if p['p99_s'] is not None else None, 'ms', 1)}, max "
          f"{fmt(p['max_s'] * 1000 if p['max_s'] is not None else None, 'ms', 1)}; non-2xx {p['non_2xx']}"
          + (f" {p['statuses']}" if p["statuses"] else ""))
    print(f"incidents opened (post answers): {f['incidents_opened_by_posts']}; groups with more than one: "
          f"{f['groups_with_more_than_one_incident']}")
    print(f"responses created: {r['created']} (expected {r['expected']}); duplicates {r['duplicates']}; groups without "
          f"a run {r['groups_without_run']}" + (f"; other drill runs {r['other_runs']}" if r["other_runs"] else ""))
    print(f"responses started: {r['started']}; first task − group's first post: p50 {fmt(r['start_p50_s'])}, "
          f"max {fmt(r['start_max_s'])}" + (f" ({r['started_without_task_runs']} of them from the run's start: the server "
                                              "shows no task run for them)" if r["started_without_task_runs"] else ""))
    print(f"runs paused at once: max {r['max_paused_at_once']} ({r['paused_samples']} samples every 3 s"
          + (f", {r['paused_sample_errors']} failed" if r["paused_sample_errors"] else "") + ")")
    print(f"level-1 pages: {pg['level1']} ({pg['level1_due']} due by the end); lateness after first post + "
          f"{pg['level1_delay_s']:.0f} s: p50 {fmt(pg['level1_late_p50_s'])}, max {fmt(pg['level1_late_max_s'])} "
          f"(after the incident's opened_at: p50 {fmt(pg['level1_late_vs_opened_at_p50_s'])}, "
          f"max {fmt(pg['level1_late_vs_opened_at_max_s'])})")
    print(f"pages by level: {pg['by_level']}; duplicate pages {pg['duplicates']}"
          + (f"; pages for unknown incidents {pg['unknown_incident']}" if pg["unknown_incident"] else ""))
    print(f"RSS (responder + Prefect server tree): idle {m['idle_rss_mib']:.0f} MiB, peak {m['peak_rss_mib']:.0f} MiB")
    print(f"CPU over the storm and observation ({args.observe:.0f} s): server {c['server']:.1f} s, "
          f"responder {c['responder']:.1f} s")
    w = f["waiting"]
    print(f"while {r['states_at_end'].get('Suspended', 0) + r['states_at_end'].get('Paused', 0)} runs waited for "
          f"approval ({w['seconds']:.0f} s, this bench asking nothing): {w['requests']} requests to the Prefect server "
          f"({w['requests_per_s']:.2f}/s){': ' + ', '.join(f'{k} ×{n}' for k, n in w['top_requests']) if w['top_requests'] else ''}; "
          f"CPU server {w['cpu_s']['server']:.1f} s, responder {w['cpu_s']['responder']:.1f} s; RSS {w['rss_mib']:.0f} MiB "
          f"({w['added_to_idle_mib']:+.0f} MiB against idle before the storm)")
    print(f"at the end: drill runs {r['states_at_end']}"
          + (f"; page runs {pg['page_runs_by_state']}, {pg['page_runs_overdue']} Scheduled past their time"
             if pg["page_runs_by_state"] is not None else "; pages are not Prefect runs in this responder"))


if __name__ == "__main__":
    main()
