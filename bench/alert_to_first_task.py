"""Benchmark: Alertmanager POST → the runbook's first task running, on the embedded default.

Starts `responder up` exactly as `make run` does (embedded Prefect server on SQLite, in a
temporary PREFECT_HOME and RESPONDER_HOME, free ports), then measures:

1. 20 alerts posted one at a time (each waits for its run): time from the POST to the start time
   of the run's first task run (as the Prefect server recorded it); p50, p95, max.
2. 30 distinct alerts posted within one second: time from the first POST until the last of the
   30 runs has its first task running.

For the burst it also prints where the time went (run created by the automation, claimed, Running,
first task) and the CPU the responder and the Prefect server used meanwhile.

Prints the figures; asserts nothing. Run: `make bench` or `.venv/bin/python bench/alert_to_first_task.py`.
Options: --single N (default 20), --burst N (default 30), --runbook-config DIR,
--responders N (default 1; with 2 or more, the others run on the first one's embedded Prefect server,
all share a store on PostgreSQL, a fresh database on --store-url's server, and alerts are posted
to each intake in turn),
--prefect-database-url postgresql+asyncpg://… (the same, with the Prefect server on PostgreSQL),
--env KEY=VALUE (a setting for `responder up` and its server, repeatable), --keep (keep the
temporary PREFECT_HOME, database and logs, and print where).

A/B against plain `prefect server start` as the embedded server:
`--env RESPONDER_EMBEDDED_SERVER=stock` (README, "The embedded Prefect server").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def machine_speed() -> float:
    """CPU seconds a pure-Python loop of 10 million additions takes, the best of three: this machine's
    speed now. On the 2-core machine these figures come from, the same loop (run at module level) took
    0.87 to 1.31 s on one day: a spread larger than most changes a bench measures. So every bench
    prints it when it starts and when it ends; compare figures only between runs of similar speed."""
    best = float("inf")
    for _ in range(3):
        started, total = time.process_time(), 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.process_time() - started)
    return best


def say_machine_speed(when: str) -> None:
    print(f"machine speed {when}: 10 million additions in {machine_speed():.2f} s of CPU (lower is faster)", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alert_body(tag: str) -> dict:
    return {
        "version": "4",
        "groupKey": f"{{}}:{{alertname=\"HIGH_CPU_USAGE\", bench=\"{tag}\"}}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "responder",
        "groupLabels": {"alertname": "HIGH_CPU_USAGE", "bench": tag},
        "commonLabels": {"alertname": "HIGH_CPU_USAGE"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [{
            "status": "firing",
            # This machine, so the runbook measures it with psutil and runs its whole course, as it did
            # before host runbooks located the alerting machine (an unknown one escalates at once).
            "labels": {"alertname": "HIGH_CPU_USAGE", "severity": "warning", "instance": "127.0.0.1:9100", "bench": tag},
            "annotations": {"summary": "benchmark alert"},
            "startsAt": "2026-11-22T08:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": tag,
        }],
    }


PREFECT_LOGIN = f"bench:{uuid.uuid4().hex}"
PREFECT_AUTH = httpx.BasicAuth(*PREFECT_LOGIN.split(":", 1))  # for the bench's own calls to the Prefect API


class Database:
    """A fresh PostgreSQL database on the server ``url`` names, dropped by drop()."""

    def __init__(self, url: str, prefix: str) -> None:
        from sqlalchemy.engine import make_url

        base = make_url(url)
        self.name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.admin = base.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        self.url = base.set(drivername="postgresql", database=self.name).render_as_string(hide_password=False)
        with psycopg.connect(self.admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        try:
            with psycopg.connect(self.admin, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except psycopg.Error as exc:
            print(f"could not drop database {self.name}: {exc}", file=sys.stderr)


class Bench:
    def __init__(self, config_dir: Path | None, prefect_database_url: str | None = None,
                 extra_env: dict[str, str] | None = None, store_url: str | None = None) -> None:
        say_machine_speed("before the bench")
        self.tmp = Path(tempfile.mkdtemp(prefix="responder-bench-"))
        self.prefect_port = free_port()
        self.intake_port = free_port()
        self.token = uuid.uuid4().hex
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.intake = f"http://127.0.0.1:{self.intake_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RESPONDER_"))}
        env.update(
            # The embedded server asks for a login (as `make run`'s does); the bench gives it one it knows.
            PREFECT_SERVER_API_AUTH_STRING=PREFECT_LOGIN, PREFECT_API_AUTH_STRING=PREFECT_LOGIN,
            PREFECT_HOME=str(self.tmp / "prefect"),
            PREFECT_SERVER_API_PORT=str(self.prefect_port),
            RESPONDER_HOME=str(self.tmp / "responder"),
            RESPONDER_INTAKE_PORT=str(self.intake_port),
            RESPONDER_INTAKE_TOKEN=self.token,
        )
        if config_dir:
            env["RESPONDER_CONFIG_DIR"] = str(config_dir)
        if prefect_database_url:  # the embedded server on PostgreSQL instead of SQLite
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_database_url
        if store_url:  # the store on PostgreSQL, which several responders can share
            env["RESPONDER_DATABASE_URL"] = store_url
        env.update(extra_env or {})
        self.env = env
        self.proc = subprocess.Popen([str(BIN / "responder"), "up"], env=env, cwd=ROOT,
                                     stdout=open(self.tmp / "responder.log", "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        started = time.monotonic()
        self._wait_ready(self.proc, self.intake, self.tmp / "responder.log")
        self.startup = time.monotonic() - started
        self.intakes = [self.intake]  # posts go to each in turn
        self.others: list[subprocess.Popen] = []
        self.http = httpx.Client(timeout=30, auth=PREFECT_AUTH)  # the Prefect API
        self.intake_http = httpx.Client(timeout=30)  # the intake (its own bearer token)

    @staticmethod
    def _wait_ready(proc: subprocess.Popen, intake: str, log: Path) -> None:
        started = time.monotonic()
        while True:
            try:
                if httpx.get(f"{intake}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() - started > 120:
                raise SystemExit(f"responder did not become ready; see {log}")
            time.sleep(0.2)

    def add_responder(self) -> None:
        """Another `responder up` on the same Prefect server (the first one's embedded server) and store."""
        port = free_port()
        home = self.tmp / f"responder-{len(self.others) + 2}"
        env = {**self.env, "PREFECT_API_URL": self.api, "RESPONDER_HOME": str(home), "RESPONDER_INTAKE_PORT": str(port)}
        home.mkdir()
        proc = subprocess.Popen([str(BIN / "responder"), "up"], env=env, cwd=ROOT, stdout=open(home / "responder.log", "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.others.append(proc)
        self._wait_ready(proc, f"http://127.0.0.1:{port}", home / "responder.log")
        self.intakes.append(f"http://127.0.0.1:{port}")

    def post(self, body: dict) -> str:
        self.intakes.append(intake := self.intakes.pop(0))
        response = self.intake_http.post(f"{intake}/alerts", json=body,
                                         headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return response.json()["incidents_opened"][0]

    def first_task_starts(self, incident_ids: set[str], timeout: float = 180, interval: float = 0.1) -> dict[str, float]:
        """Wall-clock start (epoch seconds) of each incident's run's first task run.

        The figures are the server's own timestamps, so how often this asks does not change them;
        but each question costs the server CPU, so a burst is watched at a slower pace."""
        found: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(incident_ids) and time.monotonic() < deadline:
            try:
                runs = self.http.post(f"{self.api}/flow_runs/filter",
                                      json={"limit": 200, "sort": "EXPECTED_START_TIME_DESC"}).json()
            except httpx.HTTPError:  # a busy server: the figure comes from server timestamps, so just ask again
                time.sleep(0.5)
                continue
            if not isinstance(runs, list):
                time.sleep(0.2)
                continue
            run_by_incident = {r["parameters"]["incident"]["id"]: r["id"] for r in runs
                               if (r.get("parameters") or {}).get("incident") and r["parameters"]["incident"]["id"] in incident_ids}
            if run_by_incident:
                try:
                    tasks = self.http.post(f"{self.api}/task_runs/filter", json={
                        "flow_runs": {"id": {"any_": list(run_by_incident.values())}}, "limit": 200}).json()
                except httpx.HTTPError:
                    continue
                if not isinstance(tasks, list):
                    continue
                for incident, run_id in run_by_incident.items():
                    starts = [datetime.fromisoformat(t["start_time"]).timestamp()
                              for t in tasks if t["flow_run_id"] == run_id and t.get("start_time")]
                    if starts:
                        found[incident] = min(starts)
            time.sleep(interval)
        return found

    def stages(self, incident_ids: set[str]) -> dict[str, list[float]]:
        """Server-side timestamps (epoch s) of each step between the POST and the first task:
        run created by the automation → Pending (claimed by the responder) → Running."""
        out: dict[str, list[float]] = {"run created": [], "run claimed (Pending)": [], "run Running": []}
        ts = lambda value: datetime.fromisoformat(value).timestamp()  # noqa: E731
        runs = self.http.post(f"{self.api}/flow_runs/filter", json={"limit": 200}).json()
        for run in runs:
            if ((run.get("parameters") or {}).get("incident") or {}).get("id") not in incident_ids:
                continue
            out["run created"].append(ts(run["created"]))
            states = self.http.get(f"{self.api}/flow_run_states/", params={"flow_run_id": run["id"]}).json()
            for kind, key in (("PENDING", "run claimed (Pending)"), ("RUNNING", "run Running")):
                times = [ts(state["timestamp"]) for state in states if state["type"] == kind]
                if times:
                    out[key].append(min(times))
        return out

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the responder processes and by the Prefect server the first one started."""
        import psutil

        out = {"responder": 0.0, "prefect server": 0.0}
        procs = []
        for pid in [self.proc.pid, *(p.pid for p in self.others)]:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        for proc in procs:
            try:
                times = proc.cpu_times()
                key = "prefect server" if "server" in " ".join(proc.cmdline()) else "responder"
                out[key] += times.user + times.system
            except psutil.Error:
                pass
        return out

    def close(self, keep: bool = False) -> None:
        for proc in [*self.others, self.proc]:  # the first one last: it runs the Prefect server
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if keep:
            print(f"kept: {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        say_machine_speed("after the bench")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=20)
    parser.add_argument("--burst", type=int, default=30)
    parser.add_argument("--runbook-config", type=Path)
    parser.add_argument("--prefect-database-url", help="postgresql+asyncpg://… for the embedded server (default SQLite)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for `responder up` and its server (repeatable), e.g. RESPONDER_MAX_CONCURRENT_RUNS=8")
    parser.add_argument("--keep", action="store_true", help="keep the temporary PREFECT_HOME and logs; print where")
    parser.add_argument("--responders", type=int, default=1,
                        help="responders on the one Prefect server, alerts posted to each in turn (2+: store on PostgreSQL)")
    parser.add_argument("--store-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="with --responders 2+, the PostgreSQL server for their shared store (a fresh database)")
    args = parser.parse_args()

    store = Database(args.store_url, "bench_first_task") if args.responders > 1 else None
    bench = None
    try:
        bench = Bench(args.runbook_config, args.prefect_database_url, dict(kv.split("=", 1) for kv in args.env),
                      store_url=store.url if store else None)
        for _ in range(args.responders - 1):
            bench.add_responder()
    except BaseException:
        if bench:
            bench.close()
        if store:
            store.drop()
        raise
    try:
        backend = "PostgreSQL" if args.prefect_database_url else "SQLite"
        print(f"responder up → /healthz 200: {bench.startup:.1f} s (embedded Prefect server on {backend})"
              + (f"; {args.responders} responders, store on PostgreSQL" if store else ""))
        bench.first_task_starts(set(), timeout=0)
        latencies: list[float] = []
        for i in range(args.single):
            tag = f"s{i}{uuid.uuid4().hex[:6]}"
            t0 = time.time()
            incident = bench.post(alert_body(tag))
            start = bench.first_task_starts({incident})[incident]
            latencies.append(start - t0)
        if latencies:
            print(f"single alerts (n={len(latencies)}): p50 {statistics.median(latencies):.2f} s, "
                  f"p95 {pct(latencies, 0.95):.2f} s, max {max(latencies):.2f} s")

        bodies = [alert_body(f"b{i}{uuid.uuid4().hex[:6]}") for i in range(args.burst)]
        incidents: list[str] = []
        lock = threading.Lock()

        def send(body: dict) -> None:
            incident = bench.post(body)
            with lock:
                incidents.append(incident)

        cpu0 = bench.cpu_seconds()
        t0 = time.time()
        threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        posted = time.time() - t0
        starts = bench.first_task_starts(set(incidents), interval=2.0)
        cpu1 = bench.cpu_seconds()
        print("CPU used from the first POST until all first tasks were seen: "
              + ", ".join(f"{k} {cpu1[k] - cpu0[k]:.1f} s" for k in cpu0) + f" (wall {time.time() - t0:.1f} s)")
        if len(starts) < len(incidents):
            print(f"burst: only {len(starts)} of {len(incidents)} runs started within the timeout")
        relative = sorted(s - t0 for s in starts.values())
        print(f"burst of {args.burst} (all posted within {posted:.2f} s): p50 {statistics.median(relative):.2f} s, "
              f"last {relative[-1]:.2f} s")
        for stage, times in bench.stages(set(incidents)).items():  # where the time went
            if times:
                rel = sorted(t - t0 for t in times)
                print(f"  {stage:<22} n={len(rel):<3} p50 {statistics.median(rel):6.2f} s  last {rel[-1]:6.2f} s")
        print(f"  {'first task running':<22} n={len(relative):<3} p50 {statistics.median(relative):6.2f} s  last {relative[-1]:6.2f} s")
        print(json.dumps({"single_p50": statistics.median(latencies) if latencies else None,
                          "single_p95": pct(latencies, 0.95) if latencies else None,
                          "burst_p50": statistics.median(relative), "burst_last": relative[-1]}))
    finally:
        bench.close(keep=args.keep)
        if store:
            store.drop()


if __name__ == "__main__":
    main()
