"""Fan-out: one stream's frames to many viewers of one output format.

The cost of fan-out is the number of sends, not the bytes (``PERFORMANCE.md``).
So:

* each frame is serialized once per output format (:class:`OutputFormat`) and
  the resulting ``bytes`` object is shared by every viewer of that format;
* frames wait in one stream-level list (:attr:`FanoutGroup.pending`); a viewer
  that is in sync has no per-frame state at all, and at each flush it gets the
  whole list in one ``writev`` (or one ``writeSequence`` when its transport
  still holds data, or for TLS);
* a viewer whose socket is full (Twisted calls ``pauseProducing``) stops
  taking frames; once resumed it rejoins at the next keyframe. While it is
  out, the bytes it missed count as its lag; past the queue limit it is
  dropped with a logged reason.

Nothing here logs per frame.
"""

from __future__ import annotations

import enum
import fcntl
import struct
import termios
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.logger import Logger
from zope.interface import implementer

from rtmpd._twisted import (
    DirectWrites,
    discard_unsent,
    queued_bytes,
    shed_transport_strings,
    socket_fd,
    write_now,
)
from rtmpd.interfaces import IViewer
from rtmpd.media import Frame

if TYPE_CHECKING:
    from rtmpd.admission import Admission, AdmissionRequest
    from rtmpd.registry import Stream

log = Logger()

#: Bytes a viewer's transport may hold before Twisted pauses it (Twisted's
#: default is 64 KiB). A new viewer's first burst (headers and a whole GOP)
#: is often bigger than that; pausing on it would make a perfectly healthy
#: viewer skip to the next keyframe right after joining. A healthy viewer
#: holds nothing, so this costs memory only for slow ones, which the queue
#: limit bounds anyway.
VIEWER_BUFFER_BYTES = 256 * 1024

#: Viewers served per slice of a flush pass before the reactor gets a turn
#: (1.5-3 ms of sends on loopback, more with tens of thousands of sockets).
FLUSH_SLICE_VIEWERS = 128


#: Bytes a connection may have queued and unread (replies to its pings and
#: commands) on top of what a viewer is allowed: past that, a peer that sends
#: but never reads is dropped rather than grown without bound.
CONTROL_BACKLOG_BYTES = 1024 * 1024


def unread_output_excess(transport: object, viewer_queue_bytes: int) -> str | None:
    """Why a connection's unread output is over its bound, or None.

    Checked when a connection's own replies (pongs, RTMP control answers)
    are queued: the bound is :data:`CONTROL_BACKLOG_BYTES` on top of the
    most a viewer may hold (its transport's buffer or the queue limit).
    """
    queued = queued_bytes(transport)
    if queued <= CONTROL_BACKLOG_BYTES:
        return None
    limit = CONTROL_BACKLOG_BYTES + max(getattr(transport, "bufferSize", 0), viewer_queue_bytes)
    if queued <= limit:
        return None
    return f"{queued} bytes of output unread, over {limit}"


class OutputFormat(Protocol):
    """How one output format serializes frames. One instance per format key."""

    @property
    def key(self) -> Hashable:
        """Viewers whose formats have equal keys share the same bytes."""

    def encode(self, frame: Frame) -> bytes:
        """Serialize one frame into the bytes every viewer of this format
        gets (``b""``: nothing of this frame for them)."""

    def preamble(self, stream: Stream) -> list[bytes]:
        """Bytes a new viewer gets before anything else (e.g. the FLV header)."""


class ViewerState(enum.Enum):
    """Where a viewer stands with respect to the group's pending list."""

    #: Gets every flush pass.
    SYNCED = "synced"
    #: Joined (or rejoined) since the last pass: gets the pending frames from
    #: its join position at the next pass, and is synced from then on.
    JOINED = "joined"
    #: Its socket is full; frames are skipped and counted as lag.
    PAUSED = "paused"
    #: Socket drained; rejoins at the next keyframe.
    WAITING = "waiting"
    #: Gone.
    CLOSED = "closed"


_SENDING = (ViewerState.SYNCED, ViewerState.JOINED)


@implementer(IPushProducer, IViewer)
class ViewerOutput(DirectWrites):
    """The sending side of one viewer: counters, backpressure, the writes,
    and the one way a viewer ends (:meth:`finish`).

    Protocol adapters subclass it and implement :meth:`stream_ended` and
    :meth:`drop`. It registers itself as the push producer of the consumer
    the adapter gives it, so Twisted tells it when the socket is full.
    """

    __slots__ = (
        "_admission",
        "_lag_base_bytes",
        "_lag_base_frames",
        "_request",
        "client_id",
        "description",
        "finished",
        "frames_dropped",
        "group",
        "output",
        "protocol",
        "state",
        "stream",
    )

    def __init__(
        self,
        transport: ITransport,
        description: str,
        *,
        stream: Stream | None = None,
        output: OutputFormat | None = None,
        protocol: str = "",
        client_id: int = 0,
    ) -> None:
        self.transport = transport
        self.description = description
        self.stream = stream
        #: The format whose shared bytes this viewer gets.
        self.output = output
        self.protocol = protocol
        self.client_id = client_id
        self.group: FanoutGroup | None = None
        self.state = ViewerState.SYNCED
        self.finished = False
        self.bytes_sent = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self._lag_base_bytes = 0
        self._lag_base_frames = 0
        self._admission: Admission | None = None
        self._request: AdmissionRequest | None = None
        # The direct writev path is only for plain TCP; TLS must go through
        # its transport.
        self._fd = socket_fd(transport)
        shed_transport_strings(transport)
        self.allow_buffered(VIEWER_BUFFER_BYTES)

    def allow_buffered(self, size: int) -> None:
        """Let the transport hold at least ``size`` bytes before pausing us."""
        t = self.transport
        if hasattr(t, "bufferSize") and t.bufferSize < size:
            t.bufferSize = size

    # -- what adapters implement ------------------------------------------

    def stream_ended(self, reason: str) -> None:
        """The stream is over; finish the viewer's output politely."""
        raise NotImplementedError

    def drop(self, reason: str) -> None:
        """Close this viewer's connection now; ``reason`` is for the log."""
        raise NotImplementedError

    # -- the end, once for every protocol -----------------------------------

    def admitted(self, admission: Admission, request: AdmissionRequest) -> None:
        """Admission let this viewer in for ``request``: it hears the end."""
        self._admission = admission
        self._request = request

    def finish(self, why: str, *, dropped: bool = False) -> None:
        """The viewer is gone: leave the stream, write the one stop line,
        count it. Idempotent; adapters call it however the viewer ends."""
        discard_unsent(self.transport)
        if self.finished:
            return
        self.finished = True
        group = self.group
        if group is not None:
            group.remove(self)
        self.state = ViewerState.CLOSED
        admission = self._admission
        request = self._request
        if admission is not None and request is not None:
            admission.viewer_finished(self, request, why, dropped=dropped)

    def pause_output(self) -> None:
        """Stop sending (an RTMP pause): out of the fan-out, still admitted
        and counted."""
        group = self.group
        if group is not None:
            group.remove(self)

    def resume_output(self) -> bool:
        """Send again after :meth:`pause_output`, from the next keyframe on;
        False if the stream has ended meanwhile."""
        stream = self.stream
        if self.finished or stream is None or not stream.live or self.output is None:
            return False
        stream.resume_viewer(self.output, self)
        return True

    def lag_ms(self) -> int:
        """How far behind live this viewer is, in ms: frames skipped or
        still queued, at the stream's frame rate (0 when in sync)."""
        group = self.group
        if group is None or self.stream is None:
            return 0
        rate = self.stream.frame_rate
        sending = self.state in _SENDING
        behind_frames = 0 if sending else group.total_frames - self._lag_base_frames
        queued = self.buffered_bytes()
        if queued and group.total_frames:
            behind_frames += int(queued / max(1, group.total_bytes / group.total_frames))
        return int(behind_frames * 1000 / rate) if rate > 0 else 0

    # -- writes ------------------------------------------------------------

    def buffered_bytes(self) -> int:
        """Bytes queued for this viewer and not yet sent: in the transport's
        buffer and in the kernel's socket send queue (0 when unknown)."""
        queued = queued_bytes(self.transport)
        if self._fd >= 0:
            try:
                raw = fcntl.ioctl(self._fd, termios.TIOCOUTQ, b"\0\0\0\0")
                queued += struct.unpack("i", raw)[0]
            except OSError:
                pass
        return queued

    def send(self, chunks: Sequence[bytes], size: int) -> None:
        """Send ``chunks`` (``size`` bytes in all) with as few syscalls as can be.

        When the transport holds nothing, the shared bytes go straight to the
        socket with one ``writev``; whatever the kernel does not take is
        handed to the transport, which keeps the order and applies
        backpressure. The common case (the kernel takes everything) does no
        per-chunk Python work.
        """
        if not chunks:
            return
        self.bytes_sent += size
        self.frames_sent += len(chunks)
        write_now(self.transport, self._fd, chunks, size)

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        """The socket is full: stop taking frames (idempotent)."""
        if self.state in _SENDING and self.group is not None:
            self.group.hold(self)

    def resumeProducing(self) -> None:
        """The socket drained: rejoin at the next keyframe."""
        if self.state is ViewerState.PAUSED and self.group is not None:
            self.group.resume(self)

    def stopProducing(self) -> None:
        """The consumer is going away. The adapter's connection-lost handler
        calls :meth:`finish`, so nothing here."""


class FanoutGroup:
    """All viewers of one stream in one output format.

    ``pending`` holds the serialized frames since the last flush; a synced
    viewer gets all of it at each flush. Viewers that joined during the
    window start at their join position; held viewers get nothing until they
    rejoin at a keyframe.
    """

    def __init__(
        self,
        output: OutputFormat,
        *,
        queue_limit_bytes: int,
        on_empty: Callable[[FanoutGroup], None] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.output = output
        #: Paces flush passes in slices; without one a pass runs all at once.
        self.clock = clock
        self.queue_limit_bytes = queue_limit_bytes
        #: Called when the last viewer leaves, so the stream stops encoding
        #: frames for nobody.
        self.on_empty = on_empty
        self.pending: list[bytes] = []
        self.pending_size = 0
        #: Cumulative bytes and frames ever appended, for lag accounting.
        self.total_bytes = 0
        self.total_frames = 0
        #: Serialized frames of the stream's GOP cache, kept in step with it.
        self.gop: list[bytes] = []
        self._synced: dict[ViewerOutput, None] = {}
        self._joined: dict[ViewerOutput, int] = {}
        self._held: dict[ViewerOutput, None] = {}
        # The pass in progress: who gets ``_pass_data`` and how far it got.
        self._pass_viewers: list[ViewerOutput] | None = None
        self._pass_data = b""
        self._pass_frames = 0
        self._pass_next = 0
        self._pass_call: IDelayedCall | None = None
        self._pass_started = 0.0
        self._flush_again = False
        #: Wall time the last pass took, reactor turns between slices
        #: included (what the adaptive window is measured against).
        self.last_pass_s = 0.0

    def __len__(self) -> int:
        return len(self._synced) + len(self._joined) + len(self._held)

    def viewers(self) -> list[ViewerOutput]:
        """Every viewer of the group, whatever its state."""
        return [*self._synced, *self._joined, *self._held]

    # -- membership --------------------------------------------------------

    def add(self, viewer: ViewerOutput, burst: list[bytes]) -> None:
        """Add a viewer, sending ``burst`` (preamble, headers, GOP) now."""
        viewer.group = self
        viewer.state = ViewerState.JOINED
        size = sum(map(len, burst))
        viewer.allow_buffered(size + VIEWER_BUFFER_BYTES)
        viewer.send(burst, size)
        if viewer.state is ViewerState.JOINED:
            self._joined[viewer] = len(self.pending)

    def add_waiting(self, viewer: ViewerOutput) -> None:
        """Add a viewer that has had its headers: it starts at the next
        keyframe, like one whose socket drained."""
        viewer.group = self
        viewer.state = ViewerState.WAITING
        viewer._lag_base_bytes = self.total_bytes
        viewer._lag_base_frames = self.total_frames
        self._held[viewer] = None

    def remove(self, viewer: ViewerOutput) -> None:
        """Forget a viewer (idempotent)."""
        self._synced.pop(viewer, None)
        self._joined.pop(viewer, None)
        self._held.pop(viewer, None)
        viewer.state = ViewerState.CLOSED
        viewer.group = None
        if self.on_empty is not None and not len(self):
            self.on_empty(self)

    def hold(self, viewer: ViewerOutput) -> None:
        """Stop sending to a viewer whose socket is full."""
        missed_bytes = missed_frames = 0
        if viewer in self._synced:
            del self._synced[viewer]
            position = 0
            # A pass in progress that has not reached it yet: it misses that too.
            rest = self._pass_viewers
            if rest is not None and viewer in rest[self._pass_next :]:
                missed_bytes = len(self._pass_data)
                missed_frames = self._pass_frames
        else:
            position = self._joined.pop(viewer, len(self.pending))
        viewer.state = ViewerState.PAUSED
        # Frames it will not receive count as missed.
        missed = self.pending[position:]
        missed_bytes += sum(map(len, missed))
        missed_frames += len(missed)
        viewer._lag_base_bytes = self.total_bytes - missed_bytes
        viewer._lag_base_frames = self.total_frames - missed_frames
        self._held[viewer] = None

    def resume(self, viewer: ViewerOutput) -> None:
        """The viewer's socket drained; it rejoins at the next keyframe."""
        viewer.state = ViewerState.WAITING

    # -- frames --------------------------------------------------------------

    def append(self, frame: Frame, sync_point: bool) -> bytes:
        """Serialize ``frame`` once and queue it for every synced viewer.

        A format may encode a frame as ``b""``: its viewers get nothing of it
        (a legacy RTMP client and an Enhanced RTMP codec), and nothing is
        queued; the empty bytes are returned for the GOP, kept in step."""
        data = self.output.encode(frame)
        if sync_point and self._held:
            self._rejoin_waiting()
        if not data:
            return data
        self.pending.append(data)
        self.pending_size += len(data)
        self.total_bytes += len(data)
        self.total_frames += 1
        return data

    def _rejoin_waiting(self) -> None:
        position = len(self.pending)
        for viewer in [v for v in self._held if v.state is ViewerState.WAITING]:
            del self._held[viewer]
            viewer.frames_dropped += self.total_frames - viewer._lag_base_frames
            viewer.state = ViewerState.JOINED
            self._joined[viewer] = position

    def flush(self) -> None:
        """Start a pass that sends the pending frames: one send per viewer.

        A pass serves :data:`FLUSH_SLICE_VIEWERS` viewers at a time and, with
        a clock, lets the reactor run between slices, so joins and the
        publisher's next frame are not stuck behind a pass over a large
        audience. Frames that arrive meanwhile wait for the next pass; a flush
        asked for during a pass starts the next one as soon as it ends.
        """
        if self._pass_viewers is not None:
            self._flush_again = True
            return
        pending = self.pending
        if pending:
            self.pending = []
            self.pending_size = 0
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            self._pass_viewers = list(self._synced)
            if self._joined:
                # Viewers that joined since the last pass get the frames
                # from their join position on, now, and are synced after.
                joined = self._joined
                self._joined = {}
                for viewer, position in joined.items():
                    if viewer.state is ViewerState.JOINED:
                        rest = pending[position:]
                        viewer.send(rest, sum(map(len, rest)))
                        if viewer.state is ViewerState.JOINED:
                            viewer.state = ViewerState.SYNCED
                            self._synced[viewer] = None
            self._pass_data = data
            self._pass_frames = len(pending)
            self._pass_next = 0
            if self.clock is not None:
                self._pass_started = self.clock.seconds()
            self._run_pass()
        elif self._joined:
            for viewer in self._joined:
                viewer.state = ViewerState.SYNCED
                self._synced[viewer] = None
            self._joined = {}
        if self._held:
            self._check_lag()

    def _run_pass(self) -> None:
        """Serve the next slice of the current pass (all of it without a clock)."""
        self._pass_call = None
        viewers = self._pass_viewers
        if viewers is None:
            return
        data = self._pass_data
        frames = self._pass_frames
        start = self._pass_next
        stop = len(viewers) if self.clock is None else start + FLUSH_SLICE_VIEWERS
        # Set before sending: a viewer held during its own send is served.
        self._pass_next = stop
        synced = ViewerState.SYNCED
        for viewer in viewers[start:stop]:
            if viewer.state is synced:
                try:
                    viewer.send_bytes(data, frames)
                except Exception:
                    # One broken viewer must not stall the stream for the rest.
                    log.failure("sending to {peer} failed", peer=viewer.description)
                    self.remove(viewer)
                    viewer.drop("internal error while sending; see the traceback above")
        if stop < len(viewers):
            assert self.clock is not None
            self._pass_call = self.clock.callLater(0, self._run_pass)
            return
        self._pass_viewers = None
        self._pass_data = b""
        if self.clock is not None:
            self.last_pass_s = self.clock.seconds() - self._pass_started
        if self._flush_again:
            self._flush_again = False
            self.flush()

    def _check_lag(self) -> None:
        limit = self.queue_limit_bytes
        for viewer in list(self._held):
            lag = self.total_bytes - viewer._lag_base_bytes + viewer.buffered_bytes()
            if lag > limit:
                viewer.frames_dropped += self.total_frames - viewer._lag_base_frames
                self.remove(viewer)
                viewer.drop(
                    f"viewer fell {lag} bytes behind, over the queue limit of {limit} bytes"
                )

    def end(self, reason: str) -> None:
        """Send everything still pending, then end every viewer's output."""
        call = self._pass_call
        if call is not None and call.active():
            call.cancel()
        self._pass_call = None
        self._flush_again = False
        # Without a clock the rest of a pass in progress, and the pass over
        # what is still pending, run to the end now.
        clock, self.clock = self.clock, None
        try:
            self._run_pass()
            self.flush()
        finally:
            self.clock = clock
        for viewer in self.viewers():
            self.remove(viewer)
            viewer.stream_ended(reason)
