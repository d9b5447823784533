"""The separate-tier cluster reached over SSH as `deploy` with sudo.

Ansible's connection and testinfra's `host` are SSH sessions as deploy to
the hosts' addresses; out-of-band checks (a restart, the live ruleset while
the connection is cut) go through Docker. The outsider (10.213.50.14) is in
no group and probes what the firewalls let through.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from lbtest import API_NAME, CERT, PORTS, get_host, playbook, recap, requests_from, tail

LB = "10.213.50.11"
API_HOSTS = {"ssh-api1": ("api1", "10.213.50.12"), "ssh-api2": ("api2", "10.213.50.13")}
TIERS = {"ssh-lb1": LB, **{name: address for name, (_hostname, address) in API_HOSTS.items()}}
LB_URL = f"https://{LB}/"
CACERT = "/tmp/ssh-lb1-ca.pem"


@pytest.fixture(scope="module")
def hosts():
    found = {name: get_host(name) for name in (*TIERS, "ssh-outsider")}
    with found["ssh-lb1"].sudo():
        cert = found["ssh-lb1"].check_output(f"cat {CERT}")
    found["ssh-outsider"].run_expect([0], f"cat > {CACERT} <<'EOF'\n{cert}\nEOF")
    return found


def docker(*args: str, timeout: int = 120) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=True).stdout


def ssh_port_open(address: str) -> bool:
    """Whether a TCP connection from the controller to address:22 gets an SSH banner within 5 s."""
    try:
        with socket.create_connection((address, 22), timeout=5) as connection:
            connection.settimeout(5)
            return connection.recv(7) == b"SSH-2.0"
    except OSError:
        return False


def expected_instances() -> list[str]:
    return sorted(f"{hostname}:{port}" for hostname, _address in API_HOSTS.values() for port in PORTS)


@pytest.mark.parametrize("name", TIERS)
def test_ansible_logs_in_as_deploy_and_escalates_with_sudo(hosts, name):
    host = hosts[name]
    assert host.check_output("id -un") == "deploy"
    with host.sudo():
        assert host.check_output("id -un") == "root"


@pytest.mark.parametrize("address", TIERS.values())
def test_root_cannot_log_in_over_ssh(address):
    run = subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            f"root@{address}",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 255, run.stderr
    assert "Permission denied" in run.stderr, run.stderr


def test_requests_through_the_lb_reach_all_six_instances_evenly(hosts):
    result = requests_from(hosts["ssh-outsider"], LB_URL, 60, cacert=CACERT)
    assert result["failed"] == 0, result
    assert result["instances"] == dict.fromkeys(expected_instances(), 10), result


@pytest.mark.parametrize("address", TIERS.values())
def test_ssh_is_open_to_the_controller(address):
    assert ssh_port_open(address)


@pytest.mark.parametrize("address", TIERS.values())
def test_ssh_is_closed_to_the_outsider(hosts, address):
    # The firewall turns it away: no banner.
    banner = hosts["ssh-outsider"].check_output(
        f"timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/22; head -c 7 <&3' 2>/dev/null || true"
    )
    assert banner == "", (address, banner)


def test_an_api_host_comes_back_by_itself_after_a_restart(hosts):
    """docker restart boots systemd again; nothing but the host brings the stack back."""
    name = "ssh-api2"
    address = API_HOSTS[name][1]
    units = [f"{API_NAME}@{port}.service" for port in PORTS]
    before = docker("exec", name, "nft", "list", "table", "inet", "firewall")
    docker("restart", "--time", "20", name)
    deadline = time.monotonic() + 90
    state = ""
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["docker", "exec", name, "systemctl", "is-system-running"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(1)
    assert state == "running", state
    assert docker("exec", name, "systemctl", "is-active", *units).split() == ["active"] * len(units)
    assert docker("exec", name, "nft", "list", "table", "inet", "firewall") == before
    assert ssh_port_open(address)
    # Every instance answers through the load balancer again, without a run.
    deadline = time.monotonic() + 30
    while True:
        result = requests_from(hosts["ssh-outsider"], LB_URL, 60, cacert=CACERT)
        if result["failed"] == 0 and sorted(result["instances"]) == expected_instances() or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result["failed"] == 0, result
    assert sorted(result["instances"]) == expected_instances(), result
    # And the next run finds nothing to do.
    run = playbook()
    assert run.returncode == 0, tail(run)
    assert {host: c["changed"] for host, c in recap(run).items()} == dict.fromkeys(TIERS, 0), tail(run)
