"""Forwards (rtmpd.services.forward) on a MemoryReactorClock: each connection attempt is
rtmpd-push's real RTMP session on a StringTransport, answered by our sans-IO server
connection, so what the target receives is read back as RTMP events. The forward starts
at the GOP's keyframe, backs off when the target drops, retries a refusal at the cap with
one log line per attempt, is dropped when the target stops reading, and ends cleanly with
the stream. Also the options: --forward, --pull, their TOML tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.client import Agent
from zope.interface import implementer

from rtmpd.admission import (
    Action,
    Admission,
    AdmissionRefused,
    AdmissionRequest,
    Decision,
    Publisher,
)
from rtmpd.auth import MAX_HOOK_FORWARDS, DoneHookNotifier, forward_urls
from rtmpd.client.rtmp import RtmpPublishProtocol
from rtmpd.client.session import SessionListener
from rtmpd.client.target import PushTarget, UsageError
from rtmpd.codec import amf0
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp.chunk import NEED_DATA
from rtmpd.codec.rtmp.connection import ServerConnection
from rtmpd.interfaces import IAuthorizer, IMediaSource
from rtmpd.media import Frame, FrameKind
from rtmpd.registry import StreamConfig, StreamRegistry
from rtmpd.services.forward import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    FORWARDING,
    RETRYING,
    STABLE_RUN_S,
    STOPPED,
    Forwarder,
    parse_forward,
)
from rtmpd.services.stats import stream_summary
from rtmpd.services.upstream import Upstream, parse_pull
from rtmpd.tap.rtmpd import Options
from tests.unit.test_auth import CannedResponse, RecordingAgent, decided, hook, make_request

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f"
AAC_HEADER = b"\xaf\x00\x12\x10"
KEY = b"\x17\x01\x00\x00\x00" + b"k" * 50
INTER = b"\x27\x01\x00\x00\x00" + b"p" * 20
AUDIO = b"\xaf\x01" + b"a" * 10
METADATA = amf0.encode_all("onMetaData", amf0.ECMAArray({"width": 640.0}))


@implementer(IMediaSource)
class Source:
    description = "rtmp 127.0.0.1:5000"

    def stop_publishing(self, reason: str) -> None:
        pass


class Attempt:
    """One connection attempt to the target: our RTMP publish session on a
    StringTransport, and the server side that answers it."""

    def __init__(self, target: PushTarget, listener: SessionListener, clock: Any,
                 chunk_size: int) -> None:
        self.at = clock.seconds()
        self.proto = RtmpPublishProtocol(target, listener, clock, chunk_size=chunk_size)
        self.transport = StringTransport()
        self.server = ServerConnection()
        self.events: list[object] = []
        self.proto.makeConnection(self.transport)

    def exchange(self, answer: str = "accept") -> list[object]:
        """Move bytes both ways until quiet; the server answers ``answer``:
        accept, reject (the connect: a bad key), busy (the publish)."""
        start = len(self.events)
        for _ in range(20):
            data = self.transport.value()
            self.transport.clear()
            if data:
                self.server.receive_data(data)
            while (event := self.server.next_event()) is not NEED_DATA:
                self.events.append(event)
                if isinstance(event, ev.ConnectRequested):
                    if answer == "reject":
                        self.server.reject_connect(event.transaction_id, "bad stream key")
                    else:
                        self.server.accept_connect(event.transaction_id)
                elif isinstance(event, ev.PublishRequested):
                    if answer == "busy":
                        self.server.publish_bad_name(event.stream_id, event.name, "busy")
                    else:
                        self.server.publish_start(event.stream_id, event.name)
            out = self.server.data_to_send()
            if out and not self.transport.disconnecting:
                self.proto.dataReceived(out)
            if not data and not out:
                break
        return self.events[start:]

    def close(self, why: str = "connection reset") -> None:
        self.proto.connectionLost(Failure(ConnectionError(why)))

    def media(self) -> list[tuple[int, int, bytes]]:
        return [(e.type_id, e.timestamp_ms, e.payload) for e in self.events
                if isinstance(e, ev.MediaReceived)]


class Harness:
    def __init__(self, *rules: str, queue_bytes: int = 1_500_000) -> None:
        self.reactor = MemoryReactorClock()
        self.registry = StreamRegistry(
            self.reactor, StreamConfig(merge_ms=0, viewer_queue_bytes=queue_bytes))
        self.admission = Admission(self.registry, publisher_timeout_s=0)
        self.forwarder = Forwarder(
            self.admission, self.reactor,
            [parse_forward(r) for r in rules or ("live=rtmp://target/live/{stream}",)],
            chunk_size=4096,
        )
        self.attempts: list[Attempt] = []
        self.forwarder.connector = self._connector  # type: ignore[method-assign]
        self.forwarder.startService()

    def _connector(self, target: PushTarget, chunk_size: int) -> Any:
        def connect(listener: SessionListener) -> None:
            self.attempts.append(Attempt(target, listener, self.reactor, chunk_size))

        return connect

    def publish(self, name: str = "cam") -> Publisher:
        request = AdmissionRequest(action=Action.PUBLISH, app="live", stream=name, query="",
                                   peer_host="127.0.0.1", peer_port=5000, protocol="rtmp",
                                   client_id=0)
        out: list[Any] = []
        self.admission.publish(request, Source()).addBoth(out.append)
        assert isinstance(out[0], Publisher)
        return out[0]

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)


def start_of_stream(publisher: Publisher) -> None:
    publisher.push(Frame.from_tag(FrameKind.SCRIPT, 0, METADATA))
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 0, AVC_HEADER))
    publisher.push(Frame.from_tag(FrameKind.AUDIO, 0, AAC_HEADER))
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 0, INTER))  # before any keyframe
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 40, KEY))
    publisher.push(Frame.from_tag(FrameKind.AUDIO, 50, AUDIO))
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 80, INTER))


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def lines(events: list[LogEvent], word: str) -> list[str]:
    return [text for e in events if word in (text := formatEvent(e))]


def test_a_forward_publishes_from_the_gop_keyframe_then_live_frames() -> None:
    h = Harness()
    publisher = h.publish()
    start_of_stream(publisher)
    (attempt,) = h.attempts
    events = attempt.exchange()
    published = [e for e in events if isinstance(e, ev.PublishRequested)]
    assert [p.name for p in published] == ["cam"]
    # Metadata (sent as @setDataFrame, which the server strips), the headers, then the GOP
    # from its keyframe: the frame before it never reaches the target.
    data = [e for e in events if isinstance(e, ev.DataReceived)]
    assert [amf0.decode_all(d.payload)[0] for d in data] == ["onMetaData"]
    assert attempt.media() == [(9, 40, AVC_HEADER), (8, 40, AAC_HEADER), (9, 40, KEY),
                               (8, 50, AUDIO), (9, 80, INTER)]
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 120, INTER))
    attempt.exchange()
    assert attempt.media()[-1] == (9, 120, INTER)
    (forward,) = h.forwarder.all()
    status = forward.status()
    assert status["state"] == FORWARDING and status["connected"] is True
    assert status["bytes_sent"] > len(KEY) and status["reconnects"] == 0
    assert stream_summary(publisher.stream, h.admission)["forwards"] == [forward.status()]


def test_a_lost_target_is_retried_with_backoff_doubling_to_the_cap(
        logged: list[LogEvent]) -> None:
    h = Harness()
    start_of_stream(h.publish())
    delays = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    for delay in delays:
        h.attempts[-1].close("connection refused")
        count = len(h.attempts)
        h.advance(delay - 0.01)
        assert len(h.attempts) == count, f"retried before {delay} s"
        h.advance(0.01)
        assert len(h.attempts) == count + 1, f"not retried after {delay} s"
    waits = [line.rsplit("reconnecting in ", 1)[1] for line in lines(logged, "reconnecting in")]
    assert waits == [f"{d:g} s" for d in delays]
    assert all("connection refused" in line for line in lines(logged, "reconnecting in"))


def test_a_refused_target_is_logged_once_per_attempt_and_retried_at_the_cap(
        logged: list[LogEvent]) -> None:
    h = Harness()
    start_of_stream(h.publish())
    for _ in range(3):
        attempt = h.attempts[-1]
        attempt.exchange("reject")
        assert attempt.transport.disconnecting
        attempt.close("closed")
        count = len(h.attempts)
        h.advance(BACKOFF_MAX_S - 0.1)
        assert len(h.attempts) == count, "a refusal is not retried before the cap"
        h.advance(0.1)
        assert len(h.attempts) == count + 1
    refusals = lines(logged, "refused by the target")
    assert len(refusals) == 3
    assert all("bad stream key" in line and "trying again in 10 s" in line for line in refusals)
    (forward,) = h.forwarder.all()
    assert forward.refusals == 3 and "bad stream key" in forward.status()["last_error"]


def test_a_busy_name_at_the_target_is_retried_with_the_normal_backoff() -> None:
    h = Harness()
    start_of_stream(h.publish())
    h.attempts[-1].exchange("busy")
    h.attempts[-1].close()
    h.advance(BACKOFF_INITIAL_S)
    assert len(h.attempts) == 2


def test_a_session_that_lasted_starts_the_backoff_over() -> None:
    h = Harness()
    start_of_stream(h.publish())
    for _ in range(3):  # the backoff grows to 4 s
        h.attempts[-1].close()
        h.advance(BACKOFF_MAX_S)
    (forward,) = h.forwarder.all()
    assert forward.backoff_s == 4.0
    h.attempts[-1].exchange()
    h.advance(STABLE_RUN_S)
    h.attempts[-1].close()
    count = len(h.attempts)
    h.advance(BACKOFF_INITIAL_S)
    assert len(h.attempts) == count + 1


def test_a_target_that_stops_reading_is_dropped_past_the_queue_limit_and_retried() -> None:
    h = Harness(queue_bytes=20_000)
    publisher = h.publish()
    start_of_stream(publisher)
    attempt = h.attempts[-1]
    attempt.exchange()
    (forward,) = h.forwarder.all()
    viewer = forward.viewer
    assert viewer is not None
    # Twisted says the socket is full: the session tells the forward, the viewer is held.
    attempt.proto.pauseProducing()
    attempt.transport.clear()
    ts = 120
    big = INTER + b"p" * 2000
    while forward.viewer is viewer:
        ts += 40
        publisher.push(Frame.from_tag(FrameKind.VIDEO, ts, big))
        assert ts < 10_000, "never dropped"
    # Nothing was written while it was held: memory stays bounded.
    assert attempt.transport.value() == b""
    assert attempt.transport.disconnecting
    assert forward.state == RETRYING and "over the queue limit" in forward.last_error
    h.advance(BACKOFF_INITIAL_S)
    assert len(h.attempts) == 2
    h.attempts[-1].exchange()
    publisher.push(Frame.from_tag(FrameKind.VIDEO, ts + 40, KEY))
    h.attempts[-1].exchange()
    # The new session starts with the headers and then a keyframe.
    assert [m[0:1] + m[2:] for m in h.attempts[-1].media()][:3] == [
        (9, AVC_HEADER), (8, AAC_HEADER), (9, KEY)]


def test_a_paused_target_that_drains_rejoins_at_the_next_keyframe() -> None:
    h = Harness()
    publisher = h.publish()
    start_of_stream(publisher)
    attempt = h.attempts[-1]
    attempt.exchange()
    attempt.proto.pauseProducing()
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 120, INTER))
    attempt.proto.resumeProducing()
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 160, INTER))
    publisher.push(Frame.from_tag(FrameKind.VIDEO, 200, KEY))
    attempt.exchange()
    assert [m[1] for m in attempt.media()][-1:] == [200]
    assert 120 not in [m[1] for m in attempt.media()]


def test_the_stream_ending_ends_the_session_cleanly_and_stops_retrying() -> None:
    h = Harness("live=rtmp://a/live/{stream}", "live=rtmp://b/live/{stream}")
    publisher = h.publish()
    start_of_stream(publisher)
    first, second = h.attempts
    first.exchange()
    second.close()  # this one is waiting to retry when the stream ends
    publisher.end("closed by the peer")
    events = first.exchange()
    assert any(isinstance(e, ev.UnpublishRequested) and e.name == "cam" for e in events)
    assert first.transport.disconnecting
    h.advance(60)
    assert len(h.attempts) == 2
    assert list(h.forwarder.all()) == []
    assert h.forwarder.ended_connects == 2


def test_only_the_streams_of_the_forwarded_app_are_forwarded_with_their_names() -> None:
    h = Harness("live=rtmp://t/in/{app}-{stream}", "other=rtmp://t/x/{stream}")
    h.publish("cam")
    (attempt,) = h.attempts
    published = [e for e in attempt.exchange() if isinstance(e, ev.PublishRequested)]
    assert [(p.name) for p in published] == ["live-cam"]


def test_a_forward_is_a_viewer_of_the_stream_not_asked_for_credentials() -> None:
    h = Harness()
    h.admission.limits = type(h.admission.limits)(max_viewers_per_stream=1)
    publisher = h.publish()
    start_of_stream(publisher)
    h.attempts[-1].exchange()
    (viewer,) = publisher.stream.viewers
    assert viewer.protocol == "forward" and viewer.description == (
        "forward rtmp://target:1935/live/cam")


def test_forward_metrics_have_bounded_labels() -> None:
    h = Harness()
    start_of_stream(h.publish())
    h.attempts[-1].exchange()
    families = {f.name: f for f in h.forwarder.collect()}
    states = {s.labels["state"]: s.value for s in families["rtmpd_forwards"].samples}
    assert states == {"connecting": 0, "forwarding": 1, "retrying": 0}
    assert families["rtmpd_forward_connects"].samples[0].value == 1


def test_stopping_the_service_ends_every_forward() -> None:
    h = Harness()
    start_of_stream(h.publish())
    attempt = h.attempts[-1]
    attempt.exchange()
    (forward,) = h.forwarder.all()
    d = h.forwarder.stopService()
    assert forward.state == STOPPED and attempt.transport.disconnecting
    attempt.close()
    assert d.called


# -- options -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "live=rtmp://backup:1935/live/{stream}",
    "live=rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl-mnop",
    "live=rtmps://live-api-s.facebook.com:443/rtmp/{stream}?s=1",
    "live=http://edge:8501/{app}/{stream}",
    "live=wss://edge/live/{stream}",
])
def test_good_forward_options_parse(value: str) -> None:
    rule = parse_forward(value)
    assert rule.app == "live"
    assert rule.target_url("live", "cam1") == value.split("=", 1)[1].replace(
        "{stream}", "cam1").replace("{app}", "live")


@pytest.mark.parametrize(("value", "message"), [
    ("rtmp://h/live/x", "is not APP=URL"),
    ("live=", "is not APP=URL"),
    ("li ve=rtmp://h/live/{stream}", "app 'li ve' is not"),
    ("live=ftp://h/live/{stream}", "scheme 'ftp' is not rtmp"),
    ("live=rtmp:///live/{stream}", "has no host"),
    ("live=rtmp://h/{stream}", "is not /{app}/{stream}"),
    ("live=rtmp://h/live/{name}", "unknown placeholder {name}"),
    ("live=rtmp://h:99999/live/{stream}", "bad port"),
])
def test_bad_forward_options_are_refused_with_a_clear_message(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_forward(value)


def test_shown_urls_hide_a_fixed_stream_key_and_the_query() -> None:
    h = Harness("live=rtmp://a.rtmp.youtube.com/live2/secret-key",
                "live=rtmp://backup/live/{stream}?key=k")
    h.publish()
    shown = sorted(f.shown_url for f in h.forwarder.all())
    assert shown == ["rtmp://a.rtmp.youtube.com:1935/live2/…",
                     "rtmp://backup:1935/live/cam?..."]


def test_pull_options_parse_and_bad_ones_say_why() -> None:
    rule = parse_pull("live/cam1=http://origin:8501/live/cam1.flv?key=k")
    assert (rule.app, rule.stream, rule.url) == (
        "live", "cam1", "http://origin:8501/live/cam1.flv?key=k")
    assert parse_pull("live/cam1=rtmp://nginx:1936/app/cam").url == "rtmp://nginx:1936/app/cam"
    for value, message in [
        ("live=http://o/live/c.flv", "is not APP/STREAM=URL"),
        ("live/c am=http://o/live/c.flv", "stream 'c am' is not"),
        ("live/cam=rtmp://o/cam", "is not /"),
        ("live/cam=ftp://o/x", "is not an http:// or https:// URL"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_pull(value)


def test_command_line_forward_and_pull_options_repeat() -> None:
    options = Options()
    options.parseOptions([
        "--forward", "live=rtmp://a/live/{stream}", "--forward", "live=rtmp://b/live/{stream}",
        "--pull", "live/cam=http://o:8501/live/cam.flv", "--pull-always",
    ])
    assert [r.url for r in options["forward"]] == ["rtmp://a/live/{stream}",
                                                  "rtmp://b/live/{stream}"]
    assert [(r.app, r.stream) for r in options["pull"]] == [("live", "cam")]
    assert options["pull-always"]
    with pytest.raises(usage.UsageError, match="is not APP=URL"):
        Options().parseOptions(["--forward", "rtmp://a/live/x"])


def test_toml_forward_and_pull_tables(tmp_path: Path) -> None:
    config = tmp_path / "rtmpd.toml"
    config.write_text(
        '[forward]\nlive = ["rtmp://a/live/{stream}", "http://b:8501/live/{stream}"]\n'
        'game = "rtmp://c/app/{stream}"\n'
        '[pull]\n"live/cam" = "http://o:8501/live/cam.flv"\n'
    )
    options = Options()
    options.parseOptions(["--config", str(config)])
    assert [(r.app, r.url) for r in options["forward"]] == [
        ("live", "rtmp://a/live/{stream}"), ("live", "http://b:8501/live/{stream}"),
        ("game", "rtmp://c/app/{stream}")]
    assert [(r.app, r.stream, r.url) for r in options["pull"]] == [
        ("live", "cam", "http://o:8501/live/cam.flv")]
    config.write_text('[forward]\nlive = "ftp://x/y/z"\n')
    with pytest.raises(usage.UsageError, match="scheme 'ftp'"):
        Options().parseOptions(["--config", str(config)])


# -- pull: the gateway's upstream with a URL per stream -------------------------------------


def make_pull(always: bool = False) -> tuple[Upstream, Admission, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    registry = StreamRegistry(reactor, StreamConfig(merge_ms=0))
    admission = Admission(registry, publisher_timeout_s=30)
    upstream = Upstream(admission, Agent(reactor), None, reactor, always=always,
                        rules=[parse_pull("live/cam=http://origin:8501/in/x.flv?key=k")])
    return upstream, admission, reactor


def test_a_pulled_name_is_pulled_from_its_own_url_and_other_names_are_not_found() -> None:
    upstream, admission, reactor = make_pull()
    out: list[Any] = []

    def request(name: str) -> AdmissionRequest:
        return AdmissionRequest(action=Action.PLAY, app="live", stream=name, query="",
                                peer_host="127.0.0.1", peer_port=5000, protocol="http-flv",
                                client_id=0)

    admission.play(request("other"), lambda s: None).addErrback(out.append)
    assert isinstance(out[0].value, AdmissionRefused) and out[0].value.refusal.value == (
        "not_found")
    admission.play(request("cam"), lambda s: None)
    assert upstream.pulls[("live", "cam")].url == b"http://origin:8501/in/x.flv?key=k"
    assert reactor.tcpClients[-1][1] == 8501  # the request went out


def test_pull_always_pulls_at_start_and_opens_again_after_a_failure() -> None:
    upstream, _admission, reactor = make_pull(always=True)
    upstream.startService()
    pulled = upstream.pulls[("live", "cam")]
    pulled.pull_refused(None, "connection refused")
    assert ("live", "cam") not in upstream.pulls
    reactor.advance(BACKOFF_MAX_S)
    assert ("live", "cam") in upstream.pulls
    upstream.stopService()


# -- forwards an on-publish hook adds -------------------------------------------------------


def test_an_on_publish_hooks_answer_may_name_forwards() -> None:
    authorizer, agent, _ = hook(Action.PUBLISH)
    answer = authorizer.authorize(make_request(Action.PUBLISH))
    body = json.dumps({"forward": ["rtmp://yt/live2/key-1", "ftp://bad/x/y",
                                   "rtmp://yt/live2/key-1", "http://b:8501/live/{stream}"]})
    agent.sent[0].answer.callback(CannedResponse(200, body.encode()))
    decision = decided(answer)
    assert decision.allowed
    assert decision.forward == ("rtmp://yt/live2/key-1", "http://b:8501/live/{stream}")


@pytest.mark.parametrize("body", [b"", b"ok", b"[1,2]", b'{"allow": true}'])
def test_answers_that_name_no_forwards_add_none(body: bytes) -> None:
    assert forward_urls(body) == ((), "")


def test_a_forward_answer_that_is_not_a_list_of_urls_is_ignored_and_said() -> None:
    urls, problem = forward_urls(b'{"forward": "rtmp://a/b/c"}')
    assert urls == () and "not a list of URLs" in problem
    many = json.dumps({"forward": [f"rtmp://h/live/k{i}" for i in range(40)]}).encode()
    urls, problem = forward_urls(many)
    assert len(urls) == MAX_HOOK_FORWARDS and f"only the first {MAX_HOOK_FORWARDS}" in problem


def test_a_bad_forward_url_is_reported_without_its_path_which_may_be_a_stream_key() -> None:
    body = json.dumps({"forward": ["rtmp://yt:99999/live2/sekrit-key", "rtmp://a/b/c"]})
    urls, problem = forward_urls(body.encode())
    assert urls == ("rtmp://a/b/c",)
    assert "forward 1 (rtmp://yt:99999…)" in problem and "left out" in problem
    assert "sekrit" not in problem


@implementer(IAuthorizer)
class ForwardingAuthorizer:
    """Allows every publish and names a forward for it, as a hook's answer would."""

    def authorize(self, request: object) -> Decision:
        return Decision(True, forward=("rtmp://restream/live/{app}_{stream}",))


def test_forwards_from_the_authorizers_start_with_the_publish() -> None:
    h = Harness("other=rtmp://unused/live/{stream}")
    h.admission.authorizers.append(ForwardingAuthorizer())
    start_of_stream(h.publish())
    (attempt,) = h.attempts
    published = [e for e in attempt.exchange() if isinstance(e, ev.PublishRequested)]
    assert [p.name for p in published] == ["live_cam"]
    (forward,) = h.forwarder.all()
    assert forward.status()["from"] == "hook" and forward.state == FORWARDING


def test_a_forwards_end_is_not_posted_to_the_on_play_done_hook() -> None:
    h = Harness()
    agent = RecordingAgent()
    h.admission.add_listener(DoneHookNotifier(None, "http://hooks/play-done", agent, h.reactor))
    publisher = h.publish()
    start_of_stream(publisher)
    h.attempts[-1].exchange()
    h.attempts[-1].close()  # the forward's play ends
    publisher.end("closed by the peer")
    assert agent.sent == []
