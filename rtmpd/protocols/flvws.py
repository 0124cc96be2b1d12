"""WS-FLV on the ``--http`` port (Autobahn, sharing the twisted.web site; the
``Upgrade`` header chooses).

* ``ws://host:8501/{app}/{stream}.flv`` plays: binary messages, the first
  the FLV header, then one FLV tag per message. Each tag's WebSocket frame is
  prepared once and its bytes shared by every WS viewer.
* ``ws://host:8501/{app}/{stream}`` publishes: binary messages carrying an FLV
  byte stream split anywhere.

Close codes: 1000 stream ended, 1003 text message, 1009 message over
:data:`MAX_MESSAGE_BYTES`, 4400 bad name or bad FLV, 4403 not authorized
(no or wrong key or signature, a hook said no, a page on another site), 4404
unknown stream, 4409 name busy, 4502 a gateway's upstream failed, 4503 a
limit is full (:data:`CLOSE_CODES`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlencode

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionRequest
from twisted.logger import Logger
from twisted.python.failure import Failure

from rtmpd._twisted import (
    compact_instance,
    release_upgraded_channel,
    share_plain_defaults,
    shed_autobahn_handshake,
)
from rtmpd.admission import (
    MAX_QUERY_CHARS,
    Action,
    Admission,
    AdmissionRefused,
    AdmissionRequest,
    Publisher,
    Refusal,
)
from rtmpd.codec import enhanced, flv
from rtmpd.codec.errors import ProtocolError
from rtmpd.fanout import ViewerOutput, unread_output_excess
from rtmpd.media import Frame
from rtmpd.protocols import LEGACY_QUERY, LegacyFormat, say_what_is_left_out, set_no_delay
from rtmpd.protocols.flvhttp import (
    _raw_names,
    flv_preamble,
    foreign_origin,
    live_names,
    parse_flv_path,
)
from rtmpd.protocols.flvingest import FlvIngest
from rtmpd.registry import Stream

log = Logger()



#: Largest WebSocket message (and frame) a publisher may send. FLV bytes may
#: be split anywhere, so there is no reason for a big message; 8 MiB covers a
#: whole large keyframe for senders that send one tag per message.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

#: Subprotocols FLV publishers and players offer (none is fine too); the
#: first one offered that is in this list is accepted.
SUBPROTOCOLS = ("flv", "post", "publisher", "publish", "play", "player", "binary")

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_BAD_REQUEST = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BUSY = 4409
CLOSE_LIMIT = 4503
CLOSE_UNAVAILABLE = 4502

#: The close code of each refusal.
CLOSE_CODES: dict[Refusal, int] = {
    Refusal.BAD_NAME: CLOSE_BAD_REQUEST,
    Refusal.NOT_FOUND: CLOSE_NOT_FOUND,
    Refusal.BUSY: CLOSE_BUSY,
    # The interface: every authorization refusal closes with 4403.
    Refusal.UNAUTHORIZED: CLOSE_FORBIDDEN,
    Refusal.FORBIDDEN: CLOSE_FORBIDDEN,
    Refusal.LIMIT: CLOSE_LIMIT,
    Refusal.UNAVAILABLE: CLOSE_UNAVAILABLE,
}



def _ws_binary_frame(payload: bytes) -> bytes:
    """The wire bytes of one unmasked binary message (server to client),
    framed by Autobahn's prepared-message path."""
    prepared = PreparedMessage(payload, isBinary=True, applyMask=False, doNotCompress=True)
    return bytes(prepared.payloadHybi)


class WsFlvFormat:
    """One prepared WebSocket binary frame per FLV tag, shared by all WS viewers."""

    key: Hashable = ("ws-flv",)

    def encode(self, frame: Frame) -> bytes:
        return _ws_binary_frame(flv.encode_tag(frame.kind, frame.timestamp_ms, frame.payload))

    def preamble(self, stream: Stream) -> list[bytes]:
        return [_ws_binary_frame(flv_preamble(stream))]


WS_FLV = WsFlvFormat()
#: For players that predate Enhanced RTMP, asked for with ``?codecs=legacy``.
LEGACY_WS_FLV = LegacyFormat(WS_FLV)


class WsFlvViewer(ViewerOutput):
    """The playing side of one WS-FLV connection."""

    __slots__ = ("connection",)

    def __init__(self, proto: WsFlvProtocol, stream: Stream, *, legacy: bool = False) -> None:
        assert proto.transport is not None
        super().__init__(
            proto.transport, proto.peer_name, stream=stream,
            output=LEGACY_WS_FLV if legacy else WS_FLV,
            protocol="ws-flv", client_id=proto.client_id,
        )
        self.connection = proto

    def stream_ended(self, reason: str) -> None:
        self.finish(f"stream ended: {reason}")
        self.connection.sendClose(CLOSE_NORMAL, "stream ended")

    def drop(self, reason: str) -> None:
        self.finish(f"dropped: {reason}", dropped=True)
        self.connection.close_reason = reason
        transport: Any = self.connection.transport
        if transport is not None:
            transport.abortConnection()


class SendQueue(list[Any]):
    """Autobahn's queue of frames sent in order across reactor turns (only
    with ``sync`` or ``chopsize``, which rtmpd never asks for): the same
    three operations on a list. An empty deque takes 760 bytes, an empty
    list 56, and every WS-FLV viewer holds one for hours."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


#: What an open connection's parsed handshake headers and query become:
#: nothing reads them again, and an empty dict per viewer is 64 bytes.
_NO_HEADERS: Mapping[str, Any] = MappingProxyType({})


#: Text the opening handshake kept (Autobahn reads it only while handshaking);
#: its private ``_wskey`` stays, private attributes being touched only in
#: :mod:`rtmpd._twisted`.
_HANDSHAKE_TEXT = (
    "http_response_data", "http_status_line", "http_request_uri", "http_request_path",
    "http_request_host", "websocket_origin",
)
#: Plain attributes the opening handshake sets on every connection that
#: opens (and nothing reads before it): a viewer may leave them to its class.
_HANDSHAKE_NAMES = frozenset((
    *_HANDSHAKE_TEXT, "http_request_data", "_wskey", "websocket_version",
    "websocket_protocol_in_use", "inside_message", "current_frame",
))


class WsFlvProtocol(WebSocketServerProtocol):
    """One WS-FLV connection, playing or publishing."""

    factory: WsFlvFactory
    #: The attributes every connection of the class has set once connected.
    _set_on_connect: frozenset[str] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self.peer_name = "ws ?"
        self.client_id = 0
        self.request: AdmissionRequest | None = None
        self.refusal: AdmissionRefused | None = None
        self.viewer: WsFlvViewer | None = None
        self.ingest: FlvIngest | None = None
        self.close_reason: str | None = None
        self.opened = False

    def connectionMade(self) -> None:
        # The HTTP connection this upgrade came on was counted by admission:
        # its id is handed over here (see WsFlvResource.render).
        self.client_id, self.factory.handoff_client_id = self.factory.handoff_client_id, 0
        if self.client_id:
            self.factory.admission.rebind_connection(self.client_id, "ws", self._kick)
        super().connectionMade()
        self.send_queue = SendQueue()  # type: ignore[assignment]
        # Text messages are refused unread (onMessage), so nothing is ever
        # validated as UTF-8 (utf8validateIncoming is off): no validator.
        self.utf8validator = None  # type: ignore[assignment]
        cls = type(self)
        if "_set_on_connect" not in cls.__dict__:
            # What every connection of this class has set by now (Autobahn's
            # only conditions here are the factory's options, the same for
            # the whole class): the attributes _shed_handshake may share.
            cls._set_on_connect = frozenset(self.__dict__)

    def _kick(self, reason: str) -> None:
        self.close_reason = reason
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def onConnect(self, request: ConnectionRequest) -> str | None:
        # "ws 127.0.0.1:5000", like "rtmp ..." and "http-flv ..." (Autobahn
        # says "tcp4:127.0.0.1:5000").
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        # Locals, not attributes: a viewer holds its protocol for hours.
        peer_host = str(host or "?")
        peer_port = int(getattr(peer, "port", 0))
        self.peer_name = f"ws {host}:{peer_port}" if host else f"ws {request.peer}"
        path = request.path
        segments = [unquote(part).encode("utf-8", "surrogateescape")
                    for part in path.split("/")[1:]]
        playing = path.endswith(".flv")
        try:
            app, name = parse_flv_path(segments, ".flv" if playing else "")
            if playing:
                app, name = live_names(self.factory.admission, app, name)
        except AdmissionRefused as e:
            app, name = _raw_names(segments)
            self.refusal = e
        if not playing and self.refusal is None and not self.factory.cors_publish:
            origin = request.headers.get("origin")
            host = request.headers.get("host")
            self.refusal = foreign_origin(
                [origin.encode("latin-1", "replace")] if origin else None,
                [host.encode("latin-1", "replace")] if host else None,
            )
        self.request = AdmissionRequest(
            action=Action.PLAY if playing else Action.PUBLISH, app=app, stream=name,
            query=urlencode(request.params, doseq=True)[:MAX_QUERY_CHARS],
            peer_host=peer_host, peer_port=peer_port, protocol="ws-flv",
            client_id=self.client_id,
        )
        for offered in request.protocols:
            if offered in SUBPROTOCOLS:
                return str(offered)
        return None

    def onOpen(self) -> None:
        self.opened = True
        transport: Any = self.transport
        set_no_delay(transport)
        request = self.request
        assert request is not None
        admission = self.factory.admission
        if self.refusal is not None:
            admission.refuse(request, self.refusal).addErrback(self._refused)
            return
        if request.action is Action.PLAY:
            admission.play(request, self._start_viewer).addErrback(self._refused)
            return
        ingest = self.ingest = FlvIngest(self.peer_name, self._stop)
        d = admission.publish(request, ingest, alive=lambda: self.ingest is ingest)
        d.addCallbacks(self._admitted, self._refused)

    def _alive(self) -> bool:
        return self.transport is not None and self.close_reason is None and (
            self.state == WebSocketServerProtocol.STATE_OPEN
        )

    def _start_viewer(self, stream: Stream) -> WsFlvViewer | None:
        if not self._alive():
            return None
        transport: Any = self.transport
        # The HTTP channel that carried the upgrade is still the socket's
        # producer; the viewer takes its place.
        transport.unregisterProducer()
        request = self.request
        legacy = request is not None and request.params().get(LEGACY_QUERY[0]) == LEGACY_QUERY[1]
        viewer = self.viewer = WsFlvViewer(self, stream, legacy=legacy)
        transport.registerProducer(viewer, True)
        self._shed_handshake()
        if legacy:
            say_what_is_left_out(stream, enhanced.LEGACY, self.peer_name,
                                 "it asked for ?codecs=legacy")
        return viewer

    def _shed_handshake(self) -> None:
        """Let go of the opening handshake as Autobahn kept it (raw request
        and response, parsed headers and query), which nothing reads once
        the connection is open: a viewer is held for hours, and this was a
        sixth of its memory (``benchmarks/joincost.py ws --memory``).

        Then the attribute dict: Autobahn sets ~70 attributes per
        connection, most to the same flags and constants, in a table of
        1.6 KB; those that hold what the class now holds are left to the
        class (:func:`rtmpd._twisted.share_plain_defaults`), and ~20 stay."""
        for name in _HANDSHAKE_TEXT:
            setattr(self, name, "")
        self.http_request_data = b""
        self.http_headers = _NO_HEADERS  # type: ignore[assignment]
        self.http_request_params = _NO_HEADERS  # type: ignore[assignment]
        self.websocket_protocols = ()  # type: ignore[assignment]
        self.websocket_extensions = ()  # type: ignore[assignment]
        shed_autobahn_handshake(self)
        # The viewer keeps the admission request (it logs its end).
        self.request = None
        # Every connection that gets here has been through connect and the
        # opening handshake, which set all of these.
        share_plain_defaults(self, self._set_on_connect | _HANDSHAKE_NAMES)
        # And what its factory's class holds (the factory, the shared empties).
        compact_instance(self)

    def _admitted(self, publisher: Publisher) -> None:
        ingest = self.ingest
        if ingest is None:
            publisher.end("left before the publish started")
            return
        try:
            ingest.started(publisher)
        except ProtocolError as e:
            self._bad_flv(ingest, e)

    def _refused(self, failure: Failure) -> None:
        failure.trap(AdmissionRefused)
        error: AdmissionRefused = failure.value  # type: ignore[assignment]
        ingest, self.ingest = self.ingest, None
        if ingest is not None:
            ingest.finish("refused")
        if error.refusal is Refusal.GONE or not self._alive():
            return
        self.close_reason = f"refused: {error.message}"
        self.sendClose(CLOSE_CODES.get(error.refusal, CLOSE_FORBIDDEN), error.message[:120])

    def _stop(self, reason: str) -> None:
        self.close_reason = reason
        self.sendClose(CLOSE_NORMAL, reason[:120])

    def onPing(self, payload: bytes) -> None:
        # A peer flooding pings and reading no pongs is dropped past the bound.
        excess = unread_output_excess(self.transport, self.factory.viewer_queue_bytes)
        if excess is not None:
            log.warn("{peer} reads nothing: {excess}; dropped", peer=self.peer_name,
                     excess=excess)
            self._kick(f"dropped: {excess}")
            return
        super().onPing(payload)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.close_reason = "sent a text message"
            self.sendCloseFrame(CLOSE_UNSUPPORTED_DATA, b"binary FLV messages only")
            return
        ingest = self.ingest
        if ingest is None:
            return  # viewers have nothing to say
        try:
            ingest.feed(payload)
        except ProtocolError as e:
            self._bad_flv(ingest, e)

    def _bad_flv(self, ingest: FlvIngest, error: ProtocolError) -> None:
        self.ingest = None
        log.warn("ws publish by {peer}: bad FLV, closing: {error}", peer=self.peer_name,
                 error=str(error))
        ingest.finish(f"sent bad FLV ({error})")
        self.close_reason = f"bad FLV: {error}"
        # The codec's hint: 413 (a tag over its limit) is WebSocket's 1009.
        code = CLOSE_MESSAGE_TOO_BIG if error.hint == 413 else CLOSE_BAD_REQUEST
        self.sendClose(code, f"bad FLV: {error}"[:120])

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        ingest = self.ingest
        if ingest is not None:
            self.ingest = None
            try:
                ingest.feed(b"")
            except ProtocolError:
                ingest.finish("disconnected mid-tag")
            else:
                ingest.finish("finished")
        why = self.close_reason or reason or f"code {code}"
        viewer = self.viewer
        if viewer is None:
            log.info("close {peer}: {why}", peer=self.peer_name, why=why)
        else:
            self.viewer = None
            viewer.finish(why)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        if self.client_id:
            self.factory.admission.close_connection(self.client_id)
            self.client_id = 0


class WsFlvFactory(WebSocketServerFactory):
    """Builds WS-FLV protocols; holds admission."""

    protocol = WsFlvProtocol  # type: ignore[assignment]

    def __init__(self, admission: Admission, reactor: Any, *, cors_publish: bool = False) -> None:
        # Autobahn's own timers (handshake, close) run on txaio's loop, which
        # txaio keeps global for Twisted and will not set per factory.
        super().__init__(reactor=reactor)
        self.admission = admission
        #: Pages on other sites may publish (``--cors-publish``).
        self.cors_publish = cors_publish
        self.viewer_queue_bytes = admission.registry.config.viewer_queue_bytes
        #: The admission id of the HTTP connection being upgraded right now
        #: (set by WsFlvResource.render, taken by the protocol it builds).
        self.handoff_client_id = 0
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE_BYTES,
            maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            openHandshakeTimeout=15,
            closeHandshakeTimeout=5,
            autoPingInterval=None,
            # Send the close code (1009, 1002...) before dropping a peer that
            # broke the protocol, so it learns why.
            failByDrop=False,
            # Text messages are refused without reading them (onMessage):
            # no UTF-8 validation, and no validator per connection.
            utf8validateIncoming=False,
        )
        # Autobahn copies every option from the factory onto each new
        # protocol and pretty-prints the list for a debug line, even with
        # debug logging off (measured at ~0.4 ms of a ~0.8 ms join). Options
        # set on the protocol class are not copied, and an empty list is
        # cheap to print: so each factory gets a protocol class that carries
        # its options.
        options = {
            # A function stored on a class would become a method: keep it plain.
            name: staticmethod(value) if callable(value) else value
            for name in WsFlvProtocol.CONFIG_ATTRS
            for value in (getattr(self, name),)
        }
        # Also what every open connection of this factory holds alike, so
        # that a viewer leaves it to the class (_shed_handshake).
        alike = {
            "factory": self, "http_headers": _NO_HEADERS, "http_request_params": _NO_HEADERS,
            "websocket_protocols": (), "websocket_extensions": (),
        }
        self.protocol = type("ConfiguredWsFlvProtocol", (WsFlvProtocol,),  # type: ignore[assignment]
                             {**options, **alike, "CONFIG_ATTRS": ()})


class WsFlvResource(WebSocketResource):
    """The WebSocket upgrade on the ``--http`` port: hands the HTTP
    connection's admission id to the WebSocket protocol that takes it over."""

    def __init__(self, factory: WsFlvFactory) -> None:
        super().__init__(factory)
        self.ws_factory = factory

    def render(self, request: Any) -> Any:
        channel = request.channel
        client_id = int(getattr(channel, "client_id", 0))
        self.ws_factory.handoff_client_id = client_id
        channel.client_id = 0
        try:
            return super().render(request)
        finally:
            if self.ws_factory.handoff_client_id:
                # No protocol took it (the upgrade failed): the HTTP
                # connection keeps it.
                channel.client_id = self.ws_factory.handoff_client_id
                self.ws_factory.handoff_client_id = 0
            release_upgraded_channel(channel)


def make_ws_resource(
    admission: Admission, reactor: Any, *, cors_publish: bool = False
) -> WsFlvResource:
    """The resource the HTTP-FLV root hands upgrade requests to."""
    return WsFlvResource(WsFlvFactory(admission, reactor, cors_publish=cors_publish))
