"""Escalation pages: when each level of an incident's policy is due, and sending each one once.

The policy (``config/escalation.yaml``) pages a level ``after_minutes × RESPONDER_TIME_SCALE``
after the incident opened, unless the incident was acknowledged or closed by then. What was
paged is the store's ``pages`` table (one row per incident and level, claimed before sending),
so the clock is the store's: a restarted responder, or another responder on the same store,
sends what is due and nothing twice. Sending needs nothing from the Prefect server, so a page
is not late while the server is busy with a storm, nor lost while it is down. The responder's
pager (``responder/pager.py``) calls :func:`due_pages` and :func:`send_page` about every second.

A level names a fixed handle (``who``), a person, or a rotation of ``config/oncall.yaml``; a
rotation is resolved when the page goes out (``now``; for a page not due yet, its due time, as a
forecast), so a page sent after a hand-off goes to the new person. A rotation with nobody on call
(it has not begun) hands its turn to the next level at once: that level is due when the empty one
was, and its page says why. A level is not paged once a later one was (it had its turn). When the
last level has nobody either, a page to the channels says so (once, like any page).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from core import metrics
from core.catalog import Catalog, EscalationLevel
from core.notify import Notifier
from core.oncall import OncallConfig, on_call, vacancy
from core.store import Incident, Store

log = logging.getLogger("responder.escalation")


@dataclass(frozen=True)
class Page:
    """One level of an incident's escalation policy: who, and when it is due."""

    level: int
    who: str  # the person's name (rotation and person levels), the fixed handle, or "nobody on call"
    title: str
    due: datetime
    first: bool  # the first page of the incident: it also triggers PagerDuty
    target: str = ""  # what the level names: "rotation primary", "person carol", or the fixed handle
    person: dict[str, str] = field(default_factory=dict, hash=False)  # the paged person's identities (name, slack, …)
    reason: str = ""  # why it is due early: the levels before it with nobody on call
    nobody: bool = False  # nobody on call here nor at any later level: the page goes to the channels


def _resolve(level: EscalationLevel, oncall: OncallConfig, at: datetime) -> tuple[str, dict[str, str], str]:
    """(who, their identities, why nobody): who is "" when the level's rotation has nobody on call at ``at``."""
    if level.who is not None:
        return level.who, {}, ""
    if level.person is not None:
        person = oncall.person(level.person)
        return person.name, person.identities(), ""
    assert level.rotation is not None  # EscalationLevel names exactly one target
    person = on_call(oncall, level.rotation, at)
    if person is None:
        return "", {}, vacancy(oncall, level.rotation, at)
    return person.name, person.identities(), ""


def _target(level: EscalationLevel) -> str:
    return (f"rotation {level.rotation}" if level.rotation is not None
            else f"person {level.person}" if level.person is not None else level.who or "")


def policy_pages(incident: Incident, catalog: Catalog, time_scale: float, paged: set[int] | frozenset[int] = frozenset(),
                 now: datetime | None = None) -> list[Page]:
    """The pages of the incident's policy still to go out, in order, with their due times and whom they go to.

    Steps up to the last one already paged are left out (a level skipped for having nobody on call is
    not paged later). Each level's target is resolved at ``now`` when it is due by then, else at its
    due time; a level with nobody on call makes the next level due at its own due time.
    """
    now = now or datetime.now(timezone.utc)
    steps = catalog.escalation.steps_for(incident.severity)
    opened = datetime.fromisoformat(incident.opened_at)
    last_paged = max((i for i, step in enumerate(steps) if step.level in paged), default=-1)
    rest = steps[last_paged + 1:]
    pages: list[Page] = []
    skipped: list[str] = []
    carried: datetime | None = None  # the due time of the first level skipped since the last page
    for index, step in enumerate(rest):
        level = catalog.escalation.levels[step.level]
        due = opened + timedelta(minutes=step.after_minutes * time_scale)
        if carried is not None:
            due = min(due, carried)
        who, person, why = _resolve(level, catalog.oncall, max(now, due))
        first = not paged and not pages
        if not who and index < len(rest) - 1:
            skipped.append(f"level {step.level}: {why}")
            carried = due
            continue
        if who:
            reason = "; ".join([*skipped, f"paged level {step.level} at once"]) if skipped else ""
            pages.append(Page(level=step.level, who=who, title=level.title, due=due, first=first,
                              target=_target(level), person=person, reason=reason))
        else:
            reason = "; ".join([*skipped, f"level {step.level}: {why}", "no later level to page"])
            pages.append(Page(level=step.level, who="nobody on call", title=level.title, due=due, first=first,
                              target=_target(level), reason=reason, nobody=True))
        skipped, carried = [], None
    return pages


def due_pages(incident: Incident, paged: set[int], catalog: Catalog, time_scale: float, now: datetime) -> list[Page]:
    """The pages due by ``now`` that have not gone out, in policy order (none once acknowledged or closed),
    each to whoever is on call at ``now``."""
    if incident.status != "open" or incident.acknowledged_at:
        return []
    return [page for page in policy_pages(incident, catalog, time_scale, paged, now) if page.due <= now]


def next_page(incident: Incident, paged: set[int], catalog: Catalog, time_scale: float,
              now: datetime | None = None) -> Page | None:
    """The incident's next page that has not gone out (due or not), for people reading the incident."""
    if incident.status != "open" or incident.acknowledged_at:
        return None
    return next(iter(policy_pages(incident, catalog, time_scale, paged, now)), None)


def send_page(incident: Incident, page: Page, store: Store, notifier: Notifier, now: datetime) -> bool:
    """Page one level once: claim it and write its messages in one transaction (the courier delivers
    them). False when it was already claimed.

    The claim decides, so two responders (or a pass racing a restart) never both page.
    """
    late = max(0.0, (now - page.due).total_seconds())
    details: dict[str, object] = {"level": page.level, "who": page.who}
    if page.target and page.target != page.who:
        details["target"] = page.target
    if page.person:
        details["on_call"] = page.person
    if page.reason:
        details["reason"] = page.reason
    about = f"{incident.title} — `{incident.runbook}`, {incident.severity}, open since {incident.opened_at}"
    if page.nobody:
        text = f":rotating_light: *Level {page.level} page*: nobody is on call to page ({page.reason}): {about}"
    else:
        via = f", {page.target}" if page.target.startswith("rotation ") else ""
        text = f":rotating_light: *Level {page.level} page* for {page.who} ({page.title or 'on call'}{via}): {about}"
        if page.reason:
            text += f"\n_{page.reason}_"
    messages = notifier.messages(incident, "page", text, details=details, discord=True,
                                 pagerduty="trigger" if page.first else None, person=page.person or None)
    # One transaction: the claim, its timeline lines, its event and its messages (in a storm, pages
    # compete with every response for the store's writes; and nothing is lost to a kill between them).
    if not store.page_claimed(incident.id, page.level, page.who,
                              {**details, "due": page.due.isoformat(), "late_seconds": round(late, 3)},
                              messages=messages, reason=page.reason):
        return False
    metrics.PAGES.labels(str(page.level)).inc()
    metrics.PAGE_LATENESS.observe(late)
    log.warning("Paged level %s (%s) for incident %s, %.1f s after it was due%s", page.level, page.who, incident.id,
                late, f" ({page.reason})" if page.reason else "")
    return True
