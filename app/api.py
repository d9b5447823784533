"""Small ASGI app that tells which instance answered.

Every response carries the instance identity ``<hostname>:<port>`` and the
deployed version, so a request sent through the load balancer shows where it
landed. The ``api`` role sets ``API_PORT`` and ``API_VERSION`` in each unit.
"""

from __future__ import annotations

import asyncio
import os
import socket

from fastapi import FastAPI, Query

SLOW_CAP_SECONDS = 30.0

app = FastAPI(title="rag-photographie demo API")


def identity() -> dict[str, str]:
    """Return the JSON body shared by ``/`` and ``/health``."""
    port = os.environ.get("API_PORT", "unknown")
    return {
        "status": "ok",
        "instance": f"{socket.gethostname()}:{port}",
        "version": os.environ.get("API_VERSION", "unknown"),
    }


@app.get("/health")
async def health() -> dict[str, str]:
    return identity()


@app.api_route("/", methods=["GET", "POST"])
async def root() -> dict[str, str]:
    """GET or POST (the body is ignored): who answered."""
    return identity()


@app.get("/slow")
async def slow(seconds: float = Query(1.0, ge=0)) -> dict[str, str | float]:
    """Hold the request for ``seconds`` (capped at 30) before answering."""
    waited = min(seconds, SLOW_CAP_SECONDS)
    await asyncio.sleep(waited)
    return {**identity(), "slept": waited}
