"""MongoDB probes: only the failure paths, because no MongoDB server can run on the build machine.

What is tested for real (pymongo against a TCP port where nothing listens, no mocks):

* ``ping`` reports an unreachable server as ``ok=False`` with the error in the evidence, within
  its small server-selection timeout, and never echoes the password of the URL; likewise a
  port where something listens but hangs up instead of speaking MongoDB;
* ``connections`` and ``current_ops_longer_than`` raise pymongo's ``ConnectionFailure`` (the
  transient error Prefect retries) instead of returning a result;
* a malformed URL is a ``ResponderError(CONFIG)`` without the password in it;
* argument checks of ``current_ops_longer_than``.

What stays UNTESTED here and must be checked against a real ``mongod`` before relying on it:

* ``ping``'s success path and its latency figure;
* ``connections``: reading ``serverStatus().connections`` and the current/available ratio;
* ``current_ops_longer_than``: the ``$currentOp`` pipeline, the ``microsecs_running`` filter,
  leaving out ``$currentOp`` listings (the probe's own operation), and the evidence fields;
* the mapping of authentication/authorisation failures (codes 13, 18) to
  ``ResponderError(CONFIG)`` and ``ping``'s "refused ping" branch.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pydantic import SecretStr
from pymongo.errors import ConnectionFailure

from tasks.base import ErrorCode, ResponderError
from tasks.probes import mongo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dead_url() -> SecretStr:
    return SecretStr(f"mongodb://responder:m0ngo-secret@127.0.0.1:{_free_port()}/admin")


def test_ping_unreachable_is_ok_false_with_the_error(dead_url):
    started = time.monotonic()
    result = mongo.ping(dead_url, timeout_ms=300)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3, "ping should give up after about its server-selection timeout"
    assert result.ok is False and result.value is None
    assert result.summary == "MongoDB unreachable"
    assert result.evidence["error_type"] == "ServerSelectionTimeoutError"
    assert "refused" in result.evidence["error"].lower()
    assert result.evidence["timeout_ms"] == 300
    assert "m0ngo-secret" not in result.model_dump_json()


def test_other_probes_raise_the_transient_error_when_unreachable(dead_url):
    with pytest.raises(ConnectionFailure):
        mongo.connections(dead_url, timeout_ms=200)
    with pytest.raises(ConnectionFailure):
        mongo.current_ops_longer_than(dead_url, seconds=1, timeout_ms=200)


@pytest.mark.parametrize(
    "url",
    [
        "mongo://user:pa55-secret@127.0.0.1/",  # wrong scheme: InvalidURI
        "mongodb://user:pa55-secret@127.0.0.1:notaport/",  # pymongo raises a bare ValueError
        "mongodb://user:pa55@secret@127.0.0.1/",  # unescaped "@" in the password
    ],
)
def test_malformed_url_is_a_config_error_without_the_password(url):
    with pytest.raises(ResponderError) as err:
        mongo.ping(SecretStr(url))
    assert err.value.code is ErrorCode.CONFIG
    assert "pa55" not in str(err.value) and err.value.__cause__ is None


def test_current_ops_rejects_negative_seconds(dead_url):
    with pytest.raises(ResponderError) as err:
        mongo.current_ops_longer_than(dead_url, seconds=-1)
    assert err.value.code is ErrorCode.CONFIG


def test_ping_against_a_port_that_is_not_mongodb_is_ok_false():
    """Something listens but hangs up on the handshake, like a crashed or wrong service."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    stop = threading.Event()

    def hang_up() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        result = mongo.ping(f"mongodb://127.0.0.1:{listener.getsockname()[1]}/", timeout_ms=300)
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()
    assert result.ok is False
    assert result.evidence["error_type"] == "ServerSelectionTimeoutError"
    assert "refused" not in result.evidence["error"].lower()


@pytest.mark.parametrize(
    ("op", "is_listing"),
    [
        ({"command": {"aggregate": 1, "pipeline": [{"$currentOp": {"allUsers": True}}, {"$match": {}}]}}, True),
        ({"command": {"aggregate": "books", "pipeline": [{"$match": {"user_id": 1}}]}}, False),
        ({"command": {"find": "books", "filter": {}}}, False),
        ({"command": {"aggregate": "books", "pipeline": []}}, False),
        ({}, False),
    ],
)
def test_current_ops_leaves_out_only_currentop_listings(op, is_listing):
    """Pure logic, so it runs without a server: which operations the probe treats as its own kind."""
    assert mongo._is_current_op_listing(op) is is_listing
