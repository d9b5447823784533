"""scripts/lb_requests.py counts answers per instance and counts failures."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("lb_requests", ROOT / "scripts" / "lb_requests.py")
lb_requests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lb_requests)


@pytest.fixture
def server():
    """A loopback server that answers like three instances in turn; /fail answers 502."""
    turn = count()
    answered = count(1)
    connections = []

    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1: connections stay open between requests unless asked.
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            connections.append(self.client_address)

        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            self.do_GET()

        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == "/fail":
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            # /drop: every third request gets its connection closed unanswered,
            # as a server that closes an idle keep-alive connection does.
            if self.path == "/drop" and next(answered) % 3 == 0:
                self.close_connection = True
                return
            # /short: the response is cut after its headers, as when the
            # instance behind nginx dies mid-answer.
            if self.path == "/short":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b"{")
                self.close_connection = True
                return
            body = json.dumps({"instance": f"fake:{8001 + next(turn) % 3}", "version": "9"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            # /idle-close: answered with keep-alive, then the idle connection
            # is closed, as nginx's old workers do at a reload.
            if self.path == "/idle-close":
                self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.connections = connections
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Url(f"http://127.0.0.1:{httpd.server_address[1]}", connections)
    httpd.shutdown()


class Url(str):
    """The server's base URL, with the list of connections it accepted."""

    def __new__(cls, value: str, connections: list):
        url = super().__new__(cls, value)
        url.connections = connections
        return url


def test_counts_each_instance(server):
    result = lb_requests.run(server + "/", requests=30, concurrency=1, timeout=5, max_seconds=30)
    assert result["requests"] == 30
    assert result["failed"] == 0
    assert result["instances"] == {"fake:8001": 10, "fake:8002": 10, "fake:8003": 10}
    assert result["versions"] == {"9": 30}


def test_counts_http_errors_as_failures(server):
    result = lb_requests.run(server + "/fail", requests=5, concurrency=2, timeout=5, max_seconds=30)
    assert result["failed"] == 5
    assert result["statuses"] == {"502": 5}


def test_counts_connection_errors_as_failures():
    result = lb_requests.run("http://127.0.0.1:9/", requests=3, concurrency=1, timeout=1, max_seconds=30)
    assert result["failed"] == 3
    assert result["statuses"] == {"0": 3}


def test_main_exit_code_reflects_failures(server, capsys):
    assert lb_requests.main(["--url", server + "/", "--requests", "3"]) == 0
    assert lb_requests.main(["--url", server + "/fail", "--requests", "2"]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["failed"] == 2


def test_stop_file_ends_continuous_load(server, tmp_path):
    stop = tmp_path / "stop"
    threading.Timer(0.5, stop.touch).start()
    result = lb_requests.run(
        server + "/", requests=1_000_000, concurrency=20, timeout=5, max_seconds=30, stop_file=str(stop)
    )
    assert 0 < result["requests"] < 1_000_000
    assert result["seconds"] < 5
    assert result["failed"] == 0
    assert result["concurrency"] == 20
    assert sum(result["instances"].values()) == result["requests"]


def test_max_seconds_bounds_the_run(server):
    result = lb_requests.run(server + "/", requests=1_000_000, concurrency=4, timeout=5, max_seconds=0.5)
    assert result["seconds"] < 3
    assert 0 < result["requests"] < 1_000_000


def test_main_refuses_unbounded_time(server):
    with pytest.raises(SystemExit):
        lb_requests.main(["--url", server + "/", "--max-seconds", "100000"])


def test_pause_paces_each_worker(server):
    result = lb_requests.run(server + "/", requests=10, concurrency=2, timeout=5, max_seconds=30, pause=0.1)
    assert result["requests"] == 10
    # 5 requests per worker, 0.1 s after each: at least 0.5 s in all.
    assert result["seconds"] >= 0.5


def test_per_request_mode_opens_a_connection_per_request(server):
    result = lb_requests.run(server + "/", requests=12, concurrency=2, timeout=5, max_seconds=30)
    assert result["mode"] == "per-request"
    assert result["ok"] == 12
    assert len(server.connections) == 12


def test_keepalive_mode_reuses_one_connection_per_worker(server):
    result = lb_requests.run(server + "/", requests=30, concurrency=3, timeout=5, max_seconds=30, keepalive=True)
    assert result["mode"] == "keepalive"
    assert result["ok"] == 30
    assert result["instances"] == {"fake:8001": 10, "fake:8002": 10, "fake:8003": 10}
    assert len(server.connections) == 3


def test_keepalive_mode_counts_a_dropped_connection_and_does_not_retry(server):
    result = lb_requests.run(server + "/drop", requests=9, concurrency=1, timeout=5, max_seconds=30, keepalive=True)
    assert result["requests"] == 9
    assert result["failed"] == 3
    assert result["statuses"] == {"0": 3, "200": 6}
    assert result["errors"] == {"RemoteDisconnected": 3}
    # One connection at first, and a new one after each drop but the last
    # (requests 3, 6 and 9 were dropped).
    assert len(server.connections) == 3


def test_keepalive_mode_reopens_a_connection_the_server_closed_while_idle(server):
    # Each worker pauses 0.2 s, so the server's close arrives before the next
    # request: the pool sees it and opens a new connection instead of failing.
    result = lb_requests.run(
        server + "/idle-close", requests=6, concurrency=1, timeout=5, max_seconds=30, keepalive=True, pause=0.2
    )
    assert result["failed"] == 0, result
    assert result["reopened"] == 5, result
    assert len(server.connections) == 6


@pytest.mark.parametrize("keepalive", [False, True])
def test_post_is_sent_with_a_body(server, keepalive):
    result = lb_requests.run(
        server + "/", requests=6, concurrency=2, timeout=5, max_seconds=30, keepalive=keepalive, method="POST"
    )
    assert result["method"] == "POST"
    assert result["ok"] == 6


def test_the_run_reports_when_it_started_and_ended(server):
    result = lb_requests.run(server + "/", requests=5, concurrency=1, timeout=5, max_seconds=30)
    assert 0 < result["first_sent"] <= result["last_answer"]


@pytest.mark.parametrize("keepalive", [False, True], ids=["per-request", "keepalive"])
def test_a_response_cut_short_is_a_named_failure_in_both_modes(server, keepalive):
    result = lb_requests.run(
        server + "/short", requests=6, concurrency=2, timeout=5, max_seconds=30, keepalive=keepalive
    )
    assert result["requests"] == 6
    assert result["failed"] == 6
    assert result["statuses"] == {"0": 6}
    assert result["errors"] == {"IncompleteRead": 6}


@pytest.mark.parametrize(("path", "failed"), [("/", 0), ("/fail", 6)])
def test_the_timeline_counts_requests_and_failures_by_the_time_they_were_sent(server, path, failed):
    result = lb_requests.run(server + path, requests=6, concurrency=2, timeout=5, max_seconds=30)
    buckets = {int(key): value for key, value in result["timeline"].items()}
    assert sum(sent for sent, _bad in buckets.values()) == 6
    assert sum(bad for _sent, bad in buckets.values()) == failed
    assert int(result["first_sent"] * 10) == min(buckets)


def test_the_started_file_appears_once_every_worker_had_an_answer(server, tmp_path):
    started = tmp_path / "started"
    result = lb_requests.run(
        server + "/", requests=2, concurrency=3, timeout=5, max_seconds=30, started_file=str(started)
    )
    assert result["requests"] == 2
    assert not started.exists()  # only 2 of the 3 workers had an answer
    # Paced, so that one fast worker cannot take every request before the others start.
    lb_requests.run(
        server + "/", requests=30, concurrency=3, timeout=5, max_seconds=30, pause=0.05, started_file=str(started)
    )
    assert started.exists()


def test_one_request_is_still_sent_once_the_stop_file_is_there(server, tmp_path):
    """A load stopped during a pause still answers once after the stop: its last
    answer is later than the moment the stop file appeared."""
    stop = tmp_path / "stop"
    touched = []
    threading.Timer(0.3, lambda: (touched.append(time.time()), stop.touch())).start()
    result = lb_requests.run(
        server + "/", requests=1000, concurrency=2, timeout=5, max_seconds=30, pause=1.0, stop_file=str(stop)
    )
    assert result["last_answer"] > touched[0], (result["last_answer"], touched)
    assert result["failed"] == 0


def test_the_record_has_one_line_per_request_with_its_times(server, tmp_path):
    record = tmp_path / "records.jsonl"
    result = lb_requests.run(server + "/", requests=7, concurrency=2, timeout=5, max_seconds=30, record=str(record))
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(lines) == result["requests"] == 7
    assert sorted(line["instance"] for line in lines) == ["fake:8001"] * 3 + ["fake:8002"] * 2 + ["fake:8003"] * 2
    for line in lines:
        assert result["first_sent"] <= line["sent"] <= line["answered"] <= result["last_answer"]
        assert (line["status"], line["version"], line["error"]) == (200, "9", None)
