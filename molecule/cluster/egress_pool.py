"""ProxyCommand for the rollback test: a controller egress that moves, like a
NAT gateway failing over to its other address in the middle of a run.

    egress_pool.py STATE_DIR HOST PORT

The first connection to HOST leaves from the controller itself; every later
one is relayed through the container named in STATE_DIR/jump, so the host
sees it come from that container's address. Each connection is a plain TCP
relay of ssh's stdin and stdout (python3 on either side).
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

RELAY = """
import os, select, socket, sys
peer = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
peer.settimeout(None)
sources = [0, peer.fileno()]
while True:
    ready = select.select(sources, [], [])[0]
    if 0 in ready:
        data = os.read(0, 65536)
        if data:
            peer.sendall(data)
        else:
            peer.shutdown(socket.SHUT_WR)
            sources.remove(0)
    if peer.fileno() in ready:
        data = peer.recv(65536)
        if not data:
            break
        os.write(1, data)
"""


def main() -> None:
    state, host, port = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    with (state / f"{host}.count").open("a+") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)
        counter.seek(0)
        seen = int(counter.read() or 0)
        counter.seek(0)
        counter.truncate()
        counter.write(str(seen + 1))
    if seen == 0:
        sys.argv[1:] = [host, port]
        exec(RELAY)  # noqa: S102 - the relay above, run here instead of in the jump container
    else:
        jump = (state / "jump").read_text().strip()
        os.execvp("docker", ["docker", "exec", "-i", jump, "python3", "-c", RELAY, host, port])


if __name__ == "__main__":
    main()
