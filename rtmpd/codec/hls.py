"""HLS media playlist model (RFC 8216) and the segment cutting policy.

Pure: the recorder feeds segment facts in and writes out ``render()``;
nothing here touches files or clocks.

Rendered form (``EXT-X-DISCONTINUITY-SEQUENCE`` is always written)::

    #EXTM3U
    #EXT-X-VERSION:3
    #EXT-X-TARGETDURATION:2
    #EXT-X-MEDIA-SEQUENCE:7
    #EXT-X-DISCONTINUITY-SEQUENCE:1
    #EXTINF:2.000,
    7.ts
    #EXT-X-DISCONTINUITY
    #EXTINF:1.960,
    8.ts
    #EXT-X-ENDLIST

A stream whose codecs MPEG-TS cannot carry (Opus audio here) is written as
fMP4 segments behind an init segment, and the playlist names it before the
first segment that uses it (and again where it changes)::

    #EXTM3U
    #EXT-X-VERSION:7
    #EXT-X-TARGETDURATION:2
    #EXT-X-MEDIA-SEQUENCE:0
    #EXT-X-DISCONTINUITY-SEQUENCE:0
    #EXT-X-MAP:URI="init.mp4"
    #EXTINF:2.000,
    0.m4s
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

#: EXT-X-VERSION we write: 3 allows decimal-floating-point EXTINF durations.
PLAYLIST_VERSION = 3
#: EXT-X-VERSION of a playlist with EXT-X-MAP (fMP4 segments): RFC 8216 section 7 asks
#: for 6 at least; 7 is what fMP4 HLS writers (Apple's, ffmpeg's) declare.
PLAYLIST_VERSION_FMP4 = 7

#: Default segment length the cutter aims for, in ms.
DEFAULT_FRAGMENT_MS = 2000

#: A timestamp that moves forward by more than this (per track) is not a gap
#: in the media but a new timeline: the cutter starts a new segment after an
#: EXT-X-DISCONTINUITY. Backwards moves always count.
MAX_TIMESTAMP_JUMP_MS = 10_000

#: Largest playlist text :meth:`MediaPlaylist.parse` accepts. Ours hold a
#: window of a few dozen segments (a few KB); a VOD-style unlimited window of
#: 2 s segments reaches 1 MiB after about a day.
MAX_PLAYLIST_CHARS = 4 * 1024 * 1024

#: Largest segment URI we write or read back: ours are short relative names.
MAX_URI_LENGTH = 1024

#: Largest EXTINF / target duration we accept, in seconds (one day): a bigger
#: value means a broken clock, not a segment.
MAX_DURATION_S = 86_400


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """One media segment: its URI, duration in ms, whether an
    EXT-X-DISCONTINUITY precedes it, and the URI of its init segment
    (EXT-X-MAP; None for self-contained MPEG-TS segments)."""

    uri: str
    duration_ms: int
    discontinuity: bool = False
    map_uri: str | None = None

    def __post_init__(self) -> None:
        _check_uri(self.uri)
        if self.map_uri is not None:
            _check_uri(self.map_uri)
            if '"' in self.map_uri:
                raise LocalProtocolError(f"map URI {self.map_uri!r} cannot be a quoted-string")
        if not 0 <= self.duration_ms <= MAX_DURATION_S * 1000:
            raise LocalProtocolError(
                f"segment duration {self.duration_ms} ms is outside 0..{MAX_DURATION_S * 1000}"
            )

    @property
    def duration_s(self) -> float:
        """Duration in seconds."""
        return self.duration_ms / 1000

    @property
    def rounded_duration_s(self) -> int:
        """EXTINF rounded to the nearest integer, half up (RFC 8216 4.3.3.1)."""
        return (self.duration_ms + 500) // 1000


def _check_uri(uri: str) -> None:
    if not uri or len(uri) > MAX_URI_LENGTH:
        raise LocalProtocolError(f"segment URI of {len(uri)} chars is outside 1..{MAX_URI_LENGTH}")
    if uri[0] == "#" or uri != uri.strip() or any(ord(c) < 0x20 or c == "\x7f" for c in uri):
        raise LocalProtocolError(f"segment URI {uri!r} is not a single playlist line")


def _format_ms(duration_ms: int) -> str:
    return f"{duration_ms // 1000}.{duration_ms % 1000:03d}"


class MediaPlaylist:
    """A live HLS media playlist with a sliding window.

    ``target_duration_s`` is the EXT-X-TARGETDURATION to start with; it is
    raised (never lowered) whenever a segment's EXTINF, rounded half up, would
    exceed it, so the RFC 8216 rule holds even for a long GOP. ``window`` is
    the number of segments kept listed (None: keep all, an event playlist).

    EXT-X-MEDIA-SEQUENCE is the sequence number of the first listed segment;
    EXT-X-DISCONTINUITY-SEQUENCE grows by one for every discontinuity tag
    that slides out with its segment.
    """

    def __init__(
        self, target_duration_s: int, window: int | None, *, media_sequence: int = 0
    ) -> None:
        if not 1 <= target_duration_s <= MAX_DURATION_S:
            raise LocalProtocolError(
                f"target duration {target_duration_s} s is outside 1..{MAX_DURATION_S}"
            )
        if window is not None and window < 1:
            raise LocalProtocolError(f"window of {window} segments must be at least 1")
        self.window = window
        self._target_duration_s = target_duration_s
        if media_sequence < 0:
            raise LocalProtocolError(f"media sequence {media_sequence} is negative")
        self._segments: deque[Segment] = deque()
        self._media_sequence = media_sequence
        self._discontinuity_sequence = 0
        self._ended = False

    @property
    def target_duration_s(self) -> int:
        """EXT-X-TARGETDURATION in seconds."""
        return self._target_duration_s

    @property
    def media_sequence(self) -> int:
        """EXT-X-MEDIA-SEQUENCE: the sequence number of the first listed segment."""
        return self._media_sequence

    @property
    def discontinuity_sequence(self) -> int:
        """EXT-X-DISCONTINUITY-SEQUENCE."""
        return self._discontinuity_sequence

    @property
    def next_sequence(self) -> int:
        """Media sequence number the next added segment gets."""
        return self._media_sequence + len(self._segments)

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The listed segments, oldest first."""
        return tuple(self._segments)

    @property
    def ended(self) -> bool:
        """True once :meth:`end` was called (EXT-X-ENDLIST is written)."""
        return self._ended

    def add_segment(
        self,
        uri: str,
        duration_s: float,
        discontinuity: bool = False,
        *,
        map_uri: str | None = None,
    ) -> list[str]:
        """List a finished segment; returns the URIs that slid out of the window.

        ``duration_s`` is kept to the millisecond; ``map_uri`` names the
        segment's init segment (fMP4). The caller may delete the returned
        segments' files. Raises :class:`LocalProtocolError` after
        :meth:`end`, or for a URI that is not one playlist line.
        """
        return [s.uri for s in self.add(uri, duration_s, discontinuity, map_uri=map_uri)]

    def add(
        self,
        uri: str,
        duration_s: float,
        discontinuity: bool = False,
        *,
        map_uri: str | None = None,
    ) -> list[Segment]:
        """:meth:`add_segment`, returning the segments that slid out (with their maps)."""
        if self._ended:
            raise LocalProtocolError("add_segment after the playlist ended")
        segment = Segment(
            uri=uri,
            duration_ms=round(duration_s * 1000),
            discontinuity=discontinuity,
            map_uri=map_uri,
        )
        self._append(segment)
        return self._slide()

    def end(self) -> None:
        """Mark the playlist finished (EXT-X-ENDLIST). Idempotent."""
        self._ended = True

    def _append(self, segment: Segment) -> None:
        self._target_duration_s = max(self._target_duration_s, segment.rounded_duration_s)
        self._segments.append(segment)

    def _slide(self) -> list[Segment]:
        removed: list[Segment] = []
        while self.window is not None and len(self._segments) > self.window:
            old = self._segments.popleft()
            self._media_sequence += 1
            if old.discontinuity:
                self._discontinuity_sequence += 1
            removed.append(old)
        return removed

    def render(self) -> str:
        """The playlist text, ``\\n`` line ends, ending in a newline."""
        fmp4 = any(s.map_uri is not None for s in self._segments)
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{PLAYLIST_VERSION_FMP4 if fmp4 else PLAYLIST_VERSION}",
            f"#EXT-X-TARGETDURATION:{self._target_duration_s}",
            f"#EXT-X-MEDIA-SEQUENCE:{self._media_sequence}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{self._discontinuity_sequence}",
        ]
        current_map: str | None = None
        for segment in self._segments:
            if segment.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if segment.map_uri is not None and segment.map_uri != current_map:
                lines.append(f'#EXT-X-MAP:URI="{segment.map_uri}"')
            current_map = segment.map_uri
            lines.append(f"#EXTINF:{_format_ms(segment.duration_ms)},")
            lines.append(segment.uri)
        if self._ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, *, window: int | None = None) -> MediaPlaylist:
        """Read back a playlist :meth:`render` wrote (crash recovery).

        ``window`` is not in the text; pass the recorder's. A parsed list
        longer than ``window`` is trimmed on the next :meth:`add_segment`,
        which then returns the extra URIs. Raises
        :class:`RemoteProtocolError` for text that is not such a playlist.
        """
        if len(text) > MAX_PLAYLIST_CHARS:
            raise RemoteProtocolError(
                f"playlist of {len(text)} chars exceeds MAX_PLAYLIST_CHARS ({MAX_PLAYLIST_CHARS})"
            )
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line]
        if not lines or lines[0] != "#EXTM3U":
            raise RemoteProtocolError("playlist does not start with #EXTM3U")
        target: int | None = None
        media_sequence = 0
        discontinuity_sequence = 0
        ended = False
        segments: list[Segment] = []
        pending_duration: int | None = None
        pending_discontinuity = False
        current_map: str | None = None
        for number, line in enumerate(lines[1:], start=2):
            if not line.startswith("#"):
                if pending_duration is None:
                    raise RemoteProtocolError(f"line {number}: segment URI without #EXTINF")
                if ended:
                    raise RemoteProtocolError(f"line {number}: segment after #EXT-X-ENDLIST")
                try:
                    segment = Segment(
                        uri=line,
                        duration_ms=pending_duration,
                        discontinuity=pending_discontinuity,
                        map_uri=current_map,
                    )
                except LocalProtocolError as exc:
                    raise RemoteProtocolError(f"line {number}: {exc}") from None
                segments.append(segment)
                pending_duration = None
                pending_discontinuity = False
                continue
            tag, _, value = line.partition(":")
            if tag == "#EXT-X-VERSION":
                _parse_int(value, number)
            elif tag == "#EXT-X-TARGETDURATION":
                target = _parse_int(value, number)
            elif tag == "#EXT-X-MEDIA-SEQUENCE":
                media_sequence = _parse_int(value, number)
            elif tag == "#EXT-X-DISCONTINUITY-SEQUENCE":
                discontinuity_sequence = _parse_int(value, number)
            elif tag == "#EXT-X-DISCONTINUITY":
                pending_discontinuity = True
            elif tag == "#EXT-X-MAP":
                current_map = _parse_map_uri(value, number)
            elif tag == "#EXTINF":
                pending_duration = _parse_duration_ms(value.partition(",")[0], number)
            elif tag == "#EXT-X-ENDLIST":
                ended = True
            # Other tags and comments are not ours; ignore them.
        if target is None:
            raise RemoteProtocolError("playlist has no #EXT-X-TARGETDURATION")
        if pending_duration is not None:
            raise RemoteProtocolError("playlist ends with #EXTINF but no segment URI")
        if not 1 <= target <= MAX_DURATION_S:
            raise RemoteProtocolError(
                f"EXT-X-TARGETDURATION {target} is outside 1..{MAX_DURATION_S}"
            )
        playlist = cls(target, window)
        playlist._media_sequence = media_sequence
        playlist._discontinuity_sequence = discontinuity_sequence
        for segment in segments:
            playlist._append(segment)
        playlist._ended = ended
        return playlist


def _parse_map_uri(value: str, number: int) -> str:
    """The URI attribute of an EXT-X-MAP attribute list (the only one we write)."""
    for attribute in value.split(","):
        name, _, quoted = attribute.partition("=")
        if name.strip() != "URI":
            continue
        quoted = quoted.strip()
        if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"' or '"' in quoted[1:-1]:
            raise RemoteProtocolError(f"line {number}: EXT-X-MAP URI {quoted[:40]!r} is not quoted")
        try:
            _check_uri(quoted[1:-1])
        except LocalProtocolError as exc:
            raise RemoteProtocolError(f"line {number}: {exc}") from None
        return quoted[1:-1]
    raise RemoteProtocolError(f"line {number}: EXT-X-MAP without URI")


def _parse_int(value: str, number: int) -> int:
    if not value.isdigit() or len(value) > 18:
        raise RemoteProtocolError(f"line {number}: {value[:40]!r} is not a decimal-integer")
    return int(value)


def _parse_duration_ms(value: str, number: int) -> int:
    if len(value) > 32:
        raise RemoteProtocolError(f"line {number}: EXTINF {value[:40]!r} is too long")
    try:
        seconds = Decimal(value)
    except InvalidOperation:
        raise RemoteProtocolError(f"line {number}: EXTINF {value!r} is not a number") from None
    if not seconds.is_finite() or not 0 <= seconds <= MAX_DURATION_S:
        raise RemoteProtocolError(f"line {number}: EXTINF {value!r} is outside 0..{MAX_DURATION_S}")
    return int((seconds * 1000).to_integral_value())


# --------------------------------------------------------------------------- cutting


@dataclass(frozen=True, slots=True, kw_only=True)
class Cut:
    """Close the current segment before this frame and open a new one.

    ``duration_ms`` is the closed segment's duration; ``discontinuity`` says
    the new segment starts a new timeline (EXT-X-DISCONTINUITY before it).
    """

    duration_ms: int
    discontinuity: bool = False


class SegmentCutter:
    """Decides where HLS segments end, frame by frame.

    With video, a segment ends just before a video keyframe once at least
    ``fragment_ms`` has passed since the segment's first frame; audio-only
    streams cut on the first frame past ``fragment_ms``. A timestamp that
    goes backwards on its track, or jumps forward by more than
    ``max_jump_ms``, cuts at once with a discontinuity, keyframe or not.
    Without keyframes a segment grows without bound rather than start on a
    frame a player cannot decode.
    """

    def __init__(
        self,
        *,
        has_video: bool,
        fragment_ms: int = DEFAULT_FRAGMENT_MS,
        max_jump_ms: int = MAX_TIMESTAMP_JUMP_MS,
    ) -> None:
        if fragment_ms <= 0:
            raise LocalProtocolError(f"fragment_ms {fragment_ms} must be positive")
        if max_jump_ms <= 0:
            raise LocalProtocolError(f"max_jump_ms {max_jump_ms} must be positive")
        self.has_video = has_video
        self.fragment_ms = fragment_ms
        self.max_jump_ms = max_jump_ms
        self._start_ms: int | None = None  # first frame of the open segment
        self._end_ms = 0  # latest dts + that track's last frame step, in the open segment
        self._last_dts: dict[bool, int] = {}  # per track (is_video)
        self._last_step: dict[bool, int] = {}

    @property
    def segment_start_ms(self) -> int | None:
        """DTS of the open segment's first frame, or None before any frame."""
        return self._start_ms

    def push(self, *, dts_ms: int, keyframe: bool, is_video: bool) -> Cut | None:
        """Account for one frame, in arrival order; a :class:`Cut` if a segment ends before it.

        The first frame opens the first segment and returns None.
        """
        if self._start_ms is None:
            self._open(dts_ms, is_video)
            return None
        last = self._last_dts.get(is_video)
        if last is not None and (dts_ms < last or dts_ms - last > self.max_jump_ms):
            cut = Cut(duration_ms=max(0, self._end_ms - self._start_ms), discontinuity=True)
            self._last_dts.clear()
            self._last_step.clear()
            self._open(dts_ms, is_video)
            return cut
        elapsed = dts_ms - self._start_ms
        cuttable = (is_video and keyframe) if self.has_video else True
        if cuttable and elapsed >= self.fragment_ms:
            cut = Cut(duration_ms=elapsed)
            self._start_ms = dts_ms
            self._end_ms = dts_ms
            self._note(dts_ms, is_video)
            return cut
        self._note(dts_ms, is_video)
        return None

    def finish(self) -> int | None:
        """Duration in ms of the open segment at end of stream (None if no frame came).

        That is the span from its first frame to the last frame's end, the
        last frame lasting as long as the step before it on its track.
        """
        if self._start_ms is None:
            return None
        return max(0, self._end_ms - self._start_ms)

    def _open(self, dts_ms: int, is_video: bool) -> None:
        self._start_ms = dts_ms
        self._end_ms = dts_ms
        self._note(dts_ms, is_video)

    def _note(self, dts_ms: int, is_video: bool) -> None:
        last = self._last_dts.get(is_video)
        if last is not None:
            self._last_step[is_video] = dts_ms - last
        self._last_dts[is_video] = dts_ms
        self._end_ms = max(self._end_ms, dts_ms + self._last_step.get(is_video, 0))
