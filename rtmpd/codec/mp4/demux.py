"""MP4 demuxer for progressive and fragmented ISO BMFF files.

The file is read through a ``read_at(offset, size) -> bytes`` callable, so the caller decides
how bytes are fetched (a file, a memory buffer, an HTTP range request); only metadata boxes
(``moov``, each ``moof``) are read whole, ``mdat`` payloads are never touched. Samples come
out as :class:`DemuxedSample` records with their ``(offset, size)`` in the file;
:meth:`Mp4Demuxer.read_sample` fetches the data when wanted.

Times are exactly as stored, in each track's timescale: ``dts`` starts at 0 for a
progressive track (``stts``), at ``tfdt`` for a fragmented one; ``cts_offset`` is the
``ctts``/``trun`` composition offset, kept exact (B-frames, negative offsets). The edit list
is exposed per track (:attr:`Mp4Track.edit_list`, :attr:`Mp4Track.presentation_offset`), not
applied: presentation time = ``dts + cts_offset - presentation_offset``.

Supported sample entries: ``avc1``/``avc3`` (``avcC``), ``hvc1``/``hev1`` (``hvcC``),
``av01`` (``av1C``), ``vp09`` (``vpcC``, its full box payload: version 1, flags, record),
``mp4a`` with AAC (``esds``), ``Opus`` (``dOps``, given back as the RFC 7845 ``OpusHead``
that Enhanced RTMP carries, see :mod:`rtmpd.codec.opus`) and ``fLaC`` (``dfLa``, given back
as the 34-byte STREAMINFO that Enhanced RTMP carries, see :mod:`rtmpd.codec.flac`). Any
other codec in a video or audio track raises :class:`RemoteProtocolError` naming it;
tracks of other kinds (text, timecode, hint) are skipped.
"""

from __future__ import annotations

import heapq
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from rtmpd.codec import flac, opus
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.mp4 import AUDIO_CODECS, VIDEO_CODECS, Codec, EditListEntry, TrackConfig
from rtmpd.codec.mp4.boxes import (
    BoxHeader,
    FieldReader,
    iter_boxes,
    parse_box_header,
)

__all__ = [
    "MAX_DECODE_TIME",
    "MAX_FRAGMENTS",
    "MAX_MOOF_SIZE",
    "MAX_MOOV_SIZE",
    "MAX_SAMPLES",
    "MAX_TRACKS",
    "DemuxedSample",
    "Mp4Demuxer",
    "Mp4Track",
    "ReadAt",
]

#: Samples per file, all tracks together. Ten million is over 24 hours of 60 fps video
#: plus 48 kHz AAC; each sample costs ~41 bytes of index here, so this bounds memory to
#: about 410 MB on a hostile file.
MAX_SAMPLES = 10_000_000
#: Tracks per file. A recording has two; 64 leaves room for multi-language files.
MAX_TRACKS = 64
#: Size of the ``moov`` box, read whole. Sample tables of MAX_SAMPLES samples need about
#: 16 bytes each (stsz, stts, ctts, stco at worst), so 256 MiB is ample.
MAX_MOOV_SIZE = 256 * 1024 * 1024
#: Size of one ``moof`` box, read whole. A fragment of a live stream is seconds long; at
#: 16 bytes per ``trun`` entry 64 MiB describes four million samples.
MAX_MOOF_SIZE = 64 * 1024 * 1024
#: Top-level boxes followed in one file; bounds the header reads of a file made of tiny
#: boxes (a fragmented file has two per fragment).
MAX_FRAGMENTS = 4_000_000

#: Largest ``tfdt`` accepted: 2**62 leaves room to add MAX_SAMPLES 32-bit durations and
#: still fit the signed 64-bit columns (2**62 ticks at 90 kHz is 1.6 million years).
MAX_DECODE_TIME = 2**62

ReadAt = Callable[[int, int], bytes]

_AAC_OBJECT_TYPES = {
    0x40: "MPEG-4 audio",
    0x66: "MPEG-2 AAC Main",
    0x67: "MPEG-2 AAC LC",
    0x68: "MPEG-2 AAC SSR",
}
_VIDEO_CONFIG_BOX = {
    b"avc1": b"avcC",
    b"avc3": b"avcC",
    b"hvc1": b"hvcC",
    b"hev1": b"hvcC",
    b"av01": b"av1C",
    b"vp09": b"vpcC",
}
_SAMPLE_IS_NON_SYNC = 0x00010000

# tfhd / trun flags (ISO/IEC 14496-12 8.8.7, 8.8.8)
_TFHD_BASE_DATA_OFFSET = 0x000001
_TFHD_SAMPLE_DESCRIPTION_INDEX = 0x000002
_TFHD_DEFAULT_DURATION = 0x000008
_TFHD_DEFAULT_SIZE = 0x000010
_TFHD_DEFAULT_FLAGS = 0x000020
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
_TRUN_DATA_OFFSET = 0x000001
_TRUN_FIRST_SAMPLE_FLAGS = 0x000004
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400
_TRUN_CTS = 0x000800


@dataclass(frozen=True, slots=True, kw_only=True)
class DemuxedSample:
    """One sample's timing (track timescale) and where its bytes are in the file."""

    track_id: int
    dts: int
    cts_offset: int
    duration: int
    keyframe: bool
    offset: int
    size: int

    @property
    def pts(self) -> int:
        """Composition time as stored (before the edit list): ``dts + cts_offset``."""
        return self.dts + self.cts_offset


@dataclass(frozen=True, slots=True, kw_only=True)
class Mp4Track:
    """A video or audio track as described by ``moov``.

    ``timescale`` is the media (``mdhd``) timescale; ``edit_list`` segment durations are in
    the movie timescale (:attr:`Mp4Demuxer.movie_timescale`), media times in this track's.
    ``media_duration`` is ``mdhd``'s (0 for fragmented files).
    """

    track_id: int
    kind: str
    codec: str
    timescale: int
    decoder_config: bytes
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channel_count: int = 0
    language: str = "und"
    media_duration: int = 0
    edit_list: tuple[EditListEntry, ...] = ()

    @property
    def presentation_offset(self) -> int:
        """``media_time`` of the first non-empty edit (track timescale), or 0.

        Presentation starts at this composition time: ffmpeg reports
        ``pts - presentation_offset`` (and the same shift for dts).
        """
        for edit in self.edit_list:
            if not edit.is_empty:
                return edit.media_time
        return 0

    @property
    def empty_edit_duration(self) -> int:
        """Total of leading empty edits (movie timescale): how long the track starts late."""
        total = 0
        for edit in self.edit_list:
            if not edit.is_empty:
                break
            total += edit.segment_duration
        return total

    def track_config(self) -> TrackConfig:
        """This track as a :class:`TrackConfig`, to write it again (remuxing)."""
        return TrackConfig(
            track_id=self.track_id,
            kind="video" if self.kind == "video" else "audio",
            codec=_codec_literal(self.codec),
            timescale=self.timescale,
            decoder_config=self.decoder_config,
            width=self.width,
            height=self.height,
            sample_rate=self.sample_rate,
            channel_count=self.channel_count,
            language=self.language,
        )


def _codec_literal(codec: str) -> Codec:
    if codec not in VIDEO_CODECS | AUDIO_CODECS:
        raise LocalProtocolError(f"codec {codec!r} cannot be written")
    return cast(Codec, codec)


@dataclass(slots=True)
class _SampleColumns:
    """Per-track sample index, column-wise to keep memory near 41 bytes a sample."""

    dts: array[int] = field(default_factory=lambda: array("q"))
    cts: array[int] = field(default_factory=lambda: array("q"))
    duration: array[int] = field(default_factory=lambda: array("q"))
    offset: array[int] = field(default_factory=lambda: array("q"))
    size: array[int] = field(default_factory=lambda: array("q"))
    keyframe: bytearray = field(default_factory=bytearray)

    def __len__(self) -> int:
        return len(self.dts)

    def end_dts(self) -> int:
        return self.dts[-1] + self.duration[-1] if self.dts else 0


@dataclass(slots=True)
class _TrackState:
    track: Mp4Track
    columns: _SampleColumns
    trex_duration: int = 0
    trex_size: int = 0
    trex_flags: int = 0


class Mp4Demuxer:
    """Parses the metadata of an MP4 file at construction; then iterate :meth:`samples`.

    ``read_at(offset, size)`` must return exactly ``size`` bytes from ``offset`` (a short
    read raises :class:`RemoteProtocolError`: the file ended early); ``size`` is the file
    length in bytes. Everything read from the file is checked against the limits above, and
    every sample must lie inside the file.
    """

    def __init__(self, read_at: ReadAt, size: int) -> None:
        if size < 0:
            raise LocalProtocolError(f"file size {size} is negative")
        self._read_at = read_at
        self._size = size
        self.movie_timescale = 0
        #: ``mvhd`` duration in the movie timescale (0 for fragmented files).
        self.movie_duration = 0
        #: True when the file has at least one ``moof``.
        self.fragmented = False
        self._states: dict[int, _TrackState] = {}
        self._skipped_tracks: set[int] = set()
        self._total_samples = 0
        self._parse()
        self.tracks: tuple[Mp4Track, ...] = tuple(s.track for s in self._states.values())

    # -- public ------------------------------------------------------------------------

    def track(self, track_id: int) -> Mp4Track:
        try:
            return self._states[track_id].track
        except KeyError:
            raise LocalProtocolError(f"no track {track_id}") from None

    def sample_count(self, track_id: int) -> int:
        return len(self._states[track_id].columns)

    def track_samples(self, track_id: int) -> Iterator[DemuxedSample]:
        """One track's samples in decode order."""
        if track_id not in self._states:
            raise LocalProtocolError(f"no track {track_id}")
        c = self._states[track_id].columns
        for i in range(len(c)):
            yield DemuxedSample(
                track_id=track_id,
                dts=c.dts[i],
                cts_offset=c.cts[i],
                duration=c.duration[i],
                keyframe=bool(c.keyframe[i]),
                offset=c.offset[i],
                size=c.size[i],
            )

    def samples(self) -> Iterator[DemuxedSample]:
        """All samples in decode order, tracks interleaved by decode time in seconds
        (ties go to the track listed first)."""
        streams = [self._keyed(n, tid) for n, tid in enumerate(self._states)]
        for _, _, sample in heapq.merge(*streams):
            yield sample

    def _keyed(self, rank: int, track_id: int) -> Iterator[tuple[float, int, DemuxedSample]]:
        timescale = self._states[track_id].track.timescale
        for sample in self.track_samples(track_id):
            yield sample.dts / timescale, rank, sample

    def read_sample(self, sample: DemuxedSample) -> bytes:
        """The sample's bytes, through ``read_at``."""
        return self._read(sample.offset, sample.size)

    # -- reading -----------------------------------------------------------------------

    def _read(self, offset: int, size: int) -> bytes:
        data = self._read_at(offset, size)
        if len(data) != size:
            raise RemoteProtocolError(
                f"read of {size} bytes at {offset} returned {len(data)}: file truncated"
            )
        return data

    def _parse(self) -> None:
        pos = 0
        count = 0
        seen_moov = False
        while pos < self._size:
            count += 1
            if count > MAX_FRAGMENTS:
                raise RemoteProtocolError(
                    f"more than MAX_FRAGMENTS ({MAX_FRAGMENTS}) top-level boxes"
                )
            want = min(24, self._size - pos)
            head = parse_box_header(self._read(pos, want), pos, self._size)
            if head.type == b"moov":
                if seen_moov:
                    raise RemoteProtocolError("second moov box")
                if head.size > MAX_MOOV_SIZE:
                    raise RemoteProtocolError(
                        f"moov of {head.size} bytes exceeds MAX_MOOV_SIZE ({MAX_MOOV_SIZE})"
                    )
                seen_moov = True
                self._parse_moov(self._read(head.start, head.size), _rebase(head))
            elif head.type == b"moof":
                if not seen_moov:
                    raise RemoteProtocolError(f"moof at {head.start} before any moov")
                if head.size > MAX_MOOF_SIZE:
                    raise RemoteProtocolError(
                        f"moof of {head.size} bytes exceeds MAX_MOOF_SIZE ({MAX_MOOF_SIZE})"
                    )
                self.fragmented = True
                self._parse_moof(self._read(head.start, head.size), head.start)
            pos = head.end
        if not seen_moov:
            raise RemoteProtocolError("no moov box: not an MP4 file (or an init segment missing)")
        if not self._states:
            raise RemoteProtocolError("no audio or video track in moov")

    # -- moov --------------------------------------------------------------------------

    def _parse_moov(self, data: bytes, moov: BoxHeader) -> None:
        trex: dict[int, tuple[int, int, int]] = {}
        traks: list[BoxHeader] = []
        seen_mvhd = False
        for box in iter_boxes(data, moov.payload_start, moov.end, depth=1):
            if box.type == b"mvhd":
                r = FieldReader.for_box(data, box)
                version, _ = r.version_flags()
                if version == 1:
                    r.skip(16)
                    self.movie_timescale = r.u32()
                    self.movie_duration = r.u64()
                else:
                    r.skip(8)
                    self.movie_timescale = r.u32()
                    self.movie_duration = r.u32()
                seen_mvhd = True
            elif box.type == b"trak":
                traks.append(box)
                if len(traks) > MAX_TRACKS:
                    raise RemoteProtocolError(f"more than MAX_TRACKS ({MAX_TRACKS}) tracks")
            elif box.type == b"mvex":
                for ext in iter_boxes(data, box.payload_start, box.end, depth=2):
                    if ext.type == b"trex":
                        r = FieldReader.for_box(data, ext)
                        r.version_flags()
                        track_id = r.u32()
                        r.u32()  # default_sample_description_index
                        trex[track_id] = (r.u32(), r.u32(), r.u32())
        if not seen_mvhd:
            raise RemoteProtocolError("moov without mvhd")
        for box in traks:
            self._parse_trak(data, box, trex)

    def _parse_trak(
        self, data: bytes, trak: BoxHeader, trex: dict[int, tuple[int, int, int]]
    ) -> None:
        children = _children(data, trak, 2)
        tkhd = _require(children, b"tkhd", "trak")
        r = FieldReader.for_box(data, tkhd)
        version, _ = r.version_flags()
        r.skip(16 if version == 1 else 8)
        track_id = r.u32()
        if track_id == 0:
            raise RemoteProtocolError("tkhd track_ID 0 is reserved")
        if track_id in self._states or track_id in self._skipped_tracks:
            raise RemoteProtocolError(f"track_ID {track_id} used by two tracks")

        edits: tuple[EditListEntry, ...] = ()
        if b"edts" in children:
            edts = _children(data, children[b"edts"], 3)
            if b"elst" in edts:
                edits = _parse_elst(data, edts[b"elst"])

        mdia = _children(data, _require(children, b"mdia", "trak"), 3)
        r = FieldReader.for_box(data, _require(mdia, b"mdhd", "mdia"))
        version, _ = r.version_flags()
        if version == 1:
            r.skip(16)
            timescale = r.u32()
            media_duration = r.u64()
        else:
            r.skip(8)
            timescale = r.u32()
            media_duration = r.u32()
        lang_code = r.u16() & 0x7FFF
        language = "".join(chr(((lang_code >> s) & 0x1F) + 0x60) for s in (10, 5, 0))
        if not all("a" <= c <= "z" for c in language):
            language = "und"
        if timescale == 0:
            raise RemoteProtocolError(f"track {track_id}: mdhd timescale is 0")
        r = FieldReader.for_box(data, _require(mdia, b"hdlr", "mdia"))
        r.version_flags()
        r.u32()  # pre_defined
        handler = r.bytes(4)
        if handler not in (b"vide", b"soun"):
            self._skipped_tracks.add(track_id)
            return
        kind = "video" if handler == b"vide" else "audio"
        minf = _children(data, _require(mdia, b"minf", "mdia"), 4)
        stbl = _children(data, _require(minf, b"stbl", "minf"), 5)
        entry = _parse_stsd(data, _require(stbl, b"stsd", "stbl"), kind, track_id)
        track = Mp4Track(
            track_id=track_id,
            kind=kind,
            codec=entry.codec,
            timescale=timescale,
            decoder_config=entry.config,
            width=entry.width,
            height=entry.height,
            sample_rate=entry.sample_rate,
            channel_count=entry.channel_count,
            language=language,
            media_duration=media_duration,
            edit_list=edits,
        )
        state = _TrackState(track, _SampleColumns())
        if track_id in trex:
            state.trex_duration, state.trex_size, state.trex_flags = trex[track_id]
        self._states[track_id] = state
        self._parse_sample_tables(data, stbl, state)

    def _parse_sample_tables(
        self, data: bytes, stbl: dict[bytes, BoxHeader], state: _TrackState
    ) -> None:
        tid = state.track.track_id
        sizes = _parse_sample_sizes(data, stbl, tid)
        count = len(sizes)
        if count == 0:
            return
        self._add_samples(count)
        deltas = _expand_pairs(data, _require(stbl, b"stts", "stbl"), count, tid, signed=False)
        if b"ctts" in stbl:
            offsets = _expand_pairs(data, stbl[b"ctts"], count, tid, signed=True)
        else:
            offsets = array("q", bytes(8 * count))
        keyframes = _parse_stss(data, stbl, count)
        chunk_offsets = _parse_chunk_offsets(data, stbl, tid)
        r = FieldReader.for_box(data, _require(stbl, b"stsc", "stbl"))
        r.version_flags()
        entries = r.u32()
        r.need(12 * entries)
        stsc = [(r.u32(), r.u32(), r.u32()) for _ in range(entries)]

        c = state.columns
        dts = 0
        sample = 0
        for i, (first_chunk, per_chunk, _) in enumerate(stsc):
            last_chunk = stsc[i + 1][0] - 1 if i + 1 < len(stsc) else len(chunk_offsets)
            if first_chunk < 1 or last_chunk < first_chunk - 1 or last_chunk > len(chunk_offsets):
                raise RemoteProtocolError(
                    f"track {tid}: stsc entry {i} names chunks {first_chunk}..{last_chunk} "
                    f"of {len(chunk_offsets)}"
                )
            for chunk in range(first_chunk - 1, last_chunk):
                offset = chunk_offsets[chunk]
                for _ in range(per_chunk):
                    if sample == count:
                        break
                    size = sizes[sample]
                    self._check_range(tid, offset, size)
                    c.dts.append(dts)
                    c.cts.append(offsets[sample])
                    c.duration.append(deltas[sample])
                    c.offset.append(offset)
                    c.size.append(size)
                    c.keyframe.append(keyframes[sample])
                    dts += deltas[sample]
                    offset += size
                    sample += 1
                if sample == count:
                    break
            if sample == count:
                break
        if sample != count:
            raise RemoteProtocolError(f"track {tid}: stsc/stco place {sample} samples of {count}")

    def _add_samples(self, count: int) -> None:
        self._total_samples += count
        if self._total_samples > MAX_SAMPLES:
            raise RemoteProtocolError(
                f"{self._total_samples} samples exceed MAX_SAMPLES ({MAX_SAMPLES})"
            )

    def _check_range(self, track_id: int, offset: int, size: int) -> None:
        if offset < 0 or offset + size > self._size:
            raise RemoteProtocolError(
                f"track {track_id}: sample at {offset} of {size} bytes lies outside the file "
                f"({self._size} bytes)"
            )

    # -- moof --------------------------------------------------------------------------

    def _parse_moof(self, data: bytes, moof_start: int) -> None:
        moof = parse_box_header(data[:24], 0, len(data))
        next_base = moof_start  # implicit base of the first traf without default-base-is-moof
        for box in iter_boxes(data, moof.payload_start, moof.end, depth=1):
            if box.type == b"traf":
                next_base = self._parse_traf(data, box, moof_start, next_base)

    def _parse_traf(self, data: bytes, traf: BoxHeader, moof_start: int, implicit: int) -> int:
        boxes = list(iter_boxes(data, traf.payload_start, traf.end, depth=2))
        tfhd = next((b for b in boxes if b.type == b"tfhd"), None)
        if tfhd is None:
            raise RemoteProtocolError("traf without tfhd")
        r = FieldReader.for_box(data, tfhd)
        _, flags = r.version_flags()
        track_id = r.u32()
        state = self._states.get(track_id)
        if state is None:
            if track_id in self._skipped_tracks:
                return implicit
            raise RemoteProtocolError(f"traf for track {track_id} not declared in moov")
        if flags & _TFHD_BASE_DATA_OFFSET:
            base = r.u64()
        elif flags & _TFHD_DEFAULT_BASE_IS_MOOF:
            base = moof_start
        else:
            base = implicit
        if flags & _TFHD_SAMPLE_DESCRIPTION_INDEX:
            r.u32()
        default_duration = r.u32() if flags & _TFHD_DEFAULT_DURATION else state.trex_duration
        default_size = r.u32() if flags & _TFHD_DEFAULT_SIZE else state.trex_size
        default_flags = r.u32() if flags & _TFHD_DEFAULT_FLAGS else state.trex_flags

        c = state.columns
        dts = c.end_dts()
        for box in boxes:
            if box.type == b"tfdt":
                r = FieldReader.for_box(data, box)
                version, _ = r.version_flags()
                dts = r.u64() if version == 1 else r.u32()
                if dts > MAX_DECODE_TIME:
                    raise RemoteProtocolError(
                        f"track {track_id}: tfdt {dts} exceeds MAX_DECODE_TIME ({MAX_DECODE_TIME})"
                    )
        tid = track_id
        data_end = base
        first_trun = True
        for box in boxes:
            if box.type != b"trun":
                continue
            r = FieldReader.for_box(data, box)
            _, tflags = r.version_flags()
            count = r.u32()
            if tflags & _TRUN_DATA_OFFSET:
                offset = base + r.i32()
            else:
                offset = base if first_trun else data_end
            first_trun = False
            first_flags = r.u32() if tflags & _TRUN_FIRST_SAMPLE_FLAGS else None
            per_sample = 4 * bin(
                tflags & (_TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS | _TRUN_CTS)
            ).count("1")
            r.need(per_sample * count)
            if not tflags & _TRUN_SIZE and count:
                # Sizes from the defaults: checked as one run here, so a few
                # bytes of trun cannot stand for millions of samples.
                if default_size == 0:
                    raise RemoteProtocolError(
                        f"track {tid}: trun of {count} samples of 0 bytes"
                    )
                self._check_range(tid, offset, default_size * count)
            self._add_samples(count)
            for i in range(count):
                duration = r.u32() if tflags & _TRUN_DURATION else default_duration
                size = r.u32() if tflags & _TRUN_SIZE else default_size
                if tflags & _TRUN_FLAGS:
                    sflags = r.u32()
                elif i == 0 and first_flags is not None:
                    sflags = first_flags
                else:
                    sflags = default_flags
                # Version 0 offsets are unsigned in the spec; read both versions signed,
                # as players do, so a writer's negative offsets survive.
                cts = r.i32() if tflags & _TRUN_CTS else 0
                self._check_range(tid, offset, size)
                c.dts.append(dts)
                c.cts.append(cts)
                c.duration.append(duration)
                c.offset.append(offset)
                c.size.append(size)
                c.keyframe.append(0 if sflags & _SAMPLE_IS_NON_SYNC else 1)
                dts += duration
                offset += size
            data_end = offset
        return data_end


# -- helpers -----------------------------------------------------------------------------


def _rebase(head: BoxHeader) -> BoxHeader:
    """The header of a box read into its own buffer (offsets from 0)."""
    return BoxHeader(head.type, 0, head.header_size, head.size)


def _children(data: bytes, box: BoxHeader, depth: int) -> dict[bytes, BoxHeader]:
    """Child boxes by type (the first of each type wins)."""
    return _children_at(data, box.payload_start, box.end, depth)


def _require(children: dict[bytes, BoxHeader], box_type: bytes, parent: str) -> BoxHeader:
    try:
        return children[box_type]
    except KeyError:
        raise RemoteProtocolError(f"{parent} has no {box_type.decode('latin-1')} box") from None


def _parse_elst(data: bytes, box: BoxHeader) -> tuple[EditListEntry, ...]:
    r = FieldReader.for_box(data, box)
    version, _ = r.version_flags()
    count = r.u32()
    r.need(count * (20 if version == 1 else 12))
    edits = []
    for _ in range(count):
        if version == 1:
            duration, media_time = r.u64(), r.i64()
        else:
            duration, media_time = r.u32(), r.i32()
        rate = r.i16()
        r.i16()  # media_rate_fraction
        edits.append(
            EditListEntry(segment_duration=duration, media_time=media_time, media_rate=rate)
        )
    return tuple(edits)


@dataclass(frozen=True, slots=True)
class _SampleEntry:
    codec: str
    config: bytes
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channel_count: int = 0


def _parse_stsd(data: bytes, stsd: BoxHeader, kind: str, track_id: int) -> _SampleEntry:
    r = FieldReader.for_box(data, stsd)
    r.version_flags()
    count = r.u32()
    if count < 1:
        raise RemoteProtocolError(f"track {track_id}: stsd has no sample entry")
    entry = parse_box_header(data[r.pos : r.pos + 24], r.pos, stsd.end)
    fourcc = entry.type
    codec = fourcc.decode("latin-1")
    if kind == "video":
        if fourcc not in _VIDEO_CONFIG_BOX:
            raise RemoteProtocolError(
                f"track {track_id}: unsupported video codec {codec!r} "
                "(supported: avc1, avc3, hvc1, hev1, av01, vp09)"
            )
        r = FieldReader.for_box(data, entry)
        r.skip(6 + 2 + 16)  # reserved, data_reference_index, pre_defined/reserved
        width, height = r.u16(), r.u16()
        r.skip(4 + 4 + 4 + 2 + 32 + 2 + 2)  # resolutions, reserved, frame_count, name, depth
        children = _children_at(data, r.pos, entry.end, 7)
        config = _require(children, _VIDEO_CONFIG_BOX[fourcc], codec)
        return _SampleEntry(
            codec, data[config.payload_start : config.end], width=width, height=height
        )
    if fourcc not in (b"mp4a", b"Opus", b"fLaC"):
        raise RemoteProtocolError(
            f"track {track_id}: unsupported audio codec {codec!r} "
            "(supported: mp4a AAC, Opus, fLaC)"
        )
    r = FieldReader.for_box(data, entry)
    r.skip(6 + 2)
    sound_version = r.u16()  # QuickTime sound sample description version (ISO: reserved 0)
    r.skip(6)
    channel_count, _sample_size = r.u16(), r.u16()
    r.skip(4)
    sample_rate = r.u32() >> 16
    if sound_version == 1:
        r.skip(16)
    elif sound_version == 2:
        r.skip(36)
    children = _children_at(data, r.pos, entry.end, 7)
    if fourcc == b"Opus":
        dops = _require(children, b"dOps", "Opus")
        head = opus.OpusHead.parse_dops(data[dops.payload_start : dops.end])
        return _SampleEntry(
            "Opus", bytes(head), sample_rate=opus.SAMPLE_RATE, channel_count=head.channel_count
        )
    if fourcc == b"fLaC":
        dfla = _require(children, b"dfLa", "fLaC")
        info = flac.StreamInfo.parse_dfla(data[dfla.payload_start : dfla.end])
        return _SampleEntry(
            "fLaC", info.data, sample_rate=info.sample_rate, channel_count=info.channels
        )
    if b"esds" not in children and b"wave" in children:
        children = _children(data, children[b"wave"], 8)
    asc = _parse_esds(data, _require(children, b"esds", "mp4a"), track_id)
    return _SampleEntry("mp4a", asc, sample_rate=sample_rate, channel_count=channel_count)


def _children_at(data: bytes, start: int, end: int, depth: int) -> dict[bytes, BoxHeader]:
    found: dict[bytes, BoxHeader] = {}
    for child in iter_boxes(data, start, end, depth=depth):
        found.setdefault(child.type, child)
    return found


def _read_descriptor(r: FieldReader) -> tuple[int, int]:
    """Read an MPEG-4 descriptor header; return (tag, payload end)."""
    tag = r.u8()
    size = 0
    for _ in range(4):
        byte = r.u8()
        size = (size << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    else:
        raise RemoteProtocolError("esds: descriptor size longer than 4 bytes")
    end = r.pos + size
    if end > r.end:
        raise RemoteProtocolError(f"esds: descriptor tag {tag} of {size} bytes overruns its box")
    return tag, end


def _parse_esds(data: bytes, esds: BoxHeader, track_id: int) -> bytes:
    r = FieldReader.for_box(data, esds)
    r.version_flags()
    tag, end = _read_descriptor(r)
    if tag != 0x03:
        raise RemoteProtocolError(f"esds: expected ES_Descriptor (tag 3), found tag {tag}")
    r.u16()  # ES_ID
    es_flags = r.u8()
    if es_flags & 0x80:  # streamDependenceFlag
        r.u16()
    if es_flags & 0x40:  # URL_Flag
        r.skip(r.u8())
    if es_flags & 0x20:  # OCRstreamFlag
        r.u16()
    while r.pos < end:
        tag, sub_end = _read_descriptor(r)
        if tag == 0x04:  # DecoderConfigDescriptor
            object_type = r.u8()
            if object_type not in _AAC_OBJECT_TYPES:
                raise RemoteProtocolError(
                    f"track {track_id}: unsupported audio codec mp4a with "
                    f"objectTypeIndication 0x{object_type:02x} (supported: AAC, 0x40)"
                )
            r.skip(1 + 3 + 4 + 4)
            while r.pos < sub_end:
                inner, inner_end = _read_descriptor(r)
                if inner == 0x05:  # DecoderSpecificInfo: the AudioSpecificConfig
                    return r.bytes(inner_end - r.pos)
                r.pos = inner_end
        r.pos = sub_end
    raise RemoteProtocolError(f"track {track_id}: esds has no AudioSpecificConfig")


def _parse_sample_sizes(data: bytes, stbl: dict[bytes, BoxHeader], track_id: int) -> array[int]:
    if b"stsz" in stbl:
        r = FieldReader.for_box(data, stbl[b"stsz"])
        r.version_flags()
        sample_size = r.u32()
        count = r.u32()
        if count > MAX_SAMPLES:
            raise RemoteProtocolError(
                f"track {track_id}: {count} samples exceed MAX_SAMPLES ({MAX_SAMPLES})"
            )
        if sample_size:
            return array("q", [sample_size]) * count
        r.need(4 * count)
        return array("q", struct.unpack(f">{count}I", r.bytes(4 * count)))
    if b"stz2" in stbl:
        r = FieldReader.for_box(data, stbl[b"stz2"])
        r.version_flags()
        r.skip(3)
        field_size = r.u8()
        count = r.u32()
        if field_size not in (4, 8, 16):
            raise RemoteProtocolError(f"track {track_id}: stz2 field_size {field_size}")
        if count > MAX_SAMPLES:
            raise RemoteProtocolError(
                f"track {track_id}: {count} samples exceed MAX_SAMPLES ({MAX_SAMPLES})"
            )
        r.need((count * field_size + 7) // 8)
        raw = r.bytes((count * field_size + 7) // 8)
        if field_size == 16:
            return array("q", struct.unpack(f">{count}H", raw))
        if field_size == 8:
            return array("q", list(raw))
        return array("q", ((raw[i // 2] >> (4 if i % 2 == 0 else 0)) & 0xF for i in range(count)))
    raise RemoteProtocolError(f"track {track_id}: stbl has neither stsz nor stz2")


def _expand_pairs(
    data: bytes, box: BoxHeader, count: int, track_id: int, *, signed: bool
) -> array[int]:
    """Expand an stts/ctts run-length table (sample_count, value) to ``count`` values."""
    r = FieldReader.for_box(data, box)
    r.version_flags()
    entries = r.u32()
    r.need(8 * entries)
    out = array("q")
    name = box.type.decode("latin-1")
    for _ in range(entries):
        run = r.u32()
        # ctts version 0 offsets are unsigned in the spec, but writers store negative
        # offsets there too; read both versions signed, as players do.
        value = r.i32() if signed else r.u32()
        if len(out) + run > count:
            raise RemoteProtocolError(
                f"track {track_id}: {name} describes more than the {count} samples in stsz"
            )
        out.extend(array("q", [value]) * run)
    if len(out) != count:
        raise RemoteProtocolError(
            f"track {track_id}: {name} describes {len(out)} samples, stsz {count}"
        )
    return out


def _parse_stss(data: bytes, stbl: dict[bytes, BoxHeader], count: int) -> bytearray:
    if b"stss" not in stbl:
        return bytearray(b"\x01") * count  # no stss: every sample is a sync sample
    keyframes = bytearray(count)
    r = FieldReader.for_box(data, stbl[b"stss"])
    r.version_flags()
    entries = r.u32()
    r.need(4 * entries)
    for _ in range(entries):
        number = r.u32()
        if not 1 <= number <= count:
            raise RemoteProtocolError(f"stss names sample {number} of {count}")
        keyframes[number - 1] = 1
    return keyframes


def _parse_chunk_offsets(data: bytes, stbl: dict[bytes, BoxHeader], track_id: int) -> array[int]:
    if b"stco" in stbl:
        box, width = stbl[b"stco"], 4
    elif b"co64" in stbl:
        box, width = stbl[b"co64"], 8
    else:
        raise RemoteProtocolError(f"track {track_id}: stbl has neither stco nor co64")
    r = FieldReader.for_box(data, box)
    r.version_flags()
    entries = r.u32()
    r.need(width * entries)
    return array(
        "Q", struct.unpack(f">{entries}{'I' if width == 4 else 'Q'}", r.bytes(width * entries))
    )
