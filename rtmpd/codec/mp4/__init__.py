"""ISO BMFF (MP4) writing and reading, pure: bytes in, bytes out.

Modules:

* :mod:`.boxes` -- box writer with size patching, box header reader.
* :mod:`.fmp4` -- fragmented MP4: init segment and ``moof``+``mdat`` fragments (MSE, DASH, CMAF).
* :mod:`.progressive` -- one progressive MP4 with ``moov`` before ``mdat`` (faststart).
* :mod:`.demux` -- demuxer for progressive and fragmented files.

This package defines the types they share: :class:`TrackConfig` describes a track,
:class:`Sample` is one access unit. All times are integers in the track's timescale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from rtmpd.codec.errors import LocalProtocolError

__all__ = [
    "AUDIO_CODECS",
    "VIDEO_CODECS",
    "Codec",
    "EditListEntry",
    "Sample",
    "SampleTiming",
    "TrackConfig",
    "TrackKind",
]

#: Sample entry types for video: H.264 (``avc1``: parameter sets in ``avcC``; ``avc3``:
#: also in-band), H.265 (``hvc1`` / ``hev1``, the same split), AV1 (``av01`` with ``av1C``)
#: and VP9 (``vp09`` with ``vpcC``).
VIDEO_CODECS = frozenset({"avc1", "avc3", "hvc1", "hev1", "av01", "vp09"})
#: Sample entry types for audio: MPEG-4 audio (AAC) with an ``esds`` box, Opus with a
#: ``dOps`` box and FLAC (``fLaC``) with a ``dfLa`` box.
AUDIO_CODECS = frozenset({"mp4a", "Opus", "fLaC"})

Codec = Literal["avc1", "avc3", "hvc1", "hev1", "av01", "vp09", "mp4a", "Opus", "fLaC"]
TrackKind = Literal["video", "audio"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackConfig:
    """One track of an MP4 file.

    ``decoder_config`` is the codec configuration record exactly as FLV/RTMP carry it in the
    sequence header: the ``AVCDecoderConfigurationRecord`` (``avcC`` payload), the
    ``HEVCDecoderConfigurationRecord`` (``hvcC`` payload), the ``AV1CodecConfigurationRecord``
    (``av1C`` payload), the VP codec configuration record (written as ``vpcC`` version 1, see
    :mod:`rtmpd.codec.vp9`), the AAC ``AudioSpecificConfig`` (written inside ``esds``), the
    Opus identification header, RFC 7845 ``OpusHead`` (written as a ``dOps`` box, see
    :mod:`rtmpd.codec.opus`) or the FLAC STREAMINFO (written inside ``dfLa``, see
    :mod:`rtmpd.codec.flac`). ``timescale`` is in units per second (e.g. 1000 for FLV
    milliseconds, 90000 for video, the sample rate for audio, 48000 for Opus).
    ``width``/``height`` are in pixels (video only); ``sample_rate`` in Hz and
    ``channel_count`` (audio only) fill the audio sample entry (for Opus the ``OpusHead``'s
    channel count and 48000, for FLAC the STREAMINFO's values are written instead).
    """

    track_id: int
    kind: TrackKind
    codec: Codec
    timescale: int
    decoder_config: bytes
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channel_count: int = 0
    language: str = "und"

    def __post_init__(self) -> None:
        if not 1 <= self.track_id <= 0xFFFFFFFF:
            raise LocalProtocolError(f"track_id {self.track_id} outside 1..2**32-1")
        if not 1 <= self.timescale <= 0xFFFFFFFF:
            raise LocalProtocolError(f"timescale {self.timescale} outside 1..2**32-1")
        if self.kind == "video":
            if self.codec not in VIDEO_CODECS:
                raise LocalProtocolError(f"video track with audio codec {self.codec!r}")
            if not (0 <= self.width <= 0xFFFF and 0 <= self.height <= 0xFFFF):
                raise LocalProtocolError(f"video size {self.width}x{self.height} exceeds 65535")
        elif self.kind == "audio":
            if self.codec not in AUDIO_CODECS:
                raise LocalProtocolError(f"audio track with video codec {self.codec!r}")
            if not 0 <= self.channel_count <= 0xFFFF or self.sample_rate < 0:
                raise LocalProtocolError(
                    f"audio {self.sample_rate} Hz / {self.channel_count} channels out of range"
                )
        else:
            raise LocalProtocolError(f"track kind {self.kind!r} is neither video nor audio")
        if len(self.language) != 3 or not all("a" <= c <= "z" for c in self.language):
            raise LocalProtocolError(f"language {self.language!r} is not ISO 639-2/T lowercase")


class SampleTiming(Protocol):
    """What the writers need to know about a sample, without its data.

    Satisfied by :class:`Sample` and by :class:`rtmpd.codec.mp4.demux.DemuxedSample`, so a
    recorder can feed demuxed samples' metadata straight into the progressive writer.
    """

    @property
    def dts(self) -> int: ...
    @property
    def cts_offset(self) -> int: ...
    @property
    def duration(self) -> int: ...
    @property
    def keyframe(self) -> bool: ...
    @property
    def size(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One access unit, times in the track's timescale.

    ``dts`` is the decode time, ``cts_offset`` the composition (presentation) time minus the
    decode time (may be negative), ``duration`` the decode duration (the next sample's
    ``dts`` minus this one's). Video ``data`` is AVCC/HVCC (length-prefixed NAL units), audio
    ``data`` one raw AAC frame: exactly the FLV/RTMP payload after its headers.
    """

    dts: int
    cts_offset: int
    duration: int
    keyframe: bool
    data: bytes

    def __post_init__(self) -> None:
        if self.duration < 0:
            raise LocalProtocolError(f"sample duration {self.duration} is negative")
        if not -(2**31) <= self.cts_offset < 2**31:
            raise LocalProtocolError(f"cts_offset {self.cts_offset} does not fit 32 bits")

    @property
    def size(self) -> int:
        """Size of ``data`` in bytes."""
        return len(self.data)


@dataclass(frozen=True, slots=True, kw_only=True)
class EditListEntry:
    """One ``elst`` entry.

    ``segment_duration`` is in the movie (``mvhd``) timescale; ``media_time`` is in the
    track's media timescale, ``-1`` marking an empty edit (nothing presented for
    ``segment_duration``); ``media_rate`` is the integer part of the rate (1 = normal).
    """

    segment_duration: int
    media_time: int
    media_rate: int = 1

    @property
    def is_empty(self) -> bool:
        return self.media_time == -1
