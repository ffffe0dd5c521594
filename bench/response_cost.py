"""Benchmark: what ONE response costs the Prefect server, counted from the server's own REST API.

Why: every task run, state change, log line, artifact version and event a response writes is a row
(or several) in the Prefect server's database and work for its services. This counts them per
response, so the team can cut what does not inform a person.

How:

1. Starts `responder up` exactly as `make run` does (bench/alert_to_first_task.py's `Bench`: embedded
   Prefect server on SQLite, temporary PREFECT_HOME and RESPONDER_HOME, free ports), with
   RESPONDER_TIME_SCALE=0.01 (escalation steps of seconds), on a copy of config/ made by
   bench/storm.py's `config_copy`: the drill's approval deadline is long (36000 s × 0.01 = 360 s), so
   the responder's own deadline never answers before this bench does, and the notify webhooks go
   to a capture server inside this process (Slack, PagerDuty, Discord are unreachable here).
2. Watches the idle responder for --idle seconds (default 20, after 5 s to settle): events by name,
   CPU. That is the background every figure of the whole responder below includes.
3. Fires --alerts N (default 5) `ResponderDrill` alerts one at a time through the intake, each an
   Alertmanager v4 body of its own group (bench/storm.py's `webhook_body`), and for each:
   finds its flow run (the drill deployment's run whose `incident` parameter is the incident the
   intake answered), waits until it is PAUSED, answers the approval through the Prefect API
   (`POST /api/flow_runs/{id}/resume`, `{"run_input": {"approve": true, "reason": "bench",
   "approver": "bench"}}`, again while the answer is "Run input schema not found."), and waits for a
   final state (COMPLETED, FAILED, CANCELLED, CRASHED). The next alert is posted only then.
4. Waits until the responses' counts stop growing (events are persisted in batches, artifacts and
   the post-mortem are written after the incident closes), then closes the CPU window.
5. Counts, per response, from the Prefect REST API:
   * task runs: `POST /api/task_runs/filter` (flow run id), also by state name and by task name;
   * flow-run state changes: `GET /api/flow_run_states/?flow_run_id=` (and the sequence of names);
   * task-run state changes: the sum of `GET /api/task_run_states/?task_run_id=` over its task runs;
   * log lines: `POST /api/logs/filter` (flow run id), also by logger name and level, and how many
     belong to a task run;
   * artifacts: `POST /api/artifacts/filter` by flow run id, plus those whose key names the
     incident (`timeline-<id>`, `incident-<id>`, `postmortem-<id>` written outside the run): every
     version (each row is one version), and distinct keys;
   * events: `POST /api/events/filter` with `any_resource` id `prefect.flow-run.<run>` or
     `responder.incident.<incident>` (so the run's own events, its task runs' events, which name the
     run as a related resource, automation events about the run and the responder's incident
     events), paged through `next_page`; grouped by name;
   * time: alert POST → question (PAUSED), answer → final state, alert POST → final state, from the
     server's state timestamps.
   Subflow runs of a response (parent_flow_run_id) are counted with it; the drill has none today.
6. The whole responder during the bench (first POST → counts settled): events by name
   (`POST /api/events/count-by/event`), flow runs and task runs created, log lines (with and without
   a flow run), artifact versions, CPU seconds of the Prefect server and of the responder, and the
   rows added to each table of the Prefect server's SQLite database (read-only counts at the start
   and the end of that window), each also divided by N. The idle rate × the bench's duration is shown
   beside the events, to tell background from the responses' own; the window's events tied to no
   response (e.g. block loads, automation firings, artifact events naming no flow run) are listed.

What is not counted:
* HTTP requests to the server (it keeps no count; their work shows in its CPU seconds), reads the
  UI makes, and the server's own service loops except as CPU and idle events.
* This bench's own polling (about three light reads a second while a response runs) is in the
  server CPU figure; the counting queries run after the CPU window closed.
* Results kept in the responder's store (`core/results.py`) and its own store rows: not Prefect's.
* Notifications (webhook posts to the capture server) cost the responder, not the Prefect server.
* Pages: with RESPONDER_TIME_SCALE=0.01 level 1 is due 3 s after an incident opens, so a response
  that takes longer than that is paged (a `responder.incident.paged` event, in the responder.*
  events); in production that is 5 minutes.
* Rows deleted or updated in place (e.g. flow_run rows updated at each state) are not rows added.

Prints a table (median, min, max per response and the total over N; the whole responder beside it)
and breakdowns; --json prints the figures as JSON too. Asserts nothing. Every process started here
is stopped at the end, also on Ctrl-C or failure.

Run: `.venv/bin/python bench/response_cost.py [--alerts N] [--idle S] [--env KEY=VALUE] [--json] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alert_to_first_task import PREFECT_AUTH, Bench  # noqa: E402  (the same `responder up` as the other benchmarks)
from storm import (  # noqa: E402
    DRILL_DEPLOYMENT, CaptureServer, api_pages, config_copy, deployment_id, group_alerts,
    started_bench_tmp, stop_leftovers, stop_on_signals, ts, webhook_body,
)

TIME_SCALE = 0.01
APPROVAL_TIMEOUT = 36000.0  # × TIME_SCALE = 360 s: this bench answers first
SCHEMA_NOT_YET = "Run input schema not found."  # responder/approvals.py: the form is written just after the pause
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
APPROVAL = {"approve": True, "reason": "bench", "approver": "bench"}
EVENT_GROUPS = ("prefect.flow-run.", "prefect.task-run.", "responder.", "prefect.automation.")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def event_group(name: str) -> str:
    return next((prefix + "*" for prefix in EVENT_GROUPS if name.startswith(prefix)), "other")


# -- driving one response ------------------------------------------------------------------------


class Driver:
    """Posts one alert, answers its approval through the Prefect API, waits for its final state."""

    def __init__(self, bench: Bench, api: str, drill_id: str, tag: str, poll: float = 0.3) -> None:
        self.bench, self.api, self.drill_id, self.tag, self.poll = bench, api, drill_id, tag, poll
        self.http = httpx.Client(timeout=30, auth=PREFECT_AUTH)

    def run_of(self, incident: str, deadline: float) -> dict:
        while time.monotonic() < deadline:
            try:
                runs = self.http.post(f"{self.api}/flow_runs/filter", json={
                    "deployments": {"id": {"any_": [self.drill_id]}}, "sort": "EXPECTED_START_TIME_DESC",
                    "limit": 20}).json()
            except (httpx.HTTPError, ValueError):
                runs = None
            for run in runs if isinstance(runs, list) else []:
                if ((run.get("parameters") or {}).get("incident") or {}).get("id") == incident:
                    return run
            time.sleep(self.poll)
        raise TimeoutError(f"no flow run for incident {incident}")

    def answer(self, run_id: str) -> tuple[str, int]:
        """Resume with the approval; returns (the server's status or refusal, tries)."""
        for tries in range(1, 41):
            try:
                response = self.http.post(f"{self.api}/flow_runs/{run_id}/resume", json={"run_input": APPROVAL})
                data = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                data = {"status": "ERROR", "details": {"reason": str(exc)}}
            reason = (data.get("details") or {}).get("reason") if isinstance(data, dict) else str(data)
            if isinstance(data, dict) and data.get("status") == "ACCEPT":
                return "ACCEPT", tries
            if reason != SCHEMA_NOT_YET:
                return f"{data.get('status') if isinstance(data, dict) else '?'}: {reason}", tries
            time.sleep(0.25)
        return f"still {SCHEMA_NOT_YET!r}", 40

    def respond(self, index: int, starts_at: str, timeout: float = 240) -> dict[str, Any]:
        group = f"r{index:03d}"
        body = webhook_body(self.tag, group, group_alerts(self.tag, group, 1, starts_at))
        t_post = time.time()
        incident = self.bench.post(body)
        deadline = time.monotonic() + timeout
        run = self.run_of(incident, deadline)
        rec: dict[str, Any] = {"incident": incident, "run_id": run["id"], "posted": t_post, "answers": []}
        answered: set[str] = set()
        while time.monotonic() < deadline:
            try:
                run = self.http.get(f"{self.api}/flow_runs/{rec['run_id']}").json()
            except (httpx.HTTPError, ValueError):
                time.sleep(self.poll)
                continue
            state = run.get("state") or {}
            if run.get("state_type") in FINAL:
                rec.update(final_state=run.get("state_name"), final_type=run["state_type"], final_at=ts(state["timestamp"]))
                return rec
            if run.get("state_type") == "PAUSED" and state.get("id") not in answered:
                answered.add(state.get("id"))
                rec.setdefault("paused_at", ts(state["timestamp"]))
                status, tries = self.answer(rec["run_id"])
                rec["answers"].append({"status": status, "tries": tries, "at": time.time()})
                continue
            time.sleep(self.poll)
        rec.update(final_state=f"not final after {timeout:.0f} s ({run.get('state_name')})", final_type=None)
        return rec

    def close(self) -> None:
        self.http.close()


# -- counting ------------------------------------------------------------------------------------


def events(http: httpx.Client, api: str, event_filter: dict) -> list[dict]:
    """Every event matching the filter, following next_page (the server gives 50 a page)."""
    page = http.post(f"{api}/events/filter", json={"filter": event_filter, "limit": 50})
    page.raise_for_status()
    data = page.json()
    found = list(data.get("events") or [])
    while data.get("next_page"):
        page = http.get(data["next_page"])
        page.raise_for_status()
        data = page.json()
        found.extend(data.get("events") or [])
    return list({e["id"]: e for e in found}.values())


def subflow_runs(http: httpx.Client, api: str, run_id: str) -> list[str]:
    found, todo = [], [run_id]
    while todo:
        children = api_pages(http, f"{api}/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": todo}}})
        todo = [c["id"] for c in children if c["id"] not in found]
        found.extend(todo)
    return found


def count_response(http: httpx.Client, api: str, rec: dict, window: dict) -> dict[str, Any]:
    runs = [rec["run_id"], *subflow_runs(http, api, rec["run_id"])]
    tasks = api_pages(http, f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": runs}}, "sort": "EXPECTED_START_TIME_ASC"})
    task_states: Counter = Counter()
    task_state_changes = 0
    for task in tasks:
        states = http.get(f"{api}/task_run_states/", params={"task_run_id": task["id"]}).json()
        task_state_changes += len(states)
        task_states.update(s["name"] for s in states)
    flow_states: list[str] = []
    for run in runs:
        states = http.get(f"{api}/flow_run_states/", params={"flow_run_id": run}).json()
        flow_states += [s["name"] for s in sorted(states, key=lambda s: s["timestamp"])]
    logs = api_pages(http, f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": runs}}, "sort": "TIMESTAMP_ASC"})
    artifacts = {a["id"]: a for a in api_pages(http, f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": runs}}})}
    artifacts.update({a["id"]: a for a in api_pages(http, f"{api}/artifacts/filter",
                                                    {"artifacts": {"key": {"like_": rec["incident"].lower()}}})})
    found = events(http, api, {**window, "any_resource": {"id": [f"prefect.flow-run.{r}" for r in runs]
                                                         + [f"responder.incident.{rec['incident']}"]}})
    versions_by_kind = Counter(f"{(a.get('key') or '(no key)').split('-')[0]} ({a.get('type')})" for a in artifacts.values())
    times = {
        "alert → question (PAUSED) s": rec["paused_at"] - rec["posted"] if rec.get("paused_at") else None,
        "answer → final state s": rec["final_at"] - rec["answers"][-1]["at"] if rec.get("final_at") and rec["answers"] else None,
        "alert → final state s": rec["final_at"] - rec["posted"] if rec.get("final_at") else None,
    }
    return {
        "incident": rec["incident"], "run_id": rec["run_id"], "final_state": rec.get("final_state"),
        "answers": rec["answers"], "subflow_runs": len(runs) - 1, "times": times,
        "counts": {
            "task runs": len(tasks),
            "flow-run state changes": len(flow_states),
            "task-run state changes": task_state_changes,
            "log lines": len(logs),
            "artifact versions": len(artifacts),
            "artifact keys": len({a.get("key") for a in artifacts.values()}),
            "events": len(found),
        },
        "flow_states": flow_states,
        "task_runs_by_state": dict(Counter(t.get("state_name") or "?" for t in tasks)),
        "task_runs_by_name": dict(Counter(re.sub(r"-[0-9a-f]{3}$", "", t["name"]) for t in tasks)),  # name-<3 hex>
        "task_state_changes_by_name": dict(task_states),
        "logs_by_logger": dict(Counter(f"{l.get('name')} {logging_level(l.get('level'))}" for l in logs)),
        "logs_in_task_runs": sum(1 for l in logs if l.get("task_run_id")),
        "artifact_versions_by_key_kind": dict(versions_by_kind),
        "events_by_name": dict(Counter(e["event"] for e in found)),
        "events_by_group": dict(Counter(event_group(e["event"]) for e in found)),
    }


def logging_level(level: Any) -> str:
    return {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(level, str(level))


def event_counts(http: httpx.Client, api: str, since: float, until: float) -> dict[str, int]:
    """Events by name in [since, until] (the server counts them)."""
    response = http.post(f"{api}/events/count-by/event", json={
        "filter": {"occurred": {"since": iso(since), "until": iso(until)}}, "time_unit": "day", "time_interval": 1})
    response.raise_for_status()
    return {row["value"]: row["count"] for row in response.json()}


def whole(http: httpx.Client, api: str, since: float, until: float) -> dict[str, Any]:
    """What the whole responder wrote to the Prefect server in [since, until]."""
    after = {"after_": iso(since), "before_": iso(until)}
    flow_runs = http.post(f"{api}/flow_runs/count", json={"flow_runs": {"expected_start_time": after}}).json()
    task_runs = http.post(f"{api}/task_runs/count", json={"task_runs": {"expected_start_time": after}}).json()
    logs = api_pages(http, f"{api}/logs/filter", {"logs": {"timestamp": after}, "sort": "TIMESTAMP_ASC"})
    artifacts: list[dict] = []
    while True:  # newest first, until older than the window
        page = http.post(f"{api}/artifacts/filter", json={"sort": "CREATED_DESC", "limit": 200, "offset": len(artifacts)}).json()
        artifacts.extend(page)
        if len(page) < 200 or ts(page[-1]["created"]) < since:
            break
    return {
        "flow runs": flow_runs, "task runs": task_runs,
        "log lines": len(logs), "log lines without a flow run": sum(1 for l in logs if not l.get("flow_run_id")),
        "artifact versions": sum(1 for a in artifacts if since <= ts(a["created"]) <= until),
        "events by name": event_counts(http, api, since, until),
    }


def table_rows(db: Path | None) -> dict[str, int]:
    """Rows in each table of the Prefect server's SQLite database (read-only; readers do not block
    its writers in WAL mode)."""
    if db is None or not db.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        print(f"(could not count the SQLite tables: {exc})", file=sys.stderr)
        return {}


def settle(http: httpx.Client, api: str, recs: list[dict], window: dict, quiet: float = 4.0, limit: float = 60.0) -> float:
    """Waits until the responses' events, artifacts and task runs stop growing; returns seconds waited."""
    runs = [r["run_id"] for r in recs]
    resources = [f"prefect.flow-run.{r}" for r in runs] + [f"responder.incident.{r['incident']}" for r in recs]
    started = time.monotonic()
    last = None
    time.sleep(quiet)
    while time.monotonic() - started < limit:
        try:
            now = (
                http.post(f"{api}/events/filter", json={"filter": {**window, "occurred": {
                    "since": window["occurred"]["since"], "until": iso(time.time() + 60)},
                    "any_resource": {"id": resources}}, "limit": 1}).json().get("total"),
                http.post(f"{api}/artifacts/count", json={"artifacts": {"flow_run_id": {"any_": runs}}}).json(),
                http.post(f"{api}/task_runs/count", json={"flow_runs": {"id": {"any_": runs}}}).json(),
            )
        except (httpx.HTTPError, ValueError):
            now = None
        if now is not None and now == last:
            break
        last = now
        time.sleep(quiet)
    return time.monotonic() - started


# -- reporting -----------------------------------------------------------------------------------


def spread(values: list[float | None]) -> dict[str, float | None]:
    got = [v for v in values if v is not None]
    if not got:
        return {"median": None, "min": None, "max": None, "total": None}
    return {"median": statistics.median(got), "min": min(got), "max": max(got), "total": sum(got)}


def medians(dicts: list[dict[str, int]]) -> dict[str, float]:
    keys = sorted({k for d in dicts for k in d})
    return {k: statistics.median([d.get(k, 0) for d in dicts]) for k in keys}


def num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and (digits or value != int(value)):
        return f"{value:.{digits or 1}f}"
    return str(int(value))


def report(f: dict[str, Any]) -> None:
    n, per, w = f["alerts"], f["per_response"], f["whole"]
    print(f"\n{n} responses ({dict(Counter(r['final_state'] for r in per))}); approval answers: "
          f"{dict(Counter(a['status'] for r in per for a in r['answers']))}, resume tries "
          f"{[a['tries'] for r in per for a in r['answers']]}")
    print(f"bench window {f['window_s']:.0f} s (incl. {f['settle_s']:.0f} s for the counts to settle); "
          f"idle watched {f['idle_s']:.0f} s before it\n")
    head = f"{'per response':<34}{'median':>8}{'min':>7}{'max':>7}{'total':>8}   {'whole responder in the window':>31}"
    print(head)
    print("-" * len(head))
    whole_of = {"task runs": w["task runs"], "log lines": w["log lines"], "artifact versions": w["artifact versions"],
                "events": sum(w["events by name"].values())}
    for key, s in f["counts"].items():
        extra = ""
        if key in whole_of:
            extra = f"{whole_of[key]:>8}"
            if key == "events":
                extra += f"  (idle rate × window: {f['idle_events_in_window']:.0f})"
            if key == "log lines":
                extra += f"  ({w['log lines without a flow run']} without a run)"
        print(f"{key:<34}{num(s['median']):>8}{num(s['min']):>7}{num(s['max']):>7}{num(s['total']):>8}   {extra}")
    groups = f["events_by_group"]
    for g in sorted(set(groups) | set(f["whole_events_by_group"])):
        s = groups.get(g) or spread([0])
        print(f"{'  events ' + g:<34}{num(s['median']):>8}{num(s['min']):>7}{num(s['max']):>7}{num(s['total']):>8}   "
              f"{f['whole_events_by_group'].get(g, 0):>8}  (idle rate × window: {f['idle_events_by_group_in_window'].get(g, 0):.0f})")
    for key, s in f["times"].items():
        print(f"{key:<34}{num(s['median'], 1):>8}{num(s['min'], 1):>7}{num(s['max'], 1):>7}{'':>8}")
    c = f["cpu_s"]
    print(f"{'CPU s, Prefect server (÷ N)':<34}{c['prefect server'] / n:>8.2f}{'':>22}   {c['prefect server']:>8.1f}"
          f"  (idle rate × window: {f['idle_cpu_in_window']['prefect server']:.1f})")
    print(f"{'CPU s, responder (÷ N)':<34}{c['responder'] / n:>8.2f}{'':>22}   {c['responder']:>8.1f}"
          f"  (idle rate × window: {f['idle_cpu_in_window']['responder']:.1f})")
    print(f"whole responder in the window: flow runs {w['flow runs']}")

    print("\nmedian per response, by kind:")
    print("  task runs by state:       " + ", ".join(f"{k} {num(v)}" for k, v in f["task_runs_by_state"].items()))
    print("  task runs by task:        " + ", ".join(f"{k} {num(v)}" for k, v in f["task_runs_by_name"].items()))
    print("  task-run states by name:  " + ", ".join(f"{k} {num(v)}" for k, v in f["task_state_changes_by_name"].items()))
    print(f"  log lines in task runs:   {num(f['logs_in_task_runs'])}; by logger and level: "
          + ", ".join(f"{k} {num(v)}" for k, v in f["logs_by_logger"].items()))
    print("  artifact versions by key: " + ", ".join(f"{k} {num(v)}" for k, v in f["artifact_versions_by_key_kind"].items()))
    print("  events by name:           " + ", ".join(f"{k} {num(v)}" for k, v in f["events_by_name"].items()))
    print(f"  flow-run states of the first response: {' → '.join(per[0]['flow_states'])}")
    print("events in the window tied to no response (not related to its flow run or incident), by name: "
          + (", ".join(f"{k} {v}" for k, v in f["events_not_tied"].items()) or "none"))
    if f["table_rows_added"]:
        print(f"\nrows added to the Prefect server's SQLite tables in the window (÷ N = {n}; background included):")
        rows = sorted(f["table_rows_added"].items(), key=lambda kv: -kv[1])
        print("  " + ", ".join(f"{k} {v} ({v / n:.1f})" for k, v in rows if v))


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=5, help="responses, one at a time (default 5)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds the idle responder is watched first (0: not)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories and logs; print where")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for responder up (e.g. PYTHONPATH=<a worktree> to measure other code)")
    args = parser.parse_args()
    if args.alerts < 1:
        parser.error("--alerts must be at least 1")

    stop_on_signals()

    tmp = Path(tempfile.mkdtemp(prefix="responder-cost-"))
    capture = CaptureServer()
    bench: Bench | None = None
    driver: Driver | None = None
    me = psutil.Process()
    known: list[psutil.Process] = []
    try:
        config_copy(tmp / "config", capture.url, APPROVAL_TIMEOUT)
        bench = Bench(tmp / "config", extra_env={**dict(kv.split("=", 1) for kv in args.env),
                                                  "RESPONDER_TIME_SCALE": str(TIME_SCALE)})
        known += me.children(recursive=True)
        api = bench.api
        print(f"responder up → /healthz 200: {bench.startup:.1f} s (embedded Prefect server, SQLite; "
              f"RESPONDER_TIME_SCALE={TIME_SCALE}); PREFECT_API_URL={api}", flush=True)
        http = httpx.Client(timeout=60, auth=PREFECT_AUTH)
        drill_id = deployment_id(http, api, DRILL_DEPLOYMENT)
        if drill_id is None:
            raise SystemExit(f"no {DRILL_DEPLOYMENT} deployment on the Prefect server")
        db = next(iter(sorted((bench.tmp / "prefect").glob("*.db"))), None)

        # The idle responder: the background every whole-responder figure includes.
        # Its events are counted at the end, with the rest: the server persists events in batches.
        idle_s, idle_window, idle_cpu = 0.0, None, {"prefect server": 0.0, "responder": 0.0}
        if args.idle > 0:
            time.sleep(5)
            i0, cpu0 = time.time(), bench.cpu_seconds()
            time.sleep(args.idle)
            i1, cpu1 = time.time(), bench.cpu_seconds()
            idle_s, idle_window = i1 - i0, (i0, i1)
            idle_cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}

        # The responses, one at a time.
        tag = uuid.uuid4().hex[:8]
        driver = Driver(bench, api, drill_id, tag)
        rows0 = table_rows(db)
        w0, cpu0 = time.time(), bench.cpu_seconds()
        window = {"occurred": {"since": iso(w0 - 5), "until": iso(w0 + 3600)}}
        recs = []
        for i in range(args.alerts):
            rec = driver.respond(i, datetime.now(timezone.utc).isoformat())
            recs.append(rec)
            print(f"  response {i + 1}/{args.alerts}: {rec['final_state']} after "
                  f"{(rec['final_at'] - rec['posted']) if rec.get('final_at') else float('nan'):.1f} s", file=sys.stderr, flush=True)
        settle_s = settle(http, api, recs, window)
        w1, cpu1 = time.time(), bench.cpu_seconds()
        rows1 = table_rows(db)
        window["occurred"]["until"] = iso(w1 + 5)

        # Counting (after the CPU window: these queries are not in its figures).
        per = [count_response(http, api, rec, window) for rec in recs]
        w = whole(http, api, w0, w1)
        idle_events = event_counts(http, api, *idle_window) if idle_window else {}
        span = w1 - w0
        scale = span / idle_s if idle_s else 0.0
        whole_groups: Counter = Counter()
        for name, count in w["events by name"].items():
            whole_groups[event_group(name)] += count
        idle_groups: Counter = Counter()
        for name, count in idle_events.items():
            idle_groups[event_group(name)] += count
        figures: dict[str, Any] = {
            "alerts": args.alerts, "time_scale": TIME_SCALE, "window_s": span, "settle_s": settle_s, "idle_s": idle_s,
            "counts": {k: spread([p["counts"][k] for p in per]) for k in per[0]["counts"]},
            "times": {k: spread([p["times"][k] for p in per]) for k in per[0]["times"]},
            "events_by_group": {g: spread([p["events_by_group"].get(g, 0) for p in per])
                                for g in sorted({g for p in per for g in p["events_by_group"]})},
            "whole_events_by_group": dict(whole_groups),
            "events_not_tied": {k: v for k, v in sorted(
                (Counter(w["events by name"]) - sum((Counter(p["events_by_name"]) for p in per), Counter())).items(),
                key=lambda kv: -kv[1])},
            "idle_events_by_name": idle_events,
            "idle_events_in_window": sum(idle_events.values()) * scale,
            "idle_events_by_group_in_window": {g: c * scale for g, c in idle_groups.items()},
            "idle_cpu_in_window": {k: v * scale for k, v in idle_cpu.items()},
            "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
            "whole": w,
            "table_rows_added": {k: rows1.get(k, 0) - rows0.get(k, 0) for k in sorted(set(rows0) | set(rows1))},
            **{key: medians([p[key] for p in per]) for key in (
                "task_runs_by_state", "task_runs_by_name", "task_state_changes_by_name", "logs_by_logger",
                "artifact_versions_by_key_kind", "events_by_name")},
            "logs_in_task_runs": statistics.median([p["logs_in_task_runs"] for p in per]),
            "per_response": per,
        }
        http.close()
        report(figures)
        if args.json:
            print(json.dumps(figures, default=str))
    except KeyboardInterrupt:
        print("interrupted: stopping what was started", file=sys.stderr)
        raise SystemExit(130)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up runs to its end (its waits are bounded)
        known += me.children(recursive=True)
        bench_tmp = bench.tmp if bench is not None else started_bench_tmp(me)
        if driver is not None:
            driver.close()
        if bench is not None:
            try:
                bench.close(keep=args.keep)
            except (ProcessLookupError, PermissionError):  # the responder is gone already
                if not args.keep:
                    shutil.rmtree(bench.tmp, ignore_errors=True)
        stop_leftovers(known + me.children(recursive=True))
        if bench is None and bench_tmp is not None and not args.keep:  # its start was interrupted
            shutil.rmtree(bench_tmp, ignore_errors=True)
        capture.close()
        if args.keep:
            print(f"kept: {tmp}" + (f" and {bench_tmp}" if bench_tmp else ""))
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
