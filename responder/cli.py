"""``responder``: run the responder and talk to it.

    responder up                  # intake + deployments + executor (+ embedded Prefect server)
    responder runbooks [--json]   # the catalog
    responder fire FILE           # post an Alertmanager body to the intake (demos)
    responder incidents [--all]   # open incidents: runbook, severity, age, state
    responder ack INCIDENT        # acknowledge: no further pages
    responder approve RUN --reason …   /   responder reject RUN --reason …
    responder drill               # the ResponderDrill fire drill
    responder maintenance start --service S [--runbook R] [--matchers 'k=v,…'] --for 2h --reason …
    responder maintenance list [--all] / end ID
    responder audit [--incident ID] [--since 24h] [--json]   # every decision, and who made it
    responder tokens add NAME / list / revoke NAME             # personal tokens (approve as NAME, verified)
    responder oncall [--at TIME]  # who each escalation level pages now, and who is next
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import re
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Coroutine

import httpx

from core.catalog import CatalogError, load_configuration, parse_matcher, read_overrides
from core.maintenance import from_row, parse_duration, recurring_in_force, start_window
from core.oncall import next_change, on_call
from core.services import build
from core.settings import ResponderSettings
from core.store import SchemaError, StoreUnavailable, open_store
from responder.docs import runbooks_markdown
from responder.embedded import (EmbeddedPrefectServer, default_prefect_home, limit_malloc_arenas,
                                no_csrf_tokens_when_unprotected, small_ca_file_for_plain_http)


def _fail(message: str, code: int = 2) -> int:
    print(f"responder: {message}", file=sys.stderr)
    return code


def load_catalog(settings: ResponderSettings):
    """The catalog in force: every runbook module's spec with this installation's ``config/``."""
    # heavy: the runbook modules import Prefect, which reads PREFECT_API_URL when imported (`up` sets it first)
    from flows.registry import load_catalog as load

    return load(settings.config_dir)


def cmd_runbooks(args: argparse.Namespace, settings: ResponderSettings) -> int:
    try:
        catalog = load_catalog(settings)
    except CatalogError as exc:
        return _fail(f"configuration error:\n{exc}")
    if args.markdown:
        sys.stdout.write(runbooks_markdown(catalog))
        return 0
    entries = [r.catalog_entry() for r in catalog.runbooks]
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for entry in entries:
            print(f"{entry['name']:<28} {entry['severity']:<9} {entry['flow']:<40} {', '.join(entry['alertnames'])}")
    return 0


def cmd_fire(args: argparse.Namespace, settings: ResponderSettings) -> int:
    path = Path(args.file)
    try:
        body = path.read_bytes()
    except OSError as exc:
        return _fail(f"cannot read {path}: {exc.strerror}")
    url = (args.url or settings.intake_url).rstrip("/") + "/alerts"
    token = settings.token().get_secret_value()
    try:
        response = httpx.post(
            url, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, timeout=15
        )
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach the intake at {url}: {exc}")
    print(f"{response.status_code} {response.text}")
    return 0 if response.is_success else 1


def cmd_incidents(args: argparse.Namespace, settings: ResponderSettings) -> int:
    url = settings.intake_url + "/incidents"
    token = settings.token().get_secret_value()
    try:
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10,
                             params={"status": "open"} if not args.all else None)
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach the intake at {url}: {exc}")
    if not response.is_success:
        return _fail(f"{response.status_code} {response.text}", 1)
    incidents = response.json()
    if args.json:
        print(json.dumps(incidents, indent=2))
        return 0
    now = datetime.now(timezone.utc)
    print(f"{'INCIDENT':<36}  {'STATE':<12} {'SEVERITY':<8} {'RUNBOOK':<26} {'AGE':>7}  WAITING ON / TITLE")
    for i in incidents:
        age = (now - datetime.fromisoformat(i["opened_at"])).total_seconds()
        state = "acknowledged" if i["status"] == "open" and i.get("acknowledged_at") else i["status"]
        age_text = f"{age / 3600:.1f}h" if age >= 3600 else f"{age / 60:.0f}m" if age >= 60 else f"{age:.0f}s"
        print(f"{i['id']:<36}  {state:<12} {i['severity']:<8} {i['runbook']:<26} {age_text:>7}  "
              f"{i.get('waiting_on') or i['close_reason'] or ''} — {i['title']}")
    if not incidents:
        print("no open incidents" if not args.all else "no incidents")
    return 0


def _intake(settings: ResponderSettings, method: str, path: str, **kwargs):
    url = settings.intake_url + path
    token = settings.token().get_secret_value()
    try:
        return httpx.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=15, **kwargs)
    except httpx.HTTPError as exc:
        raise SystemExit(_fail(f"cannot reach the intake at {url}: {exc}"))


def cmd_ack(args: argparse.Namespace, settings: ResponderSettings) -> int:
    response = _intake(settings, "POST", f"/incidents/{args.incident}/ack", json={"by": args.by})
    if not response.is_success:
        return _fail(f"{response.status_code}: {response.json().get('detail')}", 1)
    print(f"acknowledged {args.incident} as {response.json()['acknowledged_by']}")
    return 0


def cmd_answer(args: argparse.Namespace, settings: ResponderSettings) -> int:
    approve = args.command == "approve"
    if settings.user_token is not None:  # verified: through the responder, under the token's name
        url = f"{settings.intake_url}/runs/{args.run}/answer"
        try:
            response = httpx.post(url, json={"approve": approve, "reason": args.reason}, timeout=30,
                                  headers={"Authorization": f"Bearer {settings.user_token.get_secret_value()}"})
        except httpx.HTTPError as exc:
            return _fail(f"cannot reach the intake at {url}: {exc}")
        if not response.is_success:
            return _fail(f"{response.status_code}: {response.json().get('detail')}", 1)
        print(f"{'approved' if approve else 'rejected'} run {args.run} as {response.json()['by']} (verified): {args.reason}")
        return 0
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{os.environ.get('PREFECT_SERVER_API_PORT', '4200')}/api"
        auth = default_prefect_home() / "api-auth"  # the embedded server's login (`make run`)
        if not os.environ.get("PREFECT_API_AUTH_STRING") and auth.exists():
            os.environ["PREFECT_API_AUTH_STRING"] = auth.read_text().strip()
    # heavy: imports Prefect, which must read PREFECT_API_URL set just above
    from responder.approvals import ApprovalError, answer

    try:
        asyncio.run(answer(args.run, approve, args.reason, f"{args.by} (CLI)"))
    except ApprovalError as exc:
        return _fail(str(exc), 1)
    except Exception as exc:  # the Prefect server is not reachable
        return _fail(f"cannot reach the Prefect server at {os.environ['PREFECT_API_URL']}: {type(exc).__name__}: {exc}")
    print(f"{'approved' if approve else 'rejected'} run {args.run}: {args.reason}\n"
          f"(answered as {args.by} (CLI), not verified: where config/policy.yaml names approvers, an approval needs "
          "RESPONDER_USER_TOKEN, a personal token from `responder tokens add NAME`)")
    return 0


def cmd_drill(args: argparse.Namespace, settings: ResponderSettings) -> int:
    tag = uuid.uuid4().hex[:12]
    alert = {
        "status": "firing",
        "labels": {"alertname": "ResponderDrill", "severity": args.severity, "instance": "drill", "drill_id": tag},
        "annotations": {"summary": "Fire drill: nothing is wrong"},
        "startsAt": datetime.now(timezone.utc).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": tag,
    }
    body = {"version": "4", "groupKey": f"drill:{tag}", "truncatedAlerts": 0, "status": "firing", "receiver": "drill",
            "groupLabels": {"alertname": "ResponderDrill"}, "commonLabels": alert["labels"], "commonAnnotations": {},
            "externalURL": "", "alerts": [alert]}
    response = _intake(settings, "POST", "/alerts", json=body)
    if not response.is_success:
        return _fail(f"{response.status_code} {response.text}", 1)
    print(f"drill started: incident {response.json()['incidents_opened'][0]}")
    return 0


def _duration(value: str) -> timedelta:
    """``--for`` / ``--since``: 90s, 30m, 2h, 1d, 1h30m."""
    duration = parse_duration(value)
    if duration is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration such as 30m, 2h or 1h30m")
    if duration <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{value!r}: a window must last longer than nothing")
    return duration


def _matchers(value: str) -> list[str]:
    """``--matchers 'env=prod,instance=~"app-.*"'``: Alertmanager matchers, comma-separated."""
    matchers = [m.strip() for m in re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', value) if m.strip()]
    try:
        for matcher in matchers:
            parse_matcher(matcher)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return matchers


def _store(settings: ResponderSettings):
    url = settings.database_url.get_secret_value() if settings.database_url else None
    return open_store(url, settings.sqlite_path)


def cmd_maintenance(args: argparse.Namespace, settings: ResponderSettings) -> int:
    """Maintenance windows, in the store every responder reads (no running responder needed)."""
    try:
        store = _store(settings)
    except (StoreUnavailable, SchemaError) as exc:
        return _fail(f"cannot open the store: {exc}")
    # `start` checks the runbook it names against the runbooks; `list` and `end` need only the configuration
    catalog = load_catalog(settings) if args.action == "start" else load_configuration(settings.config_dir)
    now = datetime.now(timezone.utc)
    if args.action == "start":
        try:
            window = start_window(store, catalog, service=args.service, runbook=args.runbook,
                                  matchers=args.matchers or [], duration=args.duration, reason=args.reason,
                                  by=args.by, starts=args.starts)
        except ValueError as exc:
            return _fail(str(exc))
        print(f"maintenance window {window['id']} from {window['starts_at']} until {window['ends_at']}: {window['reason']}")
        return 0
    if args.action == "end":
        window = store.end_window(args.id, args.by, now)
        if window is None:
            return _fail(f"no maintenance window {args.id!r} (see `responder maintenance list --all`)", 1)
        print(f"maintenance window {args.id} ended at {window['ended_at']} by {window['ended_by']}; "
              "held incidents still firing get a fresh response")
        return 0
    rows = [from_row(row) for row in store.windows(None if args.all else now)]
    windows = rows + recurring_in_force(catalog, now)
    if args.json:
        print(json.dumps([{"id": w.id, "source": w.source, "service": w.scope.service, "runbook": w.scope.runbook,
                           "matchers": w.scope.matchers, "starts": w.starts.isoformat(), "ends": w.ends.isoformat(),
                           "reason": w.reason, "by": w.by} for w in windows], indent=2))
        return 0
    print(f"{'WINDOW':<28} {'SOURCE':<12} {'UNTIL (UTC)':<17} {'COVERS':<40} REASON (BY)")
    for w in windows:
        covers = ", ".join(filter(None, [w.scope.service and f"service={w.scope.service}",
                                         w.scope.runbook and f"runbook={w.scope.runbook}", *w.scope.matchers]))
        print(f"{w.id:<28} {w.source:<12} {w.ends:%Y-%m-%d %H:%M}  {covers:<40} {w.reason} ({w.by})")
    if not windows:
        print("no maintenance window in force" if not args.all else "no maintenance windows")
    recurring = catalog.maintenance.windows
    if recurring:
        print("recurring (config/maintenance.yaml): " + ", ".join(f"{r.name} [{r.cron} {r.timezone}, "
                                                                   f"{r.duration_minutes:g} min]" for r in recurring))
    return 0


def cmd_audit(args: argparse.Namespace, settings: ResponderSettings) -> int:
    """The audit trail from the store (no running responder needed)."""
    try:
        store = _store(settings)
        trail = store.audit(datetime.now(timezone.utc) - args.since, args.incident)
    except (StoreUnavailable, SchemaError) as exc:
        return _fail(f"cannot open the store: {exc}")
    if args.json:
        print(json.dumps(trail, indent=2))
        return 0
    for row in trail:
        incident = f" [{row['incident'][:8]}]" if row["incident"] else ""
        print(f"{row['at'][:19]}  {row['kind']:<16} {row['who'][:24]:<24}{incident} {row['what']}")
    if not trail:
        print("nothing in that period")
    return 0


def cmd_tokens(args: argparse.Namespace, settings: ResponderSettings) -> int:
    """Personal tokens, stored hashed: the token is shown once, when it is made."""
    try:
        store = _store(settings)
    except (StoreUnavailable, SchemaError) as exc:
        return _fail(f"cannot open the store: {exc}")
    if args.action == "add":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", args.name):
            return _fail(f"{args.name!r}: a name is letters, digits and . _ @ - (as in oncall.yaml)")
        token = store.add_token(args.name)
        print(f"personal token of {args.name} (shown once; give it to them, they set RESPONDER_USER_TOKEN):\n{token}")
        return 0
    if args.action == "revoke":
        revoked = store.revoke_tokens(args.name)
        if not revoked:
            return _fail(f"{args.name!r} has no valid token", 1)
        print(f"revoked {revoked} token(s) of {args.name}")
        return 0
    for row in store.tokens():
        print(f"{row['name']:<24} made {row['created_at'][:19]}  {'revoked ' + row['revoked_at'][:19] if row['revoked_at'] else 'valid'}")
    return 0


def _iso_time(value: str) -> datetime:
    """``--at``: ISO 8601; without an offset, this machine's local time."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 time (e.g. 2024-03-31T09:00:00+02:00 or 2024-03-31T07:00Z)") from None
    return at if at.tzinfo is not None else at.astimezone()


def cmd_oncall(args: argparse.Namespace, settings: ResponderSettings) -> int:
    """Who each level of each escalation policy pages at ``--at`` (default now), and who is next and when;
    from the catalog alone (no responder needs to run)."""
    catalog = load_configuration(settings.config_dir)  # a CatalogError is reported by main()
    oncall, at = catalog.oncall, args.at or datetime.now(timezone.utc)

    def named(person) -> str:
        ids = ", ".join(f"{key} {value}" for key, value in person.identities().items() if key != "name")
        return f"{person.name} [{ids}]" if ids else person.name

    def pages(level, last: bool) -> str:
        if level.who is not None:
            return f"{level.who} (fixed handle)"
        if level.person is not None:
            return f"person {level.person}: {named(oncall.person(level.person))}"
        rotation = oncall.rotations[level.rotation]
        zone = rotation.zone

        def when(moment: datetime) -> str:
            return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")

        current = on_call(oncall, level.rotation, at)
        if current is None:
            then = "no later level: the page tells the channels" if last else "the next level is paged at once"
            text = f"nobody on call (the rotation begins {when(rotation.begins)}): {then}"
        else:
            cover = next((o for o in reversed(oncall.overrides) if o.covers(level.rotation, at)), None)
            text = named(current) + (f", override until {when(cover.until)}" if cover else "")
        change = next_change(oncall, level.rotation, at)
        if change is None:
            return f"rotation {level.rotation}: {text}; no hand-off ahead"
        moment, following = change
        return f"rotation {level.rotation}: {text}; next {following.name if following else 'nobody'} from {when(moment)}"

    print(f"On call at {at.isoformat(timespec='minutes')}")
    for severity, steps in catalog.escalation.policies.items():
        print(f"\npolicy {severity}" + (" (every other severity)" if severity == "default" else "") + ":")
        for index, step in enumerate(steps):
            level = catalog.escalation.levels[step.level]
            title = f" {level.title}:" if level.title else ""
            print(f"  level {step.level} (+{step.after_minutes:g} min){title} {pages(level, index == len(steps) - 1)}")
    return 0


def cmd_up(args: argparse.Namespace, settings: ResponderSettings) -> int:
    limit_malloc_arenas()
    try:
        read_overrides(settings.config_dir)  # the catalog files' own errors, before anything starts
    except CatalogError as exc:
        return _fail(f"configuration error:\n{exc}")
    try:
        db_url = settings.database_url.get_secret_value() if settings.database_url else None
        store = open_store(db_url, settings.sqlite_path)
    except (StoreUnavailable, SchemaError, ValueError) as exc:
        return _fail(f"cannot open the alert store: {exc}")
    except Exception as exc:  # psycopg raises its own OperationalError family
        return _fail(f"cannot open the alert store: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    embedded = None
    if not os.environ.get("PREFECT_API_URL"):
        home = Path(os.environ.get("PREFECT_HOME") or default_prefect_home())
        os.environ["PREFECT_HOME"] = str(home)
        port = int(os.environ.get("PREFECT_SERVER_API_PORT", "4200"))
        embedded = EmbeddedPrefectServer(home, port, kind=settings.embedded_server)
        print(f"Starting the embedded Prefect server (SQLite under {home}, {settings.embedded_server}) …", flush=True)
        try:
            embedded.start()
        except RuntimeError as exc:
            return _fail(str(exc))
        os.environ["PREFECT_API_URL"] = embedded.api_url
        os.environ["PREFECT_API_AUTH_STRING"] = embedded.auth_string()  # this process's Prefect clients log in
        no_csrf_tokens_when_unprotected(embedded.api_url, embedded.auth_string())
        ui = f"{embedded.ui_url}   (login: {embedded.auth_file if not os.environ.get('PREFECT_SERVER_API_AUTH_STRING') else 'PREFECT_SERVER_API_AUTH_STRING'})"
    else:
        ui = os.environ["PREFECT_API_URL"].rstrip("/").removesuffix("/api")
    small_ca_file_for_plain_http(os.environ["PREFECT_API_URL"], settings.home)

    from responder.intake import create_app  # heavy: imports Prefect, which must read PREFECT_API_URL set just above
    from responder.runtime import Responder  # heavy: imports Prefect, which must read PREFECT_API_URL set just above

    try:
        catalog = load_catalog(settings)
    except CatalogError as exc:
        if embedded:
            embedded.stop()
        return _fail(f"configuration error:\n{exc}")
    responder = Responder(build(settings, catalog, store))  # the process's one set of services

    app = create_app(responder)
    token_hint = "RESPONDER_INTAKE_TOKEN" if settings.intake_token else str(settings.home / "intake-token")
    print(
        f"Prefect UI:    {ui}\n"
        f"Alert intake:  {settings.intake_url}/alerts   (bearer token: {token_hint})\n"
        f"Health:        {settings.intake_url}/healthz   Metrics: {settings.intake_url}/metrics\n"
        f"Runbooks:      {', '.join(r.name for r in catalog.runbooks)}\n"
        "Ctrl-C stops everything this command started.",
        flush=True,
    )
    def stop_on_sigterm(signum, frame):  # a service manager's stop is Ctrl-C too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        _run_loop(responder.serve(app))
    except KeyboardInterrupt:
        print("\nStopping …", flush=True)
    finally:
        _drain_prefect_workers()
        if embedded:
            embedded.stop()
    return 0


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """The responder's event loop (the intake, event delivery, the executor's claims) is uvloop's where it
    is installed, asyncio's otherwise. Measured with bench/intake.py (single-alert posts, 16 clients,
    SQLite, five interleaved pairs): 1,195-1,577 alerts/s on asyncio's loop, 1,300-1,627 on uvloop's,
    p99 25-34 ms → 22-28 ms; 50-alert posts unchanged (their bound is the store's writer thread)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without it (uvloop builds for Linux and macOS)
        asyncio.run(main)
        return
    uvloop.run(main)


def _drain_prefect_workers(timeout: float = 5) -> None:
    """Send buffered run logs and events now, while the Prefect server still answers.

    Otherwise Prefect's exit hooks try to send them after an embedded server has stopped, and
    retry for minutes before the process can exit.
    """
    try:
        # heavy: Prefect, not needed by light commands (only `up` calls this, once Prefect is loaded)
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
    except ImportError:
        return
    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception as exc:  # a server already gone: nothing more to send
            print(f"responder: could not flush {worker.__name__}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="responder", description="Prometheus Alertmanager alerts → Prefect runbook flows")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the intake, the runbook deployments and (unless PREFECT_API_URL is set) a Prefect server")
    p = sub.add_parser("runbooks", help="list the runbook catalog")
    p.add_argument("--json", action="store_true", help="print the catalog as a JSON list")
    p.add_argument("--markdown", action="store_true", help="print docs/runbooks.md (generated from the catalog)")
    p = sub.add_parser("fire", help="post an Alertmanager webhook body to the intake")
    p.add_argument("file")
    p.add_argument("--url", help="intake base URL (default from RESPONDER_INTAKE_PORT)")
    p = sub.add_parser("incidents", help="list open incidents")
    p.add_argument("--all", action="store_true", help="closed ones too")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("ack", help="acknowledge an incident (stops further pages)")
    p.add_argument("incident")
    p.add_argument("--by", default=os.environ.get("USER", "someone"))
    for name, text in (("approve", "let a paused risky step run"), ("reject", "refuse a paused risky step")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="the paused flow run id")
        p.add_argument("--reason", required=True)
        p.add_argument("--by", default=os.environ.get("USER", "someone"))
    p = sub.add_parser("drill", help="start the ResponderDrill fire drill")
    p.add_argument("--severity", default="warning", choices=["info", "warning", "critical"])
    p = sub.add_parser("maintenance", help="maintenance windows: no mitigation runs and pages wait while one covers an alert")
    windows = p.add_subparsers(dest="action", required=True)
    start = windows.add_parser("start", help="start a window (covers what all of --service, --runbook, --matchers match)")
    start.add_argument("--service", help="the alerts' `service` label (a service of targets.yaml)")
    start.add_argument("--runbook", help="a runbook of the catalog (`responder runbooks`)")
    start.add_argument("--matchers", type=_matchers, help="Alertmanager matchers, e.g. 'env=prod,instance=~\"app-.*\"'")
    start.add_argument("--for", dest="duration", type=_duration, required=True, help="how long: 30m, 2h, 1h30m")
    start.add_argument("--from", dest="starts", type=_iso_time, help="ISO 8601 start (default: now)")
    start.add_argument("--reason", required=True)
    start.add_argument("--by", default=os.environ.get("USER", "someone"))
    listing = windows.add_parser("list", help="windows in force (and recurring ones)")
    listing.add_argument("--all", action="store_true", help="past and future stored windows too")
    listing.add_argument("--json", action="store_true")
    end = windows.add_parser("end", help="end a window now; incidents it held that still fire get a fresh response")
    end.add_argument("id")
    end.add_argument("--by", default=os.environ.get("USER", "someone"))
    p = sub.add_parser("tokens", help="personal tokens: answers given with one are verified under its name")
    tokens = p.add_subparsers(dest="action", required=True)
    tokens.add_parser("add", help="make a token for NAME (shown once)").add_argument("name")
    tokens.add_parser("revoke", help="revoke every token of NAME").add_argument("name")
    tokens.add_parser("list", help="who has tokens (never the tokens)")
    p = sub.add_parser("audit", help="every decision (alerts, actions, approvals, pages, windows) and who made it")
    p.add_argument("--since", type=_duration, default=timedelta(hours=24), help="how far back: 30m, 24h, 7d (default 24h)")
    p.add_argument("--incident", help="only this incident")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("oncall", help="who each escalation level pages now (rotations in oncall.yaml), and who is next")
    p.add_argument("--at", type=_iso_time, help="ISO 8601 time to ask about instead of now (no offset: local time)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = ResponderSettings()
    except Exception as exc:
        return _fail(f"bad RESPONDER_* setting: {exc}")
    try:
        commands = {"up": cmd_up, "runbooks": cmd_runbooks, "fire": cmd_fire, "incidents": cmd_incidents,
                    "ack": cmd_ack, "approve": cmd_answer, "reject": cmd_answer, "drill": cmd_drill,
                    "oncall": cmd_oncall, "maintenance": cmd_maintenance, "audit": cmd_audit,
                    "tokens": cmd_tokens}
        return commands[args.command](args, settings)
    except CatalogError as exc:
        return _fail(f"configuration error:\n{exc}")


if __name__ == "__main__":
    sys.exit(main())
