"""Backup freshness: is there a recent, non-empty backup for every configured backup set?

Seed 003 weekly "Check backup status: ./scripts/monitoring/check-backup-status.sh" and monthly
"Disaster recovery test: run backup restore procedure" (the restore itself is a person's job),
seed 004 "Backups: Daily snapshots", seed 000 "pg_restore -d medianest /backups/medianest_backup.sql".
The sets come from ``config/targets.yaml``::

    backups:
      - {name: postgres, path_glob: /backups/medianest_*.sql, max_age_hours: 26}

A daily backup is stale after ``max_age_hours`` (26: one day plus the time a backup may take).
An empty newest file is a failed backup, not a fresh one.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.probes import human_bytes


def newest(path_glob: str) -> dict[str, Any] | None:
    """The newest regular file matching ``path_glob``: path, size, mtime and age in hours."""
    if not os.path.isabs(path_glob):
        raise ResponderError(ErrorCode.CONFIG, f"backup path_glob {path_glob!r} must be absolute")
    files = []
    for path in glob.glob(path_glob):
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if os.path.isfile(path) and not os.path.islink(path):
            files.append((st.st_mtime, path, st.st_size))
    if not files:
        return None
    mtime, path, size = max(files)
    return {"path": path, "size_bytes": size, "modified": datetime.fromtimestamp(mtime, timezone.utc).isoformat(),
            "age_hours": round((time.time() - mtime) / 3600, 2), "files": len(files)}


def freshness(backups: Sequence[Mapping[str, Any]]) -> ProbeResult:
    """Every backup set's newest file; not ok when one is missing, empty or older than its limit.

    ``backups`` are ``{"name", "path_glob", "max_age_hours"}`` mappings. ``value`` is the
    number of bad sets.
    """
    if not backups:
        return ProbeResult(probe="backup_freshness", ok=True, value=0,
                           summary="no backups configured (config/targets.yaml backups)", evidence={"backups": []})
    rows = []
    for backup in backups:
        limit = float(backup.get("max_age_hours") or 26)
        found = newest(str(backup["path_glob"]))
        if found is None:
            rows.append({"name": backup["name"], "state": "missing", "max_age_hours": limit,
                         "detail": f"no file matches {backup['path_glob']}"})
            continue
        state = "empty" if found["size_bytes"] == 0 else "stale" if found["age_hours"] > limit else "fresh"
        rows.append({"name": backup["name"], "state": state, "max_age_hours": limit, **found,
                     "detail": f"{found['path']}: {found['age_hours']:g} h old, {human_bytes(found['size_bytes'])}"})
    bad = [r for r in rows if r["state"] != "fresh"]
    return ProbeResult(
        probe="backup_freshness",
        ok=not bad,
        value=float(len(bad)),
        threshold=0,
        unit=" bad",
        summary=("; ".join(f"{r['name']} {r['state']} ({r['detail']})" for r in bad) if bad
                 else f"all {len(rows)} backup sets fresh"),
        evidence={"backups": rows},
    )
