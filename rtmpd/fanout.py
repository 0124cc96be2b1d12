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
import os
import struct
import termios
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer

from rtmpd.media import Frame

if TYPE_CHECKING:
    from rtmpd.registry import Stream

#: The kernel refuses more than this many buffers in one ``writev`` (IOV_MAX
#: on Linux); longer lists are sent in several calls.
IOV_MAX = 1024

#: Bytes a viewer's transport may hold before Twisted pauses it (Twisted's
#: default is 64 KiB). A new viewer's first burst (headers and a whole GOP)
#: is often bigger than that; pausing on it would make a perfectly healthy
#: viewer skip to the next keyframe right after joining. A healthy viewer
#: holds nothing, so this costs memory only for slow ones, which the queue
#: limit bounds anyway.
VIEWER_BUFFER_BYTES = 256 * 1024


class OutputFormat(Protocol):
    """How one output format serializes frames. One instance per format key."""

    @property
    def key(self) -> Hashable:
        """Viewers whose formats have equal keys share the same bytes."""

    def encode(self, frame: Frame) -> bytes:
        """Serialize one frame into the bytes every viewer of this format gets."""

    def preamble(self, stream: Stream) -> list[bytes]:
        """Bytes a new viewer gets before anything else (e.g. the FLV header)."""


class ViewerState(enum.Enum):
    """Where a viewer stands with respect to the group's pending list."""

    #: Gets every flush from position 0 (or from its join position, once).
    SYNCED = "synced"
    #: Its socket is full; frames are skipped and counted as lag.
    PAUSED = "paused"
    #: Socket drained; rejoins at the next keyframe.
    WAITING = "waiting"
    #: Gone.
    CLOSED = "closed"


@implementer(IPushProducer)
class ViewerOutput:
    """The sending side of one viewer: counters, backpressure and the writes.

    Protocol adapters subclass it and implement :meth:`stream_ended` and
    :meth:`drop`. It registers itself as the push producer of the consumer
    the adapter gives it, so Twisted tells it when the socket is full.
    """

    __slots__ = (
        "_fd",
        "_lag_base_bytes",
        "_lag_base_frames",
        "bytes_sent",
        "description",
        "frames_dropped",
        "frames_sent",
        "group",
        "state",
        "transport",
    )

    def __init__(self, transport: ITransport, description: str) -> None:
        self.transport = transport
        self.description = description
        self.group: FanoutGroup | None = None
        self.state = ViewerState.SYNCED
        self.bytes_sent = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self._lag_base_bytes = 0
        self._lag_base_frames = 0
        # The direct writev path is only for plain TCP; TLS must go through
        # its transport.
        self._fd = transport.fileno() if isinstance(transport, tcp.Connection) else -1
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

    # -- writes ------------------------------------------------------------

    def buffered_bytes(self) -> int:
        """Bytes queued for this viewer and not yet sent: in the transport's
        buffer and in the kernel's socket send queue (0 when unknown)."""
        t = self.transport
        if not isinstance(t, tcp.Connection):
            return 0
        queued = len(t.dataBuffer) - t.offset + t._tempDataLen
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
        t: Any = self.transport
        fd = self._fd
        if fd < 0 or t._tempDataLen or len(t.dataBuffer) != t.offset:
            t.writeSequence(chunks)
            return
        if len(chunks) > IOV_MAX:
            self._send_in_batches(fd, chunks)
            return
        try:
            written = os.writev(fd, chunks)
        except BlockingIOError:
            written = 0
        except OSError:
            # The peer is gone; the reactor will notice and call
            # connectionLost. Nothing more to send.
            return
        if written != size:
            _write_rest(t, chunks, 0, written)

    def _send_in_batches(self, fd: int, chunks: Sequence[bytes]) -> None:
        t: Any = self.transport
        for start in range(0, len(chunks), IOV_MAX):
            batch = chunks[start : start + IOV_MAX]
            try:
                written = os.writev(fd, batch)
            except BlockingIOError:
                written = 0
            except OSError:
                return
            if written != sum(map(len, batch)):
                _write_rest(t, chunks, start, written)
                return

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        """The socket is full: stop taking frames (idempotent)."""
        if self.state is ViewerState.SYNCED and self.group is not None:
            self.group.hold(self)

    def resumeProducing(self) -> None:
        """The socket drained: rejoin at the next keyframe."""
        if self.state is ViewerState.PAUSED and self.group is not None:
            self.group.resume(self)

    def stopProducing(self) -> None:
        """The consumer is going away. The adapter's connection-lost handler
        removes the viewer from its stream (and logs why), so nothing here."""


def _write_rest(transport: Any, chunks: Sequence[bytes], start: int, written: int) -> None:
    """Hand the transport what a partial ``writev`` starting at ``chunks[start]``
    left unsent (``written`` bytes were taken)."""
    index = start
    for chunk in chunks[start:]:
        n = len(chunk)
        if written < n:
            break
        written -= n
        index += 1
    if index < len(chunks):
        if written:
            transport.write(chunks[index][written:])
            index += 1
        transport.writeSequence(chunks[index:])


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
    ) -> None:
        self.output = output
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

    def __len__(self) -> int:
        return len(self._synced) + len(self._joined) + len(self._held)

    def viewers(self) -> list[ViewerOutput]:
        """Every viewer of the group, whatever its state."""
        return [*self._synced, *self._joined, *self._held]

    # -- membership --------------------------------------------------------

    def add(self, viewer: ViewerOutput, burst: list[bytes]) -> None:
        """Add a viewer, sending ``burst`` (preamble, headers, GOP) now."""
        viewer.group = self
        viewer.state = ViewerState.SYNCED
        size = sum(map(len, burst))
        viewer.allow_buffered(size + VIEWER_BUFFER_BYTES)
        viewer.send(burst, size)
        if viewer.state is ViewerState.SYNCED:
            self._joined[viewer] = len(self.pending)

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
        self._synced.pop(viewer, None)
        position = self._joined.pop(viewer, len(self.pending))
        viewer.state = ViewerState.PAUSED
        # Frames of this window it has not received count as missed.
        missed = self.pending[position:]
        viewer._lag_base_bytes = self.total_bytes - sum(map(len, missed))
        viewer._lag_base_frames = self.total_frames - len(missed)
        self._held[viewer] = None

    def resume(self, viewer: ViewerOutput) -> None:
        """The viewer's socket drained; it rejoins at the next keyframe."""
        viewer.state = ViewerState.WAITING

    # -- frames --------------------------------------------------------------

    def append(self, frame: Frame, sync_point: bool) -> bytes:
        """Serialize ``frame`` once and queue it for every synced viewer."""
        data = self.output.encode(frame)
        if sync_point and self._held:
            self._rejoin_waiting()
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
            viewer.state = ViewerState.SYNCED
            self._joined[viewer] = position

    def flush(self) -> None:
        """Send the pending frames: one send per viewer."""
        pending = self.pending
        if pending:
            size = self.pending_size
            self.pending = []
            self.pending_size = 0
            for viewer in list(self._synced):
                if viewer.state is ViewerState.SYNCED:
                    viewer.send(pending, size)
            if self._joined:
                joined = self._joined
                self._joined = {}
                for viewer, position in joined.items():
                    if viewer.state is ViewerState.SYNCED:
                        self._synced[viewer] = None
                        rest = pending[position:]
                        viewer.send(rest, sum(map(len, rest)))
        elif self._joined:
            for viewer in self._joined:
                self._synced[viewer] = None
            self._joined = {}
        if self._held:
            self._check_lag()

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
        """Flush what is pending, then end every viewer's output."""
        self.flush()
        for viewer in self.viewers():
            self.remove(viewer)
            viewer.stream_ended(reason)
