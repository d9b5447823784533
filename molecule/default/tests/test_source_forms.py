"""api_source as an artifact: a wheel, an sdist, a git repository at a ref.

Each test builds the second demo app (tests/app2) at its own version, rolls
it out, and checks that every instance serves it. The wheel goes out with
playbooks/rolling_update.yml under two loads at once (kept-alive
connections, and one connection per request); the sdist and the git ref
with site.yml (its API tier), whose restarts drain first.

These tests run last (RUNS_LAST, molecule/conftest.py), after any check
pass, and leave the host on the second app: nothing reads it after them,
and `molecule converge` puts the inventory's app back. Rolling back to an
older version on purpose (api_allow_downgrade) is tested in `rolling` and
`ha`.
"""

from __future__ import annotations

import json

from lbtest import CERT, DEMO2_MODULE, PORTS, ROLLING_UPDATE, Load, build_demo2, playbook, recap, tail

URL = "https://localhost/"


def served(host) -> dict[int, dict]:
    return {port: json.loads(host.check_output(f"curl -sf http://127.0.0.1:{port}/health")) for port in PORTS}


# Only the API tier changes: the upstream (ports, address) stays the same.
API_TIER = ("--tags", "api_servers")
RUNS_LAST = True


def artifact_vars(source, version: str, **extra) -> dict:
    return {"api_source": str(source), "api_module": DEMO2_MODULE, "api_version": version, **extra}


def test_a_wheel_rolls_out_without_a_failed_request(host, tmp_path):
    wheel = build_demo2(tmp_path, "2.0.0", "wheel")
    pooled = Load(host, URL, concurrency=5, keepalive=True, min_requests=100, cacert=CERT)
    single = Load(host, URL, concurrency=5, min_requests=100, cacert=CERT)
    with pooled, single:
        run = playbook(extra_vars=artifact_vars(wheel, "2.0.0"), path=ROLLING_UPDATE)
        assert run.returncode == 0, tail(run)
    for load in (pooled, single):
        assert load.result["failed"] == 0, load.result
    answers = served(host)
    assert {body["app"] for body in answers.values()} == {"lbapi-demo2"}, answers
    assert {body["version"] for body in answers.values()} == {"2.0.0"}, answers


def test_an_sdist_is_built_on_the_controller_and_installed(host, tmp_path):
    sdist = build_demo2(tmp_path, "2.1.0", "sdist")
    assert sdist.name.endswith("-2.1.0.tar.gz"), sdist
    run = playbook(*API_TIER, extra_vars=artifact_vars(sdist, "2.1.0"))
    assert run.returncode == 0, tail(run)
    assert {body["version"] for body in served(host).values()} == {"2.1.0"}


def test_a_git_ref_is_fetched_on_the_controller_and_rerun_changes_nothing(host, tmp_path):
    repository = build_demo2(tmp_path, "2.2.0", "git")
    extra = artifact_vars(repository, "2.2.0", api_source_ref="v2.2.0")
    run = playbook(*API_TIER, extra_vars=extra)
    assert run.returncode == 0, tail(run)
    answers = served(host)
    assert {(body["app"], body["version"]) for body in answers.values()} == {("lbapi-demo2", "2.2.0")}, answers
    again = playbook(*API_TIER, extra_vars=extra)
    assert again.returncode == 0, tail(again)
    assert all(counts["changed"] == 0 for counts in recap(again).values()), tail(again)
