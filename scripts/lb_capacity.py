#!/usr/bin/env python3
"""Hold many concurrent client connections through a load balancer.

A capacity probe, not a throughput benchmark. In one bounded run:
  1. open: ``--connections`` HTTP/1.1 keep-alive connections (TLS when the
     URL is https), ``--open-concurrency`` at a time; each sends one GET and
     reads its answer, so every connection is a real kept-alive client
     connection, idle in nginx's keepalive state. An open that times out
     (connect, handshake or first answer) is tried again, up to
     ``--open-attempts`` in all, and counted in ``open_retried``: on a busy
     machine this client's own event loop, doing thousands of TLS handshakes,
     is the slow side. A reset, an end of stream or a refusal is an error at
     once: that is the server's answer;
  2. hold: ``--active`` of them send request after request (GET and POST in
     turn) for ``--seconds``, while the others stay idle. A connection the
     server ends cleanly (``Connection: close``, after keepalive_requests) is
     opened again and counted as ``reopened``, as a pool does; anything else
     is an error;
  3. sweep: every idle connection sends one more GET, the longest idle
     first, proving it was held open the whole time and not reset (the
     refresh below goes on meanwhile for the ones not swept yet).
With ``--idle-limit S``, an idle connection that has sent nothing for S
seconds sends one GET (phase ``refresh``), as a pool keeps its idle
connections alive: a run slowed down by a busy machine then never outlasts
the server's keep-alive timeout, which would close them on purpose.
While holding, it prints ``{"event": "held", ...}`` on a line of its own,
so a caller can read the server's state with every connection open (or,
with ``--held-file``, it writes that line to a file). At the end it prints
one JSON object: connections opened, requests (and those sent but not
answered), statuses, error kinds per phase, opens tried again, and how long
each phase took.

Every step has a timeout and the whole run a deadline (``--max-seconds``):
it stops by itself. Only point it at loopback or at the project's own test
hosts.

usage: lb_capacity.py URL [--connections N] [--active N] [--seconds S]
                          [--open-concurrency N] [--open-attempts N] [--step-timeout S]
                          [--processes N] [--held-file FILE] [--idle-limit S]
                          [--cacert FILE] [--servername NAME] [--resolve ADDRESS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import queue
import resource
import ssl
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

BODY = b'{"probe": true}'
PHASES = ("open", "refresh", "hold", "sweep")


class Closed(Exception):
    """The server ended the connection cleanly after its answer (Connection: close)."""


def error_kind(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, ConnectionResetError):
        return "reset"
    if isinstance(err, asyncio.IncompleteReadError):
        return "eof"
    return type(err).__name__


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.url)
        self.tls = url.scheme == "https"
        self.host = args.resolve or url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self.authority = url.netloc
        self.path = url.path or "/"
        self.servername = args.servername or url.hostname
        self.context: ssl.SSLContext | None = None
        if self.tls:
            self.context = ssl.create_default_context(cafile=args.cacert)
        self.statuses: Counter = Counter()
        self.errors: dict[str, Counter] = {phase: Counter() for phase in PHASES}
        self.requests = dict.fromkeys(PHASES, 0)
        self.reopened = 0
        self.open_retried: Counter = Counter()
        self.unanswered: Counter = Counter()
        # Failures on connections the client itself left idle past the
        # server's keepalive timeout (--server-idle-timeout): the server was
        # right to close them, so they are not errors; they are counted apart.
        self.expired: Counter = Counter()
        self.server_idle_timeout = args.server_idle_timeout
        self.timeout = args.step_timeout

    def failed(self, phase: str, err: BaseException, idle: float) -> None:
        """Count a failed request of a kept connection idle ``idle`` seconds when it was sent."""
        # A margin (1 s, less for a short timeout): the request still has to reach the server.
        margin = min(1.0, self.server_idle_timeout / 10)
        if self.server_idle_timeout and idle >= self.server_idle_timeout - margin:
            self.expired[phase] += 1
        else:
            self.errors[phase]["closed" if isinstance(err, Closed) else error_kind(err)] += 1

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.context,
                server_hostname=self.servername if self.tls else None,
                limit=1 << 16,
            ),
            self.timeout,
        )

    async def request(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], method: str, phase: str, path: str | None = None
    ) -> None:
        """One request on the connection (to ``path``, default the URL's); raises Closed
        when the server ends it cleanly. A request sent and not answered (any other
        exception) is counted in ``unanswered``."""
        self.requests[phase] += 1
        try:
            status, fields = await self.exchange(conn, method, path or self.path)
        except BaseException:
            self.unanswered[phase] += 1
            raise
        self.statuses[status] += 1
        if fields.get("connection", "").lower() == "close":
            raise Closed

    async def exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], method: str, path: str
    ) -> tuple[int, dict]:
        reader, writer = conn
        body = BODY if method == "POST" else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.authority}\r\nUser-Agent: lb_capacity\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await asyncio.wait_for(writer.drain(), self.timeout)
        header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _colon, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if "content-length" in fields:
            await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), self.timeout)
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), self.timeout)).split(b";")[0], 16)
                await asyncio.wait_for(reader.readexactly(size + 2), self.timeout)
                if size == 0:
                    break
        return status, fields


async def close(conn) -> None:
    conn[1].close()
    try:
        await asyncio.wait_for(conn[1].wait_closed(), 2)
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    except asyncio.CancelledError:
        # A TLS stream that failed (the server's close_notify with data
        # after it) cancels its own close waiter: that is this connection's
        # error, counted by the caller, not a reason to stop the whole run.
        # The run's own cancellation (its --max-seconds) still propagates.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


def announce(held: dict, held_file: str | None) -> None:
    """Say that every connection is open: a line on stdout, and the file."""
    print(json.dumps(held), flush=True)
    if held_file:
        with open(held_file, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(held) + "\n")


async def run(args: argparse.Namespace, sync=None) -> dict:
    """One event loop's run. With ``sync`` (a coroutine function), it is one
    process of several: once its connections are open it awaits
    ``sync(held)``, refreshing them meanwhile, and holds when that returns."""
    client = Client(args)
    started = time.monotonic()
    gate = asyncio.Semaphore(args.open_concurrency)
    # The refresh has a gate of its own: behind the open phase's queue of
    # thousands, a refresh would wait until every connection had opened, and
    # on a busy machine (an open phase of 91 s against nginx's 75 s
    # keepalive_timeout) the first ones would be closed by then.
    refresh_gate = asyncio.Semaphore(args.open_concurrency)
    # Idle connections, with the time of their last answer, and the ones in use.
    pool: dict[tuple, float] = {}
    in_use: set[int] = set()

    async def open_one() -> tuple | None:
        async with gate:
            for attempt in range(1, args.open_attempts + 1):
                conn = None
                try:
                    conn = await client.connect()
                    await client.request(conn, "GET", "open")
                    pool[conn] = time.monotonic()
                    return conn
                except Closed:
                    kind = "closed"
                except Exception as err:  # noqa: BLE001 - every failure is counted by kind
                    kind = error_kind(err)
                if conn is not None:
                    await close(conn)
                if kind != "timeout" or attempt == args.open_attempts:
                    client.errors["open"][kind] += 1
                    return None
                client.open_retried[kind] += 1
            return None

    async def refresh(stop: asyncio.Event) -> None:
        """With --idle-limit: an idle connection that has not sent a request for that
        long sends one, as a pool's idle connection does before the server's
        keepalive_timeout would close it (a slow run would otherwise outlast it)."""

        async def one(conn: tuple) -> None:
            # Marked in use by the loop below, before waiting for the gate:
            # the busy connections are chosen meanwhile, and one connection
            # never carries two requests at once.
            async with refresh_gate:
                idle = time.monotonic() - pool.get(conn, time.monotonic())
                try:
                    await client.request(conn, "GET", "refresh", args.refresh_path)
                    pool[conn] = time.monotonic()
                except Exception as err:  # noqa: BLE001 - Closed included: an error here
                    client.failed("refresh", err, idle)
                    pool.pop(conn, None)
                    await close(conn)
                in_use.discard(id(conn))

        # Each second, the connections that came due join the queue: no
        # waiting for the previous ones to finish first.
        pending: set[asyncio.Task] = set()
        while not stop.is_set():
            now = time.monotonic()
            due = [conn for conn, used in pool.items() if now - used > args.idle_limit and id(conn) not in in_use]
            in_use.update(id(conn) for conn in due)
            for conn in due:
                task = asyncio.create_task(one(conn))
                pending.add(task)
                task.add_done_callback(pending.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)
        await asyncio.gather(*pending)

    stop_refresh = asyncio.Event()
    refresher = asyncio.create_task(refresh(stop_refresh)) if args.idle_limit > 0 else None
    conns = [conn for conn in await asyncio.gather(*(open_one() for _index in range(args.connections))) if conn]
    opened_in = time.monotonic() - started
    held = {"event": "held", "open": len(conns), "opened_in_s": round(opened_in, 2), "time": time.time()}
    if sync is None:
        announce(held, args.held_file)
    else:
        await sync(held)

    # The busy connections: idle ones no refresh is using now.
    active = [conn for conn in conns if conn in pool and id(conn) not in in_use][: args.active]
    for conn in active:
        pool.pop(conn)
        in_use.add(id(conn))
    hold_until = time.monotonic() + args.seconds

    async def busy(conn) -> None:
        turn = 0
        while time.monotonic() < hold_until:
            turn += 1
            try:
                await client.request(conn, "POST" if turn % 2 else "GET", "hold")
            except Closed:
                await close(conn)
                client.reopened += 1
                try:
                    conn = await client.connect()
                except Exception as err:  # noqa: BLE001
                    client.errors["hold"][error_kind(err)] += 1
                    return
            except Exception as err:  # noqa: BLE001
                client.errors["hold"][error_kind(err)] += 1
                await close(conn)
                return
        await close(conn)

    hold_started = time.monotonic()
    await asyncio.gather(*(busy(conn) for conn in active))
    hold_took = time.monotonic() - hold_started
    # Every idle connection still open, the longest idle first.
    idle = sorted(pool, key=pool.get)

    async def sweep(conn) -> None:
        async with gate:
            # The refresh goes on while the sweep waits for its gate: a
            # sweep through a slow API (77 s for 9,800 requests on a starved
            # client) outlasts nginx's keepalive_timeout. A connection whose
            # refresh is out is swept once it is answered; one the refresh
            # lost (counted there) is not swept.
            while id(conn) in in_use:
                await asyncio.sleep(0.05)
            if conn not in pool:
                return
            idle = time.monotonic() - pool.pop(conn)
            try:
                await client.request(conn, "GET", "sweep")
            except Exception as err:  # noqa: BLE001 - Closed included: an error here
                client.failed("sweep", err, idle)
            await close(conn)

    sweep_started = time.monotonic()
    await asyncio.gather(*(sweep(conn) for conn in idle))
    sweep_took = time.monotonic() - sweep_started
    if refresher:
        stop_refresh.set()
        await refresher
    return {
        "url": args.url,
        "connections": args.connections,
        "opened": len(conns),
        "active": len(active),
        "idle": client.requests["sweep"],
        "requests": client.requests,
        "statuses": {str(code): n for code, n in sorted(client.statuses.items())},
        "errors": {phase: dict(kinds) for phase, kinds in client.errors.items()},
        "expired": dict(client.expired),
        "reopened": client.reopened,
        "open_retried": dict(client.open_retried),
        "unanswered": dict(client.unanswered),
        "seconds": {
            "open": round(opened_in, 2),
            "hold": round(hold_took, 2),
            "sweep": round(sweep_took, 2),
        },
        "hold_requests_per_s": per_second(client.requests["hold"], hold_took),
    }


def shard(args: argparse.Namespace, index: int, processes: int) -> argparse.Namespace:
    """The part of the run that process ``index`` of ``processes`` does."""
    part = argparse.Namespace(**vars(args))
    for name in ("connections", "active"):
        total = getattr(args, name)
        setattr(part, name, total // processes + (1 if index < total % processes else 0))
    part.held_file = None
    return part


def per_second(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds else 0


def added(counts) -> dict:
    """The sum of several {key: count} mappings."""
    total: Counter = Counter()
    for count in counts:
        total.update(count)
    return dict(sorted(total.items()))


def merge(parts: list[dict], args: argparse.Namespace) -> dict:
    """One result from the processes' results: counts summed, times the longest."""
    merged: dict = {"url": args.url, "connections": args.connections, "processes": len(parts)}
    for name in ("opened", "active", "idle", "reopened"):
        merged[name] = sum(part[name] for part in parts)
    for name in ("requests", "statuses", "open_retried", "unanswered", "expired"):
        merged[name] = added(part[name] for part in parts)
    merged["requests"] = {phase: merged["requests"].get(phase, 0) for phase in PHASES}
    merged["errors"] = {phase: added(part["errors"][phase] for part in parts) for phase in PHASES}
    merged["seconds"] = {phase: max(part["seconds"][phase] for part in parts) for phase in ("open", "hold", "sweep")}
    merged["hold_requests_per_s"] = per_second(merged["requests"]["hold"], merged["seconds"]["hold"])
    return merged


def child(args: argparse.Namespace, reports, go, results) -> None:
    """One process of several: open its share, report, hold when told to."""

    async def sync(held: dict) -> None:
        reports.put(held)
        while not go.is_set():
            await asyncio.sleep(0.1)

    try:
        result = asyncio.run(asyncio.wait_for(run(args, sync), args.max_seconds))
    except BaseException as err:  # noqa: BLE001 - the parent reports it
        failure = {"failed": f"{type(err).__name__}: {err}"}
        reports.put(failure)
        results.put(failure)
        return
    results.put(result)


def run_processes(args: argparse.Namespace) -> dict:
    """The run spread over ``args.processes`` processes, each with its own
    event loop (one loop can use one core only, and on a busy machine its
    TLS handshakes are the slow side). Every process opens its share; once
    all of them hold theirs, the held line is written and they all hold,
    then sweep."""
    context = multiprocessing.get_context("fork")
    reports, results, go = context.Queue(), context.Queue(), context.Event()
    workers = [
        context.Process(target=child, args=(shard(args, index, args.processes), reports, go, results), daemon=True)
        for index in range(args.processes)
    ]
    deadline = time.monotonic() + args.max_seconds + 10
    for worker in workers:
        worker.start()
    try:
        helds = [reports.get(timeout=max(1, deadline - time.monotonic())) for _worker in workers]
        failed = [held["failed"] for held in helds if "failed" in held]
        if failed:
            sys.exit(f"lb_capacity: a process failed: {failed}")
        announce(
            {
                "event": "held",
                "open": sum(held["open"] for held in helds),
                "opened_in_s": max(held["opened_in_s"] for held in helds),
                "time": time.time(),
            },
            args.held_file,
        )
        go.set()
        parts = [results.get(timeout=max(1, deadline - time.monotonic())) for _worker in workers]
    except queue.Empty:
        sys.exit(f"lb_capacity: the run did not end within --max-seconds={args.max_seconds}")
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
    failed = [part["failed"] for part in parts if "failed" in part]
    if failed:
        sys.exit(f"lb_capacity: a process failed: {failed}")
    return merge(parts, args)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--active", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--open-concurrency",
        type=int,
        default=64,
        help="connections opening (or refreshing, or sweeping) at once",
    )
    parser.add_argument(
        "--open-attempts",
        type=int,
        default=3,
        help="tries for an open that times out (a reset or a close is not tried again)",
    )
    parser.add_argument("--step-timeout", type=float, default=15.0, help="seconds for each connect, read or write")
    parser.add_argument("--cacert")
    parser.add_argument("--servername", help="TLS server name (default: the URL's host)")
    parser.add_argument("--resolve", help="connect to this address instead of the URL's host")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes, each with its own event loop and share of the connections (--open-concurrency each)",
    )
    parser.add_argument("--held-file")
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument(
        "--refresh-path",
        help="path of the refresh requests (default: the URL's); a path the server answers itself"
        " (a blocked one, 404) keeps connections alive without loading the upstream",
    )
    parser.add_argument(
        "--server-idle-timeout",
        type=float,
        default=0,
        help="the server's keepalive timeout: a failed request on a connection the client left idle that long"
        " (less 1 s) is counted in expired, not in errors (0: never)",
    )
    parser.add_argument(
        "--idle-limit",
        type=float,
        default=0,
        help="an idle connection sends a request after this many seconds without one (0: never)",
    )
    return parser


def main() -> None:
    args = parser().parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit(f"lb_capacity: {args.connections} connections need {need} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    if args.processes > 1:
        print(json.dumps(run_processes(args)))
        return
    try:
        result = asyncio.run(asyncio.wait_for(run(args), args.max_seconds))
    except TimeoutError:
        sys.exit(f"lb_capacity: the run did not end within --max-seconds={args.max_seconds}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
