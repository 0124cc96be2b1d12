#!/usr/bin/env python3
"""Server-side Python of one RTMP publisher, in process: the clip's tags
(publish.py's clip, default 4 Mbit/s) are chunked by rtmpd's own RTMP client
and fed, one tag per read, to the server protocol through a StringTransport,
with the given recorders attached (their disk writes run inline, where rtmpd
runs them on a thread of the same process). No sockets and no kernel, so this
is the Python an ingest costs and is steadier than benchmarks/ingest.py on a
busy machine; the two agree on what changes pay. Run from the project root:

    .venv/bin/python benchmarks/ingestcost.py [--record hls,flv] [--seconds 60] [--profile]

Prints CPU-seconds (process time) per media-second.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "unit"))

import publish  # noqa: E402

from rtmpd.services.recorders import make_recorders  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", default="none", help="recorders, as twistd rtmpd --record (default none)")
    ap.add_argument("--bitrate", default="4M", help="clip bitrate (default 4M)")
    ap.add_argument("--seconds", type=float, default=60, help="media seconds to feed (default 60)")
    ap.add_argument("--profile", action="store_true", help="cProfile the feed and print the top functions")
    a = ap.parse_args()
    from test_protocols import Peer, make_factory

    s = a.bitrate.upper()
    bps = int(float(s[:-1]) * 1_000_000) if s.endswith("M") else int(float(s[:-1]) * 1000)
    clip, _ = publish.make_clip(bps)
    tags = publish.parse_flv(open(clip, "rb").read())
    meta = next((t for t in tags if t.type == 18), None)
    heads = [t for t in tags if t.is_seq_header]
    media = [t for t in tags if t.is_media]
    loop_ms = publish.clip_duration_ms(media)

    factory, registry, clock = make_factory()
    root = tempfile.mkdtemp(prefix="ingestcost-")
    services = make_recorders(registry, clock, root=root, formats=a.record, fragment_ms=2000, window=6)
    for svc in services:
        svc.startService()
    pub = Peer(factory)
    sid = pub.open_stream()
    pub.client.publish(sid, "bench")
    pub.pump()
    if meta:
        pub.client.send_data(sid, meta.body) if hasattr(pub.client, "send_data") else None
    for t in heads:
        pub.client.send_media(sid, t.type, 0, t.body)
    pub.pump()

    # The bytes of every tag, chunked as the client sends them, made before timing.
    reads: list[tuple[int, bytes]] = []
    base = media[0].ts
    loop = 0
    while not reads or reads[-1][0] < a.seconds * 1000:
        for t in media:
            ts = t.ts - base + loop * loop_ms
            pub.client.send_media(sid, t.type, ts, t.body)
            reads.append((ts, pub.client.data_to_send()))
        loop += 1
    server = pub.server
    transport = pub.transport
    prof = cProfile.Profile() if a.profile else None
    spent = 0.0
    if prof:
        prof.enable()
    for ts, data in reads:
        clock.advance(max(0.0, ts / 1000 - clock.seconds()))
        t0 = time.process_time()
        server.dataReceived(data)
        spent += time.process_time() - t0
        transport.clear()
    if prof:
        prof.disable()
    media_s = reads[-1][0] / 1000
    print(f"--record {a.record}: {spent / media_s:.5f} CPU-s per media-second "
          f"({len(reads)} tags, {media_s:.0f} media-s, {spent * 1e6 / len(reads):.0f} us per tag)")
    for svc in reversed(services):
        svc.stopService()
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
