"""Configured commands: restart, rollback and scale steps as argv lists, never shell strings.

Seed 000 "Recovery Procedures" (``docker-compose restart medianest-backend``, ``pm2 restart
all``, ``kubectl rollout restart deployment/medianest-backend``, ``kubectl rollout undo
deployment/medianest-backend``) and seed 001 ("Rollback deployment immediately", "Scale up
workers") name commands that differ per installation, so each comes from
``config/targets.yaml`` as an argv list and an alert only selects which one runs::

    services:
      medianest-backend:
        rollback: [kubectl, rollout, undo, deployment/medianest-backend]
        scale: [kubectl, scale, deployment/medianest-backend, "--replicas={replicas}"]

The runner (:func:`run_configured_command`, reusable by any action):

* takes a list of strings, run without a shell. Refused: a string (``ResponderError(CONFIG)``),
  an empty list, non-string items, a program name with spaces, an item that is a shell operator
  (``|``, ``&&``, ``;``, ``>`` ...: the author expected a shell), and, unless
  ``allow_shell=True``, a shell as the program (``sh -c ...``, ``env bash -c ...``,
  ``su -c ...``, ``sudo -i``: ``ResponderError(REFUSED)``);
* checks that the program exists before a dry run reports ``would_do``, so a typo surfaces
  when the runbook is rehearsed, not during the incident;
* runs it in its own process group with stdin closed (a prompt fails instead of hanging) and,
  on ``timeout``, kills the whole group (``subprocess.run`` kills only the child, and a
  grandchild holding the pipes would keep it waiting);
* returns ``failed`` with the stderr tail on a non-zero exit or a timeout, ``done`` with the
  output tail otherwise. It never raises for a command that ran and failed, so the task retry
  around a mitigation cannot run a rollback twice.

A command cannot be re-checked the way a pid can: whether a rollback is still needed is the
runbook's question, and ``kubectl rollout undo`` run twice undoes the undo. Prefer
``--to-revision`` and rely on the loop guard. All three mitigations here are risky.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.base import ActionOutcome, ErrorCode, ResponderError

SHELLS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "csh", "tcsh", "fish", "busybox", "pwsh", "powershell"}
)
# Programs that run another program given as a later argument.
WRAPPERS = frozenset(
    {"env", "sudo", "doas", "nice", "nohup", "setsid", "timeout", "stdbuf", "ionice", "chrt", "time", "xargs",
     "chroot", "unshare", "nsenter", "flock", "runuser", "su"}
)
# Programs that start a shell when given one of these options (su/runuser -c, sudo -s/-i).
SHELL_OPTIONS = {"su": {"-c", "--command", "-s", "--shell", "-l", "--login", "-"},
                 "runuser": {"-c", "--command", "-s", "--shell", "-l", "--login", "-"},
                 "sudo": {"-s", "--shell", "-i", "--login"}}
SHELL_OPERATORS = frozenset(
    {"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "<<<", "2>", "2>>", "2>&1", "&>", "|&", "`", "$("}
)
TAIL_CHARS = 500
KILL_GRACE_S = 5.0
PLACEHOLDER = "{replicas}"


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None: killed after the timeout
    stdout: str  # tails, at most TAIL_CHARS each
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= TAIL_CHARS else "…" + text[-(TAIL_CHARS - 1):]


def check_argv(argv: Sequence[str], allow_shell: bool = False) -> list[str]:
    """Validate a configured argv; returns it as a list. Raises ``ResponderError`` when refused."""
    if isinstance(argv, (str, bytes)):
        raise ResponderError(
            ErrorCode.CONFIG, f"command {argv!r} is a string; configure an argv list such as [systemctl, restart, name]"
        )
    items = list(argv or ())
    if not items:
        raise ResponderError(ErrorCode.CONFIG, "no command configured (empty argv)")
    for item in items:
        if not isinstance(item, str) or "\0" in item:
            raise ResponderError(ErrorCode.CONFIG, f"command {items!r}: every item must be a string, not {item!r}")
    if not items[0].strip() or any(ch.isspace() for ch in items[0]):
        raise ResponderError(
            ErrorCode.CONFIG, f"command {items!r}: the program {items[0]!r} has spaces; give each argument as its own item"
        )
    operators = [item for item in items if item.strip() in SHELL_OPERATORS]
    if operators:
        raise ResponderError(
            ErrorCode.CONFIG, f"command {items!r} contains shell syntax {operators!r}, but it runs without a shell"
        )
    if not allow_shell:
        names = [os.path.basename(item) for item in items]
        program = names[0]
        via_shell = program in SHELLS
        if program in WRAPPERS:
            via_shell = any(name in SHELLS for name in names[1:]) or bool(SHELL_OPTIONS.get(program, set()) & set(items[1:]))
        if via_shell:
            raise ResponderError(
                ErrorCode.REFUSED, f"refusing to run {shlex.join(items)!r}: it runs a shell (set allow_shell to permit it)"
            )
    return items


def _check_program(argv: list[str]) -> None:
    program = argv[0]
    found = (os.path.isfile(program) and os.access(program, os.X_OK)) if "/" in program else shutil.which(program)
    if not found:
        raise ResponderError(ErrorCode.CONFIG, f"program {program!r} is not an executable on this host")


def run_argv(argv: list[str], timeout: float) -> CommandResult:
    """Run a checked argv without a shell; kill its whole process group after ``timeout`` seconds."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError) as exc:
        raise ResponderError(ErrorCode.CONFIG, f"cannot run {argv[0]!r}: {exc.strerror}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        out, err = _kill_group(proc)
        returncode = None
    return CommandResult(tuple(argv), returncode, _tail(out), _tail(err), round(time.monotonic() - started, 3))


def _kill_group(proc: subprocess.Popen[str]) -> tuple[str, str]:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            continue
    # Something outside the group still holds the pipes: stop reading, keep what we cannot get.
    proc.kill()
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return "", ""


def _run(
    action: str, target: str, argv: Sequence[str], dry_run: bool, timeout: float, allow_shell: bool, change: str
) -> ActionOutcome:
    base = dict(action=action, target=target, dry_run=dry_run)
    items = check_argv(argv, allow_shell)
    if not timeout or timeout <= 0:
        raise ResponderError(ErrorCode.CONFIG, f"{action}: timeout must be > 0 seconds, not {timeout!r}")
    _check_program(items)
    shown = shlex.join(items)
    if dry_run:
        return ActionOutcome(**base, status="would_do", detail=f"would run {shown} (timeout {timeout:g} s)")
    result = run_argv(items, timeout)
    if result.returncode is None:
        return ActionOutcome(
            **base, status="failed",
            detail=f"{shown} timed out after {timeout:g} s and was killed; stderr: {result.stderr or '(none)'}",
        )
    if not result.ok:
        return ActionOutcome(
            **base, status="failed",
            detail=f"{shown} exited {result.returncode} after {result.duration_s:g} s; stderr: {result.stderr or '(none)'}",
        )
    return ActionOutcome(
        **base, status="done",
        detail=f"ran {shown} in {result.duration_s:g} s; output: {result.stdout or result.stderr or '(none)'}",
        changes=[change],
    )


def run_configured_command(
    name: str, argv: Sequence[str], dry_run: bool = False, timeout: float = 120, allow_shell: bool = False
) -> ActionOutcome:
    """Run one configured command (``name`` says which, for the report); see the module docstring."""
    return _run("run_configured_command", name, argv, dry_run, timeout, allow_shell, f"ran {name}")


def restart_service(service: str, argv: Sequence[str], dry_run: bool = False, timeout: float = 120) -> ActionOutcome:
    """Seed 000 "Service Restart Procedures": the service's configured restart argv."""
    return _run("restart_service", service, argv, dry_run, timeout, False, f"restarted {service}")


def rollback_release(
    service: str, argv: Sequence[str], dry_run: bool = False, timeout: float = 300
) -> ActionOutcome:
    """Seed 000 "Application rollback", seed 001 "Rollback deployment immediately": the configured rollback argv."""
    return _run("rollback_release", service, argv, dry_run, timeout, False, f"rolled back {service}")


def scale_service(
    service: str,
    argv: Sequence[str],
    dry_run: bool = False,
    timeout: float = 120,
    replicas: int | None = None,
    max_replicas: int = 20,
) -> ActionOutcome:
    """Seed 001 "Scale up workers" / "Scale horizontally": the configured scale argv.

    With ``replicas``, every ``{replicas}`` in the argv becomes that number (1..``max_replicas``;
    scaling to zero is an outage, not a mitigation). Without it the argv must not contain the
    placeholder.
    """
    items = check_argv(argv)
    has_placeholder = any(PLACEHOLDER in item for item in items)
    if replicas is None:
        if has_placeholder:
            raise ResponderError(ErrorCode.CONFIG, f"scale command for {service!r} needs replicas for {PLACEHOLDER}")
        change = f"scaled {service}"
    else:
        if not has_placeholder:
            raise ResponderError(ErrorCode.CONFIG, f"scale command for {service!r} has no {PLACEHOLDER} to put replicas in")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= max_replicas:
            raise ResponderError(
                ErrorCode.REFUSED, f"refusing to scale {service!r} to {replicas!r} replicas (allowed 1..{max_replicas})"
            )
        items = [item.replace(PLACEHOLDER, str(replicas)) for item in items]
        change = f"scaled {service} to {replicas} replicas"
    return _run("scale_service", service, items, dry_run, timeout, False, change)
