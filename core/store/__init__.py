"""The responder's durable store: alert episodes, incidents, the event outbox and the timeline.

An alert body is answered 2xx only after :meth:`Store.ingest` committed it, in one transaction:
the raw receipt, each alert episode keyed on (``fingerprint``, ``startsAt``), the incident it
belongs to, and the incident events to deliver (the outbox). Delivery happens later and is
retried until it succeeds, so accepting an alert never depends on the Prefect server being up.

The store knows nothing of routing (the intake routes each alert with the catalog first and
hands the store the result) nor of Prefect's wire format (the outbox holds the responder's own
event records; ``responder/events.py`` turns them into Prefect events when they are delivered).

By concern:

- ``schema``: the versioned, forward-only migrations. Opening a store written by an earlier
  layout migrates it; a store newer than this code is refused (:class:`SchemaError`), unchanged.
- ``episodes``: alert episodes and receipts (:meth:`Store.ingest`).
- ``incidents``: incidents, their acknowledgement and close.
- ``outbox``: the event records, their delivery and follow-up.
- ``timeline``: timeline entries, pages, notes and the mitigations' loop-guard log.
- ``runs``: the step results of suspended runs and their approval deadlines.
- ``backends``: SQLite (default, one file) and PostgreSQL (``RESPONDER_DATABASE_URL=postgresql://…``,
  needed when responders run on several machines), and :func:`open_store`.

All SQL is static text with bound parameters: nothing from an alert is ever spliced into a statement.
"""

from core.store.backends import PostgresStore, SQLiteStore, Store, open_store
from core.store.base import StoreBusy, StoreUnavailable, utcnow
from core.store.episodes import IngestResult, Route
from core.store.incidents import Incident
from core.store.schema import LATEST_VERSION, SchemaError

__all__ = [
    "LATEST_VERSION", "Incident", "IngestResult", "PostgresStore", "Route", "SQLiteStore", "SchemaError", "Store",
    "StoreBusy", "StoreUnavailable", "open_store", "utcnow",
]
