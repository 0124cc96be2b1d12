"""Recordings that run for many fragments keep no per-fragment state in
memory: every recorder at once (HLS, FLV, fMP4 mixed and separate, with
retention), a stream cut into hundreds of fragments, and the Python memory
after them is what it was before (the playlist window, the fragment being
built and the FLV batch are bounded; the merge's index of fragments is
built from the disk at the end, not kept while recording).

The in-process form of the recorder side of the soak's memory check
(benchmarks/soak.py): a list of fragments kept for the stream's lifetime
shows here in seconds instead of as an RSS slope after an hour.
"""

from __future__ import annotations

from pathlib import Path

from twisted.application import service
from twisted.internet.task import Clock

from rtmpd.codec import flv
from rtmpd.media import Frame
from rtmpd.registry import Stream, StreamConfig, StreamRegistry
from rtmpd.services.recorders import make_recorders
from tests.unit.test_churn_memory import python_growth
from tests.unit.test_registry import FakeSource

DATA = Path(__file__).parent.parent / "data"

#: Bytes a fragment may leave allocated, on average. A clean run measures
#: about 3 (a deque's or dict's next block, not per fragment); a kept entry
#: per fragment (a file name, a size, a sample table) is 50 bytes or more.
MAX_BYTES_PER_FRAGMENT = 32


def tiny_tags() -> list[flv.TagReceived]:
    """tests/data/tiny.flv: H.264 + AAC, one GOP, audio to 479 ms."""
    reader = flv.FlvReader()
    reader.receive_data((DATA / "tiny.flv").read_bytes())
    reader.receive_data(b"")
    tags = []
    while True:
        event = reader.next_event()
        if isinstance(event, flv.TagReceived):
            tags.append(event)
        elif not isinstance(event, flv.FlvHeaderReceived):
            return tags


class Looped:
    """Publishes tiny.flv over and over: one fragment per loop.

    A loop lasts 500 ms (its last audio frame is at 479 ms), so a loop ends
    at the same point of the FLV recorder's 1 s batches every second loop."""

    LOOP_MS = 500

    def __init__(self, stream: Stream, clock: Clock) -> None:
        tags = tiny_tags()
        headers = [t for t in tags if t.tag_type in (8, 9) and t.body[1] == 0]
        # Not its end-of-sequence, which would end the recordings' video.
        self.media = [t for t in tags if t.tag_type in (8, 9) and t.body[1] == 1]
        self.stream, self.clock = stream, clock
        for tag in headers:
            stream.push(Frame.from_tag(tag.tag_type, 0, tag.body))
        self.loops = 0

    def fragments(self, n: int) -> None:
        for _ in range(n):
            base = self.loops * self.LOOP_MS
            for tag in self.media:
                self.stream.push(Frame.from_tag(tag.tag_type, base + tag.timestamp_ms, tag.body))
            self.clock.advance(self.LOOP_MS / 1000)
            self.loops += 1


def test_many_fragments_leave_no_per_fragment_state(tmp_path: Path) -> None:
    clock = Clock()
    registry = StreamRegistry(clock, StreamConfig())
    parent = service.MultiService()
    for recorder in make_recorders(
        registry,
        clock,
        root=str(tmp_path),
        formats="hls,flv,fmp4,fmp4-separate",
        fragment_ms=100,
        window=6,
    ):
        recorder.setServiceParent(parent)
    parent.startService()
    looped = Looped(registry.publish("live", "long", FakeSource()), clock)
    fragments = 300
    grown, top = python_growth(
        lambda: looped.fragments(50),  # warm up: the HLS window full, first-use caches
        lambda: looped.fragments(fragments),
    )
    merged = tmp_path / "mp4" / "live" / "long" / "output_merge"
    assert len(list(merged.glob("*.m4s"))) >= fragments  # one fragment per loop
    assert grown / fragments < MAX_BYTES_PER_FRAGMENT, (
        f"{grown / fragments:.0f} B per fragment ({top})"
    )
    parent.stopService()
