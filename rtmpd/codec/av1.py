"""AV1: the codec configuration record, OBUs, and the picture size of a sequence header.

Enhanced RTMP (veovera) carries AV1 with the FourCC ``av01``. Its SequenceStart body is the
``AV1CodecConfigurationRecord`` of "AV1 Codec ISO Media File Format Binding" section 2.3,
the payload of the MP4 ``av1C`` box::

    marker u(1) = 1 | version u(7) = 1
    seq_profile u(3) | seq_level_idx_0 u(5)
    seq_tier_0 u(1) | high_bitdepth u(1) | twelve_bit u(1) | monochrome u(1)
      | chroma_subsampling_x u(1) | chroma_subsampling_y u(1) | chroma_sample_position u(2)
    reserved u(3) = 0 | initial_presentation_delay_present u(1)
      | initial_presentation_delay_minus_one u(4) (or reserved)
    configOBUs                 the sequence header OBU (and metadata OBUs), low-overhead form

CodedFrames bodies are temporal units: OBUs in the low-overhead bitstream format (AV1
section 5.2), each ``obu_header`` followed by a leb128 ``obu_size``::

    obu_forbidden_bit u(1) | obu_type u(4) | obu_extension_flag u(1)
      | obu_has_size_field u(1) | obu_reserved_1bit u(1)
    [temporal_id u(3) | spatial_id u(2) | reserved u(3)]      if obu_extension_flag
    [obu_size leb128]                                         if obu_has_size_field

An MP4 sample is a temporal unit without its temporal delimiter (AV1-ISOBMFF section 2.4:
temporal delimiters are dropped, the sample boundary says the same), so
:func:`sample_data` removes them. :func:`parse_sequence_header` reads a sequence header OBU
as far as ``max_frame_width_minus_1`` / ``max_frame_height_minus_1`` (AV1 section 5.5).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rtmpd.codec.bits import BitReader
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AV1C_SIZE",
    "MAX_LEB128_BYTES",
    "MAX_OPERATING_POINTS",
    "OBU_PADDING",
    "OBU_SEQUENCE_HEADER",
    "OBU_TEMPORAL_DELIMITER",
    "AV1CodecConfigurationRecord",
    "Obu",
    "SequenceHeader",
    "iter_obus",
    "parse_sequence_header",
    "sample_data",
    "size_of_temporal_unit",
]

#: Size of the record's fixed fields, before configOBUs.
AV1C_SIZE = 4
#: leb128 values in AV1 are at most 8 bytes (AV1 section 4.10.5: "it is a requirement of
#: bitstream conformance that ... i is less than 8").
MAX_LEB128_BYTES = 8
#: operating_points_cnt_minus_1 is f(5): at most 32 operating points.
MAX_OPERATING_POINTS = 32
#: uvlc() values with more leading zeros than this are all 2**32 - 1 (AV1 section 4.10.3);
#: a longer run of zeros carries nothing and is refused rather than read without end.
MAX_UVLC_LEADING_ZEROS = 32

OBU_SEQUENCE_HEADER = 1
OBU_TEMPORAL_DELIMITER = 2
OBU_PADDING = 15

_MARKER_VERSION_1 = 0x81  # marker 1, version 1


@dataclass(frozen=True, slots=True, kw_only=True)
class AV1CodecConfigurationRecord:
    """An ``av1C`` payload; ``config_obus`` kept as given (low-overhead OBUs)."""

    seq_profile: int
    seq_level_idx_0: int
    seq_tier_0: int = 0
    high_bitdepth: bool = False
    twelve_bit: bool = False
    monochrome: bool = False
    chroma_subsampling_x: bool = True
    chroma_subsampling_y: bool = True
    chroma_sample_position: int = 0
    initial_presentation_delay_minus_one: int | None = None
    config_obus: bytes = b""

    def __post_init__(self) -> None:
        delay = self.initial_presentation_delay_minus_one
        if (
            not 0 <= self.seq_profile <= 7
            or not 0 <= self.seq_level_idx_0 <= 31
            or self.seq_tier_0 not in (0, 1)
            or not 0 <= self.chroma_sample_position <= 3
            or (delay is not None and not 0 <= delay <= 15)
        ):
            raise LocalProtocolError(f"av1C field out of range: {self!r}")

    @classmethod
    def parse(cls, data: bytes) -> AV1CodecConfigurationRecord:
        """Read a record. Raises :class:`RemoteProtocolError` if it is shorter than its
        fixed fields or its marker/version is not 1/1."""
        if len(data) < AV1C_SIZE:
            raise RemoteProtocolError(f"av1C of {len(data)} bytes is shorter than {AV1C_SIZE}")
        if data[0] != _MARKER_VERSION_1:
            raise RemoteProtocolError(f"av1C marker/version byte 0x{data[0]:02x}, expected 0x81")
        b1, b2, b3 = data[1], data[2], data[3]
        return cls(
            seq_profile=b1 >> 5,
            seq_level_idx_0=b1 & 0x1F,
            seq_tier_0=b2 >> 7,
            high_bitdepth=bool(b2 & 0x40),
            twelve_bit=bool(b2 & 0x20),
            monochrome=bool(b2 & 0x10),
            chroma_subsampling_x=bool(b2 & 0x08),
            chroma_subsampling_y=bool(b2 & 0x04),
            chroma_sample_position=b2 & 0x03,
            initial_presentation_delay_minus_one=(b3 & 0x0F) if b3 & 0x10 else None,
            config_obus=data[AV1C_SIZE:],
        )

    def __bytes__(self) -> bytes:
        delay = self.initial_presentation_delay_minus_one
        b2 = (
            self.seq_tier_0 << 7
            | self.high_bitdepth << 6
            | self.twelve_bit << 5
            | self.monochrome << 4
            | self.chroma_subsampling_x << 3
            | self.chroma_subsampling_y << 2
            | self.chroma_sample_position
        )
        b3 = 0 if delay is None else 0x10 | delay
        fixed = bytes((_MARKER_VERSION_1, self.seq_profile << 5 | self.seq_level_idx_0, b2, b3))
        return fixed + self.config_obus

    def sequence_header(self) -> SequenceHeader | None:
        """The sequence header among the configOBUs, or None if there is none."""
        for obu in iter_obus(self.config_obus):
            if obu.obu_type == OBU_SEQUENCE_HEADER:
                return parse_sequence_header(obu.payload)
        return None


@dataclass(frozen=True, slots=True)
class Obu:
    """One OBU: its type, where it starts and ends in the data walked, and its payload."""

    obu_type: int
    start: int
    end: int
    payload: bytes


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(MAX_LEB128_BYTES):
        if pos + i >= len(data):
            raise RemoteProtocolError(f"AV1 obu_size truncated at byte {pos + i} of {len(data)}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise RemoteProtocolError(
        f"AV1 leb128 at byte {pos} is longer than MAX_LEB128_BYTES ({MAX_LEB128_BYTES})"
    )


def iter_obus(data: bytes) -> Iterator[Obu]:
    """The OBUs of a low-overhead bitstream, in order. An OBU without ``obu_size`` runs to
    the end of ``data``. Raises :class:`RemoteProtocolError` for a set forbidden bit or an
    OBU that overruns ``data``."""
    pos = 0
    while pos < len(data):
        header = data[pos]
        if header & 0x80:
            raise RemoteProtocolError(f"AV1 OBU at byte {pos} has obu_forbidden_bit set")
        obu_type = (header >> 3) & 0x0F
        start = pos
        pos += 2 if header & 0x04 else 1
        if pos > len(data):
            raise RemoteProtocolError(f"AV1 OBU at byte {start}: extension header truncated")
        if header & 0x02:
            size, pos = _leb128(data, pos)
        else:
            size = len(data) - pos
        end = pos + size
        if end > len(data):
            raise RemoteProtocolError(
                f"AV1 OBU at byte {start} of {size} bytes overruns the {len(data)}-byte data"
            )
        yield Obu(obu_type, start, end, data[pos:end])
        pos = end


def sample_data(temporal_unit: bytes) -> bytes:
    """A temporal unit as an MP4 sample: its temporal delimiter and padding OBUs removed,
    the other OBUs byte for byte. Raises :class:`RemoteProtocolError` like
    :func:`iter_obus`."""
    kept = [
        temporal_unit[obu.start : obu.end]
        for obu in iter_obus(temporal_unit)
        if obu.obu_type not in (OBU_TEMPORAL_DELIMITER, OBU_PADDING)
    ]
    return b"".join(kept)


@dataclass(frozen=True, slots=True, kw_only=True)
class SequenceHeader:
    """Facts from a sequence header OBU: the profile and the largest frame size."""

    seq_profile: int
    max_frame_width: int
    max_frame_height: int


def _uvlc(r: BitReader) -> int:
    zeros = 0
    while not r.flag():
        zeros += 1
        if zeros > MAX_UVLC_LEADING_ZEROS:
            raise RemoteProtocolError(
                f"AV1 uvlc() with more than MAX_UVLC_LEADING_ZEROS ({MAX_UVLC_LEADING_ZEROS}) "
                "leading zeros"
            )
    if zeros >= 32:
        return (1 << 32) - 1
    return r.bits(zeros) + (1 << zeros) - 1


def parse_sequence_header(payload: bytes) -> SequenceHeader:
    """Read a sequence header OBU's payload (after its OBU header and size) up to the
    largest frame size. Raises :class:`RemoteProtocolError` if it ends early.

    ::

        seq_profile f(3) | still_picture f(1) | reduced_still_picture_header f(1)
        reduced: seq_level_idx[0] f(5)
        else:    timing_info_present_flag f(1) [timing_info, decoder_model_info]
                 initial_display_delay_present_flag f(1)
                 operating_points_cnt_minus_1 f(5), per point: operating_point_idc f(12),
                   seq_level_idx f(5) [seq_tier f(1)] [operating_parameters_info]
                   [initial_display_delay_minus_1 f(4)]
        frame_width_bits_minus_1 f(4) | frame_height_bits_minus_1 f(4)
        max_frame_width_minus_1 f(n) | max_frame_height_minus_1 f(n)
    """
    r = BitReader(payload, what="AV1 sequence header")
    seq_profile = r.bits(3)
    r.skip(1)  # still_picture
    if r.flag():  # reduced_still_picture_header
        r.skip(5)  # seq_level_idx[0]
    else:
        decoder_model_info = False
        buffer_delay_length = 0
        if r.flag():  # timing_info_present_flag
            r.skip(32 + 32)  # num_units_in_display_tick, time_scale
            if r.flag():  # equal_picture_interval
                _uvlc(r)  # num_ticks_per_picture_minus_1
            decoder_model_info = r.flag()
            if decoder_model_info:
                buffer_delay_length = r.bits(5) + 1
                r.skip(32 + 5 + 5)  # num_units_in_decoding_tick, two length fields
        initial_display_delay = r.flag()
        for _ in range(r.bits(5) + 1):  # at most MAX_OPERATING_POINTS by the field's width
            r.skip(12)  # operating_point_idc
            if r.bits(5) > 7:  # seq_level_idx
                r.skip(1)  # seq_tier
            if decoder_model_info and r.flag():  # decoder_model_present_for_this_op
                r.skip(2 * buffer_delay_length + 1)  # decoder/encoder delays, low_delay_mode
            if initial_display_delay and r.flag():
                r.skip(4)  # initial_display_delay_minus_1
    width_bits = r.bits(4) + 1
    height_bits = r.bits(4) + 1
    return SequenceHeader(
        seq_profile=seq_profile,
        max_frame_width=r.bits(width_bits) + 1,
        max_frame_height=r.bits(height_bits) + 1,
    )


def size_of_temporal_unit(temporal_unit: bytes) -> tuple[int, int] | None:
    """The largest frame size the temporal unit's sequence header gives, or None if it
    carries none (a keyframe's temporal unit usually repeats it)."""
    for obu in iter_obus(temporal_unit):
        if obu.obu_type == OBU_SEQUENCE_HEADER:
            header = parse_sequence_header(obu.payload)
            return header.max_frame_width, header.max_frame_height
    return None
