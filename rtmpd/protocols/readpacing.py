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

The pacing must never throttle: a read that filled Twisted's whole read
buffer is not followed by a pause (the socket holds more), and the pause is
shortened so that one pause gathers about :data:`BATCH_BYTES` at the rate the
publisher sends, well inside a TCP receive buffer (128 KiB at least on Linux),
so the sender's window never closes: 100 ms up to ~5 Mbit/s, 26 ms at 20.

Publishers only, and only while nobody watches the stream live (the RTMP
protocol decides): recorders do not see a pause, viewers would.

While reading is paused the reactor does not see the socket close either, so
a publisher that died holds its name until the pause ends. :meth:`ReadPacer.wake`
reads at once again, for one interval, so that a publish of the same name can
learn whether the holder is still there (admission asks it before refusing).
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime

#: Bytes one ``doRead`` of a Twisted TCP transport takes at most
#: (``tcp.Connection.bufferSize``): a read this large may have left data.
FULL_READ_BYTES = 65536

#: Longest pause accepted, ms: past it the pacing would be a throttle.
MAX_INTERVAL_MS = 200

#: Bytes one pause should gather at most: one full read, half the smallest
#: TCP receive buffer Linux autotunes from (tcp_rmem default 128 KiB).
BATCH_BYTES = FULL_READ_BYTES


class ReadPacer:
    """Pauses ``transport`` for up to ``interval_ms`` after each short read."""

    __slots__ = (
        "_awake_until", "_batch_bytes", "_call", "_clock", "_max_s", "_since", "_transport",
    )

    def __init__(self, transport: IPushProducer, clock: IReactorTime, interval_ms: float) -> None:
        if not 0 < interval_ms <= MAX_INTERVAL_MS:
            raise ValueError(f"interval_ms {interval_ms} is out of range (0, {MAX_INTERVAL_MS}]")
        self._transport = transport
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
        if size >= FULL_READ_BYTES:
            return
        now = self._clock.seconds()
        if now < self._awake_until:
            return
        pause_s = self._max_s
        elapsed = now - self._since
        if elapsed > 0 and self._batch_bytes * pause_s > BATCH_BYTES * elapsed:
            pause_s = BATCH_BYTES * elapsed / self._batch_bytes  # BATCH_BYTES at this rate
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
