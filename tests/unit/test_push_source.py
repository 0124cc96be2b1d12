"""rtmpd-push input: MP4 (progressive and fragmented) and FLV files become the FLV tags
ffmpeg's own FLV muxer would write, with exact ms DTS and composition times."""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from rtmpd.client.sources import InputError, PushSource, open_source, rescale_ms
from rtmpd.codec import amf0, flv, opus

DATA = Path(__file__).parent.parent / "data"

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="needs ffmpeg and ffprobe (`make test` installs them)",
)

_LAVFI = ["-f", "lavfi", "-i", "testsrc2=s=160x120:r=25", "-f", "lavfi", "-i", "sine", "-t", "2"]
_X264 = ["-c:v", "libx264", "-bf", "2", "-g", "25", "-c:a", "aac"]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120)


@pytest.fixture(scope="module")
def progressive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("src") / "x.mp4"
    ffmpeg(*_LAVFI, *_X264, str(out))
    return out


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("src") / "frag.mp4"
    ffmpeg(*_LAVFI, *_X264, "-movflags", "+frag_keyframe+empty_moov+default_base_moof", str(out))
    return out


def ffmpeg_flv(mp4: Path) -> list[flv.TagReceived]:
    """What ffmpeg's FLV muxer makes of ``mp4`` (stream copy)."""
    out = mp4.with_suffix(".ffmpeg.flv")
    ffmpeg("-i", str(mp4), "-c", "copy", "-f", "flv", str(out))
    reader = flv.FlvReader()
    reader.receive_data(out.read_bytes())
    reader.receive_data(b"")
    tags = []
    while not isinstance(event := reader.next_event(), flv.EndOfStream):
        if isinstance(event, flv.TagReceived):
            tags.append(event)
    return tags


def media(tags: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Coded frames only (no script tags, sequence headers or AVC end of sequence,
    which ffmpeg writes last)."""
    return [
        t for t in tags
        if t[0] != flv.TAG_SCRIPT and not flv.describe_tag(t[0], t[2]).sequence_header
        and not (t[0] == flv.TAG_VIDEO and t[2][1:2] == b"\x02")
    ]


def source_tags(source: PushSource) -> list[tuple[int, int, bytes]]:
    return [(t.tag_type, t.dts_ms, source.body(t)) for t in source.tags]


def _ms(ticks: int, time_base: Fraction) -> int:
    """Ticks to ms, halves away from zero (as FLV muxers round), computed independently."""
    exact = ticks * time_base * 1000
    magnitude = int(abs(exact) + Fraction(1, 2))
    return magnitude if exact >= 0 else -magnitude


def probe(path: Path) -> dict[str, list[tuple[int, int]]]:
    """ffprobe's packets per codec type: (dts_ms, pts_ms)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_packets", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    data = json.loads(out)
    bases = {s["index"]: (s["codec_type"], Fraction(s["time_base"])) for s in data["streams"]}
    packets: dict[str, list[tuple[int, int]]] = {"video": [], "audio": []}
    for p in data["packets"]:
        kind, base = bases[p["stream_index"]]
        packets[kind].append((_ms(int(p["dts"]), base), _ms(int(p["pts"]), base)))
    return packets


@needs_ffmpeg
@pytest.mark.parametrize("kind", ["progressive", "fragmented"])
def test_mp4_frames_match_ffmpeg_flv_muxer_byte_for_byte(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Every coded frame: same tag type, same timestamp (edit list applied, shifted to 0 as
    ffmpeg does) and the same body (frame type, composition time, data) as ffmpeg's FLV."""
    mp4: Path = request.getfixturevalue(kind)
    source = open_source(mp4)
    try:
        ours = media(source_tags(source))
    finally:
        source.close()
    theirs = media([(t.tag_type, t.timestamp_ms, t.body) for t in ffmpeg_flv(mp4)])
    assert len(ours) == len(theirs)
    # Order within one timestamp may differ between A and V; compare per kind.
    for tag_type in (flv.TAG_VIDEO, flv.TAG_AUDIO):
        assert [t for t in ours if t[0] == tag_type] == [t for t in theirs if t[0] == tag_type]


@needs_ffmpeg
def test_mp4_times_are_ffprobe_times_with_b_frame_composition_offsets(progressive: Path) -> None:
    """DTS and PTS (DTS + CTS) in ms equal ffprobe's, shifted by one constant so the earliest
    is 0; A/V keep their offset (audio priming starts later than the video's B-frame delay)."""
    source = open_source(progressive)
    try:
        tags = source_tags(source)
    finally:
        source.close()
    want = probe(progressive)
    shift = -min(dts for packets in want.values() for dts, _ in packets)
    video = [
        (dts, dts + flv.describe_tag(t, body).composition_ms)
        for t, dts, body in tags if t == flv.TAG_VIDEO
    ]
    audio = [(dts, dts) for t, dts, _ in tags if t == flv.TAG_AUDIO]
    assert video == [(d + shift, p + shift) for d, p in want["video"]]
    assert audio == [(d + shift, p + shift) for d, p in want["audio"]]
    assert any(p - d > 40 for d, p in video), "B-frames give composition offsets"
    assert audio[0][0] > video[0][0] == 0


@needs_ffmpeg
def test_mp4_sequence_headers_and_metadata(progressive: Path) -> None:
    source = open_source(progressive)
    try:
        video, audio = (source.body(h) for h in source.headers)
        name, meta = amf0.decode_all(source.metadata)
    finally:
        source.close()
    assert video[:5] == b"\x17\x00\x00\x00\x00" and video[5] == 1  # avcC configurationVersion
    assert audio[:2] == b"\xaf\x00" and len(audio) >= 4
    assert name == "onMetaData"
    assert isinstance(meta, dict)
    assert meta["width"] == 160 and meta["height"] == 120
    assert meta["videocodecid"] == 7 and meta["audiocodecid"] == 10
    assert meta["duration"] == pytest.approx(2.0, abs=0.15)
    assert source.has_audio and source.has_video


@needs_ffmpeg
def test_flv_input_passes_tags_through(progressive: Path) -> None:
    """An FLV file is pushed as it is: same tags, its onMetaData kept as the metadata."""
    tags = ffmpeg_flv(progressive)
    path = progressive.with_suffix(".ffmpeg.flv")
    source = open_source(path)
    try:
        ours = source_tags(source)
        metadata = source.metadata
        headers = [source.body(h) for h in source.headers]
    finally:
        source.close()
    theirs = [(t.tag_type, t.timestamp_ms, t.body) for t in tags]
    assert metadata == theirs[0][2]  # the first tag is onMetaData
    assert ours == theirs[1:]
    assert headers == [b for t, _, b in theirs if flv.describe_tag(t, b).sequence_header][:2]


def test_hevc_uses_enhanced_rtmp_hvc1() -> None:
    """H.265 goes out as Enhanced RTMP: SequenceStart and CodedFrames with FourCC hvc1."""
    source = open_source(DATA / "mp4" / "tiny_hevc.mp4")
    try:
        header = source.body(source.headers[0])
        frames = [source.body(t) for t in source.tags]
        _, meta = amf0.decode_all(source.metadata)
    finally:
        source.close()
    assert header[:5] == b"\x90hvc1"
    info = flv.describe_tag(flv.TAG_VIDEO, header)
    assert info.sequence_header and info.codec == flv.FOURCC_HVC1
    assert frames[0][:5] == b"\x91hvc1"
    assert flv.describe_tag(flv.TAG_VIDEO, frames[0]).keyframe
    assert all(f[:5] in (b"\x91hvc1", b"\xa1hvc1") for f in frames)
    assert isinstance(meta, dict) and meta["videocodecid"] == flv.FOURCC_HVC1


def test_keyframe_index_is_at_or_before_the_position() -> None:
    source = open_source(DATA / "mp4" / "tiny_bframes.mp4")
    try:
        keyframes = [i for i, t in enumerate(source.tags) if t.keyframe]
        assert source.keyframe_index(0) == keyframes[0]
        assert source.keyframe_index(10_000) == keyframes[-1]
    finally:
        source.close()


@pytest.mark.parametrize(
    ("num", "den", "want"),
    [(0, 3, 0), (1, 2, 1), (-1, 2, -1), (1, 3, 0), (2, 3, 1), (-2, 3, -1), (1024000, 44100, 23)],
)
def test_rescale_rounds_half_away_from_zero(num: int, den: int, want: int) -> None:
    assert rescale_ms(num, den) == want


def test_truncated_mp4_is_an_input_error(tmp_path: Path) -> None:
    data = (DATA / "mp4" / "tiny_bframes.mp4").read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.mp4"):
        open_source(bad)


def test_garbage_and_unknown_inputs_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.flv").write_bytes(b"not an flv at all")
    (tmp_path / "junk.mp4").write_bytes(b"\0\0\0\x08free" * 4)
    (tmp_path / "clip.avi").write_bytes(b"RIFF")
    (tmp_path / "empty.flv").write_bytes(flv.encode_header(has_audio=True, has_video=True))
    for name, words in [
        ("junk.flv", "not an FLV"),
        ("junk.mp4", "no moov"),
        ("clip.avi", "unknown input type"),
        ("empty.flv", "no audio or video"),
        ("missing.mp4", "No such file"),
    ]:
        with pytest.raises(InputError, match=words) as info:
            open_source(tmp_path / name)
        assert "\n" not in str(info.value)


@needs_ffmpeg
def test_unsupported_codec_is_named(tmp_path: Path) -> None:
    out = tmp_path / "mpeg4.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x64:r=25", "-t", "0.2", "-c:v", "mpeg4", str(out))
    with pytest.raises(InputError, match="unsupported video codec 'mp4v'"):
        open_source(out)


def test_opus_in_mp4_goes_out_as_enhanced_rtmp_opus_like_ffmpeg_9_muxes_it(
    tmp_path: Path,
) -> None:
    """rtmpd-push of an MP4 with Opus (``dOps``): SequenceStart with the OpusHead and one
    CodedFrames tag per packet, the same bytes ffmpeg 9's FLV muxer writes for that file."""
    import imageio_ffmpeg

    out = tmp_path / "opus.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", "1", "-ac", "2",
           "-c:a", "libopus", str(out))
    source = open_source(out)
    try:
        header = source.body(source.headers[0])
        frames = [source.body(t) for t in source.tags]
        _, meta = amf0.decode_all(source.metadata)
    finally:
        source.close()
    assert header[:5] == b"\x90Opus"
    head = opus.OpusHead.parse(header[5:])
    assert (head.channel_count, head.channel_mapping_family) == (2, 0)
    assert isinstance(meta, dict) and meta["audiocodecid"] == flv.FOURCC_OPUS
    flv_out = tmp_path / "opus.flv"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(out), "-c", "copy",
                    "-f", "flv", str(flv_out)], check=True, timeout=60)
    reader = flv.FlvReader()
    reader.receive_data(flv_out.read_bytes())
    reader.receive_data(b"")
    theirs = []
    while not isinstance(event := reader.next_event(), flv.EndOfStream):
        if isinstance(event, flv.TagReceived) and event.tag_type == flv.TAG_AUDIO:
            theirs.append(event.body)
    assert theirs[0] == header
    assert [b for b in theirs if b[:5] == b"\x91Opus"] == frames
