"""The two backends, SQLite (one file, the default) and PostgreSQL (shared by several responders)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psycopg

from core.store.base import StoreBusy, StoreUnavailable
from core.store.messages import Messages
from core.store.schema import migrate


class Store(Messages):
    """One store per process; thread-safe. Use :func:`open_store`.

    Composed by concern: notification outbox → people (tokens, verified answers) → audit trail → maintenance windows → heartbeats → episodes (ingest) → timeline, pages, notes, loop guard → incidents → outbox."""

    def migrate(self) -> int:
        """Apply the migrations this store lacks; returns the version it had."""
        return migrate(self, self.describe())

    def describe(self) -> str:  # pragma: no cover - overridden
        return "the store"


class SQLiteStore(Store):
    dialect = "sqlite"

    # SQLite copies its write-ahead log into the database file (a checkpoint) in the connection whose commit
    # took the log past 1,000 pages: under the intake's load that is the event loop's or the intake's writer,
    # which then waits for the copy and an fsync of the database file (about 30 % of an ingest's wall time,
    # in-process, 50-alert bodies). With deferred checkpoints the responder copies from a thread of its own,
    # beside the writers, and the commits' own threshold is only a backstop should that thread fall behind.
    CHECKPOINT_PAGES = 1000  # SQLite's own default threshold
    DEFERRED_AUTOCHECKPOINT_PAGES = 16000  # about 64 MiB of log: the commits' backstop once deferred
    # What of the log's file is kept once a checkpoint has copied all of it: SQLite truncates the file to this
    # at the first commit after (``journal_size_limit``). Under a sustained storm the log runs up to the
    # backstop, and without a limit its file stays that large on disk for good.
    WAL_KEPT_BYTES = 16 * 1024 * 1024

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._autocheckpoint = self.CHECKPOINT_PAGES
        self._checkpointed = 0  # the log's modification time at the last deferred checkpoint

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            # 32 MiB of pages per connection (SQLite's default is 2 MiB), held only as they are read: the
            # alerts' primary key takes each new fingerprint at a random place, and its index outgrows 2 MiB
            # at some tens of thousands of alerts (an estimate). Measured together with the outbox in orjson
            # (bench/intake.py --all-new-unrouted, two pairs): 50-alert posts 14,573/14,764 → 15,961/15,871
            # alerts/s; the storm's peak RSS stayed 473-484 MiB (README, "Measured")
            conn.execute("PRAGMA cache_size=-32768")
            conn.execute(f"PRAGMA journal_size_limit={int(self.WAL_KEPT_BYTES)}")
            self._local.conn = conn
            self._local.synchronous = "FULL"
            self._local.autocheckpoint = self.CHECKPOINT_PAGES
        if self._local.autocheckpoint != self._autocheckpoint:
            conn.execute(f"PRAGMA wal_autocheckpoint={int(self._autocheckpoint)}")
            self._local.autocheckpoint = self._autocheckpoint
        return conn

    def defer_checkpoints(self) -> bool:
        self._autocheckpoint = self.DEFERRED_AUTOCHECKPOINT_PAGES
        return True

    def checkpoint(self) -> int:
        """A PASSIVE checkpoint (it waits for no reader or writer, and copies what it can) when the log was
        written since the last one (its modification time: a checkpoint reads the log, never writes it)."""
        try:
            written = os.stat(self.path.with_name(self.path.name + "-wal")).st_mtime_ns
        except FileNotFoundError:
            return 0
        if written == self._checkpointed:
            return 0
        try:
            _, _, copied = self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: checkpoint failed: {exc}") from exc
        self._checkpointed = written
        return max(copied, 0)

    def _synchronous(self, conn: sqlite3.Connection, level: str) -> None:
        """FULL: each commit fsyncs the write-ahead log. NORMAL (inside ``without_waiting``): the commit
        leaves it to :meth:`sync`. A connection's own setting, changed only outside a transaction."""
        if self._local.synchronous != level:
            conn.execute(f"PRAGMA synchronous={level}")
            self._local.synchronous = level

    def sync(self) -> None:
        """An fsync of the write-ahead log, which holds every commit that no checkpoint has copied into the
        database file yet (a checkpoint syncs the log before it copies, and the database file after)."""
        for path in (self.path.with_name(self.path.name + "-wal"), self.path):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # no log: the last connection checkpointed it into the database file and removed it
            except OSError as exc:
                raise StoreUnavailable(f"SQLite store {self.path}: cannot open {path.name} to sync it: {exc}") from exc
            try:
                os.fsync(fd)
            except OSError as exc:
                raise StoreUnavailable(f"SQLite store {self.path}: fsync of {path.name} failed: {exc}") from exc
            finally:
                os.close(fd)
            return

    def _q(self, sql: str) -> str:
        return sql.replace("%s", "?")

    def _tables(self, cur: Any) -> set[str]:
        return {r[0] for r in cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}

    def describe(self) -> str:
        return f"SQLite store {self.path}"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        wait = self._waits()
        try:
            conn = self._conn()
            if not self._lock.acquire(blocking=wait):
                raise StoreBusy(f"SQLite store {self.path}: another thread of this process is writing")
            try:
                self._synchronous(conn, "FULL" if wait else "NORMAL")
                self._begin(conn, wait)
                cur = conn.cursor()
                try:
                    yield cur
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                else:
                    conn.execute("COMMIT")
            finally:
                self._lock.release()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc

    def _begin(self, conn: sqlite3.Connection, wait: bool) -> None:
        if wait:
            conn.execute("BEGIN IMMEDIATE")
            return
        conn.execute("PRAGMA busy_timeout=0")  # another connection (a CLI command, a backup) holds the lock: say so at once
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreBusy(f"SQLite store {self.path}: another connection is writing") from exc
            raise
        finally:
            conn.execute("PRAGMA busy_timeout=30000")


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._local = threading.local()
        # Bumped when any thread's connection fails: the server may have cut all of them (restart,
        # pg_terminate_backend), so every thread checks its own before the next use.
        self._failures = 0

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and not (conn.closed or conn.broken):
            if (time.monotonic() - getattr(self._local, "used", 0) > 5
                    or getattr(self._local, "failures_seen", 0) != self._failures):
                # An idle connection may have been cut (server restart, admin): check before trusting it.
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error:
                    conn = None
        else:
            conn = None
        if conn is None:
            conn = psycopg.connect(self._url, connect_timeout=5, autocommit=True)
            self._local.conn = conn
        self._local.used = time.monotonic()
        self._local.failures_seen = self._failures
        return conn

    def _lock_group(self, cur: Any, group_key: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (group_key,))

    def _tables(self, cur: Any) -> set[str]:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        return {r[0] for r in cur.fetchall()}

    def describe(self) -> str:
        return "PostgreSQL store (RESPONDER_DATABASE_URL)"

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        if not self._waits():  # every statement is a round trip to the server: never on a thread that must not wait
            raise StoreBusy("PostgreSQL store: writes that must not wait are not made on it")
        try:
            conn = self._conn()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL store unreachable: {type(exc).__name__}") from exc
        try:
            with conn.transaction():
                with conn.cursor() as cur:
                    # Outbox sequence numbers come from MAX(seq)+1: one writer at a time.
                    cur.execute("SELECT pg_advisory_xact_lock(7301)")
                    yield cur
        except psycopg.OperationalError as exc:
            self._local.conn = None
            self._failures += 1
            try:
                conn.close()
            except psycopg.Error:
                pass
            raise StoreUnavailable(f"PostgreSQL store: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def open_store(database_url: str | None, sqlite_path: Path) -> Store:
    if database_url and database_url.startswith(("postgresql://", "postgres://")):
        store: Store = PostgresStore(database_url)
    elif database_url and database_url.startswith("sqlite:///"):
        store = SQLiteStore(Path(database_url[len("sqlite:///"):]))
    elif database_url:
        raise ValueError("RESPONDER_DATABASE_URL must start with postgresql:// or sqlite:///")
    else:
        store = SQLiteStore(sqlite_path)
    store.migrate()
    return store
