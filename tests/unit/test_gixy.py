"""An independent judge of the nginx configuration: Gixy-Next on what each
Molecule scenario's load balancer gets, nginx.conf included.

For every scenario with a host in `loadbalancers`, the role's two templates
(nginx.conf.j2 and site.conf.j2) are rendered with the scenario's inventory
variables (the shared .config/molecule/config.yml's, then the scenario's
group and host vars) and its API hosts' instances, assembled as `nginx -T`
prints a configuration, and analysed by gixy. No finding is allowed; an
exception would be listed in ALLOWED with its reason. The Compose variant's
nginx is not rendered here: its nginx.conf is the image's (docs/capacity.md,
"Capacity").
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, render

MOLECULE = ROOT / "molecule"
SHARED = yaml.safe_load((ROOT / ".config" / "molecule" / "config.yml").read_text())
# plugin -> why its finding is accepted; none today.
ALLOWED: dict[str, str] = {}
# What the tests' hosts run: Debian 12's nginx (the scenarios' default distro).
NGINX_VERSION = "1.22.1"


def plain(variables: dict[str, Any]) -> dict[str, Any]:
    """Inventory variables that do not depend on Molecule's environment."""
    return {key: value for key, value in variables.items() if "${" not in json.dumps(value)}


def scenario_loadbalancers() -> list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]:
    """(scenario, load balancer, its variables, the API hosts' hostvars) per scenario."""
    cases = []
    for molecule_yml in sorted(MOLECULE.glob("*/molecule.yml")):
        scenario = yaml.safe_load(molecule_yml.read_text())
        inventory = scenario.get("provisioner", {}).get("inventory", {})
        group_vars = inventory.get("group_vars", {})
        host_vars = inventory.get("host_vars", {})

        def variables(platform: dict[str, Any], group_vars=group_vars, host_vars=host_vars) -> dict[str, Any]:
            shared = SHARED["provisioner"]["inventory"]["group_vars"]
            merged: dict[str, Any] = {}
            for group in ["all", *platform.get("groups", [])]:
                merged.update(shared.get(group, {}))
                merged.update(group_vars.get(group, {}))
            merged.update(host_vars.get(platform["name"], {}))
            return plain(merged)

        platforms = scenario["platforms"]
        api_hosts = [
            {
                "inventory_hostname": platform["name"],
                "api_advertised_address": f"10.0.0.{10 + index}",
                **{key: value for key, value in variables(platform).items() if key == "api_instances"},
                "api_endpoints": [
                    {"port": instance["port"], "address": f"10.0.0.{10 + index}"}
                    for instance in variables(platform).get("api_instances", [{"port": p} for p in (8001, 8002, 8003)])
                ],
            }
            for index, platform in enumerate(platforms)
            if "api_servers" in platform.get("groups", [])
        ]
        for platform in platforms:
            if "loadbalancers" in platform.get("groups", []):
                cases.append((molecule_yml.parent.name, platform["name"], variables(platform), api_hosts))
    return cases


CASES = scenario_loadbalancers()


def dump(scenario_vars: dict[str, Any], api_hosts: list[dict[str, Any]], lb: str) -> str:
    """The load balancer's configuration as `nginx -T` prints it."""
    hostvars = {host["inventory_hostname"]: host for host in api_hosts}
    variables = {
        "inventory_hostname": lb,
        "groups": {"api_servers": list(hostvars), "loadbalancers": [lb]},
        "hostvars": hostvars,
        "ansible_facts": {"all_ipv6_addresses": [], "nodename": lb, "default_ipv4": {"address": "10.0.0.2"}},
        "_nginx_lb_version": NGINX_VERSION,
        **{key: value for key, value in scenario_vars.items() if key.startswith("nginx_lb_")},
    }
    site = variables.get("nginx_lb_site_name", "rag-photographie")
    parts = {
        "/etc/nginx/nginx.conf": render("nginx_lb", "nginx.conf.j2", variables),
        f"/etc/nginx/sites-enabled/{site}": render("nginx_lb", "site.conf.j2", variables),
    }
    return "".join(f"# configuration file {path}:\n{text}\n" for path, text in parts.items())


def gixy(config: str) -> list[dict[str, Any]]:
    command = shutil.which("gixy", path=str(Path(sys.executable).parent)) or shutil.which("gixy")
    assert command, "gixy (Gixy-Next, requirements.txt) is not installed: run make setup"
    run = subprocess.run(
        [command, "-f", "json", "-"], input=config, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.stdout.strip().startswith("["), run.stdout + run.stderr
    return json.loads(run.stdout)


def test_every_scenario_with_a_load_balancer_is_analysed():
    # rolling's site is plain HTTP (nginx_lb_tls_mode off), the others' HTTPS.
    assert {scenario for scenario, *_rest in CASES} >= {"default", "cluster", "ha", "tls", "rolling"}


@pytest.mark.parametrize(("scenario", "lb", "scenario_vars", "api_hosts"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_gixy_finds_nothing(scenario, lb, scenario_vars, api_hosts):
    config = dump(scenario_vars, api_hosts, lb)
    assert "worker_rlimit_nofile" in config
    findings = [finding for finding in gixy(config) if finding["plugin"] not in ALLOWED]
    assert findings == [], json.dumps(findings, indent=1)


def test_gixy_finds_debian_defaults():
    """The judge can fail: Debian's own capacity (768 connections, no
    worker_rlimit_nofile) is a finding."""
    scenario, lb, scenario_vars, api_hosts = CASES[0]
    config = dump(scenario_vars, api_hosts, lb)
    debian = re.sub(r"worker_rlimit_nofile \d+;\n", "", config).replace(
        f"worker_connections {scenario_vars.get('nginx_lb_worker_connections', 16384)};", "worker_connections 768;"
    )
    assert "worker_connections 768;" in debian
    plugins = {finding["plugin"] for finding in gixy(debian)}
    assert "worker_rlimit_nofile_vs_connections" in plugins
