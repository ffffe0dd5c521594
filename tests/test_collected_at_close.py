"""What an incident keeps when its response concludes, against real things: a real Prometheus (Debian
``prometheus``, 1 s scrapes) scraping a real exporter (:class:`AppTarget`, a small HTTP server of this
test exposing a gauge the test moves across the alert's threshold), log files the test writes, the
suite's real Prefect server, and the real drill runbook run as a deployment run by the responder's own
executor in this process (``support/executor.py``), on a real store (a SQLite file).

The alert's ``generatorURL`` names a recording HTTP server of this test as its Prometheus: it must
never be contacted (the query goes to the configured ``monitoring.prometheus_url`` only).

The chart is checked in a real browser too: headless Debian ``chromium`` driven by Playwright opens the
run's report artifact in the Prefect UI, finds the picture decoded and drawn, and takes a screenshot
in the default UI and in the V2 UI (``chart-v1.png``, ``report-v1.png``, ``chart-v2.png``, ``report-v2.png``
in the test's tmp directory). (An inline ``<svg>`` was tried too: both UIs sanitise it to an empty element.)
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest
import yaml
from prefect import flow
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from core import collected
from core.alerts import Alert
from flows.registry import load_catalog
from core.services import Services, build
from core.settings import ResponderSettings
from flows import lifecycle
from flows.drill import responder_drill
from responder.reports import publish_postmortem
from support.capture import CaptureServer
from support.common import HTTP, ROOT, free_port, wait_for
from support.executor import InProcessResponder, suspended
from support.prefect import form_description, prefect_post, resume
from support.prometheus import AppTarget, PrometheusServer
from support.responder import make_config

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
GAUGE = 'transcode_queue_depth{queue="video"}'
EXPRESSION = f"{GAUGE} > 5"
PROMETHEUS_LOGIN = "watcher:prom-pass-7731"  # in the configured URL: used for the query, never shown


def generator_url(host: str, expression: str) -> str:
    """What Prometheus puts in an alert's generatorURL: its own address and the rule's expression."""
    return f"{host}/graph?{urlencode({'g0.expr': expression, 'g0.tab': '1'})}"


def stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


@pytest.fixture(scope="module")
def exporter() -> Iterator[AppTarget]:
    target = AppTarget()
    target.gauge("transcode_queue_depth", {"queue": "video"}, 2.0)
    yield target
    target.close()


@pytest.fixture(scope="module")
def prom(exporter, tmp_path_factory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("prom-collected"), {"transcoder": [f"127.0.0.1:{exporter.port}"]})
    server.wait_scraped("transcoder", 3)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def generator_host() -> Iterator[CaptureServer]:
    """Stands where the alert's generatorURL points: records any request (answered 500), so the test can
    say none came."""
    server = CaptureServer(respond=lambda request: (500, {}, {}))
    yield server
    server.close()


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("logs")
    old = datetime.now(timezone.utc) - timedelta(minutes=10)  # before the window: not kept
    (folder / "app.log").write_text(f"{stamp(old)} ERROR stale failure from before the incident\n")
    (folder / "worker.log").write_text(f"{stamp(datetime.now(timezone.utc))} ERROR a worker error of another service\n")
    return folder


def targets_for(prometheus_url: str | None, logs_dir: Path) -> dict[str, Any]:
    targets = yaml.safe_load((ROOT / "config" / "targets.yaml").read_text())
    targets["monitoring"] = {"prometheus_url": prometheus_url}
    targets["postgres"] = {"default": {"url": "postgresql://app:pg-pass-4410@127.0.0.1:1/app"}}
    targets["logs"] = {"app": {"path": str(logs_dir / "app.log")}, "worker": {"path": str(logs_dir / "worker.log")}}
    return targets


@pytest.fixture(scope="module")
def services(tmp_path_factory, prom, logs_dir, prefect_server, webhook) -> Services:
    tmp = tmp_path_factory.mktemp("collected")
    url = prom.url.replace("http://", f"http://{PROMETHEUS_LOGIN}@")
    config = make_config(tmp, targets=targets_for(url, logs_dir), notify={"webhooks": [f"{webhook.url}/hooks"]})
    settings = ResponderSettings(home=tmp / "home", config_dir=config, database_url=None, dry_run=False,
                                 slack_token=None, time_scale=0.01)  # the 30 minutes before the alert: 18 s
    return build(settings, load_catalog(config))


@pytest.fixture(scope="module")
def responder(services, prefect_server) -> Iterator[InProcessResponder]:
    serving = InProcessResponder(services, prefect_server.api_url, responder_drill, "responder-drill")
    yield serving
    serving.stop()


def gauge_seen(prom: PrometheusServer, value: float) -> bool:
    result = prom.query(GAUGE)
    return bool(result) and float(result[0]["value"][1]) == value


def artifact(api: str, key: str) -> dict[str, Any]:
    return wait_for(lambda: prefect_post(api, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}},
                                                                      "sort": "CREATED_DESC"})[0],
                    30, interval=0.3, what=f"the artifact {key}")


@pytest.fixture(scope="module")
def closed(responder, services, prom, exporter, generator_host, logs_dir, prefect_server) -> dict[str, Any]:
    """One incident, start to close: the gauge below the threshold, above it (the alert starts), the
    service logs errors, a person approves the drill step, the gauge falls back, the incident closes."""
    api = prefect_server.api_url
    wait_for(lambda: gauge_seen(prom, 2.0), 10, what="the gauge at 2")
    exporter.gauge("transcode_queue_depth", {"queue": "video"}, 9.0)
    wait_for(lambda: gauge_seen(prom, 9.0), 10, what="the gauge at 9")
    started = datetime.now(timezone.utc)
    errors = [f"{stamp(started)} ERROR transcode failed for job {uuid.uuid4().hex[:8]}" for _ in range(3)]
    with open(logs_dir / "app.log", "a") as log:
        log.write(f"{stamp(started)} INFO queue growing\n" + "\n".join(errors) + "\n")
    alert = Alert(status="firing", labels={"alertname": "ResponderDrill", "service": "app"}, startsAt=started,
                  annotations={"summary": "transcode queue above 5"}, fingerprint=uuid.uuid4().hex[:16],
                  generatorURL=generator_url(generator_host.url, EXPRESSION))
    run_id = responder.start(alert)
    waiting = suspended(api, run_id)
    form = form_description(api, waiting)
    exporter.gauge("transcode_queue_depth", {"queue": "video"}, 1.0)
    wait_for(lambda: gauge_seen(prom, 1.0), 10, what="the gauge back at 1")
    resume(api, run_id, True, "queue drains after the step", "dana")
    final = responder.final(run_id)
    incident = services.store.incident_by_run(run_id)
    return {"run_id": run_id, "final": final, "incident": incident, "alert": alert, "errors": errors, "form": form,
            "kept": collected.kept(services.store, incident.id)}


def test_the_alert_s_metric_is_kept_and_matches_the_test_s_own_range_query(closed, prom, generator_host):
    assert closed["final"]["state"]["name"] == "Resolved", closed["final"]["state"]
    kept = closed["kept"]
    assert kept is not None and kept.closed and kept.verdict == "verified"
    metric = kept.metric
    assert (metric.expression, metric.query, metric.threshold, metric.comparison) == (EXPRESSION, GAUGE, 5.0, ">")
    assert metric.note == "" and len(metric.series) == 1
    assert metric.start <= closed["alert"].startsAt - timedelta(seconds=18)  # 30 minutes times the time scale
    answer = HTTP.get(f"{prom.url}/api/v1/query_range", params={
        "query": GAUGE, "start": f"{metric.start.timestamp():.3f}", "end": f"{metric.end.timestamp():.3f}",
        "step": f"{metric.step_s:g}"}).json()
    [series] = answer["data"]["result"]
    assert [(float(t), float(v)) for t, v in series["values"]] == [tuple(p) for p in metric.series[0].points]
    values = [v for _, v in metric.series[0].points]
    assert 2.0 in values and 9.0 in values and values[-1] == 1.0  # below, across the threshold, and back
    assert generator_host.requests == []  # the generatorURL's host is alert text: never contacted


def test_the_marks_and_the_timeline_say_what_happened(closed, services):
    kept = closed["kept"]
    assert [(m.label, m.kind) for m in kept.marks] == [("alert started", "start"), ("A1", "action"), ("closed", "close")]
    assert "drill_step" in kept.marks[1].text and "approved by dana" in kept.marks[1].text
    entries = services.store.timeline(closed["incident"].id)
    [line] = [e["text"] for e in entries if e["kind"] == "collected"]
    assert line.startswith("kept 1 series of the alert's metric; 3 error log line(s)"), line


def test_the_report_and_the_collected_artifact_carry_the_chart_the_logs_and_no_secret(closed, prefect_server):
    api, incident = prefect_server.api_url, closed["incident"].id
    report = artifact(api, f"response-{incident}")["data"]
    assert "## Around the incident" in report
    svg = base64.b64decode(re.search(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", report).group(1)).decode()
    for drawn in ('class="threshold"', 'class="mark mark-start"', 'class="mark mark-action"', 'class="mark mark-close"',
                  'class="series"'):
        assert drawn in svg, drawn
    kept = artifact(api, f"collected-{incident.lower()}")["data"]
    for error in closed["errors"]:
        assert error in kept
    assert "stale failure" not in kept and "another service" not in kept  # outside the window; another service's log
    assert "prom-pass-7731" not in kept and "pg-pass-4410" not in kept and "**********" in kept
    assert f'"prometheus_url": "http://**********@127.0.0.1:{prom_port(kept)}"' in kept


def prom_port(text: str) -> str:
    return re.search(r"@127\.0\.0\.1:(\d+)", text).group(1)


def test_the_post_mortem_contains_the_picture_and_the_log_lines_from_the_store(closed, services, prefect_server):
    incident = services.store.incident(closed["incident"].id)
    store = services.store
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):  # what `responder up` does at the close
        asyncio.run(publish_postmortem(incident, store.incident_alerts(incident.id), store.timeline(incident.id),
                                       store.pages(incident.id), collected.kept(store, incident.id)))
    text = artifact(prefect_server.api_url, f"postmortem-{incident.id.lower()}")["data"]
    assert "## Collected at close" in text and "![ResponderDrill around the incident](data:image/svg+xml;base64," in text
    for error in closed["errors"]:
        assert error in text


def test_the_approval_shows_its_deadline_once_as_a_clock_time(closed):
    found = re.findall(r"\*\*Answer by (\d\d:\d\d:\d\d) UTC\*\*", closed["form"])
    assert len(found) == 1, closed["form"]


def test_the_verification_window_is_a_progress_artifact(closed, prefect_server):
    progress = artifact(prefect_server.api_url, f"verify-{closed['incident'].id.lower()}")
    assert progress["type"] == "progress" and progress["data"] == 100.0
    assert progress["description"].startswith("Verification window: verified after")


def test_the_report_s_chart_is_drawn_in_the_prefect_ui(closed, prefect_server, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Chromium is not installed: apt-get install chromium (make test does this)")
    from playwright.sync_api import sync_playwright

    api = prefect_server.api_url
    found = artifact(api, f"response-{closed['incident'].id}")
    drawn: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            for ui in ("", "/v2"):  # the default UI, and the one its "Switch to V2 UI" opens
                page.goto(f"{api.removesuffix('/api')}{ui}/artifacts/artifact/{found['id']}", wait_until="networkidle")
                image = page.locator('img[alt="ResponderDrill around the incident"]')
                image.wait_for(timeout=30000)
                # The V2 UI may render the report again after it first shows it (the image is briefly
                # detached, with no box): wait until it has been laid out before reading it.
                wait_for(lambda: image.bounding_box() is not None, 15, interval=0.2, what=f"the chart laid out in {ui or 'v1'}")
                name = ui.strip("/") or "v1"
                drawn[name] = (image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]"),
                               image.bounding_box())
                image.screenshot(path=str(tmp_path / f"chart-{name}.png"))
                page.screenshot(path=str(tmp_path / f"report-{name}.png"), full_page=True)
        finally:
            browser.close()
    for name, ((complete, natural_width, natural_height), box) in drawn.items():
        assert complete and natural_width > 0 and natural_height > 0, (name, drawn)  # decoded: a broken SVG has none
        assert box is not None and box["width"] > 100 and box["height"] > 50, (name, box)
        assert (tmp_path / f"chart-{name}.png").stat().st_size > 1000


# -- one line instead of a chart -------------------------------------------------------------------------


def _collect(services: Services, prometheus_url: str | None, expression: str) -> collected.Collected:
    catalog = services.catalog.model_copy(update={"targets": services.catalog.targets.model_copy(update={
        "monitoring": services.catalog.targets.monitoring.model_copy(update={"prometheus_url": prometheus_url})})})
    now = datetime.now(timezone.utc)
    alert = Alert(status="firing", labels={"alertname": "QueueDeep"}, startsAt=now - timedelta(minutes=1),
                  fingerprint="abc", generatorURL=generator_url("http://prometheus.invalid", expression))
    return collected.collect(catalog, catalog.get("responder-drill"), alert, "i-1", [], now, True, "verified")


def test_no_prometheus_an_expression_it_refuses_or_an_unreachable_one_is_one_line(services, prom):
    assert _collect(services, None, EXPRESSION).metric.note == (
        "no Prometheus is configured (config/targets.yaml monitoring.prometheus_url)")
    refused = _collect(services, prom.url, f"{GAUGE[:-1]} > 5").metric  # an unclosed brace: sent as it is
    assert refused.note.startswith("Prometheus could not evaluate `transcode_queue_depth{queue=\"video\" > 5`: "), refused.note
    unreachable = _collect(services, f"http://127.0.0.1:{free_port()}", EXPRESSION).metric
    assert unreachable.note.startswith("Prometheus at http://127.0.0.1:") and "did not answer (ConnectError" in unreachable.note
    for metric in (refused, unreachable):
        assert collected.chart_markdown(collected.Collected(
            incident_id="i", runbook="r", alertname="a", verdict="v", closed=True,
            collected_at=datetime.now(timezone.utc), metric=metric)).count("\n") == 0  # one line


# -- progress while a window lasts ---------------------------------------------------------------------


def test_progress_is_shown_while_the_window_lasts_at_most_every_few_seconds(prefect_server, monkeypatch):
    monkeypatch.setattr(lifecycle, "PROGRESS_EVERY_SECONDS", 1.0)  # the real value is 5 s: this test would wait
    key = f"verify-test-{uuid.uuid4().hex[:8]}"
    updates: list[float] = []

    shown = lifecycle.update_progress_artifact

    def counted(artifact_id: Any, share: float, **kwargs: Any) -> Any:  # the real update, counted
        updates.append(share)
        return shown(artifact_id, share, **kwargs)
    monkeypatch.setattr(lifecycle, "update_progress_artifact", counted)

    @flow
    def window() -> None:
        progress = lifecycle.WindowProgress(key, 4.0, "A test window")
        progress.sleep(2.6)
        midway = prefect_post(prefect_server.api_url, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}})[0]
        updates.append(-midway["data"])  # what the UI showed midway (negated: told apart from the updates)
        progress.done("verified")

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        window()
        APILogWorker.drain_all(timeout=10)  # the run's logs reach the server now, not at exit when it is gone
    shares, midway = [u for u in updates if u >= 0], -min(updates)
    assert len(shares) == 3 and shares[-1] == 100.0, updates  # two ticks in 2.6 s at 1 s apart, then done
    assert 40 <= midway <= 70, updates
