"""A server's streams in a stream directory, on a Clock with the in-memory
directory (rtmpd.directory.MemoryDirectory): a publish claims its name
before it is answered and a name held elsewhere is busy; ending releases it,
live names are claimed again periodically, a directory that does not answer
lets publishes through (and they are claimed once it is back), a clean stop
releases everything (rtmpd.services.directory.DirectoryClaims). And the
other side: an upstream with a directory pulls a stream from the location
that holds it, follows it on reconnects and ends it once it is gone
(rtmpd.services.upstream.Upstream)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import Agent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rtmpd.admission import (
    ALLOW,
    Action,
    Admission,
    AdmissionRefused,
    AdmissionRequest,
    Publisher,
    Refusal,
    deny,
)
from rtmpd.directory import MemoryDirectory
from rtmpd.interfaces import IAdmissionListener, IAuthorizer, IMediaSource, IStreamDirectory
from rtmpd.registry import Stream, StreamConfig, StreamRegistry
from rtmpd.services.directory import RELEASE_TIMEOUT_S, DirectoryClaims
from rtmpd.services.upstream import PulledStream, Upstream
from tests.unit.test_upstream import Viewer, headers, video

HERE = "http://10.0.0.1:8501"
THERE = "http://10.0.0.2:8501"


def publish_request(name: str = "cam", client_id: int = 0) -> AdmissionRequest:
    return AdmissionRequest(action=Action.PUBLISH, app="live", stream=name, query="",
                            peer_host="127.0.0.1", peer_port=5000, protocol="rtmp",
                            client_id=client_id)


def play_request(name: str = "cam") -> AdmissionRequest:
    return AdmissionRequest(action=Action.PLAY, app="live", stream=name, query="",
                            peer_host="127.0.0.1", peer_port=5001, protocol="http-flv",
                            client_id=0)


@implementer(IMediaSource)
class Source:
    description = "test source"

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def stop_publishing(self, reason: str) -> None:
        self.stopped.append(reason)


@implementer(IStreamDirectory)
class ControlledDirectory:
    """A directory that answers when the test says so, or fails."""

    def __init__(self) -> None:
        self.memory = MemoryDirectory()
        self.calls: list[tuple[str, str, str]] = []
        self.pending: list[tuple[defer.Deferred[Any], Any]] = []
        self.hold = False
        self.broken = False

    def _answer(self, call: tuple[str, str, str],
                result: Callable[[], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        self.calls.append(call)
        if self.broken:
            return defer.fail(ConnectionError("Redis is not connected"))
        if self.hold:
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append((d, result))
            return d
        return result()

    def claim(self, app: str, stream: str, location: str) -> defer.Deferred[bool]:
        return self._answer(("claim", f"{app}/{stream}", location),
                            lambda: self.memory.claim(app, stream, location))

    def release(self, app: str, stream: str, location: str) -> defer.Deferred[None]:
        return self._answer(("release", f"{app}/{stream}", location),
                            lambda: self.memory.release(app, stream, location))

    def lookup(self, app: str, stream: str) -> defer.Deferred[str | None]:
        return self._answer(("lookup", f"{app}/{stream}", ""),
                            lambda: self.memory.lookup(app, stream))

    def answer_all(self) -> None:
        pending, self.pending = self.pending, []
        for d, result in pending:
            result().chainDeferred(d)


def fired(d: defer.Deferred[Any]) -> bool:
    out: list[Any] = []
    d.addBoth(lambda r: out.append(r) or r)
    return bool(out)


def outcome(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], defer.Failure):
        out[0].raiseException()
    return out[0]


def refusal_of(d: defer.Deferred[Any]) -> Refusal:
    with pytest.raises(AdmissionRefused) as refused:
        outcome(d)
    return refused.value.refusal


def make_origin(directory: Any = None, **kwargs: Any
                ) -> tuple[DirectoryClaims, Admission, Any, Clock]:
    clock = Clock()
    registry = StreamRegistry(clock, StreamConfig(merge_ms=0))
    admission = Admission(registry, publisher_timeout_s=0, **kwargs)
    directory = MemoryDirectory() if directory is None else directory
    claims = DirectoryClaims(admission, directory, HERE, clock)
    claims.startService()
    return claims, admission, directory, clock


def holder(directory: Any, name: str = "cam") -> str | None:
    memory = directory if isinstance(directory, MemoryDirectory) else directory.memory
    return memory.holders.get(("live", name))


# -- DirectoryClaims: an origin's publishes ----------------------------------------------


def test_it_is_the_last_authorizer_and_a_listener() -> None:
    claims, admission, _, _ = make_origin()
    assert admission.authorizers[-1] is claims and claims in admission.listeners
    verifyObject(IAuthorizer, claims)
    verifyObject(IAdmissionListener, claims)


def test_a_publish_claims_its_name_before_it_is_answered() -> None:
    directory = ControlledDirectory()
    directory.hold = True
    claims, admission, _, _ = make_origin(directory)
    d = admission.publish(publish_request(), Source())
    assert directory.calls == [("claim", "live/cam", HERE)]
    assert not fired(d) and ("live", "cam") not in admission.registry.streams
    directory.answer_all()
    assert isinstance(outcome(d), Publisher)
    assert holder(directory) == HERE and claims.held == {("live", "cam")}


def test_a_name_held_by_another_server_is_busy_like_a_name_busy_here() -> None:
    directory = MemoryDirectory()
    outcome(directory.claim("live", "cam", THERE))
    _, admission, _, _ = make_origin(directory)
    assert refusal_of(admission.publish(publish_request(), Source())) is Refusal.BUSY
    assert ("live", "cam") not in admission.registry.streams
    assert holder(directory) == THERE


def refusal_message(d: defer.Deferred[Any]) -> str:
    with pytest.raises(AdmissionRefused) as refused:
        outcome(d)
    return refused.value.message


def test_a_refusal_says_where_the_holder_is() -> None:
    directory = MemoryDirectory()
    outcome(directory.claim("live", "cam", THERE))
    _, admission, _, _ = make_origin(directory)
    assert refusal_message(admission.publish(publish_request(), Source())) == (
        "stream live/cam already has a publisher on another server (stream directory)")
    redis, box = MemoryDirectory(), MemoryDirectory()
    _, one = make_worker(redis, box, 1)
    _, two = make_worker(redis, box, 2)
    outcome(one.publish(publish_request(), Source()))
    assert refusal_message(two.publish(publish_request(), Source())) == (
        "stream live/cam already has a publisher on another worker of this server "
        "(stream directory)")


def test_a_name_busy_here_is_refused_before_the_directory_is_asked() -> None:
    directory = ControlledDirectory()
    _, admission, _, _ = make_origin(directory)
    outcome(admission.publish(publish_request(), Source()))
    directory.calls.clear()
    assert refusal_of(admission.publish(publish_request(), Source())) is Refusal.BUSY
    assert directory.calls == []
    assert holder(directory) == HERE


def test_only_publishes_the_other_authorizers_allowed_are_claimed() -> None:
    @implementer(IAuthorizer)
    class NoKey:
        def authorize(self, request: object) -> Any:
            return deny("no key", Refusal.UNAUTHORIZED)

    directory = ControlledDirectory()
    _, admission, _, _ = make_origin(directory, authorizers=[NoKey()])
    assert refusal_of(admission.publish(publish_request(), Source())) is Refusal.UNAUTHORIZED
    assert directory.calls == []


def test_an_ended_publish_releases_its_name() -> None:
    claims, admission, directory, _ = make_origin()
    publisher = outcome(admission.publish(publish_request(), Source()))
    publisher.end("disconnected")
    assert holder(directory) is None and claims.held == set()


def test_a_publish_refused_after_its_claim_releases_the_name() -> None:
    directory = ControlledDirectory()
    directory.hold = True
    claims, admission, _, _ = make_origin(directory)
    client_id = admission.open_connection("127.0.0.1", 5000, "rtmp", lambda why: None)
    d = admission.publish(publish_request(client_id=client_id), Source())
    admission.close_connection(client_id)  # the client leaves meanwhile
    directory.answer_all()
    assert refusal_of(d) is Refusal.GONE
    directory.answer_all()  # the release
    assert holder(directory) is None and claims.held == set()


def test_busy_after_the_claim_leaves_the_name_to_its_holder_at_this_location() -> None:
    """Two workers of one box claim at the box's location; the box's own
    directory (an authorizer after this one) refuses the second as busy,
    which must not release the first one's claim."""
    box = MemoryDirectory()
    directory = MemoryDirectory()
    claims, admission, _, _ = make_origin(directory)
    other_worker = DirectoryClaims(admission, box, "http://worker-2", claims.clock)
    outcome(box.claim("live", "cam", "http://worker-1"))
    outcome(directory.claim("live", "cam", HERE))  # worker 1's claim in Redis
    assert refusal_of(admission.publish(publish_request(), Source())) is Refusal.BUSY
    assert holder(directory) == HERE and other_worker.held == set()


def make_worker(redis: Any, box: Any, index: int) -> tuple[DirectoryClaims, Admission]:
    """One worker of a box with ``--directory``: its claims in Redis at the
    box's location (shared), then in the box's directory at its own."""
    clock = Clock()
    admission = Admission(StreamRegistry(clock, StreamConfig(merge_ms=0)),
                          publisher_timeout_s=0)
    claims = DirectoryClaims(admission, redis, HERE, clock, shared=True)
    DirectoryClaims(admission, box, f"http://worker-{index}", clock,
                    elsewhere="on another worker of this server").startService()
    claims.startService()
    return claims, admission


def test_workers_of_one_box_claim_its_location_and_the_holder_alone_refreshes_it() -> None:
    redis, box = MemoryDirectory(), MemoryDirectory()
    first, one = make_worker(redis, box, 1)
    second, two = make_worker(redis, box, 2)
    publisher = outcome(one.publish(publish_request(), Source()))
    assert holder(redis) == HERE and holder(box) == "http://worker-1"
    # The second worker's publisher is busy (the box's directory), and the
    # first one's stream stays claimed in Redis.
    assert refusal_of(two.publish(publish_request(), Source())) is Refusal.BUSY
    assert holder(redis) == HERE and first.held == {("live", "cam")} and second.held == set()
    publisher.end("disconnected")
    assert holder(redis) is None and holder(box) is None
    # Once free, the name goes to whichever worker: at the same location.
    outcome(two.publish(publish_request(), Source()))
    assert holder(redis) == HERE and second.held == {("live", "cam")} and first.held == set()


def test_a_stream_starting_on_a_worker_claims_again_after_its_siblings_release() -> None:
    """Worker 2's publish claims in Redis (the box's location: yes) while
    worker 1's stream of that name ends; worker 1's release reaches Redis
    after that claim, and the box lets worker 2 start: the start claims the
    name again, rather than leaving it out of Redis until the next refresh."""
    redis, box = ControlledDirectory(), ControlledDirectory()
    _, one = make_worker(redis, box, 1)
    second, two = make_worker(redis, box, 2)
    publisher = outcome(one.publish(publish_request(), Source()))
    box.hold = True
    d = two.publish(publish_request(), Source())  # claimed in Redis, asking the box
    box.hold = False
    publisher.end("disconnected")  # worker 1 releases, in Redis and in the box
    assert holder(redis) is None and holder(box) is None
    box.answer_all()  # then the box answers worker 2's claim
    assert isinstance(outcome(d), Publisher)
    assert holder(redis) == HERE and second.held == {("live", "cam")}


def test_a_takeover_keeps_the_name() -> None:
    claims, admission, directory, _ = make_origin(takeover=True)
    old = outcome(admission.publish(publish_request(), Source()))
    new = outcome(admission.publish(publish_request(client_id=0), Source()))
    assert old.ended and not new.ended
    assert holder(directory) == HERE and claims.held == {("live", "cam")}
    new.end("disconnected")
    assert holder(directory) is None


def test_streams_this_server_publishes_itself_are_not_claimed() -> None:
    claims, admission, directory, _ = make_origin()
    outcome(admission.publish(publish_request(), Source(), internal=True))
    assert holder(directory) is None and claims.held == set()


def test_live_names_are_claimed_again_every_refresh() -> None:
    directory = ControlledDirectory()
    claims, admission, _, clock = make_origin(directory)
    outcome(admission.publish(publish_request(), Source()))
    outcome(admission.publish(publish_request("two"), Source()))
    directory.calls.clear()
    clock.advance(claims.refresh_s)
    assert directory.calls == [("claim", "live/cam", HERE), ("claim", "live/two", HERE)]
    clock.advance(claims.refresh_s)
    assert len(directory.calls) == 4


def test_a_directory_that_does_not_answer_lets_publishes_through_and_claims_them_later(
) -> None:
    directory = ControlledDirectory()
    directory.broken = True
    claims, admission, _, clock = make_origin(directory)
    publisher = outcome(admission.publish(publish_request(), Source()))
    assert isinstance(publisher, Publisher) and holder(directory) is None
    assert claims.held == {("live", "cam")}
    clock.advance(claims.refresh_s)  # still down: nothing, and nothing breaks
    assert holder(directory) is None
    directory.broken = False
    clock.advance(claims.refresh_s)
    assert holder(directory) == HERE


def test_a_name_taken_elsewhere_while_the_directory_was_down_is_not_stolen() -> None:
    directory = ControlledDirectory()
    directory.broken = True
    claims, admission, _, clock = make_origin(directory)
    publisher = outcome(admission.publish(publish_request(), Source()))
    directory.broken = False
    outcome(directory.memory.claim("live", "cam", THERE))
    clock.advance(claims.refresh_s)
    # The other server keeps the name; the stream here goes on.
    assert holder(directory) == THERE and publisher.stream.live
    # And this one ending does not release the other's name.
    publisher.end("disconnected")
    assert holder(directory) == THERE


def test_a_clean_stop_releases_every_name_at_once() -> None:
    claims, admission, directory, clock = make_origin()
    publisher = outcome(admission.publish(publish_request(), Source()))
    outcome(admission.publish(publish_request("two"), Source()))
    d = claims.stopService()
    assert holder(directory) is None and holder(directory, "two") is None
    assert fired(d)
    # The publishers stop afterwards (PublishersFirst); nothing is claimed again.
    publisher.end("the server is shutting down")
    clock.advance(claims.refresh_s * 3)
    assert holder(directory) is None


def test_a_stop_waits_a_bounded_time_for_a_directory_that_does_not_answer() -> None:
    directory = ControlledDirectory()
    claims, admission, _, clock = make_origin(directory)
    outcome(admission.publish(publish_request(), Source()))
    directory.hold = True
    d = claims.stopService()
    assert not fired(d)
    clock.advance(RELEASE_TIMEOUT_S)
    assert fired(d)


def test_a_publish_during_shutdown_is_not_claimed() -> None:
    directory = ControlledDirectory()
    claims, _, _, _ = make_origin(directory)
    claims.stopService()
    assert claims.authorize(publish_request()) is ALLOW
    assert directory.calls == []


# -- Upstream with a directory: a gateway finds the origin ---------------------------


def make_gateway(directory: Any, location: str | None = None
                 ) -> tuple[Upstream, Admission, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    registry = StreamRegistry(reactor, StreamConfig(merge_ms=0))
    admission = Admission(registry, publisher_timeout_s=30)
    upstream = Upstream(admission, Agent(reactor), None, reactor, directory=directory,
                        location=location)
    return upstream, admission, reactor


def play(admission: Admission, name: str = "cam") -> tuple[defer.Deferred[Any], list[Viewer]]:
    viewers: list[Viewer] = []

    def start(stream: Stream) -> Viewer:
        viewers.append(Viewer(stream))
        return viewers[-1]

    return admission.play(play_request(name), start), viewers


def feed(pulled: PulledStream, ts: int = 1000) -> None:
    pulled.pull_answered("a-1")
    for frame in headers(ts):
        pulled.pull_frame(frame)
    pulled.pull_frame(video(ts, key=True))


def test_a_play_pulls_the_stream_from_the_location_that_holds_it() -> None:
    directory = MemoryDirectory()
    outcome(directory.claim("live", "cam", THERE))
    upstream, admission, reactor = make_gateway(directory)
    d, viewers = play(admission)
    pulled = upstream.pulls[("live", "cam")]
    assert pulled.url == b"http://10.0.0.2:8501/live/cam.flv"
    assert len(reactor.tcpClients) == 1
    feed(pulled)
    assert outcome(d) is viewers[0]


def test_a_stream_not_in_the_directory_is_not_found() -> None:
    upstream, admission, reactor = make_gateway(MemoryDirectory())
    d, _ = play(admission)
    assert refusal_of(d) is Refusal.NOT_FOUND
    assert upstream.pulls == {} and reactor.tcpClients == []
    assert outcome(upstream.probe("live", "cam")) is Refusal.NOT_FOUND


def test_a_directory_that_does_not_answer_makes_a_play_unavailable() -> None:
    directory = ControlledDirectory()
    directory.broken = True
    upstream, admission, _ = make_gateway(directory)
    d, _ = play(admission)
    assert refusal_of(d) is Refusal.UNAVAILABLE
    assert outcome(upstream.probe("live", "cam")) is Refusal.UNAVAILABLE


def test_this_servers_own_location_is_never_pulled_from() -> None:
    directory = MemoryDirectory()
    outcome(directory.claim("live", "cam", HERE))  # a publish here, not live yet
    _, admission, reactor = make_gateway(directory, location=HERE)
    d, _ = play(admission)
    assert refusal_of(d) is Refusal.NOT_FOUND and reactor.tcpClients == []


def test_a_stream_live_here_is_never_looked_up() -> None:
    directory = ControlledDirectory()
    upstream, admission, _ = make_gateway(directory)
    outcome(admission.publish(publish_request(), Source()))
    d, viewers = play(admission)
    assert outcome(d) is viewers[0]
    assert directory.calls == [] and upstream.pulls == {}


def test_plays_meanwhile_share_one_lookup_and_one_pull() -> None:
    directory = ControlledDirectory()
    outcome(directory.memory.claim("live", "cam", THERE))
    directory.hold = True
    upstream, admission, reactor = make_gateway(directory)
    first, first_viewers = play(admission)
    second, second_viewers = play(admission)
    assert directory.calls == [("lookup", "live/cam", "")]
    directory.answer_all()
    assert len(reactor.tcpClients) == 1
    feed(upstream.pulls[("live", "cam")])
    assert outcome(first) is first_viewers[0] and outcome(second) is second_viewers[0]


def test_a_stream_published_here_during_the_lookup_is_played_from_here() -> None:
    directory = ControlledDirectory()
    outcome(directory.memory.claim("live", "cam", THERE))
    directory.hold = True
    upstream, admission, reactor = make_gateway(directory)
    d, viewers = play(admission)
    publisher = outcome(admission.publish(publish_request(), Source()))
    directory.answer_all()
    assert outcome(d) is viewers[0] and viewers[0].stream is publisher.stream
    assert upstream.pulls == {} and reactor.tcpClients == []


def go_live(upstream: Upstream, admission: Admission) -> tuple[PulledStream, Viewer]:
    d, viewers = play(admission)
    pulled = upstream.pulls[("live", "cam")]
    feed(pulled)
    assert outcome(d) is viewers[0]
    return pulled, viewers[0]


def test_a_reconnect_follows_the_stream_to_its_new_location() -> None:
    directory = MemoryDirectory()
    outcome(directory.claim("live", "cam", THERE))
    upstream, admission, reactor = make_gateway(directory)
    pulled, viewer = go_live(upstream, admission)
    outcome(directory.release("live", "cam", THERE))
    outcome(directory.claim("live", "cam", "http://10.0.0.3:8501"))
    pulled.pull_ended("the upstream closed the connection")
    connects = len(reactor.tcpClients)
    reactor.advance(60)
    assert pulled.url == b"http://10.0.0.3:8501/live/cam.flv"
    assert pulled.description == "upstream 10.0.0.3:8501"
    assert len(reactor.tcpClients) == connects + 1
    assert viewer.ended == [] and pulled.state == "reconnecting"


def test_a_stream_gone_from_the_directory_ends_for_its_viewers_at_the_reconnect() -> None:
    directory = MemoryDirectory()
    outcome(directory.claim("live", "cam", THERE))
    upstream, admission, reactor = make_gateway(directory)
    pulled, viewer = go_live(upstream, admission)
    outcome(directory.release("live", "cam", THERE))  # the origin ended it, or expired
    connects = len(reactor.tcpClients)
    pulled.pull_ended("the upstream closed the connection")
    reactor.advance(60)
    assert len(reactor.tcpClients) == connects
    assert viewer.ended == [
        "publisher upstream 10.0.0.2:8501 is no longer in the stream directory"]
    assert upstream.pulls == {} and ("live", "cam") not in admission.registry.streams


def test_a_reconnect_while_the_directory_does_not_answer_tries_the_same_origin() -> None:
    directory = ControlledDirectory()
    outcome(directory.memory.claim("live", "cam", THERE))
    upstream, admission, reactor = make_gateway(directory)
    pulled, viewer = go_live(upstream, admission)
    directory.broken = True
    connects = len(reactor.tcpClients)
    pulled.pull_ended("the upstream closed the connection")
    reactor.advance(60)
    assert len(reactor.tcpClients) == connects + 1
    assert pulled.url == b"http://10.0.0.2:8501/live/cam.flv" and viewer.ended == []


def make_relaying_worker(box: MemoryDirectory) -> tuple[Upstream, Admission, MemoryReactorClock]:
    """Worker 2 of a box: the box's directory decides its publishes (an
    authorizer) and locates its relays of worker 1's streams."""
    upstream, admission, reactor = make_gateway(box, location="http://worker-2")
    DirectoryClaims(admission, box, "http://worker-2", reactor).startService()
    return upstream, admission, reactor


def test_a_publish_whose_name_the_box_freed_replaces_the_relay_still_pulling_it() -> None:
    """Worker 1 killed: the box frees its names at once, but worker 2's
    relay of its stream is still waiting to reconnect. An encoder
    reconnecting to worker 2 goes live there (not busy); the relay ends and
    its viewers are told so."""
    box = MemoryDirectory()
    outcome(box.claim("live", "cam", "http://worker-1"))
    upstream, admission, _ = make_relaying_worker(box)
    pulled, viewer = go_live(upstream, admission)
    pulled.pull_ended("the upstream closed the connection")  # worker 1 killed
    outcome(box.release("live", "cam", "http://worker-1"))  # the box frees its names
    source = Source()
    publisher = outcome(admission.publish(publish_request(), source))
    assert admission.registry.streams[("live", "cam")] is publisher.stream
    assert holder(box) == "http://worker-2" and upstream.pulls == {}
    assert pulled.state == "stopped" and viewer.ended and source.stopped == []


def test_a_publish_of_a_name_a_sibling_holds_leaves_its_relay_alone() -> None:
    """Worker 1's publisher is live: a second publisher reaching worker 2,
    where a relay of it plays, is busy (the box's directory), and the relay
    goes on."""
    box = MemoryDirectory()
    outcome(box.claim("live", "cam", "http://worker-1"))
    upstream, admission, _ = make_relaying_worker(box)
    pulled, viewer = go_live(upstream, admission)
    assert refusal_of(admission.publish(publish_request(), Source())) is Refusal.BUSY
    assert holder(box) == "http://worker-1" and viewer.ended == []
    assert admission.registry.streams[("live", "cam")] is pulled.stream
    assert pulled.state == "streaming"


def test_a_pulled_stream_without_a_directory_stays_busy_for_publishers() -> None:
    """A --pull stream (its URL its own, not a directory's) is not a relay:
    a publisher of its name is refused busy, the authorizers not asked."""
    reactor = MemoryReactorClock()
    admission = Admission(StreamRegistry(reactor, StreamConfig(merge_ms=0)),
                          publisher_timeout_s=30)
    upstream = Upstream(admission, Agent(reactor), "http://10.0.0.2:8501", reactor)
    pulled, viewer = go_live(upstream, admission)
    assert refusal_of(admission.publish(publish_request(), Source())) is Refusal.BUSY
    assert viewer.ended == [] and pulled.state == "streaming"
