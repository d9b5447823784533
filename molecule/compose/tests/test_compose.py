"""The Compose variant: nginx and one API service per instance on docker1.

Traffic comes from client (10.213.60.13) to docker1's published HTTPS port;
the API services are on the project network only. Docker commands on docker1
run through testinfra (as root in the container).
"""

from __future__ import annotations

import datetime
import json
import shlex
import time

import pytest
from lbtest import Load, get_host, playbook, requests_from, said, tail

DOCKER_HOST = "10.213.60.11"
URL = f"https://{DOCKER_HOST}/"
CACERT = "/tmp/compose-docker1-ca.pem"
PROJECT = "lb-stack"
SITE_FILE = "/opt/lb-stack/nginx/conf.d/rag-photographie.conf"
# The scenario's api_instances (molecule.yml): the seed's weights 3/2/1.
WEIGHTS = {8001: 3, 8002: 2, 8003: 1}
SUBNET_PREFIX = "172.29.83."


@pytest.fixture(scope="module")
def hosts():
    found = {name: get_host(name) for name in ("compose-docker1", "compose-client")}
    cert = found["compose-docker1"].check_output("cat /opt/lb-stack/tls/fullchain.pem")
    found["compose-client"].run_expect([0], f"cat > {CACERT} <<'EOF'\n{cert}\nEOF")
    return found


def compose(docker1, *args: str) -> str:
    return docker1.check_output(shlex.join(["docker", "compose", "--project-name", PROJECT, *args]))


def containers(docker1) -> dict[str, dict]:
    """Per service: the container's id, image, state, health, restart count and address."""
    ids = compose(docker1, "ps", "--all", "--quiet").split()
    found = {}
    for item in json.loads(docker1.check_output("docker inspect " + " ".join(ids))):
        networks = item["NetworkSettings"]["Networks"]
        found[item["Config"]["Labels"]["com.docker.compose.service"]] = {
            "id": item["Id"],
            "image": item["Config"]["Image"],
            "state": item["State"]["Status"],
            "health": (item["State"].get("Health") or {}).get("Status", ""),
            "restarts": item["RestartCount"],
            "pid": item["State"]["Pid"],
            "address": next(iter(networks.values()))["IPAddress"],
        }
    return found


def test_weighted_requests_reach_every_api_container(hosts):
    docker1 = hosts["compose-docker1"]
    services = containers(docker1)
    assert sorted(services) == ["api-8001", "api-8002", "api-8003", "nginx"], services
    assert all(s["state"] == "running" and s["health"] == "healthy" for s in services.values()), services
    # 60 sequential requests: exactly one full weighted cycle (3+2+1) ten times.
    result = requests_from(hosts["compose-client"], URL, 60, cacert=CACERT)
    assert result["failed"] == 0, result
    assert result["instances"] == {f"api-{port}:{port}": 10 * weight for port, weight in WEIGHTS.items()}, result


def test_the_site_is_the_nginx_lb_template_with_service_names(hosts):
    docker1 = hosts["compose-docker1"]
    site = docker1.file(SITE_FILE).content_string
    assert "server api-8001:8001 weight=3 " in site
    assert "server api-8003:8003 weight=1 " in site
    # The running nginx reads it from the mounted directory.
    dumped = compose(docker1, "exec", "-T", "nginx", "nginx", "-T")
    assert "server api-8002:8002 weight=2 " in dumped


def test_api_containers_run_the_units_uvicorn_command_without_its_access_log(hosts):
    """The systemd unit's arguments (lb_uvicorn_args): nginx logs every
    request, uvicorn only its start and errors (api_access_log false)."""
    docker1 = hosts["compose-docker1"]
    api = containers(docker1)["api-8002"]["id"]
    command = json.loads(docker1.check_output(f"docker inspect -f '{{{{json .Config.Cmd}}}}' {api}"))
    assert command == [
        "/opt/app/venv/bin/uvicorn", "app.api:app", "--host", "0.0.0.0", "--port", "8002", "--workers", "1",
        "--no-access-log",
    ], command  # fmt: skip
    # Two weighted cycles (3+2+1): api-8002 answers 4 of them.
    result = requests_from(hosts["compose-client"], f"{URL}health?probe=compose-access", 12, cacert=CACERT)
    assert result["instances"].get("api-8002:8002") == 4, result
    log = docker1.check_output(f"docker logs {api} 2>&1")
    assert "Uvicorn running on http://0.0.0.0:8002" in log, log[-2000:]
    assert "probe=compose-access" not in log, log[-2000:]


def test_api_ports_are_not_reachable_from_another_host(hosts):
    docker1, client = hosts["compose-docker1"], hosts["compose-client"]
    services = containers(docker1)
    probe = "timeout 3 bash -c 'exec 3<>/dev/tcp/{}/{}'"
    # Not published on the Docker host's address.
    for port in WEIGHTS:
        assert client.run(probe.format(DOCKER_HOST, port)).rc != 0, port
    # Not reachable either when the client routes the project network through
    # the Docker host, as a neighbour on its LAN could.
    client.run_expect([0], f"ip route replace {SUBNET_PREFIX}0/24 via {DOCKER_HOST}")
    try:
        for port in WEIGHTS:
            address = services[f"api-{port}"]["address"]
            assert address.startswith(SUBNET_PREFIX), services
            assert client.run(probe.format(address, port)).rc != 0, (address, port)
        # The same probe reaches a service from the Docker host itself: it can fail.
        assert docker1.run(probe.format(services["api-8001"]["address"], 8001)).rc == 0
    finally:
        client.run(f"ip route del {SUBNET_PREFIX}0/24")


def test_rejected_config_never_goes_live(hosts):
    docker1, client = hosts["compose-docker1"], hosts["compose-client"]
    before = docker1.check_output(f"sha256sum {SITE_FILE}")
    run = playbook(extra_vars={"nginx_lb_extra_config": "no_such_directive on;"})
    assert run.returncode != 0, tail(run)
    assert "nginx rejected the new configuration of site rag-photographie" in said(run), tail(run)
    assert 'unknown directive "no_such_directive"' in said(run), tail(run)
    assert docker1.check_output(f"sha256sum {SITE_FILE}") == before
    assert "no_such_directive" not in compose(docker1, "exec", "-T", "nginx", "nginx", "-T")
    result = requests_from(client, URL, 12, cacert=CACERT)
    assert result["failed"] == 0, result


@pytest.mark.parametrize(
    ("version", "keepalive"), [("1.1.0", False), ("1.0.0", True)], ids=["to-1.1.0-per-request", "back-keepalive"]
)
def test_rolling_version_change_under_load(hosts, version, keepalive):
    docker1, client = hosts["compose-docker1"], hosts["compose-client"]
    old = containers(docker1)
    # A pause between requests: a TLS handshake per request at full speed
    # would take the 2-core machine from the scenarios running alongside.
    # And POSTs on kept-alive connections: nginx retries a GET on another
    # instance when one closes or refuses, never a POST, so a roll that
    # skipped the drain would show here.
    with (
        Load(client, URL, concurrency=10, pause=0.2, cacert=CACERT, keepalive=keepalive) as load,
        Load(client, URL, concurrency=3, pause=0.2, cacert=CACERT, keepalive=True, method="POST") as posts,
    ):
        run = playbook(extra_vars={"api_version": version} if version != "1.0.0" else None)
    assert run.returncode == 0, tail(run)
    result = load.result
    assert result["failed"] == 0, result
    assert set(result["versions"]) == {"1.0.0", "1.1.0"}, result
    assert posts.result["failed"] == 0, posts.result
    assert set(posts.result["versions"]) == {"1.0.0", "1.1.0"}, posts.result
    new = containers(docker1)
    for port in WEIGHTS:
        service = f"api-{port}"
        assert new[service]["image"] == f"rag-photographie:{version}", new
        assert new[service]["id"] != old[service]["id"], service
        # Its fixed address, which nginx resolved at its last reload.
        assert new[service]["address"] == old[service]["address"], service
    # nginx was neither reloaded into another container nor re-created.
    assert new["nginx"]["id"] == old["nginx"]["id"]
    # One service at a time: the playbook re-created them in api_instances order.
    marker = "TASK [compose_stack : Re-create and wait until healthy the service "
    order = [line[len(marker) :].split("]")[0] for line in run.stdout.splitlines() if line.startswith(marker)]
    assert order == [f"api-{port}" for port in WEIGHTS], order


def test_killed_api_container_restarts_and_the_others_serve(hosts):
    docker1, client = hosts["compose-docker1"], hosts["compose-client"]
    before = containers(docker1)["api-8002"]
    healthy_at = None
    with Load(client, URL, concurrency=10, pause=0.2, cacert=CACERT, record=True) as load:
        # A crash: the container's main process dies with SIGKILL.
        docker1.run_expect([0], f"kill -9 {before['pid']}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = containers(docker1)["api-8002"]
            if now["restarts"] > before["restarts"] and now["health"] == "healthy":
                healthy_at = time.time()
                break
            time.sleep(0.5)
        # Traffic reaches it again before the load stops.
        time.sleep(3)
    assert now["restarts"] == before["restarts"] + 1, now
    assert now["health"] == "healthy", now
    assert now["id"] == before["id"], now
    assert now["address"] == before["address"], now
    result = load.result
    assert result["failed"] == 0, result
    # Answered by the restarted container: requests sent after it was
    # healthy again (the containers share the controller's clock).
    assert healthy_at is not None, now
    again = [r for r in load.records if r["instance"] == "api-8002:8002" and r["sent"] >= healthy_at]
    print(f"api-8002 answered {len(again)} requests sent after it was healthy again")
    assert again, [r for r in load.records if r["sent"] >= healthy_at][:20]


def test_check_mode_reports_a_new_version_and_changes_nothing(hosts):
    docker1 = hosts["compose-docker1"]
    before = containers(docker1)
    run = playbook("--check", "--diff", extra_vars={"api_version": "9.9.9"})
    assert run.returncode == 0, tail(run)
    text = said(run)
    assert "Would build rag-photographie:9.9.9" in text, tail(run)
    assert "Would re-create, drained, one at a time: api-8001, api-8002, api-8003." in text, tail(run)
    assert "+    image: rag-photographie:9.9.9" in run.stdout, tail(run)
    assert containers(docker1) == before
    assert docker1.run("docker image inspect rag-photographie:9.9.9").rc != 0
    assert "rag-photographie:9.9.9" not in docker1.file("/opt/lb-stack/compose.yaml").content_string


def test_a_changed_project_network_is_refused_before_any_change(hosts):
    docker1 = hosts["compose-docker1"]
    before = containers(docker1)
    project = docker1.check_output("sha256sum /opt/lb-stack/compose.yaml")
    run = playbook(extra_vars={"compose_stack_subnet": "172.29.84.0/24"})
    assert run.returncode != 0, tail(run)
    assert "Compose does not change an existing network" in said(run), tail(run)
    assert "compose_stack_subnet=172.29.84.0/24" in said(run), tail(run)
    assert containers(docker1) == before
    assert docker1.check_output("sha256sum /opt/lb-stack/compose.yaml") == project


def expiry(host, command: str) -> datetime.datetime:
    """The notAfter of the certificate `command` prints (PEM) on `host`."""
    end = host.check_output(f"{command} | openssl x509 -noout -enddate").removeprefix("notAfter=")
    return datetime.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.UTC)


def test_a_self_signed_certificate_with_less_than_a_third_of_its_life_left_is_renewed(hosts):
    """The same certificate signed again for 30 days, of the 365 a self-signed
    one lives: the next run signs it again for its whole life (the nginx_lb
    role's certificate entry point), and nginx in its container serves it."""
    docker1, client = hosts["compose-docker1"], hosts["compose-client"]
    tls = "/opt/lb-stack/tls"
    served = "openssl s_client -connect 127.0.0.1:443 </dev/null 2>/dev/null"
    docker1.run_expect(
        [0],
        f"openssl x509 -req -in {tls}/selfsigned.csr -key {tls}/privkey.pem -days 30"
        f" -copy_extensions copyall -out {tls}/fullchain.pem"
        f" && docker compose --project-name {PROJECT} exec -T nginx nginx -s reload",
    )
    now = datetime.datetime.now(datetime.UTC)
    # The reload is asynchronous: the new workers serve within a second.
    for _attempt in range(20):
        if expiry(docker1, served) < now + datetime.timedelta(days=31):
            break
        time.sleep(0.25)
    assert expiry(docker1, served) < now + datetime.timedelta(days=31)

    run = playbook()
    assert run.returncode == 0, tail(run)
    assert expiry(docker1, f"cat {tls}/fullchain.pem") > now + datetime.timedelta(days=364)
    for _attempt in range(20):
        if expiry(docker1, served) > now + datetime.timedelta(days=364):
            break
        time.sleep(0.25)
    assert expiry(docker1, served) > now + datetime.timedelta(days=364)
    # The client trusts the renewed certificate from now on.
    cert = docker1.check_output(f"cat {tls}/fullchain.pem")
    client.run_expect([0], f"cat > {CACERT} <<'EOF'\n{cert}\nEOF")
    assert client.run(f"curl -sf --cacert {CACERT} {URL}health").rc == 0
