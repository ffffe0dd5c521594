"""On-call rotations (config/oncall.yaml): who is on call when, across hand-offs and DST changes, with
overrides; what a broken rotation file says at load; pages that go to whoever is on call when they are
sent (a real catalog from a temp config, the real notifier against local capture servers, a real SQLite
store, and the real pager); and `responder oncall` as a subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import SecretStr

from core.catalog import CatalogError
from flows.registry import load_catalog
from core.escalation import due_pages, next_page, send_page
from core.oncall import OncallConfig, next_change, on_call
from core.services import build
from core.settings import ResponderSettings
from core.store import open_store
from responder.pager import Pager
from support.capture import CaptureServer
from support.delivery import deliver, delivering
from support.common import BIN, ROOT
from support.responder import make_config

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")

PEOPLE = [
    {"name": "alice", "slack": "U0ALICE01", "pagerduty": "PALICE1"},
    {"name": "bob", "slack": "U0BOB0001", "discord": "123456789012345678"},
    {"name": "carol", "pagerduty": "carol@example.com"},
]


def _config(tmp_path: Path, oncall: dict, levels: dict | None = None, notify: dict | None = None) -> Path:
    """A copy of config/ with this oncall.yaml and, when given, these escalation levels in place of the shipped ones."""
    config = make_config(tmp_path, notify=notify)
    (config / "oncall.yaml").write_text(yaml.safe_dump(oncall))
    if levels is not None:
        escalation = yaml.safe_load((config / "escalation.yaml").read_text())
        escalation["levels"].update(levels)
        (config / "escalation.yaml").write_text(yaml.safe_dump(escalation))
    return config


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _who(catalog, rotation: str, at: str) -> str | None:
    person = on_call(catalog.oncall, rotation, _at(at))
    return person.name if person else None


# -- who is on call ---------------------------------------------------------------------------------


def test_a_daily_rotation_hands_off_at_local_time_across_the_spring_dst_change(tmp_path):
    """Berlin, 09:00 daily from Friday 2024-03-29; the clocks go forward on Sunday 03-31 (CET → CEST),
    so Sunday's hand-off is at 07:00 UTC, not at 08:00 UTC as 24-hour steps would have it."""
    catalog = load_catalog(_config(tmp_path, {"people": PEOPLE, "rotations": {"primary": {
        "members": ["alice", "bob", "carol"], "handoff": "daily", "at": "09:00", "timezone": "Europe/Berlin",
        "start": "2024-03-29"}}}))
    assert _who(catalog, "primary", "2024-03-29T07:59:59+00:00") is None  # before the first turn begins
    assert _who(catalog, "primary", "2024-03-29T08:00:00+00:00") == "alice"  # 09:00 CET
    assert _who(catalog, "primary", "2024-03-30T07:59:59+00:00") == "alice"
    assert _who(catalog, "primary", "2024-03-30T08:00:00+00:00") == "bob"
    assert _who(catalog, "primary", "2024-03-31T06:59:59+00:00") == "bob"
    assert _who(catalog, "primary", "2024-03-31T07:00:00+00:00") == "carol"  # 09:00 CEST
    assert _who(catalog, "primary", "2024-04-01T07:00:00+00:00") == "alice"  # the turn order starts over
    assert _who(catalog, "primary", "2024-03-31T09:00:00+02:00") == "carol"  # any offset names the same instant
    moment, person = next_change(catalog.oncall, "primary", _at("2024-03-30T12:00:00+00:00"))
    assert (moment, person.name) == (_at("2024-03-31T07:00:00+00:00"), "carol")
    moment, person = next_change(catalog.oncall, "primary", _at("2024-03-01T00:00:00+00:00"))
    assert (moment, person.name) == (_at("2024-03-29T08:00:00+00:00"), "alice")  # the beginning


def test_a_weekly_rotation_hands_off_on_its_weekday_across_the_autumn_dst_change(tmp_path):
    """New York, Mondays 09:00, first turn from Wednesday 2024-10-23 (a short one, to the first Monday);
    the clocks go back on Sunday 11-03, so the 11-04 hand-off is at 14:00 UTC where the last was at 13:00."""
    catalog = load_catalog(_config(tmp_path, {"people": PEOPLE, "rotations": {"primary": {
        "members": ["alice", "bob"], "handoff": "weekly", "weekday": "mon", "at": "09:00",
        "timezone": "America/New_York", "start": "2024-10-23"}}}))
    assert _who(catalog, "primary", "2024-10-23T12:59:00+00:00") is None
    assert _who(catalog, "primary", "2024-10-23T13:00:00+00:00") == "alice"  # Wed 09:00 EDT
    assert _who(catalog, "primary", "2024-10-28T12:59:00+00:00") == "alice"
    assert _who(catalog, "primary", "2024-10-28T13:00:00+00:00") == "bob"  # Mon 09:00 EDT
    assert _who(catalog, "primary", "2024-11-04T13:30:00+00:00") == "bob"  # 08:30 EST: a week of 168 h is not up
    assert _who(catalog, "primary", "2024-11-04T14:00:00+00:00") == "alice"  # Mon 09:00 EST
    assert _who(catalog, "primary", "2024-11-11T14:00:00+00:00") == "bob"
    moment, person = next_change(catalog.oncall, "primary", _at("2024-10-30T00:00:00+00:00"))
    assert (moment, person.name) == (_at("2024-11-04T14:00:00+00:00"), "alice")


def test_a_hand_off_at_a_time_the_clocks_skip_happens_at_the_old_offset(tmp_path):
    """02:30 does not exist in Berlin on 2024-03-31: the hand-off is 02:30 CET = 03:30 CEST (documented)."""
    catalog = load_catalog(_config(tmp_path, {"people": PEOPLE, "rotations": {"night": {
        "members": ["alice", "bob"], "handoff": "daily", "at": "02:30", "timezone": "Europe/Berlin",
        "start": "2024-03-30"}}}))
    assert _who(catalog, "night", "2024-03-31T03:29:00+02:00") == "alice"
    assert _who(catalog, "night", "2024-03-31T03:30:00+02:00") == "bob"
    assert next_change(catalog.oncall, "night", _at("2024-03-31T00:00:00+00:00"))[0] == _at("2024-03-31T01:30:00+00:00")


def test_an_override_wins_for_its_time_and_the_later_of_two_overlapping_ones_wins(tmp_path):
    catalog = load_catalog(_config(tmp_path, {
        "people": PEOPLE,
        "rotations": {
            "primary": {"members": ["alice", "bob"], "handoff": "daily", "at": "09:00", "timezone": "Europe/Berlin",
                        "start": "2024-03-29"},
            "secondary": {"members": ["bob"], "handoff": "weekly", "weekday": "mon", "timezone": "Europe/Berlin",
                          "start": "2024-03-25"},
        },
        "overrides": [
            # carol covers alice's Friday night, from outside the rotation
            {"person": "carol", "rotation": "primary", "from": "2024-03-29T18:00:00+01:00",
             "until": "2024-03-30T08:00:00+01:00"},
            # and bob takes the last two of those hours: the later entry wins where they overlap
            {"person": "bob", "rotation": "primary", "from": "2024-03-30T06:00:00+01:00",
             "until": "2024-03-30T08:00:00+01:00"},
            # an override may start before the rotation does
            {"person": "alice", "rotation": "primary", "from": "2024-03-28T00:00:00+00:00",
             "until": "2024-03-28T12:00:00+00:00"},
        ],
    }))
    assert _who(catalog, "primary", "2024-03-29T17:59:00+01:00") == "alice"
    assert _who(catalog, "primary", "2024-03-29T18:00:00+01:00") == "carol"
    assert _who(catalog, "primary", "2024-03-30T05:59:00+01:00") == "carol"
    assert _who(catalog, "primary", "2024-03-30T06:00:00+01:00") == "bob"
    assert _who(catalog, "primary", "2024-03-30T08:00:00+01:00") == "alice"  # until is exclusive: the rotation again
    assert _who(catalog, "primary", "2024-03-30T09:00:00+01:00") == "bob"  # and its own hand-off
    assert _who(catalog, "primary", "2024-03-28T06:00:00+00:00") == "alice"  # before the rotation begins
    assert _who(catalog, "primary", "2024-03-28T12:00:00+00:00") is None
    assert _who(catalog, "secondary", "2024-03-29T20:00:00+01:00") == "bob"  # overrides are per rotation
    moment, person = next_change(catalog.oncall, "primary", _at("2024-03-29T12:00:00+01:00"))
    assert (moment, person.name) == (_at("2024-03-29T18:00:00+01:00"), "carol")
    moment, person = next_change(catalog.oncall, "primary", _at("2024-03-30T07:00:00+01:00"))
    assert (moment, person.name) == (_at("2024-03-30T08:00:00+01:00"), "alice")
    assert next_change(catalog.oncall, "secondary", _at("2024-03-29T20:00:00+01:00")) is None  # one member


# -- a broken oncall.yaml or escalation level stops loading, naming what is wrong --------------------

ROTATION = {"members": ["alice", "bob"], "handoff": "daily", "at": "09:00", "timezone": "Europe/Berlin",
            "start": "2024-03-29"}


def _with(**changes) -> dict:
    return {**ROTATION, **changes}


@pytest.mark.parametrize("oncall, levels, says", [
    ({"people": PEOPLE, "rotations": {"primary": _with(members=[])}}, None,
     "oncall.yaml: rotations.primary.members: List should have at least 1 item"),
    ({"people": PEOPLE, "rotations": {"primary": _with(members=["alice", "dave"])}}, None,
     "oncall.yaml: rotations: Value error, rotation 'primary': member 'dave' is not in people (alice, bob, carol)"),
    ({"people": PEOPLE, "rotations": {"primary": ROTATION},
      "overrides": [{"person": "dave", "rotation": "primary", "from": "2024-04-01T00:00:00+00:00",
                     "until": "2024-04-02T00:00:00+00:00"}]}, None,
     "oncall.yaml: overrides: Value error, override of rotation 'primary': person 'dave' is not in people"),
    ({"people": PEOPLE, "rotations": {"primary": ROTATION},
      "overrides": [{"person": "alice", "rotation": "tertiary", "from": "2024-04-01T00:00:00+00:00",
                     "until": "2024-04-02T00:00:00+00:00"}]}, None,
     "oncall.yaml: overrides: Value error, override by 'alice': unknown rotation 'tertiary' (rotations: primary)"),
    ({"people": PEOPLE, "rotations": {"primary": ROTATION},
      "overrides": [{"person": "alice", "rotation": "primary", "from": "2024-04-02T00:00:00+00:00",
                     "until": "2024-04-02T00:00:00+00:00"}]}, None,
     "oncall.yaml: overrides.0: Value error, override of rotation 'primary' by 'alice': until "
     "(2024-04-02T00:00:00+00:00) must be after from"),
    ({"people": PEOPLE, "rotations": {"primary": ROTATION},
      "overrides": [{"person": "alice", "rotation": "primary", "from": "2024-04-01T00:00:00",
                     "until": "2024-04-02T00:00:00+00:00"}]}, None,
     "oncall.yaml: overrides.0.from: Input should have timezone info"),
    ({"people": PEOPLE, "rotations": {"primary": _with(timezone="Mars/Olympus_Mons")}}, None,
     "oncall.yaml: rotations.primary.timezone: Value error, unknown time zone 'Mars/Olympus_Mons'"),
    ({"people": PEOPLE, "rotations": {"primary": _with(at="9am")}}, None,
     "oncall.yaml: rotations.primary.at: Value error, '9am' is not a time of day as HH:MM"),
    ({"people": PEOPLE, "rotations": {"primary": _with(at="24:00")}}, None,
     "oncall.yaml: rotations.primary.at: Value error, '24:00' is not a time of day as HH:MM"),
    ({"people": PEOPLE, "rotations": {"primary": _with(handoff="weekly")}}, None,
     "oncall.yaml: rotations.primary: Value error, a weekly rotation needs a weekday"),
    ({"people": PEOPLE, "rotations": {"primary": _with(handoff="weekly", weekday="monday")}}, None,
     "oncall.yaml: rotations.primary.weekday: Input should be 'mon'"),
    ({"people": [*PEOPLE, {"name": "alice"}]}, None,
     "oncall.yaml: people: Value error, person 'alice' is listed twice"),
    ({"people": [{"name": "erin", "slack": "@erin"}]}, None,
     "oncall.yaml: people.0.slack: Value error, '@erin' is not a Slack user id"),
    ({"people": PEOPLE, "rotations": {"primary": ROTATION}}, {1: {"rotation": "nightshift"}},
     "escalation.yaml: level 1: rotation 'nightshift' is not in oncall.yaml (rotations: primary)"),
    ({"people": PEOPLE}, {1: {"person": "dave"}},
     "escalation.yaml: level 1: person 'dave' is not in oncall.yaml's people (alice, bob, carol)"),
    ({"people": PEOPLE, "rotations": {"primary": ROTATION}}, {1: {"who": "@ops", "rotation": "primary"}},
     "escalation.yaml: levels.1: Value error, a level names exactly one of who (a fixed handle), rotation or person "
     "(from oncall.yaml); this one names who and rotation"),
])
def test_a_broken_rotation_file_or_level_stops_loading_naming_it(tmp_path, oncall, levels, says):
    config = _config(tmp_path, oncall, levels)
    with pytest.raises(CatalogError) as caught:
        load_catalog(config)
    assert says in str(caught.value)
    assert str(caught.value).startswith(str(config))  # the file's full path


def test_without_an_oncall_file_there_are_no_rotations_and_fixed_handles_still_page(tmp_path):
    config = make_config(tmp_path)
    (config / "oncall.yaml").unlink()
    catalog = load_catalog(config)
    assert (catalog.oncall.people, catalog.oncall.rotations) == ([], {})
    assert catalog.escalation.levels[1].who == "@on-call-primary"


# -- pages go to whoever is on call when they are sent -----------------------------------------------


@pytest.fixture
def capture():
    server = CaptureServer()
    yield server
    server.close()


def _services(tmp_path: Path, capture: CaptureServer, oncall: dict, levels: dict, time_scale: float,
              policies: dict | None = None):
    config = _config(tmp_path, oncall, levels, notify={
        "webhooks": [f"{capture.url}/hook"],
        "pagerduty": {"routing_key": "rk", "events_url": f"{capture.url}/pagerduty", "severities": ["warning", "critical"]},
    })
    if policies is not None:
        escalation = yaml.safe_load((config / "escalation.yaml").read_text())
        escalation["policies"] = policies
        (config / "escalation.yaml").write_text(yaml.safe_dump(escalation))
    settings = ResponderSettings(home=tmp_path / "home", time_scale=time_scale, slack_token=SecretStr("xoxb-t"),
                                 slack_api_url=f"{capture.url}/slack/")
    return build(settings, load_catalog(config), open_store(None, tmp_path / "store.db"))


def _pages(capture: CaptureServer, incident_id: str) -> list[dict]:
    return [r["body"] for r in capture.requests
            if r["path"] == "/hook" and r["body"].get("kind") == "page" and r["body"]["incident"]["id"] == incident_id]


def test_a_hand_off_between_two_pages_sends_each_to_whoever_is_on_call_then(tmp_path, capture):
    """Time scale 10: the default policy's levels 1 and 2 (both the primary rotation) are due 50 and 150
    minutes after the incident opened; the rotation (Berlin time) hands off from alice to bob at minute 100."""
    handoff = (datetime.now(UTC) + timedelta(minutes=100)).astimezone(BERLIN).replace(second=0, microsecond=0)
    rotation = {"members": ["alice", "bob"], "handoff": "daily", "at": handoff.strftime("%H:%M"),
                "timezone": "Europe/Berlin", "start": (handoff.date() - timedelta(days=1)).isoformat()}
    services = _services(tmp_path, capture, {"people": PEOPLE, "rotations": {"primary": rotation}}, {
        1: {"rotation": "primary", "title": "Primary on-call engineer"},
        2: {"rotation": "primary", "title": "Primary on-call engineer, again"},
        3: {"who": "@on-call-team", "title": "Team lead"},
    }, time_scale=10)
    store, catalog, scale = services.store, services.catalog, services.settings.time_scale
    incident = store.open_manual_incident("responder-drill", "warning", "drill", "run-1")
    opened = datetime.fromisoformat(incident.opened_at)
    assert opened + timedelta(minutes=50) < handoff < opened + timedelta(minutes=150)

    first_pass = opened + timedelta(minutes=50)
    [first] = due_pages(incident, set(), catalog, scale, first_pass)
    assert (first.level, first.who, first.first) == (1, "alice", True)
    assert next_page(incident, {1}, catalog, scale, now=first_pass).who == "bob"  # the forecast: after the hand-off
    assert send_page(incident, first, store, services.notifier, first_pass)
    assert not send_page(incident, first, store, services.notifier, first_pass)  # once

    second_pass = opened + timedelta(minutes=150)
    [second] = due_pages(incident, {1}, catalog, scale, second_pass)
    assert (second.level, second.who, second.first) == (2, "bob", False)
    assert send_page(incident, second, store, services.notifier, second_pass)

    deliver(services)
    pages = _pages(capture, incident.id)
    assert [(p["level"], p["who"]) for p in pages] == [(1, "alice"), (2, "bob")]
    assert pages[0]["on_call"] == {"name": "alice", "slack": "U0ALICE01", "pagerduty": "PALICE1"}
    assert pages[0]["target"] == "rotation primary" and "alice (Primary on-call engineer, rotation primary)" in pages[0]["text"]
    assert pages[1]["on_call"]["discord"] == "123456789012345678"
    slack = [r["body"]["text"] for r in capture.requests if r["path"] == "/slack/chat.postMessage"]
    assert slack[0].startswith("<@U0ALICE01> ") and slack[1].startswith("<@U0BOB0001> ")
    [trigger] = [r["body"] for r in capture.requests if r["path"] == "/pagerduty"]  # the first page only
    assert trigger["payload"]["custom_details"]["on_call"]["pagerduty"] == "PALICE1"
    assert [(p["level"], p["who"]) for p in store.pages(incident.id)] == [(1, "alice"), (2, "bob")]
    timeline = [e["text"] for e in store.timeline(incident.id)]
    assert "paged level 1: alice" in timeline and "paged level 2: bob" in timeline
    assert store.waiting_on(store.incident(incident.id)) == "level 2: bob (paged)"


def test_a_rotation_with_nobody_on_call_hands_its_turn_to_the_next_level_at_once(tmp_path, capture):
    """The real pager, time scale 0.001 (the default policy's 5/15/30 min are 0.3/0.9/1.8 s): the primary
    rotation begins tomorrow, so level 1 has nobody and level 2 (carol) is paged when level 1 was due."""
    begins = datetime.now(BERLIN).date() + timedelta(days=1)
    rotation = {"members": ["alice", "bob"], "handoff": "weekly", "weekday": "mon", "at": "09:00",
                "timezone": "Europe/Berlin", "start": begins.isoformat()}
    services = _services(tmp_path, capture, {"people": PEOPLE, "rotations": {"primary": rotation}}, {
        1: {"rotation": "primary", "title": "Primary on-call engineer"},
        2: {"person": "carol", "title": "Secondary"},
        3: {"who": "@on-call-team", "title": "Team lead"},
    }, time_scale=0.001)
    incident = services.store.open_manual_incident("responder-drill", "warning", "drill", "run-1")
    opened = datetime.fromisoformat(incident.opened_at)
    pager = Pager(services, interval_seconds=0.05)

    async def until_two_pages() -> None:
        task = asyncio.create_task(pager.run())
        try:
            for _ in range(400):
                if len(_pages(capture, incident.id)) == 2:
                    return
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            pager.close()

    with delivering(services):
        asyncio.run(until_two_pages())
    why = (f"level 1: nobody on call in rotation 'primary' (it begins {begins.isoformat()} 09:00 "
           f"{datetime.combine(begins, datetime.min.time(), BERLIN).replace(hour=9).tzname()})")
    pages = _pages(capture, incident.id)
    assert [(p["level"], p["who"]) for p in pages] == [(2, "carol"), (3, "@on-call-team")]
    assert pages[0]["reason"] == f"{why}; paged level 2 at once" and why in pages[0]["text"]
    assert "reason" not in pages[1]
    [trigger] = [r["body"] for r in capture.requests if r["path"] == "/pagerduty"]  # level 2 is the first page
    assert "Level 2 page* for carol" in trigger["payload"]["summary"]
    events = {e["details"]["level"]: e["details"] for e in services.store.pending_events() if e["kind"] == "incident.paged"}
    assert events[2]["due"] == (opened + timedelta(minutes=5 * 0.001)).isoformat()  # level 1's time, not its own
    assert events[3]["due"] == (opened + timedelta(minutes=30 * 0.001)).isoformat()
    timeline = [e["text"] for e in services.store.timeline(incident.id)]
    assert timeline.count(f"{why}; paged level 2 at once") == 1
    assert "paged level 2: carol" in timeline and not any(t.startswith("paged level 1") for t in timeline)

    # Once the rotation has begun, level 1 still had its turn: a later level was paged, so it is not paged late.
    later = datetime.combine(begins, datetime.min.time(), BERLIN).replace(hour=10)
    assert on_call(services.catalog.oncall, "primary", later).name == "alice"
    assert [p.level for p in due_pages(services.store.incident(incident.id), {2}, services.catalog, 0.001, later)] == [3]


def test_when_no_level_has_anyone_on_call_the_channels_are_told_once(tmp_path, capture):
    begins = datetime.now(UTC).date() + timedelta(days=7)
    rotation = {"members": ["alice"], "handoff": "daily", "timezone": "UTC", "start": begins.isoformat()}
    services = _services(tmp_path, capture, {"people": PEOPLE, "rotations": {"primary": rotation}},
                         {1: {"rotation": "primary"}, 2: {"rotation": "primary"}}, time_scale=1,
                         policies={"default": [{"level": 1, "after_minutes": 0}, {"level": 2, "after_minutes": 10}]})
    incident = services.store.open_manual_incident("responder-drill", "critical", "drill", "run-1")
    now = datetime.now(UTC)
    [page] = due_pages(incident, set(), services.catalog, 1, now)  # level 2 is due with level 1: nobody either
    assert (page.level, page.who, page.nobody, page.first) == (2, "nobody on call", True, True)
    assert send_page(incident, page, services.store, services.notifier, now)
    assert not send_page(incident, page, services.store, services.notifier, now)
    deliver(services)
    [sent] = _pages(capture, incident.id)
    nobody = f"nobody on call in rotation 'primary' (it begins {begins.isoformat()} 09:00 UTC)"
    assert sent["reason"] == f"level 1: {nobody}; level 2: {nobody}; no later level to page"
    assert "nobody is on call to page" in sent["text"] and "on_call" not in sent
    assert len([r for r in capture.requests if r["path"] == "/pagerduty"]) == 1  # PagerDuty's own policy takes it
    assert due_pages(services.store.incident(incident.id), {2}, services.catalog, 1, now + timedelta(hours=1)) == []


# -- responder oncall ---------------------------------------------------------------------------------


def _oncall(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "responder"), "oncall", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RESPONDER_CONFIG_DIR": str(config)})


def test_responder_oncall_prints_who_each_level_pages_and_who_is_next(tmp_path):
    config = _config(tmp_path, {
        "people": PEOPLE,
        "rotations": {
            "primary": {"members": ["alice", "bob"], "handoff": "weekly", "weekday": "mon", "at": "09:00",
                        "timezone": "Europe/Berlin", "start": "2024-03-04"},
            "later": {"members": ["carol"], "handoff": "daily", "timezone": "UTC", "start": "2030-01-01"},
        },
        "overrides": [{"person": "carol", "rotation": "primary", "from": "2024-03-22T18:00:00+01:00",
                       "until": "2024-03-25T10:00:00+01:00"}],
    }, {1: {"rotation": "primary", "title": "Primary"}, 2: {"rotation": "later", "title": "Secondary"},
        3: {"person": "carol", "title": "Lead"}})

    out = _oncall(config, "--at", "2024-03-20T12:00:00+01:00")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "On call at 2024-03-20T12:00+01:00"
    assert "policy default (every other severity):" in lines and "policy critical:" in lines
    # 2024-03-04 to 03-20: two Monday hand-offs (03-11, 03-18): alice again; carol's override is next
    assert ("  level 1 (+5 min) Primary: rotation primary: alice [slack U0ALICE01, pagerduty PALICE1]; "
            "next carol from 2024-03-22 18:00 CET") in lines
    assert ("  level 2 (+15 min) Secondary: rotation later: nobody on call (the rotation begins 2030-01-01 09:00 UTC): "
            "the next level is paged at once; next carol from 2030-01-01 09:00 UTC") in lines
    assert "  level 3 (+30 min) Lead: person carol: carol [pagerduty carol@example.com]" in lines
    assert "  level 1 (+0 min) Primary: rotation primary: alice [slack U0ALICE01, pagerduty PALICE1]; " \
           "next carol from 2024-03-22 18:00 CET" in lines  # the critical policy's level 1

    # During the override (it outlasts Monday's 09:00 hand-off: bob's turn when it ends)
    out = _oncall(config, "--at", "2024-03-23T12:00Z")
    assert ("  level 1 (+5 min) Primary: rotation primary: carol [pagerduty carol@example.com], override until "
            "2024-03-25 10:00 CET; next bob from 2024-03-25 10:00 CET") in out.stdout.splitlines(), out.stdout
    # After the change to summer time: 06:59 UTC is 08:59 CEST, a minute before the Monday hand-off
    out = _oncall(config, "--at", "2024-04-01T06:59Z")
    assert "rotation primary: bob [slack U0BOB0001, discord 123456789012345678]; next alice from 2024-04-01 09:00 CEST" \
        in out.stdout


def test_responder_oncall_refuses_a_bad_time_and_a_broken_rotation(tmp_path):
    config = _config(tmp_path, {"people": PEOPLE, "rotations": {"primary": ROTATION}})
    out = _oncall(config, "--at", "next tuesday")
    assert out.returncode == 2 and "argument --at: 'next tuesday' is not an ISO 8601 time" in out.stderr
    broken = _config(tmp_path / "broken", {"people": PEOPLE, "rotations": {"primary": _with(members=["zed"])}})
    out = _oncall(broken, "--at", "2024-03-20T12:00Z")
    assert out.returncode == 2 and "rotation 'primary': member 'zed' is not in people" in out.stderr
    assert out.stdout == ""


def test_the_shipped_oncall_file_loads_and_its_commented_example_is_valid():
    """config/oncall.yaml ships empty (escalation.yaml keeps its fixed handles); its example, uncommented, loads."""
    shipped = load_catalog(ROOT / "config")
    assert shipped.oncall.rotations == {} and shipped.escalation.levels[1].who == "@on-call-primary"
    lines = (ROOT / "config" / "oncall.yaml").read_text().splitlines()
    parsed = {}
    for index, line in enumerate(lines):
        key = line.split(":")[0]
        if key in ("people", "rotations", "overrides"):  # `key: []` then the example, commented
            block = []
            for follow in lines[index + 1:]:
                if not follow.startswith("#  "):
                    break
                block.append(follow[1:])
            parsed[key] = yaml.safe_load("\n".join(block))
    config = OncallConfig.model_validate(parsed)
    assert [p.name for p in config.people] == ["alice", "bob", "carol"]
    assert set(config.rotations) == {"primary", "secondary"}
    assert on_call(config, "primary", _at("2025-03-10T20:00:00+01:00")).name == "carol"
    assert date(2025, 1, 6) == config.rotations["primary"].start
