"""The objects a process builds once and every runbook run uses: settings, catalog, store, notifier.

The composition root (``responder up``, or a test) builds one :class:`Services` with
:func:`build` and binds it around each run; the executor does so for every flow run it
executes, so a runbook step reads them with :func:`current` and never builds its own::

    services = build(ResponderSettings(), catalog)
    with bound(services):
        run_flow(flow, flow_run=...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from core.catalog import Catalog
from core.notify import Notifier
from core.settings import ResponderSettings
from core.store import Store, open_store


@dataclass(frozen=True)
class Services:
    settings: ResponderSettings
    catalog: Catalog
    store: Store
    notifier: Notifier


def build(settings: ResponderSettings, catalog: Catalog, store: Store | None = None) -> Services:
    """One set per process: the store opened from the settings unless one is given, one notifier."""
    if store is None:
        url = settings.database_url.get_secret_value() if settings.database_url else None
        store = open_store(url, settings.sqlite_path)
    return Services(settings, catalog, store, Notifier(settings, catalog, store))


_bound: ContextVar[Services | None] = ContextVar("responder_services", default=None)


@contextmanager
def bound(services: Services) -> Iterator[Services]:
    """Make ``services`` what :func:`current` returns in this context (a run, a test)."""
    token = _bound.set(services)
    try:
        yield services
    finally:
        _bound.reset(token)


def current() -> Services:
    services = _bound.get()
    if services is None:
        raise RuntimeError("no responder services are bound: runbook flows run inside `responder up` "
                           "(its executor binds them for each run) or inside core.services.bound(...)")
    return services
