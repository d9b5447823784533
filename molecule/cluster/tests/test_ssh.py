"""The cluster as a user reaches real VMs: over SSH as `deploy`, with sudo.

Ansible's connection and testinfra's hosts are SSH sessions as deploy to
the hosts' addresses, escalated with sudo; out-of-band checks (a restart)
go through Docker. The outsider (10.213.50.14) is in no group: SSH over
IPv4 is open to the controller (10.213.50.1) only.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
from clustertest import CACERT, LB_URL, docker
from lbtest import API_NAME, PORTS, ansible_command, playbook, playbook_env, recap, requests_from, said, tail

API_HOSTS = {"api1": "10.213.50.12", "api2": "10.213.50.13"}
TIERS = {"lb1": "10.213.50.11", **API_HOSTS}


def ssh_port_open(address: str) -> bool:
    """Whether a TCP connection from the controller to address:22 gets an SSH banner within 5 s."""
    try:
        with socket.create_connection((address, 22), timeout=5) as connection:
            connection.settimeout(5)
            return connection.recv(7) == b"SSH-2.0"
    except OSError:
        return False


def expected_instances() -> list[str]:
    return sorted(f"{name}:{port}" for name in API_HOSTS for port in PORTS)


def users(*extra: str) -> dict[str, str]:
    """Per tier host, the user `id -un` runs as over Ansible's connection (with `extra` arguments)."""
    run = subprocess.run(
        [*ansible_command(), ":".join(TIERS), "-o", "-m", "ansible.builtin.command", "-a", "id -un", *extra],
        env=playbook_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # One line a host: "lb1 | CHANGED | rc=0 | (stdout) deploy"
    return {line.split(" | ")[0]: line.rsplit("(stdout) ", 1)[1] for line in run.stdout.splitlines() if " | " in line}


def test_ansible_logs_in_as_deploy_and_escalates_with_sudo():
    assert users("-e", json.dumps({"ansible_become": False})) == dict.fromkeys(TIERS, "deploy")
    assert users() == dict.fromkeys(TIERS, "root")


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


@pytest.mark.parametrize("address", TIERS.values())
def test_ssh_is_open_to_the_controller(address):
    assert ssh_port_open(address)


@pytest.mark.parametrize("address", TIERS.values())
def test_ssh_is_closed_to_the_outsider(hosts, address):
    # The firewall turns it away: no banner.
    banner = hosts["outsider"].check_output(
        f"timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/22; head -c 7 <&3' 2>/dev/null || true"
    )
    assert banner == "", (address, banner)


def test_an_api_host_comes_back_by_itself_after_a_restart(hosts):
    """docker restart boots systemd again; nothing but the host brings the stack back."""
    name = "api2"
    address = API_HOSTS[name]
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
        result = requests_from(hosts["outsider"], LB_URL, 60, cacert=CACERT)
        if result["failed"] == 0 and sorted(result["instances"]) == expected_instances() or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result["failed"] == 0, result
    assert sorted(result["instances"]) == expected_instances(), result
    # And the next run finds nothing to do.
    run = playbook()
    assert run.returncode == 0, tail(run)
    assert {host: c["changed"] for host, c in recap(run).items()} == dict.fromkeys(TIERS, 0), tail(run)


def test_sources_that_leave_out_the_controller_are_refused_before_any_change(hosts):
    """The preflight reads the controller's address from the real SSH
    connection (SSH_CONNECTION on the host), not from a variable: sources
    without it are refused, and the host's ruleset stays as it was. The
    inventory sets ansible_become: true, as many do: the facts must still be
    gathered without sudo, which would drop SSH_CONNECTION."""
    before = hosts["api1"].check_output("nft list table inet firewall")
    try:
        run = playbook("--limit", "api1", extra_vars={"firewall_ssh_sources": ["192.0.2.0/24"]})
        after = hosts["api1"].check_output("nft list table inet firewall")
    finally:
        # Had the ruleset gone through (the rollback timer restores only the
        # live table and its file), the scenario's own comes back for the
        # tests after this one.
        if hosts["api1"].check_output("nft list table inet firewall") != before:
            playbook("--limit", "api1")
    assert run.returncode != 0, tail(run)
    assert "The firewall would lock the controller out of api1" in said(run), tail(run)
    assert "it connects from 10.213.50.1 to port 22" in said(run), tail(run)
    assert all(counts["changed"] == 0 for counts in recap(run).values()), tail(run)
    assert after == before
