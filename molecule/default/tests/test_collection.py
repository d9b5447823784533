"""The collection, as a user installs it: its site playbook by FQCN, from a
directory outside the clone, with no setting of this project (no ansible.cfg,
roles path or filter path), finds the host as the converge left it.

The scenario's converge itself ran `lbapi.nginx_api.site` from the installed
collection (converge.yml), so test_default.py's traffic checks (30 requests
→ 10 per instance) are the collection's result. This is the scenario's
check pass (--check --diff reports no change), in place of the shared
test_check_mode.py: it runs after the other tests (CHECK_PASS,
molecule/conftest.py), on the state they left.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lbtest import PROJECT, recap

CHECK_PASS = True


def test_site_playbook_by_fqcn_from_outside_the_clone(tmp_path):
    installed = PROJECT / ".cache" / "installed"
    assert (installed / "ansible_collections" / "lbapi" / "nginx_api" / "MANIFEST.json").is_file()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANSIBLE_", "MOLECULE_")) or key == "ANSIBLE_FORCE_COLOR"
    }
    env.update(ANSIBLE_COLLECTIONS_PATH=str(installed), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            inventory,
            "lbapi.nginx_api.site",
            "--check",
            "--diff",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    # The roles ran from the installed collection, and found nothing to change.
    assert "lbapi.nginx_api.nginx_lb : " in run.stdout, run.stdout[-3000:]
    assert str(PROJECT / "roles") not in output
    counts = recap(run)
    assert counts, run.stdout[-2000:]
    assert all(host["changed"] == 0 and host["failed"] == 0 for host in counts.values()), counts
