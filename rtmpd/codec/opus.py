"""Opus: the identification header, in its two byte orders.

Enhanced RTMP (veovera, v2) carries Opus as an ExAudio tag with the FourCC
``Opus``; its SequenceStart body is the Opus identification header of
RFC 7845 section 5.1 ("OpusHead"), fields little-endian::

    offset size  field
     0      8    Magic Signature        'OpusHead' (4f 70 75 73 48 65 61 64)
     8      1    Version                1 (upper 4 bits 0: any 1..15 is read)
     9      1    Output Channel Count   C >= 1
    10      2    Pre-skip               samples at 48 kHz to drop at the start, LE
    12      4    Input Sample Rate      Hz, informational only (0: unknown), LE
    16      2    Output Gain            Q7.8 dB, signed, LE
    18      1    Channel Mapping Family 0: mono/stereo, C <= 2, no table;
                                        1: Vorbis order, C <= 8; 255 and others: table
    -- only when the family is not 0 --
    19      1    Stream Count           N >= 1
    20      1    Coupled Count          M <= N
    21      C    Channel Mapping        one byte per output channel, < N + M or 255

So 19 bytes for mono or stereo, 21 + C otherwise. Bytes after that are
ignored, as RFC 7845 asks of readers (later minor versions may append). The
one size read from the wire is C, a single byte, so a header is never more
than :data:`MAX_OPUS_HEAD_SIZE` bytes and needs no limit of its own (the
tag around it is bounded by ``flv.MAX_TAG_SIZE``). An
empty SequenceStart body is allowed by Enhanced RTMP; it is read as stereo,
family 0, no pre-skip (:data:`DEFAULT_HEAD`), since an Opus decoder set up
for stereo also decodes mono packets.

ISO BMFF carries the same fields in the ``dOps`` box ("Encapsulation of Opus
in ISO Base Media File Format", section 4.3.2), big-endian, with Version 0
and the magic left out::

    Version u8 (0) | OutputChannelCount u8 | PreSkip u16 | InputSampleRate u32
    | OutputGain s16 | ChannelMappingFamily u8
    [| StreamCount u8 | CoupledCount u8 | ChannelMapping u8 * OutputChannelCount]

:class:`OpusHead` reads and writes both (``parse``/``__bytes__`` and
``parse_dops``/``dops``), so a sequence header and a ``dOps`` payload round
trip through it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_HEAD",
    "MAGIC",
    "MAX_OPUS_HEAD_SIZE",
    "OPUS_HEAD_SIZE",
    "SAMPLE_RATE",
    "OpusHead",
]

#: The magic signature that opens an identification header.
MAGIC = b"OpusHead"
#: Size of an identification header without a channel mapping table.
OPUS_HEAD_SIZE = 19
#: Largest header this module writes or reads: 21 bytes and a 255-channel mapping table.
MAX_OPUS_HEAD_SIZE = OPUS_HEAD_SIZE + 2 + 0xFF
#: Opus always decodes at 48 kHz; pre-skip and durations count samples at this rate.
SAMPLE_RATE = 48000
#: The one channel mapping family without a table (mono or stereo).
FAMILY_MONO_STEREO = 0
#: Family 1 (Vorbis channel order) defines layouts for 1 to 8 channels only.
FAMILY_VORBIS = 1
MAX_VORBIS_CHANNELS = 8

_HEAD = struct.Struct("<8sBBHIhB")  # magic .. family, little-endian
_DOPS = struct.Struct(">BBHIhB")  # Version .. ChannelMappingFamily, big-endian


@dataclass(frozen=True, slots=True, kw_only=True)
class OpusHead:
    """The fields of an Opus identification header (RFC 7845 section 5.1).

    ``pre_skip`` is in samples at 48 kHz; ``input_sample_rate`` in Hz (0 when
    unknown); ``output_gain`` in Q7.8 dB. For family 0 the table fields hold
    the values the family implies (one stream, coupled when stereo, identity
    mapping) and are not written.
    """

    channel_count: int
    pre_skip: int = 0
    input_sample_rate: int = SAMPLE_RATE
    output_gain: int = 0
    channel_mapping_family: int = FAMILY_MONO_STEREO
    stream_count: int = 1
    coupled_count: int = -1  # -1: implied by the family (family 0 only)
    channel_mapping: bytes = b""
    version: int = 1

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise LocalProtocolError(problem)

    def _problem(self) -> str | None:
        c = self.channel_count
        if not 1 <= self.version <= 0x0F:
            return f"OpusHead version {self.version} is not 1..15 (major version 0)"
        if not 1 <= c <= 0xFF:
            return f"Opus output channel count {c} is outside 1..255"
        if not 0 <= self.pre_skip <= 0xFFFF:
            return f"Opus pre-skip {self.pre_skip} does not fit 16 bits"
        if not 0 <= self.input_sample_rate <= 0xFFFFFFFF:
            return f"Opus input sample rate {self.input_sample_rate} does not fit 32 bits"
        if not -0x8000 <= self.output_gain <= 0x7FFF:
            return f"Opus output gain {self.output_gain} does not fit 16 bits"
        family = self.channel_mapping_family
        if not 0 <= family <= 0xFF:
            return f"Opus channel mapping family {family} does not fit 8 bits"
        if family == FAMILY_MONO_STEREO:
            if c > 2:
                return f"Opus channel mapping family 0 allows 1 or 2 channels, not {c}"
            implied = (1, c - 1, bytes(range(c)))
            given = (self.stream_count, self.coupled_count, self.channel_mapping)
            if given not in ((1, -1, b""), implied):
                return f"Opus family 0 has no mapping table, got {given}"
            return None
        if family == FAMILY_VORBIS and c > MAX_VORBIS_CHANNELS:
            return f"Opus channel mapping family 1 allows 1..8 channels, not {c}"
        n, m = self.stream_count, self.coupled_count
        if not 1 <= n <= 0xFF or not 0 <= m <= n or n + m > 0xFF:
            return f"Opus stream count {n} / coupled count {m}: need 1 <= N, M <= N, N + M <= 255"
        if len(self.channel_mapping) != c:
            return f"Opus channel mapping of {len(self.channel_mapping)} bytes for {c} channels"
        for channel, index in enumerate(self.channel_mapping):
            if index != 255 and index >= n + m:
                return (
                    f"Opus channel {channel} maps to decoded channel {index}, "
                    f"not below N + M = {n + m} (or 255)"
                )
        return None

    @property
    def has_table(self) -> bool:
        """Whether a channel mapping table follows the fixed fields."""
        return self.channel_mapping_family != FAMILY_MONO_STEREO

    def _table(self) -> bytes:
        if not self.has_table:
            return b""
        return bytes((self.stream_count, self.coupled_count)) + self.channel_mapping

    def __bytes__(self) -> bytes:
        """The identification header (little-endian), as Enhanced RTMP's SequenceStart."""
        fixed = _HEAD.pack(
            MAGIC,
            self.version,
            self.channel_count,
            self.pre_skip,
            self.input_sample_rate,
            self.output_gain,
            self.channel_mapping_family,
        )
        return fixed + self._table()

    def dops(self) -> bytes:
        """The payload of a ``dOps`` box (big-endian, Version 0)."""
        fixed = _DOPS.pack(
            0,
            self.channel_count,
            self.pre_skip,
            self.input_sample_rate,
            self.output_gain,
            self.channel_mapping_family,
        )
        return fixed + self._table()

    @classmethod
    def parse(cls, data: bytes) -> OpusHead:
        """Read an identification header; ``b""`` gives :data:`DEFAULT_HEAD`.

        Raises :class:`RemoteProtocolError` for a wrong magic, an unknown
        major version, a short header or inconsistent fields.
        """
        if not data:
            return DEFAULT_HEAD
        if len(data) < OPUS_HEAD_SIZE:
            raise RemoteProtocolError(
                f"OpusHead of {len(data)} bytes is shorter than {OPUS_HEAD_SIZE}"
            )
        magic, version, channels, pre_skip, rate, gain, family = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise RemoteProtocolError(f"Opus sequence header starts {magic!r}, not b'OpusHead'")
        if not 1 <= version <= 0x0F:
            raise RemoteProtocolError(f"OpusHead version {version} is not 1..15 (major version 0)")
        return cls._build(
            version, channels, pre_skip, rate, gain, family, data, OPUS_HEAD_SIZE, "OpusHead"
        )

    @classmethod
    def parse_dops(cls, data: bytes) -> OpusHead:
        """Read a ``dOps`` payload. Raises :class:`RemoteProtocolError` if malformed."""
        if len(data) < _DOPS.size:
            raise RemoteProtocolError(f"dOps of {len(data)} bytes is shorter than {_DOPS.size}")
        version, channels, pre_skip, rate, gain, family = _DOPS.unpack_from(data)
        if version != 0:
            raise RemoteProtocolError(f"dOps version {version} is not 0")
        return cls._build(1, channels, pre_skip, rate, gain, family, data, _DOPS.size, "dOps")

    @classmethod
    def _build(
        cls,
        version: int,
        channels: int,
        pre_skip: int,
        rate: int,
        gain: int,
        family: int,
        data: bytes,
        table_at: int,
        what: str,
    ) -> OpusHead:
        stream_count, coupled_count, mapping = 1, -1, b""
        if family != FAMILY_MONO_STEREO:
            end = table_at + 2 + channels
            if len(data) < end:
                raise RemoteProtocolError(
                    f"{what} of {len(data)} bytes ends inside its channel mapping table "
                    f"({end} bytes for {channels} channels)"
                )
            stream_count, coupled_count = data[table_at], data[table_at + 1]
            mapping = bytes(data[table_at + 2 : end])
        try:
            return cls(
                channel_count=channels,
                pre_skip=pre_skip,
                input_sample_rate=rate,
                output_gain=gain,
                channel_mapping_family=family,
                stream_count=stream_count,
                coupled_count=coupled_count,
                channel_mapping=mapping,
                version=version,
            )
        except LocalProtocolError as exc:
            raise RemoteProtocolError(f"{what}: {exc}") from None


#: What an empty Opus SequenceStart means: stereo, family 0, no pre-skip, 48 kHz.
DEFAULT_HEAD = OpusHead(channel_count=2)
