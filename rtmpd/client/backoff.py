"""Reconnect delays, one rule for every client that retries: ``rtmpd-push``
(:mod:`rtmpd.client.pacing`), the pulls of flvgateway and ``--pull``
(:mod:`rtmpd.services.upstream`) and the forwards
(:mod:`rtmpd.services.forward`).

The first retry waits :data:`BACKOFF_INITIAL_S`; each failure doubles the
wait up to :data:`BACKOFF_MAX_S`; a session that ran long enough to count as
good (the caller's ``stable_s``) starts the doubling over."""

from __future__ import annotations

__all__ = ["BACKOFF_INITIAL_S", "BACKOFF_MAX_S", "Backoff"]

#: First wait before reconnecting, s: short, since most drops are one-offs.
BACKOFF_INITIAL_S = 0.5
#: The longest wait between attempts, s: a peer that comes back is found
#: within this, and a peer that refuses is asked no more often.
BACKOFF_MAX_S = 10.0


class Backoff:
    """Exponential reconnect delays in seconds."""

    def __init__(self, *, stable_s: float, initial_s: float = BACKOFF_INITIAL_S,
                 max_s: float = BACKOFF_MAX_S) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"backoff from {initial_s} s to {max_s} s")
        #: A session that lasted this long starts the doubling over.
        self.stable_s = stable_s
        self.initial_s = initial_s
        self.max_s = max_s
        #: The wait the next failure gets.
        self.current_s = initial_s

    def session_ended(self, ran_s: float | None) -> None:
        """A session ended after ``ran_s`` s of running (None: it never got going)."""
        if ran_s is not None and ran_s >= self.stable_s:
            self.current_s = self.initial_s

    def next_delay(self) -> float:
        """The wait before the next attempt; the one after it doubles."""
        delay = self.current_s
        self.current_s = min(self.current_s * 2, self.max_s)
        return delay
