"""The production-shaped stack: docker-compose.yml, docker/Dockerfile and deploy/.

No Docker engine runs here, so the stack is checked with the tools that do run:

* ``docker-compose config`` validates and interpolates docker-compose.yml; the parsed result is
  checked for the wiring between services (URLs, ports, databases, the intake token).
* ``promtool check config|rules`` and ``promtool test rules`` check Prometheus' files, the last
  one with unit tests of the alert rules (deploy/prometheus/alert-rules.test.yml) and of the rules
  about the responder itself (responder-rules.test.yml).
* ``amtool check-config`` and ``amtool config routes test`` check Alertmanager's file, and a real
  ``prometheus-alertmanager`` started with it delivers an alert, bearer token included. Alerts
  about the responder (watch="responder") route to PagerDuty only, never to the responder
  (end to end: tests/test_watched_from_outside.py).
* Every alert rule is either routed by the catalog (the runbooks' specs) or listed in
  NOT_YET_ROUTED below, and the seed thresholds in the rules agree with the catalog's.

A missing binary fails the test with the Debian package to install (``make test`` installs them
through scripts/test-services); nothing here is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from flows.registry import load_catalog
from support.common import HTTP, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_RULES = PROMETHEUS_DIR / "alert-rules.yml"
ALERT_RULES_TESTS = PROMETHEUS_DIR / "alert-rules.test.yml"
WATCH_RULES = PROMETHEUS_DIR / "responder-rules.yml"
WATCH_RULES_TESTS = PROMETHEUS_DIR / "responder-rules.test.yml"
PAGERDUTY_KEY_FILE = "/etc/alertmanager/secrets/pagerduty-routing-key"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
POSTGRES_INIT = ROOT / "deploy" / "postgres-init"
CATALOG = ROOT / "config" / "runbooks"

TEST_LOGIN = "admin:compose-test-login"
TEST_TOKEN = "compose-test-token"
STACK = {"postgres", "redis", "prefect-server", "responder", "prometheus", "alertmanager"}

# Alert rules that no runbook's spec routes yet. Deliberately explicit: adding a
# rule to alert-rules.yml fails test_every_alert_rule_is_routed_or_declared until its name is
# either added to a runbook's `alertnames` or listed here; routing a name listed here fails
# test_not_yet_routed_is_current until it is removed. An unrouted alert is stored by the intake
# as "unrouted" and starts no runbook.
NOT_YET_ROUTED: set[str] = set()  # every rule in alert-rules.yml is routed by the catalog now

# Every alert the seeds name (seed 002 names none), so a rule cannot silently disappear.
SEED_ALERTS = {
    "000": {"HIGH_CPU_USAGE", "HIGH_MEMORY_USAGE", "DISK_SPACE_CRITICAL", "HIGH_RESPONSE_TIME", "HIGH_ERROR_RATE",
            "DATABASE_SLOW_QUERIES", "FAILED_MEDIA_REQUESTS", "USER_AUTHENTICATION_ISSUES"},
    "001": {"error_rate", "response_time_p95", "database_connections", "disk_usage", "memory_usage",
            "health_check_failure", "redis_connection_failure", "queue_processing_time"},
    "003": {"ServiceDown", "HighErrorRate", "DatabaseConnectionFailure", "HighApiCosts", "HighMemoryUsage",
            "NoProductsSynced", "NoVideosGenerated", "RevenueDeclining"},
}

# (threshold, for, the catalog threshold keys that must agree): seed 000
#   "HIGH_CPU_USAGE / **Alert**: CPU usage >80% for 5 minutes"
#   "HIGH_MEMORY_USAGE / **Alert**: Memory usage >85% for 3 minutes"
SEED_THRESHOLDS = {
    "HIGH_CPU_USAGE": (80.0, "5m", "cpu"),
    "HIGH_MEMORY_USAGE": (85.0, "3m", "memory"),
}

DEBIAN_PACKAGE = {
    "docker-compose": "docker-compose",
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
}


# -- helpers ----------------------------------------------------------------------------------


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = DEBIAN_PACKAGE[name]
        pytest.fail(
            f"{name} is not installed: install the Debian package {package!r} "
            f"(apt-get install {package}; `make test` does it through scripts/test-services)",
            pytrace=False,
        )
    return path


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def compose_env(**extra: str) -> dict[str, str]:
    """The caller's environment without the stack's variables, so defaults are what is tested."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RESPONDER_", "POSTGRES_", "PREFECT_", "COMPOSE_", "DOCKER_"))
    }
    env.update(extra)
    return env


def compose(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # An empty --env-file: a developer's .env must not decide what this test sees.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return run([binary("docker-compose"), "-f", str(COMPOSE_FILE), "--env-file", str(empty), *args], compose_env(**env))


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, Any]:
    """docker-compose.yml as docker-compose interpolates it (RESPONDER_INTAKE_TOKEN set)."""
    result = compose(["config"], tmp_path_factory.mktemp("compose"), RESPONDER_INTAKE_TOKEN=TEST_TOKEN, PREFECT_API_AUTH_STRING=TEST_LOGIN)
    assert_ok(result)
    return yaml.safe_load(result.stdout)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts_of(service: dict[str, Any]) -> dict[str, str]:
    """container path → host path (bind mounts) or volume name."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume["target"]
        mounts[target] = source
    return mounts


def command_of(service: dict[str, Any]) -> str:
    command = service.get("command") or []
    return " ".join(command) if isinstance(command, list) else command


def flag(command: str, name: str) -> str:
    match = re.search(rf"--{re.escape(name)}[= ](\S+)", command)
    assert match, f"--{name} not found in command {command!r}"
    return match.group(1)


def load_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def load_watch_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(WATCH_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def rule_named(name: str) -> dict[str, Any]:
    matches = [rule for rule in load_rules() if rule["alert"] == name]
    assert len(matches) == 1, f"expected one rule {name!r} in {ALERT_RULES}, found {len(matches)}"
    return matches[0]


def catalog_alertnames() -> set[str]:
    return {name for runbook in load_catalog(CATALOG.parent).runbooks for name in runbook.alertnames}


# -- (1) docker-compose.yml ---------------------------------------------------------------------


def test_compose_file_is_valid(tmp_path):
    assert_ok(compose(["config", "-q"], tmp_path, RESPONDER_INTAKE_TOKEN=TEST_TOKEN, PREFECT_API_AUTH_STRING=TEST_LOGIN))


def test_compose_refuses_to_start_without_intake_token(tmp_path):
    result = compose(["config", "-q"], tmp_path, PREFECT_API_AUTH_STRING=TEST_LOGIN)
    assert result.returncode != 0, "docker-compose accepted the file without RESPONDER_INTAKE_TOKEN"
    assert "set RESPONDER_INTAKE_TOKEN" in result.stderr, result.stderr


def test_compose_refuses_to_start_a_prefect_server_without_a_login(tmp_path):
    result = compose(["config", "-q"], tmp_path, RESPONDER_INTAKE_TOKEN=TEST_TOKEN)
    assert result.returncode != 0, "docker-compose accepted the file without PREFECT_API_AUTH_STRING"
    assert "set PREFECT_API_AUTH_STRING" in result.stderr, result.stderr


def test_the_prefect_ui_and_api_ask_for_the_login_the_responder_uses(stack):
    server, responder = stack["services"]["prefect-server"], stack["services"]["responder"]
    assert env_of(server)["PREFECT_SERVER_API_AUTH_STRING"] == env_of(responder)["PREFECT_API_AUTH_STRING"] == TEST_LOGIN


def test_compose_has_the_stack(stack):
    services = stack["services"]
    assert STACK <= set(services), f"missing services: {sorted(STACK - set(services))}"
    assert "build" not in services["prefect-server"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager")


def test_prefect_server_runs_the_pinned_prefect_on_postgres_and_redis(stack):
    services = stack["services"]
    server = services["prefect-server"]
    env = env_of(server)
    pin = re.search(r'"prefect==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml no longer pins prefect=="
    assert server["image"] == f"prefecthq/prefect:{pin.group(1)}-python3.11", "server and client Prefect differ"
    assert command_of(server).split()[:3] == ["prefect", "server", "start"]
    assert flag(command_of(server), "host") == "0.0.0.0"

    db = urlsplit(env["PREFECT_API_DATABASE_CONNECTION_URL"])
    postgres = env_of(services["postgres"])
    assert db.scheme == "postgresql+asyncpg"
    assert db.hostname == "postgres" and (db.port or 5432) == 5432
    assert db.path.lstrip("/") == postgres["POSTGRES_DB"]
    assert (db.username, db.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])

    assert env["PREFECT_MESSAGING_BROKER"] == "prefect_redis.messaging"
    assert env["PREFECT_MESSAGING_CACHE"] == "prefect_redis.messaging"
    assert env["PREFECT_REDIS_MESSAGING_HOST"] in services and env["PREFECT_REDIS_MESSAGING_HOST"] == "redis"
    assert env["PREFECT_REDIS_MESSAGING_PORT"] == "6379"
    assert re.match(r"prefect-redis(==|\b)", env["EXTRA_PIP_PACKAGES"])

    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["healthcheck"]["test"], "postgres needs a healthcheck for service_healthy"
    assert "4200/api/health" in " ".join(server["healthcheck"]["test"])


def test_responder_is_wired_to_prefect_postgres_and_the_token(stack):
    services = stack["services"]
    responder = services["responder"]
    env = env_of(responder)

    assert responder["build"]["dockerfile"] == "docker/Dockerfile"
    assert Path(responder["build"]["context"]) == ROOT
    assert DOCKERFILE.is_file()
    assert command_of(responder) == "responder up"

    api = urlsplit(env["PREFECT_API_URL"])
    assert (api.scheme, api.hostname, api.port, api.path) == ("http", "prefect-server", 4200, "/api")
    assert "--port" not in command_of(services["prefect-server"]), "prefect-server no longer on 4200"
    assert responder["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert responder["depends_on"]["postgres"]["condition"] == "service_healthy"

    assert env["RESPONDER_INTAKE_HOST"] == "0.0.0.0"
    assert env["RESPONDER_INTAKE_PORT"] == "8765"
    assert env["RESPONDER_INTAKE_TOKEN"] == TEST_TOKEN

    # A separate database `responder`, created by the init script with the password the URL uses.
    db = urlsplit(env["RESPONDER_DATABASE_URL"])
    postgres = services["postgres"]
    assert db.scheme == "postgresql" and db.hostname == "postgres"
    assert db.path.lstrip("/") == "responder" != env_of(postgres)["POSTGRES_DB"]
    assert db.password == env_of(postgres)["RESPONDER_DB_PASSWORD"]
    assert Path(mounts_of(postgres)["/docker-entrypoint-initdb.d"]) == POSTGRES_INIT
    init_sql = "\n".join(p.read_text() for p in sorted(POSTGRES_INIT.iterdir()) if p.suffix in (".sh", ".sql"))
    assert f"CREATE ROLE {db.username} LOGIN" in init_sql
    assert f"CREATE DATABASE responder OWNER {db.username}" in init_sql

    health = " ".join(responder["healthcheck"]["test"])
    assert f"127.0.0.1:{env['RESPONDER_INTAKE_PORT']}/healthz" in health


def test_alertmanager_posts_to_the_responder_with_the_token_file(stack):
    services = stack["services"]
    alertmanager = services["alertmanager"]
    responder_env = env_of(services["responder"])
    mounts = mounts_of(alertmanager)

    config_dir = next(target for target, source in mounts.items() if source and Path(source) == ALERTMANAGER_CONFIG.parent)
    command = command_of(alertmanager)
    assert flag(command, "config.file") == f"{config_dir}/alertmanager.yml"

    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == config["route"]["receiver"]]
    (webhook,) = receiver["webhook_configs"]
    url = urlsplit(webhook["url"])
    assert url.hostname == "responder" and url.hostname in services
    assert url.port == int(responder_env["RESPONDER_INTAKE_PORT"])
    assert url.path == "/alerts"
    assert webhook["send_resolved"] is True

    # The token file: written from the same RESPONDER_INTAKE_TOKEN into a tmpfs before alertmanager starts.
    token_file = webhook["http_config"]["authorization"]["credentials_file"]
    assert token_file == "/etc/alertmanager/secrets/intake-token"
    tmpfs = [entry.split(":")[0] for entry in alertmanager.get("tmpfs") or []]
    assert str(Path(token_file).parent) in tmpfs
    assert f'"$$RESPONDER_INTAKE_TOKEN" > {token_file}' in command or f'"$RESPONDER_INTAKE_TOKEN" > {token_file}' in command
    assert command.index(token_file) < command.index("exec /bin/alertmanager")
    assert env_of(alertmanager)["RESPONDER_INTAKE_TOKEN"] == responder_env["RESPONDER_INTAKE_TOKEN"] == TEST_TOKEN


def test_alertmanager_gets_the_pagerduty_key_file_like_the_token(stack):
    """The routing key of responder-watch: from the environment into the same tmpfs, before exec."""
    alertmanager = stack["services"]["alertmanager"]
    command = command_of(alertmanager)
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    key_files = [pd["routing_key_file"] for receiver in config["receivers"] for pd in receiver.get("pagerduty_configs", [])]
    assert key_files == [PAGERDUTY_KEY_FILE]
    tmpfs = [entry.split(":")[0] for entry in alertmanager.get("tmpfs") or []]
    assert str(Path(PAGERDUTY_KEY_FILE).parent) in tmpfs
    written = re.search(rf'"\$\$?RESPONDER_PAGERDUTY_ROUTING_KEY" > {re.escape(PAGERDUTY_KEY_FILE)}', command)
    assert written, f"the alertmanager command does not write {PAGERDUTY_KEY_FILE}: {command!r}"
    assert command.index("umask 077") < written.start() < command.index("exec /bin/alertmanager")
    # Optional, so the stack starts without it (empty here: compose_env() clears RESPONDER_*); the
    # raw file takes it from the environment only.
    assert env_of(alertmanager)["RESPONDER_PAGERDUTY_ROUTING_KEY"] == ""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["alertmanager"]["environment"]
    assert raw["RESPONDER_PAGERDUTY_ROUTING_KEY"].startswith("${RESPONDER_PAGERDUTY_ROUTING_KEY")


def test_prometheus_scrapes_the_stack_and_alerts_through_alertmanager(stack):
    services = stack["services"]
    prometheus = services["prometheus"]
    mounts = mounts_of(prometheus)
    assert Path(mounts["/etc/prometheus"]) == PROMETHEUS_DIR
    assert flag(command_of(prometheus), "config.file") == "/etc/prometheus/prometheus.yml"

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alert-rules.yml", "responder-rules.yml"]
    (am,) = config["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]

    targets = {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    responder_port = env_of(services["responder"])["RESPONDER_INTAKE_PORT"]
    assert targets["responder"] == [f"responder:{responder_port}"]
    assert "prometheus" in targets and "alertmanager" in targets and "node" in targets
    for job, hosts in targets.items():
        for target in hosts:
            host = target.split(":")[0]
            assert host == "localhost" or host in services, f"scrape job {job}: {target} is not a compose service"


def test_no_literal_secrets_in_the_compose_file():
    """Passwords and tokens come from the environment; only `${VAR:-default}` local-dev defaults."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    offenders = []
    for name, service in raw["services"].items():
        env = service.get("environment") or {}
        for key, value in (env.items() if isinstance(env, dict) else (i.split("=", 1) for i in env)):
            value = str(value)
            secret_key = re.search(r"PASSWORD|PASS$|TOKEN|SECRET", key)
            if secret_key and not value.startswith("${"):
                offenders.append(f"{name}.{key}")
            # user:password@ in a URL: the password part must be one ${...} expression
            userinfo = value.split("://", 1)[1].rsplit("@", 1)[0] if "://" in value and "@" in value else ""
            parts = re.sub(r"\$\{[^}]*\}", "${}", userinfo).split(":", 1)
            if len(parts) == 2 and parts[1] != "${}":
                offenders.append(f"{name}.{key} (password in URL)")
    assert not offenders, f"literal secrets in docker-compose.yml: {offenders}"


def test_dockerfile_builds_a_non_root_responder_image():
    text = DOCKERFILE.read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith(("#", " "))]
    keywords = [parts[0] for parts in instructions]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    assert re.search(r"^RUN pip install \.", text, re.M)
    user = [parts[1] for parts in instructions if parts[0] == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert keywords.index("USER") < keywords.index("CMD")
    assert 'CMD ["responder", "up"]' in text
    assert "HEALTHCHECK" in keywords and "/healthz" in text
    # the installed package's default paths point into site-packages: the image must name them
    assert "RESPONDER_CONFIG_DIR=/app/config" in text and "COPY config/ config/" in text


# -- (2) Prometheus ----------------------------------------------------------------------------


def test_promtool_check_config():
    assert_ok(run([binary("promtool"), "check", "config", str(PROMETHEUS_CONFIG)]))


def test_promtool_check_rules():
    result = run([binary("promtool"), "check", "rules", str(ALERT_RULES)])
    assert_ok(result)
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules():
    tested = set(re.findall(r"alertname: (\S+)", ALERT_RULES_TESTS.read_text()))
    assert {"HIGH_CPU_USAGE", "ServiceDown"} <= tested
    assert_ok(run([binary("promtool"), "test", "rules", str(ALERT_RULES_TESTS)]))


def test_every_rule_is_labelled_and_annotated():
    rules = load_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "one rule per seed alert: an alertname appears twice"
    for rule in rules:
        assert rule.get("labels", {}).get("severity") in ("info", "warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule.get("annotations", {})), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{rule['alert']}: no `for:` duration"


def test_promtool_check_watch_rules():
    result = run([binary("promtool"), "check", "rules", str(WATCH_RULES)])
    assert_ok(result)
    assert f"SUCCESS: {len(load_watch_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_watch_rules():
    """Every rule about the responder has unit tests, and they pass."""
    tested = set(re.findall(r"alertname: (\S+)", WATCH_RULES_TESTS.read_text()))
    untested = {rule["alert"] for rule in load_watch_rules()} - tested
    assert not untested, f"rules in {WATCH_RULES.name} without a test in {WATCH_RULES_TESTS.name}: {sorted(untested)}"
    assert_ok(run([binary("promtool"), "test", "rules", str(WATCH_RULES_TESTS)]))


def test_watch_rules_are_labelled_for_the_route_around_the_responder():
    """watch: responder on every rule but the Watchdog, which is the one meant for the responder."""
    rules = {rule["alert"]: rule for rule in load_watch_rules()}
    assert {"ResponderDown", "ResponderMissing", "ResponderPrefectServerUnreachable", "ResponderEventsStuck",
            "ResponderResponsesNotStarting", "ResponderPagesLate", "ResponderNotificationsFailing", "Watchdog"} <= set(rules)
    watchdog = rules.pop("Watchdog")
    assert watchdog["expr"] == "vector(1)" and "for" not in watchdog
    assert watchdog["labels"] == {"severity": "none"}, "the Watchdog must not be routed around the responder"
    for name, rule in rules.items():
        assert rule["labels"].get("watch") == "responder", name
        assert rule["labels"].get("severity") in ("warning", "critical"), name
    for name, rule in {**rules, "Watchdog": watchdog}.items():
        assert {"summary", "description"} <= set(rule["annotations"]), name
    # These never reach the responder: a runbook for one would never start, and the same name in
    # alert-rules.yml would be routed two ways.
    assert not set(rules) & catalog_alertnames(), "the catalog routes an alert that never reaches the responder"
    assert not set(rules) & {rule["alert"] for rule in load_rules()}


def test_rules_cover_every_seed_alert():
    names = {rule["alert"] for rule in load_rules()}
    for seed, alerts in SEED_ALERTS.items():
        assert alerts <= names, f"seed {seed} alerts without a rule: {sorted(alerts - names)}"


# -- (3) Alertmanager --------------------------------------------------------------------------


def test_amtool_check_config():
    assert_ok(run([binary("amtool"), "check-config", str(ALERTMANAGER_CONFIG)]))


@pytest.mark.parametrize("severity", ["critical", "warning", "info"])
def test_every_severity_routes_to_the_responder(severity):
    result = run([
        binary("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
        "--verify.receivers=responder", "alertname=HIGH_CPU_USAGE", f"severity={severity}",
    ])
    assert_ok(result)


def test_alertmanager_delivers_with_the_bearer_token(tmp_path, capture):
    """The real Alertmanager with this file (URL and token path pointed here) sends the token."""
    am = binary("prometheus-alertmanager")
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    token_file = tmp_path / "intake-token"
    token_file.write_text(TEST_TOKEN + "\n")  # a trailing newline, as `echo` would leave
    token_file.chmod(0o600)
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = capture.url + "/alerts"
            webhook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))

    port = free_port()
    proc = subprocess.Popen(
        [am, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: HTTP.get(f"{base}/-/ready", timeout=2).status_code == 200, 20, what="alertmanager ready")
        alert = {
            "labels": {"alertname": "ServiceDown", "severity": "critical", "job": "responder", "instance": "responder:8765"},
            "annotations": {"summary": "responder is down"},
            "startsAt": datetime.now(timezone.utc).isoformat(),
        }
        HTTP.post(f"{base}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()
        wait_for(lambda: capture.requests, 20, what="the webhook delivery")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    request = capture.requests[0]
    assert request["path"] == "/alerts"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == f"Bearer {TEST_TOKEN}"
    body = request["body"]
    assert body["receiver"] == "responder" and body["version"] == "4"
    assert body["groupLabels"] == {"alertname": "ServiceDown"}
    assert [a["labels"]["alertname"] for a in body["alerts"]] == ["ServiceDown"]


@pytest.mark.parametrize("alertname", sorted(rule["alert"] for rule in load_watch_rules() if rule["alert"] != "Watchdog"))
def test_alerts_about_the_responder_route_to_pagerduty_only(alertname):
    """With the rule's own labels, the only receiver is responder-watch (not also the responder)."""
    rule = {rule["alert"]: rule for rule in load_watch_rules()}[alertname]
    labels = [f"{key}={value}" for key, value in {"alertname": alertname, **rule["labels"]}.items()]
    result = run([binary("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                  "--verify.receivers=responder-watch", *labels])
    assert_ok(result)
    assert result.stdout.split() == ["responder-watch"]


def test_watchdog_routes_to_the_responder_every_minute():
    result = run([binary("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                  "--verify.receivers=responder", "alertname=Watchdog", "severity=none"])
    assert_ok(result)
    routes = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]["routes"]
    (watchdog,) = [route for route in routes if route.get("matchers") == ['alertname="Watchdog"']]
    # Re-sent at every group interval (the responder expects it every 60 s): repeat_interval under it.
    assert watchdog["group_interval"] == "1m" and watchdog["repeat_interval"] == "50s", watchdog


def test_the_route_around_the_responder_comes_first_and_stops():
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    first = config["route"]["routes"][0]
    assert first["matchers"] == ['watch="responder"'] and first["receiver"] == "responder-watch"
    assert first.get("continue", False) is False and first["group_wait"] == "0s"
    (receiver,) = [r for r in config["receivers"] if r["name"] == "responder-watch"]
    assert set(receiver) == {"name", "pagerduty_configs"}, "responder-watch must not deliver through the responder"
    (pagerduty,) = receiver["pagerduty_configs"]
    assert pagerduty["routing_key_file"] == PAGERDUTY_KEY_FILE
    assert not {"routing_key", "service_key", "service_key_file"} & set(pagerduty), "Events API v2, key from a file"
    assert pagerduty["send_resolved"] is True
    assert urlsplit(pagerduty["url"]).path == "/v2/enqueue"


# -- (4) every rule routed or deliberately not -------------------------------------------------


def test_every_alert_rule_is_routed_or_declared():
    undecided = {rule["alert"] for rule in load_rules()} - catalog_alertnames() - NOT_YET_ROUTED
    assert not undecided, (
        f"alert rules neither routed by {CATALOG.relative_to(ROOT)} nor listed in NOT_YET_ROUTED "
        f"(tests/test_compose.py): {sorted(undecided)}"
    )


def test_not_yet_routed_is_current():
    rules = {rule["alert"] for rule in load_rules()}
    routed_now = NOT_YET_ROUTED & catalog_alertnames()
    assert not routed_now, f"now routed by the catalog, remove from NOT_YET_ROUTED: {sorted(routed_now)}"
    gone = NOT_YET_ROUTED - rules
    assert not gone, f"no such alert rule any more, remove from NOT_YET_ROUTED: {sorted(gone)}"


# -- (5) thresholds: seeds, rules and catalog agree --------------------------------------------


def rule_threshold(rule: dict[str, Any]) -> float:
    match = re.search(r">\s*([0-9.]+)\s*$", " ".join(rule["expr"].split()))
    assert match, f"{rule['alert']}: expression does not end in `> threshold`: {rule['expr']!r}"
    return float(match.group(1))


@pytest.mark.parametrize("alertname", sorted(SEED_THRESHOLDS))
def test_rule_thresholds_match_seed_and_catalog(alertname):
    threshold, duration, resource = SEED_THRESHOLDS[alertname]
    rule = rule_named(alertname)
    assert rule_threshold(rule) == threshold, f"{alertname}: seed 000 says >{threshold:g}%"
    assert rule["for"] == duration, f"{alertname}: seed 000 says for {duration}"

    catalog = load_catalog(CATALOG.parent)
    runbook = catalog.route(alertname)
    limits = runbook.limits(runbook.limits_model, alertname).model_dump()  # the figures in force for this spelling
    compared = {key: value for key, value in limits.items() if resource in key and key.endswith("percent")}
    assert compared, f"runbook {runbook.name!r} has no {resource} percent threshold to compare"
    for key, value in compared.items():
        assert float(value) == threshold, (
            f"runbook {runbook.name!r} threshold {key} = {value} for {alertname}, "
            f"alert rule {alertname} fires at > {threshold:g}"
        )
