"""Each balancing method re-applied on the converged host and measured with real requests.

Requests are sent from the load balancer host to https://localhost/ (the
site as shipped, its self-signed certificate verified) with
scripts/lb_requests.py; the methods are applied with `--tags loadbalancers`
(the preflight plays still run and republish the instances' options).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from lbtest import API_NAME, CERT, PORTS, SITE, SITE_FILE, playbook, recap, requests_each, requests_from, said, tail

URL = "https://localhost/"
# curl from the host, verifying the site's certificate.
CURL = f"curl --cacert {CERT}"
THREE = [{"port": 8001}, {"port": 8002}, {"port": 8003}]


# What the last apply() put in place: its variables and the site it wrote.
_APPLIED: dict = {}


def apply(host, **extra_vars) -> None:
    """Apply the load balancer tier with `extra_vars` (three plain instances
    and round robin unless given). Skipped when the previous apply had the
    same variables and the site is still the file it wrote (a test that only
    reads, or a rejected change rolled back, leaves it so)."""
    extra_vars.setdefault("api_instances", THREE)
    extra_vars.setdefault("nginx_lb_method", "round_robin")
    if _APPLIED.get("vars") == extra_vars and _APPLIED.get("site") == host.file(SITE_FILE).sha256sum:
        print("apply: already in place,", json.dumps(extra_vars))
        return
    _APPLIED.clear()
    run = playbook("--tags", "loadbalancers", extra_vars=extra_vars)
    assert run.returncode == 0, tail(run)
    _APPLIED.update(vars=extra_vars, site=host.file(SITE_FILE).sha256sum)


def instance_names(host) -> list[str]:
    hostname = host.check_output("hostname")
    return [f"{hostname}:{port}" for port in PORTS]


@pytest.fixture
def stopped(host):
    """Stop API units for the test; start them again afterwards, whatever happens."""
    units: list[str] = []

    def stop(*ports: int) -> None:
        for port in ports:
            units.append(f"{API_NAME}@{port}")
            host.run_expect([0], f"systemctl stop {API_NAME}@{port}")

    yield stop
    for unit in units:
        host.run(f"systemctl start {unit}")
    for unit in units:
        port = unit.split("@")[1]
        host.run(f"for i in $(seq 30); do curl -sf http://127.0.0.1:{port}/health && break; sleep 0.5; done")


@pytest.fixture(scope="module", autouse=True)
def default_method_at_the_end(host):
    """Each test applies the method it measures; at the end, failures
    included, the inventory's upstream is applied again and serves."""
    yield
    apply(host)
    result = requests_from(host, URL, 30, cacert=CERT)
    assert result["failed"] == 0, result
    assert result["instances"] == dict.fromkeys(instance_names(host), 10), result


# One client, one request at a time, and the upstream's state shared by the
# workers (its zone): round robin is exact, whichever server the run starts at.
def test_round_robin_splits_300_requests_equally(host):
    apply(host, nginx_lb_method="round_robin")
    result = requests_from(host, URL, 300, cacert=CERT)
    assert result["failed"] == 0, result
    assert result["instances"] == dict.fromkeys(instance_names(host), 100), result


def test_weights_3_2_1_over_600_requests(host):
    # Smooth weighted round robin repeats every 6 requests (3 + 2 + 1): 100 full cycles.
    apply(host, api_instances=[{"port": 8001, "weight": 3}, {"port": 8002, "weight": 2}, {"port": 8003, "weight": 1}])
    result = requests_from(host, URL, 600, cacert=CERT)
    assert result["failed"] == 0, result
    assert result["instances"] == dict(zip(instance_names(host), (300, 200, 100), strict=True)), result


def test_ip_hash_sends_one_client_to_one_instance(host):
    apply(host, nginx_lb_method="ip_hash")
    result = requests_from(host, URL, 50, cacert=CERT)
    assert result["failed"] == 0, result
    assert len(result["instances"]) == 1, result
    assert sum(result["instances"].values()) == 50


def test_hash_on_request_uri_is_stable_and_spreads(host):
    apply(host, nginx_lb_method="hash", nginx_lb_hash_key="$request_uri")
    owners = {}
    # 24 keys, 5 requests each, in one command on the host.
    results = requests_each(host, [f"{URL}?item={key}" for key in range(24)], 5, cacert=CERT)
    for key, result in enumerate(results):
        assert result["failed"] == 0, result
        # Sticky: the 5 requests of a key all reach one instance.
        assert len(result["instances"]) == 1, (key, result)
        owners[key] = next(iter(result["instances"]))
    # The hash is deterministic: these 24 keys reach every instance.
    assert set(owners.values()) == set(instance_names(host)), owners


def test_least_conn_avoids_the_instance_held_by_a_slow_request(host):
    apply(host, nginx_lb_method="least_conn")
    marker = f"/tmp/lbtest-slow-{uuid.uuid4().hex[:8]}.json"
    host.run_expect([0], f"setsid nohup {CURL} -s -o {marker} '{URL}slow?seconds=6' </dev/null >/dev/null 2>&1 &")
    # In flight: the API holds the request (its connection from nginx is open).
    host.run_expect(
        [0],
        "for i in $(seq 50); do [ $(ss -Htn state established '( dport = :443 )' | wc -l) -gt 0 ] && exit 0;"
        " sleep 0.1; done; exit 1",
    )
    result = requests_from(host, URL, 20, max_seconds=4, cacert=CERT)
    host.run_expect([0], f"for i in $(seq 100); do test -s {marker} && exit 0; sleep 0.1; done; exit 1")
    slow = json.loads(host.file(marker).content_string)
    host.run(f"rm -f {marker}")
    assert slow["slept"] == 6
    assert result["failed"] == 0, result
    assert result["requests"] == 20, result
    assert slow["instance"] not in result["instances"], (slow, result)


# One apply serves the two options: 8002 down, 8003 a backup.
DOWN_AND_BACKUP = [{"port": 8001}, {"port": 8002, "down": True}, {"port": 8003, "backup": True}]


def test_down_server_gets_nothing_and_the_backup_idles_while_a_primary_serves(host):
    apply(host, api_instances=DOWN_AND_BACKUP)
    names = instance_names(host)
    result = requests_from(host, URL, 60, cacert=CERT)
    assert result["failed"] == 0, result
    assert result["instances"] == {names[0]: 60}, result


def test_backup_takes_over_when_the_primaries_stop(host, stopped):
    apply(host, api_instances=DOWN_AND_BACKUP)
    names = instance_names(host)
    # 8002 is down: with 8001 stopped no primary is left, and the backup serves.
    stopped(8001)
    result = requests_from(host, URL, 60, cacert=CERT)
    assert result["failed"] == 0, result
    assert result["instances"] == {names[2]: 60}, result


def test_failover_with_one_instance_stopped(host, stopped):
    apply(host, nginx_lb_method="round_robin")
    stopped(8002)
    result = requests_from(host, URL, 100, cacert=CERT)
    assert result["statuses"] == {"200": 100}, result
    assert instance_names(host)[1] not in result["instances"], result


def test_rejected_config_is_rolled_back_and_nginx_keeps_serving(host):
    apply(host, nginx_lb_method="round_robin")
    site = SITE_FILE
    before_config = host.file(site).sha256sum
    before = requests_from(host, URL, 20, cacert=CERT)
    assert before["failed"] == 0, before
    run = playbook("--tags", "loadbalancers", extra_vars={"nginx_lb_extra_config": "no_such_directive on;"})
    assert run.returncode != 0, tail(run)
    assert "nginx -t said: " in said(run), tail(run)
    assert 'unknown directive "no_such_directive"' in said(run), tail(run)
    assert "the previous one is back in place" in said(run), tail(run)
    assert host.file(site).sha256sum == before_config
    assert host.run("nginx -t").rc == 0
    after = requests_from(host, URL, 20, cacert=CERT)
    assert after["failed"] == 0, after
    assert len(after["instances"]) == 3, after
    assert not host.file(f"{site}.bak").exists
    assert host.run(f"ls /etc/nginx/sites-available/ | grep -v '^{SITE}$' | grep '{SITE}'").rc == 1


def test_bad_input_fails_before_any_host_changes(host):
    site = host.file(SITE_FILE).sha256sum
    unit = host.file(f"/etc/systemd/system/{API_NAME}@.service").sha256sum
    run = playbook(extra_vars={"api_instances": [{"port": 8001, "weight": 0}], "api_version": "9.9.9"})
    assert run.returncode != 0, tail(run)
    assert f"api_instances of {host.backend.host}, port 8001: weight must be an integer >= 1, got 0" in said(run), tail(
        run
    )
    assert all(c["changed"] == 0 for c in recap(run).values()), tail(run)
    assert host.file(SITE_FILE).sha256sum == site
    assert host.file(f"/etc/systemd/system/{API_NAME}@.service").sha256sum == unit
    assert host.service(f"{API_NAME}@8003").is_running


# One apply serves both limits: the rate test sends on one connection, and
# the connection test's requests are few and slow.
LIMITS = {"nginx_lb_rate_limit": "5r/s", "nginx_lb_rate_limit_burst": 5, "nginx_lb_conn_limit": 1}


def test_rate_limit_answers_429(host):
    apply(host, **LIMITS)
    # 40 requests as fast as one kept-alive connection sends them: the burst
    # (5) and the first request pass, then about 5 a second.
    # They must all be sent within 1 s (one connection, no pause: 0.04 s
    # measured), so the bound is fixed: 6 + 5 x 1 = 11 answered 200.
    result = requests_from(host, URL, 40, keepalive=True, cacert=CERT)
    print("rate limit 5r/s burst 5:", result["statuses"], f"in {result['seconds']} s")
    assert result["seconds"] <= 1.0, result
    assert set(result["statuses"]) == {"200", "429"}, result
    assert 6 <= result["statuses"]["200"] <= 11, result
    # The bucket refills: within 3 s a request passes again.
    host.run_expect(
        [0],
        f"for i in $(seq 30); do [ $({CURL} -s -o /dev/null -w '%{{http_code}}' "
        + URL
        + ") = 200 ] && exit 0; sleep 0.1; done; exit 1",
    )


def test_connection_limit_answers_429(host):
    apply(host, **LIMITS)
    # One connection per client address: a second one, while a slow request
    # holds the first, is answered 429. First the rate limit's bucket empties
    # (5 a second): the second request's 429 can then only be the
    # connection limit's.
    time.sleep(2)
    marker = f"/tmp/lbtest-slow-{uuid.uuid4().hex[:8]}"
    host.run_expect([0], f"setsid nohup {CURL} -s -o {marker} '{URL}slow?seconds=3' </dev/null >/dev/null 2>&1 &")
    try:
        host.run_expect(
            [0],
            "for i in $(seq 50); do [ $(ss -Htn state established '( dport = :443 )' | wc -l) -gt 0 ] && exit 0;"
            " sleep 0.1; done; exit 1",
        )
        assert host.check_output(f"{CURL} -s -o /dev/null -w '%{{http_code}}' {URL}") == "429"
        host.run_expect([0], f"for i in $(seq 60); do [ -s {marker} ] && exit 0; sleep 0.1; done; exit 1")
        assert json.loads(host.file(marker).content_string)["slept"] == 3
    finally:
        host.run(f"rm -f {marker}")
    assert host.check_output(f"{CURL} -s -o /dev/null -w '%{{http_code}}' {URL}") == "200"


def test_limits_switched_off_leave_no_zone_and_answer_a_burst(host):
    """The inventory's limits (none) after the limits applied: the site has
    no limit zone or directive left, and a burst that the rate limit would
    cut (40 requests on one kept-alive connection within 1 s) is answered
    200 throughout. The module's final apply then finds it in place."""
    apply(host)
    site = host.file(SITE_FILE).content_string
    assert "limit_req" not in site, site
    assert "limit_conn" not in site, site
    result = requests_from(host, URL, 40, keepalive=True, cacert=CERT)
    assert result["statuses"] == {"200": 40}, result
