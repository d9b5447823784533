"""Drift on a converged host: --check --diff reports it first, the next run repairs it."""

from __future__ import annotations

import json
from collections import Counter

from lbtest import API_NAME, CERT, PORTS, SITE, SITE_FILE, changed_tasks, http, playbook, recap, tail

STOPPED = f"{API_NAME}@{PORTS[1]}.service"


def test_hand_edit_stopped_unit_and_deleted_table_are_reported_then_repaired(host):
    site_before = host.file(SITE_FILE).content_string
    host.run_expect([0], f"echo '# edited by hand' >> {SITE_FILE}")
    host.run_expect([0], f"systemctl stop {STOPPED}")
    host.run_expect([0], "nft delete table inet firewall")

    check = playbook("--check", "--diff")
    assert check.returncode == 0, tail(check)
    reported = changed_tasks(check)
    assert f"nginx_lb : Template the site {SITE}" in reported, reported
    assert "api : Enable and start the instances that are not both" in reported, reported
    assert "firewall : Report that this run would load the ruleset" in reported, reported
    assert "edited by hand" in check.stdout, tail(check)  # the --diff shows the line going away
    # --check changed nothing.
    assert "edited by hand" in host.file(SITE_FILE).content_string
    assert not host.service(STOPPED).is_running
    assert host.run("nft list table inet firewall").rc != 0

    run = playbook()
    assert run.returncode == 0, tail(run)
    assert recap(run)[host.backend.host]["changed"] > 0, tail(run)
    assert host.file(SITE_FILE).content_string == site_before
    assert host.service(STOPPED).is_running
    assert host.run("nft list table inet firewall").rc == 0
    counts = Counter(json.loads(http(host, "https://localhost/", cacert=CERT)[1])["instance"] for _request in range(30))
    hostname = host.check_output("hostname")
    assert counts == {f"{hostname}:{port}": 10 for port in PORTS}
