"""MP4 demuxer: ffmpeg goldens against ffprobe's packet list, truncation loops, fuzzing,
unsupported codecs and limits."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec.avc import AVCDecoderConfigurationRecord, parse_sps
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.mp4 import Sample, TrackConfig
from rtmpd.codec.mp4 import demux as demux_module
from rtmpd.codec.mp4.boxes import iter_boxes
from rtmpd.codec.mp4.demux import Mp4Demuxer
from rtmpd.codec.mp4.fmp4 import fragment, init_segment
from rtmpd.codec.mp4.progressive import write_progressive

DATA = Path(__file__).parent.parent / "data" / "mp4"
AVC_GOLDENS = ["tiny_bframes.mp4", "tiny_fragmented.mp4", "tiny_fragmented_implicit_base.mp4"]
GOLDENS = [*AVC_GOLDENS, "tiny_hevc.mp4"]

AVCC = bytes.fromhex("01640015ffe1000a6764001583b49c0a00000001000468ee3cb0")
VIDEO = TrackConfig(
    track_id=1,
    kind="video",
    codec="avc1",
    timescale=1000,
    decoder_config=AVCC,
    width=160,
    height=120,
)
AUDIO = TrackConfig(
    track_id=2,
    kind="audio",
    codec="mp4a",
    timescale=48000,
    decoder_config=b"\x11\x90",
    sample_rate=48000,
    channel_count=2,
)


def _demux(data: bytes) -> Mp4Demuxer:
    return Mp4Demuxer(lambda offset, size: data[offset : offset + size], len(data))


def _samples(count: int, step: int, key_every: int) -> list[Sample]:
    return [
        Sample(
            dts=step * i,
            cts_offset=step if i % 3 == 1 else 0,
            duration=step,
            keyframe=i % key_every == 0,
            data=bytes([i]) * (5 + i % 4),
        )
        for i in range(count)
    ]


def _small_files() -> dict[str, bytes]:
    video, audio = _samples(6, 40, 3), _samples(8, 1024, 1)
    mixed = init_segment([VIDEO, AUDIO]) + fragment(1, {1: video[:3], 2: audio[:4]})
    mixed += fragment(2, {1: video[3:], 2: audio[4:]})
    return {
        "fragmented": mixed,
        "progressive": write_progressive([VIDEO, AUDIO], {1: video, 2: audio}),
    }


def _try_demux(data: bytes) -> list[tuple[int, int, int, bool, bytes]] | None:
    try:
        demuxer = _demux(data)
        return [
            (s.track_id, s.dts, s.cts_offset, s.keyframe, demuxer.read_sample(s))
            for s in demuxer.samples()
        ]
    except RemoteProtocolError:
        return None


# -- goldens -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AVC_GOLDENS)
def test_golden_tracks_and_codec_configs(name: str) -> None:
    demuxer = _demux((DATA / name).read_bytes())
    video, audio = demuxer.tracks
    assert (video.kind, video.codec, video.width, video.height) == ("video", "avc1", 160, 120)
    assert video.timescale == 12800
    record = AVCDecoderConfigurationRecord.parse(video.decoder_config)
    sps = parse_sps(record.sps[0])
    assert (sps.width, sps.height) == (160, 120)
    assert (audio.kind, audio.codec, audio.sample_rate, audio.timescale) == (
        "audio",
        "mp4a",
        44100,
        44100,
    )
    assert audio.decoder_config[:2] == bytes.fromhex("1208")  # AAC-LC, 44.1 kHz, mono
    assert demuxer.sample_count(1) == 13
    assert demuxer.sample_count(2) == 23


def test_golden_hevc_track() -> None:
    demuxer = _demux((DATA / "tiny_hevc.mp4").read_bytes())
    (video,) = demuxer.tracks
    assert (video.codec, video.width, video.height) == ("hvc1", 64, 64)
    assert video.decoder_config[0] == 1  # configurationVersion of the hvcC record
    assert demuxer.sample_count(1) == 5


def test_golden_progressive_edit_lists_are_exposed() -> None:
    demuxer = _demux((DATA / "tiny_bframes.mp4").read_bytes())
    video, audio = demuxer.tracks
    assert video.presentation_offset == 1024  # two frames of B-frame delay at 12800 Hz
    assert audio.presentation_offset == 1024  # AAC encoder priming
    assert demuxer.movie_duration == 520 and demuxer.movie_timescale == 1000


def _ffprobe_packets(path: Path) -> dict[int, list[tuple[int, int, bool, int, int]]]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_packets", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    packets: dict[int, list[tuple[int, int, bool, int, int]]] = {}
    for p in json.loads(out)["packets"]:
        packets.setdefault(p["stream_index"], []).append(
            (int(p["dts"]), int(p["pts"]), "K" in p["flags"], int(p["size"]), int(p["pos"]))
        )
    return packets


def demuxed_as_ffprobe_reports(
    demuxer: Mp4Demuxer,
) -> dict[int, list[tuple[int, int, bool, int, int]]]:
    """Our samples with the edit list applied the way ffmpeg applies it: minus the first
    media edit's media_time, plus leading empty edits (rescaled to the track timescale)."""
    out = {}
    for index, track in enumerate(demuxer.tracks):
        shift = track.presentation_offset - (
            track.empty_edit_duration * track.timescale // demuxer.movie_timescale
        )
        out[index] = [
            (s.dts - shift, s.pts - shift, s.keyframe, s.size, s.offset)
            for s in demuxer.track_samples(track.track_id)
        ]
    return out


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
@pytest.mark.parametrize("name", GOLDENS)
def test_golden_samples_match_ffprobe_packets_exactly(name: str) -> None:
    path = DATA / name
    demuxer = _demux(path.read_bytes())
    assert demuxed_as_ffprobe_reports(demuxer) == _ffprobe_packets(path)


def test_golden_progressive_samples_are_pinned() -> None:
    """The same check without ffprobe: the first video samples as ffprobe 5.1 lists them."""
    demuxer = _demux((DATA / "tiny_bframes.mp4").read_bytes())
    first = demuxed_as_ffprobe_reports(demuxer)[0][:4]
    assert first == [
        (-1024, 0, True, 3089, 48),
        (-512, 1536, False, 973, 3137),
        (0, 512, False, 434, 4368),
        (512, 1024, False, 309, 5206),
    ]


def test_samples_are_in_decode_order_interleaved_by_time() -> None:
    demuxer = _demux((DATA / "tiny_bframes.mp4").read_bytes())
    times = [s.dts / demuxer.track(s.track_id).timescale for s in demuxer.samples()]
    assert times == sorted(times)
    assert len(times) == 36


# -- truncation and fuzzing ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fragmented", "progressive"])
def test_every_prefix_gives_samples_or_remote_protocol_error(kind: str) -> None:
    data = _small_files()[kind]
    full = _try_demux(data)
    assert full is not None and len(full) == 14
    for cut in range(len(data)):
        result = _try_demux(data[:cut])
        if result is not None:  # a prefix ending on a fragment boundary is a valid file
            assert result == full[: len(result)]


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_prefixes_give_samples_or_remote_protocol_error(name: str) -> None:
    data = (DATA / name).read_bytes()
    for cut in [*range(0, 2048), *range(2048, len(data), 13)]:
        _try_demux(data[:cut])


@pytest.mark.parametrize("kind", ["fragmented", "progressive"])
def test_trailing_garbage_is_remote_protocol_error(kind: str) -> None:
    assert _try_demux(_small_files()[kind] + b"\x00\x01\x02") is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_remote_protocol_error(data: bytes) -> None:
    assert _try_demux(data) is None


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["fragmented", "progressive"]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_files_give_samples_or_remote_protocol_error(
    kind: str, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(_small_files()[kind])
    for pos, value in flips:
        data[pos % len(data)] = value
    _try_demux(bytes(data))


@pytest.mark.parametrize("field_size", [4, 8, 16])
def test_compact_sample_sizes_stz2_read_like_stsz(field_size: int) -> None:
    """Swap each stsz for an stz2 of the same sizes, padded with a free box to the same
    length so chunk offsets stay right."""
    data = _small_files()["progressive"]
    expected = _try_demux(data)
    out = bytearray(data)
    pos = 0
    while (pos := out.find(b"stsz", pos)) != -1:
        start = pos - 4
        size = int.from_bytes(out[start : start + 4], "big")
        count = int.from_bytes(out[start + 16 : start + 20], "big")
        if int.from_bytes(out[start + 12 : start + 16], "big"):
            sizes = [int.from_bytes(out[start + 12 : start + 16], "big")] * count
        else:
            sizes = [
                int.from_bytes(out[start + 20 + 4 * i : start + 24 + 4 * i], "big")
                for i in range(count)
            ]
        if field_size == 4:
            packed = bytes(
                ((sizes[i] << 4) | (sizes[i + 1] if i + 1 < count else 0))
                for i in range(0, count, 2)
            )
        else:
            packed = b"".join(v.to_bytes(field_size // 8, "big") for v in sizes)
        body = b"\x00" * 4 + b"\x00\x00\x00" + bytes([field_size]) + count.to_bytes(4, "big")
        stz2 = (8 + len(body) + len(packed)).to_bytes(4, "big") + b"stz2" + body + packed
        pad = size - len(stz2)
        assert pad >= 8
        replacement = stz2 + pad.to_bytes(4, "big") + b"free" + bytes(pad - 8)
        out[start : start + size] = replacement
        pos = start + size
    assert b"stsz" not in out
    assert _try_demux(bytes(out)) == expected


def test_short_read_is_remote_protocol_error() -> None:
    data = _small_files()["progressive"]
    with pytest.raises(RemoteProtocolError, match="truncated"):
        Mp4Demuxer(lambda offset, size: data[offset : offset + size], len(data) + 100)


# -- unsupported input and limits -----------------------------------------------------------


def test_unsupported_video_codec_is_named() -> None:
    data = init_segment([VIDEO]).replace(b"avc1", b"vp08", 1)
    with pytest.raises(RemoteProtocolError, match="unsupported video codec 'vp08'"):
        _demux(data)


def test_mp4a_with_mp3_object_type_is_named() -> None:
    data = bytearray(init_segment([AUDIO]))
    pos = data.index(bytes([0x40, 0x15]))  # objectTypeIndication AAC, streamType audio
    data[pos] = 0x6B  # MPEG-1 audio (MP3)
    with pytest.raises(RemoteProtocolError, match="objectTypeIndication 0x6b"):
        _demux(bytes(data))


def test_file_without_moov_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="no moov"):
        _demux(b"\x00\x00\x00\x08free")


def test_too_many_samples_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demux_module, "MAX_SAMPLES", 10)
    for data in _small_files().values():
        with pytest.raises(RemoteProtocolError, match="MAX_SAMPLES"):
            _demux(data)


def test_too_many_tracks_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demux_module, "MAX_TRACKS", 1)
    with pytest.raises(RemoteProtocolError, match="MAX_TRACKS"):
        _demux(init_segment([VIDEO, AUDIO]))


def test_unknown_track_id_is_local_error() -> None:
    demuxer = _demux(_small_files()["progressive"])
    with pytest.raises(LocalProtocolError):
        demuxer.track(9)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(GOLDENS),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_golden_metadata_gives_samples_or_remote_protocol_error(
    name: str, flips: list[tuple[int, int]]
) -> None:
    """Flips land inside ffmpeg's moov/moof boxes (udta, ctts, elst, trex...), not in mdat."""
    data = bytearray((DATA / name).read_bytes())
    ranges = [(b.start, b.end) for b in iter_boxes(bytes(data)) if b.type in (b"moov", b"moof")]
    for pos, value in flips:
        start, end = ranges[pos % len(ranges)]
        data[start + pos % (end - start)] = value
    _try_demux(bytes(data))


@pytest.mark.parametrize("seed", ["slow-trun-zero-size-1", "slow-trun-zero-size-2"])
def test_trun_of_zero_byte_samples_is_refused_before_it_is_expanded(seed: str) -> None:
    # Found by `make fuzz TARGET=mp4_demux`: 2-5 KB whose trun declared
    # millions of samples taking 0-byte default sizes, each appended one by
    # one (1.7-3.3 s of CPU per file) before anything else was checked.
    corpus = Path(__file__).parent.parent / "fuzz" / "corpus" / "mp4_demux"
    with pytest.raises(RemoteProtocolError, match="samples of 0 bytes"):
        _demux((corpus / seed).read_bytes())

