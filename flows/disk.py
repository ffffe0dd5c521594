"""DISK_SPACE_CRITICAL and its other spellings: seeds 000, 001, 002 and 004 in one flow.

Started by the ``responder.alert.firing`` event for any spelling of its spec (:data:`SPEC`,
``disk-space``): ``DISK_SPACE_CRITICAL`` (seeds 000,
004, threshold ``disk_percent`` 90) and ``disk_usage`` (seed 001, ``disk_percent`` 85 for that
spelling: :class:`Limits` and its ``spellings``). The steps:

0. Which machine alerted (this one: psutil; another: node_exporter in Prometheus; neither:
   report that and escalate)                                             → ``locate-host``
1. Check disk usage (``df -h``): this machine's ``paths.disk``; every writable disk file system
   of another machine                                                    → ``check-disk-usage``
2. Find large files and directories (``du -sh /* | sort -hr``, ``find / -size +100M``)
                                                                         → ``find-large-files``
3. Check log files (``du -sh logs/``, ``ls -lh logs/``)                 → ``check-log-files``
4. Check temporary files (``du -sh /tmp``)                               → ``check-temp-files``
5. Clean up, seed 002 "Disk Space Low" with seed 004's retention ("Logs: 7 days local, 30 days
   compressed storage"), all three *safe* (they run without approval, and only report under a
   dry run):
   compress logs older than ``paths.retention_days`` (``gzip *.log.1 *.log.2``)
                                                                         → ``compress_old_logs``
   delete compressed logs older than ``paths.delete_after_days`` (``find -name "*.gz" -mtime +N -delete``)
                                                                         → ``delete_old_files``
   delete temporary files older than ``paths.retention_days`` (``find /tmp -name "auto-author-*" -mtime +7 -delete``)
                                                                         → ``remove_temp_files``
6. Verify: ``df`` of the same machine again until below the threshold; close or escalate.

Steps 2 to 5 work on this machine's directories. For another machine the report says that
directory sizes need the host's own view, and nothing is cleaned: the configured directories
are this machine's, not that one's.

What may be cleaned is configuration only (``config/targets.yaml``)::

    paths:
      disk: ["/", "/var"]                 # what df checks
      logs: ["/var/log/auto-author"]      # compressed after retention_days, .gz deleted after delete_after_days
      temp: ["/var/tmp/auto-author"]      # files older than retention_days deleted
      retention_days: 7
      delete_after_days: 30

The alert's ``mountpoint`` label is not used to pick directories: labels never become paths.
Nothing is cleaned while the disk is below the threshold. The file actions' own rules (absolute
configured directories only, no symlinks followed, files open for writing skipped) are in
``tasks/actions/files.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from core.results import resumable

from flows.host import host_step, locate_host
from flows.lifecycle import Assessment, cannot_measure, runbook_flow, runtime, step
from core.alerts import Alert
from core.catalog import PathTargets, Runbook, RunbookSpec, Thresholds, VerifySpec, seed
from tasks.base import ProbeResult
from tasks.mitigations import PlannedAction
from tasks.probes import hosts


# Log ages are config/targets.yaml paths.retention_days (7) and paths.delete_after_days (30).
SPEC = RunbookSpec(
    name="disk-space",
    title="Disk space critical",
    alertnames=(
        "DISK_SPACE_CRITICAL",  # seed 000; seed 004 "Disk Space Critical"
        "DiskSpaceCritical",
        "disk_space_critical",
        "disk_usage",  # seed 001
    ),
    severity="critical",
    seeds=(
        "000 Infrastructure Alerts / DISK_SPACE_CRITICAL: Disk usage >90%",
        "001 High Disk Usage / disk_usage: Disk usage exceeds 85% (alerts at 80% warning, 85% critical)",
        "002 5. Disk Space Low: \"Low disk space: 8% free\" (Severity: High); compress old logs, remove old compressed logs, remove temporary files",
        "004 Infrastructure Alerts: Disk Space Critical >90% usage; Data Retention: Logs 7 days local, 30 days compressed storage",
    ),
    verify=VerifySpec(budget_seconds=120, interval_seconds=15),
    approval_timeout_seconds=300,  # nothing here asks (all cleanup steps are safe); critical: 5 minutes (seed 000 contacts)
    mitigations=(
        "compress_old_logs",  # safe: seed 002 "Compress old logs: gzip *.log.1 *.log.2"; seed 004 "Logs: 7 days local"
        "delete_old_files",  # safe: seed 002 "Remove old compressed logs: find ... -name \"*.gz\" -mtime +7 -delete"; seed 004 "30 days compressed storage"
        "remove_temp_files",  # safe: seed 000 "Remove temp files: rm -rf /tmp/*"; seed 002 "find /tmp -name \"auto-author-*\" -mtime +7 -delete"
    ),
    left_to_humans=(
        "Force log rotation: `logrotate -f /etc/logrotate.conf` (seed 000) and check that rotation works (seed 001)",
        "Clear Docker: `docker system prune -f` (seed 000): removes stopped containers and images someone may need",
        "Truncate current logs (seed 002 \"CAUTION: This loses log data\")",
        "Archive data: move old data to cold storage; database too large: archive old data, data retention (seeds 000, 001)",
        "MongoDB: compact collections (requires downtime) or drop old audit logs (seed 002)",
        "Increase disk size; set up automated cleanup (seed 002 long-term solution)",
    ),
)

LOG_PATTERNS = ["*.log", "*.log.[0-9]*"]  # the current logs and their rotations (seed 002 "gzip *.log.1 *.log.2")
COMPRESSED_PATTERNS = ["*.gz"]  # seed 002 "find /var/log/auto-author -name "*.gz" ... -delete"


class Limits(Thresholds):
    # seed 002 quotes a reading ("8% free"), not a threshold: disk_percent applies.
    disk_percent: float = seed(90, "seed 000 DISK_SPACE_CRITICAL: \"Disk usage >90%\" (seed 004 the same)", ge=0)
    spellings: ClassVar[dict[str, dict[str, Any]]] = {
        "disk_usage": {"disk_percent": 85},  # seed 001 "`disk_usage` - Disk usage exceeds 85%"
    }


check_disk_usage = host_step("check-disk-usage", hosts.disk_usage)
find_large_files = step("find-large-files", hosts.largest_entries, retries=1)
check_log_files = step("check-log-files", hosts.dir_sizes, retries=1)
check_temp_files = step("check-temp-files", hosts.dir_sizes, retries=1)


def _not_configured(probe: str, what: str) -> ProbeResult:
    return ProbeResult(probe=probe, ok=True, summary=f"not checked: no {what} configured (config/targets.yaml paths)")


@resumable(name="plan-cleanup")
def plan_cleanup(disk: ProbeResult, paths: PathTargets) -> list[PlannedAction]:
    """Seed 002's resolution steps on the configured directories, only while the disk is over its threshold."""
    if disk.ok:
        return []
    why = disk.line()
    plans: list[PlannedAction] = []
    if paths.logs:
        plans.append(PlannedAction(
            action="compress_old_logs", target=f"logs in {', '.join(paths.logs)}",
            params={"directories": paths.logs, "older_than_days": paths.retention_days, "patterns": LOG_PATTERNS},
            why=f"{why}; logs older than {paths.retention_days:g} days are kept compressed (seed 004 '7 days local')",
        ))
        plans.append(PlannedAction(
            action="delete_old_files", target=f"compressed logs in {', '.join(paths.logs)}",
            params={"directories": paths.logs, "older_than_days": paths.delete_after_days,
                    "patterns": COMPRESSED_PATTERNS},
            why=f"{why}; compressed logs are kept {paths.delete_after_days:g} days (seed 004 '30 days compressed')",
        ))
    if paths.temp:
        plans.append(PlannedAction(
            action="remove_temp_files", target=f"temp files in {', '.join(paths.temp)}",
            params={"directories": paths.temp, "older_than_days": paths.retention_days},
            why=f"{why}; temporary files older than {paths.retention_days:g} days (seed 002 'find /tmp -mtime +7 -delete')",
        ))
    return plans


def assess(runbook: Runbook, alert: Alert) -> Assessment:
    """Seed 000's steps, in order, on the machine that alerted; seed 002's clean-up on this machine only."""
    limits = runbook.limits(Limits, alert.alertname)
    paths = runtime()[1].targets.paths
    host = locate_host(alert)
    if host.how == "unmeasured":
        return cannot_measure(host.result())
    disk = check_disk_usage(host, paths.disk, limits.disk_percent)
    over = [m["path"] for m in disk.evidence.get("mounts", []) if m["percent"] > limits.disk_percent] or paths.disk
    large = find_large_files(host, over)
    logs = (check_log_files(host, paths.logs, "log_dir_sizes") if paths.logs
            else _not_configured("log_dir_sizes", "log directories"))
    temp = (check_temp_files(host, paths.temp, "temp_dir_sizes") if paths.temp
            else _not_configured("temp_dir_sizes", "temp directories"))
    return Assessment(
        evidence=[host.result(), disk, logs, temp, large],
        plans=plan_cleanup(disk, paths) if host.local else [],  # the configured directories are this machine's
        verify=lambda: check_disk_usage(host, paths.disk, limits.disk_percent),
    )


disk_space = runbook_flow(SPEC, assess, Limits,
                          "Respond to a full disk the way seeds 000, 001 and 002 say to.")
