"""On-call rotations (``config/oncall.yaml``): who is on call in a rotation at a given time.

A rotation's members take turns: the first member begins on ``start`` at ``at`` (the rotation's
local time), and the turn passes to the next member at every hand-off: each day at ``at``
(``daily``), or each ``weekday`` at ``at`` (``weekly``; the first turn ends at the first such
hand-off after ``start``, so it may be shorter than a week). Hand-offs are counted in the
rotation's time zone, so a 09:00 hand-off stays at 09:00 local across a DST change. A hand-off
at a wall time the clocks skip (02:30 on a spring-forward night) happens at that time read with
the old offset, an hour later by the new clock; at a wall time that happens twice, at the first.
Before ``start`` nobody is on call.

An override puts a person on call in a rotation from ``from`` until ``until`` (the person need
not be a member: someone covering from another team). Where overrides of one rotation overlap,
the one listed last wins, as in PagerDuty and Grafana OnCall.

Escalation levels (``config/escalation.yaml``) name a rotation or a person of this file; a
page goes to whoever is on call when it is sent (``core/escalation.py``).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Iterator, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_zone)]  # an IANA time zone name, checked at load

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Person(_Strict):
    """Someone who can be paged, and how each channel names them."""

    name: str = Field(min_length=1)
    slack: str | None = Field(default=None, description="Slack user id (U0123ABCD): pages @-mention <@id>")
    discord: str | None = Field(default=None, description="Discord user id (digits): pages @-mention <@id>")
    pagerduty: str | None = Field(default=None, description="PagerDuty user id (PABC123) or e-mail, named in the event")

    @field_validator("slack")
    @classmethod
    def _slack(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[UW][A-Z0-9]{2,}", value):
            raise ValueError(f"{value!r} is not a Slack user id (like U0123ABCD; a handle cannot be @-mentioned)")
        return value

    @field_validator("discord")
    @classmethod
    def _discord(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{5,25}", value):
            raise ValueError(f"{value!r} is not a Discord user id (digits; a user name cannot be @-mentioned)")
        return value

    @field_validator("pagerduty")
    @classmethod
    def _pagerduty(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"P[A-Z0-9]{5,}|[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError(f"{value!r} is neither a PagerDuty user id (like PABC123) nor an e-mail address")
        return value

    def identities(self) -> dict[str, str]:
        """``{"name": …, "slack": …, …}``: the identities this person has."""
        return {key: value for key, value in self.model_dump().items() if value is not None}


class Rotation(_Strict):
    members: list[str] = Field(min_length=1, description="names from people, in turn order (the first begins)")
    handoff: Literal["daily", "weekly"]
    at: str = Field(default="09:00", description="hand-off time, HH:MM in the rotation's time zone")
    weekday: Weekday | None = Field(default=None, description="weekly: the hand-off day (mon..sun)")
    timezone: TimeZoneName = "UTC"
    start: date = Field(description="the day the first member begins, at `at`")

    @field_validator("at")
    @classmethod
    def _at(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
        return value

    @model_validator(mode="after")
    def _weekday(self) -> "Rotation":
        if self.handoff == "weekly" and self.weekday is None:
            raise ValueError("a weekly rotation needs a weekday (mon..sun) for its hand-off")
        if self.handoff == "daily" and self.weekday is not None:
            raise ValueError("a daily rotation hands off every day: drop weekday, or make it weekly")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _instant(self, day: date) -> datetime:
        """The hand-off instant on a local day (UTC)."""
        hour, minute = (int(part) for part in self.at.split(":"))
        return datetime.combine(day, time(hour, minute), tzinfo=self.zone).astimezone(timezone.utc)

    @property
    def begins(self) -> datetime:
        return self._instant(self.start)

    @property
    def _step(self) -> int:
        return 1 if self.handoff == "daily" else 7

    def _first_handoff(self) -> date:
        if self.handoff == "daily":
            return self.start + timedelta(days=1)
        ahead = (WEEKDAYS.index(self.weekday or "mon") - self.start.weekday()) % 7 or 7
        return self.start + timedelta(days=ahead)

    def handoffs(self, at: datetime) -> int | None:
        """How many hand-offs happened from the rotation's beginning up to ``at``; None before it begins."""
        at = _aware(at).astimezone(timezone.utc)
        if at < self.begins:
            return None
        today = at.astimezone(self.zone).date()
        last = today if at >= self._instant(today) else today - timedelta(days=1)
        first = self._first_handoff()
        return 0 if last < first else (last - first).days // self._step + 1

    def next_handoff(self, at: datetime) -> datetime:
        """The first hand-off after ``at`` (the beginning, before the rotation begins)."""
        done = self.handoffs(at)
        if done is None:
            return self.begins
        return self._instant(self._first_handoff() + timedelta(days=self._step * done))

    def member(self, at: datetime) -> str | None:
        done = self.handoffs(at)
        return None if done is None else self.members[done % len(self.members)]


class Override(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    person: str
    rotation: str
    from_: AwareDatetime = Field(alias="from", description="ISO 8601 with an offset")
    until: AwareDatetime = Field(description="ISO 8601 with an offset; after from")

    @model_validator(mode="after")
    def _order(self) -> "Override":
        if self.until <= self.from_:
            raise ValueError(f"override of rotation {self.rotation!r} by {self.person!r}: until "
                             f"({self.until.isoformat()}) must be after from ({self.from_.isoformat()})")
        return self

    def covers(self, rotation: str, at: datetime) -> bool:
        return self.rotation == rotation and self.from_ <= at < self.until


class OncallConfig(_Strict):
    """``config/oncall.yaml``: people, rotations and overrides."""

    people: list[Person] = Field(default_factory=list)
    rotations: dict[str, Rotation] = Field(default_factory=dict)
    overrides: list[Override] = Field(default_factory=list)

    @field_validator("people")
    @classmethod
    def _unique(cls, people: list[Person]) -> list[Person]:
        seen: set[str] = set()
        for person in people:
            if person.name in seen:
                raise ValueError(f"person {person.name!r} is listed twice")
            seen.add(person.name)
        return people

    @field_validator("rotations")
    @classmethod
    def _members_known(cls, rotations: dict[str, Rotation], info: ValidationInfo) -> dict[str, Rotation]:
        if "people" not in info.data:  # people did not validate: that error is reported already
            return rotations
        known = {person.name for person in info.data["people"]}
        for name, rotation in rotations.items():
            for member in rotation.members:
                if member not in known:
                    raise ValueError(f"rotation {name!r}: member {member!r} is not in people "
                                     f"({', '.join(sorted(known)) or 'none listed'})")
        return rotations

    @field_validator("overrides")
    @classmethod
    def _overrides_known(cls, overrides: list[Override], info: ValidationInfo) -> list[Override]:
        if "people" not in info.data or "rotations" not in info.data:
            return overrides
        people = {person.name for person in info.data["people"]}
        rotations = info.data["rotations"]
        for override in overrides:
            if override.rotation not in rotations:
                raise ValueError(f"override by {override.person!r}: unknown rotation {override.rotation!r} "
                                 f"(rotations: {', '.join(sorted(rotations)) or 'none defined'})")
            if override.person not in people:
                raise ValueError(f"override of rotation {override.rotation!r}: person {override.person!r} is not in "
                                 f"people ({', '.join(sorted(people)) or 'none listed'})")
        return overrides

    def person(self, name: str) -> Person:
        for person in self.people:
            if person.name == name:
                return person
        raise KeyError(name)

    def unknown(self, rotation: str | None = None, person: str | None = None) -> str | None:
        """Why a rotation or person named elsewhere (an escalation level) is not here; None when it is."""
        if rotation is not None and rotation not in self.rotations:
            return (f"rotation {rotation!r} is not in oncall.yaml "
                    f"(rotations: {', '.join(sorted(self.rotations)) or 'none defined'})")
        if person is not None and person not in {p.name for p in self.people}:
            return (f"person {person!r} is not in oncall.yaml's people "
                    f"({', '.join(sorted(p.name for p in self.people)) or 'none listed'})")
        return None


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at.isoformat()}: a time without an offset is ambiguous")
    return at


def on_call(config: OncallConfig, rotation: str, at: datetime) -> Person | None:
    """Who is on call in ``rotation`` at ``at``: the last override covering it, else the member whose
    turn it is; None before the rotation begins (and no override covers ``at``)."""
    at = _aware(at)
    schedule = config.rotations[rotation]
    for override in reversed(config.overrides):
        if override.covers(rotation, at):
            return config.person(override.person)
    member = schedule.member(at)
    return None if member is None else config.person(member)


def _changes(config: OncallConfig, rotation: str, at: datetime) -> Iterator[datetime]:
    """Every instant after ``at`` at which the on-call person of ``rotation`` may change, in order:
    each override's boundaries, and scheduled hand-offs up to one full turn past the last boundary."""
    schedule = config.rotations[rotation]
    boundaries = sorted({t for o in config.overrides if o.rotation == rotation for t in (o.from_, o.until) if t > at})
    handoffs: list[datetime] = []
    horizon = max(boundaries, default=at)
    moment = at
    while moment <= horizon or len([t for t in handoffs if t > horizon]) <= len(schedule.members):
        moment = schedule.next_handoff(moment)
        handoffs.append(moment)
    yield from sorted(set(boundaries) | set(handoffs))


def next_change(config: OncallConfig, rotation: str, at: datetime) -> tuple[datetime, Person | None] | None:
    """When the on-call person of ``rotation`` next changes after ``at``, and to whom; None if never
    (one member and no override ahead)."""
    at = _aware(at)
    current = on_call(config, rotation, at)
    for moment in _changes(config, rotation, at):
        then = on_call(config, rotation, moment)
        if (then and then.name) != (current and current.name):
            return moment, then
    return None


def vacancy(config: OncallConfig, rotation: str, at: datetime) -> str:
    """Why nobody is on call in ``rotation`` at ``at`` (the rotation has not begun)."""
    schedule = config.rotations[rotation]
    begins = schedule.begins.astimezone(schedule.zone)
    return f"nobody on call in rotation {rotation!r} (it begins {begins.strftime('%Y-%m-%d %H:%M %Z')})"
