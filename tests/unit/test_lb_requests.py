"""scripts/lb_requests.py counts answers per instance and counts failures."""

from __future__ import annotations

import importlib.util
import json
import threading
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

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == "/fail":
                self.send_response(502)
                self.end_headers()
                return
            body = json.dumps({"instance": f"fake:{8001 + next(turn) % 3}", "version": "9"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


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
