"""A capture server: stands in for webhooks we cannot reach from here (Slack, PagerDuty, Discord)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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
                request = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body,
                           "at": time.monotonic()}
                captured.requests.append(request)
                status, answer, headers = (captured.respond(request) if captured.respond
                                           else (captured.status, {"ok": True}, {}))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(json.dumps(answer).encode())

            # APIs that update by PATCH (Statuspage); GET for hosts a test must show were never asked
            do_GET = do_PATCH = do_PUT = do_POST  # noqa: N815 (http.server API)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()  # the listening socket too: otherwise it stays bound until collected
