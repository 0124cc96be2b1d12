"""Files written by our MP4 writers, checked end to end by ffmpeg and ffprobe.

Real H.264 (with B-frames) and AAC samples come from the ffmpeg golden in tests/data/mp4.
Skipped where ffmpeg is not installed; CI installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rtmpd.codec.mp4 import Sample, TrackConfig
from rtmpd.codec.mp4.demux import Mp4Demuxer
from rtmpd.codec.mp4.fmp4 import fragment, init_segment
from rtmpd.codec.mp4.progressive import ProgressiveMp4Writer

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe not installed",
)

GOLDEN = Path(__file__).parent.parent / "data" / "mp4" / "tiny_fragmented.mp4"


def _demux(data: bytes) -> Mp4Demuxer:
    return Mp4Demuxer(lambda offset, size: data[offset : offset + size], len(data))


def _golden() -> tuple[list[TrackConfig], dict[int, list[Sample]]]:
    data = GOLDEN.read_bytes()
    demuxer = _demux(data)
    tracks = [t.track_config() for t in demuxer.tracks]
    samples = {
        t.track_id: [
            Sample(
                dts=s.dts,
                cts_offset=s.cts_offset,
                duration=s.duration,
                keyframe=s.keyframe,
                data=demuxer.read_sample(s),
            )
            for s in demuxer.track_samples(t.track_id)
        ]
        for t in tracks
    }
    return tracks, samples


def _decode_errors(path: Path) -> str:
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def _probe(path: Path) -> dict[str, object]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_format",
            "-show_streams",
            "-show_packets",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def _fragments(tracks: list[TrackConfig], samples: dict[int, list[Sample]]) -> bytes:
    """Init segment plus one fragment per video GOP half (keyframe-aligned is not needed)."""
    data = init_segment(tracks)
    for seq, half in enumerate((0, 1), start=1):
        part = {}
        for track in tracks:
            ss = samples[track.track_id]
            cut = len(ss) // 2
            part[track.track_id] = ss[:cut] if half == 0 else ss[cut:]
        data += fragment(seq, part)
    return data


def test_mixed_fmp4_decodes_cleanly_with_the_right_timing(tmp_path: Path) -> None:
    tracks, samples = _golden()
    path = tmp_path / "mixed.mp4"
    path.write_bytes(_fragments(tracks, samples))
    assert _decode_errors(path) == ""
    probe = _probe(path)
    packets = probe["packets"]
    assert isinstance(packets, list)
    video = [
        (int(p["dts"]), int(p["pts"]), int(p["size"])) for p in packets if p["stream_index"] == 0
    ]
    assert video == [(s.dts, s.dts + s.cts_offset, len(s.data)) for s in samples[1]]
    fmt = probe["format"]
    assert isinstance(fmt, dict)
    # audio runs 0 .. 23*1024/44100 s = 0.534 s, video frames are shown 0.08 .. 0.6 s
    assert float(fmt["duration"]) == pytest.approx(0.6, abs=0.001)


def test_separate_fmp4_files_decode_cleanly(tmp_path: Path) -> None:
    tracks, samples = _golden()
    for track in tracks:
        path = tmp_path / f"{track.kind}.mp4"
        path.write_bytes(_fragments([track], {track.track_id: samples[track.track_id]}))
        assert _decode_errors(path) == ""
        streams = _probe(path)["streams"]
        assert isinstance(streams, list)
        assert [s["codec_type"] for s in streams] == [track.kind]


def _progressive(tracks: list[TrackConfig], samples: dict[int, list[Sample]]) -> bytes:
    writer = ProgressiveMp4Writer(tracks)
    for track in tracks:
        for s in samples[track.track_id]:
            writer.add_sample(track.track_id, s)
    return writer.header_bytes() + b"".join(
        samples[tid][index].data for tid, index in writer.sample_order()
    )


def test_progressive_decodes_cleanly_and_ffprobe_agrees_on_every_packet(tmp_path: Path) -> None:
    tracks, samples = _golden()
    path = tmp_path / "progressive.mp4"
    data = _progressive(tracks, samples)
    path.write_bytes(data)
    assert _decode_errors(path) == ""
    probe = _probe(path)
    fmt, streams, packets = probe["format"], probe["streams"], probe["packets"]
    assert isinstance(fmt, dict) and isinstance(streams, list) and isinstance(packets, list)
    # As published: video presented 0.08 .. 0.6 s, audio 0 .. 0.534 s.
    assert float(fmt["duration"]) == pytest.approx(0.6, abs=0.001)
    assert float(streams[0]["start_time"]) == pytest.approx(0.08, abs=0.001)
    assert float(streams[1]["start_time"]) == 0.0
    # ffprobe applies our edit lists exactly as the published timestamps were.
    for index, track in enumerate(tracks):
        got = [
            (int(p["dts"]), int(p["pts"]), "K" in p["flags"], int(p["size"]))
            for p in packets
            if p["stream_index"] == index
        ]
        want = [
            (s.dts, s.dts + s.cts_offset, s.keyframe, len(s.data)) for s in samples[track.track_id]
        ]
        assert got == want, track.kind


def test_progressive_keeps_a_late_audio_start(tmp_path: Path) -> None:
    """Audio published at 500 ms, video's first frame presented at 80 ms (B-frame delay):
    the movie starts at 80 ms, so ffprobe shows video from 0 and audio 0.42 s later, the
    published gap."""
    tracks, samples = _golden()
    late = 22050  # 0.5 s at 44.1 kHz
    samples[2] = [
        Sample(dts=s.dts + late, cts_offset=0, duration=s.duration, keyframe=True, data=s.data)
        for s in samples[2]
    ]
    path = tmp_path / "late_audio.mp4"
    path.write_bytes(_progressive(tracks, samples))
    assert _decode_errors(path) == ""
    streams = _probe(path)["streams"]
    assert isinstance(streams, list)
    assert float(streams[0]["start_time"]) == pytest.approx(0.0, abs=0.001)
    assert float(streams[1]["start_time"]) == pytest.approx(0.42, abs=0.001)


def test_hevc_fmp4_and_progressive_decode_cleanly(tmp_path: Path) -> None:
    data = (GOLDEN.parent / "tiny_hevc.mp4").read_bytes()
    demuxer = _demux(data)
    tracks = [t.track_config() for t in demuxer.tracks]
    samples = {
        1: [
            Sample(
                dts=s.dts,
                cts_offset=s.cts_offset,
                duration=s.duration,
                keyframe=s.keyframe,
                data=demuxer.read_sample(s),
            )
            for s in demuxer.track_samples(1)
        ]
    }
    fragmented = tmp_path / "hevc_frag.mp4"
    fragmented.write_bytes(_fragments(tracks, samples))
    progressive = tmp_path / "hevc.mp4"
    progressive.write_bytes(_progressive(tracks, samples))
    for path in (fragmented, progressive):
        assert _decode_errors(path) == ""
        probe = _probe(path)
        streams, packets = probe["streams"], probe["packets"]
        assert isinstance(streams, list) and isinstance(packets, list)
        assert (streams[0]["codec_name"], streams[0]["codec_tag_string"]) == ("hevc", "hvc1")
        assert len(packets) == 5
