"""HTTP and TCP probes (httpx, sockets) for health-check, response-time and ServiceDown alerts.

* ``health_check``: seed 002 "health check failing: 3 consecutive failures". It tries up to
  ``attempts`` times with ``delay_s`` between tries and is not ok only when every try fails,
  so one dropped request does not page anyone. Seeds 001 and 003 check the same endpoint
  ("returns 503", "Connection refused or timeout").
* ``health_detailed``: ``curl /health/detailed | jq '.checks.mongodb'`` (seeds 001, 002):
  parses the JSON and names the failing components.
* ``response_time``: HIGH_RESPONSE_TIME "P95 response time >2s" (seeds 000, 004; seed 001
  uses 1 s, seed 002 3 s): the median of a few timed requests.
* ``port_listening``: "netstat -tlnp | grep 8000", "telnet localhost 27017" (seeds 002, 003).

``health_check`` and ``port_listening`` are readiness probes: unreachable is their answer
(``ok=False``). ``health_detailed`` and ``response_time`` need an answer and raise
``httpx.TransportError`` when they cannot connect, for Prefect to retry.

Wiring::

    http.health_check("http://localhost:8000/health/ready")            # seed 002
    http.health_detailed(url, bearer_token=settings.metrics_token)      # a SecretStr
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from pydantic import SecretStr

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.http_client import http_client
from tasks.probes import clip, reveal

BODY_LIMIT = 16_384
HEALTHY_WORDS = {"ok", "healthy", "up", "pass", "passing", "passed", "connected", "green", "ready", "true"}
COMPONENT_KEYS = ("checks", "services", "components", "dependencies", "details")


def _public_url(url: str) -> str:
    """The URL without credentials, for evidence."""
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None))
    except httpx.InvalidURL:
        raise ResponderError(ErrorCode.CONFIG, "URL cannot be parsed") from None


@contextmanager
def _client(timeout_s: float, bearer_token: SecretStr | str | None = None) -> Iterator[httpx.Client]:
    """The one place a bearer token is unwrapped. Closes the connection pool on exit."""
    headers = {"User-Agent": "runbook-responder"}
    if bearer_token is not None:
        headers["Authorization"] = f"Bearer {reveal(bearer_token)}"
    with http_client(timeout=timeout_s, headers=headers, follow_redirects=False) as client:
        yield client


def _healthy_status(status_code: int) -> bool:
    return 200 <= status_code < 300


def health_check(
    url: str,
    timeout_s: float = 5.0,
    attempts: int = 3,
    delay_s: float = 1.0,
    bearer_token: SecretStr | str | None = None,
) -> ProbeResult:
    """GET ``url`` up to ``attempts`` times; ok at the first 2xx, not ok only if all fail.

    A try fails on a non-2xx status, a timeout or a refused connection. ``evidence["attempts"]``
    lists every try with its status or error and elapsed ms; ``value`` is the number of failed
    tries and ``threshold`` the number that makes the check fail.
    """
    if attempts < 1:
        raise ResponderError(ErrorCode.CONFIG, f"health_check: attempts must be at least 1, not {attempts}")
    public = _public_url(url)
    tries: list[dict[str, Any]] = []
    with _client(timeout_s, bearer_token) as client:
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                time.sleep(delay_s)
            started = time.perf_counter()
            try:
                response = client.get(url)
                status = response.status_code
                record: dict[str, Any] = {"status": status, "ok": _healthy_status(status)}
            except httpx.TransportError as exc:
                record = {"error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, "ok": False}
            record["attempt"] = attempt
            record["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
            tries.append(record)
            if record["ok"]:
                break
    failures = sum(1 for t in tries if not t["ok"])
    last = tries[-1]
    ok = last["ok"]
    outcome = f"HTTP {last['status']}" if "status" in last else last["error"]
    when = f"on try {len(tries)}" if ok else f"after {len(tries)} tries"
    return ProbeResult(
        probe="http_health_check",
        ok=ok,
        value=float(failures),
        threshold=float(attempts),
        unit=" failures",
        summary=f"{public}: {outcome} {when}",
        evidence={"url": public, "attempts": tries},
    )


def _component_state(value: Any) -> bool | None:
    """True if a health entry reads healthy, False if not, None if it carries no verdict."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in HEALTHY_WORDS
    if isinstance(value, dict):
        for key in ("status", "state", "healthy", "ok"):
            if key in value:
                return _component_state(value[key])
    return None


def _failing_components(body: dict[str, Any]) -> list[str]:
    failing = []
    for group in COMPONENT_KEYS:
        components = body.get(group)
        if isinstance(components, dict):
            failing += [f"{group}.{name}" for name, v in components.items() if _component_state(v) is False]
        elif isinstance(components, list):
            for item in components:
                if isinstance(item, dict) and _component_state(item) is False:
                    failing.append(f"{group}.{item.get('name', '?')}")
    return failing


def health_detailed(
    url: str, timeout_s: float = 5.0, bearer_token: SecretStr | str | None = None
) -> ProbeResult:
    """GET a JSON health endpoint and say which components it reports unhealthy.

    Not ok on a non-2xx status, an unhealthy top-level ``status``, or any entry under
    ``checks``/``services``/``components``/``dependencies``/``details`` whose value (or its
    ``status``/``state``/``healthy``/``ok`` field) is not a healthy word. The parsed body is
    kept in ``evidence["body"]`` when under ``BODY_LIMIT`` characters.
    """
    public = _public_url(url)
    with _client(timeout_s, bearer_token) as client:
        response = client.get(url)
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    status_ok = _healthy_status(response.status_code)
    evidence: dict[str, Any] = {"url": public, "status_code": response.status_code}
    if not isinstance(body, dict):
        evidence["body_text"] = clip(text, 2000)
        return ProbeResult(
            probe="http_health_detailed",
            ok=status_ok,
            summary=f"{public}: HTTP {response.status_code}, body is not a JSON object",
            evidence=evidence,
        )
    overall = _component_state(body)
    failing = _failing_components(body)
    evidence.update(
        overall_status=body.get("status"),
        failing=failing,
        body=body if len(text) <= BODY_LIMIT else None,
        body_truncated=len(text) > BODY_LIMIT,
    )
    ok = status_ok and overall is not False and not failing
    return ProbeResult(
        probe="http_health_detailed",
        ok=ok,
        value=float(len(failing)),
        unit=" failing",
        summary=f"{public}: HTTP {response.status_code}, status {body.get('status')!r}"
        + (f", failing: {', '.join(failing)}" if failing else ""),
        evidence=evidence,
    )


def response_time(
    url: str,
    threshold_ms: float = 2000.0,
    samples: int = 3,
    timeout_s: float = 10.0,
    bearer_token: SecretStr | str | None = None,
) -> ProbeResult:
    """Median time of ``samples`` sequential GETs (whole body read); not ok above ``threshold_ms``.

    A request that times out counts as ``timeout_s`` (a lower bound of its real time). Statuses
    are kept in the evidence: a fast 500 is fast, and the error-rate probes judge it.
    A refused connection raises ``httpx.ConnectError``.
    """
    if samples < 1:
        raise ResponderError(ErrorCode.CONFIG, f"response_time: samples must be at least 1, not {samples}")
    public = _public_url(url)
    timings: list[dict[str, Any]] = []
    with _client(timeout_s, bearer_token) as client:
        for _ in range(samples):
            started = time.perf_counter()
            try:
                response = client.get(url)
                elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
                timings.append({"ms": elapsed_ms, "status": response.status_code})
            except httpx.TimeoutException as exc:
                timings.append({"ms": timeout_s * 1000, "timed_out": True, "error": type(exc).__name__})
    median = round(statistics.median(t["ms"] for t in timings), 1)
    return ProbeResult(
        probe="http_response_time",
        ok=median <= threshold_ms,
        value=median,
        threshold=threshold_ms,
        unit="ms",
        summary=f"{public}: median of {samples} requests",
        evidence={"url": public, "samples": timings},
    )


def port_listening(host: str, port: int, timeout_s: float = 2.0) -> ProbeResult:
    """Does something accept TCP connections on ``host:port``? ``value`` is the connect time in ms.

    Refused, timed out or unresolvable returns ``ok=False`` with the error.
    """
    if not 0 < port < 65536:
        raise ResponderError(ErrorCode.CONFIG, f"port_listening: {port} is not a TCP port")
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        return ProbeResult(
            probe="port_listening",
            ok=False,
            summary=f"nothing accepting on {host}:{port}",
            evidence={
                "host": host,
                "port": port,
                "error_type": type(exc).__name__,
                "error": str(exc) or type(exc).__name__,
            },
        )
    return ProbeResult(
        probe="port_listening",
        ok=True,
        value=round((time.perf_counter() - started) * 1000, 2),
        unit="ms",
        summary=f"{host}:{port} accepting connections",
        evidence={"host": host, "port": port},
    )
