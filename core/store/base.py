"""What every part of the store shares: the transaction hooks the backends implement."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator


class StoreUnavailable(Exception):
    """The store cannot take writes right now (the intake answers 503)."""


class StoreBusy(Exception):
    """A write asked not to wait found the store's write lock held (or the backend never writes without
    waiting): nothing was written; do it again where waiting is fine."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(value: datetime) -> str:
    if value.tzinfo is timezone.utc:  # utcnow()'s, most of them: no conversion to make
        return value.isoformat()
    return value.astimezone(timezone.utc).isoformat()


def new_id() -> str:
    """A random (version 4) UUID as text, the same form as ``str(uuid.uuid4())`` at a fifth of its CPU (the
    UUID object's construction and formatting cost more than the 16 random bytes): every row's id."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class StoreBase:
    """The backend hooks; :class:`core.store.backends.Store` composes the concerns over them."""

    dialect: str

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._no_wait = threading.local()

    @contextmanager
    def without_waiting(self) -> Iterator[None]:
        """Transactions of this thread inside the block raise :class:`StoreBusy`, having written nothing, where
        they would wait for the write lock (and always on PostgreSQL, where every statement is a round trip).

        On SQLite they also commit without an fsync of their own (``synchronous=NORMAL`` instead of ``FULL``),
        so the thread is not held for the disk: what they wrote survives a kill of the process at once, and a
        power loss once :meth:`sync` has returned. Whoever reports such a write as durable calls it first."""
        before = getattr(self._no_wait, "on", False)
        self._no_wait.on = True
        try:
            yield
        finally:
            self._no_wait.on = before

    def _waits(self) -> bool:
        return not getattr(self._no_wait, "on", False)

    def sync(self) -> None:
        """Make every commit made so far durable, also through a power loss (SQLite: an fsync of its
        write-ahead log; PostgreSQL's commits are durable on their own, by its ``synchronous_commit``).
        Raises :class:`StoreUnavailable` when the disk refuses."""

    def defer_checkpoints(self) -> bool:
        """From now on the process's commits leave copying the write-ahead log into the database file to
        :meth:`checkpoint`, which the caller runs from a thread of its own. False when the store has no
        checkpoints to make (PostgreSQL makes its own)."""
        return False

    def checkpoint(self) -> int:
        """Copy what the write-ahead log gained since the last call into the database file, beside the writers
        (SQLite); returns the pages copied (0 when there was nothing to do, and on PostgreSQL)."""
        return 0

    @contextmanager
    def _tx(self) -> Iterator[Any]:  # pragma: no cover - overridden
        """One transaction; inside :meth:`without_waiting`, StoreBusy instead of a wait for the write lock."""
        raise NotImplementedError
        yield

    def _lock_group(self, cur: Any, group_key: str) -> None:
        """Serialise writers of one Alertmanager group (PostgreSQL only; SQLite has one writer)."""

    def _q(self, sql: str) -> str:
        return sql

    def _exec(self, cur: Any, sql: str, params: tuple = ()) -> Any:
        cur.execute(self._q(sql), params)
        return cur

    def _tables(self, cur: Any) -> set[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def ping(self) -> None:
        with self._tx() as cur:
            self._exec(cur, "SELECT 1")
