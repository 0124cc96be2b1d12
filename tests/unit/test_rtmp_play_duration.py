"""A play's requested duration: what the numbers mean, the header scan that
measures the media a viewer is sent, the codec's end of a play, and the
Twisted adapter ending a timed play (fake transports, a fake clock)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from rtmpd._twisted import DirectWrites
from rtmpd.admission import Admission
from rtmpd.codec import amf0
from rtmpd.codec.errors import LocalProtocolError
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp import messages as msg
from rtmpd.codec.rtmp.chunk import NEED_DATA, encode_message, encoded_messages
from rtmpd.codec.rtmp.connection import ClientConnection
from rtmpd.fanout import ViewerOutput
from rtmpd.interfaces import IAdmissionListener
from rtmpd.protocols.rtmp import RtmpServerFactory, RtmpViewer, TimedRtmpViewer
from rtmpd.registry import StreamConfig, StreamRegistry
from tests.unit.test_rtmp_connection import Pair, statuses

# --- what the numbers mean ------------------------------------------------------------

#: (start, duration) as sent -> ms of media asked for (None: until the end).
DURATION_CASES: list[tuple[float, float, int | None]] = [
    # What rtmpdump 2.4 sends (decoded from the real client): milliseconds.
    (0.0, 5000.0, 5000),  # -B 5
    (-1000.0, 5000.0, 5000),  # -v -B 5
    (2000.0, 3000.0, 3000),  # -A 2 -B 5: the stop minus the start
    (0.0, 500.0, 500),  # -B 0.5
    # ffmpeg's starts with a duration (it sends none itself): milliseconds.
    (-2000.0, 1500.0, 1500),
    # The spec's own markers, unscaled: a client writing seconds.
    (-2.0, 5.0, 5000),
    (-1.0, 0.25, 250),
    (-1.0, 0.0, 0),
    # A single frame.
    (0.0, 0.0, 0),
    (-2000.0, 0.0, 0),
    # Until the end: -1 and, per the spec, any other negative.
    (-2.0, -1.0, None),
    (0.0, -1.0, None),
    (-1000.0, -1000.0, None),
    (0.0, -0.5, None),
    # Absurd values: bounded, never an exception.
    (0.0, math.nan, None),
    (0.0, math.inf, None),
    (0.0, -math.inf, None),
    (0.0, 1e300, None),
    (-2.0, 3e6, None),  # 3e9 ms: past what 32-bit timestamps can measure
    (0.0, float(msg.MAX_PLAY_DURATION_MS), msg.MAX_PLAY_DURATION_MS),
    (0.0, float(msg.MAX_PLAY_DURATION_MS + 1), None),
    (math.nan, 700.0, 700),
    (0.0, 0.2, 1),  # a fraction of a ms rounds up: only 0 is a single frame
]


@pytest.mark.parametrize(("start", "duration", "expected"), DURATION_CASES)
def test_play_duration_is_read_in_the_unit_the_client_writes(
    start: float, duration: float, expected: int | None
) -> None:
    assert msg.play_duration_ms(start, duration) == expected
    event = ev.PlayRequested(
        stream_id=1, name="cam", query="", start=start, duration=duration, reset=True
    )
    assert event.duration_ms == expected


@given(st.floats(), st.floats())
def test_any_two_numbers_give_a_bounded_duration_or_none(start: float, duration: float) -> None:
    got = msg.play_duration_ms(start, duration)
    assert got is None or 0 <= got <= msg.MAX_PLAY_DURATION_MS


def _play_command(pair: Pair, sid: int, *args: object) -> ev.PlayRequested:
    pair.client._send_command(sid, "play", 0.0, None, *args)
    (request,) = pair.take_server()
    assert isinstance(request, ev.PlayRequested)
    return request


@pytest.mark.parametrize(
    ("args", "duration", "duration_ms"),
    [
        (("cam", 0.0, 5000.0), 5000.0, 5000),
        (("cam", -2.0, 5.0), 5.0, 5000),
        (("cam", -1000.0), -1.0, None),
        (("cam",), -1.0, None),
        (("cam", 0.0, "five"), -1.0, None),
        (("cam", 0.0, None), -1.0, None),
        (("cam", 0.0, math.nan), math.nan, None),
        (("cam", 0.0, 1e308), 1e308, None),
        (("cam", 0.0, -7.0, False), -7.0, None),
    ],
)
def test_play_command_arguments_decode_to_a_duration(
    args: tuple[object, ...], duration: float, duration_ms: int | None
) -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    request = _play_command(pair, sid, *args)
    assert request.duration == duration or (math.isnan(duration) and math.isnan(request.duration))
    assert request.duration_ms == duration_ms


def test_client_play_sends_a_duration_only_when_given() -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    pair.client.play(sid, "cam", start=-1000.0, duration=2500.0)
    (request,) = pair.take_server()
    assert isinstance(request, ev.PlayRequested)
    assert (request.start, request.duration, request.duration_ms) == (-1000.0, 2500.0, 2500)
    pair.server.play_not_found(sid, "cam")
    pair.take_client()
    pair.client.play(sid, "cam")
    (request,) = pair.take_server()
    assert isinstance(request, ev.PlayRequested)
    assert (request.start, request.duration, request.duration_ms) == (-2.0, -1.0, None)


# --- the header scan ------------------------------------------------------------------

#: (chunk size, chunk stream id, type id, timestamp ms, payload size)
SCAN_CASES = [
    (128, 6, 9, 0, 0),
    (128, 6, 9, 40, 127),
    (128, 6, 9, 40, 128),
    (128, 6, 9, 40, 129),
    (4096, 4, 8, 23, 5000),
    (4096, 5, 18, 0, 60),
    (1, 6, 9, 7, 5),
    (128, 64, 9, 1, 300),  # two-byte basic header
    (128, 320, 9, 1, 300),  # three-byte basic header
    (128, 6, 9, 0xFFFFFE, 10),
    (128, 6, 9, 0xFFFFFF, 300),  # extended timestamp, repeated on each chunk
    (100, 6, 9, 0xFFFFFFFF, 250),
]


@pytest.mark.parametrize(("chunk_size", "csid", "type_id", "ts", "size"), SCAN_CASES)
def test_encoded_messages_reads_back_encode_message(
    chunk_size: int, csid: int, type_id: int, ts: int, size: int
) -> None:
    one = encode_message(
        chunk_size=chunk_size, chunk_stream_id=csid, type_id=type_id, stream_id=1,
        timestamp_ms=ts, payload=bytes(range(256)) * (size // 256) + bytes(size % 256),
    )
    assert list(encoded_messages(one, chunk_size)) == [(len(one), type_id, ts)]
    three = one * 3
    assert list(encoded_messages(three, chunk_size)) == [
        (len(one) * n, type_id, ts) for n in (1, 2, 3)
    ]


@given(
    st.integers(1, 300),
    st.lists(
        st.tuples(
            st.sampled_from([4, 5, 6, 70, 400]), st.sampled_from([8, 9, 18]),
            st.integers(0, 0xFFFFFFFF), st.integers(0, 1000),
        ),
        max_size=6,
    ),
)
def test_encoded_messages_finds_every_message_and_every_prefix_is_caught(
    chunk_size: int, specs: list[tuple[int, int, int, int]]
) -> None:
    parts = [
        encode_message(
            chunk_size=chunk_size, chunk_stream_id=csid, type_id=type_id, stream_id=1,
            timestamp_ms=ts, payload=b"\xaa" * size,
        )
        for csid, type_id, ts, size in specs
    ]
    data = b"".join(parts)
    ends = [sum(map(len, parts[: n + 1])) for n in range(len(parts))]
    expected = [(end, t, ts) for end, (_c, t, ts, _s) in zip(ends, specs, strict=True)]
    assert list(encoded_messages(data, chunk_size)) == expected
    # Every prefix gives the whole messages in it, or says it was cut.
    for cut in range(len(data)):
        try:
            got = list(encoded_messages(data[:cut], chunk_size))
        except LocalProtocolError:
            assert cut not in (0, *ends)
        else:
            assert got == [e for e in expected if e[0] <= cut]
            assert cut in (0, *ends)


def test_encoded_messages_refuses_compressed_headers() -> None:
    with pytest.raises(LocalProtocolError, match="chunk header type 3 at offset 0"):
        list(encoded_messages(b"\xc6", 128))
    with pytest.raises(LocalProtocolError, match="chunk size 0"):
        list(encoded_messages(b"", 0))


# --- the end of a play in the codec ---------------------------------------------------


def test_play_complete_says_stop_complete_and_stream_eof_and_frees_the_stream() -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    pair.client.play(sid, "cam", duration=5000.0)
    pair.take_server()
    pair.server.play_start(sid, "cam")
    pair.take_client()
    pair.server.play_complete(sid, "cam", 6040)
    events = pair.take_client()
    assert statuses(events) == [(sid, "status", "NetStream.Play.Stop")]
    stop = events.index(next(e for e in events if isinstance(e, ev.StatusReceived)))
    (data,) = [e for e in events if isinstance(e, ev.DataReceived)]
    assert data.timestamp_ms == 6040
    assert amf0.decode_all(data.payload) == [
        "onPlayStatus",
        {"level": "status", "code": "NetStream.Play.Complete", "description": "cam played."},
    ]
    # Play.Stop first (where librtmp and ffmpeg stop), Stream EOF last.
    assert events.index(data) > stop
    assert events[-1] == ev.StreamEofReceived(stream_id=sid)
    # The message stream is idle again: another play on it is heard.
    pair.client.play(sid, "cam")
    assert [type(e) for e in pair.take_server()] == [ev.PlayRequested]


# --- the adapter -----------------------------------------------------------------------

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f"
AAC_HEADER = b"\xaf\x00\x12\x10"
KEYFRAME = b"\x17\x01\x00\x00\x00" + b"k" * 200
INTER = b"\x27\x01\x00\x00\x00" + b"i" * 100
AAC = b"\xaf\x01" + b"a" * 50


@implementer(IAdmissionListener)
class Ends:
    """Why each admitted publish or play ended."""

    def __init__(self) -> None:
        self.why: list[str] = []

    def refused(self, request: object, refusal: object, message: str) -> None:
        pass

    def started(self, request: object) -> None:
        pass

    def ended(self, request: object, why: str) -> None:
        self.why.append(why)


class Peer:
    """A ClientConnection joined to a server protocol by StringTransports."""

    def __init__(self, factory: RtmpServerFactory) -> None:
        self.client = ClientConnection()
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.server = factory.buildProtocol(None)
        self.server.makeConnection(self.transport)
        self.events: list[object] = []
        self.sid = 0

    def pump(self) -> None:
        for _ in range(20):
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

    def open_stream(self) -> int:
        self.client.connect("live", "rtmp://127.0.0.1/live")
        self.pump()
        self.client.create_stream()
        self.pump()
        self.sid = [e for e in self.events if isinstance(e, ev.StreamCreated)][-1].stream_id
        return self.sid

    def statuses(self) -> list[str]:
        return [e.code for e in self.events if isinstance(e, ev.StatusReceived)]

    def media(self) -> list[tuple[int, int]]:
        """(type id, timestamp ms) of each audio and video message received."""
        return [(e.type_id, e.timestamp_ms) for e in self.events if isinstance(e, ev.MediaReceived)]

    def ending(self) -> list[object]:
        """What came after the last media message."""
        last = max(
            (i for i, e in enumerate(self.events) if isinstance(e, ev.MediaReceived)), default=-1
        )
        return [e for e in self.events[last + 1 :] if not isinstance(e, ev.Connected)]


class Setup:
    """A server, a publisher of live/cam, and what ended why."""

    def __init__(self, merge_ms: float = 0) -> None:
        self.clock = Clock()
        self.registry = StreamRegistry(self.clock, StreamConfig(merge_ms=merge_ms))
        self.admission = Admission(self.registry, publisher_timeout_s=60)
        self.ends = Ends()
        self.admission.add_listener(self.ends)
        self.factory = RtmpServerFactory(self.admission, clock=self.clock, handshake_timeout=5)
        self.publisher = Peer(self.factory)
        self.publisher.open_stream()
        self.publisher.client.publish(self.publisher.sid, "cam")
        self.publisher.pump()
        assert self.publisher.statuses() == ["NetStream.Publish.Start"]
        self.send(9, 0, AVC_HEADER)
        self.send(8, 0, AAC_HEADER)

    def send(self, type_id: int, ts: int, body: bytes) -> None:
        self.publisher.client.send_media(self.publisher.sid, type_id, ts, body)
        self.publisher.pump()

    def frames(self, start_ms: int, stop_ms: int, gop_ms: int = 1000) -> None:
        """Video every 40 ms (a keyframe each ``gop_ms``) and audio 20 ms after each."""
        for ts in range(start_ms, stop_ms, 40):
            self.send(9, ts, KEYFRAME if ts % gop_ms == 0 else INTER)
            self.send(8, ts + 20, AAC)

    def viewer(self, duration: float | None, start: float = 0.0) -> Peer:
        peer = Peer(self.factory)
        peer.open_stream()
        peer.client.play(peer.sid, "cam", start=start, duration=duration)
        peer.pump()
        assert "NetStream.Play.Start" in peer.statuses()
        return peer

    def settle(self, *peers: Peer) -> None:
        """Let the reactor turn (the end of a timed play comes on the next one)."""
        self.clock.advance(0)
        for peer in peers:
            peer.pump()


def _video_times(peer: Peer) -> list[int]:
    return [ts for type_id, ts in peer.media() if type_id == 9]


def test_a_play_for_200_ms_gets_200_ms_of_media_then_stop_complete_eof() -> None:
    setup = Setup()
    setup.frames(0, 80)
    viewer = setup.viewer(200.0)
    setup.frames(80, 600)
    setup.settle(viewer)
    # Measured from the first media it got (the headers at 0): nothing after 200 ms.
    assert _video_times(viewer) == [0, 0, 40, 80, 120, 160, 200]
    assert max(ts for _t, ts in viewer.media()) == 200
    ending = viewer.ending()
    assert [e.code for e in ending if isinstance(e, ev.StatusReceived)] == ["NetStream.Play.Stop"]
    (complete,) = [e for e in ending if isinstance(e, ev.DataReceived)]
    assert amf0.decode_all(complete.payload)[1]["code"] == "NetStream.Play.Complete"
    assert complete.timestamp_ms == 200
    assert ending[-1] == ev.StreamEofReceived(stream_id=viewer.sid)
    assert setup.ends.why == ["played the 200 ms asked for"]
    # It is out of the stream; the connection stays open for another play.
    stream = setup.registry.get("live", "cam")
    assert stream is not None and stream.viewer_count() == 0 and not stream.viewers
    assert viewer.transport.connected and not viewer.server.viewers
    before = len(viewer.events)
    setup.frames(600, 800)
    viewer.pump()
    assert viewer.events[before:] == []


def test_the_time_counts_from_the_first_media_a_late_joiner_gets() -> None:
    setup = Setup()
    setup.frames(0, 2560)  # the GOP cache starts at the keyframe at 2000
    viewer = setup.viewer(100.0)
    setup.frames(2560, 3000)
    setup.settle(viewer)
    times = _video_times(viewer)
    # Headers and the cached GOP from 2000 on, cut in the burst itself.
    assert times == [2000, 2000, 2040, 2080]
    assert viewer.statuses()[-1] == "NetStream.Play.Stop"
    assert max(ts for _t, ts in viewer.media()) - min(ts for _t, ts in viewer.media()) <= 100


def test_a_play_for_0_ms_gets_the_headers_and_the_keyframe() -> None:
    setup = Setup()
    setup.frames(0, 200)
    viewer = setup.viewer(0.0)
    setup.frames(200, 400)
    setup.settle(viewer)
    assert viewer.media() == [(9, 0), (8, 0), (9, 0)]
    payloads = [e.payload for e in viewer.events if isinstance(e, ev.MediaReceived)]
    assert payloads == [AVC_HEADER, AAC_HEADER, KEYFRAME]
    assert viewer.statuses()[-1] == "NetStream.Play.Stop"
    assert setup.ends.why == ["played the 0 ms asked for"]


def test_seconds_after_the_specs_unscaled_live_marker() -> None:
    setup = Setup()
    setup.frames(0, 40)
    viewer = setup.viewer(0.1, start=-1.0)
    setup.frames(40, 400)
    setup.settle(viewer)
    assert _video_times(viewer)[-1] == 80
    assert setup.ends.why == ["played the 100 ms asked for"]


def test_a_merge_window_batch_is_cut_at_the_exact_message() -> None:
    setup = Setup(merge_ms=500)
    setup.frames(0, 40)
    viewer = setup.viewer(120.0)
    # The frames wait in the window; the flush hands the viewer all of them in one send.
    setup.frames(40, 400)
    viewer.pump()
    setup.clock.advance(0.5)
    setup.settle(viewer)
    assert _video_times(viewer) == [0, 0, 40, 80, 120]
    assert [ts for t, ts in viewer.media() if t == 8] == [0, 20, 60, 100]
    assert viewer.statuses()[-1] == "NetStream.Play.Stop"


def test_time_spent_paused_does_not_count() -> None:
    setup = Setup()
    setup.frames(0, 40)
    viewer = setup.viewer(200.0)
    setup.frames(40, 120)
    viewer.client._send_command(viewer.sid, "pause", 0.0, None, True, 80.0)
    viewer.pump()
    setup.frames(120, 1000)
    viewer.client._send_command(viewer.sid, "pause", 0.0, None, False, 80.0)
    viewer.pump()
    setup.frames(1000, 1400)
    setup.settle(viewer)
    # 100 ms before the pause (the audio at 100); the next keyframe (1000)
    # goes on from there: 200 ms in all, the last video at 1080.
    assert _video_times(viewer) == [0, 0, 40, 80, 1000, 1040, 1080]
    assert [ts for t, ts in viewer.media() if t == 8][-1] == 1100
    assert viewer.statuses()[-1] == "NetStream.Play.Stop"


def test_another_play_after_the_end_on_the_same_message_stream() -> None:
    setup = Setup()
    setup.frames(0, 40)
    viewer = setup.viewer(40.0)
    setup.frames(40, 200)
    setup.settle(viewer)
    assert viewer.statuses()[-1] == "NetStream.Play.Stop"
    viewer.client.play(viewer.sid, "cam")
    viewer.pump()
    assert viewer.statuses()[-1] == "NetStream.Play.Start"
    setup.frames(200, 1200)
    viewer.pump()
    assert _video_times(viewer)[-1] == 1160  # no duration this time: all of it
    assert isinstance(viewer.server.viewers[viewer.sid], RtmpViewer)
    assert not isinstance(viewer.server.viewers[viewer.sid], TimedRtmpViewer)


def test_a_stream_that_ends_first_is_unpublished_not_completed() -> None:
    setup = Setup()
    setup.frames(0, 40)
    viewer = setup.viewer(5000.0)
    setup.frames(40, 200)
    setup.publisher.server.connectionLost()
    setup.settle(viewer)
    assert viewer.statuses()[-1] == "NetStream.Play.UnpublishNotify"
    assert "NetStream.Play.Stop" not in viewer.statuses()


def test_a_player_that_stops_before_the_turn_gets_no_late_complete() -> None:
    setup = Setup()
    setup.frames(0, 40)
    viewer = setup.viewer(40.0)
    setup.frames(40, 120)  # past the limit: the end waits for the next turn
    viewer.client.delete_stream(viewer.sid)
    viewer.pump()
    setup.settle(viewer)
    assert "NetStream.Play.Stop" not in viewer.statuses()
    assert setup.ends.why == ["stopped by the player"]


@pytest.mark.parametrize("duration", [None, -1.0, -5.0, math.nan, 1e300, math.inf])
def test_plays_without_a_finite_duration_are_plain_viewers(duration: float | None) -> None:
    setup = Setup()
    setup.frames(0, 40)
    viewer = setup.viewer(duration)
    setup.frames(40, 2000)
    setup.settle(viewer)
    assert _video_times(viewer)[-1] == 1960
    assert type(viewer.server.viewers[viewer.sid]) is RtmpViewer
    assert "NetStream.Play.Stop" not in viewer.statuses()


def test_a_plain_viewer_keeps_the_fan_outs_direct_sends() -> None:
    """Viewers without a duration pay nothing per frame: their class sends
    the shared bytes with the fan-out's own methods, untouched."""
    assert RtmpViewer.send_bytes is DirectWrites.send_bytes
    assert RtmpViewer.send is ViewerOutput.send
    assert TimedRtmpViewer.send_bytes is not DirectWrites.send_bytes
