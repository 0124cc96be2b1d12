"""Pulling one live stream over HTTP-FLV: a twisted.web ``Agent`` GET whose
body is parsed into Frames as it arrives.

A gateway's upstream (:mod:`rtmpd.services.upstream`) is made of these, one
per connection attempt. :class:`FlvPull` only moves bytes and reports; what
to do when the upstream says no, goes quiet or ends (reconnect, give up) is
its listener's business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from rtmpd import __version__
from rtmpd._twisted import quiet_pool
from rtmpd.client.tls import certificate_failure, https_policy
from rtmpd.codec import flv
from rtmpd.codec.errors import ProtocolError
from rtmpd.media import Frame

if TYPE_CHECKING:
    from rtmpd.client.tls import TrustRoot

#: Seconds from the request to the response's headers.
RESPONSE_TIMEOUT_S = 10.0
#: Seconds without a byte of body before the pull counts as broken (a live
#: stream sends several packets a second; a dead TCP peer sends nothing).
IDLE_TIMEOUT_S = 10.0
#: Bytes of an error answer's body kept for the log line.
MAX_ERROR_BODY_BYTES = 512

USER_AGENT = f"rtmpd-flvgateway/{__version__.public()}".encode()
#: The header an rtmpd origin names its publish with (see
#: :data:`rtmpd.protocols.flvhttp.STREAM_ID_HEADER`).
STREAM_ID_HEADER = b"X-Stream-Id"
#: Longest stream id taken from that header.
MAX_STREAM_ID_CHARS = 64


class PullListener(Protocol):
    """What a :class:`FlvPull` reports, in this order: either
    :meth:`pull_refused` once, or :meth:`pull_answered`, any number of
    :meth:`pull_frame`, then :meth:`pull_ended` once."""

    def pull_answered(self, stream_id: str | None) -> None:
        """The upstream answered 200: FLV follows. ``stream_id`` names the
        publish (an rtmpd upstream's ``X-Stream-Id``), None if not given."""

    def pull_frame(self, frame: Frame) -> None:
        """One frame of the body."""

    def pull_ended(self, reason: str) -> None:
        """The body ended or broke, or :meth:`FlvPull.stop` was called."""

    def pull_refused(self, status: int | None, reason: str) -> None:
        """No body will come: the upstream answered ``status`` (not 200), or
        could not be reached (``status`` None)."""


def make_agent(
    reactor: Any, *, connect_timeout: float = RESPONSE_TIMEOUT_S,
    trust_root: TrustRoot | None = None,
) -> IAgent:
    """The Agent pulls use: no connection reuse (each pull holds its
    connection for as long as the stream lasts), HTTPS certificates verified
    against ``trust_root`` (None: the system's CAs)."""
    # twisted.web.client is untyped.
    pool = quiet_pool(HTTPConnectionPool(reactor, persistent=False))  # type: ignore[no-untyped-call]
    agent: IAgent = Agent(  # type: ignore[no-untyped-call]
        reactor, contextFactory=https_policy(trust_root), connectTimeout=connect_timeout,
        pool=pool)
    return agent


def stream_url(base: str, app: str, name: str) -> bytes:
    """The HTTP-FLV URL of ``app/name`` under the upstream ``base``
    (``http://origin:8501``, maybe with a path prefix and a query, which is
    kept: ``http://origin:8501/edge?key=K`` gives
    ``http://origin:8501/edge/APP/NAME.flv?key=K``)."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + f"/{quote(app)}/{quote(name)}.flv"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")).encode("ascii")


def shown_url(url: str | bytes) -> str:
    """``url`` as logs and ``/api`` show it: the query (which may carry a
    play key) left out."""
    text = url.decode("ascii", "replace") if isinstance(url, bytes) else url
    base, sep, _ = text.partition("?")
    return base + ("?..." if sep else "")


def check_upstream(base: str) -> str:
    """``base`` if it is an http(s) URL with a host, else ValueError."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{base!r} is not an http:// or https:// URL with a host")
    if parts.fragment:
        raise ValueError(f"{base!r}: an upstream URL has no #fragment")
    try:
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError as e:
        raise ValueError(f"{base!r}: {e}") from None
    return base


class FlvPull:
    """One GET of one stream, parsed as it arrives; :meth:`stop` aborts it."""

    def __init__(
        self, agent: IAgent, url: bytes, clock: IReactorTime, listener: PullListener, *,
        response_timeout: float = RESPONSE_TIMEOUT_S, idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.agent = agent
        self.url = url
        self.clock = clock
        self.listener = listener
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.bytes_in = 0
        self.last_data_at: float | None = None
        self.done = False
        self._reader = flv.FlvReader()
        self._request: defer.Deferred[IResponse] | None = None
        self._body: _FlvBody | None = None
        self._idle_call: IDelayedCall | None = None

    def start(self) -> None:
        """Send the request."""
        headers = Headers({b"User-Agent": [USER_AGENT], b"Accept": [b"video/x-flv"]})
        d = self._request = self.agent.request(b"GET", self.url, headers)
        d.addTimeout(self.response_timeout, self.clock, onTimeoutCancel=_no_answer)
        d.addCallbacks(self._answered, self._unreachable)

    def stop(self, reason: str) -> None:
        """Abort the request or the body; the listener hears
        :meth:`PullListener.pull_ended` (or nothing more if it had been
        refused already)."""
        if self.done:
            return
        if self._body is not None:
            self._body.abort(reason)
            return
        self._finish()
        request, self._request = self._request, None
        if request is not None:
            request.addErrback(lambda _: None)
            request.cancel()
        self.listener.pull_ended(reason)

    # -- the answer ------------------------------------------------------------

    def _answered(self, response: IResponse) -> None:
        self._request = None
        if self.done:  # stopped while the headers came
            response.deliverBody(_Discard())  # type: ignore[no-untyped-call]
            return
        if response.code != http.OK:
            phrase = response.phrase.decode("latin-1", "replace")
            response.deliverBody(  # type: ignore[no-untyped-call]
                _ErrorBody(self, response.code, phrase))
            return
        self._body = _FlvBody(self)
        response.deliverBody(self._body)  # type: ignore[no-untyped-call]
        self._watch_idle()
        self.listener.pull_answered(_stream_id(response.headers))

    def _unreachable(self, failure: Failure) -> None:
        self._request = None
        if self.done:
            return
        self._finish()
        reason = _failure_text(failure)
        self.listener.pull_refused(None, reason)

    def _error_answer(self, status: int, phrase: str, body: bytes) -> None:
        if self.done:
            return
        self._finish()
        text = body.decode("utf-8", "replace").strip()
        reason = f"{status} {phrase}" + (f": {text}" if text else "")
        self.listener.pull_refused(status, reason)

    # -- the body ----------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.last_data_at = self.clock.seconds()
        reader = self._reader
        reader.receive_data(data)
        listener = self.listener
        while not self.done:
            event = reader.next_event()
            if event is flv.NEED_DATA:
                return
            if isinstance(event, flv.TagReceived):
                if event.body:
                    listener.pull_frame(Frame.from_tag(event.tag_type, event.timestamp_ms,
                                                       event.body))
            elif isinstance(event, flv.EndOfStream):
                return

    def _body_ended(self, reason: str) -> None:
        if self.done:
            return
        self._finish()
        self.listener.pull_ended(reason)

    def _watch_idle(self) -> None:
        """Every quarter of the idle timeout, look at when data last came
        (no timer work per packet)."""
        self._idle_call = None
        if self.done or self._body is None:
            return
        now = self.clock.seconds()
        since = self.last_data_at if self.last_data_at is not None else now
        if self.last_data_at is None:
            self.last_data_at = now
        if now - since >= self.idle_timeout:
            self._body.abort(f"no data for {now - since:.0f} s")
            return
        self._idle_call = self.clock.callLater(self.idle_timeout / 4, self._watch_idle)

    def _finish(self) -> None:
        self.done = True
        call, self._idle_call = self._idle_call, None
        if call is not None and call.active():
            call.cancel()


def _no_answer(result: object, timeout: float) -> Failure:
    """What a request that timed out fails with (whatever the cancelled
    connection attempt said)."""
    return Failure(defer.TimeoutError(f"no answer within {timeout:g} s"))  # type: ignore[no-untyped-call]


def _stream_id(headers: Headers) -> str | None:
    values = headers.getRawHeaders(STREAM_ID_HEADER)
    if not values:
        return None
    value = values[0][:MAX_STREAM_ID_CHARS]
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return text if text.isprintable() else None


def _failure_text(failure: Failure) -> str:
    """A connection failure as one short line (Agent wraps the cause in
    ResponseNeverReceived / ResponseFailed lists)."""
    tls = certificate_failure(failure)
    if tls is not None:
        return tls
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(_failure_text(r) for r in reasons)
    value = failure.value
    text = str(value).strip()
    name = type(value).__name__
    return f"{name}: {text}" if text and name not in text else (text or name)


class _FlvBody(protocol.Protocol):
    """The 200 answer's body: FLV, handed to the pull."""

    def __init__(self, pull: FlvPull) -> None:
        self.pull = pull
        self._abort_reason: str | None = None

    def dataReceived(self, data: bytes) -> None:
        try:
            self.pull._data(data)
        except ProtocolError as e:
            self.abort(f"not FLV: {e}")

    def abort(self, reason: str) -> None:
        if self._abort_reason is None:
            self._abort_reason = reason
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._abort_reason is not None:
            why = self._abort_reason
        elif reason.check(ResponseDone):  # type: ignore[no-untyped-call]
            why = "the upstream ended the stream"
        else:
            why = "the upstream connection broke: " + _failure_text(reason)
        self.pull._body_ended(why)


class _ErrorBody(protocol.Protocol):
    """An error answer's body: the first few hundred bytes, for the log."""

    def __init__(self, pull: FlvPull, status: int, phrase: str) -> None:
        self.pull = pull
        self.status = status
        self.phrase = phrase
        self.body = b""
        self._reported = False

    def dataReceived(self, data: bytes) -> None:
        self.body += data[: MAX_ERROR_BODY_BYTES - len(self.body)]
        if len(self.body) >= MAX_ERROR_BODY_BYTES:
            self._report()
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._report()

    def _report(self) -> None:
        if not self._reported:
            self._reported = True
            self.pull._error_answer(self.status, self.phrase, self.body)


class _Discard(protocol.Protocol):
    """A body nobody wants: the connection is closed at once."""

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def probe(agent: IAgent, url: bytes, clock: IReactorTime, *,
          timeout: float = RESPONSE_TIMEOUT_S) -> defer.Deferred[int | None]:
    """``HEAD url``: the status the upstream answers, None if it cannot be
    reached within ``timeout``."""
    headers = Headers({b"User-Agent": [USER_AGENT]})
    d = agent.request(b"HEAD", url, headers)
    d.addTimeout(timeout, clock, onTimeoutCancel=_no_answer)

    def answered(response: IResponse) -> int:
        response.deliverBody(_Discard())  # type: ignore[no-untyped-call]
        code: int = response.code
        return code

    result: defer.Deferred[int | None] = d.addCallbacks(answered, lambda _: None)
    return result
