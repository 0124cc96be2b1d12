"""The one door: every connection, publish and play, whatever its protocol
(``ARCHITECTURE.md`` section 8).

A protocol adapter turns what its wire says into an :class:`AdmissionRequest`
and hands it here; it gets back a Deferred of a :class:`Publisher` or of its
viewer, or a failure carrying an :class:`AdmissionRefused` whose
:class:`Refusal` code the adapter maps to its wire (RTMP status, HTTP status,
WebSocket close code). In between, in this order:

1. names are validated (the only strings that ever reach a file path);
2. limits are checked (streams, viewers per stream);
3. the authorizers are asked, in turn, the first refusal winning (static
   keys, signed URLs, HTTP hooks: :mod:`rtmpd.auth`); they may answer later;
   a play of a stream that is not live here is then handed to the origin, if
   there is one (a gateway's upstream, :mod:`rtmpd.services.upstream`),
   which makes it live or says why not;
4. the stream is looked up again (it may have started or ended while an
   authorizer was thinking), a name held by another publisher is refused or,
   with takeover, taken over; a holder whose reads were paused
   (:class:`IPacedSource`) is woken first and the name judged again after
   :data:`HOLDER_WAKE_S`, so a publisher already gone frees it at once;
5. the publisher or viewer starts, and the listeners hear of it (done hooks,
   metrics).

Counting, logging and the listeners live here, once. With no authorizer that
answers later, the whole path runs synchronously, so a join costs no reactor
turn.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rtmpd.errors import InvalidStreamName, RtmpdError
from rtmpd.interfaces import (
    IAdmissionListener,
    IAuthorizer,
    IMediaSource,
    IPacedSource,
    IStreamOrigin,
)
from rtmpd.media import Frame
from rtmpd.registry import Stream, StreamRegistry, validate_name

if TYPE_CHECKING:
    from rtmpd.fanout import ViewerOutput

log = Logger()

#: Longest query string kept from a request (keys, signatures, hook
#: arguments). Longer ones are cut here, before they reach a log, a hook or
#: an authorizer: nothing legitimate needs more.
MAX_QUERY_CHARS = 2048


class Action(enum.Enum):
    """What a request asks for."""

    PUBLISH = "publish"
    PLAY = "play"


class Refusal(enum.Enum):
    """Why a request was refused: each adapter maps these to its wire."""

    #: The app or stream name is not valid.
    BAD_NAME = "bad_name"
    #: Play of a stream that is not live.
    NOT_FOUND = "not_found"
    #: Publish of a name that already has a publisher.
    BUSY = "busy"
    #: No credentials, or wrong ones (key, signature, expiry).
    UNAUTHORIZED = "unauthorized"
    #: Credentials are not the question: a hook or policy said no.
    FORBIDDEN = "forbidden"
    #: A limit is full (connections, streams, viewers).
    LIMIT = "limit"
    #: The client went away before the decision.
    GONE = "gone"
    #: The stream comes from elsewhere (a gateway's upstream) and that
    #: could not be reached or answered with an error.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Decision:
    """An authorizer's answer. ``forward``: URLs an allowed publish is
    forwarded to as well (an on-publish hook's ``{"forward": [...]}``)."""

    allowed: bool
    refusal: Refusal = Refusal.FORBIDDEN
    message: str = ""
    forward: tuple[str, ...] = ()


#: The answer of an authorizer that lets a request through.
ALLOW = Decision(True)


#: How long a publish waits, s, after waking a paused holder of its name
#: before judging it busy again: a gone holder's last data, then its EOF or
#: reset, take a reactor turn each; far below a client's patience.
HOLDER_WAKE_S = 0.05


def deny(message: str, refusal: Refusal = Refusal.FORBIDDEN) -> Decision:
    """An authorizer's refusal, with the reason for the log (never a secret)."""
    return Decision(False, refusal, message)


class AdmissionRefused(RtmpdError):
    """A request was refused; ``refusal`` says why, for the wire mapping."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionRequest:
    """One publish or play, as every protocol describes it."""

    action: Action
    app: str
    stream: str
    #: The raw query string (``key=…&sig=…``), without the ``?``.
    query: str
    peer_host: str
    peer_port: int
    #: "rtmp", "http-flv" or "ws-flv".
    protocol: str
    #: The connection's id (see :meth:`Admission.open_connection`).
    client_id: int

    @property
    def path(self) -> str:
        """``app/stream``."""
        return f"{self.app}/{self.stream}"

    @property
    def peer(self) -> str:
        """The client as every log line names it: ``rtmp 127.0.0.1:5000``,
        ``http-flv …``, ``ws …``."""
        label = "ws" if self.protocol == "ws-flv" else self.protocol
        return f"{label} {self.peer_host}:{self.peer_port}"

    def params(self) -> dict[str, str]:
        """The query's parameters (the first value of each)."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.query[:MAX_QUERY_CHARS], keep_blank_values=True):
            out.setdefault(key, value)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What the server admits at most; 0 means no limit."""

    #: Open connections on the media ports (RTMP, HTTP-FLV and WS-FLV).
    max_connections: int = 0
    #: Open connections from one address on those ports.
    max_connections_per_ip: int = 0
    #: Live streams.
    max_streams: int = 0
    #: Viewers of one stream, all protocols together.
    max_viewers_per_stream: int = 0


class Client:
    """One open connection on a media port."""

    __slots__ = ("client_id", "close", "host", "opened_at", "port", "protocol")

    def __init__(
        self, client_id: int, host: str, port: int, protocol: str,
        close: Callable[[str], None], opened_at: float,
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self.protocol = protocol
        #: Closes the connection; the argument is the reason, for its log line.
        self.close = close
        self.opened_at = opened_at


class Publisher:
    """An admitted publisher: the stream it feeds and its watchdog.

    The adapter pushes frames into :attr:`stream` and calls :meth:`end`
    however the publish ends (idempotent). A publisher that sends no media
    for the publisher timeout is stopped and its name freed; pings and other
    chatter do not count.
    """

    def __init__(
        self, admission: Admission, request: AdmissionRequest, stream: Stream,
        source: IMediaSource, forward_urls: tuple[str, ...] = (),
        *, yields: bool = False,
    ) -> None:
        self.admission = admission
        self.request = request
        self.stream = stream
        self.source = source
        #: A relay of a stream found in a directory (a worker's copy of a
        #: sibling's publish): a publish the authorizers admit here ends it.
        self.yields = yields
        #: Where the authorizers asked this publish to be forwarded as well.
        self.forward_urls = forward_urls
        self.ended = False
        self._timer: IDelayedCall | None = None
        self._frames_seen = -1
        self._media_at = admission.clock.seconds()
        if admission.publisher_timeout_s > 0:
            self._watch()

    def _watch(self) -> None:
        """Check for media every quarter of the timeout (no per-frame work:
        it compares the stream's frame counter)."""
        admission = self.admission
        timeout = admission.publisher_timeout_s
        now = admission.clock.seconds()
        frames = self.stream.frames_in
        if frames != self._frames_seen:
            self._frames_seen = frames
            self._media_at = now
        elif now - self._media_at >= timeout:
            self._timer = None
            # No line of its own: the unpublish line says why, with the peer.
            reason = f"timed out: no media for {now - self._media_at:.0f} s"
            self.end(reason)
            self.source.stop_publishing(reason)
            return
        self._timer = admission.clock.callLater(timeout / 4, self._watch)

    def push(self, frame: Frame) -> None:
        """A frame from this publisher (dropped once it has ended or been
        replaced: a replaced connection may still be closing)."""
        if not self.ended:
            self.stream.push(frame)

    def end(self, reason: str) -> None:
        """The publish is over: end the stream, free the name, tell the
        listeners (once)."""
        if self._stop():
            self.admission._publisher_ended(self, reason)

    def hand_over(self, reason: str) -> None:
        """Another publisher takes the stream over (``--takeover``): this
        one is over, the stream and its viewers go on."""
        if self._stop():
            self.admission._publisher_replaced(self, reason)

    def _stop(self) -> bool:
        if self.ended:
            return False
        self.ended = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return True


class Admission:
    """Admits connections, publishers and viewers for every protocol."""

    def __init__(
        self,
        registry: StreamRegistry,
        *,
        authorizers: Sequence[IAuthorizer] = (),
        limits: Limits | None = None,
        takeover: bool = False,
        publisher_timeout_s: float = 30.0,
        origin: IStreamOrigin | None = None,
        client_ids: tuple[int, int] = (1, 1),
    ) -> None:
        """``client_ids``: the first connection id and the step between ids
        (``--workers``: worker k of N gives k, k + N, k + 2N..., so ids are
        unique on the box and each says its worker)."""
        self.registry = registry
        #: Where a played stream that is not live here comes from (None: it
        #: is simply not found).
        self.origin = origin
        self.clock = registry.clock
        self.authorizers = list(authorizers)
        self.limits = limits or Limits()
        self.takeover = takeover
        self.publisher_timeout_s = publisher_timeout_s
        self.listeners: list[IAdmissionListener] = []
        self.clients: dict[int, Client] = {}
        #: Connections closed since the start (what paces full garbage
        #: collections, :mod:`rtmpd.gcpacing`).
        self.closed_connections = 0
        self.publishers: dict[tuple[str, str], Publisher] = {}
        self._per_ip: Counter[str] = Counter()
        self._next_id, self._id_step = client_ids
        #: Refusals so far, by code (connections included).
        self.refusals: Counter[Refusal] = Counter()
        #: Totals of viewers that have ended, by protocol, so counters only
        #: go up: bytes sent, frames skipped.
        self.ended_bytes_out: Counter[str] = Counter()
        self.ended_frames_dropped: Counter[str] = Counter()
        #: Bytes received from publishers whose streams have ended.
        self.ended_bytes_in = 0

    def add_listener(self, listener: IAdmissionListener) -> None:
        """Hear every refusal, start and end."""
        self.listeners.append(listener)

    # -- connections ---------------------------------------------------------

    def open_connection(
        self, host: str, port: int, protocol: str, close: Callable[[str], None]
    ) -> int:
        """Count a new connection on a media port and give it its id.

        Raises AdmissionRefused (``LIMIT``) when ``--max-connections`` or
        ``--max-connections-per-ip`` is full; the adapter then closes it.
        ``close(reason)`` must close the connection (``DELETE /api/clients``).
        """
        limits = self.limits
        if limits.max_connections and len(self.clients) >= limits.max_connections:
            self._count_refusal(Refusal.LIMIT)
            self.registry.viewer_log.line(
                log, "refused connection", "the server",
                "refused {peer}: {count} connections open, the limit (--max-connections) "
                "is {limit}",
                peer=f"{protocol} {host}:{port}", count=len(self.clients),
                limit=limits.max_connections,
            )
            raise AdmissionRefused(Refusal.LIMIT, "too many connections")
        if limits.max_connections_per_ip and self._per_ip[host] >= limits.max_connections_per_ip:
            self._count_refusal(Refusal.LIMIT)
            self.registry.viewer_log.line(
                log, "refused connection", host,
                "refused {peer}: {count} connections open from {path}, the limit "
                "(--max-connections-per-ip) is {limit}",
                peer=f"{protocol} {host}:{port}", count=self._per_ip[host],
                limit=limits.max_connections_per_ip,
            )
            raise AdmissionRefused(Refusal.LIMIT, "too many connections from this address")
        client_id = self._next_id
        self._next_id += self._id_step
        self.clients[client_id] = Client(
            client_id, host, port, protocol, close, self.clock.seconds()
        )
        self._per_ip[host] += 1
        return client_id

    def close_connection(self, client_id: int) -> None:
        """A connection counted by :meth:`open_connection` closed (idempotent)."""
        client = self.clients.pop(client_id, None)
        if client is None:
            return
        self.closed_connections += 1
        left = self._per_ip[client.host] - 1
        if left > 0:
            self._per_ip[client.host] = left
        else:
            del self._per_ip[client.host]

    def rebind_connection(
        self, client_id: int, protocol: str, close: Callable[[str], None]
    ) -> None:
        """A connection changed hands (an HTTP connection upgraded to a
        WebSocket): the new protocol's name and way to close it."""
        client = self.clients.get(client_id)
        if client is not None:
            client.protocol = protocol
            client.close = close

    def kick_client(self, client_id: int, reason: str) -> bool:
        """Close a connection by id; False if there is none."""
        client = self.clients.get(client_id)
        if client is None:
            return False
        log.info("closing {protocol} {host}:{port} (client {id}): {reason}",
                 protocol=client.protocol, host=client.host, port=client.port,
                 id=client_id, reason=reason)
        client.close(reason)
        return True

    def kick_publisher(self, app: str, name: str, reason: str) -> bool:
        """Stop a stream's publisher; False if the stream is not live."""
        publisher = self.publishers.get((app, name))
        if publisher is None:
            return False
        log.info("stopping publish {path} by {peer}: {reason}", path=publisher.request.path,
                 peer=publisher.request.peer, reason=reason)
        if IPacedSource.providedBy(publisher.source):
            # What it sent during a read pause waits in its socket: into the
            # stream (and its recordings) before the stream ends.
            IPacedSource(publisher.source).read_waiting()
        publisher.end(reason)
        publisher.source.stop_publishing(reason)
        return True

    # -- lookups ---------------------------------------------------------------

    def lookup(self, app: str, name: str) -> Stream | None:
        """The live stream by that name, or None (``HEAD``). Bad names raise
        AdmissionRefused (``BAD_NAME``)."""
        try:
            return self.registry.get(app, name)
        except InvalidStreamName as e:
            raise AdmissionRefused(Refusal.BAD_NAME, str(e)) from None

    # -- publish -------------------------------------------------------------

    def publish(
        self,
        request: AdmissionRequest,
        source: IMediaSource,
        *,
        alive: Callable[[], bool] | None = None,
        internal: bool = False,
        yields: bool = False,
    ) -> defer.Deferred[Publisher]:
        """Admit a publisher. The Deferred fires with its :class:`Publisher`
        (synchronously when no authorizer answers later) or fails with
        AdmissionRefused. ``alive()`` false when the decision comes means the
        client left meanwhile: nothing starts (``GONE``). An ``internal``
        publisher (a gateway's upstream, which the server opened itself) is
        not asked for credentials; names, limits and listeners apply.
        ``yields``: an internal publisher that relays a stream found in a
        directory (a worker's relay of a sibling's publish, which the box's
        directory decides): a publish of its name is not refused busy here
        but asked of the authorizers, and if they admit it (the sibling's
        publish is over, its relay here not yet) the relay ends and the
        publish starts."""
        d: defer.Deferred[Any] = defer.succeed(())
        try:
            self._check_names(request)
            self._check_publish(request, internal=internal)
        except AdmissionRefused as e:
            if e.refusal is not Refusal.BUSY or not self._wake_holder(request):
                return self.refuse(request, e)
            d = self._after_wake()
            d.addCallback(lambda _: self._check_publish(request, internal=internal))
        if not internal:
            d.addCallback(lambda _: self._authorize(request))
        d.addCallback(lambda forward: self._start_publish(
            request, source, alive, forward or (), internal=internal, yields=yields))
        d.addErrback(self._refusal_errback, request)
        return d

    def _check_publish(self, request: AdmissionRequest, *, internal: bool) -> None:
        key = (request.app, request.stream)
        registry = self.registry
        if key in registry.streams:
            if not self.takeover and (internal or not self._held_by_relay(key)):
                raise AdmissionRefused(
                    Refusal.BUSY, f"stream {request.path} already has a publisher"
                )
        elif self.limits.max_streams and len(registry.streams) >= self.limits.max_streams:
            raise AdmissionRefused(
                Refusal.LIMIT,
                f"{len(registry.streams)} streams are live, the limit (--max-streams) is "
                f"{self.limits.max_streams}",
            )

    def _held_by_relay(self, key: tuple[str, str]) -> bool:
        """Whether ``key``'s stream here is a relay that a publish replaces."""
        holder = self.publishers.get(key)
        return holder is not None and holder.yields and not holder.ended

    def _wake_holder(self, request: AdmissionRequest) -> bool:
        """Wake the name's publisher if its reads are paused: it may have
        left without the reactor seeing it yet. Whether it was paused."""
        holder = self.publishers.get((request.app, request.stream))
        if holder is None or holder.ended or not IPacedSource.providedBy(holder.source):
            return False
        return IPacedSource(holder.source).wake_reading()

    def _after_wake(self) -> defer.Deferred[None]:
        """Fires :data:`HOLDER_WAKE_S` after the next reactor turn (a call
        made from a delayed call waits for one poll of the sockets at least),
        when a woken holder that is gone has been read to its end."""
        d: defer.Deferred[None] = defer.Deferred()
        self.clock.callLater(0, self.clock.callLater, HOLDER_WAKE_S, d.callback, None)
        return d

    def _gone(self, request: AdmissionRequest) -> bool:
        """Whether the request's connection has closed (meanwhile)."""
        return bool(request.client_id) and request.client_id not in self.clients

    def _start_publish(
        self, request: AdmissionRequest, source: IMediaSource,
        alive: Callable[[], bool] | None, forward_urls: tuple[str, ...] = (),
        *, internal: bool = False, yields: bool = False,
    ) -> Publisher:
        if self._gone(request) or (alive is not None and not alive()):
            raise AdmissionRefused(Refusal.GONE, "the client left before the decision")
        self._check_publish(request, internal=internal)
        key = (request.app, request.stream)
        old = self.publishers.get(key)
        if old is not None and not internal and not self.takeover and self._held_by_relay(key):
            # The authorizers gave the name to this publish: the relay's
            # source is over (a killed worker, whose names the box freed at
            # once), though the relay has not seen it yet. Its viewers are
            # told the stream ended, as they would be a moment later.
            reason = "replaced by a publisher here (its upstream no longer has the name)"
            old.end(reason)
            old.source.stop_publishing(reason)
            old = None
        if old is not None and old.stream.live:
            # Takeover: the stream goes on with its viewers, recorders, GOP
            # cache and timestamps (rebased if the new encoder starts at 0),
            # fed by the new publisher. The log says who took over; the old
            # client (told the reason) does not learn it.
            reason = "replaced by a new publisher"
            log.info("publish {path}: {old} {reason} ({new}); its viewers stay",
                     path=request.path, old=old.request.peer, reason=reason, new=request.peer)
            old.hand_over(reason)
            stream = old.stream
            self.registry.take_over(stream, source, reason)
        else:
            stream = self.registry.publish(request.app, request.stream, source)
            old = None
        publisher = Publisher(self, request, stream, source, forward_urls, yields=yields)
        self.publishers[key] = publisher
        if old is not None:
            # Last: whatever the old connection does as it closes, the name
            # is the new publisher's already.
            old.source.stop_publishing(reason)
        for listener in self.listeners:
            listener.started(request)
        return publisher

    def _publisher_replaced(self, publisher: Publisher, reason: str) -> None:
        request = publisher.request
        key = (request.app, request.stream)
        if self.publishers.get(key) is publisher:
            del self.publishers[key]
        for listener in self.listeners:
            listener.ended(request, reason)

    def _publisher_ended(self, publisher: Publisher, reason: str) -> None:
        request = publisher.request
        key = (request.app, request.stream)
        if self.publishers.get(key) is publisher:
            del self.publishers[key]
        self.ended_bytes_in += publisher.stream.bytes_in
        self.registry.unpublish(publisher.stream, f"publisher {request.peer} {reason}")
        for listener in self.listeners:
            listener.ended(request, reason)

    # -- play --------------------------------------------------------------------

    def play(
        self,
        request: AdmissionRequest,
        start: Callable[[Stream], ViewerOutput | None],
        *,
        internal: bool = False,
    ) -> defer.Deferred[ViewerOutput]:
        """Admit a viewer. Once allowed, ``start(stream)`` makes the adapter's
        viewer (wire prelude sent, producer registered) or returns None if
        the client left meanwhile; admission then adds it to the stream. The
        Deferred fires with the viewer or fails with AdmissionRefused. An
        ``internal`` viewer (a forward, which the server opened itself for a
        live stream) is not asked for credentials nor counted against
        ``--max-viewers-per-stream``; logging and listeners apply."""
        origin = None if internal else self.origin
        try:
            self._check_names(request)
            if origin is None or (request.app, request.stream) in self.registry.streams:
                self._check_play(request, internal=internal)
        except AdmissionRefused as e:
            return self.refuse(request, e)
        d: defer.Deferred[Any] = defer.succeed(None) if internal else self._authorize(request)
        if origin is not None:
            d.addCallback(lambda _: self._from_origin(origin, request))
        d.addCallback(lambda _: self._start_play(request, start, internal=internal))
        d.addErrback(self._refusal_errback, request)
        return d

    def _from_origin(
        self, origin: IStreamOrigin, request: AdmissionRequest
    ) -> defer.Deferred[Any] | None:
        """A stream that is not live here is asked of the origin, which
        fires once it is (or fails with AdmissionRefused)."""
        if (request.app, request.stream) in self.registry.streams:
            return None
        if self._gone(request):
            raise AdmissionRefused(Refusal.GONE, "the client left before the decision")
        d = origin.open(request)
        assert isinstance(d, defer.Deferred)
        return d

    def _check_play(self, request: AdmissionRequest, *, internal: bool = False) -> Stream:
        stream = self.registry.streams.get((request.app, request.stream))
        if stream is None:
            raise AdmissionRefused(Refusal.NOT_FOUND, f"stream {request.path} is not live")
        limit = 0 if internal else self.limits.max_viewers_per_stream
        # Paused viewers count: they come back without asking.
        if limit and len(stream.viewers) >= limit:
            raise AdmissionRefused(
                Refusal.LIMIT,
                f"stream {request.path} has {len(stream.viewers)} viewers, the limit "
                f"(--max-viewers-per-stream) is {limit}",
            )
        return stream

    def _start_play(
        self, request: AdmissionRequest, start: Callable[[Stream], ViewerOutput | None],
        *, internal: bool = False,
    ) -> ViewerOutput:
        if self._gone(request):
            raise AdmissionRefused(Refusal.GONE, "the client left before the decision")
        stream = self._check_play(request, internal=internal)
        viewer = start(stream)
        if viewer is None:
            raise AdmissionRefused(Refusal.GONE, "the client left before the decision")
        assert viewer.output is not None, "a viewer must say which output format it gets"
        viewer.admitted(self, request)
        first = not stream.viewers
        stream.viewers[viewer] = None
        self.registry.viewer_log.line(
            log, "play", stream.path, "play {path} by {peer}", peer=viewer.description
        )
        stream.add_viewer(viewer.output, viewer)
        if first and IPacedSource.providedBy(stream.source):
            # Its publisher may be in a read pause (nobody watched): the
            # first viewer gets live frames at once, not after the pause.
            IPacedSource(stream.source).wake_reading()
        for listener in self.listeners:
            listener.started(request)
        return viewer

    def viewer_finished(self, viewer: ViewerOutput, request: AdmissionRequest, why: str,
                        *, dropped: bool) -> None:
        """A viewer admitted here ended (:meth:`ViewerOutput.finish`): its
        one stop line, its totals, the listeners."""
        protocol = viewer.protocol or request.protocol
        if viewer.stream is not None:
            viewer.stream.viewers.pop(viewer, None)
            viewer.stream.ended_bytes_out[protocol] += viewer.bytes_sent
        self.ended_bytes_out[protocol] += viewer.bytes_sent
        self.ended_frames_dropped[protocol] += viewer.frames_dropped
        fmt = ("stop play {path} by {peer}: {why} ({bytes} bytes sent, "
               "{dropped} frames skipped)")
        fields: dict[str, Any] = {
            "path": request.path, "peer": viewer.description, "why": why,
            "bytes": viewer.bytes_sent, "dropped": viewer.frames_dropped,
        }
        if dropped:
            # Drops are always logged, whatever the rate of viewer lines.
            log.warn(fmt, **fields)
        else:
            fields.pop("path")
            self.registry.viewer_log.line(log, "stop", request.path, fmt, **fields)
        for listener in self.listeners:
            listener.ended(request, why)

    # -- shared steps ----------------------------------------------------------------

    def _check_names(self, request: AdmissionRequest) -> None:
        try:
            validate_name(request.app, "app name")
            validate_name(request.stream)
        except InvalidStreamName as e:
            raise AdmissionRefused(Refusal.BAD_NAME, str(e)) from None

    def _authorize(self, request: AdmissionRequest) -> defer.Deferred[tuple[str, ...]]:
        """Ask each authorizer in turn; fails with AdmissionRefused at the
        first refusal, else fires with the forward URLs they added.
        Synchronous answers chain synchronously."""
        d: defer.Deferred[Any] = defer.succeed(None)
        forward: list[str] = []
        for authorizer in self.authorizers:
            d.addCallback(_ask, authorizer, request)
            d.addCallback(_require_allowed)
            d.addCallback(forward.extend)
        return d.addCallback(lambda _: tuple(forward))

    def refuse(
        self, request: AdmissionRequest, refusal: AdmissionRefused
    ) -> defer.Deferred[Any]:
        """Refuse a request an adapter could not even parse (counted and
        logged like every other refusal): a failed Deferred."""
        return defer.fail(self._note_refusal(request, refusal))

    def _refusal_errback(self, failure: Failure, request: AdmissionRequest) -> defer.Deferred[Any]:
        error = failure.value
        if not isinstance(error, AdmissionRefused):
            # An authorizer (or a start callback) broke: refuse, say why.
            log.failure("admission of {action} {path} by {peer} failed", failure,
                        action=request.action.value, path=request.path, peer=request.peer)
            error = AdmissionRefused(Refusal.FORBIDDEN, "internal error while authorizing")
        return defer.fail(self._note_refusal(request, error))

    def _note_refusal(self, request: AdmissionRequest, error: AdmissionRefused) -> AdmissionRefused:
        self._count_refusal(error.refusal)
        if error.refusal is not Refusal.GONE:
            # One line per refusal, never a secret (messages never carry one),
            # bounded per second with the viewer lines: a client can send
            # hundreds of refused plays in one packet.
            self.registry.viewer_log.line(
                log, "refused", request.action.value,
                "{path} {app}/{stream} by {peer} refused: {message}",
                app=printable(request.app), stream=printable(request.stream),
                peer=request.peer, message=error.message,
            )
        for listener in self.listeners:
            listener.refused(request, error.refusal, error.message)
        return error

    def _count_refusal(self, refusal: Refusal) -> None:
        self.refusals[refusal] += 1


def printable(text: str, limit: int = 130) -> str:
    """``text`` safe for a log line: at most ``limit`` characters, control
    characters escaped (names that failed validation come from the network)."""
    cut = text[:limit]
    if cut.isprintable():
        return cut + ("..." if len(text) > limit else "")
    return repr(cut)[1:-1] + ("..." if len(text) > limit else "")


def _ask(_: object, authorizer: IAuthorizer, request: AdmissionRequest) -> defer.Deferred[Any]:
    return defer.maybeDeferred(authorizer.authorize, request)


def _require_allowed(decision: object) -> tuple[str, ...]:
    if not isinstance(decision, Decision):
        raise TypeError(f"an authorizer answered {decision!r}, not a Decision")
    if not decision.allowed:
        raise AdmissionRefused(decision.refusal, decision.message or decision.refusal.value)
    return decision.forward
