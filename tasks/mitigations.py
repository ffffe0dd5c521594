"""Mitigations: typed, risk-labelled, dry-run-able, idempotent actions.

Each action re-checks that it is still needed right before acting (a process that
already exited, a pid that now belongs to another program) and reports what it did
as an :class:`~tasks.base.ActionOutcome`. Nothing here accepts a shell string:
commands are argv lists from ``config/targets.yaml``, never from an alert.

``REGISTRY`` is what the catalog checks runbooks against at start-up.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import psutil
from pydantic import BaseModel, Field, model_validator

from tasks.actions import ACTIONS
from tasks.base import ActionOutcome, ErrorCode, Mitigation, ResponderError, Risk


class PlannedAction(BaseModel):
    """One mitigation a runbook proposes, with the evidence that led to it.

    Checked when it is made: the action must be registered, its risk is the registry's (the one
    source: leave ``risk`` out, or it must agree), and ``params`` must fit the action's signature,
    so a wrong plan fails in the planning step, naming the action and the parameter.
    """

    action: str
    risk: Risk | None = None
    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    why: str = ""
    target_ref: tuple[str, str] | None = Field(
        default=None,
        description="(kind, name) of a configured target in config/targets.yaml, e.g. ('postgres', 'default'). "
        "Its connection URL is passed to the action when it runs (as `dsn` for postgres, `url` otherwise), "
        "so secrets never sit in the plan, the approval form or an artifact.",
    )

    @property
    def guard_key(self) -> str:
        return f"{self.action}:{self.target}"

    @model_validator(mode="after")
    def _fits_the_registry(self) -> "PlannedAction":
        mitigation = registered(self.action)
        if self.risk is None:
            self.risk = mitigation.risk
        elif self.risk is not mitigation.risk:
            raise ValueError(f"{self.action} is {mitigation.risk.value}, not {self.risk.value}")
        injected = {"dsn" if self.target_ref[0] == "postgres" else "url"} if self.target_ref else set()
        mitigation.check_params(self.params, injected)
        return self


def terminate_process(pid: int, create_time: float, name: str, dry_run: bool = False, grace_seconds: float = 10) -> ActionOutcome:
    """SIGTERM one process, SIGKILL after a grace period; only if it is still the same process."""
    target = f"pid {pid} ({name})"
    base = dict(action="terminate_process", target=target, dry_run=dry_run)
    if pid in (0, 1, os.getpid(), os.getppid()):
        raise ResponderError(ErrorCode.REFUSED, f"refusing to terminate {target}: system or responder process")
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.01:
            return ActionOutcome(**base, status="not_needed", detail="the pid now belongs to another process")
    except psutil.NoSuchProcess:
        return ActionOutcome(**base, status="not_needed", detail="the process has already exited")
    if dry_run:
        return ActionOutcome(**base, status="would_do", detail=f"would send SIGTERM to {target}, SIGKILL after {grace_seconds:g} s")
    proc.terminate()
    try:
        proc.wait(grace_seconds)
        how = "exited after SIGTERM"
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        how = "killed with SIGKILL after the grace period"
    return ActionOutcome(**base, status="done", detail=how, changes=[f"terminated {target}"])


def drill_step(name: str, dry_run: bool = False) -> ActionOutcome:
    """The fire drill's risky step: touches nothing, so teams can rehearse approvals."""
    base = dict(action="drill_step", target=name, dry_run=dry_run)
    if dry_run:
        return ActionOutcome(**base, status="would_do", detail="would do nothing (drill)")
    return ActionOutcome(**base, status="done", detail="drill step done (nothing was touched)", changes=[f"drill {name}"])


CORE: tuple[Mitigation, ...] = (
    Mitigation("terminate_process", Risk.RISKY, "Terminate a non-critical process (SIGTERM, then SIGKILL)", terminate_process),
    Mitigation("drill_step", Risk.RISKY, "A no-op step for fire drills", drill_step),
)


def _registry() -> dict[str, Mitigation]:
    registry: dict[str, Mitigation] = {}
    for mitigation in (*CORE, *ACTIONS):
        if mitigation.name in registry:
            raise RuntimeError(f"mitigation {mitigation.name!r} is registered twice")
        registry[mitigation.name] = mitigation
    return registry


REGISTRY: dict[str, Mitigation] = _registry()


def registered(name: str) -> Mitigation:
    """The registered mitigation ``name``; ``ValueError`` naming it and the known ones otherwise."""
    mitigation = REGISTRY.get(name)
    if mitigation is None:
        raise ValueError(f"{name!r} is not a registered mitigation (known: {', '.join(sorted(REGISTRY))})")
    return mitigation


def plan_process_terminations(
    top: list[dict[str, Any]], killable_cmdline: list[str], protected_names: list[str], limit: int = 3
) -> list[PlannedAction]:
    """Seed 000 "terminate non-critical processes": only those the configuration calls killable."""
    patterns = [re.compile(p) for p in killable_cmdline]
    plans = []
    for proc in top:
        cmdline = proc.get("cmdline") or ""
        if proc.get("name") in protected_names or proc.get("pid") in (0, 1, os.getpid()):
            continue
        if not any(p.search(cmdline) for p in patterns):
            continue
        plans.append(
            PlannedAction(
                action="terminate_process",
                target=f"pid {proc['pid']} ({proc.get('name', '?')})",
                params={"pid": proc["pid"], "create_time": proc["create_time"], "name": proc.get("name", "?")},
                why=f"uses {proc.get('cpu_percent', 0):.0f}% CPU and matches a killable pattern: {cmdline[:120]}",
            )
        )
        if len(plans) >= limit:
            break
    return plans


def wait_until_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        time.sleep(0.1)
    return not psutil.pid_exists(pid)
