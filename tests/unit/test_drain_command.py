"""The api role's drain command: its waits poll on the host, bounded in time.

The rendered script runs with a stand-in `ss` first on PATH that prints one
line per open connection, from a list of counts (one per call; the last one
repeats), so each wait sees the connections end, or not, on cue.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import render


@pytest.fixture
def drain(tmp_path: Path):
    script = tmp_path / "api-drain"
    script.write_text(render("api", "api-drain.sh.j2", {"ansible_managed": "managed"}))
    script.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    counts = tmp_path / "counts"
    calls = tmp_path / "calls"
    (bin_dir / "ss").write_text(
        "#!/bin/sh\n"
        f'n=$(head -n 1 {counts}); [ "$(wc -l < {counts})" -gt 1 ] && sed -i 1d {counts}\n'
        f"echo call >> {calls}\n"
        'i=0; while [ "$i" -lt "$n" ]; do echo "ESTAB 0 0 127.0.0.1:8001 127.0.0.1:5$i"; i=$((i + 1)); done\n'
    )
    (bin_dir / "ss").chmod(0o755)

    def run(*args: str, counts_seen: list[int]) -> tuple[subprocess.CompletedProcess, float, int]:
        counts.write_text("".join(f"{n}\n" for n in counts_seen))
        calls.write_text("")
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        started = time.monotonic()
        result = subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=30, check=False)
        return result, time.monotonic() - started, len(calls.read_text().splitlines())

    return run


# (action, seconds, the counts ss shows, the count printed, the polls):
# each wait returns at the first poll that meets its condition ...
MET = [
    ("drained", "10", [3, 2, 1, 0], "0", 4),
    ("rejoined", "5", [0, 0, 1], "1", 3),
]
# ... or after its seconds, one poll every 0.1 s, printing the last count.
NOT_MET = [
    ("drained", "1", [2], "2", 11),
    ("rejoined", "1", [0], "0", 11),
]


@pytest.mark.parametrize(("action", "limit", "counts", "printed", "expected_polls"), MET)
def test_a_wait_returns_once_its_condition_is_met(drain, action, limit, counts, printed, expected_polls):
    result, seconds, polls = drain(action, "8001", limit, counts_seen=counts)
    assert (result.returncode, result.stdout) == (0, f"{printed}\n"), result.stderr
    assert polls == expected_polls
    assert seconds < 2


@pytest.mark.parametrize(("action", "limit", "counts", "printed", "expected_polls"), NOT_MET)
def test_a_wait_gives_up_after_its_seconds_and_prints_the_count(drain, action, limit, counts, printed, expected_polls):
    result, seconds, polls = drain(action, "8001", limit, counts_seen=counts)
    assert (result.returncode, result.stdout) == (0, f"{printed}\n"), result.stderr
    assert 0.9 < seconds < 5
    assert polls == expected_polls


def test_a_wait_without_its_seconds_is_a_usage_error(drain):
    result, _seconds, polls = drain("drained", "8001", counts_seen=[0])
    assert result.returncode == 2
    assert "drained PORT SECONDS" in result.stderr
    assert polls == 0
