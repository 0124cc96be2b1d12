"""HLS recorder: ``hls/{app}/{stream}/index.m3u8`` and ``{n}.ts`` segments.

Reactor half: frames go through :class:`rtmpd.codec.mpegts.TsMuxer`; the
:class:`rtmpd.codec.hls.SegmentCutter` says where a segment ends (at a video
keyframe once ``--hls-fragment`` has passed; at once, with a discontinuity,
on a timestamp jump). A finished segment's bytes go to the writer in one job.

A stream whose codecs TS cannot carry (:func:`rtmpd.codec.mpegts.carries`:
H.265, AV1, VP9, Opus, FLAC, and the Enhanced RTMP forms of H.264 and AAC; Apple's
HLS authoring specification wants HEVC in fMP4 too) is written as fMP4 HLS
instead: ``init.mp4`` (named by ``#EXT-X-MAP``, playlist version 7) and
``{n}.m4s`` segments, each one ``moof`` + ``mdat`` from the fMP4 recorder's
:class:`~rtmpd.services.fmp4rec.FragmentBuilder`, cut by the same
SegmentCutter. Window, deletion, republish and crash repair are the same.

Disk half (:class:`HlsFiles`): writes the segment file (as ``{n}.ts.tmp``,
renamed when whole, so no half segment is ever served), then lists it in the
playlist (so a listed segment is always complete), replaces ``index.m3u8``
atomically (write ``index.m3u8.tmp``, rename), and deletes segments that
left the window. RFC 8216 section 6.2.2 wants a segment that left the
playlist to stay available for a while (its duration plus the playlist's),
so files are deleted once ``window + 1`` further segments have left
(at most ``2 * window + 1`` segments on disk). At the end of the stream the
playlist gets ``#EXT-X-ENDLIST`` and the segments no longer listed are deleted.

Republish of the same name: if the old playlist is there, the new
recording continues it: the media sequence goes on from the old one (no
segment name is reused, so a player with the old playlist never gets the
wrong file), the first new segment has ``#EXT-X-DISCONTINUITY``, and the
old ENDLIST is dropped. An fMP4 recording that continues a playlist writes
its init segment as ``init-{n}.mp4`` (``n``: its first segment), so older
listed segments keep theirs. If the segment format changes (TS to fMP4 or
back) the playlist starts afresh, its media sequence still going on. Segment
and init files the playlist does not name (left by a crash) are deleted when
a recording opens; an init segment goes once no kept segment uses it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import deque
from typing import Any

from twisted.internet import defer

from rtmpd.codec import aac, avc, hls, mpegts
from rtmpd.codec.errors import ProtocolError
from rtmpd.codec.mp4 import Sample
from rtmpd.codec.mp4.fmp4 import fragment, init_segment
from rtmpd.media import Frame, FrameKind
from rtmpd.services.confine import open_existing
from rtmpd.services.fmp4rec import (
    AUDIO_TRACK,
    VIDEO_TRACK,
    FragmentBuilder,
    sample_bytes,
    size_waits_for_keyframe,
    track_configs,
    with_keyframe_size,
)
from rtmpd.services.recorder import (
    DiskFiles,
    Recorder,
    Recording,
    codec_data,
    remove_marker,
    write_atomically,
    write_marker,
)

PLAYLIST_NAME = "index.m3u8"
#: Init segment of an fMP4 HLS recording into a fresh playlist.
INIT_NAME = "init.mp4"

#: AAC frames per audio PES (about 93 ms at 44.1 kHz): a quarter of the TS
#: packets and muxing work for audio, well inside HLS players' buffering.
AUDIO_FRAMES_PER_PES = 4
_SEGMENT_NAME = re.compile(r"(\d{1,18})\.(ts|m4s)")
_INIT_NAME = re.compile(r"init(-\d{1,18})?\.mp4")


def _read_playlist(path: str, window: int) -> hls.MediaPlaylist | None:
    """The playlist at ``path`` reopened for more segments, or None if
    there is none or it is not one of ours."""
    try:
        with open_existing(path) as f:
            # Ours are ASCII, so bytes count as characters.
            text = f.read(hls.MAX_PLAYLIST_CHARS + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # none, or not a file of ours (a symlink in its place)
    # Continuing an ended playlist: drop its ENDLIST before reading it.
    text = "\n".join(line for line in text.splitlines() if line.strip() != "#EXT-X-ENDLIST")
    try:
        return hls.MediaPlaylist.parse(text, window=window)
    except ProtocolError:
        return None


def _delete_unlisted_segments(directory: str, playlist: hls.MediaPlaylist | None) -> None:
    """Delete segment and init files ``playlist`` does not name, and ``.tmp`` leftovers."""
    listed: set[str] = set()
    if playlist is not None:
        for segment in playlist.segments:
            listed.add(segment.uri)
            if segment.map_uri is not None:
                listed.add(segment.map_uri)
    for name in os.listdir(directory):
        ours = _SEGMENT_NAME.fullmatch(name) or _INIT_NAME.fullmatch(name)
        if (ours and name not in listed) or name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))


def _suffix(uri: str) -> str:
    return os.path.splitext(uri)[1]


def close_playlist(directory: str) -> str:
    """Recovery: add ``#EXT-X-ENDLIST`` to an unfinished playlist, delete
    unlisted segments, remove the marker. Returns what was done."""
    path = os.path.join(directory, PLAYLIST_NAME)
    playlist = _read_playlist(path, window=1 << 30)
    _delete_unlisted_segments(directory, playlist)
    if playlist is None:
        remove_marker(directory)
        return "no playlist to close"
    playlist.end()
    write_atomically(path, playlist.render().encode())
    remove_marker(directory)
    return f"playlist closed with {len(playlist.segments)} segments"


class HlsFiles(DiskFiles):
    """The disk half: segment files and the playlist. Writer thread only.

    ``suffix`` is ``.ts`` or ``.m4s``; for fMP4 :meth:`open` gets the init
    segment's bytes and writes them under :attr:`map_uri`.
    """

    def __init__(
        self, directory: str, *, target_duration_s: int, window: int, suffix: str = ".ts"
    ) -> None:
        super().__init__(directory)
        self.window = window
        self.target_duration_s = target_duration_s
        self.suffix = suffix
        self.playlist = hls.MediaPlaylist(target_duration_s, window)
        self.playlist_path = os.path.join(directory, PLAYLIST_NAME)
        self.resumed = False
        self.map_uri: str | None = None
        self._leaving: deque[hls.Segment] = deque()

    def open(self, init: bytes | None = None) -> None:
        os.makedirs(self.directory, exist_ok=True)
        write_marker(self.directory, "hls")
        old = _read_playlist(self.playlist_path, self.window)
        if old is not None and old.segments and _suffix(old.segments[-1].uri) != self.suffix:
            # TS and fMP4 segments cannot share a playlist (a map cannot be
            # unset): start afresh, numbering on so no name is reused.
            old = hls.MediaPlaylist(
                self.target_duration_s, self.window, media_sequence=old.next_sequence
            )
        _delete_unlisted_segments(self.directory, old)
        if old is not None and (old.segments or old.media_sequence):
            self.playlist = old
            self.resumed = True
        if init is not None:
            fresh = not any(s.map_uri for s in self.playlist.segments)
            self.map_uri = INIT_NAME if fresh else f"init-{self.playlist.next_sequence}.mp4"
            write_atomically(os.path.join(self.directory, self.map_uri), init)

    def add_segment(self, chunks: list[bytes], duration_ms: int, discontinuity: bool) -> None:
        """Write one finished segment and list it."""
        if self.resumed:
            discontinuity = True
            self.resumed = False
        uri = f"{self.playlist.next_sequence}{self.suffix}"
        # Under a .tmp name until whole: nothing serves a half-written segment.
        write_atomically(os.path.join(self.directory, uri), b"".join(chunks))
        left = self.playlist.add(uri, duration_ms / 1000, discontinuity, map_uri=self.map_uri)
        write_atomically(self.playlist_path, self.playlist.render().encode())
        self._leaving.extend(left)
        self._delete_leaving(keep=self.window + 1)

    def _delete_leaving(self, *, keep: int) -> None:
        gone: set[str] = set()
        while len(self._leaving) > keep:
            segment = self._leaving.popleft()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, segment.uri))
            if segment.map_uri is not None:
                gone.add(segment.map_uri)
        # An init segment goes with the last kept segment that uses it.
        used = {s.map_uri for s in (*self.playlist.segments, *self._leaving)}
        for map_uri in gone - used:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, map_uri))

    def salvage(self) -> str:
        return close_playlist(self.directory)

    def end(self) -> None:
        self.playlist.end()
        write_atomically(self.playlist_path, self.playlist.render().encode())
        # The ended playlist is final: segments that already left it are of
        # no use to anyone now, so they go at once (not at the next publish).
        self._delete_leaving(keep=0)
        remove_marker(self.directory)


class HlsRecording(Recording):
    """The reactor half: mux TS (or fMP4), cut segments, hand each one to the writer."""

    fmt = "hls"

    def open(self) -> None:
        settings = self.settings
        self.cutter = hls.SegmentCutter(has_video=self.has_video, fragment_ms=settings.fragment_ms)
        self._discontinuity = False
        video = self.video_header.codec if self.video_header is not None else None
        audio = self.audio_header.codec if self.audio_header is not None else None
        self.fmp4 = not mpegts.carries(video_codec=video, audio_codec=audio)
        self.disk = self.files = HlsFiles(
            self.directory,
            target_duration_s=max(1, (settings.fragment_ms + 999) // 1000),
            window=settings.window,
            suffix=".m4s" if self.fmp4 else ".ts",
        )
        if self.fmp4:
            self._open_fmp4()
            return
        self.muxer = mpegts.TsMuxer(
            has_audio=self.has_audio,
            has_video=self.has_video,
            audio_frames_per_pes=AUDIO_FRAMES_PER_PES,
        )
        self._avc: avc.AVCDecoderConfigurationRecord | None = None
        self._asc: aac.AudioSpecificConfig | None = None
        self._parse_headers()
        self._segment: list[bytes] = [self.muxer.start_segment()]
        self._segment_size = 0
        self.submit(self.files.open)

    def _open_fmp4(self) -> None:
        try:
            tracks = track_configs(self.video_header, self.audio_header)
        except ProtocolError as e:
            self.fail(f"bad sequence header: {e}")
            return
        self.tracks = tracks
        self._fragments = 0
        self.builder = FragmentBuilder(
            has_video=VIDEO_TRACK in tracks,
            fragment_ms=self.settings.fragment_ms,
            timescales={t: c.timescale for t, c in tracks.items()},
        )
        # As in the fMP4 recorder: a VP9 init segment waits for the first keyframe's size.
        self.init_waits = size_waits_for_keyframe(tracks)
        if not self.init_waits:
            self._open_fmp4_files()

    def _open_fmp4_files(self) -> None:
        self.init_waits = False
        try:
            init = init_segment(list(self.tracks.values()))
        except ProtocolError as e:
            self.fail(f"bad sequence header: {e}")
            return
        files = self.files
        self.submit(lambda: files.open(init))

    def _parse_headers(self) -> None:
        try:
            if self.video_header is not None:
                self._avc = avc.AVCDecoderConfigurationRecord.parse(self.video_header.payload[5:])
            if self.audio_header is not None:
                self._asc = aac.AudioSpecificConfig.parse(self.audio_header.payload[2:])
        except ProtocolError as e:
            self.fail(f"bad sequence header: {e}")

    def write_header(self, frame: Frame) -> None:
        # fMP4: the init segment keeps the first headers, as in the fMP4 recorder.
        if not self.fmp4:
            self._parse_headers()

    def write_media(self, frame: Frame, ts_ms: int) -> None:
        if self.fmp4:
            self._write_fmp4(frame, ts_ms)
            return
        is_video = frame.kind is FrameKind.VIDEO
        cut = self.cutter.push(dts_ms=ts_ms, keyframe=frame.keyframe, is_video=is_video)
        if cut is not None:
            self._close_segment(cut.duration_ms)
            self._discontinuity = cut.discontinuity
        try:
            if is_video:
                if self._avc is None:
                    return
                data = self.muxer.write_video(
                    dts_ms=ts_ms,
                    cts_ms=frame.composition_ms,
                    keyframe=frame.keyframe,
                    avcc_payload=frame.payload[5:],
                    config=self._avc,
                )
            else:
                if self._asc is None:
                    return
                data = self.muxer.write_audio(
                    dts_ms=ts_ms, aac_raw=frame.payload[2:], asc=self._asc
                )
        except ProtocolError:
            return  # one bad frame from the publisher: skip it, keep recording
        if data:
            self._segment.append(data)
            self._segment_size += len(data)
        self.frames_written += 1

    def _write_fmp4(self, frame: Frame, ts_ms: int) -> None:
        is_video = frame.kind is FrameKind.VIDEO
        track = VIDEO_TRACK if is_video else AUDIO_TRACK
        data = codec_data(frame)
        if track not in self.tracks or data is None:
            return
        if self.init_waits and is_video:
            self.tracks = with_keyframe_size(self.tracks, data)
            self._open_fmp4_files()
        data = sample_bytes(self.tracks[track], data)
        cut = self.cutter.push(dts_ms=ts_ms, keyframe=frame.keyframe, is_video=is_video)
        if cut is not None and cut.discontinuity:
            # A new timeline: the open segment ends with its waiting samples
            # (lasting as long as the ones before), and this sample opens the next.
            self._add_fragment(self.builder.finish(), cut.duration_ms)
            self._discontinuity = True
            cut = None
        done = self.builder.push(
            track,
            ts_ms,
            frame.composition_ms,
            frame.keyframe or not is_video,
            data,
            cut=cut is not None,
        )
        if cut is not None:
            self._add_fragment(done, cut.duration_ms)
        self.frames_written += 1

    def _add_fragment(self, samples: dict[int, list[Sample]] | None, duration_ms: int) -> None:
        discontinuity, self._discontinuity = self._discontinuity, False
        if samples is None:
            return
        files = self.files
        # The moof sequence_number only has to grow (the playlist's numbers
        # belong to the writer thread).
        self._fragments += 1
        try:
            data = fragment(self._fragments, samples)
        except ProtocolError as e:
            self.fail(f"cannot build segment: {e}")
            return
        self.submit(
            lambda: files.add_segment([data], duration_ms, discontinuity),
            size=len(data),
            quiet=True,
        )

    def _close_segment(self, duration_ms: int) -> None:
        self._segment.append(self.muxer.flush())
        chunks, size = self._segment, self._segment_size
        discontinuity = self._discontinuity
        self._segment = [self.muxer.start_segment()]
        self._segment_size = 0
        files = self.files
        self.submit(
            lambda: files.add_segment(chunks, duration_ms, discontinuity), size=size, quiet=True
        )

    def close(self) -> defer.Deferred[Any] | None:
        duration = self.cutter.finish()
        if self.fmp4:
            if self.init_waits:
                self._open_fmp4_files()  # no keyframe came: the size stays 0
            if duration is not None:
                self._add_fragment(self.builder.finish(), duration)
        elif duration is not None:
            self._close_segment(duration)
        return self.submit(self.files.end)


class HlsRecorder(Recorder):
    """``--record hls``."""

    recording_class = HlsRecording
