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

import inspect
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model


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
    "held",  # a maintenance window covers the alert: automation keeps its hands off
    "failed",
]


class ActionOutcome(BaseModel):
    """What every mitigation returns, dry run or not."""

    action: str
    target: str
    risk: Risk | None = Field(default=None, description="the registered action's risk: stamped by Mitigation.act "
                                                         "(an action does not write its own)")
    status: ActionStatus
    dry_run: bool = False
    detail: str = ""
    changes: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Mitigation:
    """A registered action: what the catalog checks runbooks against at start-up.

    Its parameters are the typed signature of ``run`` (less ``dry_run``), read once into a pydantic
    model (:attr:`params_model`): a plan's parameters are validated against it when the plan is made.
    """

    name: str
    risk: Risk
    description: str
    run: Callable[..., ActionOutcome]
    params_model: type[BaseModel] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hints = get_type_hints(self.run)
        fields: dict[str, Any] = {}
        for name, parameter in inspect.signature(self.run).parameters.items():
            if name == "dry_run":
                continue
            default = ... if parameter.default is inspect.Parameter.empty else parameter.default
            fields[name] = (hints.get(name, Any), default)
        model = create_model(f"{self.name}_params", __config__=ConfigDict(extra="forbid", strict=False), **fields)
        object.__setattr__(self, "params_model", model)

    def act(self, *args: Any, dry_run: bool = False, **params: Any) -> ActionOutcome:
        """Run the action; its outcome carries the registered risk (the one source of it)."""
        return self.run(*args, dry_run=dry_run, **params).model_copy(update={"risk": self.risk})

    def check_params(self, params: dict[str, Any], supplied_later: set[str] = frozenset()) -> None:
        """Raise ``ValueError`` naming the action and each wrong, unknown or missing parameter."""
        try:
            self.params_model.model_validate({**params, **{k: None for k in supplied_later}})
        except ValidationError as exc:
            problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                        if not (e["loc"] and e["loc"][0] in supplied_later)]
            if problems:
                raise ValueError(f"{self.name}: " + "; ".join(problems)) from None
