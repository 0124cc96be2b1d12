"""A gateway's upstream (rtmpd.services.upstream) driven through what a pull
reports, on a Clock: the first viewer waits for the stream to go live here,
the answers before a body become refusals, reconnects keep the viewers' FLV
one stream (the same publish: nothing twice; a new one: rebased forward),
headers are passed on only when they changed, and the linger closes a
stream nobody watches. The HTTP side (rtmpd.client.pull) is covered end to
end in tests/e2e/test_gateway.py; here the Agent's connections go nowhere."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.client import Agent

from rtmpd.admission import Action, Admission, AdmissionRefused, AdmissionRequest, Refusal
from rtmpd.client.pull import shown_url, stream_url
from rtmpd.fanout import ViewerOutput
from rtmpd.interfaces import IStreamOrigin, IUpstreamSource
from rtmpd.media import Frame, FrameKind
from rtmpd.protocols.flvhttp import CHUNKED
from rtmpd.registry import Stream, StreamConfig, StreamRegistry
from rtmpd.services.upstream import LINGER_S, PulledStream, Upstream

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f"
OTHER_AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x4d\x00\x1f\xff\xe1\x00\x04\x67\x4d\x00\x1f"
AAC_HEADER = b"\xaf\x00\x12\x10"
KEY = b"\x17\x01\x00\x00\x00" + b"k" * 50
INTER = b"\x27\x01\x00\x00\x00" + b"p" * 20
AUDIO = b"\xaf\x01" + b"a" * 10


def video(ts: int, key: bool = False) -> Frame:
    return Frame.from_tag(FrameKind.VIDEO, ts, KEY if key else INTER)


def audio(ts: int) -> Frame:
    return Frame.from_tag(FrameKind.AUDIO, ts, AUDIO)


def headers(ts: int, avc: bytes = AVC_HEADER) -> list[Frame]:
    return [Frame.from_tag(FrameKind.VIDEO, ts, avc), Frame.from_tag(FrameKind.AUDIO, ts,
                                                                      AAC_HEADER)]


class Viewer(ViewerOutput):
    def __init__(self, stream: Stream) -> None:
        super().__init__(StringTransport(), "test viewer", stream=stream, output=CHUNKED,
                         protocol="http-flv")
        self.ended: list[str] = []

    def stream_ended(self, reason: str) -> None:
        self.ended.append(reason)
        self.finish(f"stream ended: {reason}")

    def drop(self, reason: str) -> None:
        self.finish(f"dropped: {reason}", dropped=True)


class Sink:
    """Every frame the stream passes on, as its viewers get them."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def on_frame(self, frame: Frame) -> None:
        self.frames.append(frame)

    def on_stream_end(self, reason: str) -> None:
        pass


def make(**kwargs: Any) -> tuple[Upstream, Admission, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    registry = StreamRegistry(reactor, StreamConfig(merge_ms=0))
    admission = Admission(registry, publisher_timeout_s=30)
    upstream = Upstream(admission, Agent(reactor), "http://origin:8501?key=k", reactor,
                        **kwargs)
    return upstream, admission, reactor


def play_request(name: str = "cam", client_id: int = 0) -> AdmissionRequest:
    return AdmissionRequest(action=Action.PLAY, app="live", stream=name, query="",
                            peer_host="127.0.0.1", peer_port=5000, protocol="http-flv",
                            client_id=client_id)


def play(admission: Admission, name: str = "cam") -> tuple[defer.Deferred[Any], list[Viewer]]:
    viewers: list[Viewer] = []

    def start(stream: Stream) -> Viewer:
        viewers.append(Viewer(stream))
        return viewers[-1]

    return admission.play(play_request(name), start), viewers


def outcome(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def go_live(upstream: Upstream, admission: Admission, stream_id: str | None = "a-1"
            ) -> tuple[PulledStream, Viewer, Sink]:
    d, viewers = play(admission)
    pulled = upstream.pulls[("live", "cam")]
    pulled.pull_answered(stream_id)
    for frame in headers(1000):
        pulled.pull_frame(frame)
    assert not viewers, "no viewer before the first media frame"
    pulled.pull_frame(video(1000, key=True))
    assert outcome(d) is viewers[0]
    sink = Sink()
    assert pulled.stream is not None
    pulled.stream.add_sink(sink)  # type: ignore[arg-type]
    return pulled, viewers[0], sink


def test_it_is_admissions_origin_and_its_streams_are_upstream_sources() -> None:
    upstream, admission, _ = make()
    assert admission.origin is upstream and IStreamOrigin.providedBy(upstream)
    pulled, _, _ = go_live(upstream, admission)
    assert IUpstreamSource.providedBy(pulled)
    assert pulled.url == b"http://origin:8501/live/cam.flv?key=k"
    # The key in the query never shows.
    assert pulled.status()["url"] == "http://origin:8501/live/cam.flv?..."
    assert pulled.status()["state"] == "streaming"


def test_the_first_viewers_wait_for_one_pull_and_all_start_together() -> None:
    upstream, admission, reactor = make()
    first, first_viewers = play(admission)
    second, second_viewers = play(admission)
    assert len(upstream.pulls) == 1 and len(reactor.tcpClients) == 1
    pulled = upstream.pulls[("live", "cam")]
    pulled.pull_answered("a-1")
    for frame in headers(0):
        pulled.pull_frame(frame)
    pulled.pull_frame(video(0, key=True))
    assert outcome(first) is first_viewers[0] and outcome(second) is second_viewers[0]
    stream = pulled.stream
    assert stream is not None and len(stream.viewers) == 2
    assert stream.video_header is not None and stream.audio_header is not None
    # A later viewer joins the live stream at once, with no new pull.
    third, third_viewers = play(admission)
    assert outcome(third) is third_viewers[0] and len(reactor.tcpClients) == 1


@pytest.mark.parametrize(
    ("status", "refusal"),
    [(404, Refusal.NOT_FOUND), (403, Refusal.FORBIDDEN), (503, Refusal.UNAVAILABLE),
     (None, Refusal.UNAVAILABLE)],
)
def test_an_upstream_that_says_no_refuses_the_waiting_viewers(
    status: int | None, refusal: Refusal
) -> None:
    upstream, admission, _ = make()
    d, viewers = play(admission)
    upstream.pulls[("live", "cam")].pull_refused(status, "it said no")
    error = outcome(d).value
    assert isinstance(error, AdmissionRefused) and error.refusal is refusal
    assert "it said no" in error.message and not viewers and not upstream.pulls
    assert admission.registry.streams == {}


def test_no_media_within_the_open_timeout_is_unavailable() -> None:
    upstream, admission, reactor = make(open_timeout_s=10)
    d, _ = play(admission)
    upstream.pulls[("live", "cam")].pull_answered("a-1")
    reactor.advance(10)
    error = outcome(d).value
    assert isinstance(error, AdmissionRefused) and error.refusal is Refusal.UNAVAILABLE
    assert "no media from the upstream within 10 s" in error.message
    assert not upstream.pulls


def test_reconnecting_to_the_same_publish_skips_what_the_viewers_have() -> None:
    upstream, admission, reactor = make()
    pulled, viewer, sink = go_live(upstream, admission)
    for ts in (1040, 1080):
        pulled.pull_frame(audio(ts - 10))
        pulled.pull_frame(video(ts))
    pulled.pull_ended("the upstream connection broke")
    assert pulled.state == "reconnecting" and not viewer.ended
    reactor.advance(0.5)
    assert len(reactor.tcpClients) == 2  # the second connection
    pulled.pull_answered("a-1")
    # The upstream replays its GOP (keyframe at 1000) then goes on.
    for frame in (*headers(1000), video(1000, key=True), audio(1030), video(1040), audio(1070),
                  video(1080), audio(1110), video(1120)):
        pulled.pull_frame(frame)
    assert pulled.state == "streaming"
    after = [(f.kind, f.timestamp_ms) for f in sink.frames]
    assert after == [
        (FrameKind.AUDIO, 1030), (FrameKind.VIDEO, 1040), (FrameKind.AUDIO, 1070),
        (FrameKind.VIDEO, 1080), (FrameKind.AUDIO, 1110), (FrameKind.VIDEO, 1120),
    ]


def test_a_new_publish_after_a_reconnect_is_rebased_after_the_last_frame() -> None:
    upstream, admission, reactor = make()
    pulled, viewer, sink = go_live(upstream, admission)
    for ts in (1040, 1080, 1120):
        pulled.pull_frame(video(ts))
    pulled.pull_ended("the upstream ended the stream")
    reactor.advance(0.5)
    pulled.pull_answered("a-2")
    before = len(sink.frames)
    metadata = Frame.from_tag(FrameKind.SCRIPT, 0, b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00")
    # The new encoder starts at 0, with new video headers; frames before its
    # first keyframe are of no use.
    for frame in (metadata, *headers(0, OTHER_AVC_HEADER), video(0), video(40, key=True),
                  video(80)):
        pulled.pull_frame(frame)
    out = [(f.kind, f.sequence_header, f.timestamp_ms) for f in sink.frames[before:]]
    # Changed: metadata (new) and the video header; the audio header is the
    # same and not sent again. All at the keyframe's time, one frame after
    # the last one sent (1120 + 40).
    assert out == [
        (FrameKind.SCRIPT, False, 1160), (FrameKind.VIDEO, True, 1160),
        (FrameKind.VIDEO, False, 1160), (FrameKind.VIDEO, False, 1200),
    ]
    stream = pulled.stream
    assert stream is not None and stream.video_header is not None
    assert stream.video_header.payload == OTHER_AVC_HEADER
    assert stream.gop.frames[0].keyframe and not viewer.ended


def test_an_upstream_without_stream_ids_is_treated_as_a_new_publish() -> None:
    upstream, admission, reactor = make()
    pulled, _, sink = go_live(upstream, admission, stream_id=None)
    pulled.pull_frame(video(1040))
    pulled.pull_ended("the upstream ended the stream")
    reactor.advance(0.5)
    pulled.pull_answered(None)
    for frame in (*headers(1000), video(1000, key=True)):
        pulled.pull_frame(frame)
    # Rebased one frame on, the unchanged headers not sent again.
    assert [f.timestamp_ms for f in sink.frames] == [1040, 1080]


def test_reconnects_back_off_and_no_media_for_the_upstream_timeout_ends_the_stream() -> None:
    upstream, admission, reactor = make()
    pulled, viewer, _ = go_live(upstream, admission)
    delays = []
    for _ in range(6):
        pulled.pull_refused(404, "404 Not Found")
        call = [c for c in reactor.getDelayedCalls() if c.func == pulled._reconnect]
        delays.append(round(call[0].getTime() - reactor.seconds(), 3))
        reactor.advance(delays[-1])
    assert delays == [0.5, 1, 2, 4, 8, 10]
    assert viewer.ended == []
    reactor.advance(30)
    assert viewer.ended and "no media" in viewer.ended[0]
    assert not upstream.pulls and pulled.state == "stopped"
    assert admission.registry.streams == {}


def test_the_last_viewer_leaving_closes_the_pull_after_the_linger() -> None:
    upstream, admission, reactor = make(linger_s=LINGER_S)
    pulled, viewer, _ = go_live(upstream, admission)
    viewer.finish("closed by the client")
    reactor.advance(LINGER_S - 1)
    # A viewer coming back within the linger keeps it.
    d, viewers = play(admission)
    assert outcome(d) is viewers[0]
    reactor.advance(LINGER_S)
    assert pulled.state == "streaming"
    viewers[0].finish("closed by the client")
    reactor.advance(LINGER_S)
    assert pulled.state == "stopped" and not upstream.pulls
    assert admission.registry.streams == {}


def test_urls_keep_the_upstreams_prefix_and_query() -> None:
    assert stream_url("http://o:1/edge/?key=K", "live", "cam") == b"http://o:1/edge/live/cam.flv?key=K"
    assert stream_url("https://o", "a", "b") == b"https://o/a/b.flv"
    assert shown_url("http://o/a.flv?key=secret") == "http://o/a.flv?..."


def test_stats_show_every_pulled_stream() -> None:
    upstream, admission, _ = make()
    go_live(upstream, admission)
    (row,) = upstream.stream_stats()
    assert row["stream"] == "live/cam" and row["viewers"] == 1 and row["state"] == "streaming"
    assert row["gop_frames"] == 1 and row["connects"] == 1
    names = {m.name for m in upstream.collect()}
    assert names == {"rtmpd_upstream_streams", "rtmpd_upstream_connects",
                     "rtmpd_upstream_silence_seconds"}
