"""StreamRegistry, Stream and the GOP cache: where publishers, viewers,
recorders and gateways meet (``ARCHITECTURE.md`` section 4)."""

from __future__ import annotations

import itertools
import re
import secrets
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from rtmpd.codec import enhanced
from rtmpd.codec.errors import RemoteProtocolError
from rtmpd.errors import InvalidStreamName, StreamBusy
from rtmpd.fanout import FanoutGroup, OutputFormat, ViewerOutput
from rtmpd.interfaces import IMediaSink, IMediaSource, IStreamObserver
from rtmpd.media import Frame, FrameKind
from rtmpd.viewerlog import ViewerLog

log = Logger()

#: App and stream names: the only strings from the network that ever become
#: part of a file path, so they are kept to a small safe alphabet.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")

#: A decode timestamp this far below the last one is a discontinuity (a
#: restarted encoder), not audio/video interleaving skew.
BACKWARD_JUMP_MS = 1000

#: The most a rebased frame is placed after the last one sent (a stream with
#: seconds between frames does not need to wait that long).
MAX_REBASE_STEP_MS = 100

#: The adaptive send window (``--merge-ms auto``) keeps passes over the
#: viewers to at most this share of the time: every frame goes out at once
#: while (frames per second x the last pass's duration) stays under it, and
#: past it passes are spaced by (last pass / this). The cost of a pass is one
#: send per viewer, 10-20 us each on loopback here, more as the sockets
#: outgrow the CPU caches; the rest of the time is for joins and ingest.
MAX_SEND_DUTY = 0.8
#: ... and the window never grows past this: past it the core is simply too
#: small for the audience, and longer gaps would make players stall.
MAX_AUTO_MERGE_MS = 500
#: In the adaptive mode an audio frame of a stream with video does not start
#: a pass of its own: it goes with the next video frame, or after this long
#: if none comes. A source interleaves the tracks by time, so the next video
#: frame is at most one frame interval away (40 ms at 25 fps), and a player
#: plays only as far as both tracks reach, so the wait costs it next to
#: nothing; it cuts the passes (one send per viewer each) from ~72 to 25 a
#: second for a 25 fps + 48 kHz AAC stream.
AUDIO_RIDES_MS = 50
#: A stream with viewers logs its load this often.
LOAD_LOG_INTERVAL_S = 60.0


def validate_name(value: str, what: str = "stream name") -> str:
    """Return ``value`` if it is a valid app or stream name, else raise."""
    if not value:
        raise InvalidStreamName(
            f"no {what}: URLs are rtmp://host/APP/STREAM, http://host:port/APP/STREAM.flv"
        )
    if not NAME_PATTERN.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidStreamName(
            f"invalid {what} {shown!r}: use 1 to 128 of A-Z a-z 0-9 _ -"
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConfig:
    """Limits and policies shared by every stream of a registry."""

    gop_cache_frames: int = 3000
    gop_cache_bytes: int = 16 * 1024 * 1024
    gop_cache_ms: int = 15_000
    viewer_queue_bytes: int = 1_500_000
    #: ``None`` means adaptive (:meth:`Stream.send_window_ms`).
    merge_ms: int | None = None
    #: While a stream has no viewers, its publisher's socket is read at most
    #: once per this many ms, so the reactor wakes once per batch of tags rather
    #: than per tag (0: at once; :mod:`rtmpd.protocols.readpacing`).
    publish_read_ms: float = 0


@dataclass(frozen=True, slots=True)
class GopChange:
    """How the GOP cache changed for one frame, so mirrors can follow."""

    reset: bool
    trim: int
    cached: bool


_APPENDED = GopChange(False, 0, True)
_SKIPPED = GopChange(False, 0, False)
_RESTARTED = GopChange(True, 0, True)
_OVERFLOWED = GopChange(True, 0, False)


class GopCache:
    """Frames since the last video keyframe, bounded by frames, bytes and ms.

    A new viewer starts with these, so its first video frame is a keyframe.
    For a stream without video, the last ``max_ms`` of audio is kept. When a
    bound is passed the cache empties and waits for the next keyframe, so a
    stream without keyframes cannot grow it.
    """

    def __init__(self, *, max_frames: int, max_bytes: int, max_ms: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.max_ms = max_ms
        self.frames: list[Frame] = []
        self.size = 0
        self._audio_only = True

    def add(self, frame: Frame) -> GopChange:
        """Account for one media frame (not sequence headers or metadata)."""
        frames = self.frames
        if frame.kind is FrameKind.VIDEO:
            self._audio_only = False
            if frame.keyframe:
                self.frames = [frame]
                self.size = frame.size
                return _RESTARTED
            if not frames:
                return _SKIPPED
        elif not frames and not self._audio_only:
            return _SKIPPED
        frames.append(frame)
        self.size += frame.size
        if self._audio_only:
            trim = 0
            oldest_allowed = frame.timestamp_ms - self.max_ms
            max_frames = self.max_frames
            while frames[trim].timestamp_ms < oldest_allowed or len(frames) - trim > max_frames:
                self.size -= frames[trim].size
                trim += 1
            if trim:
                del frames[:trim]
                return GopChange(False, trim, True)
            return _APPENDED
        if (
            len(frames) > self.max_frames
            or self.size > self.max_bytes
            or frame.timestamp_ms - frames[0].timestamp_ms > self.max_ms
        ):
            self.frames = []
            self.size = 0
            return _OVERFLOWED
        return _APPENDED


class Stream:
    """One live stream: its headers, GOP cache, viewers and sinks."""

    def __init__(
        self,
        registry: StreamRegistry,
        app: str,
        name: str,
        source: IMediaSource,
        clock: IReactorTime,
        config: StreamConfig,
    ) -> None:
        self.registry = registry
        self.app = app
        self.name = name
        self._path: str | None = None
        self.source = source
        self.clock = clock
        self.config = config
        self.started_at = clock.seconds()
        #: Names this publish among every stream this server ever had (a
        #: gateway pulling it tells a reconnect to the same publish from a
        #: new one by it: ``X-Stream-Id`` on HTTP-FLV answers).
        self.publish_id = registry.next_publish_id()
        self.live = True
        self.metadata: Frame | None = None
        self.audio_header: Frame | None = None
        self.video_header: Frame | None = None
        #: Every sequence header a new viewer needs, by kind and the tracks
        #: it configures (Enhanced RTMP multitrack sends one per track);
        #: ``video_header`` / ``audio_header`` are the last of each kind.
        self.headers: dict[tuple[FrameKind, tuple[int, ...]], Frame] = {}
        self.has_audio = False
        self.has_video = False
        self.gop = GopCache(
            max_frames=config.gop_cache_frames,
            max_bytes=config.gop_cache_bytes,
            max_ms=config.gop_cache_ms,
        )
        self.groups: dict[Hashable, FanoutGroup] = {}
        #: Every viewer admitted to this stream and not finished yet, paused
        #: ones included (kept by :mod:`rtmpd.admission`; the fan-out groups
        #: hold only those being sent to).
        self.viewers: dict[ViewerOutput, None] = {}
        self.sinks: list[IMediaSink] = []
        #: Its forwards to other servers (:class:`rtmpd.services.forward.Forward`,
        #: kept there), for ``/api``.
        self.forwards: list[Any] = []
        self.frames_in = 0
        self.bytes_in = 0
        #: Bytes sent to the viewers that left, by protocol (kept by
        #: :mod:`rtmpd.admission`): with what those playing have sent, the
        #: stream's bytes out, sampled for its bitrate.
        self.ended_bytes_out: Counter[str] = Counter()
        self._flush_call: IDelayedCall | None = None
        self._last_flush = float("-inf")
        self._load_logged_at = clock.seconds()
        self._load_logged_bytes = 0
        #: Frames a second that reach the viewers, measured each second.
        self.frame_rate = 0.0
        self._rate_since = clock.seconds()
        self._rate_frames = 0
        #: Passes a second the stream asks for when sent to at once: its
        #: frames but the audio that rides with video (what the send duty
        #: is measured against).
        self.pass_rate = 0.0
        self._rate_passes = 0
        #: The pending flush call waits for video to come (not a window).
        self._audio_waits = False
        self._last_in_ms: int | None = None
        self._offset_ms = 0
        self._rebase_next = False
        self._last_out_ms = {FrameKind.AUDIO: 0, FrameKind.VIDEO: 0, FrameKind.SCRIPT: 0}
        #: The last gap between two frames of the track that paces the
        #: stream (video, else audio): how far after the last frame a
        #: rebased one goes.
        self._step_ms = 1
        self._video_seen = False
        self._last_video_pts_ms = 0

    @property
    def path(self) -> str:
        """``app/name``, for logs; one string for the stream's life (an
        RTMP connection keeps the path it played, each its own copy before)."""
        path = self._path
        if path is None:
            path = self._path = f"{self.app}/{self.name}"
        return path

    def viewer_count(self) -> int:
        """Viewers on every output format."""
        return sum(len(group) for group in self.groups.values())

    # -- ingest --------------------------------------------------------------

    def _monotonic(self, frame: Frame) -> Frame:
        """Keep output timestamps from going backwards, per track, shared by
        every viewer (so the serialized bytes stay shareable)."""
        ts = frame.timestamp_ms
        last_in = self._last_in_ms
        if self._rebase_next:
            # A new publisher took over: its first frame follows the last
            # one sent by one frame's time, whatever its own clock says (a
            # step off the frame grid makes players that count frames see
            # two at one instant).
            self._rebase_next = False
            self._offset_ms = self._rebase_target() - ts
        elif last_in is not None and ts < last_in - BACKWARD_JUMP_MS:
            # The publisher's clock restarted: continue from where we were.
            self._offset_ms = max(self._last_out_ms.values()) - ts
            log.info(
                "stream {path} timestamps jumped back from {last} to {ts} ms; rebased",
                path=self.path,
                last=last_in,
                ts=ts,
            )
        self._last_in_ms = ts
        out = ts + self._offset_ms
        kind = frame.kind
        last_out = self._last_out_ms[kind]
        if out < last_out:
            out = last_out
        elif frame.sequence_header:
            pass
        elif kind is FrameKind.VIDEO:
            if out > last_out:
                self._step_ms = min(out - last_out, MAX_REBASE_STEP_MS)
            self._video_seen = True
        elif kind is FrameKind.AUDIO and out > last_out and not self._video_seen:
            self._step_ms = min(out - last_out, MAX_REBASE_STEP_MS)
        if kind is FrameKind.VIDEO and out + frame.composition_ms > self._last_video_pts_ms:
            self._last_video_pts_ms = out + frame.composition_ms
        self._last_out_ms[kind] = out
        if out != ts:
            return replace(frame, timestamp_ms=out)
        return frame

    def _rebase_target(self) -> int:
        """Where the first frame after a rebase goes: on the pacing track's
        frame grid (video, else audio), one or more steps after its last
        frame, and past every time already sent, presentation times
        included (a picture shown at the time of an older one is a frame
        that players drop or choke on)."""
        pace = FrameKind.VIDEO if self._video_seen else FrameKind.AUDIO
        last = self._last_out_ms[pace]
        step = max(1, self._step_ms)
        past = max(*self._last_out_ms.values(), self._last_video_pts_ms)
        steps = max(1, -(-(past + 1 - last) // step))
        return last + steps * step

    def push(self, frame: Frame) -> None:
        """Take one frame from the publisher and pass it to everyone."""
        if not self.live:
            return
        self.frames_in += 1
        self.bytes_in += frame.size
        frame = self._monotonic(frame)
        kind = frame.kind
        if kind is FrameKind.SCRIPT:
            self.metadata = frame
            change = _SKIPPED
            sync_point = False
        elif frame.sequence_header:
            if kind is FrameKind.VIDEO:
                self.video_header = frame
                self.has_video = True
            else:
                self.audio_header = frame
                self.has_audio = True
            self._keep_header(frame)
            change = _SKIPPED
            sync_point = False
        else:
            if kind is FrameKind.VIDEO:
                self.has_video = True
                sync_point = frame.keyframe
            else:
                self.has_audio = True
                sync_point = not self.has_video
            change = self.gop.add(frame)
        for group in self.groups.values():
            data = group.append(frame, sync_point)
            gop = group.gop
            if change.reset:
                gop.clear()
            if change.trim:
                del gop[: change.trim]
            if change.cached:
                gop.append(data)
        for sink in self.sinks:
            sink.on_frame(frame)
        if self.groups:
            self._schedule_flush(kind is FrameKind.AUDIO and self.has_video)

    def _keep_header(self, frame: Frame) -> None:
        """Keep a sequence header for new viewers, in place of the ones it
        replaces: of the same kind, for any of the same tracks."""
        kind = frame.kind
        tracks = _header_tracks(kind, frame.payload)
        for key in [k for k in self.headers if k[0] is kind and set(k[1]) & set(tracks)]:
            del self.headers[key]
        self.headers[(kind, tracks)] = frame

    def _schedule_flush(self, rides: bool) -> None:
        """Flush at most once per window: a frame that finds the last flush a
        window ago goes out at once; others wait for the window's end. (Not
        "a window after the first frame": when frames are further apart than
        the window that would delay every one of them by a whole window.)

        ``rides``: an audio frame of a stream with video. With no window and
        the adaptive mode, it waits for the next video frame (at most
        :data:`AUDIO_RIDES_MS`) instead of making a pass of its own."""
        now = self.clock.seconds()
        self._rate_frames += 1
        if not rides:
            self._rate_passes += 1
        if now - self._rate_since >= 1.0:
            elapsed = now - self._rate_since
            self.frame_rate = self._rate_frames / elapsed
            self.pass_rate = self._rate_passes / elapsed
            self._rate_since = now
            self._rate_frames = self._rate_passes = 0
        if self._flush_call is not None:
            if self._audio_waits and not rides:
                self.flush()
            return
        merge_ms = self.send_window_ms()
        if merge_ms <= 0:
            if rides and self.config.merge_ms is None:
                self._audio_waits = True
                self._flush_call = self.clock.callLater(AUDIO_RIDES_MS / 1000.0, self.flush)
                return
            self.flush()
            return
        wait = self._last_flush + merge_ms / 1000.0 - now
        if wait <= 0:
            self.flush()
        else:
            self._audio_waits = False
            self._flush_call = self.clock.callLater(wait, self.flush)

    def send_window_ms(self) -> float:
        """The window sends to viewers are spaced by now (``--merge-ms``):
        none while sending every frame at once fits in :data:`MAX_SEND_DUTY`
        of the time, else enough to bring it back there."""
        if self.config.merge_ms is not None:
            return self.config.merge_ms
        busy_s = self._last_pass_s()
        if busy_s * self.pass_rate <= MAX_SEND_DUTY:
            return 0.0
        return min(MAX_AUTO_MERGE_MS, busy_s / MAX_SEND_DUTY * 1000)

    def flush(self) -> None:
        """Send every group's pending frames now."""
        call = self._flush_call
        self._flush_call = None
        self._audio_waits = False
        if call is not None and call.active():
            call.cancel()
        now = self._last_flush = self.clock.seconds()
        # A flush may drop a lagging viewer and with it an emptied group.
        for group in tuple(self.groups.values()):
            group.flush()
        if now - self._load_logged_at >= LOAD_LOG_INTERVAL_S:
            self._log_load(now)

    def _log_load(self, now: float) -> None:
        """One line a minute while a stream has viewers: how many, what comes
        in, and how busy sending keeps the core (a pass close to the window
        means the core is full)."""
        elapsed = now - self._load_logged_at
        bits = (self.bytes_in - self._load_logged_bytes) * 8
        self._load_logged_at = now
        self._load_logged_bytes = self.bytes_in
        merge_ms = self.config.merge_ms
        window = "auto" if merge_ms is None else f"{merge_ms} ms"
        log.info(
            "stream {path}: {viewers} viewers, {kbps:.0f} kbit/s in, sends at most every "
            "{window_ms:.0f} ms ({window}), last pass {pass_ms:.1f} ms",
            path=self.path,
            viewers=self.viewer_count(),
            kbps=bits / elapsed / 1000,
            window_ms=self.send_window_ms(),
            window=window,
            pass_ms=self._last_pass_s() * 1000,
        )

    def _last_pass_s(self) -> float:
        """How long the last pass over all of the stream's viewers took."""
        return sum(g.last_pass_s for g in self.groups.values())

    # -- viewers and sinks -----------------------------------------------------

    def _initial_frames(self) -> Iterator[Frame]:
        """Metadata, then the sequence headers stamped with the first cached
        frame's time, so a new viewer's timestamps only go forward.

        Metadata goes out at time 0: players (ffmpeg's FLV demuxer among
        them) only read ``onMetaData`` as stream header data at time 0 and
        turn it into a spurious data stream otherwise.
        """
        frames = self.gop.frames
        start = frames[0].timestamp_ms if frames else max(self._last_out_ms.values())
        if self.metadata is not None:
            meta = self.metadata
            yield meta if meta.timestamp_ms == 0 else replace(meta, timestamp_ms=0)
        ordered = sorted(self.headers.items(), key=lambda item: item[0][0] is not FrameKind.VIDEO)
        for _, frame in ordered:
            yield frame if frame.timestamp_ms == start else replace(frame, timestamp_ms=start)

    def _group(self, output: OutputFormat) -> FanoutGroup:
        """The viewers of ``output``'s format (made with the GOP encoded)."""
        group = self.groups.get(output.key)
        if group is None:
            group = FanoutGroup(
                output,
                queue_limit_bytes=self.config.viewer_queue_bytes,
                on_empty=self._forget_group,
                clock=self.clock,
            )
            group.gop = [output.encode(f) for f in self.gop.frames]
            self.groups[output.key] = group
        return group

    def add_viewer(self, output: OutputFormat, viewer: ViewerOutput) -> None:
        """Start a viewer: preamble, metadata, sequence headers and the GOP
        cache now, live frames from the next flush on."""
        group = self._group(output)
        burst = output.preamble(self)
        burst.extend(output.encode(f) for f in self._initial_frames())
        burst.extend(group.gop)
        if not all(burst):
            # A format that leaves frames out (legacy RTMP clients).
            burst = [data for data in burst if data]
        group.add(viewer, burst)

    def resume_viewer(self, output: OutputFormat, viewer: ViewerOutput) -> None:
        """Send to a viewer again from the next keyframe on (after an RTMP
        pause): it has had the headers, and the GOP would take it back in time."""
        group = self._group(output)
        group.add_waiting(viewer)

    def remove_viewer(self, viewer: ViewerOutput) -> None:
        """Forget a viewer that went away (idempotent)."""
        group = viewer.group
        if group is not None:
            group.remove(viewer)

    def _forget_group(self, group: FanoutGroup) -> None:
        if self.groups.get(group.output.key) is group:
            del self.groups[group.output.key]

    def add_sink(self, sink: IMediaSink) -> None:
        """Attach a sink that gets every frame (recorders, relays)."""
        self.sinks.append(sink)

    def remove_sink(self, sink: IMediaSink) -> None:
        """Detach a sink (idempotent)."""
        if sink in self.sinks:
            self.sinks.remove(sink)

    def restart(self, source: IMediaSource, reason: str) -> None:
        """A new publisher feeds this stream (``--takeover``): the viewers
        stay; the old publisher's metadata, codec headers and GOP are
        forgotten (the new encoder sends its own), the sinks are told the
        old media ended, and timestamps go on from the last one sent."""
        self.source = source
        self.metadata = self.audio_header = self.video_header = None
        self.headers.clear()
        self.has_audio = self.has_video = False
        self._start_over()
        for sink in list(self.sinks):
            sink.on_stream_end(reason)
        self.sinks.clear()

    def rebase(self, reason: str) -> None:
        """The same source starts over (a gateway's upstream came back with a
        new publish): the GOP of the old media is forgotten and the next
        frame follows the last one sent, whatever its own time. Headers stay
        until new ones replace them; viewers and sinks go on."""
        log.info("stream {path}: {reason}; timestamps go on from {ts} ms", path=self.path,
                 reason=reason, ts=max(self._last_out_ms.values()))
        self._start_over()

    def _start_over(self) -> None:
        """Forget the GOP and rebase the next frame onto the last one sent."""
        self.gop = GopCache(
            max_frames=self.config.gop_cache_frames,
            max_bytes=self.config.gop_cache_bytes,
            max_ms=self.config.gop_cache_ms,
        )
        for group in self.groups.values():
            group.gop.clear()
        self._rebase_next = True

    def end(self, reason: str) -> None:
        """The stream is over: flush, tell every viewer and sink."""
        if not self.live:
            return
        self.live = False
        call = self._flush_call
        self._flush_call = None
        if call is not None and call.active():
            call.cancel()
        for group in list(self.groups.values()):
            group.end(reason)
        self.groups.clear()
        # Viewers out of the fan-out (an RTMP pause) hear it too.
        for viewer in list(self.viewers):
            if viewer.group is None and not viewer.finished:
                viewer.stream_ended(reason)
        for sink in list(self.sinks):
            sink.on_stream_end(reason)
        self.sinks.clear()


def _header_tracks(kind: FrameKind, payload: bytes) -> tuple[int, ...]:
    """The tracks a sequence header configures: its trackIds if it is an
    Enhanced RTMP multitrack message, else the one default track (0)."""
    if enhanced.is_ex_header(kind, payload):
        try:
            message = enhanced.ExMedia.parse(kind, payload)
        except RemoteProtocolError:
            return (0,)
        if message.multitrack is not None:
            return tuple(sorted({track.track_id for track in message.tracks}))
    return (0,)


class StreamRegistry:
    """Maps ``(app, name)`` to the live :class:`Stream`."""

    def __init__(self, clock: IReactorTime, config: StreamConfig | None = None) -> None:
        self.clock = clock
        self.config = config or StreamConfig()
        self.streams: dict[tuple[str, str], Stream] = {}
        self.observers: list[IStreamObserver] = []
        #: Viewer start/stop lines go through this (bounded per second).
        self.viewer_log = ViewerLog(clock)
        self._instance = secrets.token_hex(4)
        self._publishes = itertools.count(1)

    def next_publish_id(self) -> str:
        """A new stream's :attr:`Stream.publish_id`: unique to this process
        run, and unlike any other run's."""
        return f"{self._instance}-{next(self._publishes)}"

    def get(self, app: str, name: str) -> Stream | None:
        """The live stream by that name, or None. Invalid names raise."""
        validate_name(app, "app name")
        validate_name(name)
        return self.streams.get((app, name))

    def publish(self, app: str, name: str, source: IMediaSource) -> Stream:
        """Start a stream. Raises InvalidStreamName or StreamBusy."""
        validate_name(app, "app name")
        validate_name(name)
        key = (app, name)
        if key in self.streams:
            raise StreamBusy(f"stream {app}/{name} already has a publisher")
        stream = Stream(self, app, name, source, self.clock, self.config)
        self.streams[key] = stream
        log.info("publish {path} by {source}", path=stream.path, source=source.description)
        for observer in list(self.observers):
            observer.stream_published(stream)
        return stream

    def take_over(self, stream: Stream, source: IMediaSource, reason: str) -> None:
        """A new publisher feeds a live stream (``--takeover``): its viewers
        stay, and the recordings of the old publisher's media end and new
        ones start, as for an unpublish and a publish."""
        log.info("publish {path} by {source} (took it over)", path=stream.path,
                 source=source.description)
        stream.restart(source, reason)
        for observer in list(self.observers):
            observer.stream_unpublished(stream)
        for observer in list(self.observers):
            observer.stream_published(stream)

    def unpublish(self, stream: Stream, reason: str) -> None:
        """End a stream; its name is free again at once."""
        if self.streams.get((stream.app, stream.name)) is stream:
            del self.streams[(stream.app, stream.name)]
        if not stream.live:
            return
        log.info(
            "unpublish {path}: {reason} ({frames} frames, {bytes} bytes in)",
            path=stream.path,
            reason=reason,
            frames=stream.frames_in,
            bytes=stream.bytes_in,
        )
        stream.end(reason)
        for observer in list(self.observers):
            observer.stream_unpublished(stream)

    def add_observer(self, observer: IStreamObserver) -> None:
        """Hear about streams coming and going."""
        self.observers.append(observer)

    def remove_observer(self, observer: IStreamObserver) -> None:
        """Stop hearing about streams (idempotent)."""
        if observer in self.observers:
            self.observers.remove(observer)
