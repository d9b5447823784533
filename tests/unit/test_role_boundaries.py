"""One role uses another only through the options its argument spec declares:
no role and no playbook sets or reads another role's private (`_<role>_`)
names."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted((path.name for path in (ROOT / "roles").iterdir() if path.is_dir()), key=len, reverse=True)
# `_<role>_name`, not preceded by a word character (`api_firewall_export`)
# or `>` (`<role>_firewall_export` in a comment). Longest role names first:
# `_nginx_exporter_` is the exporter's, not nginx_lb's.
PRIVATE = re.compile(r"(?<![\w>])_(" + "|".join(ROLES) + r")_[a-z]\w*")


def private_names_used(base: Path, owner: str | None) -> list[str]:
    """`path: name` for each private name of another role than `owner` in the
    Ansible files (YAML, templates) under `base`."""
    found = []
    for path in sorted(base.rglob("*")):
        if path.suffix not in {".yml", ".yaml", ".j2"} or not path.is_file():
            continue
        for match in PRIVATE.finditer(path.read_text()):
            if match.group(1) != owner:
                found.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    return found


def test_no_role_uses_another_roles_private_names():
    found = [name for role in ROLES for name in private_names_used(ROOT / "roles" / role, role)]
    assert found == []


def test_no_playbook_uses_a_roles_private_names():
    assert private_names_used(ROOT / "playbooks", None) == []


def test_the_check_finds_a_private_name_of_another_role(tmp_path, monkeypatch):
    """The scan itself: a role file that sets nginx_lb's private name is found,
    and its own and look-alike names are not."""
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    tasks = tmp_path / "roles" / "compose_stack" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(
        "vars:\n  _nginx_lb_servers: []\n  _compose_stack_own: 1\n  api_firewall_export: []\n"
        "# <role>_firewall_export\n  _nginx_lb_hash_key: x\n"
    )
    found = private_names_used(tmp_path / "roles" / "compose_stack", "compose_stack")
    assert found == [
        "roles/compose_stack/tasks/main.yml: _nginx_lb_servers",
        "roles/compose_stack/tasks/main.yml: _nginx_lb_hash_key",
    ]
