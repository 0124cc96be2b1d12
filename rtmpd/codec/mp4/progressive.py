"""Progressive MP4 writer with ``moov`` before ``mdat`` ("faststart").

The writer keeps only each sample's timing and size (41 bytes a sample), never its
data, so a recorder can turn hours of fMP4 fragments on disk into one progressive file
without loading the media::

    writer = ProgressiveMp4Writer(tracks)
    for track_id, sample in samples:            # e.g. Mp4Demuxer(...).samples()
        writer.add_sample(track_id, sample)     # anything with dts, cts_offset, duration,
                                                # keyframe and size
    out.write(writer.header_bytes())            # ftyp + moov + mdat header
    for track_id, index in writer.sample_order():
        out.write(data_of(track_id, index))     # the index-th sample added to that track

(:meth:`ProgressiveMp4Writer.chunks` gives the same order as runs of consecutive samples,
with their file offsets.) :func:`write_progressive` does all of it in memory for small
files and tests.

Timing and alignment. MP4 decode times start at 0 in every track, so a track's first
``dts`` is dropped from the sample tables; the edit list restores the published alignment:

* The movie starts at the earliest presentation time of any track,
  ``start = min over tracks of min(dts + cts_offset) / timescale``.
* A track whose own earliest presentation time is later than ``start`` (audio published
  after video, or video whose first frame has a composition offset while audio starts at
  its dts) gets a leading empty edit of that difference (movie timescale).
* Its one media edit has ``media_time = min(dts + cts_offset) - first dts``: the composition
  offset of the first presented sample (B-frame delay), so presentation of that track begins
  exactly with its first frame, and ``segment_duration`` spans up to the end of its last
  sample. This is what ffmpeg writes for the same input, and what it applies on reading.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import groupby

from rtmpd.codec.errors import LocalProtocolError
from rtmpd.codec.mp4 import EditListEntry, Sample, SampleTiming, TrackConfig
from rtmpd.codec.mp4.boxes import BoxWriter
from rtmpd.codec.mp4.fmp4 import write_ftyp, write_mvhd, write_trak

__all__ = [
    "DEFAULT_CHUNK_DURATION_MS",
    "DEFAULT_MOVIE_TIMESCALE",
    "ChunkPlacement",
    "ProgressiveMp4Writer",
    "write_progressive",
]

#: Samples of one track are grouped into chunks of about this many milliseconds and chunks
#: of all tracks interleaved by time, so a player reading front to back needs little
#: read-ahead (ffmpeg interleaves by ~1 s; half a second suits slow connections better).
DEFAULT_CHUNK_DURATION_MS = 500
#: ``mvhd`` timescale: milliseconds, exact for timestamps that come from FLV.
DEFAULT_MOVIE_TIMESCALE = 1000

_U32_MAX = 0xFFFFFFFF
#: Largest offset or box size a 32-bit field holds; past it ``co64`` and a 64-bit ``mdat``
#: size are used (a separate name so tests can lower it).
_OFFSET_LIMIT_32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkPlacement:
    """A run of ``sample_count`` consecutive samples of one track stored together at
    ``offset`` (bytes from the start of the file), ``size`` bytes in all."""

    track_id: int
    first_sample: int
    sample_count: int
    offset: int
    size: int


@dataclass(slots=True)
class _Track:
    config: TrackConfig
    dts: array[int] = field(default_factory=lambda: array("q"))
    cts: array[int] = field(default_factory=lambda: array("q"))
    duration: array[int] = field(default_factory=lambda: array("q"))
    size: array[int] = field(default_factory=lambda: array("q"))
    keyframe: bytearray = field(default_factory=bytearray)
    # chunks as (first sample, sample count); filled by the layout
    chunks: list[tuple[int, int]] = field(default_factory=list)
    chunk_offsets: list[int] = field(default_factory=list)
    # computed once by the layout
    edits: tuple[EditListEntry, ...] = ()
    track_duration: int = 0  # movie timescale
    tables: bytes = b""  # stts .. stsz, everything in stbl but the chunk offsets


@dataclass(frozen=True, slots=True)
class _Layout:
    header: bytes
    chunks: tuple[ChunkPlacement, ...]


class ProgressiveMp4Writer:
    """Collects sample timing per track, then lays out one faststart MP4.

    ``tracks`` are written in the given order; a track that got no samples is left out.
    ``movie_timescale`` is the ``mvhd`` timescale (units per second);
    ``chunk_duration_ms`` bounds how much of one track is stored contiguously.
    """

    def __init__(
        self,
        tracks: Sequence[TrackConfig],
        *,
        movie_timescale: int = DEFAULT_MOVIE_TIMESCALE,
        chunk_duration_ms: int = DEFAULT_CHUNK_DURATION_MS,
    ) -> None:
        if not tracks:
            raise LocalProtocolError("an MP4 needs at least one track")
        if not 1 <= movie_timescale <= _U32_MAX:
            raise LocalProtocolError(f"movie_timescale {movie_timescale} outside 1..2**32-1")
        if chunk_duration_ms < 1:
            raise LocalProtocolError(f"chunk_duration_ms {chunk_duration_ms} must be >= 1")
        self._tracks: dict[int, _Track] = {}
        for config in tracks:
            if config.track_id in self._tracks:
                raise LocalProtocolError(f"duplicate track id {config.track_id}")
            self._tracks[config.track_id] = _Track(config)
        self._movie_timescale = movie_timescale
        self._chunk_duration_ms = chunk_duration_ms
        self._layout: _Layout | None = None

    def add_sample(self, track_id: int, sample: SampleTiming) -> None:
        """Append a sample (decode order) to a track. Only timing and size are kept.

        Each sample's ``dts`` must equal the previous one's ``dts + duration``: MP4 stores
        durations only, so a gap would silently shift every later sample.
        """
        if self._layout is not None:
            raise LocalProtocolError("add_sample after header_bytes(): the layout is fixed")
        track = self._tracks.get(track_id)
        if track is None:
            raise LocalProtocolError(f"no track {track_id}")
        if track.dts and track.dts[-1] + track.duration[-1] != sample.dts:
            raise LocalProtocolError(
                f"track {track_id}: sample at dts {track.dts[-1]} with duration "
                f"{track.duration[-1]} is followed by dts {sample.dts}; durations must "
                "fill the gaps"
            )
        if not 0 <= sample.duration <= _U32_MAX or not 0 <= sample.size <= _U32_MAX:
            raise LocalProtocolError(
                f"track {track_id}: duration {sample.duration} or size {sample.size} "
                "does not fit 32 bits"
            )
        if not -(2**31) <= sample.cts_offset < 2**31:
            raise LocalProtocolError(f"track {track_id}: cts_offset {sample.cts_offset}")
        track.dts.append(sample.dts)
        track.cts.append(sample.cts_offset)
        track.duration.append(sample.duration)
        track.size.append(sample.size)
        track.keyframe.append(1 if sample.keyframe else 0)

    def header_bytes(self) -> bytes:
        """``ftyp`` + ``moov`` + the ``mdat`` header; the sample data follows directly, in
        :meth:`sample_order`. Fixes the layout: no samples can be added afterwards."""
        return self._get_layout().header

    def chunks(self) -> list[ChunkPlacement]:
        """The ``mdat`` contents in file order, as runs of consecutive samples."""
        return list(self._get_layout().chunks)

    def sample_order(self) -> Iterator[tuple[int, int]]:
        """``(track_id, sample index within that track)`` in the order their data must be
        written after :meth:`header_bytes`."""
        for chunk in self._get_layout().chunks:
            for index in range(chunk.first_sample, chunk.first_sample + chunk.sample_count):
                yield chunk.track_id, index

    @property
    def file_size(self) -> int:
        """Size in bytes of the whole file, header and sample data."""
        layout = self._get_layout()
        if not layout.chunks:
            return len(layout.header)
        last = layout.chunks[-1]
        return last.offset + last.size

    # -- layout ------------------------------------------------------------------------

    def _get_layout(self) -> _Layout:
        if self._layout is None:
            self._layout = self._build_layout()
        return self._layout

    def _build_layout(self) -> _Layout:
        tracks = [t for t in self._tracks.values() if t.dts]
        if not tracks:
            raise LocalProtocolError("no samples were added to any track")
        order = self._chunk_order(tracks)
        self._prepare(tracks)
        data_size = sum(sum(t.size[first : first + n]) for t, first, n in order)
        mdat_header_size = 8 if data_size + 8 <= _OFFSET_LIMIT_32 else 16
        ftyp = self._ftyp(tracks)

        def moov_for(base: int, use_co64: bool) -> bytes:
            offset = base
            for track in tracks:
                track.chunk_offsets = []
            for track, first, n in order:
                track.chunk_offsets.append(offset)
                offset += sum(track.size[first : first + n])
            return self._moov(tracks, use_co64)

        use_co64 = False
        moov_size = len(moov_for(0, use_co64))
        base = len(ftyp) + moov_size + mdat_header_size
        if base + data_size > _OFFSET_LIMIT_32:
            # Some chunk may start past 4 GiB: co64 everywhere (a larger moov only moves
            # the data further, so the choice cannot flip back).
            use_co64 = True
            moov_size = len(moov_for(0, use_co64))
            base = len(ftyp) + moov_size + mdat_header_size
        moov = moov_for(base, use_co64)
        if len(moov) != moov_size:  # pragma: no cover - sizes depend on counts only
            raise LocalProtocolError("moov size changed between layout passes")
        if mdat_header_size == 8:
            mdat_header = (data_size + 8).to_bytes(4, "big") + b"mdat"
        else:
            mdat_header = b"\x00\x00\x00\x01mdat" + (data_size + 16).to_bytes(8, "big")

        placements = []
        offset = base
        for track, first, n in order:
            size = sum(track.size[first : first + n])
            placements.append(
                ChunkPlacement(
                    track_id=track.config.track_id,
                    first_sample=first,
                    sample_count=n,
                    offset=offset,
                    size=size,
                )
            )
            offset += size
        return _Layout(ftyp + moov + mdat_header, tuple(placements))

    def _chunk_order(self, tracks: list[_Track]) -> list[tuple[_Track, int, int]]:
        keyed: list[tuple[Fraction, int, _Track, int, int]] = []
        for index, track in enumerate(tracks):
            timescale = track.config.timescale
            max_ticks = max(1, self._chunk_duration_ms * timescale // 1000)
            track.chunks = []
            first = 0
            for i in range(1, len(track.dts) + 1):
                if i == len(track.dts) or track.dts[i] - track.dts[first] >= max_ticks:
                    track.chunks.append((first, i - first))
                    keyed.append(
                        (Fraction(track.dts[first], timescale), index, track, first, i - first)
                    )
                    first = i
        keyed.sort(key=lambda item: (item[0], item[1]))
        return [(track, first, n) for _, _, track, first, n in keyed]

    def _ftyp(self, tracks: list[_Track]) -> bytes:
        brands = [b"isom", b"iso2"]
        if any(min(t.cts) < 0 for t in tracks):
            brands.append(b"iso4")  # ctts version 1 (signed offsets)
        if any(t.config.codec in ("avc1", "avc3") for t in tracks):
            brands.append(b"avc1")
        brands.append(b"mp41")
        w = BoxWriter()
        write_ftyp(w, b"isom", 512, brands)
        return w.getvalue()

    # moov
    #   mvhd                    duration = longest track (movie timescale)
    #   trak ...                one per track with samples (see fmp4.write_trak), with
    #     edts/elst             [empty edit] + one media edit, see the module docstring
    #     ... stbl
    #       stsd                sample entry + decoder configuration
    #       stts                run-length decode durations
    #       ctts                run-length composition offsets; only if any is non-zero
    #                           (version 1, signed, only if any is negative)
    #       stss                sync samples (video only)
    #       stsc                samples per chunk, run-length over chunks
    #       stsz                sizes (one constant size if all are equal)
    #       stco | co64         chunk offsets (co64 once an offset passes 4 GiB)
    def _moov(self, tracks: list[_Track], use_co64: bool) -> bytes:
        w = BoxWriter()
        with w.box(b"moov"):
            write_mvhd(
                w,
                timescale=self._movie_timescale,
                duration=max(t.track_duration for t in tracks),
                next_track_id=max(t.config.track_id for t in tracks) + 1,
            )
            for track in tracks:

                def tables(tw: BoxWriter, track: _Track = track) -> None:
                    tw.write(track.tables)
                    with tw.full_box(b"co64" if use_co64 else b"stco", version=0, flags=0):
                        tw.u32(len(track.chunk_offsets))
                        if use_co64:
                            tw.u64_array(track.chunk_offsets)
                        else:
                            tw.u32_array(track.chunk_offsets)

                write_trak(
                    w,
                    track.config,
                    track_duration=track.track_duration,
                    media_duration=sum(track.duration),
                    edits=track.edits,
                    write_sample_tables=tables,
                )
        return w.getvalue()

    def _prepare(self, tracks: list[_Track]) -> None:
        """Edit lists, durations and the offset-independent sample tables, once."""
        movie_ts = self._movie_timescale
        first_pts = {id(t): min(d + c for d, c in zip(t.dts, t.cts, strict=True)) for t in tracks}
        movie_start = min(Fraction(first_pts[id(t)], t.config.timescale) for t in tracks)
        for track in tracks:
            timescale = track.config.timescale
            start = first_pts[id(track)]
            end = max(
                d + c + n for d, c, n in zip(track.dts, track.cts, track.duration, strict=True)
            )
            delay = round((Fraction(start, timescale) - movie_start) * movie_ts)
            segment = round(Fraction(end - start, timescale) * movie_ts)
            edits = []
            if delay > 0:
                edits.append(EditListEntry(segment_duration=delay, media_time=-1))
            edits.append(EditListEntry(segment_duration=segment, media_time=start - track.dts[0]))
            track.edits = tuple(edits)
            track.track_duration = delay + segment
            tw = BoxWriter()
            _write_sample_tables(tw, track)
            track.tables = tw.getvalue()


def _runs(values: array[int]) -> list[tuple[int, int]]:
    """Run-length encode: [(count, value), ...]."""
    return [(sum(1 for _ in group), value) for value, group in groupby(values)]


def _write_sample_tables(w: BoxWriter, track: _Track) -> None:
    with w.full_box(b"stts", version=0, flags=0):
        runs = _runs(track.duration)
        w.u32(len(runs))
        w.u32_array([field for run in runs for field in run])
    if any(track.cts):
        signed = min(track.cts) < 0
        with w.full_box(b"ctts", version=1 if signed else 0, flags=0):
            runs = _runs(track.cts)
            w.u32(len(runs))
            for count, offset in runs:
                w.u32(count)
                if signed:
                    w.i32(offset)
                else:
                    w.u32(offset)
    if track.config.kind == "video":
        with w.full_box(b"stss", version=0, flags=0):
            numbers = [i + 1 for i, key in enumerate(track.keyframe) if key]
            w.u32(len(numbers))
            w.u32_array(numbers)
    with w.full_box(b"stsc", version=0, flags=0):
        entries: list[tuple[int, int]] = []  # (first_chunk, samples_per_chunk)
        for chunk_number, (_, count) in enumerate(track.chunks, start=1):
            if not entries or entries[-1][1] != count:
                entries.append((chunk_number, count))
        w.u32(len(entries))
        for first_chunk, count in entries:
            w.u32(first_chunk)
            w.u32(count)
            w.u32(1)  # sample_description_index
    with w.full_box(b"stsz", version=0, flags=0):
        if track.size[0] and min(track.size) == max(track.size):
            w.u32(track.size[0])
            w.u32(len(track.size))
        else:
            w.u32(0)
            w.u32(len(track.size))
            w.u32_array(track.size)


def write_progressive(
    tracks: Sequence[TrackConfig],
    track_samples: Mapping[int, Sequence[Sample]],
    *,
    movie_timescale: int = DEFAULT_MOVIE_TIMESCALE,
    chunk_duration_ms: int = DEFAULT_CHUNK_DURATION_MS,
) -> bytes:
    """A whole progressive MP4 in memory (small files, tests): ``track_samples`` maps each
    track id to its samples in decode order."""
    writer = ProgressiveMp4Writer(
        tracks, movie_timescale=movie_timescale, chunk_duration_ms=chunk_duration_ms
    )
    for track_id, samples in track_samples.items():
        for sample in samples:
            writer.add_sample(track_id, sample)
    parts = [writer.header_bytes()]
    parts.extend(track_samples[tid][index].data for tid, index in writer.sample_order())
    return b"".join(parts)
