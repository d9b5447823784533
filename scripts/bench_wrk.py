#!/usr/bin/env python3
"""Data-plane benchmark, run on a seed-topology host by lab/bench.yml.

With wrk (Debian's package), in one run of ROUNDS rounds, each of:
  * throughput: CONNECTIONS connections through nginx, then the same number
    spread directly over the instances (one wrk per instance, at once);
  * latency: one connection through nginx, then one straight to the first
    instance.
Rounds alternate the two sides, so a slower minute of a shared machine hits
both; each figure is the median over the rounds. Prints one JSON object:
requests/s, p50/p99 (ms) and errors of each, the ratio nginx/direct (median
of the rounds' ratios) and the p99 nginx adds at one connection.

usage: bench_wrk.py NGINX_URL INSTANCE_URL... [--connections N] [--seconds S] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
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


def median(runs: list[dict]) -> dict:
    """Per figure, the median over the rounds; requests and errors summed."""
    return {
        "connections": runs[0]["connections"],
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "requests": sum(r["requests"] for r in runs),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
        "errors": sum(r["errors"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("nginx")
    parser.add_argument("instances", nargs="+")
    parser.add_argument("--connections", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    wrk([args.nginx], args.connections, 2)  # warm-up: worker start, upstream keepalive
    through, direct, one_through, one_direct = [], [], [], []
    for _round in range(args.rounds):
        through.append(wrk([args.nginx], args.connections, args.seconds))
        direct.append(wrk(args.instances, args.connections, args.seconds))
        one_through.append(wrk([args.nginx], 1, args.seconds))
        one_direct.append(wrk(args.instances[:1], 1, args.seconds))
    ratios = [t["rps"] / d["rps"] for t, d in zip(through, direct, strict=True)]
    added = [t["p99_ms"] - d["p99_ms"] for t, d in zip(one_through, one_direct, strict=True)]
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "through_nginx": median(through),
                "direct": median(direct),
                "ratio": round(statistics.median(ratios), 3),
                "ratios": [round(r, 3) for r in ratios],
                "one_connection": {"through_nginx": median(one_through), "direct": median(one_direct)},
                "added_p99_ms": round(statistics.median(added), 3),
                "added_p99_ms_rounds": [round(a, 3) for a in added],
            }
        )
    )


if __name__ == "__main__":
    main()
