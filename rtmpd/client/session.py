"""What the pacing core and the three publish connectors say to each other.

A connector opens one :class:`Session` per attempt and reports to a
:class:`SessionListener` (the :class:`~rtmpd.client.pacing.Pusher`): ready to take
tags, lost (and whether retrying can help), the socket buffer full or drained.
:class:`SessionBase` is what the RTMP, HTTP-FLV and WS-FLV sessions share: the setup
and finish timeouts, the finish Deferred and backpressure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd import __version__
from rtmpd.client.target import PushTarget
from rtmpd.client.tls import certificate_failure

__all__ = [
    "FINISH_TIMEOUT_S",
    "SETUP_TIMEOUT_S",
    "USER_AGENT",
    "Connector",
    "Session",
    "SessionBase",
    "SessionListener",
    "Tag",
]

#: How long connecting + publishing may take before the attempt is abandoned.
SETUP_TIMEOUT_S = 10.0
#: How long a clean end (FCUnpublish, last chunk, close handshake) may take.
FINISH_TIMEOUT_S = 5.0
#: What the HTTP and WebSocket sessions call themselves.
USER_AGENT = f"rtmpd-push/{__version__.public()}"

#: One tag to send: (FLV tag type, timestamp in ms, body).
Tag = tuple[int, int, bytes]


class Session(Protocol):
    """One connection publishing the stream."""

    def send_tags(self, tags: Sequence[Tag]) -> None:
        """Send tags (metadata, headers, frames) in order, in as few writes as possible."""

    def finish(self) -> Deferred[None]:
        """End the stream cleanly; fires when the connection is closed."""

    def abort(self) -> None:
        """Drop the connection at once (no callbacks follow)."""


class SessionListener(Protocol):
    """What a session reports to (the :class:`~rtmpd.client.pacing.Pusher`)."""

    def session_ready(self, session: Session) -> None:
        """Publishing was accepted: tags may be sent."""

    def session_lost(self, session: Session | None, reason: str, permanent: bool) -> None:
        """The attempt failed or the connection dropped; ``permanent``: do not retry."""

    def session_writable(self, writable: bool) -> None:
        """The socket buffer filled up (False) or drained (True)."""


#: Starts one connection attempt reporting to the listener.
Connector = Callable[[SessionListener], None]


def _no_delay(transport: Any) -> None:
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


@implementer(IPushProducer)
class SessionBase:
    """Setup and finish timeouts, the finish Deferred and backpressure, for all three.

    A subclass is a protocol on the connection's transport (``_transport``), or
    overrides ``_drop`` and ``_watch_writes`` (the HTTP session, whose transport
    belongs to twisted.web's HTTP client).
    """

    def __init__(self, target: PushTarget, listener: SessionListener, clock: IReactorTime):
        self.target = target
        self.listener = listener
        self.clock = clock
        self.ready = False
        self.finishing = False
        self.aborted = False
        self.closed = False
        self.reason = ""
        self.permanent = False
        self.finished: Deferred[None] = Deferred()
        self._timer: IDelayedCall | None = None

    # subclasses provide these
    def _transport(self) -> Any:
        raise NotImplementedError

    def send_tags(self, tags: Sequence[Tag]) -> None:
        raise NotImplementedError

    def finish(self) -> Deferred[None]:
        raise NotImplementedError

    def _drop(self) -> None:
        """Cut the connection at once."""
        transport = self._transport()
        if transport is not None:
            transport.abortConnection()

    def _watch_writes(self) -> None:
        """Be paused and resumed as the socket buffer fills and drains."""
        self._transport().registerProducer(self, True)

    def _started(self) -> None:
        _no_delay(self._transport())
        self._timer = self.clock.callLater(SETUP_TIMEOUT_S, self._timed_out, "publish setup")

    def _mark_ready(self) -> None:
        if self.ready or self.finishing or self.aborted:
            return
        self.ready = True
        self._cancel_timer()
        self._watch_writes()
        self.listener.session_ready(self)

    def _fail(self, reason: str, *, permanent: bool = False) -> None:
        if not self.reason:
            self.reason, self.permanent = reason, permanent

    def _timed_out(self, what: str) -> None:
        self._timer = None
        limit = FINISH_TIMEOUT_S if what == "finish" else SETUP_TIMEOUT_S
        self._fail(f"{what} took over {limit:g} s")
        self._drop()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _begin_finish(self) -> None:
        self.finishing = True
        self._cancel_timer()
        self._timer = self.clock.callLater(FINISH_TIMEOUT_S, self._timed_out, "finish")

    def _lost(self, default_reason: str, failure: Failure | None = None) -> None:
        """The connection is closed: fire ``finished``, or tell the listener why.

        ``failure`` is the connection's end: a server certificate that did not
        verify is the reason whatever the protocol made of it, and final (the
        same server would present the same certificate)."""
        if self.closed:
            return
        tls = certificate_failure(failure) if failure is not None else None
        if tls is not None:
            self.reason, self.permanent = tls, True
        self.closed = True
        self._cancel_timer()
        if self.finishing or self.aborted:
            if not self.finished.called:
                self.finished.callback(None)
            return
        self.listener.session_lost(self, self.reason or default_reason, self.permanent)

    def abort(self) -> None:
        self.aborted = True
        self._cancel_timer()
        self._drop()

    # IPushProducer
    def pauseProducing(self) -> None:
        if self.ready and not self.finishing:
            self.listener.session_writable(False)

    def resumeProducing(self) -> None:
        if self.ready and not self.finishing:
            self.listener.session_writable(True)

    def stopProducing(self) -> None:
        pass
