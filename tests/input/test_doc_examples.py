"""Every inventory example in the docs passes the preflight, or fails with the message the doc gives.

Each ```yaml block of README.md and docs/*.md starts with a comment naming
its file (`# group_vars/loadbalancers.yml`, `# host_vars/<host>.yml`,
`# inventory/prod/hosts.yml`). A block is laid over a copy of
inventory/example, as a user who copies it would, and
`playbooks/preflight.yml` runs on that inventory with local hosts (no host
is contacted; the preflight only reads). An HTML comment after a block,
`<!-- preflight: {...} -->`, says more:

- "fails": the message the run must fail with (the doc quotes it);
- "inventory": blocks with the same id are one example, run once after its
  last block; "base": "empty" starts from no inventory instead of the
  example's;
- "reader_group_vars": what the reader's setting differs in, per group (the
  address the API hosts see the controller at, through a bastion);
- "files" and "generated_vars": files the example reads next to the
  inventory and vaulted variables, made by the test (a certificate and its
  key).

Blocks for other files (requirements.yml, prometheus.yml) only have to parse.
The examples that say nothing more are laid over the example inventory
together, in one run: each adds its own settings, and together with
inventory/example itself they must pass.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_bad_input import LOCAL, ROOT, outcome, run_preflight

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^( *)```yaml\n(.*?)^\1```\n(?:\1<!-- preflight: (\{.*?\}) -->\n)?", re.S | re.M)
FILE = re.compile(r"^# (\S+\.yml)")
NOT_INVENTORY = {"requirements.yml", "prometheus.yml"}
# The controller's address as the example hosts would see it: inside the
# example's admin network (firewall_ssh_sources: 192.0.2.0/24).
CONTROLLER = "192.0.2.10"


def blocks() -> list[dict]:
    found = []
    for page in PAGES:
        for match in BLOCK.finditer(page.read_text()):
            indent, body, marker = match.groups()
            body = "\n".join(line[len(indent) :] for line in body.splitlines())
            name = FILE.match(body)
            assert name, f"{page.name}: a yaml example must start with '# <file>.yml':\n{body}"
            line = page.read_text()[: match.start()].count("\n") + 1
            found.append(
                {
                    "where": f"{page.relative_to(ROOT)}:{line}",
                    "file": name.group(1),
                    "data": yaml.safe_load(body),
                    **json.loads(marker or "{}"),
                }
            )
    return found


PLAIN_KEYS = {"where", "file", "data"}


def examples() -> list[list[dict]]:
    """The inventory examples: one list of blocks each; first, every plain one together."""
    grouped: dict[str, list[dict]] = {"together": []}
    for block in blocks():
        if Path(block["file"]).name in NOT_INVENTORY:
            continue
        key = "together" if set(block) <= PLAIN_KEYS else block.get("inventory") or block["where"]
        grouped.setdefault(key, []).append(block)
    return list(grouped.values())


def test_every_yaml_example_parses_and_names_its_file():
    found = blocks()
    assert len(found) >= 15, [block["where"] for block in found]
    assert {Path(block["file"]).name for block in found} >= NOT_INVENTORY


def _target(file: str) -> tuple[str, str]:
    """('hosts', '') | ('group_vars', group) | ('host_vars', host) for a file an example names."""
    parts = Path(file).parts
    if parts[-1] == "hosts.yml":
        return "hosts", ""
    for kind in ("group_vars", "host_vars"):
        if kind in parts:
            return kind, parts[parts.index(kind) + 1].removesuffix(".yml")
    raise AssertionError(f"an example names {file}, which is not an inventory file")


def _merge_hosts(base: dict, extra: dict) -> None:
    """Add the groups and hosts of `extra` (a hosts.yml) to `base`."""
    extra = extra.get("all", {"children": extra}) if "all" in extra else {"children": extra}
    children = base.setdefault("all", {}).setdefault("children", {})
    for group, body in (extra.get("children") or {}).items():
        hosts = (body or {}).get("hosts") or {}
        children.setdefault(group, {}).setdefault("hosts", {}).update(hosts)


def _material(tmp_path: Path) -> dict[str, str]:
    """A certificate for api.example.com and its key, as PEM text."""
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "30",
            "-subj", "/CN=api.example.com", "-addext", "subjectAltName=DNS:api.example.com",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return {"certificate": (tmp_path / "cert.pem").read_text(), "key": (tmp_path / "key.pem").read_text()}


def build(tmp_path: Path, example: list[dict]) -> tuple[Path, dict]:
    """The inventory a reader gets from the example: its directory and the extra vars."""
    inventory = tmp_path / "inventory"
    if example and example[0].get("base") == "empty":
        inventory.mkdir()
        hosts: dict = {"all": {"children": {}}}
    else:
        shutil.copytree(ROOT / "inventory" / "example", inventory)
        hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    group_vars: dict[str, dict] = {}
    host_vars: dict[str, dict] = {}
    for path in (inventory / "group_vars").glob("*.yml"):
        group_vars[path.stem] = yaml.safe_load(path.read_text()) or {}
    for path in (inventory / "host_vars").glob("*.yml"):
        host_vars[path.stem] = yaml.safe_load(path.read_text()) or {}
    # Where the controller connects from, as the hosts see it (a reader's
    # bastion overrides it for its group).
    group_vars.setdefault("all", {}).setdefault("firewall_controller_address", CONTROLLER)
    extra_vars: dict = {}
    material = None
    for block in example:
        kind, name = _target(block["file"])
        if kind == "hosts":
            _merge_hosts(hosts, block["data"])
        elif kind == "group_vars":
            group_vars.setdefault(name, {}).update(block["data"])
        else:
            host_vars.setdefault(name, {}).update(block["data"])
        for group, data in block.get("reader_group_vars", {}).items():
            group_vars.setdefault(group, {}).update(data)
        if block.get("files") or block.get("generated_vars"):
            material = material or _material(tmp_path)
        for file, what in block.get("files", {}).items():
            (inventory / file).parent.mkdir(parents=True, exist_ok=True)
            (inventory / file).write_text(material[what])
        extra_vars.update({var: material[what] for var, what in block.get("generated_vars", {}).items()})
    # Every host is this machine: local connection, this Python.
    for group in hosts["all"]["children"].values():
        for host in (group or {}).get("hosts") or {}:
            host_vars.setdefault(host, {}).update(LOCAL)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    for kind, table in (("group_vars", group_vars), ("host_vars", host_vars)):
        shutil.rmtree(inventory / kind, ignore_errors=True)
        (inventory / kind).mkdir()
        for name, data in table.items():
            (inventory / kind / f"{name}.yml").write_text(yaml.safe_dump(data))
    return inventory, extra_vars


def _name(example: list[dict]) -> str:
    return "plain examples together" if set(example[-1]) <= PLAIN_KEYS else example[-1]["where"]


@pytest.mark.parametrize("example", examples(), ids=_name)
def test_doc_example_gets_what_the_doc_says(tmp_path, example):
    inventory, extra_vars = build(tmp_path, example)
    run = run_preflight(inventory, extra_vars)
    failures = outcome(run)[0]
    messages = [failure["msg"] for failure in failures]
    expected = example[-1].get("fails")
    if expected is None:
        assert not failures, messages
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        return
    assert run.returncode != 0, f"the doc says it fails with {expected!r}, but it passed"
    assert any(expected in message for message in messages), (expected, messages, run.stderr[-2000:])
    # The doc says it where a reader sees it, not only in the comment.
    page = ROOT / example[-1]["where"].split(":")[0]
    visible = " ".join(re.sub(r"<!--.*?-->", "", page.read_text(), flags=re.S).split())
    assert expected in visible, f"{page.name} does not tell the reader: {expected!r}"
