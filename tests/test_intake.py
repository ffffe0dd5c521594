"""The intake's answers to bad input, over real HTTP to the real `responder up`, with its store on
a real PostgreSQL database (so "cannot store" can be produced for real: the database stops
accepting connections)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import datetime, timezone

import httpx
import psycopg
import pytest

from core.settings import ResponderSettings
from core.store import StoreUnavailable
from responder.runtime import through_store_outages
from support.alerts import load_fixture
from support.prefect import report, wait_run_final
from support.responder import make_config, running_responder
from support.common import HTTP, wait_for


@pytest.fixture(scope="module")
def store_db(postgres_url):
    name = f"responder_intake_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_url.rpartition("/")[0]
    yield name, f"{base}/{name}", postgres_url
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def responder(prefect_server, tmp_path_factory, store_db):
    tmp = tmp_path_factory.mktemp("intake")
    config = make_config(tmp, thresholds={"high-cpu-usage": {"cpu_percent": 100}},
                         runbook_overrides={"high-cpu-usage": {"verify": {"budget_seconds": 5, "interval_seconds": 1}}})
    with running_responder(tmp, prefect_server.api_url, config, RESPONDER_DATABASE_URL=store_db[1]) as proc:
        yield proc


def test_missing_or_wrong_token_is_401(responder):
    body = load_fixture("high_cpu_firing.json")
    assert HTTP.post(f"{responder.url}/alerts", json=body).status_code == 401
    wrong = responder.post(body, token="not-the-token")
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"


def test_body_over_the_limit_is_413(responder):
    big = load_fixture("high_cpu_firing.json")
    big["commonAnnotations"]["description"] = "x" * (1024 * 1024 + 10)
    answer = responder.post(big)
    assert answer.status_code == 413 and "larger than" in answer.json()["detail"]


def test_not_json_is_422(responder):
    answer = responder.post(None, raw=b"{not json")
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["field"] == "(body)" and "not JSON" in answer.json()["detail"][0]["error"]


@pytest.mark.parametrize("raw, error", [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),          # 400 KB, under the 1 MiB limit
    (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    (b'{"version": "4", "groupKey": "\\ud800"}', "lone surrogate"),
    (b'{"version": "4", "groupKey": "\\ud83d\\ude00 \\uDFFF"}', "lone surrogate"),  # a pair, then a lone one
    ('{"version": "4", "groupKey": "\\ud800"}'.encode("utf-16"), "lone surrogate"),  # UTF-16: zero bytes
    (b'{"version": "4", "truncatedAlerts": NaN}', "NaN is not JSON"),
    (b'{"version": "4", "truncatedAlerts": -Infinity}', "-Infinity is not JSON"),
    (b'{"version": "4", "truncatedAlerts": 1e999}', "too large for a double"),
    (b'{"version": "4", "truncatedAlerts": ' + b"9" * 5000 + b"}", "not JSON this responder can keep"),
    (b'{"version": "4", "version": "3"}', "the key 'version' appears twice"),
    (b'{"version": "4", "groupKey": "a\\u0000b"}', "NUL character"),  # PostgreSQL's text cannot keep it
    (b"\xff\xfe{}", "not JSON"),
])
def test_hostile_json_is_422_never_500(responder, raw, error):
    """Bodies Python's JSON parser chokes on or that no database could store: a 4xx (Alertmanager
    does not retry those), never a 500 (which it would retry forever)."""
    answer = responder.post(None, raw=raw)
    assert answer.status_code == 422, answer.text[:300]
    assert error in answer.json()["detail"][0]["error"]
    assert responder.post(load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6])).status_code == 200


@pytest.mark.parametrize("headers, status, says", [
    ({"content-encoding": "gzip"}, 415, "Content-Encoding 'gzip' is not supported"),
    ({"content-type": "text/html"}, 415, "Content-Type 'text/html' is not supported"),
    ({"content-type": "application/json; charset=utf-8"}, 200, None),
])
def test_encodings_the_intake_does_not_read_are_415(responder, headers, status, says):
    body = json.dumps(load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6])).encode()
    answer = HTTP.post(f"{responder.url}/alerts", content=body, timeout=30,
                        headers={"Authorization": f"Bearer {responder.token}", **headers})
    assert answer.status_code == status, answer.text
    if says:
        assert says in answer.json()["detail"]


def test_other_methods_are_405_and_a_bad_acknowledgement_is_422(responder):
    auth = {"Authorization": f"Bearer {responder.token}"}
    assert HTTP.get(f"{responder.url}/alerts", headers=auth).status_code == 405
    assert HTTP.put(f"{responder.url}/alerts", headers=auth, content=b"{}").status_code == 405
    for raw in (b"[1, 2]", b'{"by": ["a"]}', b'{"by": "a", "by": "b"}', b"\xff"):
        answer = HTTP.post(f"{responder.url}/incidents/no-such-incident/ack", content=raw, headers=auth, timeout=10)
        assert answer.status_code == 422, (raw, answer.text)
    too_big = HTTP.post(f"{responder.url}/incidents/x/ack", content=b" " * (1024 * 1024 + 10), headers=auth, timeout=10)
    assert too_big.status_code == 413
    assert HTTP.post(f"{responder.url}/incidents/no-such-incident/ack", json={"by": "me"}, headers=auth).status_code == 404


def test_a_cut_group_is_stored_and_its_incident_says_so(responder, store_db):
    body = load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6])
    body["truncatedAlerts"] = 12
    answer = responder.post(body)
    assert answer.status_code == 200, answer.text
    incident_id = answer.json()["incidents_opened"][0]
    for _ in range(2):  # the same cut group re-sent: said once
        assert responder.post(body).status_code == 200
    with psycopg.connect(store_db[1]) as conn:
        said = conn.execute("SELECT text FROM timeline WHERE incident_id = %s AND kind = 'truncated'",
                            (incident_id,)).fetchall()
    assert [row[0][:57] for row in said] == ["Alertmanager cut this group: 12 more alert(s) were not se"]


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda b: b["alerts"][0].pop("fingerprint"), "alerts.0.fingerprint"),
        (lambda b: b["alerts"][0].update(startsAt="yesterday"), "alerts.0.startsAt"),
        (lambda b: b["alerts"][0]["labels"].pop("alertname"), "alerts.0.labels"),
        (lambda b: b.update(version="3"), "version"),
        (lambda b: b.update(alerts=[]), "alerts"),
        (lambda b: b["alerts"][0].update(status="exploded"), "alerts.0.status"),
    ],
)
def test_wrong_shape_is_422_naming_the_field(responder, mutate, field):
    body = load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6])
    mutate(body)
    answer = responder.post(body)
    assert answer.status_code == 422, answer.text
    assert field in [d["field"] for d in answer.json()["detail"]], answer.json()


def test_a_rejected_body_stores_nothing(responder, store_db):
    body = load_fixture("high_error_rate_group.json", unique=uuid.uuid4().hex[:6])
    body["alerts"][2].pop("fingerprint")  # the third alert of the group is malformed
    assert responder.post(body).status_code == 422
    with psycopg.connect(store_db[1]) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM alerts WHERE group_key = %s", (body["groupKey"],)).fetchone()[0]
        receipts = conn.execute("SELECT COUNT(*) FROM receipts WHERE group_key = %s", (body["groupKey"],)).fetchone()[0]
    assert (stored, receipts) == (0, 0)


def test_unreachable_store_is_503_and_the_retry_is_stored_once(responder, store_db, prefect_server):
    name, url, admin = store_db
    body = load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6])
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        refused = responder.post(body)
        assert refused.status_code == 503, refused.text
        assert refused.headers.get("retry-after")
        assert HTTP.get(f"{responder.url}/healthz").status_code == 503
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    accepted = responder.post(body)  # what Alertmanager does after a 503
    assert accepted.status_code == 200, accepted.text
    [incident_id] = accepted.json()["incidents_opened"]
    assert wait_run_final(prefect_server.api_url, incident_id)["state"]["name"] == "Resolved"
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM alerts WHERE fingerprint = %s",
                            (body["alerts"][0]["fingerprint"],)).fetchone()[0]
    assert rows == 1


def test_unrouted_alert_is_stored_and_answered_200(responder, store_db):
    body = load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6])
    body["alerts"][0]["labels"]["alertname"] = "SomethingNoRunbookKnows"
    answer = responder.post(body)
    assert answer.status_code == 200 and answer.json()["unrouted"] == 1
    with psycopg.connect(store_db[1]) as conn:
        row = conn.execute("SELECT alertname, incident_id FROM alerts WHERE fingerprint = %s",
                           (body["alerts"][0]["fingerprint"],)).fetchone()
    assert row == ("SomethingNoRunbookKnows", None)


def test_a_stream_of_unrouted_alerts_is_delivered_in_few_passes_and_settled_at_once(responder, store_db):
    """Alerts that no runbook routes, posted one after the other, reach Prefect gathered (a delivery pass
    after one of only such alerts waits for more): 40 posts, far fewer passes (each pass marks its events
    with one timestamp). Having nothing to follow up, they are marked followed up when delivered."""
    tag = uuid.uuid4().hex[:8]
    for n in range(40):
        body = load_fixture("high_cpu_firing.json", unique=f"{tag}x{n}")
        body["alerts"][0]["labels"]["alertname"] = "SomethingNoRunbookKnows"
        assert responder.post(body).status_code == 200

    def delivered():
        with psycopg.connect(store_db[1]) as conn:
            rows = conn.execute("SELECT delivered_at, followed_up_at FROM outbox WHERE kind = 'alerts.unrouted' "
                                "AND body LIKE %s", (f"%{tag}x%",)).fetchall()
        return rows if len(rows) == 40 and all(d is not None for d, _ in rows) else None

    rows = wait_for(delivered, timeout=30)
    passes = {d for d, _ in rows}
    assert len(passes) <= 12, f"{len(passes)} delivery passes for 40 unrouted posts"
    assert all(followed == d for d, followed in rows)


def test_metrics_are_prometheus_text(responder):
    """The answers the intake gave are counted by status code (this test makes a 401 and a 422 itself)."""
    assert responder.post(load_fixture("high_cpu_firing.json"), token="not-the-token").status_code == 401
    assert responder.post(None, raw=b"{not json").status_code == 422
    response = HTTP.get(f"{responder.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    codes = {line.split('"')[1] for line in response.text.splitlines() if line.startswith("responder_intake_requests_total{")}
    assert {"401", "422"} <= codes, codes


def test_alert_text_is_data_never_sql_or_shell(responder, store_db, prefect_server):
    """Labels and annotations full of SQL and shell syntax are stored verbatim (bound parameters) and the
    runbook run treats them as data: it completes, and the configured targets select nothing from them.
    The instance is no machine's name, so nothing is measured and the incident escalates saying so."""
    body = load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6])
    nasty = {"service": "x'; DROP TABLE incidents; --", "instance": "$(touch /tmp/pwned-responder)",
             "datname": "\"; DELETE FROM alerts; --", "job": "`reboot`"}
    body["alerts"][0]["labels"].update(nasty)
    body["alerts"][0]["annotations"]["description"] = "'; TRUNCATE outbox; --"
    answer = responder.post(body)
    assert answer.status_code == 200, answer.text
    [incident_id] = answer.json()["incidents_opened"]
    assert wait_run_final(prefect_server.api_url, incident_id)["state"]["name"] == "Escalated"
    assert "'$(touch /tmp/pwned-responder)' is not a host name or address" in report(prefect_server.api_url, incident_id)
    with psycopg.connect(store_db[1]) as conn:
        labels, annotations = conn.execute("SELECT labels, annotations FROM alerts WHERE fingerprint = %s",
                                           (body["alerts"][0]["fingerprint"],)).fetchone()
        assert conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0] >= 1
    stored = json.loads(labels)
    assert {k: stored[k] for k in nasty} == nasty
    assert json.loads(annotations)["description"] == "'; TRUNCATE outbox; --"
    import os

    assert not os.path.exists("/tmp/pwned-responder")


def test_connections_cut_by_the_server_are_replaced_in_every_thread(postgres_url):
    """PostgreSQL cuts every connection (restart, pg_terminate_backend). The intake's worker threads
    each keep one: after one thread has met a cut connection, the others check theirs before use,
    so the intake answers 503 once, not once per worker thread."""
    import queue
    import threading

    from core.store import PostgresStore, StoreUnavailable
    from support.databases import temporary_database

    class Worker:  # a long-lived thread, like the intake's worker threads, that keeps its connection
        def __init__(self) -> None:
            self.jobs: queue.Queue = queue.Queue()
            threading.Thread(target=self._loop, daemon=True).start()

        def _loop(self) -> None:
            while True:
                fn, answer = self.jobs.get()
                try:
                    answer.put(fn())
                except Exception as exc:
                    answer.put(exc)

        def call(self, fn):
            answer: queue.Queue = queue.Queue()
            self.jobs.put((fn, answer))
            return answer.get(timeout=30)

    with temporary_database(postgres_url, "responder_cut") as url:
        store = PostgresStore(url)
        store.migrate()
        first, second = Worker(), Worker()
        assert first.call(store.pending_followups) == [] and second.call(store.pending_followups) == []
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            cut = admin.execute("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %s) AS t", (url.rpartition("/")[2],)).fetchone()[0]
        assert cut >= 2
        assert isinstance(first.call(store.pending_followups), StoreUnavailable)  # the one 503
        assert second.call(store.pending_followups) == []  # checked its connection and reconnected
        assert first.call(store.pending_followups) == []


# -- a corpus of mutated bodies --------------------------------------------------------------------


def _mutations(rng: random.Random, base: dict) -> bytes:
    """One mutated body: structure changes (keys dropped, values of other types, deep nesting, odd
    numbers) and byte-level damage (flips, cuts, insertions) of a valid Alertmanager body."""
    body = json.loads(json.dumps(base))
    alert = body["alerts"][0]
    oddities: list = [None, True, -1, 0, 2**63, 1.5, "", "x" * 5000, [], {}, [[[[]]]], "\ud7ff", "ÿ\u0000", "1e309"]
    kind = rng.randrange(9)
    if kind == 0:
        body.pop(rng.choice(list(body)))
    elif kind == 1:
        alert.pop(rng.choice(list(alert)))
    elif kind == 2:
        body[rng.choice(list(body))] = rng.choice(oddities)
    elif kind == 3:
        alert[rng.choice(list(alert))] = rng.choice(oddities)
    elif kind == 4:
        alert["labels"][rng.choice(["alertname", "severity", "instance", "x" * 300])] = rng.choice(oddities)
    elif kind == 5:
        body["alerts"] = [alert] * rng.randrange(0, 120)
    raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()
    if kind == 6:
        for _ in range(rng.randrange(1, 8)):
            at = rng.randrange(len(raw))
            raw = raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1:]
    elif kind == 7:
        raw = raw[: rng.randrange(len(raw))]
    elif kind == 8:
        at = rng.randrange(len(raw))
        raw = raw[:at] + rng.choice([b"NaN", b"1e999", b"[" * 3000, b'"\\ud800"', b"\xef\xbb\xbf", b"\x00", b",,"]) + raw[at:]
    return raw


def test_a_corpus_of_mutated_bodies_gets_no_5xx_and_stores_exactly_what_it_accepted(responder, store_db, prefect_server):
    """2,000 bodies generated from valid ones by a seeded mutator, posted to the real intake: each gets a
    2xx or a 4xx (never a 5xx; a 503 would be allowed but the store is up), the store holds exactly the
    alert episodes of the accepted ones, and a valid alert afterwards still starts its run."""
    rng = random.Random(20261206)
    tag = uuid.uuid4().hex[:8]
    started = datetime.now(timezone.utc).isoformat()
    accepted: set[tuple[str, str]] = set()
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {responder.token}",
                                           "content-type": "application/json"}) as http:
        for number in range(2000):
            base = load_fixture("high_error_rate_group.json" if number % 2 else "high_cpu_firing.json",
                                unique=f"{tag}{number}")
            base["alerts"] = base["alerts"][:1]
            base["alerts"][0]["labels"]["alertname"] = f"Corpus{tag}"  # stored, routed nowhere: no runs
            raw = _mutations(rng, base)
            answer = http.post(f"{responder.url}/alerts", content=raw)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            assert answer.status_code < 500, (answer.status_code, answer.text[:300], raw[:300])
            if answer.status_code == 200:
                for alert in json.loads(raw)["alerts"]:
                    accepted.add((alert["fingerprint"], alert["startsAt"]))
    assert statuses.get(200, 0) > 200 and sum(v for k, v in statuses.items() if 400 <= k < 500) > 500, statuses
    with psycopg.connect(store_db[1]) as conn:
        rows = conn.execute("SELECT fingerprint FROM alerts WHERE received_at >= %s", (started,)).fetchall()
    assert sorted(f for (f,) in rows) == sorted(f for f, _ in accepted)  # one episode per accepted alert, no other
    valid = responder.post(load_fixture("high_cpu_firing.json", unique=uuid.uuid4().hex[:6]))
    assert valid.status_code == 200
    assert wait_run_final(prefect_server.api_url, valid.json()["incidents_opened"][0])["state"]["type"] == "COMPLETED"


@pytest.mark.parametrize("name", ["RESPONDER_SLACK_SIGNING_SECRET", "RESPONDER_PAGERDUTY_WEBHOOK_SECRET",
                                  "RESPONDER_INTAKE_TOKEN", "RESPONDER_SLACK_TOKEN"])
def test_an_empty_secret_in_the_environment_is_unset_not_a_key_anyone_can_sign_with(monkeypatch, name):
    """docker-compose's `${VAR:-}` passes an unset secret as an empty string; an empty HMAC key would verify
    signatures anyone can compute, so it must read as unset (the endpoint then refuses everything)."""
    monkeypatch.setenv(name, "  ")
    field = name.removeprefix("RESPONDER_").lower()
    assert getattr(ResponderSettings(), field) is None
    monkeypatch.setenv(name, "s3cret")
    assert getattr(ResponderSettings(), field).get_secret_value() == "s3cret"


def test_a_loop_stopped_by_a_store_outage_starts_again_instead_of_stopping_the_responder():
    """What the CI run of 2026-12-06 caught: event delivery met the outage between posting events and
    marking them delivered, and the whole responder stopped. Every loop of `responder up` now runs
    through this; the loop here is a stand-in that meets an outage twice, then finishes."""
    attempts: list[int] = []

    async def loop() -> None:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise StoreUnavailable("PostgreSQL store unreachable: OperationalError")

    asyncio.run(through_store_outages("event delivery", loop, pause=0.01))
    assert attempts == [0, 1, 2]


def test_an_alert_that_matters_cuts_the_gathering_of_unrouted_alerts_short(monkeypatch):
    """After a delivery pass of only unrouted alerts, delivery waits for more; more unrouted alerts do not end
    the wait, an alert that opens, joins or resolves an incident (or an acknowledgement) ends it at once.
    (The delivery loop's own wait, on a responder object without its services.)"""
    from core.store import IngestResult
    from responder import runtime

    monkeypatch.setattr(runtime, "UNROUTED_GATHER_SECONDS", 60.0)
    responder = runtime.Responder.__new__(runtime.Responder)

    async def gathering_ended_by(result: IngestResult | None) -> bool:
        responder._deliver_wake, responder._deliver_urgent = asyncio.Event(), asyncio.Event()
        gathering = asyncio.ensure_future(responder._gather_unrouted())
        responder.after_ingest(IngestResult("more", unrouted=3))
        await asyncio.sleep(0.2)
        assert not gathering.done() and responder._deliver_wake.is_set()
        if result is None:
            responder.wake_delivery()
        else:
            responder.after_ingest(result)
        try:
            await asyncio.wait_for(gathering, 2)
        except asyncio.TimeoutError:
            return False
        return True

    async def scenario() -> None:
        assert await gathering_ended_by(IngestResult("opens", new_firing=1, incidents_opened=["i1"],
                                                     runbooks_opened=["high-cpu-usage"]))
        assert await gathering_ended_by(IngestResult("joins", new_firing=2))
        assert await gathering_ended_by(IngestResult("resolves", resolved=1))
        assert await gathering_ended_by(None)  # an acknowledgement
        assert not await gathering_ended_by(IngestResult("repeats", duplicates=4, unrouted=1))

    asyncio.run(scenario())


def test_the_alerts_fast_path_answers_an_unexpected_error_503_and_leaves_the_rest_to_fastapi():
    """``AlertsFirst`` serves POST /alerts itself: a handler that raises is answered 503 with Retry-After
    (Alertmanager retries), never a 500; any other path or method goes through FastAPI. In-process, through
    httpx's ASGI transport."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from responder.intake import AlertsFirst

    inner = FastAPI()

    @inner.post("/alerts")
    async def never_called():
        return JSONResponse({"via": "fastapi"})

    @inner.get("/healthz")
    async def healthz():
        return JSONResponse({"via": "fastapi"})

    async def broken(request):
        raise RuntimeError("a bug")

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=AlertsFirst(inner, broken))
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
            answer = await client.post("/alerts", json={})
            assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
            assert "unexpected error" in answer.json()["detail"]
            assert (await client.get("/healthz")).json() == {"via": "fastapi"}
            assert (await client.get("/alerts")).status_code == 405  # FastAPI's answer to another method

    asyncio.run(scenario())
