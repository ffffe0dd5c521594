"""Probes: plain typed functions that each measure one thing and return a ``ProbeResult``.

They are deliberately *not* Prefect tasks, so importing them is cheap and they can be
called from a shell or a test. A flow wraps the ones it needs::

    from prefect import task
    from tasks.probes import postgres

    pg_long_queries = task(retries=2, retry_delay_seconds=5)(postgres.long_running_queries)

    @flow
    def database_connections(alert: Alert) -> None:
        pg_long_queries(settings.postgres_url, min_minutes=5)   # seed 001: "> interval '5 minutes'"

Modules: ``system`` (psutil, this host), ``postgres`` (psycopg 3), ``redis`` (redis-py),
``mongo`` (pymongo), ``http`` (httpx and plain sockets). Importing this package imports
none of the client libraries; each module imports only its own.

Failure rule shared by every module:

* A *readiness* probe (``postgres.readiness``, ``redis.ping``, ``mongo.ping``,
  ``http.health_check``, ``http.port_listening``) answers the question "is it reachable?",
  so an unreachable target is its answer: it returns ``ok=False`` with the error in
  ``evidence["error"]`` and does not raise.
* Every other probe needs the target to answer; when it cannot connect it raises the client
  library's own exception (``psycopg.OperationalError``, ``redis.ConnectionError``,
  ``pymongo.errors.ConnectionFailure``, ``httpx.TransportError``) so Prefect task retries
  apply; the flow decides what an exhausted retry means.
* Configuration that can never work (an unparseable URL, a path that does not exist, a queue
  key of the wrong type, an unknown option) raises ``ResponderError(ErrorCode.CONFIG, ...)``.
* Connection secrets arrive as ``pydantic.SecretStr`` (plain ``str`` is accepted for tests)
  and are unwrapped only inside each module's ``_connect``/``_client`` helper; error text put
  into evidence passes through :func:`redact` first.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

__all__ = ["clip", "count_groups", "groups_summary", "host_of", "human_bytes", "id_list", "label", "redact", "reveal",
           "url_secrets"]

IDS_PER_GROUP = 20


def clip(text: str | None, limit: int) -> str | None:
    """Shorten ``text`` to ``limit`` characters, marking the cut, so evidence stays small."""
    if text is None or len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "…"


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``, for summaries (values stay in exact bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def reveal(secret: SecretStr | str) -> str:
    """Unwrap a secret; only the modules' connection helpers call this."""
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def redact(text: str, *secrets: str | None) -> str:
    """Remove every non-empty secret from ``text`` (error messages can echo a connection string)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def url_secrets(url: str) -> tuple[str, ...]:
    """The password of a ``scheme://user:password@host`` URL, as written and decoded, plus the URL."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if not password:
        return (url,)
    return (url, password, unquote(password))


# -- who holds the connections: shared by the PostgreSQL, Redis and MongoDB holder probes ----------


def label(text: str | None, missing: str) -> str:
    """Client-chosen text (an application or client name) fit for a one-line summary that ends
    up in a Markdown table: one line, no column separator, at most 40 characters."""
    if not text:
        return missing
    return clip(" ".join(text.split()).replace("|", "/"), 40) or missing


def host_of(addr: str | None) -> str | None:
    """The host of a client address: ``10.0.0.5:52114`` → ``10.0.0.5``, ``[::1]:52114`` → ``::1``,
    a Unix socket's ``/run/redis.sock:0`` → ``/run/redis.sock``."""
    if not addr:
        return None
    host, sep, _ = addr.rpartition(":")
    if not sep:
        return addr
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def id_list(ids: list[Any], shown: int = 5) -> str:
    """``"4, 5, 6, …"``: the first ``shown`` ids, marking the cut."""
    return ", ".join(str(i) for i in ids[:shown]) + (", …" if len(ids) > shown else "")


def count_groups(
    items: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Mapping[str, Hashable]],
    ids: str, by: str | None = None,
) -> list[dict[str, Any]]:
    """Count ``items`` per ``key(item)`` (a mapping of the group's fields), largest group first.

    Each group is its key's fields plus ``count``, with ``by`` the counts per value of the
    item's ``by`` field (as ``by_<by>``, largest first) and up to ``IDS_PER_GROUP`` of the
    items' ``ids`` (sorted), so a summary can name them.
    """
    groups: dict[tuple[Hashable, ...], dict[str, Any]] = {}
    for item in items:
        fields = dict(key(item))
        group = groups.setdefault(tuple(fields.values()), {**fields, "count": 0, "ids": [], "by": {}})
        group["count"] += 1
        group["ids"].append(item[ids])
        if by is not None:
            group["by"][item.get(by)] = group["by"].get(item.get(by), 0) + 1
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1]["count"], tuple(str(v) for v in kv[0])))
    out = []
    for _, group in ordered:
        counts = group.pop("by")
        if by is not None:
            group[f"by_{by}"] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))
        group["ids"] = sorted(group["ids"])[:IDS_PER_GROUP]
        out.append(group)
    return out


def groups_summary(groups: list[dict[str, Any]], describe: Callable[[dict[str, Any]], str], shown: int = 5) -> str:
    """``"12 app=billing …; 5 app=reports …; 3 more in 2 other groups"`` for groups with a ``count``,
    largest first; ``describe`` names one group."""
    parts = [f"{g['count']} {describe(g)}" for g in groups[:shown]]
    rest = groups[shown:]
    if rest:
        parts.append(f"{sum(g['count'] for g in rest)} more in {len(rest)} other groups")
    return "; ".join(parts)
