"""AAC: AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1) and ADTS framing.

The AAC sequence header of FLV / RTMP (AACPacketType 0) carries an
AudioSpecificConfig; raw frames follow in AACPacketType 1 tags. MPEG-TS
(HLS) wants each raw frame behind a 7-byte ADTS header (ISO/IEC 13818-7
§6.2 / 14496-3 §1.A.2), built by :func:`adts_header`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtmpd.codec.bits import BitReader, BitWriter
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

# samplingFrequencyIndex -> Hz (13 and 14 reserved, 15: explicit 24-bit value).
SAMPLING_FREQUENCIES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
FREQUENCY_INDEX_EXPLICIT = 15

# audioObjectType values.
AOT_AAC_MAIN = 1
AOT_AAC_LC = 2
AOT_AAC_SSR = 3
AOT_AAC_LTP = 4
AOT_SBR = 5  # HE-AAC
AOT_PS = 29  # HE-AAC v2
AOT_ESCAPE = 31

# Object types whose config continues with GASpecificConfig, whose first
# bit is frameLengthFlag (960- instead of 1024-sample frames).
_GA_OBJECT_TYPES = frozenset((1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23))

ADTS_HEADER_SIZE = 7
ADTS_CRC_SIZE = 2
# aac_frame_length is a 13-bit field counting the header too.
ADTS_MAX_FRAME_LENGTH = 8191
ADTS_SYNC = 0xFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioSpecificConfig:
    """The leading fields of an AudioSpecificConfig, and the rest verbatim::

        audioObjectType          u5; 31 = escape: 32 + u6
        samplingFrequencyIndex   u4; 15 = explicit: samplingFrequency u24
        channelConfiguration     u4
        ... GASpecificConfig, SBR / PS signalling (kept as trailing bits)

    ``sampling_frequency`` is the explicit value (index 15) or None.
    ``trailing_bits`` / ``trailing_bit_count`` hold everything after
    channelConfiguration, so ``__bytes__`` reproduces a parsed config
    exactly; the default is a plain GASpecificConfig (three zero bits:
    1024-sample frames, no core coder, no extension). Output is zero-padded
    to a whole byte.
    """

    object_type: int
    sampling_frequency_index: int
    channel_configuration: int
    sampling_frequency: int | None = None
    trailing_bits: int = 0
    trailing_bit_count: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.object_type <= 32 + 63:
            raise LocalProtocolError(f"audioObjectType {self.object_type} outside 1..95")
        index = self.sampling_frequency_index
        if index == FREQUENCY_INDEX_EXPLICIT:
            if self.sampling_frequency is None or not 0 < self.sampling_frequency < 1 << 24:
                raise LocalProtocolError("explicit samplingFrequency must be 1..16777215 Hz")
        elif not 0 <= index < len(SAMPLING_FREQUENCIES) or self.sampling_frequency is not None:
            raise LocalProtocolError(
                f"samplingFrequencyIndex {index} (0..12, or 15 with sampling_frequency)"
            )
        if not 0 <= self.channel_configuration <= 15:
            raise LocalProtocolError(f"channelConfiguration {self.channel_configuration} > 15")
        if self.trailing_bit_count < 0 or not 0 <= self.trailing_bits < (
            1 << self.trailing_bit_count
        ):
            raise LocalProtocolError("trailing_bits must fit trailing_bit_count bits")

    @classmethod
    def parse(cls, data: bytes) -> AudioSpecificConfig:
        """Decode; :class:`RemoteProtocolError` if truncated or reserved values."""
        r = BitReader(data, what="AudioSpecificConfig")
        object_type = r.bits(5)
        if object_type == AOT_ESCAPE:
            object_type = 32 + r.bits(6)
        if object_type == 0:
            raise RemoteProtocolError("AudioSpecificConfig audioObjectType 0 (null) is invalid")
        index = r.bits(4)
        frequency: int | None = None
        if index == FREQUENCY_INDEX_EXPLICIT:
            frequency = r.bits(24)
            if frequency == 0:
                raise RemoteProtocolError("AudioSpecificConfig samplingFrequency 0 Hz")
        elif index >= len(SAMPLING_FREQUENCIES):
            raise RemoteProtocolError(
                f"AudioSpecificConfig samplingFrequencyIndex {index} is reserved"
            )
        channels = r.bits(4)
        count = r.bits_left
        return cls(
            object_type=object_type,
            sampling_frequency_index=index,
            channel_configuration=channels,
            sampling_frequency=frequency,
            trailing_bits=r.bits(count),
            trailing_bit_count=count,
        )

    def __bytes__(self) -> bytes:
        w = BitWriter()
        if self.object_type >= AOT_ESCAPE:
            w.bits(AOT_ESCAPE, 5)
            w.bits(self.object_type - 32, 6)
        else:
            w.bits(self.object_type, 5)
        w.bits(self.sampling_frequency_index, 4)
        if self.sampling_frequency is not None:
            w.bits(self.sampling_frequency, 24)
        w.bits(self.channel_configuration, 4)
        w.bits(self.trailing_bits, self.trailing_bit_count)
        return w.to_bytes()

    @property
    def sample_rate(self) -> int:
        """Sampling frequency in Hz (of the core decoder for HE-AAC)."""
        if self.sampling_frequency is not None:
            return self.sampling_frequency
        return SAMPLING_FREQUENCIES[self.sampling_frequency_index]

    @property
    def samples_per_frame(self) -> int:
        """PCM samples per frame per channel: 1024, or 960 if frameLengthFlag is set."""
        count = self.trailing_bit_count
        if self.object_type in _GA_OBJECT_TYPES and count and self.trailing_bits >> (count - 1):
            return 960
        return 1024

    @property
    def codec_string(self) -> str:
        """RFC 6381 ``codecs`` value, e.g. ``mp4a.40.2``."""
        return f"mp4a.40.{self.object_type}"


def adts_header(config: AudioSpecificConfig, payload_length: int) -> bytes:
    """The 7-byte ADTS header (MPEG-4, no CRC) for a raw frame of ``payload_length`` bytes.

    ADTS carries AAC Main/LC/SSR/LTP; HE-AAC (SBR/PS) is carried as LC at
    the core rate, with SBR implicit. Raises :class:`RemoteProtocolError`
    when the frame exceeds ``ADTS_MAX_FRAME_LENGTH`` or the config cannot be
    expressed in ADTS (explicit frequency, other object types): both come
    from what the publisher sent.
    """
    frame_length = ADTS_HEADER_SIZE + payload_length
    if payload_length < 0:
        raise LocalProtocolError(f"negative AAC payload length {payload_length}")
    if frame_length > ADTS_MAX_FRAME_LENGTH:
        raise RemoteProtocolError(
            f"ADTS frame of {frame_length} bytes exceeds ADTS_MAX_FRAME_LENGTH "
            f"({ADTS_MAX_FRAME_LENGTH})"
        )
    object_type = config.object_type
    if object_type in (AOT_SBR, AOT_PS):
        object_type = AOT_AAC_LC
    if not AOT_AAC_MAIN <= object_type <= AOT_AAC_LTP:
        raise RemoteProtocolError(f"AAC object type {config.object_type} cannot be sent in ADTS")
    index = config.sampling_frequency_index
    if index == FREQUENCY_INDEX_EXPLICIT:
        raise RemoteProtocolError("ADTS cannot carry an explicit sampling frequency")
    channels = config.channel_configuration
    if channels > 7:
        raise RemoteProtocolError(f"ADTS cannot carry channelConfiguration {channels}")
    # syncword u12, ID u1 (0: MPEG-4), layer u2, protection_absent u1 (1: no CRC),
    # profile u2, sampling_frequency_index u4, private_bit u1,
    # channel_configuration u3, original_copy u1, home u1,
    # copyright_identification_bit u1, copyright_identification_start u1,
    # aac_frame_length u13, adts_buffer_fullness u11 (0x7FF: VBR),
    # number_of_raw_data_blocks_in_frame u2 (0: one block).
    value = (
        (ADTS_SYNC << 44)
        | (1 << 40)
        | ((object_type - 1) << 38)
        | (index << 34)
        | (channels << 30)
        | (frame_length << 13)
        | (0x7FF << 2)
    )
    return value.to_bytes(ADTS_HEADER_SIZE, "big")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdtsFrame:
    """One ADTS frame: the config its header implies, and its raw AAC payload."""

    config: AudioSpecificConfig
    payload: bytes


def parse_adts(data: bytes) -> list[AdtsFrame]:
    """Split an ADTS stream into frames (CRC, if present, skipped unchecked).

    Raises :class:`RemoteProtocolError` on a lost sync word, a frame length
    shorter than its header, or a truncated last frame.
    """
    frames: list[AdtsFrame] = []
    pos = 0
    while pos < len(data):
        if pos + ADTS_HEADER_SIZE > len(data):
            raise RemoteProtocolError(
                f"truncated ADTS header: {len(data) - pos} of {ADTS_HEADER_SIZE} bytes"
            )
        value = int.from_bytes(data[pos : pos + ADTS_HEADER_SIZE], "big")
        if value >> 44 != ADTS_SYNC:
            raise RemoteProtocolError(f"ADTS sync word missing at byte {pos}")
        protection_absent = (value >> 40) & 1
        profile = (value >> 38) & 0x03
        index = (value >> 34) & 0x0F
        channels = (value >> 30) & 0x07
        frame_length = (value >> 13) & 0x1FFF
        header_size = ADTS_HEADER_SIZE + (0 if protection_absent else ADTS_CRC_SIZE)
        if frame_length < header_size:
            raise RemoteProtocolError(
                f"ADTS aac_frame_length {frame_length} is shorter than its header"
            )
        if pos + frame_length > len(data):
            raise RemoteProtocolError(
                f"truncated ADTS frame: {len(data) - pos} of {frame_length} bytes"
            )
        if index >= len(SAMPLING_FREQUENCIES):
            raise RemoteProtocolError(f"ADTS sampling_frequency_index {index} is reserved")
        config = AudioSpecificConfig(
            object_type=profile + 1,
            sampling_frequency_index=index,
            channel_configuration=channels,
        )
        frames.append(
            AdtsFrame(config=config, payload=data[pos + header_size : pos + frame_length])
        )
        pos += frame_length
    return frames
