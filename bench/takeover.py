"""Benchmark: two responders on one Prefect server, one of them dies, the other takes its work over.

Starts a Prefect server of its own (the one `make run` embeds, on SQLite; with --prefect-database-url
a plain `prefect server start` on a fresh PostgreSQL database) and two `responder up` processes, A
and B, pointed at it (PREFECT_API_URL) and sharing one store on PostgreSQL (RESPONDER_DATABASE_URL, a
fresh database created here and dropped at the end), as README "Scaling out" describes. Notify
webhooks go to a capture server inside this process (no pager is reachable from here).

Then, at RESPONDER_TIME_SCALE --time-scale (0.1: level-1 pages 30 s after an incident opens):

1. --runs (10) HIGH_CPU_USAGE alerts, posted to A and B in turn, with the runbook's threshold at 0 %
   so verification never succeeds and every run keeps measuring (verify budget 1200 s × scale);
   --drills (5) ResponderDrill alerts posted to B, each waiting for approval (suspended, held by
   nobody). The bench waits until every HIGH_CPU run is Running with its lease taken.
2. B is stopped: `--how kill` (default) sends SIGKILL, a crash: on the same machine its dead process
   is noticed at once; `--how freeze` sends SIGSTOP, a responder that hangs or a machine cut off:
   its leases must expire (RESPONDER_LEASE_SECONDS, 30 s by default) before anyone takes its runs.
   Right after, every drill is approved through the API (what the UI's Resume button does).
3. It watches until every run B held shows a "Taken over from" state on the server and every drill
   has finished (or --observe seconds), then prints:
   * takeover: for the runs B held, the server's timestamp of their "Taken over from" state minus
     the moment B was stopped: p50 / max, and how many of them were taken over;
   * duplicates: responses acknowledged twice (the store's timeline), drills whose approved action
     ran more than once (timeline and the store's action claims), pages sent twice for the same
     incident and level (the capture server);
   * the drills' final states.
   It also waits for the open HIGH_CPU incidents' level-1 pages, which fall due after B stopped.

Prints figures; asserts nothing. Run: `.venv/bin/python bench/takeover.py [--runs N] [--drills N]
[--how kill|freeze] [--time-scale F] [--observe S] [--store-url postgresql://postgres@127.0.0.1:5432/postgres]
[--prefect-database-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres] [--keep]`.
Both responders run on this one machine (a stand-in for two machines).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alert_to_first_task import (BIN, PREFECT_AUTH, PREFECT_LOGIN, ROOT, Database, alert_body, free_port,  # noqa: E402
                                 say_machine_speed)
from storm import CaptureServer, ExternalServer, keep_or_remove, stop_group  # noqa: E402

from responder.embedded import server_command  # noqa: E402  (the server `make run` embeds)

HIGH_CPU = "high-cpu-usage"
DRILL = "responder-drill"


def wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = predicate()
            if found:
                return found
        except (httpx.HTTPError, psycopg.Error, KeyError, ValueError):
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def config_copy(dest: Path, webhook_url: str) -> Path:
    """config/ with HIGH_CPU_USAGE never verified (threshold 0 %), long verification and approval
    deadlines, no process it may stop, and the capture webhook."""
    shutil.copytree(ROOT / "config", dest)
    entries = [{"name": HIGH_CPU, "thresholds": {"cpu_percent": 0},
                "verify": {"budget_seconds": 1200, "interval_seconds": 20}},
               {"name": DRILL, "approval_timeout_seconds": 36000}]
    (dest / "runbooks" / "zz-bench-takeover.yaml").write_text(yaml.safe_dump({"runbooks": entries}))
    targets = yaml.safe_load((dest / "targets.yaml").read_text()) or {}
    targets["processes"] = {"killable_cmdline": ["bench-takeover-matches-nothing-"], "protected_names": ["systemd"]}
    (dest / "targets.yaml").write_text(yaml.safe_dump(targets))
    notify = yaml.safe_load((dest / "notify.yaml").read_text()) or {}
    notify["webhooks"] = [webhook_url]
    (dest / "notify.yaml").write_text(yaml.safe_dump(notify))
    return dest


def drill_body(tag: str) -> dict:
    labels = {"alertname": "ResponderDrill", "severity": "warning", "job": "takeover", "bench": tag}
    return {"version": "4", "groupKey": f'{{}}:{{alertname="ResponderDrill", bench="{tag}"}}', "truncatedAlerts": 0,
            "status": "firing", "receiver": "responder", "groupLabels": labels, "commonLabels": labels,
            "commonAnnotations": {}, "externalURL": "http://alertmanager.bench:9093",
            "alerts": [{"status": "firing", "labels": labels, "annotations": {"summary": "takeover bench drill"},
                        "startsAt": datetime.now(timezone.utc).isoformat(), "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "", "fingerprint": tag}]}


class Responder:
    def __init__(self, name: str, tmp: Path, env: dict[str, str]) -> None:
        self.name, self.port, self.token = name, free_port(), uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        home = tmp / f"responder-{name}"
        home.mkdir()
        self.log = home / "responder.log"
        self.proc = subprocess.Popen(
            [str(BIN / "responder"), "up"], cwd=ROOT, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**env, "RESPONDER_HOME": str(home), "RESPONDER_INTAKE_PORT": str(self.port),
                 "RESPONDER_INTAKE_TOKEN": self.token})

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"responder {self.name} exited; see {self.log}")
        return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200

    def post(self, body: dict) -> str:
        response = httpx.post(f"{self.url}/alerts", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return response.json()["incidents_opened"][0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10, help="HIGH_CPU_USAGE responses running when B stops")
    parser.add_argument("--drills", type=int, default=5, help="drills posted to B, waiting for approval when it stops")
    parser.add_argument("--how", choices=("kill", "freeze"), default="kill")
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--observe", type=float, default=180.0, help="seconds watched after B stops")
    parser.add_argument("--store-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server for the shared store (a fresh database is made on it)")
    parser.add_argument("--prefect-database-url", help="postgresql+asyncpg://… : `prefect server start` on PostgreSQL")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and logs; print where")
    args = parser.parse_args()

    say_machine_speed("before the bench")
    tmp = Path(tempfile.mkdtemp(prefix="responder-takeover-"))
    capture = CaptureServer()
    store = Database(args.store_url, "bench_takeover")
    server: ExternalServer | None = None
    server_proc: subprocess.Popen | None = None
    responders: list[Responder] = []
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RESPONDER_"))}
        if args.prefect_database_url:
            server = ExternalServer(args.prefect_database_url)
            server.start(tmp)
            api = server.api
        else:
            port = free_port()
            api = f"http://127.0.0.1:{port}/api"
            server_proc = subprocess.Popen(
                [*server_command("tuned"), "--host", "127.0.0.1", "--port", str(port)], cwd=tmp,
                env={**base, "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "PREFECT_SERVER_API_AUTH_STRING": PREFECT_LOGIN},
                stdout=open(tmp / "prefect-server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
            wait(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "the Prefect server")
        env = {**base, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": PREFECT_LOGIN,
               "RESPONDER_DATABASE_URL": store.url, "RESPONDER_TIME_SCALE": str(args.time_scale),
               "RESPONDER_CONFIG_DIR": str(config_copy(tmp / "config", capture.url))}
        responders = [Responder("A", tmp, env), Responder("B", tmp, env)]
        for responder in responders:
            wait(responder.ready, 120, f"responder {responder.name}")
        a, b = responders
        http = httpx.Client(timeout=30, auth=PREFECT_AUTH)

        def runs_of(incidents: set[str]) -> dict[str, dict]:
            runs = http.post(f"{api}/flow_runs/filter", json={"limit": 200, "sort": "EXPECTED_START_TIME_DESC"}).json()
            return {r["parameters"]["incident"]["id"]: r for r in runs
                    if ((r.get("parameters") or {}).get("incident") or {}).get("id") in incidents}

        high_cpu = {(a, b)[i % 2].post(alert_body(f"t{i}{uuid.uuid4().hex[:6]}")) for i in range(args.runs)}
        drills = {b.post(drill_body(f"d{i}{uuid.uuid4().hex[:6]}")) for i in range(args.drills)}
        running = wait(lambda: (found := runs_of(high_cpu)) and len(found) == len(high_cpu)
                       and all(r["state"]["type"] == "RUNNING" for r in found.values()) and found,
                       180, "every HIGH_CPU_USAGE run to be Running")
        wait(lambda: (found := runs_of(drills)) and len(found) == len(drills)
             and all(r["state"]["type"] == "PAUSED" for r in found.values()), 180, "every drill to wait for approval")
        with psycopg.connect(store.url) as conn:
            def holders() -> dict[str, str]:
                rows = conn.execute("SELECT name, holder FROM leases WHERE name LIKE 'run:%'").fetchall()
                return {name.removeprefix("run:"): holder for name, holder in rows}
            wait(lambda: all(r["id"] in holders() for r in running.values()), 60, "a lease on every running run")
            held = holders()
        b_pid = f"/{b.proc.pid}/"
        victims = {incident: run["id"] for incident, run in running.items() if b_pid in held.get(run["id"], "")}

        stopped = time.time()
        os.kill(b.proc.pid, signal.SIGKILL if args.how == "kill" else signal.SIGSTOP)
        for run in runs_of(drills).values():
            http.post(f"{api}/flow_runs/{run['id']}/resume",
                      json={"run_input": {"approve": True, "reason": "takeover bench", "approver": "bench"}})

        taken: dict[str, float] = {}
        finished: dict[str, str] = {}
        deadline = time.monotonic() + args.observe
        while time.monotonic() < deadline and (len(taken) < len(victims) or len(finished) < len(drills)):
            for incident, run_id in victims.items():
                if incident in taken:
                    continue
                states = http.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id}).json()
                marks = [datetime.fromisoformat(s["timestamp"]).timestamp() for s in states
                         if "Taken over from" in (s.get("message") or "")]
                if marks:
                    taken[incident] = min(marks) - stopped
            for incident, run in runs_of(drills).items():
                if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    finished[incident] = run["state"]["name"]
            time.sleep(1.0)
        # The HIGH_CPU incidents stay open (never verified): wait for their level-1 pages, which fall due
        # while A alone pages (30 s after each opened, at the default scale), then a little longer.
        def paged_level_1() -> bool:
            return {body["incident"]["id"] for _, body in capture.pages() if body["level"] == 1} >= high_cpu
        try:
            wait(paged_level_1, max(0.0, deadline - time.monotonic()), "the level-1 pages", interval=1.0)
        except SystemExit:
            print("not every level-1 page arrived within --observe")
        time.sleep(5.0)

        with psycopg.connect(store.url) as conn:
            def timeline(kind: str) -> Counter:
                rows = conn.execute("SELECT incident_id FROM timeline WHERE kind = %s", (kind,)).fetchall()
                return Counter(incident for (incident,) in rows)
            acknowledged, acted = timeline("response"), timeline("action")
            claims = Counter(key.split(":", 1)[0] for (key,) in conn.execute("SELECT key FROM action_claims").fetchall())
        pages = Counter((body["incident"]["id"], body["level"]) for _, body in capture.pages())

        how = "SIGKILL" if args.how == "kill" else "SIGSTOP (its leases must expire)"
        print(f"two responders, one Prefect server ({'PostgreSQL' if server else 'SQLite'}), store on PostgreSQL; "
              f"B stopped with {how}")
        print(f"runs B held when it stopped: {len(victims)} of {len(running)} running; drills on B waiting: {len(drills)}")
        if taken:
            print(f"taken over by A: {len(taken)} of {len(victims)}; stop → 'Taken over' state: "
                  f"p50 {statistics.median(taken.values()):.1f} s, max {max(taken.values()):.1f} s")
        else:
            print(f"taken over by A: 0 of {len(victims)} within {args.observe:.0f} s")
        print(f"drills finished: {len(finished)} of {len(drills)} ({dict(Counter(finished.values()))})")
        print("duplicates: "
              f"acknowledged twice {sum(1 for i in high_cpu | drills if acknowledged[i] > 1)}, "
              f"action run twice {sum(1 for i in drills if acted[i] > 1)} (claims twice {sum(1 for i in drills if claims[i] > 1)}), "
              f"page twice {sum(1 for n in pages.values() if n > 1)} (of {len(pages)} pages sent)")
        print(f"drills whose approved action ran: {sum(1 for i in drills if acted[i] == 1)} of {len(drills)}")
    finally:
        for responder in responders:
            if responder.proc.poll() is None:
                stop_group(responder.proc.pid, signal.SIGCONT)
                stop_group(responder.proc.pid, signal.SIGINT)
                try:
                    responder.proc.wait(30)
                except subprocess.TimeoutExpired:
                    stop_group(responder.proc.pid, signal.SIGKILL)
        if server_proc is not None:
            stop_group(server_proc.pid)
            server_proc.wait(30)
        if server is not None:
            server.stop()
            server.drop()
        store.drop()
        capture.close()
        keep_or_remove(tmp, args.keep)
        say_machine_speed("after the bench")


if __name__ == "__main__":
    main()
