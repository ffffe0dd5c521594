"""Queue, blocklist, flag and HTTP-job mitigations against the real Redis and a real HTTP server.

Each is run for real, in dry run, twice (the second run must find nothing to do), and after the
world changed between plan and action (a worker took the item, a lock came back). Keys live under
a random prefix and are deleted afterwards.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from tasks.base import ErrorCode, ResponderError, Risk
from tasks.mitigations import REGISTRY
from tasks.actions import jobs, queues as actions
from support.capture import CaptureServer
from support.common import free_port
from support.queues import bullmq_queue


@pytest.fixture
def rdb(redis_url):
    prefix = f"responder-test-{uuid.uuid4().hex[:10]}"
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client, prefix
        keys = list(client.scan_iter(match=f"*{prefix}*"))
        if keys:
            client.delete(*keys)


def test_registered_with_their_risk():
    assert REGISTRY["move_to_dead_letter"].risk is Risk.RISKY
    assert REGISTRY["block_address"].risk is Risk.RISKY
    assert REGISTRY["set_flag"].risk is Risk.RISKY
    assert REGISTRY["trigger_job"].risk is Risk.SAFE


def test_dead_letter_moves_only_old_list_items_once(rdb, redis_url):
    client, prefix = rdb
    queue = f"{prefix}:media_request_queue"
    stuck = [json.dumps({"id": i, "enqueued_at": time.time() - 3600}) for i in range(3)]
    fresh = [json.dumps({"id": i, "enqueued_at": time.time()}) for i in range(3, 5)]
    client.rpush(queue, *reversed(stuck))  # oldest at the right end, where workers take from
    client.lpush(queue, *fresh, "not-json")

    dry = actions.move_to_dead_letter(redis_url, queue, "list", older_than_minutes=10, dry_run=True)
    assert dry.status == "would_do" and "3 stuck items" in dry.detail and client.llen(queue) == 6

    done = actions.move_to_dead_letter(redis_url, queue, "list", older_than_minutes=10)
    assert done.status == "done" and done.changes == [f"moved 3 items from {queue} to {queue}:dead"]
    assert client.llen(queue) == 3 and sorted(client.lrange(f"{queue}:dead", 0, -1)) == sorted(stuck)
    assert not any(item in client.lrange(queue, 0, -1) for item in stuck)

    again = actions.move_to_dead_letter(redis_url, queue, "list", older_than_minutes=10)
    assert again.status == "not_needed" and client.llen(f"{queue}:dead") == 3


def test_dead_letter_bullmq_rechecks_the_lock(rdb, redis_url):
    client, prefix = rdb
    queue = f"transcode-{prefix}"
    bullmq_queue(client, queue, waiting=1, active=[("a1", 30 * 60, False), ("a2", 30 * 60, False), ("a3", 30, True)])
    done = actions.move_to_dead_letter(redis_url, queue, "bullmq", older_than_minutes=10)
    assert done.status == "done" and "a1" in done.changes[0] and "a2" in done.changes[0]
    assert client.lrange(f"bull:{queue}:active", 0, -1) == ["a3"]
    assert sorted(client.lrange(f"bull:{queue}:dead", 0, -1)) == ["a1", "a2"]
    assert client.hget(f"bull:{queue}:a1", "deadLetteredOn") and client.hget(f"bull:{queue}:a1", "name") == "transcode"

    # a worker picked a4 up again between the check and the move: its lock is back, it stays
    bullmq_queue(client, queue, waiting=0, active=[("a4", 30 * 60, False)])
    script = client.register_script(actions._MOVE_BULLMQ_JOB)
    client.set(f"bull:{queue}:a4:lock", "worker-9")
    keys = [f"bull:{queue}:active", f"bull:{queue}:dead", f"bull:{queue}:a4:lock", f"bull:{queue}:a4", f"bull:{queue}:stalled"]
    assert script(keys=keys, args=["a4", 0]) == -1
    assert "a4" in client.lrange(f"bull:{queue}:active", 0, -1)


def test_dead_letter_refusals(redis_url, rdb):
    client, prefix = rdb
    with pytest.raises(ResponderError) as young:
        actions.move_to_dead_letter(redis_url, f"{prefix}:q", "list", older_than_minutes=0)
    assert young.value.code is ErrorCode.REFUSED
    client.set(f"{prefix}:q:dead", "x")
    with pytest.raises(ResponderError):
        actions.move_to_dead_letter(redis_url, f"{prefix}:q", "list")


def test_block_address_with_expiry_extends_never_shortens(rdb, redis_url):
    client, prefix = rdb
    key = f"{prefix}:blocked"
    dry = actions.block_address(redis_url, key, "203.0.113.7", ttl_seconds=600, dry_run=True)
    assert dry.status == "would_do" and client.exists(key) == 0
    done = actions.block_address(redis_url, key, "203.0.113.7", ttl_seconds=600)
    assert done.status == "done" and client.type(key) == "zset"
    until = client.zscore(key, "203.0.113.7")
    assert time.time() + 590 < until <= time.time() + 600
    again = actions.block_address(redis_url, key, "203.0.113.7", ttl_seconds=60)
    assert again.status == "not_needed" and client.zscore(key, "203.0.113.7") == until
    longer = actions.block_address(redis_url, key, "203.0.113.7", ttl_seconds=7200)
    assert longer.status == "done" and client.zscore(key, "203.0.113.7") > until
    ipv6 = actions.block_address(redis_url, key, "2001:0DB8::0001", ttl_seconds=60)
    assert ipv6.target == "address 2001:db8::1"


def test_block_address_refusals_and_plain_sets(rdb, redis_url):
    client, prefix = rdb
    for address in ("127.0.0.1", "::1", "0.0.0.0", "169.254.1.1"):
        with pytest.raises(ResponderError) as refused:
            actions.block_address(redis_url, f"{prefix}:b", address)
        assert refused.value.code is ErrorCode.REFUSED
    with pytest.raises(ResponderError):
        actions.block_address(redis_url, f"{prefix}:b", "evil; FLUSHALL")
    client.sadd(f"{prefix}:set", "192.0.2.1")
    with pytest.raises(ResponderError) as no_expiry:
        actions.block_address(redis_url, f"{prefix}:set", "192.0.2.2", ttl_seconds=60)
    assert "sorted set" in no_expiry.value.message
    assert actions.block_address(redis_url, f"{prefix}:set", "192.0.2.2", ttl_seconds=None).status == "done"
    assert actions.block_address(redis_url, f"{prefix}:set", "192.0.2.1", ttl_seconds=None).status == "not_needed"


def test_set_flag_reports_the_previous_value(rdb, redis_url):
    client, prefix = rdb
    key = f"{prefix}:flags:maintenance-mode"
    assert actions.set_flag(redis_url, "maintenance-mode", key, "1", dry_run=True).status == "would_do"
    first = actions.set_flag(redis_url, "maintenance-mode", key, "1")
    assert first.status == "done" and "to revert: delete the key" in first.detail and client.get(key) == "1"
    assert actions.set_flag(redis_url, "maintenance-mode", key, "1").status == "not_needed"
    back = actions.set_flag(redis_url, "maintenance-mode", key, "0")
    assert back.changes == [f"flag maintenance-mode ({key}): '1' -> '0'"]
    client.delete(key)
    client.rpush(key, "x")
    with pytest.raises(ResponderError):
        actions.set_flag(redis_url, "maintenance-mode", key, "1")


def test_trigger_job_posts_once_with_an_idempotency_key():
    capture = CaptureServer(respond=lambda r: (409, {"running": True}, {}) if "busy" in r["path"] else (202, {"ok": 1}, {}))
    try:
        url = f"{capture.url}/api/orchestrator/sync-products?token=SECRET"
        dry = jobs.trigger_job("sync-products", url, dry_run=True)
        assert dry.status == "would_do" and not capture.requests and "SECRET" not in dry.detail
        done = jobs.trigger_job("sync-products", url, idempotency_key="inc-1")
        assert done.status == "done" and done.changes == ["triggered sync-products"] and "SECRET" not in done.detail
        (request,) = capture.requests
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert request["path"].startswith("/api/orchestrator/sync-products") and headers["idempotency-key"] == "inc-1"
        busy = jobs.trigger_job("generate-videos", f"{capture.url}/busy")
        assert busy.status == "not_needed"
        capture.respond = lambda r: (500, {"error": "boom"}, {})
        assert jobs.trigger_job("x", f"{capture.url}/x").status == "failed"
    finally:
        capture.close()
    refused = jobs.trigger_job("x", f"http://127.0.0.1:{free_port()}/x")
    assert refused.status == "failed" and "did not start" in refused.detail
