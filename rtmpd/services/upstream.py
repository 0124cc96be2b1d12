"""A gateway's upstream: streams pulled over HTTP-FLV from an origin (or
another gateway) when the first viewer asks, shared by every viewer through
the same registry, fan-out and GOP cache as published streams
(``ARCHITECTURE.md`` sections 7 and 9).

:class:`Upstream` is admission's origin (:class:`rtmpd.interfaces.IStreamOrigin`):
a play of a stream that is not live here opens one :class:`PulledStream`,
which publishes into the registry through admission once the upstream's
headers and first media frame are in; every other viewer of the stream,
meanwhile or later, shares it. The last viewer leaving closes it after a
linger. When the upstream breaks or ends, the pull reconnects with backoff
while the viewers stay; what they receive stays one FLV stream:

* an rtmpd upstream names its publish (``X-Stream-Id``). Back on the *same*
  publish, the frames the viewers already have (the GOP the upstream replays
  to a new viewer) are skipped and timestamps go on as they were;
* on a *new* publish (or an upstream that does not say), the stream is
  rebased: its first keyframe follows the last frame sent.

Either way codec headers and metadata are passed on only if they changed, and
stamped with the time of the frame they precede, so timestamps only go
forward. With no media at all for ``upstream_timeout`` (admission's publisher
timeout), the stream ends and its viewers are told.

With a stream directory (``flvgateway --directory``, and the relays between
``--workers``) there is no fixed upstream: a stream is looked up in the
directory, pulled from the location that holds it, and looked up again on
each reconnect, so it follows a publisher that moved to another origin and
ends for its viewers as soon as the directory no longer has it (its origin
ended it, or died and its entry expired). Streams not in the directory are
not found; this server's own location is never pulled from.

rtmpd itself uses the same origin for ``--pull APP/STREAM=URL`` (a static
relay in): there each pulled name has its own URL (:class:`PullRule`), over
HTTP-FLV or RTMP play (:class:`~rtmpd.client.rtmp_pull.RtmpPull`, which
names no publish: a reconnect is rebased), names not listed are simply not
found, and with ``--pull-always`` every listed
stream is pulled from the start, with no viewer, and opened again whenever it
ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from zope.interface import implementer

from rtmpd.admission import (
    Action,
    Admission,
    AdmissionRefused,
    AdmissionRequest,
    Publisher,
    Refusal,
)
from rtmpd.client.backoff import BACKOFF_MAX_S, Backoff
from rtmpd.client.pull import FlvPull, PullListener, check_upstream, probe, shown_url, stream_url
from rtmpd.client.rtmp_pull import RtmpPull
from rtmpd.client.target import UsageError, parse_target
from rtmpd.interfaces import (
    IAdmissionListener,
    IStreamDirectory,
    IStreamOrigin,
    IUpstreamSource,
)
from rtmpd.media import Frame, FrameKind
from rtmpd.registry import NAME_PATTERN

if TYPE_CHECKING:
    from rtmpd.client.tls import TrustRoot

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from rtmpd.registry import Stream

log = Logger()

#: Seconds a stream's pull stays open after its last viewer left.
LINGER_S = 5.0
#: Seconds the first viewer waits for the upstream's headers and first frame.
OPEN_TIMEOUT_S = 10.0
#: A connection that delivered media this long resets the backoff.
STABLE_S = 5.0
#: Frames (headers, metadata, media) kept while a new connection has not
#: reached its first keyframe yet; an upstream that sends more without one
#: is broken.
MAX_PENDING_FRAMES = 64

#: States a pulled stream is in.
CONNECTING = "connecting"
STREAMING = "streaming"
RECONNECTING = "reconnecting"
STOPPED = "stopped"
STATES = (CONNECTING, STREAMING, RECONNECTING)


@dataclass(frozen=True, slots=True)
class PullRule:
    """``--pull APP/STREAM=URL``: the local stream ``app/stream`` is pulled
    from ``url`` (an HTTP-FLV play URL of another server)."""

    app: str
    stream: str
    url: str


def parse_pull(value: str) -> PullRule:
    """Parse ``APP/STREAM=URL`` (``--pull``); raises :class:`UsageError`
    with one line saying what is wrong."""
    path, sep, url = value.partition("=")
    path, url = path.strip(), url.strip()
    app, slash, name = path.partition("/")
    if not sep or not slash or not url:
        raise UsageError(
            f"--pull {value!r} is not APP/STREAM=URL "
            "(e.g. live/cam1=http://origin:8501/live/cam1.flv)"
        )
    for what, text in (("app", app), ("stream", name)):
        if not NAME_PATTERN.fullmatch(text):
            raise UsageError(f"--pull {value!r}: {what} {text!r} is not [A-Za-z0-9_-]{{1,128}}")
    if url.lower().startswith(("rtmp://", "rtmps://")):
        try:
            parse_target(url)
        except UsageError as e:
            raise UsageError(f"--pull {path}=...: {e}") from None
        return PullRule(app, name, url)
    try:
        check_upstream(url)
    except ValueError as e:
        raise UsageError(f"--pull {path}=...: {e} (nor rtmp://, rtmps://)") from None
    return PullRule(app, name, url)


#: Ports of upstream URLs that name none.
_DEFAULT_PORTS = {"http": 80, "https": 443, "rtmp": 1935, "rtmps": 443}

#: How an upstream's answer before any body maps to a refusal of the viewer.
_REFUSALS = {404: Refusal.NOT_FOUND, 400: Refusal.BAD_NAME, 401: Refusal.FORBIDDEN,
             403: Refusal.FORBIDDEN}


@implementer(IUpstreamSource)
class PulledStream:
    """One stream pulled from the upstream, across reconnects: the source
    of a Stream in this registry."""

    def __init__(
        self, upstream: Upstream, app: str, name: str, url: bytes | None = None
    ) -> None:
        """``url``: where the stream was found in the upstream's directory
        (looked up again on each reconnect); None: the upstream's own URL
        for it."""
        self.upstream = upstream
        self.app = app
        self.name = name
        #: Whether the stream's location comes from the directory.
        self.located = url is not None
        if url is None:
            url = upstream.url_for(app, name)
        assert url is not None, "only streams the upstream has a URL for are pulled"
        self._set_url(url)
        self.state = CONNECTING
        self.publisher: Publisher | None = None
        self.connects = 0
        self.last_error = ""
        self.bytes_before = 0
        self._pull: FlvPull | RtmpPull | None = None
        self._waiters: list[defer.Deferred[None]] = []
        self._timer: IDelayedCall | None = None
        self._linger: IDelayedCall | None = None
        self._backoff = Backoff(stable_s=STABLE_S)
        self._connected_at = 0.0
        #: When the connections before this one last had data.
        self._data_at: float | None = None
        # What the viewers have: the publish's id, the last input time per
        # track, and the header/metadata payloads last passed on.
        self._stream_id: str | None = None
        self._last_ts: dict[FrameKind, int] = {}
        self._sent: dict[tuple[FrameKind, bool], bytes] = {}
        # This connection: same publish as before?, frames held until its
        # first keyframe, tracks it announced.
        self._resync: bool = False
        self._same_publish = False
        self._pending: list[Frame] = []
        self._has_video_header = False

    def _set_url(self, url: bytes) -> None:
        self.url = url
        parts = urlsplit(url.decode("ascii"))
        self.host = parts.hostname or ""
        self.port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        self.description = f"upstream {self.host}:{self.port}"

    @property
    def path(self) -> str:
        return f"{self.app}/{self.name}"

    @property
    def stream(self) -> Stream | None:
        return None if self.publisher is None else self.publisher.stream

    # -- opening ---------------------------------------------------------------

    def wait(self) -> defer.Deferred[None]:
        """A Deferred that fires once the stream is live here."""
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def start(self) -> None:
        clock = self.upstream.clock
        self._timer = clock.callLater(self.upstream.open_timeout_s, self._open_timed_out)
        self._connect()

    def _connect(self) -> None:
        self.connects += 1
        upstream = self.upstream
        pull = self._pull = upstream.make_pull(self.url, self)
        pull.start()

    def _timer_done(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _open_timed_out(self) -> None:
        self._timer = None
        if self.publisher is None:
            self._fail(Refusal.UNAVAILABLE,
                       f"no media from the upstream within {self.upstream.open_timeout_s:g} s")

    def _fail(self, refusal: Refusal, reason: str) -> None:
        """The first connection did not make the stream live."""
        self.last_error = reason
        log.info("pull {path} from {url}: {reason}", path=self.path,
                 url=shown_url(self.url), reason=reason)
        self._stop(reason)
        waiters, self._waiters = self._waiters, []
        message = f"the upstream {self.host}:{self.port}: {reason}"
        for d in waiters:
            d.errback(AdmissionRefused(refusal, message))

    # -- what the pull reports (PullListener) ------------------------------------

    def pull_answered(self, stream_id: str | None) -> None:
        self._connected_at = self.upstream.clock.seconds()
        self._pending = []
        self._has_video_header = False
        if self.publisher is None:
            self._resync = False
        else:
            self.state = STREAMING
            self._resync = True
            self._same_publish = stream_id is not None and stream_id == self._stream_id
            log.info("pull {path}: the upstream is back ({what})", path=self.path,
                     what="the same publish" if self._same_publish else "a new publish")
        self._stream_id = stream_id

    def pull_frame(self, frame: Frame) -> None:
        if self.state is STOPPED:
            return  # the rest of a read that came with the stop
        if self.publisher is None:
            self._first_frames(frame)
        elif self._resync:
            self._resync_frame(frame)
        else:
            self._push(frame)

    def _first_frames(self, frame: Frame) -> None:
        """Before the stream is live here: hold headers and metadata; the
        first media frame makes it live."""
        pending = self._pending
        pending.append(frame)
        if frame.kind is FrameKind.SCRIPT or frame.sequence_header:
            if len(pending) > MAX_PENDING_FRAMES:
                self._abort_pull(f"{len(pending)} frames without media")
            return
        self._pending = []
        upstream = self.upstream
        request = AdmissionRequest(
            action=Action.PUBLISH, app=self.app, stream=self.name, query="",
            peer_host=self.host, peer_port=self.port, protocol="upstream", client_id=0,
        )
        d = upstream.admission.publish(request, self, internal=True, yields=self.located)
        d.addCallbacks(self._live, self._not_live, callbackArgs=(pending,))

    def _live(self, publisher: Publisher, frames: list[Frame]) -> None:
        self.publisher = publisher
        self.state = STREAMING
        self._timer_done()
        # Metadata goes first and at time 0, as a publisher's would.
        for frame in frames:
            self._push(frame)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        self.upstream.check_idle(self)

    def _not_live(self, failure: Any) -> None:
        failure.trap(AdmissionRefused)
        error: AdmissionRefused = failure.value
        self._fail(error.refusal, error.message)

    def _resync_frame(self, frame: Frame) -> None:
        """A reconnect: hold headers and metadata until the first frame the
        viewers do not have (same publish) or the first keyframe (a new
        one, which rebases the stream), then go on from there."""
        kind = frame.kind
        pending = self._pending
        if kind is FrameKind.SCRIPT or frame.sequence_header:
            if kind is FrameKind.VIDEO:
                self._has_video_header = True
            pending.append(frame)
            if len(pending) > MAX_PENDING_FRAMES:
                self._abort_pull(f"{len(pending)} frames without media after reconnecting")
            return
        stream = self.stream
        assert stream is not None
        if self._same_publish:
            # The upstream replays its GOP to a new viewer: what is at or
            # before the viewers' last frame of the track, they have. The
            # rest follows on without a gap (the replay starts at a keyframe
            # at or before that point, or at a newer one).
            if frame.timestamp_ms <= self._last_ts.get(kind, -1):
                return
        else:
            if not (frame.keyframe if kind is FrameKind.VIDEO else not self._has_video_header):
                return
            stream.rebase(f"the upstream of {self.path} came back with a new publish")
        self._resync = False
        self._pending = []
        ts = frame.timestamp_ms
        for held in pending:
            if self._sent.get((held.kind, held.sequence_header)) != held.payload:
                self._push(held if held.timestamp_ms == ts else replace(held, timestamp_ms=ts))
        self._push(frame)

    def _push(self, frame: Frame) -> None:
        publisher = self.publisher
        assert publisher is not None
        kind = frame.kind
        if kind is FrameKind.SCRIPT or frame.sequence_header:
            self._sent[(kind, frame.sequence_header)] = frame.payload
        else:
            last = self._last_ts.get(kind)
            if self._same_publish and last is not None and frame.timestamp_ms <= last:
                # Just after a reconnect to the same publish: this track's
                # frames up to where the viewers are were sent already.
                return
            self._last_ts[kind] = frame.timestamp_ms
        publisher.push(frame)

    def pull_ended(self, reason: str) -> None:
        self._pull_over(reason)

    def pull_refused(self, status: int | None, reason: str) -> None:
        if self.publisher is None:
            refusal = _REFUSALS.get(status, Refusal.UNAVAILABLE) if status else Refusal.UNAVAILABLE
            self._fail(refusal, reason)
            return
        self._pull_over(reason)

    def _pull_over(self, reason: str) -> None:
        """A connection ended: reconnect while the stream lives here."""
        pull, self._pull = self._pull, None
        if pull is not None:
            self.bytes_before += pull.bytes_in
            self._data_at = pull.last_data_at or self._data_at
        if self.state is STOPPED:
            return
        self.last_error = reason
        if self.publisher is None:
            self._fail(Refusal.UNAVAILABLE, reason)
            return
        clock = self.upstream.clock
        self._backoff.session_ended(
            clock.seconds() - self._connected_at if self.state is STREAMING else None)
        self.state = RECONNECTING
        # The tracks' last times stay: a reconnect to the same publish skips
        # up to them.
        delay = self._backoff.next_delay()
        log.info("pull {path}: {reason}; reconnecting in {delay:g} s ({n} connections so far)",
                 path=self.path, reason=reason, delay=delay, n=self.connects)
        self._timer = clock.callLater(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._timer = None
        if self.state is not RECONNECTING:
            return
        if not self.located:
            self._connect()
            return
        # Found in the directory: is it still there, and where? (Its
        # publisher may have moved to another origin, or be gone.)
        d = self.upstream.locate(self.app, self.name)
        d.addCallbacks(self._relocated, self._not_relocated)

    def _relocated(self, url: bytes | None) -> None:
        if self.state is not RECONNECTING:
            return
        if url is None:
            self.close("is no longer in the stream directory")
            return
        if url != self.url:
            log.info("pull {path}: the stream directory now has it at {url}",
                     path=self.path, url=shown_url(url))
            self._set_url(url)
        self._connect()

    def _not_relocated(self, failure: Any) -> None:
        if self.state is not RECONNECTING:
            return
        log.info("pull {path}: the stream directory did not answer ({error}); trying "
                 "{url} again", path=self.path, error=failure.getErrorMessage(),
                 url=shown_url(self.url))
        self._connect()

    def _abort_pull(self, reason: str) -> None:
        if self._pull is not None:
            self._pull.stop(reason)

    # -- ending ------------------------------------------------------------------

    def stop_publishing(self, reason: str) -> None:
        """Admission ends it (no media for the upstream timeout, a kick,
        shutdown): no more pulls."""
        self._stop(reason)

    def close(self, reason: str) -> None:
        """End the stream here (no viewers left, shutdown)."""
        publisher = self.publisher
        self._stop(reason)
        if publisher is not None:
            publisher.end(reason)

    def _stop(self, reason: str) -> None:
        if self.state is STOPPED:
            return
        self.state = STOPPED
        self._timer_done()
        self.cancel_linger()
        self.upstream.forget(self)
        pull = self._pull
        if pull is not None:
            pull.stop(reason)

    def cancel_linger(self) -> None:
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()

    def linger(self, seconds: float) -> None:
        if self.upstream.always:
            return  # pulled with or without viewers
        if self._linger is None and self.state is not STOPPED:
            self._linger = self.upstream.clock.callLater(seconds, self._lingered)

    def _lingered(self) -> None:
        self._linger = None
        stream = self.stream
        if stream is not None and not stream.viewers:
            self.close(f"no viewers for {self.upstream.linger_s:g} s")

    # -- what the stats show -------------------------------------------------------

    @property
    def bytes_in(self) -> int:
        return self.bytes_before + (self._pull.bytes_in if self._pull is not None else 0)

    def idle_s(self) -> float | None:
        """Seconds since the upstream last sent data (None before any)."""
        pull = self._pull
        at = pull.last_data_at if pull is not None else None
        if at is None:
            at = self._data_at
        return None if at is None else max(0.0, self.upstream.clock.seconds() - at)

    def status(self) -> dict[str, Any]:
        idle = self.idle_s()
        return {
            "url": shown_url(self.url),
            "state": self.state,
            "connects": self.connects,
            "bytes_in": self.bytes_in,
            "seconds_since_data": None if idle is None else round(idle, 3),
            "last_error": self.last_error or None,
        }


@implementer(IStreamOrigin, IAdmissionListener)
class Upstream(service.Service):
    """The origin of a gateway (every stream, under ``base_url``) or of
    rtmpd's ``--pull`` (the streams of ``rules``, each from its own URL;
    ``always``: pulled from the start, without viewers): one
    :class:`PulledStream` per stream."""

    name = "upstream"

    def __init__(
        self, admission: Admission, agent: IAgent, base_url: str | None, clock: IReactorTime,
        *, rules: Sequence[PullRule] = (), always: bool = False,
        linger_s: float = LINGER_S, open_timeout_s: float = OPEN_TIMEOUT_S,
        idle_timeout_s: float = 10.0, stats_interval_s: float = 0.0,
        trust_root: TrustRoot | None = None,
        directory: IStreamDirectory | None = None, location: str | None = None,
    ) -> None:
        """``trust_root``: the CAs an ``rtmps://`` upstream's certificate must
        chain to (None: the system's); ``agent`` carries its own for https.
        ``directory``: where a stream with no URL of its own (no
        ``base_url``, no rule) is found: its holder's location, under which
        it is pulled with ``agent``. ``location``: this server's own, never
        pulled from (a publish here may be claiming a name that is not live
        yet)."""
        self.admission = admission
        self.directory = directory
        self.location = location
        #: Opens waiting for a directory lookup, per stream.
        self._locating: dict[tuple[str, str], list[defer.Deferred[None]]] = {}
        self.trust_root = trust_root
        self.agent = agent
        self.base_url = base_url
        self.rules = {(rule.app, rule.stream): rule.url.encode("ascii") for rule in rules}
        self.always = always
        self._reopen: dict[tuple[str, str], IDelayedCall] = {}
        self.clock = clock
        self.linger_s = linger_s
        self.open_timeout_s = open_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.stats_interval_s = stats_interval_s
        self.pulls: dict[tuple[str, str], PulledStream] = {}
        #: Connection attempts of pulls that have ended, so the total only grows.
        self.ended_connects = 0
        self._stats_loop: task.LoopingCall | None = None
        admission.origin = self
        admission.add_listener(self)

    def make_pull(self, url: bytes, listener: PullListener) -> FlvPull | RtmpPull:
        """One connection attempt to ``url``: RTMP play or an HTTP-FLV GET."""
        if url.startswith((b"rtmp://", b"rtmps://")):
            return RtmpPull(self.clock, url, self.clock, listener,
                            response_timeout=self.open_timeout_s,
                            idle_timeout=self.idle_timeout_s, trust_root=self.trust_root)
        return FlvPull(self.agent, url, self.clock, listener,
                       response_timeout=self.open_timeout_s, idle_timeout=self.idle_timeout_s)

    def url_for(self, app: str, name: str) -> bytes | None:
        """Where ``app/name`` is pulled from, None if it is not."""
        if self.base_url is not None:
            return stream_url(self.base_url, app, name)
        return self.rules.get((app, name))

    def locate(self, app: str, name: str) -> defer.Deferred[bytes | None]:
        """Where the directory says ``app/name`` is pulled from: its URL, or
        None when no other server holds it (not in the directory, or held
        here). Fails when the directory does not answer."""
        directory = self.directory
        assert directory is not None, "only an upstream with a directory locates"

        def found(location: object) -> bytes | None:
            if location is None or location == self.location:
                return None
            return stream_url(str(location), app, name)

        return defer.maybeDeferred(directory.lookup, app, name).addCallback(found)

    # -- IStreamOrigin -------------------------------------------------------------

    def open(self, request: object) -> defer.Deferred[None]:
        assert isinstance(request, AdmissionRequest)
        key = (request.app, request.stream)
        pulled = self.pulls.get(key)
        if pulled is None:
            if self.url_for(*key) is None:
                if self.directory is not None:
                    return self._open_located(request)
                return defer.fail(AdmissionRefused(
                    Refusal.NOT_FOUND, f"stream {request.path} is not live"))
            pulled = self.pulls[key] = PulledStream(self, request.app, request.stream)
            d = pulled.wait()
            pulled.start()
            return d
        pulled.cancel_linger()
        if pulled.publisher is not None:
            return defer.succeed(None)
        return pulled.wait()

    def _open_located(self, request: AdmissionRequest) -> defer.Deferred[None]:
        """Open a stream found in the directory; the opens of one stream
        meanwhile share one lookup and one pull."""
        key = (request.app, request.stream)
        d: defer.Deferred[None] = defer.Deferred()
        waiting = self._locating.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        waiting = self._locating[key] = [d]

        def found(url: bytes | None) -> None:
            del self._locating[key]
            if key in self.admission.registry.streams or key in self.pulls:
                # Published or pulled here meanwhile: admission (or that
                # pull's wait) takes it from there.
                pulled = self.pulls.get(key)
                for waiter in waiting:
                    if pulled is None or pulled.publisher is not None:
                        waiter.callback(None)
                    else:
                        pulled.wait().chainDeferred(waiter)
                return
            if url is None:
                self._refuse(waiting, AdmissionRefused(
                    Refusal.NOT_FOUND, f"stream {request.path} is not live "
                    "(not in the stream directory)"))
                return
            pulled = self.pulls[key] = PulledStream(self, request.app, request.stream, url)
            for waiter in waiting:
                pulled.wait().chainDeferred(waiter)
            pulled.start()

        def failed(failure: Any) -> None:
            del self._locating[key]
            self._refuse(waiting, AdmissionRefused(
                Refusal.UNAVAILABLE,
                f"the stream directory did not answer: {failure.getErrorMessage()}"))

        self.locate(*key).addCallbacks(found, failed)
        return d

    @staticmethod
    def _refuse(waiting: list[defer.Deferred[None]], error: AdmissionRefused) -> None:
        for waiter in waiting:
            waiter.errback(error)

    def probe(self, app: str, name: str) -> defer.Deferred[Refusal | None]:
        def answered(status: int | None) -> Refusal | None:
            if status == 200:
                return None
            if status is None:
                return Refusal.UNAVAILABLE
            return _REFUSALS.get(status, Refusal.UNAVAILABLE)

        url = self.url_for(app, name)
        if url is None and self.directory is not None:
            def located(url: bytes | None) -> defer.Deferred[Refusal | None] | Refusal:
                if url is None:
                    return Refusal.NOT_FOUND
                return probe(self.agent, url, self.clock,
                             timeout=self.open_timeout_s).addCallback(answered)

            return self.locate(app, name).addCallbacks(
                located, lambda _: Refusal.UNAVAILABLE)
        if url is None or url.startswith((b"rtmp://", b"rtmps://")):
            # Not pulled; or over RTMP, which has no way to ask without playing.
            return defer.succeed(Refusal.NOT_FOUND)
        return probe(self.agent, url, self.clock,
                     timeout=self.open_timeout_s).addCallback(answered)

    def forget(self, pulled: PulledStream) -> None:
        key = (pulled.app, pulled.name)
        if self.pulls.get(key) is pulled:
            del self.pulls[key]
            self.ended_connects += pulled.connects
            if self.always and self.running and key not in self._reopen:
                # Ended (the upstream gone for the upstream timeout, no answer):
                # opened again at the backoff's cap.
                self._reopen[key] = self.clock.callLater(BACKOFF_MAX_S, self._open_always, key)

    def _open_always(self, key: tuple[str, str]) -> None:
        """Pull a ``--pull-always`` stream with no viewer asking."""
        self._reopen.pop(key, None)
        if not self.running or key in self.pulls or key in self.admission.registry.streams:
            if self.running and key not in self.pulls:
                # Published here meanwhile: look again later.
                self._reopen[key] = self.clock.callLater(BACKOFF_MAX_S, self._open_always, key)
            return
        pulled = self.pulls[key] = PulledStream(self, *key)
        pulled.wait().addErrback(lambda _: None)  # its failure is logged; forget reopens
        pulled.start()

    # -- IAdmissionListener: the last viewer leaving starts the linger ---------

    def refused(self, request: object, refusal: object, message: str) -> None:
        self._viewer_changed(request)

    def started(self, request: object) -> None:
        if isinstance(request, AdmissionRequest) and request.action is Action.PLAY:
            pulled = self.pulls.get((request.app, request.stream))
            if pulled is not None:
                pulled.cancel_linger()

    def ended(self, request: object, why: str) -> None:
        self._viewer_changed(request)

    def _viewer_changed(self, request: object) -> None:
        if isinstance(request, AdmissionRequest) and request.action is Action.PLAY:
            pulled = self.pulls.get((request.app, request.stream))
            if pulled is not None:
                self.check_idle(pulled)

    def check_idle(self, pulled: PulledStream) -> None:
        """Start the linger of a live pull that has no viewers."""
        stream = pulled.stream
        if stream is not None and not stream.viewers:
            pulled.linger(self.linger_s)

    # -- service -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.always:
            for key in self.rules:
                self._open_always(key)
        if self.stats_interval_s > 0:
            self._stats_loop = task.LoopingCall(self.log_stats)
            self._stats_loop.clock = self.clock
            self._stats_loop.start(self.stats_interval_s, now=False)

    def stopService(self) -> None:
        super().stopService()
        loop, self._stats_loop = self._stats_loop, None
        if loop is not None and loop.running:
            loop.stop()
        for call in self._reopen.values():
            if call.active():
                call.cancel()
        self._reopen.clear()
        for pulled in list(self.pulls.values()):
            pulled.close("the server is shutting down")

    def stream_stats(self) -> Iterator[dict[str, Any]]:
        """Per pulled stream: what the periodic line and ``/api`` show."""
        for pulled in self.pulls.values():
            stream = pulled.stream
            viewers = list(stream.viewers) if stream is not None else []
            yield {
                "stream": pulled.path,
                **pulled.status(),
                "viewers": len(viewers),
                "bytes_out": sum(v.bytes_sent for v in viewers),
                "gop_frames": len(stream.gop.frames) if stream is not None else 0,
                "gop_bytes": stream.gop.size if stream is not None else 0,
            }

    def log_stats(self) -> None:
        """The periodic line (``--stats-interval``): totals in the text, every
        stream's figures in the event's ``streams`` field."""
        streams = list(self.stream_stats())
        admission = self.admission
        bytes_out = sum(admission.ended_bytes_out.values()) + sum(s["bytes_out"] for s in streams)
        bytes_in = admission.ended_bytes_in + sum(
            p.stream.bytes_in for p in self.pulls.values() if p.stream is not None)
        states = {state: sum(1 for s in streams if s["state"] == state) for state in STATES}
        idle = [s["seconds_since_data"] for s in streams if s["seconds_since_data"] is not None]
        log.info(
            "gateway stats: {count} streams ({streaming} streaming, {reconnecting} "
            "reconnecting, {connecting} connecting), {viewers} viewers, {bytes_in} bytes in, "
            "{bytes_out} bytes out, GOP {gop_frames} frames / {gop_bytes} bytes, "
            "longest upstream silence {idle:.1f} s",
            count=len(streams), streaming=states[STREAMING],
            reconnecting=states[RECONNECTING], connecting=states[CONNECTING],
            viewers=sum(s["viewers"] for s in streams),
            bytes_in=bytes_in, bytes_out=bytes_out,
            gop_frames=sum(s["gop_frames"] for s in streams),
            gop_bytes=sum(s["gop_bytes"] for s in streams),
            idle=max(idle, default=0.0), streams=streams,
        )

    # -- metrics ---------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Prometheus series of the upstream (see :class:`rtmpd.services.stats.Metrics`)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pulls = list(self.pulls.values())
        family = GaugeMetricFamily(
            "rtmpd_upstream_streams", "Streams pulled from the upstream, by state.",
            labels=["state"],
        )
        for state in STATES:
            family.add_metric([state], sum(1 for p in pulls if p.state == state))
        yield family
        yield CounterMetricFamily(
            "rtmpd_upstream_connects", "Connection attempts to the upstream.",
            value=self.ended_connects + sum(p.connects for p in pulls),
        )
        silence = [i for i in (p.idle_s() for p in pulls) if i is not None]
        yield GaugeMetricFamily(
            "rtmpd_upstream_silence_seconds",
            "Longest time since a pulled stream last received upstream data.",
            value=max(silence, default=0.0),
        )
