"""Redis probes (redis-py) for ``redis_connection_failure`` and the queue checks of the seeds.

* ``ping``: "redis-cli -u $REDIS_URL ping" (seeds 000, 001), with the round trip in ms.
* ``memory``: "Check Redis memory usage" (seed 001). The seeds give no Redis figure, so the
  default 0.85 reuses HIGH_MEMORY_USAGE ">85%" (seed 000).
* ``connection_holders``: who holds the client connections: ``CLIENT LIST`` grouped by client
  name and host, and the oldest clients, as a share of ``maxclients`` (the seeds give no Redis
  figure: seed 001's database 80%).
* ``queue_lengths``: "redis-cli LLEN media_request_queue" (seed 000), "LLEN queue:default"
  (seed 001) and BullMQ queues (seed 001); the default threshold is "Queue Backlog: >100
  pending jobs" (seed 004).

BullMQ keeps a queue ``q`` in ``bull:q:wait`` and ``bull:q:active`` (lists) and in
``bull:q:failed`` and ``bull:q:delayed`` (sorted sets). Seed 001's
``LLEN bull:video-transcoding:waiting`` names a key BullMQ does not write, and ``LLEN`` on
the failed sorted set is a WRONGTYPE error; this module reads the real keys.

The client is built with retries switched off: Prefect's task retries are the one retry policy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import redis
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.probes import clip, count_groups, groups_summary, host_of, id_list, label, redact, reveal, url_secrets

Url = SecretStr | str

BULLMQ_LISTS = ("wait", "active")
BULLMQ_ZSETS = ("failed", "delayed")


@contextmanager
def _client(url: Url, timeout_s: float = 2.0) -> Iterator[redis.Redis]:
    """The one place the URL (which may hold a password) is unwrapped. Closes the pool on exit.

    Connection errors are re-raised without the URL or password if their text contained
    them, because Prefect logs the message of the exception that fails a task.
    """
    raw = reveal(url)
    try:
        client = redis.Redis.from_url(
            raw,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
    except ValueError:
        # "from None": the parse error may quote the URL, password included.
        raise ResponderError(ErrorCode.CONFIG, "Redis URL cannot be parsed") from None
    with client:
        try:
            yield client
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            scrubbed = redact(str(exc), *url_secrets(raw))
            if scrubbed != str(exc):
                raise type(exc)(scrubbed) from None
            raise


def _target(client: redis.Redis) -> dict[str, Any]:
    kwargs = client.connection_pool.connection_kwargs
    return {k: kwargs.get(k) for k in ("host", "port", "db", "path") if kwargs.get(k) is not None}


def ping(url: Url, timeout_s: float = 2.0) -> ProbeResult:
    """PING the server; ``value`` is the round trip in ms.

    Unreachable (refused, timed out, authentication failed) is this probe's answer: it returns
    ``ok=False`` with the password-free error in ``evidence["error"]``.
    """
    target: dict[str, Any] = {}
    try:
        with _client(url, timeout_s) as client:
            target = _target(client)
            started = time.perf_counter()
            client.ping()
            latency_ms = round((time.perf_counter() - started) * 1000, 2)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return ProbeResult(
            probe="redis_ping",
            ok=False,
            summary="Redis unreachable",
            evidence={"target": target, "error_type": type(exc).__name__, "error": clip(str(exc), 500)},
        )
    return ProbeResult(
        probe="redis_ping",
        ok=True,
        value=latency_ms,
        unit="ms",
        summary="PONG",
        evidence={"target": target},
    )


def memory(url: Url, threshold: float = 0.85, timeout_s: float = 2.0) -> ProbeResult:
    """``used_memory`` as a share of ``maxmemory``; not ok above ``threshold``.

    With no ``maxmemory`` set (0, the default) Redis can grow until the host runs out, so the
    share is taken of ``total_system_memory`` instead and ``evidence["basis"]`` says which.
    """
    with _client(url, timeout_s) as client:
        info = client.info("memory")
    used = int(info["used_memory"])
    maxmemory = int(info.get("maxmemory", 0))
    if maxmemory > 0:
        basis, limit = "maxmemory", maxmemory
    else:
        basis, limit = "total_system_memory", int(info.get("total_system_memory", 0))
    ratio = used / limit if limit else None
    return ProbeResult(
        probe="redis_memory",
        ok=ratio is None or ratio <= threshold,
        value=None if ratio is None else round(ratio, 6),
        threshold=threshold,
        summary=f"{info.get('used_memory_human', used)} used of {basis}"
        + ("" if limit else " (unknown)"),
        evidence={
            "basis": basis,
            "used_memory": used,
            "maxmemory": maxmemory,
            "total_system_memory": info.get("total_system_memory"),
            "used_memory_rss": info.get("used_memory_rss"),
            "used_memory_peak": info.get("used_memory_peak"),
            "mem_fragmentation_ratio": info.get("mem_fragmentation_ratio"),
            "maxmemory_policy": info.get("maxmemory_policy"),
        },
    )


def connection_holders(
    url: Url, threshold: float = 0.8, oldest: int = 10, groups: int = 20, timeout_s: float = 2.0
) -> ProbeResult:
    """Who holds the client connections: ``CLIENT LIST`` grouped by name and client host.

    * ``groups``: one entry per client ``name`` (``""`` when unset) and ``host`` (the ``addr``
      without its port), with its ``count`` and up to ``IDS_PER_GROUP`` client ``ids``, largest
      first; the rest is summed in ``other_groups``.
    * ``oldest``: the clients connected longest: ``id``, ``name``, ``addr``, ``age`` and
      ``idle`` (seconds), the last ``cmd`` and ``db``.

    ``value`` is the clients' share of ``maxclients`` (``INFO clients``); not ok above
    ``threshold``. The probe's own connection is left out: ``CLIENT ID``, ``CLIENT LIST`` and
    ``INFO`` go through one pipeline, so they share its connection.
    """
    if oldest < 1 or groups < 1:
        raise ResponderError(ErrorCode.CONFIG, "redis connection_holders: oldest and groups must be >= 1")
    with _client(url, timeout_s) as client:
        pipe = client.pipeline(transaction=False)
        pipe.client_id()
        pipe.client_list()
        pipe.info("clients")
        own_id, listed, info = pipe.execute()
    clients = [
        {"id": int(c["id"]), "name": c.get("name", ""), "addr": c.get("addr"), "host": host_of(c.get("addr")),
         "age": int(c["age"]), "idle": int(c["idle"]), "cmd": c.get("cmd"), "db": int(c.get("db", 0))}
        for c in listed
        if int(c["id"]) != own_id
    ]
    all_groups = count_groups(clients, lambda c: {"name": c["name"], "host": c["host"]}, ids="id")
    maxclients = int(info.get("maxclients", 0))
    ratio = len(clients) / maxclients if maxclients else None
    rest = all_groups[groups:]
    holders = groups_summary(
        all_groups, lambda g: f"name={label(g['name'], '(none)')} from {g['host'] or '?'} ids {id_list(g['ids'])}")
    return ProbeResult(
        probe="redis_connection_holders",
        ok=ratio is None or ratio <= threshold,
        value=None if ratio is None else round(ratio, 6),
        threshold=threshold,
        summary=f"{len(clients)} of {maxclients or '?'} clients: {holders or 'no other client'}",
        evidence={
            "maxclients": maxclients,
            "total": len(clients),
            "groups": all_groups[:groups],
            "other_groups": {"groups": len(rest), "connections": sum(g["count"] for g in rest)},
            "oldest": sorted(clients, key=lambda c: (-c["age"], c["id"]))[:oldest],
        },
    )


def queue_lengths(
    url: Url,
    queues: Sequence[str],
    kind: Literal["list", "bullmq"] = "list",
    threshold: int = 100,
    timeout_s: float = 2.0,
) -> ProbeResult:
    """Length of each configured queue; not ok when any queue's pending count exceeds ``threshold``.

    ``kind="list"``: each name is a Redis list key; pending is its ``LLEN``.
    ``kind="bullmq"``: each name is a BullMQ queue; evidence has ``wait``, ``active``,
    ``failed`` and ``delayed`` counts and pending is ``wait``. A missing key counts as 0 (Redis
    deletes an emptied list, so absence cannot be told from an empty queue). A key holding the
    wrong type is a configuration error.
    """
    if kind not in ("list", "bullmq"):
        raise ResponderError(ErrorCode.CONFIG, f"queue_lengths: kind must be 'list' or 'bullmq', not {kind!r}")
    if not queues or any(not isinstance(q, str) or not q for q in queues):
        raise ResponderError(ErrorCode.CONFIG, "queue_lengths: queues must be non-empty names")

    commands: list[tuple[str, str, str]] = []  # (queue, field, key)
    for queue in queues:
        if kind == "list":
            commands.append((queue, "pending", queue))
        else:
            commands += [(queue, part, f"bull:{queue}:{part}") for part in BULLMQ_LISTS + BULLMQ_ZSETS]

    with _client(url, timeout_s) as client:
        pipe = client.pipeline(transaction=False)
        for _, part, key in commands:
            if part in BULLMQ_ZSETS:
                pipe.zcard(key)
            else:
                pipe.llen(key)
        replies = pipe.execute(raise_on_error=False)

    counts: dict[str, dict[str, int]] = {queue: {} for queue in queues}
    for (queue, part, key), reply in zip(commands, replies, strict=True):
        if isinstance(reply, redis.ResponseError):
            raise ResponderError(ErrorCode.CONFIG, f"queue_lengths: key {key!r} is not a {kind} queue key: {reply}")
        if isinstance(reply, Exception):
            raise reply
        counts[queue][part] = int(reply)
    if kind == "bullmq":
        for figures in counts.values():
            figures["pending"] = figures["wait"]

    over = [queue for queue, figures in counts.items() if figures["pending"] > threshold]
    longest = max(counts, key=lambda q: counts[q]["pending"])
    return ProbeResult(
        probe="redis_queue_lengths",
        ok=not over,
        value=float(counts[longest]["pending"]),
        threshold=float(threshold),
        unit=" jobs",
        summary=f"backlog over threshold: {', '.join(over)}" if over else f"longest: {longest}",
        evidence={"kind": kind, "queues": counts},
    )
