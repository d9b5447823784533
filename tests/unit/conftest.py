"""Helpers to render the roles' templates with Ansible's own templar, no hosts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The roles' filters (plugins/filter) by FQCN, lbapi.nginx_api.lb_*: the
# repository is the collection, through collections/ (as ansible.cfg says).
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / "collections"))

from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.plugins.loader import init_plugin_loader  # noqa: E402
from ansible.template import Templar, trust_as_template  # noqa: E402

ROLES = ROOT / "roles"
init_plugin_loader([str(ROOT / "collections")])


def _trusted(value: Any) -> Any:
    """Mark strings as templates, as Ansible does for role files, nested ones included."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    if isinstance(value, dict):
        return {key: _trusted(item) for key, item in value.items()}
    return value


def role_variables(role: str) -> dict[str, Any]:
    """The role's defaults and private vars, as Ansible would load them."""
    variables: dict[str, Any] = {}
    for part in ("defaults", "vars"):
        variables.update(yaml.safe_load((ROLES / role / part / "main.yml").read_text()) or {})
    return {key: _trusted(value) for key, value in variables.items()}


def render(role: str, template: str, variables: dict[str, Any]) -> str:
    """Render roles/<role>/templates/<template> with the role's vars and ``variables``."""
    context = {
        "ansible_managed": "Ansible managed",
        "role_path": str(ROLES / role),
        **role_variables(role),
        **{key: _trusted(value) for key, value in variables.items()},
    }
    templar = Templar(loader=DataLoader(), variables=context)
    source = (ROLES / role / "templates" / template).read_text()
    return templar.template(trust_as_template(source))


def evaluate(role: str, expression: str, variables: dict[str, Any]) -> Any:
    """Evaluate ``expression`` with the role's defaults and vars and ``variables``."""
    context = {**role_variables(role), **{key: _trusted(value) for key, value in variables.items()}}
    templar = Templar(loader=DataLoader(), variables=context)
    return templar.template(trust_as_template(expression))


def api_host(name: str, address: str, ports: list[int], **extra: Any) -> dict[str, Any]:
    """hostvars of an API host as the api role's publish step leaves them, with its
    api_instances left to the role default (so nginx_lb reads the published endpoints)."""
    return {
        "inventory_hostname": name,
        "api_advertised_address": address,
        "api_endpoints": [{"port": port, "address": address} for port in ports],
        **extra,
    }


@pytest.fixture
def render_site():
    """Render the nginx_lb site for a load balancer ``lb1`` and the given API hosts."""

    def _render(api_hosts: list[dict[str, Any]], **overrides: Any) -> str:
        hostvars = {host["inventory_hostname"]: host for host in api_hosts}
        variables = {
            "inventory_hostname": "lb1",
            "groups": {"api_servers": list(hostvars), "loadbalancers": ["lb1"]},
            "hostvars": hostvars,
            "ansible_facts": {"all_ipv6_addresses": []},
            # What configure.yml reads from the host: Debian 13's nginx.
            "_nginx_lb_version": "1.26.3",
            **overrides,
        }
        return render("nginx_lb", "site.conf.j2", variables)

    return _render
