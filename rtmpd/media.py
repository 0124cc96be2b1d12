"""The one in-memory unit of media: :class:`Frame`.

Every ingest protocol turns its input into Frames and every output consumes
them. A Frame carries the FLV tag body unchanged (``payload``) plus the few
facts the core needs without re-parsing it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rtmpd.codec import flv


class FrameKind(enum.IntEnum):
    """FLV tag type values, also the RTMP message type ids for media."""

    AUDIO = 8
    VIDEO = 9
    SCRIPT = 18


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One audio, video or script (metadata) message.

    ``timestamp_ms`` is the decode timestamp; ``composition_ms`` the offset
    of the presentation time from it (B-frames), both in milliseconds.
    ``codec`` is the FLV SoundFormat / CodecID, or the Enhanced RTMP FourCC
    as an int. ``payload`` is the FLV tag body exactly as received.
    """

    kind: FrameKind
    timestamp_ms: int
    payload: bytes
    composition_ms: int = 0
    keyframe: bool = False
    sequence_header: bool = False
    codec: int = 0

    @classmethod
    def from_tag(cls, kind: int, timestamp_ms: int, payload: bytes) -> Frame:
        """Build a Frame from an FLV tag / RTMP media message body.

        Raises :class:`rtmpd.codec.errors.RemoteProtocolError` for a kind
        that is not audio, video or script data.
        """
        info = flv.describe_tag(kind, payload)
        return cls(
            kind=FrameKind(kind),
            timestamp_ms=timestamp_ms & 0xFFFFFFFF,
            payload=payload,
            composition_ms=info.composition_ms,
            keyframe=info.keyframe,
            sequence_header=info.sequence_header,
            codec=info.codec,
        )

    @property
    def size(self) -> int:
        """Payload size in bytes."""
        return len(self.payload)
