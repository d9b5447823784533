"""Bad input fails in the preflight plays, naming the variable.

The table runs `playbooks/preflight.yml` on local hosts: no host is
contacted, and the preflight plays only read facts and validate (the default
scenario's test_bad_input_fails_before_any_host_changes shows "nothing
changed" with a site.yml run that would change its host). The run's JSON
result (Ansible's json callback) says which task failed, with which message.
Each case's exact task and messages are in expected_failures.json
(INPUT_UPDATE_EXPECTED=1 rewrites it from a run, to review in the diff); its
pattern says what the message must name.

Every case is a cell of one inventory: its own load balancers and API
hosts (nginx_lb_backend_group names the cell's group), or two shared valid
API hosts when only the load balancers read its variables; its variables are
host variables, and its pairs have addresses of their own. Ten cells are one
run (CHUNK) of a copy of the preflight with `any_errors_fatal` off and a last
play that marks the hosts that got through, its only changes: each cell goes
on to its own first failure, the task where the real preflight stops the
whole run. A case checks that task's failures on its cell's hosts, named as
the case alone would name them; what the cell would fail next, the real run
never reaches. test_the_real_preflight_stops_the_whole_run_at_the_first_failure
runs the playbook itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PREFLIGHT = ROOT / "playbooks" / "preflight.yml"

LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
# What every table host has besides its cell's variables.
COMMON = {**LOCAL, "api_bind_address": "127.0.0.1"}


def run_preflight(
    hosts: Path, extra_vars: dict, playbook: Path = PREFLIGHT, timeout: int = 120
) -> subprocess.CompletedProcess:
    """`playbook` (the preflight) on the inventory `hosts` (a file or a directory), json callback."""
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
            str(playbook),
            "-e",
            json.dumps(extra_vars),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def outcome(run: subprocess.CompletedProcess) -> tuple[list[dict], dict[str, dict]]:
    """(the failed task results, in the order they ran: [{host, task, msg}],
    each host's stats) of a json-callback run."""
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


@dataclass
class Cell:
    """One case's hosts, each with its variables: its load balancers, its API
    hosts (None: the table's shared valid ones) and its Compose hosts."""

    lbs: dict[str, dict] = field(default_factory=dict)
    apis: dict[str, dict] | None = None
    composes: dict[str, dict] = field(default_factory=dict)


def slug(case: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", case.split(": ", 1)[-1].lower()).strip("-")


def names(case: str, hosts: dict) -> dict:
    """The cell's host names in the table: the case's slug, then the host's own name."""
    return {f"{slug(case)}-{name}": value for name, value in hosts.items()}


SHARED_API = "table_valid_api"


def group_of(case: str) -> str:
    return f"{slug(case).replace('-', '_')}_api"


def as_alone(case: str, text: str) -> str:
    """A host name or message of the cell as the case alone would say it: its
    hosts without the cell's prefix, its API group as api_servers."""
    return text.replace(f"{slug(case)}-", "").replace(group_of(case), "api_servers")


def table_inventory(cells: dict[str, Cell]) -> dict:
    """One inventory of every cell: a load balancer's upstream is its own
    cell's API hosts (nginx_lb_backend_group), or two shared valid ones; and
    a valid load balancer of those."""
    # Valid hosts in every run: a play whose every host failed ends the run.
    lbs, apis, composes = {"sentinel-lb1": {"nginx_lb_backend_group": SHARED_API}}, {}, {}
    groups: dict[str, dict] = {SHARED_API: {"hosts": {"shared-api1": None, "shared-api2": None}}}
    apis.update({"shared-api1": {}, "shared-api2": {}})
    for case, cell in cells.items():
        group = SHARED_API
        if cell.apis is not None:
            group = group_of(case)
            groups[group] = {"hosts": dict.fromkeys(names(case, cell.apis))}
            apis.update(names(case, cell.apis))
        lbs.update(
            {name: {"nginx_lb_backend_group": group, **hostvars} for name, hostvars in names(case, cell.lbs).items()}
        )
        composes.update(names(case, cell.composes))
    return {
        "all": {
            "vars": COMMON,
            "children": {
                "loadbalancers": {"hosts": lbs},
                "api_servers": {"hosts": apis, "children": groups},
                "compose_hosts": {"hosts": composes},
            },
        }
    }


THROUGH = "Mark the hosts that got through every check"


def without_any_errors_fatal(path: Path) -> Path:
    """A copy of the preflight with any_errors_fatal off, and a play that marks
    the hosts that got through the tiers' checks (THROUGH), before the
    Compose play: its only changes. (Ansible ends a run where a play's every
    host failed: the Compose play, on this Debian 12 machine, is the last.)"""
    plays = yaml.safe_load(PREFLIGHT.read_text())
    for play in plays:
        assert play.pop("any_errors_fatal") is True, play["name"]
        play["any_errors_fatal"] = False
    assert plays[-1]["hosts"] == "compose_hosts", plays[-1]["name"]
    mark = {"name": THROUGH, "ansible.builtin.debug": {"msg": "through"}}
    plays.insert(-1, {"name": THROUGH, "hosts": "loadbalancers:api_servers", "gather_facts": False, "tasks": [mark]})
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


class Table:
    """The table's one run: each cell's failures and stats."""

    def __init__(self, run: subprocess.CompletedProcess, cells: dict[str, Cell]):
        self.run = run
        self.failures, self.stats = outcome(run)
        self.cells = cells
        data = json.loads(run.stdout[run.stdout.index("{") :])
        self.through = {
            host
            for play in data["plays"]
            for task in play["tasks"]
            if task["task"]["name"] == THROUGH
            for host, result in task["hosts"].items()
            if not result.get("failed")
        }

    def hosts(self, case: str) -> set[str]:
        cell = self.cells[case]
        return {*names(case, cell.lbs), *names(case, cell.apis or {}), *names(case, cell.composes)}

    def first_failures(self, case: str) -> list[dict]:
        """The failures of the first task the cell failed in (where the real
        preflight stops), sorted by host, named as the case alone would name
        them (as_alone)."""
        mine = [failure for failure in self.failures if failure["host"] in self.hosts(case)]
        first = [f for f in mine if mine and f["task"] == mine[0]["task"]]
        alone = [{"host": as_alone(case, f["host"]), "task": f["task"], "msg": as_alone(case, f["msg"])} for f in first]
        return sorted(alone, key=lambda f: f["host"])

    def output(self) -> str:
        return (self.run.stdout + self.run.stderr)[-3000:]


# case id -> its cell, from what the session built (the demo2 artifacts, unit files).
CELLS: dict[str, object] = {}


def cell(case: str):
    """Register a case's cell: a Cell, or a function of the session's context that returns one."""

    def register(value):
        assert case not in CELLS, case
        CELLS[case] = value
        return value

    return register


# Cells per run: the table's cells in groups of this many (make input
# keeps this file on one pytest-xdist worker: --dist loadfile). A run's cost grows faster than its host
# count (tasks that read every host's variables), and each run has a fixed
# cost: ten is about the cheapest per case (measured: 12 cells in one run
# cost 6 CPU-s each, the 43 together 11 each, one case alone 14).
CHUNK = 10


def params(*cases) -> list:
    """pytest params of registered cases (a case id, or a tuple whose first
    item is one), each with the case's id."""
    found = []
    for entry in cases:
        values = entry if isinstance(entry, tuple) else (entry,)
        found.append(pytest.param(*values, id=values[0].split(": ", 1)[-1]))
    return found


class Tables:
    """The runs of the table: the selected cells (-k picks a few), CHUNK at a time, each run on first use."""

    def __init__(self, request, tmp_path_factory):
        self.request = request
        self.tmp_path_factory = tmp_path_factory
        selected = {
            item.callspec.params["case"]
            for item in request.session.items
            if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params
        }
        self.selected = sorted(selected, key=list(CELLS).index)
        self.runs: dict[int, Table] = {}

    def of(self, case: str) -> Table:
        chunk = self.selected.index(case) // CHUNK
        if chunk not in self.runs:
            self.runs[chunk] = self._run(self.selected[chunk * CHUNK : (chunk + 1) * CHUNK])
        return self.runs[chunk]

    def _run(self, cases: list[str]) -> Table:
        tmp = self.tmp_path_factory.mktemp("table")
        demo2 = self.request.getfixturevalue("demo2") if NEEDS_DEMO2 & set(cases) else None
        context = {"tmp": tmp, "demo2": demo2}
        cells = {case: CELLS[case](context) if callable(CELLS[case]) else CELLS[case] for case in cases}
        hosts = tmp / "hosts.yml"
        hosts.write_text(yaml.safe_dump(table_inventory(cells), sort_keys=False))
        # The unit file the api role reads the deployed version from: a host's
        # own (deployed_unit) or none. A role variable: only an extra variable
        # beats it, and this one is templated for each host.
        unit = {"_api_unit_path": "{{ table_api_unit_path | default('%s') }}" % (tmp / "none.service")}
        run = run_preflight(hosts, unit, playbook=without_any_errors_fatal(tmp / "preflight.yml"), timeout=600)
        assert "{" in run.stdout, (run.stdout + run.stderr)[-3000:]
        return Table(run, cells)


@pytest.fixture(scope="module")
def tables(request, tmp_path_factory) -> Tables:
    return Tables(request, tmp_path_factory)


def assert_refused(table: Table, case: str, expected: dict, patterns: str | dict[str, str], normalize=None) -> None:
    """The cell failed in one task first, on each host it failed on, with the
    case's exact messages (pinned in expected_failures.json). `patterns`: one
    the first message must match, or one per host ({host: pattern}, the case's
    names), and then exactly those hosts failed."""
    failures = table.first_failures(case)
    assert failures, (case, table.output())
    if normalize:
        failures = [{**f, "msg": normalize(f["msg"])} for f in failures]
    if isinstance(patterns, str):
        assert re.search(patterns, failures[0]["msg"], re.DOTALL), failures[0]
    else:
        assert [f["host"] for f in failures] == sorted(patterns), failures
        for failure in failures:
            assert re.search(patterns[failure["host"]], failure["msg"], re.DOTALL), failure
    if UPDATE:
        expected[case] = failures
    else:
        assert failures == EXPECTED[case], (failures, EXPECTED.get(case))


def test_every_run_of_the_table_got_its_valid_hosts_through(tables):
    """The table's valid hosts reached the end of every run: no run ended early."""
    for case in tables.selected:
        tables.of(case)
    assert tables.runs
    for table in tables.runs.values():
        assert {"sentinel-lb1", "shared-api1", "shared-api2"} <= table.through, sorted(table.through)


def assert_passed(table: Table, case: str) -> None:
    """Every host of the cell ran the preflight to its end without a failure."""
    failed = [f for f in table.failures if f["host"] in table.hosts(case)]
    assert not failed, failed
    assert table.hosts(case) <= table.through, (table.hosts(case), sorted(table.through))


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


def lb_only(extra_vars: dict) -> bool:
    """Only the load balancers read these: the cell can use the shared API hosts."""
    return all(name.startswith(("nginx_lb_", "lb_ha_", "nginx_exporter_")) for name in extra_vars)


def cell_of(extra_vars: dict, lbs: dict | None = None, apis: dict | list | None = None) -> Cell:
    """A cell whose every host has `extra_vars` (as the old runs' extra vars), then
    its own; lbs: lb1 unless given; apis: api1 and api2 unless given (the shared
    ones when only the load balancers read the variables)."""
    lbs = {name: {**extra_vars, **own} for name, own in (lbs or {"lb1": {}}).items()}
    if apis is None:
        if lb_only(extra_vars):
            return Cell(lbs=lbs)
        apis = ["api1", "api2"]
    own_vars = apis if isinstance(apis, dict) else dict.fromkeys(apis, {})
    return Cell(lbs=lbs, apis={name: {**extra_vars, **own} for name, own in own_vars.items()})


for _case, _extra, _apis, _pattern in CASES:
    cell(_case)(cell_of(_extra, apis=_apis))


@pytest.mark.parametrize(("case", "pattern"), params(*[(c[0], c[3]) for c in CASES]))
def test_bad_input_fails_in_preflight_with_a_clear_message(tables, expected, case, pattern):
    assert_refused(tables.of(case), case, expected, pattern)


BACKUP = instances(P1, {"port": 8002, "backup": True})

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
            "lb1": {"lb_ha_vip": "192.0.2.100"},
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
            **{name: {"lb_ha_vip": "192.0.2.102", "lb_ha_virtual_router_id": 256} for name in ("lb1", "lb2")},
            **{name: {"lb_ha_vip": "192.0.2.103", "lb_ha_virtual_router_id": 7} for name in ("lb3", "lb4")},
            **{name: {"lb_ha_vip": "192.0.2.104", "lb_ha_virtual_router_id": 7} for name in ("lb5", "lb6")},
        },
        None,
        {},
        {
            **dict.fromkeys(
                ("lb1", "lb2"), r"lb_ha_virtual_router_id 256 of the pair for 192\.0\.2\.102: it must be within 1-255"
            ),
            **dict.fromkeys(
                ("lb3", "lb4", "lb5", "lb6"),
                r"lb_ha_virtual_router_id 7 of the pair for 192\.0\.2\.10[34]"
                r".*the pair for 192\.0\.2\.10[34] has it too",
            ),
        },
    ),
]


for _case, _lbs, _apis, _extra, _patterns in BATCHES:
    cell(f"batch: {_case}")(cell_of(_extra, lbs=_lbs, apis=_apis))


@pytest.mark.parametrize(("case", "patterns"), params(*[(f"batch: {c[0]}", c[4]) for c in BATCHES]))
def test_variants_of_one_check_fail_in_one_run_each_with_its_message(tables, expected, case, patterns):
    assert_refused(tables.of(case), case, expected, patterns)


VALID = {
    **instances(
        {"port": 8001, "weight": 3}, {"port": 8002, "weight": 2, "max_conns": 10}, {"port": 8003, "backup": True}
    ),
    "nginx_lb_method": "least_conn",
    "firewall_controller_address": "192.0.2.9",
    "firewall_ssh_sources": ["192.0.2.0/24", "2001:db8::/32"],
}
cell("valid input")(cell_of(VALID))


@pytest.mark.parametrize("case", params("valid input"))
def test_valid_input_passes_preflight(tables, case):
    assert_passed(tables.of(case), case)


# This machine is Debian 12: as a Compose host it must be refused before any change.
cell("compose host on debian 12")(Cell(composes={"docker1": {}}))


@pytest.mark.parametrize("case", params("compose host on debian 12"))
def test_compose_host_on_debian_12_is_refused_naming_compose_v1(tables, expected, case):
    # The point release (12.11) is this machine's: the expected message says 12.x.
    assert_refused(
        tables.of(case),
        case,
        expected,
        {"docker1": "Debian 12 ships only Compose v1"},
        normalize=lambda msg: re.sub(r"Debian 12\.\d+\.", "Debian 12.x.", msg),
    )


def pair(vip: str, **lb2) -> dict:
    return {"lb1": {"lb_ha_vip": vip}, "lb2": {"lb_ha_vip": vip, **lb2}}


# (id, extra vars, load balancers with their host vars, pattern the failure
# must show). Each pair has its own address (and so its own router id).
HA_CASES = [
    (
        "vip not an address",
        {},
        pair("192.0.2.300"),
        r"lb_ha_vip must be an IPv4 address \(got '192\.0\.2\.300'\)",
    ),
    (
        "vip is a host's address",
        {},
        pair("192.0.2.105", ansible_host="192.0.2.105"),
        r"lb_ha_vip 192\.0\.2\.105 is the address of a host of the inventory",
    ),
    (
        "check fall zero",
        {"lb_ha_check_fall": 0},
        pair("192.0.2.106"),
        r"lb_ha_advert_int must be within 1-255 \(got 1\), and lb_ha_check_interval.*got 1, 1, 0, 2",
    ),
    (
        "acme on a pair",
        {"nginx_lb_tls_mode": "acme", "nginx_lb_server_names": ["api.example.com"]},
        pair("192.0.2.107"),
        r"nginx_lb_tls_mode=acme with lb_ha_vip is not supported",
    ),
]

for _case, _extra, _lbs, _pattern in HA_CASES:
    cell(f"pair: {_case}")(cell_of(_extra, lbs=_lbs))


@pytest.mark.parametrize(("case", "pattern"), params(*[(f"pair: {c[0]}", c[3]) for c in HA_CASES]))
def test_bad_pair_input_fails_in_preflight_naming_the_variable(tables, expected, case, pattern):
    assert_refused(tables.of(case), case, expected, pattern)


cell("valid pair")(cell_of({}, lbs=pair("192.0.2.108")))


@pytest.mark.parametrize("case", params("valid pair"))
def test_a_valid_pair_passes_preflight(tables, case):
    assert_passed(tables.of(case), case)


# api_source as an artifact (molecule/shared/lbtest.py builds tests/app2).
sys.path.insert(0, str(ROOT / "molecule" / "shared"))
from lbtest import DEMO2_MODULE, build_demo2  # noqa: E402

NEEDS_DEMO2 = {"source: every way", "artifact sources"}


@pytest.fixture(scope="module")
def demo2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo2")
    return {"wheel": build_demo2(tmp, "2.0.0", "wheel"), "git": build_demo2(tmp, "2.2.0", "git"), "root": tmp}


# Every way api_source can be wrong: each API host names its own source, and
# the one check fails on all five, each with its message.
@cell("source: every way")
def source_cell(context) -> Cell:
    d = context["demo2"]
    return Cell(
        apis={
            "api1": {"api_source": "/nonexistent/app-1.0-py3-none-any.whl", "api_module": DEMO2_MODULE},
            "api2": {"api_source": str(d["git"]), "api_source_ref": "v9.9.9", "api_module": DEMO2_MODULE},
            "api3": {"api_source": str(d["wheel"]), "api_module": "lbapi_demo2.service:app", "api_version": "2.0.0"},
            "api4": {
                "api_source": str(d["wheel"]),
                "api_module": "lbapi_demo2.main:application",
                "api_version": "2.0.0",
            },
            "api5": {"api_source": str(d["wheel"]), "api_module": DEMO2_MODULE, "api_version": "1.0.0"},
        }
    )


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


@pytest.mark.parametrize("case", params("source: every way"))
def test_bad_app_sources_fail_in_preflight_each_with_its_message(tables, expected, case, demo2):
    # The artifacts are built in this session's temporary directory.
    root = str(demo2["root"])
    assert_refused(tables.of(case), case, expected, SOURCE_PATTERNS, normalize=lambda msg: msg.replace(root, "<tmp>"))


# A wheel and a git ref, each on an API host of one load balancer's upstream.
@cell("artifact sources")
def artifact_cell(context) -> Cell:
    d = context["demo2"]
    return Cell(
        lbs={"lb1": {}},
        apis={
            "wheel": {"api_source": str(d["wheel"]), "api_module": DEMO2_MODULE, "api_version": "2.0.0"},
            "git": {
                "api_source": str(d["git"]),
                "api_source_ref": "v2.2.0",
                "api_module": DEMO2_MODULE,
                "api_version": "2.2.0",
            },
        },
    )


@pytest.mark.parametrize("case", params("artifact sources"))
def test_artifact_sources_pass_preflight(tables, case):
    assert_passed(tables.of(case), case)


def deployed_unit(directory: Path, name: str, version: str) -> dict:
    """Host vars pointing the api role at a unit file that records `version` as deployed."""
    unit = directory / f"{name}.service"
    unit.write_text(f'[Service]\nEnvironment=API_PORT=%i\nEnvironment="API_VERSION={version}"\n')
    return {"table_api_unit_path": str(unit)}


@cell("downgrade")
def downgrade_cell(context) -> Cell:
    own = {**deployed_unit(context["tmp"], "downgrade", "2.0.0"), "api_version": "1.10.0"}
    return Cell(apis={"api1": own, "api2": own})


@pytest.mark.parametrize("case", params("downgrade"))
def test_an_older_api_version_than_deployed_is_refused(tables, expected, case):
    assert_refused(
        tables.of(case), case, expected, r"has rag-photographie 2\.0\.0 deployed, and api_version=1\.10\.0 is older"
    )


# (id, the version deployed, the API host's vars)
VERSIONS = [
    ("downgrade allowed", "2.0.0", {"api_version": "1.0.0", "api_allow_downgrade": True}),
    ("numeric order", "1.9.0", {"api_version": "1.10.0"}),
    ("same version", "2.0.0", {"api_version": "2.0.0"}),
    ("not a dotted number", "git-3f2a9c1", {"api_version": "1.0.0"}),
]


def version_cell(case: str, deployed: str, own: dict):
    def build(context) -> Cell:
        return Cell(apis={"api1": {**deployed_unit(context["tmp"], slug(case), deployed), **own}})

    return build


for _case, _deployed, _own in VERSIONS:
    cell(f"version: {_case}")(version_cell(_case, _deployed, _own))


@pytest.mark.parametrize("case", params(*[f"version: {v[0]}" for v in VERSIONS]))
def test_a_newer_same_or_allowed_api_version_passes(tables, case):
    assert_passed(tables.of(case), case)


def test_the_real_preflight_stops_the_whole_run_at_the_first_failure(tmp_path):
    """What the table's copy turns off: the playbook itself, with one case
    (ports) on api1 only, fails there, and no host runs a task after it: not
    api2, whose input is valid, nor lb1 (the load balancer plays never start)."""
    hosts = tmp_path / "hosts.yml"
    bad = instances({"port": 70000}, {"port": 0}, {"weight": 2})
    inventory = {
        "all": {
            "vars": COMMON,
            "children": {
                "loadbalancers": {"hosts": {"lb1": None}},
                "api_servers": {"hosts": {"api1": bad, "api2": None}},
            },
        }
    }
    hosts.write_text(yaml.safe_dump(inventory, sort_keys=False))
    run = run_preflight(hosts, {})
    assert run.returncode != 0, (run.stdout + run.stderr)[-3000:]
    failures, stats = outcome(run)
    assert failures == [f for f in EXPECTED["ports"] if f["host"] == "api1"], failures
    data = json.loads(run.stdout[run.stdout.index("{") :])
    last_task = [task["task"]["name"] for play in data["plays"] for task in play["tasks"]][-1]
    assert last_task == failures[0]["task"], last_task
    assert stats["api2"]["failures"] == 0, stats["api2"]
    assert stats["lb1"]["ok"] <= 2, stats["lb1"]
