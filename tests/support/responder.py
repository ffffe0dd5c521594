"""The responder as the real ``responder up`` process, reached over real HTTP, and the config/ copy it reads."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml

from .common import BIN, HTTP, ROOT, free_port, wait_for


# Every responder a test started; a failing test's report carries the tail of their logs.
LIVE_RESPONDERS: list["ResponderProcess"] = []


class ResponderProcess:
    def __init__(self, home: Path, config_dir: Path, api_url: str, extra_env: dict[str, str] | None = None):
        self.home = home
        self.config_dir = config_dir
        self.api_url = api_url
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            "RESPONDER_HOME": str(home),
            "RESPONDER_CONFIG_DIR": str(config_dir),
            "RESPONDER_INTAKE_PORT": str(self.port),
            "RESPONDER_INTAKE_TOKEN": self.token,
            **(extra_env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.log_path = home / "responder.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> "ResponderProcess":
        self.home.mkdir(parents=True, exist_ok=True)
        if self not in LIVE_RESPONDERS:
            LIVE_RESPONDERS.append(self)
        self.process = subprocess.Popen(
            [str(BIN / "responder"), "up"], env=self.env, cwd=ROOT,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"responder exited {self.process.returncode}:\n{self.log()}")
            return HTTP.get(f"{self.url}/healthz", timeout=2).status_code == 200
        wait_for(ready, timeout, what="responder /healthz 200")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def post(self, body: Any, token: str | None = None, raw: bytes | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token if token is not None else self.token}"}
        if raw is not None:
            return HTTP.post(f"{self.url}/alerts", content=raw, headers={**headers, "content-type": "application/json"}, timeout=30)
        return HTTP.post(f"{self.url}/alerts", json=body, headers=headers, timeout=30)

    def stop(self) -> None:
        if self in LIVE_RESPONDERS:
            LIVE_RESPONDERS.remove(self)
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def make_config(tmp: Path, thresholds: dict[str, dict[str, float]] | None = None, targets: dict | None = None,
                notify: dict | None = None, runbook_overrides: dict[str, dict] | None = None,
                default_pages_after_minutes: tuple[float, float, float] | None = None) -> Path:
    """A copy of config/ with test overrides (thresholds, targets, notify) applied; app-1 is this machine.

    ``default_pages_after_minutes``: when the default escalation policy pages levels 1, 2 and 3 (the
    seed's 5/15/30), for a module that waits for its level 3 page."""
    config = tmp / "config"
    shutil.copytree(ROOT / "config", config, dirs_exist_ok=True)
    changes: dict[str, dict] = {}
    for name, values in (thresholds or {}).items():
        changes.setdefault(name, {"name": name})["thresholds"] = dict(values)
    for name, values in (runbook_overrides or {}).items():
        changes.setdefault(name, {"name": name}).update(values)
    if changes:  # as an installation writes them: config/runbooks/*.yaml entries
        (config / "runbooks" / "tests.yaml").write_text(yaml.safe_dump({"runbooks": list(changes.values())}))
    # The shared Alertmanager samples and most tests name the machine "app-1": in these tests that is
    # this machine (``hosts.local``), as a one-host installation would configure it.
    targets = targets if targets is not None else yaml.safe_load((config / "targets.yaml").read_text())
    hosts = targets.setdefault("hosts", {})
    hosts["local"] = [*hosts.get("local", []), "app-1"]
    (config / "targets.yaml").write_text(yaml.safe_dump(targets))
    if notify is not None:
        (config / "notify.yaml").write_text(yaml.safe_dump(notify))
    if default_pages_after_minutes is not None:
        escalation = yaml.safe_load((config / "escalation.yaml").read_text())
        escalation["policies"]["default"] = [{"level": level, "after_minutes": minutes}
                                             for level, minutes in enumerate(default_pages_after_minutes, start=1)]
        (config / "escalation.yaml").write_text(yaml.safe_dump(escalation))
    return config


@contextmanager
def running_responder(tmp: Path, api_url: str, config_dir: Path | None = None, **env: str) -> Iterator[ResponderProcess]:
    proc = ResponderProcess(tmp / "home", config_dir or make_config(tmp), api_url, env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def fire(responder: "ResponderProcess", body: dict) -> str:
    """Post an Alertmanager body to the intake; the id of the incident it opened."""
    answer_ = responder.post(body)
    assert answer_.status_code == 200, answer_.text
    return answer_.json()["incidents_opened"][0]
