"""Redis probes for the security and queue steps: rate-limit keys, the blocklist, queue progress.

* :func:`ratelimit_keys`: seed 000 USER_AUTHENTICATION_ISSUES "Check if rate limits are being
  hit: ``redis-cli GET "rate_limit:auth:$IP_ADDRESS"``" for every address at once (``SCAN`` of
  the configured prefix, never ``KEYS``), with each counter's value and time to live.
* :func:`blocklist_members`: is an address already in the configured blocklist (a set, or a
  sorted set whose score is the time the block expires)?
* :func:`queue_status`: seed 001 "Check worker queue status" (``LLEN bull:video-transcoding:
  waiting/active/failed``), seed 001 ``queue_processing_time`` "check for stuck jobs", seed 004
  "Queue Backlog: >100 pending jobs" and "Download Queue Stalled: No progress for 10 minutes".

Queues come from ``config/targets.yaml`` ``redis.<name>.queues`` (``kind: list`` or ``bullmq``).

**BullMQ** keeps queue ``q`` under ``bull:q:``: ``wait``, ``active``, ``paused`` (lists; jobs are
pushed on the left and taken from the right, so the oldest waiting job is the last element),
``failed``, ``delayed``, ``prioritized`` and ``completed`` (sorted sets, ``completed`` scored by
finish time in ms), one hash per job (``bull:q:<id>`` with ``timestamp`` and ``processedOn`` in
ms) and ``bull:q:<id>:lock`` while a worker holds the job. An active job whose lock is gone is
*stalled* (its worker died). *No progress* means jobs are waiting and nothing completed within
``stall_minutes`` (BullMQ trims ``completed`` when ``removeOnComplete`` is set; then only the
oldest waiting job's age tells).

**Plain lists** (``LPUSH`` by producers, ``RPOP`` by workers): ``LLEN`` is the backlog. An item
is *stuck* when it is a JSON object whose ``enqueued_at``/``timestamp``/``created_at`` (epoch
seconds or ms, or ISO text) is older than ``stuck_minutes``; items without a time have no known
age and are never called stuck.

The client and its password handling are those of :mod:`tasks.probes.redis`.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import redis

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.probes.redis import Url, _client

TIME_FIELDS = ("enqueued_at", "timestamp", "created_at", "createdAt", "queued_at")
SCAN_BATCH = 500
SAMPLE = 200


def _escape_glob(prefix: str) -> str:
    for ch in "\\*?[]":
        prefix = prefix.replace(ch, "\\" + ch)
    return prefix


def _counter_value(client: redis.Redis, key: str, kind: str) -> float | None:
    if kind == "string":
        raw = client.get(key)
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None
    if kind == "zset":  # sliding-window limiters keep one member per request
        return float(client.zcard(key))
    if kind == "list":
        return float(client.llen(key))
    if kind == "hash":  # fixed-window limiters keyed by window
        total = 0.0
        for value in client.hvals(key):
            try:
                total += float(value)
            except ValueError:
                continue
        return total
    return None


def ratelimit_keys(
    url: Url,
    prefix: str,
    threshold: float | None = None,
    top: int = 20,
    max_keys: int = 10_000,
    timeout_s: float = 2.0,
) -> ProbeResult:
    """Every rate-limit counter under ``prefix``: its value and TTL, the largest first.

    ``value`` is the largest counter. With a ``threshold`` (the application's limit), not ok
    when a counter is at or above it (``evidence["at_limit"]``). The part of the key after the
    prefix (usually ``auth:<address>``) is shown: it is what the seed's ``GET`` looks at.
    """
    if not prefix or not prefix.strip():
        raise ResponderError(ErrorCode.CONFIG, "ratelimit_keys: no rate-limit prefix configured (redis.ratelimit_prefix)")
    rows: list[dict[str, Any]] = []
    truncated = False
    with _client(url, timeout_s) as client:
        for key in client.scan_iter(match=_escape_glob(prefix) + "*", count=SCAN_BATCH):
            if len(rows) >= max_keys:
                truncated = True
                break
            kind = client.type(key)
            value = _counter_value(client, key, kind)
            ttl = client.ttl(key)
            rows.append({"key": key[len(prefix):], "type": kind, "value": value, "ttl_s": ttl if ttl >= 0 else None})
    rows.sort(key=lambda r: -(r["value"] or 0))
    at_limit = [r for r in rows if threshold is not None and r["value"] is not None and r["value"] >= threshold]
    largest = rows[0]["value"] if rows and rows[0]["value"] is not None else 0.0
    return ProbeResult(
        probe="ratelimit_keys",
        ok=not at_limit,
        value=float(largest),
        threshold=threshold,
        summary=f"{len(rows)} rate-limit keys under {prefix!r}" + (f"; largest {rows[0]['key']}" if rows else "")
        + (f"; {len(at_limit)} at the limit" if at_limit else ""),
        evidence={"prefix": prefix, "keys": len(rows), "truncated": truncated, "top": rows[:top], "at_limit": at_limit[:top]},
    )


def normalise_address(address: str) -> str:
    """An IPv4/IPv6 address in its canonical form; anything else is refused."""
    try:
        return str(ipaddress.ip_address(str(address).strip()))
    except ValueError:
        raise ResponderError(ErrorCode.CONFIG, f"{address!r} is not an IP address") from None


def blocklist_members(url: Url, key: str, addresses: Sequence[str], timeout_s: float = 2.0) -> ProbeResult:
    """Which ``addresses`` the blocklist already holds (and, in a sorted set, until when).

    A sorted-set member whose score (expiry, epoch seconds) has passed counts as not blocked.
    ``value`` is how many are blocked; always ok (it is evidence for the blocking step).
    """
    if not key:
        raise ResponderError(ErrorCode.CONFIG, "blocklist_members: no blocklist key configured (redis.blocklist_key)")
    wanted = [normalise_address(a) for a in addresses]
    now = time.time()
    rows = []
    with _client(url, timeout_s) as client:
        kind = client.type(key)
        if kind not in ("none", "set", "zset"):
            raise ResponderError(ErrorCode.CONFIG, f"blocklist key {key!r} is a {kind}, not a set or sorted set")
        size = client.zcard(key) if kind == "zset" else client.scard(key) if kind == "set" else 0
        for address in wanted:
            if kind == "zset":
                score = client.zscore(key, address)
                blocked = score is not None and score > now
                rows.append({"address": address, "blocked": blocked,
                             "until": datetime.fromtimestamp(score).astimezone().isoformat() if score else None})
            else:
                rows.append({"address": address, "blocked": kind == "set" and bool(client.sismember(key, address)),
                             "until": None})
    blocked = [r["address"] for r in rows if r["blocked"]]
    return ProbeResult(
        probe="blocklist_members",
        ok=True,
        value=float(len(blocked)),
        summary=f"{len(blocked)} of {len(rows)} already blocked; the blocklist holds {size}",
        evidence={"key": key, "type": kind, "size": size, "addresses": rows},
    )


def item_time(item: str) -> float | None:
    """Epoch seconds a queued JSON item carries (``enqueued_at``, ``timestamp``, ...), if any."""
    try:
        data = json.loads(item)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for name in TIME_FIELDS:
        value = data.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return value / 1000 if value > 1e11 else float(value)
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (moment if moment.tzinfo else moment.astimezone()).timestamp()
    return None


def _ms_age(now: float, ms: Any) -> float | None:
    try:
        return round(now - float(ms) / 1000, 1)
    except (TypeError, ValueError):
        return None


def bullmq_snapshot(client: redis.Redis, queue: str, prefix: str = "bull", stuck_minutes: float = 10) -> dict[str, Any]:
    """Counts, ages and stalled active jobs of one BullMQ queue (``client`` already connected)."""
    base = f"{prefix}:{queue}"
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for name in ("wait", "active", "paused"):
        pipe.llen(f"{base}:{name}")
    for name in ("failed", "delayed", "prioritized", "completed"):
        pipe.zcard(f"{base}:{name}")
    pipe.lindex(f"{base}:wait", -1)
    pipe.zrange(f"{base}:completed", -1, -1, withscores=True)
    pipe.hget(f"{base}:meta", "paused")
    pipe.lrange(f"{base}:active", 0, SAMPLE - 1)
    replies = pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise ResponderError(ErrorCode.CONFIG, f"queue {queue!r}: a {base}:* key has the wrong type for BullMQ: {reply}")
        if isinstance(reply, Exception):
            raise reply
    wait, active, paused, failed, delayed, prioritized, completed, oldest_id, last_done, meta_paused, active_ids = replies
    counts = {"wait": wait, "active": active, "paused": paused, "failed": failed, "delayed": delayed,
              "prioritized": prioritized, "completed": completed}
    oldest_age = _ms_age(now, client.hget(f"{base}:{oldest_id}", "timestamp")) if oldest_id else None
    last_completed_age = _ms_age(now, last_done[0][1]) if last_done else None
    stalled = []
    if active_ids:
        pipe = client.pipeline(transaction=False)
        for job_id in active_ids:
            pipe.exists(f"{base}:{job_id}:lock")
            pipe.hmget(f"{base}:{job_id}", "processedOn", "timestamp", "name")
        replies = pipe.execute()
        for job_id, locked, (processed_on, created, name) in zip(active_ids, replies[::2], replies[1::2]):
            age = _ms_age(now, processed_on or created)
            if not locked and age is not None and age >= stuck_minutes * 60:
                stalled.append({"id": job_id, "name": name, "active_for_s": age})
    return {"queue": queue, "kind": "bullmq", "counts": counts, "pending": wait + prioritized,
            "paused": bool(meta_paused) or paused > 0, "oldest_waiting_age_s": oldest_age,
            "last_completed_age_s": last_completed_age, "stuck": stalled}


def list_snapshot(client: redis.Redis, key: str, stuck_minutes: float = 10) -> dict[str, Any]:
    """Length and oldest known item age of one plain list queue (workers take from the right)."""
    kind = client.type(key)
    if kind not in ("list", "none"):
        raise ResponderError(ErrorCode.CONFIG, f"queue key {key!r} is a {kind}, not a list")
    now = time.time()
    length = client.llen(key)
    tail = client.lrange(key, -SAMPLE, -1) if length else []
    ages = [(now - t) for t in (item_time(item) for item in tail) if t is not None]
    stuck = sum(1 for age in ages if age >= stuck_minutes * 60)
    return {"queue": key, "kind": "list", "counts": {"pending": length}, "pending": length, "paused": False,
            "oldest_waiting_age_s": round(max(ages), 1) if ages else None, "last_completed_age_s": None,
            "stuck": [{"items": stuck, "sampled": len(tail)}] if stuck else []}


def queue_status(
    url: Url,
    queue: str,
    kind: Literal["list", "bullmq"] = "list",
    backlog_threshold: int = 100,
    stall_minutes: float = 10,
    stuck_minutes: float = 10,
    prefix: str = "bull",
    timeout_s: float = 2.0,
) -> ProbeResult:
    """One queue: backlog, stalled/stuck jobs, progress. Not ok when any of these is wrong.

    * backlog: pending jobs above ``backlog_threshold`` (seed 004 "Queue Backlog: >100 pending jobs");
    * no progress: jobs wait and the last completion (or, without one, the oldest waiting job) is
      older than ``stall_minutes`` (seed 004 "Download Queue Stalled: No progress for 10 minutes");
    * stuck: BullMQ active jobs without a lock, or list items, older than ``stuck_minutes``
      (seed 001 "check for stuck jobs").
    ``value`` is the pending count.
    """
    if kind not in ("list", "bullmq"):
        raise ResponderError(ErrorCode.CONFIG, f"queue_status: kind must be 'list' or 'bullmq', not {kind!r}")
    with _client(url, timeout_s) as client:
        snap = bullmq_snapshot(client, queue, prefix, stuck_minutes) if kind == "bullmq" else list_snapshot(
            client, queue, stuck_minutes)
    problems = []
    if snap["pending"] > backlog_threshold:
        problems.append(f"backlog {snap['pending']} > {backlog_threshold}")
    progress_age = snap["last_completed_age_s"] if snap["last_completed_age_s"] is not None else snap["oldest_waiting_age_s"]
    if snap["pending"] and progress_age is not None and progress_age > stall_minutes * 60 and not snap["paused"]:
        problems.append(f"no progress for {progress_age / 60:.0f} min")
    if snap["stuck"]:
        count = len(snap["stuck"]) if kind == "bullmq" else snap["stuck"][0]["items"]
        problems.append(f"{count} stuck {'jobs' if kind == 'bullmq' else 'items'} older than {stuck_minutes:g} min")
    if snap["paused"]:
        problems.append("paused")
    snap["problems"] = problems
    return ProbeResult(
        probe=f"queue_{queue}",
        ok=not problems,
        value=float(snap["pending"]),
        threshold=float(backlog_threshold),
        unit=" jobs",
        summary=f"{queue}: " + ("; ".join(problems) if problems else f"{snap['pending']} pending, progressing"),
        evidence=snap,
    )
