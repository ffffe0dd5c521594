"""Escalation pages: when each level of an incident's policy is due, and sending each one once.

The policy (``config/escalation.yaml``) pages a level ``after_minutes × RESPONDER_TIME_SCALE``
after the incident opened, unless the incident was acknowledged or closed by then. What was
paged is the store's ``pages`` table (one row per incident and level, claimed before sending),
so the clock is the store's: a restarted responder, or another responder on the same store,
sends what is due and nothing twice. Sending needs nothing from the Prefect server, so a page
is not late while the server is busy with a storm, nor lost while it is down. The responder's
pager (``responder/pager.py``) calls :func:`due_pages` and :func:`send_page` about every second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from core import metrics
from core.catalog import Catalog
from core.notify import Notifier
from core.store import Incident, Store

log = logging.getLogger("responder.escalation")


@dataclass(frozen=True)
class Page:
    """One level of an incident's escalation policy: who, and when it is due."""

    level: int
    who: str
    title: str
    due: datetime
    first: bool  # the policy's first level: it also triggers PagerDuty


def policy_pages(incident: Incident, catalog: Catalog, time_scale: float) -> list[Page]:
    """Every page of the incident's policy, in order, with its due time."""
    steps = catalog.escalation.steps_for(incident.severity)
    opened = datetime.fromisoformat(incident.opened_at)
    first = min((step.level for step in steps), default=None)
    pages = []
    for step in steps:
        target = catalog.escalation.levels[step.level]
        pages.append(Page(level=step.level, who=target.who, title=target.title, first=step.level == first,
                          due=opened + timedelta(minutes=step.after_minutes * time_scale)))
    return pages


def due_pages(incident: Incident, paged: set[int], catalog: Catalog, time_scale: float, now: datetime) -> list[Page]:
    """The pages due by ``now`` that have not gone out, in policy order (none once acknowledged or closed)."""
    if incident.status != "open" or incident.acknowledged_at:
        return []
    return [page for page in policy_pages(incident, catalog, time_scale) if page.level not in paged and page.due <= now]


def next_page(incident: Incident, paged: set[int], catalog: Catalog, time_scale: float) -> Page | None:
    """The incident's next page that has not gone out (due or not), for people reading the incident."""
    if incident.status != "open" or incident.acknowledged_at:
        return None
    return next((p for p in policy_pages(incident, catalog, time_scale) if p.level not in paged), None)


def send_page(incident: Incident, page: Page, store: Store, notifier: Notifier, now: datetime) -> bool:
    """Page one level once: claim it in the store, then notify. False when it was already claimed.

    The claim comes first, so two responders (or a pass racing a restart) never both send it.
    """
    late = max(0.0, (now - page.due).total_seconds())
    # One transaction: the claim, its timeline line and its event (in a storm, pages compete with
    # every response for the store's writes).
    if not store.page_claimed(incident.id, page.level, page.who, {
            "level": page.level, "who": page.who, "due": page.due.isoformat(), "late_seconds": round(late, 3)}):
        return False
    text = (f":rotating_light: *Level {page.level} page* for {page.who} ({page.title or 'on call'}): "
            f"{incident.title} — `{incident.runbook}`, {incident.severity}, open since {incident.opened_at}")
    notifier.send(incident, "page", text, details={"level": page.level, "who": page.who},
                  discord=True, pagerduty="trigger" if page.first else None)
    metrics.PAGES.labels(str(page.level)).inc()
    metrics.PAGE_LATENESS.observe(late)
    log.warning("Paged level %s (%s) for incident %s, %.1f s after it was due", page.level, page.who, incident.id, late)
    return True
