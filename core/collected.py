"""What an incident's record keeps when its response concludes, and how that reads in a report.

Seed 000's post-incident procedure: "collect artifacts: save logs, metrics, and configuration".
When a response concludes (``flows/lifecycle.py`` ``conclude``, before a verified incident is
closed) it keeps:

* **the alert's metric**: the alert's own PromQL, read from its ``generatorURL`` and stripped of
  its top-level comparison (:mod:`core.promql`), as a range query to the *configured*
  ``monitoring.prometheus_url`` (never the host in the URL: alert text) from :data:`LEAD` before
  the alert started until the close (:func:`tasks.probes.prometheus.range_query`); drawn with the
  threshold, the alert's start, each action of the timeline and the close marked (:mod:`core.charts`);
* **the last error lines** of the service's configured logs (``config/targets.yaml`` ``logs``: the
  sources named after the alert's ``service`` or ``job`` label, else all of them;
  :func:`tasks.probes.logs.error_lines`);
* **the configuration in force**: the runbook's catalog entry with its thresholds, and the targets,
  secrets redacted (``SecretStr`` values, passwords in URLs, fields named like secrets).

It is kept in the store as the incident's note :data:`NOTE` (JSON), so the post-mortem reads it
after Prometheus dropped the series. Nothing here raises: a part that cannot be collected or drawn
says why in one line, and the response goes on::

    collected = collect(catalog, runbook, alert, incident_id, store.timeline(incident_id), until=now,
                        closed=True, verdict="verified")
    keep(store, collected)
    section(collected)        # markdown: the chart, the log lines, the configuration
    chart_svg(collected)      # the picture as SVG bytes (a file upload)
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field, ValidationError

from core import charts
from core.alerts import Alert
from core.catalog import Catalog, LogSource, Runbook
from core.promql import expression_of, strip_comparison
from tasks.base import ResponderError
from tasks.probes import logs, prometheus

if TYPE_CHECKING:
    from core.store import Store

NOTE = "collected_at_close"
LEAD = timedelta(minutes=30)  # seed-agnostic: enough to see whether it climbed or spiked
MAX_SPAN = timedelta(days=2)  # an alert that started days ago: its last two days
MAX_POINTS = 720  # points per series: a pixel or two each on the chart, a small note in the store
MAX_SERIES = charts.MAX_LINES
LOG_LINES = 20
MAX_LOG_SOURCES = 5
ACCESS_5XX = r'" 5\d\d '  # an access log's error lines: the 5xx responses
REDACTED = "**********"
_SECRET_NAME = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|credential|private[_-]?key|auth", re.I)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SECRET_PARAM = re.compile(r"(?P<name>[?&][^=&#\s]*(?:pass|secret|token|key|auth|signature)[^=&#\s]*=)[^&#\s]*", re.I)


class SeriesData(BaseModel):
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (unix seconds, value)


class MetricWindow(BaseModel):
    """The alert's metric around the incident, or (``note``) why there is none."""

    expression: str | None = None
    query: str | None = None
    threshold: float | None = None
    comparison: str | None = None
    prometheus: str | None = None  # without credentials
    start: datetime
    end: datetime
    step_s: float = 0.0
    series: list[SeriesData] = Field(default_factory=list)
    series_count: int = 0
    note: str = ""


class Marker(BaseModel):
    at: datetime
    label: str
    kind: charts.MarkKind
    text: str = ""


class LogLines(BaseModel):
    source: str
    path: str
    pattern: str = ""
    matched: int = 0
    lines: list[dict[str, Any]] = Field(default_factory=list)  # {file, at, line}
    note: str = ""


class Collected(BaseModel):
    incident_id: str
    runbook: str
    alertname: str
    verdict: str
    closed: bool
    collected_at: datetime
    metric: MetricWindow
    marks: list[Marker] = Field(default_factory=list)
    logs: list[LogLines] = Field(default_factory=list)
    logs_note: str = ""
    configuration: dict[str, Any] = Field(default_factory=dict)


# -- collecting ---------------------------------------------------------------------------


def window(alert_start: datetime, until: datetime, lead: timedelta = LEAD) -> tuple[datetime, datetime, float]:
    """From ``lead`` before the alert started to ``until``, at most :data:`MAX_SPAN`, and the step
    that gives at most :data:`MAX_POINTS` points (never under a second)."""
    earliest, began = until - MAX_SPAN, min(alert_start, until)
    start = earliest if began - earliest < lead else began - lead  # (Alertmanager's zero time is year 1)
    if until - start < timedelta(seconds=2):
        start = until - timedelta(seconds=2)
    step = max(1.0, math.ceil((until - start).total_seconds() / MAX_POINTS))
    return start, until, step


def metric_window(prometheus_url: str | None, alert: Alert, start: datetime, end: datetime,
                  step_s: float) -> MetricWindow:
    """The alert's metric from ``start`` to ``end`` (module doc); ``note`` says why there is none."""
    found = MetricWindow(start=start, end=end, step_s=step_s, expression=expression_of(alert.generatorURL))
    if not prometheus_url:
        found.note = "no Prometheus is configured (config/targets.yaml monitoring.prometheus_url)"
        return found
    found.prometheus = prometheus.public_url(prometheus_url)
    if found.expression is None:
        found.note = "the alert's generatorURL carries no Prometheus expression (g0.expr)"
        return found
    stripped = strip_comparison(found.expression)
    found.query, found.threshold, found.comparison = stripped.query, stripped.threshold, stripped.comparison
    try:
        series = prometheus.range_query(prometheus_url, stripped.query, start.timestamp(), end.timestamp(), step_s)
    except ResponderError as exc:
        found.note = f"Prometheus could not evaluate `{_clip(stripped.query, 120)}`: {_clip(exc.message, 200)}"
        return found
    except httpx.HTTPError as exc:
        found.note = f"Prometheus at {found.prometheus} did not answer ({type(exc).__name__}: {_clip(str(exc), 120)})"
        return found
    series = [s for s in series if s.points]
    lowest_first = stripped.comparison in ("<", "<=")
    series.sort(key=lambda s: min(v for _, v in s.points) if lowest_first else -max(v for _, v in s.points))
    found.series_count = len(series)
    found.series = [SeriesData(labels=s.labels, points=s.points) for s in series[:MAX_SERIES]]
    if not series:
        found.note = f"Prometheus has no data for `{_clip(stripped.query, 120)}` in this window"
    return found


def markers(alert: Alert, timeline: list[dict[str, Any]], until: datetime, closed: bool, verdict: str) -> list[Marker]:
    """The alert's start, each action of the timeline (A1, A2, …) and the close (or the verdict's moment)."""
    marks = [Marker(at=alert.startsAt, label="alert started", kind="start",
                    text=f"{alert.alertname} fired at {alert.startsAt.isoformat()}")]
    actions = [entry for entry in timeline if entry.get("kind") == "action"]
    for n, entry in enumerate(actions, 1):
        try:
            at = datetime.fromisoformat(entry["at"])
        except (KeyError, TypeError, ValueError):
            continue
        marks.append(Marker(at=at, label=f"A{n}", kind="action", text=_clip(str(entry.get("text", "")), 200)))
    marks.append(Marker(at=until, label="closed" if closed else verdict, kind="close" if closed else "end",
                        text="incident closed" if closed else f"response concluded: {verdict}"))
    return marks


def error_log_lines(sources: dict[str, LogSource], labels: dict[str, str], since: datetime,
                    until: datetime) -> tuple[list[LogLines], str]:
    """The last error lines of the service's logs in the window, per source; or one line why none."""
    if not sources:
        return [], "no logs are configured (config/targets.yaml logs)"
    named = {name: sources[name] for name in (labels.get("service"), labels.get("job")) if name and name in sources}
    chosen = list((named or sources).items())[:MAX_LOG_SOURCES]
    out = []
    for name, source in chosen:
        pattern = ACCESS_5XX if source.format == "access" else source.error_pattern
        try:
            result = logs.error_lines(source.path, pattern, since=since, until=until, limit=LOG_LINES)
        except (ResponderError, OSError) as exc:
            out.append(LogLines(source=name, path=source.path, pattern=pattern,
                                note=f"cannot be read: {_clip(getattr(exc, 'message', str(exc)), 200)}"))
            continue
        out.append(LogLines(source=name, path=source.path, pattern=pattern, matched=int(result.value or 0),
                            lines=result.evidence.get("lines", [])))
    return out, ""


def redact(value: Any, key: str = "") -> Any:
    """Configuration with its secrets replaced: fields named like secrets, credentials in URLs and
    secret-looking query parameters. (``SecretStr`` values already dump as asterisks.)"""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if value and _SECRET_NAME.search(key):
            return REDACTED
        value = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", value)
        return _SECRET_PARAM.sub(lambda m: f"{m.group('name')}{REDACTED}", value)
    return value


def configuration(catalog: Catalog, runbook: Runbook) -> dict[str, Any]:
    """The runbook's entry (with the thresholds in force) and the targets, redacted."""
    entry = runbook.model_dump(mode="json")
    entry["thresholds_in_force"] = runbook.limits(runbook.limits_model).model_dump(mode="json")
    return redact({"runbook": entry, "targets": catalog.targets.model_dump(mode="json")})


def collect(catalog: Catalog, runbook: Runbook, alert: Alert, incident_id: str, timeline: list[dict[str, Any]],
            until: datetime, closed: bool, verdict: str, lead: timedelta = LEAD) -> Collected:
    """Everything the module doc lists. Never raises: a part that fails says so in one line."""
    start, end, step = window(alert.startsAt, until, lead)
    try:
        metric = metric_window(catalog.targets.monitoring.prometheus_url, alert, start, end, step)
    except Exception as exc:  # noqa: BLE001 - the response must not fail for its record; said in one line
        metric = MetricWindow(start=start, end=end, step_s=step, note=f"the metric could not be collected ({_error(exc)})")
    try:
        log_lines, logs_note = error_log_lines(catalog.targets.logs, alert.labels, start, end)
    except Exception as exc:  # noqa: BLE001 - as above
        log_lines, logs_note = [], f"the logs could not be read ({_error(exc)})"
    try:
        config = configuration(catalog, runbook)
    except Exception as exc:  # noqa: BLE001 - as above
        config = {"error": f"the configuration could not be recorded ({_error(exc)})"}
    return Collected(incident_id=incident_id, runbook=runbook.name, alertname=alert.alertname, verdict=verdict,
                     closed=closed, collected_at=datetime.now(timezone.utc), metric=metric,
                     marks=markers(alert, timeline, until, closed, verdict), logs=log_lines, logs_note=logs_note,
                     configuration=config)


# -- keeping ------------------------------------------------------------------------------


def keep(store: "Store", collected: Collected) -> None:
    """With the incident, as its note :data:`NOTE` (the latest conclusion's record replaces an earlier one)."""
    store.set_note(collected.incident_id, NOTE, collected.model_dump_json())


def kept(store: "Store", incident_id: str) -> Collected | None:
    """What :func:`keep` stored for the incident, or None (nothing concluded, or an unreadable record)."""
    raw = store.note(incident_id, NOTE)
    if not raw:
        return None
    try:
        return Collected.model_validate_json(raw)
    except ValidationError:
        return None


# -- reading ------------------------------------------------------------------------------


def _distinguishing(series: list[SeriesData]) -> list[str]:
    """Each series' legend: the labels that differ between the series (all but the name when one)."""
    names = sorted({k for s in series for k in s.labels if k != "__name__"})
    differing = [k for k in names if len({s.labels.get(k) for s in series}) > 1] if len(series) > 1 else names
    return [", ".join(f"{k}={s.labels[k]}" for k in differing if k in s.labels) or s.labels.get("__name__", "value")
            for s in series]


def chart(collected: Collected) -> charts.Chart:
    """The picture's data: the kept points, the threshold, the marks, the window."""
    metric = collected.metric
    return charts.Chart(
        title=f"{collected.alertname}: {_clip(metric.query or metric.expression or '', 90)}",
        subtitle=(f"{metric.comparison or ''} {metric.threshold:g} is the alert's threshold"
                  if metric.threshold is not None else "the alert's expression has no numeric threshold").strip(),
        lines=[charts.Line(label, s.points) for label, s in zip(_distinguishing(metric.series), metric.series)],
        threshold=metric.threshold,
        marks=[charts.Mark(m.at.timestamp(), m.label, m.kind) for m in collected.marks],
        start=metric.start.timestamp(), end=metric.end.timestamp(), gap_s=metric.step_s * 1.5 + 1,
        more_series=max(0, metric.series_count - len(metric.series)),
    )


def chart_svg(collected: Collected) -> bytes | None:
    """The chart as SVG bytes, or None when there is nothing to draw (``metric.note`` says why)."""
    if not collected.metric.series:
        return None
    return charts.svg_bytes(chart(collected))


def chart_markdown(collected: Collected) -> str:
    """The chart as a markdown image with its marks explained, or one line saying why there is none.
    Never raises: a picture that cannot be drawn is one line, not a failed response."""
    metric = collected.metric
    if not metric.series:
        return f"_No chart: {metric.note or 'no data'}._"
    try:
        image = charts.markdown_image(chart(collected), f"{collected.alertname} around the incident")
    except Exception as exc:  # noqa: BLE001 - a picture is never worth a failed response
        return f"_No chart: it could not be drawn ({_error(exc)})._"
    lines = [image, ""]
    lines += [f"- **{m.label}** {m.at:%H:%M:%S} UTC: {_inline(m.text)}" for m in collected.marks]
    return "\n".join(lines)


def section(collected: Collected, level: int = 2) -> str:
    """Markdown of everything kept: the chart, the query and window, the log lines, the configuration."""
    h = "#" * level
    metric = collected.metric
    lines = [f"{h} Collected at close", "",
             f"Kept with the incident at {collected.collected_at:%Y-%m-%d %H:%M:%S} UTC ({collected.verdict}), "
             "readable after Prometheus has dropped the series.", "",
             f"{h}# The alert's metric", "", chart_markdown(collected), ""]
    if metric.query:
        lines.append(f"Query `{_inline(metric.query)}` (the alert's `{_inline(metric.expression or '')}` without its "
                     f"comparison) on {metric.prometheus}, {metric.start:%Y-%m-%d %H:%M:%S} to {metric.end:%H:%M:%S} UTC, "
                     f"every {metric.step_s:g} s: {metric.series_count} series"
                     + (f", the {len(metric.series)} furthest past the threshold kept"
                        if metric.series_count > len(metric.series) else "") + ".")
        lines.append("")
    lines += [f"{h}# Error lines in the logs", ""]
    if collected.logs_note:
        lines += [f"_{collected.logs_note}._", ""]
    for source in collected.logs:
        if source.note:
            lines += [f"- `{source.source}` ({source.path}): {source.note}", ""]
            continue
        shown = f"the last {len(source.lines)} of " if source.matched > len(source.lines) else ""
        lines += [f"`{source.source}` ({source.path}): {shown}{source.matched} lines matching `{_inline(source.pattern)}` "
                  "in the window", ""]
        if source.lines:
            lines += _fenced("\n".join(str(line.get("line", "")) for line in source.lines), "text")
            lines.append("")
    lines += [f"{h}# Configuration in force (secrets redacted)", ""]
    lines += _fenced(json.dumps(collected.configuration, indent=2, sort_keys=True, default=str), "json")
    return "\n".join(lines)


def _fenced(text: str, language: str) -> list[str]:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", text, fence]


def _inline(text: str) -> str:
    return " ".join(text.replace("`", "'").split())


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_clip(str(exc), 160)}"
