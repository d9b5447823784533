"""End-to-end checks of the seed topology: one host, nginx in front of 3 units."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
from lbtest import CERT, PORTS, SITE, headers, http, playbook, tail, tls11_client_works, tls11_handshake


def curl(host, path: str, scheme: str = "https") -> tuple[int, str]:
    """GET <scheme>://localhost<path> on the host, HTTPS verified against the
    site's self-signed certificate; return (status, body)."""
    return http(host, f"{scheme}://localhost{path}", cacert=CERT)


@pytest.fixture(scope="module", autouse=True)
def capped_slow_request(host):
    """A request for 45 s of /slow through nginx, started with the module and
    left to run in the background: the app caps it at 30 s."""
    marker = f"/tmp/lbtest-cap-{uuid.uuid4().hex[:8]}"
    host.run_expect(
        [0],
        f"setsid nohup curl -s -m 50 --cacert {CERT} -o {marker}.body -w '%{{time_total}}' "
        f"'https://localhost/slow?seconds=45' >{marker}.time 2>/dev/null </dev/null &",
    )
    yield marker
    host.run(f"rm -f {marker}.body {marker}.time")


def test_nginx_active_enabled_and_config_valid(host):
    nginx = host.service("nginx")
    assert nginx.is_running
    assert nginx.is_enabled
    assert host.run("nginx -t").rc == 0


def test_site_enabled_and_default_site_gone(host):
    available = host.file(f"/etc/nginx/sites-available/{SITE}")
    enabled = host.file(f"/etc/nginx/sites-enabled/{SITE}")
    assert available.is_file
    assert enabled.is_symlink
    assert enabled.linked_to == available.path
    assert not host.file("/etc/nginx/sites-enabled/default").exists


@pytest.mark.parametrize("port", PORTS)
def test_api_unit_active_enabled_and_loopback_only(host, port):
    unit = host.service(f"{SITE}@{port}")
    assert unit.is_running
    assert unit.is_enabled
    listeners = host.check_output(f"ss -Htln 'sport = :{port}'").splitlines()
    local = sorted(line.split()[3] for line in listeners)
    assert local == [f"127.0.0.1:{port}"], local


def test_requests_through_nginx_reach_each_instance_equally(host):
    counts: Counter[str] = Counter()
    for _request in range(30):
        status, body = curl(host, "/")
        assert status == 200, body
        counts[json.loads(body)["instance"]] += 1
    hostname = host.check_output("hostname")
    assert counts == {f"{hostname}:{port}": 10 for port in PORTS}


def test_health_through_the_lb_returns_the_instance_json(host):
    status, body = curl(host, "/health")
    assert status == 200
    data = json.loads(body)
    hostname = host.check_output("hostname")
    assert data["status"] == "ok"
    assert data["instance"] in {f"{hostname}:{port}" for port in PORTS}
    assert data["version"] == "1.0.0"


def test_slow_endpoint_is_capped(host, capped_slow_request):
    status, body = curl(host, "/slow?seconds=0.2")
    assert status == 200
    assert json.loads(body)["slept"] == 0.2
    # The 45 s request the module started: answered after 30 s, through nginx.
    done = f"{capped_slow_request}.time"
    host.run_expect([0], f"for i in $(seq 500); do [ -s {done} ] && exit 0; sleep 0.1; done; exit 1")
    seconds = float(host.file(done).content_string)
    print(f"/slow?seconds=45 answered in {seconds} s")
    assert json.loads(host.file(f"{capped_slow_request}.body").content_string)["slept"] == 30
    assert 30 <= seconds < 32, seconds


def test_stub_status_answers_from_localhost(host):
    status, body = curl(host, "/nginx_status", scheme="http")
    assert status == 200
    assert body.startswith("Active connections:")


def test_stub_status_is_denied_to_other_addresses(host):
    address = host.check_output("hostname -I").split()[0]
    status = host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' http://{address}/nginx_status")
    assert status == "403"


def test_access_log_receives_the_requests(host):
    log = f"/var/log/nginx/{SITE}-access.log"
    marker = "/health?probe=access-log-test"
    curl(host, marker)
    # Buffered: the line is written within nginx_lb_access_log_flush (1 s).
    deadline = time.monotonic() + 5
    while marker not in host.file(log).content_string and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marker in host.file(log).content_string
    line = next(line for line in host.file(log).content_string.splitlines() if marker in line)
    entry = json.loads(line)
    assert entry["uri"] == marker
    assert entry["upstream_addr"] in {f"127.0.0.1:{port}" for port in PORTS}
    assert entry["upstream_status"] == "200"


def test_exporter_flags_match_the_installed_version(host):
    """Debian 12 ships exporter 0.11 (Go flags, one dash), Debian 13 1.x (two dashes)."""
    version = host.check_output("dpkg-query -W -f '${Version}' prometheus-nginx-exporter")
    args = host.file("/etc/default/prometheus-nginx-exporter").content_string
    dash = "-" if version.startswith("0.") else "--"
    assert f'ARGS="{dash}nginx.scrape-uri=http://127.0.0.1:80/nginx_status ' in args, (version, args)
    assert host.service("prometheus-nginx-exporter").is_running
    assert host.service("prometheus-nginx-exporter").is_enabled


def test_exporter_reports_nginx_up_and_counts_requests(host):
    def total() -> tuple[float, float]:
        text = host.check_output("curl -sf http://127.0.0.1:9113/metrics")
        values = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("nginx_"))
        return float(values["nginx_up"]), float(values["nginx_http_requests_total"])

    up, first = total()
    assert up == 1
    _up, second = total()
    per_scrape = second - first
    for _request in range(10):
        assert curl(host, "/")[0] == 200
    _up, third = total()
    assert third - second == 10 + per_scrape


def test_exporter_reports_nginx_down_then_up_across_an_nginx_restart(host):
    """nginx stopped: the exporter still answers, with nginx_up 0; nginx
    started again: nginx_up 1 within 10 s, with no restart of the exporter."""

    def nginx_up() -> str:
        text = host.check_output("curl -sf http://127.0.0.1:9113/metrics")
        return next(line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("nginx_up "))

    exporter = host.check_output("systemctl show -p MainPID --value prometheus-nginx-exporter")
    host.run_expect([0], "systemctl stop nginx")
    try:
        assert nginx_up() == "0"
    finally:
        host.run_expect([0], "systemctl start nginx")
    deadline = time.monotonic() + 10
    while nginx_up() != "1" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert nginx_up() == "1"
    assert host.check_output("systemctl show -p MainPID --value prometheus-nginx-exporter") == exporter


def test_exporter_switched_off_is_removed_and_switched_on_comes_back(host):
    """nginx_exporter_enabled: false purges the exporter (its /etc/default
    file goes with the package) and removes the role's drop-in: nothing
    answers on its port. The next run installs it again, nginx_up 1."""
    dropin = "/etc/systemd/system/prometheus-nginx-exporter.service.d"
    try:
        off = playbook("--tags", "nginx_exporter", extra_vars={"nginx_exporter_enabled": False})
        assert off.returncode == 0, tail(off)
        assert not host.package("prometheus-nginx-exporter").is_installed
        assert not host.file("/etc/default/prometheus-nginx-exporter").exists
        assert not host.file(dropin).exists
        # curl: 7, connection refused.
        assert host.run("curl -s -m 5 http://127.0.0.1:9113/metrics").rc == 7
    finally:
        on = playbook("--tags", "nginx_exporter")
    assert on.returncode == 0, tail(on)
    assert host.service("prometheus-nginx-exporter").is_running
    assert host.file(f"{dropin}/lbapi.conf").exists
    metrics = host.check_output("curl -sf http://127.0.0.1:9113/metrics")
    assert "nginx_up 1" in metrics.splitlines()


def test_api_metrics_count_its_own_requests(host):
    def served(port: int) -> float:
        text = host.check_output(f"curl -sf http://127.0.0.1:{port}/metrics")
        prefix = 'api_requests_total{route="/health",method="GET",status="200"} '
        return float(next((line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)), 0))

    before = served(PORTS[0])
    for _request in range(4):
        assert http(host, f"http://127.0.0.1:{PORTS[0]}/health")[0] == 200
    assert served(PORTS[0]) - before == 4


def test_http_redirects_to_https(host):
    got = headers(host, "http://localhost/some/path?x=1", CERT)
    assert " 301" in got["status"], got
    assert got["location"] == "https://localhost/some/path?x=1"


@pytest.mark.parametrize("path", ["/", "/health", "/no-such-path"])
def test_https_responses_carry_hsts_and_hardening_headers(host, path):
    got = headers(host, f"https://localhost{path}", CERT)
    assert got["status"].startswith("HTTP/2 "), got
    assert got["strict-transport-security"] == "max-age=63072000"
    assert got["x-content-type-options"] == "nosniff"
    assert got["x-frame-options"] == "DENY"
    assert got["server"] == "nginx", "server_tokens off hides the version"


def test_self_signed_certificate_and_key(host):
    key = host.file(f"/etc/nginx/tls/{SITE}/privkey.pem")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    # The SANs cover the names local checks use: verification by IP succeeds.
    assert host.run(f"curl -sf --cacert {CERT} -o /dev/null https://127.0.0.1/health").rc == 0
    # Only TLS 1.2 and 1.3: a TLS 1.1 handshake is refused by nginx (the same
    # client completes one with a server that offers TLS 1.1).
    tls11_client_works(host)
    ok, said = tls11_handshake(host, "127.0.0.1:443", "localhost")
    assert not ok, said
    assert host.run(f"curl -s --cacert {CERT} --tlsv1.2 --tls-max 1.2 https://localhost/health").rc == 0
