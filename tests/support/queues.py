"""Redis queues written the way BullMQ writes them (wait/active lists, failed/completed sorted sets,
one hash per job, a lock key while held)."""

from __future__ import annotations

import time

import redis


def bullmq_queue(client: redis.Redis, queue: str, waiting: int, active: list[tuple[str, float, bool]],
                 failed: int = 0, completed_ago_s: float | None = None, oldest_wait_ago_s: float = 5) -> None:
    """Write a BullMQ queue: ``active`` is (job id, seconds since processedOn, lock held)."""
    now_ms = time.time() * 1000
    base = f"bull:{queue}"
    for i in range(waiting):  # LPUSH: newest on the left, oldest at the right end
        job_id = f"w{i}"
        client.hset(f"{base}:{job_id}", mapping={"name": "transcode", "timestamp": int(now_ms - (oldest_wait_ago_s - i) * 1000)})
        client.lpush(f"{base}:wait", job_id)
    for job_id, ago, locked in active:
        client.hset(f"{base}:{job_id}", mapping={"name": "transcode", "timestamp": int(now_ms - ago * 1000 - 1000),
                                                  "processedOn": int(now_ms - ago * 1000)})
        client.lpush(f"{base}:active", job_id)
        if locked:
            client.set(f"{base}:{job_id}:lock", "worker-1", px=30000)
    for i in range(failed):
        client.zadd(f"{base}:failed", {f"f{i}": now_ms})
    if completed_ago_s is not None:
        client.zadd(f"{base}:completed", {"c1": now_ms - completed_ago_s * 1000})
