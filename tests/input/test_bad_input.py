"""Bad input fails in the preflight plays, naming the variable.

Each case runs `ansible-playbook playbooks/preflight.yml` against an inventory
of local hosts (lb1; api1 and api2). The preflight plays only read facts and
validate: they cannot change a host, so this table does not claim "nothing
changed" (the default scenario's test_bad_input_fails_before_any_host_changes
shows it with a site.yml run that would change its host). The run's JSON
result (Ansible's json callback) says which task failed, with which message. Each case's exact task and message are in
expected_failures.json (INPUT_UPDATE_EXPECTED=1 rewrites it from a run, to
review in the diff); its pattern says what the message must name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def inventory(
    tmp_path: Path, api_hosts: list[str] | dict, compose_hosts: list[str] = (), lb_hosts: dict | None = None
) -> Path:
    """Local hosts; api_hosts and lb_hosts as names, or as {name: host vars}."""
    data = {
        "all": {
            "vars": {**LOCAL, "api_bind_address": "127.0.0.1"},
            "children": {
                "loadbalancers": {"hosts": lb_hosts or {"lb1": None}},
                "api_servers": {"hosts": api_hosts if isinstance(api_hosts, dict) else dict.fromkeys(api_hosts)},
                "compose_hosts": {"hosts": {name: None for name in compose_hosts}},
            },
        }
    }
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def preflight(
    tmp_path: Path,
    extra_vars: dict,
    api_hosts: list[str] | dict | None = None,
    compose_hosts: list[str] = (),
    lb_hosts: dict | None = None,
) -> subprocess.CompletedProcess:
    hosts = inventory(tmp_path, ["api1", "api2"] if api_hosts is None else api_hosts, compose_hosts, lb_hosts)
    return run_preflight(hosts, extra_vars)


def run_preflight(hosts: Path, extra_vars: dict) -> subprocess.CompletedProcess:
    """playbooks/preflight.yml on the inventory `hosts` (a file or a directory), json callback."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FACT_CACHING": "memory",
        "ANSIBLE_GATHER_SUBSET": "!all,!min,network",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(hosts),
            str(ROOT / "playbooks" / "preflight.yml"),
            "-e",
            json.dumps(extra_vars),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def outcome(run: subprocess.CompletedProcess) -> tuple[list[dict], dict[str, dict]]:
    """(the failed task results: [{host, task, msg}], each host's stats) of a json-callback run."""
    data = json.loads(run.stdout[run.stdout.index("{") :])
    failures = [
        {"host": host, "task": task["task"]["name"], "msg": " ".join(str(result.get("msg", "")).split())}
        for play in data["plays"]
        for task in play["tasks"]
        for host, result in task["hosts"].items()
        if result.get("failed")
    ]
    return failures, data["stats"]


EXPECTED_FILE = Path(__file__).with_name("expected_failures.json")
EXPECTED = json.loads(EXPECTED_FILE.read_text()) if EXPECTED_FILE.exists() else {}
UPDATE = os.environ.get("INPUT_UPDATE_EXPECTED") == "1"


@pytest.fixture(scope="session")
def expected():
    """case id -> {task, msg}; rewritten at the end of the session with INPUT_UPDATE_EXPECTED=1."""
    seen: dict[str, dict] = {}
    yield seen
    if UPDATE:
        # Read again: with pytest-xdist each worker merges its own cases in.
        current = json.loads(EXPECTED_FILE.read_text()) if EXPECTED_FILE.exists() else {}
        EXPECTED_FILE.write_text(json.dumps({**current, **seen}, indent=1, sort_keys=True) + "\n")


def assert_refused(run: subprocess.CompletedProcess, pattern: str, case: str, expected: dict, normalize=None) -> None:
    """The run failed in one task (on each host it failed on), with the case's
    exact messages, the first matching its pattern."""
    output = (run.stdout + run.stderr)[-3000:]
    assert run.returncode != 0, output
    failures, _stats = outcome(run)
    assert failures, output
    assert len({f["task"] for f in failures}) == 1, failures
    if normalize:
        failures = [{**f, "msg": normalize(f["msg"])} for f in failures]
    failures = sorted(failures, key=lambda f: f["host"])
    assert re.search(pattern, failures[0]["msg"], re.DOTALL), failures[0]
    if UPDATE:
        expected[case] = failures
    else:
        assert failures == EXPECTED[case], (failures, EXPECTED.get(case))


def assert_refused_per_host(
    run: subprocess.CompletedProcess, patterns: dict[str, str], case: str, expected: dict, normalize=None
) -> None:
    """Several variants of one check in one run, one host each: the run failed
    in one task, on exactly the hosts of `patterns`, each message matching its
    host's pattern, and all exactly as pinned in expected_failures.json."""
    output = (run.stdout + run.stderr)[-3000:]
    assert run.returncode != 0, output
    failures, _stats = outcome(run)
    assert len({f["task"] for f in failures}) == 1, failures
    if normalize:
        failures = [{**f, "msg": normalize(f["msg"])} for f in failures]
    failures = sorted(failures, key=lambda f: f["host"])
    assert [f["host"] for f in failures] == sorted(patterns), failures
    for failure in failures:
        assert re.search(patterns[failure["host"]], failure["msg"], re.DOTALL), failure
    if UPDATE:
        expected[case] = failures
    else:
        assert failures == EXPECTED[case], (failures, EXPECTED.get(case))


def instances(*entries: dict) -> dict:
    return {"api_instances": list(entries)}


P1, P2, P3 = {"port": 8001}, {"port": 8002}, {"port": 8003}

# (id, extra vars, api hosts or None for api1+api2, pattern the failure must show)
CASES = [
    (
        # Every upstream option's check in one run (its value variants are
        # unit tests of lb_server_option_errors, tests/unit/test_filters.py).
        "upstream options",
        instances(
            {"port": 8001, "weight": 0, "max_fails": -1, "fail_timeout": "ten seconds"},
            {"port": 8002, "max_conns": -5, "backup": "maybe", "wieght": 3},
        ),
        None,
        r"api_instances of api1, port 8001: weight must be an integer >= 1, got 0; "
        r"api_instances of api1, port 8001: max_fails must be an integer >= 0, got -1; "
        r"api_instances of api1, port 8001: fail_timeout must be an nginx time such as 10s, 500ms or 1m, "
        r"got 'ten seconds'; .*"
        r"api_instances of api1, port 8002: max_conns must be an integer >= 0, got -5; "
        r"api_instances of api1, port 8002: backup must be true or false, got 'maybe'; "
        r"api_instances of api1, port 8002: wieght is not an upstream option \(known: weight, max_fails, ",
    ),
    (
        # Each way a port can be wrong, in one run: the message lists them all.
        "ports",
        instances({"port": 70000}, {"port": 0}, {"weight": 2}),
        None,
        r"api_instances on api1: every entry needs port, an integer within 1-65535, "
        r"got \[\{'port': 70000\}, \{'port': 0\}, \{'weight': 2\}\]",
    ),
    ("duplicate port", instances(P1, P2, {"port": 8001}), None, r"port used more than once.*8001"),
    ("no api_servers", {}, [], r"upstream \S+ would be empty"),
    ("no instances", instances(), None, r"upstream \S+ would be empty"),
    ("hash without key", {"nginx_lb_method": "hash"}, None, r"nginx_lb_method=hash needs nginx_lb_hash_key"),
    (
        "down on every server",
        instances({"port": 8001, "down": True}, {"port": 8002, "down": True}),
        None,
        r"Every server of upstream .* down",
    ),
    (
        "hsts shorter than 180 days",
        {"nginx_lb_hsts_max_age": 86400},
        None,
        r"nginx_lb_hsts_max_age=86400 is shorter than 180 days",
    ),
    ("rate limit not a rate", {"nginx_lb_rate_limit": "fast"}, None, r"nginx_lb_rate_limit must be empty or a rate"),
    (
        "access log buffer not a size",
        {"nginx_lb_access_log_buffer": "lots"},
        None,
        r"nginx_lb_access_log_buffer must be empty or an nginx size such as 64k, .* \(got 'lots', '1s'\)",
    ),
    (
        "open files below twice the connections",
        {"nginx_lb_worker_connections": 4096, "nginx_lb_worker_rlimit_nofile": 4096},
        None,
        r"nginx_lb_worker_rlimit_nofile at least 2 x worker_connections \(got 4096, needs 8192\)",
    ),
    (
        "service open files above what the host allows",
        {"nginx_lb_service_limit_nofile": 4000000},
        None,
        r"nginx_lb_service_limit_nofile=4000000 is above what lb1 lets a service have: \d+",
    ),
    (
        "log rotation size not a size",
        {"nginx_lb_log_rotate_maxsize": "big"},
        None,
        r"nginx_lb_log_rotate_maxsize empty or a logrotate size such as 100M \(got 'big'\)",
    ),
    ("acme without names", {"nginx_lb_tls_mode": "acme"}, None, r"nginx_lb_tls_mode=acme needs DNS names"),
    (
        "provided without a key",
        {"nginx_lb_tls_mode": "provided", "nginx_lb_tls_certificate": "-----BEGIN CERTIFICATE-----"},
        None,
        r"nginx_lb_tls_mode=provided needs nginx_lb_tls_certificate",
    ),
    (
        "firewall port out of range",
        {"firewall_rules": [{"name": "exporter", "ports": [70000], "sources": ["10.0.0.5"]}]},
        None,
        r"ports must be within 1-65535.*exporter: 70000",
    ),
    (
        "firewall rule without sources",
        {"firewall_rules": [{"name": "exporter", "ports": [9100]}]},
        None,
        r"missing required arguments: sources found in firewall_rules",
    ),
    (
        "ssh sources lock the controller out",
        {"firewall_controller_address": "198.51.100.7", "firewall_ssh_sources": ["192.0.2.0/24"]},
        None,
        r"would lock the controller out of .*198\.51\.100\.7.*firewall_ssh_sources",
    ),
    (
        "monitoring source not an address",
        {"monitoring_sources": ["prometheus.example"]},
        None,
        r"nginx_exporter_sources \(default: monitoring_sources\).*prometheus\.example",
    ),
    (
        "exporter port out of range",
        {"nginx_exporter_port": 99999},
        None,
        r"nginx_exporter_port must be 1-65535 \(got 99999\)",
    ),
    (
        "health path blocked",
        {"nginx_lb_blocked_paths": ["/metrics", "/health"]},
        None,
        r"must not block the health path /health",
    ),
]


@pytest.mark.parametrize(("case", "extra_vars", "api_hosts", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_in_preflight_with_a_clear_message(tmp_path, expected, case, extra_vars, api_hosts, pattern):
    assert_refused(preflight(tmp_path, extra_vars, api_hosts), pattern, case, expected)


BACKUP = instances(P1, {"port": 8002, "backup": True})
PAIR_ON = {"lb_ha_vip": "192.0.2.100"}

# Variants of one check, in one run each: every variant is a host of its own
# (its variables as host vars), and the check fails on each of them in the
# same task, each with its own message.
# (id, load balancers with their vars, API hosts with theirs or None for
# api1+api2, extra vars, {host: pattern its message must match})
BATCHES = [
    (
        "unknown choices",
        {
            "lb1": {"nginx_lb_method": "weighted"},
            "lb2": {"nginx_lb_tls_mode": "letsencrypt"},
            "lb3": {"nginx_lb_access_log_format": "logfmt"},
        },
        None,
        {},
        {
            "lb1": r"nginx_lb_method.*one of.*round_robin",
            "lb2": r"nginx_lb_tls_mode.*selfsigned, provided, acme",
            "lb3": r"nginx_lb_access_log_format.*json, combined",
        },
    ),
    (
        "backup with a method that refuses it",
        {
            "lb1": {"nginx_lb_method": "hash", "nginx_lb_hash_key": "$uri"},
            "lb2": {"nginx_lb_method": "ip_hash"},
            "lb3": {"nginx_lb_method": "random"},
        },
        None,
        BACKUP,
        {
            "lb1": r"backup: true.*nginx_lb_method=hash",
            "lb2": r"backup: true.*nginx_lb_method=ip_hash",
            "lb3": r"backup: true.*nginx_lb_method=random",
        },
    ),
    (
        "retry policy",
        {"lb1": {"nginx_lb_max_fails": -1}, "lb2": {"nginx_lb_proxy_next_upstream_tries": 0}},
        None,
        {},
        {
            "lb1": r"nginx_lb_max_fails must be >= 0 \(got -1\)",
            "lb2": r"nginx_lb_proxy_next_upstream_tries >= 1 \(got 0\)",
        },
    ),
    (
        "api_name",
        None,
        {"api1": {"api_name": "rag photographie"}, "api2": {"api_name": "rag@api"}, "api3": {"api_name": "a" * 40}},
        {},
        {
            "api1": r"api_name=\"rag photographie\" is not valid",
            "api2": r"api_name=\"rag@api\" is not valid",
            "api3": r"api_name=\"a{40}\" is not valid.*at most 32",
        },
    ),
    (
        "firewall sources not addresses",
        {"lb1": {"firewall_rules": [{"name": "exporter", "ports": [9100], "sources": ["10.0.0.300"]}]}},
        {"api1": {"api_firewall_sources": ["lb1.example"]}},
        {},
        {
            "lb1": r"sources must be IPv4/IPv6 addresses or CIDRs.*exporter: 10\.0\.0\.300",
            "api1": r"sources must be IPv4/IPv6 addresses or CIDRs.*instances: lb1\.example",
        },
    ),
    (
        "pairs not of two hosts",
        {
            "lb1": PAIR_ON,
            "lb2": {"lb_ha_vip": "192.0.2.101"},
            "lb3": {"lb_ha_vip": "192.0.2.101"},
            "lb4": {"lb_ha_vip": "192.0.2.101"},
        },
        None,
        {},
        {
            "lb1": r"lb_ha_vip 192\.0\.2\.100 is set on 1 host\(s\) of group 'loadbalancers' \(lb1\); "
            r"a pair is exactly 2\. Its peer is missing",
            **dict.fromkeys(
                ("lb2", "lb3", "lb4"),
                r"lb_ha_vip 192\.0\.2\.101 is set on 3 host\(s\).*more than 2 hosts per address is not supported",
            ),
        },
    ),
    (
        "virtual router ids",
        {
            "lb1": {**PAIR_ON, "lb_ha_virtual_router_id": 256},
            "lb2": {**PAIR_ON, "lb_ha_virtual_router_id": 256},
            **{name: {"lb_ha_vip": "192.0.2.101", "lb_ha_virtual_router_id": 7} for name in ("lb3", "lb4")},
            **{name: {"lb_ha_vip": "192.0.2.102", "lb_ha_virtual_router_id": 7} for name in ("lb5", "lb6")},
        },
        None,
        {},
        {
            **dict.fromkeys(
                ("lb1", "lb2"), r"lb_ha_virtual_router_id 256 of the pair for 192\.0\.2\.100: it must be within 1-255"
            ),
            **dict.fromkeys(
                ("lb3", "lb4", "lb5", "lb6"),
                r"lb_ha_virtual_router_id 7 of the pair for 192\.0\.2\.10[12]"
                r".*the pair for 192\.0\.2\.10[12] has it too",
            ),
        },
    ),
]


@pytest.mark.parametrize(
    ("case", "lb_hosts", "api_hosts", "extra_vars", "patterns"), BATCHES, ids=[c[0] for c in BATCHES]
)
def test_variants_of_one_check_fail_in_one_run_each_with_its_message(
    tmp_path, expected, case, lb_hosts, api_hosts, extra_vars, patterns
):
    run = preflight(tmp_path, extra_vars, api_hosts, lb_hosts=lb_hosts)
    assert_refused_per_host(run, patterns, f"batch: {case}", expected)


def test_valid_input_passes_preflight(tmp_path):
    extra = {
        **instances(
            {"port": 8001, "weight": 3}, {"port": 8002, "weight": 2, "max_conns": 10}, {"port": 8003, "backup": True}
        ),
        "nginx_lb_method": "least_conn",
        "firewall_controller_address": "192.0.2.9",
        "firewall_ssh_sources": ["192.0.2.0/24", "2001:db8::/32"],
    }
    run = preflight(tmp_path, extra)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    failures, stats = outcome(run)
    assert failures == []
    assert set(stats) == {"lb1", "api1", "api2"}, stats


def test_compose_host_on_debian_12_is_refused_naming_compose_v1(tmp_path, expected):
    # This machine is Debian 12: as a Compose host it must be refused before any change.
    run = preflight(tmp_path, {}, compose_hosts=["docker1"])
    # The point release (12.11) is this machine's: the expected message says 12.x.
    assert_refused(
        run,
        "Debian 12 ships only Compose v1",
        "compose host on debian 12",
        expected,
        normalize=lambda msg: re.sub(r"Debian 12\.\d+\.", "Debian 12.x.", msg),
    )
    assert outcome(run)[1]["docker1"]["failures"] == 1


PAIR = {"lb1": {"lb_ha_vip": "192.0.2.100"}, "lb2": {"lb_ha_vip": "192.0.2.100"}}

# (id, extra vars, load balancers with their host vars, pattern the failure must show)
HA_CASES = [
    (
        "vip not an address",
        {},
        {"lb1": {"lb_ha_vip": "192.0.2.300"}, "lb2": {"lb_ha_vip": "192.0.2.300"}},
        r"lb_ha_vip must be an IPv4 address \(got '192\.0\.2\.300'\)",
    ),
    (
        "vip is a host's address",
        {},
        {**PAIR, "lb2": {"lb_ha_vip": "192.0.2.100", "ansible_host": "192.0.2.100"}},
        r"lb_ha_vip 192\.0\.2\.100 is the address of a host of the inventory",
    ),
    (
        "check fall zero",
        {"lb_ha_check_fall": 0},
        PAIR,
        r"lb_ha_advert_int must be within 1-255 \(got 1\), and lb_ha_check_interval.*got 1, 1, 0, 2",
    ),
    (
        "acme on a pair",
        {"nginx_lb_tls_mode": "acme", "nginx_lb_server_names": ["api.example.com"]},
        PAIR,
        r"nginx_lb_tls_mode=acme with lb_ha_vip is not supported",
    ),
]


@pytest.mark.parametrize(("case", "extra_vars", "lb_hosts", "pattern"), HA_CASES, ids=[c[0] for c in HA_CASES])
def test_bad_pair_input_fails_in_preflight_naming_the_variable(tmp_path, expected, case, extra_vars, lb_hosts, pattern):
    assert_refused(preflight(tmp_path, extra_vars, lb_hosts=lb_hosts), pattern, f"pair: {case}", expected)


def test_a_valid_pair_passes_preflight(tmp_path):
    run = preflight(tmp_path, {}, lb_hosts=PAIR)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    failures, stats = outcome(run)
    assert failures == []
    assert set(PAIR) <= set(stats), stats


# api_source as an artifact (molecule/shared/lbtest.py builds tests/app2).
sys.path.insert(0, str(ROOT / "molecule" / "shared"))
from lbtest import DEMO2_MODULE, build_demo2  # noqa: E402


@pytest.fixture(scope="module")
def demo2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo2")
    return {"wheel": build_demo2(tmp, "2.0.0", "wheel"), "git": build_demo2(tmp, "2.2.0", "git"), "root": tmp}


# Every way api_source can be wrong, in one run: each API host names its own
# source (host vars), and the one check fails on all five, each with its
# message.
def source_hosts(d) -> dict:
    return {
        "api1": {"api_source": "/nonexistent/app-1.0-py3-none-any.whl", "api_module": DEMO2_MODULE},
        "api2": {"api_source": str(d["git"]), "api_source_ref": "v9.9.9", "api_module": DEMO2_MODULE},
        "api3": {"api_source": str(d["wheel"]), "api_module": "lbapi_demo2.service:app", "api_version": "2.0.0"},
        "api4": {"api_source": str(d["wheel"]), "api_module": "lbapi_demo2.main:application", "api_version": "2.0.0"},
        "api5": {"api_source": str(d["wheel"]), "api_module": DEMO2_MODULE, "api_version": "1.0.0"},
    }


SOURCE_PATTERNS = {
    "api1": r"api_source /nonexistent/app-1\.0-py3-none-any\.whl does not exist on the controller\."
    r" Nothing was changed\.",
    "api2": r"api_source_ref v9\.9\.9 is no branch, tag or commit of .*demo2-git-2\.2\.0"
    r" \(branches: \w+; tags: v2\.2\.0\)",
    "api3": r"the wheel lbapi_demo2-2\.0\.0-py3-none-any\.whl: lbapi_demo2/service\.py defines no top-level `app`"
    r" for api_module lbapi_demo2\.service:app",
    "api4": r"the wheel lbapi_demo2-2\.0\.0-py3-none-any\.whl has no module lbapi_demo2\.main",
    "api5": r"api_version=1\.0\.0 is not the version of api_source .*lbapi_demo2-2\.0\.0-py3-none-any\.whl \(2\.0\.0\)",
}


def test_bad_app_sources_fail_in_preflight_each_with_its_message(tmp_path, expected, demo2):
    # The artifacts are built in this session's temporary directory.
    root = str(demo2["root"])
    run = preflight(tmp_path, {}, api_hosts=source_hosts(demo2))
    assert_refused_per_host(
        run, SOURCE_PATTERNS, "source: every way", expected, normalize=lambda msg: msg.replace(root, "<tmp>")
    )


def test_artifact_sources_pass_preflight(tmp_path, demo2):
    for extra in (
        {"api_source": str(demo2["wheel"]), "api_module": DEMO2_MODULE, "api_version": "2.0.0"},
        {
            "api_source": str(demo2["git"]),
            "api_source_ref": "v2.2.0",
            "api_module": DEMO2_MODULE,
            "api_version": "2.2.0",
        },
    ):
        run = preflight(tmp_path, extra)
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]


def deployed_unit(tmp_path: Path, version: str) -> dict:
    """Extra vars pointing the api role at a unit file that records `version` as deployed."""
    unit = tmp_path / "api@.service"
    unit.write_text(f'[Service]\nEnvironment=API_PORT=%i\nEnvironment="API_VERSION={version}"\n')
    return {"_api_unit_path": str(unit)}


def test_an_older_api_version_than_deployed_is_refused(tmp_path, expected):
    run = preflight(tmp_path, {**deployed_unit(tmp_path, "2.0.0"), "api_version": "1.10.0"})
    assert_refused(
        run, r"has rag-photographie 2\.0\.0 deployed, and api_version=1\.10\.0 is older", "downgrade", expected
    )


@pytest.mark.parametrize(
    ("deployed", "extra"),
    [
        ("2.0.0", {"api_version": "1.0.0", "api_allow_downgrade": True}),
        ("1.9.0", {"api_version": "1.10.0"}),
        ("2.0.0", {"api_version": "2.0.0"}),
        ("git-3f2a9c1", {"api_version": "1.0.0"}),
    ],
    ids=["downgrade allowed", "numeric order", "same version", "not a dotted number"],
)
def test_a_newer_same_or_allowed_api_version_passes(tmp_path, deployed, extra):
    run = preflight(tmp_path, {**deployed_unit(tmp_path, deployed), **extra})
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    failures, _stats = outcome(run)
    assert failures == []
