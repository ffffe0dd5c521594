"""MongoDB probes (pymongo) for seed 002's "MongoDB connection lost" and slow-request steps.

* ``ping``: ``mongosh --eval "db.adminCommand('ping')"``; the alert itself is an unreachable
  server, so ``ping`` reports it as ``ok=False`` with the error in the evidence.
* ``connections``: "If connection pool exhausted: db.serverStatus().connections"; the seed
  gives no figure, so the default 0.8 of ``current + available`` mirrors seed 001's
  database-connections threshold.
* ``current_ops_longer_than``: ``db.currentOp({'secs_running': {'$gt': 1}})`` from "Slow
  Requests" (seed 002), via the ``$currentOp`` aggregation stage.
* ``connection_holders``: who holds the connections, for "If connection pool exhausted"
  (seed 002): ``db.adminCommand({currentOp: true, $all: true})`` (every connection, idle ones
  included) grouped by client host and ``appName``, with counts per operation, and the
  longest-running operations. The grouping is the pure function ``holders_from_current_op``.

``serverSelectionTimeoutMS`` is small (2 s by default), so an unreachable server answers
within that time instead of pymongo's default 30 s. Only ``ping``'s failure path is tested
here (no MongoDB server can run on the build machine), and ``holders_from_current_op`` on
recorded ``currentOp`` documents; see ``tests/test_probes_mongo.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pymongo
from pydantic import SecretStr
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.probes import clip, count_groups, groups_summary, host_of, id_list, label, redact, reveal, url_secrets

Url = SecretStr | str

APP_NAME = "runbook-responder"
COMMAND_TEXT_LIMIT = 500
AUTH_ERROR_CODES = {13, 18}  # Unauthorized, AuthenticationFailed
# Commands whose arguments can carry credentials: never copied into evidence.
SENSITIVE_COMMANDS = {"authenticate", "saslStart", "saslContinue", "createUser", "updateUser",
                      "copydbsaslstart", "copydbgetnonce", "getnonce"}


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


_CONNECTION_DESC = re.compile(r"^conn(\d+)$")


def _connection_id(op: Mapping[str, Any]) -> int | None:
    """The client connection an entry belongs to (``connectionId``, or ``desc`` "connN"); None for
    server threads, idle sessions and idle cursors."""
    if isinstance(op.get("connectionId"), int):
        return op["connectionId"]
    match = _CONNECTION_DESC.match(str(op.get("desc", "")))
    return int(match.group(1)) if match else None


def _command_text(command: Any) -> str | None:
    """The command as evidence: without session and cluster-time fields, credentials never."""
    if not isinstance(command, Mapping) or not command:
        return None
    name = next(iter(command))
    if name in SENSITIVE_COMMANDS:
        return f"{{{name!r}: <redacted>}}"
    shown = {k: v for k, v in command.items() if k != "lsid" and not k.startswith("$")}
    return clip(str(shown), COMMAND_TEXT_LIMIT)


def _check_limits(oldest: int, groups: int) -> None:
    if oldest < 1 or groups < 1:
        raise ResponderError(ErrorCode.CONFIG, "mongo connection_holders: oldest and groups must be >= 1")


def holders_from_current_op(
    inprog: Iterable[Mapping[str, Any]], oldest: int = 10, groups: int = 20, own_app: str | None = APP_NAME
) -> ProbeResult:
    """Who holds the connections, from the ``inprog`` documents of ``currentOp`` with ``$all: true``.

    Pure, so it runs on recorded documents. An entry is a client connection when it has a
    connection id (``connectionId``, or ``desc`` "connN") and a client address (``client``;
    ``client_s`` on mongos); server threads, idle sessions and idle cursors are not. Entries
    with ``appName`` equal to ``own_app`` are left out: the responder's own command and its
    driver's monitoring connections.

    * ``groups``: one per ``appName`` and client ``host`` (the address without its port), with
      its ``count``, counts ``by_op`` (``"idle"`` for an inactive connection, else the entry's
      ``op``: ``query``, ``update``, ``command``, ...) and up to ``IDS_PER_GROUP`` connection
      ``ids``, largest first; the rest summed in ``other_groups``.
    * ``oldest``: the active operations running longest (``currentOp`` gives no connection age),
      with ``opid``, connection id, client, ``secs_running``, ``waitingForLock``, ``ns``,
      ``planSummary`` and the command cut to ``COMMAND_TEXT_LIMIT`` (credential-bearing
      commands redacted).

    Always ok: the judgement is ``connections``' (``serverStatus``); ``value`` is the longest
    running operation in seconds.
    """
    _check_limits(oldest, groups)
    connections = []
    for op in inprog:
        conn_id, client = _connection_id(op), op.get("client") or op.get("client_s")
        if conn_id is None or not client or (own_app is not None and op.get("appName") == own_app):
            continue
        active = bool(op.get("active"))
        micros = op.get("microsecs_running")
        connections.append({
            "connectionId": conn_id,
            "client": client,
            "host": host_of(client),
            "appName": op.get("appName") or "",
            "op": (op.get("op") or "none") if active else "idle",
            "active": active,
            "opid": op.get("opid"),
            "secs_running": round(micros / 1e6, 3) if active and isinstance(micros, int) else None,
            "waitingForLock": op.get("waitingForLock"),
            "ns": op.get("ns") or None,
            "planSummary": op.get("planSummary"),
            "command": _command_text(op.get("command")),
        })
    all_groups = count_groups(connections, lambda c: {"appName": c["appName"], "host": c["host"]},
                              ids="connectionId", by="op")
    running = sorted((c for c in connections if c["secs_running"] is not None),
                     key=lambda c: (-c["secs_running"], c["connectionId"]))[:oldest]
    rest = all_groups[groups:]

    def describe(g: dict[str, Any]) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in g["by_op"].items())
        return f"app={label(g['appName'], '(none)')} from {g['host']} ({ops}) conns {id_list(g['ids'])}"

    summary = f"{len(connections)} client connections: {groups_summary(all_groups, describe) or 'none other'}"
    if running:
        top = running[0]
        summary += (f"; longest running: opid {top['opid']} on conn {top['connectionId']}"
                    f" ({top['op']} {top['ns'] or ''}, {top['secs_running']:g} s)")
    return ProbeResult(
        probe="mongo_connection_holders",
        ok=True,
        value=running[0]["secs_running"] if running else 0.0,
        unit="s",
        summary=summary,
        evidence={
            "total": len(connections),
            "groups": all_groups[:groups],
            "other_groups": {"groups": len(rest), "connections": sum(g["count"] for g in rest)},
            "oldest": running,
        },
    )


def connection_holders(url: Url, oldest: int = 10, groups: int = 20, timeout_ms: int = 2000) -> ProbeResult:
    """``db.adminCommand({currentOp: true, $all: true})``, grouped (see ``holders_from_current_op``).

    Needs the ``inprog`` privilege to see other users' connections. Raises ``ConnectionFailure``
    when unreachable (transient).
    """
    _check_limits(oldest, groups)
    with _client(url, timeout_ms) as client:
        try:
            reply = client.admin.command("currentOp", **{"$all": True})
        except OperationFailure as exc:
            if exc.code in AUTH_ERROR_CODES:
                raise _not_authorised(exc, "connection_holders") from None
            raise
    return holders_from_current_op(reply["inprog"], oldest=oldest, groups=groups)
