"""Enhanced RTMP (veovera, v1 and v2): whole ExHeader media messages, what a
``connect`` says a client can take, and what to send a client that cannot
take everything.

:mod:`rtmpd.codec.flv` only looks at the first track of a tag (``describe_tag``,
``audio_packet``); this module reads and writes every part of one, so a
message can be checked, cut down to the tracks a client takes, or rewritten
in the legacy FLV form, and written back byte for byte.

ExVideoTagHeader (IsExHeader, the top bit of the first byte, set)::

    IsExHeader UB[1] = 1 | VideoFrameType UB[3] | VideoPacketType UB[4]
    ModEx blocks while the packet type is 7 (ModEx), each:
        size UI8 + 1 (when that is 256: UI16 + 1 instead) | data
        | VideoPacketModExType UB[4] | VideoPacketType UB[4]
    frame type 5 (Command) and packet type not Metadata: VideoCommand UI8, nothing else
    packet type 6 (Multitrack):
        AvMultitrackType UB[4] | VideoPacketType UB[4] (neither Multitrack nor ModEx)
        FourCC, unless ManyTracksManyCodecs
        per track: [FourCC if ManyTracksManyCodecs] | trackId UI8
                   | [sizeOfTrack UI24 unless OneTrack] | track data
    otherwise: FourCC | data

ExAudioTagHeader is the same with SoundFormat 9 (ExHeader) in the top nibble
and AudioPacketType in the low one (Multitrack 5, ModEx 7), no frame type and
no command. AvMultitrackType: 0 OneTrack (one track, data runs to the end),
1 ManyTracks (one codec), 2 ManyTracksManyCodecs; sizeOfTrack counts the
track's data after the size field.

The data of a track is kept as it is on the wire: for CodedFrames of
``avc1``/``hvc1``/``vvc1`` it starts with the SI24 CompositionTime.

Legacy clients. A client whose ``connect`` announced no FourCCs
(``fourCcList``, ``videoFourCcInfoMap``, ``audioFourCcInfoMap``) predates
Enhanced RTMP: Debian's ffmpeg 5.1, rtmpdump, librtmp players. It gets the
legacy tags as published, and the ExHeader tags that have an exact legacy
form rewritten into it (``avc1`` as CodecID 7, ``mp4a`` as SoundFormat 10,
``.mp3`` as SoundFormat 2); everything else is left out, never sent as
bytes it would misread (:func:`adapt`). A client that announced FourCCs
gets the tracks in those codecs; without ``capsEx`` Multitrack, only the
default track (trackId 0, as the specification recommends) as a plain
ExHeader message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from rtmpd.codec import flv
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ANYTHING",
    "CAPS_EX_MOD_EX",
    "CAPS_EX_MULTITRACK",
    "CAPS_EX_RECONNECT",
    "CAPS_EX_TIMESTAMP_NANO_OFFSET",
    "FOURCC_CAN_DECODE",
    "FOURCC_CAN_ENCODE",
    "FOURCC_CAN_FORWARD",
    "LEGACY",
    "MAX_ANNOUNCED_FOURCCS",
    "MAX_MOD_EX",
    "MAX_MOD_EX_SIZE",
    "MAX_TRACKS",
    "SERVER_AUDIO_FOURCCS",
    "SERVER_CAPS_EX",
    "SERVER_VIDEO_FOURCCS",
    "Acceptance",
    "ClientCapabilities",
    "ExMedia",
    "ModEx",
    "Track",
    "adapt",
    "dropped_codecs",
    "is_ex_header",
    "server_capabilities",
    "to_legacy",
]

# --------------------------------------------------------------------------- limits

#: Tracks in one message. trackId is a UI8, so a message with more entries
#: than that repeats an id; nothing real sends more than a few (an ABR
#: ladder, a handful of languages). Each entry costs us an object, so a tag
#: of tiny tracks is bounded here and not only by ``flv.MAX_TAG_SIZE``.
MAX_TRACKS = 256
#: ModEx blocks before the packet type. v2 defines one ModEx type
#: (TimestampOffsetNano), so a real message has at most one or two; a long
#: chain is only a way to make us loop.
MAX_MOD_EX = 8
#: Bytes of one ModEx block's data: its size field is UI8 + 1, or UI16 + 1
#: past 255, so 65536 is the format's own ceiling.
MAX_MOD_EX_SIZE = 0x10000
#: sizeOfTrack is a UI24.
_MAX_TRACK_SIZE = 0xFFFFFF
#: FourCCs read from one connect's ``fourCcList`` and each info map. The
#: specification names twelve codecs; a client listing more than this is
#: listing junk, and the rest is ignored rather than kept per connection.
MAX_ANNOUNCED_FOURCCS = 64

# --------------------------------------------------------------------------- constants

#: ``[audio|video]FourCcInfoMap`` flags (enum FourCcInfoMask).
FOURCC_CAN_DECODE = 0x01
FOURCC_CAN_ENCODE = 0x02
FOURCC_CAN_FORWARD = 0x04
#: ``capsEx`` flags (enum CapsExMask).
CAPS_EX_RECONNECT = 0x01
CAPS_EX_MULTITRACK = 0x02
CAPS_EX_MOD_EX = 0x04
CAPS_EX_TIMESTAMP_NANO_OFFSET = 0x08

#: What rtmpd takes from publishers and passes to viewers unchanged (and
#: the recorders know), answered in the connect ``_result``.
SERVER_VIDEO_FOURCCS = ("avc1", "hvc1", "av01", "vp09", "vp08", "vvc1")
SERVER_AUDIO_FOURCCS = ("mp4a", "Opus", "fLaC", "ac-3", "ec-3", ".mp3")
#: Reconnect: a publisher is asked to move on shutdown. Multitrack: tracks
#: reach viewers that take them, and the default track the others. ModEx:
#: read and passed on. Not TimestampNanoOffset: passed on, never applied.
SERVER_CAPS_EX = CAPS_EX_RECONNECT | CAPS_EX_MULTITRACK | CAPS_EX_MOD_EX

_WILDCARD = "*"
_VIDEO_MULTITRACK = flv.VIDEO_PACKET_MULTITRACK
_AUDIO_MULTITRACK = flv.AUDIO_PACKET_MULTITRACK
_MOD_EX = flv.VIDEO_PACKET_MOD_EX  # 7 for audio too
_KINDS = {flv.TAG_VIDEO: "video", flv.TAG_AUDIO: "audio"}
_MULTITRACK_TYPES = (
    flv.MULTITRACK_ONE_TRACK,
    flv.MULTITRACK_MANY_TRACKS,
    flv.MULTITRACK_MANY_TRACKS_MANY_CODECS,
)

# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, kw_only=True)
class ModEx:
    """One ModEx block: its type (0: TimestampOffsetNano) and data."""

    mod_ex_type: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.mod_ex_type <= 15:
            raise LocalProtocolError(f"ModEx type {self.mod_ex_type} is not a UB[4]")
        if not 1 <= len(self.data) <= MAX_MOD_EX_SIZE:
            raise LocalProtocolError(
                f"ModEx data of {len(self.data)} bytes is outside 1..{MAX_MOD_EX_SIZE}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Track:
    """One track of a message: its codec, its id, its data as on the wire."""

    fourcc: bytes
    track_id: int = 0
    data: bytes = b""

    def __post_init__(self) -> None:
        if len(self.fourcc) != 4:
            raise LocalProtocolError(f"a FourCC is 4 bytes, got {self.fourcc!r}")
        if not 0 <= self.track_id <= 0xFF:
            raise LocalProtocolError(f"trackId {self.track_id} is not a UI8")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExMedia:
    """One Enhanced RTMP audio or video message, every part of it.

    ``kind``: ``flv.TAG_VIDEO`` or ``flv.TAG_AUDIO``. ``packet_type``: the
    packet type every track carries (never Multitrack or ModEx; those are
    ``multitrack`` and ``mod_ex``). ``frame_type``: the VideoFrameType (0 for
    audio). ``multitrack``: the AvMultitrackType, or None for a message
    without the Multitrack wrapper, which has exactly one track, id 0.
    ``command``: the VideoCommand of a command frame, which has no tracks.
    """

    kind: int
    packet_type: int
    frame_type: int = 0
    multitrack: int | None = None
    tracks: tuple[Track, ...] = ()
    mod_ex: tuple[ModEx, ...] = ()
    command: int | None = None

    def __post_init__(self) -> None:
        kind = _KINDS.get(self.kind)
        if kind is None:
            raise LocalProtocolError(f"ExMedia kind {self.kind} is not 8 (audio) or 9 (video)")
        if not 0 <= self.packet_type <= 15 or self.packet_type == _MOD_EX:
            raise LocalProtocolError(f"{kind} packet type {self.packet_type} is not a UB[4] "
                                     "other than ModEx")
        if self.kind == flv.TAG_AUDIO and self.frame_type != 0:
            raise LocalProtocolError("audio has no frame type")
        if not 0 <= self.frame_type <= 7:
            raise LocalProtocolError(f"video frame type {self.frame_type} is not a UB[3]")
        if len(self.mod_ex) > MAX_MOD_EX:
            raise LocalProtocolError(f"{len(self.mod_ex)} ModEx blocks, over MAX_MOD_EX")
        if self.command is not None:
            if self.kind != flv.TAG_VIDEO or self.frame_type != flv.VIDEO_FRAME_COMMAND:
                raise LocalProtocolError("a command is a video frame of type 5 (Command)")
            if self.tracks or self.multitrack is not None or not 0 <= self.command <= 0xFF:
                raise LocalProtocolError("a command frame has one UI8 command and no tracks")
            return
        wrapper = _VIDEO_MULTITRACK if self.kind == flv.TAG_VIDEO else _AUDIO_MULTITRACK
        if self.packet_type == wrapper:
            raise LocalProtocolError(f"{kind} packet type {self.packet_type} (Multitrack) is "
                                     "the multitrack field's")
        tracks = self.tracks
        if not tracks or len(tracks) > MAX_TRACKS:
            raise LocalProtocolError(f"{len(tracks)} tracks, expected 1..{MAX_TRACKS}")
        multitrack = self.multitrack
        if multitrack is None or multitrack == flv.MULTITRACK_ONE_TRACK:
            if len(tracks) != 1:
                raise LocalProtocolError(f"{len(tracks)} tracks in a one-track message")
            if multitrack is None and tracks[0].track_id != 0:
                raise LocalProtocolError("a message without Multitrack is track 0")
            return
        if multitrack not in _MULTITRACK_TYPES:
            raise LocalProtocolError(f"AvMultitrackType {multitrack} is not 0, 1 or 2")
        if multitrack == flv.MULTITRACK_MANY_TRACKS and len({t.fourcc for t in tracks}) != 1:
            raise LocalProtocolError("ManyTracks tracks share one FourCC")
        for track in tracks:
            if len(track.data) > _MAX_TRACK_SIZE:
                raise LocalProtocolError(f"track of {len(track.data)} bytes exceeds a UI24")

    # -- reading ---------------------------------------------------------------

    @classmethod
    def parse(cls, kind: int, body: bytes) -> ExMedia:
        """Read a whole ExHeader tag body (an FLV tag or RTMP message).

        Raises :class:`RemoteProtocolError` for a body that is not an
        ExHeader of ``kind``, is cut short, breaks a limit, nests Multitrack,
        or has bytes after a command; ``LocalProtocolError`` for a ``kind``
        other than audio or video.
        """
        name = _KINDS.get(kind)
        if name is None:
            raise LocalProtocolError(f"ExMedia kind {kind} is not 8 (audio) or 9 (video)")
        reader = _Reader(body, f"Enhanced RTMP {name}")
        first = reader.byte("header")
        if kind == flv.TAG_VIDEO:
            if not first & flv.VIDEO_EX_HEADER:
                raise RemoteProtocolError(
                    f"video tag byte 0x{first:02x} is legacy FLV (IsExHeader clear)"
                )
            frame_type = (first >> 4) & 0x07
            wrapper = _VIDEO_MULTITRACK
        else:
            if first >> 4 != flv.AUDIO_EX_HEADER:
                raise RemoteProtocolError(
                    f"audio tag byte 0x{first:02x} is legacy FLV (SoundFormat {first >> 4}, not 9)"
                )
            frame_type = 0
            wrapper = _AUDIO_MULTITRACK
        packet_type = first & 0x0F
        mod_ex: list[ModEx] = []
        while packet_type == _MOD_EX:
            if len(mod_ex) == MAX_MOD_EX:
                raise RemoteProtocolError(
                    f"{reader.what} has more than MAX_MOD_EX ({MAX_MOD_EX}) ModEx blocks"
                )
            size = reader.byte("ModEx size") + 1
            if size == 256:
                size = int.from_bytes(reader.take(2, "ModEx size"), "big") + 1
            data = reader.take(size, "ModEx data")
            after = reader.byte("ModEx type")
            mod_ex.append(ModEx(mod_ex_type=after >> 4, data=data))
            packet_type = after & 0x0F
        if (
            kind == flv.TAG_VIDEO
            and frame_type == flv.VIDEO_FRAME_COMMAND
            and packet_type != flv.VIDEO_PACKET_METADATA
        ):
            command = reader.byte("video command")
            reader.end("video command")
            return cls(kind=kind, packet_type=packet_type, frame_type=frame_type,
                       mod_ex=tuple(mod_ex), command=command)
        multitrack: int | None = None
        shared = b""
        if packet_type == wrapper:
            byte = reader.byte("Multitrack header")
            multitrack, packet_type = byte >> 4, byte & 0x0F
            if multitrack not in _MULTITRACK_TYPES:
                raise RemoteProtocolError(f"{reader.what}: AvMultitrackType {multitrack} is "
                                          "reserved")
            if packet_type in (wrapper, _MOD_EX):
                raise RemoteProtocolError(
                    f"{reader.what}: packet type {packet_type} inside Multitrack"
                )
            if multitrack != flv.MULTITRACK_MANY_TRACKS_MANY_CODECS:
                shared = reader.take(4, "FourCC")
        tracks: list[Track] = []
        if multitrack is None:
            fourcc = reader.take(4, "FourCC")
            tracks.append(Track(fourcc=fourcc, data=reader.rest()))
        else:
            while True:
                if len(tracks) == MAX_TRACKS:
                    raise RemoteProtocolError(
                        f"{reader.what} has more than MAX_TRACKS ({MAX_TRACKS}) tracks"
                    )
                fourcc = shared or reader.take(4, "track FourCC")
                track_id = reader.byte("trackId")
                if multitrack == flv.MULTITRACK_ONE_TRACK:
                    data = reader.rest()
                else:
                    size = int.from_bytes(reader.take(3, "sizeOfTrack"), "big")
                    data = reader.take(size, f"track {track_id} data")
                tracks.append(Track(fourcc=fourcc, track_id=track_id, data=data))
                if reader.done:
                    break
        return cls(kind=kind, packet_type=packet_type, frame_type=frame_type,
                   multitrack=multitrack, tracks=tuple(tracks), mod_ex=tuple(mod_ex))

    # -- writing ---------------------------------------------------------------

    def __bytes__(self) -> bytes:
        video = self.kind == flv.TAG_VIDEO
        wrapper = _VIDEO_MULTITRACK if video else _AUDIO_MULTITRACK
        inner = wrapper if self.multitrack is not None else self.packet_type
        head = (flv.VIDEO_EX_HEADER | self.frame_type << 4) if video else flv.AUDIO_EX_HEADER << 4
        out = bytearray((head | (_MOD_EX if self.mod_ex else inner),))
        for index, block in enumerate(self.mod_ex):
            size = len(block.data) - 1
            if size < 255:
                out.append(size)
            else:
                out.append(255)
                out += size.to_bytes(2, "big")
            out += block.data
            following = _MOD_EX if index + 1 < len(self.mod_ex) else inner
            out.append(block.mod_ex_type << 4 | following)
        if self.command is not None:
            out.append(self.command)
            return bytes(out)
        multitrack = self.multitrack
        if multitrack is None:
            track = self.tracks[0]
            return bytes(out + track.fourcc + track.data)
        out.append(multitrack << 4 | self.packet_type)
        many_codecs = multitrack == flv.MULTITRACK_MANY_TRACKS_MANY_CODECS
        if not many_codecs:
            out += self.tracks[0].fourcc
        for track in self.tracks:
            if many_codecs:
                out += track.fourcc
            out.append(track.track_id)
            if multitrack != flv.MULTITRACK_ONE_TRACK:
                out += len(track.data).to_bytes(3, "big")
            out += track.data
        return bytes(out)

    # -- views -----------------------------------------------------------------

    def track(self, track_id: int) -> Track | None:
        """The track with that id (the first, if a message repeats it), or None."""
        for track in self.tracks:
            if track.track_id == track_id:
                return track
        return None


class _Reader:
    """Cursor over one body, with errors that say what was cut short."""

    __slots__ = ("body", "pos", "what")

    def __init__(self, body: bytes, what: str) -> None:
        self.body = body
        self.pos = 0
        self.what = what

    @property
    def done(self) -> bool:
        return self.pos >= len(self.body)

    def take(self, size: int, field: str) -> bytes:
        end = self.pos + size
        if end > len(self.body):
            raise RemoteProtocolError(
                f"truncated {self.what}: {field} needs {size} bytes at offset {self.pos}, "
                f"the body has {len(self.body)}"
            )
        data = self.body[self.pos : end]
        self.pos = end
        return data

    def byte(self, field: str) -> int:
        return self.take(1, field)[0]

    def rest(self) -> bytes:
        data = self.body[self.pos :]
        self.pos = len(self.body)
        return data

    def end(self, field: str) -> None:
        if not self.done:
            raise RemoteProtocolError(
                f"{self.what}: {len(self.body) - self.pos} bytes after the {field}"
            )


def is_ex_header(kind: int, body: bytes) -> bool:
    """Whether a non-empty audio/video body has an Enhanced RTMP ExHeader."""
    if not body:
        return False
    if kind == flv.TAG_VIDEO:
        return bool(body[0] & flv.VIDEO_EX_HEADER)
    return kind == flv.TAG_AUDIO and body[0] >> 4 == flv.AUDIO_EX_HEADER


# --------------------------------------------------------------------------- legacy form

_LEGACY_AVC = {
    # ExVideo packet type -> AVCPacketType, and whether the SI24 comes with the data
    flv.VIDEO_PACKET_SEQUENCE_START: (flv.AVC_SEQUENCE_HEADER, False),
    flv.VIDEO_PACKET_CODED_FRAMES: (flv.AVC_NALU, True),
    flv.VIDEO_PACKET_CODED_FRAMES_X: (flv.AVC_NALU, False),
    flv.VIDEO_PACKET_SEQUENCE_END: (flv.AVC_END_OF_SEQUENCE, False),
}
# Legacy AAC's byte: SoundFormat 10, and rate 3 / size 1 / type 1, which the
# FLV specification says AAC always carries (the decoder reads the config).
_LEGACY_AAC = bytes(((flv.AUDIO_AAC << 4) | 0x0F,))
# MP3 frames describe themselves; 44 kHz, 16 bit, stereo as a hint.
_LEGACY_MP3 = bytes(((flv.AUDIO_MP3 << 4) | 0x0F,))


def to_legacy(message: ExMedia) -> bytes | None:
    """The legacy FLV body carrying the same media as the message's default
    track (trackId 0), or None if its codec or packet type has none.

    ``avc1`` becomes CodecID 7 (SequenceStart, CodedFrames, CodedFramesX and
    SequenceEnd map to AVCPacketType 0, 1, 1 with CompositionTime 0, and 2);
    ``mp4a`` becomes SoundFormat 10 (SequenceStart and CodedFrames to
    AACPacketType 0 and 1); ``.mp3`` CodedFrames becomes SoundFormat 2.
    """
    track = message.track(0)
    if track is None or message.command is not None:
        return None
    packet_type = message.packet_type
    if message.kind == flv.TAG_VIDEO:
        mapped = _LEGACY_AVC.get(packet_type)
        frame_type = message.frame_type
        if (
            track.fourcc != b"avc1"
            or mapped is None
            or not flv.VIDEO_FRAME_KEY <= frame_type <= flv.VIDEO_FRAME_GENERATED_KEY
        ):
            return None
        avc_type, with_time = mapped
        head = bytes(((frame_type << 4) | flv.VIDEO_AVC, avc_type))
        if with_time:
            if len(track.data) < 3:
                return None
            return head + track.data
        if packet_type == flv.VIDEO_PACKET_SEQUENCE_END:
            return head + b"\0\0\0"
        return head + b"\0\0\0" + track.data
    if track.fourcc == b"mp4a":
        if packet_type == flv.AUDIO_PACKET_SEQUENCE_START:
            return _LEGACY_AAC + bytes((flv.AAC_SEQUENCE_HEADER,)) + track.data
        if packet_type == flv.AUDIO_PACKET_CODED_FRAMES:
            return _LEGACY_AAC + bytes((flv.AAC_RAW,)) + track.data
        return None
    if track.fourcc == b".mp3" and packet_type == flv.AUDIO_PACKET_CODED_FRAMES:
        return _LEGACY_MP3 + track.data
    return None


# --------------------------------------------------------------------------- what clients take


@dataclass(frozen=True, slots=True)
class Acceptance:
    """What one kind of client takes: the video and audio FourCCs (None:
    any), and whether Multitrack messages. Hashable: it is part of an
    output format's key, so clients that take the same share bytes."""

    video: frozenset[bytes] | None = None
    audio: frozenset[bytes] | None = None
    multitrack: bool = True

    @property
    def everything(self) -> bool:
        """Whether every message goes to this client as published."""
        return self.video is None and self.audio is None and self.multitrack

    def fourccs(self, kind: int) -> frozenset[bytes] | None:
        """The FourCCs taken for ``kind`` (None: any)."""
        return self.video if kind == flv.TAG_VIDEO else self.audio


#: A client that takes everything as published.
ANYTHING = Acceptance()
#: A client that predates Enhanced RTMP.
LEGACY = Acceptance(frozenset(), frozenset(), False)


def adapt(kind: int, body: bytes, acceptance: Acceptance) -> bytes | None:
    """The body to send a client that takes ``acceptance``, or None for
    nothing; ``body`` itself whenever it suits.

    Legacy tags and script data go to everyone. Of an ExHeader message the
    client gets the tracks in codecs it takes (every one with Multitrack;
    without it, track 0 as a plain ExHeader message); when it takes none
    of them, the legacy form of track 0 if there is one (:func:`to_legacy`).
    A command frame goes to clients that take any FourCC of video. A
    message that does not parse goes to nobody but clients taking everything.
    """
    if acceptance.everything or not is_ex_header(kind, body):
        return body
    accepted = acceptance.fourccs(kind)
    try:
        message = ExMedia.parse(kind, body)
    except RemoteProtocolError:
        return None
    if message.command is not None:
        return body if accepted is None or accepted else None
    kept = tuple(t for t in message.tracks if accepted is None or t.fourcc in accepted)
    if message.multitrack is None:
        return body if kept else to_legacy(message)
    if acceptance.multitrack:
        if len(kept) == len(message.tracks):
            return body
        if kept:
            return bytes(replace(message, tracks=kept))
        return to_legacy(message)
    default = next((t for t in kept if t.track_id == 0), None)
    if default is None:
        return to_legacy(message)
    return bytes(replace(message, multitrack=None, tracks=(default,)))


def dropped_codecs(acceptance: Acceptance, headers: Iterable[tuple[int, bytes]]) -> list[str]:
    """Of the sequence headers ``(kind, body)`` a stream has, the codecs a
    client taking ``acceptance`` gets nothing of, as ``"hvc1 video"``: for
    the one log line that says what a legacy viewer misses."""
    missing: list[str] = []
    for kind, body in headers:
        if adapt(kind, body, acceptance) is not None or not is_ex_header(kind, body):
            continue
        try:
            message = ExMedia.parse(kind, body)
        except RemoteProtocolError:
            missing.append(f"{_KINDS.get(kind, '?')} it cannot parse")
            continue
        codecs = ",".join(sorted({t.fourcc.decode("latin-1") for t in message.tracks}))
        missing.append(f"{codecs} {_KINDS[kind]}")
    return missing


# --------------------------------------------------------------------------- connect


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCapabilities:
    """What a ``connect`` command object announced.

    ``video`` / ``audio``: the FourCCs the client can decode or forward
    (``"*"`` for any), from ``fourCcList`` (which names both kinds) and the
    ``[video|audio]FourCcInfoMap`` entries with CanDecode or CanForward set;
    a ``"*"`` key in a map overrides that map's other keys. ``caps_ex``: the
    ``capsEx`` flags. ``announced``: whether any FourCC property was there
    at all (a client without one predates Enhanced RTMP).
    """

    video: frozenset[str] = frozenset()
    audio: frozenset[str] = frozenset()
    caps_ex: int = 0
    announced: bool = False

    @classmethod
    def from_connect(cls, command_object: Mapping[str, object]) -> ClientCapabilities:
        """Read the Enhanced RTMP properties of a connect's command object.

        Lenient, like the rest of connect: a property of the wrong type is
        ignored, and so are entries past :data:`MAX_ANNOUNCED_FOURCCS`.
        """
        announced = False
        listed: set[str] = set()
        raw_list = command_object.get("fourCcList")
        if isinstance(raw_list, list | tuple):
            announced = True
            listed = {v for v in raw_list[:MAX_ANNOUNCED_FOURCCS] if _is_fourcc(v)}
        maps: list[set[str]] = []
        for key in ("videoFourCcInfoMap", "audioFourCcInfoMap"):
            raw_map = command_object.get(key)
            taken: set[str] = set()
            if isinstance(raw_map, Mapping):
                announced = True
                taken = _taken_from_map(raw_map)
            maps.append(taken)
        return _shared(cls(
            video=frozenset(listed | maps[0]),
            audio=frozenset(listed | maps[1]),
            caps_ex=_flags(command_object.get("capsEx")) or 0,
            announced=announced,
        ))

    @property
    def reconnect(self) -> bool:
        """Whether the client handles NetConnection.Connect.ReconnectRequest."""
        return bool(self.caps_ex & CAPS_EX_RECONNECT)

    @property
    def multitrack(self) -> bool:
        """Whether the client takes Multitrack messages."""
        return bool(self.caps_ex & CAPS_EX_MULTITRACK)

    @property
    def acceptance(self) -> Acceptance:
        """What to send this client when it plays."""
        if not self.announced:
            return LEGACY

        def codes(names: frozenset[str]) -> frozenset[bytes] | None:
            if _WILDCARD in names:
                return None
            return frozenset(name.encode("latin-1") for name in names)

        return Acceptance(codes(self.video), codes(self.audio), self.multitrack)


#: Distinct capabilities kept for sharing (:func:`_shared`). Every client of
#: one player announces the same; clients choose what they announce, so the
#: table is bounded, and emptied when full.
MAX_SHARED_CAPABILITIES = 64
_shared_capabilities: dict[ClientCapabilities, ClientCapabilities] = {}


def _shared(capabilities: ClientCapabilities) -> ClientCapabilities:
    """An equal :class:`ClientCapabilities` already held, else this one.

    A connection holds its client's capabilities for as long as it plays:
    its own object and two frozensets are ~500 bytes per RTMP viewer, the
    same for thousands of viewers of one player."""
    shared = _shared_capabilities.get(capabilities)
    if shared is None:
        if len(_shared_capabilities) >= MAX_SHARED_CAPABILITIES:
            _shared_capabilities.clear()
        shared = _shared_capabilities[capabilities] = capabilities
    return shared


def _is_fourcc(value: object) -> bool:
    return isinstance(value, str) and (value == _WILDCARD or (
        len(value) == 4 and all(" " <= c <= "~" for c in value)
    ))


def _flags(value: object) -> int | None:
    """A flags number (an AMF0 double) as an int, or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= 0xFFFFFFFF or not float(value).is_integer():
        return None
    return int(value)


def _taken_from_map(raw: Mapping[object, object]) -> set[str]:
    taken: set[str] = set()
    wanted = FOURCC_CAN_DECODE | FOURCC_CAN_FORWARD
    for count, (key, flags) in enumerate(raw.items()):
        if count == MAX_ANNOUNCED_FOURCCS:
            break
        value = _flags(flags)
        if not isinstance(key, str) or not _is_fourcc(key) or value is None:
            continue
        if key == _WILDCARD:
            # The wildcard overrides every other key of the map.
            return {_WILDCARD} if value & wanted else set()
        if value & wanted:
            taken.add(key)
    return taken


def server_capabilities() -> dict[str, object]:
    """What rtmpd states in the connect ``_result`` of a client that
    announced Enhanced RTMP: every FourCC it forwards (``fourCcList`` for
    v1 clients, the info maps with CanForward for v2), and ``capsEx``."""
    return {
        "fourCcList": [*SERVER_VIDEO_FOURCCS, *SERVER_AUDIO_FOURCCS],
        "videoFourCcInfoMap": {code: float(FOURCC_CAN_FORWARD) for code in SERVER_VIDEO_FOURCCS},
        "audioFourCcInfoMap": {code: float(FOURCC_CAN_FORWARD) for code in SERVER_AUDIO_FOURCCS},
        "capsEx": float(SERVER_CAPS_EX),
    }
