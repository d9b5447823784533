"""The converged scenario re-run with --check --diff must report no change."""

from __future__ import annotations

from lbtest import playbook, recap, tail


def test_check_diff_on_converged_hosts_reports_no_change():
    run = playbook("--check", "--diff")
    assert run.returncode == 0, tail(run)
    counters = recap(run)
    assert counters, tail(run)
    assert {host: c["changed"] for host, c in counters.items()} == dict.fromkeys(counters, 0), tail(run)
