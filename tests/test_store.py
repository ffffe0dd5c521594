"""The store's schema versions and its event records: in-process, on real SQLite files and a real PostgreSQL.

A store written by the layout before versioning (tables, no ``schema_version``, Prefect events in the
outbox) is built here with that layout's own statements and a row as it wrote them.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from core.alerts import AlertmanagerPayload, Route
from core.store import LATEST_VERSION, SchemaError, open_store
from core.store.messages import new_message
from core.store.schema import LAYOUT_1
from responder.events import UNROUTED_PER_PASS, prefect_event, prefect_events
from responder.leases import HOST, known_dead
from support.alerts import alert_body
from support.common import wait_for

ROOT = Path(__file__).resolve().parents[1]

# An outbox row as layout 1 wrote it: a Prefect event, opening an incident.
LAYOUT_1_EVENT = {
    "id": "5b0f5a52-6a1c-4c43-9d0e-4f1e2bb0a001",
    "occurred": "2026-12-05T10:00:00+00:00",
    "event": "responder.alert.firing",
    "resource": {"prefect.resource.id": "responder.incident.inc-1", "prefect.resource.name": "high-cpu-usage: CPU",
                 "responder.runbook": "high-cpu-usage", "responder.severity": "warning",
                 "responder.alertname": "HIGH_CPU_USAGE", "responder.opens": "true"},
    "related": [{"prefect.resource.id": "responder.alert.abc", "prefect.resource.role": "alert",
                 "prefect.resource.name": "HIGH_CPU_USAGE"}],
    "payload": {"alert": {"labels": {"alertname": "HIGH_CPU_USAGE"}, "fingerprint": "abc"},
                "incident": {"id": "inc-1", "runbook": "high-cpu-usage", "group_key": "g", "severity": "warning"},
                "group_key": "g", "group_labels": {}, "external_url": "", "truncated_alerts": 0},
}


def _layout_1_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    for statement in LAYOUT_1:
        conn.execute(statement)
    conn.execute("INSERT INTO incidents (id, runbook, group_key, severity, title, status, opened_at) "
                 "VALUES ('inc-1', 'high-cpu-usage', 'g', 'warning', 'CPU', 'open', '2026-12-05T10:00:00+00:00')")
    conn.execute("INSERT INTO outbox (id, seq, created_at, kind, body) VALUES (?, 1, ?, 'alert.firing', ?)",
                 (LAYOUT_1_EVENT["id"], LAYOUT_1_EVENT["occurred"], json.dumps(LAYOUT_1_EVENT)))
    conn.commit()
    conn.close()


def test_a_store_of_the_previous_layout_is_migrated_and_its_pending_event_is_sent_unchanged(tmp_path):
    path = tmp_path / "responder.db"
    _layout_1_sqlite(path)
    store = open_store(None, path)
    assert store.migrate() == LATEST_VERSION  # already migrated by open_store: the second open changes nothing
    with sqlite3.connect(path) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, LATEST_VERSION + 1))
    assert store.incident("inc-1").title == "CPU"  # rows kept
    [record] = store.pending_events()
    assert prefect_event(record) == LAYOUT_1_EVENT  # delivered exactly as the old layout would have
    store.mark_delivered([record["id"]])
    [follow_up] = store.pending_followups()
    assert (follow_up["kind"], follow_up["incident"]["id"], follow_up["opens"]) == ("alert.firing", "inc-1", True)


def test_a_newer_store_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "responder.db"
    open_store(None, path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'from the future', '2027-01-01')", (LATEST_VERSION + 1,))
    before = path.read_bytes()
    with pytest.raises(SchemaError, match=rf"schema version {LATEST_VERSION + 1}, newer than this responder knows "
                                          rf"\({LATEST_VERSION}\).*Nothing was changed"):
        open_store(None, path)
    assert path.read_bytes() == before
    # `responder up` stops before starting anything, naming the store and the versions.
    env = {**os.environ, "RESPONDER_HOME": str(tmp_path), "RESPONDER_CONFIG_DIR": str(ROOT / "config")}
    env.pop("RESPONDER_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "responder.cli", "up"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert f"cannot open the alert store: SQLite store {path} has schema version {LATEST_VERSION + 1}" in done.stderr


def test_postgresql_previous_layout_migrates_once_and_newer_is_refused(fresh_database):
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for statement in LAYOUT_1:
            conn.execute(statement)
        conn.execute("INSERT INTO outbox (id, seq, created_at, kind, body) VALUES (%s, 1, %s, 'alert.firing', %s)",
                     (LAYOUT_1_EVENT["id"], LAYOUT_1_EVENT["occurred"], json.dumps(LAYOUT_1_EVENT)))
    first, second = open_store(fresh_database, Path("/nonexistent")), open_store(fresh_database, Path("/nonexistent"))
    assert second.migrate() == LATEST_VERSION
    assert [prefect_event(r) for r in first.pending_events()] == [LAYOUT_1_EVENT]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == LATEST_VERSION
        conn.execute("INSERT INTO schema_version VALUES (%s, 'from the future', '2027-01-01')", (LATEST_VERSION + 1,))
    with pytest.raises(SchemaError, match="PostgreSQL store"):
        open_store(fresh_database, Path("/nonexistent"))


def test_routing_is_the_callers_and_the_event_shape_is_prefects(tmp_path):
    store = open_store(None, tmp_path / "responder.db")
    body = alert_body("HIGH_CPU_USAGE", "store")
    body["alerts"][0]["fingerprint"] = "f1"
    body["alerts"].append(alert_body("NoRunbookForThis", "store")["alerts"][0])
    body["alerts"][1]["fingerprint"] = "f2"
    payload = AlertmanagerPayload.model_validate(body)
    result = store.ingest(payload, json.dumps(body).encode(), {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")})
    assert (result.new_firing, result.unrouted, result.runbooks_opened) == (1, 1, ["high-cpu-usage"])
    firing, unrouted = [prefect_event(r) for r in store.pending_events()]
    incident_id = result.incidents_opened[0]
    assert firing["event"] == "responder.alert.firing"
    assert firing["resource"]["prefect.resource.id"] == f"responder.incident.{incident_id}"
    assert firing["resource"]["responder.alertname"] == "HIGH_CPU_USAGE" and firing["resource"]["responder.opens"] == "true"
    assert firing["payload"]["incident"] == {"id": incident_id, "runbook": "high-cpu-usage", "group_key": body["groupKey"],
                                             "severity": "warning"}
    assert firing["payload"]["alert"]["fingerprint"] == "f1"
    assert unrouted["event"] == "responder.alerts.unrouted" and unrouted["payload"]["incident"] is None
    assert unrouted["payload"]["count"] == 1 and [a["fingerprint"] for a in unrouted["payload"]["alerts"]] == ["f2"]
    assert unrouted["resource"]["prefect.resource.id"].startswith("responder.alert-group.")
    assert unrouted["resource"]["responder.alertname"] == "NoRunbookForThis"
    assert [r["prefect.resource.id"] for r in unrouted["related"]] == ["responder.alert.f2"]
    store.close_incident(incident_id, "test")
    closed = prefect_event(store.pending_events()[-1])
    assert closed["event"] == "responder.incident.closed" and closed["payload"]["close_reason"] == "test"
    assert closed["payload"]["status"] == "closed" and closed["payload"]["incident"]["id"] == incident_id


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_group_commit_stores_each_body_or_none_of_it(tmp_path, backend, request):
    """The intake's group commit: bodies share one transaction, each all-or-nothing on its own."""
    url = request.getfixturevalue("fresh_database") if backend == "postgresql" else None
    store = open_store(url, tmp_path / "responder.db")
    good = [alert_body("HIGH_CPU_USAGE", f"batch-{i}") for i in range(2)]
    bad = alert_body("BrokenRoute", "batch-bad")  # routed to a runbook with no name: its incident cannot be stored
    bodies = [good[0], bad, good[1]]
    routes = {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning"), "BrokenRoute": Route(None, "warning")}
    results = store.ingest_many([(AlertmanagerPayload.model_validate(b), json.dumps(b).encode(), routes)
                                 for b in bodies])
    assert [type(r).__name__ for r in results] == ["IngestResult", "IntegrityError" if backend == "sqlite"
                                                   else "NotNullViolation", "IngestResult"]
    assert {i.group_key for i in store.incidents()} == {good[0]["groupKey"], good[1]["groupKey"]}
    kinds = [record["kind"] for record in store.pending_events()]
    assert kinds == ["alert.firing", "alert.firing"]  # nothing of the failed body reached the outbox


def test_a_write_that_must_not_wait_says_so_when_the_lock_is_held_and_writes_nothing(tmp_path, fresh_database):
    """The intake writes small batches on its event loop only when SQLite's write lock is free at once:
    held by another connection or by another thread of this process, a write inside ``without_waiting``
    raises StoreBusy and writes nothing, and a waiting write afterwards still waits (the busy timeout is put
    back)."""
    import threading

    from core.store import StoreBusy

    path = tmp_path / "responder.db"
    store = open_store(None, path)
    body = alert_body("HIGH_CPU_USAGE", "must-not-wait")
    item = (AlertmanagerPayload.model_validate(body), json.dumps(body).encode(),
            {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")})

    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another connection (a CLI command, say) is writing
    with pytest.raises(StoreBusy, match="another connection"), store.without_waiting():
        store.ingest_many([item])
    threading.Timer(0.3, lambda: other.execute("ROLLBACK")).start()
    with store._tx() as cur:  # a waiting write waits for it: the 30 s busy timeout is back
        assert cur.execute("PRAGMA busy_timeout").fetchone() == (30000,)

    holding, release = threading.Event(), threading.Event()

    def writer() -> None:  # another thread of this process is in a transaction
        with store._tx():
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert holding.wait(10)
    with pytest.raises(StoreBusy, match="another thread"), store.without_waiting():
        store.ingest_many([item])
    release.set()
    thread.join()
    assert store.incidents() == [] and store.pending_events() == []

    with store.without_waiting():
        [result] = store.ingest_many([item])  # the lock free: written at once
    assert result.incidents_opened and [i.id for i in store.incidents()] == result.incidents_opened

    postgres = open_store(fresh_database, tmp_path / "unused.db")
    with pytest.raises(StoreBusy, match="PostgreSQL"), postgres.without_waiting():  # each statement a round trip
        postgres.ingest_many([item])
    assert postgres.incidents() == []


def test_the_group_commit_writes_small_batches_on_its_loop_and_waits_in_a_thread_otherwise(tmp_path):
    """A lone post with the lock free is written on the loop; one that finds the lock held, or a batch of more
    alerts than ``inline_alerts``, is written by a worker thread once the lock is free: each stored once."""
    import asyncio
    import threading

    from responder.ingest import GroupCommit

    path = tmp_path / "responder.db"
    store = open_store(None, path)
    routes = {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")}

    def item(name: str, alerts: int = 1):
        body = alert_body("HIGH_CPU_USAGE", name)
        body["alerts"] = [dict(body["alerts"][0], fingerprint=f"{name}{n}") for n in range(alerts)]
        return AlertmanagerPayload.model_validate(body), json.dumps(body).encode(), routes

    async def scenario() -> None:
        commit = GroupCommit(store, inline_alerts=2)
        first = await commit.ingest(*item("lockfree"))
        assert first.new_firing == 1 and commit.inline_batches == 1

        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.5, lambda: other.execute("ROLLBACK")).start()
        held = await commit.ingest(*item("lockheld"))  # the loop was not blocked: the thread waited
        assert held.new_firing == 1 and commit.inline_batches == 1

        large = await commit.ingest(*item("threealerts", alerts=3))
        assert large.new_firing == 3 and commit.inline_batches == 1

    asyncio.run(scenario())
    stored = sqlite3.connect(path).execute("SELECT fingerprint FROM alerts ORDER BY fingerprint").fetchall()
    assert [f for (f,) in stored] == ["lockfree0", "lockheld0", "threealerts0", "threealerts1", "threealerts2"]


def test_a_write_that_must_not_wait_leaves_its_fsync_to_sync(tmp_path, monkeypatch):
    """Inside ``without_waiting`` SQLite commits without its own fsync (synchronous NORMAL); elsewhere each
    commit is fsynced (FULL). ``sync`` fsyncs the write-ahead log, and says so when the disk refuses."""
    from core.store import StoreUnavailable

    store = open_store(None, tmp_path / "responder.db")
    with store.without_waiting(), store._tx() as cur:
        assert cur.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    with store._tx() as cur:
        assert cur.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again for a write that may wait

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.sync()
    assert synced == [str(tmp_path / "responder.db-wal")]

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreUnavailable, match="fsync of responder.db-wal failed"):
        store.sync()


def test_the_group_commit_answers_a_batch_written_on_its_loop_only_after_its_fsync(tmp_path, monkeypatch):
    """A post committed on the loop (without its fsync) is answered once ``sync`` has returned, not before; when
    the fsync fails the post gets the store's error (503, so Alertmanager sends it again) and the re-send is
    stored once."""
    import asyncio
    import threading

    from core.store import StoreUnavailable
    from responder.ingest import GroupCommit

    path = tmp_path / "responder.db"
    store = open_store(None, path)
    routes = {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")}

    def item(name: str):
        body = alert_body("HIGH_CPU_USAGE", name)
        return AlertmanagerPayload.model_validate(body), json.dumps(body).encode(), routes

    disk, calls = threading.Event(), []
    real_sync = store.sync

    def slow_sync() -> None:
        calls.append("sync")
        assert disk.wait(10)
        real_sync()

    async def scenario() -> None:
        commit = GroupCommit(store)
        monkeypatch.setattr(store, "sync", slow_sync)
        post = asyncio.ensure_future(commit.ingest(*item("held")))
        await asyncio.sleep(0.3)
        assert calls == ["sync"] and not post.done()  # committed, waiting for the disk
        disk.set()
        assert (await post).new_firing == 1 and commit.inline_batches == 1

        def failing_sync() -> None:
            raise StoreUnavailable("fsync of responder.db-wal failed: [Errno 5] Input/output error")

        monkeypatch.setattr(store, "sync", failing_sync)
        unsure = item("unsure")
        with pytest.raises(StoreUnavailable, match="fsync"):
            await commit.ingest(*unsure)
        monkeypatch.setattr(store, "sync", real_sync)
        again = await commit.ingest(*unsure)  # Alertmanager's retry
        assert again.new_firing == 0 and again.duplicates == 1

    asyncio.run(scenario())
    stored = sqlite3.connect(path).execute("SELECT fingerprint FROM alerts ORDER BY fingerprint").fetchall()
    assert len(stored) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_body_reads_its_stored_alerts_once_and_writes_its_new_ones_together(tmp_path, backend, request):
    """A body's alerts are looked up in one query and its new rows written in one INSERT (pieces of 64, 4, 2
    here), and what comes later in the same body still sees what came before: a repeat is a duplicate, a
    resolve of an alert that fired earlier in it closes the incident, and a firing alert after that close
    opens a new incident."""
    url = request.getfixturevalue("fresh_database") if backend == "postgresql" else None
    store = open_store(url, tmp_path / "responder.db")
    body = alert_body("HIGH_CPU_USAGE", "one-body")
    template = body["alerts"][0]

    def alert(fingerprint: str, status: str = "firing", name: str = "HIGH_CPU_USAGE") -> dict:
        return dict(template, fingerprint=fingerprint, status=status, labels=dict(template["labels"], alertname=name))

    unrouted = [alert(f"u{n}", name="NoRunbookForThis") for n in range(70)]
    body["alerts"] = [alert("a1"), alert("a1"), alert("a2"), alert("a1", "resolved"), alert("a2", "resolved"),
                      alert("a3"), *unrouted, alert("r1", "resolved")]
    routes = {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")}
    result = store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(), routes)

    assert (result.new_firing, result.duplicates, result.resolved, result.unrouted) == (3, 1, 3, 70)
    first, second = result.incidents_opened
    assert result.incidents_closed == [first]
    assert {(i.id, i.status) for i in store.incidents()} == {(first, "closed"), (second, "open")}
    with store._tx() as cur:
        rows = store._exec(cur, "SELECT fingerprint, status, incident_id FROM alerts").fetchall()
    assert len(rows) == 74
    assert {(f, status, incident) for f, status, incident in rows if not f.startswith("u")} == {
        ("a1", "resolved", first), ("a2", "resolved", first), ("a3", "firing", second), ("r1", "resolved", None)}
    assert {(status, incident) for f, status, incident in rows if f.startswith("u")} == {("firing", None)}

    again = dict(body, alerts=[alert("a3"), unrouted[0], alert("a1", "resolved")])
    resent = store.ingest(AlertmanagerPayload.model_validate(again), json.dumps(again).encode(), routes)
    assert (resent.new_firing, resent.duplicates, resent.resolved, resent.incidents_opened) == (0, 3, 0, [])


@pytest.mark.parametrize("labels", [
    {}, {"alertname": "HIGH_CPU_USAGE", "severity": "warning", "instance": "app-1:9100"},
    {"z": "last", "a": "first", "ü": "é\n\"quoted\"\t\u2028", "emoji": "\U0001F525", "back\\slash": "</script>"},
    {"lone": "\ud800 surrogate"},  # orjson refuses it: the json module writes it
    {"not": 1, "all": ["strings"]},  # never from a validated alert
])
def test_labels_are_stored_as_json_with_sorted_keys_that_reads_back_the_same(labels):
    """The store writes labels and annotations with orjson: JSON text whose keys are in order and which the
    json module (every reader's) parses back to the same map, also for what orjson refuses."""
    from core.store.episodes import _labels_json

    text = _labels_json(labels)
    assert json.loads(text) == labels
    assert list(json.loads(text)) == sorted(labels)


def test_retention_deletes_only_history(tmp_path):
    """Raw bodies and delivered, followed-up events older than the cut go; a waiting event stays, however old."""
    from datetime import datetime, timedelta, timezone

    store = open_store(None, tmp_path / "responder.db")
    body = alert_body("HIGH_CPU_USAGE", "retention")
    result = store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(),
                          {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")})
    store.close_incident(result.incidents_opened[0], "test")
    firing, closed = store.pending_events()
    store.mark_delivered([firing["id"], closed["id"]], settled=[firing["id"]])  # nothing to follow up for the firing
    assert [r["id"] for r in store.pending_followups()] == [closed["id"]]  # the close event is not yet followed up
    store.put_result("step-1", b"a step's result record")
    delivered, waiting = (new_message(None, "webhook", "t", "scheduled-check", {"n": n}) for n in (1, 2))
    store.enqueue_messages([delivered, waiting])
    store.finish_message(delivered["id"], "sent", "delivered")
    assert store.prune(datetime.now(timezone.utc) - timedelta(days=1)) == {"receipts": 0, "events": 0, "step_results": 0,
                                                                           "messages": 0}
    assert store.get_result("step-1") == b"a step's result record"
    assert store.prune(datetime.now(timezone.utc) + timedelta(seconds=1)) == {"receipts": 1, "events": 1,
                                                                              "step_results": 1, "messages": 1}
    assert [m.id for m in store.waiting_messages()] == [waiting["id"]]  # a message still waiting is kept
    assert store.get_result("step-1") is None
    assert [r["id"] for r in store.pending_followups()] == [closed["id"]]
    assert store.incident(result.incidents_opened[0]).status == "closed"  # incidents are kept


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_lease_has_one_holder_until_it_expires_or_its_holder_is_known_dead(tmp_path, backend, request):
    """Several responders share a store: of eight taking the same lease at once exactly one wins; the
    holder renews it; once it expires (or is stolen from a holder known dead) another takes it."""
    import threading
    import time

    url = request.getfixturevalue("fresh_database") if backend == "postgresql" else None
    store = open_store(url, tmp_path / "responder.db")
    start, won = threading.Barrier(8), []

    def take(i: int) -> None:
        start.wait()
        if store.take_lease("run:1", f"host/{i}/x", 60):
            won.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1
    holder = f"host/{won[0]}/x"
    assert store.lease("run:1")[0] == holder
    assert not store.take_lease("run:1", "other/1/y", 60)
    assert store.take_lease("run:1", "other/1/y", 60, steal_from=holder)  # its holder is known dead
    assert store.renew_leases("other/1/y", 0.5) == 1
    time.sleep(0.6)
    assert store.take_lease("run:1", "third/1/z", 60)  # expired: free for a live responder
    store.release_lease("run:1", "third/1/z")
    assert store.lease("run:1") is None


def test_a_holder_on_this_host_is_known_dead_once_its_process_is_gone_or_a_zombie():
    """A killed responder whose parent has not reaped it yet (a zombie) is dead: its runs are taken over at
    once, not after its leases expire. A live process, this process and another host's are not known dead."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not known_dead(f"{HOST}/{child.pid}/x")  # alive
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 10, what="a zombie")
        assert known_dead(f"{HOST}/{child.pid}/x")  # killed, not reaped
    finally:
        child.wait(10)
    assert known_dead(f"{HOST}/{child.pid}/x")  # reaped: no such process
    assert not known_dead(f"{HOST}/{os.getpid()}/x")
    assert not known_dead(f"another-host/{child.pid}/x")  # only its lease's expiry tells


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_action_is_claimed_once_per_incident_and_target(tmp_path, backend, request):
    url = request.getfixturevalue("fresh_database") if backend == "postgresql" else None
    store = open_store(url, tmp_path / "responder.db")
    assert store.claim_action("inc-1:restart_service:app", "run-1") is None
    earlier = store.claim_action("inc-1:restart_service:app", "run-2")  # the run carried on elsewhere
    assert earlier["flow_run_id"] == "run-1" and earlier["status"] is None  # it never finished: not again
    store.finish_action("inc-1:restart_service:app", "done")
    assert store.claim_action("inc-1:restart_service:app", "run-2")["status"] == "done"
    assert store.claim_action("inc-2:restart_service:app", "run-3") is None  # another incident


def test_a_run_claims_its_incident_and_says_so_once_even_when_it_runs_again(tmp_path):
    """acknowledge's one write: the claim, its timeline lines and its messages. A second execution of the
    same run (the first killed after the claim) writes nothing again; another run writes nothing at all."""
    store = open_store(None, tmp_path / "responder.db")
    incident = store.open_manual_incident("responder-drill", "warning", "drill", "")
    with store._tx() as cur:  # a manual incident is opened with its run; this one waits for its run
        store._exec(cur, "UPDATE incidents SET flow_run_id = NULL WHERE id = %s", (incident.id,))

    def respond(run: str):
        return store.respond(incident.id, run, [("detected", "fired"), ("response", f"{run} started")],
                             [new_message(incident.id, "webhook", "t", "opened", {"run": run})])

    assert respond("run-1")[0] == "claimed"
    assert respond("run-1")[0] == "ours"
    claim, record = respond("run-2")
    assert (claim, record.flow_run_id) == ("taken", "run-1")
    assert [e["text"] for e in store.timeline(incident.id)] == ["fired", "run-1 started"]
    assert [m.body for m in store.messages(incident.id)] == [{"run": "run-1"}]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_follow_up_pass_reads_only_the_delivered_events_that_wait_for_it(tmp_path, backend, request):
    """The follow-up pass finds the delivered events not yet followed up through an index that holds
    only those (store migration 11), not by scanning every delivered row; the events it returns and
    their order are what they were."""
    url = request.getfixturevalue("fresh_database") if backend == "postgresql" else None
    store = open_store(url, tmp_path / "responder.db")
    routes = {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")}
    for name, group in (("NobodyRoutesThis", "unrouted"), ("HIGH_CPU_USAGE", "routed"), ("AlsoUnrouted", "other")):
        body = alert_body(name, group)
        store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(), routes)
    events = store.pending_events()
    assert len(events) == 3
    assert store.pending_followups() == []  # none delivered yet
    store.mark_delivered([e["id"] for e in events[:2]])
    assert [e["id"] for e in store.pending_followups()] == [e["id"] for e in events[:2]]
    store.mark_followed_up([events[0]["id"]])
    store.mark_delivered([events[2]["id"]])
    assert [e["id"] for e in store.pending_followups()] == [events[1]["id"], events[2]["id"]]
    store.mark_followed_up([events[1]["id"], events[2]["id"]])
    assert store.pending_followups() == []
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "responder.db") as conn:
            plan = conn.execute("EXPLAIN QUERY PLAN SELECT body FROM outbox WHERE delivered_at IS NOT NULL "
                                "AND followed_up_at IS NULL ORDER BY seq LIMIT 100").fetchall()
        assert "outbox_awaiting_follow_up" in str(plan), plan


def test_a_follow_up_pass_marks_its_events_in_one_go_and_keeps_what_it_could_not_do(tmp_path, monkeypatch):
    """Delivered events with no local consequence (an unrouted alert, a routed one firing) are marked
    followed up without asking Prefect; an incident's close, which needs the Prefect server (artifacts,
    releasing a waiting run), stays pending while that server cannot be reached. No Prefect server
    here: PREFECT_API_URL points at a closed port."""
    import asyncio

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from core.services import build
    from core.settings import ResponderSettings
    from flows.registry import load_catalog
    from responder.runtime import Responder
    from support.common import free_port
    from support.responder import make_config

    store = open_store(None, tmp_path / "responder.db")
    services = build(ResponderSettings(home=tmp_path / "home"), load_catalog(make_config(tmp_path)), store)
    routes = {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")}
    for name, group in (("NobodyRoutesThis", "unrouted"), ("HIGH_CPU_USAGE", "routed")):
        body = alert_body(name, group)
        store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(), routes)
    [incident] = [i.id for i in store.incidents("open")]
    store.close_incident(incident, "test")
    events = store.pending_events()
    assert sorted(e["kind"] for e in events) == ["alert.firing", "alerts.unrouted", "incident.closed"]
    store.mark_delivered([e["id"] for e in events])

    commits = []
    real_mark = store.mark_followed_up
    monkeypatch.setattr(store, "mark_followed_up", lambda ids: (commits.append(list(ids)), real_mark(ids))[1])
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        asyncio.run(Responder(services)._follow_up())
    assert [sorted(ids) for ids in commits] == [sorted(e["id"] for e in events if e["kind"] != "incident.closed")]
    assert [e["kind"] for e in store.pending_followups()] == ["incident.closed"]  # tried again on the next pass


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_incident_no_run_claimed_gets_its_opening_event_again_a_few_times(tmp_path, backend, request):
    """Prefect accepted the opening event and lost it (its in-memory messaging drops events when a consumer
    falls 10,000 behind): once delivery is idle and the grace is over, the event is queued again, with
    `opens`, at most three times and not sooner than the grace; never for an incident a run claimed."""
    from datetime import datetime, timedelta, timezone

    url = request.getfixturevalue("fresh_database") if backend == "postgresql" else None
    store = open_store(url, tmp_path / "responder.db")
    routes = {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")}
    opened = []
    for group in ("lost", "answered"):
        body = alert_body("HIGH_CPU_USAGE", group)
        opened += store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(), routes).incidents_opened
    lost, answered = opened
    assert store.respond(answered, "run-1", [("response", "run-1 started")], [])[0] == "claimed"
    now = datetime.now(timezone.utc)
    later = now + timedelta(seconds=1)  # both incidents opened before it

    assert store.resend_unanswered(later, later) == []  # their events still wait for delivery
    store.mark_delivered([e["id"] for e in store.pending_events()])
    assert store.resend_unanswered(now - timedelta(hours=1), later) == []  # within the grace
    assert store.resend_unanswered(later, later) == [lost]
    [event] = store.pending_events()
    assert (event["kind"], event["opens"], event["incident"]["id"], event["incident"]["flow_run_id"]) == \
        ("alert.firing", True, lost, None)
    assert event["alert"]["labels"]["test_id"] == "lost"
    store.mark_delivered([event["id"]])
    assert store.resend_unanswered(later, now - timedelta(seconds=1)) == []  # resent after that: not yet again
    for _ in range(2):
        store.mark_delivered([e["id"] for e in store.pending_events()])
        assert store.resend_unanswered(later, datetime.now(timezone.utc) + timedelta(seconds=1)) == [lost]
    store.mark_delivered([e["id"] for e in store.pending_events()])
    assert store.resend_unanswered(later, datetime.now(timezone.utc) + timedelta(seconds=1)) == []  # three tries
    said = [t for t in store.timeline(lost) if t["kind"] == "response-resent"]
    assert [t["text"].endswith(f"(try {n} of 3)") for n, t in enumerate(said, start=1)] == [True] * 3


def test_a_delivery_pass_rolls_up_the_unrouted_alerts_past_its_first_few_into_one_event(tmp_path):
    """Past a pass's first UNROUTED_PER_PASS records of alerts no runbook routes, one event counts the
    rest (each event costs the Prefect server about 0.5 ms of CPU; at 1,800 unrouted posts a second it
    dropped events). An opening alert keeps its event; a pass of few unrouted records is unchanged;
    the roll-up's id is the same for the same records."""
    store = open_store(None, tmp_path / "responder.db")
    routes = {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")}

    def post(name: str, group: str) -> None:
        body = alert_body(name, group)
        store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(), routes)

    for n in range(UNROUTED_PER_PASS):
        post("NobodyRoutesThis", f"few-{n}")
    few = store.pending_events()
    assert len(few) == UNROUTED_PER_PASS and prefect_events(few) == [prefect_event(record) for record in few]
    store.mark_delivered([e["id"] for e in few])

    post("NobodyRoutesThis", "storm-0")
    post("HIGH_CPU_USAGE", "routed")
    for n in range(1, 13):
        post("NorThis" if n % 2 else "NobodyRoutesThis", f"storm-{n}")
    records = store.pending_events()
    assert len(records) == 14
    events = prefect_events(records)
    assert [e["event"] for e in events] == ["responder.alerts.unrouted", "responder.alert.firing"] + \
        ["responder.alerts.unrouted"] * UNROUTED_PER_PASS
    individual = [e["id"] for e in events[:-1]]
    assert individual == [r["id"] for r in records[:UNROUTED_PER_PASS + 1]]  # in the outbox's order
    rollup = events[-1]
    rolled = records[UNROUTED_PER_PASS + 1:]
    assert rollup["id"] not in individual and rollup["id"] == prefect_events(records)[-1]["id"]
    assert rollup["payload"]["rolled_up"] == len(rolled) == 8 and rollup["payload"]["count"] == 8
    assert rollup["resource"]["prefect.resource.name"] == "8 alerts of 8 groups no runbook routes"
    assert [g["alertnames"] for g in rollup["payload"]["groups"]][:2] == [["NorThis"], ["NobodyRoutesThis"]]  # storm-5, storm-6
    assert [r["prefect.resource.id"] for r in rollup["related"]] == \
        [prefect_event(r)["resource"]["prefect.resource.id"] for r in rolled]
    assert {r["prefect.resource.role"] for r in rollup["related"]} == {"alert-group"}
    assert [a["fingerprint"] for a in rollup["payload"]["alerts"]] == [r["alerts"][0]["fingerprint"] for r in rolled]


def test_the_alerts_of_a_body_that_join_or_resolve_an_incident_or_go_unrouted_are_one_event(tmp_path):
    """A 50-alert group used to make 50 events, and a storm of such groups overflowed the Prefect server's
    in-memory messaging. The alert that opens the incident keeps its own event (the runbook's trigger
    matches it); the others of the same body are one `responder.alerts.joined` event, listing up to 20,
    the alerts of a body that resolve are one `responder.alerts.resolved` event per incident, and those
    no runbook routes one `responder.alerts.unrouted` event per body."""
    store = open_store(None, tmp_path / "responder.db")
    routes = {"HIGH_CPU_USAGE": Route("high-cpu-usage", "warning")}
    body = alert_body("HIGH_CPU_USAGE", "joined")
    first = body["alerts"][0]
    body["alerts"] = [{**first, "fingerprint": f"fp{n:02d}", "labels": {**first["labels"], "instance": f"web-{n}"}}
                      for n in range(25)]
    result = store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(), routes)
    [incident] = result.incidents_opened
    assert result.new_firing == 25
    opening, joined = (prefect_event(e) for e in store.pending_events())
    assert (opening["event"], opening["resource"]["responder.opens"]) == ("responder.alert.firing", "true")
    assert opening["payload"]["alert"]["fingerprint"] == "fp00"
    assert joined["event"] == "responder.alerts.joined"
    assert joined["resource"]["prefect.resource.id"] == f"responder.incident.{incident}"
    assert joined["payload"]["count"] == 24 and len(joined["payload"]["alerts"]) == 20  # 24 joined, 20 listed
    assert [r["prefect.resource.id"] for r in joined["related"]][:2] == ["responder.alert.fp01", "responder.alert.fp02"]
    assert joined["payload"]["incident"]["id"] == incident and joined["payload"]["group_key"] == body["groupKey"]
    store.mark_delivered([e["id"] for e in store.pending_events()])

    body["alerts"] += [{**first, "fingerprint": "fp99", "labels": {**first["labels"], "instance": "web-99"}}]
    again = store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode(), routes)
    assert (again.new_firing, again.duplicates, again.incidents_opened) == (1, 25, [])
    [grown] = [prefect_event(e) for e in store.pending_events()]  # the group re-sent as it grew: one event
    assert grown["event"] == "responder.alerts.joined" and grown["payload"]["count"] == 1
    assert grown["payload"]["alerts"][0]["fingerprint"] == "fp99"
    store.mark_delivered([e["id"] for e in store.pending_events()])

    # Resolved alerts likewise: one event per post and incident, before the close they cause.
    resolved = {**body, "status": "resolved", "alerts": [{**a, "status": "resolved"} for a in body["alerts"]]}
    some = {**resolved, "alerts": resolved["alerts"][:3]}
    assert store.ingest(AlertmanagerPayload.model_validate(some), json.dumps(some).encode(), routes).resolved == 3
    [three] = [prefect_event(e) for e in store.pending_events()]
    assert (three["event"], three["payload"]["count"]) == ("responder.alerts.resolved", 3)
    assert store.incident(incident).status == "open"
    store.mark_delivered([e["id"] for e in store.pending_events()])
    rest = store.ingest(AlertmanagerPayload.model_validate(resolved), json.dumps(resolved).encode(), routes)
    assert (rest.resolved, rest.duplicates, rest.incidents_closed) == (23, 3, [incident])
    assert [(e["event"], e["payload"].get("count")) for e in map(prefect_event, store.pending_events())] == \
        [("responder.alerts.resolved", 23), ("responder.incident.closed", None)]
    store.mark_delivered([e["id"] for e in store.pending_events()])

    # Alerts no runbook routes: one event per body, named by the group, whatever their names.
    nobody = alert_body("NobodyRoutesThis", "unrouted")
    other = alert_body("NorThis", "unrouted")["alerts"][0]
    nobody["alerts"] = [{**nobody["alerts"][0], "fingerprint": f"un{n:02d}"} for n in range(30)] + [other]
    unrouted = store.ingest(AlertmanagerPayload.model_validate(nobody), json.dumps(nobody).encode(), routes)
    assert (unrouted.unrouted, unrouted.incidents_opened) == (31, [])
    [event] = [prefect_event(e) for e in store.pending_events()]
    assert (event["event"], event["payload"]["count"], len(event["payload"]["alerts"])) == ("responder.alerts.unrouted", 31, 20)
    assert event["payload"]["incident"] is None and event["payload"]["group_key"] == nobody["groupKey"]
    assert event["resource"]["prefect.resource.name"] == "NobodyRoutesThis, NorThis"
    assert "responder.alertname" not in event["resource"]  # two names: neither is the group's


def test_row_ids_are_random_version_4_uuids_in_their_usual_text():
    import uuid
    from datetime import datetime, timedelta, timezone

    from core.store.base import iso, new_id

    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    moment = datetime(2026, 12, 7, 15, 0, 1, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert iso(moment) == "2026-12-07T13:00:01.250000+00:00" == iso(moment.astimezone(timezone.utc))


def test_outbox_json_reads_back_what_it_wrote_and_what_orjson_refuses(tmp_path):
    """The outbox's records are written by orjson, with the json module for what orjson refuses; an
    earlier release's text (json.dumps, with spaces and escapes) reads back the same."""
    from datetime import datetime, timezone

    from core.jsontext import from_json, to_json

    record = {"id": "e1", "alerts": [{"labels": {"alertname": "Disk", "note": "café ✓"}}], "count": 1,
              "at": datetime(2026, 12, 7, 15, 0, tzinfo=timezone.utc), 3: "an int key"}
    text = to_json(record)
    assert from_json(text) == json.loads(json.dumps(record, default=str))
    assert from_json(json.dumps(record, default=str)) == from_json(text)
    huge = {"n": 2 ** 70, "s": "\ud800"}  # orjson refuses both: the json module writes them
    assert to_json(huge) == json.dumps(huge, default=str)
    assert from_json(to_json(huge)) == huge
    assert from_json('{"x": NaN}')["x"] != from_json('{"x": NaN}')["x"]  # json's NaN, read back

    store = open_store(None, tmp_path / "store.db")
    incident_free = alert_body("NobodyRoutes", "jsontext", note="café")
    store.ingest(AlertmanagerPayload.model_validate(incident_free), json.dumps(incident_free).encode(), {})
    [pending] = store.pending_events()
    assert pending["kind"] == "alerts.unrouted" and pending["alerts"][0]["labels"]["note"] == "café"


def test_deferred_checkpoints_leave_the_log_to_checkpoint_and_keep_every_row(tmp_path, monkeypatch):
    """Once checkpoints are deferred, a commit no longer copies the write-ahead log at SQLite's 1,000 pages
    (its own threshold becomes the 16,000-page backstop); ``checkpoint`` copies what was written since the
    last call, nothing when nothing was, and every row reads back from a new connection. Once all of the
    log was copied, the next commit cuts its file back to what is kept (1 MiB here instead of 16)."""
    from core.store.backends import SQLiteStore

    monkeypatch.setattr(SQLiteStore, "WAL_KEPT_BYTES", 1024 * 1024)
    path = tmp_path / "responder.db"
    store = open_store(None, path)
    assert store.defer_checkpoints() is True
    with store._tx() as cur:
        assert cur.execute("PRAGMA wal_autocheckpoint").fetchone() == (SQLiteStore.DEFERRED_AUTOCHECKPOINT_PAGES,)
        page_size = cur.execute("PRAGMA page_size").fetchone()[0]
    bodies = [alert_body("NobodyRoutes", f"checkpoint-{i}") for i in range(600)]
    for body in bodies:
        store.ingest(AlertmanagerPayload.model_validate(body), json.dumps(body).encode() + b" " * 12000, {})
    log = Path(f"{path}-wal")
    assert log.stat().st_size > 2 * SQLiteStore.CHECKPOINT_PAGES * page_size  # never copied at 1,000 pages
    assert store.checkpoint() > 2 * SQLiteStore.CHECKPOINT_PAGES
    assert store.checkpoint() == 0  # nothing written since
    grown = log.stat().st_size
    last = alert_body("NobodyRoutes", "after")
    store.ingest(AlertmanagerPayload.model_validate(last), json.dumps(last).encode(), {})
    assert log.stat().st_size <= 1024 * 1024 < grown  # the log starts over, and its file is cut back
    assert store.checkpoint() > 0
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT COUNT(*) FROM receipts").fetchone()[0] == len(bodies) + 1


def test_checkpoints_on_postgresql_are_the_servers(fresh_database, tmp_path):
    store = open_store(fresh_database, tmp_path / "unused.db")
    assert store.defer_checkpoints() is False  # the responder starts no checkpointer for it
    assert store.checkpoint() == 0
