"""HTTP-FLV on the ``--http`` port (twisted.web).

``GET /{app}/{stream}.flv`` plays a live stream as one endless FLV body.
``POST`` (or ``PUT``) ``/{app}/{stream}`` publishes one: the body, chunked,
``Content-Length`` or close-delimited, is an FLV stream parsed as it arrives
(twisted.web would otherwise buffer the whole body before rendering).

Both go through admission (:mod:`rtmpd.admission`); refusals are answered
with the status in :data:`HTTP_STATUS`. A publish is decided before its body
is read.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.http_headers import Headers

from rtmpd._twisted import (
    HTTP_CHANNEL_PLAIN_NAMES,
    compact_instance,
    read_body_until_close,
    request_disconnected,
    request_line,
    share_plain_defaults,
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
from rtmpd.errors import InvalidStreamName
from rtmpd.fanout import OutputFormat, ViewerOutput
from rtmpd.media import Frame
from rtmpd.protocols import (
    LEGACY_QUERY,
    RELAY_PROTOCOL,
    LegacyFormat,
    host_and_port,
    say_what_is_left_out,
    set_no_delay,
)
from rtmpd.protocols.flvingest import FlvIngest
from rtmpd.registry import Stream, validate_name

log = Logger()

#: CORS for play: open to pages on any origin.
CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, HEAD, OPTIONS",
    b"Access-Control-Allow-Headers": b"Content-Type, Range, Authorization",
    b"Access-Control-Max-Age": b"86400",
}
#: ... and with ``--cors-publish``, for publish too.
CORS_PUBLISH_HEADERS = {
    **CORS_HEADERS,
    b"Access-Control-Allow-Methods": b"GET, HEAD, POST, PUT, OPTIONS",
}


#: Names the publish an HTTP-FLV answer carries (:attr:`Stream.publish_id`):
#: a gateway that reconnects learns from it whether the stream it finds is
#: the one it was relaying (its timestamps go on) or a new publish.
STREAM_ID_HEADER = b"X-Stream-Id"


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
#: For players that predate Enhanced RTMP, asked for with ``?codecs=legacy``.
LEGACY_CHUNKED = LegacyFormat(CHUNKED)
LEGACY_PLAIN = LegacyFormat(PLAIN)


class HttpFlvViewer(ViewerOutput):
    """One HTTP-FLV response being streamed."""

    __slots__ = ("request",)

    def __init__(
        self, request: server.Request, stream: Stream, output: OutputFormat,
        transport: ITransport, client_id: int, *, relay: bool = False,
    ) -> None:
        """``relay``: the play of a sibling worker's relay (``--workers``)."""
        if relay:
            protocol, description = RELAY_PROTOCOL, "relay to a sibling worker"
        else:
            host, port = _peer(request)
            protocol, description = "http-flv", f"http-flv {host}:{port}"
        super().__init__(
            transport, description, stream=stream, output=output,
            protocol=protocol, client_id=client_id,
        )
        self.request = request

    def stream_ended(self, reason: str) -> None:
        self.finish(f"stream ended: {reason}")
        if not self.request.finished and not request_disconnected(self.request):
            self.request.unregisterProducer()
            self.request.finish()

    def drop(self, reason: str) -> None:
        self.finish(f"dropped: {reason}", dropped=True)
        self.request.unregisterProducer()
        self.request.channel.transport.abortConnection()  # type: ignore[union-attr]

    def connection_lost(self, reason: object) -> None:
        """The response ended: the client went away, or we finished it (or
        closed its connection, saying why on the request)."""
        self.finish(getattr(self.request, "close_reason", None) or "closed by the client")


#: Request headers the access log line reads when a play ends.
LOGGED_REQUEST_HEADERS = (b"referer", b"user-agent")


#: A playing Request's parsed query and cookies once shed (read-only: nothing
#: reads them again, and nothing may write to it).
_NOTHING_PARSED: Mapping[bytes, Any] = MappingProxyType({})


#: Methods and versions a playing Request keeps as these shared objects.
_REQUEST_LINE_WORDS = {word: word for word in (b"GET", b"HEAD", b"HTTP/1.1", b"HTTP/1.0")}


class _Alike:
    """One object for equal values, so that thousands of viewers hold one:
    players send the same few user agents and referers, and every
    connection to a port has the same local address. Holds the ``limit``
    values used last (each of at most :data:`ALIKE_MAX_BYTES`, checked by
    the caller), so clients cannot grow it, and values that stop coming
    make room for new ones."""

    __slots__ = ("_held", "_limit")

    def __init__(self, limit: int) -> None:
        self._held: dict[Hashable, Any] = {}
        self._limit = limit

    def one(self, key: Hashable, make: Callable[[], Any]) -> Any:
        held = self._held.pop(key, None)
        if held is None:
            held = make()
            if len(self._held) >= self._limit:
                del self._held[next(iter(self._held))]  # the one used longest ago
        self._held[key] = held  # last: used most recently
        return held


#: Most distinct logged header sets, and local addresses, held for sharing.
ALIKE_LIMIT = 256
#: Longest logged header values (together) held for sharing.
ALIKE_MAX_BYTES = 1024

_LOGGED_ALIKE = _Alike(ALIKE_LIMIT)
_HOST_ALIKE = _Alike(ALIKE_LIMIT)

#: A playing Request's response headers once they are sent: nothing sets
#: headers on a response that has started (read-only by convention: one
#: object for every viewer).
_SENT_HEADERS = Headers()


def _logged_headers(headers: Headers) -> Headers:
    """The request headers the access log reads, shared with every request
    that sent the same (read-only by convention, as above)."""
    kept = tuple(
        (name, tuple(values))
        for name in LOGGED_REQUEST_HEADERS
        if (values := headers.getRawHeaders(name)) is not None
    )

    def make() -> Headers:
        return Headers({name: list(values) for name, values in kept})

    if sum(len(value) for _, values in kept for value in values) > ALIKE_MAX_BYTES:
        return make()
    return _LOGGED_ALIKE.one(kept, make)  # type: ignore[no-any-return]


def shed_request(request: server.Request) -> None:
    """Let go of what a play's Request no longer needs once its status line
    and headers are written: the response headers, the request headers but
    those the access log reads at the end (shared with requests that sent
    the same), the parsed path and query, the cookies and the (empty) body,
    and its own copy of the local address. A viewer is held for hours, and
    these were a third of its memory (``benchmarks/joincost.py http --memory``)."""
    request.requestHeaders = _logged_headers(request.requestHeaders)
    request.responseHeaders = _SENT_HEADERS
    host = request.host
    with contextlib.suppress(TypeError):  # an address type that does not hash
        request.host = _HOST_ALIKE.one(host, lambda: host)
    # Not emptied but replaced by shared empties: an empty list or dict is
    # still 56-64 bytes, five of them per viewer.
    request.args = _NOTHING_PARSED  # type: ignore[assignment]
    request.received_cookies = _NOTHING_PARSED  # type: ignore[assignment]
    request.cookies = request.prepath = request.postpath = ()  # type: ignore[assignment]
    request.sitepath = ()  # type: ignore[attr-defined]  # set by Site.getResourceFor
    # The request line's method and version as shared constants, not bytes
    # of each request's own.
    request.method = _REQUEST_LINE_WORDS.get(request.method, request.method)
    request.clientproto = _REQUEST_LINE_WORDS.get(request.clientproto, request.clientproto)
    content, request.content = request.content, None
    if content is not None:
        content.close()


def settle_playing_channel(channel: Any) -> None:
    """Rebuild a playing channel's attribute dict with only what is its own
    (held for as long as the viewer plays): what its site's channel class
    holds (site, factory, request class, ``callLater``; see
    :class:`FlvSite`) and plain values its class now holds are left out.
    Called once the play has started and registered its producer, so that
    no name is added after (a dict of 10 names is 272 bytes, of 11 464)."""
    share_plain_defaults(channel, HTTP_CHANNEL_PLAIN_NAMES)
    compact_instance(channel)


def _text(request: server.Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-cache")
    # The message may quote what the client sent (a refused name): never
    # let a browser take it for HTML.
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return (message + "\n").encode()


#: The HTTP status of each refusal.
HTTP_STATUS: dict[Refusal, int] = {
    Refusal.BAD_NAME: http.BAD_REQUEST,
    Refusal.NOT_FOUND: http.NOT_FOUND,
    Refusal.BUSY: http.CONFLICT,
    Refusal.UNAUTHORIZED: http.UNAUTHORIZED,
    Refusal.FORBIDDEN: http.FORBIDDEN,
    Refusal.LIMIT: http.SERVICE_UNAVAILABLE,
    Refusal.UNAVAILABLE: http.BAD_GATEWAY,
}


def parse_flv_path(path_segments: list[bytes], suffix: str) -> tuple[str, str]:
    """Split ``[app, stream + suffix]`` into names, which admission then
    validates like every protocol's (here only for an early HEAD answer).

    Raises AdmissionRefused (``BAD_NAME``) for anything else, including dot
    segments and percent-escapes (which twisted.web has already decoded).
    """
    if len(path_segments) != 2:
        raise AdmissionRefused(Refusal.BAD_NAME, "the path must be /{app}/{stream}" + suffix)
    try:
        app = path_segments[0].decode("ascii")
        name = path_segments[1].decode("ascii")
    except UnicodeDecodeError:
        raise AdmissionRefused(Refusal.BAD_NAME, "names must be ASCII") from None
    if suffix:
        if not name.endswith(suffix):
            raise AdmissionRefused(Refusal.BAD_NAME, f"the path must end in {suffix}")
        name = name[: -len(suffix)]
    try:
        return validate_name(app, "app name"), validate_name(name)
    except InvalidStreamName as e:
        raise AdmissionRefused(Refusal.BAD_NAME, str(e)) from None


def live_names(admission: Admission, app: str, name: str) -> tuple[str, str]:
    """``app`` and ``name`` as the live stream of that name holds them, when
    there is one: every viewer's admission request keeps its names while it
    plays, and thousands play the same stream. (Not ``sys.intern``: names
    come from clients, and some Pythons never free interned strings.)"""
    stream = admission.registry.streams.get((app, name))
    return (stream.app, stream.name) if stream is not None else (app, name)


def foreign_origin(
    origins: Sequence[bytes] | None, hosts: Sequence[bytes] | None
) -> AdmissionRefused | None:
    """A refusal for a publish sent by a page on another site, or None.

    Browsers add ``Origin`` to cross-site POSTs (which need no preflight)
    and to every WebSocket; without ``--cors-publish`` a page may publish
    only from the server's own host name (its own pages, on any of its
    ports). Encoders send no ``Origin`` and are not affected.
    """
    if not origins:
        return None
    origin = origins[0].decode("latin-1").strip()
    origin_host = urlsplit(origin).hostname if "://" in origin else None
    host = hosts[0].decode("latin-1") if hosts else ""
    own_host = urlsplit(f"//{host}").hostname
    if origin_host is not None and own_host is not None and origin_host == own_host:
        return None
    return AdmissionRefused(
        Refusal.FORBIDDEN,
        "publishing from a page on another site needs --cors-publish on the server",
    )


def _query(uri: bytes) -> str:
    query = uri.partition(b"?")[2][:MAX_QUERY_CHARS]
    return query.decode("latin-1")


def _peer(request: server.Request) -> tuple[str, int]:
    peer = request.getClientAddress()
    return host_and_port(peer)


def client_id_of(request: server.Request) -> int:
    """The admission id of the connection carrying ``request`` (0 if none)."""
    return int(getattr(getattr(request, "channel", None), "client_id", 0))


class FlvHttpResource(resource.Resource):
    """The root of the ``--http`` site: HTTP-FLV play and publish, and the
    WebSocket upgrade."""

    isLeaf = True

    def __init__(
        self,
        admission: Admission,
        websocket: resource.IResource | None = None,
        *,
        cors_publish: bool = False,
        relay: bool = False,
    ) -> None:
        """``relay``: the resource on a ``--workers`` worker's Unix socket,
        where the other workers relay its streams from. Its plays are the
        server's own (``internal``: no credentials, no viewer limit, and
        never passed on to the origin, so two workers never relay a stream
        from each other); they are admitted with the protocol ``relay``."""
        super().__init__()
        self.admission = admission
        self.websocket = websocket
        #: Whether browsers on other origins may publish (``--cors-publish``).
        self.cors_publish = cors_publish
        self.relay = relay

    def render(self, request: server.Request) -> bytes | int:
        """Upgrade requests go to the WebSocket resource, the rest by method."""
        if isinstance(request, FlvRequest) and request.refused:
            return server.NOT_DONE_YET  # answered already; the connection closes
        upgrade = request.getHeader(b"upgrade")
        if (
            self.websocket is not None and request.method == b"GET"
            and upgrade is not None and upgrade.lower() == b"websocket"
        ):
            result: bytes | int = self.websocket.render(request)
            return result
        return super().render(request)  # type: ignore[no-any-return]

    def cors_headers(self, *, publish: bool) -> dict[bytes, bytes]:
        """CORS headers for a play answer or, with ``publish``, a publish one
        (none unless ``--cors-publish``)."""
        if publish and not self.cors_publish:
            return {}
        return CORS_PUBLISH_HEADERS if self.cors_publish else CORS_HEADERS

    def _cors(self, request: server.Request, *, publish: bool = False) -> None:
        for name, value in self.cors_headers(publish=publish).items():
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
            stream = self.admission.lookup(app, name)
        except AdmissionRefused as e:
            _text(request, HTTP_STATUS[e.refusal], e.message)
            return b""
        origin = None if self.relay else self.admission.origin
        if stream is None and origin is not None:
            # A gateway: live if its upstream has it.
            d = origin.probe(app, name)
            assert isinstance(d, Deferred)
            d.addCallback(self._probed, request, app, name)
            return server.NOT_DONE_YET  # type: ignore[return-value]
        self._head_answer(request, None if stream is not None else Refusal.NOT_FOUND, app, name)
        return b""

    def _probed(
        self, refusal: Refusal | None, request: server.Request, app: str, name: str
    ) -> None:
        if request_disconnected(request):
            return
        self._head_answer(request, refusal, app, name)
        request.finish()

    @staticmethod
    def _head_answer(
        request: server.Request, refusal: Refusal | None, app: str, name: str
    ) -> None:
        if refusal is not None:
            message = (f"stream {app}/{name} is not live" if refusal is Refusal.NOT_FOUND
                       else f"stream {app}/{name}: {refusal.value}")
            _text(request, HTTP_STATUS[refusal], message)
            return
        request.setHeader(b"Content-Type", b"video/x-flv")
        request.setHeader(b"Cache-Control", b"no-cache")

    def render_POST(self, request: server.Request) -> bytes | int:
        """Publish: the FLV body was streamed into the registry as it arrived
        (see :class:`FlvRequest`); now it has ended."""
        self._cors(request, publish=True)
        if not isinstance(request, FlvRequest):
            return _text(request, http.BAD_REQUEST, "publishing needs rtmpd's request factory")
        if request.deciding:
            # The whole body came before the decision: answer once it comes.
            request.body_ended = True
            return server.NOT_DONE_YET
        code, message = request.end_of_body()
        return _text(request, code, message)

    render_PUT = render_POST

    def render_GET(self, request: server.Request) -> bytes | int:
        """Play: an FLV header, metadata, sequence headers, the GOP, then live."""
        self._cors(request)
        host, port = _peer(request)
        try:
            app, name = live_names(
                self.admission, *parse_flv_path(request.postpath or [], ".flv"))
        except AdmissionRefused as e:
            app, name = _raw_names(request.postpath or [])
            refusal: AdmissionRefused | None = e
        else:
            refusal = None
        play = AdmissionRequest(
            action=Action.PLAY, app=app, stream=name, query=_query(request.uri),
            peer_host=host, peer_port=port,
            protocol=RELAY_PROTOCOL if self.relay else "http-flv",
            client_id=client_id_of(request),
        )
        if refusal is not None:
            self.admission.refuse(play, refusal).addErrback(self._refused, request)
            return server.NOT_DONE_YET

        def start(stream: Stream) -> HttpFlvViewer | None:
            if request_disconnected(request):
                return None
            request.setHeader(b"Content-Type", b"video/x-flv")
            request.setHeader(b"Cache-Control", b"no-cache, no-store")
            request.setHeader(STREAM_ID_HEADER, stream.publish_id.encode("ascii"))
            transport = request.channel.transport
            assert transport is not None
            # Start the response: status line and headers. Body bytes are then
            # written pre-framed (one shared chunk per tag) straight to the socket.
            request.write(b"")
            shed_request(request)
            legacy = play.params().get(LEGACY_QUERY[0]) == LEGACY_QUERY[1]
            output: OutputFormat
            if legacy:
                output = LEGACY_CHUNKED if request.chunked else LEGACY_PLAIN
            else:
                output = CHUNKED if request.chunked else PLAIN
            viewer = HttpFlvViewer(request, stream, output, transport, play.client_id,
                                   relay=self.relay)
            if legacy:
                say_what_is_left_out(stream, enhanced.LEGACY, viewer.description,
                                     "it asked for ?codecs=legacy")
            set_no_delay(transport)
            request.registerProducer(viewer, True)
            if isinstance(request, FlvRequest):
                request.viewer = viewer
                settle_playing_channel(request.channel)  # its site's channel class
            else:  # a plain twisted.web Request (not served by FlvSite)
                request.notifyFinish().addBoth(viewer.connection_lost)
            return viewer

        d = self.admission.play(play, start, internal=self.relay)
        d.addErrback(self._refused, request)
        return server.NOT_DONE_YET

    def _refused(self, failure: Failure, request: server.Request) -> None:
        failure.trap(AdmissionRefused)
        error: AdmissionRefused = failure.value  # type: ignore[assignment]
        if error.refusal is Refusal.GONE or request_disconnected(request):
            return
        body = _text(request, HTTP_STATUS[error.refusal], error.message)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()


def _raw_names(segments: list[bytes]) -> tuple[str, str]:
    """App and stream of a path that did not parse, for the refusal's log
    line (the stream without its ``.flv``, as the refusal names it)."""
    text = [s.decode("ascii", "replace")[:130] for s in segments[:2]]
    app, name = [*text, "", ""][:2]
    return app, name.removesuffix(".flv")


#: How long a refused publisher may go on sending its body (discarded) after
#: the refusal, so that it can read the answer before the connection closes.
REFUSAL_LINGER_S = 2.0

_STATUS_TEXT = {
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 409: b"Conflict",
    413: b"Content Too Large", 503: b"Service Unavailable",
}


#: What twisted.web sets on a Request after creating it, on the way to a
#: playing viewer (content and parsed request line, the resource lookup, the
#: response start, the producer), as the class has them until set.
_PLAY_ATTRIBUTES = (
    "content", "args", "method", "uri", "clientproto", "path", "site", "prepath",
    "postpath", "sitepath", "startedWriting", "chunked", "sentLength",
    "streamingProducer", "producer", "viewer",
)


class FlvRequest(server.Request):
    """A Request that streams a publish body into the registry instead of
    buffering it, and refuses a bad publish before reading its body.

    The decision may take a while (an HTTP hook): reading from the socket
    stops until it comes, and what already arrived is kept by the ingest.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Python keeps the attributes of a class's instances in one shared
        # table of up to 30 names, filled in the order instances first set
        # them; an instance that sets a name past a full table gets a whole
        # dict of its own (~1.3 KB more for a viewer held for hours). Set
        # here, a play's names come first whatever request a server sees
        # first; a refused one (a 404 before the stream is live) set its own
        # names first, and every later play paid for it.
        cls = type(self)
        for name in _PLAY_ATTRIBUTES:
            setattr(self, name, getattr(cls, name, None))

    ingest: FlvIngest | None = None
    refused = False
    #: Admission has not decided yet; the socket is not being read.
    deciding = False
    #: The body ended while deciding (it was all in the first packets).
    body_ended = False
    #: The body has neither a length nor chunks: the close ends it.
    close_delimited = False
    #: The play this request streams, told once when the response ends
    #: (finished here, or its connection lost). In place of
    #: ``notifyFinish()``, whose Deferred a viewer would hold for as long as
    #: it plays (~370 bytes).
    viewer: HttpFlvViewer | None = None

    def finish(self) -> None:
        super().finish()
        self._play_ended(None)

    def _play_ended(self, reason: Failure | None) -> None:
        viewer = self.viewer
        if viewer is not None:
            self.viewer = None
            viewer.connection_lost(reason)

    def gotLength(self, length: int | None) -> None:
        command, raw_path = request_line(self.channel)
        if command in (b"POST", b"PUT"):
            self.content = io.BytesIO()
            self._start_publish(raw_path, length)
            return
        if length is None or length > 0:
            # Only a publish has a body here; any other could trickle in
            # forever, a byte at a time, past every timeout.
            self.content = io.BytesIO()
            self._cors_headers = CORS_HEADERS
            self._refuse(400, f"a {command.decode('latin-1')[:16]} request has no body here")
            return
        super().gotLength(length)

    def _start_publish(self, raw_path: bytes, length: int | None) -> None:
        channel: Any = self.channel
        path, _sep, query = raw_path.partition(b"?")
        segments = [unquote_to_bytes(part) for part in path.split(b"/")[1:]]
        site: FlvSite = channel.site
        root = site.flv
        admission = root.admission
        host, port = _peer(self)
        try:
            app, name = parse_flv_path(segments, "")
        except AdmissionRefused as e:
            app, name = _raw_names(segments)
            refusal: AdmissionRefused | None = e
        else:
            refusal = None
        publish = AdmissionRequest(
            action=Action.PUBLISH, app=app, stream=name,
            query=query[:MAX_QUERY_CHARS].decode("latin-1"), peer_host=host,
            peer_port=port, protocol="http-flv", client_id=client_id_of(self),
        )
        self._cors_headers = root.cors_headers(publish=True)
        if refusal is None and not root.cors_publish:
            refusal = foreign_origin(self.requestHeaders.getRawHeaders(b"origin"),
                                     self.requestHeaders.getRawHeaders(b"host"))
        if refusal is not None:
            admission.refuse(publish, refusal).addErrback(self._refused)
            return
        ingest = self.ingest = FlvIngest(publish.peer, self._stop)
        transport = channel.transport
        set_no_delay(transport)
        if length == 0 and not self.requestHeaders.hasHeader(b"Content-Length"):
            # No Content-Length and not chunked: the body runs until the
            # client closes. twisted.web would read it as no body at all.
            read_body_until_close(channel, self.handleContentChunk)
            self.close_delimited = True
        self.deciding = True
        d = admission.publish(publish, ingest, alive=lambda: self.ingest is ingest)
        d.addCallbacks(self._admitted, self._refused)
        if self.deciding:
            # Deciding takes a while: read nothing more until it is made.
            transport.pauseProducing()

    def _admitted(self, publisher: Publisher) -> None:
        was_deciding, self.deciding = self.deciding, False
        ingest = self.ingest
        if ingest is None:
            publisher.end("left before the publish started")
            return
        channel: Any = getattr(self, "channel", None)
        if was_deciding and channel is not None and channel.transport is not None:
            channel.transport.resumeProducing()
        try:
            ingest.started(publisher)
        except ProtocolError as e:
            self._bad_body(ingest, e)
            return
        if self.body_ended:
            code, message = self.end_of_body()
            self.write(_text(self, code, message))
            self.finish()

    def _refused(self, failure: Failure) -> None:
        self.deciding = False
        failure.trap(AdmissionRefused)
        error: AdmissionRefused = failure.value  # type: ignore[assignment]
        ingest, self.ingest = self.ingest, None
        if ingest is not None:
            ingest.finish("refused")
        channel: Any = getattr(self, "channel", None)
        if error.refusal is Refusal.GONE or channel is None or channel.transport is None:
            return
        channel.transport.resumeProducing()
        self._refuse(HTTP_STATUS[error.refusal], error.message)

    def _refuse(self, code: int, message: str) -> None:
        """Answer at once, before the body, and close the connection."""
        self.refused = True
        body = (message + "\n").encode()
        channel: Any = self.channel
        channel.persistent = False
        transport = channel.transport
        cors = b"".join(b"%s: %s\r\n" % item for item in self._cors_headers.items())
        transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"X-Content-Type-Options: nosniff\r\n"
            b"%sContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (code, _STATUS_TEXT.get(code, b"Error"), cors, len(body), body)
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

    def _bad_body(self, ingest: FlvIngest, error: ProtocolError) -> None:
        self.ingest = None
        if ingest.tags_in == 0:
            # The codec's hint says which status fits (413 for a tag over
            # its limit); 400 otherwise.
            hint = error.hint
            self._refuse(hint if isinstance(hint, int) and 400 <= hint < 500 else 400,
                         f"bad FLV body: {error}")
        else:
            log.warn("http publish by {peer}: bad FLV, closing: {error}",
                     peer=ingest.description, error=str(error))
            channel: Any = self.channel
            channel.transport.abortConnection()
        ingest.finish(f"sent bad FLV ({error})")

    def handleContentChunk(self, data: bytes) -> None:
        ingest = self.ingest
        if ingest is None:
            if not self.refused:
                super().handleContentChunk(data)
            return
        try:
            ingest.feed(data)
        except ProtocolError as e:
            self._bad_body(ingest, e)

    def end_of_body(self) -> tuple[int, str]:
        """The body ended: end the stream; the status and text to answer."""
        ingest = self.ingest
        if ingest is None or ingest.publisher is None:
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
            if self.close_delimited:
                # A close-delimited body: the close is its end.
                with contextlib.suppress(ProtocolError):
                    ingest.feed(b"")
            ingest.finish("disconnected")
        super().connectionLost(reason)
        self._play_ended(reason)


#: Bytes of request line and headers an HTTP client may send (Twisted's
#: default too, named here): enough for any player's or encoder's request
#: with a long signed query.
MAX_HEADER_BYTES = 16384
#: Seconds a client may take to send a complete request line and headers,
#: so that one trickling a byte at a time cannot hold a connection open.
HEADER_TIMEOUT_S = 10.0


def refuse_connection(transport: Any, message: str, *, code: int = 503) -> None:
    """Answer a connection refused before its request is read (a 503 by
    default), and close it."""
    body = (message + "\n").encode()
    transport.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8"
        b"\r\nX-Content-Type-Options: nosniff"
        b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (code, _STATUS_TEXT.get(code, b"Error"), len(body), body)
    )
    transport.loseConnection()


class DeadlineChannel(http.HTTPChannel):
    """An HTTP connection whose every request must bring its line and
    headers within the site's ``header_timeout`` (and ``max_header_bytes``):
    a client trickling a byte at a time is closed. Used on both HTTP ports."""

    site: Any
    totalHeadersSize = MAX_HEADER_BYTES
    _header_deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        limit = getattr(self.site, "max_header_bytes", MAX_HEADER_BYTES)
        if limit != self.totalHeadersSize:  # else the class's: one name fewer per viewer
            self.totalHeadersSize = limit
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        site: Any = self.site
        timeout = getattr(site, "header_timeout", HEADER_TIMEOUT_S)
        if timeout:
            self._header_deadline = self.callLater(timeout, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        peer = self.transport.getPeer() if self.transport is not None else None
        log.info("close http {host}:{port}: no complete request headers within {t:g} s",
                 host=getattr(peer, "host", "?"), port=getattr(peer, "port", 0),
                 t=getattr(self.site, "header_timeout", HEADER_TIMEOUT_S))
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _cancel_header_deadline(self) -> None:
        call = self._header_deadline
        self._header_deadline = None
        if call is not None and call.active():
            call.cancel()

    def allHeadersReceived(self) -> None:
        self._cancel_header_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: http.Request) -> None:
        super().requestDone(request)
        if self.persistent and self.transport is not None and not self.requests:
            self._arm_header_deadline()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_header_deadline()
        super().connectionLost(reason)


class FlvHttpChannel(DeadlineChannel):
    """An HTTP connection on the ``--http`` port: counted and limited by
    admission (``--max-connections``), with a deadline for its headers."""

    client_id = 0

    def connectionMade(self) -> None:
        flv: FlvHttpResource = self.site.flv
        if flv.relay:
            # A sibling worker's relay (--workers): the box's own connection,
            # not a client, so not counted nor limited (--max-connections).
            super().connectionMade()
            return
        admission = flv.admission
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host, port = host_and_port(peer)
        try:
            self.client_id = admission.open_connection(host, port, "http", self._kick)
        except AdmissionRefused as e:
            http.HTTPChannel.connectionMade(self)
            refuse_connection(self.transport, e.message)
            return
        super().connectionMade()

    def _kick(self, reason: str) -> None:
        # Each request's end says why (a playing one's stop line, which
        # would otherwise blame the client).
        for request in self.requests:
            request.close_reason = reason
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.client_id:
            self.site.flv.admission.close_connection(self.client_id)
        super().connectionLost(reason)


class _WithoutQuery:
    """A request as the access log sees it: the query (keys, signatures) left out."""

    def __init__(self, request: Any) -> None:
        self._request = request
        path, sep, _query = request.uri.partition(b"?")
        self.uri = path + (b"?..." if sep else b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def access_log_line(timestamp: str, request: Any) -> str:
    """Twisted's combined access log line, without the query string: it
    carries keys and signatures, which never go to a log."""
    line: str = http.combinedLogFormatter(timestamp, _WithoutQuery(request))
    return line


class FlvSite(server.Site):
    """The ``--http`` site: FLV requests on counted, deadline-bound channels."""

    protocol = FlvHttpChannel  # type: ignore[assignment]

    def __init__(
        self, flv: FlvHttpResource, *, reactor: IReactorTime,
        header_timeout: float = HEADER_TIMEOUT_S, max_header_bytes: int = MAX_HEADER_BYTES,
        timeout: float = 30, root: resource.Resource | None = None,
    ) -> None:
        """``root`` is the site's resource when it is not ``flv`` itself (a
        gateway's, which serves ``/api`` beside it)."""
        super().__init__(root if root is not None else flv, requestFactory=FlvRequest,
                         timeout=timeout, reactor=reactor, logFormatter=access_log_line)
        #: The FLV resource: publishes and connection counts go through its
        #: admission.
        self.flv = flv
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.displayTracebacks = False
        # One channel class per site, holding what every channel of the site
        # has alike: a playing channel leaves these to it
        # (settle_playing_channel). One bound callLater, not one per channel.
        self._call_later = reactor.callLater
        base = self.protocol
        self.protocol = type(base.__name__, (base,), {  # type: ignore[assignment]
            "__module__": base.__module__, "__doc__": base.__doc__,
            "site": self, "factory": self, "requestFactory": self.requestFactory,
            "callLater": self._call_later, "totalHeadersSize": max_header_bytes,
        })

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            channel.callLater = self._call_later  # the class's, not a new bound method
        return channel


