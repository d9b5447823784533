"""What an operator sees, in the separate tiers (issue 14).

- playbooks/status.yml: healthy and read-only (--check, changed=0); a drained
  instance shown as drained with exit 0; a stopped unit named, exit 2, in
  the table and as JSON (status_format=json);
- the JSON access log: the client's X-Request-ID is the API's and the log's,
  upstream_addr names an instance, a request retried after a stopped unit
  logs both attempts, logrotate while a keep-alive load runs loses nothing,
  and every line the tests wrote parses;
- Prometheus: the exporter's nginx_up and request counter, the API's
  /metrics counts, and both ports open to `monitoring_sources` only.

Runs after test_cluster.py (file order), on the same hosts.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

from clustertest import CACERT, LB_URL, docker, link_local, resolve, scan
from lbtest import (
    API_NAME,
    DRAIN,
    PORTS,
    SITE,
    STATUS,
    Load,
    playbook,
    playbook_command,
    playbook_env,
    recap,
    requests_from,
    said,
    tail,
)

ACCESS_LOG = f"/var/log/nginx/{SITE}-access.log"
EXPORTER = "http://127.0.0.1:9113/metrics"


def address_of(hosts, name: str) -> str:
    """The address lb1 resolves `name` to (the one its upstream and the firewalls see)."""
    return resolve(hosts["lb1"], name)


def log_entries(lb, pattern: str, seconds: float = 5) -> list[dict]:
    """Access log lines containing `pattern`, parsed; waits (bounded) for the
    buffered log's flush (nginx_lb_access_log_flush, 1 s)."""
    deadline = time.monotonic() + seconds
    while True:
        out = lb.run(f"grep -F -- {shlex.quote(pattern)} {ACCESS_LOG}").stdout
        if out.strip() or time.monotonic() > deadline:
            return [json.loads(line) for line in out.splitlines() if line.strip()]
        time.sleep(0.25)


def status_run(tmp_path: Path, *args: str):
    report = tmp_path / "status.json"
    run = playbook(*args, "-e", f"status_file={report}", path=STATUS, timeout=300)
    return run, (json.loads(report.read_text()) if report.exists() else None)


def status_json_printed(tmp_path: Path) -> tuple[int, dict, dict]:
    """(exit code, the report printed with status_format=json, the report
    file) of one status run, read through Ansible's json callback: the
    message of the task that shows the state is the JSON document."""
    report = tmp_path / "printed.json"
    command = [*playbook_command(path=STATUS), "-e", f"status_file={report}", "-e", "status_format=json"]
    run = subprocess.run(
        command,
        env=playbook_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    data = json.loads(run.stdout[run.stdout.index("{") :])
    shown = [
        result["msg"]
        for play in data["plays"]
        for task in play["tasks"]
        if task["task"]["name"] == "Show the state of every load balancer and API instance"
        for result in task["hosts"].values()
    ]
    assert len(shown) == 1, run.stdout[-3000:]
    return run.returncode, json.loads(shown[0]), json.loads(report.read_text())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


def test_status_reports_a_healthy_stack_read_only(hosts, tmp_path):
    run, report = status_run(tmp_path, "--check")
    assert run.returncode == 0, tail(run)
    assert all(counts["changed"] == 0 for counts in recap(run).values()), recap(run)
    assert "HEALTHY: nothing to report." in run.stdout
    assert report["healthy"]
    assert report["problems"] == []
    assert len(report["instances"]) == 6
    assert {row["active"] for row in report["instances"]} == {"active"}
    assert {row["version"] for row in report["instances"]} == {"1.0.0"}
    assert sorted(row["instance"] for row in report["upstream"]) == sorted(
        f"{api}:{port}" for api in ("api1", "api2") for port in PORTS
    )
    assert all(row["reachable"] for row in report["upstream"]), report["upstream"]
    assert report["loadbalancers"][0]["config_test"] == "ok"
    assert report["loadbalancers"][0]["cert_days_left"] >= 300


def test_status_shows_a_drained_instance_as_drained(hosts, tmp_path):
    key = f"{address_of(hosts, 'api1')}:{PORTS[0]}"
    drain = playbook(path=DRAIN, extra_vars={"drain": [key]})
    assert drain.returncode == 0, tail(drain)
    try:
        run, report = status_run(tmp_path)
        assert run.returncode == 0, tail(run)
        row = next(row for row in report["upstream"] if row["server"] == key)
        assert row["state"] == "drained", row
        assert row["reachable"], row
        assert f"{key}  api1:{PORTS[0]}" in run.stdout
        assert "drained" in run.stdout
    finally:
        undrain = playbook(path=DRAIN, extra_vars={"undrain": [key]})
        assert undrain.returncode == 0, tail(undrain)


def test_status_names_an_expiring_certificate_a_unit_not_enabled_and_a_host_that_does_not_answer(hosts, tmp_path):
    """Three problems at once, each from the real system: lb1's certificate is
    closer to its expiry than status_cert_min_days (4000 days), a unit of
    api1 is disabled, and api2 refuses SSH (sshd stopped through Docker; a
    fresh control path, so no open master connection answers for it)."""
    unit = f"{API_NAME}@{PORTS[2]}.service"
    hosts["api1"].run_expect([0], f"systemctl disable {unit}")
    # The socket first, where there is one (it would start sshd again).
    subprocess.run(["docker", "exec", "api2", "systemctl", "stop", "ssh.socket"], check=False, timeout=60)
    docker("exec", "api2", "systemctl", "stop", "ssh.service")
    report_file = tmp_path / "status.json"
    try:
        run = subprocess.run(
            [*playbook_command(path=STATUS), "-e", f"status_file={report_file}", "-e", "status_cert_min_days=4000"],
            env=playbook_env(ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / "cp")),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        docker("exec", "api2", "systemctl", "start", "ssh")
        hosts["api1"].run_expect([0], f"systemctl enable {unit}")
    assert run.returncode != 0, tail(run)
    report = json.loads(report_file.read_text())
    days = report["loadbalancers"][0]["cert_days_left"]
    not_after = report["loadbalancers"][0]["cert_not_after"]
    assert sorted(report["problems"]) == sorted(
        [
            f"lb1: the certificate expires in {days} days ({not_after})",
            f"api1: {unit} is not enabled at boot (disabled)",
            "api2: no status (the host did not answer or its status task failed)",
        ]
    ), report["problems"]


def test_request_id_reaches_the_api_the_client_and_the_log(hosts):
    out = hosts["outsider"].check_output(f"curl -s -D - --cacert {CACERT} {LB_URL}")
    head, _sep, body = out.replace("\r", "").partition("\n\n")
    ids = re.findall(r"(?im)^x-request-id: (\S+)$", head)
    assert len(ids) == 1, head
    request_id = ids[0]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert json.loads(body)["request_id"] == request_id
    entries = log_entries(hosts["lb1"], request_id)
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["status"] == 200
    instance = json.loads(body)["instance"]
    api, port = instance.split(":")
    assert entry["upstream_addr"] == f"{address_of(hosts, api)}:{port}"
    assert entry["upstream_status"] == "200"
    assert entry["method"] == "GET"
    assert entry["remote_addr"] == address_of(hosts, "outsider")


def test_a_stopped_unit_shows_in_the_log_as_a_retry_and_fails_the_status(hosts, tmp_path):
    api2 = hosts["api2"]
    unit = f"{API_NAME}@{PORTS[1]}.service"
    stopped = f"{address_of(hosts, 'api2')}:{PORTS[1]}"
    marker = f"retry-{time.time_ns()}"
    api2.run_expect([0], f"systemctl stop {unit}")
    try:
        # Round robin reaches the stopped server within 6 requests; nginx
        # retries it on the next one. A keep-alive client, like a pool.
        result = requests_from(hosts["outsider"], f"{LB_URL}?{marker}", 12, cacert=CACERT, keepalive=True)
        assert result["failed"] == 0, result
        retried = [e for e in log_entries(hosts["lb1"], marker) if ", " in e["upstream_addr"]]
        assert retried, "no retried request in the log"
        first, second = retried[0]["upstream_addr"].split(", ")
        assert first == stopped, retried[0]
        assert second != stopped, retried[0]
        assert retried[0]["upstream_status"] == "502, 200", retried[0]
        assert retried[0]["status"] == 200
        assert len(retried[0]["upstream_response_time"].split(", ")) == 2

        run, report = status_run(tmp_path)
        # 2: a task failed (the last one, which says what is unhealthy).
        assert run.returncode == 2, tail(run)
        assert f"api2: {unit} is inactive (dead)" in report["problems"]
        assert f"api2: {unit} is inactive" in said(run)
        assert f"{stopped} (api2:{PORTS[1]}) does not answer" in said(run)
        assert len(report["problems"]) == 2, report["problems"]
        # With status_format=json the same report is printed as JSON, and the
        # run exits 2 all the same.
        code, printed, written = status_json_printed(tmp_path)
        assert code == 2
        assert printed == written
        assert printed["problems"] == report["problems"]
    finally:
        api2.run_expect([0], f"systemctl start {unit}")
        # Started is not listening yet: wait (bounded) until it answers, so
        # the next test finds every instance serving.
        api2.run_expect(
            [0],
            f"for i in $(seq 60); do curl -sf http://{stopped}/health >/dev/null && exit 0; sleep 0.5; done; exit 1",
        )


def test_exporter_counts_every_request(hosts):
    lb = hosts["lb1"]
    before = lb.check_output(f"curl -s {EXPORTER}")
    assert metric(before, "nginx_up") == 1, before
    again = lb.check_output(f"curl -s {EXPORTER}")
    # Each scrape is itself a request to stub_status.
    per_scrape = metric(again, "nginx_http_requests_total") - metric(before, "nginx_http_requests_total")
    result = requests_from(hosts["outsider"], LB_URL, 25, concurrency=5, cacert=CACERT, keepalive=True)
    assert result["failed"] == 0, result
    after = lb.check_output(f"curl -s {EXPORTER}")
    grown = metric(after, "nginx_http_requests_total") - metric(again, "nginx_http_requests_total")
    assert grown == 25 + per_scrape, (grown, per_scrape)


def test_api_metrics_count_requests_per_route_and_status(hosts):
    lb = hosts["lb1"]
    targets = [f"http://{address_of(hosts, api)}:{port}/metrics" for api in ("api1", "api2") for port in PORTS]

    def served() -> float:
        return sum(
            metric(lb.check_output(f"curl -sf {url}"), "api_requests_total", route="/", method="GET", status="200")
            for url in targets
        )

    before = served()
    result = requests_from(hosts["outsider"], LB_URL, 30, concurrency=3, cacert=CACERT)
    assert result["failed"] == 0, result
    assert served() - before == 30
    sample = lb.check_output(f"curl -sf {targets[0]}")
    assert 'api_request_duration_seconds_bucket{route="/",method="GET",status="200",le="+Inf"}' in sample
    # The load balancer does not proxy the metrics to the public.
    assert (
        hosts["outsider"].run(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {CACERT} {LB_URL}metrics").stdout
        == "404"
    )


def test_monitoring_ports_open_to_monitoring_sources_only(hosts):
    """The outsider's IPv4 address and its IPv6 link-local one in
    monitoring_sources, in one apply: the exporter on lb1 and the API's
    /metrics on api1 open to it over IPv4, the API port over IPv6 (closed:
    the API listens on IPv4 only), and filtered again once it is removed."""
    outsider = hosts["outsider"]
    api1_six = f"{link_local(hosts['api1'])}%eth0"
    six = link_local(outsider)
    port = PORTS[0]
    assert scan(outsider, "lb1", "9113")[9113] == "filtered"
    assert scan(outsider, "api1", str(port))[port] == "filtered"
    assert scan(outsider, api1_six, str(port)) == {port: "filtered"}
    try:
        monitored = playbook(
            "--tags", "firewall", extra_vars={"monitoring_sources": [address_of(hosts, "outsider"), f"{six}/128"]}
        )
        assert monitored.returncode == 0, tail(monitored)
        assert scan(outsider, "lb1", "9113")[9113] == "open"
        assert metric(outsider.check_output("curl -sf http://lb1:9113/metrics"), "nginx_up") == 1
        assert "api_requests_total" in outsider.check_output(f"curl -sf http://api1:{port}/metrics")
        assert f"ip6 saddr {six} tcp dport" in hosts["api1"].check_output("nft list table inet firewall")
        assert scan(outsider, api1_six, str(port)) == {port: "closed"}
    finally:
        closed = playbook("--tags", "firewall")
        assert closed.returncode == 0, tail(closed)
    assert scan(outsider, "lb1", "9113")[9113] == "filtered"
    assert scan(outsider, api1_six, str(port)) == {port: "filtered"}


def test_logrotate_while_keepalive_clients_are_served(hosts):
    lb = hosts["lb1"]
    marker = f"rotate-{time.time_ns()}"
    load = Load(hosts["outsider"], f"{LB_URL}?{marker}", concurrency=5, keepalive=True, cacert=CACERT, min_requests=20)
    with load:
        time.sleep(1)
        lb.run_expect([0], "logrotate -f /etc/logrotate.d/nginx")
        time.sleep(2)
    assert load.result["failed"] == 0, load.result
    assert lb.file(f"{ACCESS_LOG}.1").exists
    # nginx reopened its log: lines written after the rotation are in the new file.
    assert log_entries(lb, marker), lb.run(f"ls -l {ACCESS_LOG}*").stdout
    # The new file as the role's logrotate config creates it: 0640 www-data adm.
    log = lb.file(ACCESS_LOG)
    assert (log.user, log.group, log.mode) == ("www-data", "adm", 0o640)


def test_every_access_log_line_is_json(hosts):
    lb = hosts["lb1"]
    # A last request, once in the file, means the buffer was flushed.
    marker = f"flushed-{uuid.uuid4().hex}"
    hosts["outsider"].run_expect([0], f"curl -sf -o /dev/null --cacert {CACERT} '{LB_URL}?{marker}'")
    assert log_entries(lb, marker), "the buffered log was not flushed within 5 s"
    lines = lb.check_output(f"cat {ACCESS_LOG} {ACCESS_LOG}.1 2>/dev/null || true").splitlines()
    assert len(lines) > 100
    for line in lines:
        entry = json.loads(line)
        assert re.fullmatch(r"[0-9a-f]{32}", entry["request_id"]), line
        assert isinstance(entry["status"], int), line
        for field in ("upstream_addr", "upstream_status", "upstream_response_time", "upstream_connect_time"):
            assert isinstance(entry[field], str), line
