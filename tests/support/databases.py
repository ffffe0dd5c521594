"""PostgreSQL helpers for tests: is a server there, a throwaway database on it, a server of one's own."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pytest
import redis

from support.common import free_port


def _pg_ok(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@contextmanager
def temporary_database(postgres_url: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of ``postgres_url``, dropped afterwards; its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def private_postgres() -> Iterator[str]:
    """A PostgreSQL server of its own, started from the local binaries on a free port in a new
    directory (stopped and removed afterwards); the URL of its ``postgres`` database. For tests
    whose figures are the whole server's (``pg_stat_activity``): nobody else's sessions move them.

    The directory is made with ``tempfile``, not under pytest's ``tmp_path``: run as root, the
    server runs as ``postgres``, which cannot enter pytest's root-only directories."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        raise RuntimeError("No PostgreSQL binaries under /usr/lib/postgresql: apt-get install postgresql")
    bindir = Path(initdb[-1]).parent
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="responder-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres")
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", f"-p {port} -k /tmp -h 127.0.0.1",
                    "-l", str(data / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def empty_redis_database(redis_url: str) -> Iterator[int]:
    """A Redis database number (1-15) holding nothing, emptied again afterwards.

    Prefect's Redis messaging keeps its streams (``events``, ``actions``) and consumer groups in
    the database it is given, and they outlive the server: a new Prefect server on a database an
    earlier one used reads that one's unacknowledged messages, so its triggers started runs for
    alerts of another test (an incident its store never had) and a second run for an alert already
    answered. Each stack gets a database of its own."""
    url = urlparse(redis_url)
    for number in range(1, 16):
        client = redis.Redis(host=url.hostname or "127.0.0.1", port=url.port or 6379, db=number)
        # Empty, and ours: another test session looking at the same moment does not get the marker.
        if client.dbsize() == 0 and client.set("runbook-responder-test", "taken", nx=True, ex=3600):
            try:
                yield number
            finally:
                client.flushdb()
            return
    pytest.fail(f"no empty Redis database (1-15) on {url.hostname}:{url.port}: left by crashed test runs? "
                "FLUSHDB the ones you know are test leftovers")
