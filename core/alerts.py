"""The Alertmanager webhook body (version 4), validated.

Shapes follow Alertmanager's ``notify/webhook`` package. Extra fields are kept
(Alertmanager adds fields over time) but the ones a receiver relies on are
required and typed, so a malformed body is refused with the field named.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)


class Alert(BaseModel):
    """One alert as Alertmanager sends it; also the typed parameter of every runbook flow."""

    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime = ZERO_TIME
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z]+$")

    @field_validator("labels")
    @classmethod
    def _has_alertname(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("labels.alertname is required")
        return labels

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "warning")

    @property
    def instance(self) -> str:
        return self.labels.get("instance", "")

    @property
    def summary(self) -> str:
        return self.annotations.get("summary") or self.annotations.get("description") or self.alertname


class AlertmanagerPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: Literal["4"]
    groupKey: str = Field(min_length=1)
    truncatedAlerts: int = Field(default=0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(min_length=1)


class IncidentRef(BaseModel):
    """The incident a runbook run responds to; the second typed flow parameter."""

    id: str
    runbook: str
    group_key: str
    severity: str = "warning"


class Route(NamedTuple):
    """Where the catalog sends an alert name: the runbook that responds, and its default severity."""

    runbook: str
    severity: str
