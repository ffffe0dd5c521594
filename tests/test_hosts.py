"""The host runbooks measure the machine that alerted: this one with psutil, another through Prometheus.

Real things: a real Prometheus (1 s scrapes) scraping this machine's real node_exporter (Debian
``prometheus-node-exporter``) and a second target that serves node_exporter-format series (and
process-exporter series) for another machine, ``web-3``, whose CPU, memory and ``/data`` disk are
nearly full. That target is a stand-in for a second machine, which cannot run here: it is a small
HTTP server of this test (``AppTarget``) whose instance label Prometheus sets to ``web-3:9100``. A
third one, ``web-4``, is stopped to show what a machine that stopped reporting looks like. The
runbooks run in the real ``responder up`` against the suite's real Prefect server.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import psutil
import pytest

from tasks.probes import hosts
from support.common import free_port, wait_for
from support.prefect import answer, form_description, paused_run, report, wait_run_final
from support.prometheus import AppTarget, PrometheusServer, binary, stop_process
from support.responder import fire, make_config, running_responder

GiB = 2**30
WEB3 = "web-3:9100"


def set_cpu(target: AppTarget, cores: int, busy: float) -> None:
    """node_cpu_seconds_total growing so that each core is ``busy`` (0..1) busy."""
    for cpu in range(cores):
        for mode, share in (("user", busy * 0.9), ("system", busy * 0.1), ("idle", 1 - busy), ("iowait", 0.0)):
            target.rate("node_cpu_seconds_total", {"cpu": str(cpu), "mode": mode}, share)


def busy_machine() -> AppTarget:
    """web-3: 4 cores 95 % busy, 95 % of 64 GiB memory in use, /data 98 % full, ffmpeg on top."""
    target = AppTarget()
    set_cpu(target, cores=4, busy=0.95)
    for name, value in (("node_load1", 7.8), ("node_load5", 7.2), ("node_load15", 5.0),
                        ("node_memory_MemTotal_bytes", 64 * GiB), ("node_memory_MemAvailable_bytes", 3.2 * GiB),
                        ("node_memory_SwapTotal_bytes", 4 * GiB), ("node_memory_SwapFree_bytes", 1 * GiB)):
        target.gauge(name, None, value)
    filesystems = [  # (device, fstype, mountpoint, size, free, avail, readonly)
        ("/dev/nvme0n1p2", "ext4", "/", 100 * GiB, 40 * GiB, 35 * GiB, 0),
        ("/dev/nvme1n1", "xfs", "/data", 1024 * GiB, 20 * GiB, 20 * GiB, 0),
        ("tmpfs", "tmpfs", "/run", 1 * GiB, 0, 0, 0),                     # pseudo: ignored
        ("/dev/sr0", "iso9660", "/media/cdrom", 4 * GiB, 0, 0, 1),      # read-only: ignored
        ("/dev/nvme2n1", "ext4", "/srv/archive", 10 * GiB, 0, 0, 1),   # read-only: ignored
    ]
    for device, fstype, mountpoint, size, free, avail, readonly in filesystems:
        labels = {"device": device, "fstype": fstype, "mountpoint": mountpoint}
        for name, value in (("size_bytes", size), ("free_bytes", free), ("avail_bytes", avail), ("readonly", readonly)):
            target.gauge(f"node_filesystem_{name}", labels, value)
    for group, cpu, resident, procs in (("ffmpeg", 3.2, 2 * GiB, 3), ("nginx", 0.1, 0.2 * GiB, 5)):
        target.rate("namedprocess_namegroup_cpu_seconds_total", {"groupname": group, "mode": "user"}, cpu)
        target.gauge("namedprocess_namegroup_memory_bytes", {"groupname": group, "memtype": "resident"}, resident)
        target.gauge("namedprocess_namegroup_num_procs", {"groupname": group}, procs)
    return target


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """node_exporter of this machine, web-3 (busy), web-4 (stopped after a few scrapes), one Prometheus."""
    port = free_port()
    exporter = subprocess.Popen([binary("prometheus-node-exporter", "node_exporter"),
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    web3, web4 = busy_machine(), busy_machine()
    prom = PrometheusServer(
        tmp_path_factory.mktemp("prometheus-hosts"),
        jobs={"node": [f"127.0.0.1:{port}"], "web-3": [f"127.0.0.1:{web3.port}"], "web-4": [f"127.0.0.1:{web4.port}"]},
        labels={"web-3": {"instance": WEB3}, "web-4": {"instance": "web-4:9100"}},
    )
    try:
        for job in ("node", "web-3", "web-4"):
            prom.wait_scraped(job, scrapes=3)
        web4.close()  # web-4 stops answering: Prometheus marks its series stale at the next scrape
        wait_for(lambda: prom.query('up{job="web-4"} == 0'), 10, what="web-4 to be seen down")
        yield {"prometheus": prom, "local": f"127.0.0.1:{port}", "web3": web3}
    finally:
        prom.stop()
        web3.close()
        stop_process(exporter)


def config(**overrides) -> hosts.HostTargets:
    return hosts.HostTargets(**{"stale_after_seconds": 10, "rate_window": "5s", **overrides})


# -- where the figures come from ---------------------------------------------------------------


def test_locate_tells_this_machine_from_others(fleet):
    url = fleet["prometheus"].url
    here = hosts.locate(fleet["local"], config(), url)
    assert here.how == "local" and here.measured_by.startswith("psutil on this machine")
    assert hosts.locate(f"{socket.gethostname()}:9100", config(), url).how == "local"  # any port
    assert hosts.locate("app-1:3000", config(local=["app-1"]), url).how == "local"   # named local in config
    # A responder in a container: its own addresses are not the machine that alerted.
    assert hosts.locate(fleet["local"], config(detect_local=False), url).how == "prometheus"

    web3 = hosts.locate(WEB3, config(), url)
    assert (web3.how, web3.node_instance) == ("prometheus", WEB3)
    assert hosts.locate("web-3:3000", config(), url).node_instance == WEB3  # the app port of the same machine


def test_a_machine_that_cannot_be_measured_says_why(fleet):
    url = fleet["prometheus"].url
    unknown = hosts.locate("web-9:9100", config(), url)
    assert unknown.how == "unmeasured" and "Prometheus has no series for web-9" in unknown.detail
    stopped = hosts.locate("web-4:9100", config(), url)
    assert stopped.how == "unmeasured" and "up=0" in stopped.detail, stopped.detail
    assert "no instance label" in hosts.locate("", config(), url).detail
    assert "not a host name" in hosts.locate('web-3"} or vector(1) #', config(), url).detail
    assert "no Prometheus is configured" in hosts.locate(WEB3, config(), None).detail
    closed = f"http://127.0.0.1:{free_port()}"
    assert "Prometheus did not answer" in hosts.locate(WEB3, config(), closed).detail
    # Every figure of such a machine is "not measured" and never healthy.
    for result in (hosts.cpu_percent(unknown, url, 80), hosts.memory(stopped, url, 85),
                   hosts.disk_usage(unknown, url, ["/"], 90)):
        assert not result.ok and result.evidence["unmeasured"] and result.value is None, result


def test_another_machine_is_measured_through_prometheus(fleet):
    url = fleet["prometheus"].url
    web3 = hosts.locate(WEB3, config(), url)
    cpu = wait_for(lambda: (r := hosts.cpu_percent(web3, url, 80)).value and r, 15, what="web-3's CPU rate")
    assert not cpu.ok and 90 <= cpu.value <= 99 and cpu.evidence["cores"] == 4, cpu
    assert cpu.summary.startswith(f"{WEB3}: ") and "rate(node_cpu_seconds_total" in cpu.evidence["query"]
    assert cpu.evidence["measured_by"] == f"Prometheus, node_exporter {WEB3}"

    load = hosts.load_average(web3, url, 1.0)
    assert (load.value, load.evidence["cores"], load.ok) == (1.8, 4, False)
    memory = hosts.memory(web3, url, 85)
    assert memory.value == 95.0 and not memory.ok and "64.0 GiB" in memory.summary
    swap = hosts.swap(web3, url)
    assert swap.value == 75.0
    disk = hosts.disk_usage(web3, url, ["/"], 90)
    mounts = {m["path"]: m["percent"] for m in disk.evidence["mounts"]}
    assert mounts == {"/": 63.2, "/data": 98.0}, mounts  # used / (used + avail), as df; tmpfs and read-only ignored
    assert not disk.ok and "/data" in disk.summary

    top = hosts.top_processes(web3, url, by="cpu")
    assert [g["group"] for g in top.evidence["process_groups"]] == ["ffmpeg", "nginx"]
    assert 200 <= top.evidence["process_groups"][0]["cpu_percent"] <= 400  # 320 % (3.2 cores), as a 5 s rate sees it
    largest = hosts.largest_entries(web3, ["/"])
    assert largest.evidence["unmeasured"] and "need the host's own view" in largest.summary


def test_node_exporter_figures_match_what_psutil_sees_here(fleet):
    """The PromQL reads real node_exporter series right: the same machine, two ways, same totals."""
    url = fleet["prometheus"].url
    here = hosts.Host(instance=fleet["local"], how="prometheus", node_instance=fleet["local"],
                      stale_after_seconds=10, rate_window="5s")
    memory = hosts.memory(here, url, 85)
    assert memory.evidence["total_bytes"] == psutil.virtual_memory().total
    disk = hosts.disk_usage(here, url, ["/"], 90)
    root = next(m for m in disk.evidence["mounts"] if m["path"] == "/")
    assert root["total_bytes"] == psutil.disk_usage("/").total
    assert abs(root["percent"] - psutil.disk_usage("/").percent) < 1.0
    cpu = wait_for(lambda: (r := hosts.cpu_percent(here, url, 80)).value is not None and r, 15, what="local CPU rate")
    assert cpu.evidence["cores"] == psutil.cpu_count()
    load = hosts.load_average(here, url, 1.0)
    assert load.evidence["cores"] == psutil.cpu_count()


# -- the runbooks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def responder(prefect_server, tmp_path_factory, fleet, webhook):
    tmp = tmp_path_factory.mktemp("runbook-hosts")
    web3 = fleet["web3"]
    web3.on_post["restart-app"] = lambda: set_cpu(web3, cores=4, busy=0.05)
    restart = [sys.executable, "-c", "import httpx, sys; httpx.post(sys.argv[1]).raise_for_status()",
               f"{web3.url}/api/orchestrator/restart-app"]
    cfg = make_config(
        tmp,
        runbook_overrides={
            # web-3 restarted: its 5 s CPU rate (1 s scrapes) is below 80 % within about 3 s of the restart.
            "high-cpu-usage": {"verify": {"budget_seconds": 10, "interval_seconds": 1}, "approval_timeout_seconds": 60},
            "high-memory-usage": {"verify": {"budget_seconds": 3, "interval_seconds": 1}},
            "disk-space": {"verify": {"budget_seconds": 3, "interval_seconds": 1}},
        },
        targets={
            "monitoring": {"prometheus_url": fleet["prometheus"].url},
            "hosts": {"stale_after_seconds": 10, "rate_window": "5s"},
            "processes": {"killable_cmdline": ["ffmpeg"], "protected_names": []},  # web-3's top group: never offered
            "services": {"app-web-3": {"host": "web-3", "match": {"service": "app", "instance": WEB3},
                                       "restart": restart}},
            "paths": {"disk": ["/"]},
        },
        notify={"webhooks": [f"{webhook.url}/hooks"]},
    )
    with running_responder(tmp, prefect_server.api_url, cfg) as proc:
        yield proc


def alert(alertname: str, instance: str, **labels: str) -> dict:
    fingerprint = uuid.uuid4().hex[:16]
    labels = {"alertname": alertname, "severity": "warning", "instance": instance, **labels}
    return {
        "version": "4", "groupKey": f"{{}}:{{test=\"{fingerprint}\"}}", "status": "firing", "receiver": "responder",
        "groupLabels": {}, "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://am.test",
        "alerts": [{"status": "firing", "labels": labels, "annotations": {"summary": f"{alertname} on {instance}"},
                    "startsAt": "2026-12-06T09:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                    "fingerprint": fingerprint}],
    }


def assert_only_web3(text: str) -> None:
    assert f"node_exporter {WEB3}" in text
    assert "psutil" not in text and f"({socket.gethostname()})" not in text, text
    assert "| pid |" not in text  # no process table of this machine


def test_cpu_alert_of_another_machine_reports_that_machine_and_escalates(responder, prefect_server, webhook):
    api = prefect_server.api_url
    incident_id = fire(responder, alert("HIGH_CPU_USAGE", WEB3))
    final = wait_run_final(api, incident_id, timeout=90)
    assert final["state"]["name"] == "Escalated", final["state"]  # still busy: never "verified"
    text = report(api, incident_id)
    assert_only_web3(text)
    assert "on 4 cores" in text and "ffmpeg" in text
    first = text.split("**Alert:**")[0]  # the verdict and the three findings people read first
    assert "NOT-VERIFIED" in first and "cpu_percent" in first and WEB3 in first
    assert "terminate_process" not in text  # a pid is never offered for another machine
    # The incident's thread gets the verdict and the same three findings, each naming the machine.
    verdict = wait_for(lambda: next((r["body"] for r in webhook.requests if r["body"].get("kind") == "verdict"
                                     and r["body"]["incident"]["id"] == incident_id), None), 10, what="the verdict")
    assert verdict["text"].startswith("*High CPU usage: NOT-VERIFIED* on `web-3:9100`")
    assert len(verdict["findings"]) == 3 and all(WEB3 in line for line in verdict["findings"])


def test_cpu_of_another_machine_is_fixed_by_its_configured_command_and_verified_there(responder, prefect_server, fleet):
    api = prefect_server.api_url
    web3 = fleet["web3"]
    web3.posts.clear()
    incident_id = fire(responder, alert("HIGH_CPU_USAGE", WEB3, service="app"))
    run = paused_run(api, incident_id)
    assert not web3.posts, "nothing may run before approval"
    form = form_description(api, run)  # the person approving reads web-3's figures, not this machine's
    assert "restart_service" in form and f"node_exporter {WEB3}" in form and "CPU 9" in form and "psutil" not in form
    answer(api, run, True, "alice")
    final = wait_run_final(api, incident_id, timeout=90)
    assert [p["path"] for p in web3.posts] == ["/api/orchestrator/restart-app"]
    assert final["state"]["name"] == "Resolved", final["state"]
    text = report(api, incident_id)
    assert "restart_service" in text and "app-web-3" in text and "approved by alice" in text
    assert "| verify: cpu_percent | yes |" in text
    set_cpu(web3, cores=4, busy=0.95)


def test_cpu_alert_of_this_machine_is_measured_here(responder, prefect_server, fleet):
    api = prefect_server.api_url
    incident_id = fire(responder, alert("HIGH_CPU_USAGE", fleet["local"]))
    wait_run_final(api, incident_id, timeout=90)
    text = report(api, incident_id)
    assert f"psutil on this machine ({socket.gethostname()})" in text
    assert f"on {psutil.cpu_count()} cores" in text and "node_exporter" not in text


def test_memory_and_disk_alerts_of_another_machine(responder, prefect_server):
    api = prefect_server.api_url
    memory_id = fire(responder, alert("HIGH_MEMORY_USAGE", WEB3))
    disk_id = fire(responder, alert("DISK_SPACE_CRITICAL", WEB3))
    for incident_id in (memory_id, disk_id):
        assert wait_run_final(api, incident_id, timeout=90)["state"]["name"] == "Escalated"
    memory = report(api, memory_id)
    assert_only_web3(memory)
    assert "3.2 GiB available of 64.0 GiB" in memory and "| swap |" in memory
    disk = report(api, disk_id)
    assert_only_web3(disk)
    assert "/data" in disk and "need the host's own view" in disk
    assert "compress_old_logs" not in disk  # this machine's directories are not web-3's


def test_a_machine_nobody_measures_is_reported_and_escalated(responder, prefect_server):
    api = prefect_server.api_url
    incident_id = fire(responder, alert("HIGH_CPU_USAGE", "web-9:9100"))
    final = wait_run_final(api, incident_id, timeout=60)
    assert final["state"]["name"] == "Escalated", final["state"]
    text = report(api, incident_id)
    assert "cannot be measured" in text and "Prometheus has no series for web-9" in text
    assert "psutil" not in text and "cpu_percent" not in text
