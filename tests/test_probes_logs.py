"""Log probes on real files written here: text, access, auth and JSON logs, with timestamps in and
out of the window, continuation lines, rotated files matched by a glob and a tail limit."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tasks.base import ErrorCode, ResponderError
from tasks.probes import logs

def now() -> datetime:
    # At call time, not import time: the window is relative to when the probe runs, which in a
    # full suite is minutes after collection.
    return datetime.now(timezone.utc)


def iso(minutes_ago: float) -> str:
    return (now() - timedelta(minutes=minutes_ago)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clf(minutes_ago: float) -> str:
    return (now() - timedelta(minutes=minutes_ago)).strftime("%d/%b/%Y:%H:%M:%S +0000")


def test_error_counts_by_file_level_type_and_pattern_within_the_window(tmp_path):
    (tmp_path / "app.log").write_text("\n".join([
        f"{iso(120)} ERROR old failure that is outside the window",
        f"{iso(5)} INFO request handled",
        f"{iso(4)} ERROR Database connection pool exhausted after 5000 ms (pool 42)",
        "Traceback (most recent call last):",
        '  File "app.py", line 10, in handler',
        "psycopg.OperationalError: connection refused ERROR",
        f"{iso(3)} ERROR Database connection pool exhausted after 7000 ms (pool 17)",
        f"{iso(2)} CRITICAL TimeoutError: upstream api.themoviedb.org did not answer",
    ]) + "\n")
    (tmp_path / "worker.log").write_text(f"{iso(1)} FATAL worker crashed\n")
    result = logs.error_counts(str(tmp_path / "*.log"), since_minutes=15, threshold=3)
    assert result.value == 5 and result.ok is False
    assert result.evidence["per_file"] == {str(tmp_path / "app.log"): 4, str(tmp_path / "worker.log"): 1}
    assert result.evidence["by_level"] == {"ERROR": 3, "CRITICAL": 1, "FATAL": 1}
    types = {t["key"]: t["count"] for t in result.evidence["by_type"]}
    assert types["OperationalError"] == 1 and types["TimeoutError"] == 1
    top = result.evidence["top_patterns"][0]
    assert top["count"] == 2 and "pool exhausted after <n> ms" in top["pattern"]
    assert result.evidence["undated"] == 0  # the traceback lines belong to the line before them
    everything = logs.error_counts(str(tmp_path / "app.log"))
    assert everything.value == 5 and everything.ok is True


def test_slow_query_pattern_and_missing_file(tmp_path):
    (tmp_path / "app.log").write_text(f"{iso(1)} WARNING Slow query detected: 1532 ms\n{iso(1)} INFO ok\n")
    result = logs.error_counts(str(tmp_path / "app.log"), pattern="Slow query detected", since_minutes=5)
    assert result.value == 1
    with pytest.raises(ResponderError) as missing:
        logs.error_counts(str(tmp_path / "nope.log"))
    assert missing.value.code is ErrorCode.CONFIG
    with pytest.raises(ResponderError):
        logs.error_counts("relative/app.log")


def test_access_log_5xx_share_by_status_and_path(tmp_path):
    lines = []
    for i in range(90):
        lines.append(f'10.0.0.{i % 5} - - [{clf(2)}] "GET /api/media?id={i} HTTP/1.1" 200 512 "-" "curl/8"')
    for status in ("500", "502", "503", "504", "500"):
        lines.append(f'10.0.0.9 - - [{clf(1)}] "POST /api/requests HTTP/1.1" {status} 0 "-" "curl/8"')
    lines += [f'10.0.0.9 - - [{clf(1)}] "GET /api/requests HTTP/1.1" 404 0 "-" "curl/8"'] * 5
    lines.append(f'10.0.0.9 - - [{clf(90)}] "GET /old HTTP/1.1" 500 0 "-" "curl/8"')  # outside the window
    lines.append("garbage line")
    (tmp_path / "access.log").write_text("\n".join(lines) + "\n")
    result = logs.access_5xx(str(tmp_path / "access.log"), since_minutes=10, threshold_percent=5)
    assert result.evidence["requests"] == 100 and result.evidence["errors_5xx"] == 5
    assert result.value == 5.0 and result.ok is True  # exactly 5 %: not above
    assert result.evidence["by_status"] == {"500": 2, "502": 1, "503": 1, "504": 1}
    assert result.evidence["top_paths"][0] == {"path": "/api/requests", "errors_5xx": 5, "requests": 10, "percent": 50.0}
    assert logs.access_5xx(str(tmp_path / "access.log"), since_minutes=10, threshold_percent=4).ok is False


def test_failed_logins_grouped_by_source_address(tmp_path):
    lines = [f"{iso(1)} WARN authentication failed for user admin from 203.0.113.7" for _ in range(12)]
    lines += [f"{iso(2)} WARN Authentication failed user=bob ip=2001:db8::1" for _ in range(3)]
    lines += [json.dumps({"time": iso(1), "msg": "authentication failed", "client_ip": "198.51.100.4"})]
    lines += [f"{iso(60)} WARN authentication failed for user admin from 192.0.2.1" for _ in range(50)]  # old
    lines += [f"{iso(1)} WARN authentication failed for user nobody"]
    lines += [f"{iso(1)} INFO login ok for alice from 203.0.113.7"]
    (tmp_path / "auth.log").write_text("\n".join(lines) + "\n")
    result = logs.failed_logins(str(tmp_path / "auth.log"), since_minutes=15, threshold_per_address=10)
    assert result.ok is False and result.value == 12
    assert result.evidence["over_threshold"] == [{"address": "203.0.113.7", "failures": 12}]
    by = {r["address"]: r["failures"] for r in result.evidence["by_address"]}
    assert by == {"203.0.113.7": 12, "2001:db8::1": 3, "198.51.100.4": 1}
    assert result.evidence["unknown_source"] == 1 and result.evidence["total"] == 17


def test_json_group_by_like_the_seed_jq(tmp_path):
    rows = [{"timestamp": iso(1), "level": "ERROR", "path": "/api/v1/books", "error_type": "ValidationError", "user_id": "u1"}] * 4
    rows += [{"timestamp": iso(1), "level": "ERROR", "path": "/api/v1/books", "error_type": "DatabaseError", "user_id": "u2"}] * 2
    rows += [{"timestamp": iso(1), "level": "INFO", "path": "/api/v1/books", "error_type": None, "user_id": "u3"}] * 9
    rows += [{"timestamp": iso(1), "level": "error", "path": "/api/v1/toc", "error_type": "Timeout", "user_id": "u1"}]
    (tmp_path / "app.log").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    by_type = logs.json_group_by(str(tmp_path / "app.log"), "error_type", where={"level": "ERROR"}, contains="/api/v1/books")
    assert by_type.value == 6 and by_type.evidence["groups"] == [{"error_type": "ValidationError", "count": 4},
                                                                 {"error_type": "DatabaseError", "count": 2}]
    by_user = logs.json_group_by(str(tmp_path / "app.log"), "user_id", where={"level": "error"}, threshold=5)
    assert by_user.ok is False and by_user.evidence["groups"][0] == {"user_id": "u1", "count": 5}
    assert by_user.evidence["not_json"] == 1


def test_slow_requests_p95_per_endpoint(tmp_path):
    rows = [{"ts": (now() - timedelta(minutes=1)).timestamp(), "path": "/api/v1/toc/generate", "duration_ms": d}
            for d in [200] * 10 + [4250] * 10]
    rows += [{"ts": (now() - timedelta(minutes=1)).timestamp() * 1000, "path": "/api/v1/books?page=2", "duration_ms": 120}] * 20
    (tmp_path / "requests.log").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = logs.slow_requests(str(tmp_path / "requests.log"), threshold_ms=3000, since_minutes=5)
    assert result.ok is False and result.value == 4250
    assert result.evidence["slow"][0]["endpoint"] == "/api/v1/toc/generate"
    books = [e for e in result.evidence["endpoints"] if e["endpoint"] == "/api/v1/books"][0]
    assert books["requests"] == 20 and books["p"] == 120
    assert logs.slow_requests(str(tmp_path / "requests.log"), threshold_ms=5000).ok is True


def test_only_the_tail_of_a_large_file_is_read(tmp_path):
    path = tmp_path / "big.log"
    with path.open("w") as fh:
        for _ in range(20000):
            fh.write(f"{iso(1)} ERROR early\n")
        for _ in range(100):
            fh.write(f"{iso(1)} ERROR late\n")
    line = len(f"{iso(1)} ERROR late\n")
    result = logs.error_counts(str(path), max_bytes=150 * line)
    # about 150 lines from the end, the cut first one dropped: never the 20,000 early ones
    assert 140 <= result.evidence["lines_read"] < 150 and result.value == result.evidence["lines_read"]
