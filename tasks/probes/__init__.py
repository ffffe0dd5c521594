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

from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

__all__ = ["clip", "human_bytes", "redact", "reveal", "url_secrets"]


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
