"""Log probes: the seeds' ``grep``/``jq`` steps over configured log files, within a time window.

Seed lines and the probe that does each:

* ``grep -c "ERROR" /var/log/medianest/*.log`` and "identify error patterns" (seed 000),
  ``tail -n 200 error.log`` (seed 002), ``grep "Slow query detected"`` (seed 002)
  -> :func:`error_counts` (per file, per level, per error type, top message patterns), and
  :func:`error_lines` (the last matching lines themselves, kept when an incident closes);
* ``grep "500\\|502\\|503\\|504" /var/log/nginx/access.log`` (seed 000) -> :func:`access_5xx`;
* ``grep "authentication failed" /var/log/medianest/auth.log`` "look for brute force attacks"
  (seed 000) -> :func:`failed_logins`, grouped by source address;
* ``grep '/api/v1/books' app.log | grep ERROR | jq -s 'group_by(.error_type) | map({error:
  .[0].error_type, count: length})'`` and the same by ``.user_id`` (seed 002) -> :func:`json_group_by`;
* "check request logs for slow requests, identify which endpoints are slow" (seed 001), "Slow
  requests on /api/v1/toc/generate: p95=4250ms" (seed 002) -> :func:`slow_requests`.

Paths come from ``config/targets.yaml`` ``logs`` (a path or a glob such as
``/var/log/medianest/*.log``), never from an alert. Only the last ``max_bytes`` of each file are
read (a partial first line is dropped), so a huge log costs bounded time.

Time window: a line's time is read from an ISO-8601 stamp at its start (``2026-11-22T10:00:00Z``,
``[2026-11-22 10:00:00,123]``), a common-log ``[22/Nov/2026:10:00:00 +0000]``, or a JSON field
(``timestamp``, ``time``, ``ts``, ``@timestamp``, ``asctime``; ISO text or epoch seconds/ms).
A line without a stamp belongs to the line before it (a traceback); lines before any stamp cannot
be placed and are counted, and ``evidence["undated"]`` says how many. Stamps without a zone are
taken as this host's local time.

A missing file is ``ResponderError(CONFIG)``: the configuration points at nothing.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import math
import os
import re
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.probes import clip

DEFAULT_ERROR_PATTERN = r"\b(ERROR|FATAL|CRITICAL)\b"
MAX_BYTES = 32 * 2**20
TOP = 10

_ISO = re.compile(r"^\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)")
_CLF_TIME = re.compile(r"\[(\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\]")
_ACCESS = re.compile(
    r'^(?P<addr>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+)[^"]*" (?P<status>\d{3}) '
)
_TIME_FIELDS = ("timestamp", "time", "ts", "@timestamp", "asctime", "date")
_MESSAGE_FIELDS = ("message", "msg", "event", "error")
_TYPE_FIELDS = ("error_type", "exc_type", "exception_type", "error.type", "type")
_LEVEL_FIELDS = ("level", "levelname", "severity", "log.level")
_ADDRESS_FIELDS = ("ip", "client_ip", "remote_addr", "source_ip", "src_ip", "ip_address", "address", "client.ip")
_ADDRESS_HINT = re.compile(r"(?:from|ip|addr|address|client|src|source)[=: ]+\[?([0-9A-Fa-f:.]{3,45})", re.I)
_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")
_EXCEPTION = re.compile(r"\b([A-Z][A-Za-z0-9_]*(?:Error|Exception))\b")
_NORMALISE = [
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<ip>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{16,}\b"), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
]


@dataclass
class _Record:
    file: str
    text: str
    data: dict[str, Any] | None
    at: datetime | None


@dataclass
class _Read:
    files: list[str]
    lines: int = 0
    in_window: int = 0
    undated: int = 0
    first: datetime | None = None
    last: datetime | None = None

    def evidence(self, since: datetime | None) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines_read": self.lines,
            "lines_in_window": self.in_window,
            "undated": self.undated,
            "since": since.isoformat() if since else None,
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
        }


def _files(path: str) -> list[str]:
    if not path or not os.path.isabs(path):
        raise ResponderError(ErrorCode.CONFIG, f"log path {path!r} must be absolute")
    found = sorted(p for p in glob.glob(path) if os.path.isfile(p))
    if not found:
        raise ResponderError(ErrorCode.CONFIG, f"no log file matches {path}")
    return found


def _tail(path: str, max_bytes: int) -> Iterator[str]:
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        fh.seek(start)
        if start:
            fh.readline()  # a partial line
        for raw in fh:
            yield raw.decode("utf-8", "replace").rstrip("\r\n")


def _field(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return data.get(dotted) if isinstance(data, Mapping) else None
        value = value[part]
    return value


def _first(data: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        value = _field(data, name)
        if value not in (None, ""):
            return value
    return None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.astimezone()


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, timezone.utc)
    if isinstance(value, str):
        match = _ISO.match(value.strip())
        if match:
            try:
                return _aware(datetime.fromisoformat(match.group(1).replace(",", ".").replace("Z", "+00:00")))
            except ValueError:
                return None
    return None


def _line_time(text: str, data: Mapping[str, Any] | None) -> datetime | None:
    if data is not None:
        return _parse_time(_first(data, _TIME_FIELDS))
    stamp = _parse_time(text[:40])
    if stamp is not None:
        return stamp
    match = _CLF_TIME.search(text[:120])
    if match:
        try:
            return datetime.strptime(match.group(1), "%d/%b/%Y:%H:%M:%S %z")
        except ValueError:
            return None
    return None


def _since(since_minutes: float | None) -> datetime | None:
    if since_minutes is None:
        return None
    if since_minutes <= 0:
        raise ResponderError(ErrorCode.CONFIG, f"since_minutes must be positive, not {since_minutes!r}")
    return datetime.now(timezone.utc) - timedelta(minutes=since_minutes)


def _records(path: str, since: datetime | None, max_bytes: int, read: _Read) -> Iterator[_Record]:
    for name in read.files:
        previous: datetime | None = None
        for text in _tail(name, max_bytes):
            if not text.strip():
                continue
            read.lines += 1
            data = None
            if text.lstrip().startswith("{"):
                try:
                    parsed = json.loads(text)
                    data = parsed if isinstance(parsed, dict) else None
                except ValueError:
                    data = None
            at = _line_time(text, data)
            if at is None and data is None:
                at = previous  # a continuation line (traceback) belongs to the line before
            if at is None:
                read.undated += 1
            else:
                previous = at
                if since is not None and at < since:
                    continue
                read.first = at if read.first is None or at < read.first else read.first
                read.last = at if read.last is None or at > read.last else read.last
            read.in_window += 1
            yield _Record(name, text, data, at)


def _compile(pattern: str, flags: int = 0) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ResponderError(ErrorCode.CONFIG, f"pattern {pattern!r}: {exc}") from None


def _message(record: _Record) -> str:
    if record.data is not None:
        message = _first(record.data, _MESSAGE_FIELDS)
        return str(message) if message is not None else record.text
    return _ISO.sub("", record.text, count=1).lstrip("] ")


def signature(message: str) -> str:
    """A message with ids, numbers, addresses and quoted values replaced: one line per error *kind*."""
    for pattern, placeholder in _NORMALISE:
        message = pattern.sub(placeholder, message)
    return clip(" ".join(message.split()), 160) or ""


def _top(counter: Counter[str], top: int) -> list[dict[str, Any]]:
    return [{"key": key, "count": count} for key, count in counter.most_common(top)]


def error_counts(
    path: str,
    pattern: str = DEFAULT_ERROR_PATTERN,
    since_minutes: float | None = None,
    threshold: int | None = None,
    top: int = TOP,
    max_bytes: int = MAX_BYTES,
    probe: str = "log_errors",
) -> ProbeResult:
    """Lines matching ``pattern`` per file, per level, per error type and per message pattern.

    The type is a JSON line's ``error_type``/``exc_type`` field, else the first ``...Error`` or
    ``...Exception`` word, else the matched text. Not ok when a ``threshold`` is given and the
    count exceeds it.
    """
    regex = _compile(pattern)
    since = _since(since_minutes)
    read = _Read(_files(path))
    per_file: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    types: Counter[str] = Counter()
    patterns: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for record in _records(path, since, max_bytes, read):
        match = regex.search(record.text)
        if not match:
            continue
        per_file[record.file] += 1
        level = _first(record.data, _LEVEL_FIELDS) if record.data is not None else None
        levels[str(level or match.group(0)).upper()] += 1
        kind = _first(record.data, _TYPE_FIELDS) if record.data is not None else None
        if kind is None:
            exception = _EXCEPTION.search(record.text)
            kind = exception.group(1) if exception else match.group(0)
        types[str(kind)] += 1
        key = signature(_message(record))
        patterns[key] += 1
        examples.setdefault(key, clip(record.text, 300) or "")
    total = sum(per_file.values())
    top_patterns = [{"pattern": key, "count": n, "example": examples[key]} for key, n in patterns.most_common(top)]
    return ProbeResult(
        probe=probe,
        ok=threshold is None or total <= threshold,
        value=float(total),
        threshold=None if threshold is None else float(threshold),
        unit=" lines",
        summary=f"{total} matching /{clip(pattern, 40)}/"
        + (f" in the last {since_minutes:g} min" if since_minutes else "")
        + (f"; most: {types.most_common(1)[0][0]}" if types else ""),
        evidence={**read.evidence(since), "pattern": pattern, "per_file": dict(per_file), "by_level": dict(levels),
                  "by_type": _top(types, top), "top_patterns": top_patterns},
    )


def error_lines(
    path: str,
    pattern: str = DEFAULT_ERROR_PATTERN,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 20,
    max_bytes: int = MAX_BYTES,
    probe: str = "log_error_lines",
) -> ProbeResult:
    """The last ``limit`` lines matching ``pattern`` stamped between ``since`` and ``until``, as written.

    What an incident's record keeps of its logs when it closes (seed 000 "collect artifacts: save
    logs"): :func:`error_counts` says how many and which kinds, this keeps the lines themselves.
    Lines that cannot be placed in time (before any stamp) are left out when a window is given.
    Evidence only: always ok; ``value`` is how many lines matched in the window.
    """
    regex = _compile(pattern)
    read = _Read(_files(path))
    kept: deque[dict[str, Any]] = deque(maxlen=max(1, limit))
    matched = 0
    for record in _records(path, since, max_bytes, read):
        if (since or until) and record.at is None:
            continue
        if until is not None and record.at is not None and record.at > until:
            continue
        if regex.search(record.text):
            matched += 1
            kept.append({"file": record.file, "at": record.at.isoformat() if record.at else None,
                         "line": clip(record.text, 500) or ""})
    return ProbeResult(
        probe=probe, ok=True, value=float(matched), unit=" lines",
        summary=f"{matched} lines matching /{clip(pattern, 40)}/" + (f", the last {len(kept)} kept" if matched > len(kept) else ""),
        evidence={**read.evidence(since), "pattern": pattern, "until": until.isoformat() if until else None,
                  "lines": list(kept)},
    )


def access_5xx(
    path: str,
    since_minutes: float | None = None,
    threshold_percent: float = 5.0,
    top: int = TOP,
    max_bytes: int = MAX_BYTES,
) -> ProbeResult:
    """5xx responses in a common/combined access log (or JSON lines with ``status`` and ``path``).

    ``value`` is the 5xx share in percent (seed 000 HIGH_ERROR_RATE ">5%"); evidence has the
    counts by status (500/502/503/504) and the paths with most 5xx.
    """
    since = _since(since_minutes)
    read = _Read(_files(path))
    requests = errors = unparsed = 0
    statuses: Counter[str] = Counter()
    path_total: Counter[str] = Counter()
    path_errors: Counter[str] = Counter()
    for record in _records(path, since, max_bytes, read):
        if record.data is not None:
            status = _first(record.data, ("status", "status_code", "response.status"))
            endpoint = _first(record.data, ("path", "url", "route", "endpoint", "request.path"))
        else:
            match = _ACCESS.match(record.text)
            status, endpoint = (match.group("status"), match.group("path")) if match else (None, None)
        if status is None or not str(status).isdigit():
            unparsed += 1
            continue
        endpoint = str(endpoint or "?").split("?", 1)[0]
        requests += 1
        path_total[endpoint] += 1
        if str(status).startswith("5"):
            errors += 1
            statuses[str(status)] += 1
            path_errors[endpoint] += 1
    percent = round(100.0 * errors / requests, 3) if requests else 0.0
    paths = [{"path": p, "errors_5xx": n, "requests": path_total[p], "percent": round(100.0 * n / path_total[p], 1)}
             for p, n in path_errors.most_common(top)]
    return ProbeResult(
        probe="access_log_5xx",
        ok=percent <= threshold_percent,
        value=percent,
        threshold=threshold_percent,
        unit="%",
        summary=f"{errors} of {requests} requests answered 5xx"
        + (f"; most on {paths[0]['path']}" if paths else ""),
        evidence={**read.evidence(since), "requests": requests, "errors_5xx": errors, "by_status": dict(statuses),
                  "top_paths": paths, "unparsed": unparsed},
    )


def _address(record: _Record) -> str | None:
    candidates: list[str] = []
    if record.data is not None:
        value = _first(record.data, _ADDRESS_FIELDS)
        if value is not None:
            candidates.append(str(value))
    candidates += _ADDRESS_HINT.findall(record.text)
    candidates += _IPV4.findall(record.text)
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate.strip("[]").rstrip(".,;")))
        except ValueError:
            continue
    return None


def failed_logins(
    path: str,
    pattern: str = r"authentication failed",
    since_minutes: float | None = 15,
    threshold_per_address: int = 10,
    top: int = TOP,
    max_bytes: int = MAX_BYTES,
) -> ProbeResult:
    """Failed logins grouped by source address; not ok when one address exceeds the threshold.

    ``evidence["over_threshold"]`` lists the addresses a blocklist step may act on. Lines
    matching ``pattern`` (case-insensitive) without a recognisable address count as ``unknown``.
    """
    regex = _compile(pattern, re.I)
    since = _since(since_minutes)
    read = _Read(_files(path))
    by_address: Counter[str] = Counter()
    unknown = 0
    for record in _records(path, since, max_bytes, read):
        if not regex.search(record.text):
            continue
        address = _address(record)
        if address is None:
            unknown += 1
        else:
            by_address[address] += 1
    total = sum(by_address.values()) + unknown
    worst = by_address.most_common(1)[0] if by_address else (None, 0)
    over = [{"address": a, "failures": n} for a, n in by_address.most_common() if n > threshold_per_address]
    return ProbeResult(
        probe="failed_logins",
        ok=not over,
        value=float(worst[1]),
        threshold=float(threshold_per_address),
        unit=" failures",
        summary=f"{total} failed logins from {len(by_address)} addresses"
        + (f"; most from {worst[0]}" if worst[0] else "")
        + (f"; {len(over)} over the threshold" if over else ""),
        evidence={**read.evidence(since), "total": total, "unknown_source": unknown,
                  "by_address": [{"address": a, "failures": n} for a, n in by_address.most_common(top)],
                  "over_threshold": over[:100]},
    )


def json_group_by(
    path: str,
    field: str,
    where: Mapping[str, str] | None = None,
    contains: str | None = None,
    since_minutes: float | None = None,
    threshold: int | None = None,
    top: int = TOP,
    max_bytes: int = MAX_BYTES,
    probe: str | None = None,
) -> ProbeResult:
    """Seed 002's ``grep X | grep ERROR | jq -s 'group_by(.F) | map({F, count: length})'``.

    JSON lines containing ``contains`` (substring, like the ``grep``) whose fields equal every
    ``where`` value (case-insensitive, e.g. ``{"level": "ERROR"}``) are counted per ``field``
    (dots reach into objects: ``error.type``), largest group first. Non-JSON lines are skipped
    and counted. Not ok when a ``threshold`` is given and the matched total exceeds it.
    """
    since = _since(since_minutes)
    read = _Read(_files(path))
    groups: Counter[str] = Counter()
    not_json = 0
    for record in _records(path, since, max_bytes, read):
        if record.data is None:
            not_json += 1
            continue
        if contains and contains not in record.text:
            continue
        if where and any(str(_field(record.data, k)).lower() != str(v).lower() for k, v in where.items()):
            continue
        value = _field(record.data, field)
        groups["(missing)" if value is None else str(value)] += 1
    total = sum(groups.values())
    biggest = groups.most_common(1)
    return ProbeResult(
        probe=probe or f"log_group_by_{field}",
        ok=threshold is None or total <= threshold,
        value=float(total),
        threshold=None if threshold is None else float(threshold),
        unit=" lines",
        summary=f"{total} lines in {len(groups)} groups by {field}"
        + (f"; largest {biggest[0][0]} ({biggest[0][1]})" if biggest else ""),
        evidence={**read.evidence(since), "field": field, "where": dict(where or {}), "contains": contains,
                  "groups": [{field: k, "count": n} for k, n in groups.most_common(top)], "not_json": not_json},
    )


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))  # nearest rank
    return ordered[rank - 1]


def slow_requests(
    path: str,
    threshold_ms: float = 3000.0,
    duration_field: str = "duration_ms",
    group_field: str = "path",
    duration_unit: str = "ms",
    quantile: float = 0.95,
    since_minutes: float | None = None,
    min_requests: int = 1,
    top: int = TOP,
    max_bytes: int = MAX_BYTES,
) -> ProbeResult:
    """P95 request duration per endpoint from JSON request logs; not ok when an endpoint exceeds it.

    Seed 002 "Slow requests on /api/v1/toc/generate: p95=4250ms (>3s threshold)". Endpoints
    with fewer than ``min_requests`` lines are listed but not judged.
    """
    if duration_unit not in ("ms", "s"):
        raise ResponderError(ErrorCode.CONFIG, f"duration_unit must be 'ms' or 's', not {duration_unit!r}")
    if not 0 < quantile <= 1:
        raise ResponderError(ErrorCode.CONFIG, f"quantile must be in (0, 1], not {quantile!r}")
    scale = 1000.0 if duration_unit == "s" else 1.0
    since = _since(since_minutes)
    read = _Read(_files(path))
    durations: dict[str, list[float]] = {}
    for record in _records(path, since, max_bytes, read):
        if record.data is None:
            continue
        value = _field(record.data, duration_field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        endpoint = str(_field(record.data, group_field) or "?").split("?", 1)[0]
        durations.setdefault(endpoint, []).append(float(value) * scale)
    rows = sorted(
        ({"endpoint": e, "requests": len(v), "p": round(_quantile(v, quantile), 1), "max": round(max(v), 1)}
         for e, v in durations.items()),
        key=lambda r: -r["p"],
    )
    judged = [r for r in rows if r["requests"] >= min_requests]
    slow = [r for r in judged if r["p"] > threshold_ms]
    worst = judged[0] if judged else None
    label = f"p{quantile * 100:g}"
    return ProbeResult(
        probe="slow_requests",
        ok=not slow,
        value=worst["p"] if worst else None,
        threshold=threshold_ms,
        unit="ms",
        summary=(f"slowest {worst['endpoint']}: {label}={worst['p']:g}ms over {worst['requests']} requests"
                 if worst else "no request durations in the window")
        + (f"; {len(slow)} endpoints over the threshold" if slow else ""),
        evidence={**read.evidence(since), "quantile": quantile, "endpoints": rows[:top], "slow": slow[:top]},
    )
