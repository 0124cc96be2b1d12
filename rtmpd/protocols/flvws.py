"""WS-FLV on the ``--http`` port (Autobahn, sharing the twisted.web site; the
``Upgrade`` header chooses).

* ``ws://host:8501/{app}/{stream}.flv`` plays: binary messages, the first
  the FLV header, then one FLV tag per message. Each tag's WebSocket frame is
  prepared once and its bytes shared by every WS viewer.
* ``ws://host:8501/{app}/{stream}`` publishes: binary messages carrying an FLV
  byte stream split anywhere.

Close codes: 1000 stream ended, 1003 text message, 1009 message over
:data:`MAX_MESSAGE_BYTES`, 4400 bad name, 4404 unknown stream, 4409 name
busy, 4400 bad FLV.
"""

from __future__ import annotations

import pprint
from collections.abc import Hashable
from typing import Any
from urllib.parse import unquote

import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionRequest
from twisted.logger import Logger

from rtmpd.codec import flv
from rtmpd.codec.errors import ProtocolError
from rtmpd.errors import InvalidStreamName, StreamBusy
from rtmpd.fanout import ViewerOutput, ViewerState
from rtmpd.media import Frame
from rtmpd.protocols.flvhttp import flv_preamble, parse_flv_path
from rtmpd.protocols.flvingest import FlvIngest
from rtmpd.registry import Stream, StreamRegistry

log = Logger()



def _not_formatted(value: object, *args: object, **kwargs: object) -> str:
    return f"({type(value).__name__}, not formatted)"


# Autobahn pretty-prints its whole configuration (pprint.pformat) for a debug
# line on every new connection, even with debug logging off: measured at
# ~0.4 ms of a ~0.8 ms WebSocket join here. The module's other users of that
# name are a debug line at handshake start and Timings.__str__ (only with
# trackTimings, which rtmpd leaves off); all now say what they would have
# shown instead.
if _autobahn_protocol.__dict__.get("pformat") is pprint.pformat:
    setattr(_autobahn_protocol, "pformat", _not_formatted)  # noqa: B010

#: Largest WebSocket message (and frame) a publisher may send. FLV bytes may
#: be split anywhere, so there is no reason for a big message; 8 MiB covers a
#: whole large keyframe for senders that send one tag per message.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

#: Subprotocols FLV publishers and players offer (none is fine too); the
#: first one offered that is in this list is accepted.
SUBPROTOCOLS = ("flv", "post", "publisher", "publish", "play", "player", "binary")

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_BAD_REQUEST = 4400
CLOSE_NOT_FOUND = 4404
CLOSE_BUSY = 4409


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


class WsFlvViewer(ViewerOutput):
    """The playing side of one WS-FLV connection."""

    __slots__ = ("protocol", "stream")

    def __init__(self, proto: WsFlvProtocol, stream: Stream) -> None:
        assert proto.transport is not None
        super().__init__(proto.transport, proto.peer_name)
        self.protocol = proto
        self.stream = stream

    def stream_ended(self, reason: str) -> None:
        # The close that follows logs the one "stop play" line, with this.
        self.protocol.close_reason = f"stream ended: {reason}"
        self.protocol.sendClose(CLOSE_NORMAL, "stream ended")

    def drop(self, reason: str) -> None:
        log.warn("play {path} by {peer} dropped: {reason}", path=self.stream.path,
                 peer=self.description, reason=reason)
        self.protocol.close_reason = reason
        transport: Any = self.protocol.transport
        if transport is not None:
            transport.abortConnection()


class WsFlvProtocol(WebSocketServerProtocol):
    """One WS-FLV connection, playing or publishing."""

    factory: WsFlvFactory

    def __init__(self) -> None:
        super().__init__()
        self.peer_name = "ws ?"
        self.mode: str | None = None
        self.app = ""
        self.name = ""
        self.refusal: tuple[int, str] | None = None
        self.viewer: WsFlvViewer | None = None
        self.ingest: FlvIngest | None = None
        self.close_reason: str | None = None

    def onConnect(self, request: ConnectionRequest) -> str | None:
        # "ws 127.0.0.1:5000", like "rtmp ..." and "http-flv ..." (Autobahn
        # says "tcp4:127.0.0.1:5000").
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", 0)
        self.peer_name = f"ws {host}:{port}" if host else f"ws {request.peer}"
        path = request.path
        segments = [unquote(part).encode("utf-8", "surrogateescape")
                    for part in path.split("/")[1:]]
        playing = path.endswith(".flv")
        self.mode = "play" if playing else "publish"
        try:
            self.app, self.name = parse_flv_path(segments, ".flv" if playing else "")
        except InvalidStreamName as e:
            self.refusal = (CLOSE_BAD_REQUEST, str(e))
        for offered in request.protocols:
            if offered in SUBPROTOCOLS:
                return str(offered)
        return None

    def onOpen(self) -> None:
        transport: Any = self.transport
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        if self.refusal is not None:
            self._refuse(*self.refusal)
            return
        registry = self.factory.registry
        if self.mode == "play":
            stream = registry.get(self.app, self.name)
            if stream is None:
                self._refuse(CLOSE_NOT_FOUND, f"stream {self.app}/{self.name} is not live")
                return
            # The HTTP channel that carried the upgrade is still the socket's
            # producer; the viewer takes its place.
            transport.unregisterProducer()
            self.viewer = WsFlvViewer(self, stream)
            transport.registerProducer(self.viewer, True)
            registry.viewer_log.line(log, "play", stream.path, "play {path} by {peer} (ws-flv)",
                                     peer=self.peer_name)
            stream.add_viewer(WS_FLV, self.viewer)
            return
        try:
            self.ingest = FlvIngest(registry, self.app, self.name, self.peer_name, self._stop)
        except InvalidStreamName as e:
            self._refuse(CLOSE_BAD_REQUEST, str(e))
        except StreamBusy as e:
            self._refuse(CLOSE_BUSY, str(e))

    def _refuse(self, code: int, reason: str) -> None:
        log.info("ws {mode} refused for {peer}: {code} {reason}", mode=self.mode,
                 peer=self.peer_name, code=code, reason=reason)
        self.close_reason = reason
        self.sendClose(code, reason[:120])

    def _stop(self, reason: str) -> None:
        self.sendClose(CLOSE_NORMAL, reason[:120])

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
            self.ingest = None
            log.warn("ws publish by {peer}: bad FLV, closing: {error}", peer=self.peer_name,
                     error=str(e))
            ingest.finish(f"sent bad FLV ({e})")
            self.close_reason = f"bad FLV: {e}"
            self.sendClose(CLOSE_BAD_REQUEST, f"bad FLV: {e}"[:120])

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
            return
        self.viewer = None
        if viewer.state is not ViewerState.CLOSED:
            viewer.stream.remove_viewer(viewer)
        # One line for a viewer's end: what it got and why it closed.
        viewer.stream.registry.viewer_log.line(
            log, "stop", viewer.stream.path,
            "stop play {path} by {peer}: {why} ({bytes} bytes sent, {dropped} frames skipped)",
            peer=self.peer_name, why=why, bytes=viewer.bytes_sent,
            dropped=viewer.frames_dropped,
        )


class WsFlvFactory(WebSocketServerFactory):
    """Builds WS-FLV protocols; holds the registry."""

    protocol = WsFlvProtocol  # type: ignore[assignment]

    def __init__(self, registry: StreamRegistry) -> None:
        super().__init__()
        self.registry = registry
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE_BYTES,
            maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            openHandshakeTimeout=15,
            closeHandshakeTimeout=5,
            autoPingInterval=None,
            # Send the close code (1009, 1002...) before dropping a peer that
            # broke the protocol, so it learns why.
            failByDrop=False,
        )


def make_ws_resource(registry: StreamRegistry) -> WebSocketResource:
    """The resource the HTTP-FLV root hands upgrade requests to."""
    return WebSocketResource(WsFlvFactory(registry))
