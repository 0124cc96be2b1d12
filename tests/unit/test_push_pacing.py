"""rtmpd-push's pacing core without sockets: pacing, loop, start, reconnect backoff and
resume on a task.Clock with fake sessions. The fakes of both sides of the session contract
(FakeSession, RecordingListener) are shared with the connector and CLI tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred

from rtmpd.client.pacing import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    EXIT_DISCONNECTED,
    EXIT_OK,
    EXIT_REFUSED,
    STABLE_RUN_S,
    Pusher,
)
from rtmpd.client.session import Session, SessionListener, Tag
from rtmpd.client.sources import PushSource, SourceTag
from rtmpd.codec import amf0, flv

METADATA = amf0.encode_all("onMetaData", amf0.ECMAArray({"duration": 2.0}))
VIDEO_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f"
AUDIO_HEADER = b"\xaf\x00\x12\x10"


def make_source(seconds: int = 2, *, gop: int = 10) -> PushSource:
    """Video at 25 fps (a keyframe every ``gop`` frames) and audio every 20 ms; bodies
    name each tag ("v12"/"a40") so tests can follow them. No file behind it."""
    tags: list[SourceTag] = []
    for i in range(seconds * 25):
        tags.append(SourceTag(flv.TAG_VIDEO, i * 40, i % gop == 0, False,
                              (b"\x17" if i % gop == 0 else b"\x27") + b"\x01\0\0\0" + b"v%d" % i,
                              0, 0, 40))
    for i in range(seconds * 50):
        tags.append(SourceTag(flv.TAG_AUDIO, i * 20, False, False, b"\xaf\x01a%d" % i, 0, 0, 20))
    tags.sort(key=lambda t: t.dts_ms)
    headers = [
        SourceTag(flv.TAG_VIDEO, 0, False, True, VIDEO_HEADER, 0, 0),
        SourceTag(flv.TAG_AUDIO, 0, False, True, AUDIO_HEADER, 0, 0),
    ]
    return PushSource(Path("synthetic.mp4"), -1, metadata=METADATA, tags=tags, headers=headers,
                      has_audio=True, has_video=True)


class FakeSession:
    """Records what is sent, and when."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, Tag]] = []
        self.finished: Deferred[None] = Deferred()
        self.finish_called = False
        self.aborted = False

    def send_tags(self, tags: Sequence[Tag]) -> None:
        self.sent.extend((self.clock.seconds(), tag) for tag in tags)

    def finish(self) -> Deferred[None]:
        self.finish_called = True
        return self.finished

    def abort(self) -> None:
        self.aborted = True

    def media(self) -> list[tuple[float, Tag]]:
        return [(t, tag) for t, tag in self.sent
                if tag[0] != flv.TAG_SCRIPT and tag[2] not in (VIDEO_HEADER, AUDIO_HEADER)]


class RecordingListener:
    def __init__(self) -> None:
        self.ready: list[Session] = []
        self.lost: list[tuple[str, bool]] = []
        self.writable: list[bool] = []

    def session_ready(self, session: Session) -> None:
        self.ready.append(session)

    def session_lost(self, session: Session | None, reason: str, permanent: bool) -> None:
        self.lost.append((reason, permanent))

    def session_writable(self, writable: bool) -> None:
        self.writable.append(writable)


class Harness:
    """A Pusher on a task.Clock whose connection attempts the test answers."""

    def __init__(self, source: PushSource | None = None, **options: object) -> None:
        self.clock = task.Clock()
        self.source = source or make_source()
        self.attempts: list[float] = []
        self.listener: SessionListener | None = None
        self.exits: list[tuple[int, str]] = []
        self.pusher = Pusher(self.source, self._connect, self.clock,
                             lambda status, text: self.exits.append((status, text)),
                             **options)  # type: ignore[arg-type]

    def _connect(self, listener: SessionListener) -> None:
        self.attempts.append(self.clock.seconds())
        self.listener = listener

    def ready(self) -> FakeSession:
        session = FakeSession(self.clock)
        assert self.listener is not None
        self.listener.session_ready(session)
        return session

    def run_for(self, seconds: float) -> None:
        """Advance the clock ``seconds``, stopping exactly at each timer on the way."""
        end = self.clock.seconds() + seconds
        while True:
            pending = [c.getTime() for c in self.clock.getDelayedCalls()]
            upcoming = min(pending, default=end)
            if upcoming > end:
                break
            self.clock.advance(max(0.0, upcoming - self.clock.seconds()))
            if upcoming == end:
                break
        self.clock.advance(max(0.0, end - self.clock.seconds()))

    def wait_for_attempt(self) -> None:
        """Advance to the next reconnect attempt."""
        count = len(self.attempts)
        while len(self.attempts) == count:
            self.clock.advance(min(c.getTime() for c in self.clock.getDelayedCalls())
                               - self.clock.seconds())


def media_tags(source: PushSource) -> list[Tag]:
    return [(t.tag_type, t.dts_ms, source.body(t)) for t in source.tags]


# -- pacing -------------------------------------------------------------------------


def test_new_session_gets_metadata_then_sequence_headers_then_the_first_keyframe() -> None:
    h = Harness()
    h.pusher.start()
    session = h.ready()
    kinds = [tag for _, tag in session.sent[:4]]
    assert kinds[0] == (flv.TAG_SCRIPT, 0, METADATA)
    assert kinds[1] == (flv.TAG_VIDEO, 0, VIDEO_HEADER)
    assert kinds[2] == (flv.TAG_AUDIO, 0, AUDIO_HEADER)
    assert kinds[3][2].startswith(b"\x17")


@pytest.mark.parametrize("speed", [0.5, 1.0, 4.0])
def test_each_tag_leaves_at_its_dts_divided_by_speed(speed: float) -> None:
    h = Harness(speed=speed)
    h.pusher.start()
    session = h.ready()
    h.run_for(2.2 / speed)
    sent = session.media()
    assert [tag for _, tag in sent] == media_tags(h.source)
    for when, (_, ts, _) in sent:
        assert when == pytest.approx(ts / 1000 / speed, abs=1e-6)


def test_end_of_input_ends_the_session_cleanly_and_exits_0() -> None:
    h = Harness()
    h.pusher.start()
    session = h.ready()
    h.run_for(2.5)
    assert session.finish_called
    assert h.exits == []
    session.finished.callback(None)
    assert h.exits == [(EXIT_OK, "")]


def test_loop_continues_timestamps_from_the_end_of_the_last_frame() -> None:
    h = Harness(loop=True)
    h.pusher.start()
    session = h.ready()
    h.run_for(5.0)
    period = h.source.period_ms
    assert period == 2000
    video = [ts for _, (kind, ts, _) in session.media() if kind == flv.TAG_VIDEO]
    assert video[:125] == [i * 40 for i in range(125)]  # 2.5 passes, no gap, no repeat
    bodies = [body for _, (_, _, body) in session.media()]
    assert bodies.count(b"\x17\x01\0\0\0v0") == 3
    assert not session.finish_called


def test_start_begins_at_the_keyframe_at_or_before_the_position() -> None:
    h = Harness(start_ms=1100)  # keyframes every 400 ms: 0, 400, 800, 1200
    h.pusher.start()
    session = h.ready()
    first_ts = session.media()[0][1][1]
    assert first_ts == 800
    h.run_for(0.1)
    assert session.media()[0][1][2].startswith(b"\x17")
    assert all(ts >= 800 for _, (_, ts, _) in session.media())


def test_blocked_socket_holds_tags_until_it_drains() -> None:
    h = Harness()
    h.pusher.start()
    session = h.ready()
    h.run_for(0.5)
    count = len(session.sent)
    assert h.listener is not None
    h.listener.session_writable(False)
    h.run_for(1.0)
    assert len(session.sent) == count
    h.listener.session_writable(True)
    h.run_for(0.1)
    assert count < len(session.sent) < count + 15  # paced on, not a 1 s burst


# -- reconnecting -------------------------------------------------------------------


def test_backoff_doubles_to_10_s_then_resets_after_a_successful_run() -> None:
    h = Harness(loop=True)
    h.pusher.start()
    for _ in range(8):
        assert h.listener is not None
        h.listener.session_lost(None, "cannot connect: refused", False)
        h.wait_for_attempt()
    waits = [b - a for a, b in zip(h.attempts, h.attempts[1:], strict=False)]
    assert waits[:7] == pytest.approx([0.5, 1, 2, 4, 8, BACKOFF_MAX_S, BACKOFF_MAX_S])
    # A run that lasts resets the backoff; a connection refused at once does not.
    session = h.ready()
    h.run_for(STABLE_RUN_S)
    assert h.listener is not None
    h.listener.session_lost(session, "connection lost", False)
    assert h.pusher.backoff_s == BACKOFF_INITIAL_S * 2  # 0.5 used now, 1.0 next
    assert h.pusher.reconnects == 8


def test_reconnect_resumes_from_the_last_keyframe_with_the_same_timestamps() -> None:
    h = Harness()
    h.pusher.start()
    first = h.ready()
    h.run_for(1.0)  # keyframes at 0, 400, 800 ms sent; position ~1000 ms
    last_sent = first.media()[-1][1][1]
    assert h.listener is not None
    h.listener.session_lost(first, "connection lost", False)
    h.clock.advance(BACKOFF_INITIAL_S)
    assert len(h.attempts) == 2
    second = h.ready()
    resumed_at = h.clock.seconds()
    sent = second.sent
    assert sent[0][1] == (flv.TAG_SCRIPT, 0, METADATA)
    assert {tag[2] for _, tag in sent[1:3]} == {VIDEO_HEADER, AUDIO_HEADER}
    media = second.media()
    assert media[0][1] == (flv.TAG_VIDEO, 800, b"\x17\x01\0\0\0v20")
    # What the old session had sent since that keyframe comes at once, the rest paced.
    # (up to the first tag it had not sent, due now), the rest paced from there.
    anchor = min(t.dts_ms for t in h.source.tags if t.dts_ms > last_sent)
    burst = [tag for when, tag in media if when == resumed_at]
    assert burst == [t for t in media_tags(h.source) if 800 <= t[1] <= anchor]
    h.run_for(0.5)
    later = [(when, tag) for when, tag in second.media() if when > resumed_at]
    assert later
    for when, (_, ts, _) in later:
        assert when - resumed_at == pytest.approx((ts - anchor) / 1000, abs=1e-6)
    assert [tag for _, tag in second.media()] == [
        t for t in media_tags(h.source) if 800 <= t[1] <= later[-1][1][1]
    ]


def test_without_reconnect_a_lost_connection_exits_1() -> None:
    h = Harness(reconnect=False)
    h.pusher.start()
    session = h.ready()
    assert h.listener is not None
    h.listener.session_lost(session, "connection lost (reset)", False)
    assert h.exits == [(EXIT_DISCONNECTED, "disconnected: connection lost (reset)")]
    assert len(h.attempts) == 1


def test_a_permanent_refusal_exits_3_without_retrying() -> None:
    h = Harness()
    h.pusher.start()
    assert h.listener is not None
    h.listener.session_lost(None, "HTTP 400 Bad Request: bad name", True)
    assert h.exits == [(EXIT_REFUSED, "publish refused: HTTP 400 Bad Request: bad name")]
    h.clock.advance(60)
    assert len(h.attempts) == 1


def test_stop_ends_the_session_cleanly_then_exits_0() -> None:
    h = Harness(loop=True)
    h.pusher.start()
    session = h.ready()
    h.run_for(0.3)
    h.pusher.stop()
    count = len(session.sent)
    h.run_for(1.0)
    assert session.finish_called and len(session.sent) == count
    assert h.exits == []
    session.finished.callback(None)
    assert h.exits == [(EXIT_OK, "")]


def test_second_stop_does_not_wait_for_the_clean_end() -> None:
    h = Harness()
    h.pusher.start()
    session = h.ready()
    h.pusher.stop()
    h.pusher.stop()
    assert session.aborted
    assert h.exits == [(EXIT_OK, "")]


def test_stop_while_waiting_to_reconnect_exits_0_at_once() -> None:
    h = Harness()
    h.pusher.start()
    assert h.listener is not None
    h.listener.session_lost(None, "cannot connect", False)
    h.pusher.stop()
    assert h.exits == [(EXIT_OK, "")]
    h.clock.advance(60)
    assert len(h.attempts) == 1
