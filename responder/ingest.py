"""Group commit: the intake's posts stored several to a transaction, each answered after its commit.

Every post waits in one queue; a single writer takes everything waiting (up to ``max_batch``) and
stores it with :meth:`core.store.Store.ingest_many`, one transaction with a savepoint per body, then
answers each post with its own result. An idle intake commits a lone post at once; under load the
posts that arrive while one commit is on disk share the next one, so the cost of a durable commit
(an fsync of SQLite's write-ahead log) is paid once per batch instead of once per post.

A small batch (at most ``inline_alerts`` alerts, 32 by default) is written on the event loop's own
thread when SQLite's write lock is free at once; a larger one, one that finds the lock held, and every
batch on PostgreSQL go to a worker thread. Why: Python's sqlite3 lets go of the GIL around every SQLite
step (about 9 per single-alert post), and under load each step's hand-back to a worker thread cost more
than the step: a batch of 8 posts took 6.1 ms on the thread for 2.2 ms of its CPU (README, "The intake").
At most 32 alerts keep the loop's pause to a few milliseconds; a 50-alert group post goes to the thread.
A batch written on the loop commits without its fsync (``synchronous=NORMAL``); a worker thread makes the
fsync (:meth:`Store.sync`) while the loop goes on serving posts and committing the next batch, and a batch is
answered only after an fsync that began after its commit: the loop was otherwise held for the disk at every
commit (4.5 ms per fsync on this project's machine).

Backpressure: when more than ``max_waiting`` posts wait, a new one is answered 503 with Retry-After
at once (:class:`Overloaded`) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from core import metrics
from core.alerts import AlertmanagerPayload, Route
from core.store import IngestResult, Store, StoreBusy


T = TypeVar("T")


class Overloaded(Exception):
    """Too many posts wait for the store: answer 503 with Retry-After."""


class GroupCommit:
    def __init__(self, store: Store, max_batch: int = 128, max_waiting: int = 2000, inline_alerts: int = 32) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.inline_alerts = inline_alerts
        self.inline_batches = 0  # batches written on the loop's thread (the rest went to a worker thread)
        self._waiting: list[tuple[tuple[AlertmanagerPayload, bytes, Mapping[str, Route]], asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self._unsynced: list[tuple[list[asyncio.Future], list]] = []  # committed on the loop, not yet fsynced
        self._syncer: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def ingest(self, payload: AlertmanagerPayload, raw: bytes, routes: Mapping[str, Route]) -> IngestResult:
        """Store one body durably (in the next group commit); its result, or the store's error."""
        if len(self._waiting) >= self.max_waiting:
            raise Overloaded(f"{len(self._waiting)} posts are waiting for the store")
        if self._writer is None or self._writer.done():
            self._wake = asyncio.Event()
            self._writer = asyncio.create_task(self._write_forever(), name="group-commit")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append(((payload, raw, routes), future))
        self._wake.set()
        return await future

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch:]
                futures = [future for _, future in batch]
                try:
                    results, synced = await self._write([item for item, _ in batch])
                except BaseException as exc:  # the transaction failed as a whole: every post of it gets the error
                    _answer(futures, [exc] * len(batch))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                metrics.INGEST_BATCH.observe(len(batch))
                if synced:
                    _answer(futures, results)
                    continue
                # Committed without its fsync: answered once a worker thread has made it, while this loop
                # commits the next batch (which the fsync after that one covers).
                self._unsynced.append((futures, results))
                if self._syncer is None or self._syncer.done():
                    self._syncer = asyncio.create_task(self._sync_forever(), name="group-commit-sync")

    async def _write(self, items: list[tuple[AlertmanagerPayload, bytes, Mapping[str, Route]]]) -> tuple[list, bool]:
        """The batch's results, and whether its commit is on disk already."""
        if sum(len(payload.alerts) for payload, _, _ in items) <= self.inline_alerts:
            results = _now_or_busy(self.store, self.store.ingest_many, items)
            if results is not _BUSY:
                self.inline_batches += 1
                return results, False
        return await asyncio.to_thread(self.store.ingest_many, items), True

    async def _sync_forever(self) -> None:
        """One fsync at a time, each for every batch committed before it began."""
        while self._unsynced:
            taken, self._unsynced = self._unsynced, []
            try:
                await asyncio.to_thread(self.store.sync)
            except Exception as exc:  # on disk or not, unknown: each post is answered 503 and sent again
                for futures, _ in taken:
                    _answer(futures, [exc] * len(futures))
                continue
            for futures, results in taken:
                _answer(futures, results)


def _answer(futures: list[asyncio.Future], results: list) -> None:
    for future, result in zip(futures, results):
        if future.done():  # the post's client went away: its body is stored all the same
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


async def store_call(store: Store, call: Callable[..., T], *args: Any) -> T:
    """A short store call, on the event loop's own thread when SQLite's write lock is free at once, else (and
    always on PostgreSQL) in a worker thread; see the module's docstring for why. ``call`` makes ONE
    transaction: a StoreBusy from it means it wrote nothing, so the worker thread can make it again.
    Made on the loop, its commit is not fsynced on its own (:meth:`Store.without_waiting`): for the outbox's
    reads and marks, which a power loss at worst makes the responder do again (delivery is at least once,
    by event id; every follow-up is idempotent)."""
    result = _now_or_busy(store, call, *args)
    return await asyncio.to_thread(call, *args) if result is _BUSY else result


_BUSY = object()


def _now_or_busy(store: Store, call: Callable[..., T], *args: Any) -> Any:
    """``call`` on this thread if it need not wait for the write lock, else ``_BUSY`` (nothing written)."""
    try:
        with store.without_waiting():
            return call(*args)
    except StoreBusy:
        return _BUSY
