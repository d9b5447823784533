"""The firewall's commit-confirm rollback, fired for real over SSH.

The operator narrows SSH to the address the preflight saw (the controller,
10.213.50.1), while the controller's egress moves: after the first
connection of the run, new connections come through the outsider
(10.213.50.14), as from a NAT gateway that failed over to its other address
(molecule/cluster/egress_pool.py, a ProxyCommand). The preflight accepts the
ruleset; the confirming reconnection is turned away; the timer restores the
previous ruleset, the controller gets back in, and the run fails saying why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clustertest import docker
from lbtest import PROJECT, ansible_command, playbook, playbook_command, playbook_env, recap, said, tail

HOST = "api1"
CONTROLLER = "10.213.50.1/32"
NEW_EGRESS = "10.213.50.14/32"
CONFIRM_TIMEOUT = 20
POOL = PROJECT / "molecule" / "cluster" / "egress_pool.py"
# Only the firewall changes here: its role (and the preflight, tagged always) on HOST.
FIREWALL_ONLY = ("--limit", HOST, "--tags", "firewall")


def live_table() -> str:
    return subprocess.run(
        ["docker", "exec", HOST, "nft", "list", "table", "inet", "firewall"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout


def test_a_ruleset_that_cuts_the_controller_off_is_rolled_back():
    # Before: SSH open to both of the controller's egress addresses.
    both = playbook(*FIREWALL_ONLY, extra_vars={"firewall_ssh_sources": [CONTROLLER, NEW_EGRESS]})
    assert both.returncode == 0, tail(both)
    assert "10.213.50.14" in live_table()
    try:
        with tempfile.TemporaryDirectory() as state:
            (Path(state) / "jump").write_text("outsider")
            (Path(state) / "cp").mkdir()
            proxy = f"-o ProxyCommand='{sys.executable} {POOL} {state} %h %p'"
            command = playbook_command(
                *FIREWALL_ONLY,
                "-e",
                json.dumps(
                    {
                        "firewall_ssh_sources": [CONTROLLER],
                        "firewall_confirm_timeout": CONFIRM_TIMEOUT,
                        "ansible_ssh_extra_args": proxy,
                    }
                ),
            )
            started = time.monotonic()
            run = subprocess.Popen(
                command,
                env=playbook_env(ANSIBLE_SSH_CONTROL_PATH_DIR=f"{state}/cp"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            cut = back = None
            while run.poll() is None and time.monotonic() - started < 300:
                table = live_table()
                now = time.monotonic()
                if cut is None and table and "10.213.50.14" not in table:
                    cut = now
                elif cut is not None and back is None and "10.213.50.14" in table:
                    back = now
                time.sleep(0.5)
            if run.poll() is None:
                run.kill()
            output = run.communicate(timeout=30)[0]
            folded = " ".join(output.split())
            assert run.returncode != 0, output[-4000:]
            assert cut is not None, output[-4000:]
            assert back is not None, output[-4000:]
            print(f"ruleset cut the new egress for {back - cut:.1f} s (timer {CONFIRM_TIMEOUT} s)")
            assert back - cut <= CONFIRM_TIMEOUT + 10, output[-4000:]
            assert "The new firewall ruleset cut the controller off api1" in folded, output[-4000:]
            assert "restored the previous ruleset" in folded, output[-4000:]
            assert "the controller reaches the host again" in folded, output[-4000:]
            assert "Add every address the controller's connections can come from to firewall_ssh_sources" in folded
            # The controller connects again, through the egress the new ruleset refused.
            ping = subprocess.run(
                [
                    *ansible_command(),
                    HOST,
                    "-m",
                    "ansible.builtin.ping",
                    "-e",
                    json.dumps({"ansible_ssh_extra_args": proxy}),
                ],
                env=playbook_env(ANSIBLE_SSH_CONTROL_PATH_DIR=f"{state}/cp"),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert ping.returncode == 0, ping.stdout + ping.stderr
            # The rollback is in the saved ruleset too: the host keeps it
            # across a restart of nftables (what boot does).
            restored = live_table()
            saved = docker("exec", HOST, "cat", "/etc/nftables.conf")
            assert "10.213.50.14" in saved, saved
            docker("exec", HOST, "systemctl", "restart", "nftables")
            assert live_table() == restored
    finally:
        # Back to the scenario's ruleset (SSH from the controller only).
        restore = playbook(*FIREWALL_ONLY)
        assert restore.returncode == 0, tail(restore)
        assert "10.213.50.14" not in live_table(), said(restore)


def timer_state() -> str:
    """systemctl is-active of the rollback timer on HOST (non-zero when not active: not an error)."""
    return subprocess.run(
        ["docker", "exec", HOST, "systemctl", "is-active", "firewall-rollback.timer"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()


def test_a_rollback_timer_an_earlier_run_left_armed_is_disarmed_by_the_next_run():
    """A run that lost the controller between arming the timer and confirming
    leaves it armed: the next run, which reached the host through the ruleset
    in place, disarms it (the timer would otherwise restore an old ruleset)."""
    docker("exec", HOST, "systemd-run", "--unit=firewall-rollback", "--on-active=600", "/bin/true")
    assert timer_state() == "active"
    before = live_table()
    run = playbook(*FIREWALL_ONLY)
    assert run.returncode == 0, tail(run)
    assert "Disarm a rollback timer an earlier run left armed" in run.stdout, tail(run)
    # That was the only change.
    assert recap(run)[HOST]["changed"] == 1, tail(run)
    assert timer_state() != "active"
    assert live_table() == before
