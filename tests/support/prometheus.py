"""Real Prometheus and Alertmanager servers for tests, and the HTTP targets they scrape.

* :class:`AppTarget`: an application's ``/metrics`` with counters growing at rates a test sets
  (also a stand-in for another machine's node_exporter, see ``tests/test_hosts.py``);
* :class:`PrometheusServer`, :class:`AlertmanagerServer`: the Debian binaries, 1 s intervals;
* :class:`GrafanaStub`: no Grafana can run here, so the one stand-in, with Grafana 10's shapes;
* :func:`seed_rules`: the shipped alert rules by name, ``for: 1s``;
* :func:`watch_rules`: the shipped rules about the responder itself, every ``for:`` divided;
* :meth:`AlertmanagerServer.with_config`: a real Alertmanager with a whole configuration (the
  shipped one, adjusted by the test).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from .common import HTTP, ROOT, free_port, wait_for

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, math.inf)
Labels = tuple[tuple[str, str], ...]


def _key(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


class AppTarget:
    """An application exposing /metrics with counters that grow at rates the test sets.

    * ``rate(name, labels, per_second)``: a counter growing by that much per second;
    * ``requests(path, per_second, error_share, latency_s)``: ``http_requests_total`` and the
      duration histogram for one endpoint;
    * ``gauge(name, labels, value)``; ``inc(name, labels, by)``;
    * POST ``/api/orchestrator/<job>`` is recorded in ``posts`` and calls ``on_post[job]``;
    * GET ``/status/<name>`` answers ``status_pages[name]`` (a Statuspage body), ``/health`` 200;
    * ``hooks`` run on every tick (0.1 s) with the elapsed seconds.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, Labels], float] = {}
        self.gauges: dict[tuple[str, Labels], float] = {}
        self.rates: dict[tuple[str, Labels], float] = {}
        self.endpoints: dict[str, dict[str, float]] = {}
        self.posts: list[dict[str, Any]] = []
        self.on_post: dict[str, Callable[[], None]] = {}
        self.status_pages: dict[str, tuple[int, Any]] = {}
        self.hooks: list[Callable[[float], None]] = []
        self._stop = threading.Event()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
                raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):  # noqa: N802
                if self.path == "/metrics":
                    self._send(200, target.render(), "text/plain; version=0.0.4")
                elif self.path == "/health":
                    self._send(200, {"status": "ok"})
                elif self.path.startswith("/status/"):
                    status, body = target.status_pages.get(self.path.split("/", 2)[2], (404, {"error": "unknown"}))
                    self._send(status, body)
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                job = self.path.rsplit("/", 1)[-1]
                target.posts.append({"path": self.path, "headers": dict(self.headers)})
                if job in target.on_post:
                    target.on_post[job]()
                    self._send(202, {"started": job})
                else:
                    self._send(404, {"error": "no such job"})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._tick, daemon=True).start()

    def rate(self, name: str, labels: dict[str, str] | None, per_second: float) -> None:
        with self.lock:
            self.rates[(name, _key(labels))] = per_second
            self.counters.setdefault((name, _key(labels)), 0.0)

    def gauge(self, name: str, labels: dict[str, str] | None, value: float) -> None:
        with self.lock:
            self.gauges[(name, _key(labels))] = value

    def inc(self, name: str, labels: dict[str, str] | None, by: float = 1.0) -> None:
        with self.lock:
            self.counters[(name, _key(labels))] = self.counters.get((name, _key(labels)), 0.0) + by

    def requests(self, path: str, per_second: float, error_share: float = 0.0, latency_s: float = 0.05) -> None:
        with self.lock:
            self.endpoints[path] = {"rate": per_second, "errors": error_share, "latency": latency_s}

    def _tick(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.1):
            now = time.monotonic()
            dt, last = now - last, now
            with self.lock:
                for key, per_second in self.rates.items():
                    self.counters[key] = self.counters.get(key, 0.0) + per_second * dt
                for path, spec in self.endpoints.items():
                    n = spec["rate"] * dt
                    for status, share in (("500", spec["errors"]), ("200", 1 - spec["errors"])):
                        key = ("http_requests_total", _key({"path": path, "status": status}))
                        self.counters[key] = self.counters.get(key, 0.0) + n * share
                    for le in BUCKETS:
                        if spec["latency"] <= le:
                            key = ("http_request_duration_seconds_bucket", _key({"path": path, "le": _le(le)}))
                            self.counters[key] = self.counters.get(key, 0.0) + n
                        else:
                            self.counters.setdefault(("http_request_duration_seconds_bucket", _key({"path": path, "le": _le(le)})), 0.0)
            for hook in list(self.hooks):
                hook(dt)

    def render(self) -> str:
        with self.lock:
            items = [(k, v, "counter") for k, v in self.counters.items()] + [(k, v, "gauge") for k, v in self.gauges.items()]
        lines, typed = [], set()
        for (name, labels), value, kind in sorted(items, key=lambda i: i[0]):
            family = name.removesuffix("_bucket") if name.endswith("_bucket") else name
            if family not in typed:
                lines.append(f"# TYPE {family} {'histogram' if name.endswith('_bucket') else kind}")
                typed.add(family)
            rendered = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{rendered}}} {value}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()


def _le(value: float) -> str:
    return "+Inf" if value == math.inf else f"{value:g}"


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{names[0]} is not installed (apt-get install {names[0]}; `make test` does it)")


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class PrometheusServer:
    """A real Prometheus: 1 s scrape and evaluation, rules and Alertmanager optional."""

    def __init__(self, tmp: Path, jobs: dict[str, list[str]], rules: list[dict[str, Any]] | None = None,
                 alertmanager: str | None = None, retention: str = "15d",
                 labels: dict[str, dict[str, str]] | None = None) -> None:
        """``labels``: target labels per job, e.g. ``{"web-3": {"instance": "web-3:9100"}}`` to give a
        stand-in target another machine's instance name."""
        self.tmp, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets, "labels": (labels or {}).get(job, {})}]}
                               for job, targets in jobs.items()],
        }
        if rules:
            (tmp / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "test", "rules": rules}]}))
            config["rule_files"] = [str(tmp / "rules.yml")]
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager.split("//", 1)[1]]}]}]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.retention.time={retention}",
             "--rules.alert.resend-delay=2s"],
            stdout=open(tmp / "prometheus.log", "wb"), stderr=subprocess.STDOUT,
        )
        wait_for(lambda: HTTP.get(f"{self.url}/-/ready", timeout=1).status_code == 200, 30, what="Prometheus ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        return HTTP.get(f"{self.url}/api/v1/query", params={"query": promql}).json()["data"]["result"]

    def wait_scraped(self, job: str, scrapes: int = 3) -> None:
        """Until the job's targets have been scraped ``scrapes`` times (rates need two samples)."""
        wait_for(lambda: self.query(f'count_over_time(up{{job="{job}"}}[1m])') and
                 float(self.query(f'min(count_over_time(up{{job="{job}"}}[1m]))')[0]["value"][1]) >= scrapes,
                 30, what=f"{scrapes} scrapes of {job}")

    def stop(self) -> None:
        stop_process(self.process)


class AlertmanagerServer:
    """A real Alertmanager with one webhook receiver (group_wait 1 s), or, through
    :meth:`with_config`, with any configuration."""

    def __init__(self, tmp: Path, webhook_url: str, token: str | None = None,
                 group_by: list[str] | None = None) -> None:
        webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True}
        if token:
            webhook["http_config"] = {"authorization": {"credentials": token}}
        config = {
            "route": {"receiver": "responder", "group_by": group_by or ["alertname", "test_id"], "group_wait": "1s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "responder", "webhook_configs": [webhook]}],
        }
        self._start(tmp, config)

    @classmethod
    def with_config(cls, tmp: Path, config: dict[str, Any]) -> "AlertmanagerServer":
        """A real Alertmanager started with ``config`` as it is (routes, receivers, timings)."""
        server = cls.__new__(cls)
        server._start(tmp, config)
        return server

    def _start(self, tmp: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            [binary("prometheus-alertmanager", "alertmanager"), f"--config.file={tmp / 'alertmanager.yml'}",
             f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=open(tmp / "alertmanager.log", "wb"), stderr=subprocess.STDOUT,
        )
        wait_for(lambda: HTTP.get(f"{self.url}/-/ready", timeout=1).status_code == 200, 30, what="Alertmanager ready")

    def post_alert(self, labels: dict[str, str], minutes: float | None = None, summary: str = "test alert") -> None:
        alert: dict[str, Any] = {"labels": labels, "annotations": {"summary": summary},
                                 "startsAt": datetime.now(timezone.utc).isoformat()}
        if minutes is not None:
            alert["endsAt"] = (datetime.now(timezone.utc) + timedelta(minutes=minutes)).isoformat()
        HTTP.post(f"{self.url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()

    def stop(self) -> None:
        stop_process(self.process)


class GrafanaStub:
    """Stands in for Grafana (not installable here): /api/health, /api/datasources, data-source health.

    Answers with Grafana 10's shapes; basic auth ``admin:secret`` is required on the API, as
    Grafana requires a login there. ``datasources`` maps uid -> (name, type, health status, message).
    """

    def __init__(self) -> None:
        self.healthy = True
        self.datasources: dict[str, tuple[str, str, str, str]] = {
            "prom": ("Prometheus", "prometheus", "OK", "Successfully queried the Prometheus API."),
            "loki": ("Loki", "loki", "OK", "Data source successfully connected."),
        }
        self.seen_auth: list[str | None] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):  # noqa: N802
                if self.path == "/api/health":
                    if stub.healthy:
                        return self._send(200, {"commit": "abc", "database": "ok", "version": "10.4.2"})
                    return self._send(503, {"commit": "abc", "database": "failing", "version": "10.4.2"})
                stub.seen_auth.append(self.headers.get("authorization"))
                if self.headers.get("authorization") != "Basic YWRtaW46c2VjcmV0":  # admin:secret
                    return self._send(401, {"message": "Unauthorized"})
                if self.path == "/api/datasources":
                    return self._send(200, [{"id": i, "uid": uid, "name": n, "type": t, "url": "http://x", "isDefault": i == 0}
                                            for i, (uid, (n, t, _, _)) in enumerate(stub.datasources.items())])
                if self.path.startswith("/api/datasources/uid/") and self.path.endswith("/health"):
                    uid = self.path.split("/")[4]
                    _, _, status, message = stub.datasources[uid]
                    return self._send(200 if status == "OK" else 400, {"status": status, "message": message})
                self._send(404, {"message": "Not found"})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://admin:secret@127.0.0.1:{self.server.server_address[1]}"
        self.public = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def seed_rules(*names: str, **labels: str) -> list[dict[str, Any]]:
    """Rules of deploy/prometheus/alert-rules.yml by name, with ``for: 1s`` and extra labels."""
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alert-rules.yml").read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    chosen = []
    for name in names:
        rule = dict(rules[name])
        rule["for"] = "1s"
        rule["labels"] = {**rule.get("labels", {}), **labels}
        chosen.append(rule)
    return chosen


def watch_rules(divide_for_by: float) -> list[dict[str, Any]]:
    """All rules of deploy/prometheus/responder-rules.yml, expressions, labels and annotations as
    shipped, every ``for:`` divided by ``divide_for_by`` (1m / 30 = 2s): a test waits seconds,
    and the rules keep the proportions between them."""
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "responder-rules.yml").read_text())["groups"]
    chosen = []
    for rule in (dict(r) for g in groups for r in g["rules"]):
        if "for" in rule:
            rule["for"] = divide_duration(rule["for"], divide_for_by)
        chosen.append(rule)
    return chosen


def divide_duration(duration: str, by: float) -> str:
    """A Prometheus/Alertmanager duration of one unit (``30s``, ``1m``, ``1h``) divided, in ms:
    ``divide_duration("1m", 30) == "2000ms"``; ``0s`` stays 0."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    number = duration.rstrip("smhd")
    seconds = float(number) * units[duration[len(number):]] / by
    return f"{round(seconds * 1000)}ms"
