"""Shutdown order: publishers are stopped before the recorders finalise, so
every frame a publisher got in is in the recordings (rtmpd.services.shutdown).

The real service tree of ``twistd rtmpd`` (``makeService``) on a
``MemoryReactorClock``: no threads there, so disk jobs run inline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from rtmpd.admission import Action, AdmissionRequest, Publisher
from rtmpd.interfaces import IMediaSource
from rtmpd.media import FrameKind
from rtmpd.services.recorder import MARKER_NAME
from rtmpd.services.shutdown import SHUTDOWN_REASON
from rtmpd.tap.rtmpd import Options, makeService
from tests.unit.test_recorder import clip_frames, flv_tags


@implementer(IMediaSource)
class ToldSource:
    """A publisher that notes what it was told, and when (``events``)."""

    description = "test publisher"

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.reasons: list[str] = []

    def stop_publishing(self, reason: str) -> None:
        self.reasons.append(reason)
        self.events.append("publisher told")


def request(name: str) -> AdmissionRequest:
    return AdmissionRequest(
        action=Action.PUBLISH, app="live", stream=name, query="", peer_host="127.0.0.1",
        peer_port=5000, protocol="rtmp", client_id=0,
    )


def started_tree(tmp_path: Path) -> tuple[Any, MemoryReactorClock]:
    options = Options()
    options.parseOptions(["--root", str(tmp_path), "--record", "flv"])
    reactor = MemoryReactorClock()
    top = makeService(options, reactor=reactor)
    top.startService()
    return top, reactor


def publish(top: Any, name: str, source: ToldSource) -> Publisher:
    results: list[Publisher] = []
    top.admission.publish(request(name), source).addCallback(results.append)
    [publisher] = results
    return publisher


def test_every_frame_that_arrived_before_sigterm_is_recorded_and_the_publisher_told(
    tmp_path: Path,
) -> None:
    top, _ = started_tree(tmp_path)
    events: list[str] = []
    source = ToldSource(events)
    publisher = publish(top, "cam", source)
    frames = clip_frames(5)
    for frame in frames:
        publisher.push(frame)
    recording = top.getServiceNamed("record-flv").recordings[publisher.stream]
    recording.done.addCallback(
        lambda _: events.append(f"recording finalised, publisher ended: {publisher.ended}"))

    stopped = top.stopService()

    assert stopped.called
    assert source.reasons == [SHUTDOWN_REASON]
    # Ended (no frame taken after this) before the recording finalised.
    assert events == ["recording finalised, publisher ended: True", "publisher told"]
    assert not top.registry.streams
    path = tmp_path / "flv" / "live" / "cam" / "index.flv"
    recorded = [tag for _, tag in flv_tags(path) if tag.tag_type != 18]
    sent = [f for f in frames if f.kind is not FrameKind.SCRIPT]
    assert len(recorded) == len(sent)
    assert recorded[-1].body == sent[-1].payload
    assert not list(tmp_path.rglob(MARKER_NAME))


def test_frames_pushed_after_the_stop_reach_neither_stream_nor_recording(
    tmp_path: Path,
) -> None:
    top, _ = started_tree(tmp_path)
    source = ToldSource([])
    publisher = publish(top, "cam", source)
    frames = clip_frames(2)
    for frame in frames:
        publisher.push(frame)
    stream = publisher.stream
    top.stopService()
    before = stream.frames_in
    publisher.push(frames[-1])  # still on its way when the connection closed
    assert stream.frames_in == before


def test_a_publish_admitted_during_shutdown_is_stopped_on_the_next_turn(
    tmp_path: Path,
) -> None:
    top, reactor = started_tree(tmp_path)
    top.stopService()
    source = ToldSource([])
    publisher = publish(top, "late", source)
    assert source.reasons == []  # its adapter takes the answer first
    reactor.advance(0)
    assert source.reasons == [SHUTDOWN_REASON]
    assert publisher.ended
    assert not top.registry.streams


def test_a_publish_before_shutdown_is_left_alone(tmp_path: Path) -> None:
    top, reactor = started_tree(tmp_path)
    source = ToldSource([])
    publisher = publish(top, "cam", source)
    reactor.advance(1)
    assert source.reasons == [] and not publisher.ended
    top.stopService()
