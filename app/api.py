"""Small ASGI app that tells which instance answered.

Every response carries the instance identity ``<hostname>:<port>`` and the
deployed version, so a request sent through the load balancer shows where it
landed. The ``api`` role sets ``API_PORT`` and ``API_VERSION`` in each unit.

``/metrics`` answers in Prometheus' text format: requests and their latency
per route, method and status, counted by a middleware of this process (one
per uvicorn worker). ``X-Request-ID``, which the load balancer sets, is
echoed in the response and in the body.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import defaultdict

from fastapi import FastAPI, Query, Request
from fastapi.responses import PlainTextResponse

SLOW_CAP_SECONDS = 30.0
# Latency histogram bounds, seconds (Prometheus' `le`).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROUTES = ("/", "/health", "/slow", "/metrics")

app = FastAPI(title="rag-photographie demo API")


class Metrics:
    """Request counts and latency histograms per (route, method, status)."""

    def __init__(self) -> None:
        self.count: dict[tuple[str, str, str], int] = defaultdict(int)
        self.total: dict[tuple[str, str, str], float] = defaultdict(float)
        self.buckets: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0] * len(BUCKETS))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        self.count[key] += 1
        self.total[key] += seconds
        counts = self.buckets[key]
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[index] += 1

    def render(self) -> str:
        lines = [
            "# HELP api_requests_total Requests answered, by route, method and status.",
            "# TYPE api_requests_total counter",
        ]
        for (route, method, status), value in sorted(self.count.items()):
            lines.append(f'api_requests_total{{route="{route}",method="{method}",status="{status}"}} {value}')
        lines += [
            "# HELP api_request_duration_seconds Time to answer, by route, method and status.",
            "# TYPE api_request_duration_seconds histogram",
        ]
        for key, counts in sorted(self.buckets.items()):
            labels = 'route="{}",method="{}",status="{}"'.format(*key)
            for bound, value in zip(BUCKETS, counts, strict=True):
                lines.append(f'api_request_duration_seconds_bucket{{{labels},le="{bound}"}} {value}')
            lines.append(f'api_request_duration_seconds_bucket{{{labels},le="+Inf"}} {self.count[key]}')
            lines.append(f"api_request_duration_seconds_sum{{{labels}}} {self.total[key]:.6f}")
            lines.append(f"api_request_duration_seconds_count{{{labels}}} {self.count[key]}")
        return "\n".join(lines) + "\n"


METRICS = Metrics()


@app.middleware("http")
async def measure(request: Request, call_next):
    """Count every answer; unknown paths share the route label `other`."""
    start = time.perf_counter()
    response = await call_next(request)
    path = request.url.path
    route = path if path in ROUTES else "other"
    METRICS.observe(route, request.method, response.status_code, time.perf_counter() - start)
    request_id = request.headers.get("x-request-id")
    if request_id:
        response.headers["X-Request-ID"] = request_id
    return response


def identity(request: Request | None = None) -> dict[str, str]:
    """Return the JSON body shared by ``/`` and ``/health``."""
    port = os.environ.get("API_PORT", "unknown")
    body = {
        "status": "ok",
        "instance": f"{socket.gethostname()}:{port}",
        "version": os.environ.get("API_VERSION", "unknown"),
    }
    if request is not None and request.headers.get("x-request-id"):
        body["request_id"] = request.headers["x-request-id"]
    return body


@app.get("/health")
async def health() -> dict[str, str]:
    return identity()


@app.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> PlainTextResponse:
    """Prometheus text exposition of this process's counters."""
    return PlainTextResponse(METRICS.render(), media_type="text/plain; version=0.0.4")


@app.api_route("/", methods=["GET", "POST"])
async def root(request: Request) -> dict[str, str]:
    """GET or POST (the body is ignored): who answered, and the request id nginx gave it."""
    return identity(request)


@app.get("/slow")
async def slow(seconds: float = Query(1.0, ge=0)) -> dict[str, str | float]:
    """Hold the request for ``seconds`` (capped at 30) before answering."""
    waited = min(seconds, SLOW_CAP_SECONDS)
    await asyncio.sleep(waited)
    return {**identity(), "slept": waited}
