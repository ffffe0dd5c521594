"""MongoDB probes: only the failure paths, because no MongoDB server can run on the build machine.

What is tested for real (pymongo against a TCP port where nothing listens, no mocks):

* ``ping`` reports an unreachable server as ``ok=False`` with the error in the evidence, within
  its small server-selection timeout, and never echoes the password of the URL; likewise a
  port where something listens but hangs up instead of speaking MongoDB;
* ``connections`` and ``current_ops_longer_than`` raise pymongo's ``ConnectionFailure`` (the
  transient error Prefect retries) instead of returning a result;
* a malformed URL is a ``ResponderError(CONFIG)`` without the password in it;
* argument checks of ``current_ops_longer_than``.

What is tested on documents instead of a server: ``holders_from_current_op``, the grouping behind
``connection_holders``, on ``tests/fixtures/mongodb/current_op_all.json``. Those ``currentOp``
documents are NOT captured from a live ``mongod`` (none can run here): they are written by hand
after MongoDB's documented ``currentOp`` output (``$all: true``: active operations, idle
connections, server threads, an idle session and an idle cursor, the responder's own command
and its driver's monitoring connection), in Extended JSON loaded with ``bson.json_util``.

What stays UNTESTED here and must be checked against a real ``mongod`` before relying on it:

* ``ping``'s success path and its latency figure;
* ``connections``: reading ``serverStatus().connections`` and the current/available ratio;
* ``current_ops_longer_than``: the ``$currentOp`` pipeline, the ``microsecs_running`` filter,
  leaving out ``$currentOp`` listings (the probe's own operation), and the evidence fields;
* ``connection_holders``: the ``currentOp`` command with ``$all: true`` as a real server answers
  it (field names and which entries carry a client address are as documented, not observed);
* the mapping of authentication/authorisation failures (codes 13, 18) to
  ``ResponderError(CONFIG)`` and ``ping``'s "refused ping" branch.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from bson import json_util
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
    with pytest.raises(ConnectionFailure):
        mongo.connection_holders(dead_url, timeout_ms=200)


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


CURRENT_OP = Path(__file__).parent / "fixtures" / "mongodb" / "current_op_all.json"


def test_holders_from_current_op_groups_client_connections():
    """The grouping behind ``connection_holders``, on ``currentOp`` documents written by hand after
    MongoDB's documented output shape (NOT recorded from a live ``mongod``: none can run here).

    The fixture holds 12 client connections (two of them the responder's own), 3 server threads,
    an idle session and an idle cursor; only the 10 connections of others count.
    """
    inprog = json_util.loads(CURRENT_OP.read_text())["inprog"]
    result = mongo.holders_from_current_op(inprog, oldest=2)

    ev = result.evidence
    assert ev["total"] == 10
    assert [(g["appName"], g["host"], g["count"], g["by_op"], g["ids"]) for g in ev["groups"]] == [
        ("billing-api", "10.0.0.5", 5, {"idle": 3, "query": 1, "update": 1}, [101, 102, 103, 104, 105]),
        ("billing-api", "10.0.0.6", 2, {"idle": 2}, [111, 112]),
        ("reports-worker", "10.0.0.7", 2, {"command": 1, "idle": 1}, [121, 122]),
        ("", "10.0.0.8", 1, {"idle": 1}, [131]),
    ]
    assert ev["other_groups"] == {"groups": 0, "connections": 0}

    # The longest-running operations, never the responder's own currentOp or its monitoring hello.
    assert [(o["opid"], o["connectionId"], o["secs_running"]) for o in ev["oldest"]] == [
        (48102, 121, 120.53), (48213, 101, 42.119)]
    aggregate = ev["oldest"][0]
    assert (aggregate["client"], aggregate["op"], aggregate["ns"], aggregate["planSummary"]) == (
        "10.0.0.7:33002", "command", "autoauthor.orders", "COLLSCAN")
    assert aggregate["command"].startswith("{'aggregate': 'orders', 'pipeline': [")
    assert "lsid" not in aggregate["command"] and "$db" not in aggregate["command"]
    assert result.value == 120.53 and result.ok is True and result.unit == "s"

    assert result.summary == (
        "10 client connections: 5 app=billing-api from 10.0.0.5 (idle 3, query 1, update 1) conns 101, 102, 103,"
        " 104, 105; 2 app=billing-api from 10.0.0.6 (idle 2) conns 111, 112; 2 app=reports-worker from 10.0.0.7"
        " (command 1, idle 1) conns 121, 122; 1 app=(none) from 10.0.0.8 (idle 1) conns 131;"
        " longest running: opid 48102 on conn 121 (command autoauthor.orders, 120.53 s)"
    )
    assert json.loads(json.dumps(ev)) == ev  # evidence is plain JSON: no BSON types left in it

    capped = mongo.holders_from_current_op(inprog, groups=2)
    assert len(capped.evidence["groups"]) == 2
    assert capped.evidence["other_groups"] == {"groups": 2, "connections": 3}
    assert mongo.holders_from_current_op(inprog, own_app=None).evidence["total"] == 12


def test_holders_from_current_op_handles_mongos_and_hides_credentials():
    """Hand-written entries (no server here): mongos reports the client as ``client_s`` and no
    ``connectionId``; an authentication in progress must not put its payload into evidence."""
    ops = [
        {"type": "op", "desc": "conn7", "client_s": "[2001:db8::5]:50210", "appName": "api", "active": True,
         "opid": "shard01:4411", "microsecs_running": 2_500_000, "op": "command", "ns": "admin.$cmd",
         "command": {"saslContinue": 1, "conversationId": 1, "payload": b"c=biws,r=secret-nonce,p=proof"}},
        {"type": "op", "desc": "conn8", "client_s": "[2001:db8::5]:50212", "appName": "api", "active": False},
    ]
    result = mongo.holders_from_current_op(ops)
    [group] = result.evidence["groups"]
    assert (group["host"], group["count"], group["ids"], group["by_op"]) == ("2001:db8::5", 2, [7, 8],
                                                                             {"command": 1, "idle": 1})
    [op] = result.evidence["oldest"]
    assert op["command"] == "{'saslContinue': <redacted>}" and "secret" not in result.model_dump_json()


def test_connection_holders_rejects_nonsense_limits(dead_url):
    for bad in ({"oldest": 0}, {"groups": 0}):
        with pytest.raises(ResponderError) as err:
            mongo.connection_holders(dead_url, **bad)
        assert err.value.code is ErrorCode.CONFIG
