"""FLV header/tag writer, FlvReader and describe_tag."""

from __future__ import annotations

import contextlib
import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec import flv
from rtmpd.codec.buffer import ByteBuffer
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

DATA = Path(__file__).resolve().parent.parent / "data"
TINY_FLV = DATA / "tiny.flv"

# --------------------------------------------------------------------------- case tables

# (has_audio, has_video) -> header + PreviousTagSize0
HEADER_CASES = [
    (True, True, b"FLV\x01\x05\x00\x00\x00\x09" + b"\x00\x00\x00\x00"),
    (True, False, b"FLV\x01\x04\x00\x00\x00\x09" + b"\x00\x00\x00\x00"),
    (False, True, b"FLV\x01\x01\x00\x00\x00\x09" + b"\x00\x00\x00\x00"),
    (False, False, b"FLV\x01\x00\x00\x00\x00\x09" + b"\x00\x00\x00\x00"),
]

# (tag_type, timestamp_ms, body) -> tag bytes including its PreviousTagSize
TAG_CASES = [
    (
        flv.TAG_VIDEO,
        0,
        b"\x17\x00\x00\x00\x00",
        b"\x09\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00" + b"\x17\x00\x00\x00\x00\x00\x00\x00\x10",
    ),
    (
        flv.TAG_AUDIO,
        0x123456,
        b"\xaf\x01\xff",
        b"\x08\x00\x00\x03\x12\x34\x56\x00\x00\x00\x00" + b"\xaf\x01\xff" + b"\x00\x00\x00\x0e",
    ),
    # Timestamp past 24 bits: bits 24..31 go to TimestampExtended.
    (
        flv.TAG_VIDEO,
        0x12345678,
        b"\x27\x01\x00\x00\x28",
        b"\x09\x00\x00\x05\x34\x56\x78\x12\x00\x00\x00" + b"\x27\x01\x00\x00\x28\x00\x00\x00\x10",
    ),
    (
        flv.TAG_SCRIPT,
        0xFFFFFFFF,
        b"\x02\x00\x0aonMetaData",
        b"\x12\x00\x00\x0d\xff\xff\xff\xff\x00\x00\x00" + b"\x02\x00\x0aonMetaData\x00\x00\x00\x18",
    ),
    (flv.TAG_AUDIO, 40, b"", b"\x08\x00\x00\x00\x00\x00\x28\x00\x00\x00\x00\x00\x00\x00\x0b"),
]

# A small whole stream built from the table: header then every tag.
TABLE_FLV = HEADER_CASES[0][2] + b"".join(case[3] for case in TAG_CASES)
TABLE_EVENTS = [
    flv.FlvHeaderReceived(has_audio=True, has_video=True, version=1),
    *(flv.TagReceived(tag_type=t, timestamp_ms=ts, body=body) for t, ts, body, _ in TAG_CASES),
    flv.EndOfStream(),
]


def fourcc(code: bytes) -> int:
    return int.from_bytes(code, "big")


AVC1, HVC1, AV01, VP09 = (fourcc(c) for c in (b"avc1", b"hvc1", b"av01", b"vp09"))
MP4A, OPUS, FLAC, AC3, EC3, MP3 = (
    fourcc(c) for c in (b"mp4a", b"Opus", b"fLaC", b"ac-3", b"ec-3", b".mp3")
)


def info(keyframe: bool = False, seq: bool = False, codec: int = 0, cts: int = 0) -> flv.TagInfo:
    return flv.TagInfo(keyframe=keyframe, sequence_header=seq, codec=codec, composition_ms=cts)


# (tag_type, body) -> TagInfo
DESCRIBE_CASES = [
    # Legacy AVC: FrameType | CodecID, AVCPacketType, SI24 CompositionTime.
    (9, b"\x17\x00\x00\x00\x00\x01\x64", info(seq=True, codec=7)),
    (9, b"\x17\x01\x00\x00\x50\x65", info(keyframe=True, codec=7, cts=80)),
    (9, b"\x27\x01\x00\x00\x28\x41", info(codec=7, cts=40)),
    (9, b"\x27\x01\xff\xff\xd8\x41", info(codec=7, cts=-40)),  # negative SI24
    (9, b"\x37\x01\x00\x00\x00\x01", info(codec=7)),  # disposable inter
    (9, b"\x17\x02\x00\x00\x00", info(codec=7)),  # end of sequence
    (9, b"\x57\x01", info(codec=7)),  # command frame: no picture
    # Legacy CodecID 12 (de facto HEVC): same layout as AVC.
    (9, b"\x1c\x00\x00\x00\x00\x01", info(seq=True, codec=12)),
    (9, b"\x1c\x01\x00\x00\x21\x26", info(keyframe=True, codec=12, cts=33)),
    (9, b"\x2c\x01\x00\x00\x00\x02", info(codec=12)),
    # Other legacy codecs: one-byte header.
    (9, b"\x12\x00", info(keyframe=True, codec=2)),
    (9, b"\x24", info(codec=4)),
    # Enhanced RTMP video: IsExHeader | FrameType UB[3] | PacketType UB[4], FourCC.
    (9, b"\x90hvc1\x01\x01", info(seq=True, codec=HVC1)),  # key + SequenceStart
    (9, b"\x91hvc1\x00\x00\x21\x26", info(keyframe=True, codec=HVC1, cts=33)),
    (9, b"\xa1hvc1\xff\xff\xdf\x02", info(codec=HVC1, cts=-33)),
    (9, b"\x93hvc1\x26", info(keyframe=True, codec=HVC1)),  # CodedFramesX: cts 0
    (9, b"\xa3avc1\x41", info(codec=AVC1)),
    (9, b"\x91avc1\x00\x00\x50\x65", info(keyframe=True, codec=AVC1, cts=80)),
    (9, b"\x90av01\x81", info(seq=True, codec=AV01)),
    (9, b"\x91av01\x12\x00", info(keyframe=True, codec=AV01)),  # AV1: no cts field
    (9, b"\xa1vp09\x82", info(codec=VP09)),
    (9, b"\x92hvc1", info(codec=HVC1)),  # SequenceEnd
    (9, b"\x94hvc1\x02\x00", info(codec=HVC1)),  # Metadata
    (9, b"\x95av01\x01", info(seq=True, codec=AV01)),  # MPEG2TSSequenceStart
    (9, b"\xd0\x01", info()),  # command frame (type 5): VideoCommand, no FourCC
    (9, b"\xd4hvc1\x02", info(codec=HVC1)),  # command frame carrying Metadata
    # ModEx (PacketType 7): size-1 UI8, data, ModExType | real PacketType.
    (9, b"\x97\x02abc\x01hvc1\x00\x00\x21", info(keyframe=True, codec=HVC1, cts=33)),
    (
        9,
        b"\x97\xff\x00\x00" + b"z" + b"\x03avc1",  # size 256 escape -> UI16 (0) + 1
        info(keyframe=True, codec=AVC1),
    ),
    # Multitrack: AvMultitrackType | PacketType, FourCC, trackId, [sizeOfTrack].
    (9, b"\x96\x01avc1\x00\x00\x00\x28\x65", info(keyframe=True, codec=AVC1, cts=40)),
    (9, b"\x96\x10hvc1\x00\x00\x00\x05\x01", info(seq=True, codec=HVC1)),
    (9, b"\xa6\x13av01\x00\x00\x00\x01\x12", info(codec=AV01)),
    (
        9,
        b"\x96\x21hvc1\x00\x00\x00\x04\x00\x00\x21\x26",  # ManyTracksManyCodecs
        info(keyframe=True, codec=HVC1, cts=33),
    ),
    # Legacy audio: SoundFormat | rate | size | type; AAC adds AACPacketType.
    (8, b"\xaf\x00\x12\x10", info(seq=True, codec=10)),
    (8, b"\xaf\x01\x21\x00", info(codec=10)),
    (8, b"\x2f\xff\xfb", info(codec=2)),
    (8, b"\x82", info(codec=8)),
    # Enhanced audio: SoundFormat 9 | AudioPacketType, FourCC.
    (8, b"\x90Opus\x01\x02", info(seq=True, codec=OPUS)),
    (8, b"\x91Opus\xfc", info(codec=OPUS)),
    (8, b"\x90fLaC\x00", info(seq=True, codec=FLAC)),
    (8, b"\x91ac-3\x0b\x77", info(codec=AC3)),
    (8, b"\x91ec-3\x0b\x77", info(codec=EC3)),
    (8, b"\x91.mp3\xff\xfb", info(codec=MP3)),
    (8, b"\x90mp4a\x12\x10", info(seq=True, codec=MP4A)),
    (8, b"\x92mp4a", info(codec=MP4A)),
    (8, b"\x94Opus\x00\x02", info(codec=OPUS)),  # MultichannelConfig
    (8, b"\x95\x01Opus\x00\xfc", info(codec=OPUS)),  # Multitrack OneTrack CodedFrames
    (8, b"\x95\x10mp4a\x01\x00\x00\x02\x12\x10", info(seq=True, codec=MP4A)),
    (8, b"\x97\x00x\x00Opus\x02", info(seq=True, codec=OPUS)),  # ModEx then SequenceStart
    # Script data.
    (18, b"\x02\x00\x0aonMetaData", info()),
]

# (tag_type, body) -> message fragment of the RemoteProtocolError
DESCRIBE_ERRORS = [
    (9, b"", "empty video"),
    (8, b"", "empty audio"),
    (18, b"", "empty script"),
    (7, b"\x00", "unknown FLV tag type 7"),
    (0, b"\x17", "unknown FLV tag type 0"),
    (9, b"\x17", "shorter than its 5-byte header"),
    (9, b"\x17\x01\x00\x00", "shorter than its 5-byte header"),
    (9, b"\x27\x01", "shorter than"),
    (9, b"\x1c\x00", "shorter than"),
    (8, b"\xaf", "shorter than its 2-byte header"),
    (9, b"\x90hvc", "shorter than"),
    (9, b"\x91hvc1\x00\x00", "shorter than"),
    (9, b"\x97", "shorter than"),
    (9, b"\x97\x05ab", "shorter than"),
    (9, b"\x97\xff\x00", "shorter than"),
    (9, b"\x96", "shorter than"),
    (9, b"\x96\x11avc1\x00\x00", "shorter than"),
    (9, b"\xd0", "shorter than"),
    (8, b"\x90Op", "shorter than"),
    (8, b"\x95\x10mp4", "shorter than"),
]


def read_all(chunks: list[bytes], *, eof: bool = True) -> list[object]:
    """Feed ``chunks`` one by one, draining events after each; then EOF."""
    reader = flv.FlvReader()
    events: list[object] = []

    def drain() -> None:
        while True:
            event = reader.next_event()
            if event is flv.NEED_DATA:
                return
            events.append(event)
            if isinstance(event, flv.EndOfStream):
                return

    for chunk in chunks:
        if chunk:  # b"" would mean EOF
            reader.receive_data(chunk)
            drain()
    if eof:
        reader.receive_data(b"")
        drain()
    return events


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --------------------------------------------------------------------------- writer


@pytest.mark.parametrize(("has_audio", "has_video", "expected"), HEADER_CASES)
def test_encode_header_gives_header_and_previous_tag_size_zero(
    has_audio: bool, has_video: bool, expected: bytes
) -> None:
    assert flv.encode_header(has_audio=has_audio, has_video=has_video) == expected
    assert len(expected) == flv.FLV_HEADER_SIZE + 4


@pytest.mark.parametrize(("tag_type", "timestamp_ms", "body", "expected"), TAG_CASES)
def test_encode_tag_gives_exact_bytes(
    tag_type: int, timestamp_ms: int, body: bytes, expected: bytes
) -> None:
    assert flv.encode_tag(tag_type, timestamp_ms, body) == expected


def test_encode_tag_wraps_timestamp_modulo_2_32() -> None:
    assert flv.encode_tag(9, 2**32 + 5, b"\x17") == flv.encode_tag(9, 5, b"\x17")


@pytest.mark.parametrize(("tag_type", "body"), [(7, b"x"), (0x29, b"x"), (9, bytes(0x1000000))])
def test_encode_tag_rejects_bad_type_or_oversized_body(tag_type: int, body: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        flv.encode_tag(tag_type, 0, body)


def test_tag_writer_prepends_header_once() -> None:
    writer = flv.FlvTagWriter(has_audio=True, has_video=True)
    events = [flv.TagReceived(tag_type=t, timestamp_ms=ts, body=b) for t, ts, b, _ in TAG_CASES]
    out = b"".join(writer.send(event) for event in events)
    assert out == TABLE_FLV
    assert writer.header_sent
    with pytest.raises(LocalProtocolError):
        writer.header()


def test_tag_writer_reproduces_ffmpeg_file_from_reader_events() -> None:
    data = TINY_FLV.read_bytes()
    writer = flv.FlvTagWriter(has_audio=False, has_video=False)
    out = b"".join(
        writer.send(event)
        for event in read_all([data])
        if isinstance(event, flv.FlvHeaderReceived | flv.TagReceived)
    )
    assert out == data


def test_events_are_validated_when_built() -> None:
    with pytest.raises(LocalProtocolError):
        flv.TagReceived(tag_type=10, timestamp_ms=0, body=b"")
    with pytest.raises(LocalProtocolError):
        flv.TagReceived(tag_type=9, timestamp_ms=-1, body=b"")
    with pytest.raises(LocalProtocolError):
        flv.TagReceived(tag_type=9, timestamp_ms=2**32, body=b"")


# --------------------------------------------------------------------------- reader


def test_reader_decodes_case_table_stream() -> None:
    assert read_all([TABLE_FLV]) == TABLE_EVENTS


def test_reader_gives_same_events_byte_by_byte() -> None:
    chunks = [TABLE_FLV[i : i + 1] for i in range(len(TABLE_FLV))]
    assert read_all(chunks) == TABLE_EVENTS


@settings(max_examples=200)
@given(cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_reader_gives_same_events_at_any_split(cuts: list[int]) -> None:
    assert read_all(split_at(TABLE_FLV, cuts)) == TABLE_EVENTS


@settings(max_examples=50)
@given(cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_reader_gives_same_ffmpeg_events_at_any_split(cuts: list[int]) -> None:
    data = TINY_FLV.read_bytes()
    assert read_all(split_at(data, cuts)) == read_all([data])


def test_reader_without_eof_returns_need_data_after_last_tag() -> None:
    assert read_all([TABLE_FLV], eof=False) == TABLE_EVENTS[:-1]


def test_reader_returns_end_of_stream_again_after_eof() -> None:
    reader = flv.FlvReader()
    reader.receive_data(TABLE_FLV)
    reader.receive_data(b"")
    while not isinstance(reader.next_event(), flv.EndOfStream):
        pass
    assert reader.next_event() == flv.EndOfStream()
    reader.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(LocalProtocolError, match="after EOF"):
        reader.receive_data(b"x")


@pytest.mark.parametrize("data", [TABLE_FLV, TINY_FLV.read_bytes()], ids=["table", "ffmpeg"])
def test_every_prefix_needs_data_or_is_truncated_at_eof(data: bytes) -> None:
    full = read_all([data])
    boundaries = 0
    for end in range(len(data)):
        prefix = data[:end]
        events = read_all([prefix], eof=False)
        assert events == full[: len(events)]
        try:
            at_eof = read_all([prefix])
        except RemoteProtocolError as exc:
            assert str(exc).startswith("truncated")
        else:  # the prefix ends at a tag boundary
            assert at_eof == [*events, flv.EndOfStream()]
            boundaries += 1
    assert boundaries == sum(isinstance(e, flv.TagReceived) for e in full)


def test_trailing_bytes_after_last_tag_are_a_truncated_tag() -> None:
    events = read_all([TABLE_FLV + b"\x09\x00"], eof=False)
    assert events == TABLE_EVENTS[:-1]
    with pytest.raises(RemoteProtocolError, match="truncated FLV tag header"):
        read_all([TABLE_FLV + b"\x09\x00"])


def test_huge_tag_is_rejected_from_its_header_before_buffering() -> None:
    tag_header = b"\x09" + (16_000_000).to_bytes(3, "big") + bytes(7)
    reader = flv.FlvReader()
    reader.receive_data(flv.encode_header(has_audio=True, has_video=True) + tag_header)
    assert isinstance(reader.next_event(), flv.FlvHeaderReceived)
    with pytest.raises(RemoteProtocolError, match=r"16000000 bytes exceeds MAX_TAG_SIZE") as exc:
        reader.next_event()
    assert exc.value.hint == 413
    # The error sticks.
    with pytest.raises(RemoteProtocolError, match="exceeds MAX_TAG_SIZE"):
        reader.next_event()


def test_max_tag_size_is_configurable() -> None:
    reader = flv.FlvReader(max_tag_size=4)
    reader.receive_data(TABLE_FLV)
    assert isinstance(reader.next_event(), flv.FlvHeaderReceived)
    with pytest.raises(RemoteProtocolError, match="5 bytes exceeds MAX_TAG_SIZE \\(4\\)"):
        reader.next_event()
    with pytest.raises(LocalProtocolError):
        flv.FlvReader(max_tag_size=2**24)


def test_max_tag_size_is_below_the_ui24_limit() -> None:
    assert flv.MAX_TAG_SIZE < 16_000_000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"FLX", "not an FLV stream"),
        (b"G", "not an FLV stream"),
        (b"\x00\x00\x00\x00", "not an FLV stream"),
        (b"FLV\x02", "unsupported FLV version 2"),
        (b"FLV\x01\x05\x00\x00\x00\x08" + bytes(4), "DataOffset 8"),
        (b"FLV\x01\x05\x00\x00\x10\x00" + bytes(4), "DataOffset 4096"),
        (HEADER_CASES[0][2] + b"\x29" + bytes(10), "encrypted"),
        (HEADER_CASES[0][2] + b"\x0a" + bytes(10), "unknown FLV tag type 10"),
        (HEADER_CASES[0][2] + b"\x48" + bytes(10), "unknown FLV tag type 72"),
    ],
)
def test_reader_rejects_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        read_all([data], eof=False)


def test_reader_skips_extra_header_bytes() -> None:
    header = b"FLV\x01\x01\x00\x00\x00\x0c" + b"xyz" + bytes(4)
    data = header + TAG_CASES[0][3]
    events = read_all([data])
    assert events == [
        flv.FlvHeaderReceived(has_audio=False, has_video=True, version=1),
        flv.TagReceived(tag_type=9, timestamp_ms=0, body=TAG_CASES[0][2]),
        flv.EndOfStream(),
    ]


def test_reader_counts_previous_tag_size_mismatches_but_continues() -> None:
    tag = bytearray(TAG_CASES[0][3])
    tag[-4:] = bytes(4)  # some muxers write 0
    header = bytearray(HEADER_CASES[0][2])
    header[-1] = 1  # PreviousTagSize0 should be 0
    reader = flv.FlvReader()
    reader.receive_data(bytes(header + tag + tag))
    reader.receive_data(b"")
    events = []
    while not isinstance(event := reader.next_event(), flv.EndOfStream):
        events.append(event)
    assert len(events) == 3
    assert reader.previous_size_mismatches == 3


def test_reader_ignores_stream_id() -> None:
    tag = bytearray(TAG_CASES[0][3])
    tag[8:11] = b"\x00\x00\x01"
    assert read_all([HEADER_CASES[0][2] + bytes(tag)]) == [
        TABLE_EVENTS[0],
        flv.TagReceived(tag_type=9, timestamp_ms=0, body=TAG_CASES[0][2]),
        flv.EndOfStream(),
    ]


@settings(max_examples=300)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(min_value=0), max_size=5))
def test_random_bytes_raise_only_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    for payload in (data, HEADER_CASES[0][2] + data, TABLE_FLV[:40] + data):
        with contextlib.suppress(RemoteProtocolError):
            read_all(split_at(payload, cuts))


@settings(max_examples=200)
@given(
    tags=st.lists(
        st.tuples(
            st.sampled_from([8, 9, 18]),
            st.integers(min_value=0, max_value=2**32 - 1),
            st.binary(max_size=40),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_writer_reader_round_trip(tags: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    writer = flv.FlvTagWriter(has_audio=True, has_video=False)
    events = [flv.TagReceived(tag_type=t, timestamp_ms=ts, body=b) for t, ts, b in tags]
    data = writer.header() + b"".join(writer.send(e) for e in events)
    assert read_all(split_at(data, cuts)) == [
        flv.FlvHeaderReceived(has_audio=True, has_video=False, version=1),
        *events,
        flv.EndOfStream(),
    ]


# --------------------------------------------------------------------------- describe_tag


@pytest.mark.parametrize(("tag_type", "body", "expected"), DESCRIBE_CASES)
def test_describe_tag(tag_type: int, body: bytes, expected: flv.TagInfo) -> None:
    assert flv.describe_tag(tag_type, body) == expected


@pytest.mark.parametrize(("tag_type", "body", "message"), DESCRIBE_ERRORS)
def test_describe_tag_rejects_short_or_unknown(tag_type: int, body: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        flv.describe_tag(tag_type, body)


@pytest.mark.parametrize(("tag_type", "body", "expected"), DESCRIBE_CASES)
def test_describe_tag_prefixes_never_raise_other_errors(
    tag_type: int, body: bytes, expected: flv.TagInfo
) -> None:
    for end in range(len(body)):
        with contextlib.suppress(RemoteProtocolError):
            flv.describe_tag(tag_type, body[:end])


@settings(max_examples=500)
@given(tag_type=st.sampled_from([8, 9, 18]), body=st.binary(max_size=24))
def test_describe_tag_on_random_bodies_gives_info_or_remote_error(
    tag_type: int, body: bytes
) -> None:
    try:
        result = flv.describe_tag(tag_type, body)
    except RemoteProtocolError:
        return
    assert not (result.keyframe and result.sequence_header)
    assert -(2**23) <= result.composition_ms < 2**23


def test_fourcc_constants() -> None:
    assert flv.FOURCC_HVC1 == HVC1 == 0x68766331
    assert (flv.FOURCC_AVC1, flv.FOURCC_AV01, flv.FOURCC_VP09) == (AVC1, AV01, VP09)
    assert (flv.FOURCC_MP4A, flv.FOURCC_OPUS, flv.FOURCC_FLAC) == (MP4A, OPUS, FLAC)
    assert (flv.FOURCC_AC3, flv.FOURCC_EC3, flv.FOURCC_MP3) == (AC3, EC3, MP3)
    assert (flv.VIDEO_AVC, flv.VIDEO_HEVC, flv.AUDIO_AAC, flv.AUDIO_MP3) == (7, 12, 10, 2)
    with pytest.raises(LocalProtocolError):
        flv.fourcc(b"abc")


# --------------------------------------------------------------------------- ffmpeg golden


def test_ffmpeg_file_reads_back_with_sequence_headers_keyframe_and_b_frames() -> None:
    """tests/data/tiny.flv: ffmpeg libx264 with B-frames plus AAC (see README)."""
    events = read_all([TINY_FLV.read_bytes()])
    header = events[0]
    assert header == flv.FlvHeaderReceived(has_audio=True, has_video=True, version=1)
    assert events[-1] == flv.EndOfStream()
    tags = [e for e in events if isinstance(e, flv.TagReceived)]
    assert tags[0].tag_type == flv.TAG_SCRIPT
    assert flv.describe_tag(tags[0].tag_type, tags[0].body).codec == 0

    video = [(t, flv.describe_tag(t.tag_type, t.body)) for t in tags if t.tag_type == 9]
    audio = [(t, flv.describe_tag(t.tag_type, t.body)) for t in tags if t.tag_type == 8]
    assert video[0][1] == info(seq=True, codec=flv.VIDEO_AVC)
    assert video[1][1].keyframe and not video[1][1].sequence_header
    assert all(not i.keyframe for _, i in video[2:])
    assert any(i.composition_ms > 0 for _, i in video)  # B-frames reorder
    assert audio[0][1] == info(seq=True, codec=flv.AUDIO_AAC)
    assert all(i == info(codec=flv.AUDIO_AAC) for _, i in audio[1:])
    dts = [t.timestamp_ms for t, _ in video]
    assert dts == sorted(dts)


def test_tag_header_struct_layout() -> None:
    """The hot-path packer lays out type/size, timestamp/extended, stream id in 11 bytes."""
    assert struct.calcsize(">IIHB") == flv.TAG_HEADER_SIZE


# --------------------------------------------------------------------------- ByteBuffer


def test_byte_buffer_rollback_returns_to_last_commit() -> None:
    buf = ByteBuffer()
    buf.append(b"\x00\x01abc")
    assert buf.unpack(struct.Struct(">H")) == (1,)
    assert buf.read(5) is None  # not enough: nothing consumed
    assert buf.uncommitted == 2
    buf.rollback()
    assert buf.peek(2) == b"\x00\x01"
    assert buf.skip(2)
    buf.commit()
    assert buf.read(3) == b"abc"
    buf.rollback()
    assert len(buf) == 3
    assert not buf.skip(4)
    assert buf.peek(-1) is None


def test_byte_buffer_compacts_consumed_bytes_and_keeps_the_rest() -> None:
    buf = ByteBuffer()
    data = bytes(range(256)) * 1024  # 256 KiB
    buf.append(data)
    pieces = []
    while (piece := buf.read(1000)) is not None:
        buf.commit()
        pieces.append(piece)
        buf.append(b"")
    pieces.append(buf.read(len(buf)) or b"")
    assert b"".join(pieces) == data


def test_byte_buffer_limit_counts_uncommitted_bytes() -> None:
    buf = ByteBuffer(max_size=4)
    buf.append(b"abc")
    buf.read(2)
    with pytest.raises(RemoteProtocolError, match="exceed the buffer limit \\(4\\)"):
        buf.append(b"de")  # the 2 read bytes are not committed yet
    buf.commit()
    buf.append(b"de")
    assert buf.read(3) == b"cde"
    with pytest.raises(LocalProtocolError):
        ByteBuffer(max_size=-1)
