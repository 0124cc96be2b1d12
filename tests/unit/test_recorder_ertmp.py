"""Recorders with the Enhanced RTMP codecs: H.265 + AAC, AV1 + Opus, VP9 + Opus and
H.264 + FLAC, as ffmpeg 9 publishes them (tests/data/ertmp, see its README).

The fMP4 recorders write ``hvc1``/``av01``/``vp09``/``fLaC`` sample entries with the
published configuration records and the picture size, keyframes as sync samples and the
H.265 composition offsets; HLS writes these streams as fMP4 segments; ``stream_full.mp4``
decodes with ffmpeg and goes back to FLV tags through rtmpd-push's reader.

Frames go through a real StreamRegistry and the recorders (as test_recorder.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rtmpd.client.sources import open_source
from rtmpd.codec import av1, flv, hls
from rtmpd.media import Frame, FrameKind
from rtmpd.services.fmp4rec import AUDIO_TRACK, VIDEO_TRACK
from rtmpd.services.recorder import MARKER_NAME, codec_data
from tests.unit.test_recorder import Rig, demux

DATA = Path(__file__).parent.parent / "data" / "ertmp"
HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
#: Every golden clip is 0.5 s of 160x90 video at 25 fps, so one loop lasts 520 ms.
LOOP_MS = 520
WIDTH, HEIGHT = 160, 90

#: (clip, video sample entry, audio sample entry, ffprobe codec names)
CLIPS = [
    ("hevc_aac", "hvc1", "mp4a", ["aac", "hevc"]),
    ("av1_opus", "av01", "Opus", ["av1", "opus"]),
    ("vp9_opus", "vp09", "Opus", ["opus", "vp9"]),
    ("h264_flac", "avc1", "fLaC", ["flac", "h264"]),
]
IDS = [c[0] for c in CLIPS]


def golden_tags(name: str) -> list[flv.TagReceived]:
    reader = flv.FlvReader()
    reader.receive_data((DATA / f"{name}.flv").read_bytes())
    reader.receive_data(b"")
    tags = []
    while not isinstance(event := reader.next_event(), (flv.NeedData, flv.EndOfStream)):
        if isinstance(event, flv.TagReceived):
            tags.append(event)
    return tags


def frames(name: str, loops: int) -> list[Frame]:
    out = []
    for n in range(loops):
        for tag in golden_tags(name):
            frame = Frame.from_tag(tag.tag_type, tag.timestamp_ms + n * LOOP_MS, tag.body)
            if n and (frame.sequence_header or frame.kind is FrameKind.SCRIPT):
                continue
            out.append(frame)
    return out


def coded(name: str, kind: FrameKind) -> list[Frame]:
    """One loop's frames of ``kind`` that carry coded media."""
    return [
        f for f in frames(name, 1)
        if f.kind is kind and not f.sequence_header and codec_data(f) is not None
    ]


def published_config(name: str, kind: FrameKind) -> bytes:
    """The codec data of the first sequence header of ``kind`` (the one recorded)."""
    header = next(f for f in frames(name, 1) if f.kind is kind and f.sequence_header)
    data = codec_data(header)
    assert data is not None
    return data


def decode_errors(path: Path) -> tuple[int, str]:
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=60,
    )
    return result.returncode, result.stderr


def probe(path: Path) -> list[str]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return sorted({line.strip(",") for line in result.stdout.split()})


@pytest.mark.parametrize(("name", "video", "audio", "_"), CLIPS, ids=IDS)
def test_fmp4_recording_has_the_published_codecs_sizes_and_sync_samples(
    tmp_path: Path, name: str, video: str, audio: str, _: list[str]
) -> None:
    rig = Rig(tmp_path, ("fmp4", "fmp4-separate"))
    rig.publish(frames(name, 3))
    rig.stop()
    assert not list(tmp_path.rglob(MARKER_NAME))
    merged = demux(rig.dir("fmp4") / "stream_full.mp4")
    tracks = {t.track_id: t for t in merged.tracks}
    assert (tracks[VIDEO_TRACK].codec, tracks[AUDIO_TRACK].codec) == (video, audio)
    assert (tracks[VIDEO_TRACK].width, tracks[VIDEO_TRACK].height) == (WIDTH, HEIGHT)
    # The configuration records as published (vpcC always with its version and flags).
    assert tracks[VIDEO_TRACK].decoder_config == published_config(name, FrameKind.VIDEO)
    if audio != "Opus":  # Opus: the OpusHead, as test_recorder_opus.py checks
        assert tracks[AUDIO_TRACK].decoder_config == published_config(name, FrameKind.AUDIO)
    published = coded(name, FrameKind.VIDEO)
    samples = list(merged.track_samples(VIDEO_TRACK))
    assert len(samples) == 3 * len(published)
    assert [s.keyframe for s in samples] == [f.keyframe for f in published] * 3
    # Composition offsets (H.265 and H.264 B-frames) in ms, the video timescale.
    assert [s.cts_offset for s in samples] == [f.composition_ms for f in published] * 3
    assert merged.sample_count(AUDIO_TRACK) == 3 * len(coded(name, FrameKind.AUDIO))
    separate = rig.dir("fmp4-separate")
    assert {p.name for p in separate.glob("*_init.mp4")} == {"video_init.mp4", "audio_init.mp4"}


def test_av1_samples_are_temporal_units_without_their_delimiters(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("fmp4",))
    rig.publish(frames("av1_opus", 1))
    merged = demux(rig.dir("fmp4") / "stream_full.mp4")
    samples = [merged.read_sample(s) for s in merged.track_samples(VIDEO_TRACK)]
    published = [codec_data(f) or b"" for f in coded("av1_opus", FrameKind.VIDEO)]
    assert samples == [av1.sample_data(p) for p in published]
    for sample in samples:
        assert av1.OBU_TEMPORAL_DELIMITER not in [o.obu_type for o in av1.iter_obus(sample)]


def test_vp9_init_segment_waits_for_the_first_keyframe_for_its_size(tmp_path: Path) -> None:
    clip = frames("vp9_opus", 2)
    # Audio first for a while: the recording starts, but its size is not known yet.
    first_video = next(
        i for i, f in enumerate(clip) if f.kind is FrameKind.VIDEO and not f.sequence_header
    )
    audio = [f for f in clip[first_video:] if f.kind is FrameKind.AUDIO][:5]
    rest = [f for f in clip[first_video:] if f not in audio]
    rig = Rig(tmp_path, ("fmp4", "hls"))
    stream = rig.publish([*clip[:first_video], *audio], end=False)
    assert not (rig.dir("fmp4") / "init.mp4").exists()
    for frame in rest:
        stream.push(frame)
    rig.registry.unpublish(stream, "publisher left")
    init = demux(rig.dir("fmp4") / "init.mp4")
    video = next(t for t in init.tracks if t.track_id == VIDEO_TRACK)
    assert (video.codec, video.width, video.height) == ("vp09", WIDTH, HEIGHT)
    hls_init = demux(rig.dir("hls") / "init.mp4")
    assert [(t.codec, t.width) for t in hls_init.tracks] == [("vp09", WIDTH), ("Opus", 0)]


def test_vp9_stream_without_a_keyframe_still_finishes_its_recordings(tmp_path: Path) -> None:
    clip = [f for f in frames("vp9_opus", 2) if f.kind is not FrameKind.VIDEO or
            f.sequence_header]
    rig = Rig(tmp_path, ("fmp4", "hls"))
    rig.publish(clip)
    assert not list(tmp_path.rglob(MARKER_NAME))
    merged = demux(rig.dir("fmp4") / "stream_full.mp4")
    assert [t.codec for t in merged.tracks] == ["Opus"]  # the empty video track is left out
    assert hls.MediaPlaylist.parse((rig.dir("hls") / "index.m3u8").read_text()).ended


@pytest.mark.parametrize(("name", "video", "audio", "_"), CLIPS, ids=IDS)
def test_hls_of_these_codecs_is_fmp4_behind_ext_x_map(
    tmp_path: Path, name: str, video: str, audio: str, _: list[str]
) -> None:
    rig = Rig(tmp_path, ("hls",), window=10)
    rig.publish(frames(name, 4))
    text = (rig.dir("hls") / "index.m3u8").read_text()
    playlist = hls.MediaPlaylist.parse(text, window=10)
    assert playlist.ended and len(playlist.segments) >= 2
    assert all(s.uri.endswith(".m4s") and s.map_uri == "init.mp4" for s in playlist.segments)
    init = demux(rig.dir("hls") / "init.mp4")
    assert sorted(t.codec for t in init.tracks) == sorted([video, audio])


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not installed")
@pytest.mark.parametrize(("name", "video", "audio", "codecs"), CLIPS, ids=IDS)
def test_recordings_decode_cleanly_with_ffmpeg_at_the_published_size(
    tmp_path: Path, name: str, video: str, audio: str, codecs: list[str]
) -> None:
    rig = Rig(tmp_path, ("fmp4", "hls"), window=20)
    rig.publish(frames(name, 4))
    size = f"{WIDTH},{HEIGHT}"
    expected = sorted(c if c in ("aac", "opus", "flac") else f"{c},{size}" for c in codecs)
    full = rig.dir("fmp4") / "stream_full.mp4"
    assert probe(full) == expected
    assert decode_errors(full) == (0, "")
    playlist = rig.dir("hls") / "index.m3u8"
    assert probe(playlist) == expected
    assert decode_errors(playlist) == (0, "")


@pytest.mark.parametrize(("name", "video", "audio", "_"), CLIPS, ids=IDS)
def test_rtmpd_push_sends_a_recording_back_as_the_published_enhanced_rtmp_headers(
    tmp_path: Path, name: str, video: str, audio: str, _: list[str]
) -> None:
    rig = Rig(tmp_path, ("fmp4",))
    rig.publish(frames(name, 2))
    source = open_source(rig.dir("fmp4") / "stream_full.mp4")
    try:
        headers = {
            t.tag_type: source.body(t) for t in source.headers
        }
        published: dict[int, bytes] = {}
        for f in frames(name, 1):  # the first of each (ffmpeg sends FLAC's again at the end)
            if f.sequence_header:
                published.setdefault(f.kind.value, f.payload)
        # Same header bytes for the video (its ExHeader SequenceStart, or the legacy AVC
        # one) and for every audio but Opus (whose OpusHead is rebuilt from dOps).
        assert headers[flv.TAG_VIDEO][5:] == published[flv.TAG_VIDEO][5:]
        if audio != "Opus":
            assert headers[flv.TAG_AUDIO] == published[flv.TAG_AUDIO]
        first_video = next(t for t in source.tags if t.tag_type == flv.TAG_VIDEO)
        packet = flv.video_packet(source.body(first_video))
        assert packet.coded_frames and first_video.keyframe
    finally:
        source.close()


def as_track(frame: Frame, track_id: int, data: bytes | None = None) -> Frame:
    """An Enhanced RTMP video frame as a Multitrack OneTrack tag of ``track_id`` (with
    ``data`` in place of its codec data, if given)."""
    body = frame.payload  # first byte, FourCC, codec data (VP9 has no composition time)
    first = (body[0] & 0xF0) | flv.VIDEO_PACKET_MULTITRACK
    kind = (flv.MULTITRACK_ONE_TRACK << 4) | (body[0] & 0x0F)
    payload = bytes((first, kind)) + body[1:5] + bytes((track_id,)) + (
        body[5:] if data is None else data
    )
    return Frame.from_tag(frame.kind.value, frame.timestamp_ms, payload)


def test_a_multitrack_publish_records_its_default_track_only(tmp_path: Path) -> None:
    clip = []
    for frame in frames("vp9_opus", 2):
        clip.append(frame)
        if frame.kind is FrameKind.VIDEO:
            # A second rendition after each frame: another vpcC (level 6.2), other pictures.
            other = b"\x01\x00\x00\x00\x00\x3e\x80\x02\x02\x02\x00\x00"
            clip.append(as_track(frame, 1, other if frame.sequence_header else b"\x86x"))
        if frame.kind is FrameKind.VIDEO and frame.sequence_header:
            clip.append(as_track(frame, 0))  # the default track, as Multitrack itself
    rig = Rig(tmp_path, ("fmp4",))
    rig.publish(clip)
    merged = demux(rig.dir("fmp4") / "stream_full.mp4")
    video = next(t for t in merged.tracks if t.track_id == VIDEO_TRACK)
    assert video.decoder_config == published_config("vp9_opus", FrameKind.VIDEO)
    assert merged.sample_count(VIDEO_TRACK) == 2 * len(coded("vp9_opus", FrameKind.VIDEO))


def as_legacy_hevc(frame: Frame) -> Frame | None:
    """An Enhanced RTMP hvc1 frame in the pre-Enhanced-RTMP form (CodecID 12, laid out as
    AVC); None for a tag that form has no packet type for (Metadata)."""
    packet = flv.video_packet(frame.payload)
    if packet.sequence_start:
        kind = flv.AVC_SEQUENCE_HEADER
    elif packet.coded_frames:
        kind = flv.AVC_NALU
    else:
        return None
    frame_type = (frame.payload[0] >> 4) & 0x07
    cts = frame.composition_ms.to_bytes(3, "big", signed=True)
    body = bytes(((frame_type << 4) | flv.VIDEO_HEVC, kind)) + cts + packet.data
    return Frame.from_tag(frame.kind.value, frame.timestamp_ms, body)


def test_legacy_codec_id_12_hevc_is_recorded_as_hvc1_too(tmp_path: Path) -> None:
    clip = []
    for frame in frames("hevc_aac", 2):
        legacy = as_legacy_hevc(frame) if frame.kind is FrameKind.VIDEO else frame
        if legacy is not None:
            clip.append(legacy)
    assert {f.codec for f in clip if f.kind is FrameKind.VIDEO} == {flv.VIDEO_HEVC}
    rig = Rig(tmp_path, ("fmp4", "hls"))
    rig.publish(clip)
    merged = demux(rig.dir("fmp4") / "stream_full.mp4")
    video = next(t for t in merged.tracks if t.track_id == VIDEO_TRACK)
    assert (video.codec, video.width, video.height) == ("hvc1", WIDTH, HEIGHT)
    assert video.decoder_config == published_config("hevc_aac", FrameKind.VIDEO)
    published = coded("hevc_aac", FrameKind.VIDEO)
    samples = list(merged.track_samples(VIDEO_TRACK))
    assert [s.cts_offset for s in samples] == [f.composition_ms for f in published] * 2
    assert '#EXT-X-MAP:URI="init.mp4"' in (rig.dir("hls") / "index.m3u8").read_text()
