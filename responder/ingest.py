"""Group commit: the intake's posts stored several to a transaction, each answered after its commit.

Every post waits in one queue; a single writer takes everything waiting (up to ``max_batch``) and
stores it with :meth:`core.store.Store.ingest_many`, one transaction with a savepoint per body, then
answers each post with its own result. An idle intake commits a lone post at once; under load the
posts that arrive while one commit is on disk share the next one, so the cost of a durable commit
(an fsync with SQLite's ``synchronous=FULL``) is paid once per batch instead of once per post.

Backpressure: when more than ``max_waiting`` posts wait, a new one is answered 503 with Retry-After
at once (:class:`Overloaded`) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from core import metrics
from core.alerts import AlertmanagerPayload, Route
from core.store import IngestResult, Store


class Overloaded(Exception):
    """Too many posts wait for the store: answer 503 with Retry-After."""


class GroupCommit:
    def __init__(self, store: Store, max_batch: int = 128, max_waiting: int = 2000) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._waiting: list[tuple[tuple[AlertmanagerPayload, bytes, Mapping[str, Route]], asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None

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
                try:
                    results = await asyncio.to_thread(self.store.ingest_many, [item for item, _ in batch])
                except BaseException as exc:  # the transaction failed as a whole: every post of it gets the error
                    results = [exc] * len(batch)
                    if not isinstance(exc, Exception):
                        for _, future in batch:
                            if not future.done():
                                future.set_exception(exc)
                        raise
                metrics.INGEST_BATCH.observe(len(batch))
                for (_, future), result in zip(batch, results):
                    if future.done():  # the post's client went away: its body is stored all the same
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
