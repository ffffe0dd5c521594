"""clear_cache_namespace / flush_database against a real Redis (``redis_url`` from conftest).

Namespace tests write only keys under their own random prefix (plus neighbours that must
survive) and delete them afterwards. FLUSHDB runs only against a private ``redis-server``
started here on a free port; without the binary it uses an empty, randomly chosen database of
the suite's server, never the database the other tests use.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from pydantic import SecretStr

from tasks.mitigations import REGISTRY
from tasks.actions import redis as actions
from tasks.base import ErrorCode, ResponderError


@pytest.fixture
def rdb(redis_url) -> Iterator[tuple[redis.Redis, str]]:
    """A client and a unique prefix; every key containing the prefix is removed at teardown."""
    tag = f"responder-act-{uuid.uuid4().hex[:10]}"
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client, tag
        leftovers = list(client.scan_iter(match=f"*{tag}*", count=1000))
        if leftovers:
            client.delete(*leftovers)


def _fill(client: redis.Redis, keys: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, key in enumerate(keys):
        if i % 3 == 0:
            pipe.hset(key, mapping={"a": "1"})
        else:
            pipe.set(key, "v")
    pipe.execute()


def _existing(client: redis.Redis, tag: str) -> set[str]:
    return set(client.scan_iter(match=f"*{tag}*", count=1000))


def test_clear_cache_namespace_unlinks_exactly_the_prefix_in_batches(redis_url, rdb):
    client, tag = rdb
    prefix = f"cache:{tag}:"
    doomed = [f"{prefix}{i}" for i in range(1234)]
    survivors = [f"cache:{tag}", f"cache:{tag}-other:1", f"sessions:{tag}:1", f"x{prefix}1"]
    _fill(client, doomed + survivors)

    outcome = REGISTRY["clear_cache_namespace"].act(SecretStr(redis_url), prefix, [prefix, "other:"], batch=100)
    assert outcome.status == "done", outcome.detail
    assert outcome.risk.value == "risky"
    assert outcome.changes == [f"unlinked 1234 keys starting with {prefix!r}"]
    assert "1234 of 1234" in outcome.detail
    assert _existing(client, tag) == set(survivors)

    again = actions.clear_cache_namespace(redis_url, prefix, [prefix])
    assert again.status == "not_needed" and again.changes == []


def test_dry_run_counts_and_deletes_nothing(redis_url, rdb):
    client, tag = rdb
    prefix = f"cache:{tag}:"
    keys = [f"{prefix}{i}" for i in range(37)]
    _fill(client, keys)
    client.expire(keys[0], 3600)
    ttl_before = client.ttl(keys[0])

    outcome = actions.clear_cache_namespace(redis_url, prefix, [prefix], dry_run=True, batch=10)
    assert outcome.status == "would_do" and outcome.dry_run is True and outcome.changes == []
    assert "would unlink 37 keys" in outcome.detail
    assert _existing(client, tag) == set(keys)
    assert client.ttl(keys[0]) in (ttl_before, ttl_before - 1)


def test_glob_characters_in_the_prefix_are_literal(redis_url, rdb):
    client, tag = rdb
    prefix = f"c[ache]*{tag}?:"
    literal = [f"{prefix}1", f"{prefix}2"]
    lookalikes = [f"ca{tag}x:1", f"c[ache]*{tag}x:1", f"ce{tag}!:1"]  # would match if * ? [ ] were globs
    _fill(client, literal + lookalikes)
    outcome = actions.clear_cache_namespace(redis_url, prefix, [prefix])
    assert outcome.status == "done"
    assert _existing(client, tag) == set(lookalikes)


@pytest.mark.parametrize(
    ("prefix", "allowed"),
    [("", [""]), ("   ", ["   "]), ("cache:", ["cache:users:"]), ("cache:", []), ("cache:", "cache:")],
)
def test_refuses_a_prefix_that_is_empty_or_not_configured(redis_url, rdb, prefix, allowed):
    client, tag = rdb
    key = f"cache:{tag}:1"
    client.set(key, "v")
    with pytest.raises(ResponderError) as err:
        actions.clear_cache_namespace(redis_url, prefix, allowed)
    assert err.value.code is ErrorCode.REFUSED
    assert client.exists(key) == 1


# -- FLUSHDB --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def flushable(tmp_path_factory, redis_url) -> Iterator[str]:
    """A Redis URL whose database a test may flush: a private server, else an empty db of the suite's."""
    binary = shutil.which("redis-server")
    if binary is None:
        base = redis_url.rsplit("/", 1)[0]
        for db in random.sample(range(1, 16), 15):
            url = f"{base}/{db}"
            if redis.Redis.from_url(url).dbsize() == 0:
                yield url
                return
        pytest.fail("no empty Redis database to test FLUSHDB in, and no redis-server binary")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis-flush"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/3"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _db(url: str) -> int:
    return int(url.rsplit("/", 1)[1])


def test_flush_database_refuses_without_allow_flush_or_for_another_db(flushable):
    client = redis.Redis.from_url(flushable)
    client.set("keep-me", "1")
    try:
        for allow in (False, None, "true", 1):
            with pytest.raises(ResponderError) as err:
                actions.flush_database(flushable, _db(flushable), allow)
            assert err.value.code is ErrorCode.REFUSED
        with pytest.raises(ResponderError) as err:
            actions.flush_database(flushable, _db(flushable) + 1, allow_flush=True)
        assert err.value.code is ErrorCode.REFUSED and f"selects db {_db(flushable)}" in err.value.message
        dry = actions.flush_database(flushable, _db(flushable), allow_flush=True, dry_run=True)
        assert dry.status == "would_do" and "(1 keys)" in dry.detail
        assert client.get("keep-me") == b"1"
    finally:
        client.delete("keep-me")


def test_flush_database_empties_only_its_database(flushable):
    neighbour_url = flushable.rsplit("/", 1)[0] + f"/{_db(flushable) - 1}"
    client, neighbour = redis.Redis.from_url(flushable), redis.Redis.from_url(neighbour_url)
    marker = f"responder-act-{uuid.uuid4().hex[:8]}"
    client.mset({f"{marker}:{i}": i for i in range(5)})
    neighbour.set(marker, "stays")
    try:
        outcome = actions.flush_database(flushable, _db(flushable), allow_flush=True)
        assert outcome.status == "done" and outcome.changes == [f"flushed redis db {_db(flushable)} (5 keys)"]
        assert client.dbsize() == 0
        assert neighbour.get(marker) == b"stays"
        again = actions.flush_database(flushable, _db(flushable), allow_flush=True)
        assert again.status == "not_needed"
    finally:
        neighbour.delete(marker)
