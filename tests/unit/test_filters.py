"""The roles' filters (plugins/filter/lb.py), as plain functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "lb", Path(__file__).resolve().parents[2] / "plugins" / "filter" / "lb.py"
)
lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lb)


def test_interleave_takes_one_from_each_host_in_turn():
    assert lb.interleave([["a1", "a2", "a3"], ["b1"], ["c1", "c2"]]) == ["a1", "b1", "c1", "a2", "c2", "a3"]
    assert lb.interleave([]) == []
    assert lb.interleave([[], ["b1"]]) == ["b1"]


@pytest.mark.parametrize(
    ("address", "bracketed"),
    [("10.0.0.1", "10.0.0.1"), ("api1.example", "api1.example"), ("fd00::1", "[fd00::1]"), ("[::1]", "[::1]")],
)
def test_bracket_only_ipv6(address, bracketed):
    assert lb.bracket(address) == bracketed


def test_server_key_is_the_upstream_name_of_an_endpoint():
    assert lb.server_key({"address": "10.0.0.1", "port": 8001, "weight": 3}) == "10.0.0.1:8001"
    assert lb.server_key({"address": "fd00::1", "port": 8002}) == "[fd00::1]:8002"


@pytest.mark.parametrize("value", ["10", "10s", "500ms", "1m", "2h", "1d", "1w", "1M", "1y"])
def test_nginx_times(value):
    assert lb.is_nginx_time(value)


@pytest.mark.parametrize("value", ["", "s", "10 s", "1.5s", "10sec", "-1s", 10, None, "10S"])
def test_not_nginx_times(value):
    assert not lb.is_nginx_time(value)


def test_nginx_version_from_nginx_v():
    assert lb.nginx_version("nginx version: nginx/1.22.1\n") == "1.22.1"
    assert lb.nginx_version("nginx version: nginx/1.26.3 (Debian)") == "1.26.3"
    assert lb.nginx_version("sh: 1: nginx: not found") == "0"
    assert lb.nginx_version("") == "0"


def test_uvicorn_args_without_its_access_log_unless_asked_then_the_extra_ones():
    assert lb.uvicorn_args("app.api:app", "127.0.0.1", "%i") == [
        "app.api:app", "--host", "127.0.0.1", "--port", "%i", "--workers", "1", "--no-access-log",
    ]  # fmt: skip
    args = lb.uvicorn_args("shop:app", "0.0.0.0", 8002, workers=3, access_log=True, extra=["--timeout-keep-alive", 10])
    assert args == [
        "shop:app", "--host", "0.0.0.0", "--port", "8002", "--workers", "3", "--timeout-keep-alive", "10",
    ]  # fmt: skip


def test_wheel_platforms_from_oldest_manylinux_to_the_host_glibc():
    assert lb.wheel_platforms("x86_64", "2.19") == [
        "manylinux2014_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux_2_18_x86_64",
        "manylinux_2_19_x86_64",
    ]
    tags = lb.wheel_platforms("aarch64", "2.41")
    assert tags[0] == "manylinux2014_aarch64"
    assert tags[-1] == "manylinux_2_41_aarch64"
    assert len(tags) == 1 + 25
    with pytest.raises(ValueError, match="glibc"):
        lb.wheel_platforms("x86_64", "")


def test_server_line_renders_options_in_a_fixed_order_and_drains():
    server = {"address": "10.0.0.1", "port": 8001, "host": "api1", "backup": True, "weight": 3, "max_conns": 5}
    assert lb.server_line(server, 1, "2s") == "10.0.0.1:8001 weight=3 max_fails=1 fail_timeout=2s max_conns=5 backup"
    assert lb.server_line(server, 1, "2s", ["10.0.0.1:8001"]).endswith(" backup down")
    assert (
        lb.server_line({"address": "::1", "port": 1, "max_conns": 0, "down": False}, 0, "1s")
        == "[::1]:1 max_fails=0 fail_timeout=1s"
    )


def test_server_option_errors_name_the_host_port_key_and_value():
    servers = [
        {"host": "api1", "address": "10.0.0.1", "port": 8001, "weight": 0, "fail_timeout": "2x"},
        {"host": "api2", "address": "10.0.0.2", "port": 8002, "backup": "yes", "wieght": 2, "max_fails": -1},
        {"host": "api2", "address": "10.0.0.2", "port": 8003, "weight": 2, "max_conns": 0, "down": True},
    ]
    assert lb.server_option_errors(servers) == [
        "api_instances of api1, port 8001: weight must be an integer >= 1, got 0",
        "api_instances of api1, port 8001: fail_timeout must be an nginx time such as 10s, 500ms or 1m, got '2x'",
        "api_instances of api2, port 8002: backup must be true or false, got 'yes'",
        "api_instances of api2, port 8002: wieght is not an upstream option"
        " (known: weight, max_fails, fail_timeout, max_conns, backup, down)",
        "api_instances of api2, port 8002: max_fails must be an integer >= 0, got -1",
    ]
    assert lb.server_option_errors([{"port": 1, "weight": True}]) == [
        "api_instances of ?, port 1: weight must be an integer >= 1, got True"
    ]


@pytest.mark.parametrize(
    ("weight", "shown"),
    [(0, "0"), (-3, "-3"), ("heavy", "'heavy'"), (1.5, "1.5"), (True, "True"), ("2", "'2'"), (None, "None")],
)
def test_server_option_errors_refuse_every_weight_that_is_not_an_integer_of_at_least_1(weight, shown):
    # The bad-input table runs weight 0 end to end (tests/input, "upstream options").
    assert lb.server_option_errors([{"host": "api1", "port": 8001, "weight": weight}]) == [
        f"api_instances of api1, port 8001: weight must be an integer >= 1, got {shown}"
    ]


def test_server_option_errors_accept_valid_options():
    assert (
        lb.server_option_errors(
            [{"host": "api1", "port": 8001, "weight": 3, "max_fails": 0, "fail_timeout": "500ms", "max_conns": 0}]
        )
        == []
    )


def test_host_servers_prefer_the_inventory_to_the_published_endpoints():
    published = {
        "inventory_hostname": "api1",
        "api_advertised_address": "10.0.0.1",
        "api_endpoints": [{"port": 1, "address": "10.0.0.1"}],
    }
    assert lb.host_servers(published) == [{"port": 1, "address": "10.0.0.1", "host": "api1"}]
    edited = {**published, "api_instances": [{"port": 2, "weight": 3}]}
    assert lb.host_servers(edited) == [{"port": 2, "weight": 3, "address": "10.0.0.1", "host": "api1"}]


def test_firewall_rule_checks():
    rules = [
        {"name": "ok", "ports": [1, 65535, "80"], "sources": ["0.0.0.0/0", "::/0", "10.0.0.1", "fd00::/8"]},
        {"name": "bad", "ports": [0, 65536, "x"], "sources": ["10.0.0.300", "example.com"]},
    ]
    assert lb.firewall_bad_ports(rules) == ["bad: 0", "bad: 65536", "bad: x"]
    assert lb.firewall_bad_sources(rules) == ["bad: 10.0.0.300", "bad: example.com"]


def test_serving_keys_leave_out_down_backup_and_drained_servers():
    servers = [
        {"address": "10.0.0.1", "port": 1},
        {"address": "10.0.0.1", "port": 2, "down": True},
        {"address": "10.0.0.1", "port": 3, "backup": True},
        {"address": "10.0.0.1", "port": 4, "down": False, "backup": False},
    ]
    assert lb.serving_keys(servers) == ["10.0.0.1:1", "10.0.0.1:4"]
    assert lb.serving_keys(servers, ["10.0.0.1:4"]) == ["10.0.0.1:1"]
    assert lb.serving_keys(servers, ["10.0.0.1:1", "10.0.0.1:4"]) == []


def test_without_valid_port():
    good = [{"port": 1}, {"port": 65535, "weight": 2}]
    bad = [{"port": 0}, {"port": 65536}, {"weight": 2}, {"port": "8001"}, {"port": True}, {"port": 80.5}]
    assert lb.without_valid_port(good + bad) == bad


def test_compose_servers_use_the_service_name_and_keep_the_options():
    servers = lb.compose_servers([{"port": 8001, "weight": 3}, {"port": 8002}], "docker1")
    assert [lb.server_key(server) for server in servers] == ["api-8001:8001", "api-8002:8002"]
    assert lb.server_line(servers[0], 1, "2s") == "api-8001:8001 weight=3 max_fails=1 fail_timeout=2s"
    assert servers[1]["host"] == "docker1"
    assert lb.compose_service(8002) == lb.compose_service({"port": 8002}) == "api-8002"


def test_compose_address_is_fixed_per_port_and_inside_the_subnet():
    assert lb.compose_address(8001, "172.29.83.0/24") == f"172.29.83.{10 + 8001 % 245}"
    assert lb.compose_address(8001, "172.29.83.0/24") != lb.compose_address(8002, "172.29.83.0/24")
    assert lb.compose_address(8001, "10.9.0.0/16").startswith("10.9.")
    with pytest.raises(ValueError, match="too small"):
        lb.compose_address(8001, "172.29.83.0/29")


def test_compose_outdated_keeps_the_order_and_names_every_reason():
    probe = {
        "status": {"api-1": "current", "api-2": "changed", "api-3": "current", "api-4": "current"},
        "services": {
            "api-1": {"image": "sha256:new"},
            "api-2": {"image": "sha256:new"},
            "api-3": {"image": "sha256:old"},
            "api-4": {"image": "sha256:new"},
        },
    }
    instances = [{"port": port, "weight": 2} for port in (5, 4, 3, 2, 1)]
    outdated = lb.compose_outdated(instances, probe, "sha256:new")
    assert [lb.compose_service(i) for i in outdated] == ["api-5", "api-3", "api-2"]
    assert outdated[0] == {"port": 5, "weight": 2}
    assert lb.compose_outdated([{"port": 1}], probe, "sha256:newer") == [{"port": 1}]


def test_vrrp_router_id_is_derived_from_the_address_within_1_to_255():
    assert lb.vrrp_router_id("10.0.0.1") == (10 * 2**24 + 1) % 255 + 1
    assert {lb.vrrp_router_id(f"192.0.2.{n}") for n in range(256)} <= set(range(1, 256))
    assert lb.vrrp_router_id("192.0.2.10") != lb.vrrp_router_id("192.0.2.11")
    assert lb.vrrp_router_id("") == 0
    assert lb.vrrp_router_id("not-an-address") == 0


def test_ha_host_address_prefers_the_inventory_then_the_default_route():
    facts = {"ansible_facts": {"default_ipv4": {"address": "192.0.2.5"}}}
    assert lb.ha_host_address({**facts, "lb_ha_address": "198.51.100.5"}) == "198.51.100.5"
    assert lb.ha_host_address(facts) == "192.0.2.5"
    assert lb.ha_host_address({}) == ""


def test_ha_router_ids_take_the_inventory_value_else_derive_it():
    hosts = [
        {"lb_ha_vip": "192.0.2.10"},
        {"lb_ha_vip": "192.0.2.20", "lb_ha_virtual_router_id": "7"},
        {"lb_ha_vip": ""},
    ]
    assert lb.ha_router_ids(hosts) == {"192.0.2.10": lb.vrrp_router_id("192.0.2.10"), "192.0.2.20": 7}
