"""Prometheus, Alertmanager and Grafana HTTP APIs: the metric checks of the application alerts
and the monitoring stack's own troubleshooting (seed 004).

Metric checks are Prometheus *instant queries*, by default with the seeds' own PromQL:

* ``error_ratio``: seed 003 HighErrorRate, "rate(http_requests_total{status=~"5.."}[5m]) /
  rate(http_requests_total[5m])", summed per ``job`` (or per endpoint label, seed 002 "high error
  rate on /api/v1/books"); not ok above 0.05 ("more than 5% of requests").
* ``p95_latency``: seeds 000/001/004 "P95 response time", ``histogram_quantile(0.95, ...
  http_request_duration_seconds_bucket ...)``; not ok above 2 s (seed 000; seed 001 uses 1 s,
  seed 002 3 s: the caller passes the alert's own figure).
* ``instant_query``: any other expression with a threshold (API costs, products synced, heap).
* ``range_query``: an expression over a time range (the alert's metric kept when an incident closes).

The monitoring stack (seed 004 "Troubleshooting", seed 003 "Monitoring Stack Status"):

* ``scrape_targets``: ``curl /api/v1/targets`` - which targets are down and why (lastError).
* ``rule_health``, ``runtime_info``, ``retention``, ``connected_alertmanagers``, ``tsdb_top_series``,
  ``firing_history``: rule evaluation errors, config reloads, retention ("15 days local"), whether
  Prometheus can reach an Alertmanager, cardinality, and which alerts fired over a window.
* ``alertmanager_status``, ``alertmanager_alerts``, ``notification_failures``: Alertmanager's v2
  API (seed 004 quotes ``/api/v1/status``; API v1 is gone since Alertmanager 0.27) and its own
  ``alertmanager_notifications_failed_total`` counters ("AlertManager not sending notifications").
* ``grafana_health``, ``grafana_datasources``: ``curl /api/health`` and ``curl /api/datasources``
  plus each data source's health check ("Grafana dashboard not loading").

``ready``, ``alertmanager_status`` and ``grafana_health`` are readiness probes: unreachable is
their answer (``ok=False``). The other probes need an answer and raise ``httpx.TransportError``
(or ``httpx.HTTPStatusError`` on a 5xx) for Prefect's task retries.

Credentials: a URL may carry ``user:password@`` (Grafana's API needs a login); it is used for
the request and never shown: evidence holds the URL without them. Label values that reach a
query (an alert's ``job``) go through :func:`matchers`, which escapes them as PromQL strings.

Wiring (``config/targets.yaml`` ``monitoring.prometheus_url``)::

    prometheus.error_ratio(url, threshold=0.05, window="5m", by=("job",), match={"job": "shop"})
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import yaml

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.http_client import http_client
from tasks.probes import clip

# seed 003 HighErrorRate: rate(http_requests_total{status=~"5.."}[5m]) / rate(http_requests_total[5m])
ERROR_RATIO = (
    'sum by ({by}) (rate(http_requests_total{{{errors}}}[{window}]))'
    " / sum by ({by}) (rate(http_requests_total{{{all}}}[{window}]))"
)
# seeds 000/001/004: P95 response time from the request duration histogram
P95_LATENCY = "histogram_quantile(0.95, sum by ({by}, le) (rate(http_request_duration_seconds_bucket{{{all}}}[{window}])))"

BadWhen = Literal["above", "at_or_above", "below", "at_or_below"]
SERIES_LIMIT = 50
_DURATION = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _public(url: str) -> str:
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None))
    except httpx.InvalidURL:
        raise ResponderError(ErrorCode.CONFIG, "monitoring URL cannot be parsed") from None


def public_url(url: str) -> str:
    """``url`` without the credentials it may carry: what evidence and reports show."""
    return _public(url)


@contextmanager
def _client(url: str, timeout_s: float) -> Iterator[httpx.Client]:
    """A client on the URL's base; basic-auth credentials in the URL are used, never echoed."""
    if not url:
        raise ResponderError(ErrorCode.CONFIG, "no URL configured (config/targets.yaml monitoring)")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ResponderError(ErrorCode.CONFIG, "monitoring URL cannot be parsed") from None
    auth = (parsed.username, parsed.password) if parsed.username else None
    base = parsed.copy_with(username=None, password=None)
    with http_client(base_url=str(base).rstrip("/"), auth=auth, timeout=timeout_s,
                      headers={"User-Agent": "runbook-responder"}) as client:
        yield client


def _get_json(client: httpx.Client, path: str, params: Mapping[str, Any] | None = None) -> Any:
    response = client.get(path, params=params)
    if response.status_code in (401, 403):
        raise ResponderError(ErrorCode.CONFIG, f"{path}: HTTP {response.status_code}, credentials missing or not allowed")
    if response.status_code == 404:
        raise ResponderError(ErrorCode.CONFIG, f"{path}: HTTP 404, not this service or API version")
    response.raise_for_status()
    return response.json()


def _prom_data(client: httpx.Client, path: str, params: Mapping[str, Any] | None = None) -> Any:
    response = client.get(path, params=params)
    if response.status_code in (400, 422):
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        raise ResponderError(ErrorCode.CONFIG, f"Prometheus refused the query: {body.get('error', response.text[:200])}")
    if response.status_code in (401, 403, 404):
        raise ResponderError(ErrorCode.CONFIG, f"{path}: HTTP {response.status_code}")
    response.raise_for_status()
    body = response.json()
    if body.get("status") != "success":
        raise ResponderError(ErrorCode.CONFIG, f"Prometheus answered {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def duration_seconds(text: str) -> float:
    """Prometheus duration (``15d``, ``1h30m``, ``500ms``) in seconds."""
    parts = _DURATION.findall(text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ResponderError(ErrorCode.CONFIG, f"{text!r} is not a Prometheus duration")
    return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


def window(seconds: float) -> str:
    """A range-vector window from seconds (``300`` -> ``"300s"``)."""
    if seconds <= 0:
        raise ResponderError(ErrorCode.CONFIG, f"window must be positive, not {seconds!r}")
    return f"{int(seconds)}s" if seconds >= 1 else f"{int(seconds * 1000)}ms"


def matchers(labels: Mapping[str, str] | None, extra: str = "") -> str:
    """``{"job": 'a"b'}`` -> ``job="a\\"b"``: label values escaped as PromQL strings."""
    parts = [extra] if extra else []
    for name, value in (labels or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ResponderError(ErrorCode.CONFIG, f"{name!r} is not a Prometheus label name")
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{name}="{escaped}"')
    return ",".join(parts)


def _by(by: Sequence[str]) -> str:
    names = list(by) or ["job"]
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ResponderError(ErrorCode.CONFIG, f"{name!r} is not a Prometheus label name")
    return ", ".join(names)


def _is_bad(value: float, threshold: float, bad_when: BadWhen) -> bool:
    return {
        "above": value > threshold,
        "at_or_above": value >= threshold,
        "below": value < threshold,
        "at_or_below": value <= threshold,
    }[bad_when]


def _describe(labels: Mapping[str, str]) -> str:
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "(no labels)"


def vector(url: str, promql: str, timeout_s: float = 10.0) -> list[tuple[dict[str, str], float]]:
    """Evaluate ``promql`` now: each series' labels and value (an instant vector or a scalar)."""
    with _client(url, timeout_s) as client:
        data = _prom_data(client, "/api/v1/query", {"query": promql})
    if data.get("resultType") == "scalar":
        return [({}, float(data["result"][1]))]
    if data.get("resultType") != "vector":
        raise ResponderError(ErrorCode.CONFIG, f"expected an instant vector, got {data.get('resultType')}: {promql}")
    return [(s["metric"], float(s["value"][1])) for s in data["result"]]


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range query: its labels and its (unix seconds, value) points, NaN left out."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


RANGE_POINTS_LIMIT = 11000  # Prometheus refuses a range query with more points per series


def range_query(url: str, promql: str, start: float, end: float, step_s: float,
                timeout_s: float = 10.0) -> list[RangeSeries]:
    """Evaluate ``promql`` from ``start`` to ``end`` (unix seconds) every ``step_s``: ``/api/v1/query_range``.

    The metric around an incident, kept at its close (``core/collected.py``). NaN samples (a ratio
    over no traffic) are left out: they are no value to draw. A query Prometheus refuses is
    ``ResponderError(CONFIG)``; an unreachable Prometheus raises ``httpx.TransportError``.
    """
    if end <= start or step_s <= 0:
        raise ResponderError(ErrorCode.CONFIG, f"range query needs start < end and a positive step ({start}, {end}, {step_s})")
    if (end - start) / step_s > RANGE_POINTS_LIMIT:
        raise ResponderError(ErrorCode.CONFIG, f"a step of {step_s:g} s gives more than {RANGE_POINTS_LIMIT} points")
    with _client(url, timeout_s) as client:
        data = _prom_data(client, "/api/v1/query_range",
                          {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"})
    if data.get("resultType") != "matrix":
        raise ResponderError(ErrorCode.CONFIG, f"expected a range of values, got {data.get('resultType')}: {promql}")
    series = []
    for s in data["result"]:
        points = [(float(ts), float(v)) for ts, v in s.get("values", [])]
        series.append(RangeSeries(labels=dict(s.get("metric", {})),
                                  points=[(ts, v) for ts, v in points if not math.isnan(v)]))
    return series


def latest(url: str, selector: str, within_s: float, timeout_s: float = 10.0) -> list[tuple[dict[str, str], float, float]]:
    """The newest raw sample of each series of ``selector`` scraped within the last ``within_s`` seconds.

    Each item is (labels, value, age in seconds). A series with no sample that recent is absent,
    unlike an instant query, which would return a value up to five minutes old.
    """
    now = time.time()
    with _client(url, timeout_s) as client:
        data = _prom_data(client, "/api/v1/query", {"query": f"{selector}[{window(within_s)}]", "time": f"{now:.3f}"})
    if data.get("resultType") != "matrix":
        raise ResponderError(ErrorCode.CONFIG, f"expected a range vector, got {data.get('resultType')}: {selector}")
    out = []
    for s in data["result"]:
        if s.get("values"):
            ts, value = s["values"][-1]
            out.append((s["metric"], float(value), max(0.0, now - float(ts))))
    return out


def instant_query(
    url: str,
    promql: str,
    threshold: float | None = None,
    bad_when: BadWhen = "above",
    probe: str = "prometheus_query",
    unit: str = "",
    no_data_ok: bool = True,
    timeout_s: float = 10.0,
) -> ProbeResult:
    """Evaluate ``promql`` now; not ok when the worst series crosses ``threshold``.

    The worst series is the highest for ``above`` and the lowest for ``below``. NaN samples
    (a ratio over no traffic) count as no data. With no data, ``no_data_ok`` decides.
    """
    series = [{"labels": labels, "value": value} for labels, value in vector(url, promql, timeout_s)
              if not math.isnan(value)]
    lowest_first = bad_when in ("below", "at_or_below")
    series.sort(key=lambda s: s["value"], reverse=not lowest_first)
    evidence = {"query": promql, "prometheus": _public(url), "series": series[:SERIES_LIMIT], "series_count": len(series)}
    if not series:
        return ProbeResult(probe=probe, ok=no_data_ok, threshold=threshold, unit=unit,
                           summary="no data for the query", evidence=evidence)
    worst = series[0]
    bad = [s for s in series if threshold is not None and _is_bad(s["value"], threshold, bad_when)]
    evidence["bad"] = bad[:SERIES_LIMIT]
    summary = f"worst {_describe(worst['labels'])}"
    if bad:
        summary += f"; {len(bad)} of {len(series)} series {bad_when.replace('_', ' ')} the threshold"
    return ProbeResult(probe=probe, ok=not bad, value=round(worst["value"], 6), threshold=threshold, unit=unit,
                       summary=summary, evidence=evidence)


def error_ratio(
    url: str,
    threshold: float = 0.05,
    window: str = "5m",
    by: Sequence[str] = ("job",),
    match: Mapping[str, str] | None = None,
    query: str | None = None,
    timeout_s: float = 10.0,
) -> ProbeResult:
    """5xx share of requests per ``by`` group (seed 003's query); not ok above ``threshold`` (0.05)."""
    promql = query or ERROR_RATIO.format(
        by=_by(by), window=window, errors=matchers(match, 'status=~"5.."'), all=matchers(match)
    )
    return instant_query(url, promql, threshold, "above", probe="error_ratio", timeout_s=timeout_s)


def p95_latency(
    url: str,
    threshold_s: float = 2.0,
    window: str = "5m",
    by: Sequence[str] = ("job",),
    match: Mapping[str, str] | None = None,
    query: str | None = None,
    timeout_s: float = 10.0,
) -> ProbeResult:
    """P95 request duration per ``by`` group from the histogram; not ok above ``threshold_s``."""
    promql = query or P95_LATENCY.format(by=_by(by), window=window, all=matchers(match))
    return instant_query(url, promql, threshold_s, "above", probe="p95_latency", unit="s", timeout_s=timeout_s)


def ready(url: str, component: str = "prometheus", timeout_s: float = 5.0) -> ProbeResult:
    """``GET /-/ready`` (Prometheus and Alertmanager). Unreachable returns ok=False."""
    probe = f"{component}_ready"
    public = _public(url) if url else ""
    if not url:
        return ProbeResult(probe=probe, ok=False, summary=f"no {component} URL configured (config/targets.yaml monitoring)")
    started = time.perf_counter()
    try:
        with _client(url, timeout_s) as client:
            response = client.get("/-/ready")
    except httpx.TransportError as exc:
        return ProbeResult(probe=probe, ok=False, summary=f"{public} unreachable",
                           evidence={"url": public, "error": f"{type(exc).__name__}: {exc}"})
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    return ProbeResult(probe=probe, ok=response.status_code == 200, value=elapsed, unit="ms",
                       summary=f"{public}: HTTP {response.status_code}",
                       evidence={"url": public, "status_code": response.status_code, "body": clip(response.text, 200)})


def scrape_targets(url: str, timeout_s: float = 10.0) -> ProbeResult:
    """Active scrape targets and their health; not ok when any is down (value: how many)."""
    with _client(url, timeout_s) as client:
        data = _prom_data(client, "/api/v1/targets", {"state": "active"})
    targets = [
        {
            "job": t.get("labels", {}).get("job") or t.get("scrapePool"),
            "instance": t.get("labels", {}).get("instance"),
            "scrape_url": t.get("scrapeUrl"),
            "health": t.get("health"),
            "last_error": t.get("lastError") or "",
            "last_scrape": t.get("lastScrape"),
            "last_scrape_ms": round(float(t.get("lastScrapeDuration") or 0) * 1000, 1),
        }
        for t in data.get("activeTargets", [])
    ]
    down = [t for t in targets if t["health"] != "up"]
    jobs: dict[str, dict[str, int]] = {}
    for t in targets:
        jobs.setdefault(t["job"], {"up": 0, "down": 0})["up" if t["health"] == "up" else "down"] += 1
    if not targets:
        summary = "no active scrape targets"
    elif down:
        summary = "down: " + "; ".join(f"{t['job']} {t['instance']} ({clip(t['last_error'], 80) or t['health']})" for t in down[:5])
    else:
        summary = f"all {len(targets)} targets up"
    return ProbeResult(probe="scrape_targets", ok=bool(targets) and not down, value=float(len(down)), threshold=0,
                       unit=" down", summary=summary,
                       evidence={"prometheus": _public(url), "jobs": jobs, "down": down, "targets": targets[:SERIES_LIMIT]})


def rule_health(url: str, timeout_s: float = 10.0) -> ProbeResult:
    """Rule groups' evaluation health; not ok when a rule fails to evaluate (value: how many)."""
    with _client(url, timeout_s) as client:
        data = _prom_data(client, "/api/v1/rules")
    rules, broken, firing = 0, [], []
    for group in data.get("groups", []):
        for rule in group.get("rules", []):
            rules += 1
            if rule.get("health") not in ("ok", "unknown"):
                broken.append({"group": group.get("name"), "rule": rule.get("name"), "error": rule.get("lastError")})
            if rule.get("type") == "alerting" and rule.get("state") == "firing":
                firing.append(rule.get("name"))
    return ProbeResult(probe="rule_health", ok=not broken, value=float(len(broken)), threshold=0, unit=" failing",
                       summary=f"{rules} rules, {len(firing)} alerting rules firing"
                       + (f"; failing: {', '.join(b['rule'] for b in broken[:5])}" if broken else ""),
                       evidence={"rules": rules, "broken": broken, "firing": firing})


def runtime_info(url: str, timeout_s: float = 10.0) -> ProbeResult:
    """Did the last configuration reload succeed? (seed 004: "check configuration")."""
    with _client(url, timeout_s) as client:
        info = _prom_data(client, "/api/v1/status/runtimeinfo")
    ok = bool(info.get("reloadConfigSuccess", True))
    return ProbeResult(probe="prometheus_runtime", ok=ok,
                       summary=("configuration loaded" if ok else "the last configuration reload FAILED")
                       + f" at {info.get('lastConfigTime')}",
                       evidence={k: info.get(k) for k in ("reloadConfigSuccess", "lastConfigTime", "storageRetention",
                                                          "startTime", "goroutineCount", "corruptionCount")})


def retention(url: str, expected: str = "15d", timeout_s: float = 10.0) -> ProbeResult:
    """Local retention time against ``expected`` (seed 003 weekly, seed 004: "Metrics: 15 days local")."""
    with _client(url, timeout_s) as client:
        flags = _prom_data(client, "/api/v1/status/flags")
    configured = flags.get("storage.tsdb.retention.time") or flags.get("storage.tsdb.retention") or "0s"
    # "0s" means unset: Prometheus then keeps 15 days unless a size limit applies.
    effective = duration_seconds(configured) or 15 * 86400.0
    wanted = duration_seconds(expected)
    size = flags.get("storage.tsdb.retention.size", "0B")
    return ProbeResult(probe="prometheus_retention", ok=effective >= wanted, value=round(effective / 86400, 3),
                       threshold=round(wanted / 86400, 3), unit=" days",
                       summary=f"storage.tsdb.retention.time={configured}" + (f", size limit {size}" if size not in ("0B", "0") else ""),
                       evidence={"retention_time": configured, "retention_size": size, "expected": expected})


def connected_alertmanagers(url: str, timeout_s: float = 10.0) -> ProbeResult:
    """Alertmanagers Prometheus sends alerts to; not ok when none is active."""
    with _client(url, timeout_s) as client:
        data = _prom_data(client, "/api/v1/alertmanagers")
    active = [a.get("url") for a in data.get("activeAlertmanagers", [])]
    dropped = [a.get("url") for a in data.get("droppedAlertmanagers", [])]
    return ProbeResult(probe="prometheus_alertmanagers", ok=bool(active), value=float(len(active)), unit=" active",
                       summary=f"sends alerts to {', '.join(active)}" if active else "Prometheus has no active Alertmanager",
                       evidence={"active": active, "dropped": dropped})


def tsdb_top_series(url: str, top: int = 10, timeout_s: float = 10.0) -> ProbeResult:
    """Series count and the metric names with most series (seed 004 monthly "metrics cleanup")."""
    with _client(url, timeout_s) as client:
        data = _prom_data(client, "/api/v1/status/tsdb")
    head = data.get("headStats", {})
    names = data.get("seriesCountByMetricName", [])[:top]
    return ProbeResult(probe="tsdb_cardinality", ok=True, value=float(head.get("numSeries", 0)), unit=" series",
                       summary="largest: " + ", ".join(f"{n['name']} ({n['value']})" for n in names[:5]),
                       evidence={"head": head, "by_metric": names,
                                 "by_label_pair": data.get("seriesCountByLabelValuePair", [])[:top]})


def _evaluation_interval_s(client: httpx.Client) -> float:
    config = yaml.safe_load(_prom_data(client, "/api/v1/status/config").get("yaml") or "") or {}
    return duration_seconds(str((config.get("global") or {}).get("evaluation_interval", "1m")))


def firing_history(url: str, over: str = "7d", timeout_s: float = 20.0) -> ProbeResult:
    """Which alerts fired over ``over`` and for about how long (from Prometheus' ``ALERTS`` series).

    Seed 003 weekly "review all alerts from past week", seed 004 weekly "alert tuning". Minutes
    firing are samples times the evaluation interval, so a lower bound after restarts.
    Evidence only: always ok.
    """
    duration_seconds(over)
    query = f'sum by (alertname, severity) (count_over_time(ALERTS{{alertstate="firing"}}[{over}]))'
    with _client(url, timeout_s) as client:
        data = _prom_data(client, "/api/v1/query", {"query": query})
        interval = _evaluation_interval_s(client)
    alerts = sorted(
        ({"alertname": s["metric"].get("alertname"), "severity": s["metric"].get("severity", ""),
          "firing_minutes": round(float(s["value"][1]) * interval / 60, 1)} for s in data["result"]),
        key=lambda a: -a["firing_minutes"],
    )
    return ProbeResult(probe="firing_history", ok=True, value=float(len(alerts)), unit=" alerts",
                       summary=f"{len(alerts)} alert names fired in the last {over}"
                       + (": " + ", ".join(a["alertname"] for a in alerts[:8]) if alerts else ""),
                       evidence={"window": over, "evaluation_interval_s": interval, "alerts": alerts})


# -- Alertmanager ------------------------------------------------------------------------


def alertmanager_status(url: str, timeout_s: float = 5.0) -> ProbeResult:
    """``GET /api/v2/status``: up, cluster state, receivers configured. Unreachable returns ok=False."""
    if not url:
        return ProbeResult(probe="alertmanager_status", ok=False, summary="no Alertmanager URL configured")
    public = _public(url)
    try:
        with _client(url, timeout_s) as client:
            status = _get_json(client, "/api/v2/status")
    except (httpx.TransportError, httpx.HTTPStatusError) as exc:
        return ProbeResult(probe="alertmanager_status", ok=False, summary=f"{public} unreachable or failing",
                           evidence={"url": public, "error": f"{type(exc).__name__}: {exc}"})
    config = yaml.safe_load((status.get("config") or {}).get("original") or "") or {}
    receivers = [r.get("name") for r in config.get("receivers", [])]
    integrations = sorted({key.removesuffix("_configs") for r in config.get("receivers", [])
                           for key in r if key.endswith("_configs")})
    cluster = (status.get("cluster") or {}).get("status")
    ok = cluster in ("ready", "disabled", None) and bool(integrations)
    return ProbeResult(probe="alertmanager_status", ok=ok,
                       summary=f"{public}: version {(status.get('versionInfo') or {}).get('version')}, cluster {cluster}, "
                       f"receivers {', '.join(receivers) or 'none'}" + ("" if integrations else " (no notification integration)"),
                       evidence={"url": public, "cluster": cluster, "uptime": status.get("uptime"),
                                 "receivers": receivers, "integrations": integrations,
                                 "route_receiver": (config.get("route") or {}).get("receiver")})


def alertmanager_alerts(
    url: str, expected: Sequence[str] | None = None, include_silenced: bool = False, timeout_s: float = 10.0
) -> ProbeResult:
    """Alerts Alertmanager holds now (``/api/v2/alerts``). With ``expected``, not ok when others fire.

    Seed 003 daily: "Check active alerts ... Should only see expected alerts".
    """
    params = {"active": "true", "silenced": str(include_silenced).lower(), "inhibited": "false"}
    with _client(url, timeout_s) as client:
        alerts = _get_json(client, "/api/v2/alerts", params)
    rows = [
        {"alertname": a["labels"].get("alertname"), "severity": a["labels"].get("severity", ""),
         "instance": a["labels"].get("instance", ""), "state": (a.get("status") or {}).get("state"),
         "starts_at": a.get("startsAt"), "summary": (a.get("annotations") or {}).get("summary", "")}
        for a in alerts
    ]
    unexpected = [r for r in rows if expected is not None and r["alertname"] not in set(expected)]
    return ProbeResult(probe="alertmanager_alerts", ok=not unexpected, value=float(len(rows)), unit=" alerts",
                       summary=f"{len(rows)} active" + (f", unexpected: {', '.join(sorted({r['alertname'] for r in unexpected}))}"
                                                        if unexpected else ""),
                       evidence={"alerts": rows[:SERIES_LIMIT], "unexpected": unexpected[:SERIES_LIMIT]})


_NOTIFICATION_FAMILIES = {
    # per HTTP request to a receiver (Alertmanager >= 0.25): a failure shows at once
    "alertmanager_notification_requests": "sent",
    "alertmanager_notification_requests_failed": "failed",
    # per notification, failed only once every retry gave up (older versions have only these)
    "alertmanager_notifications": "notifications",
    "alertmanager_notifications_failed": "notifications_failed",
}


def notification_counters(url: str, timeout_s: float = 5.0) -> dict[str, dict[str, float]]:
    """Notification attempts and failures per integration, from Alertmanager's /metrics.

    ``sent``/``failed`` count requests to receivers where Alertmanager exports them, else whole
    notifications.
    """
    # heavy: prometheus_client (~14 ms), not needed by the CLI's light commands (core.catalog -> hosts -> node -> here)
    from prometheus_client.parser import text_string_to_metric_families

    with _client(url, timeout_s) as client:
        response = client.get("/metrics")
        response.raise_for_status()
    counters: dict[str, dict[str, float]] = {}
    requests_seen = False
    for family in text_string_to_metric_families(response.text):
        field = _NOTIFICATION_FAMILIES.get(family.name)
        if field is None:
            continue
        requests_seen = requests_seen or family.name.startswith("alertmanager_notification_requests")
        for sample in family.samples:
            if sample.name.endswith("_total"):
                entry = counters.setdefault(sample.labels.get("integration", "?"),
                                            {k: 0.0 for k in _NOTIFICATION_FAMILIES.values()})
                entry[field] += sample.value
    if not requests_seen:
        for entry in counters.values():
            entry["sent"], entry["failed"] = entry["notifications"], entry["notifications_failed"]
    return counters


def notification_failures(
    url: str,
    baseline: Mapping[str, Mapping[str, float]] | None = None,
    require_delivery: bool = False,
    timeout_s: float = 5.0,
) -> ProbeResult:
    """Failed notification attempts per integration (since ``baseline``, else since start); ok at 0.

    Attempts and failures are :func:`notification_counters`' (requests to receivers); delivered
    is the difference. With ``require_delivery`` (after
    failures were seen), ok also needs at least one delivery since the baseline.
    """
    counters = notification_counters(url, timeout_s)
    rows = []
    for integration, figures in sorted(counters.items()):
        before = (baseline or {}).get(integration, {})
        attempts = figures["sent"] - before.get("sent", 0.0)
        failed = figures["failed"] - before.get("failed", 0.0)
        rows.append({"integration": integration, "attempts": attempts, "failed": failed, "delivered": attempts - failed})
    failed = sum(r["failed"] for r in rows)
    delivered = sum(r["delivered"] for r in rows)
    failing = [r["integration"] for r in rows if r["failed"] > 0]
    ok = failed == 0 and (delivered > 0 or not require_delivery)
    since = "since the first check" if baseline else "since start"
    if failing:
        summary = f"failing {since}: " + ", ".join(failing)
    elif not ok:
        summary = f"nothing delivered {since}"
    else:
        summary = f"no failed notifications {since}, {delivered:g} delivered"
    return ProbeResult(probe="alertmanager_notification_failures", ok=ok, value=failed, threshold=0,
                       unit=" failed", summary=summary, evidence={"integrations": rows, "counters": counters})


# -- Grafana -----------------------------------------------------------------------------


def grafana_health(url: str, timeout_s: float = 5.0) -> ProbeResult:
    """``GET /api/health``: Grafana up and its database ok. Unreachable returns ok=False."""
    if not url:
        return ProbeResult(probe="grafana_health", ok=False, summary="no Grafana URL configured")
    public = _public(url)
    try:
        with _client(url, timeout_s) as client:
            response = client.get("/api/health")
    except httpx.TransportError as exc:
        return ProbeResult(probe="grafana_health", ok=False, summary=f"{public} unreachable",
                           evidence={"url": public, "error": f"{type(exc).__name__}: {exc}"})
    try:
        body = response.json()
    except ValueError:
        body = {}
    database = body.get("database") if isinstance(body, dict) else None
    ok = response.status_code == 200 and database == "ok"
    return ProbeResult(probe="grafana_health", ok=ok,
                       summary=f"{public}: HTTP {response.status_code}, database {database!r}, version {body.get('version') if isinstance(body, dict) else '?'}",
                       evidence={"url": public, "status_code": response.status_code, "body": body if isinstance(body, dict) else None})


def grafana_datasources(url: str, timeout_s: float = 10.0) -> ProbeResult:
    """``GET /api/datasources`` and each one's health check; not ok when any fails (value: how many).

    Needs a login with the Grafana admin or viewer role in the URL (``http://user:pass@grafana:3000``).
    Data sources whose plugin has no health check (HTTP 404/501) are listed as ``unchecked``.
    """
    with _client(url, timeout_s) as client:
        sources = _get_json(client, "/api/datasources")
        rows = []
        for source in sources:
            row = {"name": source.get("name"), "type": source.get("type"), "uid": source.get("uid"),
                   "url": source.get("url"), "default": source.get("isDefault", False)}
            response = client.get(f"/api/datasources/uid/{source.get('uid')}/health")
            if response.status_code in (404, 501):
                row["status"], row["message"] = "unchecked", "no health check for this plugin"
            else:
                try:
                    body = response.json()
                except ValueError:
                    body = {}
                row["status"] = body.get("status") or f"HTTP {response.status_code}"
                row["message"] = clip(str(body.get("message", "")), 300)
            rows.append(row)
    failing = [r for r in rows if r["status"] not in ("OK", "unchecked")]
    return ProbeResult(probe="grafana_datasources", ok=bool(rows) and not failing, value=float(len(failing)), threshold=0,
                       unit=" failing",
                       summary=("no data sources configured" if not rows else
                                "failing: " + "; ".join(f"{r['name']} ({r['message'] or r['status']})" for r in failing)
                                if failing else f"all {len(rows)} data sources answer"),
                       evidence={"datasources": rows})
