"""The pacing core of ``rtmpd-push``: tags leave in real time, over sessions that may drop.

Tag *n* leaves when the reactor clock reaches ``anchor + (dts_n - dts_anchor) / speed``;
all tags due go out in one write. ``--loop`` runs the file again with timestamps continued
(offset by the end of the last tag). A lost connection is retried with exponential backoff
(:data:`BACKOFF_INITIAL_S` doubling to :data:`BACKOFF_MAX_S`; back to the start after a run
of :data:`STABLE_RUN_S`); the new session gets the metadata and sequence headers, then the
tags again from the last keyframe sent (burst up to where it was, then paced), timestamps
unchanged. A full socket buffer holds the tags back (the session reports it); pacing goes
on from where it stopped, without a burst to make up the time. :meth:`Pusher.stop`
(SIGINT / SIGTERM) ends the stream the way the session's protocol expects.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from rtmpd.client.backoff import BACKOFF_INITIAL_S, BACKOFF_MAX_S, Backoff
from rtmpd.client.session import Connector, Session, Tag
from rtmpd.client.sources import PushSource
from rtmpd.client.target import UsageError
from rtmpd.codec.flv import TAG_SCRIPT

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "EXIT_DISCONNECTED",
    "EXIT_INPUT",
    "EXIT_OK",
    "EXIT_REFUSED",
    "MAX_SPEED",
    "MIN_SPEED",
    "STABLE_RUN_S",
    "Pusher",
]

EXIT_OK = 0
EXIT_DISCONNECTED = 1
EXIT_INPUT = 2
EXIT_REFUSED = 3

MIN_SPEED = 0.1
MAX_SPEED = 10.0
#: A session that published this long was a successful run: the backoff starts over.
#: (An HTTP publish looks accepted as soon as TCP connects; a refusal comes right after.)
STABLE_RUN_S = 2.0


class Pusher:
    """Paces a :class:`PushSource` over sessions made by ``connect`` (see the module doc).

    ``clock`` is the reactor (or a ``task.Clock`` in tests). ``on_exit(status, message)``
    is called once, when the push is over.
    """

    def __init__(
        self,
        source: PushSource,
        connect: Connector,
        clock: IReactorTime,
        on_exit: Callable[[int, str], None],
        *,
        speed: float = 1.0,
        loop: bool = False,
        start_ms: int = 0,
        reconnect: bool = True,
    ) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise UsageError(f"speed {speed} is outside {MIN_SPEED}..{MAX_SPEED}")
        self._source = source
        self._connect_fn = connect
        self._clock = clock
        self._on_exit = on_exit
        self._speed = speed
        self._loop_enabled = loop
        self._reconnect = reconnect
        self._tags = source.tags
        self._period = source.period_ms
        # Next tag to send: (index, pass through the file).
        self._index = source.keyframe_index(start_ms)
        self._pass = 0
        # Where a new session starts: the last keyframe sent.
        self._resume = (self._index, self._pass)
        self._session: Session | None = None
        self._ready_at = 0.0
        self._anchor_wall = 0.0
        self._anchor_ts = 0.0
        self._timer: IDelayedCall | None = None
        self._paused = False
        self._sent_headers: dict[int, object] = {}
        self._backoff = Backoff(stable_s=STABLE_RUN_S)
        self._finishing = False
        self._done = False
        #: Media bytes handed to sessions (tag bodies).
        self.bytes_sent = 0
        #: Connection attempts after the first.
        self.reconnects = 0
        #: File position of the last tag sent, ms from the file's start.
        self.position_ms = max(0, self._tags[self._index].dts_ms - source.start_ms)
        #: Called with one line of news (reconnecting, refused); set by the CLI.
        self.notify: Callable[[str], None] = lambda line: None

    @property
    def duration_ms(self) -> int:
        return self._source.duration_ms

    @property
    def backoff_s(self) -> float:
        """The wait before the next reconnect attempt."""
        return self._backoff.current_s

    @property
    def done(self) -> bool:
        return self._done

    def start(self) -> None:
        """Make the first connection attempt."""
        self._connect_fn(self)

    def stop(self) -> None:
        """End the push cleanly (SIGINT): finish the session, then exit 0."""
        if self._done:
            return
        if self._finishing:  # asked twice: do not wait any longer
            if self._session is not None:
                self._session.abort()
            self._exit(EXIT_OK, "")
            return
        self._finish()

    # -- SessionListener ------------------------------------------------------------

    def session_ready(self, session: Session) -> None:
        if self._done or self._finishing:
            session.abort()
            return
        self._session = session
        self._ready_at = self._clock.seconds()
        self._paused = False
        # The burst up to where we were, then paced from there.
        self._anchor_ts = self._timestamp(self._index, self._pass)
        self._anchor_wall = self._clock.seconds()
        self._index, self._pass = self._resume
        start_ts = self._timestamp(self._index, self._pass)
        source = self._source
        first: list[Tag] = [(TAG_SCRIPT, 0, source.metadata)]
        self._sent_headers = {}
        for header in source.headers_at(self._index):
            self._sent_headers[header.tag_type] = header
            first.append((header.tag_type, start_ts, source.body(header)))
        self._send(first)
        self._pump()

    def session_lost(self, session: Session | None, reason: str, permanent: bool) -> None:
        if self._done:
            return
        current = self._session
        if session is not None and current is not None and session is not current:
            return  # a stale attempt
        self._cancel_timer()
        self._session = None
        if self._finishing:
            return  # the finish Deferred decides
        if permanent:
            self._exit(EXIT_REFUSED, f"publish refused: {reason}")
            return
        if not self._reconnect:
            self._exit(EXIT_DISCONNECTED, f"disconnected: {reason}")
            return
        if current is not None:
            self._backoff.session_ended(self._clock.seconds() - self._ready_at)
        if not self._source.has_video:
            self._resume = (self._index, self._pass)
        delay = self._backoff.next_delay()
        self.notify(f"{reason}; reconnecting in {delay:g} s")
        self._timer = self._clock.callLater(delay, self._retry)

    def session_writable(self, writable: bool) -> None:
        if self._done or self._session is None or writable != self._paused:
            return
        if not writable:
            self._paused = True
            self._cancel_timer()
            return
        self._paused = False
        # Pace on from here: the time spent blocked is not made up in a burst.
        self._anchor_ts = self._timestamp(self._index, self._pass)
        self._anchor_wall = self._clock.seconds()
        self._pump()

    # -- internals ------------------------------------------------------------------

    def _retry(self) -> None:
        self._timer = None
        self.reconnects += 1
        self._connect_fn(self)

    def _timestamp(self, index: int, pass_: int) -> int:
        if index >= len(self._tags):
            index, pass_ = 0, pass_ + 1
        return self._tags[index].dts_ms + pass_ * self._period

    def _send(self, tags: list[Tag]) -> None:
        assert self._session is not None
        self._session.send_tags(tags)
        self.bytes_sent += sum(len(body) for _, _, body in tags)

    def _pump(self) -> None:
        self._timer = None
        if self._session is None or self._paused or self._done or self._finishing:
            return
        tags = self._tags
        count = len(tags)
        now = self._clock.seconds()
        # 1 µs of slack so a timer firing at its exact due time is not a float off.
        due = self._anchor_ts + (now - self._anchor_wall) * 1000.0 * self._speed + 1e-3
        batch: list[Tag] = []
        body = self._source.body
        while True:
            if self._index >= count:
                if not self._loop_enabled:
                    break
                self._index, self._pass = 0, self._pass + 1
            tag = tags[self._index]
            ts = tag.dts_ms + self._pass * self._period
            if ts > due:
                break
            if tag.sequence_header:
                if self._sent_headers.get(tag.tag_type) is tag:
                    self._index += 1
                    continue
                self._sent_headers[tag.tag_type] = tag
            if tag.keyframe:
                self._resume = (self._index, self._pass)
            batch.append((tag.tag_type, ts, body(tag)))
            self.position_ms = tag.dts_ms - self._source.start_ms
            self._index += 1
        if batch:
            self._send(batch)
        if self._index >= count and not self._loop_enabled:
            self._finish()
            return
        next_ts = self._timestamp(self._index, self._pass)
        delay = (next_ts - self._anchor_ts) / (1000.0 * self._speed) - (now - self._anchor_wall)
        self._timer = self._clock.callLater(max(0.0, delay), self._pump)

    def _finish(self) -> None:
        self._cancel_timer()
        self._finishing = True
        session = self._session
        if session is None:
            self._exit(EXIT_OK, "")
            return
        d = session.finish()
        d.addBoth(lambda _: self._exit(EXIT_OK, ""))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _exit(self, status: int, message: str) -> None:
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        self._on_exit(status, message)
