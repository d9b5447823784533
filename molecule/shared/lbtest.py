"""Helpers shared by the Molecule scenarios' testinfra tests.

`playbook()` re-runs the project's converge playbook from the controller
against the scenario's hosts, with extra variables; `requests_from()` sends
bounded requests from a test host with scripts/lb_requests.py and returns its
JSON counts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[2]))
CONVERGE = PROJECT / "molecule" / "shared" / "converge.yml"
LB_REQUESTS = (PROJECT / "scripts" / "lb_requests.py").read_text()


def playbook(*args: str, extra_vars: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the converge playbook on the scenario's inventory; output without colour."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(CONVERGE), *args]
    if extra_vars is not None:
        command += ["-e", json.dumps(extra_vars)]
    return subprocess.run(
        command,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def recap(run: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    """Per host, the counters of the PLAY RECAP line."""
    hosts = {}
    for line in run.stdout.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line)
        if match:
            hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return hosts


def said(run: subprocess.CompletedProcess) -> str:
    """stdout and stderr (Ansible prints task errors there), whitespace folded to single spaces."""
    return " ".join((run.stdout + run.stderr).split())


def tail(run: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return (run.stdout + run.stderr)[-chars:]


def requests_from(host, url: str, count: int, concurrency: int = 1, max_seconds: float = 60) -> dict:
    """Send `count` requests to `url` from the test host; return lb_requests.py's JSON."""
    args = shlex.join(
        [f"--url={url}", f"--requests={count}", f"--concurrency={concurrency}", f"--max-seconds={max_seconds}"]
    )
    run = host.run(f"python3 - {args} <<'LB_REQUESTS_EOF'\n{LB_REQUESTS}\nLB_REQUESTS_EOF")
    assert run.stdout.strip(), run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # Shown in the test report (pytest -r A): the measured counts of every run.
    print(json.dumps(result, sort_keys=True))
    return result
