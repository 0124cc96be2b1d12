"""The Twisted adapters with fake transports and a fake clock: RTMP publish and
play through the real codec, HTTP-FLV play and publish, timeouts, and the
service tree built on a MemoryReactorClock."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage

from rtmpd.admission import Action, Admission, AdmissionRequest
from rtmpd.codec import amf0, flv
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp.chunk import NEED_DATA
from rtmpd.codec.rtmp.connection import ClientConnection
from rtmpd.protocols.rtmp import RtmpServerFactory, RtmpServerProtocol
from rtmpd.registry import StreamConfig, StreamRegistry
from rtmpd.tap.rtmpd import Options, makeService

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f"
KEYFRAME = b"\x17\x01\x00\x00\x00" + b"k" * 200
INTER = b"\x27\x01\x00\x00\x00" + b"i" * 100


class Peer:
    """A ClientConnection wired to a server protocol through StringTransports."""

    def __init__(self, factory: RtmpServerFactory, *, object_encoding: float = 0.0) -> None:
        self.client = ClientConnection(object_encoding=object_encoding)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.server = factory.buildProtocol(None)
        self.server.makeConnection(self.transport)
        self.events: list[object] = []

    def pump(self) -> None:
        for _ in range(10):
            out = self.client.data_to_send()
            if out:
                self.server.dataReceived(out)
            back = self.transport.value()
            self.transport.clear()
            if back:
                self.client.receive_data(back)
            while (event := self.client.next_event()) is not NEED_DATA:
                self.events.append(event)
            if not out and not back:
                return

    def statuses(self) -> list[str]:
        return [e.code for e in self.events if isinstance(e, ev.StatusReceived)]

    def media(self) -> list[ev.MediaReceived]:
        return [e for e in self.events if isinstance(e, ev.MediaReceived)]

    def open_stream(self) -> int:
        self.client.connect("live", "rtmp://127.0.0.1/live")
        self.pump()
        self.client.create_stream()
        self.pump()
        created = [e for e in self.events if isinstance(e, ev.StreamCreated)]
        return created[-1].stream_id


def make_factory(clock: Clock | None = None) -> tuple[RtmpServerFactory, StreamRegistry, Clock]:
    clock = clock or Clock()
    registry = StreamRegistry(clock, StreamConfig(merge_ms=0))
    admission = Admission(registry, publisher_timeout_s=10)
    factory = RtmpServerFactory(admission, clock=clock, handshake_timeout=5)
    return factory, registry, clock


def test_rtmp_publish_then_play_delivers_headers_and_keyframe_first() -> None:
    factory, registry, _ = make_factory()
    publisher = Peer(factory)
    sid = publisher.open_stream()
    publisher.client.publish(sid, "cam")
    publisher.pump()
    assert publisher.statuses() == ["NetStream.Publish.Start"]
    for ts, body in ((0, AVC_HEADER), (0, KEYFRAME), (40, INTER), (80, INTER)):
        publisher.client.send_media(sid, 9, ts, body)
    publisher.pump()
    assert registry.get("live", "cam") is not None

    viewer = Peer(factory)
    vsid = viewer.open_stream()
    viewer.client.play(vsid, "cam")
    viewer.pump()
    assert "NetStream.Play.Start" in viewer.statuses()
    bodies = [m.payload for m in viewer.media()]
    assert bodies[:2] == [AVC_HEADER, KEYFRAME]
    publisher.client.send_media(sid, 9, 120, INTER)
    publisher.pump()
    viewer.pump()
    assert [m.timestamp_ms for m in viewer.media()] == [0, 0, 40, 80, 120]

    publisher.server.connectionLost()
    viewer.pump()
    assert "NetStream.Play.UnpublishNotify" in viewer.statuses()
    assert registry.get("live", "cam") is None


def test_rtmp_amf3_clients_publish_metadata_and_play_it_back() -> None:
    """A publisher and a viewer that connect with objectEncoding 3: both get
    AMF3 answers, the publisher's AMF3 metadata (type 15) is kept as the
    stream's AMF0 onMetaData, and the viewer gets it, the headers and media."""
    factory, registry, _ = make_factory()
    publisher = Peer(factory, object_encoding=3)
    sid = publisher.open_stream()
    assert publisher.client.amf3_commands
    publisher.client.publish(sid, "cam")
    publisher.pump()
    assert publisher.statuses() == ["NetStream.Publish.Start"]
    publisher.client.send_metadata(sid, {"width": 640, "height": 360, "videocodecid": 7})
    for ts, body in ((0, AVC_HEADER), (0, KEYFRAME), (40, INTER)):
        publisher.client.send_media(sid, 9, ts, body)
    publisher.pump()
    stream = registry.get("live", "cam")
    assert stream is not None

    viewer = Peer(factory, object_encoding=3)
    vsid = viewer.open_stream()
    assert viewer.client.amf3_commands
    viewer.client.play(vsid, "cam")
    viewer.pump()
    assert viewer.statuses() == ["NetStream.Play.Reset", "NetStream.Play.Start"]
    data = [e.payload for e in viewer.events if isinstance(e, ev.DataReceived)]
    on_metadata = [amf0.decode_all(p) for p in data if p.startswith(amf0.encode("onMetaData"))]
    assert on_metadata == [["onMetaData", amf0.ECMAArray(width=640.0, height=360.0,
                                                         videocodecid=7.0)]]
    assert [m.payload for m in viewer.media()] == [AVC_HEADER, KEYFRAME, INTER]


def test_rtmp_play_again_on_the_same_connection_after_a_stop() -> None:
    factory, registry, _ = make_factory()
    publisher = Peer(factory)
    sid = publisher.open_stream()
    publisher.client.publish(sid, "cam")
    publisher.pump()
    for ts, body in ((0, AVC_HEADER), (0, KEYFRAME)):
        publisher.client.send_media(sid, 9, ts, body)
    publisher.pump()
    viewer = Peer(factory)
    vsid = viewer.open_stream()
    for _ in range(2):
        viewer.client.play(vsid, "cam")
        viewer.pump()
        viewer.client.delete_stream(vsid)
        viewer.pump()
        viewer.client.create_stream()
        viewer.pump()
        vsid = [e for e in viewer.events if isinstance(e, ev.StreamCreated)][-1].stream_id
    assert viewer.statuses().count("NetStream.Play.Start") == 2
    # Each play got the cached keyframe; the connection is still up.
    assert [m.payload for m in viewer.media()].count(KEYFRAME) == 2
    assert viewer.transport.connected and registry.get("live", "cam") is not None


def test_rtmp_second_publisher_gets_bad_name() -> None:
    factory, _, _ = make_factory()
    first, second = Peer(factory), Peer(factory)
    for peer in (first, second):
        sid = peer.open_stream()
        peer.client.publish(sid, "cam")
        peer.pump()
    assert first.statuses() == ["NetStream.Publish.Start"]
    assert second.statuses() == ["NetStream.Publish.BadName"]


def test_rtmp_play_of_unknown_stream_is_not_found() -> None:
    factory, _, _ = make_factory()
    viewer = Peer(factory)
    sid = viewer.open_stream()
    viewer.client.play(sid, "nobody")
    viewer.pump()
    assert viewer.statuses() == ["NetStream.Play.StreamNotFound"]


def test_rtmp_silent_connection_times_out() -> None:
    factory, _, clock = make_factory()
    peer = Peer(factory)
    clock.advance(4.9)
    assert not peer.transport.disconnecting
    clock.advance(0.2)
    assert peer.transport.disconnecting or peer.transport.disconnected  # type: ignore[attr-defined]
    assert isinstance(peer.server, RtmpServerProtocol)
    assert peer.server.close_reason is not None and "timed out" in peer.server.close_reason


def test_rtmp_idle_publisher_times_out_and_frees_the_name() -> None:
    factory, registry, clock = make_factory()
    publisher = Peer(factory)
    sid = publisher.open_stream()
    publisher.client.publish(sid, "cam")
    publisher.pump()
    clock.advance(10.5)
    assert publisher.server.close_reason is not None
    assert "no media" in publisher.server.close_reason
    # The name is free at once, before the connection has even closed.
    assert registry.get("live", "cam") is None
    publisher.server.connectionLost()
    assert registry.get("live", "cam") is None


def test_rtmp_garbage_closes_with_protocol_error() -> None:
    factory, _, _ = make_factory()
    peer = Peer(factory)
    peer.server.dataReceived(b"GET / HTTP/1.1\r\n\r\n" + b"\x00" * 3000)
    assert peer.server.close_reason is not None
    assert peer.server.close_reason.startswith("protocol error")


def test_options_defaults_and_config_file(tmp_path: Path) -> None:
    config = tmp_path / "rtmpd.toml"
    config.write_text('rtmp = "tcp:1999"\nmerge-ms = "40"\nchunk_size = 8192\n')
    options = Options()
    options.parseOptions(["--config", str(config), "--rtmp", "tcp:2000"])
    assert options["rtmp"] == "tcp:2000"  # the command line wins
    assert options["merge-ms"] == 40
    assert options["chunk-size"] == 8192
    assert options["http"] == "tcp:8501"
    defaults = Options()
    defaults.parseOptions([])
    assert defaults["merge-ms"] is None
    assert defaults["viewer-queue-bytes"] == 1_500_000


@pytest.mark.parametrize(
    "argv",
    [["--merge-ms", "soon"], ["--chunk-size", "64"], ["--viewer-queue-bytes", "-1"],
     ["--config", "/nonexistent.toml"]],
)
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        Options().parseOptions(argv)


def test_unknown_config_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "rtmpd.toml"
    config.write_text('rmtp = "tcp:1999"\n')
    with pytest.raises(usage.UsageError, match="unknown option 'rmtp'"):
        Options().parseOptions(["--config", str(config)])


def test_make_service_listens_on_three_ports(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    options = Options()
    options.parseOptions(["--root", str(tmp_path / "media"), "--rtmp", "tcp:1935"])
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    ports = sorted(port for port, *_ in reactor.tcpServers)
    assert ports == [1935, 8080, 8501]
    assert (tmp_path / "media").is_dir()
    service.stopService()


def test_http_flv_play_of_unknown_stream_is_404() -> None:
    from twisted.web.test.requesthelper import DummyRequest

    from rtmpd.protocols.flvhttp import FlvHttpResource

    registry = StreamRegistry(Clock())
    resource = FlvHttpResource(Admission(registry))
    request = DummyRequest([b"live", b"nobody.flv"])
    resource.render_GET(request)
    assert request.responseCode == 404
    assert b"not live" in b"".join(request.written)
    assert request.finished
    bad = DummyRequest([b"live", b"..%2fx.flv"])
    resource.render_GET(bad)
    assert bad.responseCode == 400


def test_flv_ingest_publishes_frames_split_anywhere() -> None:
    from zope.interface.verify import verifyObject

    from rtmpd.interfaces import IMediaSource
    from rtmpd.protocols.flvingest import FlvIngest

    registry = StreamRegistry(Clock(), StreamConfig(merge_ms=0))
    admission = Admission(registry)
    data = (
        flv.encode_header(has_audio=False, has_video=True)
        + flv.encode_tag(9, 0, AVC_HEADER)
        + flv.encode_tag(9, 0, KEYFRAME)
        + flv.encode_tag(9, 40, INTER)
    )
    ingest = FlvIngest("test", lambda reason: None)
    assert verifyObject(IMediaSource, ingest)
    request = AdmissionRequest(
        action=Action.PUBLISH, app="live", stream="cam", query="", peer_host="127.0.0.1",
        peer_port=1, protocol="http-flv", client_id=0,
    )
    # Bytes that come before the decision are kept, then published.
    ingest.feed(data[:5])
    admission.publish(request, ingest).addCallback(ingest.started)
    for i in range(5, len(data), 7):
        ingest.feed(data[i : i + 7])
    stream = registry.get("live", "cam")
    assert stream is not None
    assert stream.video_header is not None and len(stream.gop.frames) == 2
    ingest.finish("done")
    assert registry.get("live", "cam") is None


def test_listeners_get_a_backlog_for_bursts_of_viewers(tmp_path: Path) -> None:
    from rtmpd.tap.rtmpd import DEFAULT_BACKLOG, with_backlog

    assert with_backlog("tcp:1935") == f"tcp:1935:backlog={DEFAULT_BACKLOG}"
    assert with_backlog("tcp:1935:backlog=10") == "tcp:1935:backlog=10"
    assert with_backlog("unix:/tmp/x") == "unix:/tmp/x"
    reactor = MemoryReactorClock()
    options = Options()
    options.parseOptions(["--root", str(tmp_path / "media")])
    makeService(options, reactor=reactor).privilegedStartService()
    assert {backlog for _, _, backlog, _ in reactor.tcpServers} == {DEFAULT_BACKLOG}


def test_http_flv_head_answers_with_status_and_no_body() -> None:
    from twisted.web.test.requesthelper import DummyRequest

    from rtmpd.protocols.flvhttp import FlvHttpResource

    resource = FlvHttpResource(Admission(StreamRegistry(Clock())))
    missing = DummyRequest([b"live", b"nobody.flv"])
    missing.method = b"HEAD"
    assert resource.render_HEAD(missing) == b""
    assert missing.responseCode == 404
    bad = DummyRequest([b"live", b"..%2fx.flv"])
    bad.method = b"HEAD"
    assert resource.render_HEAD(bad) == b""
    assert bad.responseCode == 400


def test_rtmpd_version_option_prints_rtmpds_version(capsys: pytest.CaptureFixture[str]) -> None:
    from rtmpd._version import __version__

    with pytest.raises(SystemExit) as exit_info:
        Options().parseOptions(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rtmpd {__version__.public()}"


@pytest.mark.parametrize("argv", [["--record", "foo"], ["--nonsense"]])
def test_a_bad_option_leaves_a_one_line_usage_above_its_reason(argv: list[str]) -> None:
    """twistd prints the usage, then the reason: after an error the usage is one line."""
    from rtmpd.tap import rtmpd as tap

    options = tap.Options()
    with pytest.raises(usage.UsageError):
        options.parseOptions(argv)
    assert options.getUsage() == "rtmpd: `twistd rtmpd --help` lists the options"
    assert "--record" in tap.Options().getUsage()  # the full usage before any error


def test_a_path_that_did_not_parse_is_logged_by_its_names_without_the_extension() -> None:
    from rtmpd.protocols.flvhttp import _raw_names

    assert _raw_names([b"live", b"b ad.flv"]) == ("live", "b ad")
    assert _raw_names([b"live"]) == ("live", "")


def test_a_sibling_workers_relay_connection_is_not_a_client_nor_limited() -> None:
    """With --workers, the relays' Unix socket serves the box's own
    connections: they are not clients (/api/clients, rtmpd_connections) and
    --max-connections does not refuse them."""
    from twisted.internet.address import UNIXAddress

    from rtmpd.admission import Limits
    from rtmpd.protocols.flvhttp import FlvHttpResource, FlvSite

    clock = MemoryReactorClock()
    admission = Admission(StreamRegistry(clock, StreamConfig(merge_ms=0)),
                          limits=Limits(max_connections=1), publisher_timeout_s=0)
    admission.open_connection("192.0.2.1", 5000, "rtmp", lambda _: None)
    site = FlvSite(FlvHttpResource(admission, relay=True), reactor=clock)
    channels = []
    for _ in range(2):
        channel = site.buildProtocol(UNIXAddress(None))
        assert channel is not None
        transport = StringTransport(peerAddress=UNIXAddress(None))
        channel.makeConnection(transport)
        channels.append((channel, transport))
    assert len(admission.clients) == 1
    assert all(not t.disconnecting for _, t in channels)
    for channel, _ in channels:
        channel.connectionLost(Exception("done"))  # type: ignore[arg-type]
    assert len(admission.clients) == 1
