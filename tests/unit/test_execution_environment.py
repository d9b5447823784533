"""execution-environment.yml, turned into a build context by ansible-builder
(v3 schema; no image is built here: no registry)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ROOT


def test_ansible_builder_creates_the_build_context(tmp_path):
    builder = Path(sys.executable).parent / "ansible-builder"
    run = subprocess.run(
        [
            str(builder),
            "create",
            "--file",
            str(ROOT / "execution-environment.yml"),
            "--context",
            str(tmp_path),
            "--output-filename",
            "Containerfile",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    containerfile = (tmp_path / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert "ansible-core==2.19.14" in containerfile
    collections = yaml.safe_load((tmp_path / "_build" / "requirements.yml").read_text())["collections"]
    assert {c["name"]: c["version"] for c in collections} == {
        "ansible.utils": "6.0.0",
        "community.crypto": "3.0.5",
        "community.general": "11.4.2",
    }
    assert "netaddr==1.3.0" in (tmp_path / "_build" / "requirements.txt").read_text()
    assert "git [platform:rpm]" in (tmp_path / "_build" / "bindep.txt").read_text()


def test_the_pinned_collections_are_the_ones_the_tests_run_with():
    """The EE pins what the `ansible` package of requirements.txt bundles."""
    import ansible  # noqa: PLC0415 - the pinned `ansible` package installs its bundle beside ansible-core

    base = Path(ansible.__file__).resolve().parents[1] / "ansible_collections"
    spec = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    for entry in spec["dependencies"]["galaxy"]["collections"]:
        namespace, name = entry["name"].split(".")
        manifest = yaml.safe_load((base / namespace / name / "MANIFEST.json").read_text())
        assert manifest["collection_info"]["version"] == entry["version"], entry
