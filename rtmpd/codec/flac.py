"""FLAC: STREAMINFO, in the form Enhanced RTMP carries it and in the MP4 ``dfLa`` box.

Enhanced RTMP (veovera) carries FLAC with the FourCC ``fLaC``; ffmpeg's FLV muxer sends the
codec's extradata as the SequenceStart body: the 34-byte METADATA_BLOCK_STREAMINFO
(RFC 9639 section 8.2). A body that is a FLAC stream header instead (``fLaC`` and metadata
blocks, STREAMINFO first) is read too. CodedFrames bodies are one FLAC frame each.

STREAMINFO, big-endian bit fields::

    minimum block size u(16) | maximum block size u(16)
    minimum frame size u(24) | maximum frame size u(24)
    sample rate u(20) | channels - 1 u(3) | bits per sample - 1 u(5)
    total samples u(36) | MD5 of the decoded audio u(128)

"Encapsulation of FLAC in ISO Base Media File Format" section 3.3.2: the ``dfLa`` box is a
full box (version 0, flags 0) holding metadata blocks, STREAMINFO first, each behind a
block header::

    last_metadata_block_flag u(1) | block_type u(7) (0: STREAMINFO) | length u(24)

We write STREAMINFO alone, as the last block. The sample entry (``fLaC``) gets the channel
count, the sample size and the sample rate (0 when it does not fit 16 bits), and the track's
timescale should be the sample rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAGIC",
    "MAX_METADATA_BLOCKS",
    "STREAMINFO_SIZE",
    "StreamInfo",
]

#: The four bytes that open a FLAC stream.
MAGIC = b"fLaC"
#: Size of the STREAMINFO block's data.
STREAMINFO_SIZE = 34
#: Metadata blocks walked to find STREAMINFO in a stream header or a ``dfLa``. It must come
#: first (RFC 9639 section 8), so one is enough; a few more tolerate writers that put a
#: block before it, without walking thousands of empty blocks.
MAX_METADATA_BLOCKS = 16

_BLOCK_STREAMINFO = 0
_LAST_BLOCK = 0x80
_DFLA_HEADER = bytes(4)  # version 0, flags 0


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """The STREAMINFO block, kept verbatim (``data``), with the fields a muxer needs."""

    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) != STREAMINFO_SIZE:
            raise LocalProtocolError(f"STREAMINFO is {STREAMINFO_SIZE} bytes, not {len(self.data)}")

    @property
    def sample_rate(self) -> int:
        return int.from_bytes(self.data[10:13], "big") >> 4

    @property
    def channels(self) -> int:
        return ((self.data[12] >> 1) & 0x07) + 1

    @property
    def bits_per_sample(self) -> int:
        return ((self.data[12] & 0x01) << 4 | self.data[13] >> 4) + 1

    @property
    def max_block_size(self) -> int:
        return int.from_bytes(self.data[2:4], "big")

    @classmethod
    def parse(cls, data: bytes) -> StreamInfo:
        """Read a SequenceStart body: bare STREAMINFO, or ``fLaC`` + metadata blocks.

        Raises :class:`RemoteProtocolError` if there is no STREAMINFO of 34 bytes or its
        sample rate is 0 (invalid for a stream, RFC 9639 section 8.2).
        """
        if data.startswith(MAGIC):
            return cls._from_blocks(data, len(MAGIC), "FLAC stream header")
        if len(data) != STREAMINFO_SIZE:
            raise RemoteProtocolError(
                f"FLAC sequence header of {len(data)} bytes is neither a {STREAMINFO_SIZE}-byte "
                "STREAMINFO nor a stream header starting b'fLaC'"
            )
        return cls._checked(data)

    @classmethod
    def parse_dfla(cls, payload: bytes) -> StreamInfo:
        """Read a ``dfLa`` box payload. Raises :class:`RemoteProtocolError` if malformed."""
        if len(payload) < 4:
            raise RemoteProtocolError(f"dfLa of {len(payload)} bytes has no full box header")
        if payload[0] != 0:
            raise RemoteProtocolError(f"dfLa version {payload[0]} is not 0")
        return cls._from_blocks(payload, 4, "dfLa")

    @classmethod
    def _from_blocks(cls, data: bytes, pos: int, what: str) -> StreamInfo:
        for _ in range(MAX_METADATA_BLOCKS):
            if pos + 4 > len(data):
                raise RemoteProtocolError(f"{what}: metadata block header truncated at {pos}")
            block_type = data[pos] & 0x7F
            last = bool(data[pos] & _LAST_BLOCK)
            length = int.from_bytes(data[pos + 1 : pos + 4], "big")
            pos += 4
            if pos + length > len(data):
                raise RemoteProtocolError(
                    f"{what}: metadata block of {length} bytes, {len(data) - pos} left"
                )
            if block_type == _BLOCK_STREAMINFO:
                if length != STREAMINFO_SIZE:
                    raise RemoteProtocolError(
                        f"{what}: STREAMINFO of {length} bytes, expected {STREAMINFO_SIZE}"
                    )
                return cls._checked(data[pos : pos + length])
            pos += length
            if last:
                break
        raise RemoteProtocolError(
            f"{what}: no STREAMINFO in the first {MAX_METADATA_BLOCKS} metadata blocks "
            "(MAX_METADATA_BLOCKS)"
        )

    @classmethod
    def _checked(cls, data: bytes) -> StreamInfo:
        info = cls(bytes(data))
        if info.sample_rate == 0:
            raise RemoteProtocolError("FLAC STREAMINFO sample rate 0")
        return info

    def dfla(self) -> bytes:
        """The ``dfLa`` payload: version 0, flags 0, STREAMINFO as the last block."""
        header = bytes((_LAST_BLOCK | _BLOCK_STREAMINFO,)) + STREAMINFO_SIZE.to_bytes(3, "big")
        return _DFLA_HEADER + header + self.data
