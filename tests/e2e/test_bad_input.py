"""Bad input against the real server: each offender gets a clear log line and
its connection closed, everyone else keeps being served, memory comes back."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtmpd.codec.rtmp.chunk import ChunkWriter
from rtmpd.codec.rtmp.handshake import ClientHandshake
from tests.e2e.conftest import WAIT_S, Server, start_server, stop_server


@pytest.fixture
def strict_server(tmp_path: Path) -> Iterator[Server]:
    """A server with a short handshake timeout, so the silent client test is quick."""
    srv = start_server(tmp_path, "--handshake-timeout", "1")
    yield srv
    stop_server(srv)


def wait_closed(sock: socket.socket) -> None:
    """Read until the server closes the connection (EOF or reset)."""
    sock.settimeout(WAIT_S)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def wait_for_log(server: Server, text: str) -> str:
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        log = server.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log:\n{server.log()[-3000:]}")


def rtmp_handshaken(server: Server) -> socket.socket:
    """A raw socket that completed the RTMP handshake."""
    sock = socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=WAIT_S)
    hs = ClientHandshake()
    sock.sendall(hs.data_to_send())
    while not hs.done:
        data = sock.recv(65536)
        assert data, "server closed during the handshake"
        hs.receive_data(data)
        sock.sendall(hs.data_to_send())
    return sock


def test_garbage_on_rtmp_port_is_closed_with_a_reason(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=WAIT_S) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\xff" * 3000)
        wait_closed(sock)
    wait_for_log(server, "protocol error")
    assert not server.is_live("x")  # still serving HTTP


def test_chunk_size_of_2_31_is_refused(server: Server) -> None:
    with rtmp_handshaken(server) as sock:
        writer = ChunkWriter()
        sock.sendall(writer.write(2, 1, 0, 0, struct.pack(">I", 0x80000000)))
        wait_closed(sock)
    wait_for_log(server, "protocol error")


def test_message_of_16_mb_is_refused_before_buffering(server: Server) -> None:
    with rtmp_handshaken(server) as sock:
        # A type-0 chunk header on csid 3 announcing a 16 MB (0xFFFFFF bytes) command message.
        header = bytes([0x03]) + b"\x00\x00\x00" + (0xFFFFFF).to_bytes(3, "big")
        sock.sendall(header + bytes([20]) + b"\x00\x00\x00\x00" + b"\x00" * 100)
        wait_closed(sock)
    log = wait_for_log(server, "protocol error")
    assert "16777215" in log


def test_one_megabyte_header_line_is_refused(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=WAIT_S) as sock:
        big = b"GET /live/x.flv HTTP/1.1\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
        # The server may close before we finish sending.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(big)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    assert reply == b"" or reply.startswith(b"HTTP/1.1 4")


def test_silent_client_times_out(strict_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", strict_server.rtmp_port), timeout=WAIT_S) as sock:
        wait_closed(sock)
    wait_for_log(strict_server, "timed out")


def test_abrupt_closes_mid_handshake_leave_the_server_serving(server: Server, clip: Path) -> None:
    before = server.rss_kib()
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=WAIT_S)
        sock.sendall(b"\x03" + b"\x00" * 700)  # half a C1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    server.publish(clip, "after")
    server.wait_live("after")
    after = server.rss_kib()
    # Allow for the stream now being live (GOP cache, buffers); 200 leaked
    # connections with 1.5 KB handshakes each would be much more.
    assert after - before < 20_000, (before, after)
    assert server.log().count("close rtmp") >= 200
