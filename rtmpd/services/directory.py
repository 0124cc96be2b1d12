"""A server's streams in a stream directory (``ARCHITECTURE.md`` §8, §9):
the glue between admission and an :class:`rtmpd.interfaces.IStreamDirectory`.

:class:`DirectoryClaims` is the last authorizer and a listener of the one
admission path, so whatever the protocol:

* a publish claims its name for this server's location before it is
  answered; a name the directory gives to another location is refused as
  ``BUSY``, with the same wire answers as a name busy here. Names are
  validated and local limits checked before the directory is asked;
* a publish that ends (or is refused after its claim) releases the name;
  a takeover (``--takeover``) keeps it, the stream goes on here. With
  ``--workers``, every worker claims its streams at the box's one location,
  after which the box's own directory (the next authorizer) decides between
  the workers;
* with ``--workers`` (``shared``), a stream that starts claims its name
  once more: the box's directory let it start only after the stream's last
  holder on another worker had ended, and that worker's release of the
  box's location in this directory, sent before, must not leave the new
  stream unclaimed until the next refresh;
* the names of the streams live here are claimed again every
  ``refresh_s``: that is what keeps them in a directory whose entries
  expire (Redis), and what claims, once the directory is back, a stream
  admitted while it was not answering;
* stopping the service (a clean shutdown) releases every name at once,
  before the publishers have left, so one asked to reconnect elsewhere
  (E-RTMP reconnect, :mod:`rtmpd.services.shutdown`) finds its name free.

**When the directory does not answer** (Redis down, a timeout), a publish
is *allowed* with a warning: the stream is live here and its local viewers
and recorders do not depend on the directory; only edges cannot find it
until the directory is back and the next refresh claims it. Refusing every
publish on every origin because a lookup service is down would turn an
outage of the directory into an outage of the whole service. The price is
that two origins may then take the same name; a refresh that finds the name
given to another location says so in the log (once per stream) and keeps
trying, and the stream here goes on for its viewers.

Streams this server publishes itself (a gateway's or ``--pull``'s upstream,
admitted as ``internal``) are never claimed: they are copies, and the
directory names where the publisher is. A play never touches the directory
here; finding another server's stream is the upstream's business
(:class:`rtmpd.services.upstream.Upstream` with a ``directory``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd.admission import ALLOW, Action, Admission, AdmissionRequest, Decision, Refusal, deny
from rtmpd.interfaces import IAdmissionListener, IAuthorizer, IStreamDirectory

log = Logger()

#: Seconds between two claims of the names live here. A directory whose
#: entries expire needs at least two refreshes per lifetime (one may be
#: lost); the Redis directory's default lifetime is three times this.
REFRESH_S = 5.0
#: Seconds a clean shutdown waits for the directory to take the releases
#: (a directory that does not answer lets them expire instead).
RELEASE_TIMEOUT_S = 2.0

Key = tuple[str, str]


@implementer(IAuthorizer, IAdmissionListener)
class DirectoryClaims(service.Service):
    """Claims, refreshes and releases the names of the streams published
    here, at ``location`` (the base URL others pull them from), in
    ``directory``. Made after the admission's other authorizers, it adds
    itself as the last one (a name is claimed only for a publish the others
    allowed) and as a listener."""

    name = "directory-claims"

    def __init__(
        self, admission: Admission, directory: IStreamDirectory, location: str,
        clock: IReactorTime, *, refresh_s: float = REFRESH_S,
        release_timeout_s: float = RELEASE_TIMEOUT_S, shared: bool = False,
        elsewhere: str = "on another server",
    ) -> None:
        """``shared``: other processes (the workers of this box) claim at
        this same ``location`` too. ``elsewhere`` says, in a refusal, where
        the holder is (the box's own directory: on another worker)."""
        self.admission = admission
        self.directory = directory
        self.location = location
        self.clock = clock
        self.refresh_s = refresh_s
        self.release_timeout_s = release_timeout_s
        self.shared = shared
        self.elsewhere = elsewhere
        #: Names of streams live here, published through admission.
        self.held: set[Key] = set()
        #: Publishes allowed here and not started or refused yet.
        self._pending: Counter[AdmissionRequest] = Counter()
        #: Names the directory gives to another location (warned once each).
        self._conflicts: set[Key] = set()
        #: Whether the last refresh failed (warned once per outage).
        self._failing = False
        #: Releases not answered yet (a clean shutdown waits for them).
        self._releases: set[defer.Deferred[Any]] = set()
        self._loop: task.LoopingCall | None = None
        self.stopping = False
        admission.authorizers.append(self)
        admission.add_listener(self)

    # -- IAuthorizer: a publish claims its name ------------------------------

    def authorize(self, request: object) -> Decision | defer.Deferred[Decision]:
        assert isinstance(request, AdmissionRequest)
        if request.action is not Action.PUBLISH or self.stopping:
            # Shutting down: PublishersFirst stops the publish at once.
            return ALLOW
        d = defer.maybeDeferred(
            self.directory.claim, request.app, request.stream, self.location)
        return d.addCallbacks(self._claimed, self._claim_failed,
                              callbackArgs=(request,), errbackArgs=(request,))

    def _claimed(self, mine: object, request: AdmissionRequest) -> Decision:
        if not mine:
            return deny(f"stream {request.path} already has a publisher {self.elsewhere} "
                        "(stream directory)", Refusal.BUSY)
        self._pending[request] += 1
        return ALLOW

    def _claim_failed(self, failure: Failure, request: AdmissionRequest) -> Decision:
        log.warn("stream directory did not answer ({error}): publish {path} by {peer} is "
                 "allowed here unclaimed; edges find it once the directory is back",
                 error=failure.getErrorMessage(), path=request.path, peer=request.peer)
        self._pending[request] += 1
        return ALLOW

    # -- IAdmissionListener: what became of it ---------------------------------

    def refused(self, request: object, refusal: object, message: str) -> None:
        if not isinstance(request, AdmissionRequest) or not self._take_pending(request):
            return
        key = (request.app, request.stream)
        # Refused after the claim (the client left, an authorizer after this
        # one said no): the name is free again unless a stream here has it.
        # Busy after the claim means that another publisher at this same
        # location has it (another worker of this box, --workers): its
        # claim, its release.
        if refusal is Refusal.BUSY:
            return
        if key not in self.held and not self._pending_for(key):
            self._release(key)

    def started(self, request: object) -> None:
        if isinstance(request, AdmissionRequest) and self._take_pending(request):
            key = (request.app, request.stream)
            self.held.add(key)
            if self.shared:
                # A sibling's release of this location may have reached the
                # directory after this publish's claim (see the module's
                # docstring); a failure is the next refresh's to report.
                self._refresh_one(key).addErrback(lambda _: None)

    def ended(self, request: object, why: str) -> None:
        if not isinstance(request, AdmissionRequest) or request.action is not Action.PUBLISH:
            return
        key = (request.app, request.stream)
        if key not in self.held or key in self.admission.registry.streams:
            return  # not ours, or taken over: the stream goes on here
        self.held.discard(key)
        self._conflicts.discard(key)
        if not self._pending_for(key):
            self._release(key)

    def _take_pending(self, request: AdmissionRequest) -> bool:
        count = self._pending.get(request, 0)
        if not count:
            return False
        if count == 1:
            del self._pending[request]
        else:
            self._pending[request] = count - 1
        return True

    def _pending_for(self, key: Key) -> bool:
        return any((r.app, r.stream) == key for r in self._pending)

    def _release(self, key: Key) -> None:
        d = defer.maybeDeferred(self.directory.release, key[0], key[1], self.location)
        self._releases.add(d)

        def done(result: object) -> None:
            self._releases.discard(d)
            if isinstance(result, Failure):
                log.warn("stream directory: release of {path} failed ({error}); the entry "
                         "expires by itself", path=f"{key[0]}/{key[1]}",
                         error=result.getErrorMessage())

        d.addBoth(done)

    # -- refresh ----------------------------------------------------------------

    def refresh(self) -> defer.Deferred[None]:
        """Claim every name live here again (fires when all are answered)."""
        claims = [self._refresh_one(key) for key in sorted(self.held)]
        d: defer.Deferred[Any] = defer.gatherResults(claims, consumeErrors=True)
        d.addCallback(self._refreshed)
        d.addErrback(self._refresh_failed, len(claims))
        return d

    def _refresh_one(self, key: Key) -> defer.Deferred[None]:
        d = defer.maybeDeferred(self.directory.claim, key[0], key[1], self.location)
        return d.addCallback(self._refreshed_one, key)

    def _refreshed_one(self, mine: object, key: Key) -> None:
        path = f"{key[0]}/{key[1]}"
        if key not in self.held:
            # Ended while the claim was on its way: give the name back.
            if not mine:
                return
            self._release(key)
        elif mine:
            if key in self._conflicts:
                self._conflicts.discard(key)
                log.info("stream directory: {path} is claimed for this server again",
                         path=path)
        elif key not in self._conflicts:
            self._conflicts.add(key)
            log.warn("stream directory: {path} is live here but claimed by another server "
                     "(published there while the directory was not answering?); edges "
                     "play that one, viewers here go on with this one", path=path)

    def _refreshed(self, _: object) -> None:
        if self._failing:
            self._failing = False
            log.info("stream directory: the names of {count} live stream(s) are claimed "
                     "again", count=len(self.held))

    def _refresh_failed(self, failure: Failure, count: int) -> None:
        if not self._failing:
            self._failing = True
            error = failure.value
            if isinstance(error, defer.FirstError):
                error = error.subFailure.value
            log.warn("stream directory: could not refresh the claims of {count} live "
                     "stream(s) ({error}); their entries expire unless it answers again",
                     count=count, error=str(error) or type(error).__name__)

    # -- service ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        loop = self._loop = task.LoopingCall(self.refresh)
        loop.clock = self.clock
        loop.start(self.refresh_s, now=False)

    def stopService(self) -> defer.Deferred[None]:
        """Release every name now and wait (at most ``release_timeout_s``)
        for the directory to take the releases."""
        super().stopService()
        self.stopping = True
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        keys = self.held | {(r.app, r.stream) for r in self._pending}
        self.held.clear()
        self._pending.clear()
        for key in sorted(keys):
            self._release(key)
        if keys:
            log.info("shutting down: releasing {count} name(s) in the stream directory",
                     count=len(keys))
        d: defer.Deferred[Any] = defer.DeferredList(list(self._releases))
        d.addTimeout(self.release_timeout_s, self.clock)
        d.addErrback(lambda _: None)
        return d.addCallback(lambda _: None)
