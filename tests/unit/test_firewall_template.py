"""The firewall role's nftables ruleset, rendered from sample rules."""

from __future__ import annotations

from conftest import api_host, evaluate, render

LB_RULE = {"name": "nginx site", "proto": "tcp", "ports": [80, 443], "sources": ["0.0.0.0/0", "::/0"]}


def ruleset(**variables) -> str:
    variables.setdefault("ansible_facts", {"env": {}})
    # The default collects what the exporting roles published
    # (test_only_the_exporting_roles_published_rules_are_opened).
    variables.setdefault("firewall_dependent_rules", [])
    return render("firewall", "nftables.conf.j2", variables)


def rule_lines(config: str) -> list[str]:
    return [line.strip() for line in config.splitlines() if " dport " in line]


def test_only_its_own_table_is_replaced_never_the_whole_ruleset():
    config = ruleset()
    assert "flush ruleset" not in config
    assert config.index("table inet firewall\ndelete table inet firewall\n") < config.index("table inet firewall {")
    assert "policy drop;" in config
    assert "ct state established,related accept" in config
    assert 'iif "lo" accept' in config


def test_ssh_comes_first_with_its_sources():
    config = ruleset(firewall_ssh_port=2222, firewall_ssh_sources=["192.0.2.0/24"], firewall_dependent_rules=[LB_RULE])
    lines = rule_lines(config)
    assert lines[0] == 'ip saddr { 192.0.2.0/24 } tcp dport { 2222 } accept comment "ssh"'
    assert not any(line.startswith("ip6") and "2222" in line for line in lines)


def test_dependent_rules_split_ipv4_and_ipv6_sources():
    config = ruleset(firewall_dependent_rules=[LB_RULE])
    assert 'ip saddr { 0.0.0.0/0 } tcp dport { 80, 443 } accept comment "nginx site"' in rule_lines(config)
    assert 'ip6 saddr { ::/0 } tcp dport { 80, 443 } accept comment "nginx site"' in rule_lines(config)


def test_api_ports_open_to_the_load_balancers_only():
    api = {
        "name": "api instances",
        "proto": "tcp",
        "ports": [8003, 8001, 8002],
        "sources": ["172.20.0.2", "172.20.0.3"],
    }
    lines = rule_lines(ruleset(firewall_dependent_rules=[api]))
    assert 'ip saddr { 172.20.0.2, 172.20.0.3 } tcp dport { 8001, 8002, 8003 } accept comment "api instances"' in lines
    assert not any("8001" in line and line.startswith("ip6") for line in lines)


def test_empty_sources_open_nothing():
    config = ruleset(firewall_rules=[{"name": "closed", "ports": [9100], "sources": []}])
    assert not any("9100" in line for line in rule_lines(config))
    assert "# no sources: ports 9100 stay closed" in config


def test_udp_user_rule_and_reject_or_drop():
    config = ruleset(firewall_rules=[{"name": "dns", "proto": "udp", "ports": [53], "sources": ["10.0.0.0/8"]}])
    assert 'ip saddr { 10.0.0.0/8 } udp dport { 53 } accept comment "dns"' in rule_lines(config)
    assert config.rstrip().endswith("reject with icmpx type admin-prohibited\n\t}\n}")
    assert "reject" not in ruleset(firewall_reject=False)


def test_ping_can_be_refused():
    assert "echo-request" in ruleset()
    assert "echo-request" not in ruleset(firewall_allow_ping=False)


def test_api_role_exports_its_ports_to_every_load_balancer():
    """The api role's default rule, for a host behind two load balancers."""
    hostvars = {
        "lb1": {"ansible_facts": {"default_ipv4": {"address": "10.0.0.1"}}},
        "lb2": {"ansible_facts": {"default_ipv4": {"address": "10.0.0.2"}}},
        "api1": api_host("api1", "10.0.1.1", [8001, 8002]),
    }
    variables = {
        "groups": {"loadbalancers": ["lb1", "lb2"], "api_servers": ["api1"]},
        "hostvars": hostvars,
        "inventory_hostname": "api1",
        "api_instances": [{"port": 8001}, {"port": 8002}],
    }
    rules = evaluate("api", "{{ api_firewall_rules }}", variables)
    assert rules == [
        {
            "name": "rag-photographie instances",
            "proto": "tcp",
            "ports": [8001, 8002],
            "sources": ["10.0.0.1", "10.0.0.2"],
        },
        # /metrics on the same ports, for monitoring_sources: none by default.
        {"name": "rag-photographie metrics", "proto": "tcp", "ports": [8001, 8002], "sources": []},
    ]
    monitored = evaluate("api", "{{ api_firewall_rules }}", {**variables, "monitoring_sources": ["10.9.0.5"]})
    assert monitored[1]["sources"] == ["10.9.0.5"]
    # Rules without sources open nothing.
    assert not [line for line in rule_lines(ruleset(firewall_rules=[rules[1]])) if "8001" in line]


def test_nginx_exporter_port_opens_to_monitoring_sources_only():
    rules = evaluate("nginx_exporter", "{{ nginx_exporter_firewall_rules }}", {})
    assert rules == [{"name": "prometheus nginx exporter", "proto": "tcp", "ports": [9113], "sources": []}]
    rules = evaluate("nginx_exporter", "{{ nginx_exporter_firewall_rules }}", {"monitoring_sources": ["10.9.0.5/32"]})
    assert rules[0]["sources"] == ["10.9.0.5/32"]
    assert 'ip saddr { 10.9.0.5/32 } tcp dport { 9113 } accept comment "prometheus nginx exporter"' in ruleset(
        firewall_rules=rules
    )


def test_api_role_marks_a_load_balancer_without_facts():
    variables = {
        "groups": {"loadbalancers": ["lb1", "lb2"]},
        "hostvars": {"lb1": {"ansible_facts": {"default_ipv4": {"address": "10.0.0.1"}}}, "lb2": {}},
    }
    # The api preflight refuses the empty entry with a message naming the group.
    assert evaluate("api", "{{ api_firewall_sources }}", variables) == ["10.0.0.1", ""]


def test_nginx_lb_role_exports_http_and_https_to_anyone():
    rules = evaluate("nginx_lb", "{{ nginx_lb_firewall_rules }}", {})
    assert rules == [
        {"name": "nginx rag-photographie", "proto": "tcp", "ports": [80, 443], "sources": ["0.0.0.0/0", "::/0"]}
    ]


def test_vrrp_rule_accepts_the_protocol_from_the_peer_only():
    rule = {"name": "vrrp peer", "proto": "vrrp", "ports": [], "sources": ["192.0.2.12", "2001:db8::12"]}
    lines = [line.strip() for line in ruleset(firewall_dependent_rules=[rule]).splitlines()]
    assert 'ip saddr { 192.0.2.12 } ip protocol 112 accept comment "vrrp peer"' in lines
    assert 'ip6 saddr { 2001:db8::12 } ip6 nexthdr 112 accept comment "vrrp peer"' in lines
    assert not any("vrrp" in line and "dport" in line for line in lines)


def test_only_the_exporting_roles_published_rules_are_opened():
    """The firewall reads `<role>_firewall_export` of the roles it names, in
    their order; a variable that only looks like one opens nothing."""
    vrrp = {"name": "vrrp from lb2", "proto": "vrrp", "ports": [], "sources": ["192.0.2.12"]}
    stray = {"name": "left in group_vars", "ports": [8080], "sources": ["0.0.0.0/0"]}
    published = {
        "lb_ha_firewall_export": [vrrp],
        "nginx_lb_firewall_export": [LB_RULE],
        "foo_firewall_export": [stray],
        "legacy_firewall_export": [stray],
    }
    # As in a play: the host's variables, also under hostvars.
    host = {"inventory_hostname": "lb1", "hostvars": {"lb1": published}, **published}
    rules = evaluate("firewall", "{{ firewall_dependent_rules }}", host)
    assert rules == [LB_RULE, vrrp]
    assert evaluate("firewall", "{{ firewall_dependent_rules }}", {"inventory_hostname": "lb1", "hostvars": {}}) == []
    config = ruleset(**published, firewall_dependent_rules=rules)
    assert "8080" not in config
