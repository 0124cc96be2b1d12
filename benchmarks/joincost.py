#!/usr/bin/env python3
"""Server-side CPU of one viewer join, in process: the protocol is fed
through Twisted's StringTransport (no sockets, no kernel), so this is the
Python a join costs: for RTMP the handshake, connect, createStream, play and
the GOP burst; for HTTP-FLV and WS-FLV the request (and upgrade) and the
burst. Run from the project root with the venv:

    .venv/bin/python benchmarks/joincost.py rtmp|rtmp-loadgen|http|ws [N] [--profile] [--memory]
        [--gc paced|default]

``--gc`` says how long Python's garbage collections held the N joins up
(what a join storm's viewers wait behind): ``default`` is CPython's own
pacing, ``paced`` is rtmpd's (``rtmpd.gcpacing``: no automatic full
collection). ``--memory`` says what the viewers that joined still hold (tracemalloc,
after a collection), per viewer and by the line that allocated it: the
Python part of the server's RSS per viewer (the kernel's socket buffers are
not in RSS).

Figures are noisy on a shared VM: run it a few times.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import gc
import os
import pstats
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "unit"))

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rtmpd.admission import Admission
from rtmpd.protocols.flvhttp import FlvHttpResource, FlvSite
from rtmpd.protocols.flvws import make_ws_resource
from rtmpd.registry import StreamConfig, StreamRegistry


def rtmp_published():
    """An RTMP server factory with ``live/bench`` published (a GOP of 25
    frames), and its publisher's peer."""
    from test_protocols import AVC_HEADER, INTER, KEYFRAME, Peer, make_factory

    factory, _, _ = make_factory()
    pub = Peer(factory)
    sid = pub.open_stream()
    pub.client.publish(sid, "bench")
    pub.pump()
    for ts, body in ((0, AVC_HEADER), (0, KEYFRAME), *[(40 * i, INTER) for i in range(1, 25)]):
        pub.client.send_media(sid, 9, ts, body)
    pub.pump()
    return factory, pub


def rtmp_joiner():
    from test_protocols import Peer

    factory, _pub = rtmp_published()
    spent = [0.0]

    def join():
        viewer = Peer(factory)
        real = viewer.server.dataReceived

        def timed(data: bytes) -> None:  # only the server's side counts
            t = time.perf_counter()
            real(data)
            spent[0] += time.perf_counter() - t

        viewer.server.dataReceived = timed
        vsid = viewer.open_stream()
        viewer.client.play(vsid, "bench")
        viewer.pump()
        viewer.events.clear()  # the test client's copy of the burst
        return viewer

    return join, spent


def rtmp_loadgen_joiner():
    """RTMP joins as benchmarks/loadgen.c makes them: a plain handshake
    (zero version in C1), its own connect object, then WinAck + createStream
    and SetBufferLength + play each in one read, as they arrive in a storm.
    Unlike ``rtmp`` (the test client: digest handshake, one message per
    read), the connection's set-up (buildProtocol, connectionMade) counts."""
    from rtmpd.codec import amf0
    from rtmpd.codec.rtmp.chunk import encode_message

    factory, _pub = rtmp_published()

    def message(csid: int, type_id: int, stream_id: int, payload: bytes) -> bytes:
        return encode_message(chunk_size=128, chunk_stream_id=csid, type_id=type_id,
                              stream_id=stream_id, timestamp_ms=0, payload=payload)

    connect = amf0.encode_all("connect", 1.0, {
        "app": "live", "flashVer": "LNX 9,0,124,2", "tcUrl": "rtmp://127.0.0.1:1935/live",
        "fpad": False, "capabilities": 15.0, "audioCodecs": 4071.0, "videoCodecs": 252.0,
        "videoFunction": 1.0,
    })
    reads = [
        b"\x03" + bytes(8) + os.urandom(1528),
        os.urandom(1536) + message(3, 20, 0, connect),
        message(2, 5, 0, (2_500_000).to_bytes(4, "big"))
        + message(3, 20, 0, amf0.encode_all("createStream", 2.0, None)),
        message(2, 4, 0, b"\x00\x03\x00\x00\x00\x01\x00\x00\x0b\xb8")
        + message(8, 20, 1, amf0.encode_all("play", 3.0, None, "bench", -2000.0)),
    ]
    spent = [0.0]

    def join():
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        t = time.perf_counter()
        proto = factory.buildProtocol(None)
        proto.makeConnection(transport)
        for data in reads:
            proto.dataReceived(data)
        spent[0] += time.perf_counter() - t
        transport.clear()
        return proto, transport

    return join, spent


def web_joiner(ws: bool):
    from test_registry import FakeSource, video

    clock = Clock()
    registry = StreamRegistry(clock, StreamConfig(merge_ms=0))
    admission = Admission(registry)
    stream = registry.publish("live", "bench", FakeSource())
    stream.push(video(0, key=True, size=30000))
    for i in range(1, 25):
        stream.push(video(40 * i, size=3000))
    site = FlvSite(
        FlvHttpResource(admission, websocket=make_ws_resource(admission, clock)), reactor=clock
    )
    spent = [0.0]

    def join():
        if ws:
            key = base64.b64encode(os.urandom(16)).decode()
            req = (
                "GET /live/bench.flv HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        else:
            req = b"GET /live/bench.flv HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        t = time.perf_counter()
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
        proto.makeConnection(transport)
        transport.protocol = proto  # Autobahn's resource looks for it
        proto.dataReceived(req)
        spent[0] += time.perf_counter() - t
        transport.clear()  # a socket keeps nothing of what was sent
        # Keep what the connection keeps: after an upgrade the WebSocket
        # protocol, not the HTTP channel it came on.
        return transport.protocol, transport

    return join, spent


def collections_during(join, n: int, *, paced: bool) -> list:
    """Join ``n`` viewers with the collector on; print what it cost, by generation."""
    from rtmpd.gcpacing import NEVER

    old = gc.get_threshold()
    if paced:
        gc.set_threshold(old[0], old[1], NEVER)
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def timer(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(timer)
    try:
        t = time.perf_counter()
        joined = [join() for _ in range(n)]
        wall = time.perf_counter() - t
    finally:
        gc.callbacks.remove(timer)
        gc.set_threshold(*old)
    print(f"{n} joins in {wall:.2f} s with the {'paced' if paced else 'default'} collector:")
    for generation, times in pauses.items():
        if times:
            print(f"  generation {generation}: {len(times)} collections, {sum(times) * 1000:.0f} ms "
                  f"in all, longest {max(times) * 1000:.1f} ms")
    return joined


def memory(join, keep: list, n: int) -> None:
    """Bytes per joined viewer still allocated after ``n`` more joins, by line."""
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    keep += [join() for _ in range(n)]
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # StringTransport keeps what was written to it; a socket does not.
    stats = [s for s in after.compare_to(before, "lineno")
             if not s.traceback[0].filename.endswith("internet/testing.py")]
    total = sum(s.size_diff for s in stats)
    print(f"memory: {total / n:.0f} bytes per viewer still held ({n} joins; the fake "
          "transport's own not counted); by line:")
    for s in stats[:30]:
        if s.size_diff / n < 16:
            break
        frame = s.traceback[0]
        where = "/".join(frame.filename.split("/")[-2:])
        print(f"  {s.size_diff / n:7.0f} B  {s.count_diff / n:5.1f} blocks  {where}:{frame.lineno}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("proto", choices=["rtmp", "rtmp-loadgen", "http", "ws"])
    ap.add_argument("n", nargs="?", type=int, default=1000)
    ap.add_argument("--profile", action="store_true", help="cProfile 300 more joins")
    ap.add_argument("--memory", action="store_true", help="what each joined viewer still holds (tracemalloc)")
    ap.add_argument("--gc", choices=["paced", "default"], help="time the garbage collections during the joins")
    a = ap.parse_args()
    if a.proto == "rtmp":
        join, spent = rtmp_joiner()
    elif a.proto == "rtmp-loadgen":
        join, spent = rtmp_loadgen_joiner()
    else:
        join, spent = web_joiner(a.proto == "ws")
    keep = [join() for _ in range(100)]  # warm up
    spent[0] = 0.0
    gc.collect()
    if a.gc:
        keep += collections_during(join, a.n, paced=a.gc == "paced")
    else:
        gc.disable()
        keep += [join() for _ in range(a.n)]
        gc.enable()
    print(f"{a.proto}: {spent[0] / a.n * 1e6:.0f} us of server-side Python per join ({a.n} joins)")
    if a.memory:
        memory(join, keep, a.n)
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        keep += [join() for _ in range(300)]
        prof.disable()
        pstats.Stats(prof).sort_stats("cumtime").print_stats(30)
    del keep


if __name__ == "__main__":
    main()
