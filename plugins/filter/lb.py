"""Filters shared by the roles: what Jinja should not compute by hand.

Each one is a plain function, unit-tested in tests/unit/test_filters.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# nginx time: a number with an optional unit (ms, s, m, h, d, w, M, y).
NGINX_TIME = re.compile(r"^[0-9]+(ms|s|m|h|d|w|M|y)?$")


def _is_int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _nginx_time(value: Any) -> bool:
    return isinstance(value, str) and bool(NGINX_TIME.match(value))


# Upstream server options an api_instances entry may carry: the check of each
# value and what the check wants, for the message. The one table to extend
# for a new option, with its rendering in server_line().
SERVER_OPTIONS = {
    "weight": (lambda value: _is_int_at_least(value, 1), "an integer >= 1"),
    "max_fails": (lambda value: _is_int_at_least(value, 0), "an integer >= 0"),
    "fail_timeout": (_nginx_time, "an nginx time such as 10s, 500ms or 1m"),
    "max_conns": (lambda value: _is_int_at_least(value, 0), "an integer >= 0"),
    "backup": (lambda value: isinstance(value, bool), "true or false"),
    "down": (lambda value: isinstance(value, bool), "true or false"),
}
# Keys of an upstream server that are not options: the api_instances port, and
# what lb_host_servers adds (the published address, the inventory host).
INSTANCE_KEYS = ("port", "address", "host")


def bracket(address: str) -> str:
    """An address as it stands before `:port` in a URL or an nginx server line."""
    address = str(address)
    if ":" in address and not address.startswith("["):
        return f"[{address}]"
    return address


def server_key(endpoint: Mapping[str, Any]) -> str:
    """`address:port` of an endpoint, as the upstream names the server: the drain key."""
    return f"{bracket(endpoint['address'])}:{endpoint['port']}"


def interleave(lists: Iterable[Sequence[Any]]) -> list[Any]:
    """One list taking the first item of each list, then the second of each, and so on."""
    lists = [list(items) for items in lists]
    longest = max((len(items) for items in lists), default=0)
    return [items[i] for i in range(longest) for items in lists if i < len(items)]


def is_nginx_time(value: Any) -> bool:
    """Whether `value` is an nginx time such as 10s, 500ms or 1m."""
    return _nginx_time(value)


def without_valid_port(instances: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The api_instances entries whose `port` is missing or not an integer within 1-65535."""
    return [
        instance
        for instance in instances
        if not (isinstance(instance.get("port"), int) and not isinstance(instance.get("port"), bool))
        or not 1 <= instance["port"] <= 65535
    ]


def host_servers(host: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The upstream servers of one backend host, from its hostvars: each entry of its
    api_instances (inventory), or of its published api_endpoints when the inventory
    leaves api_instances to the api role's default, at its published address."""
    instances = host["api_instances"] if "api_instances" in host else host.get("api_endpoints", [])
    address = host["api_advertised_address"]
    name = host.get("inventory_hostname", address)
    return [{**dict(instance), "address": address, "host": name} for instance in instances]


def server_option_errors(servers: Iterable[Mapping[str, Any]]) -> list[str]:
    """Messages for every upstream option of `servers` that nginx would refuse or misread."""
    errors = []
    for server in servers:
        where = f"api_instances of {server.get('host', server.get('address', '?'))}, port {server.get('port', '?')}"
        for key, value in server.items():
            if key in INSTANCE_KEYS:
                continue
            prefix = f"{where}: {key}"
            if key not in SERVER_OPTIONS:
                errors.append(f"{prefix} is not an upstream option (known: {', '.join(SERVER_OPTIONS)})")
                continue
            check, wanted = SERVER_OPTIONS[key]
            if not check(value):
                errors.append(f"{prefix} must be {wanted}, got {value!r}")
    return errors


def server_line(server: Mapping[str, Any], max_fails: int, fail_timeout: str, drained: Iterable[str] = ()) -> str:
    """The text after `server ` in the upstream: key and options; `down` when drained."""
    parts = [server_key(server)]
    if "weight" in server:
        parts.append(f"weight={server['weight']}")
    parts.append(f"max_fails={server.get('max_fails', max_fails)}")
    parts.append(f"fail_timeout={server.get('fail_timeout', fail_timeout)}")
    if server.get("max_conns", 0) > 0:
        parts.append(f"max_conns={server['max_conns']}")
    if server.get("backup", False):
        parts.append("backup")
    if server.get("down", False) or server_key(server) in set(drained):
        parts.append("down")
    return " ".join(parts)


def serving_keys(servers: Iterable[Mapping[str, Any]], drained: Iterable[str] = ()) -> list[str]:
    """Keys of the primary servers in rotation: neither down, nor backup, nor drained."""
    drained = set(drained)
    return [
        server_key(server)
        for server in servers
        if not server.get("down", False) and not server.get("backup", False) and server_key(server) not in drained
    ]


def nginx_version(output: str) -> str:
    """The version in `nginx -v` output ("nginx version: nginx/1.22.1"), or "0" when absent."""
    match = re.search(r"nginx/([0-9][0-9.]*)", output or "")
    return match.group(1) if match else "0"


def wheel_platforms(machine: str, glibc: str, oldest_minor: int = 17) -> list[str]:
    """pip --platform tags a host with this architecture and glibc can install."""
    match = re.match(r"^2\.([0-9]+)", str(glibc))
    if not match:
        raise ValueError(f"not a glibc 2.x version: {glibc!r}")
    newest = int(match.group(1))
    return [f"manylinux2014_{machine}"] + [
        f"manylinux_2_{minor}_{machine}" for minor in range(oldest_minor, newest + 1)
    ]


def uvicorn_args(
    module: str,
    host: str,
    port: Any,
    workers: int = 1,
    access_log: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """uvicorn's arguments for one instance, the same for a systemd unit and a
    Compose service: the app, where it listens, its workers, without its own
    access log unless asked (nginx logs every request), then `extra`."""
    return [
        module,
        "--host",
        str(host),
        "--port",
        str(port),
        "--workers",
        str(workers),
        *([] if access_log else ["--no-access-log"]),
        *(str(arg) for arg in extra),
    ]


def firewall_bad_ports(rules: Iterable[Mapping[str, Any]]) -> list[str]:
    """`name: port` of every rule port that is not an integer within 1-65535."""
    return [
        f"{rule.get('name', '?')}: {port}"
        for rule in rules
        for port in rule.get("ports", [])
        if not (re.fullmatch(r"[0-9]+", str(port)) and 1 <= int(port) <= 65535)
    ]


def firewall_bad_sources(rules: Iterable[Mapping[str, Any]]) -> list[str]:
    """`name: source` of every rule source that is not an IPv4/IPv6 address or CIDR."""
    bad = []
    for rule in rules:
        for source in rule.get("sources", []):
            try:
                ipaddress.ip_network(str(source), strict=False)
            except ValueError:
                bad.append(f"{rule.get('name', '?')}: {source}")
    return bad


def compose_service(instance: Mapping[str, Any] | int) -> str:
    """The Compose service of one api_instances entry, or of its port: api-<port>."""
    port = instance["port"] if isinstance(instance, Mapping) else int(instance)
    return f"api-{port}"


def compose_servers(instances: Iterable[Mapping[str, Any]], host: str) -> list[dict[str, Any]]:
    """The upstream servers of a Compose host: each api_instances entry at its
    service name, which Docker's DNS resolves on the project network."""
    return [{**dict(instance), "address": compose_service(instance), "host": host} for instance in instances]


def compose_address(port: int, subnet: str) -> str:
    """The fixed address of the service of `port` on the project network: the
    same after every re-creation, so nginx's resolved upstream stays right.
    Hosts 1-9 are left to Docker (the gateway is the first)."""
    network = ipaddress.ip_network(subnet)
    usable = network.num_addresses - 11
    if usable < 1:
        raise ValueError(f"subnet {subnet} is too small for the Compose services")
    return str(network.network_address + 10 + port % usable)


def compose_outdated(
    instances: Iterable[Mapping[str, Any]], probe: Mapping[str, Any], image: str
) -> list[Mapping[str, Any]]:
    """The api_instances entries whose service to (re)create, in order: those the
    probe (compose_probe.py) found missing, stopped or changed in compose.yaml, and
    those whose container runs another image than `image`, the id of the current
    API image."""
    status = probe.get("status", {})
    running = probe.get("services", {})
    return [
        instance
        for instance in instances
        if status.get(compose_service(instance), "missing") != "current"
        or running.get(compose_service(instance), {}).get("image") != image
    ]


def vrrp_router_id(vip: str) -> int:
    """The VRRP virtual router id (1-255) derived from a floating address: its
    integer value modulo 255, plus 1. 0 for an empty or invalid address (the
    preflight refuses both)."""
    try:
        return int(ipaddress.ip_address(str(vip))) % 255 + 1
    except ValueError:
        return 0


def ha_host_address(host: Mapping[str, Any]) -> str:
    """A load balancer's own address for VRRP, from its hostvars: lb_ha_address
    when the inventory sets it, else the address of its default route (facts);
    empty when neither is known."""
    if host.get("lb_ha_address"):
        return str(host["lb_ha_address"])
    facts = host.get("ansible_facts") or {}
    return str((facts.get("default_ipv4") or {}).get("address", ""))


def ha_router_id_of(host: Mapping[str, Any]) -> int:
    """A load balancer's VRRP virtual router id, from its hostvars: the
    inventory's lb_ha_virtual_router_id, else the one derived from its lb_ha_vip."""
    if host.get("lb_ha_virtual_router_id") not in (None, ""):
        return int(host["lb_ha_virtual_router_id"])
    return vrrp_router_id(host.get("lb_ha_vip", ""))


def ha_router_ids(hosts: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """The virtual router id of each floating address the hosts (hostvars) set."""
    return {str(host["lb_ha_vip"]): ha_router_id_of(host) for host in hosts if host.get("lb_ha_vip")}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "lb_bracket": bracket,
            "lb_server_key": server_key,
            "lb_interleave": interleave,
            "lb_host_servers": host_servers,
            "lb_without_valid_port": without_valid_port,
            "lb_server_option_errors": server_option_errors,
            "lb_server_line": server_line,
            "lb_serving_keys": serving_keys,
            "lb_nginx_version": nginx_version,
            "lb_wheel_platforms": wheel_platforms,
            "lb_uvicorn_args": uvicorn_args,
            "lb_is_nginx_time": is_nginx_time,
            "lb_firewall_bad_ports": firewall_bad_ports,
            "lb_firewall_bad_sources": firewall_bad_sources,
            "lb_compose_service": compose_service,
            "lb_compose_servers": compose_servers,
            "lb_compose_address": compose_address,
            "lb_compose_outdated": compose_outdated,
            "lb_vrrp_router_id": vrrp_router_id,
            "lb_ha_host_address": ha_host_address,
            "lb_ha_router_id_of": ha_router_id_of,
            "lb_ha_router_ids": ha_router_ids,
        }
