"""The codec configuration the recorders read from Enhanced RTMP sequence headers and
frames: flv.video_packet, AV1 (av1C, OBUs, sequence header), VP9 (vpcC, keyframe header),
FLAC (STREAMINFO, dfLa) and the H.265 SPS. Case tables with exact bytes, round trips,
and truncation loops (every prefix parses or raises the module's error)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from rtmpd.codec import av1, flac, flv, hevc, vp9
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.mp4.demux import Mp4Demuxer

DATA = Path(__file__).parent.parent / "data"


def every_prefix(data: bytes) -> list[bytes]:
    return [data[:n] for n in range(len(data))]


# --------------------------------------------------------------------------- flv.video_packet

RECORD = b"\x01\x64\x00\x1f"
AV1C = b"\x81\x00\x0c\x00"

VIDEO_PACKETS = [
    # (body, codec, packet type, data)
    (b"\x17\x00\x00\x00\x00" + RECORD, flv.VIDEO_AVC, flv.VIDEO_PACKET_SEQUENCE_START, RECORD),
    (b"\x27\x01\x00\x00\x28NAL", flv.VIDEO_AVC, flv.VIDEO_PACKET_CODED_FRAMES, b"NAL"),
    (b"\x17\x02\x00\x00\x00", flv.VIDEO_AVC, flv.VIDEO_PACKET_SEQUENCE_END, b""),
    (b"\x1c\x01\x00\x00\x00NAL", flv.VIDEO_HEVC, flv.VIDEO_PACKET_CODED_FRAMES, b"NAL"),
    (b"\x90hvc1" + RECORD, flv.FOURCC_HVC1, flv.VIDEO_PACKET_SEQUENCE_START, RECORD),
    # hvc1 CodedFrames: the SI24 composition time is not data.
    (b"\x91hvc1\x00\x00\x50NAL", flv.FOURCC_HVC1, flv.VIDEO_PACKET_CODED_FRAMES, b"NAL"),
    (b"\xa3hvc1NAL", flv.FOURCC_HVC1, flv.VIDEO_PACKET_CODED_FRAMES_X, b"NAL"),
    (b"\x90av01" + AV1C, flv.FOURCC_AV01, flv.VIDEO_PACKET_SEQUENCE_START, AV1C),
    # av01 and vp09 CodedFrames have no composition time.
    (b"\x91av01\x12\x00", flv.FOURCC_AV01, flv.VIDEO_PACKET_CODED_FRAMES, b"\x12\x00"),
    (b"\xa1vp09\x86", flv.FOURCC_VP09, flv.VIDEO_PACKET_CODED_FRAMES, b"\x86"),
    (b"\x92vp09", flv.FOURCC_VP09, flv.VIDEO_PACKET_SEQUENCE_END, b""),
    (b"\x94av01\x0a\x0bcolorInfo", flv.FOURCC_AV01, flv.VIDEO_PACKET_METADATA,
     b"\x0a\x0bcolorInfo"),
    # Multitrack, one track: AvMultitrackType 0 | CodedFrames, FourCC, trackId.
    (b"\x96\x01av01\x00TU", flv.FOURCC_AV01, flv.VIDEO_PACKET_CODED_FRAMES, b"TU"),
    # Many tracks: the first track's data only, by its size.
    (b"\x96\x11vp09\x00\x00\x00\x03abc\x01\x00\x00\x02de", flv.FOURCC_VP09,
     flv.VIDEO_PACKET_CODED_FRAMES, b"abc"),
    # ModEx: one byte of modifier data, then ModExType 0 | CodedFrames.
    (b"\x97\x00\xaa\x01av01TU", flv.FOURCC_AV01, flv.VIDEO_PACKET_CODED_FRAMES, b"TU"),
    # Command frames and codecs without packet types carry no picture.
    (b"\x57\x00", flv.VIDEO_AVC, flv.VIDEO_PACKET_METADATA, b""),
    (b"\xd1av01", 0, flv.VIDEO_PACKET_METADATA, b""),
    (b"\x12xyz", flv.VIDEO_H263, flv.VIDEO_PACKET_METADATA, b""),
]


@pytest.mark.parametrize(("body", "codec", "packet_type", "data"), VIDEO_PACKETS)
def test_video_packet_finds_the_codec_data_after_every_header_form(
    body: bytes, codec: int, packet_type: int, data: bytes
) -> None:
    packet = flv.video_packet(body)
    assert (packet.codec, packet.packet_type, packet.data) == (codec, packet_type, data)
    coded = packet_type in (flv.VIDEO_PACKET_CODED_FRAMES, flv.VIDEO_PACKET_CODED_FRAMES_X)
    assert packet.coded_frames is coded
    assert packet.sequence_start is (packet_type == flv.VIDEO_PACKET_SEQUENCE_START)


@pytest.mark.parametrize(("body", "codec", "track_id", "data"), [
    # ManyTracks: the default track (trackId 0) even when it is not first.
    (b"\x96\x11vp09\x01\x00\x00\x02ab\x00\x00\x00\x03cde", flv.FOURCC_VP09, 0, b"cde"),
    # ManyTracksManyCodecs: each track has its FourCC; the default track's is taken.
    (b"\x96\x21av01\x01\x00\x00\x01xvp09\x00\x00\x00\x02yz", flv.FOURCC_VP09, 0, b"yz"),
    # No default track: the first, with its trackId, so a recorder can leave it out.
    (b"\x96\x11vp09\x01\x00\x00\x01a\x02\x00\x00\x01b", flv.FOURCC_VP09, 1, b"a"),
    (b"\x96\x01av01\x02TU", flv.FOURCC_AV01, 2, b"TU"),
])
def test_multitrack_video_and_audio_give_the_default_track(
    body: bytes, codec: int, track_id: int, data: bytes
) -> None:
    packet = flv.video_packet(body)
    assert (packet.codec, packet.track_id, packet.data) == (codec, track_id, data)
    # The same layout as audio: ExHeader SoundFormat 9 | Multitrack 5.
    audio = flv.audio_packet(b"\x95" + body[1:])
    assert (audio.codec, audio.track_id, audio.data) == (codec, track_id, data)


@pytest.mark.parametrize(("body", "message"), [
    (b"", "empty video tag body"),
    (b"\x17\x01\x00", "AVC/HEVC video body of 3 bytes is shorter than its 5-byte header"),
    (b"\x91av0", "Enhanced RTMP video body of 4 bytes is shorter than its 5-byte header"),
    (b"\x91hvc1\x00", "shorter than its 8-byte header"),
    (b"\x96\x11vp09\x00\x00\x00\x09abc", "Enhanced RTMP video track body of 13 bytes"),
])
def test_video_packet_names_what_is_missing(body: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message.replace("(", r"\(")):
        flv.video_packet(body)


@pytest.mark.parametrize("body", [b for b, *_ in VIDEO_PACKETS])
def test_video_packet_of_any_truncated_body_gives_a_packet_or_the_codec_error(
    body: bytes,
) -> None:
    for prefix in every_prefix(body):
        with contextlib.suppress(RemoteProtocolError):
            flv.video_packet(prefix)


# --------------------------------------------------------------------------- AV1

# A sequence header payload (AV1 5.5): profile 0, not reduced, no timing info, one
# operating point at seq_level_idx 8 (so a seq_tier bit), 10 + 9 bits of frame size:
# 640x360. Fields after the size are not read.
SEQUENCE_HEADER = bytes.fromhex("00000042627fb380")
SEQUENCE_OBU = b"\x0a\x08" + SEQUENCE_HEADER  # type 1, has_size_field, 8 bytes
TEMPORAL_DELIMITER = b"\x12\x00"  # type 2, size 0
FRAME_OBU = b"\x32\x03abc"  # type 6 (frame), 3 bytes
PADDING_OBU = b"\x7a\x02\x00\x00"  # type 15

AV1_RECORDS = [
    # (bytes, fields)
    (b"\x81\x08\x0c\x00", dict(seq_profile=0, seq_level_idx_0=8)),
    (b"\x81\x28\x4c\x00", dict(seq_profile=1, seq_level_idx_0=8, high_bitdepth=True,
                               chroma_subsampling_y=True, chroma_subsampling_x=True)),
    (b"\x81\x4d\xe1\x1a", dict(seq_profile=2, seq_level_idx_0=13, seq_tier_0=1,
                               high_bitdepth=True, twelve_bit=True, chroma_subsampling_x=False,
                               chroma_subsampling_y=False, chroma_sample_position=1,
                               initial_presentation_delay_minus_one=10)),
    (b"\x81\x08\x0c\x00" + SEQUENCE_OBU, dict(seq_profile=0, seq_level_idx_0=8,
                                              config_obus=SEQUENCE_OBU)),
]


@pytest.mark.parametrize(("data", "fields"), AV1_RECORDS)
def test_av1c_reads_and_writes_the_same_bytes(data: bytes, fields: dict[str, object]) -> None:
    record = av1.AV1CodecConfigurationRecord.parse(data)
    assert record == av1.AV1CodecConfigurationRecord(**fields)  # type: ignore[arg-type]
    assert bytes(record) == data


def test_av1c_gives_the_size_of_the_sequence_header_among_its_obus() -> None:
    record = av1.AV1CodecConfigurationRecord.parse(b"\x81\x08\x0c\x00" + SEQUENCE_OBU)
    assert record.sequence_header() == av1.SequenceHeader(
        seq_profile=0, max_frame_width=640, max_frame_height=360
    )
    assert av1.AV1CodecConfigurationRecord.parse(b"\x81\x08\x0c\x00").sequence_header() is None


@pytest.mark.parametrize(("data", "message"), [
    (b"\x81\x08\x0c", "av1C of 3 bytes is shorter than 4"),
    (b"\x01\x08\x0c\x00", "av1C marker/version byte 0x01, expected 0x81"),
    (b"\x82\x08\x0c\x00", "av1C marker/version byte 0x82, expected 0x81"),
])
def test_bad_av1c_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        av1.AV1CodecConfigurationRecord.parse(data)


def test_a_temporal_unit_becomes_a_sample_without_delimiter_or_padding() -> None:
    unit = TEMPORAL_DELIMITER + SEQUENCE_OBU + FRAME_OBU + PADDING_OBU
    assert [obu.obu_type for obu in av1.iter_obus(unit)] == [2, 1, 6, 15]
    assert av1.sample_data(unit) == SEQUENCE_OBU + FRAME_OBU
    assert av1.size_of_temporal_unit(unit) == (640, 360)
    assert av1.size_of_temporal_unit(TEMPORAL_DELIMITER + FRAME_OBU) is None


def test_obus_with_extension_headers_and_without_size_fields() -> None:
    # Extension flag (temporal/spatial ids) and a size; then one without a size running
    # to the end.
    unit = b"\x36\x10\x02xy" + b"\x30tail"
    obus = list(av1.iter_obus(unit))
    assert [(o.obu_type, o.payload) for o in obus] == [(6, b"xy"), (6, b"tail")]


@pytest.mark.parametrize(("data", "message"), [
    (b"\x92\x00", "obu_forbidden_bit"),
    (b"\x32\x05abc", "AV1 OBU at byte 0 of 5 bytes overruns the 5-byte data"),
    (b"\x32" + b"\x80" * 8 + b"\x00", "longer than MAX_LEB128_BYTES"),
    (b"\x32\x80", "obu_size truncated"),
    (b"\x36", "extension header truncated"),
])
def test_bad_obus_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        av1.sample_data(data)


def test_any_truncated_temporal_unit_or_av1c_parses_or_raises_the_codec_error() -> None:
    unit = TEMPORAL_DELIMITER + SEQUENCE_OBU + FRAME_OBU
    for prefix in every_prefix(unit):
        try:
            av1.sample_data(prefix)
            av1.size_of_temporal_unit(prefix)
        except RemoteProtocolError:
            pass
    for prefix in every_prefix(b"\x81\x08\x0c\x00" + SEQUENCE_OBU):
        with contextlib.suppress(RemoteProtocolError):
            av1.AV1CodecConfigurationRecord.parse(prefix).sequence_header()


def test_sequence_header_with_timing_and_decoder_model_info() -> None:
    from rtmpd.codec.bits import BitWriter

    w = BitWriter()
    w.bits(0, 3)
    w.bits(0, 2)  # still_picture, reduced_still_picture_header
    w.bits(1, 1)  # timing_info_present_flag
    w.bits(1001, 32)
    w.bits(30000, 32)
    w.bits(1, 1)  # equal_picture_interval
    w.bits(0b00101, 5)  # uvlc: two leading zeros, then 1, then 01 -> 4
    w.bits(1, 1)  # decoder_model_info_present_flag
    w.bits(4, 5)  # buffer_delay_length_minus_1: 5-bit delays
    w.bits(0, 32 + 5 + 5)
    w.bits(1, 1)  # initial_display_delay_present_flag
    w.bits(1, 5)  # two operating points
    for _ in range(2):
        w.bits(0, 12)
        w.bits(4, 5)  # seq_level_idx 4: no tier bit
        w.bits(1, 1)  # decoder_model_present_for_this_op
        w.bits(0, 5 + 5 + 1)
        w.bits(1, 1)  # initial_display_delay_present_for_this_op
        w.bits(3, 4)
    w.bits(11, 4)
    w.bits(10, 4)
    w.bits(1919, 12)
    w.bits(1079, 11)
    header = av1.parse_sequence_header(w.to_bytes())
    assert (header.max_frame_width, header.max_frame_height) == (1920, 1080)


# --------------------------------------------------------------------------- VP9

VPCC_RECORD = b"\x00\x1f\x82\x01\x01\x01\x00\x00"  # profile 0, level 3.1, 8-bit 4:2:0 colocated
VPCC_BOX = b"\x01\x00\x00\x00" + VPCC_RECORD


@pytest.mark.parametrize("data", [VPCC_RECORD, VPCC_BOX])
def test_vpcc_is_read_with_or_without_its_full_box_header(data: bytes) -> None:
    record = vp9.VPCodecConfigurationRecord.parse(data)
    assert record == vp9.VPCodecConfigurationRecord(
        profile=0, level=31, bit_depth=8, chroma_subsampling=1, video_full_range=False,
        colour_primaries=1, transfer_characteristics=1, matrix_coefficients=1,
    )
    assert bytes(record) == VPCC_RECORD
    assert record.box_payload() == VPCC_BOX


@pytest.mark.parametrize(("data", "message"), [
    (VPCC_RECORD[:7], "VP codec configuration of 7 bytes: expected 8, or 12"),
    (b"\x00\x00\x00\x00" + VPCC_RECORD, "vpcC full box header 00000000, expected version 1"),
    (VPCC_RECORD[:6] + b"\x00\x02", "codecInitializationDataSize 2"),
    (b"\x00\x1f\x92\x01\x01\x01\x00\x00", "vpcC bitDepth 9 is not 8, 10 or 12"),
])
def test_bad_vpcc_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        vp9.VPCodecConfigurationRecord.parse(data)


VP9_FRAMES = [
    # (uncompressed header, size)
    (bytes.fromhex("824983424013f00b30"), (320, 180)),  # profile 0, BT.601
    (bytes.fromhex("a2498342e077f04370"), (1920, 1080)),  # profile 1, sRGB
    (bytes.fromhex("924983422827f81678"), (1280, 720)),  # profile 2, 10/12-bit
    (b"\x86", None),  # an inter frame
    (b"\x88", None),  # show_existing_frame
]


@pytest.mark.parametrize(("frame", "size"), VP9_FRAMES)
def test_vp9_keyframe_header_gives_the_frame_size(
    frame: bytes, size: tuple[int, int] | None
) -> None:
    assert vp9.keyframe_size(frame + b"compressed") == size


@pytest.mark.parametrize(("frame", "message"), [
    (b"\x42", "frame_marker 1, expected 2"),
    (b"\x82\x49\x83\x43", "frame_sync_code 0x498343"),
])
def test_bad_vp9_headers_are_refused(frame: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        vp9.keyframe_size(frame)


def test_any_truncated_vp9_header_or_vpcc_parses_or_raises_the_codec_error() -> None:
    for frame, _ in VP9_FRAMES:
        for prefix in every_prefix(frame):
            with contextlib.suppress(RemoteProtocolError):
                vp9.keyframe_size(prefix)
    # Every prefix is refused, the 8-byte one too (as a bare record its bitDepth is 0).
    for prefix in every_prefix(VPCC_BOX):
        with pytest.raises(RemoteProtocolError):
            vp9.VPCodecConfigurationRecord.parse(prefix)


# --------------------------------------------------------------------------- FLAC

# Blocks of 4608, frames of 14..9000 bytes, 44.1 kHz, stereo, 16 bits, 123456 samples.
STREAMINFO = bytes.fromhex(
    "1200120000000e0023280ac442f00001e240" + "00" * 16
)
STREAMINFO_BLOCK = b"\x80\x00\x00\x22" + STREAMINFO  # last block, type 0, 34 bytes


def test_streaminfo_fields() -> None:
    info = flac.StreamInfo.parse(STREAMINFO)
    assert (info.sample_rate, info.channels, info.bits_per_sample, info.max_block_size) == (
        44100, 2, 16, 4608
    )
    assert info.dfla() == b"\x00\x00\x00\x00" + STREAMINFO_BLOCK


@pytest.mark.parametrize("data", [
    STREAMINFO,
    b"fLaC" + STREAMINFO_BLOCK,
    # A padding block before it, not last: walked over.
    b"fLaC\x01\x00\x00\x02\x00\x00" + STREAMINFO_BLOCK,
])
def test_streaminfo_is_read_bare_or_from_a_stream_header(data: bytes) -> None:
    assert flac.StreamInfo.parse(data).data == STREAMINFO


def test_dfla_round_trips() -> None:
    info = flac.StreamInfo.parse(STREAMINFO)
    assert flac.StreamInfo.parse_dfla(info.dfla()) == info


@pytest.mark.parametrize(("data", "dfla", "message"), [
    (STREAMINFO[:33], False, "FLAC sequence header of 33 bytes"),
    (STREAMINFO[:10] + b"\x00\x00\x02" + STREAMINFO[13:], False, "sample rate 0"),
    (b"fLaC\x80\x00\x00\x10" + bytes(16), False, "STREAMINFO of 16 bytes, expected 34"),
    (b"fLaC\x81\x00\x00\x00", False, "no STREAMINFO in the first 16 metadata blocks"),
    (b"fLaC" + b"\x01\x00\x00\x00" * 17, False, "MAX_METADATA_BLOCKS"),
    (b"\x01\x00\x00\x00" + STREAMINFO_BLOCK, True, "dfLa version 1 is not 0"),
    (b"\x00\x00\x00\x00\x80\x00\x00\x22" + STREAMINFO[:20], True,
     "dfLa: metadata block of 34 bytes, 20 left"),
])
def test_bad_flac_configuration_is_refused(data: bytes, dfla: bool, message: str) -> None:
    parse = flac.StreamInfo.parse_dfla if dfla else flac.StreamInfo.parse
    with pytest.raises(RemoteProtocolError, match=message):
        parse(data)


def test_any_truncated_flac_header_or_dfla_raises_the_codec_error() -> None:
    for data, parse in [
        (b"fLaC" + STREAMINFO_BLOCK, flac.StreamInfo.parse),
        (b"\x00\x00\x00\x00" + STREAMINFO_BLOCK, flac.StreamInfo.parse_dfla),
    ]:
        for prefix in every_prefix(data):
            with pytest.raises(RemoteProtocolError):
                parse(prefix)


def test_streaminfo_of_another_size_is_the_callers_mistake() -> None:
    with pytest.raises(LocalProtocolError):
        flac.StreamInfo(STREAMINFO[:20])


# --------------------------------------------------------------------------- H.265 SPS


def hevc_sps(name: str = "tiny_hevc") -> bytes:
    """The SPS of an x265 stream made by ffmpeg: 64x64 in tests/data/mp4/tiny_hevc.mp4,
    160x90 (coded as 160x96) in tests/data/ertmp/hevc_aac.flv."""
    if name == "tiny_hevc":
        data = (DATA / "mp4" / "tiny_hevc.mp4").read_bytes()
        (track,) = Mp4Demuxer(lambda o, n: data[o : o + n], len(data)).tracks
        record = track.decoder_config
    else:
        reader = flv.FlvReader()
        reader.receive_data((DATA / "ertmp" / f"{name}.flv").read_bytes())
        event = reader.next_event()
        while not (isinstance(event, flv.TagReceived) and event.body[:5] == b"\x90hvc1"):
            event = reader.next_event()
        record = event.body[5:]
    return hevc.HEVCDecoderConfigurationRecord.parse(record).sps[0]


@pytest.mark.parametrize(("name", "size"), [
    ("tiny_hevc", (64, 64, 64, 64)),
    # 90 rows are coded as 96 and the conformance window crops 3 chroma rows (6 luma).
    ("hevc_aac", (160, 90, 160, 96)),
])
def test_hevc_sps_gives_the_picture_size(name: str, size: tuple[int, int, int, int]) -> None:
    info = hevc.parse_sps(hevc_sps(name))
    assert (info.width, info.height, info.coded_width, info.coded_height) == size
    assert (info.profile_idc, info.chroma_format_idc) == (1, 1)


def test_any_truncated_hevc_sps_raises_the_codec_error() -> None:
    sps = hevc_sps()
    # The size is read by about byte 20; any shorter SPS ends inside what is read.
    for prefix in every_prefix(sps)[:18]:
        with pytest.raises(RemoteProtocolError):
            hevc.parse_sps(prefix)


def test_a_nal_unit_that_is_not_an_sps_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="type 34, expected 33"):
        hevc.parse_sps(b"\x44\x01\xc1")
