"""Never silent: when ``responder up`` dies, PagerDuty hears it from Alertmanager, not from the responder.

Everything that decides is real and shipped: ``responder up`` on the suite's Prefect server; a real
Prometheus scraping its ``/metrics`` every second as job ``responder`` and evaluating
``deploy/prometheus/responder-rules.yml``; a real Alertmanager running
``deploy/alertmanager/alertmanager.yml``. What the test changes, and nothing else:

* the rules: every ``for:`` divided by 30 (1m → 2 s, 5m → 10 s), so the test waits seconds; the
  expressions, thresholds, labels and texts are the shipped ones (as ``seed_rules`` does for
  alert-rules.yml);
* Alertmanager: every duration of the routing tree divided by 30 as well (group_interval 1m → 2 s,
  the Watchdog's repeat_interval 50s → 1.7 s); the PagerDuty ``url:`` points at a
  :class:`CaptureServer` standing in for PagerDuty's Events API v2 (PagerDuty is not reachable from
  here), and ``routing_key_file`` at a temporary file; the ``responder`` receiver's webhook URL and
  token file point at this test's responder.

That webhook URL goes through a recording pass-through (a CaptureServer that forwards each request
to the real intake and returns its answer, 503 once the intake is gone). It is how the test sees,
on the wire, everything Alertmanager gave the ``responder`` receiver, including after the
responder is dead, when the intake itself can no longer show anything.

Healthy first: the Watchdog travels Prometheus → Alertmanager → responder and is answered 200, so
the chain is live, and yet no rule about the responder is pending or firing and PagerDuty hears
nothing. Then the responder is killed (SIGKILL to its process group: a crash or an OOM kill, nothing
of it left to say goodbye): ResponderDown reaches PagerDuty as an Events v2 trigger with the
routing key from the file, while the ``responder`` receiver keeps carrying the Watchdog and never
an alert labelled watch="responder".
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.capture import CaptureServer
from support.common import HTTP, ROOT, wait_for
from support.prometheus import AlertmanagerServer, PrometheusServer, divide_duration, watch_rules
from support.responder import ResponderProcess, make_config

ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
SHIPPED_KEY_FILE = "/etc/alertmanager/secrets/pagerduty-routing-key"
ROUTING_KEY = "R0UT1NGKEY0000000000000000000042"  # the shape of a PagerDuty integration key
SPEED_UP = 30  # every `for:` and every Alertmanager timing is divided by this


def alertmanager_config(pagerduty_url: str, key_file: Path, intake_url: str, token_file: Path) -> dict[str, Any]:
    """The shipped alertmanager.yml with the changes the module docstring lists, and only those."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())

    def speed_up(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = divide_duration(route[key], SPEED_UP)
        for child in route.get("routes", []):
            speed_up(child)

    speed_up(config["route"])
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    (pagerduty,) = receivers["responder-watch"]["pagerduty_configs"]
    assert pagerduty["routing_key_file"] == SHIPPED_KEY_FILE and "routing_key" not in pagerduty
    pagerduty["url"] = pagerduty_url
    pagerduty["routing_key_file"] = str(key_file)
    (webhook,) = receivers["responder"]["webhook_configs"]
    webhook["url"] = intake_url
    webhook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return config


def pass_through(responder: ResponderProcess):
    """A CaptureServer ``respond``: forward to the real intake, note its answer on the record."""
    def respond(request: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        headers = {key.lower(): value for key, value in request["headers"].items()}
        try:
            answer = HTTP.post(f"{responder.url}{request['path']}", json=request["body"],
                                headers={"authorization": headers.get("authorization", "")}, timeout=10)
        except httpx.TransportError:
            request["answered"] = 503
            return 503, {"error": "the responder's intake does not answer"}, {}
        request["answered"] = answer.status_code
        try:
            return answer.status_code, answer.json(), {}
        except ValueError:
            return answer.status_code, answer.text, {}
    return respond


def alerts_in(request: dict[str, Any]) -> list[dict[str, str]]:
    """The label sets of the alerts in one webhook body Alertmanager sent."""
    return [alert["labels"] for alert in request["body"].get("alerts", [])]


def watchdogs_answered(intake: CaptureServer, status: int, after: int = 0) -> int:
    return sum(1 for request in intake.requests[after:]
               if request.get("answered") == status
               and any(labels.get("alertname") == "Watchdog" for labels in alerts_in(request)))


def pages(pagerduty: CaptureServer, alertname: str) -> list[dict[str, Any]]:
    return [r for r in pagerduty.requests if alertname in r["body"].get("payload", {}).get("summary", "")]


@pytest.fixture
def stack(prefect_server, tmp_path):
    """Responder, Alertmanager, Prometheus, the PagerDuty stand-in and the intake pass-through."""
    pagerduty = CaptureServer()
    responder = ResponderProcess(tmp_path / "home", make_config(tmp_path), prefect_server.api_url)
    intake = CaptureServer(respond=pass_through(responder))
    key_file, token_file = tmp_path / "pagerduty-routing-key", tmp_path / "intake-token"
    for path, secret in ((key_file, ROUTING_KEY), (token_file, responder.token)):
        path.write_text(secret)  # as docker-compose.yml writes them: no newline, mode 0600
        path.chmod(0o600)
    started: list[Any] = []
    try:
        # The responder first: a Prometheus scraping a responder that is still starting would see
        # it down, and rightly page.
        started.append(responder.start())
        am = AlertmanagerServer.with_config(tmp_path, alertmanager_config(
            f"{pagerduty.url}/v2/enqueue", key_file, f"{intake.url}/alerts", token_file))
        started.append(am)
        prom = PrometheusServer(tmp_path, {"responder": [f"127.0.0.1:{responder.port}"]},
                                rules=watch_rules(SPEED_UP), alertmanager=am.url)
        started.append(prom)
        yield responder, prom, am, pagerduty, intake
    finally:
        for process in reversed(started):
            process.stop()
        pagerduty.close()
        intake.close()


def test_a_dead_responder_is_paged_by_alertmanager_around_it(stack):
    responder, prom, am, pagerduty, intake = stack
    instance = f"127.0.0.1:{responder.port}"

    # -- healthy -----------------------------------------------------------------------------------
    # Every metric the rules read is one the responder exports (a misspelt name would never fire).
    exposition = HTTP.get(f"{responder.url}/metrics", timeout=5).text
    used = {name for rule in watch_rules(SPEED_UP) for name in re.findall(r"\bresponder_[a-z_]+\b", rule["expr"])}
    assert used, "the rules read no responder_* metric"
    missing = {name for name in used if f"# TYPE {name} " not in exposition}
    assert not missing, f"rules read metrics the responder does not export: {sorted(missing)}"

    # The chain is live: Prometheus scrapes the responder, its rules evaluate without error, and
    # the Watchdog reaches the real intake (twice, so at least one group interval went by).
    prom.wait_scraped("responder", scrapes=5)
    rules = [rule for group in HTTP.get(f"{prom.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
             for rule in group["rules"]]
    assert len(rules) == len(watch_rules(SPEED_UP)) and all(rule["health"] == "ok" for rule in rules), rules
    wait_for(lambda: watchdogs_answered(intake, 200) >= 2, 30, what="two Watchdogs answered 200 by the responder")

    # ... and on a healthy responder none of the rules about it is even pending, nor was any paged.
    assert prom.query('ALERTS{watch="responder"}') == []
    assert pagerduty.requests == [], "PagerDuty was paged about a healthy responder"

    # -- killed ------------------------------------------------------------------------------------
    os.killpg(responder.process.pid, signal.SIGKILL)
    responder.process.wait(10)

    wait_for(lambda: pages(pagerduty, "ResponderDown"), 30, what="ResponderDown at the PagerDuty stand-in")
    (page,) = pages(pagerduty, "ResponderDown")
    assert page["path"] == "/v2/enqueue"
    event = page["body"]
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["dedup_key"]
    assert event["payload"]["severity"] == "critical"
    summary = event["payload"]["summary"]
    assert "ResponderDown" in summary and f"Responder {instance} is down" in summary, summary
    # Only the responder's death was paged: with its metrics gone, nothing else about it is known.
    assert pagerduty.requests == [page], [r["body"].get("payload", {}).get("summary") for r in pagerduty.requests]

    # The `responder` receiver kept working after the page (a Watchdog attempt answered 503 by the
    # pass-through, the intake being gone), so it had every chance to carry ResponderDown too ...
    after_page = len(intake.requests)
    wait_for(lambda: watchdogs_answered(intake, 503, after=after_page), 30,
             what="a Watchdog sent to the dead responder after the page")
    # ... and never carried any alert about the responder, before or after its death.
    about_responder = [labels for request in intake.requests for labels in alerts_in(request)
                       if labels.get("watch") == "responder"]
    assert about_responder == [], f"alerts about the responder were sent to the responder: {about_responder}"
    # Alertmanager's own account agrees: ResponderDown's only receiver is responder-watch.
    down = HTTP.get(f"{am.url}/api/v2/alerts", params={"filter": 'alertname="ResponderDown"'}, timeout=5).json()
    assert [[receiver["name"] for receiver in alert["receivers"]] for alert in down] == [["responder-watch"]]
