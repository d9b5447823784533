"""The seed topology survives a host restart with no Ansible run."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter

from lbtest import API_NAME, CERT, PORTS, SITE_FILE, http, playbook, recap, tail


def snapshot(host) -> dict[str, str]:
    return {
        "certificate": host.check_output(f"sha256sum {CERT}"),
        "site": host.check_output(f"sha256sum {SITE_FILE}"),
        "ruleset": host.check_output("nft list table inet firewall"),
    }


def test_the_stack_comes_back_by_itself_after_a_restart(host):
    name = host.backend.host
    units = [f"{API_NAME}@{port}.service" for port in PORTS]
    before = snapshot(host)
    subprocess.run(["docker", "restart", "--time", "20", name], check=True, timeout=120, capture_output=True)
    deadline, state = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        state = host.run("systemctl is-system-running").stdout.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(1)
    assert state == "running", state
    assert host.run(f"systemctl is-active nginx nftables {' '.join(units)}").stdout.split() == ["active"] * (
        2 + len(units)
    )
    assert snapshot(host) == before
    # The units are active before uvicorn listens: wait (bounded) until each answers.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(http(host, f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200 for port in PORTS):
            break
        time.sleep(1)
    counts: Counter[str] = Counter()
    for _request in range(30):
        status, body = http(host, "https://localhost/", cacert=CERT)
        assert status == 200, body
        counts[json.loads(body)["instance"]] += 1
    hostname = host.check_output("hostname")
    assert counts == {f"{hostname}:{port}": 10 for port in PORTS}
    run = playbook()
    assert run.returncode == 0, tail(run)
    assert recap(run)[name]["changed"] == 0, tail(run)
