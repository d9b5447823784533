"""Zero-downtime operations, each measured with continuous load through nginx.

The load: scripts/lb_requests.py on the host, requests in flight to
http://localhost/ until the event is over; every response is counted and
printed (pytest -r A shows the counts). A failure is a non-2xx answer or a
connection error. The rolling update runs under three clients at once: one
connection per request (GET), and clients that keep their connections open
and never retry, like a connection pool (GET and POST).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid

import pytest
from lbtest import (
    API_NAME,
    DRAIN,
    PORTS,
    ROLLING_UPDATE,
    SITE,
    SITE_FILE,
    Load,
    assert_reload_losses_bounded,
    http,
    playbook,
    recap,
    reloads,
    requests_from,
    said,
    tail,
)

URL = "http://localhost/"


def versions(host) -> dict[int, str]:
    """The version each instance reports on /health, asked directly."""
    return {port: json.loads(http(host, f"http://127.0.0.1:{port}/health", timeout=5)[1])["version"] for port in PORTS}


def down_lines(host) -> list[str]:
    """The upstream server lines marked down."""
    site = host.file(SITE_FILE).content_string
    return [line.strip() for line in site.splitlines() if line.strip().startswith("server ") and " down;" in line]


@pytest.fixture(scope="module", autouse=True)
def inventory_version_at_the_end(host):
    """The tests release other versions; at the end the inventory's release is
    rolled back out (on purpose: api_allow_downgrade), so the check-mode pass
    sees the converged state."""
    yield
    run = playbook(extra_vars={"api_allow_downgrade": True}, path=ROLLING_UPDATE)
    assert run.returncode == 0, tail(run)


def rolling_update(**extra_vars):
    started = time.monotonic()
    run = playbook(extra_vars=extra_vars, path=ROLLING_UPDATE)
    return run, round(time.monotonic() - started, 1)


def at_version(host, version: str) -> None:
    """The state a test starts from: every instance on `version` (a rolling
    update, backwards too; nothing to do when they run it already)."""
    if set(versions(host).values()) != {version}:
        run, _seconds = rolling_update(api_version=version, api_allow_downgrade=True)
        assert run.returncode == 0, tail(run)
    assert versions(host) == dict.fromkeys(PORTS, version)


def next_major(host) -> str:
    """A version newer than every instance runs."""
    return f"{max(int(v.split('.')[0]) for v in versions(host).values()) + 1}.0.0"


def journal(host, since: float, *selectors: str) -> list[tuple[float, str]]:
    """(wall-clock time, message) of the journal entries matching `selectors` since `since`."""
    out = host.check_output(
        f"journalctl --no-pager -o json --since=@{since:.0f} {' '.join(selectors)} --output-fields=MESSAGE"
    )
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [(int(e["__REALTIME_TIMESTAMP"]) / 1e6, e.get("MESSAGE", "")) for e in entries]


def clock(at: float) -> str:
    """A wall-clock time as HH:MM:SS.mmm (UTC)."""
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}"


def drain_times(host, since: float) -> dict[int, dict[str, float]]:
    """Per port, when the drain command refused it (the playbook's drain
    began) and when systemd began stopping the old instance."""
    refused = {
        int(message.split()[1]): at
        for at, message in reversed(journal(host, since, f"-t {API_NAME}-drain"))
        if message.startswith("refuse ")
    }
    times = {}
    for port, refused_at in refused.items():
        stopping = [
            at
            for at, message in journal(host, since, f"-u {API_NAME}@{port}.service")
            if message.startswith("Stopping") and at >= refused_at
        ]
        times[port] = {"refused": refused_at, "stopping": min(stopping)}
    return times


@pytest.mark.parametrize("port", PORTS)
def test_unit_exposure_is_at_most_2(host, port):
    out = host.check_output(f"systemd-analyze security {API_NAME}@{port}.service")
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"{API_NAME}@{port}: exposure {exposure}")
    assert exposure <= 2.0, out[-1500:]


def test_hardened_unit_serves_logs_and_restarts(host):
    """The sandboxed instance restarts, logs to its journal (uvicorn's
    startup line), and writes no line per request there (api_access_log is
    false: nginx's access log has them)."""
    unit = host.service(f"{API_NAME}@8001")
    assert unit.is_running
    pid = host.check_output(f"systemctl show -p MainPID --value {API_NAME}@8001")
    since = float(host.check_output("date +%s.%N"))
    host.run_expect([0], f"systemctl restart {API_NAME}@8001")
    host.run_expect(
        [0], "for i in $(seq 50); do curl -sf http://127.0.0.1:8001/health && exit 0; sleep 0.2; done; exit 1"
    )
    assert host.check_output(f"systemctl show -p MainPID --value {API_NAME}@8001") != pid
    host.run_expect([0], "curl -sf http://127.0.0.1:8001/health?probe=journal")
    messages = [message for _at, message in journal(host, since - 1, f"-u {API_NAME}@8001.service")]
    assert any("Uvicorn running on http://127.0.0.1:8001" in message for message in messages), messages
    assert not [message for message in messages if "probe=journal" in message], messages


def test_kill_9_is_invisible_and_nginx_takes_the_instance_back_within_fail_timeout_of_its_restart(host):
    """Timed on the host's own clock, in parts, so a busy controller or a
    slow `docker exec` does not count: the shell that sends SIGKILL takes the
    time once it is sent (a request sent after it cannot reach the killed
    process), then polls 8002 directly until it answers again (bounded:
    15 s). systemd's part is the journal's "Started" of the unit: RestartSec=1
    after the kill. uvicorn's start follows; it takes what the CPU gives it
    (about 0.5 s on an idle host, several seconds while other scenarios run
    on this 2-core machine), so it is reported, not bounded. nginx's part:
    "back in rotation" is the first answer from 8002 to a request the loads
    sent after the kill (their per-request records), at most fail_timeout
    (2 s) after 8002 answers again, plus 1 s: nginx tries a failed server
    again 2 s after the failure."""
    with (
        Load(host, URL, concurrency=10, pause=0.02, record=True) as load,
        Load(host, URL, concurrency=10, pause=0.02, keepalive=True, record=True) as pooled,
    ):
        pid = host.check_output(f"systemctl show -p MainPID --value {API_NAME}@8002")
        restart = host.run(
            f"kill -9 {pid} && date +%s.%N && for i in $(seq 300); do"
            " curl -sf -m 1 -o /dev/null http://127.0.0.1:8002/health && date +%s.%N && exit 0; sleep 0.05; done;"
            " exit 1"
        )
        time.sleep(3)
    assert restart.rc == 0, f"8002 did not answer again within 15 s: {restart.stdout}{restart.stderr}"
    killed, ready = (float(line) for line in restart.stdout.split())
    after = [r for r in load.records + pooled.records if r["instance"] == "rolling:8002" and r["sent"] > killed]
    assert after, "no request sent after the kill was answered by 8002 through nginx"
    back = min(r["answered"] for r in after)
    started = [
        at
        for at, message in journal(host, killed - 1, f"-u {API_NAME}@8002.service")
        if message.startswith("Started") and at > killed
    ]
    assert started, "the journal has no start of the unit after the kill"
    print(
        f"kill -9: systemd started 8002 again after {min(started) - killed:.2f} s, it answered directly after"
        f" {ready - killed:.2f} s, through nginx after {back - killed:.2f} s ({back - ready:.2f} s after it was"
        f" ready); host clock; {len(after)} answers from it since"
    )
    # systemd's part: RestartSec=1 after the kill (and the sandbox set up).
    assert 1.0 <= min(started) - killed <= 2.5, min(started) - killed
    # nginx's part: at most fail_timeout (2 s) after the instance is ready,
    # plus 1 s for the loads' next request on a busy machine.
    assert back - ready <= 3.0, back - ready
    # No request sent after the kill fails: nginx retries those the dead
    # process refuses or drops on another server. Only a response the
    # process was in the middle of sending when it died can be cut (nginx
    # has passed its headers on and cannot retry it): at most one per
    # client connection, each sent before the kill.
    for client in (load, pooled):
        cut = [r for r in client.records if not 200 <= r["status"] < 300]
        print(client.result["mode"], "failed:", cut)
        assert all(r["sent"] < killed for r in cut), cut
        assert len(cut) <= client.concurrency, cut
    assert host.check_output(f"systemctl show -p MainPID --value {API_NAME}@8002") != pid


def test_reload_with_a_changed_upstream_under_load(host):
    weighted = [{"port": 8001, "weight": 3}, {"port": 8002, "weight": 2}, {"port": 8003}]
    with (
        Load(host, URL, concurrency=10) as load,
        Load(host, URL, concurrency=10, keepalive=True) as pooled,
    ):
        run = playbook("--tags", "loadbalancers", extra_vars={"api_instances": weighted})
        assert run.returncode == 0, tail(run)
        assert "weight=3" in host.file(SITE_FILE).content_string
        back = playbook("--tags", "loadbalancers")
        assert back.returncode == 0, tail(back)
    count = reloads(run) + reloads(back)
    print(f"reload with changed upstream: {count} reloads;", json.dumps(load.result), json.dumps(pooled.result))
    assert count == 2
    assert "weight=3" not in host.file(SITE_FILE).content_string
    # One connection per request: nothing lost. Kept-alive connections: at
    # most one request per connection per reload (docs/scaling.md).
    assert load.result["failed"] == 0, load.result
    assert_reload_losses_bounded(pooled.result, count)


def test_rolling_update_under_load_with_slow_requests_in_flight(host):
    """1.0.0 to 2.0.0 under three clients (per request GET, pooled GET, pooled
    POST), and slow clients that keep 18 requests of 1.5-2.5 s in flight. The
    journal says when the drain of each instance began (the drain command's
    log) and when systemd began stopping it; the slow clients' records say
    when each request was sent and answered, by which instance and version."""
    at_version(host, "1.0.0")
    since = time.time() - 1
    # 18 slow requests always in flight (three durations, so they do not
    # finish in step): each instance holds some at any moment.
    slow_loads = [
        Load(
            host,
            f"{URL}slow?seconds={seconds}",
            concurrency=6,
            keepalive=True,
            pause=0,
            timeout=15,
            min_requests=12,
            record=True,
        )
        for seconds in (1.5, 2, 2.5)
    ]
    load = Load(host, URL, concurrency=10)
    pooled = Load(host, URL, concurrency=10, keepalive=True)
    posts = Load(host, URL, concurrency=4, keepalive=True, method="POST")
    with contextlib.ExitStack() as loads:
        for client in (load, pooled, posts, *slow_loads):
            loads.enter_context(client)
        run, seconds = rolling_update(api_version="2.0.0")
    assert run.returncode == 0, tail(run)
    print(f"rolling update to 2.0.0: {seconds} s")
    for client in (load, pooled, posts, *slow_loads):
        print(client.result["mode"], client.result["method"], client.result["url"], json.dumps(client.result))
        assert client.result["failed"] == 0, client.result
        assert "2.0.0" in client.result["versions"], client.result
        assert "1.0.0" in client.result["versions"], client.result
    # No nginx reload: the drain is the instances refusing new connections.
    assert "Reload the nginx service" not in run.stdout
    assert versions(host) == dict.fromkeys(PORTS, "2.0.0")
    assert down_lines(host) == []

    records = [record for slow in slow_loads for record in slow.records]
    times = drain_times(host, since)
    assert sorted(times) == list(PORTS), times
    for port, at in times.items():
        old = [r for r in records if r["instance"] == f"rolling:{port}" and r["version"] == "1.0.0"]
        in_flight = [r for r in old if r["sent"] < at["refused"] < r["answered"]]
        after = [r for r in old if r["sent"] > at["refused"]]
        print(
            f"port {port}: drain began {clock(at['refused'])}, systemd stopping it {clock(at['stopping'])};"
            f" {len(in_flight)} slow requests in flight at the drain, {len(after)} sent after it on open"
            f" connections, the last old answer {clock(max(r['answered'] for r in old))}"
        )
        # The proof: requests in flight when the drain began finished with 200
        # from the old instance, before systemd began stopping it.
        assert in_flight, (port, at, old)
        for request in in_flight + after:
            assert request["status"] == 200, request
            assert request["answered"] < at["stopping"], (port, at, request)


def refused_drain(host, servers: list[str], message: str):
    """Run playbooks/drain.yml for `servers`; it must say `message` and change
    nothing (every host's changed=0, the site file the same). Returns the run."""
    before = host.file(SITE_FILE).sha256sum
    run = playbook(extra_vars={"drain": servers}, path=DRAIN)
    assert message in said(run), tail(run)
    assert all(counters["changed"] == 0 for counters in recap(run).values()), tail(run)
    assert host.file(SITE_FILE).sha256sum == before
    return run


def test_a_drain_request_for_an_unknown_server_fails_and_changes_nothing(host):
    run = refused_drain(
        host,
        ["127.0.0.1:9999"],
        f"Upstream rag_photographie_backend on {host.backend.host} has no server 127.0.0.1:9999; nothing was"
        " changed. Its servers are: 127.0.0.1:8001, 127.0.0.1:8002, 127.0.0.1:8003.",
    )
    assert run.returncode != 0


def test_a_drain_of_every_primary_server_is_refused_and_changes_nothing(host):
    every = [f"127.0.0.1:{port}" for port in PORTS]
    run = refused_drain(
        host,
        every,
        f"Draining {', '.join(every)} would leave upstream rag_photographie_backend on {host.backend.host} without"
        " a primary server in rotation; nothing was changed. Drained already: none.",
    )
    assert run.returncode == 2, tail(run)
    # Every instance still serves: one client, round robin exact.
    result = requests_from(host, URL, 30)
    assert result["instances"] == dict.fromkeys((f"rolling:{port}" for port in PORTS), 10), result


def test_failed_rolling_update_stays_drained_and_a_rerun_resumes(host):
    at_version(host, "2.0.0")
    # A release whose app cannot start: the first instance never gets healthy.
    with Load(host, URL, concurrency=20) as load:
        run, seconds = rolling_update(api_version="3.0.0", api_module="app.api:no_such_app", api_health_timeout=8)
    print(f"failed rolling update: {seconds} s;", json.dumps(load.result))
    assert run.returncode != 0
    assert "Rolling update stopped at" in said(run), tail(run)
    assert "stays drained (down) on every load balancer" in said(run)
    assert load.result["failed"] == 0, load.result
    # The upstream is consistent: only the failed instance is down ...
    assert down_lines(host) == ["server 127.0.0.1:8001 max_fails=1 fail_timeout=2s down;"]
    assert host.run("nginx -t").rc == 0
    # ... and the others keep serving the previous release.
    after = requests_from(host, URL, 30)
    assert after["failed"] == 0, after
    assert set(after["instances"]) == {"rolling:8002", "rolling:8003"}, after
    assert set(after["versions"]) == {"2.0.0"}, after

    # A site.yml run keeps it drained: the drain is state, not an edit. (The
    # code on disk is 3.0.0's: going back to 2.0.0 is a rollback on purpose.)
    site = playbook(extra_vars={"api_version": "2.0.0", "api_allow_downgrade": True})
    assert site.returncode == 0, tail(site)
    assert down_lines(host) == ["server 127.0.0.1:8001 max_fails=1 fail_timeout=2s down;"]
    kept = requests_from(host, URL, 30)
    assert set(kept["instances"]) == {"rolling:8002", "rolling:8003"}, kept

    with Load(host, URL, concurrency=20) as again:
        rerun, seconds = rolling_update(api_version="3.0.0")
    assert rerun.returncode == 0, tail(rerun)
    print(f"resumed rolling update: {seconds} s;", json.dumps(again.result))
    assert again.result["failed"] == 0, again.result
    assert versions(host) == dict.fromkeys(PORTS, "3.0.0")
    assert down_lines(host) == []
    assert all(counters["failed"] == 0 for counters in recap(rerun).values())


def test_past_the_drain_timeout_the_restart_warns_with_the_count_and_requests_in_flight_finish(host):
    """api_drain_timeout=2 with 30-second requests (the /slow cap) held open
    on 8001 directly, by two loops started 15 s apart (each at most 6
    requests, one after another): however long the run takes to reach
    8001's drain (a busy machine slows its first plays), one request in
    flight then has at least 15 s left. The drain gives up after 2 s and
    says how many connections are open; the restart lets the requests in
    flight finish (uvicorn's graceful stop, within TimeoutStopSec) before
    the new process starts."""
    target = next_major(host)
    since = time.time() - 1
    marker = f"/tmp/lbtest-slow-{uuid.uuid4().hex[:8]}"
    for loop, delay in ((1, 0), (2, 15)):
        host.run_expect(
            [0],
            f"setsid nohup sh -c 'sleep {delay}; i=0; while [ ! -e {marker}.stop ] && [ $i -lt 6 ]; do i=$((i+1));"
            f" s=$(date +%s.%N); c=$(curl -s -m 45 -o /dev/null -w %{{http_code}}"
            f' "http://127.0.0.1:8001/slow?seconds=30&loop={loop}"); echo "$s $c $(date +%s.%N)";'
            f" done' >{marker}.{loop} 2>/dev/null </dev/null &",
        )
    try:
        host.run_expect(
            [0],
            "for i in $(seq 50); do [ $(ss -Htn state established '( dport = :8001 )' | wc -l) -gt 0 ] && exit 0;"
            " sleep 0.1; done; exit 1",
        )
        run, seconds = rolling_update(api_version=target, api_drain_timeout=2)
        assert run.returncode == 0, tail(run)
        warning = re.search(
            rf"WARNING: (\d+) connection\(s\) to {API_NAME}@8001 were still open after api_drain_timeout=2 s\."
            r" Restarting anyway",
            said(run),
        )
        assert warning, tail(run)
        assert int(warning.group(1)) >= 1
        # The run is over, so the old 8001 has exited and its requests were
        # answered: stop the loops (their requests to the new process do
        # not matter here).
        host.run(f"touch {marker}.stop; pkill -f 'seconds=30[&]loop=' || true")
        # "sent status answered" a line; a request the stop cut has no status.
        fields = [line.split() for line in host.check_output(f"cat {marker}.1 {marker}.2").splitlines()]
        requests = [(float(sent), status, float(ended)) for sent, status, ended in (f for f in fields if len(f) == 3)]
    finally:
        host.run(f"pkill -f 'seconds=30[&]loop=' ; rm -f {marker}.1 {marker}.2 {marker}.stop")
    at = drain_times(host, since)[8001]
    in_flight = [(sent, status, ended) for sent, status, ended in requests if sent < at["refused"] < ended]
    print(
        f"drain timeout: run {seconds} s; {warning.group(0)}; drain began {clock(at['refused'])},"
        f" systemd stopping {clock(at['stopping'])}; in flight at the drain: "
        + ", ".join(f"sent {clock(sent)} answered {status} at {clock(ended)}" for sent, status, ended in in_flight)
    )
    assert in_flight, (requests, at)
    assert {status for _sent, status, _ended in in_flight} == {"200"}, in_flight
    # The request the warning counted was answered after systemd began stopping the old process.
    assert max(ended for _sent, _status, ended in in_flight) > at["stopping"] > at["refused"], (in_flight, at)
    assert versions(host) == dict.fromkeys(PORTS, target)


def test_a_drain_nginx_rejects_is_rolled_back_and_nginx_keeps_serving(host):
    """A drain goes through nginx -t like every change: with a broken file in
    conf.d the drain fails with nginx's message, the site and the drain state
    stay as they were, nginx is not reloaded, and every instance still serves."""
    state = f"/var/lib/nginx-lb/{SITE}.json"
    broken = f"/etc/nginx/conf.d/lbtest-broken-{uuid.uuid4().hex[:8]}.conf"
    site_before = host.file(SITE_FILE).sha256sum
    state_before = host.run(f"cat {state}").stdout
    workers_before = host.check_output("pgrep -d, -xf 'nginx: worker process'")
    try:
        host.run_expect([0], f"echo 'this_is_no_directive on;' > {broken}")
        with Load(host, URL, concurrency=5, keepalive=True, min_requests=50) as load:
            run = playbook(extra_vars={"drain": ["127.0.0.1:8001"]}, path=DRAIN)
        assert run.returncode != 0
        assert "nginx rejected the new configuration of site" in said(run), tail(run)
        assert "the previous one is back in place and nginx was not reloaded" in said(run), tail(run)
        assert 'unknown directive "this_is_no_directive"' in said(run), tail(run)
        assert host.file(SITE_FILE).sha256sum == site_before
        assert host.run(f"cat {state}").stdout == state_before
        assert host.check_output("pgrep -d, -xf 'nginx: worker process'") == workers_before
    finally:
        host.run(f"rm -f {broken}")
    assert load.result["failed"] == 0, load.result
    assert host.run("nginx -t").rc == 0
    served = requests_from(host, URL, 30)
    assert served["instances"] == {f"rolling:{port}": 10 for port in PORTS}, served


def test_site_yml_refuses_to_roll_a_release_back_unless_asked(host):
    """After a release the inventory still says 1.0.0: a plain site.yml is
    refused in the preflight (nothing changes); with api_allow_downgrade it
    rolls back drained, as a release does, under pooled and per-request load."""
    if set(versions(host).values()) == {"1.0.0"}:
        at_version(host, "2.0.0")
    released = versions(host)
    site_before = host.file(SITE_FILE).sha256sum
    run = playbook()
    assert run.returncode != 0
    deployed = released[PORTS[0]]
    assert (
        f"{host.backend.host} has {API_NAME} {deployed} deployed, and api_version=1.0.0 is older: this run would"
        f" roll the release back. Nothing was changed. If {deployed} is the release, put"
        f' api_version: "{deployed}" in the inventory' in said(run)
    ), tail(run)
    assert "TASK [api : Assert that api_version does not move this host backwards]" in run.stdout, tail(run)
    assert all(counters["changed"] == 0 for counters in recap(run).values()), tail(run)
    assert versions(host) == released
    assert host.file(SITE_FILE).sha256sum == site_before

    with (
        Load(host, URL, concurrency=5) as single,
        Load(host, URL, concurrency=5, keepalive=True) as pooled,
        Load(host, URL, concurrency=3, keepalive=True, method="POST") as posts,
    ):
        back = playbook(extra_vars={"api_allow_downgrade": True})
    assert back.returncode == 0, tail(back)
    assert versions(host) == dict.fromkeys(PORTS, "1.0.0")
    for client in (single, pooled, posts):
        assert client.result["failed"] == 0, client.result
    # site.yml restarted each instance through the drain (the restart entry point).
    assert len(re.findall(r"TASK \[api : Refuse new connections to port 80\d\d\]", back.stdout)) == len(PORTS)
