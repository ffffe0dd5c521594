"""The alert intake: Alertmanager's webhook receiver.

Alertmanager configuration (``alertmanager.yml``)::

    receivers:
      - name: responder
        webhook_configs:
          - url: http://HOST:8765/alerts
            send_resolved: true
            http_config:
              authorization:
                credentials: <RESPONDER_INTAKE_TOKEN>

Answers: 200 once the body is stored durably (its events reach Prefect after);
401 without the right bearer token; 405 for another method; 413 over the size limit;
415 for a Content-Type other than JSON or any Content-Encoding (Alertmanager sends
neither); 422 for a body that can never be accepted (not UTF-8 JSON; NaN, Infinity or
a number too large for a double; a key given twice in one object; nesting thousands
deep; a lone surrogate or a NUL character; not an Alertmanager v4 body: the field is named); 503 with
Retry-After when it cannot be stored right now, so Alertmanager retries. Never a 500:
an unexpected error is logged and answered 503, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from slack_sdk.signature import SignatureVerifier

from core import metrics
from core.alerts import AlertmanagerPayload
from core.maintenance import in_force, parse_duration, start_window
from core.store import StoreUnavailable
from responder.ingest import Overloaded
from responder.approvals import ApprovalError, answer_verified

if TYPE_CHECKING:
    from responder.runtime import Responder

logger = logging.getLogger("responder.intake")


def _error(code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    metrics.INTAKE_REQUESTS.labels(str(code)).inc()
    return JSONResponse({"detail": detail}, status_code=code, headers=headers)


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "error": err["msg"]}
        for err in exc.errors(include_url=False)
    ]


class BodyError(ValueError):
    """A body that can never be accepted; the message says why (answered 422)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)  # built in C; only a body with a repeated key is walked to name it
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyError(f"the key {key!r} appears twice in one object")
            seen.add(key)
    return found


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BodyError(f"the number {text[:40]} is too large for a double")
    return value


def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is not JSON")


# A lone surrogate can only come from an escape \uD800-\uDFFF: UTF-8 cannot encode one, and Python's
# UTF-16 and UTF-32 decoders refuse one. So only a body with such an escape, or with zero bytes (UTF-16
# and UTF-32 bodies have them), is encoded again to find one (it was 4 % of the responder's samples
# with 50-alert posts; Alertmanager's own bodies escape "&" and "<" as \u0026 and \u003c, never a surrogate).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: what Python's parser lets through but the store or the schema cannot keep is refused."""
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicate_keys, parse_float=_finite, parse_constant=_no_constant)
        if b"\x00" in raw or _SURROGATE_ESCAPE.search(raw):
            json.dumps(data, ensure_ascii=False).encode("utf-8")  # "\ud800" parses, but cannot be stored
    except BodyError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError(f"not JSON: {exc}") from None
    except UnicodeEncodeError:
        raise BodyError("a string holds a lone surrogate (\\ud800-\\udfff)") from None
    except RecursionError:  # arrays or objects nested thousands deep: a 4xx, which Alertmanager does not retry
        raise BodyError("JSON nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise BodyError(f"not JSON this responder can keep: {exc}") from None
    # PostgreSQL's text cannot keep a NUL: refused for both stores alike. Strict JSON has no raw control
    # character in a string, so in UTF-8 a NUL can only come from the escape "\u0000": a body with neither
    # that escape nor a zero byte (UTF-16 and UTF-32 bodies have zero bytes) needs no walk.
    if (b"\\u0000" in raw or b"\x00" in raw) and _holds_nul(data):
        raise BodyError("a string holds a NUL character (\\u0000)")
    return data


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def _unsupported_encoding(request: Request) -> JSONResponse | None:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return _error(415, f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind not in ("application/json", "") and not kind.endswith("+json"):
        return _error(415, f"Content-Type {kind!r} is not supported: send application/json")
    return None


# FastAPI 0.150 asks OpenTelemetry for its tracer, meter and logger providers on every request to
# learn that none is configured: 3.3 % of the responder's samples at 1,870 single-alert posts/s
# (py-spy). The intake reports through /metrics and its log, so FastAPI's own telemetry is off.
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def _unexpected(request: Request) -> JSONResponse:
    logger.exception("Unexpected error answering %s %s", request.method, request.url.path)
    return _error(503, "the responder met an unexpected error; retry later (it is logged)", {"Retry-After": "5"})


class AlertsFirst:
    """The intake's ASGI application: ``POST /alerts`` goes straight to its handler, every other request
    through FastAPI. FastAPI's layers (its middleware stack, routing, and parsing the query string and
    dependencies of an endpoint that takes only the request) were about a tenth of the responder's CPU per
    single-alert post (py-spy); the answers are the same, an unexpected error a 503 as well."""

    def __init__(self, app: FastAPI, post_alerts: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = app
        self.post_alerts = post_alerts

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/alerts":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.post_alerts(request)
        except Exception:
            response = _unexpected(request)
        await response(scope, receive, send)


def create_app(responder: "Responder") -> AlertsFirst:
    app = FastAPI(title="runbook-responder intake", docs_url=None, redoc_url=None, telemetry=NO_TELEMETRY)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _unexpected(request)

    settings = responder.settings
    token = settings.token().get_secret_value().encode()
    limit = settings.intake_max_body_bytes

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token)

    async def read_limited(request: Request) -> bytes | None:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def authorized_json(request: Request, empty: Any = None) -> tuple[bytes, Any]:
        """The bearer token, the encoding, the size and strict JSON, in that order: (raw body, its data), or
        (b"", the 401/413/415/422 answer). ``empty``: what an empty body means, when it is allowed."""
        if not authorized(request):
            return b"", _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        refused = _unsupported_encoding(request)
        if refused is not None:
            return b"", refused
        raw = await read_limited(request)
        if raw is None:
            return b"", _error(413, f"body larger than {limit} bytes")
        if empty is not None and not raw.strip():
            return raw, empty
        try:
            return raw, parse_json(raw)
        except BodyError as exc:
            return b"", _error(422, [{"field": "(body)", "error": str(exc)}])

    @app.post("/alerts")  # served by AlertsFirst; the route makes FastAPI answer another method 405
    async def post_alerts(request: Request) -> Response:
        raw, data = await authorized_json(request)
        if isinstance(data, JSONResponse):
            return data
        try:
            payload = AlertmanagerPayload.model_validate(data)
        except ValidationError as exc:
            return _error(422, _field_errors(exc))
        started = time.perf_counter()
        try:
            routes = responder.catalog.routes([alert.alertname for alert in payload.alerts])
            result = await responder.ingest(payload, raw, routes)
            if responder.watchdog.is_watchdog(payload):
                await responder.watchdog.arrived(datetime.now(timezone.utc))
        except StoreUnavailable as exc:
            logger.error("Alert body not stored: %s", exc)
            return _error(503, "the alert store is unavailable; retry later", {"Retry-After": "5"})
        except Overloaded as exc:
            logger.warning("Alert body refused for now: %s", exc)
            return _error(503, f"the responder is behind ({exc}); retry later", {"Retry-After": "2"})
        metrics.INGEST_SECONDS.observe(time.perf_counter() - started)
        metrics.INTAKE_STORED.inc()
        return JSONResponse({  # plain JSON types: no need for FastAPI's encoder (a tenth of a post's CPU)
            "receipt": result.receipt_id,
            "firing": result.new_firing,
            "resolved": result.resolved,
            "duplicates": result.duplicates,
            "unrouted": result.unrouted,
            "incidents_opened": result.incidents_opened,
            "incidents_closed": result.incidents_closed,
        })

    @app.get("/healthz")
    async def healthz():
        checks = await responder.readiness()
        ready = all(checks.values())
        metrics.READY.set(1 if ready else 0)
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def get_metrics():
        try:
            backlog, oldest = await asyncio.to_thread(responder.store.outbox_backlog)
            metrics.OUTBOX_BACKLOG.set(backlog)
            metrics.OUTBOX_OLDEST_AGE.set(oldest)
        except StoreUnavailable:
            pass
        metrics.RUNS_INFLIGHT.set(responder.executor.inflight if responder.executor else 0)
        metrics.INTAKE_WAITING.set(responder.group_commit.waiting)
        try:
            for (state, severity), count in (await asyncio.to_thread(responder.store.counts)).items():
                metrics.INCIDENTS.labels(state, severity).set(count)
        except StoreUnavailable:
            pass
        return PlainTextResponse(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.post("/incidents/{incident_id}/ack")
    async def ack_incident(incident_id: str, request: Request):
        _, body = await authorized_json(request, empty={})
        if isinstance(body, JSONResponse):
            return body
        if not isinstance(body, dict) or not isinstance(body.get("by", ""), (str, type(None))):
            return _error(422, [{"field": "by", "error": 'expected {"by": "who acknowledges"}'}])
        who = str(body.get("by") or "someone")[:200]
        return await _acknowledge(incident_id, who)

    async def _acknowledge(incident_id: str, who: str):
        try:
            incident = await asyncio.to_thread(responder.store.incident, incident_id)
            if incident is None:
                return _error(404, f"no incident {incident_id}")
            if incident.status != "open":
                return _error(409, f"incident {incident_id} is already closed ({incident.close_reason})")
            incident = await asyncio.to_thread(responder.store.acknowledge, incident_id, who)
        except StoreUnavailable:
            return _error(503, "the alert store is unavailable; retry later", {"Retry-After": "5"})
        responder.wake_delivery()
        return {"id": incident.id, "acknowledged_by": incident.acknowledged_by, "acknowledged_at": incident.acknowledged_at}

    @app.post("/slack/actions")
    async def slack_actions(request: Request):
        """Slack interactivity: approve / reject / acknowledge buttons, signature verified."""
        secret = settings.slack_signing_secret
        raw = await read_limited(request)
        if raw is None:
            return _error(413, f"body larger than {limit} bytes")
        if secret is None or not SignatureVerifier(secret.get_secret_value()).is_valid_request(raw, dict(request.headers)):
            return _error(401, "Slack signature missing, wrong or stale")
        try:
            payload = json.loads(parse_qs(raw.decode())["payload"][0])
            action = payload["actions"][0]
            user = payload.get("user") or {}
            who = f"{user.get('username') or user.get('name') or user.get('id') or 'someone'} (Slack)"
            kind, value = action["action_id"], action["value"]
        except (KeyError, IndexError, ValueError, UnicodeDecodeError) as exc:
            return _error(422, [{"field": "payload", "error": f"not a Slack block action: {exc}"}])
        if kind == "ack":
            return await _acknowledge(value, who)
        if kind in ("approve", "reject"):
            # Slack signed the request: the user is who Slack says. A person of oncall.yaml with that
            # Slack id answers under their name; anyone else under their Slack id.
            user_id = str(user.get("id") or "")
            person = next((p.name for p in responder.catalog.oncall.people if user_id and p.slack == user_id),
                          f"slack:{user_id or 'unknown'}")
            try:
                await answer_verified(responder.store, value, kind == "approve", f"via Slack by {who}", person, "Slack")
            except ApprovalError as exc:
                return _error(409, str(exc))
            return {"text": f"{'Approved' if kind == 'approve' else 'Rejected'} by {who}"}
        return _error(422, [{"field": "actions.0.action_id", "error": f"unknown action {kind!r}"}])

    @app.post("/pagerduty")
    async def pagerduty_webhook(request: Request):
        """PagerDuty V3 webhooks: an incident the responder triggered, acknowledged or resolved in
        PagerDuty, stops the responder's own pages as ``responder ack`` does. The signature
        (``X-PagerDuty-Signature: v1=<HMAC-SHA256 of the body>``, one per active secret) is checked first."""
        secret = settings.pagerduty_webhook_secret
        raw = await read_limited(request)
        if raw is None:
            return _error(413, f"body larger than {limit} bytes")
        expected = hmac.new(secret.get_secret_value().encode(), raw, "sha256").hexdigest() if secret else None
        offered = [part.strip().removeprefix("v1=") for part in request.headers.get("x-pagerduty-signature", "").split(",")]
        if expected is None or not any(hmac.compare_digest(expected, sig) for sig in offered):
            return _error(401, "PagerDuty signature missing or wrong (RESPONDER_PAGERDUTY_WEBHOOK_SECRET)")
        try:
            event = parse_json(raw)["event"]
            kind, data = event["event_type"], event["data"]
            who = (event.get("agent") or {}).get("summary") or "someone"
            key = str(data.get("incident_key") or "")
        except (BodyError, KeyError, TypeError, AttributeError) as exc:
            return _error(422, [{"field": "event", "error": f"not a PagerDuty V3 webhook event: {exc}"}])
        if kind not in ("incident.acknowledged", "incident.resolved") or not key.startswith("responder-"):
            return {"ignored": f"{kind} of {key or 'an incident the responder did not trigger'}"}
        incident_id = key.removeprefix("responder-")
        try:
            incident = await asyncio.to_thread(responder.store.incident, incident_id)
        except StoreUnavailable:
            return _error(503, "the alert store is unavailable; retry later", {"Retry-After": "5"})
        if incident is None or incident.status != "open" or incident.acknowledged_at:
            return {"ignored": f"incident {incident_id} is not open and unacknowledged"}
        return await _acknowledge(incident_id, f"{str(who)[:100]} (PagerDuty, {kind.removeprefix('incident.')})")

    async def person(request: Request) -> str | JSONResponse:
        """The name of a personal token (``responder tokens add NAME``), never the Alertmanager token
        (a secret shared with a machine); or the 401/503 answer."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        try:
            name = (await asyncio.to_thread(responder.store.token_owner, credentials.strip())
                    if scheme.lower() == "bearer" and credentials.strip() else None)
        except StoreUnavailable:
            return _error(503, "the alert store is unavailable; retry later", {"Retry-After": "5"})
        if name is None:
            return _error(401, "missing, unknown or revoked personal token (responder tokens add NAME)",
                          {"WWW-Authenticate": "Bearer"})
        return name

    async def personal_json(request: Request) -> tuple[str, Any] | JSONResponse:
        """(the person, the body's JSON), checked in the same order as the Alertmanager path."""
        name = await person(request)
        if isinstance(name, JSONResponse):
            return name
        refused = _unsupported_encoding(request)
        if refused is not None:
            return refused
        raw = await read_limited(request)
        if raw is None:
            return _error(413, f"body larger than {limit} bytes")
        try:
            return name, parse_json(raw)
        except BodyError as exc:
            return _error(422, [{"field": "(body)", "error": str(exc)}])

    @app.post("/maintenance")
    async def start_maintenance(request: Request):
        """Start a maintenance window, as ``responder maintenance start`` does, by the token's person."""
        checked = await personal_json(request)
        if isinstance(checked, JSONResponse):
            return checked
        name, body = checked
        duration = parse_duration(str(body.get("for", ""))) if isinstance(body, dict) else None
        if not isinstance(body, dict) or duration is None or not isinstance(body.get("reason"), str):
            return _error(422, [{"field": "(body)", "error": 'expected {"service"|"runbook"|"matchers": …, '
                                                             '"for": "2h", "reason": "why"}'}])
        matchers = body.get("matchers") or []
        if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
            return _error(422, [{"field": "matchers", "error": 'a list of matchers such as ["env=prod"]'}])
        try:
            window = await asyncio.to_thread(
                start_window, responder.store, responder.catalog, service=body.get("service"),
                runbook=body.get("runbook"), matchers=matchers, duration=duration,
                reason=body["reason"], by=f"{name} (API)")
        except ValueError as exc:
            return _error(422, [{"field": "(body)", "error": str(exc)}])
        except StoreUnavailable:
            return _error(503, "the alert store is unavailable; retry later", {"Retry-After": "5"})
        return JSONResponse(window, status_code=201)

    @app.get("/maintenance")
    async def list_maintenance(request: Request):
        name = await person(request)
        if isinstance(name, JSONResponse):
            return name
        try:
            windows = await asyncio.to_thread(in_force, responder.store, responder.catalog)
        except StoreUnavailable:
            return _error(503, "the alert store is unavailable; retry later", {"Retry-After": "5"})
        return [{"id": w.id, "source": w.source, **w.scope.model_dump(), "starts": w.starts.isoformat(),
                 "ends": w.ends.isoformat(), "reason": w.reason, "by": w.by} for w in windows]

    @app.delete("/maintenance/{window_id}")
    async def end_maintenance(window_id: str, request: Request):
        name = await person(request)
        if isinstance(name, JSONResponse):
            return name
        try:
            window = await asyncio.to_thread(responder.store.end_window, window_id, f"{name} (API)",
                                             datetime.now(timezone.utc))
        except StoreUnavailable:
            return _error(503, "the alert store is unavailable; retry later", {"Retry-After": "5"})
        if window is None:
            return _error(404, f"no maintenance window {window_id}")
        return window

    @app.post("/runs/{flow_run_id}/answer")
    async def answer_run(flow_run_id: str, request: Request):
        """A person's answer with their personal token: the run records it as verified, under the token's name."""
        checked = await personal_json(request)
        if isinstance(checked, JSONResponse):
            return checked
        name, body = checked
        if not isinstance(body, dict) or not isinstance(body.get("approve"), bool) or not isinstance(body.get("reason"), str):
            return _error(422, [{"field": "(body)", "error": 'expected {"approve": true|false, "reason": "why"}'}])
        try:
            await answer_verified(responder.store, flow_run_id, body["approve"], body["reason"][:500], name, "CLI")
        except ApprovalError as exc:
            return _error(409, str(exc))
        return {"run": flow_run_id, "approve": body["approve"], "by": name}

    @app.get("/audit")
    async def read_audit(request: Request, since: str = "24h", incident: str | None = None):
        """The audit trail (read only: nothing edits or deletes it through the API)."""
        if not authorized(request):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        period = parse_duration(since)
        if period is None:
            return _error(422, [{"field": "since", "error": f"{since[:40]!r} is not a duration such as 30m, 24h or 7d"}])
        try:
            return await asyncio.to_thread(responder.store.audit,
                                           datetime.now(timezone.utc) - period, incident)
        except StoreUnavailable:
            return _error(503, "the alert store is unavailable; retry later", {"Retry-After": "5"})

    @app.get("/incidents")
    async def list_incidents(request: Request, status: str | None = None):
        if not authorized(request):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        def listing():
            return [{**i.__dict__, "waiting_on": responder.store.waiting_on(i)} for i in responder.store.incidents(status)]

        try:
            return await asyncio.to_thread(listing)
        except StoreUnavailable:
            return _error(503, "the alert store is unavailable; retry later")

    return AlertsFirst(app, post_alerts)
