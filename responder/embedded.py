"""The Prefect server `responder up` starts when no PREFECT_API_URL is set, on SQLite under a local PREFECT_HOME.

This module does not import Prefect: Prefect reads PREFECT_API_URL when it is first imported, so
`responder up` starts this server and sets the address before anything imports Prefect.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import certifi
import httpx
import psutil

from core.settings import PROJECT_ROOT


def server_command(kind: str = "tuned") -> list[str]:
    """The command that starts a Prefect server (``--host``/``--port`` to be added): ``tuned`` is
    ``python -m responder.prefect_server``, ``stock`` is ``prefect server start``."""
    if kind == "stock":
        return [str(Path(sys.executable).with_name("prefect")), "server", "start"]
    return [sys.executable, "-m", "responder.prefect_server", *(["--split"] if kind == "split" else [])]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In the server's child process, before exec: SIGTERM it when the responder dies, also by SIGKILL."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedPrefectServer:
    """The Prefect server on SQLite under a project-local PREFECT_HOME.

    ``tuned`` (the default) runs ``python -m responder.prefect_server``: Prefect's own server app
    with SQLite writes queued instead of refused (see that module); ``stock`` runs
    ``prefect server start``.

    Crash and restart: the server is told to stop when the responder dies (Linux's parent-death
    signal), and ``server.pid`` under PREFECT_HOME names the server of the last start. A start that
    finds that server still running (it outlived a ``kill -9``, or it is still shutting down) stops
    it and starts a fresh one on the same database, so a service manager restarting the responder
    needs no person. A port held by anything else is still refused.
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

    @property
    def pid_file(self) -> Path:
        return self.home / "server.pid"

    @property
    def auth_file(self) -> Path:
        return self.home / "api-auth"

    def auth_string(self) -> str:
        """The login of the Prefect UI and API (Prefect's basic auth, ``user:password``): from
        ``PREFECT_SERVER_API_AUTH_STRING`` when set, else PREFECT_HOME/api-auth, made (0600) on first
        start. Without it anyone who reaches the port could resume, cancel or delete any run."""
        given = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
        if given:
            return given
        if not self.auth_file.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"responder:{secrets.token_urlsafe(24)}")
        return self.auth_file.read_text().strip()

    def _recorded(self) -> tuple[psutil.Process | None, psutil.Process | None]:
        """The server and the responder of the last start of this PREFECT_HOME, each if it still runs.

        A process counts only when its start time is the one recorded (a reused pid has another).
        """
        try:
            recorded = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None, None

        def alive(pid_key: str, started_key: str) -> psutil.Process | None:
            try:
                process = psutil.Process(int(recorded[pid_key]))
                same = abs(process.create_time() - float(recorded[started_key])) < 1.0
                return process if same and process.status() != psutil.STATUS_ZOMBIE else None
            except (KeyError, TypeError, ValueError, psutil.Error):
                return None

        return alive("pid", "started"), alive("responder", "responder_started")

    def stop_leftover(self, timeout: float = 20) -> int | None:
        """Stop the server an earlier, dead responder left running (its whole process group).

        Returns the pid stopped, or None. Raises when the responder of that start still runs: two
        responders must not share one embedded server's SQLite database.
        """
        process, responder = self._recorded()
        if process is None:
            return None
        if responder is not None and responder.pid != os.getpid():
            raise RuntimeError(
                f"another responder (pid {responder.pid}) runs the embedded Prefect server under {self.home}: "
                "stop it first, or give this one its own PREFECT_HOME and PREFECT_SERVER_API_PORT"
            )
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except psutil.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
        self.pid_file.unlink(missing_ok=True)
        return process.pid

    def start(self, timeout: float = 90) -> None:
        if (pid := self.stop_leftover()) is not None:
            print(f"Stopped the embedded Prefect server an earlier start left running (pid {pid})", flush=True)
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
        env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string()  # the UI asks for it; /api/health stays open
        log = open(self.home / "server.log", "ab")
        self.process = subprocess.Popen(
            [*server_command(self.kind), "--host", self.host, "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.pid_file.write_text(json.dumps({
            "pid": self.process.pid, "started": psutil.Process(self.process.pid).create_time(),
            "responder": os.getpid(), "responder_started": psutil.Process().create_time(),
        }))
        if health_answers(self.api_url, timeout, self.process, self.home / "server.log"):
            return
        self.stop()
        raise RuntimeError(f"the embedded Prefect server did not answer on {self.api_url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.process:
            self.pid_file.unlink(missing_ok=True)


def health_answers(api_url: str, timeout: float, process: subprocess.Popen | None = None,
                   log: Path | None = None) -> bool:
    """Whether ``{api_url}/health`` answers 200 within ``timeout`` seconds; raises when ``process``
    (the server being waited for) exits first."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as http:  # one client for the whole wait: each new one loads the CA bundle
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the embedded Prefect server exited with code {process.returncode}; see {log}")
            try:
                if http.get(f"{api_url}/health").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    return False


def default_prefect_home() -> Path:
    return PROJECT_ROOT / ".prefect"


MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas() -> None:
    """Two malloc arenas for this process and the embedded server, as ``MALLOC_ARENA_MAX=2`` would set.

    glibc gives threads that allocate at once arenas of their own (up to 8 per core), and memory freed
    in one is not reused by another: with a thread per running response, the responder and its server
    held more and more in a storm. Measured with ``bench/storm.py`` (200 responses): peak RSS of both
    630-678 MiB in three runs without, 572 and 581 MiB with, pages and first tasks no later. Called
    before any thread starts; a ``MALLOC_ARENA_MAX`` already in the environment wins."""
    arenas = os.environ.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))  # the server: a process of its own
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, int(arenas))
    except (OSError, AttributeError, ValueError):  # not glibc, or a value that is not a number: left as it is
        pass


CSRF_DISABLED = "CSRF protection is disabled"  # the Prefect server's answer to a token request when it is off


def no_csrf_tokens_when_unprotected(api_url: str, auth_string: str) -> bool:
    """Tell this process's Prefect clients not to ask the embedded server for CSRF tokens when it has
    CSRF protection off (Prefect's default); True when it is off.

    Each new Prefect client asks ``/csrf-token`` before its first change request and turns its support
    off only when the server answers 422 "CSRF protection is disabled": about one request per response
    (241 in a 200-response storm), for nothing. The server is asked once here instead; a server with
    the protection on, one that does not answer, or ``PREFECT_CLIENT_CSRF_SUPPORT_ENABLED`` set by you
    leaves the clients as they are."""
    if "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED" in os.environ:
        return False
    user, _, password = auth_string.partition(":")
    try:
        with httpx.Client(timeout=5, auth=(user, password)) as http:
            answer = http.get(f"{api_url}/csrf-token", params={"client": "runbook-responder-start"})
    except httpx.HTTPError:
        return False
    if answer.status_code == 422 and CSRF_DISABLED in answer.text:
        os.environ["PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"] = "false"
        return True
    return False


def small_ca_file_for_plain_http(api_url: str, home: Path) -> None:
    """For a plain-HTTP Prefect API, point Prefect's clients at a CA file of one certificate.

    Every Prefect client builds a TLS context from ``PREFECT_API_SSL_CERT_FILE`` (by default certifi's
    bundle of about 150 certificates), also for an ``http://`` API, where no TLS is ever spoken: 22 ms
    of CPU per client against 0.5 ms for a one-certificate file, and each response builds several
    (the flow engine's, the task engine's, the suspension observer's). The file holds the first
    certificate of certifi's bundle; it is never used to trust anything, as the API is plain HTTP. An
    ``https://`` API, a ``PREFECT_API_SSL_CERT_FILE`` already set, or one certifi cannot give, is left as it is."""
    if not api_url.startswith("http://") or os.environ.get("PREFECT_API_SSL_CERT_FILE"):
        return
    try:
        bundle = Path(certifi.where()).read_text()
        end = bundle.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
        first = bundle[bundle.index("-----BEGIN CERTIFICATE-----"):end]
    except (OSError, ValueError):
        return
    home.mkdir(parents=True, exist_ok=True)
    path = home / "plain-http-api-ca.pem"
    path.write_text(first + "\n")
    os.environ["PREFECT_API_SSL_CERT_FILE"] = str(path)
