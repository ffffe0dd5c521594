"""Rate-limit keys, blocklist membership and queue status against the real Redis.

Every test writes only keys under its own random prefix (BullMQ queues get a random name under
``bull:``) and deletes them afterwards; the BullMQ keys are written the way BullMQ writes them
(wait/active lists, failed/completed sorted sets, one hash per job, a lock key while held).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from support.queues import bullmq_queue
from tasks.base import ErrorCode, ResponderError
from tasks.probes import queues


@pytest.fixture
def rdb(redis_url):
    prefix = f"responder-test-{uuid.uuid4().hex[:10]}"
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client, prefix
        keys = list(client.scan_iter(match=f"*{prefix}*"))
        if keys:
            client.delete(*keys)


def test_ratelimit_keys_values_ttls_and_limit(rdb, redis_url):
    client, prefix = rdb
    rl = f"{prefix}:rate_limit:"
    client.set(f"{rl}auth:203.0.113.7", 57, ex=60)
    client.set(f"{rl}auth:198.51.100.4", 3, ex=60)
    client.zadd(f"{rl}api:198.51.100.4", {"r1": 1, "r2": 2})
    client.set(f"{prefix}:other", 999)
    result = queues.ratelimit_keys(redis_url, rl, threshold=50)
    assert result.ok is False and result.value == 57 and result.evidence["keys"] == 3
    top = result.evidence["top"][0]
    assert top["key"] == "auth:203.0.113.7" and 0 < top["ttl_s"] <= 60
    assert [r["key"] for r in result.evidence["at_limit"]] == ["auth:203.0.113.7"]
    assert queues.ratelimit_keys(redis_url, rl, threshold=100).ok is True
    with pytest.raises(ResponderError):
        queues.ratelimit_keys(redis_url, "")


def test_blocklist_members_in_a_sorted_set_with_expiry_and_a_set(rdb, redis_url):
    client, prefix = rdb
    zkey, skey = f"{prefix}:blocked", f"{prefix}:blocked-set"
    client.zadd(zkey, {"203.0.113.7": time.time() + 600, "198.51.100.4": time.time() - 5})
    result = queues.blocklist_members(redis_url, zkey, ["203.0.113.7", "198.51.100.4", "2001:0db8::0001"])
    rows = {r["address"]: r["blocked"] for r in result.evidence["addresses"]}
    assert rows == {"203.0.113.7": True, "198.51.100.4": False, "2001:db8::1": False}  # expired; normalised
    assert result.value == 1
    client.sadd(skey, "192.0.2.10")
    assert queues.blocklist_members(redis_url, skey, ["192.0.2.10"]).value == 1
    with pytest.raises(ResponderError) as bad:
        queues.blocklist_members(redis_url, zkey, ["not-an-ip"])
    assert bad.value.code is ErrorCode.CONFIG


def test_bullmq_queue_counts_stalled_jobs_and_progress(rdb, redis_url):
    client, prefix = rdb
    queue = f"video-{prefix}"
    bullmq_queue(client, queue, waiting=3, active=[("a1", 20 * 60, False), ("a2", 60, True)], failed=2,
                 completed_ago_s=30)
    result = queues.queue_status(redis_url, queue, "bullmq", backlog_threshold=100, stall_minutes=10, stuck_minutes=10)
    snap = result.evidence
    assert snap["counts"]["wait"] == 3 and snap["counts"]["active"] == 2 and snap["counts"]["failed"] == 2
    assert [j["id"] for j in snap["stuck"]] == ["a1"]  # no lock, active for 20 minutes
    assert result.ok is False and "1 stuck jobs" in result.summary
    assert 4 <= snap["oldest_waiting_age_s"] <= 10 and 25 <= snap["last_completed_age_s"] <= 40
    assert queues.queue_status(redis_url, queue, "bullmq", backlog_threshold=2, stuck_minutes=30).summary.count("backlog 3 > 2") == 1
    client.set(f"bull:{queue}:a1:lock", "worker-2")
    assert queues.queue_status(redis_url, queue, "bullmq").ok is True


def test_stalled_queue_without_progress(rdb, redis_url):
    client, prefix = rdb
    queue = f"downloads-{prefix}"
    bullmq_queue(client, queue, waiting=2, active=[], completed_ago_s=15 * 60, oldest_wait_ago_s=20 * 60)
    result = queues.queue_status(redis_url, queue, "bullmq", stall_minutes=10)
    assert result.ok is False and "no progress for 15 min" in result.summary
    client.hset(f"bull:{queue}:meta", "paused", 1)
    paused = queues.queue_status(redis_url, queue, "bullmq", stall_minutes=10)
    assert "paused" in paused.summary and "no progress" not in paused.summary


def test_plain_list_queue_backlog_and_stuck_items(rdb, redis_url):
    client, prefix = rdb
    key = f"{prefix}:media_request_queue"
    old = time.time() - 30 * 60
    client.rpush(key, json.dumps({"id": 1, "enqueued_at": old}))  # consumers take from the right: oldest
    client.lpush(key, *[json.dumps({"id": i, "enqueued_at": time.time()}) for i in range(2, 6)], "no-json")
    result = queues.queue_status(redis_url, key, "list", backlog_threshold=3, stuck_minutes=10)
    assert result.value == 6 and result.ok is False
    assert "backlog 6 > 3" in result.summary and "1 stuck items" in result.summary
    assert result.evidence["oldest_waiting_age_s"] >= 30 * 60 - 5
    client.set(f"{prefix}:string", "x")
    with pytest.raises(ResponderError):
        queues.queue_status(redis_url, f"{prefix}:string", "list")


def test_unreachable_redis_raises_for_retries():
    with pytest.raises(redis.ConnectionError):
        queues.queue_status("redis://127.0.0.1:1/0", "q", "list")
