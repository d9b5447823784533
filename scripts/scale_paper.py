"""A fleet on paper, rendered for real: 200 API hosts x 3 instances behind 4
load balancer pairs (make bench-scale --paper).

1. Writes the inventory (.cache/bench-scale/paper/): every host is
   `ansible_connection: local`, so no host is contacted and the facts the
   preflight gathers are the controller's; each host's own addresses come
   from the inventory (api_bind_address, lb_ha_address, the API hosts'
   firewall sources: the 8 load balancers).
2. Runs lab/scale_paper.yml on it: the preflight's validation and publishing
   on all 208 hosts, then the first load balancer's site (600 servers) and
   two rulesets from the roles' templates. Times the run and each render.
3. On a real load balancer of a bench fleet (--fleet: bs-lb1): the site goes
   in beside the host's own (plain HTTP on port 8080, its own upstream and
   logs), `nginx -t` must accept it, and nginx is reloaded while two clients
   send requests to the host's own site (one connection per request, GET;
   kept-alive connections, POST). Reports nginx -t's time, the reload's time
   (until every old worker has exited), nginx's memory (PSS of master and
   workers) before and after, and the clients' counts. The site is then
   removed and nginx reloaded back, checked by nginx -t first.

Prints a summary, then one JSON object on its last line.

usage: scale_paper.py --fleet DIR [--api-hosts 200] [--pairs 4]
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from bench_scale import LOADBALANCERS, PORTS, ROOT, role_default, run, tasks_of

WORK = ROOT / ".cache" / "bench-scale" / "paper"
FORKS = 10
# The first load balancer of the bench's fleet.
LB = LOADBALANCERS[0]
SITE = "paper-scale"
PAPER_PORT = 8080
# The certificate of the load balancer's own site (self-signed by default).
CERT = f"/etc/nginx/tls/{role_default('nginx_lb', 'nginx_lb_site_name')}/fullchain.pem"


def api_address(index: int) -> str:
    return f"10.32.{index // 250}.{index % 250 + 1}"


def write_inventory(api_count: int, pairs: int) -> Path:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    lbs = {f"paper-lb{n}": {"lb_ha_address": f"10.31.0.{n + 10}"} for n in range(1, 2 * pairs + 1)}
    pair_groups = {
        f"paper_pair{p}": {
            "hosts": {name: None for name in list(lbs)[2 * (p - 1) : 2 * p]},
            "vars": {"lb_ha_vip": f"10.31.0.{200 + p}"},
        }
        for p in range(1, pairs + 1)
    }
    data = {
        "all": {
            "vars": local,
            "children": {
                "loadbalancers": {
                    "hosts": lbs,
                    "children": pair_groups,
                    "vars": {
                        # Beside the real site of a bench load balancer:
                        # its own name, plain HTTP on its own port.
                        "nginx_lb_site_name": SITE,
                        "nginx_lb_listen_port": PAPER_PORT,
                        "nginx_lb_tls_mode": "off",
                        # The bench's containers have no IPv6.
                        "nginx_lb_listen_ipv6": False,
                        "nginx_lb_worker_connections": 9216,
                    },
                },
                "api_servers": {
                    "hosts": {
                        f"paper-api{index:03d}": {"api_bind_address": api_address(index)}
                        for index in range(1, api_count + 1)
                    },
                    "vars": {
                        "api_instances": [{"port": port} for port in PORTS],
                        "api_firewall_sources": [lb["lb_ha_address"] for lb in lbs.values()],
                    },
                },
            },
        }
    }
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "hosts.yml").write_text("---\n# Written by scripts/scale_paper.py.\n" + yaml.safe_dump(data))
    return WORK / "hosts.yml"


def render(inventory: Path) -> dict:
    """Run lab/scale_paper.yml on the paper fleet; its figures, also kept in render.json."""
    out = WORK / "out"
    out.mkdir(exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    log = WORK / "render.log"
    seconds = run(inventory, "lab/scale_paper.yml", log, FORKS, "-e", json.dumps({"scale_paper_dir": str(out)}))
    tasks = tasks_of(log)
    site = (out / "site.conf").read_text()
    rendered = {
        "run_seconds": seconds,
        "site_render_seconds": tasks.get("nginx_lb : Template the site to " + str(out / "site.conf")),
        "ruleset_render_seconds": sum(
            spent for task, spent in tasks.items() if task.startswith("firewall : Template the ruleset to")
        ),
        "slowest_tasks": sorted(tasks.items(), key=lambda item: -item[1])[:8],
        "site_servers": len(re.findall(r"^\s*server \d", site, re.MULTILINE)),
        "site_bytes": len(site.encode()),
        "rulesets": {path.name: path.stat().st_size for path in out.glob("nftables-*.conf")},
    }
    (WORK / "render.json").write_text(json.dumps(rendered) + "\n")
    return rendered


def on_lb(command: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["docker", "exec", LB, "sh", "-c", command], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and done.returncode != 0:
        sys.exit(f"scale-paper: on {LB}: {command!r} failed: {done.stdout}{done.stderr}")
    return done


def nginx_memory_kb() -> int:
    script = (
        "for p in $(pgrep -x nginx); do awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup; done"
        " | awk '{s+=$1} END {print s+0}'"
    )
    return int(on_lb(script).stdout.strip())


def start_client(name: str, *args: str) -> str:
    directory = f"/tmp/scale-paper-{name}"
    on_lb(f"rm -rf {directory} && mkdir -p {directory}")
    subprocess.run(["docker", "cp", str(ROOT / "scripts" / "lb_requests.py"), f"{LB}:{directory}/"], check=True)
    options = shlex.join(
        [
            "--url=https://localhost/",
            "--requests=1000000",
            "--concurrency=10",
            "--max-seconds=120",
            f"--stop-file={directory}/stop",
            f"--started-file={directory}/started",
            "--pause=0.02",
            "--timeout=5",
            f"--cacert={CERT}",
            *args,
        ]
    )
    on_lb(
        f"setsid nohup python3 {directory}/lb_requests.py {options}"
        f" >{directory}/result.json 2>{directory}/stderr </dev/null & echo $! >{directory}/pid"
    )
    on_lb(
        f"for i in $(seq 300); do [ -e {directory}/started ] && exit 0; sleep 0.1; done; cat {directory}/stderr; exit 1"
    )
    return directory


def stop_client(directory: str) -> dict:
    on_lb(f"touch {directory}/stop")
    on_lb(f"for i in $(seq 120); do kill -0 $(cat {directory}/pid) 2>/dev/null || exit 0; sleep 0.5; done; exit 1")
    result = json.loads(on_lb(f"cat {directory}/result.json").stdout.strip().splitlines()[-1])
    return {key: result[key] for key in ("mode", "method", "requests", "ok", "failed", "statuses", "errors")}


def timed_nginx_test() -> float:
    started = time.monotonic()
    done = on_lb("nginx -t 2>&1", check=False)
    seconds = round(time.monotonic() - started, 2)
    if done.returncode != 0:
        on_lb(f"rm -f /etc/nginx/sites-enabled/{SITE}", check=False)
        sys.exit(f"scale-paper: nginx -t refused the paper site on {LB}: {done.stdout}")
    return seconds


def reload_and_wait() -> float:
    """systemctl reload nginx; seconds until no worker of before the reload is left (bounded: 60 s)."""
    # The workers are the master's children (pgrep -f would also match this shell).
    script = (
        "old=$(pgrep -P $(cat /run/nginx.pid) | tr '\\n' ' '); start=$(date +%s.%N); systemctl reload nginx;"
        " for i in $(seq 1200); do left=0; for p in $old; do kill -0 $p 2>/dev/null && left=1; done;"
        " [ $left = 0 ] && break; sleep 0.05; done; end=$(date +%s.%N); [ $left = 0 ] || exit 1;"
        ' echo "$start $end"'
    )
    start, end = map(float, on_lb(script).stdout.split())
    return round(end - start, 2)


def on_a_real_lb(fleet: Path) -> dict:
    site = WORK / "out" / "site.conf"
    if not fleet.is_dir():
        sys.exit(f"scale-paper: no bench fleet at {fleet}: run make bench-scale with --paper")
    baseline_test = timed_nginx_test()
    memory_before = nginx_memory_kb()
    subprocess.run(["docker", "cp", str(site), f"{LB}:/etc/nginx/sites-enabled/{SITE}"], check=True)
    try:
        paper_test = timed_nginx_test()
        clients = [start_client("single"), start_client("pooled", "--keepalive", "--method=POST")]
        time.sleep(2)
        reload_seconds = reload_and_wait()
        time.sleep(2)
        results = [stop_client(directory) for directory in clients]
        memory_after = nginx_memory_kb()
        # nginx answers the paper site itself: its upstream's addresses do not exist.
        listening = on_lb(f"ss -Htln 'sport = :{PAPER_PORT}' | wc -l").stdout.strip()
    finally:
        on_lb(f"rm -f /etc/nginx/sites-enabled/{SITE}", check=False)
        if on_lb("nginx -t", check=False).returncode == 0:
            on_lb("systemctl reload nginx", check=False)
    return {
        "nginx_t_seconds_own_site": baseline_test,
        "nginx_t_seconds_with_paper_site": paper_test,
        "reload_seconds": reload_seconds,
        "memory_kb_before": memory_before,
        "memory_kb_after": memory_after,
        "paper_site_listening": listening == "1",
        "clients": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, required=True, help="the bench fleet's inventory directory")
    parser.add_argument("--api-hosts", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument(
        "--live-only", action="store_true", help="skip the render: use the last one's files and render.json"
    )
    options = parser.parse_args()
    if options.live_only:
        rendered = json.loads((WORK / "render.json").read_text())
    else:
        rendered = render(write_inventory(options.api_hosts, options.pairs))
    live = on_a_real_lb(options.fleet)
    hosts = options.api_hosts + 2 * options.pairs
    print(f"\nscale-paper: {options.api_hosts} API hosts x {len(PORTS)} instances behind {options.pairs} pairs")
    print(f"  preflight + renders: {rendered['run_seconds']} s for {hosts} hosts")
    print(
        f"  site render {rendered['site_render_seconds']} s: {rendered['site_servers']} servers,"
        f" {rendered['site_bytes']} bytes"
    )
    print(f"  rulesets render {rendered['ruleset_render_seconds']:.2f} s: {rendered['rulesets']}")
    print(
        f"  on {LB}: nginx -t {live['nginx_t_seconds_own_site']} s alone,"
        f" {live['nginx_t_seconds_with_paper_site']} s with it"
    )
    print(f"  reload under load: {live['reload_seconds']} s until the old workers exited")
    print(f"  nginx memory (PSS): {live['memory_kb_before']} kB before, {live['memory_kb_after']} kB with it")
    for client in live["clients"]:
        print(f"  client {client['mode']} {client['method']}: {client['requests']} requests, {client['failed']} failed")
    print(json.dumps({"rendered": rendered, "live": live}))


if __name__ == "__main__":
    main()
