"""``responder``: run the responder and talk to it.

    responder up                  # intake + deployments + executor (+ embedded Prefect server)
    responder runbooks [--json]   # the catalog
    responder fire FILE           # post an Alertmanager body to the intake (demos)
    responder incidents [--all]   # open incidents: runbook, severity, age, state
    responder ack INCIDENT        # acknowledge: no further pages
    responder approve RUN --reason …   /   responder reject RUN --reason …
    responder drill               # the ResponderDrill fire drill
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx

from core.catalog import CatalogError, load_catalog
from core.services import build
from core.settings import ResponderSettings
from core.store import SchemaError, StoreUnavailable, open_store
from responder.docs import runbooks_markdown
from responder.embedded import EmbeddedPrefectServer, default_prefect_home


def _fail(message: str, code: int = 2) -> int:
    print(f"responder: {message}", file=sys.stderr)
    return code


def cmd_runbooks(args: argparse.Namespace, settings: ResponderSettings) -> int:
    try:
        catalog = load_catalog(settings.config_dir)
        catalog.resolve_flows()  # the thresholds in force are the runbooks' typed models with this catalog's overrides
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
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{os.environ.get('PREFECT_SERVER_API_PORT', '4200')}/api"
    # heavy: imports Prefect, which must read PREFECT_API_URL set just above
    from responder.approvals import ApprovalError, answer

    approve = args.command == "approve"
    try:
        asyncio.run(answer(args.run, approve, args.reason, f"{args.by} (CLI)"))
    except ApprovalError as exc:
        return _fail(str(exc), 1)
    except Exception as exc:  # the Prefect server is not reachable
        return _fail(f"cannot reach the Prefect server at {os.environ['PREFECT_API_URL']}: {type(exc).__name__}: {exc}")
    print(f"{'approved' if approve else 'rejected'} run {args.run}: {args.reason}")
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


def cmd_up(args: argparse.Namespace, settings: ResponderSettings) -> int:
    try:
        catalog = load_catalog(settings.config_dir)
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
        ui = embedded.ui_url
    else:
        ui = os.environ["PREFECT_API_URL"].rstrip("/").removesuffix("/api")

    from responder.intake import create_app  # heavy: imports Prefect, which must read PREFECT_API_URL set just above
    from responder.runtime import Responder  # heavy: imports Prefect, which must read PREFECT_API_URL set just above

    responder = Responder(build(settings, catalog, store))  # the process's one set of services
    try:
        responder.catalog.resolve_flows()
    except CatalogError as exc:
        if embedded:
            embedded.stop()
        return _fail(f"configuration error:\n{exc}")

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
        asyncio.run(responder.serve(app))
    except KeyboardInterrupt:
        print("\nStopping …", flush=True)
    finally:
        _drain_prefect_workers()
        if embedded:
            embedded.stop()
    return 0


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = ResponderSettings()
    except Exception as exc:
        return _fail(f"bad RESPONDER_* setting: {exc}")
    try:
        commands = {"up": cmd_up, "runbooks": cmd_runbooks, "fire": cmd_fire, "incidents": cmd_incidents,
                    "ack": cmd_ack, "approve": cmd_answer, "reject": cmd_answer, "drill": cmd_drill}
        return commands[args.command](args, settings)
    except CatalogError as exc:
        return _fail(f"configuration error:\n{exc}")


if __name__ == "__main__":
    sys.exit(main())
