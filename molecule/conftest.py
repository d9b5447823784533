"""Make molecule/shared/lbtest.py importable from every scenario's tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "shared"))


def pytest_collection_modifyitems(items):
    """The check-mode pass (shared/test_check_mode.py) is each scenario's last step:
    it checks the state every other test left, whatever the file names."""
    items.sort(key=lambda item: item.path.name == "test_check_mode.py")
