"""File mitigations for a full disk: compress old logs, delete files past retention, clean temp files.

Seed 002 "Disk Space Low", resolution steps, and seed 001 ``disk_usage`` ("Rotate/compress/delete
old logs", "Clean up temporary files")::

    gzip *.log.1 *.log.2                                         -> compress_old_logs
    find /var/log/auto-author -name "*.gz" -mtime +7 -delete     -> delete_old_files
    find /tmp -name "auto-author-*" -mtime +7 -delete            -> remove_temp_files
    find /var/lib/auto-author/uploads -mtime +30 -delete         -> delete_old_files (patterns=("*",))

Directories, patterns and ages come from the configuration, never from an alert. What every
action guarantees:

* **Only the configured directories.** Each must be an absolute path to an existing directory;
  it is resolved once (a configured symlink is followed to its target, and the target is what is
  checked), then walked through directory file descriptors with ``O_NOFOLLOW``: a symlink inside
  is never followed, not even one swapped in while the action runs, and the walk never crosses
  into another filesystem (``find -xdev``). Recursive by default, like ``find``.
* **Refused roots** (``ResponderError(REFUSED)``): relative paths, ``/`` and every directory
  directly under it (``/etc``, ``/var``, ``/home``, ``/tmp`` ...), and any user's home directory
  or a directory containing one (so ``/var/lib``, which holds ``/var/lib/postgresql``, is
  refused). ``remove_temp_files`` alone may use ``/tmp``, and there only with patterns that
  start with a literal name (``auto-author-*``, never ``*``), as seed 002 does.
* **Only regular files** whose *name* matches one of the patterns (``fnmatch``, like
  ``find -name``) and whose mtime is older than ``older_than_days`` (exact seconds, where
  ``find -mtime +7`` rounds to whole days). Symlinks, sockets, FIFOs and devices are never touched.
* **Never a file being written.** Files some process holds open for writing are skipped (best
  effort: other users' processes are only visible to root), and ``compress_old_logs`` also skips
  anything modified in the last ``quiet_minutes``.
* **Exact report.** ``changes`` lists every file changed, one entry per file
  (``compressed /d/a.log -> /d/a.log.gz``, ``deleted /d/old.gz``); a dry run changes nothing and
  lists what it would do in ``detail``. A file that fails (permission, disk full) is reported in
  ``detail`` and the others still run; the status is ``failed`` only when nothing succeeded.

Risk: all three are **safe**, and that decision rests on the rules above. Compression loses
nothing (``gunzip`` restores the file, mtime included). Deletion loses data, but only data the
configuration has declared expendable: a retention directory, a name pattern and an age, the same
rule seed 002 puts into ``/etc/cron.daily`` to run unattended. Deletion also demands
``older_than_days >= 1``. Pointing these actions at data someone needs is a configuration
mistake that review must catch, not something an approval prompt at 3 a.m. would.

Wiring (``config/targets.yaml``)::

    compress_old_logs(["/var/log/auto-author"], older_than_days=1, patterns=("*.log.[0-9]*",))
    delete_old_files(["/var/log/auto-author"], older_than_days=7, patterns=("*.gz",))
"""

from __future__ import annotations

import errno
import fnmatch
import gzip
import os
import pwd
import shutil
import stat
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import psutil

from tasks.base import ActionOutcome, ErrorCode, ResponderError
from tasks.probes import human_bytes

PathLike = str | os.PathLike[str]

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".lz", ".zip", ".7z", ".tgz")
SYSTEM_TMP = "/tmp"
LISTED_IN_DETAIL = 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass
class _Report:
    action: str
    dry_run: bool
    changes: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    def outcome(self, target: str, verb: str) -> ActionOutcome:
        base = dict(action=self.action, target=target, dry_run=self.dry_run)
        skipped = "".join(f"; skipped {n} {why}" for why, n in sorted(self.skipped.items()))
        errors = f"; {len(self.errors)} failed: {'; '.join(self.errors[:5])}" if self.errors else ""
        if self.dry_run and self.planned:
            listed = ", ".join(self.planned[:LISTED_IN_DETAIL])
            more = f" and {len(self.planned) - LISTED_IN_DETAIL} more" if len(self.planned) > LISTED_IN_DETAIL else ""
            return ActionOutcome(
                **base, status="would_do",
                detail=f"would {verb} {len(self.planned)} files ({human_bytes(self.bytes_before)}): {listed}{more}{skipped}",
            )
        if not self.changes and not self.errors:
            return ActionOutcome(**base, status="not_needed", detail=f"no file to {verb}{skipped}")
        if not self.changes:
            return ActionOutcome(**base, status="failed", detail=f"nothing changed{errors}{skipped}")
        freed = self.bytes_before - self.bytes_after
        return ActionOutcome(
            **base, status="done",
            detail=f"{verb}{'d' if verb.endswith('e') else 'ed'} {len(self.changes)} files,"
            f" freed {human_bytes(freed)}{errors}{skipped}",
            changes=list(self.changes),
        )


# -- which directories and files -----------------------------------------------------------


def _as_list(value: PathLike | Sequence[PathLike], what: str) -> list[str]:
    """A single path or pattern is one item (iterating a ``str`` would make ``*`` of ``*.log``)."""
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value or ())
    if not items:
        raise ResponderError(ErrorCode.CONFIG, f"no {what} configured")
    out = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)) or not os.fspath(item) or "\0" in os.fspath(item):
            raise ResponderError(ErrorCode.CONFIG, f"{what}: {item!r} is not a usable value")
        out.append(os.fspath(item))
    return out


def _home_directories() -> set[str]:
    homes = {os.path.realpath(os.path.expanduser("~"))}
    for entry in pwd.getpwall():
        if entry.pw_dir and entry.pw_dir.startswith("/"):
            homes.add(os.path.normpath(entry.pw_dir))
            homes.add(os.path.realpath(entry.pw_dir))
    return homes


def _roots(directories: PathLike | Sequence[PathLike], allow_system_tmp: bool = False) -> list[str]:
    """The configured directories, resolved and checked; refuses the ones no cleanup may touch."""
    roots: list[str] = []
    homes = _home_directories()
    for configured in _as_list(directories, "directories"):
        if not os.path.isabs(configured):
            raise ResponderError(
                ErrorCode.REFUSED, f"refusing relative directory {configured!r}: configure an absolute path"
            )
        real = os.path.realpath(configured)
        shown = configured if real == os.path.normpath(configured) else f"{configured} (-> {real})"
        if real == SYSTEM_TMP and allow_system_tmp:
            pass
        elif os.path.dirname(real) == "/":
            raise ResponderError(
                ErrorCode.REFUSED, f"refusing {shown}: '/' and the directories directly under it are off limits"
            )
        for home in homes:
            if home != "/" and (real == home or home.startswith(real.rstrip("/") + "/")):
                raise ResponderError(ErrorCode.REFUSED, f"refusing {shown}: it is or contains the home directory {home}")
        if not os.path.isdir(real):
            raise ResponderError(ErrorCode.CONFIG, f"directory {shown} does not exist")
        if real not in roots:
            roots.append(real)
    return roots


def _days(action: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ResponderError(ErrorCode.CONFIG, f"{action}: {name} must be a number, not {value!r}")


def _patterns(patterns: str | Sequence[str]) -> list[str]:
    out = _as_list(patterns, "patterns")
    for pattern in out:
        if "/" in pattern:
            raise ResponderError(ErrorCode.CONFIG, f"pattern {pattern!r} must match a file name, not a path")
    return out


def _writers(roots: list[str]) -> set[str]:
    """Files under ``roots`` some process holds open for writing (best effort: what we may see)."""
    prefixes = tuple(root.rstrip("/") + "/" for root in roots)
    held: set[str] = set()
    for proc in psutil.process_iter():
        try:
            for f in proc.open_files():
                if f.path.startswith(prefixes) and getattr(f, "mode", "w") != "r":
                    held.add(f.path)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return held


@dataclass(frozen=True)
class _File:
    dir_fd: int
    path: str
    name: str
    st: os.stat_result


def _walk(root: str, recursive: bool, skipped: Counter[str]) -> Iterator[_File]:
    """Regular files under ``root``, through directory fds: no symlink is followed, no mount crossed."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        yield from _walk_fd(fd, root, os.fstat(fd).st_dev, recursive, skipped)
    finally:
        os.close(fd)


def _walk_fd(fd: int, path: str, dev: int, recursive: bool, skipped: Counter[str]) -> Iterator[_File]:
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    subdirs = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            yield _File(fd, os.path.join(path, entry.name), entry.name, st)
        elif stat.S_ISDIR(st.st_mode) and recursive and st.st_dev == dev:
            subdirs.append(entry.name)
    for name in subdirs:
        try:
            sub = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
        except PermissionError:
            skipped["unreadable directories"] += 1
            continue
        except OSError:  # removed, or replaced by a symlink, since the listing
            continue
        try:
            if os.fstat(sub).st_dev == dev:
                yield from _walk_fd(sub, os.path.join(path, name), dev, recursive, skipped)
        finally:
            os.close(sub)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _candidates(
    roots: list[str], patterns: list[str], cutoff: float, recursive: bool, report: _Report
) -> Iterator[_File]:
    writers = _writers(roots)
    for root in roots:
        for f in _walk(root, recursive, report.skipped):
            if not any(fnmatch.fnmatchcase(f.name, p) for p in patterns) or f.st.st_mtime >= cutoff:
                continue
            if f.path in writers:
                report.skipped["open for writing"] += 1
                continue
            yield f


def _error(f: _File, exc: OSError) -> str:
    return f"{f.path}: {exc.strerror or exc}"


# -- compress ---------------------------------------------------------------------------


def compress_old_logs(
    directories: PathLike | Sequence[PathLike],
    older_than_days: float,
    patterns: str | Sequence[str] = ("*.log",),
    dry_run: bool = False,
    quiet_minutes: float = 10.0,
    recursive: bool = True,
) -> ActionOutcome:
    """gzip matching files older than ``older_than_days`` in place (``a.log`` -> ``a.log.gz``).

    Like ``gzip``: the ``.gz`` keeps the file's mtime, atime, mode and (as root) owner, and the
    original is removed only once the ``.gz`` is complete and the original did not change
    meanwhile. Skipped: names with a compression suffix or gzip content, files with other hard
    links, files whose ``.gz`` already exists, files modified in the last ``quiet_minutes``.
    """
    _days("compress_old_logs", older_than_days=older_than_days, quiet_minutes=quiet_minutes)
    if older_than_days < 0 or quiet_minutes < 0:
        raise ResponderError(ErrorCode.CONFIG, "compress_old_logs: older_than_days and quiet_minutes must be >= 0")
    roots, names = _roots(directories), _patterns(patterns)
    report = _Report("compress_old_logs", dry_run)
    cutoff = time.time() - max(older_than_days * 86400, quiet_minutes * 60)
    for f in _candidates(roots, names, cutoff, recursive, report):
        if f.name.endswith(COMPRESSED_SUFFIXES):
            report.skipped["already compressed"] += 1
            continue
        if f.st.st_nlink > 1:
            report.skipped["with other hard links"] += 1
            continue
        try:
            _compress(f, report)
        except OSError as exc:
            report.errors.append(_error(f, exc))
    return report.outcome(", ".join(roots), "compress")


def _open_source(name: str, dir_fd: int) -> int:
    """Open for reading without following a symlink; without touching atime where allowed (owner or root)."""
    try:
        return os.open(name, _FILE_FLAGS | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _compress(f: _File, report: _Report) -> None:
    gz_name = f.name + ".gz"
    if _exists(gz_name, f.dir_fd):
        report.skipped["whose .gz already exists"] += 1
        return
    src = _open_source(f.name, f.dir_fd)
    with os.fdopen(src, "rb") as source:
        if not _same(os.fstat(src), f.st):
            report.skipped["changed since the scan"] += 1
            return
        if source.read(2) == b"\x1f\x8b":
            report.skipped["already compressed"] += 1
            return
        if report.dry_run:
            report.planned.append(f.path)
            report.bytes_before += f.st.st_size
            return
        source.seek(0)
        tmp = f".{f.name}.{uuid.uuid4().hex[:8]}.tmp"
        out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=f.dir_fd)
        placed = False
        try:
            with os.fdopen(out_fd, "wb") as out:
                with gzip.GzipFile(filename=f.name, mode="wb", fileobj=out, mtime=int(f.st.st_mtime)) as gz:
                    shutil.copyfileobj(source, gz, 1024 * 1024)
                out.flush()
                os.fsync(out_fd)
                os.fchmod(out_fd, stat.S_IMODE(f.st.st_mode))
                if os.geteuid() == 0:
                    os.fchown(out_fd, f.st.st_uid, f.st.st_gid)
                os.utime(out_fd, ns=(f.st.st_atime_ns, f.st.st_mtime_ns))
                gz_size = os.fstat(out_fd).st_size
            if not _same(os.fstat(src), f.st):
                report.skipped["written to while compressing"] += 1
                return
            _place(tmp, gz_name, f.dir_fd)
            placed = True
        finally:
            if not placed:
                _unlink_quietly(tmp, f.dir_fd)
    current = os.stat(f.name, dir_fd=f.dir_fd, follow_symlinks=False)
    if not _same(current, f.st):  # replaced after we read it: keep both, report it
        report.errors.append(f"{f.path}: changed while compressing; kept it next to {gz_name}")
        return
    os.unlink(f.name, dir_fd=f.dir_fd)
    report.changes.append(f"compressed {f.path} -> {f.path}.gz")
    report.bytes_before += f.st.st_size
    report.bytes_after += gz_size


def _place(tmp: str, final: str, dir_fd: int) -> None:
    """Give the finished temp file its final name without ever replacing an existing file."""
    try:
        os.link(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        if _exists(final, dir_fd):  # no hard links on this filesystem: check, then rename
            raise FileExistsError(errno.EEXIST, "the .gz appeared meanwhile", final) from None
        os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    os.unlink(tmp, dir_fd=dir_fd)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


# -- delete -----------------------------------------------------------------------------


def _delete(
    action: Literal["delete_old_files", "remove_temp_files"],
    directories: PathLike | Sequence[PathLike],
    older_than_days: float,
    patterns: str | Sequence[str],
    dry_run: bool,
    recursive: bool,
) -> ActionOutcome:
    _days(action, older_than_days=older_than_days)
    if older_than_days < 1:
        raise ResponderError(
            ErrorCode.REFUSED, f"{action}: refusing older_than_days={older_than_days!r}; retention is at least 1 day"
        )
    names = _patterns(patterns)
    roots = _roots(directories, allow_system_tmp=action == "remove_temp_files")
    if SYSTEM_TMP in roots and any(p[0] in "*?[" for p in names):
        raise ResponderError(
            ErrorCode.REFUSED,
            f"{action}: in {SYSTEM_TMP} every pattern must start with a literal name (like 'myapp-*'), not {names!r}",
        )
    report = _Report(action, dry_run)
    cutoff = time.time() - older_than_days * 86400
    for f in _candidates(roots, names, cutoff, recursive, report):
        if dry_run:
            report.planned.append(f.path)
            report.bytes_before += f.st.st_size
            continue
        try:
            current = os.stat(f.name, dir_fd=f.dir_fd, follow_symlinks=False)
            if not _same(current, f.st):
                report.skipped["changed since the scan"] += 1
                continue
            os.unlink(f.name, dir_fd=f.dir_fd)
        except FileNotFoundError:
            report.skipped["already gone"] += 1
            continue
        except OSError as exc:
            report.errors.append(_error(f, exc))
            continue
        report.changes.append(f"deleted {f.path}")
        report.bytes_before += f.st.st_size
    return report.outcome(", ".join(roots), "delete")


def delete_old_files(
    directories: PathLike | Sequence[PathLike],
    older_than_days: float,
    patterns: str | Sequence[str],
    dry_run: bool = False,
    recursive: bool = True,
) -> ActionOutcome:
    """Retention (seed 002 ``find DIR -name PATTERN -mtime +N -delete``): delete matching old files."""
    return _delete("delete_old_files", directories, older_than_days, patterns, dry_run, recursive)


def remove_temp_files(
    directories: PathLike | Sequence[PathLike],
    older_than_days: float,
    dry_run: bool = False,
    patterns: str | Sequence[str] = ("*",),
    recursive: bool = True,
) -> ActionOutcome:
    """Seed 001/002 "Remove temporary files": delete old files in temp directories.

    The same rules as :func:`delete_old_files`; ``/tmp`` itself is allowed, with literal-prefix
    patterns only (seed 002: ``find /tmp -name "auto-author-*" -mtime +7 -delete``).
    """
    return _delete("remove_temp_files", directories, older_than_days, patterns, dry_run, recursive)
