"""Prometheus metrics of the intake and the responses (``GET /metrics``)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

INTAKE_REQUESTS = Counter(
    "responder_intake_requests_total", "POST /alerts requests by HTTP status code.", ["code"], registry=REGISTRY
)
INTAKE_STORED = INTAKE_REQUESTS.labels("200")  # the one answer of every stored post
ALERTS = Counter(
    "responder_alerts_total",
    "Alerts received, by outcome (firing, resolved, duplicate, unrouted).",
    ["outcome"],
    registry=REGISTRY,
)
# Each outcome's child, resolved once: .labels() takes a lock and builds a key at every call, several per post.
ALERTS_BY_OUTCOME = {outcome: ALERTS.labels(outcome) for outcome in ("firing", "resolved", "duplicate", "unrouted")}
INCIDENTS_OPENED = Counter(
    "responder_incidents_opened_total", "Incidents opened, by runbook.", ["runbook"], registry=REGISTRY
)
EVENTS_DELIVERED = Counter(
    "responder_events_delivered_total", "Events delivered to the Prefect server.", registry=REGISTRY
)
DELIVERY_FAILURES = Counter(
    "responder_event_delivery_failures_total", "Failed attempts to deliver events to Prefect.", registry=REGISTRY
)
OUTBOX_BACKLOG = Gauge(
    "responder_outbox_backlog", "Stored events not yet delivered to Prefect.", registry=REGISTRY
)
OUTBOX_OLDEST_AGE = Gauge(
    "responder_outbox_oldest_undelivered_seconds",
    "Age of the oldest stored event not yet delivered to Prefect (0 when none waits).", registry=REGISTRY
)
INTAKE_WAITING = Gauge(
    "responder_intake_waiting_posts", "Alert posts waiting for the store's next group commit.", registry=REGISTRY
)
INGEST_BATCH = Histogram(
    "responder_intake_commit_bodies", "Alertmanager bodies stored per group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=REGISTRY,
)
RUNS_STARTED = Counter(
    "responder_runs_started_total", "Runbook runs started by this responder, by runbook.", ["runbook"], registry=REGISTRY
)
RUNS_INFLIGHT = Gauge("responder_runs_inflight", "Runbook runs executing in this process.", registry=REGISTRY)
READY = Gauge("responder_ready", "1 when an alert posted now would start its run.", registry=REGISTRY)
INGEST_SECONDS = Histogram(
    "responder_intake_store_seconds",
    "Time to store one Alertmanager body durably.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
PAGES = Counter("responder_pages_total", "Escalation pages sent, by level.", ["level"], registry=REGISTRY)
PAGE_LATENESS = Histogram(
    "responder_page_lateness_seconds", "How long after it was due each escalation page was sent.",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300), registry=REGISTRY,
)
PAGES_DUE = Gauge(
    "responder_pages_due", "Escalation pages due and not yet sent, at the pager's last pass.", registry=REGISTRY,
)
ACTIONS = Counter(
    "responder_actions_total", "Mitigations by outcome (done, would_do, rejected, …).", ["status"], registry=REGISTRY
)
TIME_TO_ACK = Histogram(
    "responder_time_to_acknowledge_seconds", "Incident opened → acknowledged by a human.",
    buckets=(30, 60, 120, 300, 600, 900, 1800, 3600, 7200), registry=REGISTRY,
)
TIME_TO_RESOLVE = Histogram(
    "responder_time_to_resolve_seconds", "Incident opened → closed.",
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 14400), registry=REGISTRY,
)
INCIDENTS = Gauge(
    "responder_incidents", "Incidents by state and severity.", ["state", "severity"], registry=REGISTRY
)

# -- what silence looks like (deploy/prometheus/responder-rules.yml alerts on these, routed around the responder)
RESPONSES_WAITING = Gauge(
    "responder_responses_waiting_to_start", "Response runs due and not yet started, at the executor's last poll.",
    registry=REGISTRY,
)
RESPONSES_OLDEST_WAITING = Gauge(
    "responder_responses_oldest_waiting_seconds",
    "How long the oldest due response run has waited to start, at the executor's last poll (0 when none).",
    registry=REGISTRY,
)
PAGES_OLDEST_DUE = Gauge(
    "responder_pages_oldest_due_seconds",
    "How overdue the most overdue escalation page not yet sent is, at the pager's last pass (0 when none).",
    registry=REGISTRY,
)
PAGER_LAST_PASS = Gauge(
    "responder_pager_last_pass_timestamp_seconds",
    "Unix time of the pager's last pass over the open incidents (it passes twice a second).", registry=REGISTRY,
)
NOTIFICATIONS_FAILED = Counter(
    "responder_notifications_failed_total",
    "Attempts to send a message or page that its channel did not take (retried, or refused), by channel.",
    ["channel"], registry=REGISTRY,
)
NOTIFICATIONS_DELIVERED = Counter(
    "responder_notifications_delivered_total", "Messages and pages delivered, by channel.", ["channel"],
    registry=REGISTRY,
)
NOTIFICATIONS_DROPPED = Counter(
    "responder_notifications_dropped_total",
    "Messages a channel will never carry: refused by it (a 4xx), or too old to matter before it took them "
    "(pages never are), by channel.", ["channel"],
    registry=REGISTRY,
)
NOTIFICATIONS_WAITING = Gauge(
    "responder_notifications_waiting", "Messages and pages in the notification outbox, not yet delivered.",
    registry=REGISTRY,
)
NOTIFICATIONS_OLDEST_WAITING = Gauge(
    "responder_notifications_oldest_waiting_seconds",
    "Age of the oldest message or page not yet delivered (0 when none waits).", registry=REGISTRY,
)
PREFECT_LAST_CONTACT = Gauge(
    "responder_prefect_last_contact_timestamp_seconds",
    "Unix time of the executor's last successful read from the Prefect server (0: none since start).",
    registry=REGISTRY,
)
WATCHDOG_LAST_SEEN = Gauge(
    "responder_alertmanager_watchdog_last_seen_timestamp_seconds",
    "Unix time Alertmanager's Watchdog alert last arrived (0: never, the dead man's switch is not armed).",
    registry=REGISTRY,
)
for _channel in ("slack", "discord", "pagerduty", "webhook", "statuspage"):  # each series exists at 0 before its first count
    NOTIFICATIONS_FAILED.labels(_channel)
    NOTIFICATIONS_DELIVERED.labels(_channel)
    NOTIFICATIONS_DROPPED.labels(_channel)
