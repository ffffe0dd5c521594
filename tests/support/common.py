"""Where the project is, and the plainest waiting: the repository root, the virtualenv's bin
directory, a free local port, and polling until a condition holds."""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# The tests' own HTTP requests go through one kept client. ``httpx.get``/``httpx.post`` build a client
# per call, and each loads the CA bundle: 32 ms of CPU per request against 1.4 ms through a kept
# client (measured on a local server), which the tests' polling (every 0.2 s) paid on every call.
HTTP = httpx.Client(timeout=10)


# Ports for the servers tests start come from below Linux's ephemeral range (32768-60999), a block of
# its own for each pytest-xdist worker. A port the kernel hands out for ``bind(0)`` (or for the local
# end of an outgoing connection) could be handed out again to another worker's process, or taken by a
# connection, between the moment a test picks it and the moment its server binds it: the suite saw
# "address already in use" from a responder that lost its port that way. Here a worker never picks a
# port another worker can pick, and no outgoing connection takes one.
_PORT_BLOCK = 2_000
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
_first_port = 20_000 + _PORT_BLOCK * ((int(_worker[2:]) + 1) if _worker[2:].isdigit() else 0) % 12_000
_next_port = itertools.count()


def free_port() -> int:
    """A local TCP port nothing listens on, from this worker's own block (see above)."""
    for _ in range(_PORT_BLOCK):
        port = _first_port + next(_next_port) % _PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use, or still in TIME_WAIT from an earlier test
                continue
            return port
    raise RuntimeError(f"no free port in {_first_port}-{_first_port + _PORT_BLOCK - 1}")


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # the thing waited for may not answer yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
