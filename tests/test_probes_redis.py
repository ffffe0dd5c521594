"""Redis probes against a real server.

The server comes from ``RESPONDER_TEST_REDIS_URL`` when that variable is set, else the local
server, else a throwaway one (``tests/conftest.py``); never skipped.
Every test writes only keys under its own random prefix and deletes them afterwards. The
unreachable case points at a port where nothing listens.

When a ``redis-server`` binary is on PATH, a private server is also started on a free port with
``requirepass`` and ``maxmemory`` set (no persistence, stopped afterwards), to test a refused
password and the ``maxmemory`` basis without touching the shared server's configuration;
without the binary those two tests are skipped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest
import redis
from pydantic import SecretStr

from tasks.base import ErrorCode, ResponderError
from tasks.probes import redis as redis_probes


@pytest.fixture
def rdb(redis_url):
    """A client plus a unique key prefix; every key it writes is removed at teardown."""
    prefix = f"responder-test-{uuid.uuid4().hex[:10]}"
    written: list[str] = []
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client, prefix, written
        if written:
            client.delete(*written)
        assert not client.keys(f"*{prefix}*"), "a test left keys behind"


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    """A throwaway redis-server: (port, password, maxmemory bytes)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("no redis-server binary to start a private server: apt-get install redis-server "
                    "(a skip here would hide the maxmemory and auth tests)")
    port, password, maxmemory = _free_port(), "s3cret-private", 64 * 2**20
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
         "--maxmemory", str(maxmemory), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.02)
        yield port, password, maxmemory
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ping_measures_latency(redis_url):
    result = redis_probes.ping(SecretStr(redis_url))
    assert result.ok is True and result.unit == "ms"
    assert 0 < result.value < 1000
    assert result.evidence["target"]["port"] == int(redis_url.rsplit(":", 1)[1].split("/")[0])


def test_ping_unreachable_is_ok_false_quickly_without_the_password():
    url = SecretStr(f"redis://:hunter2-secret@127.0.0.1:{_free_port()}/0")
    started = time.monotonic()
    result = redis_probes.ping(url, timeout_s=1)
    assert time.monotonic() - started < 1.0
    assert result.ok is False and result.value is None
    assert result.evidence["error_type"] == "ConnectionError"
    assert "refused" in result.evidence["error"].lower()
    assert "hunter2-secret" not in result.model_dump_json()


def test_other_probes_raise_the_transient_error_when_unreachable():
    with pytest.raises(redis.ConnectionError):
        redis_probes.memory(f"redis://127.0.0.1:{_free_port()}/0")


def test_unparseable_url_is_a_config_error():
    with pytest.raises(ResponderError) as err:
        redis_probes.ping("http://not-redis:6379")
    assert err.value.code is ErrorCode.CONFIG


def test_memory_ratio_matches_info(redis_url, rdb):
    client, prefix, written = rdb
    result = redis_probes.memory(redis_url)
    info = client.info("memory")
    ev = result.evidence
    assert ev["basis"] == ("maxmemory" if info["maxmemory"] else "total_system_memory")
    limit = info["maxmemory"] or info["total_system_memory"]
    assert result.value == pytest.approx(ev["used_memory"] / limit, abs=1e-4)
    assert ev["used_memory"] == pytest.approx(info["used_memory"], rel=0.2)
    assert result.threshold == 0.85 and result.ok is (result.value <= 0.85)
    assert redis_probes.memory(redis_url, threshold=0.0).ok is False


def test_connection_holders_groups_named_clients_by_name_and_host(redis_url):
    """Five real clients named with CLIENT SETNAME under two names: grouped with the right counts and ids."""
    tag = uuid.uuid4().hex[:8]
    workers, web = f"worker-{tag}", f"web-{tag}"
    clients = [redis.Redis.from_url(redis_url, decode_responses=True, single_connection_client=True)
               for _ in range(5)]
    try:
        for i, client in enumerate(clients):
            client.client_setname(workers if i < 3 else web)
        host = clients[0].client_info()["addr"].rpartition(":")[0].strip("[]")  # as the server sees us
        ids = [client.client_id() for client in clients]
        time.sleep(1.1)  # one second of age for the clients
        result = redis_probes.connection_holders(redis_url, oldest=10_000)
    finally:
        for client in clients:
            client.close()

    groups = {g["name"]: g for g in result.evidence["groups"]}
    assert groups[workers] == {"name": workers, "host": host, "count": 3, "ids": sorted(ids[:3])}
    assert groups[web] == {"name": web, "host": host, "count": 2, "ids": sorted(ids[3:])}
    counts = [g["count"] for g in result.evidence["groups"]]
    assert counts == sorted(counts, reverse=True)
    assert result.evidence["total"] == sum(counts) + result.evidence["other_groups"]["connections"]

    oldest = {c["id"]: c for c in result.evidence["oldest"]}
    assert set(ids) <= set(oldest)
    for client_id in ids:
        assert oldest[client_id]["age"] >= 1 and oldest[client_id]["idle"] >= 1
        assert oldest[client_id]["cmd"] == "client|id" and oldest[client_id]["host"] == host
    ages = [c["age"] for c in result.evidence["oldest"]]
    assert ages == sorted(ages, reverse=True)
    # The probe's own connection (running CLIENT LIST right then) is not listed.
    assert not any(c["cmd"] == "client|list" for c in result.evidence["oldest"])

    if workers in [g["name"] for g in result.evidence["groups"][:5]]:  # not crowded out by others
        assert f"3 name={workers} from {host} ids {', '.join(map(str, sorted(ids[:3])))}" in result.summary
    maxclients = int(redis.Redis.from_url(redis_url).config_get("maxclients")["maxclients"])
    assert result.evidence["maxclients"] == maxclients
    assert result.value == pytest.approx(result.evidence["total"] / maxclients, abs=1e-6)
    assert result.ok is (result.value <= 0.8)


def test_list_queue_lengths_and_threshold(redis_url, rdb):
    client, prefix, written = rdb
    busy, idle = f"{prefix}:media_request_queue", f"{prefix}:queue:default"
    written.append(busy)
    client.rpush(busy, *range(5))

    over = redis_probes.queue_lengths(redis_url, [busy, idle], threshold=3)
    assert over.evidence["queues"] == {busy: {"pending": 5}, idle: {"pending": 0}}
    assert over.ok is False and over.value == 5 and over.threshold == 3
    assert busy in over.summary

    under = redis_probes.queue_lengths(redis_url, [busy, idle], threshold=10)
    assert under.ok is True


def test_bullmq_queue_reads_wait_active_failed_delayed(redis_url, rdb):
    client, prefix, written = rdb
    queue = f"{prefix}-video-transcoding"
    keys = {part: f"bull:{queue}:{part}" for part in ("wait", "active", "failed", "delayed")}
    written.extend(keys.values())
    client.lpush(keys["wait"], *"abcd")
    client.lpush(keys["active"], "e", "f")
    client.zadd(keys["failed"], {"g": 1, "h": 2, "i": 3})
    client.zadd(keys["delayed"], {"j": time.time() + 60})

    result = redis_probes.queue_lengths(redis_url, [queue], kind="bullmq", threshold=100)
    assert result.evidence["queues"][queue] == {"wait": 4, "active": 2, "failed": 3, "delayed": 1, "pending": 4}
    assert result.ok is True and result.value == 4
    assert redis_probes.queue_lengths(redis_url, [queue], kind="bullmq", threshold=3).ok is False


def test_queue_key_of_the_wrong_type_is_a_config_error(redis_url, rdb):
    client, prefix, written = rdb
    key = f"{prefix}:not-a-list"
    written.append(key)
    client.set(key, "hello")
    with pytest.raises(ResponderError) as err:
        redis_probes.queue_lengths(redis_url, [key])
    assert err.value.code is ErrorCode.CONFIG and key in err.value.message


def test_queue_lengths_rejects_bad_configuration(redis_url):
    for kwargs in ({"queues": []}, {"queues": ["q"], "kind": "sidekiq"}):
        with pytest.raises(ResponderError) as err:
            redis_probes.queue_lengths(redis_url, **kwargs)
        assert err.value.code is ErrorCode.CONFIG


def test_ping_with_a_wrong_password_is_ok_false_without_the_password(private_redis):
    port, _, _ = private_redis
    result = redis_probes.ping(SecretStr(f"redis://:wrong-pw-secret@127.0.0.1:{port}/0"))
    assert result.ok is False
    assert result.evidence["error_type"] == "AuthenticationError"
    assert "wrong-pw-secret" not in result.model_dump_json()


def test_memory_against_maxmemory(private_redis):
    port, password, maxmemory = private_redis
    url = SecretStr(f"redis://:{password}@127.0.0.1:{port}/0")
    assert redis_probes.ping(url).ok is True
    result = redis_probes.memory(url)
    ev = result.evidence
    assert ev["basis"] == "maxmemory" and ev["maxmemory"] == maxmemory
    assert result.value == pytest.approx(ev["used_memory"] / maxmemory, abs=1e-6)
    assert 0 < result.value < 0.85 and result.ok is True
    assert redis_probes.memory(url, threshold=result.value / 2).ok is False
