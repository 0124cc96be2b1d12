"""FLV: file header, tags, and what a tag body says about itself.

Names follow the FLV specification v10.1 (Annex E) and Enhanced RTMP v2
(veovera), so this module reads against them. Layout of a file or an
HTTP-FLV / WS-FLV stream::

    FLV header (9 bytes: 'FLV', version 1, flags, DataOffset = 9)
    PreviousTagSize0      UI32 = 0
    FLVTAG 1              11-byte TagHeader + body
    PreviousTagSize1      UI32 = 11 + DataSize of tag 1
    ...
    FLVTAG n, PreviousTagSizeN

TagHeader::

    Reserved UB[2] | Filter UB[1] | TagType UB[5]   (8 audio, 9 video, 18 script)
    DataSize          UI24  body size in bytes
    Timestamp         UI24  ms, lower 24 bits
    TimestampExtended UI8   bits 24..31 of the timestamp
    StreamID          UI24  always 0

Writers: :func:`encode_header`, :func:`encode_tag`, :class:`FlvTagWriter`.
Reader: :class:`FlvReader` (sans-IO, h11-style). Body inspection:
:func:`describe_tag`, and :func:`audio_packet` / :func:`video_packet` for where
a tag's codec data starts.

Opus (Enhanced RTMP v2, ExAudioTagHeader; what rtmpd accepts and passes on
unchanged)::

    SequenceStart  0x90 | 'Opus' (4f 70 75 73) | OpusHead identification header
    CodedFrames    0x91 | 'Opus' | one Opus packet (RFC 6716), as an encoder emits it

0x90 / 0x91 is SoundFormat 9 (ExHeader) in the high nibble and
AudioPacketType 0 (SequenceStart) / 1 (CodedFrames) in the low one. The
OpusHead is RFC 7845 section 5.1 byte for byte (19 bytes for mono/stereo,
little-endian fields; layout in :mod:`rtmpd.codec.opus`). The tag timestamp
is the packet's presentation time in ms. ModEx prefixes and a OneTrack
Multitrack wrapper are understood too; MultichannelConfig (0x94) and
SequenceEnd (0x92) tags pass through to viewers and are not media to the
recorders.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from rtmpd.codec.buffer import ByteBuffer
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.sentinel import NEED_DATA as NEED_DATA
from rtmpd.codec.sentinel import NeedData as NeedData

# --------------------------------------------------------------------------- constants

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18
TAG_TYPES = frozenset((TAG_AUDIO, TAG_VIDEO, TAG_SCRIPT))

FLV_SIGNATURE = b"FLV"
FLV_VERSION = 1
FLV_HEADER_SIZE = 9
TAG_HEADER_SIZE = 11
PREVIOUS_TAG_SIZE_SIZE = 4

# DataSize is a UI24, so the format allows tags of almost 16 MiB. A live
# keyframe is far smaller (a 4K intra frame at broadcast bitrates is a few
# MiB), and every byte of a tag is buffered before it is passed on, so we
# cap one tag at 8 MiB: enough for any real frame, and a bound on the memory
# one publisher can make us hold.
MAX_TAG_SIZE = 8 * 1024 * 1024

# DataOffset (the header size) is 9 for FLV version 1; a larger value would
# mean extra header bytes that we skip. They are buffered before skipping, so
# they are bounded; no known muxer writes any.
MAX_HEADER_SIZE = 1024

# Largest body the UI24 DataSize can describe.
_MAX_DATA_SIZE = 0xFFFFFF

# TypeFlagsAudio / TypeFlagsVideo in the header's flags byte.
_FLAG_AUDIO = 0x04
_FLAG_VIDEO = 0x01
# Filter bit of the TagHeader: the body is encrypted / pre-processed.
_TAG_FILTER = 0x20

# Legacy VideoTagHeader: FrameType UB[4] | CodecID UB[4].
VIDEO_FRAME_KEY = 1
VIDEO_FRAME_INTER = 2
VIDEO_FRAME_DISPOSABLE_INTER = 3
VIDEO_FRAME_GENERATED_KEY = 4
VIDEO_FRAME_COMMAND = 5  # "video info / command frame": carries no picture

VIDEO_H263 = 2
VIDEO_SCREEN = 3
VIDEO_VP6 = 4
VIDEO_VP6_ALPHA = 5
VIDEO_SCREEN_V2 = 6
VIDEO_AVC = 7
# Not in the FLV spec: CodecID 12 is the de facto HEVC id of pre-Enhanced-RTMP
# forks (and of many Chinese CDNs); same layout as AVC.
VIDEO_HEVC = 12

# AVCPacketType (legacy AVC / HEVC).
AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2

# Audio SoundFormat UB[4] (high nibble of the first body byte).
AUDIO_PCM = 0
AUDIO_ADPCM = 1
AUDIO_MP3 = 2
AUDIO_PCM_LE = 3
AUDIO_NELLYMOSER_16K = 4
AUDIO_NELLYMOSER_8K = 5
AUDIO_NELLYMOSER = 6
AUDIO_G711_ALAW = 7
AUDIO_G711_MULAW = 8
AUDIO_EX_HEADER = 9  # reserved in FLV v10.1; Enhanced RTMP's ExHeader signal
AUDIO_AAC = 10
AUDIO_SPEEX = 11
AUDIO_MP3_8K = 14
AUDIO_DEVICE_SPECIFIC = 15

# AACPacketType.
AAC_SEQUENCE_HEADER = 0
AAC_RAW = 1

# Enhanced RTMP: IsExHeader bit of the first video byte.
VIDEO_EX_HEADER = 0x80

# Enhanced RTMP VideoPacketType (low nibble when IsExHeader).
VIDEO_PACKET_SEQUENCE_START = 0
VIDEO_PACKET_CODED_FRAMES = 1
VIDEO_PACKET_SEQUENCE_END = 2
VIDEO_PACKET_CODED_FRAMES_X = 3
VIDEO_PACKET_METADATA = 4
VIDEO_PACKET_MPEG2TS_SEQUENCE_START = 5
VIDEO_PACKET_MULTITRACK = 6
VIDEO_PACKET_MOD_EX = 7

# Enhanced RTMP AudioPacketType (low nibble when SoundFormat is ExHeader).
AUDIO_PACKET_SEQUENCE_START = 0
AUDIO_PACKET_CODED_FRAMES = 1
AUDIO_PACKET_SEQUENCE_END = 2
AUDIO_PACKET_MULTICHANNEL_CONFIG = 4
AUDIO_PACKET_MULTITRACK = 5
AUDIO_PACKET_MOD_EX = 7

# Enhanced RTMP AvMultitrackType (high nibble of the byte after the header).
MULTITRACK_ONE_TRACK = 0
MULTITRACK_MANY_TRACKS = 1
MULTITRACK_MANY_TRACKS_MANY_CODECS = 2


def fourcc(code: bytes) -> int:
    """The int a FourCC is carried as in :attr:`TagInfo.codec` (big-endian)."""
    if len(code) != 4:
        raise LocalProtocolError(f"a FourCC is 4 bytes, got {code!r}")
    return int.from_bytes(code, "big")


FOURCC_AVC1 = fourcc(b"avc1")
FOURCC_HVC1 = fourcc(b"hvc1")
FOURCC_VVC1 = fourcc(b"vvc1")
FOURCC_AV01 = fourcc(b"av01")
FOURCC_VP08 = fourcc(b"vp08")
FOURCC_VP09 = fourcc(b"vp09")
FOURCC_MP4A = fourcc(b"mp4a")
FOURCC_OPUS = fourcc(b"Opus")
FOURCC_FLAC = fourcc(b"fLaC")
FOURCC_AC3 = fourcc(b"ac-3")
FOURCC_EC3 = fourcc(b"ec-3")
FOURCC_MP3 = fourcc(b".mp3")

# Codecs whose Enhanced RTMP CodedFrames carry an SI24 CompositionTime
# (the others have no B-frame reordering in FLV).
_FOURCCS_WITH_COMPOSITION = frozenset((FOURCC_AVC1, FOURCC_HVC1, FOURCC_VVC1))

# --------------------------------------------------------------------------- writing

_TAG_HEADER = struct.Struct(">IIHB")  # (type<<24 | size), (ts24<<8 | ts_ext), stream id
_UI32 = struct.Struct(">I")
_pack_tag_header = _TAG_HEADER.pack
_pack_ui32 = _UI32.pack


def encode_header(*, has_audio: bool, has_video: bool) -> bytes:
    """The 9-byte FLV header followed by PreviousTagSize0 (13 bytes in all).

    Every FLV output starts with both, so they are produced together.
    """
    flags = (_FLAG_AUDIO if has_audio else 0) | (_FLAG_VIDEO if has_video else 0)
    return struct.pack(">3sBBII", FLV_SIGNATURE, FLV_VERSION, flags, FLV_HEADER_SIZE, 0)


def encode_tag(tag_type: int, timestamp_ms: int, body: bytes) -> bytes:
    """One FLV tag: 11-byte TagHeader, ``body``, then its PreviousTagSize.

    ``timestamp_ms`` is taken modulo 2**32, as RTMP timestamps wrap; its
    lower 24 bits go in Timestamp and bits 24..31 in TimestampExtended.
    StreamID is 0. This is the per-frame path of HTTP-FLV / WS-FLV fan-out
    (called once per frame, the result shared by every viewer), so it does
    two struct packs and one join.
    """
    size = len(body)
    if size > _MAX_DATA_SIZE or tag_type not in TAG_TYPES:
        raise LocalProtocolError(
            f"cannot encode FLV tag type {tag_type} of {size} bytes "
            f"(types 8, 9, 18; at most {_MAX_DATA_SIZE} bytes)"
        )
    ts = timestamp_ms & 0xFFFFFFFF
    header = _pack_tag_header((tag_type << 24) | size, ((ts & 0xFFFFFF) << 8) | (ts >> 24), 0, 0)
    return b"".join((header, body, _pack_ui32(size + TAG_HEADER_SIZE)))


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True, kw_only=True)
class FlvHeaderReceived:
    """The FLV file header: which streams it announces, and its version."""

    has_audio: bool
    has_video: bool
    version: int = FLV_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class TagReceived:
    """One FLV tag. ``timestamp_ms`` includes TimestampExtended as bits 24..31."""

    tag_type: int
    timestamp_ms: int
    body: bytes

    def __post_init__(self) -> None:
        if self.tag_type not in TAG_TYPES:
            raise LocalProtocolError(f"FLV tag type {self.tag_type} is not 8, 9 or 18")
        if not 0 <= self.timestamp_ms <= 0xFFFFFFFF:
            raise LocalProtocolError(f"FLV timestamp {self.timestamp_ms} ms is not a UI32")


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfStream:
    """The input ended cleanly, after a PreviousTagSize (a tag boundary)."""


FlvEvent = FlvHeaderReceived | TagReceived | EndOfStream


# --------------------------------------------------------------------------- writer


class FlvTagWriter:
    """Writes a whole FLV stream: the header on first use, then tags.

    ``send`` takes the reader's events, so a reader/writer round trip
    reproduces a canonical file byte for byte::

        writer = FlvTagWriter(has_audio=True, has_video=True)
        out = writer.send(TagReceived(tag_type=TAG_VIDEO, timestamp_ms=0, body=b"..."))
    """

    __slots__ = ("_has_audio", "_has_video", "_header_sent")

    def __init__(self, *, has_audio: bool, has_video: bool) -> None:
        self._has_audio = has_audio
        self._has_video = has_video
        self._header_sent = False

    @property
    def header_sent(self) -> bool:
        """Whether the FLV header has been produced yet."""
        return self._header_sent

    def header(self) -> bytes:
        """The FLV header plus PreviousTagSize0; only once per stream."""
        if self._header_sent:
            raise LocalProtocolError("FLV header already sent")
        self._header_sent = True
        return encode_header(has_audio=self._has_audio, has_video=self._has_video)

    def send(self, event: FlvHeaderReceived | TagReceived) -> bytes:
        """Bytes for ``event``; the header is prepended before the first tag."""
        if isinstance(event, FlvHeaderReceived):
            self._has_audio = event.has_audio
            self._has_video = event.has_video
            return self.header()
        tag = encode_tag(event.tag_type, event.timestamp_ms, event.body)
        if not self._header_sent:
            return self.header() + tag
        return tag


# --------------------------------------------------------------------------- reader


class _ReaderState(enum.Enum):
    HEADER = "header"  # FLV header + PreviousTagSize0
    TAG_HEADER = "tag header"  # 11-byte TagHeader
    TAG_BODY = "tag body"  # DataSize bytes
    PREVIOUS_TAG_SIZE = "previous tag size"  # UI32 after each tag
    DONE = "done"  # EndOfStream returned
    ERROR = "error"  # a RemoteProtocolError was raised


# The one table of moves: (state, what was parsed) -> next state.
_TRANSITIONS: dict[tuple[_ReaderState, str], _ReaderState] = {
    (_ReaderState.HEADER, "header"): _ReaderState.TAG_HEADER,
    (_ReaderState.TAG_HEADER, "tag header"): _ReaderState.TAG_BODY,
    (_ReaderState.TAG_HEADER, "eof"): _ReaderState.DONE,
    (_ReaderState.TAG_BODY, "tag body"): _ReaderState.PREVIOUS_TAG_SIZE,
    (_ReaderState.PREVIOUS_TAG_SIZE, "previous tag size"): _ReaderState.TAG_HEADER,
}

_FLV_HEADER = struct.Struct(">3sBBI")
_TAG_HEADER_READ = struct.Struct(">BHBHBBHB")  # type, size hi16/lo8, ts hi16/lo8, ext, sid


class FlvReader:
    """Incremental FLV demuxer, without I/O.

    Feed bytes with :meth:`receive_data` (``b""`` means EOF) and call
    :meth:`next_event` until it returns :data:`NEED_DATA`. Input split at
    any byte boundary gives the same events.

    Checks: signature ``FLV``, version 1, ``9 <= DataOffset <=
    MAX_HEADER_SIZE`` (extra header bytes are skipped), TagType 8/9/18 with
    the Filter (encryption) bit clear, and DataSize against ``max_tag_size``
    as soon as the tag header arrives, before any of the body is awaited.
    StreamID is ignored.

    PreviousTagSize is checked leniently: some muxers write 0 or the body
    size alone, and the value carries nothing we need (we never read
    backwards), so a mismatch is only counted in
    :attr:`previous_size_mismatches`.
    """

    __slots__ = (
        "_buffer",
        "_eof",
        "_error",
        "_expected_previous_size",
        "_max_tag_size",
        "_pending",
        "_state",
        "previous_size_mismatches",
    )

    def __init__(self, *, max_tag_size: int = MAX_TAG_SIZE) -> None:
        if not 0 <= max_tag_size <= _MAX_DATA_SIZE:
            raise LocalProtocolError(f"max_tag_size {max_tag_size} is outside 0..{_MAX_DATA_SIZE}")
        self._buffer = ByteBuffer()
        self._max_tag_size = max_tag_size
        self._state = _ReaderState.HEADER
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._pending: tuple[int, int, int] = (0, 0, 0)  # tag type, data size, timestamp
        self._expected_previous_size = 0
        #: Count of PreviousTagSize fields that did not match the tag before.
        self.previous_size_mismatches = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as events."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Append received bytes; ``b""`` signals EOF."""
        if self._eof:
            if data:
                raise LocalProtocolError("FLV data received after EOF")
            return
        if data:
            self._buffer.append(data)
        else:
            self._eof = True

    def next_event(self) -> FlvHeaderReceived | TagReceived | EndOfStream | NeedData:
        """The next event, or :data:`NEED_DATA`.

        Raises :class:`RemoteProtocolError` for malformed input and for EOF
        anywhere but a tag boundary (message starts with "truncated"); once
        raised, every later call raises it again.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._state = _ReaderState.ERROR
            self._error = exc
            raise

    def _move(self, parsed: str) -> None:
        try:
            self._state = _TRANSITIONS[(self._state, parsed)]
        except KeyError:
            raise LocalProtocolError(
                f"FlvReader cannot take {parsed!r} in state {self._state.value}"
            ) from None

    def _need(self, what: str, have: int, need: int) -> NeedData:
        if self._eof:
            raise RemoteProtocolError(f"truncated FLV {what}: EOF after {have} of {need} bytes")
        return NEED_DATA

    def _next_event(self) -> FlvHeaderReceived | TagReceived | EndOfStream | NeedData:
        buf = self._buffer
        while True:
            state = self._state
            if state is _ReaderState.TAG_HEADER:
                if len(buf) < TAG_HEADER_SIZE:
                    if self._eof and len(buf) == 0:
                        self._move("eof")
                        return EndOfStream()
                    return self._need("tag header", len(buf), TAG_HEADER_SIZE)
                self._read_tag_header()
            elif state is _ReaderState.TAG_BODY:
                tag_type, size, timestamp = self._pending
                body = buf.read(size)
                if body is None:
                    return self._need("tag body", len(buf), size)
                buf.commit()
                self._expected_previous_size = TAG_HEADER_SIZE + size
                self._move("tag body")
                return TagReceived(tag_type=tag_type, timestamp_ms=timestamp, body=body)
            elif state is _ReaderState.PREVIOUS_TAG_SIZE:
                fields = buf.unpack(_UI32)
                if fields is None:
                    return self._need("PreviousTagSize", len(buf), 4)
                buf.commit()
                if fields[0] != self._expected_previous_size:
                    self.previous_size_mismatches += 1
                self._move("previous tag size")
            elif state is _ReaderState.HEADER:
                return self._read_header()
            elif state is _ReaderState.DONE:
                return EndOfStream()
            else:  # pragma: no cover - ERROR is handled by next_event
                raise LocalProtocolError(f"FlvReader in state {state.value}")

    def _read_header(self) -> FlvHeaderReceived | NeedData:
        buf = self._buffer
        head = buf.peek(min(len(buf), FLV_HEADER_SIZE)) or b""
        if not FLV_SIGNATURE.startswith(head[:3]):
            raise RemoteProtocolError(
                f"not an FLV stream: signature {head[:3]!r}, expected b'FLV'", hint=400
            )
        if len(head) >= 4 and head[3] != FLV_VERSION:
            raise RemoteProtocolError(f"unsupported FLV version {head[3]}, expected 1")
        if len(head) < FLV_HEADER_SIZE:
            return self._need("header", len(head), FLV_HEADER_SIZE)
        _, version, flags, data_offset = _FLV_HEADER.unpack(head)
        if not FLV_HEADER_SIZE <= data_offset <= MAX_HEADER_SIZE:
            raise RemoteProtocolError(
                f"FLV DataOffset {data_offset} is outside {FLV_HEADER_SIZE}.."
                f"{MAX_HEADER_SIZE} (MAX_HEADER_SIZE)"
            )
        total = data_offset + PREVIOUS_TAG_SIZE_SIZE
        if len(buf) < total:
            return self._need("header", len(buf), total)
        buf.skip(data_offset)
        (previous_size,) = buf.unpack(_UI32) or (0,)
        buf.commit()
        if previous_size != 0:
            self.previous_size_mismatches += 1
        self._move("header")
        return FlvHeaderReceived(
            has_audio=bool(flags & _FLAG_AUDIO),
            has_video=bool(flags & _FLAG_VIDEO),
            version=version,
        )

    def _read_tag_header(self) -> None:
        fields = self._buffer.unpack(_TAG_HEADER_READ)
        assert fields is not None  # the caller checked the length
        self._buffer.commit()
        type_byte, size_hi, size_lo, ts_hi, ts_lo, ts_ext, _, _ = fields
        if type_byte & _TAG_FILTER:
            raise RemoteProtocolError(
                f"encrypted / filtered FLV tag (TagType byte 0x{type_byte:02x}) is not supported"
            )
        if type_byte not in TAG_TYPES:
            raise RemoteProtocolError(
                f"unknown FLV tag type {type_byte} (TagType byte 0x{type_byte:02x})"
            )
        size = (size_hi << 8) | size_lo
        if size > self._max_tag_size:
            raise RemoteProtocolError(
                f"FLV tag of {size} bytes exceeds MAX_TAG_SIZE ({self._max_tag_size})",
                hint=413,
            )
        timestamp = (ts_ext << 24) | (ts_hi << 8) | ts_lo
        self._pending = (type_byte, size, timestamp)
        self._move("tag header")


# --------------------------------------------------------------------------- describe_tag


@dataclass(frozen=True, slots=True)
class TagInfo:
    """What a tag body says about itself.

    ``keyframe``: a coded key frame a decoder can start from (never set on
    sequence headers, end-of-sequence, metadata, command frames or audio).
    ``sequence_header``: decoder configuration (AVC/HEVC/AAC sequence
    header, Enhanced RTMP SequenceStart / MPEG2TSSequenceStart).
    ``codec``: legacy CodecID / SoundFormat, or the Enhanced RTMP FourCC as
    a big-endian int (0 for script data and command frames without one).
    ``composition_ms``: signed composition time offset (PTS - DTS) in ms.
    """

    keyframe: bool
    sequence_header: bool
    codec: int
    composition_ms: int


_SCRIPT_INFO = TagInfo(keyframe=False, sequence_header=False, codec=0, composition_ms=0)


def _si24(body: bytes, offset: int) -> int:
    value = (body[offset] << 16) | (body[offset + 1] << 8) | body[offset + 2]
    return value - 0x1000000 if value & 0x800000 else value


def _short(kind: str, need: int, body: bytes) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"{kind} body of {len(body)} bytes is shorter than its {need}-byte header"
    )


def describe_tag(tag_type: int, body: bytes) -> TagInfo:
    """Inspect an FLV tag / RTMP media message body without decoding media.

    Understands legacy FLV video (AVC, and CodecID 12 HEVC) and audio (AAC),
    and Enhanced RTMP v2 ExHeaders: FourCC codecs, ModEx, Multitrack (the
    first track describes the tag). Raises :class:`RemoteProtocolError` for
    an unknown tag type, an empty body, or a body shorter than the header
    it declares.
    """
    if tag_type == TAG_VIDEO:
        return _describe_video(body)
    if tag_type == TAG_AUDIO:
        return _describe_audio(body)
    if tag_type == TAG_SCRIPT:
        if not body:
            raise RemoteProtocolError("empty script data tag body")
        return _SCRIPT_INFO
    raise RemoteProtocolError(f"unknown FLV tag type {tag_type}, expected 8, 9 or 18")


def _describe_video(body: bytes) -> TagInfo:
    if not body:
        raise RemoteProtocolError("empty video tag body")
    first = body[0]
    if first & VIDEO_EX_HEADER:
        return _describe_ex_video(body)
    frame_type = first >> 4
    codec = first & 0x0F
    if frame_type == VIDEO_FRAME_COMMAND:
        return TagInfo(keyframe=False, sequence_header=False, codec=codec, composition_ms=0)
    if codec in (VIDEO_AVC, VIDEO_HEVC):
        if len(body) < 5:
            raise _short("AVC/HEVC video", 5, body)
        packet_type = body[1]
        if packet_type == AVC_SEQUENCE_HEADER:
            return TagInfo(keyframe=False, sequence_header=True, codec=codec, composition_ms=0)
        if packet_type == AVC_NALU:
            return TagInfo(
                keyframe=frame_type == VIDEO_FRAME_KEY,
                sequence_header=False,
                codec=codec,
                composition_ms=_si24(body, 2),
            )
        # End of sequence, or an unknown packet type: no picture.
        return TagInfo(keyframe=False, sequence_header=False, codec=codec, composition_ms=0)
    return TagInfo(
        keyframe=frame_type == VIDEO_FRAME_KEY,
        sequence_header=False,
        codec=codec,
        composition_ms=0,
    )


def _skip_mod_ex(body: bytes, pos: int, packet_type: int, kind: str) -> tuple[int, int]:
    """Skip Enhanced RTMP ModEx blocks; return (position, real packet type)."""
    while packet_type == VIDEO_PACKET_MOD_EX:  # same value (7) for audio
        if pos >= len(body):
            raise _short(kind, pos + 1, body)
        size = body[pos] + 1
        pos += 1
        if size == 256:
            if pos + 2 > len(body):
                raise _short(kind, pos + 2, body)
            size = int.from_bytes(body[pos : pos + 2], "big") + 1
            pos += 2
        pos += size
        if pos >= len(body):
            raise _short(kind, pos + 1, body)
        packet_type = body[pos] & 0x0F  # high nibble: ModExType
        pos += 1
    return pos, packet_type


def _read_multitrack(body: bytes, pos: int, kind: str) -> tuple[int, int, int]:
    """Parse a Multitrack prefix up to the first track's data.

    Layout: AvMultitrackType UB[4] | PacketType UB[4]; the shared FourCC
    unless ManyTracksManyCodecs; then per track: (its own FourCC if
    ManyTracksManyCodecs), trackId UI8, (sizeOfTrack UI24 unless OneTrack),
    data. Either way a FourCC comes next, and the first names the tag's
    codec. Returns (position of the first track's data, real packet type,
    FourCC).
    """
    if pos >= len(body):
        raise _short(kind, pos + 1, body)
    multitrack_type = body[pos] >> 4
    packet_type = body[pos] & 0x0F
    pos += 1
    if pos + 4 > len(body):
        raise _short(kind, pos + 4, body)
    code = int.from_bytes(body[pos : pos + 4], "big")
    pos += 4 + 1  # FourCC, trackId
    if multitrack_type != MULTITRACK_ONE_TRACK:
        pos += 3  # sizeOfTrack
    if pos > len(body):
        raise _short(kind, pos, body)
    return pos, packet_type, code


@dataclass(frozen=True, slots=True)
class _Track:
    packet_type: int
    codec: int
    track_id: int
    start: int
    end: int


def _default_track(body: bytes, pos: int, kind: str) -> _Track:
    """The track of a Multitrack tag that stands for the stream: trackId 0 (the default
    track, Enhanced RTMP v2) if the tag has it, else its first track.

    ``pos`` is at the AvMultitrackType byte. Each track takes at least two bytes (its
    trackId and its size or data), so the walk is bounded by the body.
    """
    if pos >= len(body):
        raise _short(kind, pos + 1, body)
    multitrack_type = body[pos] >> 4
    packet_type = body[pos] & 0x0F
    pos += 1
    shared: int | None = None
    if multitrack_type != MULTITRACK_MANY_TRACKS_MANY_CODECS:
        if pos + 4 > len(body):
            raise _short(kind, pos + 4, body)
        shared = int.from_bytes(body[pos : pos + 4], "big")
        pos += 4
    first: _Track | None = None
    while True:
        code = shared
        if code is None:
            if pos + 4 > len(body):
                raise _short(kind, pos + 4, body)
            code = int.from_bytes(body[pos : pos + 4], "big")
            pos += 4
        if pos + 1 > len(body):
            raise _short(kind, pos + 1, body)
        track_id = body[pos]
        pos += 1
        if multitrack_type == MULTITRACK_ONE_TRACK:
            return _Track(packet_type, code, track_id, pos, len(body))
        if pos + 3 > len(body):
            raise _short(kind, pos + 3, body)
        end = pos + 3 + int.from_bytes(body[pos : pos + 3], "big")
        pos += 3
        if end > len(body):
            raise _short(f"{kind} track", end, body)
        track = _Track(packet_type, code, track_id, pos, end)
        if track_id == 0:
            return track
        first = first or track
        pos = end
        if pos >= len(body):
            return first


def _describe_ex_video(body: bytes) -> TagInfo:
    frame_type = (body[0] >> 4) & 0x07
    pos, packet_type = _skip_mod_ex(body, 1, body[0] & 0x0F, "Enhanced RTMP video")
    if frame_type == VIDEO_FRAME_COMMAND and packet_type != VIDEO_PACKET_METADATA:
        if pos >= len(body):
            raise _short("Enhanced RTMP video command", pos + 1, body)
        return TagInfo(keyframe=False, sequence_header=False, codec=0, composition_ms=0)
    if packet_type == VIDEO_PACKET_MULTITRACK:
        pos, packet_type, code = _read_multitrack(body, pos, "Enhanced RTMP video")
    else:
        if pos + 4 > len(body):
            raise _short("Enhanced RTMP video", pos + 4, body)
        code = int.from_bytes(body[pos : pos + 4], "big")
        pos += 4
    if packet_type in (VIDEO_PACKET_SEQUENCE_START, VIDEO_PACKET_MPEG2TS_SEQUENCE_START):
        return TagInfo(keyframe=False, sequence_header=True, codec=code, composition_ms=0)
    composition = 0
    if packet_type == VIDEO_PACKET_CODED_FRAMES:
        if code in _FOURCCS_WITH_COMPOSITION:
            if pos + 3 > len(body):
                raise _short("Enhanced RTMP video", pos + 3, body)
            composition = _si24(body, pos)
    elif packet_type != VIDEO_PACKET_CODED_FRAMES_X:
        # SequenceEnd, Metadata, nested Multitrack or reserved: no picture.
        return TagInfo(keyframe=False, sequence_header=False, codec=code, composition_ms=0)
    return TagInfo(
        keyframe=frame_type == VIDEO_FRAME_KEY,
        sequence_header=False,
        codec=code,
        composition_ms=composition,
    )


def _describe_audio(body: bytes) -> TagInfo:
    if not body:
        raise RemoteProtocolError("empty audio tag body")
    sound_format = body[0] >> 4
    if sound_format == AUDIO_EX_HEADER:
        return _describe_ex_audio(body)
    if sound_format == AUDIO_AAC:
        if len(body) < 2:
            raise _short("AAC audio", 2, body)
        return TagInfo(
            keyframe=False,
            sequence_header=body[1] == AAC_SEQUENCE_HEADER,
            codec=AUDIO_AAC,
            composition_ms=0,
        )
    return TagInfo(keyframe=False, sequence_header=False, codec=sound_format, composition_ms=0)


@dataclass(frozen=True, slots=True)
class AudioPacket:
    """An audio tag body split at its codec data.

    ``codec`` is the SoundFormat or FourCC (as in :class:`TagInfo`);
    ``packet_type`` the AACPacketType or Enhanced RTMP AudioPacketType
    (:data:`AUDIO_PACKET_CODED_FRAMES` for legacy formats without one);
    ``data`` the bytes after the tag's headers: an AudioSpecificConfig or
    OpusHead for a sequence header, coded frames otherwise.
    """

    codec: int
    packet_type: int
    data: bytes
    track_id: int = 0

    @property
    def coded_frames(self) -> bool:
        """Whether ``data`` is coded audio (AAC raw, ExAudio CodedFrames, legacy formats)."""
        return self.packet_type == AUDIO_PACKET_CODED_FRAMES


def audio_packet(body: bytes) -> AudioPacket:
    """Split an audio tag body into its headers' facts and its codec data.

    Legacy AAC keeps its AACPacketType (0 sequence header, 1 raw, the same
    values as SequenceStart and CodedFrames); other legacy formats are coded
    frames after the one header byte. For a Multitrack tag, the default
    track's (trackId 0), or the first track's if it has none, with its
    ``track_id``. Raises :class:`RemoteProtocolError` like :func:`describe_tag`.
    """
    if not body:
        raise RemoteProtocolError("empty audio tag body")
    sound_format = body[0] >> 4
    if sound_format == AUDIO_AAC:
        if len(body) < 2:
            raise _short("AAC audio", 2, body)
        return AudioPacket(AUDIO_AAC, body[1], body[2:])
    if sound_format != AUDIO_EX_HEADER:
        return AudioPacket(sound_format, AUDIO_PACKET_CODED_FRAMES, body[1:])
    pos, packet_type = _skip_mod_ex(body, 1, body[0] & 0x0F, "Enhanced RTMP audio")
    if packet_type == AUDIO_PACKET_MULTITRACK:
        track = _default_track(body, pos, "Enhanced RTMP audio")
        data = body[track.start : track.end]
        return AudioPacket(track.codec, track.packet_type, data, track.track_id)
    if pos + 4 > len(body):
        raise _short("Enhanced RTMP audio", pos + 4, body)
    code = int.from_bytes(body[pos : pos + 4], "big")
    return AudioPacket(code, packet_type, body[pos + 4 :])


@dataclass(frozen=True, slots=True)
class VideoPacket:
    """A video tag body split at its codec data.

    ``codec`` is the CodecID or FourCC (as in :class:`TagInfo`, but of the
    track taken: see :func:`video_packet`); ``track_id`` the Multitrack
    trackId (0 without Multitrack); ``packet_type`` the Enhanced RTMP
    VideoPacketType, legacy AVC/HEVC
    AVCPacketTypes mapped onto it (sequence header to SequenceStart, NALU
    to CodedFrames, end of sequence to SequenceEnd); ``data`` the bytes
    after the tag's headers (and after the SI24 composition time, where the
    codec has one): a decoder configuration record for a SequenceStart,
    coded frames for CodedFrames / CodedFramesX.
    """

    codec: int
    packet_type: int
    data: bytes
    track_id: int = 0

    @property
    def coded_frames(self) -> bool:
        """Whether ``data`` is a coded picture (CodedFrames or CodedFramesX)."""
        return self.packet_type in (VIDEO_PACKET_CODED_FRAMES, VIDEO_PACKET_CODED_FRAMES_X)

    @property
    def sequence_start(self) -> bool:
        """Whether ``data`` is the decoder configuration record."""
        return self.packet_type == VIDEO_PACKET_SEQUENCE_START


# Legacy AVCPacketType -> Enhanced RTMP VideoPacketType (same meaning).
_LEGACY_VIDEO_PACKET_TYPES = {
    AVC_SEQUENCE_HEADER: VIDEO_PACKET_SEQUENCE_START,
    AVC_NALU: VIDEO_PACKET_CODED_FRAMES,
    AVC_END_OF_SEQUENCE: VIDEO_PACKET_SEQUENCE_END,
}


def video_packet(body: bytes) -> VideoPacket:
    """Split a video tag body into its headers' facts and its codec data.

    Legacy AVC and CodecID 12 HEVC: 5 header bytes (FrameType/CodecID,
    AVCPacketType, SI24 CompositionTime). Enhanced RTMP: ModEx prefixes,
    then a FourCC (for a Multitrack tag, the default track's, trackId 0, or
    the first track's if it has none; only that track's data), then for
    ``avc1``/``hvc1``/``vvc1`` CodedFrames the SI24 CompositionTime. A
    command frame or a legacy codec without a packet type is returned with
    :data:`VIDEO_PACKET_METADATA` and no data, so nothing takes it for a
    picture. Raises :class:`RemoteProtocolError` like
    :func:`describe_tag`.
    """
    if not body:
        raise RemoteProtocolError("empty video tag body")
    first = body[0]
    if not first & VIDEO_EX_HEADER:
        codec = first & 0x0F
        if codec not in (VIDEO_AVC, VIDEO_HEVC) or first >> 4 == VIDEO_FRAME_COMMAND:
            return VideoPacket(codec, VIDEO_PACKET_METADATA, b"")
        if len(body) < 5:
            raise _short("AVC/HEVC video", 5, body)
        packet_type = _LEGACY_VIDEO_PACKET_TYPES.get(body[1], VIDEO_PACKET_METADATA)
        return VideoPacket(codec, packet_type, body[5:])
    frame_type = (first >> 4) & 0x07
    pos, packet_type = _skip_mod_ex(body, 1, first & 0x0F, "Enhanced RTMP video")
    if frame_type == VIDEO_FRAME_COMMAND and packet_type != VIDEO_PACKET_METADATA:
        return VideoPacket(0, VIDEO_PACKET_METADATA, b"")
    end = len(body)
    track_id = 0
    if packet_type == VIDEO_PACKET_MULTITRACK:
        track = _default_track(body, pos, "Enhanced RTMP video")
        packet_type, code, track_id, pos, end = (
            track.packet_type, track.codec, track.track_id, track.start, track.end
        )
    else:
        if pos + 4 > len(body):
            raise _short("Enhanced RTMP video", pos + 4, body)
        code = int.from_bytes(body[pos : pos + 4], "big")
        pos += 4
    if packet_type == VIDEO_PACKET_CODED_FRAMES and code in _FOURCCS_WITH_COMPOSITION:
        if pos + 3 > end:
            raise _short("Enhanced RTMP video", pos + 3, body)
        pos += 3
    return VideoPacket(code, packet_type, body[pos:end], track_id)


def _describe_ex_audio(body: bytes) -> TagInfo:
    pos, packet_type = _skip_mod_ex(body, 1, body[0] & 0x0F, "Enhanced RTMP audio")
    if packet_type == AUDIO_PACKET_MULTITRACK:
        pos, packet_type, code = _read_multitrack(body, pos, "Enhanced RTMP audio")
    else:
        if pos + 4 > len(body):
            raise _short("Enhanced RTMP audio", pos + 4, body)
        code = int.from_bytes(body[pos : pos + 4], "big")
    return TagInfo(
        keyframe=False,
        sequence_header=packet_type == AUDIO_PACKET_SEQUENCE_START,
        codec=code,
        composition_ms=0,
    )
