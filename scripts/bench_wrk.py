#!/usr/bin/env python3
"""Data-plane benchmark, run on a seed-topology host by lab/bench.yml.

With wrk (Debian's package), in one run of ROUNDS rounds:
  * throughput: CONNECTIONS connections through each proxy target (NAME=URL,
    e.g. the project's site, a minimal nginx server, HAProxy, the site over
    HTTPS), and the same number spread directly over the instances (one wrk
    per instance, at once). Each round runs every target once, in an order
    that rotates from round to round, so a slower minute of a shared machine
    hits every target; a target's ratio is its requests/s over the direct
    requests/s of the same round, and its figure the median over the rounds;
  * latency: one connection through the first target and one straight to
    the first instance, p99 each;
  * with --handshake NAME=HOST:PORT: new TLS handshakes per second, one
    connection per request (`openssl s_time -new`), and the same with the
    session resumed (`-reuse`), and whether openssl s_client's sessions were
    resumed (TLS 1.2 and 1.3).
Prints one JSON object.

usage: bench_wrk.py --direct URL [--direct URL...] --target NAME=URL [--target NAME=URL...]
                    [--connections N] [--seconds S] [--rounds R] [--handshake NAME=HOST:PORT]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import time

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


def s_time(address: str, mode: str, seconds: int) -> float:
    """TLS connections per second of `openssl s_time` (-new: a full handshake each; -reuse: resumed)."""
    run = subprocess.run(
        ["openssl", "s_time", "-connect", address, f"-{mode}", "-time", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    found = re.search(r"(\d+) connections in ([0-9.]+)s", run.stdout)
    if not found:
        raise SystemExit(f"openssl s_time -{mode} said: {run.stdout}{run.stderr}")
    return round(int(found.group(1)) / float(found.group(2)), 1)


def resumed(address: str, servername: str) -> dict:
    """Session resumption, proven with openssl s_client: TLS 1.2 with -reconnect (a full
    handshake, then 5 that ask to resume); TLS 1.3 with a session saved from a first
    connection (-sess_out, after the server's post-handshake ticket) and offered by a second
    (-sess_in). Counts of New and Reused handshakes."""

    def s_client(*extra: str, hold: float = 0.0) -> str:
        """One s_client run; its connection stays open `hold` s (a TLS 1.3 ticket comes
        after the handshake: a client that leaves at once may not have read it)."""
        with subprocess.Popen(
            ["openssl", "s_client", "-connect", address, "-servername", servername, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as client:
            time.sleep(hold)
            return client.communicate("", timeout=60)[0]

    tls12 = s_client("-tls1_2", "-reconnect")
    with tempfile.TemporaryDirectory() as tmp:
        session = f"{tmp}/session.pem"
        first = s_client("-tls1_3", "-sess_out", session, hold=1.0)
        second = s_client("-tls1_3", "-sess_in", session)
    return {
        "tls1_2_reconnect": {"new": tls12.count("New, TLSv1.2"), "reused": tls12.count("Reused, TLSv1.2")},
        "tls1_3_session": {
            "first": "Reused" if "Reused," in first else "New",
            "second": "Reused" if "Reused," in second else "New",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--direct", action="append", required=True, help="an instance's URL")
    parser.add_argument("--target", action="append", required=True, help="NAME=URL of a proxy")
    parser.add_argument("--connections", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--handshake", help="NAME=HOST:PORT of a TLS listener")
    parser.add_argument("--servername", default="localhost")
    args = parser.parse_args()
    targets = dict(target.split("=", 1) for target in args.target)
    names = list(targets)
    for url in targets.values():
        wrk([url], args.connections, 2)  # warm-up: worker start, upstream keepalive, TLS
    through: dict[str, list[dict]] = {name: [] for name in names}
    direct: list[dict] = []
    ratios: dict[str, list[float]] = {name: [] for name in names}
    one_through, one_direct = [], []
    for index in range(args.rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        results = {"direct": wrk(args.direct, args.connections, args.seconds)}
        for name in order:
            results[name] = wrk([targets[name]], args.connections, args.seconds)
        direct.append(results["direct"])
        for name in names:
            through[name].append(results[name])
            ratios[name].append(results[name]["rps"] / results["direct"]["rps"])
        one_through.append(wrk([targets[names[0]]], 1, args.seconds))
        one_direct.append(wrk(args.direct[:1], 1, args.seconds))
    added = [t["p99_ms"] - d["p99_ms"] for t, d in zip(one_through, one_direct, strict=True)]
    report = {
        "rounds": args.rounds,
        "connections": args.connections,
        "seconds": args.seconds,
        "direct": median(direct),
        "targets": {
            name: {
                **median(through[name]),
                "ratio": round(statistics.median(ratios[name]), 3),
                "ratios": [round(r, 3) for r in ratios[name]],
            }
            for name in names
        },
        "one_connection": {"through": names[0], "added_p99_ms": round(statistics.median(added), 3)},
    }
    if args.handshake:
        name, address = args.handshake.split("=", 1)
        report["tls"] = {
            "target": name,
            "new_handshakes_per_s": s_time(address, "new", args.seconds),
            "resumed_handshakes_per_s": s_time(address, "reuse", args.seconds),
            "s_client_reconnect": resumed(address, args.servername),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
