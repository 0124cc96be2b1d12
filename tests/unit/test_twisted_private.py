"""rtmpd._twisted, the one module that reads Twisted's private attributes:
each name it uses exists in the installed Twisted (so an upgrade that renames
one fails here, loudly), and direct socket writes hand what the kernel does
not take to the transport in order, after anything the transport had queued."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.testing import StringTransport

from rtmpd._twisted import _write_rest, write_now

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


# -- the private names rtmpd._twisted relies on ------------------------------------


def test_tcp_transports_keep_the_buffers_the_fast_path_reads() -> None:
    """tcp.Connection (via FileDescriptor) still keeps its send buffer in
    dataBuffer/offset/_tempDataBuffer/_tempDataLen."""
    import inspect

    from twisted.internet import abstract, tcp

    assert issubclass(tcp.Connection, abstract.FileDescriptor)
    fd = abstract.FileDescriptor()
    assert fd.dataBuffer == b"" and fd.offset == 0
    assert fd._tempDataBuffer == [] and fd._tempDataLen == 0
    write = inspect.getsource(abstract.FileDescriptor.write)
    assert "_tempDataBuffer" in write and "_tempDataLen" in write
    assert "bufferSize" in dir(fd) and "connected" in dir(fd)
    assert "disconnecting" in dir(fd)
    source = inspect.getsource(abstract.FileDescriptor.doWrite)
    assert "dataBuffer" in source and "offset" in source and "_tempDataBuffer" in source


def test_twisted_web_keeps_the_names_the_publish_body_path_reads() -> None:
    """HTTPChannel still records the request line in _command/_path and
    reads the body through _transferDecoder/_finishRequestBody; Request
    still flags a gone client in _disconnected."""
    import inspect

    from twisted.web import http

    from rtmpd._twisted import read_body_until_close, request_line

    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /live/cam?key=1 HTTP/1.1\r\nHost: x\r\n")
    assert request_line(channel) == (b"POST", b"/live/cam?key=1")
    assert hasattr(channel, "_finishRequestBody")
    assert "self._transferDecoder" in inspect.getsource(http.HTTPChannel)
    got: list[bytes] = []
    read_body_until_close(channel, got.append)
    assert channel.length is None
    channel._transferDecoder.dataReceived(b"body")
    assert got == [b"body"]
    request = http.Request(channel)
    assert request._disconnected is False
    decoder = inspect.signature(http._IdentityTransferDecoder)
    assert list(decoder.parameters) == ["contentLength", "dataCallback", "finishCallback"]


def test_listener_services_keep_the_flag_that_raises_listen_errors() -> None:
    from twisted.application import internet

    from rtmpd._twisted import raise_listen_errors

    service = internet.StreamServerEndpointService(None, None)
    assert service._raiseSynchronously is False
    raise_listen_errors(service)
    assert service._raiseSynchronously is True


def test_connection_pools_keep_the_factory_class_quiet_pool_replaces() -> None:
    from twisted.internet.task import Clock
    from twisted.web.client import HTTPConnectionPool

    from rtmpd._twisted import quiet_pool

    pool = HTTPConnectionPool(Clock(), persistent=False)
    original = pool._factory
    assert original.noisy is True  # what the pulls would log without it
    quiet_pool(pool)
    assert issubclass(pool._factory, original)
    assert pool._factory.noisy is False
    # Other pools keep Twisted's class.
    assert HTTPConnectionPool(Clock())._factory is original


def test_discard_unsent_empties_only_a_closed_tcp_transports_buffers() -> None:
    from twisted.internet import tcp

    from rtmpd._twisted import discard_unsent

    t = tcp.Connection.__new__(tcp.Connection)
    t.dataBuffer, t.offset, t._tempDataBuffer, t._tempDataLen = b"x" * 10, 4, [b"yy"], 2
    t.connected = 1
    discard_unsent(t)
    assert t.dataBuffer == b"x" * 10 and t._tempDataLen == 2
    t.connected = 0
    discard_unsent(t)
    assert (t.dataBuffer, t.offset, t._tempDataBuffer, t._tempDataLen) == (b"", 0, [], 0)


def test_http_channels_keep_their_requests_where_an_upgrade_releases_them() -> None:
    """HTTPChannel still holds its requests in ``requests`` (a list; see
    rtmpd._twisted.release_upgraded_channel), and Autobahn's upgrade still
    takes the channel's transport by setting it to None."""
    import inspect

    from autobahn.twisted.resource import WebSocketResource
    from twisted.web import http

    from rtmpd._twisted import release_upgraded_channel

    channel = http.HTTPChannel()
    assert channel.requests == []
    assert "self.requests.append(" in inspect.getsource(http.HTTPChannel.lineReceived)
    assert "request.channel.transport = request.channel.transport, None" in (
        inspect.getsource(WebSocketResource.render)
    )
    channel.requests.append(object())
    release_upgraded_channel(channel)  # no transport: taken over
    assert channel.requests == []


def test_http_channels_set_the_plain_names_a_playing_channel_leaves_to_its_class() -> None:
    """HTTP_CHANNEL_PLAIN_NAMES holds only names no channel reads from its
    class: set in __init__ / makeConnection, or read only after being set."""
    import inspect

    from twisted.internet.protocol import Protocol
    from twisted.web import http

    from rtmpd._twisted import HTTP_CHANNEL_PLAIN_NAMES

    init = inspect.getsource(http.HTTPChannel.__init__)
    assert "self._handlingRequest = False" in init and "self._transferDecoder = None" in init
    assert "self.connected = 1" in inspect.getsource(Protocol.makeConnection)
    register = inspect.getsource(http.HTTPChannel.registerProducer)
    assert "self._requestProducerStreaming = streaming" in register
    unregister = inspect.getsource(http.HTTPChannel.unregisterProducer)
    assert unregister.index("self._requestProducer is None") < unregister.index(
        "self._requestProducerStreaming"
    )
    content = inspect.getsource(http.HTTPChannel.allContentReceived)
    assert "self._savedTimeOut = self.setTimeout(None)" in content
    assert "persistent" not in HTTP_CHANNEL_PLAIN_NAMES
    assert {
        "_handlingRequest", "_transferDecoder", "connected", "_requestProducerStreaming",
        "_savedTimeOut",
    } == HTTP_CHANNEL_PLAIN_NAMES


def test_autobahn_keeps_the_names_the_handshake_shedding_touches() -> None:
    """shed_autobahn_handshake: the key and transport details are read only
    while handshaking, and the event table is written only with listeners."""
    import inspect

    from autobahn.util import ObservableMixin
    from autobahn.websocket import protocol

    server = inspect.getsource(protocol.WebSocketServerProtocol)
    assert "self._wskey = key" in server and "key = self._wskey" in server
    common = inspect.getsource(protocol.WebSocketProtocol)
    assert "self._transport_details" in common
    assert ObservableMixin._listeners is None
    fire = inspect.getsource(ObservableMixin.fire)
    assert fire.index("if self._listeners is None:") < fire.index("self._results[event]")
    events = inspect.getsource(ObservableMixin.set_valid_events)
    assert "self._valid_events = " in events and "self._results = " in events


def test_a_viewers_tcp_transport_makes_its_log_prefix_and_repr_when_asked() -> None:
    """shed_transport_strings drops tcp.Server's two per-connection strings;
    its log prefix and repr read the same, and other transports are left."""
    import inspect
    import socket

    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactor, StringTransport

    from rtmpd._twisted import shed_transport_strings

    assert "return self.logstr" in inspect.getsource(tcp.Connection.logPrefix)
    assert "return self.repstr" in inspect.getsource(tcp.Server.__repr__)
    init = inspect.getsource(tcp.Server.__init__)
    assert "self.logstr = " in init and "self.repstr" in init and "_realPortNumber" in init

    class Port:
        _realPortNumber = 8501

    left, right = socket.socketpair()
    with left, right:
        transport = tcp.Server(left, Protocol(), ("127.0.0.1", 5000), Port(), 7, MemoryReactor())
        before = (transport.logPrefix(), repr(transport))
        assert before == ("Protocol,7,127.0.0.1", "<Protocol #7 on 8501>")
        shed_transport_strings(transport)
        assert "logstr" not in transport.__dict__ and "repstr" not in transport.__dict__
        assert (transport.logPrefix(), repr(transport)) == before
        assert isinstance(transport, tcp.Server)
        del transport.protocol  # as connectionLost leaves it
        assert transport.logPrefix() == "-,7,127.0.0.1"
    other = StringTransport()
    shed_transport_strings(other)
    assert type(other) is StringTransport
