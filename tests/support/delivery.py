"""The courier in a test: ``responder up`` runs it beside the pager; an in-process test runs it here."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from core.courier import Courier
from core.services import Services


@contextmanager
def delivering(services: Services, interval: float = 0.05) -> Iterator[Courier]:
    """Deliver the notification outbox in the background (as ``responder up`` does) while the block runs,
    then what is still waiting (up to 10 s), so what was said has reached the capture servers."""
    courier = Courier(services.notifier)
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            try:
                courier.pass_once(wait_for_sends=True)
            except Exception:  # the store of a test that ended: the test's own asserts tell
                return

    thread = threading.Thread(target=run, name="test-courier", daemon=True)
    thread.start()
    try:
        yield courier
    finally:
        stop.set()
        thread.join(15)
        courier.close()


def deliver(services: Services, timeout: float = 15.0) -> None:
    """Send what the outbox holds now, until nothing waits (or ``timeout``)."""
    courier = Courier(services.notifier)
    try:
        courier.drain(timeout)
    finally:
        courier.close()
