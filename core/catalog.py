"""The runbook catalog and the targets it may act on.

A runbook is declared once, in its module, by a :class:`RunbookSpec` (alert names, severity, the
seed sections it follows, its verification window, its mitigations by name) and its typed
:class:`Thresholds`. ``config/runbooks/*.yaml`` holds only what an installation changes
(:class:`RunbookOverride`: threshold overrides, severity, extra alert spellings, dry run, approval
deadline, verification window, schedules, two approvers) and names the modules of runbooks the
installation adds. :func:`load_catalog` merges the declared runbooks (found by
``flows.registry``) with those files and validates everything a 3 a.m. run would otherwise trip
over: unknown keys, an unknown threshold or runbook, an alert name claimed by two runbooks, a
mitigation that is not registered. Every error names the file, the runbook and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
import os
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from croniter import croniter
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator,
                      model_validator)

from core.alerts import Route
from core.oncall import OncallConfig, TimeZoneName
from tasks.base import Risk
from tasks.mitigations import REGISTRY, registered
from tasks.probes.hosts import HostTargets


class CatalogError(Exception):
    """The configuration is wrong; the message names the file and the entry."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Severity = Literal["info", "warning", "critical"]
Approvers = Literal["one", "two"]


class MitigationSpec(_Strict):
    """A mitigation a runbook may propose, as the catalog shows it: its risk is the registered action's own."""

    name: str
    risk: Risk
    needs: Approvers = Field(
        default="one", description="approvers a risky action needs: `two` asks until two different people approved")


class VerifySpec(_Strict):
    budget_seconds: float = Field(default=300, gt=0)
    interval_seconds: float = Field(default=15, gt=0)


class Thresholds(BaseModel):
    """A runbook's typed thresholds, declared once in the runbook's module.

    Each field's default is the seed's figure and its description the seed's words (both appear in
    ``docs/runbooks.md``). ``spellings`` holds the figures a seed gives one alert spelling only (seed 001's
    ``response_time_p95`` fires at 1 s where seed 000's ``HIGH_RESPONSE_TIME`` fires at 2 s). An installation
    overrides any of them in its catalog entry (``thresholds: {name: value}`` or ``{name.ALERTNAME: value}``),
    checked against this model when ``responder up`` starts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    spellings: ClassVar[dict[str, dict[str, Any]]] = {}


def seed(default: Any, words: str, **constraints: Any) -> Any:
    """A threshold field: the seed's figure as its default, the seed's words as its description."""
    return Field(default=default, description=words, **constraints)


T = TypeVar("T", bound=Thresholds)


class RunbookSpec(_Strict):
    """What a runbook is, declared once in its module next to its steps (``flows/<runbook>.py``)::

        SPEC = RunbookSpec(
            name="disk-space", title="Disk space critical",
            alertnames=("DISK_SPACE_CRITICAL", "disk_usage"), severity="critical",
            seeds=("000 Infrastructure Alerts / DISK_SPACE_CRITICAL: Disk usage >90%",),
            verify=VerifySpec(budget_seconds=120, interval_seconds=15),
            mitigations=("compress_old_logs", "remove_temp_files"),  # risk: the registered action's own
        )

    Its flow is built from it (``flows.lifecycle.runbook_flow(SPEC, assess, Limits)``); an installation
    changes what :class:`RunbookOverride` allows in ``config/runbooks/*.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    alertnames: tuple[str, ...] = ()
    schedules: tuple[str, ...] = Field(default=(), description="cron expressions (UTC)")
    severity: Severity = "warning"
    seeds: tuple[str, ...] = ()
    verify: VerifySpec = Field(default_factory=VerifySpec)
    approval_timeout_seconds: float = Field(default=900, gt=0)
    mitigations: tuple[str, ...] = Field(default=(), description="registered mitigations (tasks/actions) it may propose")
    left_to_humans: tuple[str, ...] = ()

    @field_validator("mitigations")
    @classmethod
    def _registered(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            registered(name)
        return names


class MitigationOverride(_Strict):
    name: str
    needs: Approvers


class RunbookOverride(_Strict):
    """One entry of ``config/runbooks/*.yaml``: what this installation changes in a runbook."""

    name: str
    module: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*$",
        description="an importable module of this installation that declares the runbook (not needed for the built-in ones)")
    thresholds: dict[str, Any] = Field(
        default_factory=dict,
        description="this installation's overrides of the runbook's typed thresholds: NAME or NAME.ALERTNAME",
    )
    severity: Severity | None = None
    alertnames: list[str] = Field(default_factory=list, description="more spellings of the alert, added to the runbook's")
    schedules: list[str] | None = Field(default=None, description="cron expressions replacing the runbook's")
    verify: VerifySpec | None = None
    approval_timeout_seconds: float | None = Field(default=None, gt=0)
    dry_run: bool = False
    mitigations: list[MitigationOverride] = Field(default_factory=list,
                                                  description="per mitigation: `needs: two` approvers")


class Declared(BaseModel):
    """A runbook as its module declares it: spec, flow entrypoint (``module:function``), thresholds model."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    spec: RunbookSpec
    flow: str
    thresholds: type[Thresholds]


class Runbook(_Strict):
    """A runbook in force: its module's spec with this installation's overrides (:meth:`merge`)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    flow: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    alertnames: list[str] = Field(default_factory=list)
    severity: str = "warning"
    seeds: list[str] = Field(default_factory=list)
    thresholds: dict[str, Any] = Field(
        default_factory=dict,
        description="this installation's overrides of the runbook's typed thresholds: NAME or NAME.ALERTNAME",
    )
    verify: VerifySpec = Field(default_factory=VerifySpec)
    approval_timeout_seconds: float = Field(default=900, gt=0)
    mitigations: list[MitigationSpec] = Field(default_factory=list)
    left_to_humans: list[str] = Field(default_factory=list)
    schedules: list[str] = Field(default_factory=list, description="cron expressions")
    dry_run: bool = False

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        if value not in ("info", "warning", "critical"):
            raise ValueError("severity must be info, warning or critical")
        return value

    @model_validator(mode="after")
    def _started_somehow(self) -> "Runbook":
        if not self.alertnames and not self.schedules:
            raise ValueError("a runbook needs alertnames (started by alerts) or schedules (cron), or both")
        return self

    _source: Path | None = PrivateAttr(default=None)  # the catalog file it was read from
    _limits: type[Thresholds] = PrivateAttr(default=Thresholds)  # its flow's model, bound by resolve_flows

    @property
    def deployment_name(self) -> str:
        return self.name

    @property
    def limits_model(self) -> type[Thresholds]:
        return self._limits

    @classmethod
    def merge(cls, declared: Declared, override: RunbookOverride | None, source: Path | None) -> "Runbook":
        """The spec with this installation's overrides; the thresholds checked against the spec's model."""
        spec, change = declared.spec, override or RunbookOverride(name=declared.spec.name)
        where = f"{source or declared.flow}: runbook {spec.name!r}"
        needs = {m.name: m.needs for m in change.mitigations}
        unknown = sorted(set(needs) - set(spec.mitigations))
        if unknown:
            raise CatalogError(f"{where}: mitigations: {', '.join(unknown)} not proposed by this runbook "
                               f"(it proposes: {', '.join(spec.mitigations) or 'none'})")
        runbook = cls(
            name=spec.name, title=spec.title, flow=declared.flow,
            alertnames=[*spec.alertnames, *(a for a in change.alertnames if a not in spec.alertnames)],
            severity=change.severity or spec.severity, seeds=list(spec.seeds), thresholds=change.thresholds,
            verify=change.verify or spec.verify,
            approval_timeout_seconds=change.approval_timeout_seconds or spec.approval_timeout_seconds,
            mitigations=[MitigationSpec(name=name, risk=REGISTRY[name].risk, needs=needs.get(name, "one"))
                         for name in spec.mitigations],
            left_to_humans=list(spec.left_to_humans),
            schedules=list(spec.schedules if change.schedules is None else change.schedules),
            dry_run=change.dry_run,
        )
        runbook._source = source
        runbook.bind_limits(declared.thresholds)
        return runbook

    def limits(self, model: type[T], alertname: str | None = None) -> T:
        """The thresholds in force for ``alertname``: the seed's defaults, then the seed's figure for that
        spelling, then this installation's overrides (``NAME``, then ``NAME.ALERTNAME``)."""
        values: dict[str, Any] = dict(model.spellings.get(alertname, {})) if alertname else {}
        specific: dict[str, Any] = {}
        for key, value in self.thresholds.items():
            name, _, spelling = key.partition(".")
            if not spelling:
                values[name] = value
            elif spelling == alertname:
                specific[name] = value
        return model.model_validate(values | specific)

    def bind_limits(self, model: type[Thresholds]) -> None:
        """Check this entry's overrides against the runbook's model (unknown name, unknown spelling, wrong
        type) and remember the model; the error names the file, the runbook and the field."""
        where = f"{self._source or 'catalog'}: runbook {self.name!r}"
        known = sorted(model.model_fields)
        for key in self.thresholds:
            name, _, spelling = key.partition(".")
            if name not in model.model_fields:
                raise CatalogError(f"{where}: thresholds.{key}: unknown threshold {name!r} "
                                   f"(this runbook's thresholds: {', '.join(known) or 'none'})")
            if spelling and spelling not in self.alertnames:
                raise CatalogError(f"{where}: thresholds.{key}: {spelling!r} is not one of this runbook's alert names "
                                   f"({', '.join(self.alertnames) or 'none'})")
        for alertname in [None, *self.alertnames]:
            try:
                self.limits(model, alertname)
            except ValidationError as exc:
                lines = []
                for err in exc.errors():
                    field = str(err["loc"][0]) if err["loc"] else "(thresholds)"
                    key = f"{field}.{alertname}" if f"{field}.{alertname}" in self.thresholds else field
                    lines.append(f"{where}: thresholds.{key}: {err['msg']} (got {err.get('input')!r})")
                raise CatalogError("\n".join(lines)) from None
        self._limits = model

    def catalog_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "flow": self.flow,
            "deployment": f"{self.flow.split(':')[1].replace('_', '-')}/{self.deployment_name}",
            "alertnames": self.alertnames,
            "severity": self.severity,
            "thresholds": self.limits(self._limits).model_dump(),
            "thresholds_by_alertname": {
                name: self.limits(self._limits, name).model_dump() for name in self.alertnames
                if self.limits(self._limits, name) != self.limits(self._limits)
            },
            "threshold_overrides": self.thresholds,
            "mitigations": [m.model_dump(mode="json") for m in self.mitigations],
            "seeds": self.seeds,
            "schedules": self.schedules,
        }


class ServiceTarget(_Strict):
    host: str | None = Field(
        default=None,
        description="the machine its commands act on (as in the alert's instance, port ignored); unset: this machine. "
        "A host runbook uses a service's commands only for an alert of that machine.",
    )
    restart: list[str] | None = None
    rollback: list[str] | None = None
    scale: list[str] | None = None
    health_url: str | None = None
    health_detailed_url: str | None = None
    match: dict[str, str] = Field(default_factory=dict)


class ProcessTargets(_Strict):
    killable_cmdline: list[str] = Field(default_factory=list)
    protected_names: list[str] = Field(default_factory=list)

    @field_validator("killable_cmdline")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"killable_cmdline pattern {pattern!r}: {exc}") from exc
        return patterns


class DatabaseTarget(_Strict):
    url: SecretStr | None = None
    match: dict[str, str] = Field(default_factory=dict)


class QueueSpec(_Strict):
    name: str
    kind: Literal["list", "bullmq"] = "list"
    threshold: int = Field(default=1000, ge=0)


class RedisTarget(DatabaseTarget):
    queues: list[QueueSpec] = Field(default_factory=list)
    cache_prefixes: list[str] = Field(default_factory=list)
    allow_flush: bool = False
    blocklist_key: str | None = None  # a set or sorted set of blocked source addresses
    ratelimit_prefix: str | None = None  # rate-limit counters live under this prefix
    dead_letter_suffix: str = ":dead"  # stuck items of queue Q move to list Q + suffix


class LogSource(_Strict):
    path: str
    format: Literal["text", "access", "json"] = "text"
    error_pattern: str = r"\b(ERROR|FATAL|CRITICAL)\b"
    group_field: str | None = None  # json logs: the field errors are grouped by (seed 002 jq steps)


class FlagTarget(_Strict):
    """A feature flag or maintenance-mode switch kept in Redis."""

    redis: str = "default"
    key: str
    on_value: str = "1"
    off_value: str = "0"


class BackupTarget(_Strict):
    name: str
    path_glob: str
    max_age_hours: float = Field(default=26, gt=0)


class PathTargets(_Strict):
    logs: list[str] = Field(default_factory=list)
    temp: list[str] = Field(default_factory=list)
    disk: list[str] = Field(default_factory=lambda: ["/"])
    retention_days: float = Field(default=7, ge=1)
    delete_after_days: float = Field(default=30, ge=1)


class MonitoringTargets(_Strict):
    prometheus_url: str | None = None
    alertmanager_url: str | None = None
    grafana_url: str | None = None


class ExternalTarget(_Strict):
    name: str
    url: str
    timeout_s: float = Field(default=5, gt=0)


class JobTarget(_Strict):
    url: str
    method: Literal["POST", "PUT", "GET"] = "POST"


class Targets(_Strict):
    processes: ProcessTargets = Field(default_factory=ProcessTargets)
    services: dict[str, ServiceTarget] = Field(default_factory=dict)
    postgres: dict[str, DatabaseTarget] = Field(default_factory=dict)
    redis: dict[str, RedisTarget] = Field(default_factory=dict)
    mongodb: dict[str, DatabaseTarget] = Field(default_factory=dict)
    paths: PathTargets = Field(default_factory=PathTargets)
    hosts: HostTargets = Field(default_factory=HostTargets)
    monitoring: MonitoringTargets = Field(default_factory=MonitoringTargets)
    external: list[ExternalTarget] = Field(default_factory=list)
    jobs: dict[str, JobTarget] = Field(default_factory=dict)
    logs: dict[str, LogSource] = Field(default_factory=dict)
    flags: dict[str, FlagTarget] = Field(default_factory=dict)
    backups: list[BackupTarget] = Field(default_factory=list)

    def select(self, kind: str, labels: dict[str, str]) -> tuple[str, Any] | None:
        """The configured target of ``kind`` an alert's labels point at, else the ``default`` one.

        A target is selected by its name equal to the ``service``, ``job`` or ``datname`` label,
        or by all of its ``match`` labels. Labels never create a target: no match, no default → None.
        """
        entries: dict[str, Any] = getattr(self, kind)
        for key in ("service", "job", "datname"):
            name = labels.get(key)
            if name and name in entries:
                return name, entries[name]
        for name, entry in entries.items():
            if entry.match and all(labels.get(k) == v for k, v in entry.match.items()):
                return name, entry
        if "default" in entries:
            return "default", entries["default"]
        return None


class SlackConfig(_Strict):
    # seed 004: "#alerts" for warnings, "#critical-alerts" for critical
    channels: dict[str, str] = Field(
        default_factory=lambda: {"info": "#alerts", "warning": "#alerts", "critical": "#critical-alerts"}
    )


class DiscordConfig(_Strict):
    webhook_url: SecretStr | None = None


class PagerDutyConfig(_Strict):
    routing_key: SecretStr | None = None
    events_url: str = "https://events.pagerduty.com/v2/enqueue"
    severities: list[str] = Field(default_factory=lambda: ["critical"])  # seed 004: "Critical alerts only"


class DeliveryConfig(_Strict):
    """How messages reach people through outages and storms (``core/courier.py``)."""

    # A person paged again within this many seconds of their last page gets one message for all of them.
    rollup_seconds: float = Field(10.0, gt=0)
    # More incidents than this opening in one Slack channel within a minute is a storm: one message lists
    # them, and each incident's thread starts only when it has something for a person.
    storm_incidents: int = Field(3, ge=1)
    # A page not delivered on a channel after this long also goes out on every other configured channel.
    page_fallback_seconds: float = Field(60.0, gt=0)
    # How old a message may get before it no longer matters (minutes), by kind; "default" for the rest.
    # Pages have no limit: they are delivered, however late, and fall back to the other channels.
    max_age_minutes: dict[str, float] = Field(
        default_factory=lambda: {"default": 60, "escalated": 1440, "scheduled-check": 360})
    # Sends per second each Slack channel (Slack allows about 1) and each Discord webhook take, in bursts of 3.
    slack_per_second: float = Field(1.0, gt=0)
    discord_per_second: float = Field(1.0, gt=0)

    @field_validator("max_age_minutes")
    @classmethod
    def _no_page_limit(cls, value: dict[str, float]) -> dict[str, float]:
        if "page" in value:
            raise ValueError("pages are never too old to deliver: remove 'page' from max_age_minutes")
        if any(minutes <= 0 for minutes in value.values()):
            raise ValueError("each max_age_minutes must be above 0")
        return value


class StatusComponent(_Strict):
    id: str = ""  # Atlassian Statuspage's component id (not needed by the webhook provider)
    name: str  # what the public reads


STATUS_TEXT = {
    "investigating": "We are investigating a problem affecting {components}.",
    "identified": "We have found the cause of the problem affecting {components} and are fixing it.",
    "escalated": "Our engineers are working on the problem affecting {components}.",
    "resolved": "The problem affecting {components} has been resolved.",
}


class StatusPageConfig(_Strict):
    """A public status page (seed 000's post-incident "update status page"). What it says is only
    ``title`` and ``text`` with the affected components' public names: never labels, hosts or evidence."""

    provider: Literal["atlassian", "webhook"] = "atlassian"
    api_url: str = "https://api.statuspage.io/v1"
    page_id: str | None = None
    api_key: SecretStr | None = None  # Atlassian: sent as "Authorization: OAuth <key>"
    webhook_url: SecretStr | None = None  # the webhook provider: a self-hosted status page's endpoint
    components: dict[str, StatusComponent] = Field(default_factory=dict)  # the alert's `service` label → component
    public_severities: list[str] = Field(default_factory=lambda: ["critical"])
    impact: Literal["degraded_performance", "partial_outage", "major_outage"] = "major_outage"
    title: str = "Problem affecting {components}"
    text: dict[str, str] = Field(default_factory=lambda: dict(STATUS_TEXT))

    @field_validator("text")
    @classmethod
    def _known_text(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(STATUS_TEXT))
        if unknown:
            raise ValueError(f"unknown status page text {unknown}: the texts are {sorted(STATUS_TEXT)}")
        return {**STATUS_TEXT, **value}

    @field_validator("title", "text")
    @classmethod
    def _only_components(cls, value: Any) -> Any:
        for text in ([value] if isinstance(value, str) else value.values()):
            try:
                text.format(components="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{text!r}: the only placeholder a public text may use is {{components}} ({exc})")
        return value

    @property
    def enabled(self) -> bool:
        if self.provider == "webhook":
            return self.webhook_url is not None
        return bool(self.page_id) and self.api_key is not None


class NotifyConfig(_Strict):
    slack: SlackConfig = Field(default_factory=SlackConfig)
    statuspage: StatusPageConfig = Field(default_factory=StatusPageConfig)
    discord: DiscordConfig = Field(default_factory=DiscordConfig)
    pagerduty: PagerDutyConfig = Field(default_factory=PagerDutyConfig)
    webhooks: list[str] = Field(default_factory=list)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)


class EscalationLevel(_Strict):
    """Who a level pages: exactly one of a fixed handle (``who``, paged as written), a ``rotation`` of
    ``oncall.yaml`` (whoever is on call in it when the page goes out) or a ``person`` of ``oncall.yaml``."""

    who: str | None = None
    rotation: str | None = None
    person: str | None = None
    title: str = ""

    @model_validator(mode="after")
    def _one_target(self) -> "EscalationLevel":
        named = [key for key in ("who", "rotation", "person") if getattr(self, key) is not None]
        if len(named) != 1:
            raise ValueError("a level names exactly one of who (a fixed handle), rotation or person (from oncall.yaml)"
                             + (f"; this one names {' and '.join(named)}" if named else ""))
        return self


class EscalationStep(_Strict):
    level: int
    after_minutes: float = Field(ge=0)


class EscalationConfig(_Strict):
    """Who is paged when, per severity (seed 001 levels; seed 000 response times)."""

    levels: dict[int, EscalationLevel]
    policies: dict[str, list[EscalationStep]]

    @model_validator(mode="after")
    def _consistent(self) -> "EscalationConfig":
        if "default" not in self.policies:
            raise ValueError("policies must have a 'default' entry")
        for severity, steps in self.policies.items():
            delays = [step.after_minutes for step in steps]
            if delays != sorted(delays):
                raise ValueError(f"policy {severity!r}: steps must be in order of after_minutes")
            for step in steps:
                if step.level not in self.levels:
                    raise ValueError(f"policy {severity!r}: level {step.level} is not defined under levels")
        return self

    def steps_for(self, severity: str) -> list[EscalationStep]:
        return self.policies.get(severity) or self.policies["default"]


def _default_escalation() -> EscalationConfig:
    return EscalationConfig(
        levels={1: EscalationLevel(who="on-call-primary"), 2: EscalationLevel(who="on-call-secondary"),
                3: EscalationLevel(who="team-lead")},
        policies={"default": [EscalationStep(level=1, after_minutes=5), EscalationStep(level=2, after_minutes=15),
                              EscalationStep(level=3, after_minutes=30)]},
    )


class BlastRadius(_Strict):
    """At most ``max`` runs of one action, across every target and incident, within ``per_minutes``;
    beyond that the action waits for a human's approval that names the limit, even a ``safe`` one."""

    max: int = Field(ge=1)
    per_minutes: float = Field(gt=0)


class ApproversPolicy(_Strict):
    """Who may approve: people of ``oncall.yaml``, per runbook, else per risk of the action (``safe``
    ones are asked about beyond their blast radius), else ``default``. Unset: anyone, each answer
    recorded verified or "not verified"."""

    default: list[str] | None = None
    runbooks: dict[str, list[str]] = Field(default_factory=dict)
    risks: dict[Risk, list[str]] = Field(default_factory=dict)

    def allowed_for(self, runbook: str, risk: Risk = Risk.RISKY) -> list[str] | None:
        if runbook in self.runbooks:
            return self.runbooks[runbook]
        return self.risks.get(risk, self.default)


class PolicyConfig(_Strict):
    """``config/policy.yaml``: rules that hold automation across incidents."""

    page_during_maintenance: bool = False
    blast_radius: dict[str, BlastRadius] = Field(default_factory=dict)
    approvers: ApproversPolicy = Field(default_factory=ApproversPolicy)

    @field_validator("blast_radius")
    @classmethod
    def _known_actions(cls, limits: dict[str, BlastRadius]) -> dict[str, BlastRadius]:
        for name in limits:
            registered(name)
        return limits


_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"(.*)"|(.*?))\s*$')


def parse_matcher(text: str) -> tuple[str, str, str]:
    """An Alertmanager label matcher (``name="value"``, ``name!=value``, ``name=~"regex"``, ``name!~regex``)
    as (name, operator, value); ValueError naming it otherwise."""
    found = _MATCHER.match(text)
    if found is None:
        raise ValueError(f"matcher {text!r}: expected name=value, name!=value, name=~regex or name!~regex")
    name, op, quoted, bare = found.groups()
    value = quoted if quoted is not None else bare
    if op in ("=~", "!~"):
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"matcher {text!r}: not a regular expression ({exc})") from None
    return name, op, value


def _matches(labels: dict[str, str], matcher: str) -> bool:
    name, op, value = parse_matcher(matcher)
    label = labels.get(name, "")
    if op == "=":
        return label == value
    if op == "!=":
        return label != value
    found = re.fullmatch(value, label) is not None
    return found if op == "=~" else not found


class WindowScope(_Strict):
    """What a maintenance window covers: a service (the alert's ``service`` label), a runbook, label
    matchers in Alertmanager's syntax, or several of them (all must hold). At least one."""

    service: str | None = None
    runbook: str | None = None
    matchers: list[str] = Field(default_factory=list)

    @field_validator("matchers")
    @classmethod
    def _parse(cls, matchers: list[str]) -> list[str]:
        for matcher in matchers:
            parse_matcher(matcher)
        return matchers

    @model_validator(mode="after")
    def _something(self) -> "WindowScope":
        if not (self.service or self.runbook or self.matchers):
            raise ValueError("a window needs a service, a runbook or matchers: it would cover everything")
        return self

    def covers(self, runbook: str, labels: dict[str, str]) -> bool:
        return ((self.service is None or labels.get("service") == self.service)
                and (self.runbook is None or runbook == self.runbook)
                and all(_matches(labels, matcher) for matcher in self.matchers))


class RecurringWindow(WindowScope):
    """A window that opens at every ``cron`` time (in ``timezone``) for ``duration_minutes``."""

    name: str = Field(min_length=1)
    cron: str
    duration_minutes: float = Field(gt=0)
    timezone: TimeZoneName = "UTC"
    reason: str = Field(min_length=1)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday)")
        return value


class MaintenanceConfig(_Strict):
    """``config/maintenance.yaml``: recurring maintenance windows."""

    windows: list[RecurringWindow] = Field(default_factory=list)


class Catalog(BaseModel):
    runbooks: list[Runbook]
    _partial: bool = PrivateAttr(default=False)  # read without its runbooks (load_configuration)
    _by_alertname: dict[str, Runbook] | None = PrivateAttr(default=None)  # route()'s index of the runbooks' alert names
    targets: Targets = Field(default_factory=Targets)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    escalation: EscalationConfig = Field(default_factory=_default_escalation)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)
    oncall: OncallConfig = Field(default_factory=OncallConfig)

    def check_scope(self, scope: WindowScope) -> None:
        """A window may name only a runbook of the catalog and a service of ``targets.yaml``."""
        if scope.runbook is not None and not self._partial and scope.runbook not in {r.name for r in self.runbooks}:
            raise ValueError(f"unknown runbook {scope.runbook!r} (see `responder runbooks`)")
        if scope.service is not None and scope.service not in self.targets.services:
            known = ", ".join(sorted(self.targets.services)) or "none configured"
            raise ValueError(f"unknown service {scope.service!r} (services in targets.yaml: {known})")

    def route(self, alertname: str) -> Runbook | None:
        if self._by_alertname is None:  # built on first use: a 50-alert post asked every runbook for each alert
            by_alertname: dict[str, Runbook] = {}
            for runbook in self.runbooks:
                for name in runbook.alertnames:
                    by_alertname.setdefault(name, runbook)
            self._by_alertname = by_alertname
        return self._by_alertname.get(alertname)

    def routes(self, alertnames: list[str]) -> dict[str, Route]:
        """Each routed alert name → its runbook and default severity (unrouted names are left out)."""
        found: dict[str, Route] = {}
        for alertname in dict.fromkeys(alertnames):
            runbook = self.route(alertname)
            if runbook is not None:
                found[alertname] = Route(runbook.name, runbook.severity)
        return found

    def get(self, name: str) -> Runbook:
        for runbook in self.runbooks:
            if runbook.name == name:
                return runbook
        raise KeyError(name)


_ENV_REF = re.compile(r"^\$\{([A-Z_][A-Z0-9_]*)\}$")


def _expand_env(value: Any) -> Any:
    """``"${VAR}"`` → the variable's value (None when unset or empty), recursively."""
    if isinstance(value, str):
        match = _ENV_REF.match(value.strip())
        if match:
            return os.environ.get(match.group(1)) or None
        return value
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    return value


def _read_yaml(path: Path) -> Any:
    try:
        with path.open() as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        return None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc


def _describe(exc: ValidationError, path: Path, data: Any) -> str:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc)
        # Name the runbook rather than its index when we can.
        if len(loc) >= 1 and isinstance(loc[0], int) and isinstance(data, list):
            try:
                where = f"runbook {data[loc[0]].get('name', loc[0])!r}: " + ".".join(str(p) for p in loc[1:])
            except (KeyError, IndexError, TypeError, AttributeError):
                pass
        lines.append(f"{path}: {where}: {err['msg']}")
    return "\n".join(lines)


def read_overrides(config_dir: Path) -> list[tuple[Path, RunbookOverride]]:
    """Every entry of ``config/runbooks/*.yaml`` (each file a ``runbooks:`` list; the folder may be empty)."""
    found: list[tuple[Path, RunbookOverride]] = []
    seen: dict[str, Path] = {}
    for path in sorted((config_dir / "runbooks").glob("*.yaml")):
        data = _read_yaml(path)
        if data is None:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("runbooks") or [], list):
            raise CatalogError(f"{path}: expected a mapping with a 'runbooks' list")
        for index, entry in enumerate(data.get("runbooks") or []):
            name = entry.get("name", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"
            try:
                override = RunbookOverride.model_validate(_expand_env(entry))
            except ValidationError as exc:
                raise CatalogError("\n".join(
                    f"{path}: runbook {name!r}: {'.'.join(str(p) for p in err['loc']) or '(entry)'}: {_hint(err)}"
                    for err in exc.errors()
                )) from None
            if override.name in seen:
                raise CatalogError(f"{path}: runbook {override.name!r} is also configured in {seen[override.name]}")
            seen[override.name] = path
            found.append((path, override))
    return found


def _hint(err: Any) -> str:
    """A pydantic error, with what to do for the fields that moved to the runbook's module."""
    field = err["loc"][0] if err["loc"] else None
    if err["type"] == "extra_forbidden" and field in {"title", "flow", "seeds", "left_to_humans", "risk"}:
        return f"{err['msg']}: a runbook's {field} is declared in its module (its RunbookSpec), not in the catalog"
    if err["type"] == "extra_forbidden" and len(err["loc"]) >= 3 and err["loc"][0] == "mitigations" and err["loc"][2] == "risk":
        return f"{err['msg']}: a mitigation's risk is the registered action's own (tasks/actions)"
    return err["msg"]


def load_configuration(config_dir: Path) -> Catalog:
    """This installation's configuration without its runbooks: what the light commands read (``responder
    oncall``, ``maintenance list``), with no runbook module imported (they import Prefect, about 1.7 s).
    What names a runbook is checked by :func:`load_catalog` (``responder up``, ``runbooks``)."""
    return load_catalog(config_dir, None, [])


def load_catalog(config_dir: Path, declared: list[Declared] | None,
                 overrides: list[tuple[Path, RunbookOverride]]) -> Catalog:
    """The declared runbooks (``flows.registry`` finds them) with ``overrides`` (:func:`read_overrides`,
    which the caller has read to find the installation's own runbook modules), ``targets.yaml``,
    ``notify.yaml``, ``escalation.yaml``, ``policy.yaml``, ``maintenance.yaml`` and ``oncall.yaml``.
    ``declared=None``: the configuration alone (:func:`load_configuration`)."""
    partial, declared = declared is None, declared or []
    by_name = {d.spec.name: d for d in declared}
    for path, override in overrides:
        if override.name not in by_name:
            hint = (f"module {override.module!r} declares no runbook of that name" if override.module else
                    "no runbook module declares it (an installation's own runbook names its module: `module: NAME`)")
            raise CatalogError(f"{path}: runbook {override.name!r}: {hint}")
    change = {override.name: (path, override) for path, override in overrides}
    runbooks: list[Runbook] = []
    alert_owner: dict[str, str] = {}
    for item in declared:
        path, override = change.get(item.spec.name, (None, None))
        runbook = Runbook.merge(item, override, path)
        for alertname in runbook.alertnames:
            if alertname in alert_owner:
                raise CatalogError(f"{path or item.flow}: alert name {alertname!r} is claimed by both "
                                   f"{alert_owner[alertname]!r} and {runbook.name!r}")
            alert_owner[alertname] = runbook.name
        runbooks.append(runbook)
    catalog = Catalog(runbooks=runbooks)
    catalog._partial = partial
    for extra, field in (("targets.yaml", "targets"), ("notify.yaml", "notify"), ("escalation.yaml", "escalation"),
                         ("policy.yaml", "policy"), ("maintenance.yaml", "maintenance"), ("oncall.yaml", "oncall")):
        path = config_dir / extra
        section = _read_yaml(path)
        if section is None and field == "escalation":
            continue
        section = _expand_env(section or {})
        try:
            setattr(catalog, field, Catalog.model_fields[field].annotation.model_validate(section))
        except ValidationError as exc:
            raise CatalogError(_describe(exc, path, section)) from None
    people = {person.name for person in catalog.oncall.people}
    approvers = catalog.policy.approvers
    for where, names in (("default", approvers.default or []), *approvers.runbooks.items(),
                         *((f"risks.{risk.value}", names) for risk, names in approvers.risks.items())):
        if (where != "default" and not where.startswith("risks.") and not catalog._partial
                and where not in {r.name for r in runbooks}):
            raise CatalogError(f"{config_dir / 'policy.yaml'}: approvers: unknown runbook {where!r}")
        for name in names:
            if name not in people:
                raise CatalogError(f"{config_dir / 'policy.yaml'}: approvers.{where}: {name!r} is not a person of "
                                   f"oncall.yaml (people: {', '.join(sorted(people)) or 'none'})")
    for window in catalog.maintenance.windows:
        try:
            catalog.check_scope(window)
        except ValueError as exc:
            raise CatalogError(f"{config_dir / 'maintenance.yaml'}: window {window.name!r}: {exc}") from None
    for number, level in catalog.escalation.levels.items():
        missing = catalog.oncall.unknown(level.rotation, level.person)
        if missing:
            raise CatalogError(f"{config_dir / 'escalation.yaml'}: level {number}: {missing}")
    return catalog
