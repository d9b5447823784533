#!/usr/bin/env python3
"""Send a bounded number of HTTP requests and count which instance answered.

The demo API answers every request with JSON holding ``instance``
(``<hostname>:<port>``) and ``version``. This client sends ``--requests``
requests, keeping ``--concurrency`` in flight, and stops early at
``--max-seconds`` or once ``--stop-file`` exists (continuous load during an
event). It prints one JSON object: totals, failures, statuses (0 is a
connection error), error kinds, the count per instance and per version, and
the wall-clock time of the first request sent and the last answer, and a
timeline: per tenth of a second (key: wall-clock time x 10) the requests
sent in it and how many of them failed.

Two client modes:
  * per request (default): a new connection for every request
    (``Connection: close``), as urllib sends it;
  * ``--keepalive``: each worker keeps one persistent HTTP/1.1 connection and
    sends request after request on it, like a connection pool; a request
    that fails is not retried (the connection is opened again for the next).
``--method POST`` sends a small JSON body instead of a GET.
``--record FILE`` writes one JSON line per request: the wall-clock time it
was sent and answered, its status, instance, version and error (the drain
proof ties them to the journal's timestamps).

Only point it at loopback or at the project's own test hosts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from urllib.parse import urlsplit

BODY = b'{"probe": true}'


Result = tuple[int, str | None, str | None, str | None]


def fetch(url: str, timeout: float, context: ssl.SSLContext | None = None, method: str = "GET") -> Result:
    """One request on a new connection: (status, instance, version, error); status 0 is a connection error."""
    data = BODY if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = json.loads(response.read().decode())
            return response.status, body.get("instance"), body.get("version"), None
    except urllib.error.HTTPError as err:
        return err.code, None, None, None
    except (OSError, ValueError, http.client.HTTPException) as err:
        # HTTPException: a response cut short (IncompleteRead), as in keep-alive mode;
        # uncaught, it ended the worker and the failure had no name.
        return 0, None, None, type(getattr(err, "reason", err)).__name__


class KeepAlive:
    """One persistent HTTP/1.1 connection, reused request after request and never retried:
    what a connection pool does. After an error it is closed and opened anew for the next.
    Before reusing the connection it checks, as urllib3's pool does, that the
    server has not closed it meanwhile (readable while idle: FIN or TLS
    close_notify); if so it opens a new one (counted in `reopened`). A request
    sent just before the server's close arrives still fails: that race is
    what a keep-alive client can lose at an nginx reload."""

    def __init__(self, url: str, timeout: float, context: ssl.SSLContext | None, method: str):
        parts = urlsplit(url)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.method = method
        self.reopened = 0
        if parts.scheme == "https":
            self.connection = http.client.HTTPSConnection(
                parts.hostname, parts.port or 443, timeout=timeout, context=context or ssl.create_default_context()
            )
        else:
            self.connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)

    def dropped(self) -> bool:
        """Whether the idle connection was closed by the server (urllib3's is_connection_dropped)."""
        sock = self.connection.sock
        if sock is None:
            return False
        readable, _w, _x = select.select([sock], [], [], 0)
        return bool(readable)

    def fetch(self) -> Result:
        try:
            if self.dropped():
                self.connection.close()
                self.reopened += 1
            body = BODY if self.method == "POST" else None
            self.connection.request(self.method, self.path, body=body, headers={"Content-Type": "application/json"})
            response = self.connection.getresponse()
            raw = response.read()
            if response.will_close:
                self.connection.close()
            if not 200 <= response.status < 300:
                return response.status, None, None, None
            data = json.loads(raw.decode())
            return response.status, data.get("instance"), data.get("version"), None
        except (OSError, ValueError, http.client.HTTPException) as err:
            self.connection.close()
            return 0, None, None, type(err).__name__


def run(
    url: str,
    requests: int,
    concurrency: int,
    timeout: float,
    max_seconds: float,
    stop_file: str | None = None,
    pause: float = 0.0,
    cacert: str | None = None,
    keepalive: bool = False,
    method: str = "GET",
    started_file: str | None = None,
    record: str | None = None,
) -> dict:
    """Keep `concurrency` requests in flight until `requests` were sent, `max_seconds`
    passed or `stop_file` exists (then one more is sent), whichever comes first; count every answer.
    Each worker waits `pause` seconds between its requests (paced load).
    HTTPS is verified, against `cacert` when given. `started_file` is created
    once every worker has had an answer (the load runs at full concurrency)."""
    context = ssl.create_default_context(cafile=cacert) if cacert else None
    deadline = time.monotonic() + max_seconds
    statuses: Counter[int] = Counter()
    instances: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    sent = 0
    first_sent: float | None = None
    last_answer: float | None = None
    # Per tenth of a second of the wall clock (when the request was sent):
    # [sent, failed], so a test can count the requests and failures of a window.
    timeline: dict[int, list[int]] = {}
    records: list[dict] = []

    def more() -> float | None:
        """The wall-clock time the next request is sent at, or None to stop."""
        nonlocal sent, first_sent, stopping
        with lock:
            if sent >= requests or time.monotonic() >= deadline:
                return None
            if stop_file and os.path.exists(stop_file):
                # One request is still sent once the stop file is there, so
                # the last answer comes after the event that ended with it.
                if stopping:
                    return None
                stopping = True
            sent += 1
            now = time.time()
            if first_sent is None:
                first_sent = now
            timeline.setdefault(int(now * 10), [0, 0])[0] += 1
            return now

    answered: set[int] = set()
    reopened_per_worker: list[int] = []
    stopping = False

    def worker() -> None:
        nonlocal last_answer
        pooled = KeepAlive(url, timeout, context, method) if keepalive else None
        while (sent_at := more()) is not None:
            status, instance, version, error = pooled.fetch() if pooled else fetch(url, timeout, context, method)
            with lock:
                last_answer = time.time()
                if record:
                    records.append(
                        {
                            "sent": sent_at,
                            "answered": last_answer,
                            "status": status,
                            "instance": instance,
                            "version": version,
                            "error": error,
                        }
                    )
                if started_file and len(answered) < concurrency:
                    answered.add(threading.get_ident())
                    if len(answered) == concurrency:
                        with open(started_file, "w"):
                            pass
                if not 200 <= status < 300:
                    timeline[int(sent_at * 10)][1] += 1
                statuses[status] += 1
                if instance:
                    instances[instance] += 1
                if version:
                    versions[version] += 1
                if error:
                    errors[error] += 1
            if pause:
                time.sleep(pause)
        if pooled:
            pooled.connection.close()
            with lock:
                reopened_per_worker.append(pooled.reopened)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _worker in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    reopened = sum(reopened_per_worker)
    if record:
        with open(record, "w") as out:
            out.writelines(json.dumps(line) + "\n" for line in records)
    return {
        "url": url,
        "mode": "keepalive" if keepalive else "per-request",
        "method": method,
        "concurrency": concurrency,
        "pause": pause,
        "requests": sent,
        "ok": ok,
        "failed": sent - ok,
        "seconds": round(time.monotonic() - started, 3),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "instances": dict(sorted(instances.items())),
        "versions": dict(sorted(versions.items())),
        "errors": dict(sorted(errors.items())),
        # Keep-alive mode: connections the server had closed, found before reuse and opened again.
        "reopened": reopened,
        "first_sent": first_sent,
        "last_answer": last_answer,
        "timeline": {str(k): v for k, v in sorted(timeline.items())},
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
    parser.add_argument("--keepalive", action="store_true", help="reuse one HTTP/1.1 connection per worker, no retry")
    parser.add_argument("--method", choices=["GET", "POST"], default="GET")
    parser.add_argument("--started-file", help="created once every worker has had an answer")
    parser.add_argument("--record", help="write one JSON line per request (sent, answered, status, instance, ...)")
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
        args.keepalive,
        args.method,
        args.started_file,
        args.record,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
