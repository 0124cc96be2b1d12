"""fMP4 writer: exact bytes for a small fragment, and init + fragments read back exactly by
the demuxer (mixed and separate tracks, negative composition offsets)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec.errors import LocalProtocolError
from rtmpd.codec.mp4 import Sample, TrackConfig, fmp4
from rtmpd.codec.mp4.boxes import BoxWriter, iter_boxes
from rtmpd.codec.mp4.demux import Mp4Demuxer
from rtmpd.codec.mp4.fmp4 import (
    SAMPLE_FLAGS_NON_SYNC,
    SAMPLE_FLAGS_SYNC,
    fragment,
    init_segment,
)

# A real-looking avcC (baseline 160x120) and an AAC-LC 44.1 kHz stereo AudioSpecificConfig;
# the MP4 code carries them verbatim.
AVCC = bytes.fromhex("01640015ffe1000a6764001583b49c0a00000001000468ee3cb0")
ASC = bytes.fromhex("1210")

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
    timescale=44100,
    decoder_config=ASC,
    sample_rate=44100,
    channel_count=2,
)


def _video_samples(start: int, count: int) -> list[Sample]:
    # I P B B P ... with B-frame reordering: composition offsets 80, 120, 0, 40...
    offsets = [80, 120, 0, 40]
    return [
        Sample(
            dts=start + 40 * i,
            cts_offset=offsets[i % 4] if i else 80,
            duration=40,
            keyframe=i == 0,
            data=bytes([i & 0xFF]) * (10 + i),
        )
        for i in range(count)
    ]


def _audio_samples(start: int, count: int) -> list[Sample]:
    return [
        Sample(
            dts=start + 1024 * i,
            cts_offset=0,
            duration=1024,
            keyframe=True,
            data=bytes([0x21, i & 0xFF]) * 3,
        )
        for i in range(count)
    ]


def _demux(data: bytes) -> Mp4Demuxer:
    return Mp4Demuxer(lambda offset, size: data[offset : offset + size], len(data))


def _read_back(data: bytes, track_id: int) -> list[Sample]:
    demuxer = _demux(data)
    return [
        Sample(
            dts=s.dts,
            cts_offset=s.cts_offset,
            duration=s.duration,
            keyframe=s.keyframe,
            data=demuxer.read_sample(s),
        )
        for s in demuxer.track_samples(track_id)
    ]


def test_single_sample_fragment_has_exact_bytes() -> None:
    sample = Sample(dts=3000, cts_offset=-40, duration=40, keyframe=True, data=b"\xaa\xbb")
    data = fragment(7, {1: [sample]})
    moof_size = 8 + 16 + (8 + 16 + 20 + (8 + 4 + 4 + 4 + 16))
    expected = (
        struct.pack(">I4s", moof_size, b"moof")
        + struct.pack(">I4sII", 16, b"mfhd", 0, 7)
        + struct.pack(">I4s", 8 + 16 + 20 + 36, b"traf")
        + struct.pack(">I4sII", 16, b"tfhd", 0x020000, 1)  # default-base-is-moof
        + struct.pack(">I4sIQ", 20, b"tfdt", 0x01000000, 3000)  # version 1
        + struct.pack(">I4sI", 36, b"trun", 0x01000F01)  # v1: offset|dur|size|flags|cts
        + struct.pack(">Ii", 1, moof_size + 8)  # sample_count, data_offset
        + struct.pack(">IIIi", 40, 2, SAMPLE_FLAGS_SYNC, -40)
        + struct.pack(">I4s", 10, b"mdat")
        + b"\xaa\xbb"
    )
    assert data == expected


def test_fragment_without_composition_offsets_leaves_the_field_out() -> None:
    data = fragment(1, {2: _audio_samples(0, 2)})
    (_moof, mdat) = iter_boxes(data)
    trun_at = data.index(b"trun") - 4
    (flags,) = struct.unpack_from(">I", data, trun_at + 8)
    assert flags & 0xFFFFFF == 0x000701
    assert mdat.type == b"mdat" and mdat.size == 8 + 12


def test_sync_and_non_sync_flags_follow_keyframe() -> None:
    assert SAMPLE_FLAGS_SYNC == 0x02000000
    assert SAMPLE_FLAGS_NON_SYNC == 0x01010000


def test_init_segment_tree_has_moov_tracks_and_trex() -> None:
    data = init_segment([VIDEO, AUDIO])
    top = [b.type for b in iter_boxes(data)]
    assert top == [b"ftyp", b"moov"]
    assert data[8:12] == b"iso5"
    (_, moov) = iter_boxes(data)
    children = [b.type for b in iter_boxes(data, moov.payload_start, moov.end, depth=1)]
    assert children == [b"mvhd", b"trak", b"trak", b"mvex"]
    assert data.count(b"trex") == 2
    for box_type in (b"avcC", b"esds", b"hdlr", b"vmhd", b"smhd", b"dref", b"url "):
        assert box_type in data


def test_mixed_init_and_fragments_read_back_exactly() -> None:
    video = _video_samples(0, 50)
    audio = _audio_samples(0, 86)
    data = init_segment([VIDEO, AUDIO])
    for seq, (v, a) in enumerate(((video[:25], audio[:43]), (video[25:], audio[43:])), start=1):
        data += fragment(seq, {1: v, 2: a})
    demuxer = _demux(data)
    assert demuxer.fragmented
    assert [t.track_config() for t in demuxer.tracks] == [VIDEO, AUDIO]
    assert _read_back(data, 1) == video
    assert _read_back(data, 2) == audio


def test_separate_init_segments_read_back_exactly() -> None:
    video = _video_samples(1000, 30)
    audio = _audio_samples(44100, 40)
    video_file = init_segment([VIDEO]) + fragment(1, {1: video[:15]}) + fragment(2, {1: video[15:]})
    audio_file = init_segment([AUDIO]) + fragment(1, {2: audio})
    assert _read_back(video_file, 1) == video
    assert _read_back(audio_file, 2) == audio


def test_samples_interleave_by_decode_time_across_tracks() -> None:
    data = init_segment([VIDEO, AUDIO]) + fragment(
        1, {1: _video_samples(0, 10), 2: _audio_samples(0, 10)}
    )
    times = [s.dts / (1000 if s.track_id == 1 else 44100) for s in _demux(data).samples()]
    assert times == sorted(times)
    assert len(times) == 20


def test_fragment_rejects_gaps_empty_input_and_negative_dts() -> None:
    with pytest.raises(LocalProtocolError, match="durations must fill the gaps"):
        fragment(1, {1: [*_video_samples(0, 2), *_video_samples(200, 1)]})
    with pytest.raises(LocalProtocolError, match="at least one sample"):
        fragment(1, {1: []})
    with pytest.raises(LocalProtocolError, match="negative dts"):
        fragment(1, {1: _video_samples(-40, 1)})


def test_track_config_rejects_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        TrackConfig(track_id=0, kind="video", codec="avc1", timescale=1000, decoder_config=b"")
    with pytest.raises(LocalProtocolError):
        TrackConfig(track_id=1, kind="audio", codec="avc1", timescale=1000, decoder_config=b"")
    with pytest.raises(LocalProtocolError):
        init_segment([VIDEO, VIDEO])


_sample_lists = st.lists(
    st.tuples(
        st.integers(0, 5000),  # duration
        st.integers(-(2**31), 2**31 - 1),  # cts offset
        st.booleans(),
        st.binary(max_size=20),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 2**40), raw=_sample_lists, split=st.integers(0, 30))
def test_any_samples_survive_fragment_and_demux(
    start: int, raw: list[tuple[int, int, bool, bytes]], split: int
) -> None:
    samples = []
    dts = start
    for duration, cts, key, payload in raw:
        samples.append(
            Sample(dts=dts, cts_offset=cts, duration=duration, keyframe=key, data=payload)
        )
        dts += duration
    first, second = samples[:split], samples[split:]
    data = init_segment([VIDEO])
    seq = 1
    for part in (first, second):
        if part:
            data += fragment(seq, {1: part})
            seq += 1
    assert _read_back(data, 1) == samples


@pytest.mark.parametrize("offsets", [False, True])
def test_trun_entries_packed_at_once_are_the_fields_one_by_one(offsets: bool) -> None:
    """Each trun entry is one struct pack; the bytes are the fields written
    one at a time, and a duration past 32 bits is refused as before."""
    samples = [
        Sample(dts=40 * n, cts_offset=(80 if offsets and n % 3 else 0), duration=40,
               keyframe=n == 0, data=bytes(n + 1))
        for n in range(7)
    ]
    packed = BoxWriter()
    fmp4._write_trun_entries(packed, samples, offsets)
    one_by_one = BoxWriter()
    for s in samples:
        one_by_one.u32(s.duration)
        one_by_one.u32(s.size)
        one_by_one.u32(fmp4.sample_flags(s.keyframe))
        if offsets:
            one_by_one.i32(s.cts_offset)
    assert packed.getvalue() == one_by_one.getvalue()
    long = [Sample(dts=0, cts_offset=0, duration=2**32, keyframe=True, data=b"x")]
    with pytest.raises(LocalProtocolError, match="does not fit field"):
        fmp4._write_trun_entries(BoxWriter(), long, offsets)
