"""Redis mitigations: clear one configured cache namespace; flush a database only when allowed.

Seed 000 HIGH_MEMORY_USAGE: "Clear caches: ``redis-cli FLUSHDB`` if safe". FLUSHDB drops every
key of a database, queues and sessions included, so the everyday action is narrower:

* ``clear_cache_namespace``: ``SCAN MATCH <prefix>*`` and ``UNLINK`` in batches, for a prefix
  the configuration lists as a cache. Refused for an empty prefix or one not in
  ``allowed_prefixes``. Glob characters in the prefix are escaped, and every key is checked
  to start with the prefix before it is unlinked. ``UNLINK`` frees memory in the background, and
  ``SCAN`` never blocks the server the way ``KEYS`` does.
* ``flush_database``: ``FLUSHDB`` of one database, refused unless the configuration sets
  ``allow_flush: true`` *and* ``db`` names the database the URL points at (a confirmation
  that cannot be satisfied by accident). ``FLUSHALL`` is never sent.

Both are risky: an emptied cache sends every read to the database behind it at once, which
can turn a memory alert into a database outage. Both report counts (never key names, which
can hold user ids or tokens).

A Redis Cluster is out of scope: ``SCAN`` there covers one node only.

Wiring (``allowed_prefixes`` from ``config/targets.yaml``)::

    PlannedAction(action="clear_cache_namespace", target=f"redis {prefix}*",
                  params={"url": settings.redis_url, "prefix": prefix,
                          "allowed_prefixes": targets.redis.cache_prefixes})
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tasks.base import ActionOutcome, ErrorCode, ResponderError
from tasks.probes.redis import Url, _client, _target

_GLOB_SPECIALS = re.compile(r"([\\*?\[\]])")


def _match_pattern(prefix: str) -> str:
    """``SCAN MATCH`` pattern for keys starting with ``prefix``, glob characters taken literally."""
    return _GLOB_SPECIALS.sub(r"\\\1", prefix) + "*"


def clear_cache_namespace(
    url: Url,
    prefix: str,
    allowed_prefixes: Sequence[str],
    dry_run: bool = False,
    batch: int = 500,
) -> ActionOutcome:
    """Unlink every key starting with ``prefix`` (a configured cache namespace); report the count."""
    base = dict(action="clear_cache_namespace", target=f"redis keys {prefix}*", dry_run=dry_run)
    if not isinstance(prefix, str) or not prefix.strip():
        raise ResponderError(ErrorCode.REFUSED, "refusing to clear an empty key prefix (that is every key)")
    if isinstance(allowed_prefixes, str) or prefix not in set(allowed_prefixes or ()):
        raise ResponderError(
            ErrorCode.REFUSED, f"refusing to clear {prefix!r}*: it is not a configured cache namespace"
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
        raise ResponderError(ErrorCode.CONFIG, f"clear_cache_namespace: batch must be 1..10000, not {batch!r}")

    pattern = _match_pattern(prefix)
    unlinked = 0
    seen: set[str] = set()  # SCAN may return a key more than once (Redis documents it): count it once
    pending: list[str] = []
    with _client(url) as client:
        for key in client.scan_iter(match=pattern, count=batch):
            if not key.startswith(prefix) or key in seen:  # SCAN MATCH already filters; this guards the escaping
                continue
            seen.add(key)
            if dry_run:
                continue
            pending.append(key)
            if len(pending) >= batch:
                unlinked += int(client.unlink(*pending))
                pending.clear()
        if pending:
            unlinked += int(client.unlink(*pending))

    found = len(seen)
    if found == 0:
        return ActionOutcome(**base, status="not_needed", detail=f"no keys start with {prefix!r}")
    if dry_run:
        return ActionOutcome(**base, status="would_do", detail=f"would unlink {found} keys starting with {prefix!r}")
    # Keys can expire or be deleted by others between SCAN and UNLINK; UNLINK counts what it removed.
    return ActionOutcome(
        **base,
        status="done",
        detail=f"unlinked {unlinked} of {found} keys starting with {prefix!r}",
        changes=[f"unlinked {unlinked} keys starting with {prefix!r}"],
    )


def flush_database(url: Url, db: int, allow_flush: bool, dry_run: bool = False) -> ActionOutcome:
    """``FLUSHDB`` the database the URL selects, only with ``allow_flush`` and a matching ``db``."""
    base = dict(action="flush_database", target=f"redis db {db}", dry_run=dry_run)
    if allow_flush is not True:
        raise ResponderError(
            ErrorCode.REFUSED, f"refusing to flush redis db {db}: the configuration does not set allow_flush"
        )
    if isinstance(db, bool) or not isinstance(db, int) or db < 0:
        raise ResponderError(ErrorCode.CONFIG, f"flush_database: db must be a database number, not {db!r}")
    with _client(url) as client:
        selected = int(_target(client).get("db", 0))
        if selected != db:
            raise ResponderError(
                ErrorCode.REFUSED, f"refusing to flush redis db {db}: the configured URL selects db {selected}"
            )
        keys = int(client.dbsize())
        if keys == 0:
            return ActionOutcome(**base, status="not_needed", detail=f"redis db {db} is already empty")
        if dry_run:
            return ActionOutcome(**base, status="would_do", detail=f"would FLUSHDB redis db {db} ({keys} keys)")
        client.flushdb()
    flushed = f"flushed redis db {db} ({keys} keys)"
    return ActionOutcome(**base, status="done", detail=flushed, changes=[flushed])
