"""make bench-scale: how the time of a run grows with the fleet.

For each size N (default 2, 8 and 24): a load balancer pair (bs-lb1, bs-lb2,
keepalived with a floating address) in front of N API hosts (bs-api01...)
with three instances each, all fresh systemd containers as in the tests,
reached over `docker exec`. It times four runs of site.yml:

  first   the first converge of fresh hosts;
  no-op   the same again, nothing to change;
  add     one more instance (8004) on bs-api01, from its host_vars;
  check   --check --diff on the converged fleet.

Then it prints a table, the time each added API host costs (the slope of a
least-squares line through the sizes, and of each segment between two
sizes: a later segment much steeper than an earlier one is a cost that grows
faster than the fleet), and the tasks of the no-op whose time grows fastest.
The fleet of each size is removed before the next is made; --keep leaves
the last one up. The figures also go to .cache/bench-scale/report.json.

With --paper, it then runs scripts/scale_paper.py on the last fleet (kept
for it): 200 API hosts on paper.

usage: bench_scale.py [--sizes 2,8,24] [--forks N] [--keep] [--paper [--paper-api-hosts 200]]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench-scale"
NETWORK = "lbapi-bench-scale"
# Docker gives its containers addresses from the iprange only: the floating
# address is one no container gets.
IPAM = [{"subnet": "10.213.90.0/24", "iprange": "10.213.90.0/25", "gateway": "10.213.90.1"}]
VIP = "10.213.90.200"
LOADBALANCERS = ["bs-lb1", "bs-lb2"]


def role_default(role: str, name: str):
    """A variable's default, from the role's defaults/main.yml."""
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())[name]


# The api role's default instances (8001-8003), and one more.
PORTS = [instance["port"] for instance in role_default("api", "api_instances")]
ADDED_PORT = max(PORTS) + 1
# The task lines of profile_tasks: "role : name ---- 1.23s".
TASK_LINE = re.compile(r"^(?P<task>.+?) -{3,} (?P<seconds>[0-9.]+)s$")
RECAP_LINE = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)"
    r"\s+unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)"
)


def api_hosts(size: int) -> list[str]:
    return [f"bs-api{index:02d}" for index in range(1, size + 1)]


# Each systemd container takes about 5 inotify instances of the host's root
# (its .path units, journald, udev): past the host's limit (128 on Debian),
# a container's systemd never finishes booting.
INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_HOST = 8


def ensure_inotify(hosts: int) -> None:
    """Raise the host's inotify instance limit for `hosts` containers, or say how."""
    wanted = 128 + INOTIFY_PER_HOST * hosts
    current = int(INOTIFY.read_text())
    if current >= wanted:
        return
    try:
        INOTIFY.write_text(f"{wanted}\n")
    except OSError as error:
        sys.exit(
            f"bench-scale: {hosts} systemd containers need fs.inotify.max_user_instances >= {wanted}"
            f" (it is {current}): run `sysctl -w fs.inotify.max_user_instances={wanted}` as root ({error})"
        )
    print(f"bench-scale: raised fs.inotify.max_user_instances from {current} to {wanted}", flush=True)


def write_inventory(size: int, distro: str) -> Path:
    """The fleet of `size` API hosts behind the pair, as a directory -i takes."""
    directory = WORK / f"n{size}"
    (directory / "host_vars").mkdir(parents=True, exist_ok=True)
    for stale in (directory / "host_vars").glob("*.yml"):
        stale.unlink()
    data = {
        "all": {
            "vars": {
                "ansible_connection": "community.docker.docker",
                "ansible_user": "root",
                # Read by lab/create.yml and lab/destroy.yml only.
                "lab_image": f"ansible-lb-systemd:{distro}",
                "lab_network": NETWORK,
                "lab_network_ipam": IPAM,
            },
            "children": {
                "loadbalancers": {
                    "hosts": dict.fromkeys(LOADBALANCERS, {}),
                    "vars": {
                        "lb_ha_vip": VIP,
                        # keepalived sends VRRP adverts.
                        "lab_capabilities": ["NET_RAW"],
                        # The containers' open-file limit is 20,000, hard
                        # (as in the lab and the tests).
                        "nginx_lb_worker_connections": 9216,
                    },
                },
                "api_servers": {
                    "hosts": dict.fromkeys(api_hosts(size), {}),
                    "vars": {"api_instances": [{"port": port} for port in PORTS]},
                },
            },
        }
    }
    (directory / "hosts.yml").write_text("---\n# Written by scripts/bench_scale.py.\n" + yaml.safe_dump(data))
    return directory


def add_instance(inventory: Path) -> None:
    (inventory / "host_vars" / "bs-api01.yml").write_text(
        yaml.safe_dump({"api_instances": [{"port": port} for port in (*PORTS, ADDED_PORT)]})
    )


def environment(forks: int) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        # The bench's facts apart from the lab's.
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(WORK / "facts"),
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
        "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all",
        "PROFILE_TASKS_SORT_ORDER": "none",
    }


def run(inventory: Path, playbook: str, log: Path, forks: int, *args: str) -> float:
    """ansible-playbook, timed; a failed run stops the bench with its log's tail."""
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), playbook, *args]
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            command, cwd=ROOT, env=environment(forks), stdout=out, stderr=subprocess.STDOUT, check=False, timeout=3600
        )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.stderr.write("".join(log.read_text().splitlines(keepends=True)[-40:]))
        sys.exit(f"bench-scale: {' '.join(command[2:])} failed (rc {done.returncode}), log: {log}")
    return round(seconds, 1)


def tasks_of(log: Path) -> dict[str, float]:
    """Each task's time from the profile_tasks recap (summed when a name repeats)."""
    text = log.read_text()
    times: dict[str, float] = {}
    for line in text[text.rfind("TASKS RECAP") :].splitlines():
        match = TASK_LINE.match(line.strip())
        if match:
            times[match["task"]] = times.get(match["task"], 0.0) + float(match["seconds"])
    return times


def recap(log: Path) -> dict[str, dict[str, int]]:
    return {
        match["host"]: {key: int(match[key]) for key in ("ok", "changed", "unreachable", "failed")}
        for match in map(RECAP_LINE.match, log.read_text().splitlines())
        if match
    }


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares seconds per added API host."""
    count = len(points)
    xs = [x for x, y in points]
    mean_x = sum(xs) / count
    mean_y = sum(y for x, y in points) / count
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def measure(size: int, distro: str, forks: int) -> dict:
    inventory = write_inventory(size, distro)
    logs = inventory / "logs"
    logs.mkdir(exist_ok=True)
    hosts = size + len(LOADBALANCERS)
    print(f"bench-scale: N={size}: creating {hosts} hosts", flush=True)
    ensure_inotify(hosts)
    run(inventory, "lab/destroy.yml", logs / "destroy-before.log", forks)
    run(inventory, "lab/create.yml", logs / "create.log", forks)
    result: dict = {"api_hosts": size, "hosts": hosts, "forks": forks}
    for name, args in (("first", ()), ("noop", ()), ("add", ()), ("check", ("--check", "--diff"))):
        if name == "add":
            add_instance(inventory)
        result[name] = run(inventory, "site.yml", logs / f"{name}.log", forks, *args)
        print(f"bench-scale: N={size}: {name} {result[name]} s", flush=True)
    noop, add, check = (recap(logs / f"{name}.log") for name in ("noop", "add", "check"))
    # What each run changed: nothing on the no-op and the check, and on the
    # add run the added instance's host and the load balancers' upstream.
    result["noop_changed"] = sorted(host for host, counts in noop.items() if counts["changed"])
    result["add_changed"] = sorted(host for host, counts in add.items() if counts["changed"])
    result["check_changed"] = sorted(host for host, counts in check.items() if counts["changed"])
    result["noop_tasks"] = tasks_of(logs / "noop.log")
    return result


def report(results: list[dict]) -> dict:
    columns = ("first", "noop", "add", "check")
    print("\nbench-scale: site.yml on a load balancer pair + N API hosts (3 instances each), over docker exec")
    print(f"  forks {results[0]['forks']}; seconds of wall time on {os.cpu_count()} cores\n")
    print("  | API hosts | hosts | first converge | no-op | add one instance | --check --diff |")
    print("  |---|---|---|---|---|---|")
    for row in results:
        print(f"  | {row['api_hosts']} | {row['hosts']} | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    slopes = {column: round(slope([(row["api_hosts"], row[column]) for row in results]), 2) for column in columns}
    print("\n  seconds per added API host (least squares): " + ", ".join(f"{c} {s}" for c, s in slopes.items()))
    segments = {}
    for earlier, later in itertools.pairwise(results):
        span = later["api_hosts"] - earlier["api_hosts"]
        key = f"{earlier['api_hosts']}->{later['api_hosts']}"
        segments[key] = {column: round((later[column] - earlier[column]) / span, 2) for column in columns}
        print(f"  per host from N={key}: " + ", ".join(f"{c} {s}" for c, s in segments[key].items()))
    growth = []
    if len(results) > 1:
        small, large = results[0], results[-1]
        for task, seconds in large["noop_tasks"].items():
            before = small["noop_tasks"].get(task)
            if before:
                growth.append((round(seconds - before, 2), task, before, seconds))
        growth.sort(reverse=True)
        print(f"\n  the no-op's tasks that grew most from N={small['api_hosts']} to N={large['api_hosts']}:")
        for added, task, before, seconds in growth[:10]:
            print(f"    +{added:6.2f} s  {task} ({before:.2f} -> {seconds:.2f} s)")
    for row in results:
        for column in ("noop_changed", "check_changed"):
            if row[column]:
                print(f"  N={row['api_hosts']}: the {column.split('_', maxsplit=1)[0]} run changed {row[column]}")
    return {
        "results": [{k: v for k, v in row.items() if k != "noop_tasks"} for row in results],
        "slopes": slopes,
        "segments": segments,
        "noop_task_growth": [{"task": t, "small": b, "large": s} for added, t, b, s in growth[:20]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,8,24", help="API host counts, comma-separated")
    parser.add_argument("--forks", type=int, default=int(os.environ.get("BENCH_SCALE_FORKS", "10")))
    parser.add_argument("--distro", default=os.environ.get("MOLECULE_DISTRO", "debian12"))
    parser.add_argument("--keep", action="store_true", help="leave the last fleet up")
    parser.add_argument("--paper", action="store_true", help="then render 200 API hosts on paper (keeps the fleet)")
    parser.add_argument("--paper-api-hosts", type=int, default=200, help="API hosts of the paper fleet")
    options = parser.parse_args()
    sizes = sorted(int(size) for size in options.sizes.split(","))
    if not sizes or sizes[0] < 1:
        sys.exit("bench-scale: --sizes wants positive API host counts, e.g. 2,8,24")
    WORK.mkdir(parents=True, exist_ok=True)
    results = []
    for index, size in enumerate(sizes):
        results.append(measure(size, options.distro, options.forks))
        last = index == len(sizes) - 1
        if not (last and (options.keep or options.paper)):
            run(WORK / f"n{size}", "lab/destroy.yml", WORK / f"n{size}" / "logs" / "destroy.log", options.forks)
    summary = report(results)
    if options.paper:
        paper = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "scale_paper.py"),
                f"--fleet={WORK / f'n{sizes[-1]}'}",
                f"--api-hosts={options.paper_api_hosts}",
            ],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
        )
        print(paper.stdout, end="")
        if paper.returncode != 0:
            sys.stderr.write(paper.stderr[-4000:])
            sys.exit(f"bench-scale: the {options.paper_api_hosts}-host paper run failed")
        summary["paper"] = json.loads(paper.stdout[paper.stdout.rindex("\n{") :])
        if not options.keep:
            run(WORK / f"n{sizes[-1]}", "lab/destroy.yml", WORK / "destroy-paper.log", options.forks)
    (WORK / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nbench-scale: report in {WORK / 'report.json'}")


if __name__ == "__main__":
    main()
