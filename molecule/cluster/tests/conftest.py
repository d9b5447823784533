"""The cluster scenario's hosts, for both of its test files."""

from __future__ import annotations

import pytest
from clustertest import CACERT
from lbtest import CERT, get_host


@pytest.fixture(scope="module")
def hosts():
    """lb1, api1, api2 and the outsider, with lb1's certificate copied to the outsider."""
    found = {name: get_host(name) for name in ("lb1", "api1", "api2", "outsider")}
    cert = found["lb1"].file(CERT).content_string
    found["outsider"].run_expect([0], f"cat > {CACERT} <<'EOF'\n{cert}EOF")
    return found
