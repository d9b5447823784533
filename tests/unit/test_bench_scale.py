"""scripts/bench_scale.py and scripts/scale_paper.py: the inventories they
generate, and how they read a run's log and compute the slope."""

from __future__ import annotations

import importlib
import sys

import pytest
import yaml
from conftest import ROOT

# scale_paper imports bench_scale, as it does run from scripts/.
sys.path.insert(0, str(ROOT / "scripts"))
bench_scale = importlib.import_module("bench_scale")
scale_paper = importlib.import_module("scale_paper")

LOG = """\
PLAY RECAP *********************************************************************
bs-api01                   : ok=30   changed=1    unreachable=0    failed=0    skipped=29   rescued=0    ignored=0
bs-lb1                     : ok=67   changed=0    unreachable=0    failed=0    skipped=57   rescued=0    ignored=0

TASKS RECAP ********************************************************************
Monday 07 December 2026  04:47:23 +0000 (0:00:00.040)       0:00:49.749 *******
===============================================================================
lb_ha : Install the check, notify, release and handover scripts --------- 4.94s
Gather the facts the roles read ----------------------------------------- 1.88s
api : Read the packages, units, health and installed release of this host --- 0.77s
Gather the facts the roles read ----------------------------------------- 0.12s
"""


def test_slope_of_a_line_is_its_gradient_and_of_one_point_zero():
    assert bench_scale.slope([(2, 10.0), (8, 22.0), (24, 54.0)]) == pytest.approx(2.0)
    assert bench_scale.slope([(2, 10.0)]) == 0.0


def test_a_quadratic_cost_shows_in_the_later_segment():
    rows = [
        {"api_hosts": n, "first": n * n, "noop": n, "add": n, "check": n, "forks": 10, "hosts": n + 2, "noop_tasks": {}}
        for n in (2, 8, 24)
    ]
    for row in rows:
        row.update(noop_changed=[], check_changed=[])
    summary = bench_scale.report(rows)
    assert summary["segments"]["2->8"]["first"] == 10.0
    assert summary["segments"]["8->24"]["first"] == 32.0
    assert summary["segments"]["8->24"]["noop"] == 1.0


def test_task_times_and_recap_are_read_from_a_log(tmp_path):
    log = tmp_path / "noop.log"
    log.write_text(LOG)
    assert bench_scale.tasks_of(log) == {
        "lb_ha : Install the check, notify, release and handover scripts": 4.94,
        "Gather the facts the roles read": pytest.approx(2.0),
        "api : Read the packages, units, health and installed release of this host": 0.77,
    }
    assert bench_scale.recap(log) == {
        "bs-api01": {"ok": 30, "changed": 1, "unreachable": 0, "failed": 0},
        "bs-lb1": {"ok": 67, "changed": 0, "unreachable": 0, "failed": 0},
    }


def test_the_bench_fleet_is_a_pair_in_front_of_n_api_hosts(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_scale, "WORK", tmp_path)
    inventory = bench_scale.write_inventory(8, "debian12")
    data = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]
    lbs = data["children"]["loadbalancers"]
    assert sorted(lbs["hosts"]) == ["bs-lb1", "bs-lb2"]
    assert lbs["vars"]["lb_ha_vip"] == bench_scale.VIP
    assert sorted(data["children"]["api_servers"]["hosts"]) == [f"bs-api{n:02d}" for n in range(1, 9)]
    # The floating address is outside the range Docker gives its containers.
    assert bench_scale.VIP.rsplit(".", 1)[1] == "200"
    assert bench_scale.IPAM[0]["iprange"].endswith("/25")
    bench_scale.add_instance(inventory)
    added = yaml.safe_load((inventory / "host_vars" / "bs-api01.yml").read_text())
    assert [i["port"] for i in added["api_instances"]] == [8001, 8002, 8003, 8004]
    # A second write starts from the inventory alone again.
    bench_scale.write_inventory(8, "debian12")
    assert not (inventory / "host_vars" / "bs-api01.yml").exists()


def test_the_paper_fleet_has_distinct_addresses_and_four_pairs(tmp_path, monkeypatch):
    monkeypatch.setattr(scale_paper, "WORK", tmp_path)
    data = yaml.safe_load(scale_paper.write_inventory(200, 4).read_text())["all"]
    api = data["children"]["api_servers"]["hosts"]
    assert len(api) == 200
    assert len({host["api_bind_address"] for host in api.values()}) == 200
    pairs = data["children"]["loadbalancers"]["children"]
    assert len(pairs) == 4
    assert all(len(pair["hosts"]) == 2 for pair in pairs.values())
    assert len({pair["vars"]["lb_ha_vip"] for pair in pairs.values()}) == 4
    assert data["vars"]["ansible_connection"] == "local"
