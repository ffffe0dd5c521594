"""redis_connection_failure through the real responder and Prefect server, against a real Redis.

The module starts its own throwaway ``redis-server`` on a free port (the shared one on 6379 must
keep running for the other tests) and configures, as the ``redis`` service's restart argv, the
same daemonizing ``redis-server`` command that started it. A test shuts it down for real; the
runbook sees the refused PING, asks for approval, runs the restart and verifies PONG.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from datetime import datetime, timezone

import pytest
import redis

from support.common import HTTP, free_port, wait_for
from support.prefect import report, runs_for_incident, wait_run_final
from support.responder import fire, make_config, running_responder

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    port = free_port()
    data = tmp_path_factory.mktemp("throwaway-redis")
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes", "--save", "",
            "--appendonly", "no", "--dir", str(data), "--pidfile", str(data / "redis.pid"),
            "--logfile", str(data / "redis.log")]
    subprocess.run(argv, check=True, timeout=10)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    wait_for(client.ping, 10, what="the throwaway redis-server")
    yield port, argv
    try:
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # already down, or the answer to SHUTDOWN (the connection closes)


@pytest.fixture(scope="module")
def responder(prefect_server, tmp_path_factory, redis_port):
    port, argv = redis_port
    tmp = tmp_path_factory.mktemp("runbook-redis")
    config = make_config(
        tmp,
        runbook_overrides={"redis-connection-failure": {"verify": {"budget_seconds": 4, "interval_seconds": 1},
                                                        "approval_timeout_seconds": 40}},
        targets={"redis": {"default": {"url": f"redis://127.0.0.1:{port}/0"}}, "services": {"redis": {"restart": argv}}},
    )
    with running_responder(tmp, prefect_server.api_url, config) as proc:
        yield proc


def alert_body(alertname: str) -> dict:
    fingerprint = uuid.uuid4().hex[:16]
    labels = {"alertname": alertname, "severity": "warning", "instance": "redis-exporter:9121", "job": "redis"}
    annotations = {"summary": "Redis connection failed"}
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{alertname}", test="{fingerprint}"}}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "responder", "groupLabels": {"alertname": alertname},
        "commonLabels": labels, "commonAnnotations": annotations, "externalURL": "http://alertmanager.test",
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations,
                    "startsAt": datetime.now(timezone.utc).isoformat(), "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "", "fingerprint": fingerprint}],
    }


def pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())
    except redis.ConnectionError:
        return False


def test_answering_redis_is_verified_with_its_memory_in_the_report(responder, prefect_server, redis_port):
    api = prefect_server.api_url
    port, _ = redis_port
    workers = [redis.Redis(port=port, client_name="media-worker") for _ in range(3)]
    for client in workers:
        client.ping()  # three connections named by the application that holds them
    incident_id = fire(responder, alert_body("RedisConnectionFailure"))
    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Resolved", final["state"]
    text = report(api, incident_id)
    assert "| redis_ping | yes |" in text and "| redis_memory |" in text and "No automated action" in text
    assert "| redis_connection_holders |" in text and "3 name=media-worker" in text, text
    for client in workers:
        client.close()


def test_stopped_redis_is_restarted_after_approval_and_answers_again(responder, prefect_server, redis_port):
    api = prefect_server.api_url
    port, _ = redis_port
    try:
        redis.Redis(port=port).shutdown(nosave=True)
    except redis.ConnectionError:
        pass
    wait_for(lambda: not pings(port), 10, what="redis to stop")

    incident_id = fire(responder, alert_body("redis_connection_failure"))
    run = wait_for(lambda: (runs := runs_for_incident(api, incident_id)) and runs[0]["state"]["type"] == "PAUSED"
                   and runs[0], 60, what="the run to pause for approval")
    key = run["state"]["state_details"]["run_input_keyset"]["description"]
    description = wait_for(lambda: (r := HTTP.get(f"{api}/flow_runs/{run['id']}/input/{key}")).is_success and r.json(),
                           10, what="the approval form")
    assert "Approve: restart_service on redis" in description and "Redis unreachable" in description, description
    assert "redis://" not in description
    assert not pings(port), "nothing may be restarted before approval"

    body = {"run_input": {"approve": True, "reason": "redis is down", "approver": "ops-dana"}}
    wait_for(lambda: HTTP.post(f"{api}/flow_runs/{run['id']}/resume", json=body).status_code in (200, 201),
             20, interval=0.5, what="the resume to be accepted")
    final = wait_run_final(api, incident_id)
    assert final["state"]["name"] == "Resolved", final["state"]
    assert pings(port)
    text = report(api, incident_id)
    assert "| restart_service | redis | risky | done |" in text and "ops-dana" in text
    assert "Redis unreachable" in text and "PONG" in text
