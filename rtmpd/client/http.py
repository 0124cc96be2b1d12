"""HTTP-FLV publish: one ``POST`` through twisted.web's :class:`~twisted.web.client.Agent`.

``http(s)://host[:port]/{app}/{stream}[?query]``: the body is an FLV stream of unknown
length, so Agent sends it chunked. :class:`HttpPublisher` is its
:class:`~twisted.web.iweb.IBodyProducer`: each pacing batch is one chunk, the
connection's backpressure pauses and resumes the pacing core, and :meth:`finish`
ends the body (Agent writes the last, 0-length chunk).

The server says nothing while it takes the body: it answers 200 once the body has
ended, or refuses (400, 401, 403, 404, 409, 503...) before reading any of it, while
the pusher is still sending. Any answer before the end is a refusal; 400, 401, 403
and 404 are for good, the rest (409: the name is busy, often our own last session
still closing) worth retrying.

Agent alone cannot report such an early answer reliably: until the body has been
sent it hands the response over only once the whole answer has arrived, and on
the response's headers it stops reading the connection (until someone asks for the
body, which nobody can do yet). An answer whose body comes in a later read than its
headers is then never seen, and the publish ends as a lost connection ~2 s later,
when the server gives up on us. So the connection is watched (:class:`_Watched`, a
:class:`~twisted.protocols.policies.ProtocolWrapper` put in through
:meth:`Agent.usingEndpointFactory`, all public API): the first bytes from the
server end the body, after which Agent hands the response over as soon as its
headers are in. The same wrapper reports the connection's end, and lets
:meth:`abort` cut it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import error, protocol
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from rtmpd.client.session import USER_AGENT, SessionBase, SessionListener, Tag
from rtmpd.client.target import PushTarget
from rtmpd.client.tls import certificate_failure
from rtmpd.codec.flv import encode_header, encode_tag

__all__ = ["PERMANENT_STATUSES", "HttpPublisher"]

#: Refusals that retrying will not change.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404})
#: Most bytes of a refusal's body read for its reason.
_MAX_REASON_BYTES = 16384


@implementer(IBodyProducer)
class HttpPublisher(SessionBase):
    """Publishes with one chunked HTTP POST; any response before the end is a refusal."""

    length = UNKNOWN_LENGTH

    def __init__(self, target: PushTarget, listener: SessionListener, clock: IReactorTime,
                 *, has_audio: bool, has_video: bool):
        SessionBase.__init__(self, target, listener, clock)
        self._header: bytes | None = encode_header(has_audio=has_audio, has_video=has_video)
        #: The connection under Agent's HTTP client, once it is made.
        self._connection: Any = None
        self._request: Deferred[IResponse] | None = None
        self._consumer: IConsumer | None = None
        self._body: Deferred[None] | None = None
        #: The answer's status (0 until it comes).
        self.status = 0

    def post(self, reactor: IReactorTime, endpoint: IStreamClientEndpoint) -> None:
        """Connect through ``endpoint`` and send the request."""
        agent = Agent.usingEndpointFactory(reactor, _Endpoint(endpoint, self))
        headers = Headers({b"User-Agent": [USER_AGENT.encode()],
                           b"Content-Type": [b"video/x-flv"]})
        d = self._request = agent.request(
            b"POST", self.target.url().encode("ascii"), headers, self
        )
        d.addCallbacks(self._answered, self._request_failed)

    # -- IBodyProducer ----------------------------------------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """Agent has sent the request's headers: the body may start."""
        self._consumer = consumer
        self._body = Deferred()
        self._mark_ready()
        return self._body

    def stopProducing(self) -> None:
        """The connection is gone: nothing more goes in the body (and, as
        IBodyProducer asks, the Deferred of :meth:`startProducing` never fires)."""
        self._consumer = None
        self._body = None

    # pauseProducing and resumeProducing: SessionBase's, paced by the core

    # -- Session ----------------------------------------------------------------------

    def send_tags(self, tags: Sequence[Tag]) -> None:
        consumer = self._consumer
        if consumer is None:
            return  # the body has ended (answered, finishing) or the connection is gone
        parts = [encode_tag(tag_type, ts, body) for tag_type, ts, body in tags]
        if self._header is not None:
            parts.insert(0, self._header)
            self._header = None
        data = b"".join(parts)
        if data:
            consumer.write(data)  # one chunk

    def write_flv(self, data: bytes) -> None:
        """Send FLV bytes as they are (the FLV header and tags a live source
        serialized already): one chunk."""
        consumer = self._consumer
        if consumer is not None and data:
            consumer.write(data)

    def finish(self) -> Deferred[None]:
        if not self.finishing:
            self._begin_finish()
            self._end_body()
        return self.finished

    def _transport(self) -> Any:
        return self._connection

    def _watch_writes(self) -> None:
        pass  # Agent registered us with the connection already

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.abortConnection()
        elif self._request is not None:
            self._request.cancel()  # still connecting

    # -- the request and its answer ---------------------------------------------------

    def _end_body(self) -> None:
        """End the body: Agent writes the last, 0-length chunk."""
        body, self._body, self._consumer = self._body, None, None
        if body is not None:
            body.callback(None)

    def _answered(self, response: IResponse) -> None:
        self._end_body()  # an answer before the end: nothing more is read
        self.status = response.code
        if self.finishing:
            response.deliverBody(_FirstLine(lambda text: None))
            return
        phrase = response.phrase.decode("latin-1")
        status = f"HTTP {response.code} {phrase}".rstrip()
        self._fail(status, permanent=response.code in PERMANENT_STATUSES)

        def with_text(text: str) -> None:
            if text and self.reason == status:
                self.reason = f"{status}: {text}"
            if self._connection is not None:
                self._connection.loseConnection()

        response.deliverBody(_FirstLine(with_text))

    def _request_failed(self, failure: Failure) -> None:
        if self._connection is None:
            if not self.aborted:
                tls = certificate_failure(failure)
                self.listener.session_lost(
                    None, tls or f"cannot connect: {failure.getErrorMessage()}", tls is not None
                )
            return
        # The connection's end reports (connection_lost). Keep what Agent saw if it
        # is more than that end: an answer that is not HTTP, say.
        reasons: list[Failure] = getattr(failure.value, "reasons", None) or [failure]
        if not any(r.check(error.ConnectionClosed, CancelledError) for r in reasons):
            self._fail(f"bad answer from the server ({reasons[0].getErrorMessage()})")

    # -- what _Watched reports --------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._connection = transport

    def server_spoke(self) -> None:
        """Bytes from the server: an answer. Before the end of the body that is a
        refusal; ending the body lets Agent hand over the response (module doc)."""
        self._end_body()

    def connection_lost(self, reason: Failure) -> None:
        self._consumer = None
        self._lost(f"connection lost ({reason.getErrorMessage()})", reason)


class _FirstLine(protocol.Protocol):
    """Reads an answer's body up to its first line of text (the reason of a refusal)."""

    def __init__(self, done: Callable[[str], None]) -> None:
        self._done: Callable[[str], None] | None = done
        self._data = b""

    def dataReceived(self, data: bytes) -> None:
        if self._done is None:
            return
        self._data = (self._data + data)[:_MAX_REASON_BYTES]
        text = self._data.lstrip()
        if b"\n" in text or len(self._data) >= _MAX_REASON_BYTES:
            self._report()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._report()

    def _report(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            lines = self._data.decode("utf-8", "replace").strip().splitlines()
            done(lines[0] if lines else "")


class _Watched(ProtocolWrapper):
    """Agent's HTTP client protocol, with its connection reported to the publisher."""

    factory: _WatchingFactory

    def makeConnection(self, transport: Any) -> None:
        self.factory.publisher.connection_made(transport)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        # First, so that the body has ended before Agent parses the answer.
        self.factory.publisher.server_spoke()
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)  # Agent first: a refusal's text may end here
        self.factory.publisher.connection_lost(reason)


class _WatchingFactory(WrappingFactory):
    protocol = _Watched

    def __init__(self, wrapped: IProtocolFactory, publisher: HttpPublisher) -> None:
        super().__init__(wrapped)
        self.publisher = publisher


@implementer(IAgentEndpointFactory, IStreamClientEndpoint)
class _Endpoint:
    """Where Agent connects for the publish: ``endpoint``, the connection watched."""

    def __init__(self, endpoint: IStreamClientEndpoint, publisher: HttpPublisher) -> None:
        self._endpoint = endpoint
        self._publisher = publisher

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return self

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d = self._endpoint.connect(_WatchingFactory(protocolFactory, self._publisher))
        return d.addCallback(_unwrapped)


def _unwrapped(wrapper: IProtocol) -> IProtocol:
    """Agent wants its own protocol back, not the wrapper."""
    inner: IProtocol = wrapper.wrappedProtocol  # type: ignore[attr-defined]
    return inner
