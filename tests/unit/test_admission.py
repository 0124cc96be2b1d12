"""The one admission path: names, limits, authorizers that answer now or
later, takeover, the publisher watchdog, connection counting, and what the
listeners hear; then the same path through the RTMP and HTTP adapters with a
decision that comes later."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rtmpd.admission import (
    ALLOW,
    Action,
    Admission,
    AdmissionRefused,
    AdmissionRequest,
    Limits,
    Publisher,
    Refusal,
    deny,
)
from rtmpd.codec import flv
from rtmpd.fanout import ViewerOutput
from rtmpd.interfaces import IAdmissionListener, IAuthorizer, IMediaSource, IViewer
from rtmpd.media import Frame, FrameKind
from rtmpd.protocols.flvhttp import CHUNKED
from rtmpd.registry import Stream, StreamConfig, StreamRegistry

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f"
KEYFRAME = b"\x17\x01\x00\x00\x00" + b"k" * 200


def request(action: Action = Action.PUBLISH, stream: str = "cam", *, app: str = "live",
            query: str = "", client_id: int = 0) -> AdmissionRequest:
    return AdmissionRequest(
        action=action, app=app, stream=stream, query=query, peer_host="127.0.0.1",
        peer_port=5000, protocol="rtmp", client_id=client_id,
    )


@implementer(IMediaSource)
class Source:
    description = "test source"

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def stop_publishing(self, reason: str) -> None:
        self.stopped.append(reason)


@implementer(IAdmissionListener)
class Listener:
    def __init__(self) -> None:
        self.heard: list[tuple[str, str, str]] = []

    def refused(self, request: object, refusal: object, message: str) -> None:
        assert isinstance(request, AdmissionRequest) and isinstance(refusal, Refusal)
        self.heard.append(("refused", request.path, refusal.value))

    def started(self, request: object) -> None:
        assert isinstance(request, AdmissionRequest)
        self.heard.append(("started", request.action.value, request.path))

    def ended(self, request: object, why: str) -> None:
        assert isinstance(request, AdmissionRequest)
        self.heard.append(("ended", request.action.value, why))


@implementer(IAuthorizer)
class LaterAuthorizer:
    """Answers each request when the test says so."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred[Any]] = []
        self.asked: list[AdmissionRequest] = []

    def authorize(self, request: object) -> defer.Deferred[Any]:
        assert isinstance(request, AdmissionRequest)
        self.asked.append(request)
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d


class Viewer(ViewerOutput):
    def __init__(self, stream: Stream) -> None:
        super().__init__(StringTransport(), "test viewer", stream=stream, output=CHUNKED,
                         protocol="http-flv")
        self.ended: list[str] = []

    def stream_ended(self, reason: str) -> None:
        self.ended.append(reason)
        self.finish(f"stream ended: {reason}")

    def drop(self, reason: str) -> None:
        self.finish(f"dropped: {reason}", dropped=True)


def make(**kwargs: Any) -> tuple[Admission, StreamRegistry, Clock, Listener]:
    clock = Clock()
    registry = StreamRegistry(clock, StreamConfig(merge_ms=0))
    admission = Admission(registry, **kwargs)
    listener = Listener()
    admission.add_listener(listener)
    return admission, registry, clock, listener


def fired(d: defer.Deferred[Any]) -> bool:
    out: list[Any] = []
    d.addBoth(lambda r: out.append(r) or r)
    return bool(out)


def result(d: defer.Deferred[Any]) -> Any:
    """What a Deferred that has fired holds (a refusal raises)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], defer.Failure):
        out[0].raiseException()
    return out[0]


def refusal_of(d: defer.Deferred[Any]) -> Refusal:
    with pytest.raises(AdmissionRefused) as refused:
        result(d)
    return refused.value.refusal


def test_with_no_authorizer_a_publish_is_decided_at_once() -> None:
    admission, registry, _, listener = make()
    publisher = result(admission.publish(request(), Source()))
    assert isinstance(publisher, Publisher)
    assert registry.streams[("live", "cam")] is publisher.stream
    assert listener.heard == [("started", "publish", "live/cam")]


@pytest.mark.parametrize(("app", "stream"), [("live", "../x"), ("", "cam"), ("live", "a" * 129)])
def test_bad_names_are_refused_before_anything_else(app: str, stream: str) -> None:
    authorizer = LaterAuthorizer()
    admission, registry, _, listener = make(authorizers=[authorizer])
    assert refusal_of(admission.publish(request(stream=stream, app=app), Source())) is (
        Refusal.BAD_NAME
    )
    assert authorizer.asked == [] and registry.streams == {}
    assert listener.heard[0][0] == "refused"


def test_a_second_publisher_is_busy_unless_takeover() -> None:
    admission, _, _, _ = make()
    result(admission.publish(request(), Source()))
    assert refusal_of(admission.publish(request(), Source())) is Refusal.BUSY


def test_takeover_hands_the_stream_to_the_new_publisher_and_keeps_its_viewers() -> None:
    admission, registry, _, listener = make(takeover=True)
    old_source = Source()
    old = result(admission.publish(request(), old_source))
    old.push(Frame.from_tag(FrameKind.VIDEO, 0, AVC_HEADER))
    old.push(Frame.from_tag(FrameKind.VIDEO, 0, KEYFRAME))
    viewer = result(admission.play(request(Action.PLAY), Viewer))
    sent = viewer.bytes_sent
    new = result(admission.publish(request(), Source()))
    assert old.ended and old_source.stopped == ["replaced by a new publisher"]
    assert ("ended", "publish", "replaced by a new publisher") in listener.heard
    # The same stream goes on, fed by the new publisher, viewers and all.
    assert new.stream is old.stream and new.stream.live
    assert registry.streams[("live", "cam")] is new.stream
    assert viewer.ended == [] and viewer.group is not None
    new.push(Frame.from_tag(FrameKind.VIDEO, 0, KEYFRAME))
    assert viewer.bytes_sent > sent
    # What the old connection still sends while closing goes nowhere, and
    # its close ends nothing.
    frames = new.stream.frames_in
    old.push(Frame.from_tag(FrameKind.VIDEO, 40, KEYFRAME))
    old.end("disconnected")
    assert new.stream.frames_in == frames and new.stream.live


def test_stream_and_viewer_limits_refuse() -> None:
    admission, _, _, _ = make(limits=Limits(max_streams=1, max_viewers_per_stream=1))
    result(admission.publish(request(), Source()))
    assert refusal_of(admission.publish(request(stream="two"), Source())) is Refusal.LIMIT
    viewer = result(admission.play(request(Action.PLAY), Viewer))
    assert isinstance(viewer, Viewer)
    assert refusal_of(admission.play(request(Action.PLAY), Viewer)) is Refusal.LIMIT
    viewer.finish("left")
    assert isinstance(result(admission.play(request(Action.PLAY), Viewer)), Viewer)


def test_play_of_a_stream_that_is_not_live_is_not_found() -> None:
    admission, _, _, listener = make()
    assert refusal_of(admission.play(request(Action.PLAY, "nobody"), Viewer)) is (
        Refusal.NOT_FOUND
    )
    assert listener.heard == [("refused", "live/nobody", "not_found")]
    assert admission.refusals[Refusal.NOT_FOUND] == 1


def test_a_later_decision_holds_the_publish_until_it_comes() -> None:
    authorizer = LaterAuthorizer()
    admission, registry, _, _ = make(authorizers=[authorizer])
    d = admission.publish(request(query="key=1"), Source())
    assert not fired(d) and registry.streams == {}
    assert authorizer.asked[0].params() == {"key": "1"}
    authorizer.pending[0].callback(ALLOW)
    assert isinstance(result(d), Publisher)


def test_a_refusal_keeps_its_code_and_message() -> None:
    authorizer = LaterAuthorizer()
    admission, _, _, listener = make(authorizers=[authorizer])
    published = admission.publish(request(), Source())
    authorizer.pending.pop(0).callback(ALLOW)
    result(published)
    listener.heard.clear()
    d = admission.play(request(Action.PLAY), Viewer)
    authorizer.pending[0].callback(deny("no key given", Refusal.UNAUTHORIZED))
    with pytest.raises(AdmissionRefused) as refused:
        result(d)
    assert refused.value.refusal is Refusal.UNAUTHORIZED
    assert refused.value.message == "no key given"
    assert listener.heard == [("refused", "live/cam", "unauthorized")]


def test_an_authorizer_that_breaks_refuses_rather_than_allows() -> None:
    authorizer = LaterAuthorizer()
    admission, registry, _, _ = make(authorizers=[authorizer])
    d = admission.publish(request(), Source())
    authorizer.pending[0].errback(RuntimeError("hook client bug"))
    assert refusal_of(d) is Refusal.FORBIDDEN
    assert registry.streams == {}


def test_a_client_gone_before_the_decision_starts_nothing() -> None:
    authorizer = LaterAuthorizer()
    admission, registry, _, listener = make(authorizers=[authorizer])
    d = admission.publish(request(), Source(), alive=lambda: False)
    authorizer.pending[0].callback(ALLOW)
    assert refusal_of(d) is Refusal.GONE
    assert registry.streams == {}
    assert not any(h[0] == "started" for h in listener.heard)


def test_a_publisher_that_sends_no_media_is_stopped_and_its_name_freed() -> None:
    admission, registry, clock, listener = make(publisher_timeout_s=4)
    source = Source()
    publisher = result(admission.publish(request(), source))
    for _ in range(6):
        clock.advance(1)
        publisher.stream.push(Frame.from_tag(FrameKind.VIDEO, 0, KEYFRAME))
    assert not publisher.ended
    for _ in range(6):
        clock.advance(1)
    assert publisher.ended and ("live", "cam") not in registry.streams
    assert source.stopped and "no media" in source.stopped[0]
    assert listener.heard[-1][0] == "ended"


def test_connections_are_counted_limited_per_address_and_released() -> None:
    admission, _, _, _ = make(limits=Limits(max_connections=3, max_connections_per_ip=2))
    closed: list[str] = []
    a = admission.open_connection("10.0.0.1", 1, "rtmp", closed.append)
    admission.open_connection("10.0.0.1", 2, "rtmp", closed.append)
    with pytest.raises(AdmissionRefused):
        admission.open_connection("10.0.0.1", 3, "rtmp", closed.append)
    admission.open_connection("10.0.0.2", 1, "http", closed.append)
    with pytest.raises(AdmissionRefused):
        admission.open_connection("10.0.0.3", 1, "http", closed.append)
    admission.close_connection(a)
    admission.close_connection(a)  # idempotent
    b = admission.open_connection("10.0.0.1", 4, "rtmp", closed.append)
    assert admission.kick_client(b, "through the API")
    assert closed == ["through the API"]
    assert not admission.kick_client(999, "nobody")
    assert admission.refusals[Refusal.LIMIT] == 2


def test_a_viewer_ends_once_with_one_line_and_its_totals_counted() -> None:
    admission, _, _, listener = make()
    publisher = result(admission.publish(request(), Source()))
    publisher.stream.push(Frame.from_tag(FrameKind.VIDEO, 0, AVC_HEADER))
    publisher.stream.push(Frame.from_tag(FrameKind.VIDEO, 0, KEYFRAME))
    viewer = result(admission.play(request(Action.PLAY), Viewer))
    assert verifyObject(IViewer, viewer)
    sent = viewer.bytes_sent
    assert sent > 0
    publisher.end("stopped")
    viewer.finish("closed by the client")
    ends = [h for h in listener.heard if h[:2] == ("ended", "play")]
    assert ends == [("ended", "play", "stream ended: publisher rtmp 127.0.0.1:5000 stopped")]
    assert admission.ended_bytes_out["http-flv"] == sent


# -- through the adapters, with a decision that comes later ----------------------------


def _http_channel(admission: Admission, clock: Clock, **site: Any) -> tuple[Any, StringTransport]:
    """A connection on the FLV port's Site, and the transport it writes to."""
    from rtmpd.protocols.flvhttp import FlvHttpResource, FlvSite

    flv_site = FlvSite(FlvHttpResource(admission), reactor=clock, **site)
    channel = flv_site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(transport)
    return channel, transport


def test_rtmp_publish_waits_for_the_decision_then_starts() -> None:
    from rtmpd.protocols.rtmp import RtmpServerFactory
    from tests.unit.test_protocols import Peer

    authorizer = LaterAuthorizer()
    admission, registry, clock, _ = make(authorizers=[authorizer])
    factory = RtmpServerFactory(admission, clock=clock)
    peer = Peer(factory)
    sid = peer.open_stream()
    peer.client.publish(sid, "cam?key=abc")
    peer.pump()
    assert peer.statuses() == [] and registry.streams == {}
    assert authorizer.asked[0].params() == {"key": "abc"}
    authorizer.pending[0].callback(ALLOW)
    peer.pump()
    assert peer.statuses() == ["NetStream.Publish.Start"]
    assert ("live", "cam") in registry.streams


def test_rtmp_publish_refused_for_credentials_is_told_and_closed() -> None:
    from rtmpd.protocols.rtmp import RtmpServerFactory
    from tests.unit.test_protocols import Peer

    authorizer = LaterAuthorizer()
    admission, registry, clock, _ = make(authorizers=[authorizer])
    peer = Peer(factory := RtmpServerFactory(admission, clock=clock))
    assert factory.admission is admission
    sid = peer.open_stream()
    peer.client.publish(sid, "cam")
    peer.pump()
    authorizer.pending[0].callback(deny("wrong key", Refusal.UNAUTHORIZED))
    peer.pump()
    assert peer.statuses() == ["NetStream.Publish.Unauthorized"]
    assert peer.transport.disconnecting
    assert registry.streams == {}


def test_http_publish_reads_no_body_until_the_decision_then_publishes_it() -> None:

    authorizer = LaterAuthorizer()
    admission, registry, clock, _ = make(authorizers=[authorizer])
    channel, transport = _http_channel(admission, clock)
    body = (flv.encode_header(has_audio=False, has_video=True)
            + flv.encode_tag(9, 0, AVC_HEADER) + flv.encode_tag(9, 0, KEYFRAME))
    channel.dataReceived(
        b"POST /live/cam?key=1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body[:30]
    )
    # Deciding: the socket is not read, what came is kept, nothing is live.
    assert transport.producerState == "paused"
    assert registry.streams == {}
    authorizer.pending[0].callback(ALLOW)
    assert transport.producerState == "producing"
    channel.dataReceived(body[30:])
    assert b"200 OK" in transport.value() and b"published 2 tags" in transport.value()
    assert registry.streams == {}  # the body ended, so did the stream
    assert admission.ended_bytes_in > 0


def test_http_publish_refused_later_is_answered_before_its_body() -> None:

    authorizer = LaterAuthorizer()
    admission, registry, clock, _ = make(authorizers=[authorizer])
    channel, transport = _http_channel(admission, clock)
    channel.dataReceived(b"POST /live/cam HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    authorizer.pending[0].callback(deny("on-publish hook answered 403"))
    assert transport.value().startswith(b"HTTP/1.1 403 Forbidden")
    # No CORS on a publish answer without --cors-publish.
    assert b"Access-Control-Allow-Origin" not in transport.value()
    assert registry.streams == {}


def test_http_headers_must_come_within_the_header_timeout() -> None:

    admission, _, clock, _ = make()
    channel, transport = _http_channel(admission, clock, header_timeout=2)
    for byte in b"GET /live/cam.flv HTTP/1.1\r\n":
        channel.dataReceived(bytes([byte]))
        clock.advance(0.1)
    assert transport.connected if hasattr(transport, "connected") else True
    clock.advance(2)
    assert transport.disconnecting
    channel.connectionLost(None)  # type: ignore[arg-type]
    assert admission.clients == {}


def test_rtmp_client_gone_while_deciding_starts_nothing() -> None:
    from rtmpd.protocols.rtmp import RtmpServerFactory
    from tests.unit.test_protocols import Peer

    authorizer = LaterAuthorizer()
    admission, registry, clock, listener = make(authorizers=[authorizer])
    peer = Peer(RtmpServerFactory(admission, clock=clock))
    sid = peer.open_stream()
    peer.client.publish(sid, "ghost")
    peer.pump()
    peer.server.connectionLost()
    authorizer.pending[0].callback(ALLOW)
    assert registry.streams == {}
    assert not any(h[0] in ("started", "ended") for h in listener.heard)
    assert admission.clients == {}


def test_many_commands_in_one_packet_are_handled_without_recursion() -> None:
    from rtmpd.protocols.rtmp import RtmpServerFactory
    from tests.unit.test_protocols import Peer

    admission, _, clock, _ = make()
    peer = Peer(RtmpServerFactory(admission, clock=clock))
    sid = peer.open_stream()
    for _ in range(400):
        peer.client.play(sid, "nosuch")
    peer.pump()
    assert peer.statuses().count("NetStream.Play.StreamNotFound") == 400
    assert not peer.transport.disconnecting


def test_rtmp_paused_viewers_still_count_against_the_viewer_limit() -> None:
    from rtmpd.protocols.rtmp import RtmpServerFactory
    from tests.unit.test_protocols import AVC_HEADER as HEADER
    from tests.unit.test_protocols import KEYFRAME as KEY
    from tests.unit.test_protocols import Peer

    admission, _, clock, _ = make(limits=Limits(max_viewers_per_stream=1))
    factory = RtmpServerFactory(admission, clock=clock)
    publisher = result(admission.publish(request(), Source()))
    publisher.stream.push(Frame.from_tag(FrameKind.VIDEO, 0, HEADER))
    publisher.stream.push(Frame.from_tag(FrameKind.VIDEO, 0, KEY))
    first = Peer(factory)
    sid = first.open_stream()
    first.client.play(sid, "cam")
    first.pump()
    first.client.send_command("pause", None, True, 0.0, stream_id=sid)
    first.pump()
    assert publisher.stream.viewer_count() == 0 and len(publisher.stream.viewers) == 1
    second = Peer(factory)
    sid2 = second.open_stream()
    second.client.play(sid2, "cam")
    second.pump()
    assert second.statuses() == ["NetStream.Play.Failed"]
    first.client.send_command("pause", None, False, 0.0, stream_id=sid)
    first.pump()
    assert publisher.stream.viewer_count() == 1


def _http(admission: Admission, clock: Clock, data: bytes, **site: Any) -> StringTransport:
    """An HTTP connection on the FLV port that sent ``data``: what it got."""
    channel, transport = _http_channel(admission, clock, **site)
    channel.dataReceived(data)
    return transport


def test_a_request_that_is_not_a_publish_may_not_carry_a_body() -> None:
    admission, _, clock, _ = make()
    transport = _http(admission, clock,
                      b"GET /live/cam.flv HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400")


def test_a_post_asking_for_a_websocket_upgrade_is_a_plain_publish() -> None:
    admission, registry, clock, _ = make()
    body = flv.encode_header(has_audio=False, has_video=True) + flv.encode_tag(9, 0, AVC_HEADER)
    transport = _http(
        admission, clock,
        b"POST /live/cam HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body,
    )
    assert b"200 OK" in transport.value()
    assert registry.streams == {}


@pytest.mark.parametrize(("origin", "allowed"), [
    (b"http://evil.example", False),
    (b"http://media.example:8080", True),  # the server's own pages, another port
    (None, True),  # encoders send no Origin
])
def test_a_page_on_another_site_may_not_publish_without_cors_publish(
    origin: bytes | None, allowed: bool
) -> None:
    admission, registry, clock, _ = make()
    headers = b"Host: media.example:8501\r\n" + (b"Origin: %s\r\n" % origin if origin else b"")
    transport = _http(
        admission, clock,
        b"POST /live/cam HTTP/1.1\r\n" + headers + b"Content-Length: 100000\r\n\r\n",
    )
    if allowed:
        assert ("live", "cam") in registry.streams
    else:
        assert transport.value().startswith(b"HTTP/1.1 403")
        assert registry.streams == {}


def test_the_web_port_closes_clients_trickling_their_headers() -> None:
    from rtmpd.protocols.web import make_web_site

    clock = Clock()
    site = make_web_site("/tmp", reactor=clock, header_timeout=2)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /hls/")
    clock.advance(2.5)
    assert transport.disconnecting


def test_a_refused_get_with_a_body_is_not_served_once_the_body_ends() -> None:
    admission, registry, clock, _ = make()
    result(admission.publish(request(stream="x"), Source()))
    transport = _http(admission, clock,
                      b"GET /live/x.flv HTTP/1.1\r\nHost: y\r\nContent-Length: 3\r\n\r\nabc")
    assert transport.value().startswith(b"HTTP/1.1 400")
    assert b"200 OK" not in transport.value()
    assert registry.streams[("live", "x")].viewers == {}


def test_the_web_port_refuses_request_bodies() -> None:
    from rtmpd.protocols.web import make_web_site

    site = make_web_site("/tmp", reactor=Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(transport)
    channel.dataReceived(b"POST /hls/x HTTP/1.1\r\nHost: y\r\nContent-Length: 300000000\r\n\r\n"
                         + b"z" * 70000)
    assert transport.value().startswith(b"HTTP/1.1 413")


def test_rtmp_publish_again_on_one_message_stream_ends_the_first() -> None:
    from rtmpd.protocols.rtmp import RtmpServerFactory
    from tests.unit.test_protocols import Peer

    admission, registry, clock, _ = make()
    peer = Peer(RtmpServerFactory(admission, clock=clock))
    sid = peer.open_stream()
    peer.client.publish(sid, "one")
    peer.pump()
    peer.client.publish(sid, "two")
    peer.pump()
    assert list(registry.streams) == [("live", "two")]
    peer.server.connectionLost()
    assert registry.streams == {}


def test_rtmp_resume_after_pause_starts_at_the_next_keyframe_not_back_in_time() -> None:
    from rtmpd.protocols.rtmp import RtmpServerFactory
    from tests.unit.test_protocols import AVC_HEADER as HEADER
    from tests.unit.test_protocols import KEYFRAME as KEY
    from tests.unit.test_protocols import Peer

    admission, _, clock, _ = make()
    publisher = result(admission.publish(request(), Source()))
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 0, HEADER))
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 0, KEY))
    peer = Peer(RtmpServerFactory(admission, clock=clock))
    sid = peer.open_stream()
    peer.client.play(sid, "cam")
    peer.pump()
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 1000, KEY))
    peer.pump()
    peer.client.send_command("pause", None, True, 0.0, stream_id=sid)
    peer.pump()
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 2000, KEY))
    peer.client.send_command("pause", None, False, 0.0, stream_id=sid)
    peer.pump()
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 3000, KEY))
    peer.pump()
    stamps = [m.timestamp_ms for m in peer.media()]
    assert stamps == sorted(stamps) and stamps[-1] == 3000
    # A stream that ends while its viewer is paused is reported to it.
    peer.client.send_command("pause", None, True, 0.0, stream_id=sid)
    peer.pump()
    publisher.end("stopped")
    peer.pump()
    assert "NetStream.Play.UnpublishNotify" in peer.statuses()


def test_takeover_forgets_the_old_encoders_headers_and_restarts_recordings() -> None:
    admission, registry, _, _ = make(takeover=True)

    class Observer:
        def __init__(self) -> None:
            self.heard: list[str] = []

        def stream_published(self, stream: object) -> None:
            self.heard.append("published")

        def stream_unpublished(self, stream: object) -> None:
            self.heard.append("unpublished")

    observer = Observer()
    registry.add_observer(observer)  # type: ignore[arg-type]
    old = result(admission.publish(request(), Source()))
    old.push(Frame.from_tag(FrameKind.VIDEO, 0, AVC_HEADER))
    old.push(Frame.from_tag(FrameKind.VIDEO, 4960, KEYFRAME))
    old.push(Frame.from_tag(FrameKind.VIDEO, 5000, KEYFRAME))
    new = result(admission.publish(request(), Source()))
    stream = new.stream
    assert stream.video_header is None and stream.gop.frames == []
    assert observer.heard == ["published", "unpublished", "published"]
    # The new encoder starts at 0: its frames follow the last one sent, by
    # the old stream's frame interval (40 ms: on its frame grid).
    new.push(Frame.from_tag(FrameKind.VIDEO, 0, KEYFRAME))
    assert stream.gop.frames[0].timestamp_ms == 5040
