"""Opus identification header (RFC 7845 5.1) and its ``dOps`` form; Opus in FLV tags."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtmpd.codec import flv, opus
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.media import Frame, FrameKind

DATA = Path(__file__).resolve().parent.parent / "data" / "opus" / "h264_opus.flv"
Head = opus.OpusHead

# One table: value, exact OpusHead bytes (little-endian), exact dOps payload (big-endian).
CASES = [
    # Mono, pre-skip 312, 48 kHz: what ffmpeg 9's libopus wrapper writes (tests/data/opus).
    (
        Head(channel_count=1, pre_skip=312),
        b"OpusHead\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00",
        b"\x00\x01\x01\x38\x00\x00\xbb\x80\x00\x00\x00",
    ),
    # Stereo, pre-skip 3840, input 44.1 kHz, gain -1 dB (-256 in Q7.8).
    (
        Head(channel_count=2, pre_skip=3840, input_sample_rate=44100, output_gain=-256),
        b"OpusHead\x01\x02\x00\x0f\x44\xac\x00\x00\x00\xff\x00",
        b"\x00\x02\x0f\x00\x00\x00\xac\x44\xff\x00\x00",
    ),
    # Input rate unknown (0), positive gain.
    (
        Head(channel_count=2, input_sample_rate=0, output_gain=0x0102),
        b"OpusHead\x01\x02\x00\x00\x00\x00\x00\x00\x02\x01\x00",
        b"\x00\x02\x00\x00\x00\x00\x00\x00\x01\x02\x00",
    ),
    # 5.1 in Vorbis order (family 1): 4 streams, 2 coupled, mapping 0 4 1 2 3 5.
    (
        Head(
            channel_count=6,
            pre_skip=312,
            channel_mapping_family=1,
            stream_count=4,
            coupled_count=2,
            channel_mapping=bytes((0, 4, 1, 2, 3, 5)),
        ),
        b"OpusHead\x01\x06\x38\x01\x80\xbb\x00\x00\x00\x00\x01\x04\x02\x00\x04\x01\x02\x03\x05",
        b"\x00\x06\x01\x38\x00\x00\xbb\x80\x00\x00\x01\x04\x02\x00\x04\x01\x02\x03\x05",
    ),
    # Family 255 (no defined layout), one silent channel (255).
    (
        Head(
            channel_count=3,
            channel_mapping_family=255,
            stream_count=3,
            coupled_count=0,
            channel_mapping=bytes((0, 255, 2)),
        ),
        b"OpusHead\x01\x03\x00\x00\x80\xbb\x00\x00\x00\x00\xff\x03\x00\x00\xff\x02",
        b"\x00\x03\x00\x00\x00\x00\xbb\x80\x00\x00\xff\x03\x00\x00\xff\x02",
    ),
]


@pytest.mark.parametrize(("head", "head_bytes", "dops_bytes"), CASES)
def test_opus_head_encodes_to_exact_bytes(head: Head, head_bytes: bytes, dops_bytes: bytes) -> None:
    assert bytes(head) == head_bytes
    assert head.dops() == dops_bytes


@pytest.mark.parametrize(("head", "head_bytes", "dops_bytes"), CASES)
def test_opus_head_and_dops_parse_back_to_the_same_value(
    head: Head, head_bytes: bytes, dops_bytes: bytes
) -> None:
    assert Head.parse(head_bytes) == head
    assert Head.parse_dops(dops_bytes) == head
    # Sequence header -> dOps -> sequence header is the identity.
    assert bytes(Head.parse_dops(Head.parse(head_bytes).dops())) == head_bytes


@pytest.mark.parametrize(("head", "head_bytes", "dops_bytes"), CASES)
def test_every_prefix_of_a_header_parses_or_raises_the_codec_error(
    head: Head, head_bytes: bytes, dops_bytes: bytes
) -> None:
    for data, parse, full in (
        (head_bytes, Head.parse, len(head_bytes)),
        (dops_bytes, Head.parse_dops, len(dops_bytes)),
    ):
        for end in range(1, full):
            with pytest.raises(RemoteProtocolError):
                parse(data[:end])
        assert parse(data) == head


def test_bytes_after_the_header_are_ignored_as_rfc_7845_asks() -> None:
    head, head_bytes, dops_bytes = CASES[0]
    assert Head.parse(head_bytes + b"\x01\x02\x03") == head
    assert Head.parse_dops(dops_bytes + b"\x00") == head


def test_an_empty_sequence_start_means_stereo_family_0() -> None:
    assert Head.parse(b"") is opus.DEFAULT_HEAD
    assert Head(channel_count=2, pre_skip=0, input_sample_rate=48000) == opus.DEFAULT_HEAD


def test_a_later_minor_version_is_read_and_a_new_major_version_refused() -> None:
    data = bytearray(CASES[0][1])
    data[8] = 0x0F
    assert Head.parse(bytes(data)).version == 15
    for bad in (0x00, 0x10, 0xFF):
        data[8] = bad
        with pytest.raises(RemoteProtocolError, match="version"):
            Head.parse(bytes(data))


BAD_HEADS = [
    (b"OpusTags" + bytes(11), "not b'OpusHead'"),
    (b"OpusHead\x01\x00" + bytes(9), "channel count 0"),
    (b"OpusHead\x01\x03\x00\x00\x80\xbb\x00\x00\x00\x00\x00", "family 0 allows 1 or 2"),
    (b"OpusHead\x01\x09\x00\x00\x80\xbb\x00\x00\x00\x00\x01" + b"\x05\x04" + bytes(9), "1..8"),
    (b"OpusHead\x01\x02\x00\x00\x80\xbb\x00\x00\x00\x00\xff\x00\x00\x00\x00", "stream count 0"),
    (b"OpusHead\x01\x02\x00\x00\x80\xbb\x00\x00\x00\x00\xff\x01\x02\x00\x00", "coupled count 2"),
    (b"OpusHead\x01\x02\x00\x00\x80\xbb\x00\x00\x00\x00\xff\x01\x00\x00\x01", "channel 1 maps"),
]


@pytest.mark.parametrize(("data", "message"), BAD_HEADS)
def test_inconsistent_headers_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        Head.parse(data)


def test_dops_version_other_than_0_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="dOps version 1"):
        Head.parse_dops(b"\x01" + CASES[0][2][1:])


def test_building_an_impossible_header_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="pre-skip"):
        Head(channel_count=2, pre_skip=70000)
    with pytest.raises(LocalProtocolError, match="no mapping table"):
        Head(channel_count=2, stream_count=2)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_give_a_header_or_the_codec_error(data: bytes) -> None:
    for parse in (Head.parse, Head.parse_dops):
        try:
            head = parse(data)
        except RemoteProtocolError:
            continue
        assert Head.parse(bytes(head)) == head
        assert Head.parse_dops(head.dops()) == head


@given(
    channels=st.integers(1, 255),
    family=st.sampled_from((0, 1, 2, 255)),
    pre_skip=st.integers(0, 0xFFFF),
    rate=st.integers(0, 0xFFFFFFFF),
    gain=st.integers(-0x8000, 0x7FFF),
    data=st.data(),
)
def test_any_valid_header_round_trips_through_both_forms(
    channels: int, family: int, pre_skip: int, rate: int, gain: int, data: st.DataObject
) -> None:
    if family == 0:
        channels = min(channels, 2)
        table: dict[str, object] = {}
    else:
        if family == 1:
            channels = min(channels, 8)
        streams = data.draw(st.integers(1, 255))
        coupled = data.draw(st.integers(0, min(streams, 255 - streams)))
        mapping = data.draw(
            st.lists(
                st.one_of(st.integers(0, streams + coupled - 1), st.just(255)),
                min_size=channels,
                max_size=channels,
            )
        )
        table = {
            "stream_count": streams,
            "coupled_count": coupled,
            "channel_mapping": bytes(mapping),
        }
    head = Head(
        channel_count=channels,
        pre_skip=pre_skip,
        input_sample_rate=rate,
        output_gain=gain,
        channel_mapping_family=family,
        **table,  # type: ignore[arg-type]
    )
    assert Head.parse(bytes(head)) == head
    assert Head.parse_dops(head.dops()) == head


# --------------------------------------------------------------------------- Opus in FLV tags


def golden_audio_tags() -> list[flv.TagReceived]:
    reader = flv.FlvReader()
    reader.receive_data(DATA.read_bytes())
    reader.receive_data(b"")
    tags = []
    while not isinstance(event := reader.next_event(), (flv.NeedData, flv.EndOfStream)):
        if isinstance(event, flv.TagReceived) and event.tag_type == flv.TAG_AUDIO:
            tags.append(event)
    return tags


def test_ffmpeg_opus_tags_become_frames_with_the_opus_fourcc() -> None:
    tags = golden_audio_tags()
    frames = [Frame.from_tag(t.tag_type, t.timestamp_ms, t.body) for t in tags]
    assert all(f.kind is FrameKind.AUDIO and f.codec == flv.FOURCC_OPUS for f in frames)
    assert [f.sequence_header for f in frames[:3]] == [True, False, False]
    head = Head.parse(flv.audio_packet(frames[0].payload).data)
    assert (head.channel_count, head.pre_skip, head.input_sample_rate) == (1, 312, 48000)
    packets = [flv.audio_packet(f.payload) for f in frames[1:]]
    assert packets[0].packet_type == flv.AUDIO_PACKET_MULTICHANNEL_CONFIG
    assert not packets[0].coded_frames
    assert all(p.coded_frames for p in packets[1:])
    assert [p.data for p in packets[1:]] == [t.body[5:] for t in tags[2:]]


AUDIO_PACKET_CASES = [
    # body, (codec, packet type, data)
    (b"\xaf\x00\x12\x10", (flv.AUDIO_AAC, 0, b"\x12\x10")),
    (b"\xaf\x01abc", (flv.AUDIO_AAC, 1, b"abc")),
    (b"\x2fmp3", (flv.AUDIO_MP3, flv.AUDIO_PACKET_CODED_FRAMES, b"mp3")),
    (b"\x90OpusOpusHead", (flv.FOURCC_OPUS, 0, b"OpusHead")),
    (b"\x90Opus", (flv.FOURCC_OPUS, 0, b"")),
    (b"\x91Opus\xfc\xff", (flv.FOURCC_OPUS, 1, b"\xfc\xff")),
    (b"\x92Opus", (flv.FOURCC_OPUS, 2, b"")),
    # ModEx (one byte of data, type 0) before CodedFrames.
    (b"\x97\x00x\x01Opus\xfc", (flv.FOURCC_OPUS, 1, b"\xfc")),
    # Multitrack, OneTrack: type|packet, FourCC, trackId, data.
    (b"\x95\x01Opus\x00\xfc", (flv.FOURCC_OPUS, 1, b"\xfc")),
    # Multitrack, ManyTracks: the first track's data only (sizeOfTrack 2).
    (
        b"\x95\x11Opus\x00\x00\x00\x02\xfc\xfd\x01\x00\x00\x01\xaa",
        (flv.FOURCC_OPUS, 1, b"\xfc\xfd"),
    ),
]


@pytest.mark.parametrize(("body", "expected"), AUDIO_PACKET_CASES)
def test_audio_packet_finds_the_codec_data(body: bytes, expected: tuple[int, int, bytes]) -> None:
    packet = flv.audio_packet(body)
    assert (packet.codec, packet.packet_type, packet.data) == expected
    info = flv.describe_tag(flv.TAG_AUDIO, body)
    assert info.codec == packet.codec
    assert info.sequence_header == (packet.packet_type == 0)


@pytest.mark.parametrize(("body", "expected"), AUDIO_PACKET_CASES)
def test_audio_packet_of_a_truncated_body_is_data_or_the_codec_error(
    body: bytes, expected: tuple[int, int, bytes]
) -> None:
    for end in range(len(body)):
        try:
            packet = flv.audio_packet(body[:end])
        except RemoteProtocolError:
            continue
        # A prefix that still parses cut only trailing bytes: its data is a piece of it.
        assert packet.data in body[:end]
        assert packet.codec == expected[0]


@given(st.binary(max_size=40))
def test_audio_packet_of_arbitrary_bytes_is_data_or_the_codec_error(body: bytes) -> None:
    """Any other exception (an IndexError on a short body) fails this test."""
    try:
        packet = flv.audio_packet(body)
    except RemoteProtocolError:
        return
    assert packet.data in body


def test_the_largest_header_is_max_opus_head_size() -> None:
    head = Head(
        channel_count=255,
        channel_mapping_family=255,
        stream_count=255,
        coupled_count=0,
        channel_mapping=bytes(255),
    )
    assert len(bytes(head)) == opus.MAX_OPUS_HEAD_SIZE
    assert Head.parse(bytes(head)) == head
