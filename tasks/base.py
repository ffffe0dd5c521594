"""The contracts every probe and mitigation in the responder shares.

A probe measures one thing and returns a :class:`ProbeResult`; a mitigation
changes one thing and returns an :class:`ActionOutcome`. Runbook flows compose
them; the lifecycle (approval, loop guard, notifications) only ever sees these
two types, so a new probe or action needs no change anywhere else.

Failures that must not be retried raise :class:`ResponderError` with a code;
transient failures raise whatever the client library raises so Prefect's task
retries handle them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field


class Risk(str, Enum):
    """How much harm an action can do. ``risky`` actions wait for a human."""

    SAFE = "safe"
    RISKY = "risky"


class ErrorCode(str, Enum):
    CONFIG = "config"  # the responder's own configuration is wrong
    UNKNOWN_TARGET = "unknown_target"  # an alert names a target that is not configured
    UNREACHABLE = "unreachable"  # a target did not answer (after retries)
    REFUSED = "refused"  # a safety check refused the action
    REJECTED = "rejected"  # a human rejected the action


class ResponderError(Exception):
    """An error the responder must not retry; escalation branches on ``code``."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"[{code.value}] {message}")
        self.code = code
        self.message = message


class ProbeResult(BaseModel):
    """What every probe returns: is it healthy, what was measured, against what, and why."""

    probe: str
    ok: bool
    value: float | None = None
    threshold: float | None = None
    unit: str = ""
    summary: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)

    def line(self) -> str:
        if self.value is None:
            figure = ""
        elif self.threshold is None:
            figure = f" {self.value:g}{self.unit}"
        else:
            figure = f" {self.value:g}{self.unit} (threshold {self.threshold:g}{self.unit})"
        return f"{'OK' if self.ok else 'BAD'} {self.probe}:{figure} {self.summary}".rstrip()


ActionStatus = Literal[
    "done",  # the action ran and changed something
    "would_do",  # dry run: what it would have done
    "not_needed",  # the re-check found nothing to do
    "awaiting_approval",
    "rejected",  # a human said no, or nobody answered in time
    "loop_guarded",  # ran too often on this target recently
    "failed",
]


class ActionOutcome(BaseModel):
    """What every mitigation returns, dry run or not."""

    action: str
    target: str
    risk: Risk
    status: ActionStatus
    dry_run: bool = False
    detail: str = ""
    changes: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Mitigation:
    """A registered action: what the catalog checks runbooks against at start-up."""

    name: str
    risk: Risk
    description: str
    run: Callable[..., ActionOutcome]
