#!/usr/bin/env python3
"""Data-plane benchmark, run on a seed-topology host by lab/bench.yml.

With wrk (Debian's package), in one run:
  * throughput: CONNECTIONS connections through nginx, then the same number
    spread directly over the instances (one wrk per instance, at once);
  * latency: one connection through nginx, then one straight to the first
    instance.
Prints one JSON object: requests/s, p50/p99 (ms) and errors of each, the
ratio nginx/direct and the p99 nginx adds at one connection.

usage: bench_wrk.py NGINX_URL INSTANCE_URL... [--connections N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse(output: str) -> dict:
    """Requests/s, latency percentiles (ms), requests and errors from wrk --latency output."""
    percentiles = {
        int(p): float(value) * UNITS[unit]
        for p, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([0-9.]+)(us|ms|s)\s*$", output, re.M)
    }
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1)),
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "p50_ms": percentiles[50],
        "p99_ms": percentiles[99],
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def wrk(urls: list[str], connections: int, seconds: int) -> dict:
    """Run one wrk per URL at once, `connections` spread over them; sum the rates.
    Percentiles are those of the slowest run (the worst p50 and p99)."""
    per_url = max(connections // len(urls), 1)
    runs = [
        subprocess.Popen(
            [
                "wrk",
                "-t1" if len(urls) > 1 or connections == 1 else "-t2",
                f"-c{per_url}",
                f"-d{seconds}s",
                "--latency",
                url,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]
    results = [parse(run.communicate(timeout=seconds + 60)[0]) for run in runs]
    return {
        "connections": per_url * len(urls),
        "rps": round(sum(r["rps"] for r in results), 1),
        "requests": sum(r["requests"] for r in results),
        "p50_ms": round(max(r["p50_ms"] for r in results), 3),
        "p99_ms": round(max(r["p99_ms"] for r in results), 3),
        "errors": sum(r["errors"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("nginx")
    parser.add_argument("instances", nargs="+")
    parser.add_argument("--connections", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    wrk([args.nginx], args.connections, 2)  # warm-up: worker start, upstream keepalive
    through = wrk([args.nginx], args.connections, args.seconds)
    direct = wrk(args.instances, args.connections, args.seconds)
    one_through = wrk([args.nginx], 1, args.seconds)
    one_direct = wrk(args.instances[:1], 1, args.seconds)
    print(
        json.dumps(
            {
                "through_nginx": through,
                "direct": direct,
                "ratio": round(through["rps"] / direct["rps"], 3),
                "one_connection": {"through_nginx": one_through, "direct": one_direct},
                "added_p99_ms": round(one_through["p99_ms"] - one_direct["p99_ms"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
