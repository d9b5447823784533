#!/usr/bin/env python3
"""Send a bounded number of HTTP requests and count which instance answered.

The demo API answers every request with JSON holding ``instance``
(``<hostname>:<port>``) and ``version``. This client sends ``--requests``
requests (``--concurrency`` at a time, never past ``--max-seconds``) and
prints one JSON object: totals, failures and the count per instance.

Only point it at loopback or at the project's own test hosts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor


def fetch(url: str, timeout: float) -> tuple[int, str | None, str | None]:
    """Return (status, instance, version); status 0 means a connection error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read().decode())
            return response.status, body.get("instance"), body.get("version")
    except urllib.error.HTTPError as err:
        return err.code, None, None
    except (OSError, ValueError):
        return 0, None, None


def run(url: str, requests: int, concurrency: int, timeout: float, max_seconds: float) -> dict:
    deadline = time.monotonic() + max_seconds
    statuses: Counter[int] = Counter()
    instances: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    sent = 0
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        while sent < requests and time.monotonic() < deadline:
            batch = min(concurrency, requests - sent)
            for status, instance, version in pool.map(lambda _: fetch(url, timeout), range(batch)):
                statuses[status] += 1
                if instance:
                    instances[instance] += 1
                if version:
                    versions[version] += 1
            sent += batch
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    return {
        "url": url,
        "requests": sent,
        "ok": ok,
        "failed": sent - ok,
        "seconds": round(time.monotonic() - started, 3),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "instances": dict(sorted(instances.items())),
        "versions": dict(sorted(versions.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("--requests must be 1-100000 and --concurrency 1-256")
    result = run(args.url, args.requests, args.concurrency, args.timeout, args.max_seconds)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
