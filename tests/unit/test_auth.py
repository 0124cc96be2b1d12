"""Static keys, signed URLs, HTTP hooks, done hooks and ``rtmpd-sign``
(:mod:`rtmpd.auth`, :mod:`rtmpd.sign`).

Synchronous: hooks go to an in-test IAgent whose answers the test gives by
hand, and time is a task.Clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.web._newclient import Response, TransportProxyProducer
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rtmpd import auth
from rtmpd.admission import ALLOW, Action, AdmissionRequest, Decision, Refusal
from rtmpd.auth import (
    MAX_DONE_POSTS_IN_FLIGHT,
    MAX_HOOK_ANSWER_BYTES,
    DoneHookNotifier,
    HttpHookAuthorizer,
    SignedUrlAuthorizer,
    StaticKeyAuthorizer,
    build_authorizers,
    build_listeners,
    sign,
    signed_query,
)
from rtmpd.interfaces import IAdmissionListener, IAuthorizer
from rtmpd.sign import SECRET_ENV, main

SECRET = "correct horse"
KEY = "k3y-publish"
NOW = 1_700_000_000
HOOK = "http://hooks.example:8080/auth"
#: A hook URL whose user, password and token must never show.
HOOK_WITH_CREDENTIALS = "https://hookuser:hookpass@hooks.example/auth?token=hooktoken"


def make_request(
    action: Action = Action.PUBLISH, query: str = "", *, app: str = "live",
    stream: str = "cam1",
) -> AdmissionRequest:
    return AdmissionRequest(
        action=action, app=app, stream=stream, query=query, peer_host="203.0.113.7",
        peer_port=50123, protocol="rtmp", client_id=42,
    )


def decided(answer: Decision | Deferred[Decision]) -> Decision:
    """The decision an authorizer has reached (it must have)."""
    if isinstance(answer, Decision):
        return answer
    results: list[object] = []

    def keep(result: object) -> object:
        results.append(result)
        return result

    answer.addBoth(keep)
    assert results, "the authorizer has not decided yet"
    result = results[0]
    assert isinstance(result, Decision), result
    return result


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every line rtmpd.auth logs, formatted."""
    lines: list[str] = []
    logger = Logger(namespace="rtmpd", observer=lambda event: lines.append(formatEvent(event)))
    monkeypatch.setattr(auth, "log", logger)
    return lines


# -- an in-test agent ------------------------------------------------------------------------


@implementer(IConsumer)
class _Collect:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


@dataclass
class SentRequest:
    method: bytes
    uri: bytes
    headers: Headers
    body: bytes
    answer: Deferred[IResponse]

    def json(self) -> Any:
        return json.loads(self.body)


@implementer(IAgent)
class RecordingAgent:
    """Records each request; the test answers with :meth:`SentRequest.answer`."""

    def __init__(self) -> None:
        self.sent: list[SentRequest] = []
        self.canceller: Callable[[Deferred[IResponse]], None] | None = None

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        consumer = _Collect()
        if bodyProducer is not None:
            assert bodyProducer.startProducing(consumer).called
            assert bodyProducer.length == len(consumer.data)
        answer: Deferred[IResponse] = Deferred(self.canceller)
        self.sent.append(SentRequest(method, uri, headers or Headers(), consumer.data, answer))
        return answer


@implementer(IPushProducer)
class BodyTransport:
    def __init__(self) -> None:
        self.stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IResponse)
class CannedResponse:
    """A minimal IResponse: the whole body is delivered at once, in chunks,
    until the reader stops it."""

    version = (b"HTTP", 1, 1)
    phrase = b"Whatever"
    previousResponse = None
    request = None

    def __init__(self, code: int, body: bytes = b"", length: object = UNKNOWN_LENGTH) -> None:
        self.code = code
        self.headers = Headers()
        self.length = length
        self.body = body
        self.transport = BodyTransport()

    def deliverBody(self, protocol: Protocol) -> None:
        protocol.makeConnection(self.transport)
        for start in range(0, len(self.body), 16384):
            if self.transport.stopped:
                break
            protocol.dataReceived(self.body[start:start + 16384])
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: IResponse) -> None:
        pass


def hook(
    action: Action = Action.PUBLISH, url: str = HOOK, **kwargs: Any
) -> tuple[HttpHookAuthorizer, RecordingAgent, task.Clock]:
    agent = RecordingAgent()
    clock = task.Clock()
    return HttpHookAuthorizer(url, action, agent, clock, **kwargs), agent, clock


# -- static keys -------------------------------------------------------------------------------


def test_static_key_authorizer_provides_the_interface() -> None:
    assert verifyObject(IAuthorizer, StaticKeyAuthorizer(Action.PUBLISH, KEY))


def test_right_static_key_is_allowed() -> None:
    authorizer = StaticKeyAuthorizer(Action.PUBLISH, KEY)
    assert authorizer.authorize(make_request(query=f"key={KEY}")) == ALLOW


def test_missing_static_key_is_refused_as_unauthorized() -> None:
    decision = StaticKeyAuthorizer(Action.PUBLISH, KEY).authorize(make_request(query="x=1"))
    assert decision == Decision(False, Refusal.UNAUTHORIZED, "no key given")


@pytest.mark.parametrize("given", ["wrong", "", KEY + "x", KEY[:-1], "ключ"])
def test_wrong_static_key_is_refused_as_unauthorized(given: str) -> None:
    decision = StaticKeyAuthorizer(Action.PUBLISH, KEY).authorize(
        make_request(query=f"key={given}")
    )
    assert decision == Decision(False, Refusal.UNAUTHORIZED, "wrong key")


def test_static_key_leaves_the_other_action_alone() -> None:
    authorizer = StaticKeyAuthorizer(Action.PUBLISH, KEY)
    assert authorizer.authorize(make_request(Action.PLAY)) == ALLOW


def test_empty_static_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="key is empty"):
        StaticKeyAuthorizer(Action.PLAY, "")


def test_static_key_repr_hides_the_key() -> None:
    assert KEY not in repr(StaticKeyAuthorizer(Action.PUBLISH, KEY))


# -- signed URLs -------------------------------------------------------------------------------


def test_sign_is_hmac_sha256_of_action_path_and_expiry() -> None:
    expected = hmac.new(
        SECRET.encode(), b"publish:live/cam1:1700000000", hashlib.sha256
    ).hexdigest()
    assert sign(SECRET, "publish", "live", "cam1", NOW) == expected
    assert sign(SECRET.encode(), "publish", "live", "cam1", NOW) == expected


def test_sign_matches_the_published_message_format() -> None:
    """Users sign with their own code: this value must never change."""
    assert sign(SECRET, "play", "live", "cam1", NOW + 3600) == (
        "7d998333770969857caec6ba81596e9eee990cc360d74948be4fc46017654e10"
    )


def test_signed_query_carries_expires_and_sig() -> None:
    assert signed_query(SECRET, "play", "live", "cam1", NOW) == (
        f"expires={NOW}&sig={sign(SECRET, 'play', 'live', 'cam1', NOW)}"
    )


def test_sign_refuses_an_unknown_action_and_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="'publish' or 'play'"):
        sign(SECRET, "PUBLISH", "live", "cam1", NOW)
    with pytest.raises(ValueError, match="secret is empty"):
        sign("", "play", "live", "cam1", NOW)


def signed(action: Action = Action.PUBLISH, expires: int = NOW + 60, **names: str) -> str:
    app = names.get("app", "live")
    stream = names.get("stream", "cam1")
    return signed_query(SECRET, action.value, app, stream, expires)


def signed_authorizer(now: float = NOW) -> SignedUrlAuthorizer:
    clock = task.Clock()
    clock.advance(now)
    return SignedUrlAuthorizer(SECRET, clock)


def test_signed_url_authorizer_provides_the_interface() -> None:
    assert verifyObject(IAuthorizer, signed_authorizer())


@pytest.mark.parametrize("action", list(Action))
def test_valid_signature_is_allowed(action: Action) -> None:
    request = make_request(action, "other=1&" + signed(action))
    assert signed_authorizer().authorize(request) == ALLOW


def test_signature_in_uppercase_hex_is_allowed() -> None:
    query = f"expires={NOW + 60}&sig={sign(SECRET, 'publish', 'live', 'cam1', NOW + 60).upper()}"
    assert signed_authorizer().authorize(make_request(query=query)) == ALLOW


def test_signature_is_valid_up_to_its_expiry_second() -> None:
    assert signed_authorizer(NOW).authorize(make_request(query=signed(expires=NOW))) == ALLOW


def test_expired_signature_is_refused() -> None:
    decision = signed_authorizer(NOW + 61).authorize(make_request(query=signed()))
    assert decision == Decision(False, Refusal.UNAUTHORIZED, "signature expired")


@pytest.mark.parametrize(
    "query",
    [
        f"expires={NOW + 60}&sig={'0' * 64}",
        f"expires={NOW + 60}&sig=nothex",
        f"expires={NOW + 60}&sig=",
        f"expires={NOW + 60}&sig=%D0%BA",
        # The expiry moved on after signing.
        signed(expires=NOW + 60).replace(str(NOW + 60), str(NOW + 6000)),
    ],
)
def test_wrong_signature_is_refused(query: str) -> None:
    decision = signed_authorizer().authorize(make_request(query=query))
    assert decision == Decision(False, Refusal.UNAUTHORIZED, "wrong signature")


def test_signature_for_play_does_not_allow_publish() -> None:
    decision = signed_authorizer().authorize(make_request(Action.PUBLISH, signed(Action.PLAY)))
    assert decision == Decision(False, Refusal.UNAUTHORIZED, "wrong signature")


@pytest.mark.parametrize("names", [{"stream": "cam2"}, {"app": "other"}])
def test_signature_for_another_stream_is_refused(names: dict[str, str]) -> None:
    decision = signed_authorizer().authorize(make_request(query=signed(**names)))
    assert decision == Decision(False, Refusal.UNAUTHORIZED, "wrong signature")


@pytest.mark.parametrize("query", ["", "key=x", f"expires={NOW + 60}", "sig=abc"])
def test_missing_signature_is_refused(query: str) -> None:
    decision = signed_authorizer().authorize(make_request(query=query))
    assert decision == Decision(False, Refusal.UNAUTHORIZED, "no signature")


@pytest.mark.parametrize(
    "expires",
    ["soon", "", "-5", "+1700000060", " 1700000060", "1_700_000_060", "1.5",
     "\u0661" * 10,  # ARABIC-INDIC DIGIT ONE: int() takes it
     "9" * 13, "9" * 5000],
)
def test_expiry_that_is_not_unix_seconds_is_refused(expires: str) -> None:
    decision = signed_authorizer().authorize(make_request(query=f"sig=ab&expires={expires}"))
    assert not decision.allowed
    assert decision.refusal is Refusal.UNAUTHORIZED
    assert "expires" in decision.message


def test_expiry_past_the_year_9999_is_refused() -> None:
    query = signed(expires=auth.MAX_EXPIRES + 1)
    decision = signed_authorizer().authorize(make_request(query=query))
    assert decision.refusal is Refusal.UNAUTHORIZED
    assert "MAX_EXPIRES" in decision.message


def test_signatures_apply_only_to_the_actions_asked_for() -> None:
    authorizer = SignedUrlAuthorizer(SECRET, task.Clock(), actions={Action.PUBLISH})
    assert authorizer.authorize(make_request(Action.PLAY)) == ALLOW
    assert not authorizer.authorize(make_request(Action.PUBLISH)).allowed


# -- HTTP hooks --------------------------------------------------------------------------------


def test_hook_authorizer_provides_the_interface() -> None:
    assert verifyObject(IAuthorizer, hook()[0])


def test_hook_is_posted_the_request_as_json() -> None:
    authorizer, agent, _ = hook()
    authorizer.authorize(make_request(query="key=abc&x=1&x=2"))
    [sent] = agent.sent
    assert (sent.method, sent.uri) == (b"POST", HOOK.encode())
    assert sent.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert sent.json() == {
        "action": "publish", "app": "live", "stream": "cam1", "query": "key=abc&x=1&x=2",
        "params": {"key": "abc", "x": "1"}, "client_addr": "203.0.113.7",
        "client_port": 50123, "protocol": "rtmp", "client_id": 42,
    }


@pytest.mark.parametrize("code", [200, 204])
def test_hook_answering_2xx_allows(code: int) -> None:
    authorizer, agent, _ = hook(Action.PLAY)
    answer = authorizer.authorize(make_request(Action.PLAY))
    assert isinstance(answer, Deferred)
    agent.sent[0].answer.callback(CannedResponse(code, b"ok"))
    assert decided(answer) == ALLOW


@pytest.mark.parametrize("code", [302, 403, 500])
def test_hook_answering_anything_else_refuses_as_forbidden(code: int) -> None:
    authorizer, agent, _ = hook()
    answer = authorizer.authorize(make_request())
    agent.sent[0].answer.callback(CannedResponse(code, b"no"))
    assert decided(answer) == Decision(False, Refusal.FORBIDDEN, f"on-publish hook answered {code}")


def test_hook_leaves_the_other_action_alone() -> None:
    authorizer, agent, _ = hook(Action.PUBLISH)
    assert authorizer.authorize(make_request(Action.PLAY)) == ALLOW
    assert agent.sent == []


def test_hook_that_does_not_answer_in_time_refuses() -> None:
    authorizer, _, clock = hook(timeout_s=2.5)
    answer = authorizer.authorize(make_request())
    clock.advance(2.4)
    with pytest.raises(AssertionError, match="not decided"):
        decided(answer)
    clock.advance(0.1)
    assert decided(answer) == Decision(
        False, Refusal.FORBIDDEN, "on-publish hook timed out after 2.5 s"
    )


def test_hook_with_too_many_requests_waiting_refuses_the_next_as_a_full_server() -> None:
    from rtmpd.auth import MAX_HOOKS_IN_FLIGHT

    authorizer, agent, _ = hook()
    waiting = [authorizer.authorize(make_request()) for _ in range(MAX_HOOKS_IN_FLIGHT)]
    refused = authorizer.authorize(make_request())
    assert isinstance(refused, Decision) and refused.refusal is Refusal.LIMIT
    assert len(agent.sent) == MAX_HOOKS_IN_FLIGHT
    # One answer makes room for one more.
    agent.sent[0].answer.callback(CannedResponse(200))
    assert decided(waiting[0]) == ALLOW
    assert isinstance(authorizer.authorize(make_request()), Deferred)


def test_hook_is_asked_again_once_when_a_kept_alive_connection_was_stale() -> None:
    from twisted.web.client import ResponseNeverReceived

    authorizer, agent, _ = hook()
    answer = authorizer.authorize(make_request())
    agent.sent[0].answer.errback(ResponseNeverReceived([Failure(ConnectionDone())]))
    assert len(agent.sent) == 2 and agent.sent[1].body == agent.sent[0].body
    agent.sent[1].answer.callback(CannedResponse(200))
    assert decided(answer) == ALLOW


def test_hook_that_times_out_is_not_asked_again() -> None:
    """Twisted fails a cancelled request with ResponseNeverReceived around
    the CancelledError; that is the timeout, not a stale connection."""
    from twisted.internet.defer import CancelledError
    from twisted.web.client import ResponseNeverReceived

    authorizer, agent, clock = hook(timeout_s=1)

    def cancelled(d: Deferred[IResponse]) -> None:
        d.errback(ResponseNeverReceived([Failure(CancelledError())]))

    agent.canceller = cancelled
    answer = authorizer.authorize(make_request())
    clock.advance(1.5)
    assert len(agent.sent) == 1
    assert decided(answer).message == "on-publish hook timed out after 1 s"


def test_hook_stale_twice_refuses() -> None:
    from twisted.web.client import ResponseNeverReceived

    authorizer, agent, _ = hook()
    answer = authorizer.authorize(make_request())
    for sent in range(2):
        agent.sent[sent].answer.errback(ResponseNeverReceived([Failure(ConnectionDone())]))
    assert len(agent.sent) == 2
    decision = decided(answer)
    assert not decision.allowed and decision.refusal is Refusal.FORBIDDEN


def test_hook_whose_body_never_ends_times_out_and_closes() -> None:
    """The timeout covers the body too; it closes the connection."""
    authorizer, agent, clock = hook(timeout_s=1)
    answer = authorizer.authorize(make_request())
    transport = TransportProxyProducer(StringTransport())
    response = Response._construct((b"HTTP", 1, 1), 200, b"OK", Headers(), transport, None)
    agent.sent[0].answer.callback(response)
    response._bodyDataReceived(b"partial")
    clock.advance(1)
    assert decided(answer).message == "on-publish hook timed out after 1 s"
    assert transport._producer.producerState == "stopped"


def test_hook_connection_failure_refuses_without_naming_the_host(log_lines: list[str]) -> None:
    authorizer, agent, _ = hook()
    answer = authorizer.authorize(make_request())
    agent.sent[0].answer.errback(ConnectionRefusedError("hooks.example"))
    assert decided(answer) == Decision(
        False, Refusal.FORBIDDEN, "on-publish hook failed (ConnectionRefusedError)"
    )
    [line] = log_lines
    assert line.startswith("on-publish hook http://hooks.example:8080/auth failed: ")


def test_agent_raising_at_once_refuses_rather_than_raising() -> None:
    @implementer(IAgent)
    class BrokenAgent:
        def request(self, *args: object) -> Deferred[IResponse]:
            raise RuntimeError("broken")

    authorizer = HttpHookAuthorizer(HOOK, Action.PUBLISH, BrokenAgent(), task.Clock())
    assert decided(authorizer.authorize(make_request())).message == (
        "on-publish hook failed (RuntimeError)"
    )


def test_hook_answer_over_the_limit_refuses_and_stops_reading() -> None:
    authorizer, agent, _ = hook()
    answer = authorizer.authorize(make_request())
    response = CannedResponse(200, b"x" * (MAX_HOOK_ANSWER_BYTES * 4))
    agent.sent[0].answer.callback(response)
    decision = decided(answer)
    assert decision.refusal is Refusal.FORBIDDEN
    assert decision.message.startswith("on-publish hook failed: hook answer of ")
    assert "MAX_HOOK_ANSWER_BYTES (65536)" in decision.message
    assert response.transport.stopped


def test_hook_answer_at_the_limit_is_read() -> None:
    authorizer, agent, _ = hook()
    answer = authorizer.authorize(make_request())
    agent.sent[0].answer.callback(CannedResponse(200, b"x" * MAX_HOOK_ANSWER_BYTES))
    assert decided(answer) == ALLOW


def test_hook_answer_declared_over_the_limit_is_not_read() -> None:
    authorizer, agent, _ = hook()
    answer = authorizer.authorize(make_request())
    response = CannedResponse(200, b"", length=MAX_HOOK_ANSWER_BYTES + 1)
    agent.sent[0].answer.callback(response)
    assert "65537 bytes" in decided(answer).message
    assert response.transport.stopped


def test_hook_answer_over_the_limit_through_a_real_response_closes_it() -> None:
    authorizer, agent, _ = hook()
    answer = authorizer.authorize(make_request())
    transport = TransportProxyProducer(StringTransport())
    response = Response._construct((b"HTTP", 1, 1), 200, b"OK", Headers(), transport, None)
    agent.sent[0].answer.callback(response)
    response._bodyDataReceived(b"x" * (MAX_HOOK_ANSWER_BYTES + 1))
    assert "MAX_HOOK_ANSWER_BYTES" in decided(answer).message
    assert transport._producer.producerState == "stopped"


def test_hook_latency_is_measured_and_reported() -> None:
    seen: list[tuple[str, float, str]] = []
    authorizer, agent, clock = hook(Action.PLAY, on_latency=lambda *a: seen.append(a))
    assert authorizer.last_latency_s is None
    answer = authorizer.authorize(make_request(Action.PLAY))
    clock.advance(0.25)
    agent.sent[0].answer.callback(CannedResponse(200))
    decided(answer)
    assert authorizer.last_latency_s == 0.25
    authorizer.authorize(make_request(Action.PLAY))
    agent.sent[1].answer.callback(CannedResponse(403))
    authorizer.authorize(make_request(Action.PLAY))
    agent.sent[2].answer.errback(ConnectionRefusedError())
    authorizer.authorize(make_request(Action.PLAY))
    clock.advance(5)
    assert seen == [("play", 0.25, "allow"), ("play", 0.0, "deny"), ("play", 0.0, "error"),
                    ("play", 5.0, "timeout")]


def test_broken_latency_observer_does_not_change_the_decision(log_lines: list[str]) -> None:
    def broken(*_: object) -> None:
        raise ZeroDivisionError

    authorizer, agent, _ = hook(on_latency=broken)
    answer = authorizer.authorize(make_request())
    agent.sent[0].answer.callback(CannedResponse(200))
    assert decided(answer) == ALLOW
    assert len(log_lines) == 1


def test_hook_failures_are_logged_once_per_interval_then_summarised(
    log_lines: list[str],
) -> None:
    authorizer, agent, clock = hook()
    for _ in range(4):
        authorizer.authorize(make_request())
        agent.sent[-1].answer.errback(ConnectionRefusedError())
        clock.advance(1)
    assert len(log_lines) == 1
    clock.advance(6)
    assert len(log_lines) == 2
    assert "3 more failures in the last 10 s" in log_lines[1]
    authorizer.authorize(make_request())
    agent.sent[-1].answer.errback(ConnectionRefusedError())
    assert len(log_lines) == 2, "a summary opens a new quiet interval"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hookuser:hookpass@hooks.example:8443/auth?token=hooktoken#x",
         "https://hooks.example:8443/auth"),
        ("http://hookuser:hookpass@hooks.example?token=hooktoken", "http://hooks.example"),
        ("http://hooks.example/a@b?token=hooktoken", "http://hooks.example/a@b"),
        ("hookuser:hookpass@hooks.example/x", "hooks.example/x"),
        ("http://[::1]:80/x", "http://[::1]:80/x"),
    ],
)
def test_redacted_url_keeps_host_and_path_only(url: str, shown: str) -> None:
    assert auth.redact_url(url) == shown


def test_bad_hook_urls_are_configuration_errors_that_hide_credentials() -> None:
    for url in ["ftp://hooks.example/x", "hooks.example/x", "http:///x",
                "https://hookuser:hookpass@/x?token=hooktoken", "http://[::1/x"]:
        with pytest.raises(ValueError, match="--on-publish must be an http") as info:
            HttpHookAuthorizer(url, Action.PUBLISH, RecordingAgent(), task.Clock())
        for secret in ("hookpass", "hooktoken", "hookuser"):
            assert secret not in str(info.value)


def test_hook_url_credentials_are_sent_as_basic_authorization() -> None:
    """Twisted's Agent takes no user:password@ in a URL: it would look up
    "hookuser:hookpass@hooks.example" as a host name."""
    authorizer, agent, _ = hook(url="https://hook%40user:p%3Ass@hooks.example/auth?token=t#f")
    authorizer.authorize(make_request())
    [sent] = agent.sent
    assert sent.uri == b"https://hooks.example/auth?token=t"
    expected = b"Basic " + base64.b64encode(b"hook@user:p:ss")
    assert sent.headers.getRawHeaders(b"authorization") == [expected]
    assert "p%3Ass" not in repr(authorizer._url)


def test_hook_url_without_credentials_sends_no_authorization() -> None:
    authorizer, agent, _ = hook()
    authorizer.authorize(make_request())
    assert not agent.sent[0].headers.hasHeader(b"authorization")


def test_hook_url_with_credentials_is_posted_to_but_never_shown(log_lines: list[str]) -> None:
    authorizer, agent, clock = hook(url=HOOK_WITH_CREDENTIALS)
    messages = [repr(authorizer), authorizer.url]
    for answer_with in (CannedResponse(500), Failure(ConnectionRefusedError()), None):
        answer = authorizer.authorize(make_request())
        if isinstance(answer_with, CannedResponse):
            agent.sent[-1].answer.callback(answer_with)
        elif answer_with is not None:
            agent.sent[-1].answer.errback(answer_with)
        clock.advance(10)
        messages.append(decided(answer).message)
    for text in messages + log_lines:
        for secret in ("hookpass", "hooktoken", "hookuser"):
            assert secret not in text


# -- done hooks --------------------------------------------------------------------------------


PUBLISH_DONE = "http://hooks.example/publish-done"
PLAY_DONE = "http://hooks.example/play-done"


def notifier(
    on_publish_done: str | None = PUBLISH_DONE, on_play_done: str | None = PLAY_DONE,
) -> tuple[DoneHookNotifier, RecordingAgent, task.Clock]:
    agent = RecordingAgent()
    clock = task.Clock()
    return DoneHookNotifier(on_publish_done, on_play_done, agent, clock, 3.0), agent, clock


def test_done_hook_notifier_provides_the_interface() -> None:
    assert verifyObject(IAdmissionListener, notifier()[0])


@pytest.mark.parametrize(("action", "url"), [(Action.PUBLISH, PUBLISH_DONE),
                                             (Action.PLAY, PLAY_DONE)])
def test_end_is_posted_to_the_done_hook_with_its_reason(action: Action, url: str) -> None:
    done, agent, _ = notifier()
    done.ended(make_request(action, "key=abc"), "connection lost")
    [sent] = agent.sent
    assert (sent.method, sent.uri) == (b"POST", url.encode())
    assert sent.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert sent.json() == {
        "action": action.value, "app": "live", "stream": "cam1", "query": "key=abc",
        "params": {"key": "abc"}, "client_addr": "203.0.113.7", "client_port": 50123,
        "protocol": "rtmp", "client_id": 42, "reason": "connection lost",
    }


def test_refusals_and_starts_are_not_posted() -> None:
    done, agent, _ = notifier()
    done.refused(make_request(), Refusal.FORBIDDEN, "no")
    done.started(make_request())
    assert agent.sent == []


def test_end_without_a_done_hook_for_its_action_is_not_posted() -> None:
    done, agent, _ = notifier(on_play_done=None)
    done.ended(make_request(Action.PLAY), "stopped")
    assert agent.sent == []


def test_done_hook_failures_are_logged_not_raised(log_lines: list[str]) -> None:
    done, agent, clock = notifier()
    done.ended(make_request(), "a")
    agent.sent[0].answer.callback(CannedResponse(500))
    clock.advance(10)
    done.ended(make_request(), "b")
    agent.sent[1].answer.errback(ConnectionRefusedError())
    clock.advance(10)
    done.ended(make_request(), "c")
    clock.advance(3)
    assert log_lines == [
        "on-publish-done hook http://hooks.example/publish-done answered 500",
        "on-publish-done hook http://hooks.example/publish-done failed: "
        "Connection was refused by other side.",
        "on-publish-done hook http://hooks.example/publish-done timed out after 3 s",
    ]


def test_done_hook_success_is_not_logged(log_lines: list[str]) -> None:
    done, agent, _ = notifier()
    done.ended(make_request(), "stopped")
    agent.sent[0].answer.callback(CannedResponse(204))
    assert log_lines == []


def test_done_hooks_in_flight_are_bounded_and_the_rest_wait_in_order() -> None:
    done, agent, _ = notifier()
    ends = MAX_DONE_POSTS_IN_FLIGHT + 3
    for n in range(ends):
        done.ended(make_request(Action.PLAY), f"viewer {n}")
    assert len(agent.sent) == MAX_DONE_POSTS_IN_FLIGHT
    idle = done.idle()
    agent.sent[0].answer.callback(CannedResponse(200))
    assert len(agent.sent) == MAX_DONE_POSTS_IN_FLIGHT + 1
    answered = 1
    while answered < len(agent.sent):
        assert not idle.called
        agent.sent[answered].answer.callback(CannedResponse(200))
        answered += 1
    assert [s.json()["reason"] for s in agent.sent] == [f"viewer {n}" for n in range(ends)]
    assert idle.called


def test_done_hooks_failing_at_once_do_not_recurse() -> None:
    """Thousands of queued posts whose requests fail at once go out in one
    loop, not one nested call each."""

    @implementer(IAgent)
    class AgentThatBreaks:
        def __init__(self) -> None:
            self.pending: list[Deferred[IResponse]] = []

        def request(self, *args: object) -> Deferred[IResponse]:
            if len(self.pending) < MAX_DONE_POSTS_IN_FLIGHT:
                self.pending.append(Deferred())
                return self.pending[-1]
            raise ConnectionRefusedError()

    agent = AgentThatBreaks()
    done = DoneHookNotifier(PUBLISH_DONE, None, agent, task.Clock())
    for n in range(5000):
        done.ended(make_request(), f"publisher {n}")
    idle = done.idle()
    for answer in agent.pending:
        answer.callback(CannedResponse(200))
    assert idle.called


def test_done_hooks_past_the_queue_limit_are_dropped_and_logged(
    monkeypatch: pytest.MonkeyPatch, log_lines: list[str],
) -> None:
    monkeypatch.setattr(auth, "MAX_DONE_POSTS_QUEUED", 2)
    done, _, _ = notifier()
    for n in range(MAX_DONE_POSTS_IN_FLIGHT + 3):
        done.ended(make_request(), f"publisher {n}")
    [line] = log_lines
    assert "not posted: MAX_DONE_POSTS_QUEUED (2)" in line


def test_idle_fires_at_once_with_nothing_posted() -> None:
    assert notifier()[0].idle().called


# -- from options -----------------------------------------------------------------------------


def test_no_options_build_no_authorizers_and_no_listeners() -> None:
    reactor = task.Clock()
    assert build_authorizers({}, reactor) == []
    assert build_listeners({"on-publish": None}, reactor) == []


def test_authorizers_are_built_cheapest_first() -> None:
    agent = RecordingAgent()
    authorizers = build_authorizers(
        {"on-play": HOOK, "sign-secret": SECRET, "play-key": "p", "publish-key": KEY,
         "on-publish": HOOK, "hook-timeout": "1.5"},
        task.Clock(), agent,
    )
    assert [type(a) for a in authorizers] == [
        StaticKeyAuthorizer, StaticKeyAuthorizer, SignedUrlAuthorizer, HttpHookAuthorizer,
        HttpHookAuthorizer,
    ]
    hooks = [a for a in authorizers if isinstance(a, HttpHookAuthorizer)]
    assert [(h.action, h.agent, h.timeout_s) for h in hooks] == [
        (Action.PUBLISH, agent, 1.5), (Action.PLAY, agent, 1.5)
    ]


def test_an_agent_is_made_only_for_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []

    def make_agent(reactor: object) -> RecordingAgent:
        made.append(reactor)
        return RecordingAgent()

    monkeypatch.setattr(auth, "make_agent", make_agent)
    reactor = MemoryReactorClock()
    build_authorizers({"publish-key": KEY, "sign-secret": SECRET}, reactor)
    assert made == []
    [authorizer] = build_authorizers({"on-publish": HOOK}, reactor)
    assert made == [reactor]
    assert isinstance(authorizer, HttpHookAuthorizer)
    assert authorizer.timeout_s == auth.DEFAULT_HOOK_TIMEOUT_S


def test_make_agent_builds_a_pooled_agent_without_connecting() -> None:
    reactor = MemoryReactorClock()
    agent = auth.make_agent(reactor)
    assert verifyObject(IAgent, agent)
    assert reactor.tcpClients == []


def test_done_hook_listener_is_built_from_its_options() -> None:
    agent = RecordingAgent()
    [listener] = build_listeners({"on-play-done": PLAY_DONE, "hook-timeout": 2}, task.Clock(),
                                 agent)
    assert isinstance(listener, DoneHookNotifier)
    listener.ended(make_request(Action.PLAY), "stopped")
    assert agent.sent[0].uri == PLAY_DONE.encode()


@pytest.mark.parametrize("timeout", ["0", "-1", "soon", "inf", "nan"])
def test_bad_hook_timeout_is_a_configuration_error(timeout: str) -> None:
    with pytest.raises(ValueError, match="--hook-timeout"):
        build_authorizers({"on-publish": HOOK, "hook-timeout": timeout}, task.Clock(),
                          RecordingAgent())


# -- no secret in any message ---------------------------------------------------------------


def test_no_refusal_message_carries_a_secret_or_the_given_credentials() -> None:
    given = "given-credential-0123456789abcdef"
    clock = task.Clock()
    clock.advance(NOW)
    authorizers: list[Any] = [
        StaticKeyAuthorizer(Action.PUBLISH, KEY), SignedUrlAuthorizer(SECRET, clock)
    ]
    queries = ["", f"key={given}", f"key={KEY[:4]}", f"expires={given}&sig={given}",
               f"expires={NOW + 60}&sig={given}", signed(expires=NOW - 1),
               f"expires={NOW - 1}&sig={SECRET}"]
    messages = [decided(a.authorize(make_request(query=q))).message
                for a in authorizers for q in queries]
    messages += [repr(a) for a in authorizers]
    assert all(messages[:len(queries)])
    for message in messages:
        for secret in (SECRET, KEY, given, sign(SECRET, "publish", "live", "cam1", NOW - 1)):
            assert secret not in message


# -- rtmpd-sign --------------------------------------------------------------------------------


def run_sign(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), environ=environ if environ is not None else {SECRET_ENV: SECRET},
                  now=lambda: NOW + 0.9, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_sign_cli_signs_rtmp_urls_for_publish() -> None:
    status, out, err = run_sign("rtmp://example.com/live/cam1")
    assert (status, err) == (0, "")
    expires = NOW + 3600
    assert out == (
        f"rtmp://example.com/live/cam1?expires={expires}"
        f"&sig={sign(SECRET, 'publish', 'live', 'cam1', expires)}\n"
    )


def test_sign_cli_signs_flv_urls_for_play_without_their_suffix() -> None:
    status, out, _ = run_sign("http://example.com:8501/live/cam1.flv",
                              "wss://example.com/live/cam2.flv", "--expires-in", "60")
    expires = NOW + 60
    assert status == 0
    assert out.splitlines() == [
        f"http://example.com:8501/live/cam1.flv?expires={expires}"
        f"&sig={sign(SECRET, 'play', 'live', 'cam1', expires)}",
        f"wss://example.com/live/cam2.flv?expires={expires}"
        f"&sig={sign(SECRET, 'play', 'live', 'cam2', expires)}",
    ]


def test_sign_cli_signs_what_the_action_option_says() -> None:
    _, out, _ = run_sign("--action", "play", "ws://example.com/live/cam1")
    sig = parse_qs(urlsplit(out.strip()).query)["sig"][0]
    assert sig == sign(SECRET, "play", "live", "cam1", NOW + 3600)


def test_sign_cli_appends_to_an_existing_query_and_replaces_an_old_signature() -> None:
    _, out, _ = run_sign("http://example.com/live/cam1?a=1&sig=old&expires=5&b=2#top",
                         "--secret", "other secret", environ={})
    expires = NOW + 3600
    assert out == (
        f"http://example.com/live/cam1?a=1&b=2&expires={expires}"
        f"&sig={sign('other secret', 'publish', 'live', 'cam1', expires)}#top\n"
    )


def test_signed_url_from_the_cli_is_allowed_by_the_server() -> None:
    _, out, _ = run_sign("rtmp://example.com/live/cam1?key=x")
    query = urlsplit(out.strip()).query
    assert signed_authorizer(NOW + 3600).authorize(make_request(query=query)) == ALLOW


@pytest.mark.parametrize(
    ("argv", "environ", "error"),
    [
        (["rtmp://example.com/live/cam1"], {}, "no secret"),
        (["rtmp://example.com/cam1"], None, "must end in /APP/STREAM"),
        (["rtmp://example.com/live/"], None, "no stream name"),
        (["rtmp://example.com/live/a.b"], None, "invalid stream name"),
        (["ftp://example.com/live/cam1"], None, "not an rtmp://"),
        (["/live/cam1"], None, "not an rtmp://"),
        (["--expires-in", "0", "rtmp://example.com/live/cam1"], None, "--expires-in"),
        (["--expires-in", "soon", "rtmp://example.com/live/cam1"], None, "--expires-in"),
        (["--expires-in", str(10**12), "rtmp://example.com/live/cam1"], None, "year 9999"),
        (["--action", "delete", "rtmp://example.com/live/cam1"], None, "--action"),
        ([], None, "required"),
    ],
)
def test_sign_cli_bad_usage_exits_2_with_one_line(
    argv: list[str], environ: dict[str, str] | None, error: str,
) -> None:
    status, out, err = run_sign(*argv, environ=environ)
    assert (status, out) == (2, "")
    assert err.startswith("rtmpd-sign: error: ")
    assert error in err
    assert err.count("\n") == 1
    assert SECRET not in err


def test_sign_cli_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "rtmpd-sign rtmp://example.com/live/cam1" in capsys.readouterr().out
