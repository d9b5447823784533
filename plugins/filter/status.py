"""Filters of playbooks/status.yml: one report for the whole inventory.

`lb_status_report` takes, per host, what the roles' `status` entry points
published (nginx_lb_status, lb_ha_status, api_status) and returns the report:
rows for the load balancers, their upstream servers and the API instances,
and the list of problems, each naming the host and what is wrong.
`lb_status_table` prints the report as fixed-width text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _instance(key: str, names: Mapping[str, str]) -> str:
    address, _sep, port = key.rpartition(":")
    name = names.get(address.strip("[]"))
    return f"{name}:{port}" if name else "-"


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB" if value else "-"


def status_inputs(hosts: Iterable[Mapping[str, Any]], groups: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """What status_report takes, from the hostvars of the hosts: what the
    roles' `status` entry points published, and the tiers each host is in."""
    inputs = []
    for host in hosts:
        name = host["inventory_hostname"]
        inputs.append(
            {
                "name": name,
                "lb": host.get("nginx_lb_status"),
                "ha": host.get("lb_ha_status"),
                "api": host.get("api_status"),
                "address": host.get("api_advertised_address", ""),
                "expected": [tier for tier in ("loadbalancers", "api_servers") if name in groups.get(tier, [])],
            }
        )
    return inputs


def status_report(hosts: Iterable[Mapping[str, Any]], cert_min_days: int = 14) -> dict[str, Any]:
    """The report of every host. Each host is {name, lb, ha, api, expected}:
    `lb`, `ha` and `api` are what the roles published (None when the host is
    not in that tier or did not answer), `expected` the tiers it is in."""
    loadbalancers, servers, instances, problems = [], [], [], []
    pairs: dict[str, list[tuple[str, str]]] = {}
    hosts = list(hosts)
    # Upstream servers are address:port; name the API host behind each.
    names = {str(host["address"]): host["name"] for host in hosts if host.get("address")}
    for host in hosts:
        name = host["name"]
        expected = host.get("expected", [])
        for tier, key in (("loadbalancers", "lb"), ("api_servers", "api")):
            if tier in expected and not host.get(key):
                problems.append(f"{name}: no status (the host did not answer or its status task failed)")
        lb = host.get("lb")
        if lb:
            cert = lb.get("cert")
            ha = host.get("ha")
            row = {
                "host": name,
                "site": lb.get("site", ""),
                "nginx": lb["nginx"].get("active", ""),
                "enabled": lb["nginx"].get("enabled", ""),
                "config_test": "ok" if lb["config_test"].get("ok") else "failed",
                "cert_not_after": cert.get("not_after", "") if cert else "",
                "cert_days_left": cert.get("days_left") if cert else None,
                "vrrp": ha.get("state", "unknown") if ha else "",
                "vip": ha.get("vip", "") if ha else "",
            }
            loadbalancers.append(row)
            if row["nginx"] != "active":
                problems.append(f"{name}: nginx is {row['nginx'] or 'unknown'}")
            if row["enabled"] != "enabled":
                problems.append(f"{name}: nginx is not enabled at boot ({row['enabled'] or 'unknown'})")
            if row["config_test"] != "ok":
                problems.append(f"{name}: nginx -t fails: {lb['config_test'].get('output', '')}")
            if cert and (cert.get("days_left", -1) < cert_min_days):
                left = cert.get("days_left")
                problems.append(f"{name}: the certificate expires in {left} days ({row['cert_not_after']})")
            if ha:
                if ha.get("keepalived") != "active":
                    problems.append(f"{name}: keepalived is {ha.get('keepalived') or 'unknown'}")
                if ha.get("state") not in ("MASTER", "BACKUP"):
                    problems.append(f"{name}: VRRP state is {ha.get('state', 'unknown')}")
                pairs.setdefault(ha.get("vip", ""), []).append((name, ha.get("state", "")))
            for server in lb.get("servers", []):
                state = "drained" if server["drained"] else "down" if server["down"] else "serving"
                state += " (backup)" if server.get("backup") else ""
                servers.append(
                    {
                        "lb": name,
                        "server": server["key"],
                        "instance": _instance(server["key"], names),
                        "options": " ".join(server.get("options", [])),
                        "state": state,
                        "reachable": server.get("status") == 200,
                        "health": server.get("status", 0),
                        "version": server.get("version", ""),
                        "error": server.get("error", ""),
                    }
                )
                if state.startswith("serving") and server.get("status") != 200:
                    why = server.get("error") or f"HTTP {server.get('status')}"
                    instance = _instance(server["key"], names)
                    which = server["key"] + (f" ({instance})" if instance != "-" else "")
                    problems.append(f"{name}: upstream server {which} does not answer its health check ({why})")
        for instance in (host.get("api") or {}).get("instances", []):
            instances.append(
                {
                    "host": name,
                    "unit": instance["unit"],
                    "active": instance["active"],
                    "enabled": instance["enabled"],
                    "restarts": instance["restarts"],
                    "memory": instance["memory"],
                    "health": instance["status"],
                    "version": instance["version"],
                    "listen": ", ".join(f"{a}:{instance['port']}" for a in instance["listen"]),
                    "refused": instance.get("refused", False),
                    "error": instance.get("error", ""),
                }
            )
            unit = f"{name}: {instance['unit']}"
            if instance["active"] != "active":
                problems.append(f"{unit} is {instance['active']} ({instance.get('sub', '')})")
            elif instance["status"] != 200:
                why = instance.get("error") or f"HTTP {instance['status']}"
                problems.append(f"{unit} does not answer its health check ({why})")
            if instance["enabled"] != "enabled":
                problems.append(f"{unit} is not enabled at boot ({instance['enabled']})")
    for vip, members in sorted(pairs.items()):
        holders = [member for member, state in members if state == "MASTER"]
        if len(holders) != 1:
            problems.append(
                f"VRRP {vip}: {len(holders)} hosts are MASTER ({', '.join(holders) or 'none'}), expected exactly one"
            )
    return {
        "healthy": not problems,
        "problems": problems,
        "loadbalancers": loadbalancers,
        "upstream": servers,
        "instances": instances,
    }


def _table(title: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(cell)) for cell in [column] + [row[i] for row in rows]) for i, column in enumerate(columns)]

    def line(cells: list[Any]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return ["", title, line(columns), *(line(row) for row in rows)]


def status_table(report: Mapping[str, Any]) -> str:
    """The report as text: one table per tier, then the verdict and the problems."""
    lines: list[str] = []
    lines += _table(
        "LOAD BALANCERS",
        ["host", "site", "nginx", "boot", "nginx -t", "certificate expires", "vrrp"],
        [
            [
                row["host"],
                row["site"],
                row["nginx"],
                row["enabled"],
                row["config_test"],
                f"{row['cert_not_after']} ({row['cert_days_left']} d)" if row["cert_not_after"] else "-",
                f"{row['vrrp']} {row['vip']}" if row["vrrp"] else "-",
            ]
            for row in report["loadbalancers"]
        ],
    )
    lines += _table(
        "UPSTREAM SERVERS (health checked from each load balancer)",
        ["lb", "server", "instance", "options", "state", "reachable", "health", "version"],
        [
            [
                row["lb"],
                row["server"],
                row["instance"],
                row["options"] or "-",
                row["state"],
                "yes" if row["reachable"] else "no",
                row["health"] or "-",
                row["version"] or "-",
            ]
            for row in report["upstream"]
        ],
    )
    lines += _table(
        "API INSTANCES",
        ["host", "unit", "active", "boot", "restarts", "memory", "health", "version", "listen"],
        [
            [
                row["host"],
                row["unit"] + (" (draining)" if row["refused"] else ""),
                row["active"],
                row["enabled"],
                row["restarts"],
                _mib(row["memory"]),
                row["health"] or "-",
                row["version"] or "-",
                row["listen"] or "-",
            ]
            for row in report["instances"]
        ],
    )
    lines.append("")
    if report["healthy"]:
        lines.append("HEALTHY: nothing to report.")
    else:
        lines.append(f"UNHEALTHY: {len(report['problems'])} problem(s)")
        lines += [f"  - {problem}" for problem in report["problems"]]
    return "\n".join(lines[1:] if lines and lines[0] == "" else lines)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "lb_status_inputs": status_inputs,
            "lb_status_report": status_report,
            "lb_status_table": status_table,
        }
