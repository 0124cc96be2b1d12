"""Enhanced RTMP through the server, on fake transports and a fake clock:
connect negotiation, hand-built multitrack messages reaching RTMP and FLV
viewers, what legacy and partial clients get, and the reconnect request on
shutdown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage

from rtmpd.codec import enhanced, flv
from rtmpd.codec.errors import LocalProtocolError
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp import messages as msg
from rtmpd.codec.rtmp.connection import ServerConnection
from rtmpd.protocols.flvhttp import LEGACY_PLAIN, PLAIN
from rtmpd.protocols.flvws import LEGACY_WS_FLV, WS_FLV
from rtmpd.protocols.rtmp import RtmpServerFactory
from rtmpd.services.shutdown import RECONNECT_POLL_S, SHUTDOWN_REASON, PublishersFirst
from rtmpd.tap.rtmpd import Options, makeService
from tests.unit.test_protocols import Peer, make_factory
from tests.unit.test_registry import RecordingViewer
from tests.unit.test_rtmp_connection import Pair, server_messages

HVCC = b"\x01\x01\x60\x00\x00\x00\x90\x00\x00\x00\x00\x00\x5d\xf0\x00\xfc\xfd\xf8\xf8\x00\x00"
AVCC = b"\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f\x01\x00\x04\x68\xeb\xe3\xcb"
ASC = b"\x12\x10"
OPUS_HEAD = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00"

#: What a legacy client sends: a connect without any Enhanced RTMP property.
LEGACY_CONNECT = {"fourCcList": None, "capsEx": None}


def multitrack(kind: int, packet_type: int, tracks: list[tuple[bytes, int, bytes]],
               frame_type: int = 1) -> bytes:
    """A ManyTracksManyCodecs message (one FourCC per track), built by hand."""
    return bytes(enhanced.ExMedia(
        kind=kind, packet_type=packet_type, frame_type=frame_type if kind == 9 else 0,
        multitrack=flv.MULTITRACK_MANY_TRACKS_MANY_CODECS,
        tracks=tuple(enhanced.Track(fourcc=code, track_id=tid, data=data)
                     for code, tid, data in tracks),
    ))


# A stream published as two video tracks (HEVC default, H.264 for the rest) and two
# audio tracks (AAC default, Opus), each message carrying both.
VIDEO_HEADER = multitrack(9, 0, [(b"hvc1", 0, HVCC), (b"avc1", 1, AVCC)])
VIDEO_KEY = multitrack(9, 1, [(b"hvc1", 0, b"\x00\x00\x00" + b"H" * 50),
                              (b"avc1", 1, b"\x00\x00\x00" + b"A" * 40)])
VIDEO_INTER = multitrack(9, 3, [(b"hvc1", 0, b"h" * 20), (b"avc1", 1, b"a" * 15)], 2)
AUDIO_HEADER = multitrack(8, 0, [(b"mp4a", 0, ASC), (b"Opus", 1, OPUS_HEAD)])
AUDIO_FRAME = multitrack(8, 1, [(b"mp4a", 0, b"\x21\x00"), (b"Opus", 1, b"\xfc\xff")])
PUBLISHED = [(9, 0, VIDEO_HEADER), (8, 0, AUDIO_HEADER), (9, 0, VIDEO_KEY),
             (8, 20, AUDIO_FRAME), (9, 40, VIDEO_INTER)]


class ErtmpPeer(Peer):
    def open_stream_as(self, **connect: object) -> int:
        self.client.connect("live", "rtmp://127.0.0.1/live", **connect)
        self.pump()
        self.client.create_stream()
        self.pump()
        return [e for e in self.events if isinstance(e, ev.StreamCreated)][-1].stream_id

    def bodies(self) -> list[tuple[int, bytes]]:
        return [(m.type_id, m.payload) for m in self.media()]


def publish(factory: RtmpServerFactory, **connect: object) -> tuple[ErtmpPeer, int]:
    publisher = ErtmpPeer(factory)
    sid = publisher.open_stream_as(**connect)
    publisher.client.publish(sid, "multi")
    publisher.pump()
    assert publisher.statuses() == ["NetStream.Publish.Start"]
    for kind, ts, body in PUBLISHED:
        publisher.client.send_media(sid, kind, ts, body)
    publisher.pump()
    return publisher, sid


def play(factory: RtmpServerFactory, **connect: object) -> ErtmpPeer:
    viewer = ErtmpPeer(factory)
    sid = viewer.open_stream_as(**connect)
    viewer.client.play(sid, "multi")
    viewer.pump()
    assert "NetStream.Play.Start" in viewer.statuses()
    return viewer


@pytest.fixture
def lines() -> Iterator[list[str]]:
    seen: list[str] = []

    def observer(event: LogEvent) -> None:
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)


# --------------------------------------------------------------------------- connect


def test_a_connect_announcing_enhanced_rtmp_is_answered_with_what_the_server_forwards() -> None:
    pair = Pair()
    pair.client.connect("live", "rtmp://h/live", fourCcList=["hvc1", "Opus"], capsEx=1.0)
    pair.take_server()
    caps = pair.server.peer_capabilities
    assert caps.announced and caps.reconnect and not caps.multitrack
    assert caps.video == frozenset({"hvc1", "Opus"})
    pair.server.accept_connect(1.0)
    result = msg.decode_command(server_messages(pair.server.data_to_send())[-1].payload)
    properties = result.command_object
    assert isinstance(properties, dict)
    assert properties["capsEx"] == float(enhanced.SERVER_CAPS_EX)
    assert properties["videoFourCcInfoMap"] == {
        code: 4.0 for code in ("avc1", "hvc1", "av01", "vp09", "vp08", "vvc1")
    }
    assert set(properties["fourCcList"]) >= {"hvc1", "av01", "vp09", "Opus", "fLaC", ".mp3"}
    assert properties["fmsVer"]  # the legacy properties stay


def test_a_legacy_connect_gets_the_legacy_answer() -> None:
    pair = Pair()
    pair.client.connect("live", "rtmp://h/live", **LEGACY_CONNECT)
    pair.take_server()
    assert pair.server.peer_capabilities.acceptance == enhanced.LEGACY
    pair.server.accept_connect(1.0)
    result = msg.decode_command(server_messages(pair.server.data_to_send())[-1].payload)
    assert isinstance(result.command_object, dict)
    assert set(result.command_object) == {"fmsVer", "capabilities", "mode"}


def test_our_own_client_takes_every_codec_and_multitrack() -> None:
    pair = Pair()
    pair.connect()
    caps = pair.server.peer_capabilities
    assert caps.acceptance == enhanced.ANYTHING
    assert not caps.reconnect  # it does not follow reconnect requests


def test_a_reconnect_request_is_an_onstatus_on_the_connection_with_the_url() -> None:
    pair = Pair()
    pair.connect()
    pair.server_spy.take()
    pair.server.request_reconnect("moving", "rtmp://other/live")
    pair.server.request_reconnect("same place")
    pair.pump()
    infos = []
    for message in pair.server_spy.take():
        command = msg.decode_command(message.payload)
        assert (message.stream_id, command.name, command.transaction_id) == (0, "onStatus", 0.0)
        infos.append(command.args[0])
    assert infos == [
        {"level": "status", "code": "NetConnection.Connect.ReconnectRequest",
         "description": "moving", "tcUrl": "rtmp://other/live"},
        {"level": "status", "code": "NetConnection.Connect.ReconnectRequest",
         "description": "same place"},
    ]
    assert [(e.stream_id, e.code) for e in pair.client_events
            if isinstance(e, ev.StatusReceived)] == [
        (0, "NetConnection.Connect.ReconnectRequest")] * 2


def test_a_reconnect_request_before_connect_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        ServerConnection().request_reconnect("too early")


# --------------------------------------------------------------------------- viewers


def test_hand_built_multitrack_messages_reach_a_multitrack_viewer_byte_for_byte() -> None:
    factory, registry, _ = make_factory()
    publish(factory)
    viewer = play(factory)  # ours: fourCcList ["*"], capsEx Multitrack
    assert viewer.bodies() == [(k, body) for k, _, body in PUBLISHED]
    stream = registry.get("live", "multi")
    assert stream is not None
    # HTTP-FLV / WS-FLV viewers get the stream as published too.
    flv_viewer = RecordingViewer()
    stream.add_viewer(PLAIN, flv_viewer)
    reader = flv.FlvReader()
    reader.receive_data(flv_viewer.transport.value())  # type: ignore[attr-defined]
    tags = []
    while not isinstance(event := reader.next_event(), flv.NeedData):
        if isinstance(event, flv.TagReceived):
            tags.append((event.tag_type, event.body))
    assert tags == [(k, body) for k, _, body in PUBLISHED]


def test_a_viewer_without_multitrack_gets_the_default_tracks_as_plain_messages() -> None:
    factory, _, _ = make_factory()
    publish(factory)
    viewer = play(factory, fourCcList=["hvc1", "Opus", "mp4a"], capsEx=None)
    assert viewer.bodies() == [
        (9, b"\x90hvc1" + HVCC), (8, b"\x90mp4a" + ASC),
        (9, b"\x91hvc1\x00\x00\x00" + b"H" * 50), (8, b"\x91mp4a\x21\x00"),
        (9, b"\xa3hvc1" + b"h" * 20),
    ]


def test_a_multitrack_viewer_gets_only_the_tracks_in_its_codecs() -> None:
    factory, _, _ = make_factory()
    publish(factory)
    viewer = play(factory, fourCcList=["avc1", "Opus"], capsEx=2.0)
    first_video = enhanced.ExMedia.parse(9, viewer.bodies()[0][1])
    assert [(t.fourcc, t.track_id) for t in first_video.tracks] == [(b"avc1", 1)]
    audio = enhanced.ExMedia.parse(8, viewer.bodies()[1][1])
    assert [(t.fourcc, t.track_id) for t in audio.tracks] == [(b"Opus", 1)]


def test_a_legacy_viewer_gets_what_it_decodes_and_one_line_says_what_it_misses(
    lines: list[str],
) -> None:
    factory, registry, _ = make_factory()
    publish(factory)
    viewer = play(factory, **LEGACY_CONNECT)
    # HEVC (track 0) has no legacy form: no video at all; AAC (track 0) comes as
    # SoundFormat 10, which every FLV player decodes.
    assert viewer.bodies() == [(8, b"\xaf\x00" + ASC), (8, b"\xaf\x01\x21\x00")]
    said = [line for line in lines if "legacy client" in line]
    assert len(said) == 1
    assert "play live/multi by rtmp 127.0.0.1:5000" in said[0]
    assert "gets no avc1,hvc1 video" in said[0]
    # Two legacy viewers share one output format: encoded once for both.
    play(factory, **LEGACY_CONNECT)
    stream = registry.get("live", "multi")
    assert stream is not None
    assert len(stream.groups) == 1


def test_a_legacy_viewer_of_an_h264_stream_in_enhanced_form_gets_legacy_h264(
    lines: list[str],
) -> None:
    factory, _, _ = make_factory()
    publisher = ErtmpPeer(factory)
    sid = publisher.open_stream_as()
    publisher.client.publish(sid, "multi")
    publisher.pump()
    for kind, ts, body in ((9, 0, b"\x90avc1" + AVCC), (9, 0, b"\x91avc1\x00\x00\x28KEY"),
                           (8, 0, b"\xaf\x00" + ASC)):
        publisher.client.send_media(sid, kind, ts, body)
    publisher.pump()
    viewer = play(factory, **LEGACY_CONNECT)
    assert viewer.bodies() == [(9, b"\x17\x00\x00\x00\x00" + AVCC), (8, b"\xaf\x00" + ASC),
                               (9, b"\x17\x01\x00\x00\x28KEY")]
    assert not [line for line in lines if "legacy client" in line]  # it misses nothing


def test_a_late_viewer_gets_the_header_of_every_track_sent_one_by_one() -> None:
    factory, _, _ = make_factory()
    publisher = ErtmpPeer(factory)
    sid = publisher.open_stream_as()
    publisher.client.publish(sid, "multi")
    publisher.pump()

    def one_track(track_id: int, code: bytes, data: bytes, packet_type: int) -> bytes:
        return bytes(enhanced.ExMedia(
            kind=9, packet_type=packet_type, frame_type=1, multitrack=flv.MULTITRACK_ONE_TRACK,
            tracks=(enhanced.Track(fourcc=code, track_id=track_id, data=data),)))

    headers = [one_track(0, b"hvc1", HVCC, 0), one_track(1, b"avc1", AVCC, 0)]
    for body in [*headers, one_track(0, b"hvc1", b"\0\0\0K", 1)]:
        publisher.client.send_media(sid, 9, 0, body)
    publisher.pump()
    viewer = play(factory)
    assert [body for _, body in viewer.bodies()][:2] == headers
    # A new header for track 1 replaces the old one, and only that one.
    newer = one_track(1, b"avc1", AVCC + b"\x00", 0)
    publisher.client.send_media(sid, 9, 40, newer)
    publisher.pump()
    assert [body for _, body in play(factory).bodies()][:2] == [headers[0], newer]


# --------------------------------------------------------------------------- shutdown


def test_shutdown_asks_a_publisher_that_can_reconnect_and_waits_for_it_to_leave() -> None:
    factory, registry, clock = make_factory()
    mover, _ = publish(factory, capsEx=1.0)
    other = ErtmpPeer(factory)
    osid = other.open_stream_as(**LEGACY_CONNECT)
    other.client.publish(osid, "plain")
    other.pump()
    service = PublishersFirst(factory.admission, reconnect_grace_s=10)
    service.startService()
    done = service.stopService()
    assert isinstance(done, Deferred)
    mover.pump()
    other.pump()
    assert "NetConnection.Connect.ReconnectRequest" in mover.statuses()
    assert "NetStream.Unpublish.Success" not in mover.statuses()
    assert "NetStream.Unpublish.Success" in other.statuses()  # stopped at once
    assert other.transport.disconnecting
    assert registry.get("live", "multi") is not None  # still live while it moves
    fired: list[object] = []
    done.addCallback(fired.append)
    clock.advance(RECONNECT_POLL_S)
    assert not fired
    mover.server.connectionLost()  # it reconnected elsewhere and left
    clock.advance(RECONNECT_POLL_S)
    assert fired == [None]
    assert registry.get("live", "multi") is None


def test_a_publisher_that_does_not_move_in_time_is_stopped() -> None:
    factory, registry, clock = make_factory()
    mover, _ = publish(factory, capsEx=3.0)
    service = PublishersFirst(factory.admission, reconnect_grace_s=2,
                              reconnect_url="rtmp://standby/live")
    service.startService()
    done = service.stopService()
    assert isinstance(done, Deferred)
    fired: list[object] = []
    done.addCallback(fired.append)
    clock.advance(1.0)
    assert not fired and registry.get("live", "multi") is not None
    clock.advance(1.5)
    assert fired == [None]
    mover.pump()
    assert mover.statuses()[-2:] == ["NetConnection.Connect.ReconnectRequest",
                                     "NetStream.Unpublish.Success"]
    assert registry.get("live", "multi") is None
    assert SHUTDOWN_REASON in (mover.server.close_reason or "")


def test_without_reconnect_publishers_shutdown_is_immediate() -> None:
    factory, registry, _ = make_factory()
    publish(factory)  # our client: no capsEx Reconnect
    service = PublishersFirst(factory.admission)
    service.startService()
    assert service.stopService() is None
    assert registry.get("live", "multi") is None



def test_http_and_ws_flv_players_asking_for_legacy_codecs_share_one_legacy_format() -> None:
    factory, registry, _ = make_factory()
    publish(factory)
    stream = registry.get("live", "multi")
    assert stream is not None
    viewers = [RecordingViewer(), RecordingViewer()]
    for viewer in viewers:
        stream.add_viewer(LEGACY_PLAIN, viewer)
    assert len(stream.groups) == 1
    bodies = []
    reader = flv.FlvReader()
    reader.receive_data(viewers[0].transport.value())  # type: ignore[attr-defined]
    while not isinstance(event := reader.next_event(), flv.NeedData):
        if isinstance(event, flv.TagReceived):
            bodies.append((event.tag_type, event.body))
    assert bodies == [(8, b"\xaf\x00" + ASC), (8, b"\xaf\x01\x21\x00")]
    assert LEGACY_WS_FLV.key != WS_FLV.key and LEGACY_PLAIN.key != PLAIN.key


def test_reconnect_url_option_reaches_the_shutdown_service(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--root", str(tmp_path), "--record", "flv", "--reconnect-url",
                          "rtmp://standby.example/live"])
    top = makeService(options, reactor=MemoryReactorClock())
    [service] = [s for s in top if isinstance(s, PublishersFirst)]
    assert service.reconnect_url == "rtmp://standby.example/live"
    for bad in ("", "rtmp://a b/live", "rtmp://x/" + "a" * 2000):
        with pytest.raises(usage.UsageError, match="--reconnect-url"):
            Options().parseOptions(["--reconnect-url", bad])
