"""Viewer churn leaves nothing behind: many joins and leaves on RTMP,
HTTP-FLV and WS-FLV, some of the viewers too slow and dropped by the server,
with /metrics and the /api detail read meanwhile, end with no per-client state
left and no Python memory that grows with the number of joins.

This is the in-process form of the soak's memory check (benchmarks/soak.py):
a structure keyed by client, viewer or peer that is never emptied shows here
in seconds instead of as an RSS slope after an hour.
"""

from __future__ import annotations

import base64
import gc
import os
import tracemalloc
from typing import Any

import pytest
import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from rtmpd.admission import Admission
from rtmpd.protocols.flvhttp import FlvHttpResource, FlvSite
from rtmpd.protocols.flvws import make_ws_resource
from rtmpd.protocols.rtmp import RtmpServerFactory
from rtmpd.registry import StreamConfig, StreamRegistry
from rtmpd.services.stats import Metrics, StatsSampler, stream_detail
from tests.unit.test_protocols import AVC_HEADER, INTER, KEYFRAME, Peer

#: Bytes of Python memory a join and leave may leave allocated, on average.
#: A clean run measures about 15, nearly all of it a bounded cache still
#: filling (CPython's method cache keeps up to 4 096 attribute-name strings,
#: here the "render_GET" Twisted builds per request). A forgotten per-client
#: record costs more: an admission ``Client`` kept alive holds its whole
#: connection (~4 000 B a join measured), a peer left in a Counter ~100 B.
MAX_BYTES_PER_JOIN = 48


class Churn:
    """One published stream and viewers that come and go on every protocol."""

    def __init__(self) -> None:
        self.clock = Clock()
        # A small viewer queue, so paused viewers are dropped within a cycle.
        self.registry = StreamRegistry(self.clock, StreamConfig(viewer_queue_bytes=20_000))
        self.admission = Admission(self.registry, publisher_timeout_s=10)
        self.metrics = Metrics(self.registry)
        self.metrics.attach(self.admission)
        self.sampler = StatsSampler(self.registry, self.clock)
        self.factory = RtmpServerFactory(self.admission, clock=self.clock, handshake_timeout=5)
        self.site = FlvSite(
            FlvHttpResource(self.admission, websocket=make_ws_resource(self.admission, self.clock)),
            reactor=self.clock,
        )
        self.publisher = Peer(self.factory)
        self.sid = self.publisher.open_stream()
        self.publisher.client.publish(self.sid, "churn")
        self.publisher.pump()
        self.publisher.client.send_media(self.sid, 9, 0, AVC_HEADER)
        self.ts = 0
        self.port = 1000
        self.dropped = 0
        self.frames(30)
        self.stream = self.registry.get("live", "churn")

    def frames(self, n: int) -> None:
        for _ in range(n):
            body = KEYFRAME if self.ts % 1000 == 0 else INTER
            self.publisher.client.send_media(self.sid, 9, self.ts, body)
            self.ts += 40
        self.publisher.pump()

    def web_viewer(self, *, ws: bool) -> StringTransport:
        self.port = self.port % 60000 + 1
        addr = IPv4Address("TCP", "127.0.0.1", self.port)
        if ws:
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                "GET /live/churn.flv HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        else:
            request = b"GET /live/churn.flv HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        proto = self.site.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        transport.protocol = proto  # Autobahn's resource looks for it
        proto.dataReceived(request)
        transport.clear()
        return transport

    def rtmp_viewer(self) -> StringTransport:
        viewer = Peer(self.factory)
        vsid = viewer.open_stream()
        viewer.client.play(vsid, "churn")
        viewer.pump()
        viewer.transport.clear()
        viewer.transport.protocol = viewer.server
        return viewer.transport

    def cycle(self, per_protocol: int) -> None:
        """Viewers join on each protocol, one in seven stops reading (and is
        dropped), the API and metrics are read, then everyone leaves."""
        transports = [
            *(self.web_viewer(ws=False) for _ in range(per_protocol)),
            *(self.web_viewer(ws=True) for _ in range(per_protocol)),
            *(self.rtmp_viewer() for _ in range(per_protocol)),
        ]
        slow = transports[::7]
        for transport in slow:
            if transport.producer is not None:
                transport.producer.pauseProducing()
        for _ in range(8):
            self.frames(25)
            self.clock.advance(1.0)
            for transport in transports:
                transport.clear()  # a socket keeps nothing it sent
        self.dropped += sum(1 for t in slow if t.disconnecting)
        self.metrics.render()
        stream_detail(self.stream, self.admission, self.sampler)
        for transport in transports:
            protocol: Any = transport.protocol
            protocol.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(20)  # past Autobahn's handshake timers


@pytest.fixture
def churn(monkeypatch: pytest.MonkeyPatch) -> Churn:
    churn = Churn()
    # Autobahn's timers run on txaio's global loop: make it the test's clock.
    monkeypatch.setattr(txaio.config, "loop", churn.clock)
    return churn


def test_joins_and_leaves_leave_no_per_client_state(churn: Churn) -> None:
    publisher_ids = set(churn.admission.clients)
    for _ in range(5):
        churn.cycle(10)
    assert churn.dropped > 0  # the slow viewers were dropped by the server
    assert set(churn.admission.clients) == publisher_ids
    assert dict(churn.admission._per_ip) == {"127.0.0.1": len(publisher_ids)}
    assert not churn.stream.viewers
    assert all(len(group) == 0 for group in churn.stream.groups.values())
    assert not churn.registry.viewer_log._left_out  # summarised, not kept


def test_joins_and_leaves_do_not_grow_python_memory(
    churn: Churn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Log events go nowhere: before logging begins (as it never does in
    # tests) Twisted keeps them for the observer to come.
    monkeypatch.setattr(globalLogPublisher, "_observers", [])
    cycles, per_protocol = 10, 10

    def warm_up() -> None:  # caches, first-use imports, interned names
        for _ in range(5):
            churn.cycle(10)

    def work() -> None:
        for _ in range(cycles):
            churn.cycle(per_protocol)

    grown, top = python_growth(warm_up, work)
    joins = cycles * per_protocol * 3
    assert grown / joins < MAX_BYTES_PER_JOIN, f"{grown / joins:.0f} B per join ({top})"


def python_growth(warm_up: Any, work: Any) -> tuple[int, str]:
    """Bytes Python holds after ``work()`` that it did not after
    ``warm_up()`` (collections run before each look), and the five lines
    that grew most. Traced from before the warm-up, so the working set it
    leaves (buffers replaced as the work goes on) is traced when freed too."""
    tracemalloc.start(1)
    try:
        warm_up()
        gc.collect()
        before = tracemalloc.take_snapshot()
        work()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    top = "; ".join(f"{s.traceback[0]}: {s.size_diff} B" for s in stats[:5])
    return sum(s.size_diff for s in stats), top
