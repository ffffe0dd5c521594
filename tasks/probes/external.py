"""External dependencies: the configured status and health URLs, each with its own timeout.

Seed 001 "Verify External Service Status" (Stripe, Mux, S3/R2 status pages), seed 003 "Check
respective API status pages" / "curl -s https://status.openai.com/api/v2/status.json | jq",
seed 000 "curl -w "%{time_total}" -o /dev/null -s https://api.plex.tv/" and seed 004
"External Service Failures: API downtime". The services come from ``config/targets.yaml``::

    external:
      - {name: stripe, url: https://status.stripe.com/api/v2/status.json, timeout_s: 5}
      - {name: mux, url: https://status.mux.com/api/v2/status.json}
      - {name: plex, url: https://plex.tv/pins.xml}

How an answer is judged (:func:`check`):

* not reachable, timed out or non-2xx: **down**;
* a Statuspage body (``{"status": {"indicator": "none|minor|major|critical"}}``, what Stripe,
  Mux, OpenAI and most vendors publish): ``none`` is up, ``minor`` is **degraded** (reported,
  still ok), ``major``/``critical`` is **down**;
* a JSON health body with a ``status`` word (``ok``, ``healthy``, ``up``...): that word;
* anything else that answered 2xx: up. Slower than ``slow_ms`` is reported as slow, still up.

Every service is a readiness question, so unreachable is an answer (``ok=False``), never an
exception. The services are checked concurrently; the whole check takes about the largest
timeout. URLs are shown without credentials or query strings (API keys live there).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.http_client import http_client
from tasks.probes import clip

HEALTHY = {"ok", "healthy", "up", "pass", "passing", "green", "operational", "ready"}
DEGRADED = {"minor", "degraded", "warn", "warning", "degraded_performance", "partial"}


def public_url(url: str) -> str:
    """``scheme://host[:port]/path``: no credentials, no query (API keys travel there)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ResponderError(ErrorCode.CONFIG, "external service URL cannot be parsed") from None
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def _verdict(status_code: int, body: Any) -> tuple[str, str]:
    if not 200 <= status_code < 300:
        return "down", f"HTTP {status_code}"
    if isinstance(body, dict):
        page = body.get("status")
        if isinstance(page, dict) and "indicator" in page:  # Statuspage (status.*.com/api/v2/status.json)
            indicator = str(page.get("indicator")).lower()
            described = page.get("description") or indicator
            if indicator == "none":
                return "up", described
            return ("degraded" if indicator == "minor" else "down"), described
        if isinstance(page, str):
            word = page.strip().lower()
            if word in HEALTHY:
                return "up", page
            return ("degraded" if word in DEGRADED else "down"), page
    return "up", f"HTTP {status_code}"


def check(name: str, url: str, timeout_s: float = 5.0, slow_ms: float | None = None) -> dict[str, Any]:
    """One service: ``{"name", "url", "state": up|degraded|down, "detail", "elapsed_ms", ...}``."""
    shown = public_url(url)
    started = time.perf_counter()
    try:
        with http_client(timeout=timeout_s, follow_redirects=True, headers={"User-Agent": "runbook-responder"}) as client:
            response = client.get(url)
    except httpx.TimeoutException as exc:
        return {"name": name, "url": shown, "state": "down", "detail": f"no answer within {timeout_s:g} s ({type(exc).__name__})",
                "elapsed_ms": round(timeout_s * 1000, 1)}
    except httpx.TransportError as exc:
        return {"name": name, "url": shown, "state": "down", "detail": f"{type(exc).__name__}: {clip(str(exc), 200)}",
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)}
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    try:
        body = response.json()
    except ValueError:
        body = None
    state, detail = _verdict(response.status_code, body)
    row = {"name": name, "url": shown, "state": state, "detail": clip(str(detail), 200), "elapsed_ms": elapsed,
           "status_code": response.status_code}
    if slow_ms is not None and elapsed > slow_ms and state == "up":
        row["slow"] = True
        row["detail"] = f"{row['detail']}; slow: {elapsed:.0f} ms > {slow_ms:g} ms"
    return row


def status_pages(
    services: Sequence[Mapping[str, Any]],
    names: Sequence[str] | None = None,
    slow_ms: float | None = None,
    probe: str = "external_services",
) -> ProbeResult:
    """Check every configured service (or only ``names``); not ok when any is down.

    ``services`` are ``{"name", "url", "timeout_s"}`` mappings (``config/targets.yaml`` ``external``).
    ``value`` is the number down; degraded and slow services are reported but do not fail it.
    """
    chosen = [dict(s) for s in services if names is None or s["name"] in set(names)]
    if not chosen:
        return ProbeResult(probe=probe, ok=True, value=0, summary="no external services configured (config/targets.yaml external)",
                           evidence={"services": []})
    with ThreadPoolExecutor(max_workers=min(8, len(chosen))) as pool:
        rows = list(pool.map(lambda s: check(s["name"], s["url"], float(s.get("timeout_s") or 5.0), slow_ms), chosen))
    down = [r for r in rows if r["state"] == "down"]
    degraded = [r for r in rows if r["state"] == "degraded" or r.get("slow")]
    if down:
        summary = "down: " + "; ".join(f"{r['name']} ({r['detail']})" for r in down)
    elif degraded:
        summary = "up, degraded: " + "; ".join(f"{r['name']} ({r['detail']})" for r in degraded)
    else:
        summary = f"all {len(rows)} up"
    return ProbeResult(probe=probe, ok=not down, value=float(len(down)), threshold=0, unit=" down", summary=summary,
                       evidence={"services": rows, "down": [r["name"] for r in down],
                                 "degraded": [r["name"] for r in degraded]})
