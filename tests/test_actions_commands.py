"""run_configured_command / rollback_release / scale_service with real processes.

The commands are real argv lists, mostly ``[sys.executable, "-c", ...]``, that leave evidence in
``tmp_path`` (a marker file, a pid), so "it ran", "it did not run" and "its grandchild was
killed" are checked on the machine, not inferred from the outcome. Also checks ``ACTIONS``, the
tuple the registry merges.
"""

from __future__ import annotations

import inspect
import shutil
import sys
import time
from pathlib import Path

import psutil
import pytest

from tasks.actions import ACTIONS
from tasks.actions import commands as actions
from tasks.base import ErrorCode, ResponderError, Risk
from tasks.mitigations import REGISTRY

PY = sys.executable


def _touch(marker: Path) -> list[str]:
    return [PY, "-c", "import sys; open(sys.argv[1], 'w').write('ran')", str(marker)]


def test_runs_the_argv_and_reports_the_output_tail(tmp_path):
    marker = tmp_path / "marker"
    argv = [PY, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2]); print('x' * 2000 + ' restarted ok')",
            str(marker), "an argument with spaces; and $(no shell)"]
    outcome = REGISTRY["run_configured_command"].act("backend restart", argv)
    assert outcome.status == "done", outcome.detail
    assert outcome.risk is Risk.RISKY and outcome.target == "backend restart"
    assert outcome.changes == ["ran backend restart"]
    assert marker.read_text() == "an argument with spaces; and $(no shell)"  # one argv item, no shell parsing
    assert outcome.detail.endswith("restarted ok") and len(outcome.detail) < 1000


def test_a_non_zero_exit_is_failed_with_the_stderr_tail(tmp_path):
    argv = [PY, "-c", "import sys; sys.stderr.write('noise\\n' * 500 + 'deployment not found'); sys.exit(3)"]
    outcome = actions.rollback_release("medianest-backend", argv)
    assert outcome.status == "failed" and outcome.changes == []
    assert "exited 3" in outcome.detail and outcome.detail.endswith("deployment not found")
    assert len(outcome.detail) < 1000


def test_dry_run_does_not_run_it(tmp_path):
    marker = tmp_path / "marker"
    outcome = actions.run_configured_command("touch", _touch(marker), dry_run=True)
    assert outcome.status == "would_do" and outcome.dry_run is True and outcome.changes == []
    assert str(marker) in outcome.detail
    time.sleep(0.2)
    assert not marker.exists()


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    argv = [PY, "-c",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "open(sys.argv[1], 'w').write(str(child.pid))\n"
            "time.sleep(60)",
            str(pidfile)]
    started = time.monotonic()
    outcome = actions.run_configured_command("hangs", argv, timeout=1)
    assert time.monotonic() - started < 8
    assert outcome.status == "failed" and "timed out after 1 s" in outcome.detail
    grandchild = int(pidfile.read_text())
    # The pipes close (and communicate() returns) while the grandchild is still exiting, a moment
    # before the kernel shows it as a zombie: seen as "running" for about 2 ms in 1 of 10 runs.
    # Without the group kill it would sleep 60 s.
    assert _gone_within(grandchild, 5), f"grandchild {grandchild} still running 5 s after the timeout"


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


@pytest.mark.parametrize(
    "argv",
    [
        ["sh", "-c", "touch {marker}"],
        ["/bin/bash", "-c", "touch {marker}"],
        ["env", "FOO=1", "bash", "-c", "touch {marker}"],
        ["sudo", "-i"],
        ["su", "root", "-c", "touch {marker}"],
    ],
)
def test_refuses_a_shell(tmp_path, argv):
    marker = tmp_path / "marker"
    argv = [item.format(marker=marker) for item in argv]
    with pytest.raises(ResponderError) as err:
        actions.run_configured_command("shell", argv)
    assert err.value.code is ErrorCode.REFUSED and "shell" in err.value.message
    assert not marker.exists()


def test_allow_shell_permits_it():
    sh = shutil.which("sh")
    assert sh, "no sh on this host"
    outcome = actions.run_configured_command("arith", [sh, "-c", "echo $((6 * 7))"], allow_shell=True)
    assert outcome.status == "done" and outcome.detail.endswith("output: 42")


@pytest.mark.parametrize(
    "argv",
    [
        "systemctl restart medianest-backend",
        b"systemctl restart x",
        [],
        None,
        ["systemctl restart medianest-backend"],
        [PY, "-c", "pass", "&&", "rm", "-rf", "/nonexistent"],
        [PY, "-c", "pass", "|", "tee"],
        [PY, 3],
        ["responder-no-such-program-3f9a"],
    ],
)
def test_refuses_argv_that_cannot_be_right(argv):
    for dry_run in (True, False):
        with pytest.raises(ResponderError) as err:
            actions.run_configured_command("bad", argv, dry_run=dry_run)
        assert err.value.code is ErrorCode.CONFIG


def test_rollback_release_runs_the_configured_command(tmp_path):
    marker = tmp_path / "rolled-back"
    outcome = actions.rollback_release("medianest-backend", _touch(marker))
    assert outcome.status == "done" and outcome.action == "rollback_release"
    assert outcome.changes == ["rolled back medianest-backend"]
    assert marker.read_text() == "ran"


def test_scale_service_puts_the_replicas_into_the_argv(tmp_path):
    out = tmp_path / "scaled"
    argv = [PY, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", str(out), "--replicas={replicas}"]
    dry = actions.scale_service("workers", argv, replicas=4, dry_run=True)
    assert dry.status == "would_do" and "--replicas=4" in dry.detail and not out.exists()
    outcome = actions.scale_service("workers", argv, replicas=4)
    assert outcome.status == "done" and outcome.changes == ["scaled workers to 4 replicas"]
    assert out.read_text() == "--replicas=4"


@pytest.mark.parametrize(
    ("replicas", "placeholder", "code"),
    [(0, True, ErrorCode.REFUSED), (21, True, ErrorCode.REFUSED), (True, True, ErrorCode.REFUSED),
     (3, False, ErrorCode.CONFIG), (None, True, ErrorCode.CONFIG)],
)
def test_scale_service_refuses_bad_replicas(tmp_path, replicas, placeholder, code):
    marker = tmp_path / "marker"
    argv = [*_touch(marker), "--replicas={replicas}" if placeholder else "--replicas=2"]
    with pytest.raises(ResponderError) as err:
        actions.scale_service("workers", argv, replicas=replicas)
    assert err.value.code is code
    assert not marker.exists()


def test_actions_are_merged_into_the_registry():
    names = [m.name for m in ACTIONS]
    assert len(names) == len(set(names))
    assert all(REGISTRY[name].run is m.run for name, m in zip(names, ACTIONS))
    safe = {m.name for m in ACTIONS if m.risk is Risk.SAFE}
    assert safe == {"compress_old_logs", "delete_old_files", "remove_temp_files", "trigger_job"}
    for mitigation in ACTIONS:
        assert mitigation.run.__name__ == mitigation.name
        dry_run = inspect.signature(mitigation.run).parameters.get("dry_run")
        assert dry_run is not None and dry_run.default is False, mitigation.name
