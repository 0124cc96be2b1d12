"""Input files for ``rtmpd-push``: an FLV or MP4 file as a list of FLV tags.

:func:`open_source` indexes a file once and returns a :class:`PushSource`: the
``onMetaData`` body, the codec sequence headers, and every tag in send order
with its DTS in ms. Tag bodies are read lazily (:meth:`PushSource.body`), so
memory is a small index per tag, not the file.

MP4 (progressive or fragmented) goes through the pure demuxer
(:mod:`rtmpd.codec.mp4.demux`) and is converted the way FLV muxers do it:

* H.264: sequence header ``17 00 000000`` + ``avcC``; frames ``17``/``27 01``
  + SI24 composition time + the length-prefixed NAL units as stored.
* H.265: Enhanced RTMP ExHeader with FourCC ``hvc1`` (SequenceStart with
  ``hvcC``, CodedFrames with SI24 composition time).
* AV1 and VP9: Enhanced RTMP ExHeader with FourCC ``av01`` / ``vp09``
  (SequenceStart with the ``av1C`` / ``vpcC`` payload, CodedFrames without a
  composition time, as ffmpeg's FLV muxer sends them).
* AAC: ``AF 00`` + AudioSpecificConfig; frames ``AF 01`` + raw AAC.
* Opus and FLAC: Enhanced RTMP ExAudio with FourCC ``Opus`` / ``fLaC``:
  ``90`` + FourCC + the OpusHead the demuxer made of ``dOps`` (the STREAMINFO
  of ``dfLa``); frames ``91`` + FourCC + one packet (one FLAC frame).

Times are exact: each DTS and PTS is converted from the integer track time to
ms on its own (no accumulated rounding), after the edit list's presentation
offset (and any leading empty edit) is applied, as ffprobe reports them. If
that leaves a negative time, every track is shifted by the same amount so the
first is 0 (what ffmpeg's FLV muxer does), which keeps A/V sync. The FLV
composition time is ``round(pts) - round(dts)``, so PTS in ms is exact too.

FLV files are passed through tag by tag (the first ``onMetaData`` is kept as
the metadata sent at the start of every connection).

Errors in the file raise :class:`InputError` with one line of text.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rtmpd.codec import amf0
from rtmpd.codec.errors import ProtocolError
from rtmpd.codec.flv import (
    NEED_DATA,
    TAG_AUDIO,
    TAG_SCRIPT,
    TAG_VIDEO,
    VIDEO_AVC,
    EndOfStream,
    FlvReader,
    TagReceived,
    describe_tag,
    fourcc,
)
from rtmpd.codec.mp4.demux import Mp4Demuxer, Mp4Track

__all__ = [
    "FLV_SUFFIXES",
    "MP4_SUFFIXES",
    "InputError",
    "PushSource",
    "SourceTag",
    "open_source",
    "rescale_ms",
]

FLV_SUFFIXES = frozenset({".flv"})
MP4_SUFFIXES = frozenset({".mp4", ".m4v", ".mov"})

#: Bytes read at a time while indexing an FLV file.
_FLV_READ_SIZE = 1024 * 1024

_AAC_HEADER = 0xAF  # SoundFormat 10 (AAC), 44 kHz, 16-bit, stereo: fixed for AAC in FLV
# SoundFormat 9 (ExHeader) | AudioPacketType: SequenceStart 0, CodedFrames 1.
_EX_AUDIO_SEQUENCE_START = b"\x90"
_EX_AUDIO_CODED_FRAMES = b"\x91"
_AVC_KEY = (1 << 4) | VIDEO_AVC
_AVC_INTER = (2 << 4) | VIDEO_AVC
_EX_HEADER = 0x80
_EX_KEY = _EX_HEADER | (1 << 4)
_EX_INTER = _EX_HEADER | (2 << 4)
_EX_SEQUENCE_START = 0
_EX_CODED_FRAMES = 1
#: Sample entries sent as Enhanced RTMP FourCC video, and whether their CodedFrames
#: carry an SI24 composition time.
_EX_VIDEO = {"hvc1": (b"hvc1", True), "hev1": (b"hvc1", True), "av01": (b"av01", False),
             "vp09": (b"vp09", False)}
#: Sample entries sent as Enhanced RTMP ExAudio.
_EX_AUDIO = {"Opus": b"Opus", "fLaC": b"fLaC"}


class InputError(Exception):
    """The input file cannot be pushed; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class SourceTag:
    """One FLV tag of the input: ``prefix`` + the file's bytes ``[offset, offset+size)``.

    ``dts_ms`` is the tag timestamp (DTS) in ms; ``duration_ms`` how long until
    the next tag of the same kind (the last one repeats the one before).
    """

    tag_type: int
    dts_ms: int
    keyframe: bool
    sequence_header: bool
    prefix: bytes
    offset: int
    size: int
    duration_ms: int = 0


class PushSource:
    """An indexed input file (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        fd: int,
        *,
        metadata: bytes,
        tags: list[SourceTag],
        headers: list[SourceTag],
        has_audio: bool,
        has_video: bool,
    ) -> None:
        self.path = path
        self._fd = fd
        #: The FLV script tag body sent first on every connection (AMF0 "onMetaData", {...}).
        self.metadata = metadata
        #: Every tag in send order (sorted by DTS; sequence headers of FLV input included).
        self.tags = tags
        #: The first sequence header of each kind (video, audio), sent before any frame.
        self.headers = headers
        self.has_audio = has_audio
        self.has_video = has_video
        first = tags[0].dts_ms
        #: DTS of the first tag, ms.
        self.start_ms = first
        #: Where a loop restarts: the end of the last tag (its DTS + its duration), ms.
        self.end_ms = max(t.dts_ms + t.duration_ms for t in tags)
        #: Length of one pass through the file, ms (at least 1).
        self.period_ms = max(1, self.end_ms - first)

    @property
    def duration_ms(self) -> int:
        """Length of the file in ms."""
        return self.period_ms

    def body(self, tag: SourceTag) -> bytes:
        """The tag body: its prefix and its bytes from the file."""
        if not tag.size:
            return tag.prefix
        data = os.pread(self._fd, tag.size, tag.offset)
        if len(data) != tag.size:
            raise InputError(f"{self.path}: file shrank while reading it (at byte {tag.offset})")
        return tag.prefix + data if tag.prefix else data

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def keyframe_index(self, position_ms: int) -> int:
        """Index to start at for ``position_ms`` (file time, from :attr:`start_ms`): the last
        video keyframe at or before it, or for a file without video, the last tag at or
        before it."""
        target = self.start_ms + position_ms
        best = 0
        for i, tag in enumerate(self.tags):
            if tag.dts_ms > target:
                break
            if tag.keyframe or not self.has_video:
                best = i
        return best

    def headers_at(self, index: int) -> list[SourceTag]:
        """The sequence headers in force at ``index`` (the latest of each kind before it,
        or the file's first ones): what a new connection needs before ``tags[index]``."""
        latest: dict[int, SourceTag] = {h.tag_type: h for h in self.headers}
        found: set[int] = set()
        for tag in reversed(self.tags[:index]):
            if tag.sequence_header and tag.tag_type not in found:
                latest[tag.tag_type] = tag
                found.add(tag.tag_type)
                if len(found) == 2:
                    break
        return [latest[k] for k in (TAG_VIDEO, TAG_AUDIO) if k in latest]


def open_source(path: Path) -> PushSource:
    """Index ``path`` (``.flv``, or ``.mp4``/``.m4v``/``.mov``); raises :class:`InputError`."""
    suffix = path.suffix.lower()
    if suffix not in FLV_SUFFIXES | MP4_SUFFIXES:
        raise InputError(
            f"{path}: unknown input type {suffix or '(no suffix)'!r} "
            "(supported: .flv, .mp4, .m4v, .mov)"
        )
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if suffix in FLV_SUFFIXES:
            return _open_flv(path, fd, size)
        return _open_mp4(path, fd, size)
    except ProtocolError as e:
        os.close(fd)
        raise InputError(f"{path}: {e}") from None
    except (InputError, OSError):
        os.close(fd)
        raise


# -- timing ---------------------------------------------------------------------------


def rescale_ms(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to the nearest integer, halves away from zero
    (ffmpeg's ``av_rescale_rnd`` with ``AV_ROUND_NEAR_INF``), exactly."""
    if denominator <= 0:
        raise ValueError(f"denominator {denominator} is not positive")
    magnitude = (2 * abs(numerator) + denominator) // (2 * denominator)
    return magnitude if numerator >= 0 else -magnitude


@dataclass(frozen=True, slots=True)
class _TrackClock:
    """Converts one track's integer times to ms, edit list applied."""

    timescale: int
    presentation_offset: int  # track timescale
    delay_num: int  # leading empty edits, as a fraction of seconds: num / den
    delay_den: int

    def ms(self, t: int) -> int:
        # ((t - offset) / timescale + delay_num / delay_den) * 1000, rounded once.
        num = (t - self.presentation_offset) * 1000 * self.delay_den + (
            self.delay_num * 1000 * self.timescale
        )
        return rescale_ms(num, self.timescale * self.delay_den)


def _track_clock(track: Mp4Track, movie_timescale: int) -> _TrackClock:
    delay = track.empty_edit_duration if movie_timescale else 0
    return _TrackClock(
        timescale=track.timescale,
        presentation_offset=track.presentation_offset,
        delay_num=delay,
        delay_den=movie_timescale or 1,
    )


# -- MP4 ------------------------------------------------------------------------------


def _si24(value: int) -> bytes:
    if not -0x800000 <= value <= 0x7FFFFF:
        raise InputError(f"composition offset of {value} ms does not fit FLV's SI24")
    return (value & 0xFFFFFF).to_bytes(3, "big")


@dataclass(frozen=True, slots=True)
class _Mp4Track:
    track: Mp4Track
    tag_type: int
    clock: _TrackClock
    header: bytes

    def frame_prefix(self, keyframe: bool, cts_ms: int) -> bytes:
        codec = self.track.codec
        if self.tag_type == TAG_AUDIO:
            if codec in _EX_AUDIO:
                return _EX_AUDIO_CODED_FRAMES + _EX_AUDIO[codec]
            return bytes((_AAC_HEADER, 1))
        if codec in _EX_VIDEO:
            code, with_cts = _EX_VIDEO[codec]
            first = (_EX_KEY if keyframe else _EX_INTER) | _EX_CODED_FRAMES
            return bytes((first,)) + code + (_si24(cts_ms) if with_cts else b"")
        return bytes((_AVC_KEY if keyframe else _AVC_INTER, 1)) + _si24(cts_ms)


def _mp4_track(track: Mp4Track, movie_timescale: int) -> _Mp4Track:
    clock = _track_clock(track, movie_timescale)
    config = track.decoder_config
    if track.kind == "audio":
        if track.codec in _EX_AUDIO:
            header = _EX_AUDIO_SEQUENCE_START + _EX_AUDIO[track.codec] + config
        else:
            header = bytes((_AAC_HEADER, 0)) + config
        return _Mp4Track(track, TAG_AUDIO, clock, header)
    if track.codec in _EX_VIDEO:
        header = bytes((_EX_KEY | _EX_SEQUENCE_START,)) + _EX_VIDEO[track.codec][0] + config
    else:
        header = bytes((_AVC_KEY, 0, 0, 0, 0)) + config
    return _Mp4Track(track, TAG_VIDEO, clock, header)


def _open_mp4(path: Path, fd: int, size: int) -> PushSource:
    def read_at(offset: int, length: int) -> bytes:
        return os.pread(fd, length, offset)

    demuxer = Mp4Demuxer(read_at, size)
    chosen: dict[str, _Mp4Track] = {}
    for track in demuxer.tracks:  # the first track of each kind is pushed
        if track.kind not in chosen and demuxer.sample_count(track.track_id):
            chosen[track.kind] = _mp4_track(track, demuxer.movie_timescale)
    if not chosen:
        raise InputError(f"{path}: no audio or video samples")
    by_id = {t.track.track_id: t for t in chosen.values()}

    tags: list[SourceTag] = []
    for sample in demuxer.samples():
        t = by_id.get(sample.track_id)
        if t is None:
            continue
        dts_ms = t.clock.ms(sample.dts)
        pts_ms = t.clock.ms(sample.pts)
        end_ms = t.clock.ms(sample.dts + sample.duration)
        keyframe = sample.keyframe and t.tag_type == TAG_VIDEO
        tags.append(
            SourceTag(
                tag_type=t.tag_type,
                dts_ms=dts_ms,
                keyframe=keyframe,
                sequence_header=False,
                prefix=t.frame_prefix(keyframe, pts_ms - dts_ms),
                offset=sample.offset,
                size=sample.size,
                duration_ms=max(0, end_ms - dts_ms),
            )
        )
    shift = max(0, -min(tag.dts_ms for tag in tags))
    if shift:
        tags = [_shifted(tag, shift) for tag in tags]
    tags.sort(key=lambda tag: tag.dts_ms)  # stable: decode order kept within a track
    start = tags[0].dts_ms
    headers = [
        SourceTag(
            tag_type=t.tag_type, dts_ms=start, keyframe=False, sequence_header=True,
            prefix=t.header, offset=0, size=0,
        )
        for t in sorted(chosen.values(), key=lambda t: t.tag_type != TAG_VIDEO)
    ]
    end = max(tag.dts_ms + tag.duration_ms for tag in tags)
    metadata = _mp4_metadata(chosen, (end - start) / 1000)
    return PushSource(
        path, fd, metadata=metadata, tags=tags, headers=headers,
        has_audio="audio" in chosen, has_video="video" in chosen,
    )


def _shifted(tag: SourceTag, shift: int) -> SourceTag:
    return SourceTag(
        tag.tag_type, tag.dts_ms + shift, tag.keyframe, tag.sequence_header, tag.prefix,
        tag.offset, tag.size, tag.duration_ms,
    )


def _mp4_metadata(chosen: dict[str, _Mp4Track], duration_s: float) -> bytes:
    meta: dict[str, object] = {"duration": duration_s}
    video = chosen.get("video")
    if video is not None:
        track = video.track
        meta["width"] = float(track.width)
        meta["height"] = float(track.height)
        if track.codec in _EX_VIDEO:
            meta["videocodecid"] = float(fourcc(_EX_VIDEO[track.codec][0]))
        else:
            meta["videocodecid"] = float(VIDEO_AVC)
    audio = chosen.get("audio")
    if audio is not None:
        track = audio.track
        ex_audio = _EX_AUDIO.get(track.codec)
        meta["audiocodecid"] = float(fourcc(ex_audio)) if ex_audio else 10.0
        meta["audiosamplerate"] = float(track.sample_rate or track.timescale)
        meta["audiosamplesize"] = 16.0
        meta["audiochannels"] = float(track.channel_count)
        meta["stereo"] = track.channel_count == 2
    meta["encoder"] = "rtmpd-push"
    return amf0.encode_all("onMetaData", amf0.ECMAArray(meta))


# -- FLV ------------------------------------------------------------------------------


def _flv_tags(fd: int, size: int) -> Iterator[tuple[TagReceived, int]]:
    """Each tag of the file with the file offset of its body."""
    reader = FlvReader()
    fed = 0
    while True:
        data = os.pread(fd, _FLV_READ_SIZE, fed) if fed < size else b""
        fed += len(data)
        reader.receive_data(data)
        while (event := reader.next_event()) is not NEED_DATA:
            if isinstance(event, TagReceived):
                body_end = fed - reader.buffered
                yield event, body_end - len(event.body)
            elif isinstance(event, EndOfStream):
                return
        if not data:
            return


def _is_metadata(body: bytes) -> bool:
    try:
        return amf0.Decoder(body).decode() == "onMetaData"
    except ProtocolError:
        return False


def _open_flv(path: Path, fd: int, size: int) -> PushSource:
    tags: list[SourceTag] = []
    metadata: bytes | None = None
    headers: dict[int, SourceTag] = {}
    for event, offset in _flv_tags(fd, size):
        body = event.body
        if event.tag_type == TAG_SCRIPT:
            if metadata is None and _is_metadata(body):
                metadata = body
                continue
            info_keyframe, info_header = False, False
        else:
            info = describe_tag(event.tag_type, body)
            info_keyframe = info.keyframe and event.tag_type == TAG_VIDEO
            info_header = info.sequence_header
        tag = SourceTag(
            tag_type=event.tag_type,
            dts_ms=event.timestamp_ms,
            keyframe=info_keyframe,
            sequence_header=info_header,
            prefix=b"",
            offset=offset,
            size=len(body),
        )
        if info_header and event.tag_type not in headers:
            headers[event.tag_type] = tag
        tags.append(tag)
    media = [t for t in tags if t.tag_type != TAG_SCRIPT and not t.sequence_header]
    if not media:
        raise InputError(f"{path}: no audio or video frames")
    tags = _with_durations(tags)
    start = min(t.dts_ms for t in media)
    end = max(t.dts_ms + t.duration_ms for t in media)
    if metadata is None:
        metadata = amf0.encode_all(
            "onMetaData",
            amf0.ECMAArray({"duration": (end - start) / 1000, "encoder": "rtmpd-push"}),
        )
    return PushSource(
        path, fd, metadata=metadata, tags=tags,
        headers=[headers[k] for k in (TAG_VIDEO, TAG_AUDIO) if k in headers],
        has_audio=any(t.tag_type == TAG_AUDIO for t in media),
        has_video=any(t.tag_type == TAG_VIDEO for t in media),
    )


def _with_durations(tags: list[SourceTag]) -> list[SourceTag]:
    """Fill ``duration_ms`` from the next frame of the same kind."""
    out = list(tags)
    next_dts: dict[int, int] = {}
    last_duration: dict[int, int] = {}
    for i in range(len(out) - 1, -1, -1):
        tag = out[i]
        if tag.sequence_header or tag.tag_type == TAG_SCRIPT:
            continue
        following = next_dts.get(tag.tag_type)
        duration = 0 if following is None else max(0, following - tag.dts_ms)
        next_dts[tag.tag_type] = tag.dts_ms
        out[i] = SourceTag(
            tag.tag_type, tag.dts_ms, tag.keyframe, tag.sequence_header, tag.prefix,
            tag.offset, tag.size, duration,
        )
        if following is not None and tag.tag_type not in last_duration:
            last_duration[tag.tag_type] = duration
    # The last frame of each kind lasts as long as the one before it.
    for kind, duration in last_duration.items():
        for i in range(len(out) - 1, -1, -1):
            tag = out[i]
            if tag.tag_type == kind and not tag.sequence_header:
                out[i] = SourceTag(
                    tag.tag_type, tag.dts_ms, tag.keyframe, tag.sequence_header, tag.prefix,
                    tag.offset, tag.size, duration,
                )
                break
    return out
