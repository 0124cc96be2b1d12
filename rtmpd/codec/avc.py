"""H.264 / AVC: decoder configuration record, SPS facts, NAL unit framing.

* :class:`AVCDecoderConfigurationRecord` (ISO/IEC 14496-15 §5.3.3.1) is the
  body of an FLV AVC sequence header after its 5-byte video tag header, and
  the payload of the MP4 ``avcC`` box.
* :func:`parse_sps` reads the facts a muxer needs from a sequence parameter
  set (ISO/IEC 14496-10 §7.3.2.1.1): size, profile, level.
* FLV / MP4 samples carry NAL units with a big-endian length prefix
  (:func:`split_length_prefixed`); MPEG-TS wants Annex B start codes
  (:func:`to_annexb`).

Every length read here is checked against the bytes that contain it, so
nothing is allocated beyond the input: the input itself is bounded by the
FLV / RTMP message limits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rtmpd.codec.bits import BitReader
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

# nal_unit_type (ISO/IEC 14496-10 Table 7-1).
NAL_SLICE = 1
NAL_SLICE_DPA = 2
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_END_OF_SEQUENCE = 10
NAL_END_OF_STREAM = 11
NAL_FILLER = 12
NAL_SPS_EXT = 13

START_CODE = b"\x00\x00\x00\x01"

# A sample (one access unit) rarely has more than a few dozen NAL units:
# slices (one per macroblock row at most, 135 at 4K), SEI, AUD, parameter
# sets. The cap bounds the list a stream of tiny or empty NAL units could
# make us build from one 8 MiB message.
MAX_NAL_UNITS_PER_SAMPLE = 1024

# profile_idc values whose SPS carries chroma_format_idc, bit depths and
# scaling matrices (ISO/IEC 14496-10 §7.3.2.1.1).
HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))


def nal_type(nal: bytes) -> int:
    """nal_unit_type of an H.264 NAL unit (low 5 bits of its first byte)."""
    if not nal:
        raise RemoteProtocolError("empty H.264 NAL unit")
    return nal[0] & 0x1F


def is_keyframe_nal(nal: bytes) -> bool:
    """Whether the NAL unit is a slice of an IDR picture."""
    return nal_type(nal) == NAL_IDR


def remove_emulation_prevention(nal: bytes) -> bytes:
    """The RBSP of a NAL unit payload: drop each 0x03 that follows 0x00 0x00."""
    if b"\x00\x00\x03" not in nal:
        return nal
    out = bytearray()
    start = 0
    while True:
        i = nal.find(b"\x00\x00\x03", start)
        if i < 0:
            out += nal[start:]
            return bytes(out)
        out += nal[start : i + 2]
        start = i + 3


# --------------------------------------------------------------------------- NAL framing


def split_length_prefixed(data: bytes, length_size: int) -> list[bytes]:
    """NAL units of an AVCC/HVCC sample: each is preceded by its length.

    ``length_size`` is 1, 2 or 4 bytes (from the configuration record).
    Raises :class:`RemoteProtocolError` if a length overruns the data or
    there are more than ``MAX_NAL_UNITS_PER_SAMPLE`` units. Zero-length
    units are dropped.
    """
    if length_size not in (1, 2, 4):
        raise LocalProtocolError(f"NAL length size must be 1, 2 or 4, got {length_size}")
    nals: list[bytes] = []
    pos = 0
    end = len(data)
    count = 0
    while pos < end:
        if pos + length_size > end:
            raise RemoteProtocolError(
                f"truncated NAL length: {end - pos} bytes left, {length_size} needed"
            )
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size > end - pos:
            raise RemoteProtocolError(
                f"NAL unit of {size} bytes overruns the sample ({end - pos} bytes left)"
            )
        count += 1
        if count > MAX_NAL_UNITS_PER_SAMPLE:
            raise RemoteProtocolError(
                f"sample has more than {MAX_NAL_UNITS_PER_SAMPLE} NAL units "
                "(MAX_NAL_UNITS_PER_SAMPLE)"
            )
        if size:
            nals.append(data[pos : pos + size])
        pos += size
    return nals


def to_length_prefixed(nals: Iterable[bytes], length_size: int = 4) -> bytes:
    """An AVCC sample: each NAL unit preceded by its ``length_size``-byte length."""
    if length_size not in (1, 2, 4):
        raise LocalProtocolError(f"NAL length size must be 1, 2 or 4, got {length_size}")
    limit = 1 << (8 * length_size)
    parts: list[bytes] = []
    for nal in nals:
        if len(nal) >= limit:
            raise LocalProtocolError(
                f"NAL unit of {len(nal)} bytes does not fit a {length_size}-byte length"
            )
        parts.append(len(nal).to_bytes(length_size, "big"))
        parts.append(nal)
    return b"".join(parts)


def to_annexb(nals: Iterable[bytes]) -> bytes:
    """Annex B byte stream: each NAL unit preceded by a 4-byte start code."""
    parts: list[bytes] = []
    for nal in nals:
        parts.append(START_CODE)
        parts.append(nal)
    return b"".join(parts)


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (3- or 4-byte start codes).

    Trailing zero bytes before a start code belong to it, not to the NAL
    unit. Bytes before the first start code are ignored.
    """
    nals: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        nxt = data.find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        nal = data[start:end].rstrip(b"\x00") if nxt >= 0 else data[start:end]
        if nal:
            if len(nals) >= MAX_NAL_UNITS_PER_SAMPLE:
                raise RemoteProtocolError(
                    f"sample has more than {MAX_NAL_UNITS_PER_SAMPLE} NAL units "
                    "(MAX_NAL_UNITS_PER_SAMPLE)"
                )
            nals.append(nal)
        i = nxt
    return nals


# --------------------------------------------------------------------------- avcC


@dataclass(frozen=True, slots=True, kw_only=True)
class AVCDecoderConfigurationRecord:
    """ISO/IEC 14496-15 AVCDecoderConfigurationRecord::

        configurationVersion          u8 = 1
        AVCProfileIndication          u8    (profile_idc)
        profile_compatibility         u8    (constraint flags)
        AVCLevelIndication            u8    (level_idc)
        reserved '111111'b | lengthSizeMinusOne u2
        reserved '111'b | numOfSequenceParameterSets u5
          { sequenceParameterSetLength u16, sequenceParameterSetNALUnit }
        numOfPictureParameterSets     u8
          { pictureParameterSetLength u16, pictureParameterSetNALUnit }
        if profile in HIGH_PROFILES (optional; many muxers omit it):
          reserved '111111'b | chroma_format u2
          reserved '11111'b | bit_depth_luma_minus8 u3
          reserved '11111'b | bit_depth_chroma_minus8 u3
          numOfSequenceParameterSetExt u8
            { sequenceParameterSetExtLength u16, sequenceParameterSetExtNALUnit }

    ``chroma_format`` is None when the high-profile extension is absent.
    """

    profile: int
    compatibility: int
    level: int
    length_size: int = 4
    sps: tuple[bytes, ...] = ()
    pps: tuple[bytes, ...] = ()
    chroma_format: int | None = None
    bit_depth_luma: int = 8
    bit_depth_chroma: int = 8
    sps_ext: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        for name in ("profile", "compatibility", "level"):
            value = getattr(self, name)
            if not 0 <= value <= 255:
                raise LocalProtocolError(f"avcC {name} {value} is not a byte")
        if self.length_size not in (1, 2, 4):
            raise LocalProtocolError(f"avcC length_size {self.length_size} is not 1, 2 or 4")
        if len(self.sps) > 31 or len(self.pps) > 255 or len(self.sps_ext) > 255:
            raise LocalProtocolError("avcC holds at most 31 SPS, 255 PPS and 255 SPS ext")
        for nal in (*self.sps, *self.pps, *self.sps_ext):
            if len(nal) > 0xFFFF:
                raise LocalProtocolError(f"avcC parameter set of {len(nal)} bytes > 65535")
        if self.chroma_format is not None and not (
            0 <= self.chroma_format <= 3
            and 8 <= self.bit_depth_luma <= 15
            and 8 <= self.bit_depth_chroma <= 15
        ):
            raise LocalProtocolError("avcC chroma format 0..3 and bit depths 8..15")

    @classmethod
    def parse(cls, data: bytes) -> AVCDecoderConfigurationRecord:
        """Decode a record; :class:`RemoteProtocolError` if malformed or truncated."""
        if len(data) < 7:
            raise RemoteProtocolError(f"truncated avcC: {len(data)} bytes, at least 7 needed")
        if data[0] != 1:
            raise RemoteProtocolError(f"avcC configurationVersion {data[0]}, expected 1")
        length_size = (data[4] & 0x03) + 1
        if length_size == 3:
            raise RemoteProtocolError("avcC lengthSizeMinusOne 2 (3-byte lengths) is invalid")
        sps, pos = _parameter_sets(data, 6, data[5] & 0x1F, "SPS")
        if pos >= len(data):
            raise RemoteProtocolError("truncated avcC: numOfPictureParameterSets missing")
        pps, pos = _parameter_sets(data, pos + 1, data[pos], "PPS")
        chroma_format: int | None = None
        bit_depth_luma = bit_depth_chroma = 8
        sps_ext: tuple[bytes, ...] = ()
        # The extension is only defined for high profiles; some muxers omit
        # it, and some leave trailing bytes after a baseline record.
        if data[1] in HIGH_PROFILES and len(data) - pos >= 4:
            chroma_format = data[pos] & 0x03
            bit_depth_luma = (data[pos + 1] & 0x07) + 8
            bit_depth_chroma = (data[pos + 2] & 0x07) + 8
            sps_ext, pos = _parameter_sets(data, pos + 4, data[pos + 3], "SPS extension")
        return cls(
            profile=data[1],
            compatibility=data[2],
            level=data[3],
            length_size=length_size,
            sps=sps,
            pps=pps,
            chroma_format=chroma_format,
            bit_depth_luma=bit_depth_luma,
            bit_depth_chroma=bit_depth_chroma,
            sps_ext=sps_ext,
        )

    @classmethod
    def from_parameter_sets(
        cls, sps: Iterable[bytes], pps: Iterable[bytes], *, length_size: int = 4
    ) -> AVCDecoderConfigurationRecord:
        """Build a record from SPS/PPS NAL units; profile and level from the first SPS."""
        sps_t, pps_t = tuple(sps), tuple(pps)
        if not sps_t or len(sps_t[0]) < 4 or nal_type(sps_t[0]) != NAL_SPS:
            raise RemoteProtocolError("avcC needs an SPS NAL unit of at least 4 bytes")
        first = sps_t[0]
        return cls(
            profile=first[1],
            compatibility=first[2],
            level=first[3],
            length_size=length_size,
            sps=sps_t,
            pps=pps_t,
        )

    def __bytes__(self) -> bytes:
        parts = [
            bytes(
                (
                    1,
                    self.profile,
                    self.compatibility,
                    self.level,
                    0xFC | (self.length_size - 1),
                    0xE0 | len(self.sps),
                )
            )
        ]
        _write_parameter_sets(parts, self.sps)
        parts.append(bytes((len(self.pps),)))
        _write_parameter_sets(parts, self.pps)
        if self.chroma_format is not None:
            parts.append(
                bytes(
                    (
                        0xFC | self.chroma_format,
                        0xF8 | (self.bit_depth_luma - 8),
                        0xF8 | (self.bit_depth_chroma - 8),
                        len(self.sps_ext),
                    )
                )
            )
            _write_parameter_sets(parts, self.sps_ext)
        return b"".join(parts)

    @property
    def codec_string(self) -> str:
        """RFC 6381 ``codecs`` value, e.g. ``avc1.64001f`` (HLS, MSE)."""
        return f"avc1.{self.profile:02x}{self.compatibility:02x}{self.level:02x}"


def _parameter_sets(data: bytes, pos: int, count: int, what: str) -> tuple[tuple[bytes, ...], int]:
    out: list[bytes] = []
    for _ in range(count):
        if pos + 2 > len(data):
            raise RemoteProtocolError(f"truncated avcC: {what} length missing")
        size = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if pos + size > len(data):
            raise RemoteProtocolError(
                f"truncated avcC: {what} of {size} bytes, {len(data) - pos} left"
            )
        out.append(data[pos : pos + size])
        pos += size
    return tuple(out), pos


def _write_parameter_sets(parts: list[bytes], nals: tuple[bytes, ...]) -> None:
    for nal in nals:
        parts.append(len(nal).to_bytes(2, "big"))
        parts.append(nal)


# --------------------------------------------------------------------------- SPS


@dataclass(frozen=True, slots=True, kw_only=True)
class SpsInfo:
    """Facts from an H.264 sequence parameter set.

    ``width`` / ``height`` are the displayed size in pixels (after cropping).
    """

    width: int
    height: int
    profile_idc: int
    constraint_flags: int
    level_idc: int
    seq_parameter_set_id: int
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    frame_mbs_only: bool
    log2_max_frame_num: int
    pic_order_cnt_type: int
    max_num_ref_frames: int
    crop_left: int = 0
    crop_right: int = 0
    crop_top: int = 0
    crop_bottom: int = 0
    vui_parameters_present: bool = False


def _ue_max(reader: BitReader, name: str, maximum: int) -> int:
    value = reader.ue()
    if value > maximum:
        raise RemoteProtocolError(f"SPS {name} {value} exceeds its maximum {maximum}")
    return value


def _skip_scaling_list(reader: BitReader, size: int) -> None:
    last_scale = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            delta = reader.se()
            if not -128 <= delta <= 127:
                raise RemoteProtocolError(f"SPS delta_scale {delta} outside -128..127")
            next_scale = (last_scale + delta + 256) % 256
        last_scale = last_scale if next_scale == 0 else next_scale


def parse_sps(sps: bytes) -> SpsInfo:
    """Decode an SPS NAL unit (with its 1-byte header and emulation prevention).

    Handles high-profile chroma formats, bit depths and scaling lists
    (skipped), both pic_order_cnt types, interlaced (field) coding and
    frame cropping; VUI is not decoded.
    """
    if not sps or nal_type(sps) != NAL_SPS:
        raise RemoteProtocolError(
            f"not an SPS NAL unit (type {nal_type(sps) if sps else 'none'}, expected 7)"
        )
    r = BitReader(remove_emulation_prevention(sps[1:]), what="SPS")
    profile_idc = r.bits(8)
    constraint_flags = r.bits(8)
    level_idc = r.bits(8)
    sps_id = _ue_max(r, "seq_parameter_set_id", 31)
    chroma_format_idc = 1
    separate_colour_plane = False
    bit_depth_luma = bit_depth_chroma = 8
    if profile_idc in HIGH_PROFILES:
        chroma_format_idc = _ue_max(r, "chroma_format_idc", 3)
        if chroma_format_idc == 3:
            separate_colour_plane = r.flag()
        bit_depth_luma = _ue_max(r, "bit_depth_luma_minus8", 6) + 8
        bit_depth_chroma = _ue_max(r, "bit_depth_chroma_minus8", 6) + 8
        r.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if r.flag():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.flag():  # seq_scaling_list_present_flag[i]
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    log2_max_frame_num = _ue_max(r, "log2_max_frame_num_minus4", 12) + 4
    poc_type = _ue_max(r, "pic_order_cnt_type", 2)
    if poc_type == 0:
        _ue_max(r, "log2_max_pic_order_cnt_lsb_minus4", 12)
    elif poc_type == 1:
        r.skip(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        cycle = _ue_max(r, "num_ref_frames_in_pic_order_cnt_cycle", 255)
        for _ in range(cycle):
            r.se()  # offset_for_ref_frame[i]
    max_num_ref_frames = r.ue()
    r.skip(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_map_units = r.ue() + 1
    frame_mbs_only = r.flag()
    if not frame_mbs_only:
        r.skip(1)  # mb_adaptive_frame_field_flag
    r.skip(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if r.flag():  # frame_cropping_flag
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    vui = r.flag()

    # §7.4.2.1.1: crop offsets are in chroma sample units.
    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    sub_width, sub_height = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[chroma_array_type]
    field_factor = 1 if frame_mbs_only else 2
    crop_unit_x = sub_width
    crop_unit_y = sub_height * field_factor
    width = width_mbs * 16 - crop_unit_x * (crop[0] + crop[1])
    height = field_factor * height_map_units * 16 - crop_unit_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise RemoteProtocolError(f"SPS cropping leaves a {width}x{height} picture")
    return SpsInfo(
        width=width,
        height=height,
        profile_idc=profile_idc,
        constraint_flags=constraint_flags,
        level_idc=level_idc,
        seq_parameter_set_id=sps_id,
        chroma_format_idc=chroma_format_idc,
        bit_depth_luma=bit_depth_luma,
        bit_depth_chroma=bit_depth_chroma,
        frame_mbs_only=frame_mbs_only,
        log2_max_frame_num=log2_max_frame_num,
        pic_order_cnt_type=poc_type,
        max_num_ref_frames=max_num_ref_frames,
        crop_left=crop[0],
        crop_right=crop[1],
        crop_top=crop[2],
        crop_bottom=crop[3],
        vui_parameters_present=vui,
    )
