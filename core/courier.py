"""The courier: delivers the notification outbox (``core/store/messages.py``) to people.

What a person is told was written down by the step that decided it (:class:`core.notify.Notifier`);
the courier sends it, and keeps at it:

* **In order.** Messages of one lane (an incident on one channel; a webhook URL and an incident)
  go out one at a time, oldest first: an incident's Slack thread starts with its first message.
* **Through outages and restarts.** A message a channel did not take (5xx, 429, no connection) waits
  and is tried again: the channel's Retry-After when it gave one, else 1, 2, 4 … 60 s. A channel
  that is down holds all its messages, not just the one that failed. The wait is in the store, so
  a restarted responder (or another one taking over the courier's lease) carries on where it was.
* **Until it no longer matters.** Each kind has an age limit (``config/notify.yaml``
  ``delivery.max_age_minutes``: an hour by default, a day for escalations, six hours for scheduled
  checks); past it a message is dropped and the incident's timeline says so. A page has none: it is
  delivered however late, and one not delivered within ``page_fallback_seconds`` (or refused) also
  goes out on every other configured channel, with a timeline line saying why.
* **Within rate limits.** Slack takes about one message per second per channel; the courier keeps
  to ``slack_per_second`` per Slack channel (``discord_per_second`` per Discord webhook) in bursts of
  three, rather than finding the limit through 429s.
* **Readable in a storm.** Pages to one person within ``rollup_seconds`` of their last page go out as
  one message listing every incident. When more than ``storm_incidents`` incidents open in one Slack
  channel within a minute, one storm message lists them instead of a thread each, and an incident of
  the storm gets its thread only when it has something for a person (approval, page, escalation);
  the rest of what it did is in its timeline.
* **Recorded.** The timeline says when each page was delivered on each channel and how late, and so
  for any message delivered more than 10 s late or after a failure, dropped or refused.

One courier runs at a time among the responders sharing a store (its lease); a message is sent at
least once: a courier killed between sending and recording re-sends that one message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta

from core import metrics
from core.notify import FOR_A_PERSON, Channels, Notifier, Refused, Retry
from core.store import utcnow
from core.store.messages import Message, new_message

log = logging.getLogger("responder.courier")

LATE_SECONDS = 10.0  # a message delivered later than this after it was written gets a timeline line
MAX_BACKOFF_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 300.0
TEXT_LIMIT = {"slack": 30000, "discord": 1900}  # one roll-up message; more incidents make several


class _Bucket:
    """Sends per second with a burst: a token bucket."""

    def __init__(self, per_second: float, burst: float = 3.0) -> None:
        self.per_second, self.burst = per_second, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_second)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _age(message: Message, now: datetime) -> float:
    return max(0.0, (now - datetime.fromisoformat(message.created_at)).total_seconds())


def _what(message: Message) -> str:
    page = message.body.get("page")
    return f"level {page['level']} page" if message.kind == "page" and page else f"'{message.kind}' message"


class Courier:
    def __init__(self, notifier: Notifier, senders: int = 8, on_timeline: Callable[[str], None] | None = None) -> None:
        """``notifier``: the process's (it writes the fallbacks of pages; the courier sends what it wrote).
        ``on_timeline``: called with the incident's id after the courier adds a line to its timeline (a
        late delivery, a failure, a refusal, a drop, a page's fallback), from the courier's threads."""
        self.notifier = notifier
        self.on_timeline = on_timeline
        self.settings, self.catalog, self.store = notifier.settings, notifier.catalog, notifier.store
        self.config = self.catalog.notify.delivery
        self.channels = Channels(self.settings, self.catalog, self.store)
        self._pool = ThreadPoolExecutor(max_workers=senders, thread_name_prefix="courier")
        self._lock = threading.Lock()
        self._in_flight: set[tuple[str, str, str]] = set()
        self._held: dict[tuple[str, str], float] = {}  # (channel, target or "*") → monotonic time it may send again
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._last_page: dict[tuple[str, str], float] = {}  # (channel, person) → monotonic time of their last page
        self._last_storm: dict[str, float] = {}  # Slack channel → monotonic time of its last storm message

    # -- one pass ------------------------------------------------------------------
    def pass_once(self, wait_for_sends: bool = False) -> int:
        """Start sending every message that may go now; returns how many were started."""
        with self._lock:  # before reading: a send that ends after this read is still busy here, not sent twice
            busy = set(self._in_flight)
        now = utcnow()
        waiting = self.store.waiting_messages()
        metrics.NOTIFICATIONS_WAITING.set(len(waiting))
        metrics.NOTIFICATIONS_OLDEST_WAITING.set(max((_age(m, now) for m in waiting), default=0.0))
        heads: dict[tuple[str, str, str], Message] = {}
        for message in waiting:
            if message.lane not in heads:
                heads[message.lane] = message
        started: list[Future] = []
        pages: dict[tuple[str, str], list[Message]] = defaultdict(list)
        opened: dict[str, list[Message]] = defaultdict(list)
        for lane, message in heads.items():
            if lane in busy:
                continue
            if message.expires_at and datetime.fromisoformat(message.expires_at) <= now:
                self._drop(message, now)
                continue
            if datetime.fromisoformat(message.next_attempt_at) > now or self._holding(message):
                continue
            if message.kind == "page" and message.person and message.channel in ("slack", "discord"):
                pages[(message.channel, message.person)].append(message)
            elif message.kind == "opened" and message.channel == "slack":
                opened[message.target].append(message)
            elif message.channel == "slack" and message.incident_id and message.kind not in FOR_A_PERSON \
                    and self._quiet(message):
                self.store.finish_message(message.id, "rolled", "quiet: its incident is in a storm message and has "
                                          "no thread yet; see the incident's timeline")
            else:
                started += self._dispatch(message)
        for (channel, person), group in pages.items():
            started += self._pages(channel, person, group)
        for target, group in opened.items():
            started += self._opened(target, group, now)
        if wait_for_sends:
            wait(started)
        return len(started)

    def drain(self, timeout: float = 30.0, interval: float = 0.05) -> None:
        """Pass until nothing waits (or ``timeout``): for tests and tools; ``responder up`` passes forever."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pass_once(wait_for_sends=True)
            if not self.store.waiting_messages(limit=1):
                return
            time.sleep(interval)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.channels.close()

    # -- holding back --------------------------------------------------------------
    def _target(self, message: Message) -> str:
        if message.channel == "slack":
            return self.channels.slack_channel(message)
        return message.target

    def _holding(self, message: Message) -> bool:
        now = time.monotonic()
        if self._held.get((message.channel, "*"), 0.0) > now:  # the whole channel is down: no lookup needed
            return True
        return self._held.get((message.channel, self._target(message)), 0.0) > now

    def _rate_allows(self, message: Message) -> bool:
        if message.channel not in ("slack", "discord"):
            return True
        per_second = self.config.slack_per_second if message.channel == "slack" else self.config.discord_per_second
        bucket = self._buckets.setdefault((message.channel, self._target(message)), _Bucket(per_second))
        return bucket.take()

    def _quiet(self, message: Message) -> bool:
        """A storm's incident with no thread yet: its opened message was rolled into the storm message."""
        assert message.incident_id is not None
        if self.store.note(message.incident_id, "slack_ts"):
            return False
        return any(m.channel == "slack" and m.kind == "opened" and m.state == "rolled"
                   for m in self.store.messages(message.incident_id))

    # -- sending -------------------------------------------------------------------
    def _dispatch(self, message: Message) -> list[Future]:
        if not self._rate_allows(message):
            return []
        with self._lock:
            self._in_flight.add(message.lane)
        future = self._pool.submit(self._deliver, message)
        return [future]

    def _deliver(self, message: Message) -> None:
        try:
            answer = self.channels.send(message)
        except Retry as exc:
            self._failed(message, exc)
        except Refused as exc:
            self._refused(message, exc)
        except Exception as exc:  # a bug or an unexpected answer: retried like an outage, never lost
            log.exception("Sending the %s on %s failed unexpectedly", _what(message), message.channel)
            self._failed(message, Retry(f"{type(exc).__name__}: {str(exc)[:200]}"))
        else:
            self._sent(message, answer)
        finally:
            with self._lock:
                self._in_flight.discard(message.lane)

    def _sent(self, message: Message, answer: str) -> None:
        now = utcnow()
        late = _age(message, now)
        tries = f", after {message.attempts + 1} attempts" if message.attempts else ""
        self.store.finish_message(message.id, "sent", f"delivered {late:.1f} s after it was written{tries}"
                                  + (f" (ts {answer})" if answer else ""))
        metrics.NOTIFICATIONS_DELIVERED.labels(message.channel).inc()
        if message.kind in ("page-rollup", "storm"):
            label = "a roll-up of pages" if message.kind == "page-rollup" else "a storm message"
            items = message.body.get("items", [])
            for item in items:
                item_late = max(0.0, (now - datetime.fromisoformat(item["created_at"])).total_seconds())
                self._timeline(item["incident_id"], "delivered",
                               f"{item['what']} delivered via {message.channel} in {label} of {len(items)}"
                               + (f" to {message.person}" if message.person else "")
                               + f", {item_late:.1f} s after it was written{tries}")
        elif message.incident_id and (message.kind == "page" or late > LATE_SECONDS or message.attempts):
            self._timeline(message.incident_id, "delivered",
                           f"{_what(message)} delivered via {message.channel}, {late:.1f} s after it was "
                           f"written{tries}")

    def _failed(self, message: Message, exc: Retry) -> None:
        now = utcnow()
        attempts = message.attempts + 1
        backoff = min(MAX_BACKOFF_SECONDS, 2.0 ** (attempts - 1))
        if exc.retry_after is not None and not exc.channel_down:  # a rate limit: exactly as long as it says
            delay = min(exc.retry_after, MAX_RETRY_AFTER_SECONDS)
        else:  # down: back off, and no sooner than the channel asked
            delay = min(max(backoff, exc.retry_after or 0.0), MAX_RETRY_AFTER_SECONDS)
        key = (message.channel, "*" if exc.channel_down else self._target(message))
        with self._lock:
            self._held[key] = max(self._held.get(key, 0.0), time.monotonic() + delay)
        metrics.NOTIFICATIONS_FAILED.labels(message.channel).inc()
        log.warning("%s did not take the %s (%s); trying again in %.0f s", message.channel, _what(message), exc, delay)
        body = None
        if message.incident_id and message.attempts == 0:
            self._timeline(message.incident_id, "notify-failed",
                           f"{message.channel} did not take the {_what(message)} ({exc}); trying again "
                           + ("until it is delivered" if message.expires_at is None else
                              "until it is delivered or too old to matter"))
        if message.kind == "page" and not message.body.get("fell_back") \
                and _age(message, now) >= self.config.page_fallback_seconds:
            self._fall_back(message, f"not delivered for {_age(message, now):.0f} s: {exc}")
            body = {**message.body, "fell_back": True}
        self.store.retry_message(message.id, now + timedelta(seconds=delay), str(exc), body)

    def _refused(self, message: Message, exc: Refused) -> None:
        self.store.finish_message(message.id, "refused", str(exc))
        metrics.NOTIFICATIONS_FAILED.labels(message.channel).inc()
        metrics.NOTIFICATIONS_DROPPED.labels(message.channel).inc()
        log.error("%s refused the %s: %s", message.channel, _what(message), exc)
        if message.incident_id:
            self._timeline(message.incident_id, "notify-failed",
                           f"{message.channel} refused the {_what(message)} ({exc}); it is not sent again")
        if message.kind == "page" and not message.body.get("fell_back"):
            self._fall_back(message, f"refused: {exc}")

    def _drop(self, message: Message, now: datetime) -> None:
        self.store.finish_message(message.id, "dropped", f"too old to matter after {_age(message, now) / 60:.0f} min"
                                  + (f"; last error: {message.last_error}" if message.last_error else ""))
        metrics.NOTIFICATIONS_DROPPED.labels(message.channel).inc()
        if message.incident_id:
            self._timeline(message.incident_id, "notify-dropped",
                           f"the {_what(message)} was not delivered via {message.channel}: too old to matter "
                           f"after {_age(message, now) / 60:.0f} min"
                           + (f" (last error: {message.last_error})" if message.last_error else ""))

    def _timeline(self, incident_id: str, kind: str, text: str) -> None:
        self.store.add_timeline(incident_id, kind, text)
        if self.on_timeline is not None:
            try:
                self.on_timeline(incident_id)
            except Exception:  # telling the responder is never worth a message's outcome
                log.exception("on_timeline failed for incident %s", incident_id)

    # -- a page that cannot get through -------------------------------------------------
    def _fall_back(self, message: Message, why: str) -> None:
        """Send the page on every other configured channel that does not carry it yet, and say so."""
        assert message.incident_id is not None
        incident = self.store.incident(message.incident_id)
        if incident is None:
            return
        carrying = {(m.channel, m.target) for m in self.store.messages(incident.id)
                    if m.kind == "page" and m.body.get("page") == message.body.get("page")}
        rows = self.notifier.messages(incident, "page", message.body.get("line", ""),
                                      details=message.body.get("page") or {}, discord=True, pagerduty="trigger",
                                      fallback_for=carrying)
        self.store.enqueue_messages(rows)
        also = ", ".join(sorted({row["channel"] for row in rows}))
        self._timeline(incident.id, "page",
                       f"the {_what(message)} did not get through on {message.channel} ({why}): "
                       + (f"also sent via {also}" if rows else
                          f"no other channel is configured; still trying {message.channel}"))

    # -- storms --------------------------------------------------------------------
    def _pages(self, channel: str, person: str, group: list[Message]) -> list[Future]:
        """A person's pages: alone when it is the first in a while, else held and sent together."""
        last = self._last_page.get((channel, person))
        if last is not None and time.monotonic() - last < self.config.rollup_seconds:
            return []
        if len(group) == 1:
            started = self._dispatch(group[0])
            if started:
                self._last_page[(channel, person)] = time.monotonic()
            return started
        mention = next((m.body.get("mention") for m in group if m.body.get("mention")), "")
        heading = (f"<@{mention}> " if mention else f"{person}: ") + ":rotating_light: *{n} incidents need you*"
        self._roll(group, channel, group[0].target, "page-rollup", heading, person)
        self._last_page[(channel, person)] = time.monotonic()
        return []  # the roll-up goes out on the next pass, like any message

    def _opened(self, target: str, group: list[Message], now: datetime) -> list[Future]:
        """New incidents in one Slack channel: a thread each, or in a storm one message for all of them."""
        recent = self.store.count_written("slack", "opened", target, now - timedelta(minutes=1))
        if recent <= self.config.storm_incidents:
            return [future for message in group for future in self._dispatch(message)]
        last = self._last_storm.get(target)
        if last is not None and time.monotonic() - last < self.config.rollup_seconds:
            return []
        heading = (":thunder_cloud_and_rain: *Alert storm*: {n} incidents opened in " + target + " within a minute. "
                   "Each gets a thread here when it needs someone (an approval, a page, an escalation); "
                   "the rest is in its timeline.")
        self._roll(group, "slack", target, "storm", heading)
        self._last_storm[target] = time.monotonic()
        return []

    def _roll(self, group: list[Message], channel: str, target: str, kind: str, heading: str, person: str = "") -> None:
        """Replace ``group`` by as few messages as fit the channel's length limit, each listing its incidents."""
        limit = TEXT_LIMIT[channel]
        chunks: list[list[tuple[Message, str]]] = [[]]
        size = len(heading) + 10
        for message in group:
            line = (f"• {message.body.get('title', '')} — `{message.body.get('runbook', '')}`, "
                    f"{message.body.get('severity', '')} (incident {message.incident_id})")
            if message.kind == "page" and message.body.get("page"):
                line = f"• level {message.body['page']['level']}: " + line[2:]
            if chunks[-1] and size + len(line) + 1 > limit:
                chunks.append([])
                size = len(heading) + 10
            chunks[-1].append((message, line))
            size += len(line) + 1
        for chunk in chunks:
            text = "\n".join([heading.replace("{n}", str(len(chunk))), *(line for _, line in chunk)])
            items = [{"incident_id": m.incident_id, "what": _what(m), "created_at": m.created_at} for m, _ in chunk]
            body = {"items": items, "line": text, **({"text": text} if channel == "slack" else {"content": text})}
            self.store.roll_up([m.id for m, _ in chunk], new_message(None, channel, target, kind, body, person))
            log.warning("Rolled %d messages into one %s message on %s", len(chunk), kind, channel)
