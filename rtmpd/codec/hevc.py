"""H.265 / HEVC: decoder configuration record and NAL unit types.

:class:`HEVCDecoderConfigurationRecord` (ISO/IEC 14496-15 §8.3.3.1) is the
body of an HEVC sequence header (Enhanced RTMP ``hvc1`` SequenceStart, or
legacy CodecID 12) and the payload of the MP4 ``hvcC`` box. Samples use
length-prefixed NAL units like AVC: see :func:`rtmpd.codec.avc.split_length_prefixed`.

:func:`parse_sps` reads the picture size from a sequence parameter set (ISO/IEC 23008-2
§7.3.2.2) as far as ``conformance_window``: what an MP4 sample entry needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rtmpd.codec.avc import remove_emulation_prevention
from rtmpd.codec.bits import BitReader
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

# nal_unit_type (ISO/IEC 23008-2 Table 7-1).
NAL_TRAIL_N = 0
NAL_TRAIL_R = 1
NAL_BLA_W_LP = 16
NAL_IDR_W_RADL = 19
NAL_IDR_N_LP = 20
NAL_CRA = 21
NAL_IRAP_MAX = 23  # 22, 23: reserved IRAP types
NAL_VPS = 32
NAL_SPS = 33
NAL_PPS = 34
NAL_AUD = 35
NAL_EOS = 36
NAL_EOB = 37
NAL_FD = 38
NAL_SEI_PREFIX = 39
NAL_SEI_SUFFIX = 40

# Bytes before numOfArrays: version, profile/tier/level, and the packed
# fields up to lengthSizeMinusOne.
_FIXED_SIZE = 22


def nal_type(nal: bytes) -> int:
    """nal_unit_type of an H.265 NAL unit (bits 1..6 of its first byte)."""
    if not nal:
        raise RemoteProtocolError("empty H.265 NAL unit")
    return (nal[0] >> 1) & 0x3F


def is_irap(nal_unit_type: int) -> bool:
    """Whether the type is an intra random access point (BLA, IDR, CRA): a keyframe."""
    return NAL_BLA_W_LP <= nal_unit_type <= NAL_IRAP_MAX


@dataclass(frozen=True, slots=True, kw_only=True)
class NalArray:
    """One array of an hvcC: NAL units of one type (VPS, SPS, PPS, SEI)."""

    nal_unit_type: int
    nal_units: tuple[bytes, ...]
    array_completeness: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.nal_unit_type <= 63:
            raise LocalProtocolError(f"hvcC NAL unit type {self.nal_unit_type} is not 6 bits")
        if len(self.nal_units) > 0xFFFF or any(len(n) > 0xFFFF for n in self.nal_units):
            raise LocalProtocolError("hvcC holds at most 65535 NAL units of 65535 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class HEVCDecoderConfigurationRecord:
    """ISO/IEC 14496-15 HEVCDecoderConfigurationRecord::

        configurationVersion u8 = 1
        general_profile_space u2, general_tier_flag u1, general_profile_idc u5
        general_profile_compatibility_flags u32
        general_constraint_indicator_flags u48
        general_level_idc u8
        '1111'b min_spatial_segmentation_idc u12
        '111111'b parallelismType u2
        '111111'b chromaFormat u2
        '11111'b bitDepthLumaMinus8 u3
        '11111'b bitDepthChromaMinus8 u3
        avgFrameRate u16
        constantFrameRate u2, numTemporalLayers u3, temporalIdNested u1,
          lengthSizeMinusOne u2
        numOfArrays u8
          { array_completeness u1, reserved u1, NAL_unit_type u6,
            numNalus u16, { nalUnitLength u16, nalUnit } }

    ``header`` keeps the 22 fixed bytes verbatim (so ``__bytes__`` gives
    back the input); the properties decode the fields muxers need.
    """

    header: bytes
    arrays: tuple[NalArray, ...] = ()

    def __post_init__(self) -> None:
        if len(self.header) != _FIXED_SIZE:
            raise LocalProtocolError(f"hvcC fixed header is {_FIXED_SIZE} bytes")
        if len(self.arrays) > 255:
            raise LocalProtocolError("hvcC holds at most 255 arrays")

    @classmethod
    def parse(cls, data: bytes) -> HEVCDecoderConfigurationRecord:
        """Decode a record; :class:`RemoteProtocolError` if malformed or truncated."""
        if len(data) < _FIXED_SIZE + 1:
            raise RemoteProtocolError(
                f"truncated hvcC: {len(data)} bytes, at least {_FIXED_SIZE + 1} needed"
            )
        if data[0] != 1:
            raise RemoteProtocolError(f"hvcC configurationVersion {data[0]}, expected 1")
        if data[21] & 0x03 == 2:
            raise RemoteProtocolError("hvcC lengthSizeMinusOne 2 (3-byte lengths) is invalid")
        arrays: list[NalArray] = []
        pos = _FIXED_SIZE + 1
        for _ in range(data[_FIXED_SIZE]):
            if pos + 3 > len(data):
                raise RemoteProtocolError("truncated hvcC: NAL array header missing")
            kind = data[pos]
            count = int.from_bytes(data[pos + 1 : pos + 3], "big")
            pos += 3
            nals: list[bytes] = []
            for _ in range(count):
                if pos + 2 > len(data):
                    raise RemoteProtocolError("truncated hvcC: NAL unit length missing")
                size = int.from_bytes(data[pos : pos + 2], "big")
                pos += 2
                if pos + size > len(data):
                    raise RemoteProtocolError(
                        f"truncated hvcC: NAL unit of {size} bytes, {len(data) - pos} left"
                    )
                nals.append(data[pos : pos + size])
                pos += size
            arrays.append(
                NalArray(
                    nal_unit_type=kind & 0x3F,
                    nal_units=tuple(nals),
                    array_completeness=bool(kind & 0x80),
                )
            )
        return cls(header=data[:_FIXED_SIZE], arrays=tuple(arrays))

    def __bytes__(self) -> bytes:
        parts = [self.header, bytes((len(self.arrays),))]
        for array in self.arrays:
            kind = (0x80 if array.array_completeness else 0) | array.nal_unit_type
            parts.append(bytes((kind,)) + len(array.nal_units).to_bytes(2, "big"))
            for nal in array.nal_units:
                parts.append(len(nal).to_bytes(2, "big"))
                parts.append(nal)
        return b"".join(parts)

    def nal_units_of(self, nal_unit_type: int) -> tuple[bytes, ...]:
        """All NAL units of one type across the arrays."""
        out: list[bytes] = []
        for array in self.arrays:
            if array.nal_unit_type == nal_unit_type:
                out.extend(array.nal_units)
        return tuple(out)

    @property
    def vps(self) -> tuple[bytes, ...]:
        return self.nal_units_of(NAL_VPS)

    @property
    def sps(self) -> tuple[bytes, ...]:
        return self.nal_units_of(NAL_SPS)

    @property
    def pps(self) -> tuple[bytes, ...]:
        return self.nal_units_of(NAL_PPS)

    @property
    def profile_space(self) -> int:
        return self.header[1] >> 6

    @property
    def tier_flag(self) -> bool:
        return bool(self.header[1] & 0x20)

    @property
    def profile_idc(self) -> int:
        return self.header[1] & 0x1F

    @property
    def profile_compatibility_flags(self) -> int:
        return int.from_bytes(self.header[2:6], "big")

    @property
    def constraint_indicator_flags(self) -> bytes:
        return self.header[6:12]

    @property
    def level_idc(self) -> int:
        return self.header[12]

    @property
    def chroma_format(self) -> int:
        return self.header[16] & 0x03

    @property
    def bit_depth_luma(self) -> int:
        return (self.header[17] & 0x07) + 8

    @property
    def bit_depth_chroma(self) -> int:
        return (self.header[18] & 0x07) + 8

    @property
    def length_size(self) -> int:
        """Bytes of each NAL unit length prefix in samples (1, 2 or 4)."""
        return (self.header[21] & 0x03) + 1

    @property
    def codec_string(self) -> str:
        """RFC 6381 / ISO 14496-15 Annex E ``codecs`` value, e.g. ``hvc1.1.6.L93.B0``."""
        space = "" if self.profile_space == 0 else "ABC"[self.profile_space - 1]
        # The compatibility flags are written in reverse bit order, in hex.
        compat = int(f"{self.profile_compatibility_flags:032b}"[::-1], 2)
        tier = "H" if self.tier_flag else "L"
        constraints = self.constraint_indicator_flags.rstrip(b"\x00")
        parts = [
            "hvc1",
            f"{space}{self.profile_idc}",
            f"{compat:x}",
            f"{tier}{self.level_idc}",
            *(f"{b:X}" for b in constraints),
        ]
        return ".".join(parts)

    @classmethod
    def from_fields(
        cls,
        *,
        profile_idc: int,
        level_idc: int,
        arrays: Iterable[NalArray],
        tier_flag: bool = False,
        profile_compatibility_flags: int = 0,
        constraint_indicator_flags: bytes = bytes(6),
        chroma_format: int = 1,
        bit_depth_luma: int = 8,
        bit_depth_chroma: int = 8,
        length_size: int = 4,
    ) -> HEVCDecoderConfigurationRecord:
        """Build a record from the fields muxers know (general profile space 0)."""
        if length_size not in (1, 2, 4) or len(constraint_indicator_flags) != 6:
            raise LocalProtocolError("hvcC length_size 1, 2 or 4 and 6 constraint bytes")
        header = (
            bytes((1, (0x20 if tier_flag else 0) | (profile_idc & 0x1F)))
            + profile_compatibility_flags.to_bytes(4, "big")
            + constraint_indicator_flags
            + bytes(
                (
                    level_idc,
                    0xF0,  # '1111'b, min_spatial_segmentation_idc 0
                    0x00,
                    0xFC,  # parallelismType 0
                    0xFC | chroma_format,
                    0xF8 | (bit_depth_luma - 8),
                    0xF8 | (bit_depth_chroma - 8),
                    0,
                    0,  # avgFrameRate 0: unspecified
                    0x0C | (length_size - 1),  # 1 temporal layer, nested
                )
            )
        )
        return cls(header=header, arrays=tuple(arrays))


# --------------------------------------------------------------------------- SPS

#: sps_max_sub_layers_minus1 is u(3) and §7.4.3.2.1 allows 0..6: seven temporal sub-layers.
MAX_SUB_LAYERS = 7
#: Largest pic_width/height_in_luma_samples taken. Level 6.2 allows 16888 luma samples on
#: a side (Table A.8); an MP4 sample entry holds 16 bits, so more is refused, not truncated.
MAX_PICTURE_SIDE = 0xFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class SpsInfo:
    """Facts from an H.265 sequence parameter set: ``width`` / ``height`` are the displayed
    size (after the conformance window), ``coded_width`` / ``coded_height`` the decoded one."""

    width: int
    height: int
    coded_width: int
    coded_height: int
    profile_idc: int
    level_idc: int
    chroma_format_idc: int


def _ue_limited(r: BitReader, name: str, maximum: int) -> int:
    value = r.ue()
    if value > maximum:
        raise RemoteProtocolError(f"H.265 SPS {name} {value} exceeds its maximum {maximum}")
    return value


def parse_sps(sps: bytes) -> SpsInfo:
    """Decode an SPS NAL unit (2-byte header, emulation prevention bytes in place) up to
    its conformance window. Raises :class:`RemoteProtocolError` if it is not an SPS or
    ends early.

    ::

        sps_video_parameter_set_id u(4), sps_max_sub_layers_minus1 u(3),
        sps_temporal_id_nesting_flag u(1)
        profile_tier_level(1, sps_max_sub_layers_minus1)   §7.3.3
        sps_seq_parameter_set_id ue(v)
        chroma_format_idc ue(v) [separate_colour_plane_flag u(1) if 3]
        pic_width_in_luma_samples ue(v), pic_height_in_luma_samples ue(v)
        conformance_window_flag u(1)
          [conf_win_left/right/top/bottom_offset ue(v)]
    """
    if len(sps) < 2 or nal_type(sps) != NAL_SPS:
        kind = nal_type(sps) if sps else "none"
        raise RemoteProtocolError(f"not an H.265 SPS NAL unit (type {kind}, expected 33)")
    r = BitReader(remove_emulation_prevention(sps[2:]), what="H.265 SPS")
    r.skip(4)  # sps_video_parameter_set_id
    sub_layers = r.bits(3) + 1
    if sub_layers > MAX_SUB_LAYERS:
        raise RemoteProtocolError(
            f"H.265 SPS has {sub_layers} sub-layers, more than MAX_SUB_LAYERS ({MAX_SUB_LAYERS})"
        )
    r.skip(1)  # sps_temporal_id_nesting_flag
    # profile_tier_level: general_profile_space u(2), general_tier_flag u(1)
    r.skip(3)
    profile_idc = r.bits(5)
    r.skip(32 + 48)  # general_profile_compatibility_flag[32], the 48 constraint bits
    level_idc = r.bits(8)
    present = [(r.flag(), r.flag()) for _ in range(sub_layers - 1)]
    if sub_layers > 1:
        r.skip(2 * (8 - (sub_layers - 1)))  # reserved_zero_2bits up to 8 entries
    for profile_present, level_present in present:
        if profile_present:
            r.skip(88)  # sub_layer profile space .. constraint flags
        if level_present:
            r.skip(8)  # sub_layer_level_idc
    _ue_limited(r, "sps_seq_parameter_set_id", 15)
    chroma_format_idc = _ue_limited(r, "chroma_format_idc", 3)
    separate_colour_plane = chroma_format_idc == 3 and r.flag()
    coded_width = _ue_limited(r, "pic_width_in_luma_samples", MAX_PICTURE_SIDE)
    coded_height = _ue_limited(r, "pic_height_in_luma_samples", MAX_PICTURE_SIDE)
    left = right = top = bottom = 0
    if r.flag():  # conformance_window_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
    # §7.4.3.2.1: the offsets count chroma samples (Table 6-1 SubWidthC, SubHeightC).
    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    sub_width, sub_height = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[chroma_array_type]
    width = coded_width - sub_width * (left + right)
    height = coded_height - sub_height * (top + bottom)
    if width <= 0 or height <= 0:
        raise RemoteProtocolError(f"H.265 SPS conformance window leaves a {width}x{height} picture")
    return SpsInfo(
        width=width,
        height=height,
        coded_width=coded_width,
        coded_height=coded_height,
        profile_idc=profile_idc,
        level_idc=level_idc,
        chroma_format_idc=chroma_format_idc,
    )
