"""fMP4 recorders, and the merge into one progressive MP4 at stream end.

Mixed (``--record fmp4``), in ``mp4/{app}/{stream}/output_merge/``::

    init.mp4            ftyp + moov (video track 1, audio track 2) + mvex
    000001.m4s ...      moof + mdat, both tracks, one per fragment
    stream_full.mp4     at stream end: ftyp + moov + mdat, merged from the above

Separate (``--record fmp4-separate``), in ``mp4/{app}/{stream}/output_separate/``::

    video_init.mp4, audio_init.mp4         one track each
    video_000001.m4s, audio_000001.m4s ... one track each, same fragment numbers

Fragments are cut like HLS segments: before a video keyframe once
``--hls-fragment`` has passed (audio-only: any frame). A sample's duration
is the next sample's decode time minus its own, so a sample waits for its
successor; an audio sample still waiting at a cut goes in the next fragment.
Timescale is 1000 (FLV milliseconds, exact) for video and AAC, 48000
for Opus (the timescale Opus in ISO BMFF asks for; ms times 48 are exact) and
the sample rate for FLAC (as FLAC in ISO BMFF asks). Each fragment
file is written as ``.tmp`` and renamed, so a crash never leaves half a
fragment under its real name.

Sample entries: ``avc1``/``hvc1`` with the published avcC/hvcC, ``av01`` with
av1C, ``vp09`` with vpcC (version 1), ``mp4a``, ``Opus`` with dOps, ``fLaC``
with dfLa. The picture size comes from the configuration (the SPS for H.264
and H.265, the sequence header OBU in av1C for AV1); VP9's vpcC has none, so
a VP9 recording (and an AV1 one without a sequence header in its av1C) writes
its init segment once the first keyframe has given the size (no fragment can
end before that keyframe). AV1 samples lose their temporal delimiters (AV1 in
ISO BMFF section 2.4).

The merge (:func:`merge_fragments`, in the writer thread) reads only
metadata: it demuxes ``init.mp4`` + the fragments as one virtual file
(:class:`ConcatReader`), feeds the samples' timing to
:class:`rtmpd.codec.mp4.progressive.ProgressiveMp4Writer`, writes its header
(``moov`` before ``mdat``), then copies the sample bytes range by range in
the writer's order. It writes ``stream_full.mp4.tmp`` and renames it.

A new publish of a name moves the previous recording's directory aside to
``output_merge-<UTC time>`` (``output_separate-...``) rather than mixing two
recordings in one directory.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
from array import array
from collections.abc import Mapping
from typing import Any, BinaryIO

from twisted.internet import defer

from rtmpd.codec import aac, av1, avc, flac, flv, hevc, opus, vp9
from rtmpd.codec.errors import ProtocolError
from rtmpd.codec.mp4 import Codec, Sample, TrackConfig
from rtmpd.codec.mp4.demux import Mp4Demuxer
from rtmpd.codec.mp4.fmp4 import fragment, init_segment
from rtmpd.codec.mp4.progressive import ProgressiveMp4Writer
from rtmpd.media import Frame, FrameKind
from rtmpd.services.confine import create_new, open_existing
from rtmpd.services.recorder import (
    DiskFiles,
    Recorder,
    Recording,
    codec_data,
    move_aside,
    remove_marker,
    write_atomically,
    write_marker,
)

VIDEO_TRACK = 1
AUDIO_TRACK = 2
TIMESCALE = 1000
MERGED_NAME = "stream_full.mp4"
INIT_NAME = "init.mp4"

#: Bytes copied per read when merging (contiguous sample ranges are joined).
COPY_BLOCK = 1024 * 1024

_MIXED_FRAGMENT = re.compile(r"(\d{1,12})\.m4s")


def fragment_name(track: str | None, sequence: int) -> str:
    """``000001.m4s`` (mixed) or ``video_000001.m4s`` / ``audio_...`` (separate)."""
    return f"{sequence:06d}.m4s" if track is None else f"{track}_{sequence:06d}.m4s"


class FragmentBuilder:
    """Groups samples into fragments; pure (no I/O).

    Samples come in with times in ms (the rebased FLV timestamps) and go out
    in each track's timescale (``timescales``, ticks per second; 1000 unless
    given: 48000 for Opus). A sample's duration is the next one's decode time
    minus its own, so each track's last sample waits for its successor.

    Where fragments end is the builder's own rule (before a video keyframe
    once ``fragment_ms`` has passed; audio-only: any sample), unless the
    caller decides: ``push(..., cut=True/False)`` (HLS cuts with its
    :class:`rtmpd.codec.hls.SegmentCutter`, so a segment and a fragment are
    one and the same).
    """

    def __init__(
        self,
        *,
        has_video: bool,
        fragment_ms: int,
        timescales: Mapping[int, int] | None = None,
    ) -> None:
        self.has_video = has_video
        self.fragment_ms = fragment_ms
        self._timescales = dict(timescales or {})
        self._start_ms: int | None = None
        self._waiting: dict[int, tuple[int, int, bool, bytes]] = {}  # ticks
        self._last_duration: dict[int, int] = {}
        self._done: dict[int, list[Sample]] = {VIDEO_TRACK: [], AUDIO_TRACK: []}

    def push(
        self,
        track_id: int,
        dts: int,
        cts_offset: int,
        keyframe: bool,
        data: bytes,
        *,
        cut: bool | None = None,
    ) -> dict[int, list[Sample]] | None:
        """Add one sample (``dts`` and ``cts_offset`` in ms); returns the
        finished fragment's samples per track when this sample starts a new
        fragment. ``cut`` True or False overrides the builder's own rule."""
        scale = self._timescales.get(track_id, TIMESCALE)  # ticks per second
        base_ticks = dts * scale // 1000
        dts_ticks = base_ticks
        previous = self._waiting.get(track_id)
        if previous is not None:
            p_dts, p_cts, p_key, p_data = previous
            duration = dts_ticks - p_dts
            if duration < 0:
                duration = 0
                dts_ticks = p_dts
            self._last_duration[track_id] = duration
            self._done[track_id].append(
                Sample(dts=p_dts, cts_offset=p_cts, duration=duration, keyframe=p_key, data=p_data)
            )
        out = None
        start = self._start_ms
        if start is None:
            self._start_ms = dts
        elif cut if cut is not None else self._cuts_before(track_id, dts - start, keyframe):
            out = self._take()
            self._start_ms = dts
        cts_ticks = (dts + cts_offset) * scale // 1000 - base_ticks
        self._waiting[track_id] = (dts_ticks, cts_ticks, keyframe, data)
        return out

    def _cuts_before(self, track_id: int, elapsed_ms: int, keyframe: bool) -> bool:
        if elapsed_ms < self.fragment_ms:
            return False
        return (track_id == VIDEO_TRACK and keyframe) if self.has_video else True

    def _take(self) -> dict[int, list[Sample]] | None:
        done = {tid: samples for tid, samples in self._done.items() if samples}
        self._done = {VIDEO_TRACK: [], AUDIO_TRACK: []}
        return done or None

    def finish(self) -> dict[int, list[Sample]] | None:
        """The last fragment: waiting samples last as long as the one before.

        The builder can go on afterwards (HLS after a discontinuity): the
        next sample opens a new fragment.
        """
        for track_id, (dts, cts, key, data) in self._waiting.items():
            duration = self._last_duration.get(track_id, 0)
            self._done[track_id].append(
                Sample(dts=dts, cts_offset=cts, duration=duration, keyframe=key, data=data)
            )
        self._waiting.clear()
        self._start_ms = None
        return self._take()


class ConcatReader:
    """``read_at(offset, size)`` over several files as if they were one."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.starts: list[int] = []
        total = 0
        for path in paths:
            self.starts.append(total)
            total += os.stat(path, follow_symlinks=False).st_size
        self.size = total
        self._files: dict[int, BinaryIO] = {}

    def read_at(self, offset: int, size: int) -> bytes:
        parts = []
        while size > 0 and offset < self.size:
            index = bisect.bisect_right(self.starts, offset) - 1
            f = self._files.get(index)
            if f is None:
                f = self._files[index] = open_existing(self.paths[index])
            f.seek(offset - self.starts[index])
            end = self.starts[index + 1] if index + 1 < len(self.starts) else self.size
            data = f.read(min(size, end - offset))
            if not data:
                break
            parts.append(data)
            offset += len(data)
            size -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def mixed_fragments(directory: str) -> list[str]:
    """The mixed recording's fragment files in order."""
    numbered = []
    for name in os.listdir(directory):
        match = _MIXED_FRAGMENT.fullmatch(name)
        if match:
            numbered.append((int(match.group(1)), name))
    return [os.path.join(directory, name) for _, name in sorted(numbered)]


def merge_fragments(directory: str) -> str:
    """Write ``stream_full.mp4`` from ``init.mp4`` and the ``.m4s`` fragments
    in ``directory``; returns a summary. Reads only metadata into memory."""
    fragments = mixed_fragments(directory)
    paths = [os.path.join(directory, INIT_NAME), *fragments]
    while True:
        reader = ConcatReader(paths)
        try:
            demuxer = Mp4Demuxer(reader.read_at, reader.size)
            break
        except ProtocolError:
            reader.close()
            if len(paths) <= 1:
                raise
            paths.pop()  # a damaged last fragment: merge what came before
    try:
        tracks = [t.track_config() for t in demuxer.tracks]
        writer = ProgressiveMp4Writer(tracks)
        offsets: dict[int, array[int]] = {t.track_id: array("q") for t in tracks}
        sizes: dict[int, array[int]] = {t.track_id: array("q") for t in tracks}
        count = 0
        for sample in demuxer.samples():
            writer.add_sample(sample.track_id, sample)
            offsets[sample.track_id].append(sample.offset)
            sizes[sample.track_id].append(sample.size)
            count += 1
        if not count:
            return "no samples to merge"
        target = os.path.join(directory, MERGED_NAME)
        tmp = target + ".tmp"
        with create_new(tmp) as out:
            out.write(writer.header_bytes())
            run_start = run_end = -1
            for track_id, index in writer.sample_order():
                offset = offsets[track_id][index]
                size = sizes[track_id][index]
                if offset == run_end and run_end - run_start + size <= COPY_BLOCK:
                    run_end += size
                    continue
                if run_end > run_start:
                    out.write(reader.read_at(run_start, run_end - run_start))
                run_start, run_end = offset, offset + size
            if run_end > run_start:
                out.write(reader.read_at(run_start, run_end - run_start))
        os.replace(tmp, target)
    finally:
        reader.close()
    return f"{MERGED_NAME}: {count} samples from {len(paths) - 1} fragments"


def _delete_tmp_files(directory: str) -> None:
    for name in os.listdir(directory):
        if name.endswith(".tmp"):
            os.unlink(os.path.join(directory, name))


def finish_directory(directory: str, *, merge: bool) -> str:
    """Finalise a recording directory (also crash recovery): drop ``.tmp``
    leftovers, merge if mixed, remove the marker."""
    _delete_tmp_files(directory)
    summary = merge_fragments(directory) if merge else "fragments complete"
    remove_marker(directory)
    return summary


class Fmp4Files(DiskFiles):
    """The disk half: init segment(s) and fragment files. Writer thread only."""

    def __init__(self, directory: str, *, separate: bool) -> None:
        super().__init__(directory)
        self.separate = separate

    def open(self, inits: dict[str, bytes]) -> None:
        if os.path.isdir(self.directory) and os.listdir(self.directory):
            move_aside(self.directory, os.path.basename(self.directory), "")
        os.makedirs(self.directory, exist_ok=True)
        write_marker(self.directory, "fmp4-separate" if self.separate else "fmp4")
        for name, data in inits.items():
            write_atomically(os.path.join(self.directory, name), data)

    def write(self, files: list[tuple[str, bytes]]) -> None:
        for name, data in files:
            write_atomically(os.path.join(self.directory, name), data)

    def finish(self) -> str:
        return finish_directory(self.directory, merge=not self.separate)

    def salvage(self) -> str:
        return finish_directory(self.directory, merge=not self.separate)


def _video_track(header: Frame) -> TrackConfig:
    record = codec_data(header) or b""
    codec = header.codec
    sample_entry: Codec
    width = height = 0
    if codec in (flv.VIDEO_AVC, flv.FOURCC_AVC1):
        sample_entry = "avc1"
        config = avc.AVCDecoderConfigurationRecord.parse(record)
        if config.sps:
            info = avc.parse_sps(config.sps[0])
            width, height = info.width, info.height
    elif codec in (flv.VIDEO_HEVC, flv.FOURCC_HVC1):
        sample_entry = "hvc1"
        hvcc = hevc.HEVCDecoderConfigurationRecord.parse(record)
        if hvcc.sps:
            size = hevc.parse_sps(hvcc.sps[0])
            width, height = size.width, size.height
    elif codec == flv.FOURCC_AV01:
        sample_entry = "av01"
        sequence = av1.AV1CodecConfigurationRecord.parse(record).sequence_header()
        if sequence is not None:
            width, height = sequence.max_frame_width, sequence.max_frame_height
    else:  # flv.FOURCC_VP09: the size comes with the first keyframe
        sample_entry = "vp09"
        record = vp9.VPCodecConfigurationRecord.parse(record).box_payload()
    return TrackConfig(
        track_id=VIDEO_TRACK, kind="video", codec=sample_entry, timescale=TIMESCALE,
        decoder_config=record, width=width, height=height,
    )


def _audio_track(header: Frame) -> TrackConfig:
    record = codec_data(header) or b""
    if header.codec == flv.FOURCC_OPUS:
        head = opus.OpusHead.parse(record)
        return TrackConfig(
            track_id=AUDIO_TRACK, kind="audio", codec="Opus", timescale=opus.SAMPLE_RATE,
            decoder_config=bytes(head), sample_rate=opus.SAMPLE_RATE,
            channel_count=head.channel_count,
        )
    if header.codec == flv.FOURCC_FLAC:
        info = flac.StreamInfo.parse(record)
        return TrackConfig(
            track_id=AUDIO_TRACK, kind="audio", codec="fLaC", timescale=info.sample_rate,
            decoder_config=info.data, sample_rate=info.sample_rate,
            channel_count=info.channels,
        )
    asc = aac.AudioSpecificConfig.parse(record)
    return TrackConfig(
        track_id=AUDIO_TRACK, kind="audio", codec="mp4a", timescale=TIMESCALE,
        decoder_config=record, sample_rate=asc.sample_rate,
        channel_count=asc.channel_configuration or 2,
    )


def track_configs(
    video_header: Frame | None, audio_header: Frame | None
) -> dict[int, TrackConfig]:
    """The MP4 tracks for a stream's sequence headers: video as track 1 (timescale 1000;
    ``avc1``, ``hvc1``, ``av01`` or ``vp09``), audio as track 2 (AAC at 1000, Opus at
    48000, FLAC at its sample rate). Raises ProtocolError for a header that does not
    parse."""
    tracks: dict[int, TrackConfig] = {}
    if video_header is not None:
        tracks[VIDEO_TRACK] = _video_track(video_header)
    if audio_header is not None:
        tracks[AUDIO_TRACK] = _audio_track(audio_header)
    return tracks


def size_waits_for_keyframe(tracks: Mapping[int, TrackConfig]) -> bool:
    """Whether the video track's size is unknown until a keyframe comes (VP9, or AV1
    without a sequence header in its av1C)."""
    video = tracks.get(VIDEO_TRACK)
    return video is not None and video.codec in ("vp09", "av01") and not video.width


def with_keyframe_size(tracks: dict[int, TrackConfig], keyframe: bytes) -> dict[int, TrackConfig]:
    """``tracks`` with the video size read from its first keyframe's bytes (unchanged if
    that frame does not say)."""
    video = tracks[VIDEO_TRACK]
    try:
        if video.codec == "vp09":
            size = vp9.keyframe_size(keyframe)
        else:
            size = av1.size_of_temporal_unit(keyframe)
        if size is None:
            return tracks
        sized = dataclasses.replace(video, width=size[0], height=size[1])
    except ProtocolError:
        return tracks  # a size out of range or a header that ends early: leave it 0
    return {**tracks, VIDEO_TRACK: sized}


def sample_bytes(track: TrackConfig, data: bytes) -> bytes:
    """A frame's codec data as an MP4 sample: AV1 temporal units without their temporal
    delimiters; other codecs as they came (a unit that does not parse is kept as is)."""
    if track.codec != "av01":
        return data
    try:
        return av1.sample_data(data)
    except ProtocolError:
        return data


class Fmp4Recording(Recording):
    """The reactor half of ``--record fmp4``: mixed fragments, merged at the end."""

    fmt = "fmp4"
    separate = False

    def open(self) -> None:
        try:
            tracks = track_configs(self.video_header, self.audio_header)
        except ProtocolError as e:
            self.fail(f"bad sequence header: {e}")
            return
        self.tracks = tracks
        self.builder = FragmentBuilder(
            has_video=VIDEO_TRACK in tracks,
            fragment_ms=self.settings.fragment_ms,
            timescales={t: c.timescale for t, c in tracks.items()},
        )
        self.sequence = 0
        self.disk = self.files = Fmp4Files(self.directory, separate=self.separate)
        # VP9 (and AV1 without a sequence header in av1C): the sample entry's size
        # comes from the first keyframe, which comes before any fragment can end.
        self.init_waits = size_waits_for_keyframe(tracks)
        if not self.init_waits:
            self._open_files()

    def _open_files(self) -> None:
        self.init_waits = False
        tracks = self.tracks
        try:
            if self.separate:
                names = {VIDEO_TRACK: "video", AUDIO_TRACK: "audio"}
                inits = {f"{names[t]}_init.mp4": init_segment([c]) for t, c in tracks.items()}
            else:
                inits = {INIT_NAME: init_segment(list(tracks.values()))}
        except ProtocolError as e:
            self.fail(f"bad sequence header: {e}")
            return
        files = self.files
        self.submit(lambda: files.open(inits))

    def write_media(self, frame: Frame, ts_ms: int) -> None:
        track = VIDEO_TRACK if frame.kind is FrameKind.VIDEO else AUDIO_TRACK
        data = codec_data(frame)
        if track not in self.tracks or data is None:
            return
        if self.init_waits and track == VIDEO_TRACK:
            self.tracks = with_keyframe_size(self.tracks, data)
            self._open_files()
        done = self.builder.push(
            track,
            ts_ms,
            frame.composition_ms,
            frame.keyframe or track == AUDIO_TRACK,
            sample_bytes(self.tracks[track], data),
        )
        self.frames_written += 1
        if done is not None:
            self._write_fragment(done)

    def _write_fragment(self, samples: dict[int, list[Sample]]) -> None:
        self.sequence += 1
        seq = self.sequence
        try:
            if self.separate:
                names = {VIDEO_TRACK: "video", AUDIO_TRACK: "audio"}
                files = [
                    (fragment_name(names[tid], seq), fragment(seq, {tid: ss}))
                    for tid, ss in samples.items()
                ]
            else:
                files = [(fragment_name(None, seq), fragment(seq, samples))]
        except ProtocolError as e:
            self.fail(f"cannot build fragment {seq}: {e}")
            return
        size = sum(len(data) for _, data in files)
        fmp4 = self.files
        self.submit(lambda: fmp4.write(files), size=size, quiet=True)

    def close(self) -> defer.Deferred[Any] | None:
        if self.init_waits:
            self._open_files()  # no keyframe came: the size stays 0
        last = self.builder.finish()
        if last is not None:
            self._write_fragment(last)
        return self.submit(self.files.finish)


class Fmp4SeparateRecording(Fmp4Recording):
    """``--record fmp4-separate``: one track per init segment and fragment."""

    fmt = "fmp4-separate"
    separate = True


class Fmp4Recorder(Recorder):
    """``--record fmp4``."""

    recording_class = Fmp4Recording


class Fmp4SeparateRecorder(Recorder):
    """``--record fmp4-separate``."""

    recording_class = Fmp4SeparateRecording
