"""Read a publisher's socket in batches: at most one read per interval.

A live publisher sends a tag at a time (70-100 a second for audio plus
video), so a server that reads as soon as bytes arrive wakes up once per tag.
On a VM each wake-up of an otherwise idle reactor costs far more than the
parsing it leads to (an empty Twisted timer at 70 Hz costs ~0.008 CPU-s/s
here), so the wake-ups, not the bytes, are most of what an ingest costs.

:class:`ReadPacer` stops reading a transport for ``interval_ms`` after each
read; what arrives meanwhile waits in the kernel and is taken by one read
when the pause ends. A tag that arrives after the pause is read at once, so
the added latency is between 0 and ``interval_ms``.

The pacing must never throttle: a read that filled the whole read size is
not followed by a pause (the socket holds more), and the pause is shortened
so that one pause gathers no more than the window the kernel advertises to
the publisher (half the socket's receive buffer, which Linux grows as the
stream goes on): the sender's window never closes. A paced publisher's
socket is read :data:`READ_BYTES` at a time, so one read takes a whole batch.

Publishers on plain TCP only (through TLS a read reaches the protocol in
pieces, and the wrapper's read size and buffer are not its socket's), and
only while nobody watches the stream live (the RTMP protocol decides):
recorders do not see a pause, viewers would.

While reading is paused the reactor does not see the socket close either, so
a publisher that died holds its name until the pause ends. :meth:`ReadPacer.wake`
reads at once again, for one interval, so that a publish of the same name can
learn whether the holder is still there (admission asks it before refusing).
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime

from rtmpd._twisted import socket_fd

#: Bytes one read of a paced publisher's socket takes at most (its
#: transport's ``bufferSize``, 64 KiB by default, is raised to this): a read
#: this large may have left data. 250 ms of a 8 Mbit/s stream.
READ_BYTES = 256 * 1024

#: Longest pause accepted, ms: past it the pacing would be a throttle.
MAX_INTERVAL_MS = 500

#: Bytes one pause gathers at most when the receive buffer is unknown: half
#: the 128 KiB Linux starts a TCP socket's receive buffer at (tcp_rmem), the
#: window it advertises then.
MIN_BATCH_BYTES = 64 * 1024


def _receive_buffer(transport: object) -> int:
    """The socket's receive buffer as the kernel has it now (autotuned), or
    0 when the transport has no socket (tests, wrappers)."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return 0
    try:
        return int(get_handle().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except (AttributeError, OSError):  # not a socket, or closed
        return 0


def paceable(transport: object) -> bool:
    """Whether a publisher's reads may be paced: plain TCP only."""
    return socket_fd(transport) >= 0


def batch_bytes(receive_buffer: int) -> int:
    """Bytes one pause may gather: half the receive buffer (the window
    advertised; :data:`MIN_BATCH_BYTES` when the buffer is unknown), at
    most one read."""
    if receive_buffer <= 0:
        return MIN_BATCH_BYTES
    return min(READ_BYTES, receive_buffer // 2)


class ReadPacer:
    """Pauses ``transport`` for up to ``interval_ms`` after each short read."""

    __slots__ = (
        "_awake_until", "_batch_bytes", "_call", "_clock", "_max_s", "_since", "_transport",
    )

    def __init__(self, transport: IPushProducer, clock: IReactorTime, interval_ms: float) -> None:
        if not 0 < interval_ms <= MAX_INTERVAL_MS:
            raise ValueError(f"interval_ms {interval_ms} is out of range (0, {MAX_INTERVAL_MS}]")
        self._transport = transport
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = READ_BYTES
        self._clock = clock
        self._max_s = interval_ms / 1000.0
        self._call: IDelayedCall | None = None
        #: Bytes read since the last pause began, and when it began.
        self._batch_bytes = 0
        self._since = clock.seconds()
        #: Until when (clock seconds) reads are not paused, after a wake().
        self._awake_until = 0.0

    @property
    def paused(self) -> bool:
        """Whether reading is paused until the interval ends."""
        return self._call is not None

    def after_read(self, size: int) -> None:
        """Call after handling a read of ``size`` bytes."""
        if self._call is not None:
            return
        self._batch_bytes += size
        if size >= READ_BYTES:
            return
        now = self._clock.seconds()
        if now < self._awake_until:
            return
        pause_s = self._max_s
        elapsed = now - self._since
        batch = batch_bytes(_receive_buffer(self._transport))
        if elapsed > 0 and self._batch_bytes * pause_s > batch * elapsed:
            pause_s = batch * elapsed / self._batch_bytes  # one batch at this rate
        self._batch_bytes = 0
        self._since = now
        self._transport.pauseProducing()
        self._call = self._clock.callLater(pause_s, self._resume)

    def wake(self) -> bool:
        """Read at once, and without pausing for one interval: whatever the
        socket holds (data, EOF or a reset) reaches the reactor within a turn
        or two. Returns whether reading was paused."""
        self._awake_until = self._clock.seconds() + self._max_s
        if self._call is None:
            return False
        if self._call.active():
            self._call.cancel()
        self._resume()
        return True

    def _resume(self) -> None:
        self._call = None
        self._transport.resumeProducing()

    def stop(self) -> None:
        """Forget the pending resume (the connection is gone)."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
