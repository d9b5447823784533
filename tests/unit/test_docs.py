"""The docs stay true to the code: the generated reference, the troubleshooting entries, the links."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROLES, ROOT

DOCS = ROOT / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
EXPECTED_FAILURES = ROOT / "tests" / "input" / "expected_failures.json"
FAILING_MODULES = ("ansible.builtin.assert", "ansible.builtin.fail")


def _failing_tasks(tasks, found: list[str]) -> None:
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        for nested in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks"):
            _failing_tasks(task.get(nested), found)
        if any(module in task for module in FAILING_MODULES):
            found.append(task["name"])


def failing_tasks() -> dict[str, list[str]]:
    """{section: [task names]}: every assert and fail task of the roles and the playbooks,
    and each role's argument spec check of its validate entry point."""
    sections: dict[str, list[str]] = {}
    for path in sorted(ROLES.glob("*/tasks/*.yml")):
        _failing_tasks(yaml.safe_load(path.read_text()), sections.setdefault(path.parents[1].name, []))
    for path in sorted(ROLES.glob("*/meta/argument_specs.yml")):
        validate = yaml.safe_load(path.read_text())["argument_specs"].get("validate")
        if validate:
            sections[path.parents[1].name].append(
                f"Validating arguments against arg spec 'validate' - {validate['short_description']}"
            )
    for path in sorted((ROOT / "playbooks").glob("*.yml")):
        _failing_tasks(yaml.safe_load(path.read_text()), sections.setdefault("playbooks", []))
    return {section: names for section, names in sections.items() if names}


def entries() -> dict[tuple[str, str], str]:
    """{(section, task name): entry text} of docs/troubleshooting.md."""
    found: dict[tuple[str, str], str] = {}
    section = entry = None
    for line in TROUBLESHOOTING.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip("`").removeprefix("The ")
            entry = None
        elif line.startswith("### "):
            entry = (section, line[4:])
            found[entry] = ""
        elif entry:
            found[entry] += line + "\n"
    return found


def test_reference_matches_the_argument_specs():
    # antsibull-docs renders docs/reference/ from the specs again; a spec it
    # finds malformed fails too.
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reference.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_failing_task_has_a_troubleshooting_entry():
    documented = entries()
    missing = [
        f"{section}: {name}"
        for section, names in failing_tasks().items()
        for name in names
        if (section, name) not in documented
    ]
    assert not missing, "no entry in docs/troubleshooting.md for:\n" + "\n".join(missing)


def test_every_troubleshooting_entry_is_a_real_task():
    tasks = {(section, name) for section, names in failing_tasks().items() for name in names}
    stale = [f"{section}: {name}" for section, name in entries() if (section, name) not in tasks]
    assert not stale, "docs/troubleshooting.md has entries for tasks that no longer exist:\n" + "\n".join(stale)


def test_every_pinned_message_is_quoted_in_its_entry():
    # Each task of the bad-input table shows one of its exact messages.
    documented = entries()
    pinned: dict[str, set[str]] = {}
    for failures in json.loads(EXPECTED_FAILURES.read_text()).values():
        for failure in failures:
            pinned.setdefault(failure["task"], set()).add(failure["msg"])
    unquoted = []
    for task, messages in sorted(pinned.items()):
        section, name = task.split(" : ", 1)
        text = documented.get((section, name), "")
        if not any(message in text for message in messages):
            unquoted.append(task)
    assert not unquoted, "entries that quote none of their pinned messages:\n" + "\n".join(unquoted)


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


@pytest.mark.parametrize("page", ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md"))])
def test_relative_links_reach_a_file(page):
    path = ROOT / page
    broken = [
        target
        for target in LINK.findall(path.read_text())
        if "://" not in target and not (path.parent / target).exists()
    ]
    assert not broken, f"{page} links to missing files: {broken}"


def test_changelog_is_generated_from_its_yaml(tmp_path):
    # CHANGELOG.md is antsibull-changelog's output for changelogs/changelog.yaml.
    out = tmp_path / "CHANGELOG.md"
    tool = Path(sys.executable).parent / "antsibull-changelog"
    run = subprocess.run(
        [str(tool), "generate", "--output", str(out)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert out.read_text() == (ROOT / "CHANGELOG.md").read_text(), "CHANGELOG.md is stale: run make docs"
