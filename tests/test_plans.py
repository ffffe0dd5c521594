"""A plan is checked when it is made: a registered action, the registry's risk, parameters that fit."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.base import Risk
from tasks.mitigations import REGISTRY, PlannedAction


def test_risk_comes_from_the_registry():
    plan = PlannedAction(action="restart_service", target="app", params={"service": "app", "argv": ["true"]})
    assert plan.risk is Risk.RISKY is REGISTRY["restart_service"].risk
    assert PlannedAction(action="compress_old_logs", target="logs",
                         params={"directories": ["/var/log/app"], "older_than_days": 7}).risk is Risk.SAFE


@pytest.mark.parametrize("plan, says", [
    (dict(action="reboot_everything", target="x"), "'reboot_everything' is not a registered mitigation"),
    (dict(action="restart_service", risk=Risk.SAFE, target="app", params={"service": "app", "argv": ["true"]}),
     "restart_service is risky, not safe"),
    (dict(action="restart_service", target="app", params={"service": "app"}), "restart_service: argv: Field required"),
    (dict(action="terminate_process", target="pid 1", params={"pid": 1, "create_time": 0.0, "name": "x", "signal": 9}),
     "terminate_process: signal: Extra inputs are not permitted"),
    (dict(action="terminate_process", target="pid x", params={"pid": "not-a-pid", "create_time": 0.0, "name": "x"}),
     "terminate_process: pid: Input should be a valid integer"),
    (dict(action="restart_service", target="app", params={"service": "app", "argv": "systemctl restart app"}),
     "restart_service: argv: 'str' instances are not allowed as a Sequence"),
])
def test_a_wrong_plan_fails_when_it_is_made_naming_the_action_and_the_field(plan, says):
    with pytest.raises(ValidationError) as raised:
        PlannedAction(**plan)
    assert says in str(raised.value)


def test_a_connection_url_is_the_runtime_s_not_the_plan_s():
    """Actions on a configured target get its URL when they run (never in the plan): the check knows it."""
    plan = PlannedAction(action="cancel_backend", target="backend pid 42", target_ref=("postgres", "default"),
                         params={"pid": 42, "backend_start": "2026-12-06T00:00:00+00:00",
                                 "query_start": "2026-12-06T00:00:01+00:00"})
    assert plan.risk is Risk.RISKY and "dsn" not in plan.params
    with pytest.raises(ValidationError, match="cancel_backend: pid: Input should be a valid integer"):
        PlannedAction(action="cancel_backend", target="backend", target_ref=("postgres", "default"),
                      params={"pid": "42; DROP TABLE x", "backend_start": "x", "query_start": "y"})
