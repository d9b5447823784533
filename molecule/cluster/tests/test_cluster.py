"""Separate tiers behind firewalls, probed across hosts.

lb1 balances over api1 and api2 (3 instances each); `outsider` is in no
group: over IPv4 it may reach lb1's HTTP and HTTPS ports, nothing else (SSH
is open to the controller only, test_ssh.py). nmap on the
outsider is the independent check of what each host lets through.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from clustertest import CACERT, LB_URL, docker, link_local, resolve, scan
from lbtest import (
    API_NAME,
    PORTS,
    SITE_FILE,
    Http2Load,
    Load,
    assert_reload_losses_bounded,
    http,
    playbook,
    recap,
    reloads,
    requests_from,
    tail,
)

API_HOSTS = ("api1", "api2")


def status_from(host, url: str) -> int:
    """HTTP status of a GET from the host; 0 when no connection was made."""
    return http(host, url, cacert=CACERT if url.startswith("https:") else None, timeout=5)[0]


def test_outsider_reaches_the_load_balancer(hosts):
    assert status_from(hosts["outsider"], LB_URL) == 200
    assert status_from(hosts["outsider"], "http://lb1/") == 301


def test_nmap_from_outsider_sees_only_http_and_https_on_lb1(hosts):
    states = scan(hosts["outsider"], "lb1", "22,80,443,8001-8003,9999")
    print("lb1", states)
    assert states[80] == "open"
    assert states[443] == "open"
    for port in (22, *PORTS, 9999):
        assert states[port] == "filtered", (port, states)


@pytest.mark.parametrize("api", API_HOSTS)
def test_nmap_from_outsider_sees_no_api_port(hosts, api):
    states = scan(hosts["outsider"], api, "22,80,443,8001-8003,9999")
    print(api, states)
    for port in (22, 80, 443, *PORTS, 9999):
        assert states[port] == "filtered", (port, states)


@pytest.mark.parametrize("api", API_HOSTS)
def test_api_instances_listen_on_the_private_address_only(hosts, api):
    address = hosts[api].ansible("setup", "filter=ansible_default_ipv4")["ansible_facts"]["ansible_default_ipv4"][
        "address"
    ]
    for port in PORTS:
        listeners = hosts[api].check_output(f"ss -Htln 'sport = :{port}'").splitlines()
        assert sorted(line.split()[3] for line in listeners) == [f"{address}:{port}"]
        # The service listens there, and still the outsider cannot reach it.
        assert status_from(hosts["outsider"], f"http://{address}:{port}/health") == 0


def test_status_page_refused_to_the_outsider(hosts):
    assert status_from(hosts["outsider"], "http://lb1/nginx_status") == 403
    assert status_from(hosts["outsider"], "https://lb1/nginx_status") == 403
    assert "Active connections" in hosts["lb1"].check_output("curl -s http://localhost/nginx_status")


@pytest.mark.parametrize("api", API_HOSTS)
def test_lb1_reaches_every_api_port(hosts, api):
    for port in PORTS:
        assert status_from(hosts["lb1"], f"http://{api}:{port}/health") == 200


def test_requests_through_lb1_reach_all_six_instances(hosts):
    result = requests_from(hosts["outsider"], LB_URL, 60, cacert=CACERT)
    assert result["failed"] == 0, result
    expected = sorted(f"{api}:{port}" for api in API_HOSTS for port in PORTS)
    assert sorted(result["instances"]) == expected, result
    # One client, one request at a time: round robin gives each instance 10.
    assert result["instances"] == dict.fromkeys(expected, 10), result


def test_ruleset_comes_back_from_its_saved_file(hosts):
    api1 = hosts["api1"]
    before = api1.check_output("nft list table inet firewall")
    assert api1.run("nft -c -f /etc/nftables.conf").rc == 0
    assert "Ansible managed" in api1.file("/etc/nftables.conf").content_string
    # Stopping the service removes only this table: Docker's NAT table stays.
    api1.run_expect([0], "systemctl stop nftables")
    try:
        assert api1.run("nft list table inet firewall").rc != 0
        assert api1.run("nft list table ip nat").rc == 0
        # What boot does: the enabled service loads the saved file.
        assert api1.service("nftables").is_enabled
    finally:
        api1.run_expect([0], "systemctl start nftables")
    assert api1.check_output("nft list table inet firewall") == before
    assert scan(hosts["outsider"], "api1", "8001")[8001] == "filtered"


def test_firewall_switched_off_and_on(hosts):
    try:
        firewall_off_then_on(hosts)
    except BaseException:
        # Leave the hosts as the converge made them for the tests after this one.
        playbook("--tags", "firewall")
        raise


def firewall_off_then_on(hosts):
    run = playbook("--tags", "firewall", extra_vars={"firewall_enabled": False})
    assert run.returncode == 0, tail(run)
    api1 = hosts["api1"]
    assert api1.run("nft list table inet firewall").rc != 0
    assert not api1.service("nftables").is_enabled
    # Off means off: the instance port answers the outsider, Docker's NAT stays.
    assert scan(hosts["outsider"], "api1", "8001")[8001] == "open"
    assert api1.run("nft list table ip nat").rc == 0

    run = playbook("--tags", "firewall")
    assert run.returncode == 0, tail(run)
    assert api1.service("nftables").is_enabled
    assert scan(hosts["outsider"], "api1", "8001")[8001] == "filtered"


def test_an_inventory_edit_reaches_the_upstream_in_a_run_limited_to_the_load_balancer(hosts):
    """api1's address is cached from the converge; its api_instances is edited in
    the inventory (a host_vars file) and only lb1 is in the run. The upstream must
    be the edited one: the cache cannot hide an inventory edit."""
    host_vars = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent / "host_vars"
    host_vars.mkdir(exist_ok=True)
    # Molecule's own file for api1 (its connection variables), if any: Ansible
    # reads only the first of host_vars/api1, api1.yml, ... that exists.
    edited = host_vars / "api1"
    original = edited.read_text() if edited.exists() else None
    current = (yaml.safe_load(original) if original else None) or {}
    assert "api_instances" not in current, current
    api1 = resolve(hosts["lb1"], "api1")
    instances = [*({"port": p} for p in PORTS), {"port": 8009, "weight": 2}]
    edited.write_text(yaml.safe_dump({**current, "api_instances": instances}))
    try:
        run = playbook("--limit", "lb1", "--tags", "loadbalancers")
        assert run.returncode == 0, tail(run)
        assert set(recap(run)) == {"lb1"}, tail(run)
        site = hosts["lb1"].file(SITE_FILE).content_string
    finally:
        if original is None:
            edited.unlink()
        else:
            edited.write_text(original)
        restored = playbook("--limit", "lb1", "--tags", "loadbalancers")
    assert f"server {api1}:8009 weight=2 " in site, site
    assert restored.returncode == 0, tail(restored)
    assert "8009" not in hosts["lb1"].file(SITE_FILE).content_string


def test_scale_out_and_back_in_without_failed_requests(hosts):
    try:
        scale_out_then_in(hosts)
    except BaseException:
        # Back to the inventory's instances for the tests after this one.
        playbook()
        raise


def converge_under_three_clients(hosts, event: str, extra_vars: dict | None):
    """Run the converge playbook under three HTTPS clients at once: one
    connection per request (0 failed), kept-alive connections never retried
    and curl over HTTP/2 (20 requests per connection), both held to the
    reload's bound (docs/scaling.md). Returns the run."""
    outsider = hosts["outsider"]
    with (
        Load(outsider, LB_URL, concurrency=10, cacert=CACERT) as single,
        Load(outsider, LB_URL, concurrency=5, keepalive=True, cacert=CACERT) as pooled,
        Http2Load(outsider, LB_URL, CACERT) as h2,
    ):
        run = playbook(extra_vars=extra_vars)
    assert run.returncode == 0, tail(run)
    assert single.result["failed"] == 0, single.result
    assert set(h2.result["http_versions"]) <= {"2", "0"}, h2.result
    print(
        f"{event}: {reloads(run)} reload(s); failed: keep-alive {pooled.result['failed']}, HTTP/2 {h2.result['failed']}"
    )
    assert_reload_losses_bounded(pooled.result, reloads(run))
    assert_reload_losses_bounded(h2.result, reloads(run))
    return run


def scale_out_then_in(hosts):
    four = [{"port": port} for port in (*PORTS, 8004)]
    run = converge_under_three_clients(hosts, "scale out", {"api_instances": four})
    print("scale out: changed", {h: c["changed"] for h, c in recap(run).items()})
    result = requests_from(hosts["outsider"], LB_URL, 80, cacert=CACERT)
    assert sorted(result["instances"]) == sorted(f"{a}:{p}" for a in API_HOSTS for p in (*PORTS, 8004)), result
    assert status_from(hosts["lb1"], "http://api1:8004/health") == 200
    assert scan(hosts["outsider"], "api1", "8004")[8004] == "filtered"

    converge_under_three_clients(hosts, "scale in", None)
    result = requests_from(hosts["outsider"], LB_URL, 60, cacert=CACERT)
    assert sorted(result["instances"]) == sorted(f"{a}:{p}" for a in API_HOSTS for p in PORTS), result
    for api in API_HOSTS:
        unit = hosts[api].service(f"{API_NAME}@8004")
        assert not unit.is_running
        assert not unit.is_enabled
    assert "8004" not in hosts["lb1"].file(SITE_FILE).content_string
    for api in API_HOSTS:
        # The port is closed: nothing listens, and the firewall no longer opens it to lb1.
        assert hosts[api].check_output("ss -Htln 'sport = :8004'") == ""
        assert "8004" not in hosts[api].check_output("nft list table inet firewall")
        assert status_from(hosts["lb1"], f"http://{api}:8004/health") == 0


def test_ipv6_reaches_only_what_the_firewall_opens(hosts):
    """api1 and the outsider have IPv6 link-local addresses: over IPv6, SSH
    is open (firewall_ssh_sources has ::/0) and the API port filtered. The
    outsider's IPv6 address in monitoring_sources opens the port to it:
    test_observability.py's test_monitoring_ports_open_to_monitoring_sources_only,
    one apply for both families."""
    outsider = hosts["outsider"]
    api1 = f"{link_local(hosts['api1'])}%eth0"
    port = PORTS[0]
    assert scan(outsider, api1, f"22,{port}") == {22: "open", port: "filtered"}


def test_stopping_a_whole_api_host(hosts):
    """api2 drops off the network (its link goes down, as if powered off)
    under load: nginx's passive checks move the traffic to api1. Requests
    that hit api2 first wait for the connect timeout and are retried, so the
    client timeout is 15 s. Last test: it leaves api2 as it found it."""
    api2 = hosts["api2"]
    route = api2.check_output("ip route show default")
    window = 2  # nginx_lb_fail_timeout
    # The link goes down and up through Docker: over SSH, taking the link
    # down would cut the connection that has to bring it back.
    try:
        # Few requests: those that hit api2 wait for the connect timeout.
        first = Load(hosts["outsider"], LB_URL, concurrency=10, cacert=CACERT, timeout=15, min_requests=20)
        with first:
            docker("exec", "api2", "sh", "-c", "ip link set eth0 down")
            time.sleep(window)
        with Load(hosts["outsider"], LB_URL, concurrency=10, cacert=CACERT, timeout=15) as later:
            time.sleep(10)
    finally:
        docker("exec", "api2", "sh", "-c", "ip link set eth0 up")
        if route:
            docker("exec", "api2", "sh", "-c", f"ip route replace {route}")
    print(f"api2 down, first {window} s:", json.dumps(first.result))
    print("api2 down, the next 10 s:", json.dumps(later.result))
    # The first window: requests on connections nginx had open to api2 when it
    # vanished wait for it and time out (at most one per client worker); no
    # request gets an error answer, and new ones reach api1.
    assert set(first.result["statuses"]) <= {"200", "0"}, first.result
    assert set(first.result["errors"]) <= {"TimeoutError"}, first.result
    assert first.result["failed"] <= first.concurrency, first.result
    assert first.result["ok"] >= 20, first.result
    assert later.result["failed"] == 0, later.result
    assert set(later.result["instances"]) == {f"api1:{port}" for port in PORTS}, later.result
    # Back up: after fail_timeout nginx tries each api2 instance again, and
    # they serve: bounded wait for a round of 6 that reaches all six.
    expected = sorted(f"{api}:{port}" for api in API_HOSTS for port in PORTS)
    for _attempt in range(30):
        if sorted(requests_from(hosts["outsider"], LB_URL, 6, cacert=CACERT)["instances"]) == expected:
            break
        time.sleep(0.5)
    # Then round robin is exact again: 60 requests, 10 on each instance.
    result = requests_from(hosts["outsider"], LB_URL, 60, cacert=CACERT)
    assert result["failed"] == 0, result
    assert result["instances"] == dict.fromkeys(expected, 10), result
