"""Make molecule/shared/lbtest.py importable from every scenario's tests."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "shared"))

# `make test-quick` (LBTEST_SMOKE=1): the default scenario's smoke subset,
# beside its converge and idempotence: requests reach each instance, round
# robin exact, a config nginx rejects rolled back while nginx serves, and
# the check pass (the collection's site by FQCN, --check --diff).
SMOKE = {
    "test_default.py::test_requests_through_nginx_reach_each_instance_equally",
    "test_methods.py::test_round_robin_splits_300_requests_equally",
    "test_methods.py::test_rejected_config_is_rolled_back_and_nginx_keeps_serving",
    "test_collection.py::test_site_playbook_by_fqcn_from_outside_the_clone",
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "runs_last: the test runs after the check pass, as in a module with RUNS_LAST = True"
    )


def pytest_collection_modifyitems(config, items):
    """The check-mode pass (shared/test_check_mode.py, or a module with
    ``CHECK_PASS = True`` in its place) comes after every other test: it
    checks the state they left, whatever the file names. A module
    with ``RUNS_LAST = True``, or a test marked ``runs_last``, comes after
    it: its tests leave the hosts in a state the inventory does not describe
    (another app version), which nothing reads after them, and they check
    their own results.
    With LBTEST_SMOKE=1, only the tests named in SMOKE run."""
    if os.environ.get("LBTEST_SMOKE") == "1":
        keep = [item for item in items if f"{item.path.name}::{item.originalname}" in SMOKE]
        assert {f"{item.path.name}::{item.originalname}" for item in keep} == SMOKE, "a SMOKE test was renamed"
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep

    def order(item) -> int:
        if getattr(item.module, "RUNS_LAST", False) or item.get_closest_marker("runs_last"):
            return 2
        return 1 if item.path.name == "test_check_mode.py" or getattr(item.module, "CHECK_PASS", False) else 0

    items.sort(key=order)
