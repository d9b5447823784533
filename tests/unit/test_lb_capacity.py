"""scripts/lb_capacity.py holds its connections, tries a timed-out open again
and counts everything else as the server's error."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import threading
from itertools import count

from conftest import ROOT

spec = importlib.util.spec_from_file_location("lb_capacity", ROOT / "scripts" / "lb_capacity.py")
lb_capacity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lb_capacity)

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


class Server:
    """A loopback HTTP/1.1 server. The first ``silent`` connections are
    accepted and never answered (a slow handshake, as seen from the client);
    the first ``reset`` after them are closed at once; the rest answer every
    request (the first on a connection ``delay`` seconds after it, every one
    ``every_delay`` after it), and stay open, until idle for
    ``idle_timeout`` seconds (nginx's keepalive_timeout). A request for
    ``fast_path`` is answered at once, with no delay: a path nginx answers
    itself, where every other one goes through to the slower API."""

    def __init__(
        self,
        silent: int = 0,
        reset: int = 0,
        delay: float = 0,
        idle_timeout: float | None = None,
        every_delay: float = 0,
        fast_path: bytes | None = None,
    ) -> None:
        self.silent, self.reset, self.delay, self.idle_timeout = silent, reset, delay, idle_timeout
        self.every_delay = every_delay
        self.fast_path = fast_path
        self.accepted = count()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = next(self.accepted)
        try:
            if index < self.silent:
                await reader.read()  # until the client gives up
                return
            if index < self.silent + self.reset:
                return
            first = True
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
                except TimeoutError:
                    return  # closed as nginx's keepalive_timeout does
                fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                length = int({name.strip().lower(): value for name, value in fields.items()}[b"content-length"])
                await reader.readexactly(length)
                if self.fast_path is not None and head.split(b" ")[1] == self.fast_path:
                    writer.write(ANSWER)
                    await writer.drain()
                    continue
                if first:
                    # The slow part of a new connection (a TLS handshake).
                    await asyncio.sleep(self.delay)
                    first = False
                await asyncio.sleep(self.every_delay)
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Server:
        self.thread.start()
        self.ready.wait(5)
        return self

    async def _shutdown(self) -> None:
        self.server.close()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def arguments(port: int, **options) -> argparse.Namespace:
    """The script's own arguments for the loopback server, small and fast,
    with ``options`` over them."""
    args = lb_capacity.parser().parse_args(
        [
            f"http://127.0.0.1:{port}/",
            "--connections=20",
            "--active=4",
            "--seconds=0.5",
            "--open-concurrency=8",
            "--step-timeout=0.5",
            "--max-seconds=30",
        ]
    )
    for name, value in options.items():
        setattr(args, name, value)
    return args


def run(port: int, **options) -> dict:
    args = arguments(port, **options)
    return asyncio.run(asyncio.wait_for(lb_capacity.run(args), args.max_seconds))


def test_every_connection_held_and_answered():
    with Server() as server:
        result = run(server.port)
    assert result["opened"] == 20
    assert result["errors"] == {"open": {}, "refresh": {}, "hold": {}, "sweep": {}}
    assert result["requests"]["open"] == 20
    assert result["requests"]["sweep"] == 16
    assert result["requests"]["hold"] >= 4
    assert result["statuses"] == {"200": sum(result["requests"].values())}
    assert result["open_retried"] == {}
    assert result["unanswered"] == {}


def test_a_timed_out_open_is_tried_again_and_counted():
    with Server(silent=3) as server:
        result = run(server.port)
    assert result["opened"] == 20
    assert result["errors"]["open"] == {}
    assert result["open_retried"] == {"timeout": 3}
    # The three unanswered first requests are counted as sent, not as answered.
    assert result["unanswered"] == {"open": 3}
    assert result["statuses"]["200"] == sum(result["requests"].values()) - 3


def test_an_open_out_of_attempts_is_an_error():
    with Server(silent=3) as server:
        result = run(server.port, open_attempts=1)
    assert result["opened"] == 17
    assert result["errors"]["open"] == {"timeout": 3}
    assert result["open_retried"] == {}


def test_a_reset_is_not_tried_again():
    with Server(reset=2) as server:
        result = run(server.port)
    assert result["opened"] == 18
    assert sum(result["errors"]["open"].values()) == 2, result["errors"]
    assert result["open_retried"] == {}


def test_a_refreshed_connection_is_never_busy_at_the_same_time():
    """The refresh of idle connections runs while the last ones open and the
    busy ones are chosen: a connection waiting for its refresh is not also
    given a busy client's requests (two requests at once on one connection
    read each other's answers: an unparseable status, timeouts, resets)."""
    with Server(every_delay=0.06) as server:
        result = run(server.port, connections=60, active=20, open_concurrency=3, idle_limit=0.05, seconds=1)
    assert result["errors"] == {"open": {}, "refresh": {}, "hold": {}, "sweep": {}}, result
    assert result["requests"]["refresh"] > 0, result
    assert result["statuses"] == {"200": sum(result["requests"].values())}, result
    # The busy ones are chosen among those no refresh is waiting for.
    assert 0 < result["active"] <= 20, result
    assert result["requests"]["sweep"] == 60 - result["active"], result


def test_idle_connections_are_refreshed_while_the_others_still_open():
    """An open phase longer than the server's keep-alive timeout (a busy
    machine: 91 s against nginx's 75 s) loses no connection: the refresh does
    not wait behind the connections still queued to open."""
    with Server(delay=0.1, idle_timeout=1.5) as server:
        result = run(server.port, connections=60, active=5, open_concurrency=2, idle_limit=0.3, seconds=0.5)
    assert result["seconds"]["open"] > 2.5, result
    assert result["errors"] == {"open": {}, "refresh": {}, "hold": {}, "sweep": {}}, result
    assert result["requests"]["refresh"] > 0, result
    assert result["statuses"] == {"200": sum(result["requests"].values())}, result


def test_processes_share_the_connections_and_hold_once_all_are_open(tmp_path):
    """--processes: each process opens its share; the held file is written
    once, when all of them hold theirs, and the result adds them up."""
    held_file = tmp_path / "held.json"
    with Server(delay=0.02) as server:
        args = arguments(
            server.port,
            connections=41,
            active=5,
            open_concurrency=4,
            step_timeout=2,
            held_file=str(held_file),
            processes=3,
            idle_limit=0.3,
        )
        result = lb_capacity.run_processes(args)
        accepted = next(server.accepted)
    held = json.loads(held_file.read_text())
    assert held["open"] == 41
    assert accepted == 41
    assert result["processes"] == 3
    assert result["opened"] == 41
    assert result["active"] == 5
    assert result["errors"] == {"open": {}, "refresh": {}, "hold": {}, "sweep": {}}, result
    assert result["requests"]["open"] == 41
    assert result["requests"]["sweep"] == 36
    assert result["statuses"] == {"200": sum(result["requests"].values())}, result


def test_shards_add_up_to_the_whole():
    args = argparse.Namespace(connections=10_000, active=200, held_file="x")
    parts = [lb_capacity.shard(args, index, 3) for index in range(3)]
    assert [part.connections for part in parts] == [3334, 3333, 3333]
    assert [part.active for part in parts] == [67, 67, 66]
    assert {part.held_file for part in parts} == {None}


def test_a_connection_the_client_left_idle_past_the_server_timeout_is_expired_not_an_error():
    """A starved client that refreshes a connection after the server's
    keep-alive timeout finds it closed: the server was right, so the failure
    counts in expired, apart from the errors."""
    with Server(idle_timeout=0.5) as server:
        result = run(server.port, idle_limit=0.8, seconds=1.5, server_idle_timeout=0.5)
    assert result["expired"].get("refresh", 0) > 0, result
    assert result["errors"] == {"open": {}, "refresh": {}, "hold": {}, "sweep": {}}, result


def test_a_server_that_closes_sooner_than_its_timeout_is_still_an_error():
    # The same server, and a client told it keeps connections 5 s: every
    # refresh it sends within that is an error, none is expired.
    with Server(idle_timeout=0.5) as server:
        result = run(server.port, idle_limit=0.8, seconds=1.5, server_idle_timeout=5)
    assert result["expired"] == {}, result
    assert result["errors"]["refresh"], result


def test_idle_connections_are_still_refreshed_while_a_slow_sweep_goes_on():
    """A sweep through a slow API (a starved client beside a busy machine:
    77 s for 9,800 requests against nginx's 75 s keepalive_timeout) loses no
    connection: the ones still waiting for their sweep go on being refreshed
    on the cheap path nginx answers itself."""
    with Server(every_delay=0.12, idle_timeout=2.0, fast_path=b"/fast") as server:
        result = run(
            server.port,
            connections=120,
            active=2,
            open_concurrency=4,
            idle_limit=0.5,
            refresh_path="/fast",
            seconds=0.3,
            step_timeout=5,
        )
    # The sweep outlasted the server's timeout.
    assert result["seconds"]["sweep"] > 2.0, result
    assert result["errors"] == {"open": {}, "refresh": {}, "hold": {}, "sweep": {}}, result
    assert result["expired"] == {}, result
    assert result["requests"]["sweep"] == 118, result
    assert result["unanswered"] == {}, result
