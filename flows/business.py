"""Business runbooks: failed media requests, authentication issues (seed 000 "Business Logic
Alerts", seed 004 "Business Alerts") and the AI Affiliate Empire business alerts (seed 003).

Each runbook's spec (``FAILED_MEDIA_REQUESTS`` ...) is declared next to its flow.

* ``failed_media_requests``: FAILED_MEDIA_REQUESTS, ">10% media request failure rate".
* ``user_authentication_issues``: USER_AUTHENTICATION_ISSUES, ">5% failed login attempts";
  blocks the addresses the auth log shows brute-forcing (risky, approval).
* ``high_api_costs``: HighApiCosts, "Daily API spending exceeded $100".
* ``no_products_synced``: NoProductsSynced; retries the sync (``trigger_job``, safe) unless the
  logs show rate limiting (seed 003: "If blocked by rate limit: wait 1-2 hours").
* ``no_videos_generated``: NoVideosGenerated; triggers generation unless the budget is hit, the
  generator is down or no products came in.
* ``revenue_declining``: RevenueDeclining (info): the comparisons, and the action items for people.
"""

from __future__ import annotations

from core.results import resumable

from flows import checks
from flows.checks import collect, compact, measured
from flows.lifecycle import Assessment, current_incident_id, runbook_flow
from core.alerts import Alert
from core.catalog import Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction
from tasks.probes import prometheus


# -- FAILED_MEDIA_REQUESTS (seed 000) -----------------------------------------------------------

check_request_status = checks.prometheus_query.with_options(name="check-request-status")
check_external_service_health = checks.external_services.with_options(name="check-external-service-health")
check_media_queue = checks.queue_statuses.with_options(name="check-queue-status")


class FailedMediaRequestsLimits(Thresholds):
    failure_percent: float = seed(10, 'seed 000: ">10% media request failure rate"', ge=0)
    window_seconds: float = seed(300, "alert-rules.yml FAILED_MEDIA_REQUESTS rate window [5m]", gt=0)
    stall_minutes: float = seed(10, 'seed 004 "No progress for 10 minutes"', gt=0)
    stuck_minutes: float = seed(10, "chosen (= seed 004's 10 minutes)", gt=0)


def _media_failure_query(match: dict[str, str] | None, window: str) -> str:
    # deploy/prometheus/alert-rules.yml FAILED_MEDIA_REQUESTS, media_requests_total{status} (assumed metric)
    m = prometheus.matchers(match)
    failed = prometheus.matchers(match, 'status="failed"')
    return (f"100 * sum by (job) (rate(media_requests_total{{{failed}}}[{window}]))"
            f" / sum by (job) (rate(media_requests_total{{{m}}}[{window}]))")


@resumable(name="recover-services-clear-queue-or-fall-back")
def plan_media(alert: Alert, failures: ProbeResult, externals: ProbeResult, queue: ProbeResult,
               stuck_minutes: float) -> list[PlannedAction]:
    """Seed 000 resolutions: "Service recovery", "Queue clearing", "Fallback activation"."""
    if failures.ok:
        return []
    plans: list[PlannedAction | None] = []
    down = externals.evidence.get("down", []) if measured(externals) else []
    for name in down:  # "Service recovery: Restart failed external integrations" (a configured service of that name)
        plans.append(checks.service_plan("restart_service", alert, f"{externals.line()}", service=name))
    if down:
        plans.append(checks.flag_plan("media-fallback", f"{failures.line()}; {externals.line()}: switch to backup data sources"))
    plans += checks.dead_letter_plans(queue, stuck_minutes, "media requests stuck in the queue")
    return compact(plans)


def assess_media(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 000 FAILED_MEDIA_REQUESTS' steps, in order."""
    limits = runbook.limits(FailedMediaRequestsLimits, alert.alertname)
    threshold = limits.failure_percent
    query = _media_failure_query(checks.job_match(alert), prometheus.window(limits.window_seconds))
    stuck = limits.stuck_minutes
    failures = collect(check_request_status, query, threshold, probe="media_failure_percent", unit="%")     # 1
    externals = collect(check_external_service_health)                                                      # 2
    queue = collect(check_media_queue, "default", None, None, limits.stall_minutes, stuck,
                    required=False)                                                                         # 3
    return Assessment(
        evidence=[failures, externals, queue],
        plans=plan_media(alert, failures, externals, queue, stuck),
        verify=lambda: check_request_status(query, threshold, probe="media_failure_percent", unit="%", no_data_ok=False),
    )


FAILED_MEDIA_REQUESTS = RunbookSpec(
    name="failed-media-requests",
    title="Failed media requests",
    alertnames=(
        "FAILED_MEDIA_REQUESTS",  # seed 000, alert-rules.yml
        "FailedMediaRequests",  # seed 004 "Failed Media Requests", Prometheus rule style
    ),
    severity="warning",
    seeds=(
        "000 Business Logic Alerts / FAILED_MEDIA_REQUESTS: >10% media request failure rate",
        "004 Business Alerts: Failed Media Requests: >10% failure rate",
    ),
    verify=VerifySpec(budget_seconds=600, interval_seconds=30),
    approval_timeout_seconds=1800,
    mitigations=(
        "restart_service",  # risky: seed 000 "Service recovery: Restart failed external integrations" (service named like the external)
        "set_flag",  # risky: seed 000 "Fallback activation: Switch to backup data sources": flag media-fallback
        "move_to_dead_letter",  # risky: seed 000 "Queue clearing: Process stuck queue items"
    ),
    left_to_humans=(
        "User notification: inform users of temporary issues (seed 000)",
        "Plex token and TMDB key validity (seed 000 step 2 uses $PLEX_TOKEN, $TMDB_KEY)",
    ),
)


failed_media_requests = runbook_flow(FAILED_MEDIA_REQUESTS, assess_media, FailedMediaRequestsLimits,
                                     "Seed 000 FAILED_MEDIA_REQUESTS: request status, external services, queue; recover, verify.")


# -- USER_AUTHENTICATION_ISSUES (seed 000) --------------------------------------------------------

check_auth_patterns = checks.log_probe.with_options(name="check-auth-patterns")
check_oauth_status = checks.external_services.with_options(name="check-plex-oauth-status")
check_rate_limiting = checks.ratelimits.with_options(name="check-rate-limiting")
check_blocklist = checks.blocklist.with_options(name="check-blocklist")
check_failed_logins = checks.prometheus_query.with_options(name="check-failed-login-rate")


class UserAuthenticationIssuesLimits(Thresholds):
    failed_login_percent: float = seed(5, 'seed 000: ">5% failed login attempts"', ge=0)
    window_seconds: float = seed(300, "alert-rules.yml rate window [5m]", gt=0)
    window_minutes: float = seed(15, "chosen: how far back auth.log is read for brute force", gt=0)
    failed_logins_per_address: int = seed(
        10, "chosen: more failures than this from one address in the window is brute force", ge=0)
    block_seconds: float = seed(3600, "chosen: a block lasts one hour, then expires by itself", gt=0)
    max_blocks: int = seed(5, "chosen: at most 5 addresses per run (more is a distributed attack: people)", ge=0)


def _failed_login_query(match: dict[str, str] | None, window: str) -> str:
    # deploy/prometheus/alert-rules.yml USER_AUTHENTICATION_ISSUES, auth_login_attempts_total{result} (assumed)
    m = prometheus.matchers(match)
    failed = prometheus.matchers(match, 'result="failure"')
    return (f"100 * sum by (job) (rate(auth_login_attempts_total{{{failed}}}[{window}]))"
            f" / sum by (job) (rate(auth_login_attempts_total{{{m}}}[{window}]))")


@resumable(name="plan-security-actions")
def plan_security_actions(logins: ProbeResult, blocked: ProbeResult, block_seconds: float, limit: int) -> list[PlannedAction]:
    """Seed 000 "Block IPs: Add malicious IPs to blocklist", for addresses over the threshold not yet blocked."""
    entry = checks.targets().redis.get("default")
    if not measured(logins) or entry is None or not entry.blocklist_key:
        return []
    already = {a["address"] for a in blocked.evidence.get("addresses", []) if a.get("blocked")}
    plans = []
    for row in logins.evidence.get("over_threshold", []):
        if row["address"] in already:
            continue
        plans.append(PlannedAction(
            action="block_address", target=f"address {row['address']}",
            params={"blocklist_key": entry.blocklist_key, "address": row["address"], "ttl_seconds": block_seconds},
            target_ref=("redis", "default"),
            why=f"{row['failures']} failed logins in the window (threshold {logins.threshold:g}): brute force suspected",
        ))
        if len(plans) >= limit:
            break
    return plans


def assess_authentication(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 000 USER_AUTHENTICATION_ISSUES' steps, in order."""
    limits = runbook.limits(UserAuthenticationIssuesLimits, alert.alertname)
    threshold = limits.failed_login_percent
    query = _failed_login_query(checks.job_match(alert), prometheus.window(limits.window_seconds))
    rate = collect(check_failed_logins, query, threshold, probe="failed_login_percent", unit="%")
    logins = collect(check_auth_patterns, "failed_logins", ("auth",),
                     since_minutes=limits.window_minutes,
                     threshold_per_address=limits.failed_logins_per_address)                                # 1
    oauth = collect(check_oauth_status, [s.name for s in checks.targets().external if "plex" in s.name.lower()
                                         or "oauth" in s.name.lower()] or None, probe="oauth_status")       # 2
    rate_limits = collect(check_rate_limiting)                                                             # 3
    suspects = [r["address"] for r in logins.evidence.get("over_threshold", [])]
    blocked = collect(check_blocklist, suspects)
    return Assessment(
        evidence=[rate, logins, oauth, rate_limits, blocked],
        plans=plan_security_actions(logins, blocked, limits.block_seconds, limits.max_blocks),
        verify=lambda: check_failed_logins(query, threshold, probe="failed_login_percent", unit="%", no_data_ok=False),
    )


USER_AUTHENTICATION_ISSUES = RunbookSpec(
    name="user-authentication-issues",
    title="User authentication issues",
    alertnames=(
        "USER_AUTHENTICATION_ISSUES",  # seed 000, alert-rules.yml
        "UserAuthenticationIssues",  # seed 004 "User Authentication Issues"
    ),
    severity="warning",
    seeds=(
        "000 Business Logic Alerts / USER_AUTHENTICATION_ISSUES: >5% failed login attempts",
        "004 Business Alerts: User Authentication Issues: >5% failed logins",
    ),
    verify=VerifySpec(budget_seconds=600, interval_seconds=30),
    approval_timeout_seconds=1800,
    mitigations=(
        "block_address",  # risky: seed 000 "Block IPs: Add malicious IPs to blocklist"
    ),
    left_to_humans=(
        "Increase rate limits temporarily if the traffic is legitimate (seed 000)",
        "OAuth refresh: regenerate OAuth tokens if compromised (seed 000)",
        "User communication: notify users of authentication issues (seed 000)",
    ),
)


user_authentication_issues = runbook_flow(USER_AUTHENTICATION_ISSUES, assess_authentication, UserAuthenticationIssuesLimits,
                                          "Seed 000 USER_AUTHENTICATION_ISSUES: auth patterns, OAuth, rate limits; block attackers; verify.")


# -- HighApiCosts (seed 003) ----------------------------------------------------------------------

view_cost_dashboard = checks.prometheus_query.with_options(name="view-cost-dashboard")
identify_culprit = checks.prometheus_query.with_options(name="identify-culprit")
check_workflow_frequency = checks.log_probe.with_options(name="check-workflow-frequency")
check_retries = checks.log_probe.with_options(name="check-errors-causing-retries")
check_burn_rate = checks.prometheus_query.with_options(name="check-spending-rate")

DAILY_COST = "sum(increase(affiliate_api_cost_dollars[24h]))"  # alert-rules.yml HighApiCosts
PER_SERVICE = "sum by (service) (rate(affiliate_api_cost_dollars[1h])) * 3600"  # seed 003: rate(...[1h]) per service
BURN_RATE = "sum(rate(affiliate_api_cost_dollars[{window}])) * 86400"


class HighApiCostsLimits(Thresholds):
    daily_cost_dollars: float = seed(100, 'seed 003: "Threshold: $100/day"', ge=0)
    window_seconds: float = seed(3600, 'seed 003: "rate(affiliate_api_cost_dollars[1h])", the current burn rate', gt=0)


def assess_api_costs(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 003 HighApiCosts' steps, in order."""
    limits = runbook.limits(HighApiCostsLimits, alert.alertname)
    budget = limits.daily_cost_dollars
    burn = BURN_RATE.format(window=prometheus.window(limits.window_seconds))
    daily = collect(view_cost_dashboard, DAILY_COST, budget, probe="daily_api_cost", unit="$")              # 1
    culprit = collect(identify_culprit, PER_SERVICE, None, probe="api_cost_per_service_hourly", unit="$/h")  # 2
    workflows = collect(check_workflow_frequency, "errors", ("app",), probe="workflows_started",
                        pattern="workflow started", since_minutes=24 * 60)                                    # inv. 2
    retries = collect(check_retries, "errors", ("app",), probe="retry_loops", pattern=r"(?i)retry|exponential.*backoff",
                      since_minutes=60)                                                                       # inv. 3
    rate = collect(check_burn_rate, burn, budget, probe="projected_daily_cost", unit="$")
    plans = []
    if not rate.ok or not daily.ok:  # "Option 1: Reduce generation frequency"
        plans = compact([checks.flag_plan("reduce-generation", f"{daily.line()}; {rate.line()}")])
    return Assessment(evidence=[daily, culprit, workflows, retries, rate], plans=plans,
                      verify=lambda: check_burn_rate(burn, budget, probe="projected_daily_cost", unit="$", no_data_ok=False))


HIGH_API_COSTS = RunbookSpec(
    name="high-api-costs",
    title="High API costs",
    alertnames=(
        "HighApiCosts",  # seed 003, alert-rules.yml
    ),
    severity="warning",
    seeds=(
        "003 WARNING / HighApiCosts: Daily API spending exceeded $100 (Duration 1 hour, Threshold $100/day, Window last 24 hours)",
    ),
    verify=VerifySpec(budget_seconds=1800, interval_seconds=60),  # seed 003 warning: "< 30 min response"
    approval_timeout_seconds=1800,
    mitigations=(
        "set_flag",  # risky: seed 003 "Option 1: Reduce generation frequency": flag reduce-generation
    ),
    left_to_humans=(
        "Optimize prompts, reduce batch sizes (MAX_VIDEOS_PER_RUN, MAX_PRODUCTS_PER_RUN) (seed 003 options 2-4)",
        "Check for infinite retry loops (ElevenLabs voice generation) and the Temporal execution history (seed 003)",
        "Cost spike escalation: Product Manager, then Finance (seed 003 contacts)",
    ),
)


high_api_costs = runbook_flow(HIGH_API_COSTS, assess_api_costs, HighApiCostsLimits,
                              "Seed 003 HighApiCosts: cost dashboard, culprit service, workflow frequency, retries; reduce frequency.")


# -- NoProductsSynced (seed 003) ------------------------------------------------------------------

check_last_sync = checks.prometheus_query.with_options(name="check-last-sync")
check_api_errors = checks.log_probe.with_options(name="check-for-api-errors")
check_rate_limited = checks.log_probe.with_options(name="check-rate-limit")
verify_sync = checks.prometheus_query.with_options(name="verify-products-syncing")


class NoProductsSyncedLimits(Thresholds):
    window_seconds: float = seed(3600, 'seed 003: "in the last hour"', gt=0)
    verify_window_seconds: float = seed(300, "chosen: products counted again within 5 minutes after the retry", gt=0)
    rate_limit_wait_minutes: float = seed(
        120, 'seed 003: "If blocked by rate limit: Wait 1-2 hours before next attempt"', gt=0)


def _increase(metric: str, window: str, match: dict[str, str] | None) -> str:
    return f"sum(increase({metric}{{{prometheus.matchers(match)}}}[{window}]))"


def assess_products(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 003 NoProductsSynced's steps, in order."""
    limits = runbook.limits(NoProductsSyncedLimits, alert.alertname)
    match = checks.job_match(alert)
    window = prometheus.window(limits.window_seconds)
    verify_window = prometheus.window(limits.verify_window_seconds)
    synced = "affiliate_products_synced_total"
    last_sync = collect(check_last_sync, _increase(synced, window, match), 0, bad_when="at_or_below",
                        probe="products_synced", no_data_ok=False)                                          # 1
    api_errors = collect(check_api_errors, "errors", ("app",), probe="affiliate_api_errors",
                         pattern=r"(?i)(amazon|affiliate).*(error|fail)|(error|fail).*(amazon|affiliate)",
                         since_minutes=60)                                                                  # rec. 3
    limited = collect(check_rate_limited, "errors", ("app",), probe="rate_limited", pattern=r"\b429\b|(?i:rate.?limit)",
                      since_minutes=limits.rate_limit_wait_minutes, threshold=0)                             # rec. 4
    plans = []
    if not last_sync.ok:
        if limited.ok:  # "Retry sync manually"
            plans = compact([checks.job_plan("sync-products", last_sync.line(), f"{current_incident_id()}-sync-products")])
        # rate limited: "Wait 1-2 hours before next attempt" - nothing to trigger, verification decides
    return Assessment(evidence=[last_sync, api_errors, limited], plans=plans, verify=lambda: verify_sync(
        _increase(synced, verify_window, match), 0, bad_when="at_or_below", probe="products_synced_recently",
        no_data_ok=False))


NO_PRODUCTS_SYNCED = RunbookSpec(
    name="no-products-synced",
    title="No products synced",
    alertnames=(
        "NoProductsSynced",  # seed 003, alert-rules.yml
    ),
    severity="warning",
    seeds=(
        "003 WARNING / NoProductsSynced: No products synced in the last hour",
    ),
    verify=VerifySpec(budget_seconds=900, interval_seconds=30),
    approval_timeout_seconds=1800,
    mitigations=(
        "trigger_job",  # safe: seed 003 "Retry sync manually: curl -X POST .../api/orchestrator/sync-products" (job sync-products)
    ),
    left_to_humans=(
        "Temporal UI: resume a paused daily-control-loop workflow (seed 003 recovery 1)",
        "Invalid Amazon Associates credentials: update them in the secrets manager (seed 003)",
    ),
)


no_products_synced = runbook_flow(NO_PRODUCTS_SYNCED, assess_products, NoProductsSyncedLimits,
                                  "Seed 003 NoProductsSynced: last sync, API errors, rate limit; retry the sync; verify products flow.")


# -- NoVideosGenerated (seed 003) -----------------------------------------------------------------

check_last_video = checks.prometheus_query.with_options(name="check-last-video-generation")
check_video_queue = checks.queue_statuses.with_options(name="check-video-queue")
check_costs = checks.prometheus_query.with_options(name="check-costs")
check_generator_status = checks.external_services.with_options(name="check-pika-api-status")
check_products = checks.prometheus_query.with_options(name="check-product-sync")
verify_videos = checks.prometheus_query.with_options(name="verify-videos-generating")


class NoVideosGeneratedLimits(Thresholds):
    window_seconds: float = seed(7200, 'seed 003: "in the last 2 hours"', gt=0)
    verify_window_seconds: float = seed(300, "chosen: videos counted again within 5 minutes after the trigger", gt=0)
    daily_cost_dollars: float = seed(
        100, 'seed 003 HighApiCosts "$100/day": "Budget limit hit" means do not trigger', ge=0)


def assess_videos(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 003 NoVideosGenerated's steps, in order."""
    limits = runbook.limits(NoVideosGeneratedLimits, alert.alertname)
    match = checks.job_match(alert)
    window = prometheus.window(limits.window_seconds)
    verify_window = prometheus.window(limits.verify_window_seconds)
    videos = "affiliate_videos_generated_total"
    last_video = collect(check_last_video, _increase(videos, window, match), 0, bad_when="at_or_below",
                         probe="videos_generated", no_data_ok=False)                                         # 1
    queue = collect(check_video_queue, "default", None, None, 10, 10, required=False)                        # 2
    costs = collect(check_costs, DAILY_COST, limits.daily_cost_dollars, probe="daily_api_cost",
                    unit="$", required=False)                                                                # 3
    generator = collect(check_generator_status, [s.name for s in checks.targets().external if "pika" in s.name.lower()]
                        or None, probe="generator_status")                                                   # rec. 1
    products = collect(check_products, _increase("affiliate_products_synced_total", prometheus.window(86400), match), 0,
                       bad_when="at_or_below", probe="products_synced_24h", required=False)
    plans = []
    # "Trigger manual generation", unless "Budget limit hit", "Pika Labs down" or "Input products missing"
    if not last_video.ok and costs.ok and generator.ok and products.ok:
        plans = compact([checks.job_plan("generate-videos", last_video.line(), f"{current_incident_id()}-generate-videos")])
    return Assessment(evidence=[last_video, queue, costs, generator, products], plans=plans, verify=lambda: verify_videos(
        _increase(videos, verify_window, match), 0, bad_when="at_or_below", probe="videos_generated_recently",
        no_data_ok=False))


NO_VIDEOS_GENERATED = RunbookSpec(
    name="no-videos-generated",
    title="No videos generated",
    alertnames=(
        "NoVideosGenerated",  # seed 003, alert-rules.yml
    ),
    severity="warning",
    seeds=(
        "003 WARNING / NoVideosGenerated: No videos generated in the last 2 hours",
    ),
    verify=VerifySpec(budget_seconds=900, interval_seconds=30),
    approval_timeout_seconds=1800,
    mitigations=(
        "trigger_job",  # safe: seed 003 "Trigger manual generation: curl -X POST .../generate-videos" (job generate-videos)
    ),
    left_to_humans=(
        "Pika Labs down: use the backup generator (seed 003)",
        "Budget limit hit: adjust the budget or wait for the next day (seed 003)",
        "Workflow crashed: read the error in the Temporal UI, fix and retry (seed 003)",
    ),
)


no_videos_generated = runbook_flow(NO_VIDEOS_GENERATED, assess_videos, NoVideosGeneratedLimits,
                                   "Seed 003 NoVideosGenerated: last video, queue, budget, generator; trigger generation; verify.")


# -- RevenueDeclining (seed 003, INFO) --------------------------------------------------------------

compare_periods = checks.prometheus_query.with_options(name="compare-periods")
compare_same_day_last_week = checks.prometheus_query.with_options(name="compare-same-day-last-week")
check_content_pipeline = checks.prometheus_query.with_options(name="check-videos-still-generated")

REVENUE_RATIO = ("sum(increase(affiliate_revenue_dollars_total[24h]))"
                 " / sum(increase(affiliate_revenue_dollars_total[24h] offset {offset}))")


def assess_revenue(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 003 RevenueDeclining's comparisons, in order."""
    day = REVENUE_RATIO.format(offset="24h")
    periods = collect(compare_periods, day, 1.0, bad_when="below", probe="revenue_vs_previous_24h")          # 2
    weekly = collect(compare_same_day_last_week, REVENUE_RATIO.format(offset="7d"), 1.0, bad_when="below",
                     probe="revenue_vs_same_day_last_week", required=False)                                   # inv. 1
    pipeline = collect(check_content_pipeline, "sum(increase(affiliate_videos_generated_total[24h]))", 0,
                       bad_when="at_or_below", probe="videos_generated_24h", required=False)                 # inv. 4
    return Assessment(evidence=[periods, weekly, pipeline],
                      plans=[],  # every action item of the seed is a person's decision
                      verify=lambda: compare_periods(day, 1.0, bad_when="below", probe="revenue_vs_previous_24h",
                                                     no_data_ok=False))


REVENUE_DECLINING = RunbookSpec(
    name="revenue-declining",
    title="Revenue declining",
    alertnames=(
        "RevenueDeclining",  # seed 003, alert-rules.yml
    ),
    severity="info",
    seeds=(
        "003 INFO / RevenueDeclining: Revenue in last 24h is lower than previous 24h (< 4 hours response)",
    ),
    verify=VerifySpec(budget_seconds=60, interval_seconds=30),  # one comparison: the action items are people's
    approval_timeout_seconds=14400,
    left_to_humans=(
        "Is the decline temporary (weekend)? Compare traffic trends (seed 003 investigation 1)",
        "Products with ROI < 0.5, platform comparison (seed 003 investigation 2, 3)",
        "Review A/B tests, adjust content strategy, budget for winning niches, kill underperformers, new networks (seed 003 action items)",
    ),
)


# No thresholds of its own: seed 003 compares the last 24 h with the previous 24 h and the same day last week.
revenue_declining = runbook_flow(REVENUE_DECLINING, assess_revenue,
                                 doc="Seed 003 RevenueDeclining (info, < 4 h): the comparisons for the people who act on them.")
