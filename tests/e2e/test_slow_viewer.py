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
    """Reads a socket as fast as it can, recording (time, total bytes)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        total = 0
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            total += len(data)
            self.samples.append((time.monotonic(), total))

    def bytes_between(self, start: float, end: float) -> int:
        inside = [b for t, b in self.samples if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else 0


def test_stalled_viewer_does_not_slow_others_and_is_cut_off(
    capped_server: Server, clip: Path
) -> None:
    server = capped_server
    stream_bps = clip.stat().st_size * 8 / 6  # the clip is 6 s long
    server.publish(clip, "cam1")
    server.wait_live("cam1")
    stalled = open_viewer(server, rcvbuf=4096)  # never read
    good = open_viewer(server)
    reader = Reader(good)
    reader.start()
    start = time.monotonic()
    # Wait until the stalled viewer has been cut off (or give up).
    while time.monotonic() - start < WAIT_S and "dropped" not in server.log():
        time.sleep(0.2)
    time.sleep(3)
    end = time.monotonic()
    reader.stop.set()
    log = server.log()
    assert "dropped" in log and f"queue limit of {QUEUE_LIMIT} bytes" in log, log[-3000:]
    # The good viewer kept up with the stream the whole time (allowing for
    # the flush window and scheduling jitter at the edges).
    received = reader.bytes_between(start + 1, end)
    assert received * 8 >= 0.7 * stream_bps * (end - start - 1), (received, stream_bps)
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
    good.close()
