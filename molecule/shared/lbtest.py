"""Helpers shared by the Molecule scenarios' testinfra tests.

`playbook()` re-runs the project's converge playbook from the controller
against the scenario's hosts, with extra variables; `http()` sends one
request from a test host; `requests_from()` and `Load` send bounded requests
from a test host with scripts/lb_requests.py and return its JSON counts.
The constants come from the roles' defaults, as the converged hosts have them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[2]))
CONVERGE = PROJECT / "molecule" / "shared" / "converge.yml"
ROLLING_UPDATE = PROJECT / "playbooks" / "rolling_update.yml"
DRAIN = PROJECT / "playbooks" / "drain.yml"
STATUS = PROJECT / "playbooks" / "status.yml"
LB_REQUESTS = (PROJECT / "scripts" / "lb_requests.py").read_text()


def _defaults(role: str) -> dict:
    return yaml.safe_load((PROJECT / "roles" / role / "defaults" / "main.yml").read_text())


API_NAME: str = _defaults("api")["api_name"]
PORTS: tuple[int, ...] = tuple(instance["port"] for instance in _defaults("api")["api_instances"])
SITE: str = _defaults("nginx_lb")["nginx_lb_site_name"]
SITE_FILE = f"/etc/nginx/sites-available/{SITE}"
# A path nginx answers itself (404), never proxied to the API.
BLOCKED_PATH: str = _defaults("nginx_lb")["nginx_lb_blocked_paths"][0]
# The site's certificate on a load balancer (self-signed by default).
CERT = f"/etc/nginx/tls/{SITE}/fullchain.pem"


# The second demo app (tests/app2), which the api_source tests build as a
# wheel, an sdist or a git repository.
DEMO2 = PROJECT / "tests" / "app2"
DEMO2_MODULE = "lbapi_demo2.service:application"


def build_demo2(tmp: Path, version: str, kind: str = "wheel") -> Path:
    """Build tests/app2 at `version` under `tmp`: its wheel or sdist file, or a git
    repository whose tag v<version> holds it (the repository's path is returned)."""
    project = tmp / f"demo2-{kind}-{version}"
    shutil.copytree(DEMO2, project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.0.0"', f'version = "{version}"'))
    dist = tmp / "dist"
    dist.mkdir(exist_ok=True)
    if kind == "wheel":
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(project)],
            check=True,
            capture_output=True,
        )
        return next(dist.glob(f"lbapi_demo2-{version}-*.whl"))
    if kind == "sdist":
        built = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))",
                str(dist),
            ],
            cwd=project,
            check=True,
            capture_output=True,
            text=True,
        )
        return dist / built.stdout.strip().splitlines()[-1]
    git = ["git", "-c", "user.name=lbtest", "-c", "user.email=lbtest@localhost", "-C", str(project)]
    for args in (["init", "--quiet"], ["add", "--all"], ["commit", "--quiet", "-m", version], ["tag", f"v{version}"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return project


def http(host, url: str, cacert: str | None = None, timeout: int = 10, method: str = "GET") -> tuple[int, str]:
    """(status, body) of one request sent from the host with curl; status 0 when nothing answered.
    HTTPS is verified against `cacert`, a path on the host, when given."""
    args = ["curl", "-s", "-m", str(timeout), "-X", method, "-o", "/dev/stdout", "-w", "\\n%{http_code}"]
    args += ["--cacert", cacert] if cacert else []
    out = host.run(shlex.join([*args, url])).stdout
    body, _sep, status = out.rpartition("\n")
    return int(status or 0), body


def playbook_command(*args: str, path: Path = CONVERGE) -> list[str]:
    """ansible-playbook on the scenario's inventory with the converge playbook (or `path`)."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    return [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(path), *args]


def ansible_command() -> list[str]:
    """ad-hoc `ansible` on the scenario's inventory; add the pattern and module."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    return [str(Path(sys.executable).parent / "ansible"), "-i", str(inventory)]


def playbook_env(**extra: str) -> dict[str, str]:
    """The test's environment, output without colour, plus `extra`."""
    return {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", **extra}


def playbook(
    *args: str, extra_vars: dict | None = None, timeout: int = 900, path: Path = CONVERGE
) -> subprocess.CompletedProcess:
    """Run the converge playbook (or `path`) on the scenario's inventory; output without colour."""
    command = playbook_command(*args, path=path)
    if extra_vars is not None:
        command += ["-e", json.dumps(extra_vars)]
    return subprocess.run(command, env=playbook_env(), capture_output=True, text=True, timeout=timeout, check=False)


def get_host(name: str):
    """A testinfra host of the scenario by inventory name, for tests that probe across hosts."""
    import testinfra  # noqa: PLC0415 - only multi-host scenarios need it

    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def headers(host, url: str, cacert: str) -> dict[str, str]:
    """Response headers of a GET from the host (lower-case names) and the status line as `status`;
    HTTPS verified against `cacert`, a path on the host."""
    out = host.check_output(
        shlex.join(["curl", "-s", "-m", "10", "--cacert", cacert, "-D", "-", "-o", "/dev/null", url])
    )
    lines = out.replace("\r", "").splitlines()
    result = {"status": lines[0]}
    for line in lines[1:]:
        if ":" in line:
            name, _sep, value = line.partition(":")
            result[name.strip().lower()] = value.strip()
    return result


def recap(run: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    """Per host, the counters of the PLAY RECAP line."""
    hosts = {}
    for line in run.stdout.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line)
        if match:
            hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return hosts


def changed_tasks(run: subprocess.CompletedProcess) -> set[str]:
    """Names of the tasks and handlers that reported a change ("changed: [host]") in a playbook run."""
    changed, task = set(), ""
    for line in run.stdout.splitlines():
        match = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\] \**$", line)
        if match:
            task = match.group(1)
        elif line.startswith("changed: ["):
            changed.add(task)
    return changed


def said(run: subprocess.CompletedProcess) -> str:
    """stdout and stderr (Ansible prints task errors there), whitespace folded to single spaces."""
    return " ".join((run.stdout + run.stderr).split())


def tail(run: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return (run.stdout + run.stderr)[-chars:]


def requests_from(
    host,
    url: str,
    count: int,
    concurrency: int = 1,
    max_seconds: float = 60,
    cacert: str | None = None,
    keepalive: bool = False,
) -> dict:
    """Send `count` requests to `url` from the test host; return lb_requests.py's JSON.
    HTTPS is verified against `cacert` (a path on the host) when given; `keepalive`
    reuses one connection per worker, like a connection pool."""
    args = shlex.join(
        [f"--url={url}", f"--requests={count}", f"--concurrency={concurrency}", f"--max-seconds={max_seconds}"]
        + ([f"--cacert={cacert}"] if cacert else [])
        + (["--keepalive"] if keepalive else [])
    )
    run = host.run(f"python3 - {args} <<'LB_REQUESTS_EOF'\n{LB_REQUESTS}\nLB_REQUESTS_EOF")
    assert run.stdout.strip(), run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # Shown in the test report (pytest -r A): the measured counts of every run.
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, sort_keys=True))
    return result


def assert_covered(result: dict, event_started: float, event_ended: float, min_requests: int) -> None:
    """A load covered its event (the test host's clock is the controller's):
    its first request was sent before the event started, its last answer came
    after it ended, and it sent at least `min_requests`."""
    assert result["first_sent"] < event_started, (event_started, result)
    assert result["last_answer"] > event_ended, (event_ended, result)
    assert result["requests"] >= min_requests, result


def requests_each(host, urls: list[str], count: int, cacert: str | None = None) -> list[dict]:
    """requests_from for each of `urls` in turn (`count` requests each, one at
    a time), in one command on the host: lb_requests.py's JSON for each."""
    args = [f"--requests={count}", "--concurrency=1"] + ([f"--cacert={cacert}"] if cacert else [])
    script = "/tmp/lbtest-requests.py"
    loop = "; ".join(shlex.join(["python3", script, f"--url={url}", *args]) for url in urls)
    run = host.run(f"cat > {script} <<'LB_REQUESTS_EOF'\n{LB_REQUESTS}\nLB_REQUESTS_EOF\n{loop}; rm -f {script}")
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(urls), run.stdout + run.stderr
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, sort_keys=True))
    return results


class Load:
    """Continuous load from a test host while an event runs on the controller.

    `with Load(host, url, concurrency=20) as load: <event>` starts
    scripts/lb_requests.py in the background on the host, keeps `concurrency`
    requests in flight until the block ends (bounded by `max_seconds` and
    `max_requests` anyway; each worker pauses `pause` s between requests so
    the load does not starve the 2-core controller: a load's own CPU grows
    with the time its event takes, and a slower event then takes longer
    still), then stops it and puts its JSON counts in
    `load.result`. `keepalive=True` reuses one connection per worker, like a
    connection pool, and never retries; `method="POST"` sends POSTs.
    On exit it asserts that the load spanned the event: its first request was
    sent before the block's body started and its last answer came after it
    ended, and at least `min_requests` were sent.
    """

    def __init__(
        self,
        host,
        url: str,
        concurrency: int = 20,
        # 10 workers send about 90 requests/s: a drained restart or a reload
        # (a window of 0.5-2 s) still meets dozens of them.
        pause: float = 0.1,
        # Long enough for a release on a busy machine (one took more than
        # 300 s beside three other scenarios).
        max_seconds: float = 900,
        max_requests: int = 1_000_000,
        cacert: str | None = None,
        timeout: float = 5.0,
        keepalive: bool = False,
        method: str = "GET",
        min_requests: int = 100,
        record: bool = False,
    ):
        self.host = host
        self.keepalive = keepalive
        self.method = method
        self.min_requests = min_requests
        self.cacert = cacert
        self.timeout = timeout
        self.pause = pause
        self.url = url
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.record = record
        # With record=True: one dict per request (sent, answered, status, instance, version, error).
        self.records: list[dict] = []
        self.result: dict = {}
        self._dir = f"/tmp/lbtest-load-{uuid.uuid4().hex[:12]}"
        self.event_started = 0.0
        self.event_ended = 0.0

    def __enter__(self) -> Load:
        d = self._dir
        self.host.run_expect([0], f"rm -rf {d} && mkdir -p {d}")
        self.host.run_expect([0], f"cat > {d}/lb_requests.py <<'LB_REQUESTS_EOF'\n{LB_REQUESTS}\nLB_REQUESTS_EOF")
        args = shlex.join(
            [
                f"--url={self.url}",
                f"--requests={self.max_requests}",
                f"--concurrency={self.concurrency}",
                f"--max-seconds={self.max_seconds}",
                f"--stop-file={d}/stop",
                f"--started-file={d}/started",
                f"--pause={self.pause}",
                f"--timeout={self.timeout}",
                f"--method={self.method}",
            ]
            + ([f"--cacert={self.cacert}"] if self.cacert else [])
            + (["--keepalive"] if self.keepalive else [])
            + ([f"--record={d}/records.jsonl"] if self.record else [])
        )
        self.host.run_expect(
            [0],
            f"setsid nohup python3 {d}/lb_requests.py {args} >{d}/result.json 2>{d}/stderr </dev/null &"
            f" echo $! >{d}/pid",
        )
        # The event starts once every worker has had an answer (bounded: 30 s).
        self.host.run_expect(
            [0], f"for i in $(seq 300); do [ -e {d}/started ] && exit 0; sleep 0.1; done; cat {d}/stderr; exit 1"
        )
        self.event_started = time.time()
        return self

    def __exit__(self, *exc) -> None:
        d = self._dir
        self.event_ended = time.time()
        self.host.run_expect([0], f"touch {d}/stop")
        # Bounded wait: requests in flight finish within their 5 s timeout.
        self.host.run_expect(
            [0], f"for i in $(seq 60); do kill -0 $(cat {d}/pid) 2>/dev/null || exit 0; sleep 0.5; done; exit 1"
        )
        out = self.host.check_output(f"cat {d}/result.json")
        assert out.strip(), self.host.check_output(f"cat {d}/stderr")
        self.result = json.loads(out.strip().splitlines()[-1])
        if self.record:
            lines = self.host.check_output(f"cat {d}/records.jsonl").splitlines()
            self.records = [json.loads(line) for line in lines]
        self.host.run(f"rm -rf {d}")
        print(json.dumps({k: v for k, v in self.result.items() if k != "timeline"}, sort_keys=True))
        if exc[0] is None:
            assert_covered(self.result, self.event_started, self.event_ended, self.min_requests)


def reloads(run: subprocess.CompletedProcess) -> int:
    """How many times the run reloaded nginx (its handler ran)."""
    return run.stdout.count("Reload the nginx service]")


def assert_reload_losses_bounded(result: dict, reload_count: int) -> None:
    """What a client that keeps its connections may lose at nginx reloads: a
    request sent on a connection just as the old worker closes it (HTTP/1.1
    keep-alive, or HTTP/2 as its GOAWAY crosses the request). Only such
    connection errors, no error answer, at most one per connection per
    reload (Load: one connection per worker; Http2Load: one at a time)."""
    assert set(result["statuses"]) <= {"200", "0", "000"}, result
    assert set(result.get("errors", {})) <= {"RemoteDisconnected", "ConnectionResetError", "BrokenPipeError"}, result
    assert result["failed"] <= result.get("concurrency", 1) * reload_count, (reload_count, result)


class Http2Load:
    """HTTPS load over HTTP/2, from curl on a test host, while an event runs.

    `with Http2Load(host, url, cacert) as h2: <event>`: curl sends `batch`
    requests per invocation over one HTTP/2 connection (`--http2`, verified
    against `cacert`), invocation after invocation until the block ends
    (bounded by `max_seconds`). `h2.result`: requests, ok, failed, statuses
    and HTTP versions as curl reports them, and the wall-clock time of the
    first request and of the last answer. On exit it asserts, like Load,
    that the load spanned the event and sent at least `min_requests`.
    """

    def __init__(self, host, url: str, cacert: str, batch: int = 20, max_seconds: int = 300, min_requests: int = 100):
        self.host = host
        self.url = url
        self.cacert = cacert
        self.batch = batch
        self.max_seconds = max_seconds
        self.min_requests = min_requests
        self.result: dict = {}
        self._dir = f"/tmp/lbtest-h2-{uuid.uuid4().hex[:12]}"
        self.event_started = 0.0
        self.event_ended = 0.0

    def __enter__(self) -> Http2Load:
        d = self._dir
        urls = " ".join([f"-o /dev/null {shlex.quote(self.url)}"] * self.batch)
        # A curl that stops before the end of its batch (killed, crashed)
        # leaves its unsent requests unanswered: each counts as a failure
        # ("none 000"), not as nothing.
        script = (
            f"end=$(( $(date +%s) + {self.max_seconds} )); date +%s.%N >{d}/first; touch {d}/out;"
            f" while [ ! -e {d}/stop ] && [ $(date +%s) -lt $end ]; do"
            f" before=$(wc -l <{d}/out);"
            f" curl -s --http2 --max-time 10 --cacert {shlex.quote(self.cacert)}"
            f" -w '%{{http_version}} %{{http_code}}\\n' {urls} >>{d}/out 2>/dev/null;"
            f" missing=$(( {self.batch} - $(wc -l <{d}/out) + before ));"
            f" while [ $missing -gt 0 ]; do echo 'none 000' >>{d}/out; missing=$((missing - 1)); done;"
            f" done; date +%s.%N >{d}/last"
        )
        self.host.run_expect([0], f"rm -rf {d} && mkdir -p {d}")
        self.host.run_expect(
            [0], f"setsid nohup bash -c {shlex.quote(script)} >/dev/null 2>&1 </dev/null & echo $! >{d}/pid"
        )
        # Started once the first batch is answered (bounded: 30 s).
        self.host.run_expect([0], f"for i in $(seq 300); do [ -s {d}/out ] && exit 0; sleep 0.1; done; exit 1")
        self.event_started = time.time()
        return self

    def __exit__(self, *exc) -> None:
        d = self._dir
        self.event_ended = time.time()
        self.host.run_expect([0], f"touch {d}/stop")
        self.host.run_expect([0], f"for i in $(seq 150); do [ -e {d}/last ] && exit 0; sleep 0.1; done; exit 1")
        lines = self.host.check_output(f"cat {d}/out").splitlines()
        first = float(self.host.check_output(f"cat {d}/first"))
        last = float(self.host.check_output(f"cat {d}/last"))
        self.host.run(f"rm -rf {d}")
        answers = [line.split() for line in lines if line.strip()]
        statuses: dict[str, int] = {}
        versions: dict[str, int] = {}
        for version, status in answers:
            statuses[status] = statuses.get(status, 0) + 1
            versions[version] = versions.get(version, 0) + 1
        ok = statuses.get("200", 0)
        self.result = {
            "url": self.url,
            "mode": "http2",
            "requests": len(answers),
            "ok": ok,
            "failed": len(answers) - ok,
            "statuses": statuses,
            "http_versions": versions,
            "first_sent": first,
            "last_answer": last,
        }
        print(json.dumps(self.result, sort_keys=True))
        if exc[0] is None:
            assert_covered(self.result, self.event_started, self.event_ended, self.min_requests)


# OpenSSL 3 on Debian allows TLS 1.0/1.1 only at security level 0: the client
# asks for it, so a refused handshake is the server's refusal.
TLS11_CLIENT = "openssl s_client -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' -brief"


def tls11_handshake(host, address: str, servername: str) -> tuple[bool, str]:
    """Whether a TLS 1.1 handshake from `host` to `address` (host:port) succeeds: (ok, what openssl said)."""
    run = host.run(f"echo | timeout 10 {TLS11_CLIENT} -connect {address} -servername {servername} 2>&1")
    said = run.stdout + run.stderr
    return run.rc == 0 and "Protocol version: TLSv1.1" in said, said


def tls11_client_works(host) -> str:
    """The control: the same client completes a TLS 1.1 handshake with a local
    openssl server that offers it. Returns what the client said."""
    tmp = f"/tmp/lbtest-tls11-{uuid.uuid4().hex[:8]}"
    host.run_expect(
        [0],
        f"mkdir -p {tmp} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
        f" -keyout {tmp}/k.pem -out {tmp}/c.pem -subj /CN=tls11 -days 1 2>/dev/null",
    )
    try:
        host.run_expect(
            [0],
            f"setsid nohup timeout 20 openssl s_server -quiet -accept 127.0.0.1:14433 -tls1_1"
            f" -cipher 'DEFAULT:@SECLEVEL=0' -cert {tmp}/c.pem -key {tmp}/k.pem >/dev/null 2>&1 </dev/null &",
        )
        host.run_expect(
            [0], "for i in $(seq 50); do ss -Htln 'sport = :14433' | grep -q . && exit 0; sleep 0.1; done; exit 1"
        )
        ok, said = tls11_handshake(host, "127.0.0.1:14433", "tls11")
    finally:
        host.run(f"pkill -f 'openssl s_server -quiet -accept 127.0.0.1:14433'; rm -rf {tmp}")
    assert ok, said
    return said
