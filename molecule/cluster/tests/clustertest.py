"""What the cluster scenario's test files share: lb1's URL and certificate
on the outsider, nmap from the outsider, and name resolution (the `hosts`
fixture is in conftest.py)."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

LB_URL = "https://lb1/"
# lb1's self-signed certificate, copied to the outsider to verify HTTPS.
CACERT = "/tmp/lb1-cert.pem"


def scan(outsider, target: str, ports: str) -> dict[int, str]:
    """nmap from the outsider: {port: state}, state is open, closed or filtered.
    An IPv6 target (link-local with its %interface) is scanned with -6."""
    six = "-6 " if ":" in target else ""
    xml = outsider.check_output(f"nmap {six}-Pn -n -T4 --max-retries 1 --host-timeout 60s -p {ports} -oX - {target}")
    root = ET.fromstring(xml)
    return {int(p.get("portid")): p.find("state").get("state") for p in root.iter("port")}


def resolve(host, name: str) -> str:
    """The IPv4 address `name` has, as `host` resolves it."""
    return host.check_output(f"getent ahostsv4 {name} | awk 'NR==1 {{print $1}}'")


def link_local(host) -> str:
    """The IPv6 link-local address of the host's eth0 (IPv6 is on in its container)."""
    out = host.check_output("ip -6 -o addr show dev eth0 scope link")
    return out.split()[3].split("/")[0]


def docker(*args: str, timeout: int = 120) -> str:
    """`docker ARGS` on the controller (out of band: a restart, a link down, root
    commands while SSH is cut); its stdout. Fails on a non-zero exit."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=True).stdout
