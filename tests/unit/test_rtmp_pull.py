"""RTMP play as a pull source (rtmpd.client.rtmp_pull) against our sans-IO server
connection on a StringTransport: the play, its frames, refusals, the end, and the
upstream choosing it for rtmp:// URLs."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import Agent

from rtmpd.admission import Admission
from rtmpd.client.pull import FlvPull
from rtmpd.client.rtmp_pull import RtmpPull, _RtmpPlayProtocol
from rtmpd.codec import amf0
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp.chunk import NEED_DATA
from rtmpd.codec.rtmp.connection import ServerConnection
from rtmpd.media import Frame, FrameKind
from rtmpd.registry import StreamConfig, StreamRegistry
from rtmpd.services.upstream import Upstream, parse_pull

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f"
KEY = b"\x17\x01\x00\x00\x00" + b"k" * 50
METADATA = amf0.encode_all("onMetaData", amf0.ECMAArray({"width": 640.0}))


class Listener:
    def __init__(self) -> None:
        self.said: list[object] = []

    def pull_answered(self, stream_id: str | None) -> None:
        self.said.append(("answered", stream_id))

    def pull_frame(self, frame: Frame) -> None:
        self.said.append(frame)

    def pull_ended(self, reason: str) -> None:
        self.said.append(("ended", reason))

    def pull_refused(self, status: int | None, reason: str) -> None:
        self.said.append(("refused", status, reason))


class Link:
    """An RtmpPull's connection, answered by a server the test drives."""

    def __init__(self, url: bytes = b"rtmp://origin/live/cam?key=k") -> None:
        self.clock = MemoryReactorClock()
        self.listener = Listener()
        self.pull = RtmpPull(self.clock, url, self.clock, self.listener)
        self.proto = _RtmpPlayProtocol(self.pull)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.pull._connected(self.proto)
        self.server = ServerConnection()
        self.plays: list[ev.PlayRequested] = []

    def exchange(self, *, found: bool = True) -> None:
        for _ in range(20):
            data = self.transport.value()
            self.transport.clear()
            if data:
                self.server.receive_data(data)
            while (event := self.server.next_event()) is not NEED_DATA:
                if isinstance(event, ev.ConnectRequested):
                    self.server.accept_connect(event.transaction_id)
                elif isinstance(event, ev.PlayRequested):
                    self.plays.append(event)
                    if found:
                        self.server.play_start(event.stream_id, event.name)
                    else:
                        self.server.play_not_found(event.stream_id, event.name)
            out = self.server.data_to_send()
            if out and not self.transport.disconnecting:
                self.proto.dataReceived(out)
            if not data and not out:
                return


def test_an_rtmp_pull_plays_the_stream_and_reports_its_frames() -> None:
    link = Link()
    link.exchange()
    assert [(p.name, p.query) for p in link.plays] == [("cam", "key=k")]
    sid = link.plays[0].stream_id
    link.server.send_data(sid, 0, METADATA)
    link.server.send_data(sid, 0, amf0.encode_all("|RtmpSampleAccess", False, False))
    link.server.send_media(sid, 9, 1000, AVC_HEADER)
    link.server.send_media(sid, 9, 1000, KEY)
    link.exchange()
    assert link.listener.said[0] == ("answered", None)
    frames = [f for f in link.listener.said if isinstance(f, Frame)]
    assert [(f.kind, f.timestamp_ms, f.payload) for f in frames] == [
        (FrameKind.SCRIPT, 0, METADATA), (FrameKind.VIDEO, 1000, AVC_HEADER),
        (FrameKind.VIDEO, 1000, KEY)]
    assert frames[2].keyframe and frames[1].sequence_header
    assert link.pull.bytes_in > len(KEY)


def test_a_stream_the_server_does_not_have_is_refused_as_not_found() -> None:
    link = Link()
    link.exchange(found=False)
    (said,) = link.listener.said
    assert said[:2] == ("refused", 404) and "StreamNotFound" in str(said[2])
    assert link.transport.disconnecting


def test_the_publisher_leaving_ends_the_pull_and_a_stop_ends_it_once() -> None:
    link = Link()
    link.exchange()
    link.server.play_unpublish_notify(link.plays[0].stream_id, "cam")
    link.exchange()
    assert link.listener.said[-1] == ("ended",
                                     "the upstream ended the stream "
                                     "(NetStream.Play.UnpublishNotify)")
    link.pull.stop("again")
    link.proto.connectionLost(Failure(ConnectionError("closed")))
    assert len([s for s in link.listener.said if s[0] == "ended"]) == 1


def test_a_pull_with_no_data_for_the_idle_timeout_is_stopped() -> None:
    link = Link()
    link.exchange()
    link.clock.advance(link.pull.idle_timeout + 5)
    assert link.transport.disconnecting
    link.proto.connectionLost(Failure(ConnectionError("aborted")))
    assert link.listener.said[-1][0] == "ended" and "no data for" in link.listener.said[-1][1]


def test_the_upstream_pulls_rtmp_urls_over_rtmp_and_http_urls_over_http() -> None:
    reactor = MemoryReactorClock()
    admission = Admission(StreamRegistry(reactor, StreamConfig()), publisher_timeout_s=30)
    upstream = Upstream(admission, Agent(reactor), None, reactor, rules=[
        parse_pull("live/a=rtmp://nginx:1936/live/a"), parse_pull("live/b=http://o/live/b.flv")])
    listener = Listener()
    assert isinstance(upstream.make_pull(b"rtmp://nginx:1936/live/a", listener), RtmpPull)
    assert isinstance(upstream.make_pull(b"http://o/live/b.flv", listener), FlvPull)
