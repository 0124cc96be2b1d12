"""Progressive (faststart) MP4 writer: read back exactly by the demuxer, edit lists keep the
published alignment, streaming layout equals the in-memory file, co64 past 4 GiB."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec.errors import LocalProtocolError
from rtmpd.codec.mp4 import EditListEntry, Sample, TrackConfig
from rtmpd.codec.mp4.boxes import iter_boxes
from rtmpd.codec.mp4.demux import DemuxedSample, Mp4Demuxer
from rtmpd.codec.mp4.fmp4 import fragment, init_segment
from rtmpd.codec.mp4.progressive import ProgressiveMp4Writer, write_progressive

AVCC = bytes.fromhex("01640015ffe1000a6764001583b49c0a00000001000468ee3cb0")
ASC = bytes.fromhex("1210")
VIDEO = TrackConfig(
    track_id=1,
    kind="video",
    codec="avc1",
    timescale=90000,
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


def _video(start: int, count: int, step: int = 3600) -> list[Sample]:
    """I P B B P B B ... in decode order: pts (in frames) 1, 4, 2, 3, 7, 5, 6, ... so the
    first frame has a composition offset of one frame (the B-frame delay)."""
    return [
        Sample(
            dts=start + step * i,
            cts_offset=step if i == 0 else (3 * step if i % 3 == 1 else 0),
            duration=step,
            keyframe=i == 0,
            data=bytes([i & 0xFF]) * (20 + i % 7),
        )
        for i in range(count)
    ]


def _audio(start: int, count: int) -> list[Sample]:
    return [
        Sample(
            dts=start + 1024 * i,
            cts_offset=0,
            duration=1024,
            keyframe=True,
            data=bytes([0x21, i & 0xFF]) * 4,
        )
        for i in range(count)
    ]


def _demux(data: bytes) -> Mp4Demuxer:
    return Mp4Demuxer(lambda offset, size: data[offset : offset + size], len(data))


def _read_back(demuxer: Mp4Demuxer, track_id: int, first_dts: int) -> list[Sample]:
    """Samples as written: MP4 decode times start at 0, so add the first dts back."""
    return [
        Sample(
            dts=s.dts + first_dts,
            cts_offset=s.cts_offset,
            duration=s.duration,
            keyframe=s.keyframe,
            data=demuxer.read_sample(s),
        )
        for s in demuxer.track_samples(track_id)
    ]


def test_progressive_file_reads_back_exactly_with_moov_before_mdat() -> None:
    video, audio = _video(0, 100), _audio(0, 172)
    data = write_progressive([VIDEO, AUDIO], {1: video, 2: audio})
    assert [b.type for b in iter_boxes(data)] == [b"ftyp", b"moov", b"mdat"]
    demuxer = _demux(data)
    assert not demuxer.fragmented
    assert [t.track_config() for t in demuxer.tracks] == [VIDEO, AUDIO]
    assert _read_back(demuxer, 1, 0) == video
    assert _read_back(demuxer, 2, 0) == audio


def test_streamed_layout_equals_in_memory_file_and_chunks_interleave() -> None:
    video, audio = _video(0, 60), _audio(0, 100)
    writer = ProgressiveMp4Writer([VIDEO, AUDIO], chunk_duration_ms=500)
    for s in video:
        writer.add_sample(1, s)
    for s in audio:
        writer.add_sample(2, s)
    samples = {1: video, 2: audio}
    streamed = writer.header_bytes() + b"".join(
        samples[tid][i].data for tid, i in writer.sample_order()
    )
    assert streamed == write_progressive([VIDEO, AUDIO], samples)
    assert writer.file_size == len(streamed)
    chunks = writer.chunks()
    assert chunks[0].offset == len(writer.header_bytes())
    for a, b in itertools.pairwise(chunks):
        assert a.offset + a.size == b.offset
    # Interleaved by time: chunks of both tracks, in order of their first decode time.
    starts = [
        samples[c.track_id][c.first_sample].dts / (90000 if c.track_id == 1 else 44100)
        for c in chunks
    ]
    assert starts == sorted(starts)
    assert {c.track_id for c in chunks[:4]} == {1, 2}
    assert max(c.sample_count for c in chunks if c.track_id == 1) == 13  # 500 ms at 40 ms


def test_edit_list_skips_b_frame_delay_and_delays_the_later_track() -> None:
    # Video published from 0 ms, its first frame presented at 40 ms (one B-frame of delay);
    # audio published from 1000 ms. Timescales: video 90 kHz, audio 44.1 kHz.
    video = _video(0, 49)  # frames presented 40 ms .. 2000 ms (last: P at pts 49 frames)
    audio = _audio(44100, 50)
    demuxer = _demux(write_progressive([VIDEO, AUDIO], {1: video, 2: audio}))
    v, a = demuxer.tracks
    end = max(s.dts + s.cts_offset + s.duration for s in video)
    assert end == 50 * 3600
    # Presentation of video starts with its earliest frame (pts 3600) at movie time 0.
    assert v.edit_list == (EditListEntry(segment_duration=1960, media_time=3600),)
    assert v.presentation_offset == 3600
    # Audio starts 1000 - 40 = 960 ms after the movie start: an empty edit keeps that.
    assert a.edit_list == (
        EditListEntry(segment_duration=960, media_time=-1),
        EditListEntry(segment_duration=round(Fraction(50 * 1024, 44100) * 1000), media_time=0),
    )
    assert a.empty_edit_duration == 960
    assert demuxer.movie_timescale == 1000
    assert demuxer.movie_duration == 960 + 1161


def test_durations_in_headers_match_the_samples() -> None:
    demuxer = _demux(write_progressive([VIDEO, AUDIO], {1: _video(0, 25), 2: _audio(0, 43)}))
    v, a = demuxer.tracks
    assert v.media_duration == 25 * 3600
    assert a.media_duration == 43 * 1024
    # Video frames are presented from 40 ms to 1040 ms (pts 1..26 frames, the last P
    # included), audio 0 .. 998.6 ms: the movie starts at audio's 0 and lasts 1040 ms.
    assert v.presentation_offset == 3600
    assert v.empty_edit_duration == 40
    assert a.empty_edit_duration == 0
    assert demuxer.movie_duration == 1040


def test_large_offsets_switch_to_co64_and_largesize_mdat(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 4 GiB thresholds are lowered so a tiny file exercises co64 and a 64-bit mdat."""
    import rtmpd.codec.mp4.progressive as progressive

    video, audio = _video(0, 30), _audio(0, 40)
    small = write_progressive([VIDEO, AUDIO], {1: video, 2: audio})
    monkeypatch.setattr(progressive, "_OFFSET_LIMIT_32", 200)
    data = write_progressive([VIDEO, AUDIO], {1: video, 2: audio})
    assert b"co64" in data and b"co64" not in small
    mdat = list(iter_boxes(data))[-1]
    assert (mdat.type, mdat.header_size) == (b"mdat", 16)
    demuxer = _demux(data)
    assert _read_back(demuxer, 1, 0) == video
    assert _read_back(demuxer, 2, 0) == audio


def test_negative_composition_offsets_use_ctts_version_1() -> None:
    video = [
        Sample(dts=i * 40, cts_offset=-40 if i % 2 else 40, duration=40, keyframe=i == 0, data=b"x")
        for i in range(4)
    ]
    track = TrackConfig(
        track_id=1,
        kind="video",
        codec="avc1",
        timescale=1000,
        decoder_config=AVCC,
        width=16,
        height=16,
    )
    data = write_progressive([track], {1: video})
    ctts = data.index(b"ctts")
    assert data[ctts + 4] == 1  # version
    assert _read_back(_demux(data), 1, 0) == video


def test_writer_rejects_misuse() -> None:
    writer = ProgressiveMp4Writer([VIDEO])
    with pytest.raises(LocalProtocolError, match="no track 3"):
        writer.add_sample(3, _audio(0, 1)[0])
    writer.add_sample(1, _video(0, 1)[0])
    with pytest.raises(LocalProtocolError, match="durations must fill the gaps"):
        writer.add_sample(1, _video(7200, 1)[0])
    writer.header_bytes()
    with pytest.raises(LocalProtocolError, match="layout is fixed"):
        writer.add_sample(1, _video(3600, 1)[0])
    with pytest.raises(LocalProtocolError, match="no samples"):
        ProgressiveMp4Writer([VIDEO]).header_bytes()


def test_track_without_samples_is_left_out() -> None:
    demuxer = _demux(write_progressive([VIDEO, AUDIO], {2: _audio(0, 10)}))
    assert [t.track_id for t in demuxer.tracks] == [2]


@settings(max_examples=40, deadline=None)
@given(
    raw=st.lists(
        st.tuples(
            st.integers(0, 3000), st.integers(-3000, 3000), st.booleans(), st.binary(max_size=12)
        ),
        min_size=1,
        max_size=40,
    ),
    start=st.integers(0, 10**9),
    chunk_ms=st.integers(1, 2000),
)
def test_any_samples_survive_progressive_write_and_demux(
    raw: list[tuple[int, int, bool, bytes]], start: int, chunk_ms: int
) -> None:
    track = TrackConfig(
        track_id=1,
        kind="video",
        codec="avc1",
        timescale=1000,
        decoder_config=AVCC,
        width=16,
        height=16,
    )
    samples = []
    dts = start
    for duration, cts, key, payload in raw:
        samples.append(
            Sample(dts=dts, cts_offset=cts, duration=duration, keyframe=key, data=payload)
        )
        dts += duration
    data = write_progressive([track], {1: samples}, chunk_duration_ms=chunk_ms)
    assert _read_back(_demux(data), 1, start) == samples


def test_fmp4_recording_merges_into_progressive_without_loading_sample_data() -> None:
    """The recorder's flow: demux init + fragments (metadata only), feed the writer the
    demuxed samples, then copy each sample's byte range in sample_order()."""
    video, audio = _video(90000, 60), _audio(44100, 100)
    recording = init_segment([VIDEO, AUDIO])
    for seq, (v, a) in enumerate(((video[:30], audio[:50]), (video[30:], audio[50:])), start=1):
        recording += fragment(seq, {1: v, 2: a})
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return recording[offset : offset + size]

    demuxer = Mp4Demuxer(read_at, len(recording))
    metadata_reads = len(reads)
    writer = ProgressiveMp4Writer([t.track_config() for t in demuxer.tracks])
    by_track: dict[int, list[DemuxedSample]] = {1: [], 2: []}
    for sample in demuxer.samples():
        writer.add_sample(sample.track_id, sample)  # timing and size only
        by_track[sample.track_id].append(sample)  # a recorder would keep (offset, size)
    merged = writer.header_bytes() + b"".join(
        read_at(by_track[tid][i].offset, by_track[tid][i].size) for tid, i in writer.sample_order()
    )
    # Parsing read box headers (24 bytes at most), the moov and each moof, and no more.
    metadata = {(b.start, b.size) for b in iter_boxes(recording) if b.type in (b"moov", b"moof")}
    assert all(size <= 24 or (offset, size) in metadata for offset, size in reads[:metadata_reads])
    assert merged == write_progressive([VIDEO, AUDIO], {1: video, 2: audio})
