"""compress_old_logs / delete_old_files / remove_temp_files on real files.

Everything lives under pytest's ``tmp_path`` except one test that uses ``/tmp`` itself with a
random name prefix (``remove_temp_files`` is the one action allowed there). Ages are real
mtimes set with ``os.utime``; "unchanged" means the same bytes, mode, mtime and atime for every
file and the same listing (files, directories and symlinks) for the whole tree, checked before
and after.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import struct
import time
import uuid
from pathlib import Path

import pytest

from tasks.mitigations import REGISTRY
from tasks.actions import files as actions
from tasks.base import ErrorCode, ResponderError

DAY = 86400


def _make(path: Path, content: bytes | str = b"", age_days: float = 0, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    then = time.time() - age_days * DAY
    os.utime(path, (then - 3600, then))  # atime an hour before mtime, so a change to either shows
    return path


def _read(path: Path) -> bytes:
    """Read without updating atime, so that taking a snapshot does not change what it records."""
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (no symlink followed): kind plus content digest, mode and times."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            elif not stat.S_ISREG(st.st_mode):
                out[rel] = ("other", st.st_mode, st.st_mtime_ns)
            else:
                digest = hashlib.sha256(_read(path)).hexdigest()
                out[rel] = ("file", digest, st.st_mode, st.st_mtime_ns, st.st_atime_ns)
    return out


@pytest.fixture
def outside(tmp_path) -> Path:
    """Old, matching files outside the configured directory, reachable only through symlinks."""
    d = tmp_path / "outside"
    _make(d / "victim.log", "outside log\n", age_days=30)
    _make(d / "victim.gz", b"\x1f\x8boutside", age_days=30)
    _make(d / "deeper" / "victim.tmp", "outside tmp\n", age_days=30)
    return d


# -- compress_old_logs --------------------------------------------------------------------


@pytest.fixture
def logs(tmp_path, outside) -> Path:
    d = tmp_path / "logs"
    _make(d / "app.log", "line\n" * 2000, age_days=3, mode=0o640)
    _make(d / "worker" / "jobs.log", "job done\n" * 500, age_days=10)
    _make(d / "current.log", "still being written\n", age_days=0)  # modified just now
    _make(d / "app.log.1", "rotated\n", age_days=3)  # does not match *.log
    _make(d / "old.log.gz", gzip.compress(b"already"), age_days=9)
    _make(d / "disguised.log", gzip.compress(b"gzip content under a .log name"), age_days=9)
    _make(d / "taken.log", "has a .gz already\n", age_days=9)
    _make(d / "taken.log.gz", gzip.compress(b"someone else's"), age_days=9)
    _make(d / "linked.log", "two names\n", age_days=9)
    os.link(d / "linked.log", d / "linked-twin.txt")
    (d / "escape.log").symlink_to(outside / "victim.log")
    (d / "escape-dir").symlink_to(outside)
    return d


def test_compress_gzips_exactly_the_old_logs_and_keeps_their_mtime(logs, outside):
    before, outside_before = _tree(logs), _tree(outside)
    originals = {name: _read(logs / name) for name in ("app.log", "worker/jobs.log")}
    stats = {name: (logs / name).stat() for name in originals}

    outcome = REGISTRY["compress_old_logs"].act([str(logs)], older_than_days=1)  # risk: the registry's

    assert outcome.status == "done", outcome.detail
    assert outcome.risk.value == "safe"
    assert outcome.changes == [
        f"compressed {logs}/app.log -> {logs}/app.log.gz",
        f"compressed {logs}/worker/jobs.log -> {logs}/worker/jobs.log.gz",
    ]
    after = _tree(logs)
    assert set(after) == (set(before) - {"app.log", "worker/jobs.log"}) | {"app.log.gz", "worker/jobs.log.gz"}
    for name in set(before) - {"app.log", "worker/jobs.log"}:
        assert after[name] == before[name], f"{name} changed"
    assert stat.S_IMODE(stats["app.log"].st_mode) == 0o640  # so "mode kept" is not "default mode"
    for name, data in originals.items():
        gz = logs / f"{name}.gz"
        st, raw = gz.stat(), _read(gz)
        assert gzip.decompress(raw) == data
        assert st.st_mtime_ns == stats[name].st_mtime_ns and st.st_atime_ns == stats[name].st_atime_ns
        assert st.st_mode == stats[name].st_mode
        assert struct.unpack("<I", raw[4:8])[0] == int(stats[name].st_mtime)  # gzip header MTIME
        assert raw[10:].split(b"\0", 1)[0] == Path(name).name.encode()  # gzip header FNAME, like gzip -N
    assert _tree(outside) == outside_before
    for reason in ("already compressed", "whose .gz already exists", "with other hard links"):
        assert reason in outcome.detail

    again = actions.compress_old_logs([str(logs)], older_than_days=1)
    assert again.status == "not_needed" and again.changes == []


def test_compress_dry_run_changes_nothing(logs, outside):
    before, outside_before = _tree(logs), _tree(outside)
    outcome = actions.compress_old_logs(logs, older_than_days=1, dry_run=True)
    assert outcome.status == "would_do" and outcome.dry_run is True and outcome.changes == []
    assert "would compress 2 files" in outcome.detail
    assert f"{logs}/app.log" in outcome.detail and f"{logs}/worker/jobs.log" in outcome.detail
    assert _tree(logs) == before
    assert _tree(outside) == outside_before


def test_compress_skips_recent_and_open_files(tmp_path):
    d = tmp_path / "logs"
    _make(d / "quiet.log", "not touched for 20 minutes\n", age_days=20 / 1440)
    _make(d / "busy.log", "touched 2 minutes ago\n", age_days=2 / 1440)
    _make(d / "held.log", "old but a process appends to it\n", age_days=5)
    with open(d / "held.log", "a"):
        os.utime(d / "held.log", (time.time() - 6 * DAY, time.time() - 5 * DAY))
        before = _tree(d)
        outcome = actions.compress_old_logs([d], older_than_days=0, quiet_minutes=10)
    assert outcome.changes == [f"compressed {d}/quiet.log -> {d}/quiet.log.gz"]
    assert "skipped 1 open for writing" in outcome.detail
    after = _tree(d)
    assert after["busy.log"] == before["busy.log"] and after["held.log"] == before["held.log"]
    assert "quiet.log" not in after and "quiet.log.gz" in after


# -- delete_old_files ---------------------------------------------------------------------


@pytest.fixture
def retention(tmp_path, outside) -> Path:
    d = tmp_path / "retention"
    _make(d / "a.log.gz", b"old", age_days=8)
    _make(d / "b.log.gz", b"young", age_days=6)
    _make(d / "c.log", b"old but not *.gz", age_days=30)
    _make(d / "nested" / "d.log.gz", b"old, nested", age_days=40)
    _make(d / "nested" / "deeper" / "e.gz", b"old, deeper", age_days=9)
    _make(d / "nested" / "f.GZ", b"old, other case", age_days=9)
    (d / "empty").mkdir()
    (d / "old-link.gz").symlink_to(outside / "victim.gz")
    (d / "dir-link").symlink_to(outside)
    os.mkfifo(d / "pipe.gz")
    os.utime(d / "pipe.gz", (time.time() - 9 * DAY, time.time() - 9 * DAY), follow_symlinks=False)
    return d


def test_retention_deletes_exactly_the_old_matching_files(retention, outside):
    before, outside_before = _tree(retention), _tree(outside)
    expected = ["a.log.gz", "nested/d.log.gz", "nested/deeper/e.gz"]

    outcome = REGISTRY["delete_old_files"].act([str(retention)], older_than_days=7, patterns=["*.gz"])

    assert outcome.status == "done", outcome.detail
    assert outcome.risk.value == "safe"
    assert outcome.changes == [f"deleted {retention}/{name}" for name in expected]
    after = _tree(retention)
    assert set(after) == set(before) - set(expected)
    assert all(after[name] == before[name] for name in after)
    assert _tree(outside) == outside_before

    again = actions.delete_old_files([str(retention)], older_than_days=7, patterns=["*.gz"])
    assert again.status == "not_needed"


def test_retention_dry_run_changes_nothing(retention, outside):
    before, outside_before = _tree(retention), _tree(outside)
    outcome = actions.delete_old_files(retention, older_than_days=7, patterns="*.gz", dry_run=True)
    assert outcome.status == "would_do" and outcome.changes == []
    assert "would delete 3 files" in outcome.detail
    assert _tree(retention) == before and _tree(outside) == outside_before


def test_retention_non_recursive_and_several_patterns(retention):
    before = _tree(retention)
    outcome = actions.delete_old_files([retention], 7, patterns=("*.gz", "c.*"), recursive=False)
    assert outcome.changes == [f"deleted {retention}/a.log.gz", f"deleted {retention}/c.log"]
    assert set(_tree(retention)) == set(before) - {"a.log.gz", "c.log"}


def test_a_configured_symlink_is_resolved_and_reported_by_its_target(tmp_path, retention):
    alias = tmp_path / "alias"
    alias.symlink_to(retention)
    outcome = actions.delete_old_files([alias], 7, ["a.*"])
    assert outcome.changes == [f"deleted {retention}/a.log.gz"]
    assert alias.is_symlink()


def test_an_open_file_is_not_deleted(retention):
    with open(retention / "a.log.gz", "ab"):
        outcome = actions.delete_old_files([retention], 7, ["a.log.gz"])
    assert outcome.status == "not_needed" and "skipped 1 open for writing" in outcome.detail
    assert (retention / "a.log.gz").exists()


@pytest.mark.parametrize(
    "directory",
    ["/", "logs", "./logs", "~", "/etc", "/var", "/home", "/tmp", "/root", os.path.expanduser("~")],
)
def test_refuses_dangerous_directories(directory, retention):
    before = _tree(retention)
    with pytest.raises(ResponderError) as err:
        actions.delete_old_files([str(retention), directory], 7, ["*"], dry_run=True)
    assert err.value.code is ErrorCode.REFUSED
    assert _tree(retention) == before


def test_refuses_a_home_directory_and_its_parents_but_not_below(tmp_path, monkeypatch):
    home = tmp_path / "people" / "alice"
    _make(home / "notes.gz", b"precious", age_days=30)
    _make(home / ".pm2" / "logs" / "out.log.gz", b"old pm2 log", age_days=30)
    monkeypatch.setenv("HOME", str(home))
    for directory in (home, home.parent, tmp_path):
        with pytest.raises(ResponderError) as err:
            actions.delete_old_files([directory], 7, ["*.gz"])
        assert err.value.code is ErrorCode.REFUSED and "home directory" in err.value.message
    assert (home / "notes.gz").exists()
    outcome = actions.delete_old_files([home / ".pm2" / "logs"], 7, ["*.gz"])
    assert outcome.changes == [f"deleted {home}/.pm2/logs/out.log.gz"]
    assert (home / "notes.gz").read_bytes() == b"precious"


def test_refuses_a_symlink_that_resolves_to_root(tmp_path):
    (tmp_path / "innocent").symlink_to("/")
    with pytest.raises(ResponderError) as err:
        actions.delete_old_files([tmp_path / "innocent"], 7, ["*.gz"], dry_run=True)
    assert err.value.code is ErrorCode.REFUSED and "-> /" in err.value.message


def test_refuses_too_young_and_bad_configuration(retention):
    with pytest.raises(ResponderError) as err:
        actions.delete_old_files([retention], 0.5, ["*.gz"])
    assert err.value.code is ErrorCode.REFUSED
    for kwargs in ({"patterns": ["nested/*.gz"]}, {"patterns": []}, {"directories": []},
                   {"directories": [retention / "missing"]}, {"older_than_days": "7"}):
        args = {"directories": [retention], "older_than_days": 7, "patterns": ["*.gz"], **kwargs}
        with pytest.raises(ResponderError) as err:
            actions.delete_old_files(**args)
        assert err.value.code is ErrorCode.CONFIG
    assert (retention / "a.log.gz").exists()


# -- remove_temp_files --------------------------------------------------------------------


def test_remove_temp_files_in_a_temp_directory(tmp_path):
    d = tmp_path / "uploads-tmp"
    _make(d / "chunk-1", b"x" * 10, age_days=8)
    _make(d / "session" / "chunk-2", b"y", age_days=31)
    _make(d / "chunk-3", b"fresh", age_days=1)
    outcome = actions.remove_temp_files([d], older_than_days=7)
    assert outcome.changes == [f"deleted {d}/chunk-1", f"deleted {d}/session/chunk-2"]
    assert set(_tree(d)) == {"chunk-3", "session"}


def test_remove_temp_files_in_system_tmp_needs_a_literal_prefix():
    prefix = f"responder-act-{uuid.uuid4().hex[:10]}-"
    old, young = Path("/tmp", f"{prefix}old"), Path("/tmp", f"{prefix}young")
    try:
        _make(old, "old", age_days=8)
        _make(young, "young", age_days=1)
        for patterns in (["*"], [f"*{prefix}"], ["?tmp", f"{prefix}*"]):
            with pytest.raises(ResponderError) as err:
                actions.remove_temp_files(["/tmp"], 7, dry_run=True, patterns=patterns)
            assert err.value.code is ErrorCode.REFUSED
        with pytest.raises(ResponderError):
            actions.delete_old_files(["/tmp"], 7, [f"{prefix}*"], dry_run=True)

        outcome = actions.remove_temp_files(["/tmp"], 7, patterns=[f"{prefix}*"], recursive=False)
        assert outcome.changes == [f"deleted {old}"]
        assert not old.exists() and young.read_text() == "young"
    finally:
        old.unlink(missing_ok=True)
        young.unlink(missing_ok=True)
