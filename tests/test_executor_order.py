"""Which waiting run the executor claims first when slots are short: critical incidents, then the rest,
each in the order the server listed them (oldest due first)."""

from __future__ import annotations

from responder.executor import _severity_rank


def test_critical_incidents_go_before_warnings_and_scheduled_checks_keeping_their_order():
    waiting = [
        {"name": "warning-1", "incident": {"id": "w1", "severity": "warning"}},
        {"name": "daily-checks"},  # a scheduled check: no incident
        {"name": "critical-1", "incident": {"id": "c1", "severity": "critical"}},
        {"name": "warning-2", "incident": {"id": "w2", "severity": "warning"}},
        {"name": "critical-2", "incident": {"id": "c2", "severity": "critical"}},
        {"name": "manual", "incident": None},
    ]
    order = [p["name"] for p in sorted(waiting, key=_severity_rank)]
    assert order == ["critical-1", "critical-2", "warning-1", "daily-checks", "warning-2", "manual"]
