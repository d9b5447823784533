"""Each role's defaults/main.yml and meta/argument_specs.yml describe the same interface."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROLES

ROLE_NAMES = sorted(path.parents[1].name for path in ROLES.glob("*/defaults/main.yml"))


def load(role: str, part: str) -> dict:
    return yaml.safe_load((ROLES / role / part).read_text()) or {}


def test_every_role_is_covered():
    assert {"api", "nginx_lb", "firewall"} <= set(ROLE_NAMES)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_spec_and_defaults_list_the_same_variables(role):
    defaults = load(role, "defaults/main.yml")
    options = load(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_variables_carry_the_role_prefix(role):
    for name in load(role, "defaults/main.yml"):
        assert name.startswith(f"{role}_"), name


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_literal_defaults_match_the_spec(role):
    defaults = load(role, "defaults/main.yml")
    options = load(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, option in options.items():
        value = defaults[name]
        if "{{" in yaml.safe_dump(value):
            assert "default" not in option, f"{name}: templated default must not be repeated in the spec"
            continue
        assert option.get("default") == value, name


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_option_is_described(role):
    options = load(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, option in options.items():
        assert option.get("description"), name
        assert option.get("type"), name
