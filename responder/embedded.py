"""The Prefect server `responder up` starts when no PREFECT_API_URL is set, on SQLite under a local PREFECT_HOME.

This module does not import Prefect: Prefect reads PREFECT_API_URL when it is first imported, so
`responder up` starts this server and sets the address before anything imports Prefect.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.settings import PROJECT_ROOT


def server_command(kind: str = "tuned") -> list[str]:
    """The command that starts a Prefect server (``--host``/``--port`` to be added): ``tuned`` is
    ``python -m responder.prefect_server``, ``stock`` is ``prefect server start``."""
    if kind == "stock":
        return [str(Path(sys.executable).with_name("prefect")), "server", "start"]
    return [sys.executable, "-m", "responder.prefect_server"]


class EmbeddedPrefectServer:
    """The Prefect server on SQLite under a project-local PREFECT_HOME.

    ``tuned`` (the default) runs ``python -m responder.prefect_server``: Prefect's own server app
    with SQLite writes queued instead of refused (see that module); ``stock`` runs
    ``prefect server start``.
    """

    def __init__(self, home: Path, port: int, host: str = "127.0.0.1", kind: str = "tuned") -> None:
        self.home, self.port, self.host, self.kind = home, port, host, kind
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 90) -> None:
        with socket.socket() as probe:
            if probe.connect_ex((self.host, self.port)) == 0:
                raise RuntimeError(
                    f"port {self.port} is already in use (another Prefect server?): stop it, or set "
                    "PREFECT_SERVER_API_PORT to a free port, or PREFECT_API_URL to use that server"
                )
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        env.setdefault("PREFECT_UI_API_URL", self.api_url)  # the UI calls the API on this port, not 4200
        log = open(self.home / "server.log", "ab")
        self.process = subprocess.Popen(
            [*server_command(self.kind), "--host", self.host, "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the embedded Prefect server exited with code {self.process.returncode}; see {self.home / 'server.log'}"
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the embedded Prefect server did not answer on {self.api_url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def default_prefect_home() -> Path:
    return PROJECT_ROOT / ".prefect"
