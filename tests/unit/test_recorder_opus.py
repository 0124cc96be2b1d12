"""Recorders with H.264 + Opus (Enhanced RTMP ExAudio): fMP4 with an ``Opus``/``dOps`` sample
entry at 48 kHz, and HLS switched to fMP4 segments behind ``EXT-X-MAP``.

Frames come from tests/data/opus/h264_opus.flv (ffmpeg 9; see its README), looped with
shifted timestamps, through a real StreamRegistry and the recorders (as test_recorder.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rtmpd.codec import flv, hls, mpegts, opus
from rtmpd.codec.mp4 import TrackConfig
from rtmpd.codec.mp4.boxes import iter_boxes
from rtmpd.codec.mp4.demux import Mp4Demuxer
from rtmpd.codec.mp4.fmp4 import init_segment
from rtmpd.media import Frame, FrameKind
from rtmpd.services.fmp4rec import AUDIO_TRACK, VIDEO_TRACK, FragmentBuilder
from rtmpd.services.recorder import MARKER_NAME
from rtmpd.services.recovery import recover
from tests.unit.test_recorder import Rig, demux, die

DATA = Path(__file__).parent.parent / "data" / "opus" / "h264_opus.flv"
#: h264_opus.flv: 12 pictures (0..440 ms) and 25 Opus packets of 20 ms (73..553 ms).
LOOP_MS = 600
HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
#: ffmpeg's mono OpusHead in the golden file.
OPUS_HEAD = b"OpusHead\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00"


def golden_tags() -> list[flv.TagReceived]:
    reader = flv.FlvReader()
    reader.receive_data(DATA.read_bytes())
    reader.receive_data(b"")
    tags = []
    while not isinstance(event := reader.next_event(), (flv.NeedData, flv.EndOfStream)):
        if isinstance(event, flv.TagReceived):
            tags.append(event)
    return tags


def opus_frames(loops: int, *, start_ms: int = 0) -> list[Frame]:
    out = []
    for n in range(loops):
        for tag in golden_tags():
            ts = tag.timestamp_ms + start_ms + n * LOOP_MS
            frame = Frame.from_tag(tag.tag_type, ts, tag.body)
            if n and (frame.sequence_header or frame.kind is FrameKind.SCRIPT):
                continue
            out.append(frame)
    return out


def opus_packets(loops: int) -> int:
    return loops * sum(
        1 for t in golden_tags() if t.tag_type == flv.TAG_AUDIO and t.body[0] == 0x91
    )


def decode_errors(path: Path) -> tuple[int, str]:
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stderr


def probe(path: Path) -> list[str]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels",
         "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sorted(set(result.stdout.split()))  # an HLS input lists its program's streams too


# --------------------------------------------------------------------------- the sample entry

# Opus sample entry of init_segment for OPUS_HEAD (ISO BMFF AudioSampleEntry + dOps).
OPUS_ENTRY = (
    b"\x00\x00\x00\x37Opus"  # 8 + 28 + 19 bytes
    + bytes(6) + b"\x00\x01"  # reserved, data_reference_index
    + bytes(8) + b"\x00\x01\x00\x10"  # reserved, channelcount 1, samplesize 16
    + bytes(4) + b"\xbb\x80\x00\x00"  # pre_defined, reserved, samplerate 48000 << 16
    + b"\x00\x00\x00\x13dOps"
    + b"\x00\x01\x01\x38\x00\x00\xbb\x80\x00\x00\x00"
)


def test_init_segment_writes_an_opus_sample_entry_with_dops() -> None:
    track = TrackConfig(
        track_id=2, kind="audio", codec="Opus", timescale=48000, decoder_config=OPUS_HEAD,
        sample_rate=44100, channel_count=2,  # the OpusHead wins for both
    )
    init = init_segment([track])
    assert OPUS_ENTRY in init
    (parsed,) = Mp4Demuxer(lambda o, s: init[o : o + s], len(init)).tracks
    assert (parsed.codec, parsed.timescale, parsed.decoder_config) == ("Opus", 48000, OPUS_HEAD)
    assert (parsed.sample_rate, parsed.channel_count) == (48000, 1)


def test_a_bad_dops_is_the_demuxers_error() -> None:
    from rtmpd.codec.errors import RemoteProtocolError

    init = init_segment([TrackConfig(
        track_id=1, kind="audio", codec="Opus", timescale=48000, decoder_config=OPUS_HEAD
    )])
    broken = init.replace(b"dOps\x00", b"dOps\x01")
    with pytest.raises(RemoteProtocolError, match="dOps version 1"):
        Mp4Demuxer(lambda o, s: broken[o : o + s], len(broken))


# --------------------------------------------------------------------------- FragmentBuilder


def test_fragment_builder_gives_opus_samples_in_48_khz_ticks_from_ms_timestamps() -> None:
    builder = FragmentBuilder(
        has_video=True, fragment_ms=100, timescales={VIDEO_TRACK: 1000, AUDIO_TRACK: 48000}
    )
    for dts, track, key in [
        (0, VIDEO_TRACK, True), (7, AUDIO_TRACK, True), (40, VIDEO_TRACK, False),
        (27, AUDIO_TRACK, True), (48, AUDIO_TRACK, True), (80, VIDEO_TRACK, False),
    ]:
        assert builder.push(track, dts, 40 if track == VIDEO_TRACK else 0, key, b"x") is None
    done = builder.push(VIDEO_TRACK, 120, 40, True, b"x")
    assert done is not None
    assert [(s.dts, s.duration, s.cts_offset) for s in done[VIDEO_TRACK]] == [
        (0, 40, 40), (40, 40, 40), (80, 40, 40)
    ]
    # 7 -> 27 -> 48 ms: 960 and 1008 ticks; the 48 ms packet waits for its successor.
    assert [(s.dts, s.duration) for s in done[AUDIO_TRACK]] == [(336, 960), (1296, 1008)]
    last = builder.finish()
    assert last is not None
    assert [(s.dts, s.duration) for s in last[AUDIO_TRACK]] == [(2304, 1008)]


def test_fragment_builder_cuts_where_the_caller_says_and_restarts_after_finish() -> None:
    builder = FragmentBuilder(has_video=False, fragment_ms=100)
    assert builder.push(AUDIO_TRACK, 0, 0, True, b"a", cut=False) is None
    # Past fragment_ms, but the caller keeps the fragment open...
    assert builder.push(AUDIO_TRACK, 150, 0, True, b"b", cut=False) is None
    # ... and closes it before a sample its own rule would not cut at.
    done = builder.push(AUDIO_TRACK, 160, 0, True, b"c", cut=True)
    assert done is not None and [s.data for s in done[AUDIO_TRACK]] == [b"a", b"b"]
    last = builder.finish()
    assert last is not None and [(s.dts, s.duration) for s in last[AUDIO_TRACK]] == [(160, 10)]
    # A new timeline (HLS discontinuity): the next sample opens a fragment, no cut before it.
    assert builder.push(AUDIO_TRACK, 90_000, 0, True, b"d", cut=True) is None
    again = builder.finish()
    assert again is not None and [s.dts for s in again[AUDIO_TRACK]] == [90_000]


# --------------------------------------------------------------------------- fMP4 recorders


def test_fmp4_recording_of_opus_has_a_48_khz_opus_track_with_every_packet(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("fmp4", "fmp4-separate"))
    rig.publish(opus_frames(4))
    rig.stop()
    assert not list(tmp_path.rglob(MARKER_NAME))
    merged = demux(rig.dir("fmp4") / "stream_full.mp4")
    audio = next(t for t in merged.tracks if t.track_id == AUDIO_TRACK)
    assert (audio.codec, audio.timescale, audio.decoder_config) == ("Opus", 48000, OPUS_HEAD)
    assert merged.sample_count(AUDIO_TRACK) == opus_packets(4)
    assert merged.sample_count(VIDEO_TRACK) == 4 * 12
    samples = [s for s in merged.samples() if s.track_id == AUDIO_TRACK]
    # Decode times are the published ms at 48 kHz, so durations come from the timestamps:
    # 960 ticks for most 20 ms packets, 1008 for 73 -> 94 ms (the merge starts each track
    # at 0; its edit lists keep the offset between them).
    published = [
        f.timestamp_ms for f in opus_frames(4)
        if f.kind is FrameKind.AUDIO and f.payload[0] == 0x91
    ]
    assert [s.dts for s in samples] == [(ms - published[0]) * 48 for ms in published]
    assert samples[0].duration == 1008
    separate = rig.dir("fmp4-separate")
    init = (separate / "audio_init.mp4").read_bytes()
    assert OPUS_ENTRY in init
    assert sorted(p.name for p in separate.glob("audio_*.m4s"))[0] == "audio_000001.m4s"


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not installed")
def test_fmp4_opus_recordings_decode_cleanly_with_ffmpeg(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("fmp4", "fmp4-separate"))
    rig.publish(opus_frames(6))
    rig.stop()
    full = rig.dir("fmp4") / "stream_full.mp4"
    assert probe(full) == ["h264", "opus,48000,1"]
    assert decode_errors(full) == (0, "")
    separate = rig.dir("fmp4-separate")
    audio = tmp_path / "audio.mp4"
    audio.write_bytes(
        b"".join(p.read_bytes() for p in [separate / "audio_init.mp4",
                                           *sorted(separate.glob("audio_*.m4s"))])
    )
    assert decode_errors(audio) == (0, "")


# --------------------------------------------------------------------------- HLS


def test_ts_carries_h264_and_aac_but_not_opus() -> None:
    assert mpegts.carries(video_codec=flv.VIDEO_AVC, audio_codec=flv.AUDIO_AAC)
    assert mpegts.carries(video_codec=None, audio_codec=flv.AUDIO_AAC)
    assert mpegts.carries(video_codec=flv.VIDEO_AVC, audio_codec=None)
    assert not mpegts.carries(video_codec=flv.VIDEO_AVC, audio_codec=flv.FOURCC_OPUS)
    assert not mpegts.carries(video_codec=None, audio_codec=flv.FOURCC_OPUS)
    assert not mpegts.carries(video_codec=flv.FOURCC_HVC1, audio_codec=flv.AUDIO_AAC)


def test_hls_of_an_opus_stream_is_fmp4_behind_ext_x_map(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("hls",), window=3)
    rig.publish(opus_frames(8))
    rig.stop()
    directory = rig.dir("hls")
    text = (directory / "index.m3u8").read_text()
    lines = text.splitlines()
    assert lines[:2] == ["#EXTM3U", "#EXT-X-VERSION:7"]
    assert lines.count('#EXT-X-MAP:URI="init.mp4"') == 1
    assert lines.index('#EXT-X-MAP:URI="init.mp4"') < lines.index(next(
        line for line in lines if line.startswith("#EXTINF")
    ))
    playlist = hls.MediaPlaylist.parse(text, window=3)
    assert playlist.ended and len(playlist.segments) == 3
    assert all(s.uri.endswith(".m4s") and s.map_uri == "init.mp4" for s in playlist.segments)
    # Only the listed segments and their init segment are left; nothing half-written.
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted(["index.m3u8", "init.mp4", *(s.uri for s in playlist.segments)])
    init = (directory / "init.mp4").read_bytes()
    assert OPUS_ENTRY in init
    for number, segment in enumerate(playlist.segments):
        data = (directory / segment.uri).read_bytes()
        assert [b.type for b in iter_boxes(data)] == [b"moof", b"mdat"]
        both = init + data
        samples = list(Mp4Demuxer(lambda o, s, b=both: b[o : o + s], len(both)).samples())
        assert {s.track_id for s in samples} == {VIDEO_TRACK, AUDIO_TRACK}
        video = [s for s in samples if s.track_id == VIDEO_TRACK]
        assert video[0].keyframe
        # EXTINF is the span of the segment's video, as for TS segments (the last one
        # runs to the end of its audio).
        if number < len(playlist.segments) - 1:
            assert segment.duration_ms == sum(s.duration for s in video)


def test_hls_fmp4_window_slides_and_a_republish_keeps_the_old_init(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("hls",), fragment_ms=200, window=2)
    rig.publish(opus_frames(4))
    rig.publish(opus_frames(6))
    directory = rig.dir("hls")
    playlist = hls.MediaPlaylist.parse((directory / "index.m3u8").read_text())
    resumed = [s for s in playlist.segments if s.discontinuity]
    assert len(playlist.segments) == 2 and not resumed  # the old ones slid out
    (second_map,) = {s.map_uri for s in playlist.segments}
    assert second_map is not None and second_map.startswith("init-")
    # The first publish's segments are gone from the disk, so is init.mp4.
    assert not (directory / "init.mp4").exists()
    assert (directory / second_map).exists()


def test_hls_republish_with_a_new_container_starts_a_new_list_numbering_on(
    tmp_path: Path,
) -> None:
    from tests.unit.test_recorder import clip_frames

    rig = Rig(tmp_path, ("hls",), window=10)
    rig.publish(clip_frames(3))  # H.264 + AAC: TS
    first = hls.MediaPlaylist.parse((rig.dir("hls") / "index.m3u8").read_text())
    rig.publish(opus_frames(3))  # Opus: fMP4
    second = hls.MediaPlaylist.parse((rig.dir("hls") / "index.m3u8").read_text())
    assert second.media_sequence == first.next_sequence
    assert all(s.uri.endswith(".m4s") for s in second.segments)
    assert not list(rig.dir("hls").glob("*.ts"))
    rig.publish(clip_frames(3))  # and back to TS
    third = hls.MediaPlaylist.parse((rig.dir("hls") / "index.m3u8").read_text())
    assert third.media_sequence == second.next_sequence
    assert all(s.uri.endswith(".ts") and s.map_uri is None for s in third.segments)
    assert not list(rig.dir("hls").glob("*.m4s")) and not list(rig.dir("hls").glob("init*"))


def test_unfinished_fmp4_hls_is_closed_on_recovery(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("hls",), window=3)
    rig.publish(opus_frames(6), end=False)
    die()
    directory = rig.dir("hls")
    (directory / "99.m4s").write_bytes(b"stray")
    (directory / "init-99.mp4").write_bytes(b"stray")
    (directory / "7.m4s.tmp").write_bytes(b"half")
    lines = recover(str(tmp_path))
    assert len(lines) == 1 and "playlist closed with 3 segments" in lines[0]
    playlist = hls.MediaPlaylist.parse((directory / "index.m3u8").read_text())
    assert playlist.ended
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted(["index.m3u8", "init.mp4", *(s.uri for s in playlist.segments)])


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not installed")
def test_hls_fmp4_of_opus_decodes_cleanly_with_ffmpeg(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("hls",), window=20)
    rig.publish(opus_frames(8))
    rig.stop()
    playlist = rig.dir("hls") / "index.m3u8"
    assert probe(playlist) == ["h264", "opus,48000,1"]
    assert decode_errors(playlist) == (0, "")


def test_opus_constants_match_the_golden_file() -> None:
    head = opus.OpusHead.parse(OPUS_HEAD)
    assert (head.channel_count, head.pre_skip) == (1, 312)


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not installed")
def test_audio_only_opus_hls_is_fmp4_cut_on_time_and_decodes(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("hls", "fmp4"), window=20)
    rig.publish([f for f in opus_frames(8) if f.kind is not FrameKind.VIDEO])
    rig.stop()
    playlist_path = rig.dir("hls") / "index.m3u8"
    playlist = hls.MediaPlaylist.parse(playlist_path.read_text())
    assert len(playlist.segments) >= 10  # 400 ms segments of ~4.6 s
    assert all(s.uri.endswith(".m4s") for s in playlist.segments)
    assert probe(playlist_path) == ["opus,48000,1"]
    assert decode_errors(playlist_path) == (0, "")
    assert probe(rig.dir("fmp4") / "stream_full.mp4") == ["opus,48000,1"]
