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
"""

from __future__ import annotations

from twisted.application import service
from twisted.logger import Logger
from zope.interface import implementer

from rtmpd.admission import Action, Admission, AdmissionRequest
from rtmpd.interfaces import IAdmissionListener

log = Logger()

#: What publishers (and their viewers, and the done hooks) are told.
SHUTDOWN_REASON = "the server is shutting down"


@implementer(IAdmissionListener)
class PublishersFirst(service.Service):
    """Stops every publisher when the server stops, before the recorders
    (add it to the parent after them)."""

    name = "stop-publishers"

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.stopping = False
        admission.add_listener(self)

    def stopService(self) -> None:
        super().stopService()
        self.stopping = True
        live = list(self.admission.publishers)
        if live:
            log.info("shutting down: stopping {count} publisher(s) before the recorders "
                     "finalise", count=len(live))
        for app, name in live:
            self.admission.kick_publisher(app, name, SHUTDOWN_REASON)

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
