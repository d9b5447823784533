"""Capacity of the load balancer as shipped (HTTPS), and its logs at load.

The capacity client (scripts/lb_capacity.py) runs on the controller against
the test host's address: 10,000 kept-alive HTTPS connections held through
nginx at once, 200 of them sending GET and POST for 15 s while the rest stay
idle, then every idle one sending one more request. With Debian's own
nginx.conf (768 connections per worker) nginx closes most of them (docs/capacity.md,
"Capacity").
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import yaml
from lbtest import BLOCKED_PATH, CERT, PROJECT, SITE, Load

CONNECTIONS = 10_000
ACTIVE = 200
HOLD_SECONDS = 15
ERROR_LOGS = ("/var/log/nginx/error.log", f"/var/log/nginx/{SITE}-error.log")
# nginx closes a client connection idle this long on purpose; the client's
# idle connections send a request at 40 % of it, as a pool does before the
# server would close them (a slow run on a busy machine took 110 s from the
# first connection to the sweep; at 60 %, a run beside three others was late
# for 643 of 10,000 connections, which nginx had rightly closed).
KEEPALIVE_TIMEOUT = int(
    yaml.safe_load((PROJECT / "roles/nginx_lb/defaults/main.yml").read_text())[
        "nginx_lb_client_keepalive_timeout"
    ].rstrip("s")
)
# What nginx logs (at warn) when it runs out of connections or files.
EXHAUSTED = re.compile(r"worker_connections are not enough|Too many open files|accept4?\(\) failed")


def log_sizes(host) -> dict[str, int]:
    return {path: int(host.run(f"stat -c %s {path} 2>/dev/null || echo 0").stdout) for path in ERROR_LOGS}


def logged_since(host, sizes: dict[str, int]) -> str:
    return "".join(host.run(f"tail -c +{size + 1} {path}").stdout for path, size in sizes.items())


def stub_active(host) -> int:
    status = host.check_output("curl -s http://127.0.0.1/nginx_status")
    return int(re.search(r"Active connections: (\d+)", status).group(1))


def worker_files(host) -> dict[str, int]:
    """Open files of each nginx worker (its connections, client and upstream,
    plus a few logs and sockets): how the connections are spread."""
    master = host.check_output("cat /run/nginx.pid").strip()
    out = host.check_output(f"for p in $(ps -o pid= --ppid {master}); do echo $p $(ls /proc/$p/fd | wc -l); done")
    return dict(line.split() for line in out.splitlines())


def test_ten_thousand_connections_held_with_no_error(host, tmp_path):
    address = host.check_output("hostname -I").split()[0]
    cacert = tmp_path / "ca.pem"
    cacert.write_text(host.file(CERT).content_string)
    held_file = tmp_path / "held.json"
    sizes = log_sizes(host)
    client = subprocess.Popen(
        [
            sys.executable,
            str(PROJECT / "scripts" / "lb_capacity.py"),
            f"https://{address}/",
            f"--connections={CONNECTIONS}",
            f"--active={ACTIVE}",
            f"--seconds={HOLD_SECONDS}",
            f"--cacert={cacert}",
            f"--held-file={held_file}",
            "--max-seconds=240",
            f"--idle-limit={KEEPALIVE_TIMEOUT * 0.4}",
            # A connection this client left idle past nginx's timeout (its
            # refresh starved of CPU) is rightly closed: counted in expired.
            f"--server-idle-timeout={KEEPALIVE_TIMEOUT}",
            # The refresh asks for a path nginx answers itself (a blocked
            # one: 404), as cheap as a pool's keep-alive probe: 10,000
            # refreshes a run through to the API loaded the instances on the
            # same 2 cores, and a starved client then let 545 connections
            # pass nginx's timeout.
            f"--refresh-path={BLOCKED_PATH}",
            # Beside two other lanes on 2 cores, one event loop doing 10,000
            # TLS handshakes is the slow side: its open phase took 91 and
            # 124 s, longer than nginx's keepalive_timeout, and its refresh
            # fell behind. Four processes (a loop each, so both cores), 32
            # handshakes at a time each, a timed-out open tried up to 3 times.
            "--processes=4",
            "--open-concurrency=32",
            "--open-attempts=3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # While every connection is open: nginx counts them all.
        deadline = time.monotonic() + 180
        while not held_file.exists() and client.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert held_file.exists(), client.stderr.read() if client.poll() is not None else "not held in 180 s"
        held = json.loads(held_file.read_text())
        active_while_held = stub_active(host)
        spread = worker_files(host)
        out, err = client.communicate(timeout=260)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, err
    logged = logged_since(host, sizes)
    result = {
        **json.loads(out.strip().splitlines()[-1]),
        "nginx_active_while_held": active_while_held,
        "nginx_worker_files_while_held": spread,
        "error_log": logged[-600:],
    }
    print(json.dumps(result, sort_keys=True))
    # The client's own count first: a connection it could not open is not
    # one nginx could have counted.
    assert result["opened"] == CONNECTIONS, result
    assert held["open"] == CONNECTIONS, (held, result)
    assert result["errors"] == {"open": {}, "refresh": {}, "hold": {}, "sweep": {}}, result
    assert active_while_held >= CONNECTIONS, result
    # A starved client (a fresh-clone lane beside a busy machine: 61 busy
    # requests/s) can leave a few connections idle past nginx's 75 s before
    # their refresh goes out (81 of 10,000 in one run): nginx was right to
    # close them. Not errors, but at most 1 %: a client that cannot keep
    # more alive has not tested the 10,000.
    expired = result["expired"]
    assert sum(expired.values()) <= CONNECTIONS // 100, result
    # Every request answered 200: the first on each connection, the active
    # ones' GET and POST, and the sweep of every idle connection. An open
    # that timed out on this busy client was tried again (open_retried); its
    # unanswered first request is the only one allowed without an answer,
    # besides the expired ones.
    unanswered = result["unanswered"]
    assert unanswered.get("open", 0) <= sum(result["open_retried"].values()), result
    assert set(unanswered) <= {"open", *expired}, result
    assert all(unanswered.get(phase, 0) <= count for phase, count in expired.items()), result
    # The refreshes are answered 404 by nginx itself, every other request 200.
    refreshed = result["requests"]["refresh"] - unanswered.get("refresh", 0)
    assert result["statuses"].get("404", 0) == refreshed, result
    assert result["statuses"]["200"] == sum(result["requests"].values()) - sum(unanswered.values()) - refreshed, result
    assert result["requests"]["sweep"] == CONNECTIONS - ACTIVE - expired.get("refresh", 0), result
    # Each busy connection sends POST, then GET, and so on: at least two
    # each on average (a fresh-clone lane measured 1,923 in 18 s, with the
    # client starved to 105 requests/s; alone it sends about 1,000/s).
    assert result["requests"]["hold"] >= ACTIVE * 2, result
    assert not EXHAUSTED.search(logged), logged[-2000:]


def test_capacity_settings_reach_nginx(host):
    """The limits the role set are the ones nginx's workers run with."""
    config = host.check_output("nginx -T 2>/dev/null")
    connections = int(re.search(r"worker_connections (\d+);", config).group(1))
    rlimit = int(re.search(r"worker_rlimit_nofile (\d+);", config).group(1))
    assert rlimit >= 2 * connections
    master = host.check_output("cat /run/nginx.pid").strip()
    workers = host.check_output(f"ps -o pid= --ppid {master}").split()
    assert workers
    for pid in workers:
        limits = host.file(f"/proc/{pid}/limits").content_string
        soft = int(re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).group(1))
        assert soft == rlimit, limits
    hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", host.file(f"/proc/{master}/limits").content_string)
    assert int(hard.group(2)) >= rlimit
    assert "backlog=4096" in config


def test_logs_rotate_by_size_under_load_with_no_request_lost(host):
    """A log over nginx_lb_log_rotate_maxsize is rotated by the timer's service
    (not daily yet), nginx reopens its logs, and clients lose nothing."""
    log = f"/var/log/nginx/{SITE}-access.log"
    host.run_expect([0], "systemctl is-active nginx-lb-logrotate.timer")
    host.run_expect([0], f"rm -f {log}.1 {log}.2.gz")
    # Over 100M without writing 100 MB: a sparse tail.
    host.run_expect([0], f"truncate -s 101M {log}")
    url = "https://localhost/"
    with (
        Load(host, url, concurrency=8, pause=0.05, cacert=CERT, keepalive=True) as kept,
        Load(host, url, concurrency=8, pause=0.05, cacert=CERT, method="POST") as posts,
    ):
        host.run_expect([0], "systemctl start nginx-lb-logrotate.service")
        time.sleep(2)
    assert kept.result["failed"] == 0, kept.result
    assert posts.result["failed"] == 0, posts.result
    assert host.file(f"{log}.1").exists
    assert host.file(f"{log}.1").size > 100 * 1024 * 1024
    # nginx writes to the new file (buffered: within the 1 s flush).
    marker = f"/health?rotated={time.time_ns()}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        host.run(f"curl -s -o /dev/null --cacert {CERT} 'https://localhost{marker}'")
        if host.file(log).size < 1024 * 1024 and marker in host.file(log).content_string:
            break
        time.sleep(1)
    assert marker in host.file(log).content_string
    assert host.file(log).size < 1024 * 1024
    host.run_expect([0], f"rm -f {log}.1")


def test_tls_sessions_are_resumed(host):
    """TLS 1.2 and 1.3 clients resume their sessions from nginx's shared
    session cache (tickets are off): a resumed handshake skips the key
    exchange and the certificate."""
    # One full handshake, then five reconnects that each offer its session.
    # A second client if the first was not resumed every time: once, in a
    # fresh-clone run beside two other lanes, one reconnect of five was a
    # full handshake after the capacity test (not seen again in 20 tries on
    # that host, nothing in nginx's error logs); a cache that does not
    # resume fails both.
    resumed = [("New", "TLSv1.2")] + [("Reused", "TLSv1.2")] * 5
    sizes = log_sizes(host)
    tries = []
    for _attempt in range(2):
        tls12 = host.run("openssl s_client -tls1_2 -connect localhost:443 -servername localhost -reconnect </dev/null")
        tries.append(re.findall(r"^(New|Reused), (TLSv1\.\d)", tls12.stdout, re.MULTILINE))
        if tries[-1] == resumed:
            break
    print("TLS 1.2 handshakes:", tries)
    assert tries[-1] == resumed, (tries, logged_since(host, sizes))
    session = f"/tmp/lbtest-session-{time.time_ns()}.pem"
    # A TLS 1.3 session comes after the handshake: the first client stays 1 s.
    host.run(
        f"(sleep 1) | openssl s_client -tls1_3 -connect localhost:443 -servername localhost -sess_out {session}"
        " >/dev/null 2>&1"
    )
    tls13 = host.run(
        f"openssl s_client -tls1_3 -connect localhost:443 -servername localhost -sess_in {session} </dev/null"
    )
    host.run(f"rm -f {session}")
    assert "Reused, TLSv1.3" in tls13.stdout, tls13.stdout[-2000:]
