"""External status pages against real local HTTP servers: a Statuspage body per indicator, a JSON
health word, a 503, a server slower than the configured timeout, and a port where nothing listens."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support.common import free_port
from tasks.probes import external

PAGES = {
    "/stripe": (200, {"page": {"name": "Stripe"}, "status": {"indicator": "none", "description": "All Systems Operational"}}),
    "/mux": (200, {"status": {"indicator": "major", "description": "Partial System Outage"}}),
    "/openai": (200, {"status": {"indicator": "minor", "description": "Minor Service Outage"}}),
    "/plex": (200, {"status": "healthy"}),
    "/s3": (503, {"error": "Service Unavailable"}),
    "/text": (200, "<html>ok</html>"),
}


@pytest.fixture(scope="module")
def server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/slow":
                time.sleep(1.5)
                status, body = 200, {"status": {"indicator": "none"}}
            else:
                status, body = PAGES.get(path, (404, {}))
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_each_kind_of_answer(server):
    dead = f"http://127.0.0.1:{free_port()}/status"
    services = [{"name": n, "url": f"{server}/{n}", "timeout_s": 1} for n in ("stripe", "mux", "openai", "plex", "s3", "text")]
    services += [{"name": "slow", "url": f"{server}/slow", "timeout_s": 0.5}, {"name": "gone", "url": dead, "timeout_s": 1}]
    started = time.monotonic()
    result = external.status_pages(services)
    assert time.monotonic() - started < 3, "services are checked concurrently"
    states = {r["name"]: r["state"] for r in result.evidence["services"]}
    assert states == {"stripe": "up", "mux": "down", "openai": "degraded", "plex": "up", "s3": "down", "text": "up",
                      "slow": "down", "gone": "down"}
    assert result.ok is False and result.value == 4
    assert sorted(result.evidence["down"]) == ["gone", "mux", "s3", "slow"]
    slow = [r for r in result.evidence["services"] if r["name"] == "slow"][0]
    assert "no answer within 0.5 s" in slow["detail"]


def test_only_named_services_and_slow_ones(server):
    services = [{"name": "stripe", "url": f"{server}/stripe?api_key=SECRET"}, {"name": "mux", "url": f"{server}/mux"},
                {"name": "slowpoke", "url": f"{server}/slow", "timeout_s": 5}]
    result = external.status_pages(services, names=["stripe", "slowpoke"], slow_ms=1000)
    assert result.ok is True and "slowpoke" in result.evidence["degraded"]
    assert "SECRET" not in json.dumps(result.model_dump())  # query strings (API keys) are never shown
    assert external.status_pages([]).ok is True
