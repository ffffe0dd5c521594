"""Trigger a configured HTTP job: seed 003 "Retry sync manually: ``curl -X POST
http://localhost:3000/api/orchestrator/sync-products``" (NoProductsSynced) and "Trigger manual
generation: ``curl -X POST http://localhost:3000/api/orchestrator/generate-videos``"
(NoVideosGenerated).

The job's URL and method come from ``config/targets.yaml``; a runbook names the job and the
lifecycle passes its URL (``PlannedAction(target_ref=("jobs", "sync-products"))``), so a URL
with a token never sits in a plan, an approval form or an artifact::

    jobs:
      sync-products: {url: "http://backend:3000/api/orchestrator/sync-products", method: POST}

Safe, because it asks the application to do what its own scheduler does, and because of what
surrounds it: the runbook re-checks the business metric right before planning it (and does not
plan it when the seed says to wait: rate limited, budget hit, generator down), the request
carries an ``Idempotency-Key`` (the incident) for servers that deduplicate, and the loop guard
stops a fourth trigger within an hour. It is never retried: a request that timed out may have
started the job, so the outcome says ``failed`` with "unknown whether it started" rather than
sending it again. ``409 Conflict`` (already running) is ``not_needed``.
"""

from __future__ import annotations

import time

import httpx

from tasks.base import ActionOutcome, ErrorCode, ResponderError
from tasks.http_client import http_client
from tasks.probes import clip
from tasks.probes.external import public_url


def trigger_job(
    job: str,
    url: str,
    method: str = "POST",
    dry_run: bool = False,
    idempotency_key: str | None = None,
    timeout_s: float = 30.0,
) -> ActionOutcome:
    """Send one request that starts the job; ``done`` on 2xx with the answer's first characters."""
    if method not in ("POST", "PUT", "GET"):
        raise ResponderError(ErrorCode.CONFIG, f"job {job!r}: method must be POST, PUT or GET, not {method!r}")
    shown = public_url(url)
    base = dict(action="trigger_job", target=f"job {job}", dry_run=dry_run)
    if dry_run:
        return ActionOutcome(**base, status="would_do", detail=f"would send {method} {shown}")
    headers = {"User-Agent": "runbook-responder"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    started = time.perf_counter()
    try:
        with http_client(timeout=timeout_s, follow_redirects=False, headers=headers) as client:
            response = client.request(method, url)
    except httpx.TimeoutException:
        return ActionOutcome(**base, status="failed",
                             detail=f"{method} {shown}: no answer within {timeout_s:g} s; unknown whether it started")
    except httpx.TransportError as exc:
        return ActionOutcome(**base, status="failed", detail=f"{method} {shown}: {type(exc).__name__}, the job did not start")
    elapsed = time.perf_counter() - started
    answer = clip(response.text.strip(), 200) or "(empty)"
    if response.status_code == 409:
        return ActionOutcome(**base, status="not_needed", detail=f"{method} {shown}: HTTP 409, already running: {answer}")
    if not response.is_success:
        return ActionOutcome(**base, status="failed", detail=f"{method} {shown}: HTTP {response.status_code}: {answer}")
    return ActionOutcome(**base, status="done",
                         detail=f"{method} {shown}: HTTP {response.status_code} in {elapsed:.2f} s: {answer}",
                         changes=[f"triggered {job}"])
