"""ReadPacer: a publisher's socket is read at most once per interval."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage

from rtmpd.admission import HOLDER_WAKE_S, Admission
from rtmpd.protocols.readpacing import (
    MAX_INTERVAL_MS,
    MIN_BATCH_BYTES,
    READ_BYTES,
    ReadPacer,
    batch_bytes,
)
from rtmpd.protocols.rtmp import RtmpServerFactory
from rtmpd.registry import StreamConfig, StreamRegistry
from rtmpd.tap.rtmpd import Options, stream_config
from tests.unit.test_protocols import AVC_HEADER, INTER, KEYFRAME, Peer


@pytest.fixture
def plain_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' StringTransports count as plain TCP sockets for pacing
    (a real socket's are in test_a_paced_tcp_transport_reads_a_whole_batch_at_once)."""
    from rtmpd.protocols import rtmp

    monkeypatch.setattr(rtmp, "paceable", lambda transport: True)


def test_short_read_pauses_the_transport_until_the_interval_ends() -> None:
    clock = Clock()
    transport = StringTransport()
    pacer = ReadPacer(transport, clock, 40)
    pacer.after_read(500)
    assert transport.producerState == "paused"
    assert pacer.paused
    clock.advance(0.039)
    assert transport.producerState == "paused"
    clock.advance(0.001)
    assert transport.producerState == "producing"
    assert not pacer.paused


def test_full_read_is_not_followed_by_a_pause() -> None:
    """A read that filled the read size may have left data: pausing would throttle."""
    clock = Clock()
    transport = StringTransport()
    pacer = ReadPacer(transport, clock, 40)
    pacer.after_read(READ_BYTES)
    assert transport.producerState == "producing"
    assert clock.getDelayedCalls() == []


def test_pause_shrinks_to_gather_one_batch_at_the_publishers_rate() -> None:
    """A 100 ms pause that would gather two batches at the publisher's rate
    is halved (no socket here: the batch is MIN_BATCH_BYTES)."""
    clock = Clock()
    transport = StringTransport()
    pacer = ReadPacer(transport, clock, 100)
    pacer.after_read(500)
    clock.advance(0.1)
    pacer.after_read(2 * MIN_BATCH_BYTES - 500)  # two batches in 100 ms
    assert transport.producerState == "paused"
    clock.advance(0.049)
    assert transport.producerState == "paused"
    clock.advance(0.002)
    assert transport.producerState == "producing"


def test_a_batch_is_half_the_receive_buffer_within_one_read() -> None:
    """Linux advertises about half a socket's receive buffer as the window,
    and grows the buffer as the stream goes on: a pause gathers no more."""
    assert batch_bytes(0) == MIN_BATCH_BYTES  # no socket
    assert batch_bytes(131072) == 65536  # a new TCP socket's buffer
    assert batch_bytes(87380) == 43690  # an older kernel's: less than the floor for unknown
    assert batch_bytes(400_000) == 200_000
    assert batch_bytes(4_000_000) == READ_BYTES


def test_a_paced_tcp_transport_reads_a_whole_batch_at_once() -> None:
    """A real socket: its autotuned receive buffer sets the batch, and the
    transport's read size is raised so that one read takes a batch."""
    import socket

    from rtmpd.protocols import readpacing

    class SocketTransport(StringTransport):
        bufferSize = 65536

        def __init__(self, sock: socket.socket) -> None:
            super().__init__()
            self.sock = sock

        def getHandle(self) -> socket.socket:
            return self.sock

    left, right = socket.socketpair()
    with left, right:
        transport = SocketTransport(left)
        ReadPacer(transport, Clock(), 100)
        assert transport.bufferSize == READ_BYTES
        kernel = left.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert readpacing._receive_buffer(transport) == kernel > 0
    assert readpacing._receive_buffer(transport) == 0  # closed: no buffer to ask


def test_stop_cancels_the_pending_resume() -> None:
    clock = Clock()
    pacer = ReadPacer(StringTransport(), clock, 40)
    pacer.after_read(10)
    pacer.stop()
    assert clock.getDelayedCalls() == []


def test_wake_reads_at_once_and_without_pause_for_one_interval() -> None:
    """A woken transport reads on: a gone peer's last data, then its EOF,
    reach the reactor without waiting out another pause."""
    clock = Clock()
    transport = StringTransport()
    pacer = ReadPacer(transport, clock, 40)
    assert not pacer.wake()  # not paused: nothing to do
    clock.advance(0.04)
    pacer.after_read(500)
    assert pacer.wake()
    assert transport.producerState == "producing"
    assert clock.getDelayedCalls() == []
    pacer.after_read(500)
    assert transport.producerState == "producing"
    clock.advance(0.04)
    pacer.after_read(500)  # the interval is over: batched again
    assert transport.producerState == "paused"


def _publisher(factory: RtmpServerFactory) -> tuple[Peer, int]:
    """A publisher of live/cam that has sent three frames, and its stream id."""
    publisher = Peer(factory)
    sid = publisher.open_stream()
    publisher.client.publish(sid, "cam")
    publisher.pump()
    for ts, body in ((0, AVC_HEADER), (0, KEYFRAME), (40, INTER)):
        publisher.client.send_media(sid, 9, ts, body)
    publisher.pump()
    return publisher, sid


def _paced_publisher(factory: RtmpServerFactory) -> Peer:
    publisher, _sid = _publisher(factory)
    assert publisher.transport.producerState == "paused"
    return publisher


def _publish_over_a_paused_holder() -> tuple[
    Clock, StreamRegistry, RtmpServerFactory, Peer, Peer
]:
    """A publisher of live/cam whose reads are paused, and a second
    connection publishing the same name (not answered yet)."""
    clock = Clock()
    registry = StreamRegistry(clock, StreamConfig(merge_ms=0, publish_read_ms=100))
    factory = RtmpServerFactory(Admission(registry, publisher_timeout_s=10), clock=clock)
    first = _paced_publisher(factory)
    second = Peer(factory)
    sid = second.open_stream()
    second.client.publish(sid, "cam")
    second.pump()
    return clock, registry, factory, first, second


def test_publish_of_a_name_held_by_a_paused_publisher_that_left_starts(plain_tcp: None) -> None:
    """While its reads are paused a dead publisher's EOF is not seen: a
    publish of its name wakes it, and once the reactor has read the close the
    name is free, for this very publish (no BadName to retry)."""
    clock, registry, _factory, first, second = _publish_over_a_paused_holder()
    assert second.statuses() == []  # not judged yet
    assert first.transport.producerState == "producing"  # woken
    first.server.connectionLost()  # what the reactor reads once woken: the EOF
    clock.advance(0)
    clock.advance(HOLDER_WAKE_S)
    second.pump()
    assert second.statuses() == ["NetStream.Publish.Start"]
    stream = registry.get("live", "cam")
    assert stream is not None and stream.source is second.server


def test_publish_of_a_name_held_by_a_paused_publisher_still_there_is_busy(plain_tcp: None) -> None:
    clock, registry, factory, first, second = _publish_over_a_paused_holder()
    assert first.transport.producerState == "producing"
    clock.advance(0)
    clock.advance(HOLDER_WAKE_S)
    second.pump()
    assert second.statuses() == ["NetStream.Publish.BadName"]
    stream = registry.get("live", "cam")
    assert stream is not None and stream.source is first.server
    # Reading at once (not paused): a third publish is judged busy at once.
    third = Peer(factory)
    tsid = third.open_stream()
    third.client.publish(tsid, "cam")
    third.pump()
    assert third.statuses() == ["NetStream.Publish.BadName"]


@pytest.mark.parametrize("interval_ms", [0, -1, MAX_INTERVAL_MS + 1])
def test_interval_out_of_range_is_refused(interval_ms: float) -> None:
    with pytest.raises(ValueError, match="out of range"):
        ReadPacer(StringTransport(), Clock(), interval_ms)


def test_rtmp_publisher_is_paced_only_while_nobody_watches(plain_tcp: None) -> None:
    clock = Clock()
    registry = StreamRegistry(clock, StreamConfig(merge_ms=0, publish_read_ms=40))
    factory = RtmpServerFactory(Admission(registry, publisher_timeout_s=10), clock=clock)
    publisher = Peer(factory)
    sid = publisher.open_stream()
    assert publisher.transport.producerState == "producing"  # the handshake is not paced
    publisher.client.publish(sid, "cam")
    publisher.pump()
    for ts, body in ((0, AVC_HEADER), (0, KEYFRAME), (40, INTER)):
        publisher.client.send_media(sid, 9, ts, body)
    publisher.pump()
    assert publisher.transport.producerState == "paused"  # recorders only: batched
    clock.advance(0.04)
    assert publisher.transport.producerState == "producing"

    viewer = Peer(factory)
    vsid = viewer.open_stream()
    viewer.client.play(vsid, "cam")
    viewer.pump()
    assert viewer.transport.producerState == "producing"  # a viewer is never paced
    publisher.client.send_media(sid, 9, 80, INTER)
    publisher.pump()
    assert publisher.transport.producerState == "producing"  # watched: read at once

    viewer.server.connectionLost()
    clock.advance(0.04)  # the interval the viewer's join woke it for
    publisher.client.send_media(sid, 9, 120, INTER)
    publisher.pump()
    assert publisher.transport.producerState == "paused"
    publisher.server.connectionLost()
    clock.advance(0.04)  # the cancelled resume does not touch the closed transport
    assert publisher.transport.producerState == "paused"


def _publishing(read_ms: float) -> tuple[Clock, RtmpServerFactory, Peer, int]:
    """An RTMP publisher of live/cam that has sent three frames, on a server
    whose unwatched publishers are read every ``read_ms``."""
    clock = Clock()
    registry = StreamRegistry(clock, StreamConfig(merge_ms=0, publish_read_ms=read_ms))
    factory = RtmpServerFactory(Admission(registry, publisher_timeout_s=10), clock=clock)
    publisher, sid = _publisher(factory)
    return clock, factory, publisher, sid


def test_first_viewer_ends_the_publishers_read_pause_at_once(plain_tcp: None) -> None:
    """A viewer who joins while the publisher's socket is left unread gets
    live frames now, not when the pause would have ended."""
    _clock, factory, publisher, _sid = _publishing(400)
    assert publisher.transport.producerState == "paused"

    viewer = Peer(factory)
    vsid = viewer.open_stream()
    viewer.client.play(vsid, "cam")
    viewer.pump()
    assert publisher.transport.producerState == "producing"  # no clock.advance


def test_publish_read_ms_option_reaches_the_stream_config() -> None:
    defaults = Options()
    defaults.parseOptions([])
    assert stream_config(defaults).publish_read_ms == 250
    off = Options()
    off.parseOptions(["--publish-read-ms", "0"])
    assert stream_config(off).publish_read_ms == 0


@pytest.mark.parametrize("value", ["-1", str(MAX_INTERVAL_MS + 1), "soon"])
def test_publish_read_ms_out_of_range_is_a_usage_error(value: str) -> None:
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--publish-read-ms", value])


def test_a_publisher_not_on_plain_tcp_is_never_paced() -> None:
    """Through TLS (RTMPS) a read reaches the protocol in pieces and the
    socket is not the transport's to tune: its publisher is read at once
    (here a StringTransport stands for such a wrapper)."""
    import socket

    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactor

    from rtmpd.protocols.readpacing import paceable

    _clock, _factory, publisher, _sid = _publishing(40)
    assert publisher.transport.producerState == "producing"
    assert publisher.server._pacer is None
    assert not paceable(publisher.transport)

    class Port:
        _realPortNumber = 1935

    left, right = socket.socketpair()
    with left, right:
        plain = tcp.Server(left, Protocol(), ("127.0.0.1", 5000), Port(), 1, MemoryReactor())
        assert paceable(plain)


def test_a_paused_publisher_told_to_stop_is_read_first(plain_tcp: None) -> None:
    """What a paced publisher sent during the pause waits in its socket: told
    to stop (shutdown, takeover, kick), it is read first, so the recordings
    end where it was stopped, not up to a pause earlier."""
    _clock, factory, publisher, sid = _publishing(250)
    assert publisher.transport.producerState == "paused"
    stream = factory.admission.registry.get("live", "cam")
    assert stream is not None
    frames = stream.frames_in
    publisher.client.send_media(sid, 9, 80, INTER)  # sent, not read: in the socket

    def read_the_socket() -> None:
        data = publisher.client.data_to_send()
        if data:
            publisher.server.dataReceived(data)

    publisher.transport.doRead = read_the_socket  # type: ignore[attr-defined]
    # As shutdown and the API stop it: the publish ends, then its source stops.
    assert factory.admission.kick_publisher("live", "cam", "server shutting down")
    assert stream.frames_in == frames + 1
    assert publisher.server._pacer is None  # not paused again while closing
