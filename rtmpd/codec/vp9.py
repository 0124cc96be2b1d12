"""VP9: the VP codec configuration record, and the frame size of a keyframe.

Enhanced RTMP (veovera) carries VP9 with the FourCC ``vp09``; its SequenceStart body is the
``VPCodecConfigurationRecord`` of "VP Codec ISO Media File Format Binding" section 2.2.
In MP4 it is the payload of ``vpcC``, a full box of version 1 (flags 0)::

    version u(8) = 1 | flags u(24) = 0             (the full box header)
    profile u(8)
    level u(8)
    bitDepth u(4) | chromaSubsampling u(3) | videoFullRangeFlag u(1)
    colourPrimaries u(8)
    transferCharacteristics u(8)
    matrixCoefficients u(8)
    codecInitializationDataSize u(16)              0 for VP8 and VP9
    codecInitializationData u(8)[size]

ffmpeg's FLV muxer sends the record with its full box header (12 bytes); a SequenceStart
without it (8 bytes) is read too. :meth:`VPCodecConfigurationRecord.box_payload` always
gives the 12-byte ``vpcC`` payload.

The record says nothing of the picture size: :func:`keyframe_size` reads it from the
uncompressed header of a keyframe (VP9 bitstream specification section 6.2)::

    frame_marker f(2) = 2 | profile_low_bit f(1) | profile_high_bit f(1)
    [reserved_zero f(1) if profile 3] | show_existing_frame f(1)
    frame_type f(1) (0: KEY_FRAME) | show_frame f(1) | error_resilient_mode f(1)
    frame_sync_code 0x49 0x83 0x42
    color_config: [ten_or_twelve_bit f(1) if profile >= 2] | color_space f(3)
      | not sRGB: color_range f(1) [subsampling_x, subsampling_y, reserved f(1) each
        if profile 1 or 3]; sRGB: [reserved_zero f(1) if profile 1 or 3]
    frame_width_minus_1 f(16) | frame_height_minus_1 f(16)
"""

from __future__ import annotations

from dataclasses import dataclass

from rtmpd.codec.bits import BitReader
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "RECORD_SIZE",
    "VPCC_VERSION",
    "VPCodecConfigurationRecord",
    "keyframe_size",
]

#: Size of the record without its full box header and initialization data.
RECORD_SIZE = 8
#: The ``vpcC`` full box version this module reads and writes.
VPCC_VERSION = 1
_BOX_HEADER = bytes((VPCC_VERSION, 0, 0, 0))

_FRAME_SYNC_CODE = 0x498342
_COLOR_SPACE_SRGB = 7


@dataclass(frozen=True, slots=True, kw_only=True)
class VPCodecConfigurationRecord:
    """A VP codec configuration record (without codec initialization data, which VP9
    does not have)."""

    profile: int
    level: int
    bit_depth: int = 8
    chroma_subsampling: int = 1  # 4:2:0 co-located with luma (0) or vertical (1)
    video_full_range: bool = False
    colour_primaries: int = 2  # unspecified
    transfer_characteristics: int = 2
    matrix_coefficients: int = 2

    def __post_init__(self) -> None:
        if (
            not 0 <= self.profile <= 0xFF
            or not 0 <= self.level <= 0xFF
            or self.bit_depth not in (8, 10, 12)
            or not 0 <= self.chroma_subsampling <= 7
            or not all(
                0 <= v <= 0xFF
                for v in (
                    self.colour_primaries,
                    self.transfer_characteristics,
                    self.matrix_coefficients,
                )
            )
        ):
            raise LocalProtocolError(f"vpcC field out of range: {self!r}")

    @classmethod
    def parse(cls, data: bytes) -> VPCodecConfigurationRecord:
        """Read a record, with its full box header (12 bytes, version 1) or without (8).

        Raises :class:`RemoteProtocolError` for any other size, another box version,
        initialization data, or a bit depth other than 8, 10 or 12.
        """
        if len(data) == RECORD_SIZE + len(_BOX_HEADER):
            if data[:4] != _BOX_HEADER:
                raise RemoteProtocolError(
                    f"vpcC full box header {data[:4].hex()}, expected version 1 flags 0"
                )
            data = data[4:]
        elif len(data) != RECORD_SIZE:
            raise RemoteProtocolError(
                f"VP codec configuration of {len(data)} bytes: expected {RECORD_SIZE}, "
                f"or {RECORD_SIZE + 4} with the vpcC version and flags"
            )
        init_size = int.from_bytes(data[6:8], "big")
        if init_size:
            raise RemoteProtocolError(
                f"vpcC codecInitializationDataSize {init_size}: VP9 has none (0)"
            )
        bit_depth = data[2] >> 4
        if bit_depth not in (8, 10, 12):
            raise RemoteProtocolError(f"vpcC bitDepth {bit_depth} is not 8, 10 or 12")
        return cls(
            profile=data[0],
            level=data[1],
            bit_depth=bit_depth,
            chroma_subsampling=(data[2] >> 1) & 0x07,
            video_full_range=bool(data[2] & 0x01),
            colour_primaries=data[3],
            transfer_characteristics=data[4],
            matrix_coefficients=data[5],
        )

    def __bytes__(self) -> bytes:
        """The record without its full box header (8 bytes)."""
        packed = self.bit_depth << 4 | self.chroma_subsampling << 1 | self.video_full_range
        return bytes(
            (
                self.profile,
                self.level,
                packed,
                self.colour_primaries,
                self.transfer_characteristics,
                self.matrix_coefficients,
                0,
                0,  # codecInitializationDataSize
            )
        )

    def box_payload(self) -> bytes:
        """The ``vpcC`` payload: version 1, flags 0, the record (12 bytes)."""
        return _BOX_HEADER + bytes(self)


def keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from the uncompressed header of a VP9 keyframe; None for a frame
    that is not a keyframe (an inter frame, or one that shows an existing frame).

    In a superframe the first frame is at its start, so a whole packet can be given.
    Raises :class:`RemoteProtocolError` for a frame marker other than 2, a wrong sync code
    or a header that ends early.
    """
    r = BitReader(frame, what="VP9 uncompressed header")
    marker = r.bits(2)
    if marker != 2:
        raise RemoteProtocolError(f"VP9 frame_marker {marker}, expected 2")
    profile = r.bits(1)
    profile |= r.bits(1) << 1
    if profile == 3:
        r.skip(1)  # reserved_zero
    if r.flag():  # show_existing_frame
        return None
    if r.flag():  # frame_type: 1 is NON_KEY_FRAME
        return None
    r.skip(2)  # show_frame, error_resilient_mode
    sync = r.bits(24)
    if sync != _FRAME_SYNC_CODE:
        raise RemoteProtocolError(f"VP9 frame_sync_code 0x{sync:06x}, expected 0x498342")
    if profile >= 2:
        r.skip(1)  # ten_or_twelve_bit
    if r.bits(3) != _COLOR_SPACE_SRGB:
        r.skip(1)  # color_range
        if profile in (1, 3):
            r.skip(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        r.skip(1)  # reserved_zero
    return r.bits(16) + 1, r.bits(16) + 1
