"""Forwards: every stream published under an app re-published to other servers
(``--forward APP=URL``), the restreaming of nginx-rtmp's ``push``.

A forward is a live source feeding one of the publish sessions of
:mod:`rtmpd.client` (RTMP, RTMPS, HTTP-FLV POST, WS-FLV), the same sessions
``rtmpd-push`` paces a file over. The live source is a viewer of the stream
like any other (:class:`ForwardViewer`, admitted by :mod:`rtmpd.admission`):
it starts from the GOP cache, so the target's first video frame is a keyframe,
it gets the fan-out's shared bytes (RTMP chunks are encoded once for every
forward with the same chunk size and message stream; FLV tags once for every
FLV forward and HTTP/1.0 viewer), and when the target stops reading it is
paused, rejoins at the next keyframe, and is dropped past
``--viewer-queue-bytes``: a slow or dead target never slows the publisher,
the viewers or the other targets, and costs bounded memory.

:class:`Forward` keeps one target's forward going across sessions: a lost or
dropped session is retried with backoff (:data:`BACKOFF_INITIAL_S` doubling to
:data:`BACKOFF_MAX_S`, back to the start after a session that lasted
:data:`STABLE_RUN_S`); a refusal (a bad stream key, a forbidden app) is logged
once per attempt with the target's reason and retried at the backoff's cap,
never in a tight loop. When the stream ends the session is ended the way its
protocol expects (FCUnpublish, the last chunk, a WebSocket close).

:class:`Forwarder` is the service: an admission listener that starts the
forwards of each stream as its publish starts (published or pulled, see
:mod:`rtmpd.services.upstream`) and stops those still retrying when it ends.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd.admission import Action, Admission, AdmissionRefused, AdmissionRequest
from rtmpd.auth import FORWARD_PROTOCOL
from rtmpd.client.backoff import BACKOFF_INITIAL_S, BACKOFF_MAX_S, Backoff
from rtmpd.client.connector import make_connector
from rtmpd.client.rtmp import RtmpPublishProtocol
from rtmpd.client.session import Session
from rtmpd.client.target import (
    PushTarget,
    UsageError,
    check_forward_url,
    fill_url,
    parse_target,
)
from rtmpd.codec import amf0
from rtmpd.codec.rtmp import chunk
from rtmpd.codec.rtmp import messages as msg
from rtmpd.codec.rtmp.connection import AUDIO_CSID, DATA_CSID, VIDEO_CSID
from rtmpd.fanout import OutputFormat, ViewerOutput
from rtmpd.interfaces import IAdmissionListener, IUpstreamSource
from rtmpd.media import Frame, FrameKind
from rtmpd.protocols.flvhttp import PLAIN
from rtmpd.registry import NAME_PATTERN

if TYPE_CHECKING:
    from rtmpd.client.tls import TrustRoot

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from rtmpd.registry import Stream

log = Logger()

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "STABLE_RUN_S",
    "Forward",
    "ForwardRule",
    "ForwardViewer",
    "Forwarder",
    "RtmpPublishFormat",
    "parse_forward",
]

#: A session that published this long was a good run: the backoff starts
#: over. (An HTTP publish looks accepted as soon as its headers are sent; a
#: refusal comes right after.)
STABLE_RUN_S = 2.0

#: What a forward is doing.
CONNECTING = "connecting"
FORWARDING = "forwarding"
RETRYING = "retrying"
STOPPED = "stopped"
STATES = (CONNECTING, FORWARDING, RETRYING)


# -- the option -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardRule:
    """``--forward APP=URL``: every stream published under ``app`` goes to
    ``url``, with ``{stream}`` (and ``{app}``) replaced by its names."""

    app: str
    url: str

    def target_url(self, app: str, stream: str) -> str:
        """The URL one stream is forwarded to."""
        return fill_url(self.url, app, stream)


def parse_forward(value: str) -> ForwardRule:
    """Parse ``APP=URL`` (``--forward``); raises :class:`UsageError`."""
    app, sep, url = value.partition("=")
    app, url = app.strip(), url.strip()
    if not sep or not url:
        raise UsageError(
            f"--forward {value!r} is not APP=URL "
            "(e.g. live=rtmp://backup:1935/live/{stream})"
        )
    if not NAME_PATTERN.fullmatch(app):
        raise UsageError(f"--forward {value!r}: app {app!r} is not [A-Za-z0-9_-]{{1,128}}")
    try:
        check_forward_url(url)
    except UsageError as e:
        raise UsageError(f"--forward {app}=...: {e}") from None
    return ForwardRule(app, url)


def shown_target(target: PushTarget, template: str) -> str:
    """A target as logs and ``/api`` show it: no query, and the stream name
    only where it is the local stream's (``{stream}``); a fixed one is
    usually a secret stream key (YouTube, Twitch), shown as ``…``."""
    last = template.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    name = target.stream if "{stream}" in last else "…"
    return f"{target.scheme}://{target.authority}/{target.app}/{name}" + (
        "?..." if target.query else ""
    )


# -- what a forward sends ---------------------------------------------------------------

_SET_DATA_FRAME = amf0.encode("@setDataFrame")
_ON_METADATA = amf0.encode("onMetaData")
_CSID_BY_KIND = {FrameKind.AUDIO: AUDIO_CSID, FrameKind.VIDEO: VIDEO_CSID,
                 FrameKind.SCRIPT: DATA_CSID}


class RtmpPublishFormat:
    """RTMP messages as a publisher sends them: full type-0 headers on fixed
    chunk streams (so the same bytes suit every forward with this chunk size
    and message stream), metadata as ``@setDataFrame`` (what encoders send
    and what YouTube and Twitch expect)."""

    __slots__ = ("chunk_size", "key", "stream_id")

    def __init__(self, chunk_size: int, stream_id: int) -> None:
        self.chunk_size = chunk_size
        self.stream_id = stream_id
        self.key: Hashable = ("rtmp-publish", chunk_size, stream_id)

    def encode(self, frame: Frame) -> bytes:
        payload = frame.payload
        type_id: int = frame.kind
        if frame.kind is FrameKind.SCRIPT:
            type_id = msg.DATA_AMF0
            if payload.startswith(_ON_METADATA):
                payload = _SET_DATA_FRAME + payload
        return chunk.encode_message(
            chunk_size=self.chunk_size,
            chunk_stream_id=_CSID_BY_KIND[frame.kind],
            type_id=type_id,
            stream_id=self.stream_id,
            timestamp_ms=frame.timestamp_ms,
            payload=payload,
        )

    def preamble(self, stream: Stream) -> list[bytes]:
        return []


class _FlvWrites:
    """The transport a forward's viewer writes to over an HTTP-FLV or WS-FLV
    session: each write goes out as one HTTP chunk or one WebSocket message
    (the session's framing; the FLV bytes are the fan-out's shared ones)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def write(self, data: bytes) -> None:
        self._session.write_flv(data)

    def writeSequence(self, chunks: Sequence[bytes]) -> None:
        self._session.write_flv(b"".join(chunks))


def _viewer_side(session: Session) -> tuple[OutputFormat, Any]:
    """The output format a session takes and the transport its viewer writes to."""
    if isinstance(session, RtmpPublishProtocol):
        # Straight to the socket, the fan-out's direct writes included.
        return RtmpPublishFormat(session.chunk_size, session.stream_id), session.transport
    return PLAIN, _FlvWrites(session)


class ForwardViewer(ViewerOutput):
    """The viewer side of one forward session."""

    __slots__ = ("forward",)

    def __init__(self, forward: Forward, transport: Any, output: OutputFormat,
                 stream: Stream) -> None:
        super().__init__(transport, f"forward {forward.shown_url}", stream=stream,
                         output=output, protocol=FORWARD_PROTOCOL)
        self.forward = forward

    def stream_ended(self, reason: str) -> None:
        self.finish(f"stream ended: {reason}")
        self.forward.stream_over(reason)

    def drop(self, reason: str) -> None:
        self.finish(f"dropped: {reason}", dropped=True)
        self.forward.viewer_dropped(reason)


# -- one forward ----------------------------------------------------------------------------


class Forward:
    """One stream forwarded to one target, across sessions (module docstring).
    A :class:`~rtmpd.client.session.SessionListener`."""

    def __init__(self, forwarder: Forwarder, stream: Stream, template: str, *,
                 origin: str = "config") -> None:
        self.forwarder = forwarder
        self.stream = stream
        self.template = template
        self.url = fill_url(template, stream.app, stream.name)
        self.target = parse_target(self.url)
        self.shown_url = shown_target(self.target, template)
        #: Where it came from: "config" (``--forward``) or "hook" (on-publish).
        self.origin = origin
        self.state = CONNECTING
        #: Connection attempts, refusals among them, and the bytes of ended sessions.
        self.connects = 0
        self.refusals = 0
        self.bytes_before = 0
        self.last_error = ""
        self.viewer: ForwardViewer | None = None
        self._session: Session | None = None
        self._ready_at: float | None = None
        self._timer: IDelayedCall | None = None
        self._backoff = Backoff(stable_s=STABLE_RUN_S)

    @property
    def path(self) -> str:
        return self.stream.path

    @property
    def clock(self) -> IReactorTime:
        return self.forwarder.clock

    @property
    def bytes_sent(self) -> int:
        viewer = self.viewer
        return self.bytes_before + (viewer.bytes_sent if viewer is not None else 0)

    @property
    def backoff_s(self) -> float:
        """The wait before the next attempt after a lost session."""
        return self._backoff.current_s

    def start(self) -> None:
        """Make the first attempt."""
        self._connect()

    def _connect(self) -> None:
        self._timer = None
        if self.state is STOPPED:
            return
        self.state = CONNECTING
        self.connects += 1
        forwarder = self.forwarder
        connect = forwarder.connector(self.target, forwarder.chunk_size)
        connect(self)

    # -- SessionListener ---------------------------------------------------------------

    def session_ready(self, session: Session) -> None:
        stream = self.stream
        if self.state is STOPPED or not stream.live:
            session.abort()
            return
        self._session = session
        self._ready_at = self.clock.seconds()
        output, transport = _viewer_side(session)
        request = AdmissionRequest(
            action=Action.PLAY, app=stream.app, stream=stream.name, query="",
            peer_host=self.target.host, peer_port=self.target.port, protocol=FORWARD_PROTOCOL,
            client_id=0,
        )

        def start(live: Stream) -> ForwardViewer | None:
            if live is not stream or self._session is not session:
                return None
            viewer = self.viewer = ForwardViewer(self, transport, output, stream)
            return viewer

        d = self.forwarder.admission.play(request, start, internal=True)
        d.addCallbacks(self._forwarding, self._not_forwarding)

    def _forwarding(self, viewer: ViewerOutput) -> None:
        if self.viewer is viewer and self.state is CONNECTING:
            self.state = FORWARDING
            log.info("forward {path} to {url}: publishing (connection {n})", path=self.path,
                     url=self.shown_url, n=self.connects)

    def _not_forwarding(self, failure: Failure) -> None:
        failure.trap(AdmissionRefused)
        # The stream ended while the target said yes.
        self.stop(f"not forwarded: {failure.getErrorMessage()}")

    def session_lost(self, session: Session | None, reason: str, permanent: bool) -> None:
        if self.state is STOPPED:
            return
        current = self._session
        if session is not None and current is not None and session is not current:
            return  # a stale attempt
        self._end_viewer(f"the target's connection ended: {reason}")
        self._session = None
        self._retry(reason, refused=permanent)

    def session_writable(self, writable: bool) -> None:
        viewer = self.viewer
        if viewer is None:
            return
        if writable:
            viewer.resumeProducing()
        else:
            viewer.pauseProducing()

    # -- what the viewer reports ----------------------------------------------------------

    def viewer_dropped(self, reason: str) -> None:
        """The fan-out dropped the viewer (the target fell too far behind):
        cut the session and try again."""
        self._end_viewer("")
        session, self._session = self._session, None
        if session is not None:
            session.abort()
        if self.state is not STOPPED:
            self._retry(f"dropped: {reason}", refused=False)

    def stream_over(self, reason: str) -> None:
        """The stream ended: end the session cleanly, no more attempts."""
        self._end_viewer("")
        self.stop(reason)

    # -- internals --------------------------------------------------------------------------

    def _end_viewer(self, why: str) -> None:
        viewer, self.viewer = self.viewer, None
        if viewer is not None:
            self.bytes_before += viewer.bytes_sent
            if why:
                viewer.finish(why)

    def _retry(self, reason: str, *, refused: bool) -> None:
        self.last_error = reason
        self.state = RETRYING
        now = self.clock.seconds()
        self._backoff.session_ended(None if self._ready_at is None else now - self._ready_at)
        self._ready_at = None
        if refused:
            # Retrying at once will not change the target's mind.
            self.refusals += 1
            delay = BACKOFF_MAX_S
            log.warn("forward {path} to {url} refused by the target: {reason}; trying again "
                     "in {delay:g} s", path=self.path, url=self.shown_url, reason=reason,
                     delay=delay)
        else:
            delay = self._backoff.next_delay()
            log.info("forward {path} to {url}: {reason}; reconnecting in {delay:g} s",
                     path=self.path, url=self.shown_url, reason=reason, delay=delay)
        self._timer = self.clock.callLater(delay, self._connect)

    def stop(self, reason: str) -> defer.Deferred[None]:
        """No more attempts; the session (if any) ends cleanly. Fires when
        its connection is closed."""
        if self.state is STOPPED:
            return defer.succeed(None)
        self.state = STOPPED
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._end_viewer(f"forward stopped: {reason}")
        self.forwarder.forget(self)
        session, self._session = self._session, None
        if session is None:
            return defer.succeed(None)
        log.info("forward {path} to {url}: ended ({reason}; {bytes} bytes sent)",
                 path=self.path, url=self.shown_url, reason=reason, bytes=self.bytes_sent)
        return session.finish()

    def status(self) -> dict[str, Any]:
        """A JSON-ready dict for ``/api``."""
        viewer = self.viewer
        connected_s = None
        if self.state is FORWARDING and self._ready_at is not None:
            connected_s = round(self.clock.seconds() - self._ready_at, 3)
        return {
            "url": self.shown_url,
            "from": self.origin,
            "state": self.state,
            "connected": self.state is FORWARDING,
            "connected_s": connected_s,
            "bytes_sent": self.bytes_sent,
            "connects": self.connects,
            "reconnects": max(0, self.connects - 1),
            "refusals": self.refusals,
            "frames_skipped": viewer.frames_dropped if viewer is not None else 0,
            "lag_ms": viewer.lag_ms() if viewer is not None else 0,
            "last_error": self.last_error or None,
        }


# -- the service ------------------------------------------------------------------------------


@implementer(IAdmissionListener)
class Forwarder(service.Service):
    """Starts each stream's forwards when its publish starts (see the module
    docstring) and reports on them."""

    name = "forward"

    def __init__(self, admission: Admission, reactor: Any, rules: Sequence[ForwardRule], *,
                 chunk_size: int = 4096, trust_root: TrustRoot | None = None,
                 forward_pulled: bool = True) -> None:
        """``trust_root``: the CAs a TLS target's certificate must chain to
        (None: the system's). ``forward_pulled`` False: streams pulled from
        elsewhere are not forwarded (a ``--workers`` relay: the worker
        holding the publisher forwards it)."""
        self.admission = admission
        self.forward_pulled = forward_pulled
        self.trust_root = trust_root
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.rules = list(rules)
        self.chunk_size = chunk_size
        self.forwards: dict[tuple[str, str], list[Forward]] = {}
        #: Totals of forwards that have stopped, so the counters only go up.
        self.ended_bytes = 0
        self.ended_connects = 0
        self.ended_refusals = 0
        admission.add_listener(self)

    def connector(self, target: PushTarget, chunk_size: int) -> Any:
        """One connection attempt to ``target`` per call (tests replace it)."""
        return make_connector(self.reactor, target, has_audio=True, has_video=True,
                              chunk_size=chunk_size, trust_root=self.trust_root)

    def urls_for(self, app: str) -> list[str]:
        """The forward URL templates of ``app``."""
        return [rule.url for rule in self.rules if rule.app == app]

    def add(self, stream: Stream, template: str, *, origin: str = "config") -> Forward | None:
        """Forward ``stream`` to ``template`` (unless it is already), starting now."""
        forwards = self.forwards.setdefault((stream.app, stream.name), [])
        if any(f.stream is stream and f.template == template for f in forwards):
            return None
        forward = Forward(self, stream, template, origin=origin)
        forwards.append(forward)
        stream.forwards.append(forward)
        forward.start()
        return forward

    def forget(self, forward: Forward) -> None:
        key = (forward.stream.app, forward.stream.name)
        forwards = self.forwards.get(key, [])
        if forward in forwards:
            forwards.remove(forward)
            self.ended_bytes += forward.bytes_sent
            self.ended_connects += forward.connects
            self.ended_refusals += forward.refusals
            if not forwards:
                del self.forwards[key]
        if forward in forward.stream.forwards:
            forward.stream.forwards.remove(forward)

    # -- IAdmissionListener ---------------------------------------------------------------

    def refused(self, request: object, refusal: object, message: str) -> None:
        pass

    def started(self, request: object) -> None:
        if not isinstance(request, AdmissionRequest) or request.action is not Action.PUBLISH:
            return
        publisher = self.admission.publishers.get((request.app, request.stream))
        if publisher is None or not self.running:
            return
        stream = publisher.stream
        if not self.forward_pulled and IUpstreamSource.providedBy(publisher.source):
            return
        for template in self.urls_for(stream.app):
            self.add(stream, template)
        for url in publisher.forward_urls:
            self.add(stream, url, origin="hook")

    def ended(self, request: object, why: str) -> None:
        if not isinstance(request, AdmissionRequest) or request.action is not Action.PUBLISH:
            return
        key = (request.app, request.stream)
        live = self.admission.registry.streams.get(key)
        for forward in list(self.forwards.get(key, ())):
            if forward.stream is not live or not live.live:
                forward.stop(f"stream ended: publisher {request.peer} {why}")

    # -- service ------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        finishing = [forward.stop("the server is shutting down")
                     for forwards in list(self.forwards.values()) for forward in list(forwards)]
        return defer.DeferredList(finishing, consumeErrors=True)

    def all(self) -> Iterator[Forward]:
        for forwards in self.forwards.values():
            yield from forwards

    def collect(self) -> Iterator[Metric]:
        """Prometheus series of the forwards (labels: the state only)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        forwards = list(self.all())
        family = GaugeMetricFamily("rtmpd_forwards", "Forwards to other servers, by state.",
                                   labels=["state"])
        for state in STATES:
            family.add_metric([state], sum(1 for f in forwards if f.state == state))
        yield family
        yield CounterMetricFamily(
            "rtmpd_forward_bytes", "Bytes sent to forward targets.",
            value=self.ended_bytes + sum(f.bytes_sent for f in forwards),
        )
        yield CounterMetricFamily(
            "rtmpd_forward_connects", "Connection attempts to forward targets.",
            value=self.ended_connects + sum(f.connects for f in forwards),
        )
        yield CounterMetricFamily(
            "rtmpd_forward_refusals", "Attempts the forward targets refused.",
            value=self.ended_refusals + sum(f.refusals for f in forwards),
        )
