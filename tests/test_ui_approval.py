"""A person approves in the Prefect UI: headless Chromium (Debian `chromium`, driven by Playwright
with `executable_path`, no browser download) opens the paused drill run, sees the Resume form with
its description and evidence, turns `approve` on, fills the reason and name, submits, and the run
carries on to Resolved.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from support.common import BIN, ROOT, wait_for
from support.prefect import runs_for_incident, wait_run_final
from support.responder import make_config, running_responder

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def test_a_person_approves_from_the_prefect_ui(prefect_server, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Chromium is not installed: apt-get install chromium (make test does this)")
    from playwright.sync_api import sync_playwright

    with running_responder(tmp_path, prefect_server.api_url, make_config(tmp_path)) as responder:
        out = subprocess.run([str(BIN / "responder"), "drill"], env=responder.env, cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        incident = out.stdout.split()[-1]
        run = wait_for(lambda: next((r for r in runs_for_incident(prefect_server.api_url, incident)
                                     if r["state"]["type"] == "PAUSED"), None), 60, what="the paused drill")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{prefect_server.api_url.removesuffix('/api')}/runs/flow-run/{run['id']}",
                          wait_until="networkidle")
                page.get_by_role("button", name="Resume").first.click()
                dialog = page.get_by_role("dialog")
                dialog.get_by_text("Approve: drill_step").wait_for(timeout=30000)
                assert "Evidence" in dialog.inner_text() and "this is a drill" in dialog.inner_text()
                dialog.get_by_role("switch").first.click()
                boxes = dialog.locator("textarea")
                boxes.nth(0).fill("rehearsal, approved in the UI")
                boxes.nth(1).fill("ivy")
                # Closing the browser the moment Submit is clicked can drop the UI's resume request
                # (seen on a loaded machine: the run stayed Paused); wait for the server's answer.
                with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(f"/flow_runs/{run['id']}/resume"),
                                          timeout=30000) as resumed:
                    dialog.get_by_role("button", name="Submit").click()
                assert resumed.value.ok, (resumed.value.status, resumed.value.text())
                assert resumed.value.json()["status"] == "ACCEPT", resumed.value.text()
            finally:
                browser.close()
        final = wait_run_final(prefect_server.api_url, incident)
        assert final["state"]["name"] == "Resolved", final["state"]
        artifact = wait_for(lambda: __import__("httpx").post(f"{prefect_server.api_url}/artifacts/filter", json={
            "artifacts": {"key": {"any_": [f"response-{incident}"]}}}).json(), 20, what="the report")[0]["data"]
        assert "approved by ivy" in artifact
