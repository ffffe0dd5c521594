"""PostgreSQL helpers for tests: is a server there, and a throwaway database on it."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator


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
