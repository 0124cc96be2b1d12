"""Recorders driven through a real StreamRegistry with a fake clock and a
synchronous (or hand-run) disk writer: no reactor, no sockets.

Frames come from tests/data/ts/bframes.flv (H.264 with B-frames + AAC, made
by ffmpeg; see tests/data/ts/README), looped with shifted timestamps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python import usage
from zope.interface import implementer

from rtmpd.codec import amf0, flv, hls, mpegts
from rtmpd.codec.mp4.demux import Mp4Demuxer
from rtmpd.interfaces import IMediaSink, IMediaSource
from rtmpd.media import Frame, FrameKind
from rtmpd.registry import StreamConfig, StreamRegistry
from rtmpd.services import flvrec
from rtmpd.services.fmp4rec import AUDIO_TRACK, VIDEO_TRACK, FragmentBuilder, merge_fragments
from rtmpd.services.recorder import MARKER_NAME, Recorder, RecorderSettings
from rtmpd.services.recorders import RECORDER_CLASSES, make_recorders, parse_record_option
from rtmpd.services.recovery import recover
from rtmpd.services.writer import (
    ImmediateDiskWriter,
    ThreadedDiskWriter,
    WriterFull,
    WriterService,
)
from rtmpd.tap.rtmpd import Options, makeService

T = TypeVar("T")
DATA = Path(__file__).parent.parent / "data" / "ts" / "bframes.flv"
#: bframes.flv lasts 0.48 s of video and 0.567 s of audio (first audio at 57 ms).
LOOP_MS = 600
HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def golden_tags() -> list[flv.TagReceived]:
    reader = flv.FlvReader()
    reader.receive_data(DATA.read_bytes())
    reader.receive_data(b"")
    tags = []
    while True:
        event = reader.next_event()
        if isinstance(event, flv.TagReceived):
            tags.append(event)
        elif isinstance(event, (flv.NeedData, flv.EndOfStream)):
            return tags


def clip_frames(loops: int, *, start_ms: int = 0) -> list[Frame]:
    """Metadata and sequence headers once, then ``loops`` copies of the media."""
    out = []
    for n in range(loops):
        for tag in golden_tags():
            ts = tag.timestamp_ms + start_ms + n * LOOP_MS
            frame = Frame.from_tag(tag.tag_type, ts, tag.body)
            if n and (frame.sequence_header or frame.kind is FrameKind.SCRIPT):
                continue
            out.append(frame)
    return out


@implementer(IMediaSource)
class FakeSource:
    description = "test publisher"

    def stop_publishing(self, reason: str) -> None:
        pass


@implementer(IMediaSink)
class CountingSink:
    """Stands for a viewer or relay on the same stream."""

    def __init__(self) -> None:
        self.frames = 0

    def on_frame(self, frame: object) -> None:
        self.frames += 1

    def on_stream_end(self, reason: str) -> None:
        pass


class ManualWriter:
    """Queues jobs until the test runs them: shows what waits for the disk."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], Any], defer.Deferred[Any], bool]] = []

    def submit(
        self, job: Callable[[], T], *, size: int = 0, quiet: bool = False
    ) -> defer.Deferred[T]:
        d: defer.Deferred[T] = defer.Deferred()
        self.jobs.append((job, d, quiet))
        return d

    def run_all(self) -> None:
        while self.jobs:
            job, d, quiet = self.jobs.pop(0)
            try:
                result = job()
            except Exception as e:
                d.errback(e)
            else:
                if not quiet:
                    d.callback(result)


class FullWriter:
    def submit(
        self, job: Callable[[], T], *, size: int = 0, quiet: bool = False
    ) -> defer.Deferred[T]:
        raise WriterFull("disk writer queue full: 4096 jobs pending")


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def messages(events: list[LogEvent], level: str | None = None) -> list[str]:
    from twisted.logger import formatEvent

    return [
        formatEvent(e) for e in events if level is None or e["log_level"].name == level
    ]


class Rig:
    """A registry with recorders of the given formats attached."""

    def __init__(
        self,
        root: Path,
        formats: tuple[str, ...] = ("hls", "flv", "fmp4", "fmp4-separate"),
        *,
        writer: Any = None,
        fragment_ms: int = 400,
        window: int = 3,
    ) -> None:
        self.root = root
        self.registry = StreamRegistry(Clock(), StreamConfig(merge_ms=0))
        self.writer = writer or ImmediateDiskWriter()
        settings = RecorderSettings(root=str(root), fragment_ms=fragment_ms, window=window)
        self.recorders: list[Recorder] = [
            RECORDER_CLASSES[fmt](self.registry, self.writer, settings) for fmt in formats
        ]
        for recorder in self.recorders:
            recorder.startService()

    def publish(self, frames: list[Frame], name: str = "cam", *, end: bool = True) -> Any:
        stream = self.registry.publish("live", name, FakeSource())
        for frame in frames:
            stream.push(frame)
        if end:
            self.registry.unpublish(stream, "publisher left")
        return stream

    def stop(self) -> defer.Deferred[Any]:
        return defer.gatherResults([defer.maybeDeferred(r.stopService) for r in self.recorders])

    def dir(self, fmt: str, name: str = "cam") -> Path:
        return {
            "hls": self.root / "hls" / "live" / name,
            "flv": self.root / "flv" / "live" / name,
            "fmp4": self.root / "mp4" / "live" / name / "output_merge",
            "fmp4-separate": self.root / "mp4" / "live" / name / "output_separate",
        }[fmt]


def demux(path: Path) -> Mp4Demuxer:
    data = path.read_bytes()
    return Mp4Demuxer(lambda offset, size: data[offset : offset + size], len(data))


def flv_tags(path: Path) -> list[tuple[int, flv.TagReceived]]:
    """(file position, tag) for every tag."""
    data = path.read_bytes()
    pos, out = 13, []
    while pos + 11 <= len(data):
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | data[pos + 7] << 24
        body = data[pos + 11 : pos + 11 + size]
        out.append((pos, flv.TagReceived(tag_type=data[pos], timestamp_ms=ts, body=body)))
        pos += 11 + size + 4
    assert pos == len(data)
    return out


def flv_metadata(path: Path) -> dict[str, Any]:
    _, first = flv_tags(path)[0]
    decoder = amf0.Decoder(first.body)
    assert decoder.decode() == "onMetaData"
    value = decoder.decode()
    assert isinstance(value, dict)
    assert set(first.body[decoder.offset :]) <= {0}  # zero padding only
    return value


def top_level_boxes(path: Path) -> list[bytes]:
    data = path.read_bytes()
    pos, boxes = 0, []
    while pos + 8 <= len(data):
        boxes.append(data[pos + 4 : pos + 8])
        pos += int.from_bytes(data[pos : pos + 4], "big")
    return boxes


# --------------------------------------------------------------------------- all formats


def test_one_publish_gives_every_format_complete_and_finalised(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.publish(clip_frames(8))
    done = rig.stop()
    assert done.called
    assert not list(tmp_path.rglob(MARKER_NAME))
    assert not list(tmp_path.rglob("*.tmp"))
    playlist = hls.MediaPlaylist.parse((rig.dir("hls") / "index.m3u8").read_text(), window=3)
    assert playlist.ended and len(playlist.segments) == 3
    assert all((rig.dir("hls") / s.uri).exists() for s in playlist.segments)
    full = rig.dir("fmp4") / "stream_full.mp4"
    assert top_level_boxes(full) == [b"ftyp", b"moov", b"mdat"]
    merged = demux(full)
    # 12 pictures and 22 AAC frames a loop: every recorded sample is in the merge.
    assert merged.sample_count(VIDEO_TRACK) == 8 * 12
    assert merged.sample_count(AUDIO_TRACK) == 8 * 22
    separate = sorted(p.name for p in rig.dir("fmp4-separate").iterdir())
    assert separate[:2] == ["audio_000001.m4s", "audio_000002.m4s"]
    assert "video_init.mp4" in separate and "audio_init.mp4" in separate
    meta = flv_metadata(rig.dir("flv") / "index.flv")
    assert meta["duration"] == pytest.approx((7 * LOOP_MS + 544 + 23) / 1000)
    assert meta["filesize"] == (rig.dir("flv") / "index.flv").stat().st_size


def test_outputs_start_at_zero_with_the_published_audio_offset(tmp_path: Path) -> None:
    """The clip's first audio frame is 57 ms after its first video frame;
    published at 5 s, every output starts at 0 and keeps those 57 ms."""
    rig = Rig(tmp_path)
    rig.publish(clip_frames(2, start_ms=5000))
    rig.stop()
    fragments = demux(rig.dir("fmp4") / "init.mp4").tracks  # tracks only
    assert {t.track_id for t in fragments} == {VIDEO_TRACK, AUDIO_TRACK}
    first = {}
    for p in sorted(rig.dir("fmp4-separate").glob("*_000001.m4s")):
        init = rig.dir("fmp4-separate") / (p.name.split("_")[0] + "_init.mp4")
        data = init.read_bytes() + p.read_bytes()
        d = Mp4Demuxer(lambda o, s, data=data: data[o : o + s], len(data))
        first[p.name.split("_")[0]] = next(d.samples()).dts
    assert first == {"video": 0, "audio": 57}
    media = [t for _, t in flv_tags(rig.dir("flv") / "index.flv") if t.body[1:2] == b"\x01"]
    assert media[0].timestamp_ms == 0 and media[0].tag_type == flv.TAG_VIDEO
    assert next(t for t in media if t.tag_type == flv.TAG_AUDIO).timestamp_ms == 57
    segment = (rig.dir("hls") / "0.ts").read_bytes()
    packets = mpegts.read_all(segment)
    video_pts = min(p.pts for p in packets if p.pid == 0x100 and p.pts is not None)
    audio_pts = min(p.pts for p in packets if p.pid == 0x101 and p.pts is not None)
    first_video_dts = min(p.dts for p in packets if p.pid == 0x100 and p.dts is not None)
    assert first_video_dts == mpegts.TIMESTAMP_BASE_90K
    assert audio_pts - mpegts.TIMESTAMP_BASE_90K == 57 * 90
    assert video_pts >= mpegts.TIMESTAMP_BASE_90K


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not installed")
def test_every_output_decodes_cleanly_with_ffmpeg(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.publish(clip_frames(4))
    rig.stop()
    merged = tmp_path / "mixed.mp4"
    merged.write_bytes(
        b"".join(p.read_bytes() for p in [rig.dir("fmp4") / "init.mp4",
                                           *sorted(rig.dir("fmp4").glob("*.m4s"))])
    )
    for path in (
        rig.dir("flv") / "index.flv",
        rig.dir("fmp4") / "stream_full.mp4",
        rig.dir("hls") / "index.m3u8",
        merged,
    ):
        result = subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
            capture_output=True, text=True, timeout=60,
        )
        assert (result.returncode, result.stderr) == (0, ""), path


# --------------------------------------------------------------------------- HLS


def test_hls_window_slides_and_old_segments_are_deleted_after_a_grace(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("hls",), fragment_ms=200, window=2)
    stream = rig.publish(clip_frames(6), end=False)
    playlist = hls.MediaPlaylist.parse((rig.dir("hls") / "index.m3u8").read_text())
    assert not playlist.ended
    assert playlist.media_sequence > 5 and len(playlist.segments) == 2
    on_disk = sorted(int(p.stem) for p in rig.dir("hls").glob("*.ts"))
    # listed 2 + 3 that left recently (window + 1), nothing older
    assert on_disk == list(range(playlist.media_sequence - 3, playlist.next_sequence))
    rig.registry.unpublish(stream, "done")
    text = (rig.dir("hls") / "index.m3u8").read_text()
    assert text.endswith("#EXT-X-ENDLIST\n")


def test_hls_republish_continues_the_media_sequence_after_a_discontinuity(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("hls",), window=10)
    rig.publish(clip_frames(3))
    first = hls.MediaPlaylist.parse((rig.dir("hls") / "index.m3u8").read_text())
    rig.publish(clip_frames(3))
    second = hls.MediaPlaylist.parse((rig.dir("hls") / "index.m3u8").read_text())
    assert second.ended
    uris = [s.uri for s in second.segments]
    assert uris[: len(first.segments)] == [s.uri for s in first.segments]
    resumed = second.segments[len(first.segments)]
    assert resumed.discontinuity and resumed.uri == f"{first.next_sequence}.ts"
    assert sum(s.discontinuity for s in second.segments) == 1


def test_hls_cuts_segments_at_keyframes_near_the_fragment_length(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("hls",), fragment_ms=400, window=50)
    rig.publish(clip_frames(4))
    playlist = hls.MediaPlaylist.parse((rig.dir("hls") / "index.m3u8").read_text())
    keyframes = {n * LOOP_MS + k for n in range(4) for k in (0, 200, 400)}
    start = 0
    for segment in playlist.segments[:-1]:
        start += segment.duration_ms
        assert start in keyframes
        assert segment.duration_ms >= 400
    assert playlist.target_duration_s >= max(s.rounded_duration_s for s in playlist.segments)


# --------------------------------------------------------------------------- FLV


def test_flv_metadata_indexes_every_keyframe_tag(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("flv",))
    rig.publish(clip_frames(3))
    path = rig.dir("flv") / "index.flv"
    meta = flv_metadata(path)
    tags = dict(flv_tags(path))
    keyframes = meta["keyframes"]
    assert len(keyframes["times"]) == 9  # 3 a loop
    for time_s, position in zip(keyframes["times"], keyframes["filepositions"], strict=True):
        tag = tags[int(position)]
        assert tag.tag_type == flv.TAG_VIDEO and tag.body[:2] == b"\x17\x01"
        assert tag.timestamp_ms == round(time_s * 1000)
    assert meta["width"] == 160.0  # the publisher's own fields are kept


def test_flv_keyframe_index_is_thinned_when_it_outgrows_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flvrec, "METADATA_RESERVED_BYTES", 1200)
    rig = Rig(tmp_path, ("flv",))
    rig.publish(clip_frames(30))  # 90 keyframes: 1620 bytes of index at full detail
    meta = flv_metadata(rig.dir("flv") / "index.flv")
    times = meta["keyframes"]["times"]
    assert 10 < len(times) < 90
    assert times[0] == 0.0


def test_flv_republish_moves_the_previous_file_aside(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("flv",))
    rig.publish(clip_frames(2))
    first = (rig.dir("flv") / "index.flv").read_bytes()
    rig.publish(clip_frames(1))
    old = list(rig.dir("flv").glob("index-*.flv"))
    assert len(old) == 1 and old[0].read_bytes() == first
    assert len(old[0].name) == len("index-20260128T101502Z.flv")
    assert (rig.dir("flv") / "index.flv").read_bytes() != first


# --------------------------------------------------------------------------- fMP4


def test_fragments_cut_at_keyframes_and_durations_fill_every_gap() -> None:
    builder = FragmentBuilder(has_video=True, fragment_ms=100)
    out = []
    for dts, track, key in [
        (0, VIDEO_TRACK, True), (10, AUDIO_TRACK, True), (40, VIDEO_TRACK, False),
        (33, AUDIO_TRACK, True), (80, VIDEO_TRACK, False), (56, AUDIO_TRACK, True),
        (120, VIDEO_TRACK, True), (79, AUDIO_TRACK, True), (160, VIDEO_TRACK, False),
    ]:
        done = builder.push(track, dts, 0, key, b"x")
        if done:
            out.append(done)
    last = builder.finish()
    assert last is not None
    out.append(last)
    assert [[s.dts for s in f[VIDEO_TRACK]] for f in out] == [[0, 40, 80], [120, 160]]
    assert [s.duration for s in out[0][VIDEO_TRACK]] == [40, 40, 40]
    # the audio frame still waiting for its successor goes in the next fragment
    assert [s.dts for s in out[0][AUDIO_TRACK]] == [10, 33]
    assert [s.dts for s in out[1][AUDIO_TRACK]] == [56, 79]
    assert out[1][AUDIO_TRACK][-1].duration == 23


def test_merge_skips_a_damaged_last_fragment(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("fmp4",))
    rig.publish(clip_frames(3))
    directory = rig.dir("fmp4")
    fragments = sorted(directory.glob("*.m4s"))
    last = fragments[-1]
    last.write_bytes(last.read_bytes()[:100])
    summary = merge_fragments(str(directory))
    assert f"from {len(fragments) - 1} fragments" in summary
    assert demux(directory / "stream_full.mp4").sample_count(VIDEO_TRACK) > 0


def test_republish_moves_the_previous_fmp4_directory_aside(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("fmp4",))
    rig.publish(clip_frames(1))
    rig.publish(clip_frames(1))
    parent = rig.dir("fmp4").parent
    names = sorted(p.name for p in parent.iterdir())
    assert names[0] == "output_merge" and names[1].startswith("output_merge-")
    assert (parent / names[1] / "stream_full.mp4").exists()


# --------------------------------------------------------------------------- tracks


def test_recording_waits_for_an_announced_audio_header(tmp_path: Path) -> None:
    frames = clip_frames(2)
    audio_header = next(f for f in frames if f.kind is FrameKind.AUDIO and f.sequence_header)
    frames.remove(audio_header)
    frames.insert(8, audio_header)  # after a few video frames
    rig = Rig(tmp_path, ("fmp4",))
    rig.publish(frames)
    tracks = demux(rig.dir("fmp4") / "stream_full.mp4").tracks
    assert sorted(t.kind for t in tracks) == ["audio", "video"]


def test_stream_without_a_recorded_codec_is_not_recorded_as_hls(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    rig = Rig(tmp_path, ("hls", "flv"))
    h263 = [Frame.from_tag(9, ts, bytes([0x12]) + b"x" * 50) for ts in range(0, 3000, 40)]
    rig.publish(h263)
    assert not rig.dir("hls").exists()
    assert len(flv_tags(rig.dir("flv") / "index.flv")) == 1 + len(h263)
    assert any(
        "not recording, no video (H.264, H.265, AV1, VP9)" in m for m in messages(logged, "warn")
    )


# --------------------------------------------------------------------------- failure, stop


def test_disk_error_fails_the_recording_with_one_line_and_the_stream_goes_on(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    root = tmp_path / "not-a-dir"
    root.write_bytes(b"")
    rig = Rig(root, ("hls", "flv"))
    viewer = CountingSink()
    stream = rig.registry.publish("live", "cam", FakeSource())
    stream.add_sink(viewer)
    frames = clip_frames(3)
    for frame in frames:
        stream.push(frame)
    assert stream.live and viewer.frames == len(frames)
    errors = messages(logged, "error")
    assert len(errors) == 2
    assert all("failed: Not a directory" in e and "recording stopped" in e for e in errors)
    rig.registry.unpublish(stream, "done")
    assert rig.stop().called


def test_full_writer_queue_fails_the_recording_not_the_stream(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    rig = Rig(tmp_path, ("flv",), writer=FullWriter())
    viewer = CountingSink()
    stream = rig.registry.publish("live", "cam", FakeSource())
    stream.add_sink(viewer)
    for frame in clip_frames(2):
        stream.push(frame)
    rig.registry.unpublish(stream, "done")
    assert viewer.frames > 0
    errors = messages(logged, "error")
    assert errors == [
        "flv recording of live/cam failed: disk writer queue full: 4096 jobs pending; "
        "recording stopped"
    ]
    assert rig.stop().called


def test_stop_service_fires_only_after_every_recording_is_finalised(tmp_path: Path) -> None:
    writer = ManualWriter()
    rig = Rig(tmp_path, writer=writer)
    rig.publish(clip_frames(2), end=False)  # still live at shutdown
    stopped = rig.stop()
    assert not stopped.called
    writer.run_all()
    assert stopped.called
    assert not list(tmp_path.rglob(MARKER_NAME))
    assert (rig.dir("fmp4") / "stream_full.mp4").exists()
    assert (rig.dir("hls") / "index.m3u8").read_text().endswith("#EXT-X-ENDLIST\n")
    assert rig.registry.streams  # the stream itself is untouched


# --------------------------------------------------------------------------- recovery


def die() -> None:
    """What a process's death does to its recordings' markers: their locks go."""
    from rtmpd.services import recorder

    for marker in recorder._held_markers.values():
        marker.close()
    recorder._held_markers.clear()


def test_recovery_finalises_what_a_crash_left(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.publish(clip_frames(4), end=False)
    die()
    assert len(list(tmp_path.rglob(MARKER_NAME))) == 4
    flv_path = rig.dir("flv") / "index.flv"
    with open(flv_path, "ab") as f:
        f.write(flv.encode_tag(9, 5000, b"\x27\x01" + b"x" * 100)[:50])  # half a tag
    lines = recover(str(tmp_path))
    assert len(lines) == 4 and all(line.startswith("recovered unfinished") for line in lines)
    assert not list(tmp_path.rglob(MARKER_NAME))
    assert (rig.dir("hls") / "index.m3u8").read_text().endswith("#EXT-X-ENDLIST\n")
    meta = flv_metadata(flv_path)  # parses to the end: the half tag is gone
    assert meta["duration"] > 1.5 and len(meta["keyframes"]["times"]) >= 9
    assert top_level_boxes(rig.dir("fmp4") / "stream_full.mp4") == [b"ftyp", b"moov", b"mdat"]
    assert recover(str(tmp_path)) == []


def test_recovery_leaves_a_recording_of_this_live_process_alone(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("hls",))
    rig.publish(clip_frames(2), end=False)
    marker = rig.dir("hls") / MARKER_NAME
    [line] = recover(str(tmp_path))
    assert line == (f"left unfinished hls recording hls/live/cam alone: another live process "
                    f"(pid {os.getpid()}) is still recording it")
    assert marker.exists()
    assert "#EXT-X-ENDLIST" not in (rig.dir("hls") / "index.m3u8").read_text()
    rig.stop()
    assert not marker.exists()


def test_recovery_failure_is_reported_once(tmp_path: Path) -> None:
    directory = tmp_path / "flv" / "live" / "cam"
    directory.mkdir(parents=True)
    (directory / "index.flv").write_bytes(b"not an flv")
    (directory / MARKER_NAME).write_text("{}")
    [line] = recover(str(tmp_path))
    assert "recovery of unfinished flv recording flv/live/cam failed" in line
    assert (directory / (MARKER_NAME + ".failed")).exists()
    assert recover(str(tmp_path)) == []


# --------------------------------------------------------------------------- writer


class Collect:
    """Stands in for reactor.callFromThread: collects calls to run later."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.threads: set[str] = set()

    def __call__(self, f: Callable[..., Any], *args: Any) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls.append((f, args))

    def run(self) -> None:
        for f, args in self.calls:
            f(*args)
        self.calls.clear()


def test_threaded_writer_runs_jobs_in_order_off_the_calling_thread() -> None:
    collect = Collect()
    writer = ThreadedDiskWriter(collect)
    writer.start()
    ran: list[tuple[int, str]] = []
    results: list[object] = []
    for n in range(5):
        d = writer.submit(lambda n=n: ran.append((n, threading.current_thread().name)) or n)
        d.addCallback(results.append)
    failed = writer.submit(lambda: 1 // 0)
    errors: list[Any] = []
    failed.addErrback(errors.append)
    stopped = writer.stop()
    thread = writer._thread
    assert thread is not None
    thread.join(5)
    collect.run()
    assert [n for n, _ in ran] == [0, 1, 2, 3, 4]
    assert {name for _, name in ran} == {"rtmpd-writer"}
    assert collect.threads == {"rtmpd-writer"}
    assert results == [0, 1, 2, 3, 4]
    assert errors and errors[0].check(ZeroDivisionError)
    assert stopped.called
    with pytest.raises(WriterFull):
        writer.submit(lambda: None)


def test_quiet_jobs_wake_the_reactor_only_when_they_fail() -> None:
    """A quiet job's success is not sent to the reactor thread (it would wake
    it for nothing); its failure is, and the bounds count it either way."""
    collect = Collect()
    writer = ThreadedDiskWriter(collect)
    writer.start()
    ok = writer.submit(lambda: 1, size=10, quiet=True)
    bad = writer.submit(lambda: 1 // 0, size=10, quiet=True)
    loud = writer.submit(lambda: 3)
    errors: list[Any] = []
    bad.addErrback(errors.append)
    results: list[Any] = []
    loud.addCallback(results.append)
    writer.stop()
    assert writer._thread is not None
    writer._thread.join(60)  # a bound for a stuck thread, not a speed
    assert not writer._thread.is_alive()
    assert len(collect.calls) == 3  # bad's errback, loud's callback, the stop
    collect.run()
    assert not ok.called
    assert errors and errors[0].check(ZeroDivisionError)
    assert results == [3]
    assert (writer.pending_jobs, writer.pending_bytes) == (0, 0)
    immediate = ImmediateDiskWriter()
    assert not immediate.submit(lambda: 1, quiet=True).called
    failed = immediate.submit(lambda: 1 // 0, quiet=True)
    failed.addErrback(errors.append)
    assert len(errors) == 2


def test_threaded_writer_refuses_jobs_past_its_bounds() -> None:
    collect = Collect()
    writer = ThreadedDiskWriter(collect, max_jobs=2, max_bytes=1000)
    release = threading.Event()
    writer.start()
    writer.submit(release.wait)
    writer.submit(lambda: None, size=600)
    with pytest.raises(WriterFull, match="2 jobs pending"):
        writer.submit(lambda: None)
    release.set()
    writer.stop()
    assert writer._thread is not None
    writer._thread.join(5)
    writer2 = ThreadedDiskWriter(collect, max_jobs=10, max_bytes=1000)
    writer2.start()
    blocker = threading.Event()
    writer2.submit(blocker.wait, size=600)
    with pytest.raises(WriterFull, match="600 bytes pending"):
        writer2.submit(lambda: None, size=600)
    blocker.set()
    writer2.stop()
    assert writer2._thread is not None
    writer2._thread.join(5)


def test_writer_service_starts_recovery_and_stops_after_queued_jobs(tmp_path: Path) -> None:
    services = make_recorders(
        StreamRegistry(Clock()), MemoryReactorClock(), root=str(tmp_path),
        formats="hls,flv", fragment_ms=2000, window=6,
    )
    writer_service = services[0]
    assert isinstance(writer_service, WriterService)
    assert isinstance(writer_service.writer, ImmediateDiskWriter)  # no threads in the fake
    assert [s.name for s in services] == ["record-writer", "retention", "record-hls", "record-flv"]
    for s in services:
        s.startService()
    assert writer_service.writer.jobs_run == 1  # recovery
    assert make_recorders(StreamRegistry(Clock()), MemoryReactorClock(), root=str(tmp_path),
                          formats="none", fragment_ms=2000, window=6) == []


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hls", ("hls",)),
        ("hls,flv,fmp4,fmp4-separate", ("hls", "flv", "fmp4", "fmp4-separate")),
        (" FLV , hls,flv", ("flv", "hls")),
        ("none", ()),
    ],
)
def test_record_option_values(value: str, expected: tuple[str, ...]) -> None:
    assert parse_record_option(value) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--record", "mp4"], "unknown format 'mp4'; choose from hls, flv, fmp4"),
        (["--record", ""], "--record needs"),
        (["--record", "hls,none"], "unknown format 'none'"),
        (["--hls-fragment", "0"], "must be positive"),
        (["--hls-window", "0"], "hls-window must be positive"),
    ],
)
def test_bad_record_options_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(argv)


def test_record_options_default_and_from_config(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions([])
    assert options["record"] == ("hls",)
    assert options["hls-fragment"] == 2.0 and options["hls-window"] == 6
    config = tmp_path / "rtmpd.toml"
    config.write_text('record = ["flv", "fmp4"]\nhls-fragment = 4\nhls_window = 10\n')
    options = Options()
    options.parseOptions(["--config", str(config)])
    assert options["record"] == ("flv", "fmp4")
    assert options["hls-fragment"] == 4.0 and options["hls-window"] == 10


@pytest.mark.parametrize(
    ("record", "names"),
    [("none", []), ("hls", ["record-hls"]), ("fmp4-separate,flv", ["record-fmp4-separate",
                                                                  "record-flv"])],
)
def test_make_service_adds_the_chosen_recorders(
    record: str, names: list[str], tmp_path: Path
) -> None:
    options = Options()
    options.parseOptions(["--root", str(tmp_path), "--record", record])
    top = makeService(options, reactor=MemoryReactorClock())
    children = [s.name for s in top]
    recorders = [n for n in children if n.startswith("record-") and n != "record-writer"]
    assert recorders == names
    assert ("record-writer" in children) == bool(names)
    if names:
        assert children.index("record-writer") < children.index(names[0])


def test_hls_end_deletes_segments_no_longer_listed(tmp_path: Path) -> None:
    from rtmpd.services.hls import HlsFiles

    files = HlsFiles(str(tmp_path / "hls"), target_duration_s=2, window=2)
    files.open()
    for _ in range(10):
        files.add_segment([b"\x47" * 188], 2000, False)
    # While live, left segments linger for window + 1 more segments.
    assert len([n for n in os.listdir(files.directory) if n.endswith(".ts")]) == 5
    files.end()
    left = sorted(n for n in os.listdir(files.directory) if n.endswith(".ts"))
    assert left == ["8.ts", "9.ts"]
    assert "#EXT-X-ENDLIST" in (tmp_path / "hls" / "index.m3u8").read_text()
