"""MPEG-TS muxer and reader: exact bytes, round trips, truncation, ffmpeg checks."""

from __future__ import annotations

import ast
import contextlib
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec import aac, avc, flv, mpegts
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.mpegts import (
    MASK_33,
    PCR_DELAY_90K,
    TIMESTAMP_BASE_90K,
    TS_PACKET_SIZE,
    NeedData,
    PesPacket,
    TsMuxer,
    TsReader,
    read_all,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "ts"
FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")

# --------------------------------------------------------------------------- case tables

#: (description, bytes built by our encoders, exact expected bytes)
SECTION_CASES = [
    (
        "PAT, program 1 -> PMT 0x1000 (byte-identical to ffmpeg's)",
        mpegts.encode_pat(pmt_pid=0x1000),
        bytes.fromhex("00b00d0001c100000001f0002ab104b2"),
    ),
    (
        "PMT, H.264 0x100 + AAC 0x101, PCR on 0x100 (byte-identical to ffmpeg's)",
        mpegts.encode_pmt(pcr_pid=0x100, streams=[(0x1B, 0x100), (0x0F, 0x101)]),
        bytes.fromhex("02b0170001c10000e100f0001be100f0000fe101f0002f44b99b"),
    ),
]

#: (stream_id, pts, dts, payload_size) -> PES header bytes
PES_HEADER_CASES = [
    ((0xC0, 90_000, None, 10), bytes.fromhex("000001c00012 8480052100 05bf21")),
    ((0xE0, 93_600, 90_000, None), bytes.fromhex("000001e00000 84c00a310005db41 110005bf21")),
    # DTS equal to PTS is left out.
    ((0xE0, 90_000, 90_000, None), bytes.fromhex("000001e00000 8480052100 05bf21")),
    # 33-bit wrap: 2**33 + 1 is written as 1; all-ones stays all-ones.
    ((0xC0, (1 << 33) + 1, None, 0), bytes.fromhex("000001c00008 8480052100 010003")),
    ((0xC0, MASK_33, None, 0), bytes.fromhex("000001c00008 848005 2fffffffff")),
]

#: (size, pcr_27m, random_access) -> adaptation field bytes
ADAPTATION_CASES = [
    ((1, None, False), bytes.fromhex("00")),
    ((2, None, False), bytes.fromhex("0100")),
    ((4, None, True), bytes.fromhex("0340ffff")),
    ((8, 300, True), bytes.fromhex("0750 00000000fe00")),  # base 1, extension 0
    ((8, 27_000_000 + 299, False), bytes.fromhex("0710 0000afc87f2b")),  # base 90000, ext 299
    ((10, 0, False), bytes.fromhex("0910 000000007e00 ffff")),
]


def test_crc32_mpeg2_check_value_and_zero_residue() -> None:
    assert mpegts.crc32_mpeg2(b"123456789") == 0x0376E6E7
    for _, section, _ in SECTION_CASES:
        assert mpegts.crc32_mpeg2(section) == 0


@pytest.mark.parametrize(("what", "built", "expected"), SECTION_CASES)
def test_psi_sections_exact_bytes(what: str, built: bytes, expected: bytes) -> None:
    assert built == expected, what


@pytest.mark.parametrize(("args", "expected"), PES_HEADER_CASES)
def test_pes_header_exact_bytes(
    args: tuple[int, int, int | None, int | None], expected: bytes
) -> None:
    stream_id, pts, dts, size = args
    header = mpegts.encode_pes_header(
        stream_id=stream_id, pts_90k=pts, dts_90k=dts, payload_size=size
    )
    assert header == expected


@pytest.mark.parametrize(("args", "expected"), PES_HEADER_CASES)
def test_pes_header_cases_read_back(
    args: tuple[int, int, int | None, int | None], expected: bytes
) -> None:
    stream_id, pts, dts, size = args
    payload = bytes(3 if size is None else size)
    ts = _single_stream_ts(expected + payload, stream_type=0x0F)
    (pes,) = read_all(ts)
    assert pes.stream_id == stream_id
    assert pes.pts == pts & MASK_33
    assert pes.dts == (dts if dts is not None else pts) & MASK_33
    assert pes.payload == payload


@pytest.mark.parametrize(("args", "expected"), ADAPTATION_CASES)
def test_adaptation_field_exact_bytes(args: tuple[int, int | None, bool], expected: bytes) -> None:
    size, pcr, random_access = args
    built = mpegts.encode_adaptation_field(size=size, pcr_27m=pcr, random_access=random_access)
    assert built == expected


@pytest.mark.parametrize(("args", "expected"), ADAPTATION_CASES)
def test_adaptation_field_cases_read_back(
    args: tuple[int, int | None, bool], expected: bytes
) -> None:
    """The case's fields, grown with stuffing to fill a packet, read back."""
    _, pcr, random_access = args
    pes = mpegts.encode_pes_header(stream_id=0xC0, pts_90k=0, dts_90k=None, payload_size=1)
    pes += b"\x42"
    header = bytes((0x47, 0x41, 0x01, 0x30))
    field = mpegts.encode_adaptation_field(
        size=TS_PACKET_SIZE - len(header) - len(pes), pcr_27m=pcr, random_access=random_access
    )
    (event,) = read_all(_tables(audio_pid=0x101) + header + field + pes)
    assert event.pcr_27m == pcr
    assert event.random_access == random_access
    assert event.payload == b"\x42"


def test_muxer_tables_match_ffmpeg_golden() -> None:
    """start_segment() gives ffmpeg's PAT + PMT packets byte for byte (CC 0)."""
    golden = (DATA / "ffmpeg_pat_pmt.ts").read_bytes()
    assert TsMuxer(has_audio=True, has_video=True).start_segment() == golden


def _tables(*, audio_pid: int) -> bytes:
    pat = b"\x00" + mpegts.encode_pat(pmt_pid=0x1000)
    pmt = b"\x00" + mpegts.encode_pmt(pcr_pid=audio_pid, streams=[(0x0F, audio_pid)])
    counters: dict[int, int] = {}
    return mpegts.packetize(0, pat, counters) + mpegts.packetize(0x1000, pmt, counters)


def _single_stream_ts(pes: bytes, *, stream_type: int) -> bytes:
    assert stream_type == 0x0F
    counters: dict[int, int] = {}
    return _tables(audio_pid=0x101) + mpegts.packetize(0x101, pes, counters)


# --------------------------------------------------------------------------- packetizing


@pytest.mark.parametrize("size", [0, 1, 2, 175, 176, 177, 182, 183, 184, 185, 360, 368, 369, 5000])
@pytest.mark.parametrize("pcr", [None, 123_456_789])
def test_packetize_fills_packets_exactly(size: int, pcr: int | None) -> None:
    """Every packet is 188 bytes, stuffing only in the last, payload intact."""
    data = b"\x00\x00\x01\xc0" + bytes(range(256)) * 40
    data = data[: max(size, 4)]
    counters = {0x101: 14}
    out = mpegts.packetize(0x101, data, counters, pcr_27m=pcr, random_access=pcr is not None)
    assert len(out) % TS_PACKET_SIZE == 0
    packets = [out[i : i + TS_PACKET_SIZE] for i in range(0, len(out), TS_PACKET_SIZE)]
    assert [p[3] & 0x0F for p in packets] == [(15 + i) & 0x0F for i in range(len(packets))]
    assert counters[0x101] == (14 + len(packets)) & 0x0F
    rebuilt = b""
    for i, packet in enumerate(packets):
        assert packet[0] == 0x47
        assert bool(packet[1] & 0x40) == (i == 0)
        if packet[3] & 0x20:
            af_len = packet[4]
            if i not in (0, len(packets) - 1):
                pytest.fail("adaptation field in a middle packet")
            rebuilt += packet[5 + af_len :]
        else:
            rebuilt += packet[4:]
    assert rebuilt == data


def _packets_one_by_one(
    pid: int, data: bytes, cc: int, pcr_27m: int | None, random_access: bool
) -> bytes:
    """TS packets of ``data`` built one at a time, as 13818-1 2.4.3.2 reads:
    the reference for :func:`mpegts.packetize`, which builds them all at once."""
    out = b""
    pos = 0
    first = True
    while first or pos < len(data):
        cc = (cc + 1) & 0x0F
        need = 0
        if first and pcr_27m is not None:
            need = 8
        elif first and random_access:
            need = 2
        size = min(184 - need, len(data) - pos)
        af_size = 184 - size
        start = 0x40 if first else 0
        out += bytes((0x47, start | pid >> 8, pid & 0xFF, (0x30 if af_size else 0x10) | cc))
        if af_size:
            out += mpegts.encode_adaptation_field(
                size=af_size,
                pcr_27m=pcr_27m if first else None,
                random_access=random_access and first,
            )
        out += data[pos : pos + size]
        pos += size
        first = False
    return out


@pytest.mark.parametrize(
    "size",
    [0, 1, 176, 183, 184, 185, 368, 369, 184 * 64, 184 * 64 + 1, 184 * 65 + 7, 184 * 129 + 100,
     20_000, 100_001],
)
@pytest.mark.parametrize(
    ("pcr", "random_access"), [(None, False), (None, True), (27_000_123, False), (5, True)]
)
@pytest.mark.parametrize("last_cc", [0, 9, 15])
def test_packetize_matches_packets_built_one_by_one(
    size: int, pcr: int | None, random_access: bool, last_cc: int
) -> None:
    """The packets made all at once (payloads cut 64 at a time, continuity
    counters written in one slice) are byte for byte the packets built one
    at a time, across the 64-payload runs and with every counter wrap."""
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    counters = {0x1FF: last_cc}
    out = mpegts.packetize(0x1FF, data, counters, pcr_27m=pcr, random_access=random_access)
    expected = _packets_one_by_one(0x1FF, data, last_cc, pcr, random_access)
    assert out == expected
    assert counters[0x1FF] == expected[-188 + 3] & 0x0F


# --------------------------------------------------------------------------- FLV input


@dataclass(frozen=True)
class Sample:
    is_video: bool
    dts_ms: int
    cts_ms: int
    keyframe: bool
    data: bytes  # AVCC NAL units, or one raw AAC frame


def _flv_samples(
    data: bytes,
) -> tuple[avc.AVCDecoderConfigurationRecord, aac.AudioSpecificConfig, list[Sample]]:
    """AVC config, AAC config and media samples of an FLV, via rtmpd.codec.flv."""
    reader = flv.FlvReader()
    reader.receive_data(data)
    reader.receive_data(b"")
    avc_config = None
    asc = None
    samples: list[Sample] = []
    while True:
        event = reader.next_event()
        if isinstance(event, flv.NeedData | flv.EndOfStream):
            break
        if not isinstance(event, flv.TagReceived):
            continue
        body = event.body
        if event.tag_type == flv.TAG_VIDEO:
            assert body[0] & 0x0F == flv.VIDEO_AVC
            cts = int.from_bytes(body[2:5], "big", signed=True)
            if body[1] == flv.AVC_SEQUENCE_HEADER:
                avc_config = avc.AVCDecoderConfigurationRecord.parse(body[5:])
            elif body[1] == flv.AVC_NALU:
                keyframe = body[0] >> 4 == flv.VIDEO_FRAME_KEY
                samples.append(Sample(True, event.timestamp_ms, cts, keyframe, body[5:]))
        elif event.tag_type == flv.TAG_AUDIO:
            assert body[0] >> 4 == flv.AUDIO_AAC
            if body[1] == flv.AAC_SEQUENCE_HEADER:
                asc = aac.AudioSpecificConfig.parse(body[2:])
            else:
                samples.append(Sample(False, event.timestamp_ms, 0, True, body[2:]))
    assert avc_config is not None and asc is not None
    return avc_config, asc, samples


def _mux(
    muxer: TsMuxer,
    config: avc.AVCDecoderConfigurationRecord,
    asc: aac.AudioSpecificConfig,
    samples: list[Sample],
) -> bytes:
    out = [muxer.start_segment()]
    for s in samples:
        if s.is_video:
            out.append(
                muxer.write_video(
                    dts_ms=s.dts_ms,
                    cts_ms=s.cts_ms,
                    keyframe=s.keyframe,
                    avcc_payload=s.data,
                    config=config,
                )
            )
        else:
            out.append(muxer.write_audio(dts_ms=s.dts_ms, aac_raw=s.data, asc=asc))
    out.append(muxer.flush())
    return b"".join(out)


@pytest.fixture(scope="module")
def golden() -> tuple[avc.AVCDecoderConfigurationRecord, aac.AudioSpecificConfig, list[Sample]]:
    return _flv_samples((DATA / "bframes.flv").read_bytes())


Golden = tuple[avc.AVCDecoderConfigurationRecord, aac.AudioSpecificConfig, list[Sample]]


def _expected_nals(config: avc.AVCDecoderConfigurationRecord, s: Sample) -> list[bytes]:
    nals = avc.split_length_prefixed(s.data, config.length_size)
    nals = [n for n in nals if n[0] & 0x1F != avc.NAL_AUD]
    if s.keyframe and not any(n[0] & 0x1F == avc.NAL_SPS for n in nals):
        nals = [*config.sps, *config.pps, *nals]
    return [b"\x09\xf0", *nals]


def test_round_trip_gives_input_timestamps_and_payloads(golden: Golden) -> None:
    """TS read back: same samples, PTS/DTS at 90 kHz from the 1 s base, A/V offset kept."""
    config, asc, samples = golden
    assert any(s.cts_ms for s in samples), "golden must have B-frames"
    ts = _mux(TsMuxer(has_audio=True, has_video=True), config, asc, samples)
    assert len(ts) % TS_PACKET_SIZE == 0
    reader = TsReader()
    reader.receive_data(ts)
    reader.receive_data(b"")
    events = _drain(reader)
    assert reader.continuity_errors == 0
    assert reader.stream_types == {0x100: 0x1B, 0x101: 0x0F}
    assert reader.pcr_pid == 0x100
    first_ms = samples[0].dts_ms
    video = [e for e in events if e.pid == 0x100]
    audio = [e for e in events if e.pid == 0x101]
    video_in = [s for s in samples if s.is_video]
    audio_in = [s for s in samples if not s.is_video]
    assert len(video) == len(video_in) and len(audio) == len(audio_in)
    for event, s in zip(video, video_in, strict=True):
        dts = TIMESTAMP_BASE_90K + (s.dts_ms - first_ms) * 90
        assert (event.stream_id, event.dts, event.pts) == (0xE0, dts, dts + s.cts_ms * 90)
        assert event.payload.startswith(mpegts.AUD_NAL)
        assert avc.split_annexb(event.payload) == _expected_nals(config, s)
        assert event.random_access == s.keyframe
        assert event.pcr_27m == (dts - PCR_DELAY_90K) * 300
    for event, s in zip(audio, audio_in, strict=True):
        pts = TIMESTAMP_BASE_90K + (s.dts_ms - first_ms) * 90
        assert (event.stream_id, event.pts, event.dts) == (0xC0, pts, pts)
        assert event.payload == aac.adts_header(asc, len(s.data)) + s.data
        assert event.payload[:2] in (b"\xff\xf1", b"\xff\xf9")
        frame_length = (
            (event.payload[3] & 0x03) << 11 | event.payload[4] << 3 | event.payload[5] >> 5
        )
        assert frame_length == len(event.payload)
        assert event.pcr_27m is None
    # Published A/V offset kept exactly: the golden's audio starts 57 ms after video.
    assert audio_in[0].dts_ms - video_in[0].dts_ms == 57
    assert audio[0].pts is not None and video[0].dts is not None
    assert audio[0].pts - video[0].dts == 57 * 90


nal_bodies = st.binary(min_size=1, max_size=600).map(lambda b: bytes((0x41,)) + b)
sample_specs = st.lists(
    st.tuples(
        st.booleans(),  # is_video
        st.integers(min_value=0, max_value=200),  # dts step, ms
        st.integers(min_value=0, max_value=500),  # composition offset, ms
        st.booleans(),  # keyframe
        st.lists(nal_bodies, min_size=1, max_size=3),  # NAL units (video)
        st.binary(min_size=0, max_size=1500),  # raw AAC frame (audio)
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(specs=sample_specs, batch=st.integers(min_value=1, max_value=4))
def test_round_trip_property_any_samples(
    golden: Golden, specs: list[tuple[bool, int, int, bool, list[bytes], bytes]], batch: int
) -> None:
    """Arbitrary sample sequences come back with exact timestamps and exact ES bytes."""
    config, asc, _ = golden
    muxer = TsMuxer(has_audio=True, has_video=True, audio_frames_per_pes=batch)
    out = [muxer.start_segment()]
    t = 5000
    expected_video: list[tuple[int, int, bytes, bool]] = []
    expected_audio: list[tuple[int, bytes]] = []
    base: int | None = None
    for is_video, step, cts, keyframe, nals, raw in specs:
        t += step
        if base is None:
            base = t
        if is_video:
            payload = avc.to_length_prefixed(nals, config.length_size)
            out.append(
                muxer.write_video(
                    dts_ms=t, cts_ms=cts, keyframe=keyframe, avcc_payload=payload, config=config
                )
            )
            es = [*config.sps, *config.pps, *nals] if keyframe else nals
            dts = TIMESTAMP_BASE_90K + (t - base) * 90
            expected_video.append(
                (dts, dts + cts * 90, mpegts.AUD_NAL + avc.to_annexb(es), keyframe)
            )
        else:
            out.append(muxer.write_audio(dts_ms=t, aac_raw=raw, asc=asc))
            pts = TIMESTAMP_BASE_90K + (t - base) * 90
            expected_audio.append((pts, aac.adts_header(asc, len(raw)) + raw))
    out.append(muxer.flush())
    reader = TsReader()
    reader.receive_data(b"".join(out))
    reader.receive_data(b"")
    events = _drain(reader)
    assert reader.continuity_errors == 0
    video = [(e.dts, e.pts, e.payload, e.random_access) for e in events if e.pid == 0x100]
    assert video == expected_video
    audio = [e for e in events if e.pid == 0x101]
    groups = [expected_audio[i : i + batch] for i in range(0, len(expected_audio), batch)]
    assert [(e.pts, e.payload) for e in audio] == [
        (g[0][0], b"".join(frame for _, frame in g)) for g in groups
    ]


def test_tables_before_every_keyframe_and_not_repeated(golden: Golden) -> None:
    config, asc, samples = golden
    ts = _mux(TsMuxer(has_audio=True, has_video=True), config, asc, samples)
    pids = [(ts[i + 1] & 0x1F) << 8 | ts[i + 2] for i in range(0, len(ts), TS_PACKET_SIZE)]
    keyframes = sum(1 for s in samples if s.is_video and s.keyframe)
    assert keyframes >= 2
    assert pids.count(0) == keyframes  # start_segment + first keyframe share one PAT
    assert pids.count(0x1000) == keyframes
    for i, pid in enumerate(pids):
        if pid == 0:
            assert pids[i + 1] == 0x1000
            # Next video packet after the tables starts a keyframe PES (RAI set).
            j = next(k for k in range(i, len(pids)) if pids[k] == 0x100)
            packet = ts[j * TS_PACKET_SIZE : (j + 1) * TS_PACKET_SIZE]
            assert packet[1] & 0x40 and packet[3] & 0x20 and packet[5] & 0x40


def test_segments_continue_counters_and_each_starts_with_tables(golden: Golden) -> None:
    config, asc, samples = golden
    muxer = TsMuxer(has_audio=True, has_video=True)
    segments: list[bytes] = []
    current = [muxer.start_segment()]
    for s in samples:
        if s.is_video and s.keyframe and len(current) > 1:
            current.append(muxer.flush())
            segments.append(b"".join(current))
            current = [muxer.start_segment()]
        if s.is_video:
            current.append(
                muxer.write_video(
                    dts_ms=s.dts_ms,
                    cts_ms=s.cts_ms,
                    keyframe=s.keyframe,
                    avcc_payload=s.data,
                    config=config,
                )
            )
        else:
            current.append(muxer.write_audio(dts_ms=s.dts_ms, aac_raw=s.data, asc=asc))
    segments.append(b"".join(current))
    assert len(segments) >= 2
    for segment in segments:
        assert segment[:3] == b"\x47\x40\x00"  # PAT first
        assert segment[TS_PACKET_SIZE + 1 : TS_PACKET_SIZE + 3] == b"\x50\x00"  # then PMT
    reader = TsReader()
    reader.receive_data(b"".join(segments))
    reader.receive_data(b"")
    events = _drain(reader)
    assert reader.continuity_errors == 0
    assert len(events) == len(samples)


def test_audio_batching_puts_frames_in_one_pes_with_first_pts(golden: Golden) -> None:
    _config, asc, samples = golden
    audio_in = [s for s in samples if not s.is_video]
    muxer = TsMuxer(has_audio=True, has_video=False, audio_frames_per_pes=3)
    out = [muxer.start_segment()]
    out += [muxer.write_audio(dts_ms=s.dts_ms, aac_raw=s.data, asc=asc) for s in audio_in]
    out.append(muxer.flush())
    events = read_all(b"".join(out))
    assert len(events) == (len(audio_in) + 2) // 3
    first_ms = audio_in[0].dts_ms
    for n, event in enumerate(events):
        group = audio_in[3 * n : 3 * n + 3]
        assert event.pts == TIMESTAMP_BASE_90K + (group[0].dts_ms - first_ms) * 90
        assert event.payload == b"".join(aac.adts_header(asc, len(s.data)) + s.data for s in group)
        # Audio-only: the PCR rides on the audio PID, every PES is a random access point.
        assert event.random_access
        assert event.pcr_27m == (event.pts - PCR_DELAY_90K) * 300


def test_audio_batch_that_would_pass_pes_packet_length_goes_out_early(golden: Golden) -> None:
    """Frames are batched up to PES_packet_length (65535): the frame that
    would pass it starts the next PES, and every frame comes out once, in order."""
    _config, asc, _samples = golden
    frames = [bytes([n]) * 6000 for n in range(16)]  # 10 of them (ADTS headers too) fill one PES
    muxer = TsMuxer(has_audio=True, has_video=False, audio_frames_per_pes=16)
    out = [muxer.start_segment()]
    out += [muxer.write_audio(dts_ms=23 * n, aac_raw=f, asc=asc) for n, f in enumerate(frames)]
    out.append(muxer.flush())
    events = read_all(b"".join(out))
    assert [len(e.payload) // 6007 for e in events] == [10, 6]
    assert b"".join(e.payload for e in events) == b"".join(
        aac.adts_header(asc, len(f)) + f for f in frames
    )
    assert events[1].pts == events[0].pts + 10 * 23 * 90


def test_existing_aud_is_replaced_and_inband_sps_not_duplicated(golden: Golden) -> None:
    config, _, samples = golden
    key = next(s for s in samples if s.is_video and s.keyframe)
    nals = avc.split_length_prefixed(key.data, config.length_size)
    with_extras = [b"\x09\x10", *config.sps, *config.pps, *nals]
    payload = avc.to_length_prefixed(with_extras, config.length_size)
    muxer = TsMuxer(has_audio=False, has_video=True)
    ts = muxer.write_video(dts_ms=0, cts_ms=0, keyframe=True, avcc_payload=payload, config=config)
    (event,) = read_all(ts)
    assert avc.split_annexb(event.payload) == [b"\x09\xf0", *config.sps, *config.pps, *nals]


def test_muxer_api_misuse_raises_local_error(golden: Golden) -> None:
    config, asc, _ = golden
    with pytest.raises(LocalProtocolError):
        TsMuxer(has_audio=False, has_video=False)
    with pytest.raises(LocalProtocolError):
        TsMuxer(has_audio=True, has_video=True, video_pid=0x101)
    with pytest.raises(LocalProtocolError):
        TsMuxer(has_audio=True, has_video=True, pmt_pid=0x0)
    with pytest.raises(LocalProtocolError):
        TsMuxer(has_audio=True, has_video=True, audio_frames_per_pes=0)
    with pytest.raises(LocalProtocolError):
        TsMuxer(has_audio=True, has_video=False).write_video(
            dts_ms=0, cts_ms=0, keyframe=True, avcc_payload=b"", config=config
        )
    with pytest.raises(LocalProtocolError):
        TsMuxer(has_audio=False, has_video=True).write_audio(dts_ms=0, aac_raw=b"x", asc=asc)


def test_malformed_avcc_raises_remote_error(golden: Golden) -> None:
    config, _, _ = golden
    muxer = TsMuxer(has_audio=False, has_video=True)
    with pytest.raises(RemoteProtocolError):
        muxer.write_video(
            dts_ms=0, cts_ms=0, keyframe=False, avcc_payload=b"\x00\x00\x00\x09ab", config=config
        )


def test_timestamps_wrap_at_33_bits(golden: Golden) -> None:
    _config, asc, samples = golden
    muxer = TsMuxer(has_audio=True, has_video=True)
    raw = next(s for s in samples if not s.is_video).data
    muxer.write_audio(dts_ms=0, aac_raw=raw, asc=asc)
    step_ms = ((1 << 33) // 90) + 1  # just past one full 33-bit turn
    (event,) = read_all(_tables_of(muxer) + muxer.write_audio(dts_ms=step_ms, aac_raw=raw, asc=asc))
    assert event.pts == (TIMESTAMP_BASE_90K + step_ms * 90) & MASK_33


def _tables_of(muxer: TsMuxer) -> bytes:
    copy = TsMuxer(has_audio=muxer.has_audio, has_video=muxer.has_video)
    return copy.start_segment()


# --------------------------------------------------------------------------- reader


def _drain(reader: TsReader) -> list[PesPacket]:
    events: list[PesPacket] = []
    while True:
        event = reader.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)


@pytest.fixture(scope="module")
def short_ts(golden: Golden) -> bytes:
    config, asc, samples = golden
    return _mux(TsMuxer(has_audio=True, has_video=True), config, asc, samples[:8])


def test_reader_same_events_whole_bytewise_and_in_odd_chunks(short_ts: bytes) -> None:
    whole = read_all(short_ts)
    assert len(whole) == 8
    for chunk in (1, 7, 187, 189, 1000):
        reader = TsReader()
        events: list[PesPacket] = []
        for i in range(0, len(short_ts), chunk):
            reader.receive_data(short_ts[i : i + chunk])
            events += _drain(reader)
        reader.receive_data(b"")
        events += _drain(reader)
        assert events == whole


def test_reader_every_prefix_parses_or_raises_remote_error(short_ts: bytes) -> None:
    """Truncation loop: each prefix gives events or RemoteProtocolError, nothing else."""
    full = read_all(short_ts)
    for end in range(len(short_ts) + 1):
        try:
            events = read_all(short_ts[:end])
        except RemoteProtocolError as exc:
            assert "truncated" in str(exc)
            continue
        assert end % TS_PACKET_SIZE == 0
        assert len(events) <= len(full)


def test_reader_trailing_bytes_raise_truncated(short_ts: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="truncated TS packet"):
        read_all(short_ts + b"\x47\x00")


def test_reader_counts_continuity_errors_for_a_lost_packet(short_ts: bytes) -> None:
    packets = [short_ts[i : i + TS_PACKET_SIZE] for i in range(0, len(short_ts), TS_PACKET_SIZE)]
    # Drop a video continuation packet (no PUSI): the video PES is unbounded, so no error.
    index = next(
        i for i, p in enumerate(packets) if (p[1] & 0x1F) << 8 | p[2] == 0x100 and not p[1] & 0x40
    )
    reader = TsReader()
    reader.receive_data(b"".join(packets[:index] + packets[index + 1 :]))
    reader.receive_data(b"")
    _drain(reader)
    assert reader.continuity_errors == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ts: b"\x48" + ts[1:], "lost TS sync"),
        (lambda ts: ts[:1] + bytes((ts[1] | 0x80,)) + ts[2:], "transport_error_indicator"),
        (lambda ts: ts[:3] + bytes((ts[3] & 0x0F,)) + ts[4:], "adaptation_field_control 0"),
        (lambda ts: ts[:10] + bytes((ts[10] ^ 0x01,)) + ts[11:], "CRC_32"),
    ],
    ids=["sync", "tei", "afc", "crc"],
)
def test_reader_rejects_broken_packets(
    short_ts: bytes, mutate: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        read_all(mutate(short_ts))


def test_reader_pes_size_limit(short_ts: bytes) -> None:
    reader = TsReader(max_pes_size=1000)
    reader.receive_data(short_ts)
    reader.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="MAX_PES_SIZE"):
        _drain(reader)


def test_reader_pmt_spanning_packets_is_reassembled() -> None:
    streams = [(0x0F, 0x200 + i) for i in range(60)]  # 9 + 300 + 4 bytes: two packets
    pmt = b"\x00" + mpegts.encode_pmt(pcr_pid=0x200, streams=streams)
    counters: dict[int, int] = {}
    pat = b"\x00" + mpegts.encode_pat(pmt_pid=0x1000)
    ts = mpegts.packetize(0, pat, counters) + mpegts.packetize(0x1000, pmt, counters)
    assert len(ts) == 3 * TS_PACKET_SIZE
    pes = mpegts.encode_pes_header(stream_id=0xC0, pts_90k=7, dts_90k=None, payload_size=2)
    ts += mpegts.packetize(0x23B, pes + b"ok", counters)
    reader = TsReader()
    reader.receive_data(ts)
    events = _drain(reader)
    assert reader.stream_types == dict((pid, t) for t, pid in streams)
    assert [(e.pid, e.pts, e.payload) for e in events] == [(0x23B, 7, b"ok")]


def test_reader_error_is_sticky(short_ts: bytes) -> None:
    reader = TsReader()
    reader.receive_data(b"\x00" * TS_PACKET_SIZE)
    with pytest.raises(RemoteProtocolError, match="lost TS sync"):
        reader.next_event()
    reader.receive_data(short_ts)
    with pytest.raises(RemoteProtocolError, match="lost TS sync"):
        reader.next_event()


def test_reader_data_after_eof_is_misuse() -> None:
    reader = TsReader()
    reader.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        reader.receive_data(b"\x47")


@settings(max_examples=300)
@given(data=st.data())
def test_reader_fuzz_mutated_stream_gives_events_or_remote_error(
    short_ts: bytes, data: st.DataObject
) -> None:
    buf = bytearray(short_ts)
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        pos = data.draw(st.integers(min_value=0, max_value=len(buf) - 1))
        buf[pos] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(buf)))
    with contextlib.suppress(RemoteProtocolError):
        read_all(bytes(buf[:cut]))


@given(st.binary(max_size=2000))
def test_reader_fuzz_arbitrary_bytes(blob: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        read_all(blob)


# --------------------------------------------------------------------------- errors


def test_codec_modules_raise_only_protocol_errors() -> None:
    root = Path(mpegts.__file__).resolve().parent
    for name in ("mpegts.py", "hls.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "rtmpd.codec.errors":
                assert {a.name for a in node.names} <= {
                    "LocalProtocolError",
                    "RemoteProtocolError",
                }


# --------------------------------------------------------------------------- ffmpeg


def _ffprobe_packets(path: Path) -> list[tuple[str, int, int]]:
    """(codec_type, pts, dts) of every packet, in the container's time base."""
    assert FFPROBE is not None
    out = subprocess.run(
        [
            FFPROBE,
            "-v",
            "error",
            "-show_entries",
            "packet=codec_type,pts,dts",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [(p["codec_type"], int(p["pts"]), int(p["dts"])) for p in json.loads(out)["packets"]]


def _ffmpeg_check(flv_path: Path, tmp_path: Path) -> None:
    assert FFMPEG is not None and FFPROBE is not None
    config, asc, samples = _flv_samples(flv_path.read_bytes())
    ts_path = tmp_path / "out.ts"
    ts_path.write_bytes(_mux(TsMuxer(has_audio=True, has_video=True), config, asc, samples))
    decoded = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", str(ts_path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert decoded.returncode == 0
    assert decoded.stdout == "" and decoded.stderr == ""
    probe = subprocess.run(
        [FFPROBE, "-v", "error", "-show_streams", "-of", "json", str(ts_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    streams = json.loads(probe)["streams"]
    assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"]
    flv_packets = _ffprobe_packets(flv_path)
    ts_packets = _ffprobe_packets(ts_path)
    first_ms = samples[0].dts_ms
    for kind in ("video", "audio"):
        expected = [
            (TIMESTAMP_BASE_90K + (pts - first_ms) * 90, TIMESTAMP_BASE_90K + (dts - first_ms) * 90)
            for k, pts, dts in flv_packets
            if k == kind
        ]
        got = [(pts, dts) for k, pts, dts in ts_packets if k == kind]
        assert got == expected, kind


@pytest.mark.skipif(FFMPEG is None or FFPROBE is None, reason="ffmpeg/ffprobe not installed")
def test_ffmpeg_decodes_golden_cleanly_with_flv_timestamps(tmp_path: Path) -> None:
    _ffmpeg_check(DATA / "bframes.flv", tmp_path)


@pytest.mark.skipif(FFMPEG is None or FFPROBE is None, reason="ffmpeg/ffprobe not installed")
def test_ffmpeg_decodes_fresh_one_second_bframe_stream(tmp_path: Path) -> None:
    """The brief's exact recipe: 1 s of 160x120 H.264 with B-frames + AAC, made now."""
    assert FFMPEG is not None
    flv_path = tmp_path / "in.flv"
    subprocess.run(
        [
            FFMPEG,
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=160x120:r=25",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-bf",
            "2",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-f",
            "flv",
            str(flv_path),
        ],
        check=True,
    )
    _ffmpeg_check(flv_path, tmp_path)
