"""What every recorder shares: the service, the per-stream recording, the
marker file (``ARCHITECTURE.md`` section 6).

A recorder (:class:`Recorder`) is an ``IService`` and a registry observer.
When a stream is published it attaches a :class:`Recording` as a sink; when
the stream ends (or the service stops) the recording is finalised.

A recording has two halves:

* the reactor half (a :class:`Recording` subclass): takes frames, turns them
  into bytes with the pure codecs, batches them, and submits jobs;
* the disk half (a :class:`DiskFiles` subclass): plain blocking file code,
  whose methods only ever run as jobs on the :mod:`~rtmpd.services.writer`
  thread, in submission order.

Start of a recording: frames wait (a bounded while) until the tracks are
known, i.e. the sequence headers of every track the publisher announced have
come, so each output starts with all its tracks. Timestamps are then rebased
so that the earliest media frame is at 0, keeping the published offset
between audio and video.

Failure: if a job fails (disk full, permission) or the writer's queue is
full, the recording is marked failed with one log line and takes no more
frames; the stream and its viewers go on. Once the jobs it had queued have
run, what reached the disk is finalised at once (playlist closed, FLV
metadata patched, ``stream_full.mp4`` merged), logged once; if the disk
refuses even that, its marker file stays, the log says so once, and the
next start finalises it.

Confinement: before each job the recording's directory is resolved and
must lie under ``--root`` (:mod:`rtmpd.services.confine`); a symlink that
leads out of it fails the recording with one log line, before anything is
made, written or renamed there.

Marker: while a recording is open its directory holds ``.recording`` (JSON:
format, pid, start time), kept open and ``flock``-ed by the recording
process; finalising removes it. A marker left behind means
the process died first: :mod:`rtmpd.services.recovery` finalises those.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, ClassVar, TypeVar

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd.codec import amf0, flv
from rtmpd.codec.errors import ProtocolError
from rtmpd.interfaces import IMediaSink, IStreamObserver
from rtmpd.media import Frame, FrameKind
from rtmpd.registry import Stream, StreamRegistry
from rtmpd.services.confine import confined, create_new
from rtmpd.services.writer import DiskWriter, WriterFull

log = Logger()

T = TypeVar("T")

#: Name of the marker file kept in a recording's directory while it is open.
MARKER_NAME = ".recording"

#: How long (media time, ms) frames may wait for the announced tracks'
#: sequence headers before the recording starts with what it has.
GATE_MAX_MS = 2000
#: ... and how many frames, whatever their timestamps say.
GATE_MAX_FRAMES = 1000

#: The record formats, as ``--record`` names them.
FORMATS = ("hls", "flv", "fmp4", "fmp4-separate")

#: Codecs the codec-only recorders (HLS, fMP4) take. Video: H.264 and H.265 (legacy
#: CodecID 7 and 12, or Enhanced RTMP ``avc1`` / ``hvc1``), AV1 (``av01``) and VP9
#: (``vp09``). Audio: AAC (legacy or ``mp4a``), Opus (``Opus``) and FLAC (``fLaC``).
#: MPEG-TS carries only legacy H.264 and AAC (:func:`rtmpd.codec.mpegts.carries`): HLS
#: writes any other stream as fMP4 segments.
RECORDED_VIDEO_CODECS = frozenset(
    {flv.VIDEO_AVC, flv.VIDEO_HEVC, flv.FOURCC_AVC1, flv.FOURCC_HVC1, flv.FOURCC_AV01,
     flv.FOURCC_VP09}
)
RECORDED_AUDIO_CODECS = frozenset(
    {flv.AUDIO_AAC, flv.FOURCC_MP4A, flv.FOURCC_OPUS, flv.FOURCC_FLAC}
)


def _parse_codec_data(frame: Frame) -> bytes | None:
    """The codec bytes of a recorded codec's tag after its FLV headers.

    For a sequence header: the decoder configuration record (avcC, hvcC, av1C
    or vpcC payload), AudioSpecificConfig, OpusHead or FLAC STREAMINFO. For
    media: AVCC/HVCC NAL units, an AV1 temporal unit, a VP9 frame, one raw
    AAC frame, one Opus packet or one FLAC frame. None for a tag that carries
    no coded media (end of sequence, Metadata, an MPEG-2 TS SequenceStart, a
    MultichannelConfig), carries nothing (ffmpeg ends a FLAC stream with an
    empty CodedFrames tag; an empty sample would be a decode error) or is
    malformed. A Multitrack tag counts by its default track (trackId 0); a tag
    of another track only is None too: a recording has one track of each kind.
    """
    if frame.kind is FrameKind.VIDEO:
        try:
            video = flv.video_packet(frame.payload)
        except ProtocolError:
            return None
        if video.track_id != 0:
            return None
        if frame.sequence_header:
            return video.data if video.sequence_start else None
        return video.data if video.coded_frames and video.data else None
    try:
        packet = flv.audio_packet(frame.payload)
    except ProtocolError:
        return None
    if packet.track_id != 0:
        return None
    if frame.sequence_header:
        return packet.data  # an empty Opus SequenceStart means the default head
    return packet.data if packet.coded_frames and packet.data else None


#: The last frame :func:`codec_data` parsed and its answer. Every recorder of
#: a stream asks for the same frame in turn (an fMP4 recorder twice), so one
#: entry saves all but the first FLV header parse; frames are immutable, and
#: recorders run on the reactor thread only.
_last_parsed: tuple[Frame | None, bytes | None] = (None, None)


def codec_data(frame: Frame) -> bytes | None:
    """:func:`_parse_codec_data` of ``frame``, parsed once for all recorders."""
    global _last_parsed
    last, data = _last_parsed
    if last is not frame:
        data = _parse_codec_data(frame)
        _last_parsed = (frame, data)
    return data


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderSettings:
    """Where and how to record: ``root`` directory, HLS segment target
    ``fragment_ms`` (also the fMP4 fragment length), HLS ``window`` in
    segments."""

    root: str
    fragment_ms: int = 2000
    window: int = 6


def recording_dir(root: str, fmt: str, app: str, name: str) -> str:
    """The directory of ``fmt``'s recording of ``app/name`` under ``root``.

    ``app`` and ``name`` were validated by the registry
    (``[A-Za-z0-9_-]{1,128}``), so they are safe path parts.
    """
    if fmt == "hls":
        return os.path.join(root, "hls", app, name)
    if fmt == "flv":
        return os.path.join(root, "flv", app, name)
    if fmt == "fmp4":
        return os.path.join(root, "mp4", app, name, "output_merge")
    if fmp4_separate(fmt):
        return os.path.join(root, "mp4", app, name, "output_separate")
    raise ValueError(f"unknown record format {fmt!r}")


def fmp4_separate(fmt: str) -> bool:
    return fmt == "fmp4-separate"


def utc_stamp(seconds: float | None = None) -> str:
    """``20260128T101502Z``: a UTC time for file names."""
    when = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return when.strftime("%Y%m%dT%H%M%SZ")


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half."""
    tmp = path + ".tmp"
    with create_new(tmp) as f:
        f.write(data)
    os.replace(tmp, path)


#: The marker files this process holds open (and locked), by directory.
#: Only the writer thread touches it (recovery runs there too).
_held_markers: dict[str, BinaryIO] = {}


def write_marker(directory: str, fmt: str) -> None:
    """Mark ``directory`` as holding an open ``fmt`` recording of this process.

    The marker stays open with an exclusive ``flock`` until
    :func:`remove_marker` (or the process's end, however it ends), so
    recovery tells a live recording from a dead one by the lock, not by a
    PID that may since belong to another process. The lock is taken before
    the marker gets its name, so no one sees it unlocked while we live.
    """
    body = {"format": fmt, "pid": os.getpid(), "started": utc_stamp()}
    path = os.path.join(directory, MARKER_NAME)
    tmp = path + ".tmp"
    marker = create_new(tmp)
    try:
        fcntl.flock(marker.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        marker.write(json.dumps(body).encode())
        marker.flush()
        os.replace(tmp, path)
    except BaseException:
        marker.close()
        raise
    _release_marker(directory)
    _held_markers[directory] = marker


def _release_marker(directory: str) -> None:
    held = _held_markers.pop(directory, None)
    if held is not None:
        held.close()


def remove_marker(directory: str) -> None:
    """The recording in ``directory`` is finalised (idempotent): the marker
    goes, then its lock."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, MARKER_NAME))
    _release_marker(directory)


def marker_locked(fd: int) -> bool:
    """Try to take the lock of an open marker: False (and the lock is ours
    until ``fd`` closes) if no live process holds it, True if one does."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    return False


def move_aside(path: str, stem: str, suffix: str) -> str | None:
    """Rename an existing ``path`` to ``{stem}-<UTC time of its last change>{suffix}``
    beside it (``-1``, ``-2``... if taken); returns the new path, or None if
    there was nothing to move."""
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    base = os.path.join(os.path.dirname(path), f"{stem}-{utc_stamp(mtime)}")
    target = base + suffix
    n = 0
    while os.path.exists(target):
        n += 1
        target = f"{base}-{n}{suffix}"
    os.rename(path, target)
    return target


def describe_error(failure: Failure) -> str:
    """One line for a failed job."""
    e = failure.value
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return f"{type(e).__name__}: {e}"


class RecordingBroken(Exception):
    """A job for a recording whose disk half already failed; it did nothing."""


class DiskFiles:
    """Base of a recording's disk half. Its methods run only as writer jobs.

    ``directory`` is where the recording lives; ``broken`` is set by the
    first failed job, after which later jobs of the recording do nothing
    (no half-written data after a transient error).
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.broken = False

    def release(self) -> None:
        """The recording failed: let go of what it holds open (its files,
        its marker's lock) and leave the files and the marker as they are,
        so this is the marker of a damaged recording that the next start
        repairs, not of one this process still records."""
        _release_marker(self.directory)

    def salvage(self) -> str | None:
        """After :meth:`release`: finalise what reached the disk, as the next
        start's recovery would, and remove the marker; returns what was done
        (None: nothing to do). Raises OSError when the disk still refuses,
        and then the marker stays for that recovery."""
        return None


def announced_tracks(metadata: Frame | None) -> tuple[bool, bool]:
    """(audio, video) as ``onMetaData`` announces them (codec ids present)."""
    if metadata is None:
        return False, False
    try:
        values = amf0.decode_all(metadata.payload)
    except ProtocolError:
        return False, False
    fields = next((v for v in values if isinstance(v, dict)), None)
    if fields is None:
        return False, False

    def present(key: str) -> bool:
        value = fields.get(key)
        return value is not None and value != 0 and value != ""

    return present("audiocodecid"), present("videocodecid")


def metadata_fields(metadata: Frame | None) -> dict[str, object]:
    """The publisher's ``onMetaData`` fields ({} if none or unreadable)."""
    if metadata is None:
        return {}
    try:
        values = amf0.decode_all(metadata.payload)
    except ProtocolError:
        return {}
    for value in values:
        if isinstance(value, dict):
            return dict(value)
    return {}


class State(enum.Enum):
    WAITING = "waiting for tracks"
    LIVE = "live"
    FINISHING = "finishing"
    FINISHED = "finished"
    FAILED = "failed"


@implementer(IMediaSink)
class Recording:
    """The reactor half of one stream's recording in one format.

    Subclasses set ``fmt`` and ``codec_only`` and implement :meth:`open`,
    :meth:`write_media`, :meth:`write_header` and :meth:`close`.
    ``codec_only`` recorders (HLS, fMP4) keep only the codecs an MP4 track
    can hold (:data:`RECORDED_VIDEO_CODECS`, :data:`RECORDED_AUDIO_CODECS`)
    with their sequence headers, dropping video before the first keyframe;
    the FLV recorder keeps every frame.
    """

    fmt: ClassVar[str] = ""
    codec_only: ClassVar[bool] = True

    def __init__(self, recorder: Recorder, stream: Stream) -> None:
        self.recorder = recorder
        self.stream = stream
        self.settings = recorder.settings
        self.writer = recorder.writer
        self.directory = recording_dir(self.settings.root, self.fmt, stream.app, stream.name)
        self.state = State.WAITING
        self.metadata: Frame | None = None
        self.audio_header: Frame | None = None
        self.video_header: Frame | None = None
        self.has_audio = False
        self.has_video = False
        self.base_ms = 0
        self.frames_written = 0
        self._pending: list[Frame] = []
        self._pending_media = 0
        self._first_media_ms: int | None = None
        self._seen_audio = False
        self._seen_video = False
        self._video_started = False
        self.disk: DiskFiles | None = None
        #: Fires (never errs) once the recording is finalised, failed, or
        #: ended before anything was recorded.
        self.done: defer.Deferred[None] = defer.Deferred()

    @property
    def path(self) -> str:
        return f"{self.fmt} recording of {self.stream.path}"

    # -- IMediaSink ------------------------------------------------------------

    def on_frame(self, frame: Frame) -> None:  # type: ignore[override]
        state = self.state
        if state is State.LIVE:
            self._live_frame(frame)
        elif state is State.WAITING:
            self._gate(frame)

    def on_stream_end(self, reason: str) -> None:
        """Nothing here: the recorder finalises on ``stream_unpublished``."""

    # -- waiting for the tracks ------------------------------------------------

    def _accepts_header(self, frame: Frame) -> bool:
        if not self.codec_only:
            return True
        if frame.kind is FrameKind.VIDEO:
            recorded = frame.codec in RECORDED_VIDEO_CODECS
        else:
            recorded = frame.codec in RECORDED_AUDIO_CODECS
        # Another Multitrack track's configuration is not this recording's.
        return recorded and codec_data(frame) is not None

    def _keep_header(self, frame: Frame) -> bool:
        """Remember a sequence header this recorder takes; False if it does not."""
        if not self._accepts_header(frame):
            return False
        if frame.kind is FrameKind.VIDEO:
            self.video_header = frame
        else:
            self.audio_header = frame
        return True

    def _gate(self, frame: Frame) -> None:
        kind = frame.kind
        self._pending.append(frame)
        if kind is FrameKind.SCRIPT:
            self.metadata = frame
            return
        if frame.sequence_header:
            self._keep_header(frame)
            return
        if kind is FrameKind.VIDEO:
            self._seen_video = True
        else:
            self._seen_audio = True
        self._pending_media += 1
        if self._first_media_ms is None:
            self._first_media_ms = frame.timestamp_ms
        want_audio, want_video = announced_tracks(self.metadata)
        want_audio = want_audio or self._seen_audio
        want_video = want_video or self._seen_video
        have_audio = self.audio_header is not None or (not self.codec_only and self._seen_audio)
        have_video = self.video_header is not None or (not self.codec_only and self._seen_video)
        ready = (want_audio <= have_audio) and (want_video <= have_video)
        if (
            ready
            or frame.timestamp_ms - self._first_media_ms >= GATE_MAX_MS
            or len(self._pending) >= GATE_MAX_FRAMES
        ):
            self._start()

    def _start(self) -> None:
        pending, self._pending = self._pending, []
        if self.codec_only:
            self.has_audio = self.audio_header is not None
            self.has_video = self.video_header is not None
        else:
            self.has_audio = self.audio_header is not None or self._seen_audio
            self.has_video = self.video_header is not None or self._seen_video
        if not (self.has_audio or self.has_video):
            self.state = State.FINISHED
            log.warn(
                "{what}: not recording, no video (H.264, H.265, AV1, VP9) or audio "
                "(AAC, Opus, FLAC) it can record",
                what=self.path,
            )
            self.done.callback(None)
            return
        media = [
            f.timestamp_ms
            for f in pending
            if f.kind is not FrameKind.SCRIPT and not f.sequence_header and self._keeps(f)
        ]
        self.base_ms = min(media) if media else 0
        self.state = State.LIVE
        self.open()
        for frame in pending:
            if self.state is not State.LIVE:
                break
            if frame.kind is not FrameKind.SCRIPT:
                self._live_frame(frame)

    def _keeps(self, frame: Frame) -> bool:
        """Whether a media frame belongs to a recorded track."""
        if frame.kind is FrameKind.VIDEO:
            return self.has_video and (
                not self.codec_only or frame.codec in RECORDED_VIDEO_CODECS
            )
        return self.has_audio and (not self.codec_only or frame.codec in RECORDED_AUDIO_CODECS)

    # -- live ----------------------------------------------------------------

    def _live_frame(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is FrameKind.SCRIPT:
            self.metadata = frame
            return
        if frame.sequence_header:
            if self._keep_header(frame):
                self.write_header(frame)
            return
        if self.codec_only:
            if not self._keeps(frame) or codec_data(frame) is None:
                return  # other codec, end-of-sequence, command or configuration tag
            if kind is FrameKind.VIDEO and not self._video_started:
                if not frame.keyframe:
                    return
                self._video_started = True
        ts = frame.timestamp_ms - self.base_ms
        self.write_media(frame, ts if ts > 0 else 0)

    # -- for subclasses ------------------------------------------------------

    def open(self) -> None:
        """Tracks are known: submit the job that creates the outputs."""
        raise NotImplementedError

    def write_header(self, frame: Frame) -> None:
        """A sequence header came (``self.*_header`` already updated)."""

    def write_media(self, frame: Frame, ts_ms: int) -> None:
        """One media frame; ``ts_ms`` is its rebased decode time."""
        raise NotImplementedError

    def close(self) -> defer.Deferred[Any] | None:
        """Submit the last bytes and the finalising job; return its Deferred
        (None if it could not be submitted)."""
        raise NotImplementedError

    def submit(
        self, job: Callable[[], T], *, size: int = 0, quiet: bool = False
    ) -> defer.Deferred[T] | None:
        """Queue a job of this recording's disk half; None if the recording
        failed. ``quiet``: its success is not reported (see
        :meth:`DiskWriter.submit`), for the jobs of every segment or batch."""
        if self.state is State.FAILED:
            return None
        disk = self.disk
        root = self.settings.root

        def guarded() -> T:
            if disk is not None and disk.broken:
                raise RecordingBroken()
            try:
                if disk is not None:
                    # Before every job: a symlink swapped in meanwhile is seen too.
                    confined(root, disk.directory)
                return job()
            except BaseException:
                if disk is not None:
                    disk.broken = True
                raise

        try:
            d = self.writer.submit(guarded, size=size, quiet=quiet)
        except WriterFull as e:
            self.fail(str(e))
            return None
        d.addErrback(self._job_failed)
        return d

    def _job_failed(self, failure: Failure) -> None:
        if not failure.check(RecordingBroken):
            self.fail(describe_error(failure))

    def fail(self, message: str) -> None:
        """Stop recording with one log line; the stream goes on."""
        if self.state in (State.FAILED, State.FINISHED):
            return
        self.state = State.FAILED
        log.error("{what} failed: {message}; recording stopped", what=self.path, message=message)
        disk = self.disk
        if disk is not None:
            # After the jobs already queued, so what they carry is on disk
            # too: let go of the files and the marker's lock, then finalise
            # what was written (a failed recording used to hold them until
            # the process ended and stay unfinished until the next start).
            # A job with no media passes the writer's byte bound; with the job
            # queue itself full, the next start's recovery does it instead.
            root = self.settings.root

            def give_up() -> str | None:
                disk.release()
                confined(root, disk.directory)
                return disk.salvage()

            with contextlib.suppress(WriterFull):
                self.writer.submit(give_up).addCallbacks(self._salvaged, self._not_salvaged)
        if self.recorder.on_failure is not None:
            self.recorder.on_failure(self.fmt)
        if not self.done.called:
            self.done.callback(None)

    def _salvaged(self, summary: str | None) -> None:
        if summary is not None:
            log.info("{what}: finalised what reached the disk ({summary})",
                     what=self.path, summary=summary)

    def _not_salvaged(self, failure: Failure) -> None:
        if failure.check(OSError):
            log.warn("{what}: left unfinished for the next start to repair: {why}",
                     what=self.path, why=describe_error(failure))
        else:
            log.failure("finalising the failed {what}", failure, what=self.path)

    def finish(self) -> defer.Deferred[None]:
        """The stream ended or the server stops: finalise. Fires when done."""
        if self.state is State.WAITING:
            if self._pending_media:
                self._start()
            else:
                self.state = State.FINISHED
                self.done.callback(None)
        if self.state is State.LIVE:
            self.state = State.FINISHING
            d = self.close()
            if d is None:
                self.fail("could not queue the finalising job")
            else:
                d.addCallback(self._finished)
        return self.done

    def _finished(self, result: object) -> None:
        if self.state is State.FINISHING:
            self.state = State.FINISHED
            log.info(
                "{what} finalised ({frames} frames)", what=self.path, frames=self.frames_written
            )
        if not self.done.called:
            self.done.callback(None)


@implementer(IStreamObserver)
class Recorder(service.Service):
    """One record format as a service: records every published stream.

    Subclasses set ``recording_class``.
    """

    recording_class: ClassVar[type[Recording]] = Recording

    def __init__(
        self, registry: StreamRegistry, writer: DiskWriter, settings: RecorderSettings
    ) -> None:
        self.registry = registry
        self.writer = writer
        self.settings = settings
        self.recordings: dict[Stream, Recording] = {}
        self._unfinished: set[defer.Deferred[None]] = set()
        #: Called with the format (``hls``...) when a recording fails (metrics).
        self.on_failure: Callable[[str], None] | None = None
        #: Asked ``(stream, format)`` before a recording starts; False: the
        #: stream is not recorded (retention's free-disk floor).
        self.may_record: Callable[[Stream, str], bool] | None = None
        #: Called once a recording is finalised (retention scans then).
        self.on_finished: Callable[[], None] | None = None
        self.setName(f"record-{self.recording_class.fmt}")

    @property
    def fmt(self) -> str:
        return self.recording_class.fmt

    def startService(self) -> None:
        super().startService()
        self.registry.add_observer(self)

    def stopService(self) -> defer.Deferred[list[None]]:
        """Finalise every open recording; fires once all are on disk."""
        super().stopService()
        self.registry.remove_observer(self)
        for stream, recording in list(self.recordings.items()):
            stream.remove_sink(recording)
            self._finish(recording)
        self.recordings.clear()
        return defer.gatherResults(list(self._unfinished))

    def stream_published(self, stream: Stream) -> None:  # type: ignore[override]
        if self.may_record is not None and not self.may_record(stream, self.fmt):
            return
        recording = self.recording_class(self, stream)
        self.recordings[stream] = recording
        stream.add_sink(recording)

    def stream_unpublished(self, stream: Stream) -> None:  # type: ignore[override]
        recording = self.recordings.pop(stream, None)
        if recording is not None:
            self._finish(recording)

    def _finish(self, recording: Recording) -> None:
        d = recording.finish()
        if self.on_finished is not None:
            on_finished = self.on_finished
            d.addCallback(lambda _: on_finished())
        if not d.called:
            self._unfinished.add(d)

            def forget(result: None, d: defer.Deferred[None] = d) -> None:
                self._unfinished.discard(d)

            d.addCallback(forget)
