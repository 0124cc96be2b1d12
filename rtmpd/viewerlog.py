"""Viewer start and stop lines, bounded per second.

One line when a viewer starts and one when it stops is what an operator
wants to read, until 2 000 viewers join in a second: Twisted's logger costs
about 70 µs a line here, so a join storm would spend a third of the core
formatting lines nobody reads one by one. Past :data:`VIEWER_LINES_PER_S`
lines in a second the rest are counted instead, and one summary line per
second says how many of each were left out, per stream. Publishes, refusals,
drops and errors are not viewer lines: they are always logged.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger(namespace="rtmpd")

#: Viewer start/stop lines written per second before they are summarised.
VIEWER_LINES_PER_S = 50


class ViewerLog:
    """Writes viewer lines up to a rate, then summarises what it left out."""

    def __init__(self, clock: IReactorTime, lines_per_s: int = VIEWER_LINES_PER_S) -> None:
        self.clock = clock
        self.lines_per_s = lines_per_s
        self._second = -1
        self._written = 0
        #: (what, path) → lines left out since the last summary.
        self._left_out: Counter[tuple[str, str]] = Counter()
        self._summary_call: IDelayedCall | None = None

    def line(self, logger: Logger, what: str, path: str, fmt: str, **fields: Any) -> None:
        """Log ``fmt`` (a Twisted format string) with ``logger`` for a viewer
        of ``path``; ``what`` ("play", "stop") names the kind in summaries."""
        second = int(self.clock.seconds())
        if second != self._second:
            self._second = second
            self._written = 0
        if self._written < self.lines_per_s:
            self._written += 1
            logger.info(fmt, path=path, **fields)
            return
        self._left_out[(what, path)] += 1
        if self._summary_call is None:
            self._summary_call = self.clock.callLater(1.0, self.summarise)

    def summarise(self) -> None:
        """Write the summary of lines left out (also called on shutdown)."""
        call = self._summary_call
        self._summary_call = None
        if call is not None and call.active():
            call.cancel()
        if not self._left_out:
            return
        parts = ", ".join(
            f"{count} {what} on {path}" for (what, path), count in sorted(self._left_out.items())
        )
        self._left_out.clear()
        log.info(
            "more than {limit} viewer lines a second; not shown one by one: {parts}",
            limit=self.lines_per_s,
            parts=parts,
        )


class ViewerLogService(service.Service):
    """Writes the summary of left-out viewer lines at shutdown too."""

    def __init__(self, viewer_log: ViewerLog) -> None:
        self.viewer_log = viewer_log

    name = "viewer-log"

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.viewer_log.summarise()
