"""rtmpd-push's HTTP-FLV session: twisted.web's Agent over a StringTransport, the server's
side played by hand. The request and its chunked body, the clean end, backpressure, and
refusals however the answer is cut into reads, including before the body has ended (the
server decides before it reads the body)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd.client.http import HttpPublisher
from rtmpd.client.target import PushTarget
from rtmpd.codec import flv
from tests.unit.test_push_pacing import METADATA, RecordingListener

FLV_HEADER = flv.encode_header(has_audio=True, has_video=True)
FRAME = (flv.TAG_VIDEO, 40, b"\x17\x01\0\0\0x")
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects at once to a StringTransport (or fails with ``failure``)."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.transport = StringTransport()
        #: The connection's protocol: what the server's bytes are fed to.
        self.protocol: Any = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.failure is not None:
            return fail(self.failure)
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8501))
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class Publish:
    """One HttpPublisher posting through Agent to a FakeEndpoint."""

    def __init__(self, *, failure: Exception | None = None, query: str = "") -> None:
        self.clock = task.Clock()
        self.listener = RecordingListener()
        self.endpoint = FakeEndpoint(failure)
        self.publisher = HttpPublisher(PushTarget("http", "h", 8501, "live", "cam", query),
                                       self.listener, self.clock,
                                       has_audio=True, has_video=True)
        self.publisher.post(self.clock, self.endpoint)
        self.transport = self.endpoint.transport

    def sent(self) -> bytes:
        """What was written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def answer(self, *reads: bytes) -> None:
        """The server's bytes, one read each."""
        for data in reads:
            self.endpoint.protocol.dataReceived(data)

    def closed(self, reason: Exception | None = None) -> None:
        """The connection ends (as the reactor reports it)."""
        self.endpoint.protocol.connectionLost(Failure(reason or ConnectionDone()))


def refusal(status: int, phrase: str, text: str) -> bytes:
    """What rtmpd's FlvRequest._refuse writes."""
    body = (text + "\n").encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, phrase.encode(), len(body), body))


def test_http_session_posts_a_chunked_flv_body_and_ends_with_the_zero_chunk() -> None:
    p = Publish(query="key=k")
    head = p.sent()
    assert head.startswith(b"POST /live/cam?key=k HTTP/1.1\r\n")
    assert b"\r\nHost: h:8501\r\n" in head and b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert b"\r\nContent-Type: video/x-flv\r\n" in head and b"\r\nUser-Agent: rtmpd-push/" in head
    assert head.endswith(b"\r\n\r\n")
    assert p.listener.ready == [p.publisher]
    p.publisher.send_tags([(flv.TAG_SCRIPT, 0, METADATA), FRAME])
    body = FLV_HEADER + flv.encode_tag(flv.TAG_SCRIPT, 0, METADATA) + flv.encode_tag(*FRAME)
    assert p.sent() == chunk(body)
    p.publisher.send_tags([FRAME])
    assert p.sent() == chunk(flv.encode_tag(*FRAME))  # one chunk per batch, one header
    finished = p.publisher.finish()
    assert p.sent() == LAST_CHUNK
    p.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    assert p.transport.disconnecting
    assert not finished.called  # fires when the connection is closed
    p.closed()
    assert finished.called and p.listener.lost == []


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(409, False), (400, True), (401, True), (403, True), (404, True), (503, False)],
)
def test_http_refusal_before_the_end_is_reported(status: int, permanent: bool) -> None:
    p = Publish()
    p.answer(b"HTTP/1.1 %d Nope\r\nContent-Length: 5\r\n" % status)
    p.answer(b"\r\nwhy?\n")
    assert p.transport.disconnecting
    p.closed(ConnectionLost())
    assert p.listener.lost == [(f"HTTP {status} Nope: why?", permanent)]


def test_http_setup_timeout_is_not_armed_once_ready() -> None:
    p = Publish()
    p.clock.advance(60)
    assert not p.transport.disconnecting


# -- an answer before the end of the body -------------------------------------------


def test_http_refusal_whose_text_comes_after_its_headers_is_reported() -> None:
    """The case Agent alone would lose: the answer's headers in one read, its body in a
    later one, while the request body is still being sent."""
    p = Publish()
    p.publisher.send_tags([FRAME])
    p.sent()
    answer = refusal(403, "Forbidden", "publishing needs a key")
    head, text = answer.split(b"\r\n\r\n", 1)
    p.answer(head + b"\r\n\r\n")
    assert p.sent() == LAST_CHUNK  # the body ended at the answer
    p.publisher.send_tags([FRAME])
    assert p.sent() == b""  # and nothing more goes
    assert not p.transport.disconnecting and p.listener.lost == []
    p.answer(text)
    assert p.transport.disconnecting
    p.closed()
    assert p.listener.lost == [("HTTP 403 Forbidden: publishing needs a key", True)]


def test_http_refusal_cut_into_single_bytes_is_reported() -> None:
    p = Publish()
    for byte in refusal(409, "Conflict", "stream live/cam is already being published"):
        p.answer(bytes((byte,)))
    assert p.transport.disconnecting
    p.closed()
    assert p.listener.lost == [
        ("HTTP 409 Conflict: stream live/cam is already being published", False)
    ]


def test_http_refusal_before_any_tag_is_reported() -> None:
    """A connection refused at once (the limit): the answer may precede the first tag."""
    p = Publish()
    p.sent()
    p.answer(refusal(503, "Service Unavailable", "too many connections"))
    assert p.sent() == LAST_CHUNK
    p.publisher.send_tags([(flv.TAG_SCRIPT, 0, METADATA)])
    assert p.sent() == b""
    p.closed()
    assert p.listener.lost == [("HTTP 503 Service Unavailable: too many connections", False)]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 403\r\nContent-Length: 4\r\n\r\nno!\n", "HTTP 403: no!"),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "HTTP 403 Forbidden"),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\n\n\n  why?\n",
         "HTTP 403 Forbidden: why?"),
    ],
    ids=["no-phrase", "no-text", "blank-lines-first"],
)
def test_http_refusal_reason_is_the_status_and_the_first_line_of_text(
    answer: bytes, reason: str
) -> None:
    p = Publish()
    p.answer(answer)
    p.closed()
    assert p.listener.lost == [(reason, True)]


def test_http_refusal_whose_text_never_ends_is_reported_at_its_first_line() -> None:
    p = Publish()
    p.answer(b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n",
             chunk(b"no key\nand more"))
    assert p.transport.disconnecting  # the first line is the reason: no need for more
    p.closed()
    assert p.listener.lost == [("HTTP 403 Forbidden: no key", True)]


def test_http_garbage_from_the_server_is_a_lost_session() -> None:
    p = Publish()
    p.answer(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert p.transport.disconnecting
    p.closed()
    assert len(p.listener.lost) == 1
    reason, permanent = p.listener.lost[0]
    assert reason.startswith("bad answer from the server (") and not permanent


# -- the connection -----------------------------------------------------------------


def test_http_backpressure_pauses_and_resumes_the_pacing() -> None:
    p = Publish()
    assert p.transport.producer is p.publisher and p.transport.streaming
    p.publisher.pauseProducing()  # what the transport does when its buffer fills
    p.publisher.resumeProducing()
    assert p.listener.writable == [False, True]
    p.publisher.finish()
    assert p.transport.producer is None  # the body has ended: no more pacing
    p.publisher.pauseProducing()
    assert p.listener.writable == [False, True]


def test_http_connection_lost_mid_body_is_a_lost_session() -> None:
    p = Publish()
    p.publisher.send_tags([FRAME])
    p.closed(ConnectionLost())
    message = Failure(ConnectionLost()).getErrorMessage()
    assert p.listener.lost == [(f"connection lost ({message})", False)]
    p.publisher.send_tags([FRAME])  # the core may still send once: nothing happens


def test_http_connection_refused_is_cannot_connect() -> None:
    p = Publish(failure=ConnectionRefusedError())
    message = Failure(ConnectionRefusedError()).getErrorMessage()
    assert p.listener.ready == []
    assert p.listener.lost == [(f"cannot connect: {message}", False)]


def test_http_finish_timeout_drops_a_silent_server() -> None:
    p = Publish()
    finished = p.publisher.finish()
    p.clock.advance(4.9)
    assert not p.transport.disconnecting
    p.clock.advance(0.2)
    assert p.transport.disconnected  # aborted
    p.closed(ConnectionLost())
    assert finished.called and p.listener.lost == []


def test_http_abort_cuts_the_connection_and_reports_nothing() -> None:
    p = Publish()
    p.publisher.abort()
    assert p.transport.disconnected
    p.closed(ConnectionLost())
    assert p.listener.lost == []
