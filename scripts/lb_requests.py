#!/usr/bin/env python3
"""Send a bounded number of HTTP requests and count which instance answered.

The demo API answers every request with JSON holding ``instance``
(``<hostname>:<port>``) and ``version``. This client sends ``--requests``
requests, keeping ``--concurrency`` in flight, and stops early at
``--max-seconds`` or once ``--stop-file`` exists (continuous load during an
event). It prints one JSON object: totals, failures, statuses (0 is a
connection error) and the count per instance and per version.

Only point it at loopback or at the project's own test hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter


def fetch(url: str, timeout: float, context: ssl.SSLContext | None = None) -> tuple[int, str | None, str | None]:
    """Return (status, instance, version); status 0 means a connection error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            body = json.loads(response.read().decode())
            return response.status, body.get("instance"), body.get("version")
    except urllib.error.HTTPError as err:
        return err.code, None, None
    except (OSError, ValueError):
        return 0, None, None


def run(
    url: str,
    requests: int,
    concurrency: int,
    timeout: float,
    max_seconds: float,
    stop_file: str | None = None,
    pause: float = 0.0,
    cacert: str | None = None,
) -> dict:
    """Keep `concurrency` requests in flight until `requests` were sent, `max_seconds`
    passed or `stop_file` exists, whichever comes first; count every answer.
    Each worker waits `pause` seconds between its requests (paced load).
    HTTPS is verified, against `cacert` when given."""
    context = ssl.create_default_context(cafile=cacert) if cacert else None
    deadline = time.monotonic() + max_seconds
    statuses: Counter[int] = Counter()
    instances: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    lock = threading.Lock()
    sent = 0

    def more() -> bool:
        nonlocal sent
        with lock:
            if sent >= requests or time.monotonic() >= deadline:
                return False
            if stop_file and os.path.exists(stop_file):
                return False
            sent += 1
            return True

    def worker() -> None:
        while more():
            status, instance, version = fetch(url, timeout, context)
            with lock:
                statuses[status] += 1
                if instance:
                    instances[instance] += 1
                if version:
                    versions[version] += 1
            if pause:
                time.sleep(pause)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    return {
        "url": url,
        "concurrency": concurrency,
        "pause": pause,
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
    parser.add_argument("--stop-file", help="stop sending once this file exists (continuous load during an event)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds each worker waits between requests")
    parser.add_argument("--cacert", help="CA certificate(s) that HTTPS is verified against (default: the system's)")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 1_000_000 or not 1 <= args.concurrency <= 256:
        parser.error("--requests must be 1-1000000 and --concurrency 1-256")
    if not 0 < args.max_seconds <= 900 or not 0 <= args.pause <= 10:
        parser.error("--max-seconds must be within (0, 900] and --pause within [0, 10]")
    result = run(
        args.url,
        args.requests,
        args.concurrency,
        args.timeout,
        args.max_seconds,
        args.stop_file,
        args.pause,
        args.cacert,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
