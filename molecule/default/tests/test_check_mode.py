"""The converged scenario re-run with --check --diff must report no change."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path


def test_check_diff_on_converged_hosts_reports_no_change():
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    converge = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml"
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(converge), "--check", "--diff"],
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", run.stdout, re.MULTILINE)
    assert recap, run.stdout[-3000:]
    assert {host: int(changed) for host, changed in recap} == {host: 0 for host, _ in recap}
