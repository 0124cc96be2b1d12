"""HTTP-FLV on the ``--http`` port (twisted.web).

``GET /{app}/{stream}.flv`` plays a live stream as one endless FLV body.
``POST`` (or ``PUT``) ``/{app}/{stream}`` publishes one: the body, chunked,
``Content-Length`` or close-delimited, is an FLV stream parsed as it arrives
(twisted.web would otherwise buffer the whole body before rendering).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Hashable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.web import http, resource, server

from rtmpd.codec import flv
from rtmpd.codec.errors import ProtocolError
from rtmpd.errors import InvalidStreamName, StreamBusy
from rtmpd.fanout import ViewerOutput, ViewerState
from rtmpd.media import Frame
from rtmpd.protocols.flvingest import FlvIngest
from rtmpd.registry import Stream, StreamRegistry, validate_name

log = Logger()

CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, HEAD, POST, PUT, OPTIONS",
    b"Access-Control-Allow-Headers": b"Content-Type, Range, Authorization",
    b"Access-Control-Max-Age": b"86400",
}


def flv_preamble(stream: Stream) -> bytes:
    """The FLV file header with flags that match what the stream carries.

    Before any media has arrived both flags are set, since players (e.g.
    mpegts.js) wait for every track the header announces.
    """
    known = stream.has_audio or stream.has_video
    return flv.encode_header(
        has_audio=stream.has_audio or not known, has_video=stream.has_video or not known
    )


class FlvChunkedFormat:
    """FLV tags, each wrapped in its own HTTP/1.1 chunk, shared by all viewers."""

    key: Hashable = ("http-flv", "chunked")

    def encode(self, frame: Frame) -> bytes:
        tag = flv.encode_tag(frame.kind, frame.timestamp_ms, frame.payload)
        return b"%x\r\n%b\r\n" % (len(tag), tag)

    def preamble(self, stream: Stream) -> list[bytes]:
        header = flv_preamble(stream)
        return [b"%x\r\n%b\r\n" % (len(header), header)]


class FlvPlainFormat:
    """FLV tags with no framing: HTTP/1.0 bodies, delimited by the close."""

    key: Hashable = ("http-flv", "plain")

    def encode(self, frame: Frame) -> bytes:
        return flv.encode_tag(frame.kind, frame.timestamp_ms, frame.payload)

    def preamble(self, stream: Stream) -> list[bytes]:
        return [flv_preamble(stream)]


CHUNKED = FlvChunkedFormat()
PLAIN = FlvPlainFormat()


class HttpFlvViewer(ViewerOutput):
    """One HTTP-FLV response being streamed."""

    __slots__ = ("request", "stream")

    def __init__(self, request: server.Request, stream: Stream, transport: ITransport) -> None:
        peer = request.getClientAddress()
        host = getattr(peer, "host", "?")
        port = getattr(peer, "port", 0)
        super().__init__(transport, f"http-flv {host}:{port}")
        self.request = request
        self.stream = stream

    def stream_ended(self, reason: str) -> None:
        self.stream.registry.viewer_log.line(
            log, "stop", self.stream.path, "stop play {path} by {peer}: {reason}",
            peer=self.description, reason=reason,
        )
        if not self.request.finished and not self.request._disconnected:
            self.request.unregisterProducer()
            self.request.finish()

    def drop(self, reason: str) -> None:
        log.warn(
            "play {path} by {peer} dropped: {reason}", path=self.stream.path,
            peer=self.description, reason=reason,
        )
        self.request.unregisterProducer()
        self.request.channel.transport.abortConnection()  # type: ignore[union-attr]

    def connection_lost(self, reason: object) -> None:
        """The response ended: the client went away, or we finished it."""
        if self.state is ViewerState.CLOSED:
            return
        self.stream.remove_viewer(self)
        self.stream.registry.viewer_log.line(
            log, "stop", self.stream.path,
            "stop play {path} by {peer}: closed by the client ({bytes} bytes sent, "
            "{dropped} frames skipped)",
            peer=self.description, bytes=self.bytes_sent, dropped=self.frames_dropped,
        )


def _text(request: server.Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-cache")
    return (message + "\n").encode()


def parse_flv_path(path_segments: list[bytes], suffix: str) -> tuple[str, str]:
    """Split ``[app, stream + suffix]`` into validated names.

    Raises InvalidStreamName for anything else, including dot segments and
    percent-escapes (which twisted.web has already decoded).
    """
    if len(path_segments) != 2:
        raise InvalidStreamName("the path must be /{app}/{stream}" + suffix)
    try:
        app = path_segments[0].decode("ascii")
        name = path_segments[1].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidStreamName("names must be ASCII") from None
    if suffix:
        if not name.endswith(suffix):
            raise InvalidStreamName(f"the path must end in {suffix}")
        name = name[: -len(suffix)]
    return validate_name(app, "app name"), validate_name(name)


class FlvHttpResource(resource.Resource):
    """The root of the ``--http`` site: HTTP-FLV play (and, later, publish)."""

    isLeaf = True

    def __init__(
        self, registry: StreamRegistry, websocket: resource.IResource | None = None
    ) -> None:
        super().__init__()
        self.registry = registry
        self.websocket = websocket

    def render(self, request: server.Request) -> bytes | int:
        """Upgrade requests go to the WebSocket resource, the rest by method."""
        upgrade = request.getHeader(b"upgrade")
        if self.websocket is not None and upgrade is not None and upgrade.lower() == b"websocket":
            result: bytes | int = self.websocket.render(request)
            return result
        return super().render(request)  # type: ignore[no-any-return]

    def _cors(self, request: server.Request) -> None:
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)

    def render_OPTIONS(self, request: server.Request) -> bytes:
        """CORS preflight."""
        self._cors(request)
        request.setResponseCode(http.NO_CONTENT)
        return b""

    def render_HEAD(self, request: server.Request) -> bytes:
        """Whether the stream is live, with the headers a GET would get."""
        self._cors(request)
        # The status and headers a GET would get, and no body (Twisted
        # warns about, and drops, a body returned for HEAD).
        try:
            app, name = parse_flv_path(request.postpath or [], ".flv")
        except InvalidStreamName as e:
            _text(request, http.BAD_REQUEST, str(e))
            return b""
        if self.registry.get(app, name) is None:
            _text(request, http.NOT_FOUND, f"stream {app}/{name} is not live")
            return b""
        request.setHeader(b"Content-Type", b"video/x-flv")
        request.setHeader(b"Cache-Control", b"no-cache")
        return b""

    def render_POST(self, request: server.Request) -> bytes | int:
        """Publish: the FLV body was streamed into the registry as it arrived
        (see :class:`FlvRequest`); now it has ended."""
        self._cors(request)
        if isinstance(request, FlvRequest) and request.refused:
            return server.NOT_DONE_YET  # answered already; the connection closes
        if not isinstance(request, FlvRequest):
            return _text(request, http.BAD_REQUEST, "publishing needs rtmpd's request factory")
        code, message = request.end_of_body()
        return _text(request, code, message)

    render_PUT = render_POST

    def render_GET(self, request: server.Request) -> bytes | int:
        """Play: an FLV header, metadata, sequence headers, the GOP, then live."""
        self._cors(request)
        try:
            app, name = parse_flv_path(request.postpath or [], ".flv")
        except InvalidStreamName as e:
            log.info("http-flv play refused: {error}", error=str(e))
            return _text(request, http.BAD_REQUEST, str(e))
        stream = self.registry.get(app, name)
        if stream is None:
            log.info("http-flv play {app}/{name}: not found", app=app, name=name)
            return _text(request, http.NOT_FOUND, f"stream {app}/{name} is not live")
        request.setHeader(b"Content-Type", b"video/x-flv")
        request.setHeader(b"Cache-Control", b"no-cache, no-store")
        transport = request.channel.transport
        assert transport is not None
        # Start the response: status line and headers. Body bytes are then
        # written pre-framed (one shared chunk per tag) straight to the socket.
        request.write(b"")
        output = CHUNKED if request.chunked else PLAIN
        viewer = HttpFlvViewer(request, stream, transport)
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        request.registerProducer(viewer, True)
        request.notifyFinish().addBoth(viewer.connection_lost)
        stream.registry.viewer_log.line(
            log, "play", stream.path, "play {path} by {peer} (http-flv)", peer=viewer.description
        )
        stream.add_viewer(output, viewer)
        return server.NOT_DONE_YET


#: How long a refused publisher may go on sending its body (discarded) after
#: the refusal, so that it can read the answer before the connection closes.
REFUSAL_LINGER_S = 2.0

_STATUS_TEXT = {400: b"Bad Request", 403: b"Forbidden", 409: b"Conflict"}


class FlvRequest(server.Request):
    """A Request that streams a publish body into the registry instead of
    buffering it, and refuses a bad publish before reading its body."""

    ingest: FlvIngest | None = None
    refused = False

    def _peer(self) -> str:
        peer = self.getClientAddress()
        return f"http {getattr(peer, 'host', '?')}:{getattr(peer, 'port', 0)}"

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        command = getattr(channel, "_command", b"")
        if command in (b"POST", b"PUT"):
            self.content = io.BytesIO()
            self._start_publish(channel, length)
            return
        super().gotLength(length)

    def _start_publish(self, channel: Any, length: int | None) -> None:
        raw_path = bytes(getattr(channel, "_path", b"/")).split(b"?", 1)[0]
        segments = [unquote_to_bytes(part) for part in raw_path.split(b"/")[1:]]
        site: Any = channel.site
        registry: StreamRegistry = site.resource.registry
        try:
            app, name = parse_flv_path(segments, "")
            self.ingest = FlvIngest(registry, app, name, self._peer(), self._stop)
        except InvalidStreamName as e:
            self._refuse(400, str(e))
            return
        except StreamBusy as e:
            self._refuse(409, str(e))
            return
        transport = channel.transport
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        if length == 0 and not self.requestHeaders.hasHeader(b"Content-Length"):
            # No Content-Length and not chunked: the body runs until the
            # client closes. twisted.web would read it as no body at all.
            from twisted.web.http import _IdentityTransferDecoder

            channel.length = None
            channel._transferDecoder = _IdentityTransferDecoder(
                None, self.handleContentChunk, channel._finishRequestBody
            )

    def _refuse(self, code: int, message: str) -> None:
        """Answer at once, before the body, and close the connection."""
        self.refused = True
        log.info("http publish refused for {peer}: {code} {message}", peer=self._peer(),
                 code=code, message=message)
        body = (message + "\n").encode()
        channel: Any = self.channel
        channel.persistent = False
        transport = channel.transport
        transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Access-Control-Allow-Origin: *\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s"
            % (code, _STATUS_TEXT.get(code, b"Error"), len(body), body)
        )
        # Lingering close: closing while the client is still sending its
        # body would reset the connection and destroy the answer before the
        # client reads it. Send FIN after the answer, discard what still
        # comes in, and cut the connection after REFUSAL_LINGER_S.
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()
        reactor = getattr(channel.site, "reactor", None)
        if reactor is not None:
            reactor.callLater(REFUSAL_LINGER_S, transport.abortConnection)

    def _stop(self, reason: str) -> None:
        channel: Any = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.loseConnection()

    def handleContentChunk(self, data: bytes) -> None:
        ingest = self.ingest
        if ingest is None:
            if not self.refused:
                super().handleContentChunk(data)
            return
        try:
            ingest.feed(data)
        except ProtocolError as e:
            self.ingest = None
            if ingest.tags_in == 0:
                self._refuse(400, f"the body is not an FLV stream: {e}")
            else:
                log.warn("http publish by {peer}: bad FLV, closing: {error}",
                         peer=ingest.description, error=str(e))
                channel: Any = self.channel
                channel.transport.abortConnection()
            ingest.finish(f"sent bad FLV ({e})")

    def end_of_body(self) -> tuple[int, str]:
        """The body ended: end the stream; the status and text to answer."""
        ingest = self.ingest
        if ingest is None:
            return 400, "nothing was published"
        self.ingest = None
        try:
            ingest.feed(b"")
        except ProtocolError as e:
            ingest.finish(f"ended with a damaged body ({e})")
            return 200, f"published {ingest.tags_in} tags; the body ended early: {e}"
        ingest.finish("finished")
        return 200, f"published {ingest.tags_in} tags, {ingest.bytes_in} bytes"

    def connectionLost(self, reason: Any) -> None:
        ingest = self.ingest
        if ingest is not None:
            self.ingest = None
            if self.channel is not None and getattr(self.channel, "length", 0) is None:
                # A close-delimited body: the close is its end.
                with contextlib.suppress(ProtocolError):
                    ingest.feed(b"")
            ingest.finish("disconnected")
        super().connectionLost(reason)
