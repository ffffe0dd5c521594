"""Benchmark: the intake's throughput and latency, and the event delivery behind it.

Starts `responder up` as `make run` does (embedded Prefect server on SQLite, temporary homes, free
ports), then posts over 16 client connections on the same machine (`--client`: see `load`):

1. single-alert bodies, in the mix Alertmanager really sends: mostly re-sends of alerts already
   stored (each group is re-sent every `group_interval`), some resolved, some unrouted, a few new
   firing ones that start a response (`ResponderDrill`, which touches nothing);
2. 50-alert group bodies of the same mix.

For each it prints alerts/s, posts/s, the p50/p99/max latency of a post and the CPU that the clients,
the responder and its Prefect server used while posting, then how long the
event delivery to the Prefect server took to drain the outbox (events/s). With `--postgres URL`
the store is PostgreSQL (`RESPONDER_DATABASE_URL`) instead of the SQLite default.

Prints the figures; asserts nothing. Run: `make bench` or `.venv/bin/python bench/intake.py`.
Options: --posts N (single-alert posts, default 3000), --groups N (50-alert posts, default 300),
--clients N (default 16), --client asyncio|httpx, --firing SHARE (default 0.03), --all-new-unrouted (every
alert new and routed by no runbook, as the issue that set the goals measured), --postgres URL, --env KEY=VALUE (repeatable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alert_to_first_task import Bench, pct  # noqa: E402  (the same way of starting `responder up`)

STARTS = datetime(2026, 12, 6, 8, 0, tzinfo=timezone.utc)


def alert(name: str, fingerprint: str, status: str = "firing") -> dict:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": "warning", "instance": "127.0.0.1:9100", "fp": fingerprint},
        "annotations": {"summary": f"bench {name}"},
        "startsAt": (STARTS + timedelta(seconds=int(fingerprint[:6], 16) % 3600)).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else STARTS.isoformat(),
        "generatorURL": "",
        "fingerprint": fingerprint,
    }


def body(alerts: list[dict], group: str) -> dict:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"version": "4", "groupKey": f'{{}}:{{bench="{group}"}}', "truncatedAlerts": 0, "status": status,
            "receiver": "responder", "groupLabels": {"bench": group}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager.example:9093", "alerts": alerts}


class Mix:
    """70 % re-sends of stored alerts, 12 % resolved, 15 % new unrouted, 3 % new firing (a drill), by default;
    ``firing``: the share of new firing ones (each starts a response), taken from the unrouted ones."""

    def __init__(self, known: list[str], firing: float = 0.03, all_new_unrouted: bool = False) -> None:
        self.known = known
        self.new_unrouted_below = 1.0 - firing
        self.all_new_unrouted = all_new_unrouted
        self.rng = random.Random(7)
        self.lock = threading.Lock()

    def one(self) -> dict:
        if self.all_new_unrouted:  # the issue's own measure: distinct alerts no runbook routes
            return alert("BenchUnrouted", uuid.uuid4().hex)
        with self.lock:
            roll = self.rng.random()
            fingerprint = self.rng.choice(self.known)
        if roll < 0.70:
            return alert("BenchUnrouted", fingerprint)
        if roll < 0.82:
            return alert("BenchUnrouted", fingerprint, status="resolved")
        if roll < self.new_unrouted_below:
            return alert("BenchUnrouted", uuid.uuid4().hex)
        return alert("ResponderDrill", uuid.uuid4().hex)


def load(bench: Bench, bodies: list[dict], clients: int, kind: str = "asyncio") -> tuple[float, list[float], int]:
    """Post every body from `clients` connections; returns (elapsed s, latencies s, non-2xx count).

    ``asyncio``: one event loop keeping `clients` HTTP/1.1 connections open, each posting its next body
    as soon as the last is answered, as Alertmanager's Go client would (about 0.1 ms of this process's
    CPU per post). ``httpx``: `clients` threads, each with an httpx client (about 0.7 ms per post, which
    the intake then lacks on 2 cores); the client earlier figures were measured with."""
    if kind == "httpx":
        return _load_httpx(bench, bodies, clients)
    encoded = [json.dumps(body).encode() for body in bodies]
    return asyncio.run(_load_asyncio(bench, encoded, clients))


async def _load_asyncio(bench: Bench, bodies: list[bytes], clients: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    failures = [0]
    queue = list(reversed(bodies))
    host, port = bench.intake.removeprefix("http://").split(":")
    head = (f"POST /alerts HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {bench.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: ").encode()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while queue:
                body = queue.pop()
                started = time.perf_counter()
                writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
                status_line = await reader.readline()
                if not status_line:  # the intake closed the connection: count it, and post on a new one
                    failures[0] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                status = int(status_line.split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not 200 <= status < 300:
                    failures[0] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(clients)))
    return time.perf_counter() - started, latencies, failures[0]


def _load_httpx(bench: Bench, bodies: list[dict], clients: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    failures = [0]
    queue = list(reversed(bodies))
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {bench.token}"}) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    item = queue.pop()
                started = time.perf_counter()
                response = http.post(f"{bench.intake}/alerts", json=item)
                took = time.perf_counter() - started
                with lock:
                    latencies.append(took)
                    if not response.is_success:
                        failures[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures[0]


def backlog(bench: Bench) -> int:
    text = httpx.get(f"{bench.intake}/metrics", timeout=10).text
    match = re.search(r"^responder_outbox_backlog (\S+)$", text, re.M)
    return int(float(match.group(1))) if match else -1


def drain(bench: Bench, timeout: float = 600) -> tuple[int, float]:
    """Wait until the outbox is empty; returns (events waiting at the start, seconds to drain)."""
    first = backlog(bench)
    started = time.monotonic()
    while backlog(bench) > 0 and time.monotonic() - started < timeout:
        time.sleep(0.2)
    return first, time.monotonic() - started


def cpu(bench: Bench) -> dict[str, float]:
    """CPU seconds used so far by this process (the clients), the responder and its Prefect server."""
    used = os.times()
    return {"clients": used.user + used.system, **bench.cpu_seconds()}


def report(label: str, alerts: int, posts: int, elapsed: float, latencies: list[float], failures: int,
           before: dict[str, float], after: dict[str, float]) -> None:
    print(f"{label}: {alerts / elapsed:,.0f} alerts/s, {posts / elapsed:,.0f} posts/s over {elapsed:.1f} s; "
          f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {pct(latencies, 0.99) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms; non-2xx {failures}")
    print("  CPU while posting: " + ", ".join(
        f"{name} {after[name] - before[name]:.1f} s ({(after[name] - before[name]) / posts * 1000:.2f} ms per post)"
        for name in after))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--client", choices=("asyncio", "httpx"), default="asyncio",
                        help="asyncio: kept connections on one event loop (default); httpx: a thread and an httpx "
                             "client per connection, as figures before 2026-12-07 were measured")
    parser.add_argument("--firing", type=float, default=0.03,
                        help="share of new firing alerts, each starting a response (default 0.03; 0: the intake alone)")
    parser.add_argument("--all-new-unrouted", action="store_true",
                        help="every alert new and routed by no runbook (stored, answered, an unrouted event each) "
                             "instead of the mix")
    parser.add_argument("--postgres", help="postgresql://… for the responder's store")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for `responder up`")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    if args.postgres:
        env["RESPONDER_DATABASE_URL"] = args.postgres
    bench = Bench(None, extra_env=env)
    try:
        print(f"responder ready in {bench.startup:.1f} s; store: {'PostgreSQL' if args.postgres else 'SQLite'}; "
              f"{args.clients} {args.client} clients; "
              + ("every alert new and unrouted" if args.all_new_unrouted else f"{args.firing:.0%} of alerts new and firing"))
        known = [uuid.uuid4().hex for _ in range(200)]
        warm = [body([alert("BenchUnrouted", fp)], f"known-{fp}") for fp in known]
        load(bench, warm, args.clients, args.client)  # the alerts the mix re-sends are stored before the clock starts
        drain(bench)
        mix = Mix(known, args.firing, args.all_new_unrouted)
        singles = [body([mix.one()], f"single-{i % 400}") for i in range(args.posts)]
        before = cpu(bench)
        elapsed, latencies, failures = load(bench, singles, args.clients, args.client)
        report("single-alert posts", args.posts, args.posts, elapsed, latencies, failures, before, cpu(bench))
        events, took = drain(bench)
        print(f"  delivery: {events} events waiting when the posts ended, drained in {took:.1f} s")
        groups = [body([mix.one() for _ in range(50)], f"group-{i % 100}") for i in range(args.groups)]
        before = cpu(bench)
        elapsed, latencies, failures = load(bench, groups, args.clients, args.client)
        report("50-alert group posts", args.groups * 50, args.groups, elapsed, latencies, failures, before, cpu(bench))
        events, took = drain(bench)
        print(f"  delivery: {events} events waiting when the posts ended, drained in {took:.1f} s"
              + (f" ({events / took:,.0f} events/s)" if took > 0.5 else ""))
    finally:
        bench.close()


if __name__ == "__main__":
    main()
