"""Who this responder is, in the leases of the shared store (``core/store/runs.py``).

A holder is ``host/pid/nonce``. A lease expires when its holder stops renewing it (``LEASE_SECONDS``
after its last heartbeat); a holder on this same host whose process is gone is known dead at once,
so a responder restarted after a crash takes its old runs back without waiting for the expiry.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timezone

import psutil

LEASE_SECONDS = 30.0  # a holder renews every LEASE_SECONDS / 3; a dead one's runs are taken over after this
HOST = socket.gethostname()


def new_holder() -> str:
    return f"{HOST}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def known_dead(holder: str) -> bool:
    """True when ``holder`` ran on this host and its process is gone (another host's: only by expiry)."""
    host, _, rest = holder.partition("/")
    pid = rest.partition("/")[0]
    if host != HOST or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:  # a zombie is dead too: killed, and not yet reaped by its parent (a supervisor, a shell, a test)
        return psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not ours to inspect: leave it to the lease's expiry
        return False


def held_by_live(lease: tuple[str, datetime] | None) -> bool:
    """True when ``lease`` (holder, expiry; as the store gives it) is held by a responder still alive:
    not expired, and its holder not known dead."""
    return lease is not None and lease[1] > datetime.now(timezone.utc) and not known_dead(lease[0])
