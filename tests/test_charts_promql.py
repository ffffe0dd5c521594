"""In-process, no server: the alert's expression without its comparison (``core/promql.py``), the chart
drawn from data points (``core/charts.py``), and what ``core/collected.py`` writes around them
(redacted configuration, one line instead of a picture that cannot be drawn)."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import SecretStr

from core import charts, collected
from core.alerts import Alert
from core.promql import expression_of, number, strip_comparison

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(("expression", "query", "threshold", "comparison"), [
    ("node_load1 > 2", "node_load1", 2.0, ">"),
    ("up == 0", "up", 0.0, "=="),
    ("node_load1", "node_load1", None, None),
    ("(node_load1 > 2)", "node_load1", 2.0, ">"),
    ("((node_load1 >= 2.5))", "node_load1", 2.5, ">="),
    ("0.1 > avail / size", "avail / size", 0.1, "<"),
    ("2 <= x", "x", 2.0, ">="),
    ("-x < -3", "-x", -3.0, "<"),
    ("x > 0x10", "x", 16.0, ">"),
    ("x >= 1024 * 1024", "x", 1048576.0, ">="),
    ("x > 2 ^ 10", "x", 1024.0, ">"),
    ("x > bool 2", "x", 2.0, ">"),
    ("x > bool (2)", "x", 2.0, ">"),
    ("(x > bool 2) == 1", "x", 2.0, ">"),
    ("x > Inf", "x", None, ">"),
    ("avail < size * 0.1", "avail", None, "<"),
    ("rate(x[5m]) > 0.9 and y", "rate(x[5m]) and y", 0.9, ">"),
    ("rate(x[5m]) > 0.9 and on(job) y > 3", "rate(x[5m]) and on(job) y > 3", 0.9, ">"),
    ("(rate(x[5m]) > 0.9) AND y", "rate(x[5m]) AND y", 0.9, ">"),
    ("x > 2 unless on(instance) maintenance == 1", "x unless on(instance) maintenance == 1", 2.0, ">"),
    ("foo and bar > 1", "foo and bar > 1", None, None),  # `foo and (bar > 1)`: foo is the metric, unfiltered
    ("a > 1 or b > 1", "a or b", 1.0, ">"),
    ("a > 1 or b > 2", "a or b", None, None),
    ("a > 1 or on(job) b > 1", "a or on(job) b", 1.0, ">"),
    ("a > 1 and b or c < 3", "a and b or c", None, None),
    ("x / on(instance) group_left(team) y > 0.5", "x / on(instance) group_left(team) y", 0.5, ">"),
    ('x{path=~"/a>b", code!="200"} > 3', 'x{path=~"/a>b", code!="200"}', 3.0, ">"),
    ('label_replace(x, "a", ">", "b", "(.*)") > 3', 'label_replace(x, "a", ">", "b", "(.*)")', 3.0, ">"),
    ("sum by (job) (rate(http_requests_total{status=~\"5..\"}[5m])) / sum by (job) (rate(http_requests_total[5m])) > 0.05",
     "sum by (job) (rate(http_requests_total{status=~\"5..\"}[5m])) / sum by (job) (rate(http_requests_total[5m]))",
     0.05, ">"),
    ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m]))) > 2", "histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m])))",
     2.0, ">"),
    ("x > 3 # the rule's comment", "x", 3.0, ">"),
    ("x\n  > 3", "x", 3.0, ">"),
    ("avg_over_time(x[10m:1m]) > 3", "avg_over_time(x[10m:1m])", 3.0, ">"),
    ("x > (", "x > (", None, None),  # unreadable: sent as it is, Prometheus answers
    ("x ) > 1", "x ) > 1", None, None),
])
def test_the_top_level_comparison_goes_and_its_number_is_the_threshold(expression, query, threshold, comparison):
    stripped = strip_comparison(expression)
    assert (stripped.query, stripped.threshold, stripped.comparison) == (query, threshold, comparison)


def test_the_expression_is_read_from_the_generator_url_and_only_its_query_string():
    url = "http://prometheus.example:9090/graph?g0.expr=node_load1+%3E+2&g0.tab=1"
    assert expression_of(url) == "node_load1 > 2"
    assert expression_of("http://x/graph?g0.expr=rate%28x%5B5m%5D%29+%3E+0.9+and+y") == "rate(x[5m]) > 0.9 and y"
    assert expression_of("http://grafana/alerting/grafana/abc/view") is None
    assert expression_of("") is None
    assert expression_of("http://x/graph?g0.expr=" + "x" * 5000) is None  # not an expression worth reading


@pytest.mark.parametrize(("text", "value"), [("2", 2.0), ("-0.5", -0.5), ("1e3", 1000.0), ("(2)", 2.0), ("2^10", 1024.0),
                                             ("x", None), ("__import__('os')", None), ("2**99999", None), ("", None),
                                             ("NaN", None), ("1 / 0", None), ("vector(1)", None)])
def test_a_threshold_is_a_number_or_arithmetic_of_numbers_never_code(text, value):
    assert number(text) == value


def _chart(threshold: float | None = 5.0) -> charts.Chart:
    t0 = 1_700_000_000.0
    points = [(t0 + i * 10, float(i % 9)) for i in range(60)]
    return charts.Chart(title="load <b>&", lines=[charts.Line('instance="app-1"', points),
                                                  charts.Line("<script>alert(1)</script>", points[::2])],
                        threshold=threshold,
                        marks=[charts.Mark(t0 + 100, "alert started", "start"), charts.Mark(t0 + 200, "A1", "action"),
                               charts.Mark(t0 + 210, "A2", "action"), charts.Mark(t0 + 590, "closed", "close")],
                        start=t0 - 60, end=t0 + 600, gap_s=25)


def test_the_chart_has_its_threshold_line_its_marks_and_its_series():
    root = ET.fromstring(charts.svg(_chart()))  # well-formed: a browser draws no image from a broken one
    classes = [el.get("class") for el in root.iter()]
    assert classes.count("threshold") == 1
    assert classes.count("mark mark-start") == 1 and classes.count("mark mark-action") == 2
    assert classes.count("mark mark-close") == 1
    assert classes.count("series") == 2
    texts = [el.text for el in root.iter(f"{SVG}text")]
    assert "threshold 5" in texts and "alert started" in texts and "A1" in texts and "closed" in texts
    assert "<script>alert(1)</script>" in texts  # as text: escaped in the document
    assert "<script" not in charts.svg(_chart())


def test_the_threshold_line_sits_at_the_threshold_and_a_chart_without_one_has_none():
    root = ET.fromstring(charts.svg(_chart(threshold=8.0)))
    line = next(el for el in root.iter() if el.get("class") == "threshold")
    plot = next(el for el in root.iter() if el.get("class") == "plot")
    top, height = float(plot.get("y")), float(plot.get("height"))
    # values 0..8 (threshold included) padded to 0..8.64: 8 is 8/8.64 of the way up
    assert abs(float(line.get("y1")) - (top + height * (1 - 8 / 8.64))) < 1
    assert not [el for el in ET.fromstring(charts.svg(_chart(threshold=None))).iter() if el.get("class") == "threshold"]


def test_points_further_apart_than_the_gap_are_not_joined():
    chart = charts.Chart(title="t", lines=[charts.Line("a", [(0, 1), (10, 2), (20, 3), (200, 4), (210, 5)])], gap_s=15)
    polylines = [el for el in ET.fromstring(charts.svg(chart)).iter(f"{SVG}polyline")]
    assert [len(p.get("points").split()) for p in polylines] == [3, 2]


def test_the_markdown_image_is_a_data_uri_of_the_svg():
    image = charts.markdown_image(_chart(), "load [around] the incident")
    assert image.startswith("![load (around) the incident](data:image/svg+xml;base64,")
    decoded = base64.b64decode(image.split(",", 1)[1].rstrip(")"))
    assert decoded == charts.svg_bytes(_chart())


def _collected(**metric: object) -> collected.Collected:
    now = datetime.now(timezone.utc)
    window = collected.MetricWindow(start=now - timedelta(minutes=31), end=now, step_s=3, **metric)
    return collected.Collected(incident_id="i-1", runbook="high-cpu", alertname="HighCPU", verdict="verified",
                               closed=True, collected_at=now, metric=window,
                               marks=[collected.Marker(at=now - timedelta(minutes=1), label="alert started", kind="start")])


def test_no_prometheus_or_no_data_is_one_line_in_the_report():
    text = collected.chart_markdown(_collected(note="no Prometheus is configured (config/targets.yaml monitoring.prometheus_url)"))
    assert text == "_No chart: no Prometheus is configured (config/targets.yaml monitoring.prometheus_url)._"


def test_a_chart_that_cannot_be_drawn_is_one_line_not_a_failure(monkeypatch):
    now = datetime.now(timezone.utc).timestamp()
    kept = _collected(query="x", series=[collected.SeriesData(labels={"a": "b"}, points=[(now, 1.0)])], series_count=1)
    assert collected.chart_markdown(kept).startswith("![HighCPU around the incident](data:image/svg+xml;base64,")

    def broken(chart: charts.Chart) -> str:  # stands in for any drawing bug: the guard is what is tested
        raise ZeroDivisionError("float division by zero")
    monkeypatch.setattr(charts, "svg", broken)
    assert collected.chart_markdown(kept) == "_No chart: it could not be drawn (ZeroDivisionError: float division by zero)._"
    assert "## Collected at close" in collected.section(kept)


def test_the_configuration_is_kept_with_its_secrets_redacted():
    config = {"postgres": {"default": {"url": SecretStr("postgresql://app:hunter2@db/app")}},
              "monitoring": {"prometheus_url": "http://admin:hunter2@prom:9090", "grafana_url": "https://g/?token=hunter2&x=1"},
              "slack": {"bot_token": "xoxb-hunter2", "channel": "#ops"}, "jobs": {"sync": {"url": "https://h/sync"}}}
    from pydantic import BaseModel

    class Config(BaseModel):
        data: dict

    dumped = collected.redact(Config(data=config).model_dump(mode="json"))
    assert "hunter2" not in str(dumped)
    assert dumped["data"]["monitoring"]["prometheus_url"] == "http://**********@prom:9090"
    assert dumped["data"]["monitoring"]["grafana_url"] == "https://g/?token=**********&x=1"
    assert dumped["data"]["slack"] == {"bot_token": "**********", "channel": "#ops"}
    assert dumped["data"]["jobs"]["sync"]["url"] == "https://h/sync"


def test_the_window_starts_thirty_minutes_before_the_alert_and_has_a_bounded_number_of_points():
    until = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    start, end, step = collected.window(until - timedelta(minutes=10), until)
    assert (end - start) == timedelta(minutes=40) and step == 4.0  # 2400 s / 720 points, rounded up
    start, _, step = collected.window(datetime(1, 1, 1, tzinfo=timezone.utc), until)  # Alertmanager's zero time
    assert until - start == collected.MAX_SPAN and (until - start).total_seconds() / step <= collected.MAX_POINTS


def test_marks_are_the_start_each_action_and_the_close():
    now = datetime.now(timezone.utc)
    alert = Alert(status="firing", labels={"alertname": "HighCPU"}, startsAt=now - timedelta(minutes=5), fingerprint="f1")
    timeline = [{"at": (now - timedelta(minutes=4)).isoformat(), "kind": "detected", "text": "fired"},
                {"at": (now - timedelta(minutes=3)).isoformat(), "kind": "action", "text": "kill_process on 12: done"},
                {"at": (now - timedelta(minutes=2)).isoformat(), "kind": "action", "text": "restart on web: done"}]
    marks = collected.markers(alert, timeline, now, closed=True, verdict="verified")
    assert [(m.label, m.kind) for m in marks] == [("alert started", "start"), ("A1", "action"), ("A2", "action"),
                                                  ("closed", "close")]
    assert collected.markers(alert, [], now, closed=False, verdict="not-verified")[-1].kind == "end"
