"""DISK_SPACE_CRITICAL / disk_usage through the real responder and Prefect server, on real files.

The disk threshold is 0 % here so the runbook always acts (the real filesystem is far from full),
and verification cannot pass: every run escalates after cleaning, which is what a disk still
over its threshold must do. The files are real, with real mtimes (``os.utime``); the assertions
are on the complete directory listing afterwards, so an action that touched one file too many
fails. The dry run is a second responder with ``RESPONDER_DRY_RUN=true`` (two responders may not
share one Prefect server at once: both would execute the same deployments, so each test starts
its own).
"""

from __future__ import annotations

import gzip
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from support.common import wait_for
from support.prefect import prefect_post, wait_run_final
from support.responder import make_config, running_responder

DAY = 86400
# name -> age in days; retention is 7 days compressed-after, 30 days deleted-after (config/targets.yaml)
LOGS = {
    "app.log": 0,              # current log: untouched
    "app.log.1": 10,           # rotated, older than 7 days: compressed, kept (10 < 30)
    "app.log.2": 40,           # rotated, 40 days: compressed, then past 30 days: deleted
    "old.log.gz": 40,          # compressed 40 days ago: deleted
    "recent.log.gz": 10,       # compressed 10 days ago: kept
    "notes.txt": 40,           # not a log name: untouched
    "sub/worker.log": 10,      # in a subdirectory: compressed
    "fresh.log.1": 2,          # rotated 2 days ago: too young to compress
}
TEMP = {"upload-1.tmp": 10, "upload-2.tmp": 1}


def make_tree(root: Path) -> dict[str, bytes]:
    now = time.time()
    contents = {}
    for folder, files in (("logs", LOGS), ("tmp", TEMP)):
        for name, age in files.items():
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            data = (f"{name} line\n" * 200).encode()
            path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
            os.utime(path, (now - age * DAY, now - age * DAY))
            contents[f"{folder}/{name}"] = data
    return contents


def listing(root: Path) -> dict[str, int]:
    """Every regular file under root with its mtime (whole seconds)."""
    return {str(p.relative_to(root)): int(p.stat().st_mtime) for p in sorted(root.rglob("*")) if p.is_file()}


def config_for(tmp: Path, root: Path) -> Path:
    return make_config(
        tmp,
        thresholds={"disk-space": {"disk_percent": 0}},  # every spelling, disk_usage too
        runbook_overrides={"disk-space": {"verify": {"budget_seconds": 2, "interval_seconds": 1}}},
        targets={"paths": {"disk": [str(root)], "logs": [str(root / "logs")], "temp": [str(root / "tmp")],
                           "retention_days": 7, "delete_after_days": 30}},
    )


def alert_body(alertname: str) -> dict:
    fingerprint = uuid.uuid4().hex[:16]
    labels = {"alertname": alertname, "severity": "critical", "instance": "app-1:9100", "mountpoint": "/"}
    annotations = {"summary": "disk almost full"}
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{alertname}", test="{fingerprint}"}}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "responder", "groupLabels": {"alertname": alertname},
        "commonLabels": labels, "commonAnnotations": annotations, "externalURL": "http://alertmanager.test",
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations,
                    "startsAt": datetime.now(timezone.utc).isoformat(), "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "", "fingerprint": fingerprint}],
    }


def respond(responder, api: str, alertname: str) -> tuple[dict, str]:
    answer = responder.post(alert_body(alertname))
    assert answer.status_code == 200, answer.text
    [incident_id] = answer.json()["incidents_opened"]
    final = wait_run_final(api, incident_id)
    body = {"artifacts": {"key": {"any_": [f"response-{incident_id}"]}}}
    return final, wait_for(lambda: prefect_post(api, "/artifacts/filter", body)[0]["data"], 10, what="the report")


def test_retention_compresses_and_deletes_exactly_what_it_should(prefect_server, tmp_path):
    root = tmp_path / "disk"
    contents = make_tree(root)
    before = listing(root)
    with running_responder(tmp_path, prefect_server.api_url, config_for(tmp_path, root)) as responder:
        final, report = respond(responder, prefect_server.api_url, "DISK_SPACE_CRITICAL")

    assert final["state"]["name"] == "Escalated", final["state"]  # still over a 0 % threshold
    after = listing(root)
    assert after == {
        "logs/app.log": before["logs/app.log"],
        "logs/app.log.1.gz": before["logs/app.log.1"],  # gzip keeps the mtime
        "logs/fresh.log.1": before["logs/fresh.log.1"],
        "logs/notes.txt": before["logs/notes.txt"],
        "logs/recent.log.gz": before["logs/recent.log.gz"],
        "logs/sub/worker.log.gz": before["logs/sub/worker.log"],
        "tmp/upload-2.tmp": before["tmp/upload-2.tmp"],
    }
    assert gzip.decompress((root / "logs/app.log.1.gz").read_bytes()) == contents["logs/app.log.1"]
    assert gzip.decompress((root / "logs/sub/worker.log.gz").read_bytes()) == contents["logs/sub/worker.log"]
    for probe in ("| disk_usage |", "| log_dir_sizes |", "| temp_dir_sizes |", "| largest_entries |"):
        assert probe in report, probe
    for action in ("compress_old_logs", "delete_old_files", "remove_temp_files"):
        assert f"| {action} |" in report and "| safe | done |" in report, action


def test_dry_run_reports_and_changes_nothing(prefect_server, tmp_path):
    root = tmp_path / "disk"
    make_tree(root)
    before = listing(root)
    config = config_for(tmp_path, root)
    with running_responder(tmp_path, prefect_server.api_url, config, RESPONDER_DRY_RUN="true") as responder:
        final, report = respond(responder, prefect_server.api_url, "disk_usage")

    assert final["state"]["name"] == "Escalated", final["state"]
    assert listing(root) == before
    assert report.count("| would_do |") == 3, report
    assert "app.log.1" in report and "old.log.gz" in report and "upload-1.tmp" in report
