"""Zero-downtime operations, each measured with continuous load through nginx.

The load: scripts/lb_requests.py on the host, requests in flight to
http://localhost/ until the event is over; every response is counted and
printed (pytest -r A shows the counts). A failure is a non-2xx answer or a
connection error. The rolling update runs under three clients at once: one
connection per request (GET), and clients that keep their connections open
and never retry, like a connection pool (GET and POST).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from lbtest import (
    API_NAME,
    DRAIN,
    PORTS,
    ROLLING_UPDATE,
    SITE_FILE,
    Load,
    http,
    playbook,
    recap,
    requests_from,
    said,
    tail,
)

URL = "http://localhost/"


def versions(host) -> dict[int, str]:
    """The version each instance reports on /health, asked directly."""
    return {port: json.loads(http(host, f"http://127.0.0.1:{port}/health", timeout=5)[1])["version"] for port in PORTS}


def down_lines(host) -> list[str]:
    """The upstream server lines marked down."""
    site = host.file(SITE_FILE).content_string
    return [line.strip() for line in site.splitlines() if line.strip().startswith("server ") and " down;" in line]


@pytest.fixture(scope="module", autouse=True)
def inventory_version_at_the_end(host):
    """The tests release other versions; at the end the inventory's release is
    rolled back out, so the check-mode pass sees the converged state."""
    yield
    run = playbook(path=ROLLING_UPDATE)
    assert run.returncode == 0, tail(run)


def rolling_update(**extra_vars):
    started = time.monotonic()
    run = playbook(extra_vars=extra_vars, path=ROLLING_UPDATE)
    return run, round(time.monotonic() - started, 1)


@pytest.mark.parametrize("port", PORTS)
def test_unit_exposure_is_at_most_2(host, port):
    out = host.check_output(f"systemd-analyze security {API_NAME}@{port}.service")
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"{API_NAME}@{port}: exposure {exposure}")
    assert exposure <= 2.0, out[-1500:]


def test_hardened_unit_serves_logs_and_restarts(host):
    unit = host.service(f"{API_NAME}@8001")
    assert unit.is_running
    host.run_expect([0], "curl -sf http://127.0.0.1:8001/health?probe=journal")
    log = host.check_output(f"journalctl -u {API_NAME}@8001 --no-pager -n 50")
    assert "GET /health?probe=journal HTTP/1.1" in log
    pid = host.check_output(f"systemctl show -p MainPID --value {API_NAME}@8001")
    host.run_expect([0], f"systemctl restart {API_NAME}@8001")
    host.run_expect(
        [0], "for i in $(seq 50); do curl -sf http://127.0.0.1:8001/health && exit 0; sleep 0.2; done; exit 1"
    )
    assert host.check_output(f"systemctl show -p MainPID --value {API_NAME}@8001") != pid


def test_kill_9_is_invisible_and_the_instance_is_back_within_5s(host):
    with Load(host, URL, concurrency=20, pause=0.02) as load:
        pid = host.check_output(f"systemctl show -p MainPID --value {API_NAME}@8002")
        killed = time.monotonic()
        host.run_expect([0], f"kill -9 {pid}")
        # Back in rotation: a request through nginx answered by 8002 again.
        probe = host.run(
            "for i in $(seq 150); do "
            "curl -s -m 2 http://localhost/ | grep -q ':8002\"' && exit 0; sleep 0.1; done; exit 1"
        )
        back = round(time.monotonic() - killed, 2)
        time.sleep(2)
    print(f"kill -9: 8002 back in rotation after {back} s")
    assert probe.rc == 0, "8002 never came back through nginx"
    assert back <= 5, back
    assert load.result["failed"] == 0, load.result
    assert host.check_output(f"systemctl show -p MainPID --value {API_NAME}@8002") != pid


def test_reload_with_a_changed_upstream_under_load(host):
    weighted = [{"port": 8001, "weight": 3}, {"port": 8002, "weight": 2}, {"port": 8003}]
    with Load(host, URL, concurrency=20) as load:
        run = playbook("--tags", "loadbalancers", extra_vars={"api_instances": weighted})
        assert run.returncode == 0, tail(run)
        assert "weight=3" in host.file(SITE_FILE).content_string
        back = playbook("--tags", "loadbalancers")
        assert back.returncode == 0, tail(back)
    print("reload with changed upstream, twice:", json.dumps(load.result))
    assert "weight=3" not in host.file(SITE_FILE).content_string
    assert load.result["failed"] == 0, load.result


def test_rolling_update_under_load_with_slow_requests_in_flight(host):
    host.run_expect([0], "rm -rf /tmp/slow && mkdir -p /tmp/slow")
    # Three requests that take 4 s, one per instance (round robin), in flight
    # while the first instances are drained.
    for i in range(3):
        host.run_expect(
            [0],
            f"setsid nohup curl -s -m 30 -o /dev/null -w '%{{http_code}}' "
            f"'http://localhost/slow?seconds=4&n={i}' >/tmp/slow/{i} 2>/dev/null </dev/null &",
        )
    with (
        Load(host, URL, concurrency=10) as load,
        Load(host, URL, concurrency=10, keepalive=True) as pooled,
        Load(host, URL, concurrency=4, keepalive=True, method="POST") as posts,
    ):
        run, seconds = rolling_update(api_version="2.0.0")
    assert run.returncode == 0, tail(run)
    print(f"rolling update to 2.0.0: {seconds} s")
    for client in (load, pooled, posts):
        print(client.result["mode"], client.result["method"], json.dumps(client.result))
        assert client.result["failed"] == 0, client.result
        assert "2.0.0" in client.result["versions"], client.result
        assert "1.0.0" in client.result["versions"], client.result
    # No nginx reload: the drain is the instances refusing new connections.
    assert "Reload the nginx service" not in run.stdout
    slow = [host.check_output(f"cat /tmp/slow/{i}") for i in range(3)]
    print("slow requests in flight during the drain:", slow)
    assert slow == ["200", "200", "200"]
    assert versions(host) == dict.fromkeys(PORTS, "2.0.0")
    assert down_lines(host) == []


def test_a_drain_request_for_an_unknown_server_fails_and_changes_nothing(host):
    before = host.file(SITE_FILE).sha256sum
    run = playbook(extra_vars={"drain": ["127.0.0.1:9999"]}, path=DRAIN)
    assert run.returncode != 0
    assert (
        f"Upstream rag_photographie_backend on {host.backend.host} has no server 127.0.0.1:9999; nothing was"
        " changed. Its servers are: 127.0.0.1:8001, 127.0.0.1:8002, 127.0.0.1:8003." in said(run)
    ), tail(run)
    assert all(counters["changed"] == 0 for counters in recap(run).values()), tail(run)
    assert host.file(SITE_FILE).sha256sum == before


def test_failed_rolling_update_stays_drained_and_a_rerun_resumes(host):
    # A release whose app cannot start: the first instance never gets healthy.
    with Load(host, URL, concurrency=20) as load:
        run, seconds = rolling_update(api_version="3.0.0", api_module="app.api:no_such_app", api_health_timeout=8)
    print(f"failed rolling update: {seconds} s;", json.dumps(load.result))
    assert run.returncode != 0
    assert "Rolling update stopped at" in said(run), tail(run)
    assert "stays drained (down) on every load balancer" in said(run)
    assert load.result["failed"] == 0, load.result
    # The upstream is consistent: only the failed instance is down ...
    assert down_lines(host) == ["server 127.0.0.1:8001 max_fails=1 fail_timeout=2s down;"]
    assert host.run("nginx -t").rc == 0
    # ... and the others keep serving the previous release.
    after = requests_from(host, URL, 30)
    assert after["failed"] == 0, after
    assert set(after["instances"]) == {"rolling:8002", "rolling:8003"}, after
    assert set(after["versions"]) == {"2.0.0"}, after

    # A plain site.yml run keeps it drained: the drain is state, not an edit.
    site = playbook(extra_vars={"api_version": "2.0.0"})
    assert site.returncode == 0, tail(site)
    assert down_lines(host) == ["server 127.0.0.1:8001 max_fails=1 fail_timeout=2s down;"]
    kept = requests_from(host, URL, 30)
    assert set(kept["instances"]) == {"rolling:8002", "rolling:8003"}, kept

    with Load(host, URL, concurrency=20) as again:
        rerun, seconds = rolling_update(api_version="3.0.0")
    assert rerun.returncode == 0, tail(rerun)
    print(f"resumed rolling update: {seconds} s;", json.dumps(again.result))
    assert again.result["failed"] == 0, again.result
    assert versions(host) == dict.fromkeys(PORTS, "3.0.0")
    assert down_lines(host) == []
    assert all(counters["failed"] == 0 for counters in recap(rerun).values())
