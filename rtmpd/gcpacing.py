"""Python's full garbage collections, paced by connections that close.

A full collection looks at every container object the process holds: at
12 000 viewers that is ~650 000 objects and 0.3-0.7 s during which no viewer
gets a byte and no join is answered. CPython runs one whenever the objects
that survived younger collections reach a quarter of the old ones, so a join
storm from 0 to 12 000 viewers sets off about eight, back to back as the
audience grows, and new viewers wait behind them (``benchmarks/``: first
keyframe and latency at 12 000 viewers).

Joins make no garbage that only a full collection frees; leaving does (a
closed connection's protocol, transport and request refer to each other).
So automatic full collections are turned off and :class:`PacedCollection`
runs one when the connections closed since the last reach a quarter of those
open (CPython's own proportion, counted in what makes the garbage), and at
least every :data:`FULL_COLLECTION_MAX_INTERVAL_S`. Young generations are
collected as usual.
"""

from __future__ import annotations

import gc
import time

from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from rtmpd.admission import Admission

log = Logger()

#: How often the closed connections are counted.
CHECK_INTERVAL_S = 1.0
#: A full collection once the connections closed since the last one reach
#: this share of those open (CPython's rule for its own old generation)...
CLOSED_SHARE = 0.25
#: ... and at least this many: a few closes on a small server do not make
#: enough garbage to be worth a look at everything.
MIN_CLOSED = 200
#: Whatever closes, a full collection at least this often (other garbage
#: with cycles: finished requests on the API port, recorders' jobs).
FULL_COLLECTION_MAX_INTERVAL_S = 600.0
#: The third generation's threshold with automatic full collections off:
#: the count of second-generation collections never gets there.
NEVER = 2**31 - 1
#: A full collection that takes longer than this is logged.
SLOW_COLLECTION_S = 0.05


class PacedCollection(service.Service):
    """Runs the process's full garbage collections (see the module's text)."""

    name = "paced-gc"

    def __init__(self, admission: Admission, clock: IReactorTime) -> None:
        self.admission = admission
        self.clock = clock
        self._closed_at_last = 0
        self._last_at = 0.0
        self._thresholds: tuple[int, int, int] | None = None
        self._call: IDelayedCall | None = None
        #: Full collections run, for tests and the log.
        self.collections = 0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        young, middle, _ = self._thresholds = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)
        self._closed_at_last = self.admission.closed_connections
        self._last_at = self.clock.seconds()
        self._call = self.clock.callLater(CHECK_INTERVAL_S, self.check)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None

    def due(self) -> bool:
        """Whether enough connections closed (or time passed) for a full collection."""
        closed = self.admission.closed_connections - self._closed_at_last
        if closed >= max(MIN_CLOSED, CLOSED_SHARE * len(self.admission.clients)):
            return True
        return self.clock.seconds() - self._last_at >= FULL_COLLECTION_MAX_INTERVAL_S

    def check(self) -> None:
        """Run a full collection if one is due; look again in a while."""
        self._call = self.clock.callLater(CHECK_INTERVAL_S, self.check)
        if not self.due():
            return
        self._closed_at_last = self.admission.closed_connections
        self._last_at = self.clock.seconds()
        started = time.perf_counter()
        found = gc.collect()
        self.collections += 1
        spent = time.perf_counter() - started
        if spent >= SLOW_COLLECTION_S:
            log.info(
                "full garbage collection: {found} objects freed in {ms:.0f} ms "
                "({open} connections open)",
                found=found, ms=spent * 1000, open=len(self.admission.clients),
            )
