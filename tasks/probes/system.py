"""Host probes (psutil) for the infrastructure alerts of the seed runbooks.

Defaults quote the seeds:

* ``cpu_percent``: HIGH_CPU_USAGE "CPU usage >80% for 5 minutes" (seeds 000, 004).
* ``load_average``: "Check system load: uptime / cat /proc/loadavg" (seed 000); the seeds give
  no figure, so the default of 1.0 per core (every core busy) is ours.
* ``top_processes``: "ps aux --sort=-%cpu | head -10" / "ps aux --sort=-%mem | head -10".
* ``memory``: HIGH_MEMORY_USAGE "Memory usage >85% for 3 minutes" (seeds 000, 004; seed 001 uses
  90 %, seed 002 alerts at 92 %), with swap ("swapon -s") in the evidence.
* ``disk_usage``: DISK_SPACE_CRITICAL "Disk usage >90%" (seeds 000, 004; seed 001 says 85 %).
* ``largest_entries``: "du -sh /* | sort -hr", "find / -type f -size +100M", bounded.
* ``log_dir_sizes``: "du -sh logs/; ls -lh logs/" and seed 002's log compression step.

These read the host the responder runs on; they cannot see another machine (``tasks.probes.hosts``
decides when they apply, and ``tasks.probes.node`` reads other machines through Prometheus).
"""

from __future__ import annotations

import heapq
import os
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil

from tasks.base import ErrorCode, ProbeResult, ResponderError
from tasks.probes import clip, human_bytes

CMDLINE_LIMIT = 200
COMPRESSED_SUFFIXES = (".gz", ".zst", ".xz", ".bz2", ".zip", ".lz4")


def cpu_percent(threshold: float = 80.0, interval: float = 1.0) -> ProbeResult:
    """Whole-host CPU utilisation over ``interval`` seconds; not ok above ``threshold`` %."""
    per_cpu = psutil.cpu_percent(interval=interval, percpu=True)
    value = round(sum(per_cpu) / len(per_cpu), 1)
    return ProbeResult(
        probe="cpu_percent",
        ok=value <= threshold,
        value=value,
        threshold=threshold,
        unit="%",
        summary=f"CPU {value:g}% over {interval:g}s on {len(per_cpu)} cores",
        evidence={"per_cpu": per_cpu, "cores": len(per_cpu), "interval_s": interval},
    )


def load_average(threshold_per_core: float = 1.0) -> ProbeResult:
    """5-minute load average divided by logical cores; not ok above ``threshold_per_core``.

    The 5-minute figure matches the alert's "for 5 minutes"; 1- and 15-minute figures are in
    the evidence so a rising or falling trend is visible.
    """
    load1, load5, load15 = psutil.getloadavg()
    cores = psutil.cpu_count(logical=True) or 1
    value = round(load5 / cores, 2)
    return ProbeResult(
        probe="load_average",
        ok=value <= threshold_per_core,
        value=value,
        threshold=threshold_per_core,
        unit=" per core",
        summary=f"load {load1:.2f} {load5:.2f} {load15:.2f} on {cores} cores",
        evidence={"load1": load1, "load5": load5, "load15": load15, "cores": cores},
    )


def top_processes(
    by: Literal["cpu", "memory"] = "cpu", n: int = 10, interval: float = 0.5
) -> ProbeResult:
    """The ``n`` processes using the most CPU or memory, like ``ps aux --sort=-%cpu | head``.

    Per-process CPU needs two samples, so this blocks for ``interval`` seconds. CPU percent is
    per core (a process spinning on two cores shows 200). Evidence only: always ``ok``.
    """
    if by not in ("cpu", "memory"):
        raise ResponderError(ErrorCode.CONFIG, f"top_processes: by must be 'cpu' or 'memory', not {by!r}")
    if n < 1:
        raise ResponderError(ErrorCode.CONFIG, f"top_processes: n must be at least 1, not {n}")

    procs = list(psutil.process_iter(["pid", "name", "username"]))
    for proc in procs:
        try:
            proc.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            # A process that exits between listing and sampling is simply not a top process.
            continue
    time.sleep(interval)

    rows: list[dict[str, Any]] = []
    for proc in procs:
        try:
            with proc.oneshot():
                cpu = proc.cpu_percent(None)
                mem = proc.memory_percent()
                started = proc.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            # Gone, or a figure we may not read: it cannot be ranked, and a made-up 0 would lie.
            continue
        try:
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            cmdline = None
        rows.append(
            {
                "pid": proc.info["pid"],
                "name": proc.info["name"],
                "username": proc.info["username"],
                "cpu_percent": round(cpu, 1),
                "memory_percent": round(mem, 2),
                "cmdline": clip(cmdline, CMDLINE_LIMIT),
                "create_time": started,  # a later action checks the pid is still this process
            }
        )

    key = "cpu_percent" if by == "cpu" else "memory_percent"
    top = heapq.nlargest(n, rows, key=lambda row: row[key])
    head = top[0] if top else None
    return ProbeResult(
        probe=f"top_processes_{by}",
        ok=True,
        value=head[key] if head else None,
        unit="%",
        summary=f"top by {by}: pid {head['pid']} {head['name']}" if head else "no processes visible",
        evidence={"by": by, "interval_s": interval, "processes": top},
    )


def memory(threshold: float = 85.0) -> ProbeResult:
    """RAM in use as a percentage; not ok above ``threshold``. Swap figures are evidence."""
    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    return ProbeResult(
        probe="memory",
        ok=vm.percent <= threshold,
        value=vm.percent,
        threshold=threshold,
        unit="%",
        summary=f"{vm.available / 2**30:.1f} GiB available of {vm.total / 2**30:.1f} GiB; swap {sw.percent:g}% used",
        evidence={
            "total_bytes": vm.total,
            "available_bytes": vm.available,
            "used_bytes": vm.used,
            "percent": vm.percent,
            "swap_total_bytes": sw.total,
            "swap_used_bytes": sw.used,
            "swap_percent": sw.percent,
        },
    )


def swap() -> ProbeResult:
    """``swapon -s``: evidence only (seed 000's table: "Memory pressure: high swap usage")."""
    sw = psutil.swap_memory()
    summary = f"{human_bytes(sw.used)} of {human_bytes(sw.total)} swap used" if sw.total else "no swap configured"
    return ProbeResult(
        probe="swap", ok=True, value=sw.percent, unit="%", summary=summary,
        evidence={"total_bytes": sw.total, "used_bytes": sw.used, "sin_bytes": sw.sin, "sout_bytes": sw.sout},
    )


def disk_usage(paths: Sequence[str] | None = None, threshold: float = 90.0) -> ProbeResult:
    """Usage of each filesystem holding ``paths`` (default: every mounted device), like ``df -h``.

    Not ok when any is above ``threshold`` %. The percentage excludes root-reserved blocks, as
    ``df`` does. A path that does not exist is a configuration error.
    """
    targets: list[tuple[str, str, str]]
    if paths is None:
        targets = [(p.mountpoint, p.device, p.fstype) for p in psutil.disk_partitions(all=False)]
    else:
        targets = [(str(path), "", "") for path in paths]
    if not targets:
        raise ResponderError(ErrorCode.CONFIG, "disk_usage: no paths to check")

    mounts = []
    for path, device, fstype in targets:
        try:
            du = psutil.disk_usage(path)
        except FileNotFoundError as exc:
            raise ResponderError(ErrorCode.CONFIG, f"disk_usage: {path} does not exist") from exc
        mounts.append(
            {
                "path": path,
                "device": device,
                "fstype": fstype,
                "total_bytes": du.total,
                "used_bytes": du.used,
                "free_bytes": du.free,
                "percent": du.percent,
            }
        )

    worst = max(mounts, key=lambda m: m["percent"])
    over = [m["path"] for m in mounts if m["percent"] > threshold]
    return ProbeResult(
        probe="disk_usage",
        ok=not over,
        value=worst["percent"],
        threshold=threshold,
        unit="%",
        summary=(f"over threshold: {', '.join(over)}" if over else f"fullest: {worst['path']}"),
        evidence={"mounts": mounts},
    )


@dataclass
class _Scan:
    """Running state of one bounded walk."""

    n: int
    max_entries: int
    max_depth: int
    one_file_system: bool
    entries: int = 0
    truncated: bool = False
    errors: list[str] = field(default_factory=list)
    files: list[tuple[int, str]] = field(default_factory=list)  # min-heap of the n largest
    dirs: list[tuple[int, str]] = field(default_factory=list)
    compressed_bytes: int = 0
    file_count: int = 0

    def keep(self, heap: list[tuple[int, str]], size: int, path: str) -> None:
        if len(heap) < self.n:
            heapq.heappush(heap, (size, path))
        elif size > heap[0][0]:
            heapq.heapreplace(heap, (size, path))

    def walk(self, path: str, device: int, depth: int) -> int:
        """Apparent size of the files under ``path``; symlinks are neither followed nor counted."""
        total = 0
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            # An unreadable directory must not stop the survey of the rest; it is reported.
            self.errors.append(f"{path}: {exc.strerror or exc}")
            return 0
        for entry in entries:
            if self.entries >= self.max_entries:
                self.truncated = True
                break
            self.entries += 1
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                self.errors.append(f"{entry.path}: {exc.strerror or exc}")
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode):
                if self.one_file_system and st.st_dev != device:
                    continue
                if depth >= self.max_depth:
                    self.truncated = True
                    continue
                size = self.walk(entry.path, device, depth + 1)
                self.keep(self.dirs, size, entry.path)
                total += size
            elif stat.S_ISREG(st.st_mode):
                self.file_count += 1
                if entry.name.endswith(COMPRESSED_SUFFIXES):
                    self.compressed_bytes += st.st_size
                self.keep(self.files, st.st_size, entry.path)
                total += st.st_size
        return total


def _root_device(path: str) -> int:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError as exc:
        raise ResponderError(ErrorCode.CONFIG, f"{path} does not exist") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ResponderError(ErrorCode.CONFIG, f"{path} is not a directory")
    return st.st_dev


def _ranked(heap: Iterable[tuple[int, str]]) -> list[dict[str, Any]]:
    return [{"path": path, "size_bytes": size} for size, path in sorted(heap, key=lambda t: (-t[0], t[1]))]


def largest_entries(
    paths: Sequence[str],
    n: int = 10,
    max_entries: int = 200_000,
    max_depth: int = 32,
    one_file_system: bool = True,
) -> ProbeResult:
    """The ``n`` largest directories and files under each of ``paths`` (``du | sort -hr``).

    Sizes are apparent sizes (``st_size``), not allocated blocks. The walk does not follow or
    count symlinks, stays on each root's filesystem unless ``one_file_system`` is false, and
    stops after ``max_entries`` directory entries or ``max_depth`` levels (then
    ``evidence["truncated"]`` is true and totals are lower bounds). Unreadable directories are
    listed in ``evidence["errors"]``. Evidence only: always ``ok``.
    """
    if not paths:
        raise ResponderError(ErrorCode.CONFIG, "largest_entries: no paths to scan")
    scan = _Scan(n=n, max_entries=max_entries, max_depth=max_depth, one_file_system=one_file_system)
    roots: list[dict[str, Any]] = []
    for path in paths:
        path = str(path)
        device = _root_device(path)
        roots.append({"path": path, "size_bytes": scan.walk(path, device, 0)})
    total = sum(r["size_bytes"] for r in roots)
    return ProbeResult(
        probe="largest_entries",
        ok=True,
        value=float(total),
        unit="B",
        summary=f"{human_bytes(total)} under {len(roots)} path(s); {scan.entries} entries scanned"
        + (" (truncated)" if scan.truncated else ""),
        evidence={
            "roots": roots,
            "dirs": _ranked(scan.dirs),
            "files": _ranked(scan.files),
            "entries_scanned": scan.entries,
            "truncated": scan.truncated,
            "errors": scan.errors[:50],
        },
    )


def log_dir_sizes(
    paths: Sequence[str],
    threshold_bytes: int | None = None,
    largest: int = 5,
    max_entries: int = 200_000,
) -> ProbeResult:
    """Total size, file count, compressed share and largest files of each log directory.

    Not ok when a ``threshold_bytes`` is given and any directory exceeds it. The compressed
    figure (``.gz``, ``.zst``, ...) tells a log-compression step (seed 002) how much is left
    to gain.
    """
    if not paths:
        raise ResponderError(ErrorCode.CONFIG, "log_dir_sizes: no paths to measure")
    dirs: list[dict[str, Any]] = []
    for path in paths:
        path = str(path)
        device = _root_device(path)
        scan = _Scan(n=largest, max_entries=max_entries, max_depth=32, one_file_system=True)
        size = scan.walk(path, device, 0)
        dirs.append(
            {
                "path": path,
                "size_bytes": size,
                "files": scan.file_count,
                "compressed_bytes": scan.compressed_bytes,
                "uncompressed_bytes": size - scan.compressed_bytes,
                "largest_files": _ranked(scan.files),
                "truncated": scan.truncated,
                "errors": scan.errors[:20],
            }
        )
    biggest = max(dirs, key=lambda d: d["size_bytes"])
    over = [d["path"] for d in dirs if threshold_bytes is not None and d["size_bytes"] > threshold_bytes]
    return ProbeResult(
        probe="log_dir_sizes",
        ok=not over,
        value=float(biggest["size_bytes"]),
        threshold=None if threshold_bytes is None else float(threshold_bytes),
        unit="B",
        summary=(f"over threshold: {', '.join(over)}" if over else f"largest: {biggest['path']}")
        + f" ({human_bytes(biggest['size_bytes'])})",
        evidence={"dirs": dirs},
    )
