"""Bit reader/writer, H.264 (avcC, SPS, NAL framing) and H.265 (hvcC)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec import avc, flv, hevc
from rtmpd.codec.bits import BitReader, BitWriter
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

DATA = Path(__file__).resolve().parent.parent / "data"

# --------------------------------------------------------------------------- bits

# (kind, value) -> bit string (ISO/IEC 14496-10 Table 9-2 / 9-3)
EXP_GOLOMB_CASES = [
    ("ue", 0, "1"),
    ("ue", 1, "010"),
    ("ue", 2, "011"),
    ("ue", 3, "00100"),
    ("ue", 6, "00111"),
    ("ue", 7, "0001000"),
    ("ue", 2**32 - 2, "0" * 31 + "1" * 32),
    ("se", 0, "1"),
    ("se", 1, "010"),
    ("se", -1, "011"),
    ("se", 2, "00100"),
    ("se", -2, "00101"),
    ("se", 3, "00110"),
]


def bits_to_bytes(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


@pytest.mark.parametrize(("kind", "value", "bits"), EXP_GOLOMB_CASES)
def test_exp_golomb_encodes_to_exact_bits(kind: str, value: int, bits: str) -> None:
    writer = BitWriter()
    getattr(writer, kind)(value)
    assert writer.bit_count == len(bits)
    assert writer.to_bytes() == bits_to_bytes(bits)


@pytest.mark.parametrize(("kind", "value", "bits"), EXP_GOLOMB_CASES)
def test_exp_golomb_decodes_exact_bits(kind: str, value: int, bits: str) -> None:
    reader = BitReader(bits_to_bytes(bits))
    assert getattr(reader, kind)() == value
    assert reader.position == len(bits)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x01", b"\x02", b"\x00\x01\xff"])
def test_exp_golomb_truncated_raises_remote_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="truncated"):
        BitReader(data).ue()
    with pytest.raises(RemoteProtocolError, match="truncated"):
        BitReader(data).se()


def test_exp_golomb_with_too_many_leading_zeros_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="MAX_EXP_GOLOMB_LEADING_ZEROS"):
        BitReader(bytes(5) + b"\xff").ue()


def test_bit_reader_reads_fields_across_bytes_and_stops_at_end() -> None:
    reader = BitReader(b"\xa5\x0f", what="test")
    assert reader.bits(3) == 0b101
    assert reader.flag() is False
    assert reader.bits(8) == 0b01010000
    assert reader.bits_left == 4
    assert reader.bits(0) == 0
    with pytest.raises(RemoteProtocolError, match="truncated test: reading 5 bits at bit 12"):
        reader.bits(5)
    reader.skip(4)
    with pytest.raises(RemoteProtocolError):
        reader.flag()
    with pytest.raises(RemoteProtocolError):
        reader.skip(1)
    with pytest.raises(LocalProtocolError):
        reader.bits(-1)


def test_bit_reader_byte_align() -> None:
    reader = BitReader(b"\xff\x80")
    reader.skip(3)
    reader.byte_align()
    assert reader.position == 8
    reader.byte_align()
    assert reader.position == 8


def test_bit_writer_rejects_values_that_do_not_fit() -> None:
    writer = BitWriter()
    with pytest.raises(LocalProtocolError):
        writer.bits(4, 2)
    with pytest.raises(LocalProtocolError):
        writer.ue(-1)


FIELD = st.one_of(
    st.tuples(st.just("ue"), st.integers(min_value=0, max_value=2**32 - 2)),
    st.tuples(st.just("se"), st.integers(min_value=-(2**31) + 1, max_value=2**31 - 1)),
    st.integers(min_value=1, max_value=40).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=2**n - 1))
    ),
)


@given(fields=st.lists(FIELD, max_size=20))
def test_bit_writer_reader_round_trip(fields: list[tuple[object, int]]) -> None:
    writer = BitWriter()
    for kind, value in fields:
        if isinstance(kind, int):
            writer.bits(value, kind)
        else:
            getattr(writer, str(kind))(value)
    reader = BitReader(writer.to_bytes())
    for kind, value in fields:
        got = reader.bits(kind) if isinstance(kind, int) else getattr(reader, str(kind))()
        assert got == value
    assert reader.position == writer.bit_count


@given(data=st.binary(max_size=16), ops=st.lists(st.sampled_from(["ue", "se", "flag"])))
def test_bit_reader_on_random_bytes_raises_only_remote_errors(data: bytes, ops: list[str]) -> None:
    reader = BitReader(data)
    with contextlib.suppress(RemoteProtocolError):
        for op in ops:
            getattr(reader, op)()


# --------------------------------------------------------------------------- NAL framing


def add_emulation_prevention(rbsp: bytes) -> bytes:
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


@pytest.mark.parametrize(
    ("nal", "rbsp"),
    [
        (b"\x00\x00\x03\x01", b"\x00\x00\x01"),
        (b"\x67\x00\x00\x03\x00\x00\x03\x03", b"\x67\x00\x00\x00\x00\x03"),
        (b"\x00\x00\x04", b"\x00\x00\x04"),
        (b"", b""),
    ],
)
def test_remove_emulation_prevention(nal: bytes, rbsp: bytes) -> None:
    assert avc.remove_emulation_prevention(nal) == rbsp


@given(st.binary(max_size=64))
def test_emulation_prevention_round_trip(rbsp: bytes) -> None:
    assert avc.remove_emulation_prevention(add_emulation_prevention(rbsp)) == rbsp


# (length_size, nal units) -> length-prefixed bytes
LENGTH_PREFIXED_CASES = [
    (4, [b"\x65\x88", b"\x06\x05"], b"\x00\x00\x00\x02\x65\x88\x00\x00\x00\x02\x06\x05"),
    (2, [b"\x41\x9a\x01"], b"\x00\x03\x41\x9a\x01"),
    (1, [b"\x09\xf0", b"\x67"], b"\x02\x09\xf0\x01\x67"),
    (4, [], b""),
]


@pytest.mark.parametrize(("length_size", "nals", "data"), LENGTH_PREFIXED_CASES)
def test_length_prefixed_round_trip(length_size: int, nals: list[bytes], data: bytes) -> None:
    assert avc.to_length_prefixed(nals, length_size) == data
    assert avc.split_length_prefixed(data, length_size) == nals


@pytest.mark.parametrize(("length_size", "nals", "data"), LENGTH_PREFIXED_CASES)
def test_length_prefixed_prefixes_raise_only_remote_errors(
    length_size: int, nals: list[bytes], data: bytes
) -> None:
    for end in range(len(data)):
        try:
            got = avc.split_length_prefixed(data[:end], length_size)
        except RemoteProtocolError:
            continue
        assert got == nals[: len(got)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x05\x65", "NAL unit of 5 bytes overruns the sample"),
        (b"\x00\x00\x00\x01\x65\x00\x00", "truncated NAL length"),
        (b"\xff\xff\xff\xff", "overruns"),
        (b"\x00\x00\x00\x00" * 1025, "MAX_NAL_UNITS_PER_SAMPLE"),
    ],
)
def test_split_length_prefixed_rejects_overruns(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        avc.split_length_prefixed(data, 4)


def test_split_length_prefixed_rejects_bad_length_size() -> None:
    with pytest.raises(LocalProtocolError):
        avc.split_length_prefixed(b"", 3)
    with pytest.raises(LocalProtocolError):
        avc.to_length_prefixed([bytes(256)], 1)


def test_zero_length_nal_units_are_dropped() -> None:
    assert avc.split_length_prefixed(b"\x00\x00\x00\x01\x65", 2) == [b"\x65"]


@given(nals=st.lists(st.binary(min_size=1, max_size=30), max_size=8))
def test_length_prefixed_random_round_trip(nals: list[bytes]) -> None:
    assert avc.split_length_prefixed(avc.to_length_prefixed(nals), 4) == nals


def test_to_annexb_and_back() -> None:
    nals = [b"\x09\xf0", b"\x67\x64\x00\x0a", b"\x68\xeb", b"\x65\x88\x84"]
    data = avc.to_annexb(nals)
    assert data == (
        b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01\x67\x64\x00\x0a"
        b"\x00\x00\x00\x01\x68\xeb\x00\x00\x00\x01\x65\x88\x84"
    )
    assert avc.split_annexb(data) == nals
    # 3-byte start codes and leading junk work too.
    assert avc.split_annexb(b"junk\x00\x00\x01\x09\xf0\x00\x00\x01\x65") == [b"\x09\xf0", b"\x65"]


@given(nals=st.lists(st.binary(min_size=1, max_size=30), max_size=8))
def test_annexb_round_trip_of_escaped_nal_units(nals: list[bytes]) -> None:
    # Real NAL units are escaped and never end in a zero byte.
    escaped = [add_emulation_prevention(n + b"\x80") for n in nals]
    assert avc.split_annexb(avc.to_annexb(escaped)) == escaped


def test_nal_type_helpers() -> None:
    assert avc.nal_type(b"\x65") == avc.NAL_IDR == 5
    assert avc.nal_type(b"\x67") == avc.NAL_SPS
    assert avc.nal_type(b"\x68") == avc.NAL_PPS
    assert avc.nal_type(b"\x06") == avc.NAL_SEI
    assert avc.nal_type(b"\x09") == avc.NAL_AUD
    assert avc.is_keyframe_nal(b"\x65\x88")
    assert not avc.is_keyframe_nal(b"\x41\x9a")
    with pytest.raises(RemoteProtocolError):
        avc.nal_type(b"")


# --------------------------------------------------------------------------- avcC

SPS_BASELINE = bytes.fromhex("6742c00ad9047b011000000300100000030140f1226480")
PPS_BASELINE = bytes.fromhex("68cb83cb20")
SPS_HIGH = bytes.fromhex("6764000aacd942847e5c0440000003004000000503c48965 80".replace(" ", ""))
PPS_HIGH = bytes.fromhex("68ebe3cb22c0")

# record -> exact bytes
AVCC_CASES = [
    (
        avc.AVCDecoderConfigurationRecord(
            profile=66,
            compatibility=0xC0,
            level=10,
            length_size=4,
            sps=(SPS_BASELINE,),
            pps=(PPS_BASELINE,),
        ),
        b"\x01\x42\xc0\x0a\xff\xe1\x00\x17" + SPS_BASELINE + b"\x01\x00\x05" + PPS_BASELINE,
    ),
    # From tests/data/tiny.flv (libx264 High): ffmpeg writes the high-profile extension.
    (
        avc.AVCDecoderConfigurationRecord(
            profile=100,
            compatibility=0,
            level=10,
            length_size=4,
            sps=(SPS_HIGH,),
            pps=(PPS_HIGH,),
            chroma_format=1,
            bit_depth_luma=8,
            bit_depth_chroma=8,
        ),
        bytes.fromhex(
            "0164000affe100196764000aacd942847e5c0440000003004000000503c489658001000668ebe3cb22c0"
            "fdf8f800"
        ),
    ),
    # 2-byte lengths, two SPS, no PPS, 10-bit 4:2:2 with one SPS extension.
    (
        avc.AVCDecoderConfigurationRecord(
            profile=122,
            compatibility=0,
            level=31,
            length_size=2,
            sps=(b"\x67\x7a", b"\x67\x7a\x01"),
            pps=(),
            chroma_format=2,
            bit_depth_luma=10,
            bit_depth_chroma=10,
            sps_ext=(b"\x6d\x00",),
        ),
        b"\x01\x7a\x00\x1f\xfd\xe2\x00\x02\x67\x7a\x00\x03\x67\x7a\x01\x00"
        b"\xfe\xfa\xfa\x01\x00\x02\x6d\x00",
    ),
]


@pytest.mark.parametrize(("record", "data"), AVCC_CASES)
def test_avcc_encodes_to_exact_bytes(
    record: avc.AVCDecoderConfigurationRecord, data: bytes
) -> None:
    assert bytes(record) == data


@pytest.mark.parametrize(("record", "data"), AVCC_CASES)
def test_avcc_decodes_exact_bytes(record: avc.AVCDecoderConfigurationRecord, data: bytes) -> None:
    assert avc.AVCDecoderConfigurationRecord.parse(data) == record


@pytest.mark.parametrize(("record", "data"), AVCC_CASES)
def test_avcc_prefixes_raise_only_remote_errors(
    record: avc.AVCDecoderConfigurationRecord, data: bytes
) -> None:
    for end in range(len(data)):
        try:
            got = avc.AVCDecoderConfigurationRecord.parse(data[:end])
        except RemoteProtocolError:
            continue
        # Only dropping the optional high-profile extension leaves a valid record.
        assert got.sps == record.sps
        assert got.pps == record.pps
        assert got.chroma_format is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x02\x64\x00\x0a\xff\xe0\x00", "configurationVersion 2"),
        (b"\x01\x64\x00\x0a\xfe\xe0\x00", "3-byte lengths"),
        (b"\x01\x64\x00\x0a\xff\xe1\x00\x05\x67", "SPS of 5 bytes"),
        (b"\x01\x64\x00\x0a\xff\xe0", "truncated avcC"),
    ],
)
def test_avcc_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        avc.AVCDecoderConfigurationRecord.parse(data)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_avcc_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        record = avc.AVCDecoderConfigurationRecord.parse(data)
        assert avc.AVCDecoderConfigurationRecord.parse(bytes(record)) == record


def test_avcc_from_parameter_sets_and_codec_string() -> None:
    record = avc.AVCDecoderConfigurationRecord.from_parameter_sets([SPS_HIGH], [PPS_HIGH])
    assert (record.profile, record.compatibility, record.level) == (100, 0, 10)
    assert record.codec_string == "avc1.64000a"
    assert avc.AVCDecoderConfigurationRecord.parse(bytes(record)) == record
    with pytest.raises(RemoteProtocolError):
        avc.AVCDecoderConfigurationRecord.from_parameter_sets([PPS_HIGH], [])


def test_avcc_validates_fields_when_built() -> None:
    with pytest.raises(LocalProtocolError):
        avc.AVCDecoderConfigurationRecord(profile=100, compatibility=0, level=10, length_size=3)
    with pytest.raises(LocalProtocolError):
        avc.AVCDecoderConfigurationRecord(profile=256, compatibility=0, level=10)
    with pytest.raises(LocalProtocolError):
        avc.AVCDecoderConfigurationRecord(
            profile=100, compatibility=0, level=10, sps=(bytes(70000),)
        )


# --------------------------------------------------------------------------- SPS

# SPS made by libx264 (ffmpeg 5.1), each with the command:
#   ffmpeg -f lavfi -i testsrc2=s=WxH:r=10 -frames:v 1 -c:v libx264 [opts] -f h264 out.h264
# and checked against ffprobe -show_entries stream=width,height,profile,pix_fmt,field_order.
# hex -> (width, height, profile_idc, chroma_format_idc, bit depth, frame_mbs_only, poc type)
SPS_CASES = [
    # s=160x120 (tests/data/tiny.flv): High, bottom crop of 8 rows.
    (SPS_HIGH.hex(), (160, 120, 100, 1, 8, True, 0)),
    # s=174x98: right and bottom cropping (crop units of 2 in 4:2:0).
    ("6764000aacd942cfea23011000000300100000030140f1225960", (174, 98, 100, 1, 8, True, 0)),
    # s=64x48 -pix_fmt yuv444p: High 4:4:4 Predictive.
    ("67f4000a919b288f6022000003000200000300281e244b2c", (64, 48, 244, 3, 8, True, 0)),
    # s=64x48 -pix_fmt yuv422p10le: High 4:2:2, 10-bit.
    ("677a000ab6cd9447b011000003000100000300140f122596", (64, 48, 122, 2, 10, True, 0)),
    # s=176x144 -flags +ildct+ilme -x264-params tff=1: field coding.
    ("67640015acd942cafcb80880000003008000000a0f8a14cb", (176, 144, 100, 1, 8, False, 0)),
    # s=64x48 -profile:v baseline: Constrained Baseline, pic_order_cnt_type 2.
    (SPS_BASELINE.hex(), (64, 48, 66, 1, 8, True, 2)),
    # s=64x48 -pix_fmt gray: monochrome (chroma_format_idc 0).
    ("6764000af36511ec05b2000003000200000300281e244b2c", (64, 48, 100, 0, 8, True, 0)),
]


def sps_facts(info: avc.SpsInfo) -> tuple[int, int, int, int, int, bool, int]:
    return (
        info.width,
        info.height,
        info.profile_idc,
        info.chroma_format_idc,
        info.bit_depth_luma,
        info.frame_mbs_only,
        info.pic_order_cnt_type,
    )


@pytest.mark.parametrize(("hex_sps", "facts"), SPS_CASES)
def test_parse_sps_of_libx264_streams(
    hex_sps: str, facts: tuple[int, int, int, int, int, bool, int]
) -> None:
    assert sps_facts(avc.parse_sps(bytes.fromhex(hex_sps))) == facts


@pytest.mark.parametrize(("hex_sps", "facts"), SPS_CASES)
def test_sps_prefixes_raise_only_remote_errors(
    hex_sps: str, facts: tuple[int, int, int, int, int, bool, int]
) -> None:
    sps = bytes.fromhex(hex_sps)
    for end in range(len(sps)):
        try:
            info = avc.parse_sps(sps[:end])
        except RemoteProtocolError:
            continue
        assert sps_facts(info) == facts  # only VUI was cut


def build_sps(*, chroma_format_idc: int, separate_colour_plane: bool) -> bytes:
    """A High 4:4:4 / High SPS with scaling lists, POC type 1, fields and cropping."""
    w = BitWriter()
    w.bits(244 if chroma_format_idc == 3 else 100, 8)  # profile_idc
    w.bits(0, 8)  # constraint flags
    w.bits(40, 8)  # level_idc
    w.ue(1)  # seq_parameter_set_id
    w.ue(chroma_format_idc)
    if chroma_format_idc == 3:
        w.flag(separate_colour_plane)
    w.ue(2)  # bit_depth_luma_minus8
    w.ue(2)  # bit_depth_chroma_minus8
    w.flag(False)  # qpprime_y_zero_transform_bypass_flag
    w.flag(True)  # seq_scaling_matrix_present_flag
    for i in range(12 if chroma_format_idc == 3 else 8):
        present = i in (0, 6, 9)
        w.flag(present)
        if not present:
            continue
        if i == 0:
            w.se(-8)  # nextScale 0: useDefaultScalingMatrixFlag, list ends
        else:
            w.se(1)  # 9, then 63 more deltas of 0 (nextScale never 0)
            for _ in range(63):
                w.se(0)
    w.ue(3)  # log2_max_frame_num_minus4
    w.ue(1)  # pic_order_cnt_type
    w.flag(False)  # delta_pic_order_always_zero_flag
    w.se(-2)  # offset_for_non_ref_pic
    w.se(1)  # offset_for_top_to_bottom_field
    w.ue(2)  # num_ref_frames_in_pic_order_cnt_cycle
    w.se(3)
    w.se(-3)
    w.ue(2)  # max_num_ref_frames
    w.flag(False)  # gaps_in_frame_num_value_allowed_flag
    w.ue(39)  # pic_width_in_mbs_minus1: 640
    w.ue(22)  # pic_height_in_map_units_minus1: 23 field MB rows = 736 lines
    w.flag(False)  # frame_mbs_only_flag
    w.flag(True)  # mb_adaptive_frame_field_flag
    w.flag(True)  # direct_8x8_inference_flag
    w.flag(True)  # frame_cropping_flag
    for offset in (1, 3, 0, 4):
        w.ue(offset)
    w.flag(False)  # vui_parameters_present_flag
    w.flag(True)  # rbsp_stop_one_bit
    return b"\x67" + add_emulation_prevention(w.to_bytes())


@pytest.mark.parametrize(
    ("chroma_format_idc", "separate", "size"),
    [
        # 4:2:0 fields: crop units 2 x (2 * 2).
        (1, False, (640 - 2 * 4, 736 - 4 * 4)),
        # 4:4:4: crop units 1 x 2; twelve scaling lists.
        (3, False, (640 - 4, 736 - 2 * 4)),
        # separate colour planes: ChromaArrayType 0, crop units 1 x 2.
        (3, True, (640 - 4, 736 - 2 * 4)),
    ],
)
def test_parse_sps_with_scaling_lists_poc_type_1_fields_and_cropping(
    chroma_format_idc: int, separate: bool, size: tuple[int, int]
) -> None:
    info = avc.parse_sps(
        build_sps(chroma_format_idc=chroma_format_idc, separate_colour_plane=separate)
    )
    assert (info.width, info.height) == size
    assert info.seq_parameter_set_id == 1
    assert info.chroma_format_idc == chroma_format_idc
    assert (info.bit_depth_luma, info.bit_depth_chroma) == (10, 10)
    assert info.log2_max_frame_num == 7
    assert info.pic_order_cnt_type == 1
    assert info.max_num_ref_frames == 2
    assert not info.frame_mbs_only
    assert (info.crop_left, info.crop_right, info.crop_top, info.crop_bottom) == (1, 3, 0, 4)
    assert not info.vui_parameters_present


@pytest.mark.parametrize(
    ("sps", "message"),
    [
        (b"", "not an SPS"),
        (b"\x68\x64", "not an SPS"),
        (b"\x67\x64\x00", "truncated SPS"),
        (b"\x67\x64\x00\x0a" + bytes(8), "leading zeros"),
        # sps id 0 (ue 1), chroma_format_idc 4 (ue 00101)
        (b"\x67\x64\x00\x0a\x94", "chroma_format_idc 4"),
    ],
)
def test_parse_sps_rejects_malformed(sps: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        avc.parse_sps(sps)


def test_parse_sps_rejects_cropping_everything() -> None:
    w = BitWriter()
    for value in (66, 0, 10):
        w.bits(value, 8)
    w.ue(0)  # sps id
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(2)  # poc type 2
    w.ue(1)  # max_num_ref_frames
    w.flag(False)
    w.ue(0)  # 1 MB wide
    w.ue(0)  # 1 MB high
    w.flag(True)  # frame_mbs_only
    w.flag(True)
    w.flag(True)  # cropping
    for offset in (8, 0, 0, 0):  # 16 pixels off a 16-pixel picture
        w.ue(offset)
    w.flag(False)
    with pytest.raises(RemoteProtocolError, match="cropping leaves a 0x16 picture"):
        avc.parse_sps(b"\x67" + w.to_bytes())


@settings(max_examples=500)
@given(st.binary(max_size=40))
def test_parse_sps_of_random_bytes_raises_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        info = avc.parse_sps(b"\x67" + data)
        assert info.width > 0 and info.height > 0


# --------------------------------------------------------------------------- golden FLV


def read_tags(path: Path) -> list[flv.TagReceived]:
    reader = flv.FlvReader()
    reader.receive_data(path.read_bytes())
    reader.receive_data(b"")
    tags = []
    while not isinstance(event := reader.next_event(), flv.EndOfStream):
        if isinstance(event, flv.TagReceived):
            tags.append(event)
    return tags


def test_ffmpeg_flv_sequence_header_sps_and_keyframe_nal_units() -> None:
    video = [t for t in read_tags(DATA / "tiny.flv") if t.tag_type == flv.TAG_VIDEO]
    record = avc.AVCDecoderConfigurationRecord.parse(video[0].body[5:])
    assert bytes(record) == video[0].body[5:]
    assert record.codec_string == "avc1.64000a"
    info = avc.parse_sps(record.sps[0])
    assert (info.width, info.height, info.profile_idc, info.level_idc) == (160, 120, 100, 10)
    keyframe_nals = avc.split_length_prefixed(video[1].body[5:], record.length_size)
    assert avc.NAL_IDR in [avc.nal_type(n) for n in keyframe_nals]
    for tag in video[2:-1]:
        nals = avc.split_length_prefixed(tag.body[5:], record.length_size)
        assert avc.NAL_IDR not in [avc.nal_type(n) for n in nals]
    annexb = avc.to_annexb([*record.sps, *record.pps, *keyframe_nals])
    assert avc.split_annexb(annexb) == [*record.sps, *record.pps, *keyframe_nals]


# --------------------------------------------------------------------------- HEVC

# hvcC of one libx265 frame (ffmpeg 5.1, libx265 3.5):
#   ffmpeg -f lavfi -i testsrc2=s=64x48:r=10 -frames:v 1 -c:v libx265 \
#       -x265-params log-level=error:info=0 -tag:v hvc1 -f mp4 h.mp4
# (the payload of the hvcC box; ffprobe: hevc Main, 64x48, yuv420p)
HVCC_X265 = bytes.fromhex(
    "0101600000009000000000001ef000fcfdf8f800000f03"
    "a00001001840010c01ffff01600000030090000003000003001e959809"
    "a10001002942010101600000030090000003000003001ea02083165959ae4caf0168080000030008000003005040"
    "a2000100064401c173d089"
)


def test_hvcc_of_x265_parses_and_round_trips() -> None:
    record = hevc.HEVCDecoderConfigurationRecord.parse(HVCC_X265)
    assert bytes(record) == HVCC_X265
    assert [hevc.nal_type(n) for n in (*record.vps, *record.sps, *record.pps)] == [32, 33, 34]
    assert all(array.array_completeness for array in record.arrays)
    assert (record.profile_idc, record.level_idc, record.tier_flag) == (1, 30, False)
    assert record.profile_compatibility_flags == 0x60000000
    assert (record.chroma_format, record.bit_depth_luma, record.bit_depth_chroma) == (1, 8, 8)
    assert record.length_size == 4
    assert record.codec_string == "hvc1.1.6.L30.90"


def test_hvcc_prefixes_raise_only_remote_errors() -> None:
    for end in range(len(HVCC_X265)):
        with pytest.raises(RemoteProtocolError, match="truncated hvcC"):
            hevc.HEVCDecoderConfigurationRecord.parse(HVCC_X265[:end])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x02" + HVCC_X265[1:], "configurationVersion 2"),
        (HVCC_X265[:21] + b"\x0e" + HVCC_X265[22:], "3-byte lengths"),
    ],
)
def test_hvcc_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        hevc.HEVCDecoderConfigurationRecord.parse(data)


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_hvcc_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        record = hevc.HEVCDecoderConfigurationRecord.parse(b"\x01" + data)
        assert hevc.HEVCDecoderConfigurationRecord.parse(bytes(record)) == record


def test_hvcc_from_fields_matches_x265_header_fields() -> None:
    x265 = hevc.HEVCDecoderConfigurationRecord.parse(HVCC_X265)
    built = hevc.HEVCDecoderConfigurationRecord.from_fields(
        profile_idc=1,
        level_idc=30,
        profile_compatibility_flags=0x60000000,
        constraint_indicator_flags=bytes.fromhex("900000000000"),
        arrays=x265.arrays,
    )
    assert hevc.HEVCDecoderConfigurationRecord.parse(bytes(built)) == built
    assert built.codec_string == x265.codec_string
    assert (built.vps, built.sps, built.pps) == (x265.vps, x265.sps, x265.pps)
    assert built.length_size == 4
    assert bytes(built)[1:13] == HVCC_X265[1:13]


def test_hevc_nal_types() -> None:
    assert hevc.nal_type(b"\x40\x01") == hevc.NAL_VPS
    assert hevc.nal_type(b"\x42\x01") == hevc.NAL_SPS
    assert hevc.nal_type(b"\x44\x01") == hevc.NAL_PPS
    assert hevc.nal_type(b"\x26\x01") == hevc.NAL_IDR_W_RADL
    assert hevc.nal_type(b"\x2a\x01") == hevc.NAL_CRA
    assert hevc.is_irap(hevc.NAL_IDR_W_RADL)
    assert hevc.is_irap(hevc.NAL_CRA)
    assert not hevc.is_irap(hevc.NAL_TRAIL_R)
    assert not hevc.is_irap(hevc.NAL_VPS)
    with pytest.raises(RemoteProtocolError):
        hevc.nal_type(b"")
