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


def test_drained_returns_once_the_last_connection_ended(drain):
    result, seconds, polls = drain("drained", "8001", "10", counts_seen=[3, 2, 1, 0])
    assert (result.returncode, result.stdout) == (0, "0\n"), result.stderr
    assert polls == 4
    assert seconds < 2


def test_drained_gives_up_after_its_seconds_and_prints_what_is_left(drain):
    result, seconds, polls = drain("drained", "8001", "1", counts_seen=[2])
    assert (result.returncode, result.stdout) == (0, "2\n"), result.stderr
    assert 0.9 < seconds < 5
    assert polls == 11


def test_rejoined_returns_at_the_first_connection(drain):
    result, seconds, polls = drain("rejoined", "8001", "5", counts_seen=[0, 0, 1])
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    assert polls == 3
    assert seconds < 2


def test_rejoined_without_traffic_ends_after_its_seconds(drain):
    result, seconds, _polls = drain("rejoined", "8001", "1", counts_seen=[0])
    assert (result.returncode, result.stdout) == (0, "0\n"), result.stderr
    assert 0.9 < seconds < 5


def test_a_wait_without_its_seconds_is_a_usage_error(drain):
    result, _seconds, polls = drain("drained", "8001", counts_seen=[0])
    assert result.returncode == 2
    assert "drained PORT SECONDS" in result.stderr
    assert polls == 0
