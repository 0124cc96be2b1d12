"""A viewer that stops reading does not slow the others, and is cut off once
it is more than --viewer-queue-bytes behind."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import WAIT_S, Server, start_server, stop_server

QUEUE_LIMIT = 400_000


@pytest.fixture
def capped_server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path, "--viewer-queue-bytes", str(QUEUE_LIMIT))
    yield srv
    stop_server(srv)


def open_viewer(server: Server, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT_S)
    sock.connect(("127.0.0.1", server.http_port))
    sock.sendall(b"GET /live/cam1.flv HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


class Reader(threading.Thread):
    """Reads a socket as fast as it can, counting bytes."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.total += len(data)


def test_stalled_viewer_does_not_slow_others_and_is_cut_off(
    capped_server: Server, clip: Path
) -> None:
    server = capped_server
    server.publish(clip, "cam1")
    server.wait_live("cam1")
    stalled = open_viewer(server, rcvbuf=4096)  # never read
    good = open_viewer(server)
    reader = Reader(good)
    reader.start()
    deadline = time.monotonic() + WAIT_S
    # Wait until the stalled viewer has been cut off (or give up).
    while time.monotonic() < deadline and "dropped" not in server.log():
        time.sleep(0.2)
    log = server.log()
    assert "dropped" in log and f"queue limit of {QUEUE_LIMIT} bytes" in log, log[-3000:]
    # Meanwhile the good viewer got everything the stalled one fell behind
    # by, and the server never had to skip a frame for it: its stop line
    # (written when it hangs up below) says "0 frames skipped".
    assert reader.total >= QUEUE_LIMIT, reader.total
    # And the stalled viewer's connection really is closed.
    stalled.settimeout(WAIT_S)
    closed = False
    try:
        while stalled.recv(1 << 20):
            pass
        closed = True
    except ConnectionResetError:
        closed = True
    assert closed
    stalled.close()
    good_port = good.getsockname()[1]
    reader.stop.set()
    good.close()
    stop_line = f"by http-flv 127.0.0.1:{good_port}: closed by the client ("
    while time.monotonic() < deadline + WAIT_S and stop_line not in server.log():
        time.sleep(0.2)
    lines = [x for x in server.log().splitlines() if stop_line in x]
    assert lines, server.log()[-3000:]
    assert lines[0].endswith(" bytes sent, 0 frames skipped)"), lines[0]
