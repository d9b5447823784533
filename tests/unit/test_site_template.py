"""The nginx_lb site template, rendered from sample inventories."""

from __future__ import annotations

import re

from conftest import api_host


def upstream_servers(config: str) -> list[str]:
    block = re.search(r"upstream \S+ \{(.*?)\n\}", config, re.DOTALL)
    assert block, config
    return re.findall(r"^\s*server (\S+);", block.group(1), re.MULTILINE)


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
    assert servers[:3] == ["10.0.0.11:8001", "10.0.0.11:8002", "10.0.0.11:8003"]
    assert servers[3:] == ["10.0.0.12:8001", "10.0.0.12:8002", "10.0.0.12:8003"]


def test_hosts_outside_the_backend_group_are_ignored(render_site):
    outsider = api_host("outsider", "10.0.0.99", [9000])
    config = render_site([api_host("api1", "10.0.0.11", [8001])], hostvars={"outsider": outsider})
    assert "10.0.0.99" not in config


def test_ipv6_addresses_are_bracketed(render_site):
    config = render_site([api_host("api1", "fd00::11", [8001])])
    assert upstream_servers(config) == ["[fd00::11]:8001"]


def test_round_robin_has_no_method_directive(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])])
    assert not re.search(r"^\s*(least_conn|ip_hash|hash|random);", config, re.MULTILINE)


def test_least_conn_and_ip_hash_directives(render_site):
    hosts = [api_host("api1", "127.0.0.1", [8001])]
    assert re.search(r"^\s*least_conn;", render_site(hosts, nginx_lb_method="least_conn"), re.MULTILINE)
    assert re.search(r"^\s*ip_hash;", render_site(hosts, nginx_lb_method="ip_hash"), re.MULTILINE)


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
    assert "access_log /var/log/nginx/shop-access.log;" in config
    assert "error_log /var/log/nginx/shop-error.log;" in config
    assert "upstream shop_backend {" in config


def test_ipv6_listener_follows_the_switch(render_site):
    hosts = [api_host("api1", "127.0.0.1", [8001])]
    assert "listen [::]:80" not in render_site(hosts)
    assert "listen [::]:80 default_server;" in render_site(hosts, nginx_lb_listen_ipv6=True)


def test_rendering_is_stable(render_site):
    hosts = [api_host("api1", "127.0.0.1", [8001, 8002])]
    assert render_site(hosts) == render_site(hosts)


def test_starts_with_the_ansible_managed_header(render_site):
    config = render_site([api_host("api1", "127.0.0.1", [8001])])
    assert config.splitlines()[:3] == ["#", "# Ansible managed", "#"]
