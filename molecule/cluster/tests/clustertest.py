"""What the cluster scenario's test files share: lb1's URL and certificate
on the outsider, nmap from the outsider, and name resolution (the `hosts`
fixture is in conftest.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

LB_URL = "https://lb1/"
# lb1's self-signed certificate, copied to the outsider to verify HTTPS.
CACERT = "/tmp/lb1-cert.pem"


def scan(outsider, target: str, ports: str) -> dict[int, str]:
    """nmap from the outsider: {port: state}, state is open, closed or filtered."""
    xml = outsider.check_output(f"nmap -Pn -n -T4 --max-retries 1 --host-timeout 60s -p {ports} -oX - {target}")
    root = ET.fromstring(xml)
    return {int(p.get("portid")): p.find("state").get("state") for p in root.iter("port")}


def resolve(host, name: str) -> str:
    """The IPv4 address `name` has, as `host` resolves it."""
    return host.check_output(f"getent ahostsv4 {name} | awk 'NR==1 {{print $1}}'")
