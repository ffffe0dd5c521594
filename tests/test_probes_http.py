"""HTTP probes against a real threaded HTTP server started in the test on a free local port.

The server answers from a script of statuses the test sets (``[500, 500, 200]`` means the
first two requests fail), counts the requests it receives, serves a JSON health document and
a deliberately slow endpoint. Stopping it leaves the port closed, which is the ServiceDown
case. Nothing is mocked.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tasks.base import ErrorCode, ResponderError
from tasks.probes import http


@dataclass
class Script:
    statuses: list[int] = field(default_factory=lambda: [200])  # last one repeats
    health: dict[str, Any] = field(default_factory=dict)
    slow_ms: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)

    def next_status(self) -> int:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        script: Script = self.server.script  # type: ignore[attr-defined]
        script.requests.append((self.path, self.headers.get("Authorization")))
        if self.path == "/health/detailed":
            self._send(script.next_status(), json.dumps(script.health).encode(), "application/json")
        elif self.path == "/slow":
            time.sleep(script.slow_ms / 1000)
            self._send(200, b"done", "text/plain")
        elif self.path == "/text":
            self._send(200, b"all good", "text/plain")
        else:
            self._send(script.next_status(), b"{}", "application/json")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass  # keep pytest output clean


@dataclass
class Server:
    host: str
    port: int
    script: Script
    stop: Any

    def url(self, path: str = "/health") -> str:
        return f"http://{self.host}:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.script = Script()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)
            stopped = True

    yield Server("127.0.0.1", httpd.server_address[1], httpd.script, stop)  # type: ignore[attr-defined]
    stop()


def test_health_check_healthy_on_first_try(server):
    result = http.health_check(server.url(), delay_s=0.05)
    assert result.ok is True and result.value == 0 and result.threshold == 3
    assert len(result.evidence["attempts"]) == 1 and result.evidence["attempts"][0]["status"] == 200
    assert len(server.script.requests) == 1


def test_health_check_two_failures_then_success_is_ok(server):
    server.script.statuses = [500, 503, 200]
    result = http.health_check(server.url(), attempts=3, delay_s=0.05)
    assert result.ok is True
    assert [a["status"] for a in result.evidence["attempts"]] == [500, 503, 200]
    assert result.value == 2
    assert len(server.script.requests) == 3


def test_health_check_three_consecutive_failures_is_not_ok(server):
    server.script.statuses = [500]
    started = time.monotonic()
    result = http.health_check(server.url(), attempts=3, delay_s=0.1)
    assert time.monotonic() - started >= 0.2  # it waited between the tries
    assert result.ok is False and result.value == 3
    assert [a["status"] for a in result.evidence["attempts"]] == [500, 500, 500]
    assert len(server.script.requests) == 3
    assert "HTTP 500 after 3 tries" in result.summary


def test_health_check_stopped_server_fails_every_try(server):
    server.stop()
    result = http.health_check(server.url(), attempts=3, delay_s=0.01, timeout_s=1)
    assert result.ok is False
    assert all(a["error"].startswith("ConnectError") for a in result.evidence["attempts"])
    assert len(result.evidence["attempts"]) == 3


def test_health_check_sends_the_bearer_token_but_never_reports_it(server):
    result = http.health_check(server.url(), bearer_token=SecretStr("tok-123-secret"))
    assert server.script.requests[0][1] == "Bearer tok-123-secret"
    assert "tok-123-secret" not in result.model_dump_json()


def test_health_check_strips_credentials_from_the_reported_url(server):
    result = http.health_check(f"http://user:pw-secret@127.0.0.1:{server.port}/health")
    assert result.ok is True
    assert "pw-secret" not in result.model_dump_json()
    assert result.evidence["url"] == server.url()


def test_health_detailed_names_failing_components(server):
    server.script.health = {
        "status": "degraded",
        "checks": {"mongodb": {"status": "down", "error": "timeout"}, "redis": "ok", "disk": {"healthy": True}},
        "services": [{"name": "s3", "status": "fail"}, {"name": "mux", "status": "up"}],
    }
    server.script.statuses = [503]
    result = http.health_detailed(server.url("/health/detailed"))
    assert result.ok is False
    assert result.evidence["failing"] == ["checks.mongodb", "services.s3"]
    assert result.evidence["overall_status"] == "degraded" and result.evidence["status_code"] == 503
    assert result.evidence["body"]["checks"]["mongodb"]["error"] == "timeout"
    assert result.value == 2


def test_health_detailed_all_healthy(server):
    server.script.health = {"status": "healthy", "checks": {"mongodb": {"status": "connected"}, "redis": "up"}}
    result = http.health_detailed(server.url("/health/detailed"))
    assert result.ok is True and result.evidence["failing"] == [] and result.value == 0


def test_health_detailed_non_json_body_judged_by_status(server):
    result = http.health_detailed(server.url("/text"))
    assert result.ok is True and result.evidence["body_text"] == "all good"


def test_health_detailed_raises_when_unreachable(server):
    server.stop()
    with pytest.raises(httpx.ConnectError):
        http.health_detailed(server.url("/health/detailed"), timeout_s=1)


def test_response_time_against_a_slow_endpoint(server):
    server.script.slow_ms = 300
    slow = http.response_time(server.url("/slow"), threshold_ms=100, samples=3)
    assert slow.ok is False and slow.value >= 300 and slow.threshold == 100
    assert len(slow.evidence["samples"]) == 3 and all(s["status"] == 200 for s in slow.evidence["samples"])

    fast = http.response_time(server.url("/slow"), samples=1)
    assert fast.ok is True and fast.threshold == 2000 and fast.value >= 300


def test_response_time_counts_a_timeout_as_its_full_length(server):
    server.script.slow_ms = 1500
    result = http.response_time(server.url("/slow"), threshold_ms=100, samples=1, timeout_s=0.3)
    assert result.ok is False and result.value == 300
    assert result.evidence["samples"][0]["timed_out"] is True


def test_port_listening_before_and_after_stop(server):
    up = http.port_listening(server.host, server.port)
    assert up.ok is True and up.value is not None
    server.stop()
    down = http.port_listening(server.host, server.port, timeout_s=1)
    assert down.ok is False and down.evidence["error_type"] == "ConnectionRefusedError"


def test_port_listening_unresolvable_host_is_ok_false():
    result = http.port_listening("no-such-host.invalid", 80, timeout_s=1)
    assert result.ok is False and result.evidence["error_type"] == "gaierror"


def test_bad_arguments_are_config_errors():
    for call in (
        lambda: http.port_listening("127.0.0.1", 70000),
        lambda: http.health_check("http://127.0.0.1:1/", attempts=0),
        lambda: http.health_check("http://[::1"),
    ):
        with pytest.raises(ResponderError) as err:
            call()
        assert err.value.code is ErrorCode.CONFIG
