"""Authorizers for :mod:`rtmpd.admission`: static keys, signed URLs and HTTP
hooks, plus the done hooks that hear when an admitted client ends.

Admission asks each authorizer in turn, and the first refusal wins
(``ARCHITECTURE.md`` section 8). :func:`build_authorizers` orders them
cheapest first: a static key is a string compare, a signature one HMAC, a
hook a round trip to another server.

Signed URLs carry ``?expires=UNIX_SECONDS&sig=HEX`` where ``HEX`` is the
lowercase hex HMAC-SHA256, keyed with the server's secret, of::

    {action}:{app}/{stream}:{expires}        e.g. publish:live/cam1:1767225600

with ``action`` ``publish`` or ``play``. Users sign URLs with that exact
message (``rtmpd-sign`` or their own code), so it never changes.

HTTP hooks get a JSON ``POST`` (:func:`hook_payload`) and answer with a
status: 2xx lets the request through, anything else, a timeout or a failure
refuses it. An on-publish hook's 2xx answer may also name URLs the stream is
forwarded to (:func:`forward_urls`: ``{"forward": ["rtmp://...", ...]}``).
Done hooks get the same JSON plus ``"reason"`` when an admitted
publisher or viewer ends, however it ends; nothing waits for their answer.

No refusal message carries a secret, a key, a signature or a hook's URL:
admission logs the messages and adapters send them to the client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from rtmpd import __version__
from rtmpd.admission import (
    ALLOW,
    MAX_QUERY_CHARS,
    Action,
    AdmissionRequest,
    Decision,
    Refusal,
    deny,
)
from rtmpd.client.target import UsageError, check_forward_url
from rtmpd.interfaces import IAdmissionListener, IAuthorizer

__all__ = [
    "DEFAULT_HOOK_TIMEOUT_S",
    "FAILURE_LOG_INTERVAL_S",
    "MAX_DONE_POSTS_IN_FLIGHT",
    "MAX_DONE_POSTS_QUEUED",
    "MAX_EXPIRES",
    "MAX_HOOK_ANSWER_BYTES",
    "DoneHookNotifier",
    "HookAnswer",
    "HookAnswerTooLarge",
    "HookUrl",
    "HttpHookAuthorizer",
    "LatencyObserver",
    "SignedUrlAuthorizer",
    "StaticKeyAuthorizer",
    "build_authorizers",
    "build_listeners",
    "forward_urls",
    "hook_payload",
    "make_agent",
    "post_json",
    "redact_url",
    "sign",
    "signed_query",
]

log = Logger(namespace="rtmpd")

#: Seconds a hook has to answer (``--hook-timeout``) before the request it
#: decides on is refused. A publisher or player waits that long for its
#: answer, so it stays short.
DEFAULT_HOOK_TIMEOUT_S = 5.0

#: Longest hook answer read, in bytes. A hook answers with its status; the
#: body is read so that the connection can go back to the pool, and for an
#: on-publish hook's forwards (a few URLs). A body longer than this is not a
#: hook's answer (a wrong URL, a file server) and would hold the decision
#: until the timeout: reading stops and the hook counts as failed.
MAX_HOOK_ANSWER_BYTES = 64 * 1024

#: The protocol of a forward's play (:mod:`rtmpd.services.forward`).
FORWARD_PROTOCOL = "forward"

#: Most forward URLs one on-publish answer may add: each is a connection and
#: a viewer of the stream, and a real restream goes to a handful of
#: platforms; more are ignored (logged).
MAX_HOOK_FORWARDS = 16

#: Requests one hook may have unanswered at once. Past this a publish or
#: play asking it is refused (as a full server): with a slow or hanging hook,
#: connections arriving faster than it answers would otherwise pile up,
#: each holding a socket, until file descriptors run out.
MAX_HOOKS_IN_FLIGHT = 256

#: Latest ``expires`` accepted: 9999-12-31T23:59:59Z, in unix seconds. Later
#: values are no expiry at all, and the bound keeps the digits parsed few.
MAX_EXPIRES = 253_402_300_799

#: ``expires`` as sent: ASCII digits only (``int()`` would also take signs,
#: spaces, underscores and other scripts' digits), at most as many as
#: MAX_EXPIRES has.
_EXPIRES_PATTERN = re.compile(r"[0-9]{1,12}")

#: The actions a signature may name: the interface users sign against.
_SIGNED_ACTIONS = frozenset(action.value for action in Action)

#: Done hooks posted at once per notifier. Ending a stream ends all its
#: viewers in the same turn; with thousands of them, unbounded posts would
#: open as many connections to the hook server at once.
MAX_DONE_POSTS_IN_FLIGHT = 16

#: Done hooks waiting for a free slot before new ones are dropped (and
#: counted in the failure log). Each holds its JSON body, a few hundred bytes
#: (the query is cut to MAX_QUERY_CHARS), so the queue stays under about
#: 30 MB even with the longest queries.
MAX_DONE_POSTS_QUEUED = 10_000

#: At most one failure line per hook URL in this many seconds; the failures
#: left out are counted in one line when the interval is over.
FAILURE_LOG_INTERVAL_S = 10.0

_USER_AGENT = f"rtmpd/{__version__}".encode("ascii", "replace")

#: ``on_latency(action, seconds, outcome)``: told how long each hook took to
#: decide; ``outcome`` is "allow", "deny", "timeout" or "error".
LatencyObserver = Callable[[str, float, str], None]


def _admission_request(request: object) -> AdmissionRequest:
    """The interfaces say ``object`` (they import no implementation)."""
    if not isinstance(request, AdmissionRequest):
        raise TypeError(f"expected an AdmissionRequest, not {type(request).__name__}")
    return request


# -- static keys ----------------------------------------------------------------------------


@implementer(IAuthorizer)
class StaticKeyAuthorizer:
    """Requests of one action need ``?key=KEY`` (``--publish-key``,
    ``--play-key``); requests of the other action are not its business."""

    def __init__(self, action: Action, key: str) -> None:
        if not key:
            raise ValueError(f"the {action.value} key is empty")
        self.action = action
        self._key = key.encode("utf-8")

    def __repr__(self) -> str:
        # Never the key: reprs end up in logs and tracebacks.
        return f"StaticKeyAuthorizer({self.action.value})"

    def authorize(self, request: object) -> Decision:
        """Allow if the request's ``key`` parameter is the key."""
        request = _admission_request(request)
        if request.action is not self.action:
            return ALLOW
        given = request.params().get("key")
        if given is None:
            return deny("no key given", Refusal.UNAUTHORIZED)
        # Bytes, since compare_digest refuses non-ASCII str.
        if not hmac.compare_digest(given.encode("utf-8"), self._key):
            return deny("wrong key", Refusal.UNAUTHORIZED)
        return ALLOW


# -- signed URLs ---------------------------------------------------------------------------


def _secret_bytes(secret: bytes | str) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the signing secret is empty")
    return key


def sign(secret: bytes | str, action: str, app: str, stream: str, expires: int) -> str:
    """The lowercase hex HMAC-SHA256 of ``{action}:{app}/{stream}:{expires}``
    keyed with ``secret`` (a str is taken as UTF-8). ``action`` is
    ``"publish"`` or ``"play"``; ``expires`` is in unix seconds."""
    if action not in _SIGNED_ACTIONS:
        raise ValueError(f"action must be 'publish' or 'play', not {action!r}")
    message = f"{action}:{app}/{stream}:{int(expires)}".encode()
    return hmac.new(_secret_bytes(secret), message, hashlib.sha256).hexdigest()


def signed_query(secret: bytes | str, action: str, app: str, stream: str, expires: int) -> str:
    """``expires=…&sig=…``: what a signed URL appends to its query."""
    return f"expires={int(expires)}&sig={sign(secret, action, app, stream, expires)}"


@implementer(IAuthorizer)
class SignedUrlAuthorizer:
    """Requests of the given actions need ``?expires=…&sig=…`` signed with
    the secret (``--sign-secret``; see :func:`sign`) and not yet expired."""

    def __init__(
        self,
        secret: bytes | str,
        clock: IReactorTime,
        actions: Collection[Action] = frozenset({Action.PUBLISH, Action.PLAY}),
    ) -> None:
        self._secret = _secret_bytes(secret)
        self.clock = clock
        self.actions = frozenset(actions)

    def __repr__(self) -> str:
        actions = ",".join(sorted(a.value for a in self.actions))
        return f"SignedUrlAuthorizer({actions})"

    def authorize(self, request: object) -> Decision:
        """Allow if the signature is right and ``expires`` has not passed.

        The signature is checked before the expiry, so "signature expired"
        is only ever said of a signature that was once valid.
        """
        request = _admission_request(request)
        if request.action not in self.actions:
            return ALLOW
        params = request.params()
        expires_text = params.get("expires")
        given = params.get("sig")
        if expires_text is None or given is None:
            return deny("no signature", Refusal.UNAUTHORIZED)
        if not _EXPIRES_PATTERN.fullmatch(expires_text):
            return deny("expires is not a whole number of unix seconds", Refusal.UNAUTHORIZED)
        expires = int(expires_text)
        if expires > MAX_EXPIRES:
            return deny(f"expires is past MAX_EXPIRES ({MAX_EXPIRES})", Refusal.UNAUTHORIZED)
        expected = sign(self._secret, request.action.value, request.app, request.stream, expires)
        # Bytes, since compare_digest refuses non-ASCII str.
        if not hmac.compare_digest(expected.encode("ascii"), given.lower().encode("utf-8")):
            return deny("wrong signature", Refusal.UNAUTHORIZED)
        if expires < self.clock.seconds():
            return deny("signature expired", Refusal.UNAUTHORIZED)
        return ALLOW


# -- HTTP hooks ------------------------------------------------------------------------------


def make_agent(reactor: Any) -> IAgent:
    """An Agent for hooks: persistent connections (a hook is asked on every
    publish and play), and Twisted's default HTTPS policy, which verifies
    https:// hooks' certificates (with service-identity)."""
    # twisted.web.client is untyped.
    pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
    agent: IAgent = Agent(reactor, BrowserLikePolicyForHTTPS(), pool=pool)  # type: ignore[no-untyped-call]
    return agent


def _split_url(url: str) -> tuple[str, str, str, str]:
    """``(scheme://, userinfo, host[:port], rest)``. The authority ends at
    the first ``/``, ``?`` or ``#`` and its userinfo at its last ``@``
    (RFC 3986)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority_end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    userinfo, _, host = rest[:authority_end].rpartition("@")
    return scheme + sep, userinfo, host, rest[authority_end:]


def redact_url(url: str) -> str:
    """``url`` fit for a log: no user, password, query or fragment (any of
    them may hold a credential)."""
    scheme, _, host, rest = _split_url(url)
    return scheme + host + re.split(r"[?#]", rest, maxsplit=1)[0]


@dataclass(frozen=True, slots=True)
class HookUrl:
    """A hook's URL, checked once at start-up.

    Twisted's Agent takes no ``user:password@`` in a URL, so those become a
    Basic ``Authorization`` header and the Agent gets the rest.
    """

    #: What the Agent requests: no userinfo, no fragment.
    uri: bytes
    #: What logs show (:func:`redact_url`).
    shown: str
    #: ``Basic …`` from the URL's userinfo, or None.
    authorization: bytes | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, option: str) -> HookUrl:
        """Raises ValueError, naming ``--option``, for anything but an
        http:// or https:// URL with a host."""
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            good = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        except ValueError:  # a bad IPv6 address
            good = False
        if not good:
            raise ValueError(f"--{option} must be an http:// or https:// URL, not {shown!r}")
        scheme, userinfo, host, rest = _split_url(url)
        try:
            uri = (scheme + host + rest.partition("#")[0]).encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(
                f"--{option} must be ASCII (percent-encode the rest): {shown!r}"
            ) from None
        authorization = None
        if userinfo:
            user, _, password = userinfo.partition(":")
            credentials = f"{unquote(user)}:{unquote(password)}".encode()
            authorization = b"Basic " + base64.b64encode(credentials)
        return cls(uri, shown, authorization)


def hook_payload(request: AdmissionRequest) -> dict[str, object]:
    """The JSON object a hook is sent about ``request``."""
    return {
        "action": request.action.value,
        "app": request.app,
        "stream": request.stream,
        "query": request.query[:MAX_QUERY_CHARS],
        "params": request.params(),
        "client_addr": request.peer_host,
        "client_port": request.peer_port,
        "protocol": request.protocol,
        "client_id": request.client_id,
    }


class HookAnswerTooLarge(Exception):
    """A hook's answer was longer than MAX_HOOK_ANSWER_BYTES."""

    def __init__(self, size: int) -> None:
        super().__init__(
            f"hook answer of {size} bytes exceeds MAX_HOOK_ANSWER_BYTES ({MAX_HOOK_ANSWER_BYTES})"
        )
        self.size = size


@implementer(IBodyProducer)
class _BytesBody:
    """A request body that is all there at once."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        consumer.write(self._body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class HookAnswer:
    """A hook's answer: its status and its body (at most MAX_HOOK_ANSWER_BYTES)."""

    status: int
    body: bytes = b""


class _BoundedBody(Protocol):
    """Reads an answer's body: :attr:`done` fires when it has all come, or
    fails past MAX_HOOK_ANSWER_BYTES (cancelling it closes the connection);
    :attr:`data` holds what came."""

    def __init__(self, declared_length: int | None) -> None:
        self._declared_length = declared_length
        self._size = 0
        self.data: list[bytes] = []
        self.done: defer.Deferred[None] = defer.Deferred(lambda _: self._abort())

    def connectionMade(self) -> None:
        if self._declared_length is not None and self._declared_length > MAX_HOOK_ANSWER_BYTES:
            self._too_large(self._declared_length)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > MAX_HOOK_ANSWER_BYTES:
            self._too_large(self._size)
        else:
            self.data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        # A body ended by the close (no length, not chunked) is complete too.
        if isinstance(reason.value, ResponseDone | PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def _too_large(self, size: int) -> None:
        self._abort()
        self.done.errback(HookAnswerTooLarge(size))

    def _abort(self) -> None:
        # The connection closes rather than going back to the pool.
        if self.transport is not None:
            IPushProducer(self.transport).stopProducing()


def _read_answer(response: IResponse) -> defer.Deferred[HookAnswer]:
    """The answer's status and body, once the body has been read (bounded)."""
    length = response.length
    body = _BoundedBody(length if isinstance(length, int) else None)
    response.deliverBody(body)  # type: ignore[no-untyped-call]  # IResponse is untyped
    return body.done.addCallback(lambda _: HookAnswer(response.code, b"".join(body.data)))


def forward_urls(body: bytes) -> tuple[tuple[str, ...], str]:
    """The forward URLs of an on-publish hook's answer body
    (``{"forward": ["rtmp://...", ...]}``; any other body has none), and
    what was wrong with it ("" if nothing): URLs that do not parse are left
    out, and any past MAX_HOOK_FORWARDS."""
    try:
        value = json.loads(body) if body.strip() else None
    except ValueError:
        return (), ""  # an answer that is not JSON says only its status
    if not isinstance(value, dict) or "forward" not in value:
        return (), ""
    urls = value["forward"]
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        return (), '"forward" is not a list of URLs'
    good: list[str] = []
    problems: list[str] = []
    for number, url in enumerate(urls, 1):
        try:
            check_forward_url(url)
        except UsageError:
            # Not the checker's message: it quotes the URL, whose path is
            # often a stream key (YouTube, Twitch). Scheme and host only.
            scheme, _, host, _ = _split_url(url)
            problems.append(
                f"forward {number} ({scheme}{host or 'no host'}…) is not "
                "scheme://host[:port]/{app}/{stream}, left out"
            )
            continue
        if url not in good:
            good.append(url)
    if len(good) > MAX_HOOK_FORWARDS:
        problems.append(f"{len(good)} forwards, only the first {MAX_HOOK_FORWARDS} are used")
        good = good[:MAX_HOOK_FORWARDS]
    return tuple(good), "; ".join(problems)


def post_json(
    agent: IAgent, url: HookUrl, payload: Mapping[str, object], clock: IReactorTime,
    timeout_s: float,
) -> defer.Deferred[HookAnswer]:
    """POST ``payload`` as JSON to ``url``; fires with the answer's status
    and body once the body is read, or fails (``defer.TimeoutError`` after
    ``timeout_s`` seconds, :class:`HookAnswerTooLarge`, the connection's
    error). Never raises, never blocks."""
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [_USER_AGENT]})
    if url.authorization is not None:
        headers.setRawHeaders(b"Authorization", [url.authorization])

    def send() -> defer.Deferred[IResponse]:
        return defer.maybeDeferred(agent.request, b"POST", url.uri, headers, _BytesBody(body))

    def as_timeout(failure: Failure) -> Failure:
        # The timeout cancelled the request: Twisted reports that as a
        # request error around a CancelledError, or as
        # ConnectingCancelledError; say it as the cancellation it is, which
        # addTimeout turns into a TimeoutError.
        error = failure.value
        if isinstance(error, ConnectingCancelledError) or (
            isinstance(error, _STALE_CONNECTION_ERRORS)
            and any(isinstance(getattr(r, "value", None), defer.CancelledError)
                    for r in error.reasons)
        ):
            raise defer.CancelledError()
        return failure

    def again_if_stale(failure: Failure) -> defer.Deferred[IResponse] | Failure:
        # A kept-alive connection the hook server had just closed (servers
        # close idle ones whenever they like, and many never say they will)
        # fails before any answer; Twisted retries only idempotent methods,
        # so this POST is sent once more, on a new connection.
        if not isinstance(failure.value, _STALE_CONNECTION_ERRORS):
            return failure
        return send().addErrback(as_timeout)

    answered: defer.Deferred[IResponse] = send()
    answered.addErrback(as_timeout)
    answered.addErrback(again_if_stale)
    answer: defer.Deferred[HookAnswer] = answered.addCallback(_read_answer)
    return answer.addTimeout(timeout_s, clock)


#: Failures of a request that never reached the hook or got no answer at
#: all: what a pooled connection the server closed meanwhile gives.
_STALE_CONNECTION_ERRORS = (ResponseNeverReceived, RequestTransmissionFailed)


def _failure_text(failure: Failure, timeout_s: float, *, for_client: bool) -> str:
    """What went wrong with a hook, after "on-play hook". The server's log
    gets the error's message; a client only its type, since messages of
    connection errors name hosts and addresses."""
    if isinstance(failure.value, defer.TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(failure.value, HookAnswerTooLarge) or not for_client:
        return f"failed: {_error_message(failure)}"
    return f"failed ({type(failure.value).__name__})"


def _error_message(failure: Failure) -> str:
    """A failure's message; Twisted's request errors carry a list of the
    failures underneath, shown by their own messages, not their reprs."""
    reasons = getattr(failure.value, "reasons", None)
    if isinstance(reasons, list) and reasons:
        inner = "; ".join(
            r.getErrorMessage() if isinstance(r, Failure) else str(r) for r in reasons
        )
        return f"{type(failure.value).__name__} ({inner})"
    return failure.getErrorMessage()


@implementer(IAuthorizer)
class HttpHookAuthorizer:
    """Requests of one action are allowed only if the hook at ``url``
    (``--on-publish``, ``--on-play``) answers 2xx within ``timeout_s``.

    Any other status refuses the request (``FORBIDDEN``), and so do a
    timeout, a failed connection and an answer over MAX_HOOK_ANSWER_BYTES.
    ``last_latency_s`` is how long the last hook took to decide, and
    ``on_latency`` hears of each (for metrics).
    """

    def __init__(
        self,
        url: str,
        action: Action,
        agent: IAgent,
        clock: IReactorTime,
        timeout_s: float = DEFAULT_HOOK_TIMEOUT_S,
        *,
        on_latency: LatencyObserver | None = None,
    ) -> None:
        self._url = HookUrl.parse(url, f"on-{action.value}")
        #: The URL as logs show it.
        self.url = self._url.shown
        self.action = action
        self.agent = agent
        self.clock = clock
        self.timeout_s = timeout_s
        self.on_latency = on_latency
        #: Seconds the last hook took to decide (None before the first).
        self.last_latency_s: float | None = None
        self._failures = _FailureLog(clock)
        #: Requests sent to the hook and not answered yet.
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"HttpHookAuthorizer({self.action.value}, {self.url})"

    def authorize(self, request: object) -> Decision | defer.Deferred[Decision]:
        """Ask the hook; the Deferred always fires with a Decision."""
        request = _admission_request(request)
        if request.action is not self.action:
            return ALLOW
        if self.in_flight >= MAX_HOOKS_IN_FLIGHT:
            # Connections arriving faster than the hook answers would
            # otherwise pile up (sockets, memory, the hook server itself).
            self._observe("busy", 0.0)
            return deny(
                f"on-{self.action.value} hook busy: {self.in_flight} requests waiting for it",
                Refusal.LIMIT,
            )
        started = self.clock.seconds()
        self.in_flight += 1
        d = post_json(self.agent, self._url, hook_payload(request), self.clock, self.timeout_s)

        def decide(result: HookAnswer | Failure) -> Decision:
            self.in_flight -= 1
            outcome, decision = self._decision(result)
            self._observe(outcome, self.clock.seconds() - started)
            return decision

        return d.addBoth(decide)

    def _decision(self, result: HookAnswer | Failure) -> tuple[str, Decision]:
        hook = f"on-{self.action.value} hook"
        if isinstance(result, Failure):
            if isinstance(result.value, defer.TimeoutError):
                outcome = "timeout"
            else:
                outcome = "error"
                self._failures.report(
                    hook, self.url, _failure_text(result, self.timeout_s, for_client=False)
                )
            problem = _failure_text(result, self.timeout_s, for_client=True)
            return outcome, deny(f"{hook} {problem}", Refusal.FORBIDDEN)
        if 200 <= result.status < 300:
            if self.action is not Action.PUBLISH:
                return "allow", ALLOW
            urls, problem = forward_urls(result.body)
            if problem:
                self._failures.report(hook, self.url, f"answer's forwards: {problem}")
            return "allow", Decision(True, forward=urls) if urls else ALLOW
        return "deny", deny(f"{hook} answered {result.status}", Refusal.FORBIDDEN)

    def _observe(self, outcome: str, seconds: float) -> None:
        self.last_latency_s = seconds
        if self.on_latency is None:
            return
        try:
            self.on_latency(self.action.value, seconds, outcome)
        except Exception:
            # Metrics must not turn a decision into an internal error.
            log.failure("on_latency of the on-{action} hook failed", action=self.action.value)


class _FailureLog:
    """Hook failure lines: at most one per URL per FAILURE_LOG_INTERVAL_S;
    the failures left out are counted in one line when the interval ends."""

    def __init__(self, clock: IReactorTime, interval_s: float = FAILURE_LOG_INTERVAL_S) -> None:
        self.clock = clock
        self.interval_s = interval_s
        #: URL → when its next line may be written.
        self._quiet_until: dict[str, float] = {}
        #: URL → (what, failures left out, the last one's problem).
        self._left_out: dict[str, tuple[str, int, str]] = {}
        self._summaries: dict[str, IDelayedCall] = {}

    def report(self, what: str, url: str, problem: str) -> None:
        """``what`` (``on-play-done hook``) at ``url`` had ``problem``."""
        now = self.clock.seconds()
        quiet_until = self._quiet_until.get(url, 0.0)
        if now >= quiet_until:
            log.warn("{what} {url} {problem}", what=what, url=url, problem=problem)
            self._quiet_until[url] = now + self.interval_s
            return
        _, count, _ = self._left_out.get(url, (what, 0, problem))
        self._left_out[url] = (what, count + 1, problem)
        if url not in self._summaries:
            self._summaries[url] = self.clock.callLater(quiet_until - now, self._summarise, url)

    def _summarise(self, url: str) -> None:
        del self._summaries[url]
        what, count, problem = self._left_out.pop(url)
        log.warn("{what} {url}: {count} more failures in the last {interval:g} s, "
                 "the last: {problem}", what=what, url=url, count=count,
                 interval=self.interval_s, problem=problem)
        self._quiet_until[url] = self.clock.seconds() + self.interval_s


# -- done hooks ------------------------------------------------------------------------------


@implementer(IAdmissionListener)
class DoneHookNotifier:
    """Posts :func:`hook_payload` plus ``"reason"`` to ``--on-publish-done``
    or ``--on-play-done`` when an admitted publisher or viewer ends.

    Fire and forget: nothing waits for the answer, and failures, timeouts
    and non-2xx answers are only logged (:class:`_FailureLog`). At most
    MAX_DONE_POSTS_IN_FLIGHT posts run at once; up to MAX_DONE_POSTS_QUEUED
    more wait, in order, and past that new ones are dropped and logged.
    """

    def __init__(
        self,
        on_publish_done: str | None,
        on_play_done: str | None,
        agent: IAgent,
        clock: IReactorTime,
        timeout_s: float = DEFAULT_HOOK_TIMEOUT_S,
    ) -> None:
        self._urls: dict[Action, HookUrl] = {}
        for action, url in ((Action.PUBLISH, on_publish_done), (Action.PLAY, on_play_done)):
            if url:
                self._urls[action] = HookUrl.parse(url, f"on-{action.value}-done")
        self.agent = agent
        self.clock = clock
        self.timeout_s = timeout_s
        self._queue: deque[tuple[Action, HookUrl, dict[str, object]]] = deque()
        self._in_flight = 0
        self._idle_waiters: list[defer.Deferred[None]] = []
        #: True while _post_next runs: a post that fails at once calls it
        #: again, and the running loop goes on instead of recursing.
        self._posting = False
        self._failures = _FailureLog(clock)
        #: Requests of these protocols post nothing: a forward is the
        #: server's own play, never asked of --on-play (its end is no
        #: viewer's); a ``--workers`` relay adds "upstream" and "relay".
        self.ignored_protocols = {FORWARD_PROTOCOL}

    def refused(self, request: object, refusal: object, message: str) -> None:
        """Nothing: only admitted clients end."""

    def started(self, request: object) -> None:
        """Nothing: the on-publish and on-play hooks already heard of it."""

    def ended(self, request: object, why: str) -> None:
        """Post that ``request``'s publish or play ended, for ``why``."""
        request = _admission_request(request)
        url = self._urls.get(request.action)
        if url is None or request.protocol in self.ignored_protocols:
            return
        payload = hook_payload(request)
        payload["reason"] = why
        if len(self._queue) >= MAX_DONE_POSTS_QUEUED:
            self._failures.report(
                self._what(request.action), url.shown,
                f"not posted: MAX_DONE_POSTS_QUEUED ({MAX_DONE_POSTS_QUEUED}) posts are waiting",
            )
            return
        self._queue.append((request.action, url, payload))
        self._post_next()

    def idle(self) -> defer.Deferred[None]:
        """Fires once no done hook is waiting or in flight (at once if none):
        a service's ``stopService`` can return it so the last posts go out."""
        if not self._queue and not self._in_flight:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    @staticmethod
    def _what(action: Action) -> str:
        return f"on-{action.value}-done hook"

    def _post_next(self) -> None:
        if self._posting:
            return
        self._posting = True
        try:
            while self._queue and self._in_flight < MAX_DONE_POSTS_IN_FLIGHT:
                action, url, payload = self._queue.popleft()
                self._in_flight += 1
                d = post_json(self.agent, url, payload, self.clock, self.timeout_s)
                d.addBoth(self._posted, action, url.shown)
        finally:
            self._posting = False
        if not self._queue and not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _posted(self, result: HookAnswer | Failure, action: Action, shown: str) -> None:
        self._in_flight -= 1
        if isinstance(result, Failure):
            problem = _failure_text(result, self.timeout_s, for_client=False)
            self._failures.report(self._what(action), shown, problem)
        elif not 200 <= result.status < 300:
            self._failures.report(self._what(action), shown, f"answered {result.status}")
        self._post_next()


# -- from options ------------------------------------------------------------------------------


def _option(options: Mapping[str, Any], name: str) -> str | None:
    value = options.get(name)
    return str(value) if value else None


def _hook_timeout_s(options: Mapping[str, Any]) -> float:
    raw = options.get("hook-timeout")
    try:
        timeout_s = DEFAULT_HOOK_TIMEOUT_S if raw is None else float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"--hook-timeout must be a number of seconds, not {raw!r}") from None
    if not 0 < timeout_s < float("inf"):
        raise ValueError(f"--hook-timeout must be more than 0 seconds, not {raw!r}")
    return timeout_s


def build_authorizers(
    options: Mapping[str, Any],
    reactor: Any,
    agent: IAgent | None = None,
    *,
    on_latency: LatencyObserver | None = None,
) -> list[IAuthorizer]:
    """The authorizers the options ask for, cheapest first: static keys
    (``publish-key``, ``play-key``), signatures (``sign-secret``), hooks
    (``on-publish``, ``on-play``, ``hook-timeout``). An agent is made
    (:func:`make_agent`) only if a hook is configured and none is given.
    Raises ValueError for a bad option."""
    authorizers: list[IAuthorizer] = []
    for action in (Action.PUBLISH, Action.PLAY):
        key = _option(options, f"{action.value}-key")
        if key is not None:
            authorizers.append(StaticKeyAuthorizer(action, key))
    secret = _option(options, "sign-secret")
    if secret is not None:
        authorizers.append(SignedUrlAuthorizer(secret, reactor))
    timeout_s = _hook_timeout_s(options)
    for action in (Action.PUBLISH, Action.PLAY):
        url = _option(options, f"on-{action.value}")
        if url is not None:
            agent = agent if agent is not None else make_agent(reactor)
            authorizers.append(
                HttpHookAuthorizer(url, action, agent, reactor, timeout_s, on_latency=on_latency)
            )
    return authorizers


def build_listeners(
    options: Mapping[str, Any], reactor: Any, agent: IAgent | None = None
) -> list[IAdmissionListener]:
    """The listeners the options ask for: a :class:`DoneHookNotifier` if
    ``on-publish-done`` or ``on-play-done`` is set, else none. Pass the
    authorizers' agent to share its connection pool."""
    on_publish_done = _option(options, "on-publish-done")
    on_play_done = _option(options, "on-play-done")
    if on_publish_done is None and on_play_done is None:
        return []
    timeout_s = _hook_timeout_s(options)
    agent = agent if agent is not None else make_agent(reactor)
    return [DoneHookNotifier(on_publish_done, on_play_done, agent, reactor, timeout_s)]
