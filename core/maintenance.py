"""Maintenance windows in force, and the one that covers an alert.

Three sources, one shape (:class:`Window`): windows people start (``responder maintenance start``,
kept in the store), Alertmanager silences (copied into the store by the responder every 30 s when
``monitoring.alertmanager_url`` is set), and recurring windows of ``config/maintenance.yaml``
(computed from their cron expression, never stored). While a window covers an incident's alert,
the response assesses and reports but runs no mitigation, and pages wait unless
``config/policy.yaml`` says ``page_during_maintenance: true``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

from pydantic import ValidationError

from core.catalog import Catalog, WindowScope
from core.store import Store


_DURATION = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta | None:
    """A duration as people write it (90s, 30m, 2h, 7d, 1h30m): how long a window lasts, how far back
    the audit reads. None when it is not one (or is longer than ten years)."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return timedelta(seconds=seconds) if seconds <= 10 * 365 * 86400 else None


@dataclass(frozen=True)
class Window:
    id: str
    scope: WindowScope
    starts: datetime
    ends: datetime
    reason: str
    by: str
    source: str  # cli | alertmanager | config

    def line(self) -> str:
        return f"maintenance window {self.id} until {self.ends:%Y-%m-%d %H:%M} UTC ({self.reason})"


def recurring_in_force(catalog: Catalog, at: datetime) -> list[Window]:
    """The recurring windows of ``config/maintenance.yaml`` open at ``at`` (its last start, in the
    window's time zone, less than its duration ago)."""
    found = []
    for spec in catalog.maintenance.windows:
        local = at.astimezone(ZoneInfo(spec.timezone))
        # croniter's get_prev is strictly before its start: one second on, a window opening at `at` counts.
        opened = croniter(spec.cron, local + timedelta(seconds=1)).get_prev(datetime)
        ends = opened + timedelta(minutes=spec.duration_minutes)
        if opened <= local < ends:
            starts_utc = opened.astimezone(timezone.utc)
            found.append(Window(
                id=f"{spec.name}@{starts_utc:%Y%m%dT%H%MZ}",
                scope=WindowScope(service=spec.service, runbook=spec.runbook, matchers=spec.matchers),
                starts=starts_utc, ends=ends.astimezone(timezone.utc), reason=spec.reason,
                by="config/maintenance.yaml", source="config"))
    return found


def from_row(row: dict) -> Window:
    ends = datetime.fromisoformat(row["ends_at"])
    if row.get("ended_at"):
        ends = min(ends, datetime.fromisoformat(row["ended_at"]))
    return Window(id=row["id"], scope=WindowScope(service=row["service"], runbook=row["runbook"],
                                                  matchers=row["matchers"]),
                  starts=datetime.fromisoformat(row["starts_at"]), ends=ends, reason=row["reason"],
                  by=row["created_by"], source=row["source"])


def in_force(store: Store, catalog: Catalog, at: datetime | None = None) -> list[Window]:
    at = at or datetime.now(timezone.utc)
    return [from_row(row) for row in store.windows(at)] + recurring_in_force(catalog, at)


def covering(windows: list[Window], runbook: str, labels: dict[str, str]) -> Window | None:
    """The window (ending last, when several do) that covers an alert of ``runbook`` with ``labels``."""
    covers = [w for w in windows if w.scope.covers(runbook, labels)]
    return max(covers, key=lambda w: w.ends) if covers else None


def start_window(store: Store, catalog: Catalog, *, service: str | None, runbook: str | None, matchers: list[str],
                 duration: timedelta, reason: str, by: str, starts: datetime | None = None) -> dict:
    """Validate and store a window (the CLI and the intake's API both start windows here); ValueError
    naming what is wrong, and nothing stored, otherwise."""

    try:
        scope = WindowScope(service=service, runbook=runbook, matchers=matchers)
    except ValidationError as exc:
        raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False))) from None
    catalog.check_scope(scope)
    if not reason.strip():
        raise ValueError("a window needs a reason (it is shown on every action it holds)")
    if duration <= timedelta(0):
        raise ValueError("a window must last longer than nothing")
    starts = starts or datetime.now(timezone.utc)
    return store.add_window(service=scope.service, runbook=scope.runbook, matchers=scope.matchers, starts=starts,
                            ends=starts + duration, reason=reason.strip(), by=by)
