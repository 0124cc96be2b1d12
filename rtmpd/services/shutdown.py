"""Shutdown in the order that loses no recorded media: publishers first.

``twistd`` stops the services of a ``MultiService`` in reverse order, every
``stopService`` called in the same reactor turn, and then keeps the reactor
running until each returned Deferred has fired. The recorders finalise in
their ``stopService``; if the publishers were still connected then, every
frame they sent while the files were being finalised (an fMP4 merge can take
seconds) reached the streams and their viewers but no recording.

:class:`PublishersFirst` is added to the service tree after the recorders,
so it stops before them: it tells every publisher the server is going away
and closes it (``Admission.kick_publisher``: RTMP ``NetStream.Unpublish.Success``,
HTTP and WebSocket closes), which ends each stream, so each recorder
finalises with every frame that arrived up to that moment. What was still on
the way in the sockets is not read: a publisher's connection stops reading
when it is closed. A publish that starts after this (a connection that was
still in its handshake) is stopped at once the same way.

**Reconnect (Enhanced RTMP v2).** An RTMP publisher whose connect announced
``capsEx`` Reconnect is not cut: it is sent ``onStatus
NetConnection.Connect.ReconnectRequest`` (with ``reconnect_url`` as its
``tcUrl`` when one is set, else it reconnects to the URL it used), goes on
publishing here up to its next keyframe, then connects again and leaves,
so its audience elsewhere sees no gap. Meanwhile it keeps the stream live
here for the viewers still on this server; the recorders have finalised
(they stop in the same turn), and the server it moves to records the rest.
The listening ports close at once, so the reconnect reaches whatever else
serves the URL: another ``--workers`` process, a server behind the same
load balancer, or the new process of a restart once it listens (the
encoder retries). One still here after :data:`RECONNECT_GRACE_S` is
stopped like the others.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from rtmpd.admission import Action, Admission, AdmissionRequest, Publisher
from rtmpd.interfaces import IAdmissionListener

log = Logger()

#: What publishers (and their viewers, and the done hooks) are told.
SHUTDOWN_REASON = "the server is shutting down"

#: Seconds a publisher asked to reconnect has to leave before it is
#: stopped: it moves at its next keyframe, and encoders send one every
#: 2 s (OBS's default) to 10 s; a stop (systemd's TimeoutStopSec) allows more.
RECONNECT_GRACE_S = 12.0
#: How often shutdown looks whether the publishers asked to reconnect left.
RECONNECT_POLL_S = 0.25
#: The ``description`` of the reconnect request.
RECONNECT_DESCRIPTION = "The server is shutting down; please reconnect."


@implementer(IAdmissionListener)
class PublishersFirst(service.Service):
    """Stops every publisher when the server stops, before the recorders
    (add it to the parent after them)."""

    name = "stop-publishers"

    def __init__(
        self, admission: Admission, *, reconnect_url: str | None = None,
        reconnect_grace_s: float = RECONNECT_GRACE_S,
    ) -> None:
        self.admission = admission
        self.stopping = False
        #: The ``tcUrl`` publishers are asked to reconnect to (None: their own).
        self.reconnect_url = reconnect_url
        self.reconnect_grace_s = reconnect_grace_s
        admission.add_listener(self)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        self.stopping = True
        live = list(self.admission.publishers.items())
        moving: dict[tuple[str, str], Publisher] = {}
        for key, publisher in live:
            ask = getattr(publisher.source, "request_reconnect", None)
            if ask is not None and ask(RECONNECT_DESCRIPTION, self.reconnect_url):
                moving[key] = publisher
        stopped = [key for key, _ in live if key not in moving]
        if stopped:
            log.info("shutting down: stopping {count} publisher(s) before the recorders "
                     "finalise", count=len(stopped))
        for app, name in stopped:
            self.admission.kick_publisher(app, name, SHUTDOWN_REASON)
        if not moving:
            return None
        log.info("shutting down: asked {count} publisher(s) to reconnect ({paths}); they "
                 "have {grace:g} s to move", count=len(moving),
                 paths=", ".join(publisher.request.path for publisher in moving.values()),
                 grace=self.reconnect_grace_s)
        done: defer.Deferred[None] = defer.Deferred()
        self._wait_for_moves(moving, self.admission.clock.seconds() + self.reconnect_grace_s,
                             done)
        return done

    def _wait_for_moves(
        self, moving: dict[tuple[str, str], Publisher], deadline: float,
        done: defer.Deferred[None],
    ) -> None:
        """Fire ``done`` once every publisher asked to reconnect has left,
        or at ``deadline``, when those still here are stopped."""
        publishers = self.admission.publishers
        still = {key: p for key, p in moving.items() if publishers.get(key) is p}
        if still and self.admission.clock.seconds() < deadline:
            self.admission.clock.callLater(
                RECONNECT_POLL_S, self._wait_for_moves, still, deadline, done
            )
            return
        for app, name in still:
            self.admission.kick_publisher(app, name, f"{SHUTDOWN_REASON} (it did not "
                                          "reconnect in time)")
        done.callback(None)

    # -- IAdmissionListener ------------------------------------------------------

    def refused(self, request: object, refusal: object, message: str) -> None:
        pass

    def started(self, request: object) -> None:
        """A publish admitted during shutdown is stopped right after its
        adapter has taken the answer (on the next reactor turn)."""
        if (
            self.stopping
            and isinstance(request, AdmissionRequest)
            and request.action is Action.PUBLISH
        ):
            self.admission.clock.callLater(
                0, self.admission.kick_publisher, request.app, request.stream, SHUTDOWN_REASON
            )

    def ended(self, request: object, why: str) -> None:
        pass
