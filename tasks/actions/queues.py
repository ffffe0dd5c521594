"""Redis mitigations: dead-letter stuck queue items, block a source address, switch a flag.

* :func:`move_to_dead_letter`: seed 001 "If stuck jobs: Clear stuck jobs, restart workers", seed 000
  FAILED_MEDIA_REQUESTS "Queue clearing: Process stuck queue items". Nothing is deleted: stuck
  items move to the dead-letter list ``<queue><dead_letter_suffix>`` (``config/targets.yaml``
  ``redis.<name>.dead_letter_suffix``, default ``:dead``) where a person can inspect, replay or
  drop them. Stuck means, as :mod:`tasks.probes.queues` defines it: a plain-list item whose JSON
  time is older than ``older_than_minutes``; a BullMQ *active* job whose lock is gone (its
  worker died) for that long. Each item moves in one Lua script that first re-checks it (still in
  the queue; for BullMQ, still without a lock), so an item a worker took meanwhile stays where it is
  and running the action twice moves nothing twice. The BullMQ job hash stays (``deadLetteredOn``
  is added); the dead-letter list for queue ``q`` is ``bull:q:dead``.
* :func:`block_address`: seed 000 USER_AUTHENTICATION_ISSUES "Block IPs: Add malicious IPs to
  blocklist", with an expiry: the blocklist (``redis.<name>.blocklist_key``) is a sorted set whose
  score is the time the block ends (created as one when missing), extended only, never shortened
  (``ZADD GT``). A plain set cannot expire a member, so it is only used for a block without
  expiry. Loopback, unspecified, multicast and link-local addresses are refused: blocking them
  locks out the proxy in front of the application, not an attacker.
* :func:`set_flag`: seed 000 "enable maintenance mode", seed 003 "Disable endpoint temporarily",
  "disable non-critical features", seed 000 "Fallback activation". A flag is a Redis string key
  the application reads (``config/targets.yaml`` ``flags``); the action sets it to the configured
  value with ``SET ... GET`` and reports the previous value, which is how to switch it back.

All three are **risky** (they change what users and workers see) and wait for approval.
Nothing an alert says reaches them: queue names, keys, flag values and addresses come from the
configuration or from the runbook's own log analysis, and addresses are validated.
"""

from __future__ import annotations

import ipaddress
import time
from datetime import datetime

from tasks.base import ActionOutcome, ErrorCode, ResponderError
from tasks.probes.queues import bullmq_snapshot, item_time, normalise_address
from tasks.probes.redis import Url, _client

SAMPLE = 1000

# KEYS: queue list, dead-letter list. ARGV: item. Removes the oldest copy only if still queued.
_MOVE_LIST_ITEM = """
local removed = redis.call('LREM', KEYS[1], -1, ARGV[1])
if removed > 0 then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return removed
"""

# KEYS: active list, dead-letter list, job lock, job hash, stalled set. ARGV: job id, now (ms).
_MOVE_BULLMQ_JOB = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[4], 'deadLetteredOn', ARGV[2])
  redis.call('SREM', KEYS[5], ARGV[1])
end
return removed
"""


def _check_limits(older_than_minutes: float, max_items: int) -> None:
    if isinstance(max_items, bool) or not isinstance(max_items, int) or not 1 <= max_items <= 10_000:
        raise ResponderError(ErrorCode.CONFIG, f"move_to_dead_letter: max_items must be 1..10000, not {max_items!r}")
    if not older_than_minutes or older_than_minutes < 1:
        raise ResponderError(ErrorCode.REFUSED, "move_to_dead_letter: older_than_minutes must be at least 1 (a fresh item is not stuck)")


def move_to_dead_letter(
    url: Url,
    queue: str,
    kind: str = "list",
    dead_letter_suffix: str = ":dead",
    older_than_minutes: float = 10,
    max_items: int = 100,
    prefix: str = "bull",
    dry_run: bool = False,
) -> ActionOutcome:
    """Move up to ``max_items`` stuck items of ``queue`` to its dead-letter list; see the module docstring."""
    if kind not in ("list", "bullmq"):
        raise ResponderError(ErrorCode.CONFIG, f"move_to_dead_letter: kind must be 'list' or 'bullmq', not {kind!r}")
    if not queue or not dead_letter_suffix:
        raise ResponderError(ErrorCode.CONFIG, "move_to_dead_letter: queue and dead_letter_suffix must be non-empty")
    _check_limits(older_than_minutes, max_items)
    source = queue if kind == "list" else f"{prefix}:{queue}:active"
    dead = f"{queue}{dead_letter_suffix}" if kind == "list" else f"{prefix}:{queue}{dead_letter_suffix}"
    base = dict(action="move_to_dead_letter", target=f"queue {queue}", dry_run=dry_run)
    cutoff = time.time() - older_than_minutes * 60
    with _client(url) as client:
        if client.type(dead) not in ("list", "none"):
            raise ResponderError(ErrorCode.CONFIG, f"dead-letter key {dead!r} exists and is not a list")
        if kind == "list":
            if client.type(queue) not in ("list", "none"):
                raise ResponderError(ErrorCode.CONFIG, f"queue key {queue!r} is not a list")
            tail = client.lrange(queue, -SAMPLE, -1)
            candidates = [item for item in reversed(tail) if (t := item_time(item)) is not None and t <= cutoff]
        else:
            candidates = [job["id"] for job in bullmq_snapshot(client, queue, prefix, older_than_minutes)["stuck"]]
        candidates = candidates[:max_items]
        if not candidates:
            return ActionOutcome(**base, status="not_needed",
                                 detail=f"no item of {queue} has been stuck for {older_than_minutes:g} min or more")
        if dry_run:
            return ActionOutcome(**base, status="would_do",
                                 detail=f"would move {len(candidates)} stuck items from {source} to {dead}")
        moved, skipped = [], 0
        if kind == "list":
            script = client.register_script(_MOVE_LIST_ITEM)
            for item in candidates:
                if int(script(keys=[queue, dead], args=[item])) > 0:
                    moved.append(item)
                else:
                    skipped += 1
        else:
            script = client.register_script(_MOVE_BULLMQ_JOB)
            now_ms = int(time.time() * 1000)
            for job_id in candidates:
                keys = [source, dead, f"{prefix}:{queue}:{job_id}:lock", f"{prefix}:{queue}:{job_id}", f"{prefix}:{queue}:stalled"]
                if int(script(keys=keys, args=[job_id, now_ms])) > 0:
                    moved.append(job_id)
                else:
                    skipped += 1
    if not moved:
        return ActionOutcome(**base, status="not_needed",
                             detail=f"the {len(candidates)} stuck items were taken by a worker before they could be moved")
    what = f"jobs {', '.join(moved[:20])}" if kind == "bullmq" else f"{len(moved)} items"
    detail = f"moved {len(moved)} stuck items from {source} to {dead}" + (
        f"; {skipped} were taken by a worker meanwhile and left alone" if skipped else "")
    return ActionOutcome(**base, status="done", detail=detail, changes=[f"moved {what} from {source} to {dead}"])


def _blockable(address: str) -> str:
    canonical = normalise_address(address)
    ip = ipaddress.ip_address(canonical)
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        raise ResponderError(ErrorCode.REFUSED, f"refusing to block {canonical}: loopback, unspecified, multicast or link-local")
    return canonical


def block_address(
    url: Url, blocklist_key: str, address: str, ttl_seconds: float | None = 3600, dry_run: bool = False
) -> ActionOutcome:
    """Add ``address`` to the blocklist until now + ``ttl_seconds`` (never shortening a longer block)."""
    if not blocklist_key:
        raise ResponderError(ErrorCode.CONFIG, "block_address: no blocklist key configured (redis.blocklist_key)")
    if ttl_seconds is not None and ttl_seconds <= 0:
        raise ResponderError(ErrorCode.CONFIG, f"block_address: ttl_seconds must be positive, not {ttl_seconds!r}")
    canonical = _blockable(address)
    base = dict(action="block_address", target=f"address {canonical}", dry_run=dry_run)
    until = float("inf") if ttl_seconds is None else time.time() + ttl_seconds
    shown = "without expiry" if ttl_seconds is None else f"until {datetime.fromtimestamp(until).astimezone():%Y-%m-%d %H:%M:%S %z}"
    with _client(url) as client:
        kind = client.type(blocklist_key)
        if kind == "set":
            if ttl_seconds is not None:
                raise ResponderError(
                    ErrorCode.CONFIG,
                    f"blocklist {blocklist_key!r} is a plain set, which cannot expire a member: use a sorted set "
                    "(score = when the block ends) or block without expiry",
                )
            if client.sismember(blocklist_key, canonical):
                return ActionOutcome(**base, status="not_needed", detail=f"{canonical} is already in {blocklist_key}")
            if dry_run:
                return ActionOutcome(**base, status="would_do", detail=f"would add {canonical} to {blocklist_key} {shown}")
            client.sadd(blocklist_key, canonical)
        elif kind in ("zset", "none"):
            current = client.zscore(blocklist_key, canonical)
            if current is not None and current >= until - 1:
                until_text = "without expiry" if current == float("inf") else f"until {datetime.fromtimestamp(current).astimezone():%H:%M:%S}"
                return ActionOutcome(**base, status="not_needed", detail=f"{canonical} is already blocked {until_text}")
            if dry_run:
                return ActionOutcome(**base, status="would_do", detail=f"would block {canonical} in {blocklist_key} {shown}")
            client.zadd(blocklist_key, {canonical: until}, gt=True)
        else:
            raise ResponderError(ErrorCode.CONFIG, f"blocklist {blocklist_key!r} is a {kind}, not a set or sorted set")
    return ActionOutcome(**base, status="done", detail=f"blocked {canonical} in {blocklist_key} {shown}",
                         changes=[f"blocked {canonical} {shown}"])


def set_flag(url: Url, flag: str, key: str, value: str, dry_run: bool = False) -> ActionOutcome:
    """Set the flag's Redis key to ``value``; report the previous value (how to switch it back)."""
    if not key:
        raise ResponderError(ErrorCode.CONFIG, f"flag {flag!r}: no key configured")
    base = dict(action="set_flag", target=f"flag {flag}", dry_run=dry_run)
    value = str(value)
    with _client(url) as client:
        kind = client.type(key)
        if kind not in ("string", "none"):
            raise ResponderError(ErrorCode.CONFIG, f"flag {flag!r}: key {key!r} is a {kind}, not a string")
        current = client.get(key)
        if current == value:
            return ActionOutcome(**base, status="not_needed", detail=f"flag {flag} is already {value!r}")
        if dry_run:
            return ActionOutcome(**base, status="would_do", detail=f"would set flag {flag} from {current!r} to {value!r}")
        previous = client.set(key, value, get=True)
    revert = "delete the key" if previous is None else f"set it back to {previous!r}"
    return ActionOutcome(**base, status="done", detail=f"flag {flag}: {previous!r} -> {value!r} (to revert: {revert})",
                         changes=[f"flag {flag} ({key}): {previous!r} -> {value!r}"])
