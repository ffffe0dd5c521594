"""``docs/runbooks.md``, generated from the catalog and the flows' own docstrings.

Regenerate with ``responder runbooks --markdown > docs/runbooks.md``; a test fails when the file
is not current, so the documentation cannot drift from what actually runs.
"""

from __future__ import annotations

import importlib
import inspect

from core.catalog import Catalog, Runbook


def _flow_doc(flow_path: str) -> tuple[str, str]:
    module_name, attr = flow_path.split(":")
    module = importlib.import_module(module_name)
    flow = getattr(module, attr)
    fn = getattr(flow, "fn", flow)
    return inspect.getdoc(module) or "", inspect.getdoc(fn) or ""


def _value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _thresholds_table(runbook: Runbook) -> list[str]:
    """The runbook's typed thresholds: the value in force, per alert spelling where it differs, and the seed's words."""
    model = runbook.limits_model
    if not model.model_fields:
        return []
    general = runbook.limits(model)
    lines = ["", "| threshold | value | per alert spelling | from |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        value = getattr(general, name)
        overridden = name in runbook.thresholds
        spelled = [f"`{a}`: {_value(getattr(runbook.limits(model, a), name))}" for a in runbook.alertnames
                   if getattr(runbook.limits(model, a), name) != value]
        source = f"{field.description or ''}" + (f" (catalog overrides the default {_value(field.default)})" if overridden else "")
        lines.append(f"| `{name}` | {_value(value)} | {', '.join(spelled) or '—'} | {source} |")
    return lines


def runbooks_markdown(catalog: Catalog) -> str:
    lines = [
        "# Runbooks",
        "",
        "Generated from the runbooks' specs and typed thresholds (`flows/`), this installation's `config/runbooks/*.yaml` "
        "and the flows' docstrings by "
        "`responder runbooks --markdown`; do not edit by hand.",
        "",
        "Legend: **automated** steps run by themselves; **risky** actions run only after a human approves "
        "(Prefect UI Resume form, `responder approve`, or Slack); **evidence** is gathered for the people paged; "
        "**left to humans** lists what the responder deliberately does not do, and why.",
        "",
        "| runbook | alert names | severity | schedules | seeds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in catalog.runbooks:
        lines.append(f"| [{r.name}](#{r.name}) | {', '.join(f'`{a}`' for a in r.alertnames) or '—'} | {r.severity} | "
                     f"{', '.join(f'`{c}`' for c in r.schedules) or '—'} | {'; '.join(s.split(':')[0] for s in r.seeds)} |")
    for r in catalog.runbooks:
        module_doc, flow_doc = _flow_doc(r.flow)
        lines += ["", f"## {r.name}", "", f"**{r.title}** — flow `{r.flow}`", ""]
        if r.alertnames:
            lines.append(f"Started by: {', '.join(f'`{a}`' for a in r.alertnames)}  ")
        if r.schedules:
            lines.append(f"Scheduled: {', '.join(f'`{c}`' for c in r.schedules)}  ")
        lines += ["", "Seed sections:", ""] + [f"- {s}" for s in r.seeds]
        lines += _thresholds_table(r)
        lines += ["", "### Steps", "", module_doc or flow_doc or "(no description)"]
        if r.mitigations:
            lines += ["", "### Actions", "", "| action | risk | runs |", "| --- | --- | --- |"]
            lines += [f"| `{m.name}` | {m.risk.value} | {'after approval' if m.risk.value == 'risky' else 'automatically'} |"
                      for m in r.mitigations]
        if r.left_to_humans:
            lines += ["", "### Left to humans", ""] + [f"- {item}" for item in r.left_to_humans]
        lines += ["", f"Verification: up to {r.verify.budget_seconds:g} s, every {r.verify.interval_seconds:g} s. "
                  f"Approval deadline: {r.approval_timeout_seconds:g} s (then: not approved, escalate)."]
    return "\n".join(lines) + "\n"
