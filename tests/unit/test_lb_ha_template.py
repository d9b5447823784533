"""The lb_ha role's keepalived config and scripts, rendered for a sample pair."""

from __future__ import annotations

from conftest import render

FACTS = {"default_ipv4": {"interface": "eth0", "address": "192.0.2.11"}, "interfaces": ["lo", "eth0"]}
PEER = {
    "inventory_hostname": "lb2",
    "lb_ha_vip": "192.0.2.100",
    "ansible_facts": {"default_ipv4": {"address": "192.0.2.12"}},
}


def keepalived(template: str = "keepalived.conf.j2", **variables) -> str:
    context = {
        "inventory_hostname": "lb1",
        "groups": {"loadbalancers": ["lb1", "lb2"]},
        "hostvars": {"lb1": {"inventory_hostname": "lb1", "lb_ha_vip": "192.0.2.100"}, "lb2": PEER},
        "ansible_facts": FACTS,
        "lb_ha_vip": "192.0.2.100",
        **variables,
    }
    return render("lb_ha", template, context)


def lines(config: str) -> list[str]:
    return [line.strip() for line in config.splitlines()]


def test_pair_defaults_unicast_nopreempt_no_authentication():
    config = lines(keepalived())
    assert "state BACKUP" in config
    assert "nopreempt" in config
    assert "unicast_src_ip 192.0.2.11" in config
    assert config[config.index("unicast_peer {") + 1] == "192.0.2.12"
    assert "192.0.2.100/32 dev eth0" in config
    assert "advert_int 1" in config
    # The first host of the sorted pair gets the higher priority.
    assert "priority 254" in config
    assert not any(line.startswith("auth_") for line in config)
    assert "virtual_router_id " + str((int.from_bytes(bytes([192, 0, 2, 100]), "big")) % 255 + 1) in config


def test_multicast_preempt_ipv6_and_a_password_when_asked():
    config = lines(
        keepalived(lb_ha_unicast=False, lb_ha_preempt=True, lb_ha_vip6="2001:db8::100", lb_ha_auth_pass="s3cret")
    )
    assert not any(line.startswith("unicast") for line in config)
    assert "nopreempt" not in config
    assert "2001:db8::100/128 dev eth0" in config
    assert "auth_type PASS" in config
    assert "auth_pass s3cret" in config


def test_the_check_asks_the_local_nginx_through_the_health_path_verified():
    https = keepalived("lb-ha-check.sh.j2", nginx_lb_tls_mode="selfsigned", nginx_lb_site_name="site")
    assert "--resolve localhost:443:127.0.0.1" in https
    assert "--cacert /etc/nginx/tls/site/fullchain.pem" in https
    assert https.rstrip().endswith("https://localhost:443/health")
    assert "--insecure" not in https
    assert " -k " not in https
    plain = keepalived("lb-ha-check.sh.j2", nginx_lb_tls_mode="off", nginx_lb_server_names=["api.example.com"])
    assert "--resolve api.example.com:80:127.0.0.1" in plain
    assert "--cacert" not in plain
    assert plain.rstrip().endswith("http://api.example.com:80/health")


def test_the_release_after_a_crash_comes_before_the_peer_can_take_over():
    script = keepalived("lb-ha-release.sh.j2")
    assert '[ "${SERVICE_RESULT:-success}" = success ] && exit 0' in script
    # The peer takes over 2 x advert_int after the last advert at the earliest.
    assert "sleep 1.5" in script
    assert "ip address del 192.0.2.100/32 dev eth0" in script
