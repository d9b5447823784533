"""The nginx_lb site template, rendered from sample inventories."""

from __future__ import annotations

import json
import re

from conftest import api_host


def upstream_lines(config: str) -> list[str]:
    block = re.search(r"upstream \S+ \{(.*?)\n\}", config, re.DOTALL)
    assert block, config
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def upstream_servers(config: str) -> list[str]:
    """The address:port of each server line."""
    return [line.split()[1].rstrip(";") for line in upstream_lines(config) if line.startswith("server ")]


def server_options(config: str) -> dict[str, str]:
    """address:port -> the options after it, as one string."""
    return {
        line.split()[1]: " ".join(line.rstrip(";").split()[2:])
        for line in upstream_lines(config)
        if line.startswith("server ")
    }


def method_lines(config: str) -> list[str]:
    skip = ("server ", "zone ", "keepalive ", "keepalive_timeout ", "keepalive_time ", "keepalive_requests ")
    return [line for line in upstream_lines(config) if not line.startswith(skip)]


def test_seed_topology_gives_three_loopback_servers(render_site):
    config = render_site([api_host("node1", "127.0.0.1", [8001, 8002, 8003])])
    assert upstream_servers(config) == ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]


def test_every_host_times_every_instance(render_site):
    config = render_site(
        [
            api_host("api1", "10.0.0.11", [8001, 8002, 8003]),
            api_host("api2", "10.0.0.12", [8001, 8002, 8003]),
        ]
    )
    servers = upstream_servers(config)
    assert len(servers) == 6
    # Interleaved across hosts: a retry after a dead host lands on the other.
    assert servers == [
        "10.0.0.11:8001",
        "10.0.0.12:8001",
        "10.0.0.11:8002",
        "10.0.0.12:8002",
        "10.0.0.11:8003",
        "10.0.0.12:8003",
    ]


def test_hosts_with_different_instance_counts_interleave(render_site):
    config = render_site(
        [api_host("api1", "10.0.0.11", [8001]), api_host("api2", "10.0.0.12", [8001, 8002, 8003, 8004])]
    )
    assert upstream_servers(config) == [
        "10.0.0.11:8001",
        "10.0.0.12:8001",
        "10.0.0.12:8002",
        "10.0.0.12:8003",
        "10.0.0.12:8004",
    ]


def test_hosts_outside_the_backend_group_are_ignored(render_site):
    outsider = api_host("outsider", "10.0.0.99", [9000])
    config = render_site([api_host("api1", "10.0.0.11", [8001])], hostvars={"outsider": outsider})
    assert "10.0.0.99" not in config


def test_ipv6_addresses_are_bracketed(render_site):
    config = render_site([api_host("api1", "fd00::11", [8001])])
    assert upstream_servers(config) == ["[fd00::11]:8001"]


ONE = [api_host("api1", "127.0.0.1", [8001, 8002])]


def test_round_robin_has_no_method_directive(render_site):
    assert method_lines(render_site(ONE)) == []


def test_least_conn(render_site):
    assert method_lines(render_site(ONE, nginx_lb_method="least_conn")) == ["least_conn;"]


def test_ip_hash(render_site):
    assert method_lines(render_site(ONE, nginx_lb_method="ip_hash")) == ["ip_hash;"]


def test_hash_with_key(render_site):
    config = render_site(ONE, nginx_lb_method="hash", nginx_lb_hash_key="$request_uri")
    assert method_lines(config) == ["hash $request_uri;"]


def test_hash_consistent(render_site):
    config = render_site(ONE, nginx_lb_method="hash", nginx_lb_hash_key="$http_x_tenant", nginx_lb_hash_consistent=True)
    assert method_lines(config) == ["hash $http_x_tenant consistent;"]


def test_random(render_site):
    assert method_lines(render_site(ONE, nginx_lb_method="random")) == ["random;"]


def test_random_two_least_conn(render_site):
    config = render_site(ONE, nginx_lb_method="random", nginx_lb_random_two=True)
    assert method_lines(config) == ["random two least_conn;"]


def test_servers_get_the_role_level_passive_check_defaults(render_site):
    options = server_options(render_site(ONE))
    assert options == {
        "127.0.0.1:8001": "max_fails=1 fail_timeout=2s",
        "127.0.0.1:8002": "max_fails=1 fail_timeout=2s",
    }
    tuned = server_options(render_site(ONE, nginx_lb_max_fails=3, nginx_lb_fail_timeout="30s"))
    assert tuned["127.0.0.1:8001"] == "max_fails=3 fail_timeout=30s"


def test_weighted_servers_as_in_the_seed(render_site):
    host = {
        "inventory_hostname": "api1",
        "api_advertised_address": "127.0.0.1",
        "api_endpoints": [
            {"address": "127.0.0.1", "port": 8001, "weight": 3},
            {"address": "127.0.0.1", "port": 8002, "weight": 2},
            {"address": "127.0.0.1", "port": 8003, "weight": 1},
        ],
    }
    options = server_options(render_site([host]))
    assert options == {
        "127.0.0.1:8001": "weight=3 max_fails=1 fail_timeout=2s",
        "127.0.0.1:8002": "weight=2 max_fails=1 fail_timeout=2s",
        "127.0.0.1:8003": "weight=1 max_fails=1 fail_timeout=2s",
    }


def test_per_instance_options(render_site):
    host = {
        "inventory_hostname": "api1",
        "api_advertised_address": "127.0.0.1",
        "api_endpoints": [
            {"address": "127.0.0.1", "port": 8001, "max_fails": 0, "fail_timeout": "5s", "max_conns": 50},
            {"address": "127.0.0.1", "port": 8002, "down": True},
            {"address": "127.0.0.1", "port": 8003, "backup": True},
            {"address": "127.0.0.1", "port": 8004, "backup": False, "down": False, "max_conns": 0},
        ],
    }
    options = server_options(render_site([host]))
    assert options == {
        "127.0.0.1:8001": "max_fails=0 fail_timeout=5s max_conns=50",
        "127.0.0.1:8002": "max_fails=1 fail_timeout=2s down",
        "127.0.0.1:8003": "max_fails=1 fail_timeout=2s backup",
        "127.0.0.1:8004": "max_fails=1 fail_timeout=2s",
    }


def test_retry_policy_defaults_skip_non_idempotent_requests(render_site):
    config = render_site(ONE)
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in config
    assert "proxy_next_upstream_tries 3;" in config
    assert "proxy_next_upstream_timeout 10s;" in config
    assert "non_idempotent" not in config


def test_retry_of_non_idempotent_requests_is_opt_in(render_site):
    config = render_site(ONE, nginx_lb_retry_non_idempotent=True, nginx_lb_proxy_next_upstream=["error"])
    assert "proxy_next_upstream error non_idempotent;" in config


def test_extra_config_lands_in_the_server_block(render_site):
    config = render_site(ONE, nginx_lb_extra_config="client_max_body_size 20m;\nadd_header X-Lb lb1;\n")
    server = config[config.index("server {") :]
    assert "    client_max_body_size 20m;\n    add_header X-Lb lb1;\n}" in server
    assert "nginx_lb_extra_config" not in render_site(ONE)


def test_keepalive_zone_and_proxy_headers(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])])
    assert "keepalive 32;" in config
    assert "zone rag_photographie_backend 64k;" in config
    assert "proxy_http_version 1.1;" in config
    assert 'proxy_set_header Connection "";' in config
    for header in ("Host $host", "X-Real-IP $remote_addr", "X-Forwarded-For", "X-Forwarded-Proto $scheme"):
        assert f"proxy_set_header {header}" in config


def test_stub_status_is_loopback_only(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])])
    status = re.search(r"location = /nginx_status \{(.*?)\}", config, re.DOTALL)
    assert status
    lines = [line.strip() for line in status.group(1).strip().splitlines()]
    assert lines == ["stub_status;", "access_log off;", "allow 127.0.0.1;", "allow ::1;", "deny all;"]


def test_per_site_logs(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])], nginx_lb_site_name="shop")
    assert "access_log /var/log/nginx/shop-access.log shop_backend_json buffer=64k flush=1s;" in config
    assert "error_log /var/log/nginx/shop-error.log warn;" in config
    assert "upstream shop_backend {" in config


def test_access_log_unbuffered_when_asked(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])], nginx_lb_access_log_buffer="")
    lines = sorted({line.strip() for line in config.splitlines() if line.strip().startswith("access_log /")})
    assert lines == ["access_log /var/log/nginx/rag-photographie-access.log rag_photographie_backend_json;"]


def json_log_format(config: str) -> str:
    """The JSON log_format's template: its quoted pieces joined, as nginx joins them."""
    block = re.search(r"^log_format (\S+) escape=json (.*?);$", config, re.DOTALL | re.MULTILINE)
    assert block, config
    return "".join(re.findall(r"'([^']*)'", block.group(2)))


def test_json_log_lines_parse_with_retried_upstream_fields(render_site):
    template = json_log_format(render_site([api_host("api1", "127.0.0.1", [8001, 8002])]))
    sample = {
        "$upstream_addr": "127.0.0.1:8001, 127.0.0.1:8002",
        "$upstream_status": "502, 200",
        "$upstream_response_time": "0.000, 0.004",
        "$upstream_connect_time": "-, 0.001",
        "$request_time": "0.005",
        "$status": "200",
        "$body_bytes_sent": "77",
        "$request_id": "0f" * 16,
    }
    line = re.sub(r"\$[a-z_0-9]+", lambda m: sample.get(m.group(0), "x"), template)
    entry = json.loads(line)
    assert entry["upstream_addr"] == "127.0.0.1:8001, 127.0.0.1:8002"
    assert entry["upstream_status"] == "502, 200"
    assert entry["status"] == 200
    assert entry["request_id"] == "0f" * 16
    assert {"time", "remote_addr", "method", "uri", "bytes", "request_time", "upstream_connect_time"} <= set(entry)


def test_request_id_goes_to_the_api_and_back_to_the_client(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])])
    assert "proxy_set_header X-Request-ID $request_id;" in config
    assert "add_header X-Request-ID $request_id always;" in config
    off = render_site([api_host("api1", "127.0.0.1", [8001])], nginx_lb_request_id=False)
    assert "X-Request-ID" not in off


def test_combined_log_format_when_chosen(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])], nginx_lb_access_log_format="combined")
    assert "log_format" not in config
    assert "access_log /var/log/nginx/rag-photographie-access.log combined buffer=64k flush=1s;" in config


def test_metrics_path_is_not_proxied(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])])
    assert re.search(r"location = /metrics \{\s*return 404;\s*\}", config)


def test_ipv6_listener_follows_the_switch(render_site):
    hosts = [api_host("api1", "127.0.0.1", [8001])]
    assert "listen [::]:80" not in render_site(hosts)
    assert "listen [::]:80 default_server backlog=4096;" in render_site(hosts, nginx_lb_listen_ipv6=True)


def test_rendering_does_not_depend_on_the_order_of_mappings(render_site):
    """The same inventory with its mappings in another order (hostvars, each
    host's variables, each instance's options) renders the same file, byte
    for byte: the upstream follows the group's order, options a fixed order."""
    instances = [{"port": 8001, "weight": 2, "max_fails": 1, "fail_timeout": "5s"}, {"port": 8002, "max_conns": 9}]
    hosts = [
        api_host("api1", "10.0.0.11", [8001, 8002], api_instances=instances),
        api_host("api2", "10.0.0.12", [8001, 8002], api_instances=instances),
    ]
    groups = {"api_servers": ["api1", "api2"], "loadbalancers": ["lb1"]}
    first = render_site(hosts, groups=groups)
    shuffled = [
        {
            **dict(reversed(list(host.items()))),
            "api_instances": [dict(reversed(list(entry.items()))) for entry in instances],
        }
        for host in reversed(hosts)
    ]
    assert render_site(shuffled, groups=groups) == first
    assert server_options(first) == {
        "10.0.0.11:8001": "weight=2 max_fails=1 fail_timeout=5s",
        "10.0.0.12:8001": "weight=2 max_fails=1 fail_timeout=5s",
        "10.0.0.11:8002": "max_fails=1 fail_timeout=2s max_conns=9",
        "10.0.0.12:8002": "max_fails=1 fail_timeout=2s max_conns=9",
    }
    assert upstream_servers(first) == ["10.0.0.11:8001", "10.0.0.12:8001", "10.0.0.11:8002", "10.0.0.12:8002"]


def test_starts_with_the_ansible_managed_header(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])])
    assert config.splitlines()[:3] == ["#", "# Ansible managed", "#"]


def test_idle_upstream_connections_expire_before_a_failed_server_is_retried(render_site):
    lines = upstream_lines(render_site([api_host("api1", "10.0.0.11", [8001])]))
    assert "keepalive 32;" in lines
    assert "keepalive_timeout 1s;" in lines
    assert "max_fails=1 fail_timeout=2s" in " ".join(lines)


def test_inventory_instances_win_over_published_endpoints(render_site):
    # A run limited to the load balancers: the published endpoints are from an
    # earlier run, api_instances is the inventory as it is now.
    host = api_host("api1", "10.0.0.11", [8001, 8002, 8003], api_instances=[{"port": 9001, "weight": 2}])
    assert server_options(render_site([host])) == {"10.0.0.11:9001": "weight=2 max_fails=1 fail_timeout=2s"}


def test_drained_servers_are_rendered_down_and_nothing_else_changes(render_site):
    hosts = [api_host("api1", "10.0.0.11", [8001, 8002]), api_host("api2", "fd00::12", [8001])]
    plain = server_options(render_site(hosts))
    drained = server_options(render_site(hosts, _nginx_lb_drained=["10.0.0.11:8002", "[fd00::12]:8001"]))
    assert drained == {
        "10.0.0.11:8001": plain["10.0.0.11:8001"],
        "10.0.0.11:8002": plain["10.0.0.11:8002"] + " down",
        "[fd00::12]:8001": plain["[fd00::12]:8001"] + " down",
    }


def test_keepalive_time_bounds_upstream_connections_where_nginx_has_it(render_site):
    one = [api_host("api1", "127.0.0.1", [8001])]
    assert "keepalive_time 5s;" in upstream_lines(render_site(one, _nginx_lb_version="1.22.1"))
    assert "keepalive_time 7s;" in upstream_lines(render_site(one, nginx_lb_keepalive_time="7s"))
    assert not any(
        line.startswith("keepalive_time ") for line in upstream_lines(render_site(one, _nginx_lb_version="1.18.0"))
    )


def test_upstream_zone_grows_with_the_servers_unless_set(render_site):
    """auto: 32k + 1k per server, at least 64k. nginx 1.26 held 63 servers and refused 66
    in a 64k zone ("no memory in upstream zone") and needed 512k for 600."""

    def zone(host_count: int, **overrides) -> str:
        hosts = [api_host(f"api{n}", f"10.0.{n // 250}.{n % 250 + 1}", [8001, 8002, 8003]) for n in range(host_count)]
        config = render_site(hosts, **overrides)
        return re.search(r"^\s*zone \S+ (\S+);", config, re.MULTILINE).group(1)

    assert zone(1) == "64k"
    assert zone(24) == "104k"
    assert zone(200) == "632k"
    assert zone(200, nginx_lb_upstream_zone_size="2m") == "2m"
