"""Direct socket writes: what the kernel does not take is handed to the
transport in order, after anything the transport had queued."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.testing import StringTransport

from rtmpd.fanout import _write_rest, write_now

CHUNKS = [b"abc", b"defgh", b"i", b"jklm"]
ALL = b"".join(CHUNKS)


@pytest.mark.parametrize("written", range(len(ALL) + 1))
def test_rest_of_a_partial_writev_follows_in_order(written: int) -> None:
    transport = StringTransport()
    _write_rest(transport, CHUNKS, 0, written)
    assert transport.value() == ALL[written:]


@pytest.mark.parametrize("written", range(len(b"ijklm") + 1))
def test_rest_of_a_later_batch(written: int) -> None:
    transport = StringTransport()
    _write_rest(transport, CHUNKS, 2, written)
    assert transport.value() == b"ijklm"[written:]


class QueueingTransport:
    """The parts of twisted.internet.tcp.Connection that write_now reads."""

    def __init__(self, queued: list[bytes]) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer = list(queued)
        self._tempDataLen = sum(map(len, queued))
        self.connected = True
        self.disconnecting = False
        self.later: list[bytes] = []

    def writeSequence(self, chunks: list[bytes]) -> None:
        self.later.extend(chunks)

    def write(self, data: bytes) -> None:
        self.later.append(data)


def _drain(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def test_write_now_sends_queued_bytes_first_then_ours() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setblocking(False)
        t = QueueingTransport([b"HTTP/1.1 200 OK\r\n\r\n"])
        write_now(t, ours.fileno(), [b"FLV", b"\x01\x05"], 5)
        assert _drain(theirs) == b"HTTP/1.1 200 OK\r\n\r\nFLV\x01\x05"
        assert t.later == [] and t._tempDataLen == 0


def test_write_now_hands_what_the_kernel_refuses_to_the_transport_in_order() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        chunks = [bytes([i]) * 50_000 for i in range(1, 9)]
        t = QueueingTransport([b"head"])
        write_now(t, ours.fileno(), chunks, 400_000)
        assert t.later, "the socket buffer should not take 400 kB at once"
        assert _drain(theirs) + b"".join(t.later) == b"head" + b"".join(chunks)


def test_write_now_leaves_a_transport_with_unsent_data_in_charge() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setblocking(False)
        t = QueueingTransport([])
        t.dataBuffer, t.offset = b"partly sent", 6
        write_now(t, ours.fileno(), [b"x"], 1)
        assert t.later == [b"x"] and _drain(theirs) == b""
