"""StreamRegistry, Stream, GOP cache and fan-out, driven with Twisted's fake
transports and clock (no sockets, no reactor)."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from rtmpd.codec import flv
from rtmpd.errors import InvalidStreamName, StreamBusy
from rtmpd.fanout import FLUSH_SLICE_VIEWERS, ViewerOutput, ViewerState
from rtmpd.interfaces import IMediaSource
from rtmpd.media import Frame, FrameKind
from rtmpd.registry import (
    AUDIO_RIDES_MS,
    GopCache,
    Stream,
    StreamConfig,
    StreamRegistry,
    validate_name,
)

BAD_NAMES = ["", "../x", "a/b", "..", "%2e%2e", "x" * 300, "a b", "a.flv", "é", "a\x00b"]


def video(ts: int, *, key: bool = False, header: bool = False, size: int = 100) -> Frame:
    first = 0x17 if key or header else 0x27
    packet_type = 0 if header else 1
    return Frame.from_tag(9, ts, bytes([first, packet_type, 0, 0, 0]) + b"v" * size)


def audio(ts: int, *, header: bool = False, size: int = 20) -> Frame:
    return Frame.from_tag(8, ts, bytes([0xAF, 0 if header else 1]) + b"a" * size)


def metadata() -> Frame:
    return Frame.from_tag(18, 0, b"\x02\x00\x0aonMetaData\x05")


@implementer(IMediaSource)
class FakeSource:
    description = "test source"

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def stop_publishing(self, reason: str) -> None:
        self.stopped.append(reason)


class CountingFormat:
    """Plain FLV tags, counting how many times a frame is serialized."""

    def __init__(self, key: Hashable = "count") -> None:
        self.key = key
        self.encoded: list[Frame] = []

    def encode(self, frame: Frame) -> bytes:
        self.encoded.append(frame)
        return flv.encode_tag(frame.kind, frame.timestamp_ms, frame.payload)

    def preamble(self, stream: Stream) -> list[bytes]:
        return [flv.encode_header(has_audio=stream.has_audio, has_video=stream.has_video)]


class RecordingViewer(ViewerOutput):
    __slots__ = ("dropped", "ended")

    def __init__(self) -> None:
        super().__init__(StringTransport(), "test viewer")
        self.ended: list[str] = []
        self.dropped: list[str] = []

    def stream_ended(self, reason: str) -> None:
        self.ended.append(reason)

    def drop(self, reason: str) -> None:
        self.dropped.append(reason)

    def tags(self) -> list[tuple[int, int, bytes]]:
        """The FLV tags this viewer received, as (type, timestamp, body)."""
        reader = flv.FlvReader()
        reader.receive_data(self.transport.value())  # type: ignore[attr-defined]
        out = []
        while True:
            event = reader.next_event()
            if event is flv.NEED_DATA:
                return out
            if isinstance(event, flv.TagReceived):
                out.append((event.tag_type, event.timestamp_ms, event.body))


def make_registry(**config: int | None) -> tuple[StreamRegistry, Clock]:
    clock = Clock()
    return StreamRegistry(clock, StreamConfig(**config)), clock  # type: ignore[arg-type]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_refused_everywhere(name: str) -> None:
    registry, _ = make_registry()
    with pytest.raises(InvalidStreamName):
        validate_name(name)
    with pytest.raises(InvalidStreamName):
        registry.publish("live", name, FakeSource())
    with pytest.raises(InvalidStreamName):
        registry.publish(name, "cam", FakeSource())
    with pytest.raises(InvalidStreamName):
        registry.get("live", name)
    assert registry.streams == {}


def test_valid_names_pass() -> None:
    for name in ["a", "cam1", "A-b_C", "x" * 128]:
        assert validate_name(name) == name


def test_second_publisher_is_refused_and_name_is_free_after_unpublish() -> None:
    registry, _ = make_registry()
    stream = registry.publish("live", "cam", FakeSource())
    with pytest.raises(StreamBusy):
        registry.publish("live", "cam", FakeSource())
    registry.unpublish(stream, "done")
    again = registry.publish("live", "cam", FakeSource())
    assert again is not stream
    assert registry.get("live", "cam") is again


def test_late_joiner_starts_with_metadata_headers_then_keyframe() -> None:
    registry, _ = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(metadata())
    stream.push(video(0, header=True))
    stream.push(audio(0, header=True))
    for ts in range(0, 3000, 40):
        stream.push(video(ts, key=ts % 1000 == 0))
        stream.push(audio(ts))
    viewer = RecordingViewer()
    stream.add_viewer(CountingFormat(), viewer)
    tags = viewer.tags()
    kinds = [t[0] for t in tags[:3]]
    assert kinds == [18, 9, 8]
    first_video = next(t for t in tags[3:] if t[0] == 9)
    assert first_video[2][0] == 0x17  # a keyframe
    assert first_video[1] == 2000  # the last GOP, not the first
    # Metadata and headers carry the GOP start time, so time never goes back.
    times = [t[1] for t in tags]
    assert times == sorted(times)


OPUS_HEAD = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00"


def test_a_late_joiner_gets_the_opus_sequence_start_as_the_audio_header() -> None:
    """Enhanced RTMP Opus: SequenceStart is the audio header kept for new viewers, and
    every tag reaches them unchanged; a MultichannelConfig is passed on as a tag."""
    registry, _ = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    opus_start = Frame.from_tag(8, 0, b"\x90Opus" + OPUS_HEAD)
    stream.push(video(0, header=True))
    stream.push(opus_start)
    stream.push(Frame.from_tag(8, 0, b"\x94Opus\x01\x02\x00\x00\x00\x03"))
    packets = {}
    for ts in range(0, 3000, 20):
        if ts % 40 == 0:
            stream.push(video(ts, key=ts % 1000 == 0))
        packets[ts] = b"\x91Opus\xfc" + ts.to_bytes(2, "big")
        stream.push(Frame.from_tag(8, ts, packets[ts]))
    assert stream.audio_header is not None and stream.audio_header.payload[5:] == OPUS_HEAD
    assert stream.audio_header.codec == flv.FOURCC_OPUS
    viewer = RecordingViewer()
    stream.add_viewer(CountingFormat(), viewer)
    tags = viewer.tags()
    assert [t[2] for t in tags[:2]] == [video(0, header=True).payload, opus_start.payload]
    audio_tags = [(ts, body) for kind, ts, body in tags[2:] if kind == 8]
    assert audio_tags and all(packets[ts] == body for ts, body in audio_tags)
    assert audio_tags[0][0] >= 2000  # from the last GOP on


def test_each_frame_is_encoded_once_for_all_viewers() -> None:
    registry, _ = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    fmt = CountingFormat()
    viewers = [RecordingViewer() for _ in range(50)]
    for v in viewers:
        stream.add_viewer(fmt, v)
    fmt.encoded.clear()
    for ts in range(0, 400, 40):
        stream.push(video(ts, key=ts == 0))
    assert len(fmt.encoded) == 10
    assert all(len(v.tags()) == 10 for v in viewers)


def test_merge_window_sends_at_most_once_per_window() -> None:
    registry, clock = make_registry(merge_ms=50)
    stream = registry.publish("live", "cam", FakeSource())
    viewer = RecordingViewer()
    stream.add_viewer(CountingFormat(), viewer)
    stream.push(video(0, key=True))  # nothing sent for a window: goes at once
    assert [t[1] for t in viewer.tags()] == [0]
    clock.advance(0.01)
    stream.push(video(40))
    stream.push(video(80))
    assert [t[1] for t in viewer.tags()] == [0]
    clock.advance(0.039)
    assert [t[1] for t in viewer.tags()] == [0]
    clock.advance(0.001)  # 50 ms after the first send
    assert [t[1] for t in viewer.tags()] == [0, 40, 80]
    clock.advance(0.2)
    stream.push(video(120))  # a quiet window ago: at once again
    assert [t[1] for t in viewer.tags()] == [0, 40, 80, 120]


def test_paused_viewer_skips_to_next_keyframe_and_others_keep_everything() -> None:
    registry, _ = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    fast, slow = RecordingViewer(), RecordingViewer()
    fmt = CountingFormat()
    stream.add_viewer(fmt, fast)
    stream.add_viewer(fmt, slow)
    stream.push(video(0, key=True))
    slow.pauseProducing()
    slow.pauseProducing()  # idempotent
    stream.push(video(40))
    slow.resumeProducing()
    stream.push(video(80))  # not a keyframe: slow still waits
    stream.push(video(120, key=True))
    stream.push(video(160))
    assert [t[1] for t in fast.tags()] == [0, 40, 80, 120, 160]
    assert [t[1] for t in slow.tags()] == [0, 120, 160]
    assert slow.frames_dropped == 2
    assert slow.state is ViewerState.SYNCED


def test_viewer_stalled_past_the_queue_limit_is_disconnected() -> None:
    registry, _ = make_registry(merge_ms=0, viewer_queue_bytes=10_000)
    stream = registry.publish("live", "cam", FakeSource())
    fast, slow = RecordingViewer(), RecordingViewer()
    stream.add_viewer(CountingFormat(), fast)
    stream.add_viewer(CountingFormat(), slow)
    stream.push(video(0, key=True))
    slow.pauseProducing()
    for ts in range(40, 4000, 40):
        stream.push(video(ts, size=1000))
    assert slow.dropped and "queue limit of 10000 bytes" in slow.dropped[0]
    assert not fast.dropped
    assert len(fast.tags()) == 100
    assert stream.viewer_count() == 1


def test_unpublish_ends_every_viewer() -> None:
    registry, _ = make_registry(merge_ms=20)
    stream = registry.publish("live", "cam", FakeSource())
    viewer = RecordingViewer()
    stream.add_viewer(CountingFormat(), viewer)
    stream.push(video(0, key=True))
    registry.unpublish(stream, "publisher left")
    assert viewer.ended == ["publisher left"]
    assert [t[1] for t in viewer.tags()] == [0]  # pending frames flushed first
    assert registry.get("live", "cam") is None


def test_timestamps_never_go_backwards_after_a_publisher_clock_reset() -> None:
    registry, _ = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    viewer = RecordingViewer()
    stream.add_viewer(CountingFormat(), viewer)
    for ts in (0, 40, 5000, 5040, 10, 50, 90):
        stream.push(video(ts, key=ts in (0, 10)))
    times = [t[1] for t in viewer.tags()]
    assert times == sorted(times)
    assert times[-1] - times[-2] == 40  # spacing kept after the rebase


def test_gop_cache_without_keyframes_stays_empty() -> None:
    cache = GopCache(max_frames=10, max_bytes=10_000, max_ms=1000)
    for ts in range(0, 10_000, 40):
        cache.add(video(ts))
    assert cache.frames == []


def test_gop_cache_overflow_empties_until_next_keyframe() -> None:
    cache = GopCache(max_frames=5, max_bytes=1_000_000, max_ms=100_000)
    cache.add(video(0, key=True))
    for ts in range(40, 400, 40):
        cache.add(video(ts))
    assert cache.frames == []
    cache.add(video(400, key=True))
    assert len(cache.frames) == 1


def test_gop_cache_for_audio_only_keeps_a_time_window() -> None:
    cache = GopCache(max_frames=1000, max_bytes=1_000_000, max_ms=500)
    for ts in range(0, 2000, 20):
        cache.add(audio(ts))
    assert cache.frames[0].timestamp_ms >= 1980 - 500
    assert all(f.kind is FrameKind.AUDIO for f in cache.frames)


def test_viewer_joining_mid_window_gets_no_duplicates() -> None:
    registry, clock = make_registry(merge_ms=100)
    stream = registry.publish("live", "cam", FakeSource())
    first = RecordingViewer()
    fmt = CountingFormat()
    stream.add_viewer(fmt, first)
    stream.push(video(0, key=True))
    stream.push(video(40))
    late = RecordingViewer()
    stream.add_viewer(fmt, late)  # gets 0, 40 from the GOP cache now
    stream.push(video(80))
    clock.advance(0.1)
    assert [t[1] for t in first.tags()] == [0, 40, 80]
    assert [t[1] for t in late.tags()] == [0, 40, 80]


def test_a_format_nobody_watches_any_more_is_no_longer_encoded() -> None:
    registry, _ = make_registry(merge_ms=0, viewer_queue_bytes=1000)
    stream = registry.publish("live", "cam", FakeSource())
    fmt = CountingFormat()
    viewer = RecordingViewer()
    stream.add_viewer(fmt, viewer)
    stream.push(video(0, key=True))
    viewer.pauseProducing()
    for ts in range(40, 400, 40):
        stream.push(video(ts, size=500))
    assert viewer.dropped  # dropped by the fan-out itself, not by its adapter
    assert stream.groups == {}
    fmt.encoded.clear()
    stream.push(video(400))
    assert fmt.encoded == []


def _audience(stream: Stream, n: int) -> list[RecordingViewer]:
    fmt = CountingFormat()
    viewers = [RecordingViewer() for _ in range(n)]
    for v in viewers:
        stream.add_viewer(fmt, v)
    stream.flush()  # nothing pending: they are simply in sync from now on
    return viewers


def test_a_pass_over_a_large_audience_lets_the_reactor_run_between_slices() -> None:
    registry, clock = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(video(0, key=True))
    viewers = _audience(stream, 2 * FLUSH_SLICE_VIEWERS + 10)
    stream.push(video(40))
    got = [len(v.tags()) for v in viewers]
    assert got == [2] * FLUSH_SLICE_VIEWERS + [1] * (FLUSH_SLICE_VIEWERS + 10)
    stream.push(video(80))  # arrives mid-pass: waits for the next pass
    assert [len(v.tags()) for v in viewers] == got
    clock.advance(0)  # (Clock runs the follow-up slices and passes at once)
    assert all([t[1] for t in v.tags()] == [0, 40, 80] for v in viewers)


def test_viewer_joining_during_a_pass_gets_every_frame_once() -> None:
    registry, clock = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(video(0, key=True))
    viewers = _audience(stream, FLUSH_SLICE_VIEWERS + 1)
    stream.push(video(40))  # the last viewer has not got it yet
    late = RecordingViewer()
    stream.add_viewer(CountingFormat(), late)  # 0 and 40 from the GOP cache
    stream.push(video(80))
    for _ in range(3):
        clock.advance(0)
    for v in [*viewers, late]:
        assert [t[1] for t in v.tags()] == [0, 40, 80]


def _mid_pass() -> tuple[Stream, Clock, list[RecordingViewer]]:
    """A stream whose pass over its viewers (frame 40) has done one slice."""
    registry, clock = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(video(0, key=True))
    viewers = _audience(stream, FLUSH_SLICE_VIEWERS + 1)
    stream.push(video(40))
    return stream, clock, viewers


def test_viewer_that_pauses_and_rejoins_during_a_pass_skips_that_pass() -> None:
    stream, clock, viewers = _mid_pass()
    last = viewers[-1]  # in the second slice: not served yet
    last.pauseProducing()
    last.resumeProducing()
    stream.push(video(80, key=True))  # `last` rejoins here
    for _ in range(3):
        clock.advance(0)
    assert [t[1] for t in last.tags()] == [0, 80]
    assert [t[1] for t in viewers[0].tags()] == [0, 40, 80]


def test_stream_end_during_a_pass_delivers_everything_first() -> None:
    registry, _ = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(video(0, key=True))
    viewers = _audience(stream, FLUSH_SLICE_VIEWERS + 5)
    stream.push(video(40))
    stream.push(video(80))
    registry.unpublish(stream, "publisher left")
    for v in viewers:
        assert [t[1] for t in v.tags()] == [0, 40, 80]
        assert v.ended == ["publisher left"]


def _watched_stream_at_25_fps(clock: Clock) -> tuple[Stream, list[RecordingViewer]]:
    registry = StreamRegistry(clock, StreamConfig())  # merge_ms None: adaptive
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(video(0, key=True))
    viewers = _audience(stream, 200)
    for ts in range(40, 2040, 40):  # two seconds at 25 frames a second
        clock.advance(0.04)
        stream.push(video(ts))
    clock.advance(0)
    assert 24 <= stream.frame_rate <= 26
    return stream, viewers


def test_adaptive_window_sends_every_frame_at_once_while_passes_are_short() -> None:
    clock = Clock()
    stream, viewers = _watched_stream_at_25_fps(clock)
    (group,) = stream.groups.values()
    group.last_pass_s = 0.03  # 25 x 30 ms = 75 % of the time: still at once
    assert stream.send_window_ms() == 0
    clock.advance(0.01)
    stream.push(video(2040))
    assert [t[1] for t in viewers[0].tags()][-1] == 2040


def test_adaptive_window_spaces_passes_when_sending_would_fill_the_core() -> None:
    clock = Clock()
    stream, viewers = _watched_stream_at_25_fps(clock)
    (group,) = stream.groups.values()
    group.last_pass_s = 0.1  # 25 x 100 ms: more than the core; window 125 ms
    assert stream.send_window_ms() == pytest.approx(125)
    clock.advance(0.01)
    stream.push(video(2040))
    clock.advance(0.1)
    assert [t[1] for t in viewers[0].tags()][-1] == 2000
    clock.advance(0.015)
    assert [t[1] for t in viewers[0].tags()][-1] == 2040
    group.last_pass_s = 5.0
    assert stream.send_window_ms() == 500  # never more than MAX_AUTO_MERGE_MS


def _adaptive_stream_with_viewer(clock: Clock) -> tuple[Stream, RecordingViewer]:
    registry = StreamRegistry(clock, StreamConfig())  # merge_ms None: adaptive
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(video(0, key=True))
    (viewer,) = _audience(stream, 1)
    return stream, viewer


def test_adaptive_mode_sends_audio_with_the_next_video_frame() -> None:
    clock = Clock()
    stream, viewer = _adaptive_stream_with_viewer(clock)
    sent = viewer.bytes_sent
    stream.push(audio(10))
    stream.push(audio(31))
    assert viewer.bytes_sent == sent  # no pass of their own
    clock.advance(0.02)
    stream.push(video(40))  # goes at once, and takes the audio along
    assert [(t[0], t[1]) for t in viewer.tags()] == [(9, 0), (8, 10), (8, 31), (9, 40)]
    assert clock.getDelayedCalls() == []


def test_adaptive_mode_sends_audio_alone_when_no_video_comes_in_time() -> None:
    clock = Clock()
    stream, viewer = _adaptive_stream_with_viewer(clock)
    stream.push(audio(10))
    clock.advance(AUDIO_RIDES_MS / 1000 - 0.001)
    assert [t[1] for t in viewer.tags()] == [0]
    stream.push(audio(31))  # does not push the wait further out
    clock.advance(0.001)
    assert [t[1] for t in viewer.tags()] == [0, 10, 31]


def test_audio_goes_at_once_without_video_or_with_a_fixed_window_of_zero() -> None:
    registry = StreamRegistry(Clock(), StreamConfig())  # adaptive
    radio = registry.publish("live", "radio", FakeSource())
    radio.push(audio(0))
    (listener,) = _audience(radio, 1)
    radio.push(audio(21))
    assert [t[1] for t in listener.tags()] == [0, 21]
    registry, _ = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(video(0, key=True))
    (viewer,) = _audience(stream, 1)
    stream.push(audio(10))
    assert [t[1] for t in viewer.tags()] == [0, 10]


def test_send_duty_counts_the_passes_not_the_audio_that_rides_along() -> None:
    clock = Clock()
    registry = StreamRegistry(clock, StreamConfig())
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(video(0, key=True))
    _audience(stream, 10)
    for ts in range(40, 2040, 40):  # 25 fps video and 50 audio frames a second
        clock.advance(0.02)
        stream.push(audio(ts - 20))
        clock.advance(0.02)
        stream.push(audio(ts - 1))
        stream.push(video(ts))
    assert stream.frame_rate == pytest.approx(75, abs=2)
    assert stream.pass_rate == pytest.approx(25, abs=1)
    (group,) = stream.groups.values()
    group.last_pass_s = 0.03  # 25 passes x 30 ms = 75 % of the time: still at once
    assert stream.send_window_ms() == 0


def test_viewer_held_before_its_slice_counts_that_pass_as_skipped() -> None:
    stream, clock, viewers = _mid_pass()
    last = viewers[-1]  # in the second slice: not served yet
    last.pauseProducing()  # before being served: misses 40
    stream.push(video(80))  # pending: missed too
    last.resumeProducing()
    stream.push(video(120, key=True))
    clock.advance(0)
    assert [t[1] for t in last.tags()] == [0, 120]
    assert last.frames_dropped == 2


class BrokenViewer(RecordingViewer):
    __slots__ = ()

    def send_bytes(self, data: bytes, frames: int) -> None:
        raise RuntimeError("broken transport")


def test_a_viewer_whose_send_fails_is_dropped_and_the_others_go_on() -> None:
    registry, clock = make_registry(merge_ms=0)
    stream = registry.publish("live", "cam", FakeSource())
    stream.push(video(0, key=True))
    fmt = CountingFormat()
    broken, fine = BrokenViewer(), RecordingViewer()
    stream.add_viewer(fmt, broken)
    stream.add_viewer(fmt, fine)
    stream.flush()
    stream.push(video(40))
    stream.push(video(80))
    clock.advance(0)
    assert broken.dropped and "internal error" in broken.dropped[0]
    assert [t[1] for t in fine.tags()] == [0, 40, 80]
    assert stream.viewer_count() == 1


def test_a_watched_stream_logs_its_load_once_a_minute() -> None:
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    seen: list[str] = []

    def observer(event: LogEvent) -> None:
        text = formatEvent(event)
        if text.startswith("stream live/cam:"):
            seen.append(text)

    globalLogPublisher.addObserver(observer)
    try:
        registry, clock = make_registry(merge_ms=0)
        stream = registry.publish("live", "cam", FakeSource())
        _audience(stream, 3)
        for ts in range(0, 130_000, 40):
            clock.advance(0.04)
            stream.push(video(ts, key=ts % 1000 == 0, size=495))  # 500 bytes: 100 kbit/s
    finally:
        globalLogPublisher.removeObserver(observer)
    assert len(seen) == 2
    assert seen[0].startswith("stream live/cam: 3 viewers, 100 kbit/s in, sends at most every 0 ms")


def test_an_empty_name_says_what_the_url_should_look_like() -> None:
    with pytest.raises(InvalidStreamName, match="URLs are rtmp://host/APP/STREAM"):
        validate_name("")
