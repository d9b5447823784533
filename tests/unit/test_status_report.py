"""playbooks/status.yml's report (plugins/filter/status.py), from sample host states."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins" / "filter"))

from status import status_inputs, status_report, status_table  # noqa: E402

LB = {
    "site": "shop",
    "nginx": {"active": "active", "enabled": "enabled"},
    "config_test": {"ok": True, "output": ""},
    "cert": {"not_after": "2027-11-27 10:00 UTC", "days_left": 364},
    "servers": [
        {
            "key": f"10.0.0.{h}:{p}",
            "options": ["max_fails=1"],
            "backup": False,
            "drained": False,
            "down": False,
            "status": 200,
            "version": "1.0.0",
            "error": "",
        }
        for p in (8001, 8002)
        for h in (11, 12)
    ],
}


def instance(port: int, **changes) -> dict:
    return {
        "port": port,
        "unit": f"shop@{port}.service",
        "active": "active",
        "sub": "running",
        "enabled": "enabled",
        "restarts": 0,
        "memory": 52428800,
        "listen": ["10.0.0.11"],
        "refused": False,
        "status": 200,
        "version": "1.0.0",
        "error": "",
        **changes,
    }


def hosts(lb=None, api=None, ha=None) -> list[dict]:
    return [
        {"name": "lb1", "lb": lb or LB, "ha": ha, "api": None, "expected": ["loadbalancers"]},
        {"name": "api2", "lb": None, "ha": None, "api": None, "address": "10.0.0.12", "expected": []},
        {
            "name": "api1",
            "address": "10.0.0.11",
            "lb": None,
            "ha": None,
            "api": {"instances": api or [instance(8001), instance(8002)]},
            "expected": ["api_servers"],
        },
    ]


def test_a_healthy_inventory_has_no_problem():
    report = status_report(hosts())
    assert report["healthy"]
    assert report["problems"] == []
    assert len(report["upstream"]) == 4
    assert len(report["instances"]) == 2
    table = status_table(report)
    assert "HEALTHY" in table
    assert "shop@8001.service" in table
    assert "50.0 MiB" in table
    assert "10.0.0.11:8001" in table


def test_a_stopped_unit_is_named():
    report = status_report(hosts(api=[instance(8001), instance(8002, active="inactive", sub="dead", status=0)]))
    assert not report["healthy"]
    assert report["problems"] == ["api1: shop@8002.service is inactive (dead)"]
    assert "UNHEALTHY: 1 problem(s)" in status_table(report)


def test_a_drained_server_is_shown_not_failed():
    lb = copy.deepcopy(LB)
    lb["servers"][0].update(drained=True, status=0, error="refused")
    report = status_report(hosts(lb=lb))
    assert report["healthy"], report["problems"]
    assert report["upstream"][0]["state"] == "drained"


def test_a_serving_server_that_does_not_answer_is_a_problem():
    lb = copy.deepcopy(LB)
    lb["servers"][1].update(status=0, error="[Errno 111] Connection refused")
    report = status_report(hosts(lb=lb))
    assert report["problems"] == [
        "lb1: upstream server 10.0.0.12:8001 (api2:8001) does not answer its health check"
        " ([Errno 111] Connection refused)"
    ]


def test_nginx_config_and_certificate_problems():
    lb = copy.deepcopy(LB)
    lb["nginx"]["active"] = "failed"
    lb["config_test"] = {"ok": False, "output": "unknown directive"}
    lb["cert"]["days_left"] = 3
    problems = status_report(hosts(lb=lb))["problems"]
    assert problems == [
        "lb1: nginx is failed",
        "lb1: nginx -t fails: unknown directive",
        "lb1: the certificate expires in 3 days (2027-11-27 10:00 UTC)",
    ]
    assert status_report(hosts(lb=lb), cert_min_days=2)["problems"][-1].startswith("lb1: nginx -t")


def test_a_pair_needs_exactly_one_master():
    def pair(first: str, second: str) -> list[dict]:
        return [
            {
                "name": name,
                "lb": LB,
                "ha": {"vip": "10.0.0.100", "keepalived": "active", "state": state},
                "api": None,
                "expected": ["loadbalancers"],
            }
            for name, state in (("lb1", first), ("lb2", second))
        ]

    assert status_report(pair("MASTER", "BACKUP"))["healthy"]
    assert status_report(pair("BACKUP", "BACKUP"))["problems"] == [
        "VRRP 10.0.0.100: 0 hosts are MASTER (none), expected exactly one"
    ]
    assert "lb2: VRRP state is FAULT" in status_report(pair("MASTER", "FAULT"))["problems"]
    assert "MASTER 10.0.0.100" in status_table(status_report(pair("MASTER", "BACKUP")))


def test_a_host_without_status_is_a_problem():
    inputs = status_inputs(
        [{"inventory_hostname": "lb1"}, {"inventory_hostname": "api1", "api_status": {"instances": []}}],
        {"loadbalancers": ["lb1"], "api_servers": ["api1"]},
    )
    assert status_report(inputs)["problems"] == ["lb1: no status (the host did not answer or its status task failed)"]
