"""MongoDB probes (pymongo) for seed 002's "MongoDB connection lost" and slow-request steps.

* ``ping``: ``mongosh --eval "db.adminCommand('ping')"``; the alert itself is an unreachable
  server, so ``ping`` reports it as ``ok=False`` with the error in the evidence.
* ``connections``: "If connection pool exhausted: db.serverStatus().connections"; the seed
  gives no figure, so the default 0.8 of ``current + available`` mirrors seed 001's
  database-connections threshold.
* ``current_ops_longer_than``: ``db.currentOp({'secs_running': {'$gt': 1}})`` from "Slow
  Requests" (seed 002), via the ``$currentOp`` aggregation stage.

``serverSelectionTimeoutMS`` is small (2 s by default), so an unreachable server answers
within that time instead of pymongo's default 30 s. Only ``ping``'s failure path is tested
here (no MongoDB server can run on the build machine); see ``tests/test_probes_mongo.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymongo
from pydantic import SecretStr
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.probes import clip, redact, reveal, url_secrets

Url = SecretStr | str

APP_NAME = "runbook-responder"
COMMAND_TEXT_LIMIT = 500
AUTH_ERROR_CODES = {13, 18}  # Unauthorized, AuthenticationFailed


@contextmanager
def _client(url: Url, timeout_ms: int = 2000) -> Iterator[pymongo.MongoClient]:
    """The one place the URL (which may hold credentials) is unwrapped. Closes the client on exit.

    Connection errors are re-raised without the URL or password if their text contained
    them, because Prefect logs the message of the exception that fails a task.
    """
    raw = reveal(url)
    try:
        client: pymongo.MongoClient = pymongo.MongoClient(
            raw,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(timeout_ms, 5000),
            appname=APP_NAME,
        )
    except (ConfigurationError, ValueError) as exc:
        # pymongo raises ValueError for some malformed URLs (a non-numeric port);
        # "from None" because the original may quote the URL.
        raise ResponderError(ErrorCode.CONFIG, f"MongoDB URL rejected: {redact(str(exc), *url_secrets(raw))}") from None
    with client:
        try:
            yield client
        except ConnectionFailure as exc:
            scrubbed = redact(str(exc), *url_secrets(raw))
            if scrubbed != str(exc):
                raise type(exc)(scrubbed) from None
            raise


def _not_authorised(exc: OperationFailure, what: str) -> ResponderError:
    return ResponderError(ErrorCode.CONFIG, f"{what}: MongoDB refused the credentials or role: {exc.code}")


def ping(url: Url, timeout_ms: int = 2000) -> ProbeResult:
    """``ping`` the server; ``value`` is the round trip in ms (including server selection).

    Unreachable, timed out or authentication refused returns ``ok=False`` with the
    credential-free error in ``evidence["error"]`` rather than raising.
    """
    started = time.perf_counter()
    try:
        with _client(url, timeout_ms) as client:
            client.admin.command("ping")
    except (ConnectionFailure, OperationFailure) as exc:
        return ProbeResult(
            probe="mongo_ping",
            ok=False,
            summary="MongoDB unreachable" if isinstance(exc, ConnectionFailure) else "MongoDB refused ping",
            evidence={
                "error_type": type(exc).__name__,
                "error": clip(str(exc), 500),
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
                "timeout_ms": timeout_ms,
            },
        )
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return ProbeResult(probe="mongo_ping", ok=True, value=latency_ms, unit="ms", summary="pong")


def connections(url: Url, threshold: float = 0.8, timeout_ms: int = 2000) -> ProbeResult:
    """``serverStatus().connections``: ``current`` as a share of ``current + available``.

    Not ok above ``threshold``. Raises ``ConnectionFailure`` when unreachable (transient).
    """
    with _client(url, timeout_ms) as client:
        try:
            status = client.admin.command("serverStatus", repl=0, metrics=0, locks=0)
        except OperationFailure as exc:
            if exc.code in AUTH_ERROR_CODES:
                raise _not_authorised(exc, "connections") from None
            raise
    conns = status["connections"]
    current, available = int(conns["current"]), int(conns["available"])
    capacity = current + available
    ratio = current / capacity if capacity else None
    return ProbeResult(
        probe="mongo_connections",
        ok=ratio is None or ratio <= threshold,
        value=None if ratio is None else round(ratio, 6),
        threshold=threshold,
        summary=f"{current} of {capacity} connections in use",
        evidence={k: v for k, v in conns.items() if isinstance(v, (int, float))},
    )


def _is_current_op_listing(op: dict[str, Any]) -> bool:
    """True for an ``aggregate`` whose pipeline starts with ``$currentOp``, such as this probe's own:
    listing operations is never the slow operation, and counting it would distort ``value``."""
    command = op.get("command")
    if not isinstance(command, dict):
        return False
    pipeline = command.get("pipeline")
    if not isinstance(pipeline, list) or not pipeline:
        return False
    return isinstance(pipeline[0], dict) and "$currentOp" in pipeline[0]


def current_ops_longer_than(
    url: Url, seconds: float = 1.0, limit: int = 50, timeout_ms: int = 2000
) -> ProbeResult:
    """Active operations running longer than ``seconds``, longest first.

    ``value`` is the longest active operation's age in seconds. Needs the ``inprog``
    privilege to see other users' operations (``allUsers``).
    """
    if seconds < 0 or limit < 1:
        raise ResponderError(ErrorCode.CONFIG, "current_ops_longer_than: seconds must be >= 0 and limit >= 1")
    pipeline: list[dict[str, Any]] = [
        {"$currentOp": {"allUsers": True, "idleConnections": False}},
        {"$match": {"active": True, "microsecs_running": {"$exists": True}}},
        {"$sort": {"microsecs_running": -1}},
        {"$limit": limit + 1},
    ]
    with _client(url, timeout_ms) as client:
        try:
            ops = list(client.admin.aggregate(pipeline))
        except OperationFailure as exc:
            if exc.code in AUTH_ERROR_CODES:
                raise _not_authorised(exc, "current_ops_longer_than") from None
            raise
    ops = [op for op in ops if not _is_current_op_listing(op)][:limit]
    longest = round(ops[0]["microsecs_running"] / 1e6, 3) if ops else 0.0
    slow = [
        {
            "opid": op.get("opid"),
            "op": op.get("op"),
            "ns": op.get("ns"),
            "secs_running": round(op["microsecs_running"] / 1e6, 3),
            "client": op.get("client"),
            "appName": op.get("appName"),
            "desc": op.get("desc"),
            "planSummary": op.get("planSummary"),
            "command": clip(str(op.get("command", "")), COMMAND_TEXT_LIMIT),
        }
        for op in ops
        if op["microsecs_running"] > seconds * 1e6
    ]
    return ProbeResult(
        probe="mongo_current_ops",
        ok=not slow,
        value=longest,
        threshold=seconds,
        unit="s",
        summary=f"{len(slow)} operations running longer than {seconds:g}s" if slow
        else f"no operation running longer than {seconds:g}s",
        evidence={"operations": slow},
    )
