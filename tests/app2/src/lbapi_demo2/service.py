"""ASGI app `lbapi_demo2.service:application`: who answered, and its version.

The version is the installed distribution's (the artifact's), so a rolling
update to a new artifact shows in /health without setting API_VERSION.
"""

from __future__ import annotations

import os
import socket
from importlib.metadata import version

from fastapi import FastAPI

VERSION = version("lbapi-demo2")

application = FastAPI(title="lbapi demo 2")


def identity() -> dict[str, str]:
    return {
        "status": "ok",
        "app": "lbapi-demo2",
        "instance": f"{socket.gethostname()}:{os.environ.get('API_PORT', 'unknown')}",
        "version": VERSION,
    }


@application.get("/health")
async def health() -> dict[str, str]:
    return identity()


@application.api_route("/", methods=["GET", "POST"])
async def root() -> dict[str, str]:
    return identity()
