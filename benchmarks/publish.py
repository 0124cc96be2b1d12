#!/usr/bin/env python3
"""Publish a fixed test clip in real time, in a loop, with a send-time stamp in every video frame.

The clip is made once by ffmpeg from lavfi sources (testsrc2 + sine, H.264 with a 1 s GOP at
25 fps, AAC) and cached under benchmarks/out/ with a manifest (clip_<rate>.json) that gives the
stream's media bitrate (audio + video FLV tag bodies, SEI included) for the load generator's
"healthy" test.

Every coded video frame gets an H.264 SEI NAL unit (user_data_unregistered, UUID
"rtmpd-bench-ts1!") at the start of its AVCC payload carrying the wall-clock (CLOCK_REALTIME)
send time in microseconds as 16 lowercase hex digits (no zero bytes, so no emulation
prevention is needed). Frames are paced by DTS against a monotonic clock and stamped at the
moment they are sent, so loadgen's latency = arrival time - stamp is end to end.

Targets (--url):
  rtmp://host:port/app/stream    minimal RTMP publisher (handshake, connect, createStream, publish)
  http://host:port/app/stream    HTTP POST of FLV, chunked transfer encoding
  ws://host:port/app/stream      WebSocket, one binary message per FLV tag

Needs only the standard library (and ffmpeg to make the clip once).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
SEI_UUID = b"rtmpd-bench-ts1!"
assert len(SEI_UUID) == 16
FPS = 25
CLIP_SECONDS = 10
AUDIO_BPS = 64_000
SEI_BYTES = 4 + 3 + 16 + 16 + 1  # length prefix, NAL header + payload type + size, uuid, hex stamp, trailing bits


# --------------------------------------------------------------------------- clip


@dataclass
class Tag:
    type: int  # 8 audio, 9 video, 18 script
    ts: int  # ms (DTS)
    body: bytes

    @property
    def is_seq_header(self) -> bool:
        if self.type == 9:
            return (self.body[0] & 0x0F) == 7 and self.body[1] == 0
        if self.type == 8:
            return (self.body[0] >> 4) == 10 and self.body[1] == 0
        return False

    @property
    def is_end_of_sequence(self) -> bool:
        return self.type == 9 and (self.body[0] & 0x0F) == 7 and self.body[1] == 2

    @property
    def is_media(self) -> bool:
        return self.type in (8, 9) and not self.is_seq_header and not self.is_end_of_sequence

    @property
    def is_coded_avc(self) -> bool:
        return self.type == 9 and (self.body[0] & 0x0F) == 7 and self.body[1] == 1

    @property
    def is_keyframe(self) -> bool:
        return self.type == 9 and (self.body[0] >> 4) == 1


def parse_flv(data: bytes) -> list[Tag]:
    if data[:3] != b"FLV":
        raise ValueError("not an FLV file")
    pos = struct.unpack(">I", data[5:9])[0] + 4
    tags = []
    while pos + 11 <= len(data):
        t = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        body = data[pos + 11 : pos + 11 + size]
        if len(body) < size:
            break
        tags.append(Tag(t, ts, body))
        pos += 11 + size + 4
    return tags


def rate_name(bps: int) -> str:
    return f"{bps // 1_000_000}M" if bps % 1_000_000 == 0 else f"{bps // 1000}k"


def make_clip(bitrate: int, ffmpeg: str = "ffmpeg", force: bool = False) -> tuple[str, dict]:
    """Make (once) the clip for this total bitrate; return its path and manifest."""
    os.makedirs(OUT, exist_ok=True)
    name = rate_name(bitrate)
    path = os.path.join(OUT, f"clip_{name}.flv")
    mpath = os.path.join(OUT, f"clip_{name}.json")
    if force or not os.path.exists(path) or not os.path.exists(mpath):
        if not shutil.which(ffmpeg):
            sys.exit("publish.py: ffmpeg not found (apt-get install -y ffmpeg)")
        vbps = bitrate - AUDIO_BPS
        tmp = path + ".tmp.flv"
        cmd = [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={FPS}:duration={CLIP_SECONDS}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={CLIP_SECONDS}",
            "-map", "0:v", "-map", "1:a", "-frames:v", str(FPS * CLIP_SECONDS),
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-profile:v", "main",
            "-pix_fmt", "yuv420p", "-g", str(FPS), "-keyint_min", str(FPS), "-sc_threshold", "0",
            "-b:v", str(vbps), "-minrate", str(vbps), "-maxrate", str(vbps), "-bufsize", str(vbps),
            "-x264-params", "nal-hrd=cbr:force-cfr=1",
            "-c:a", "aac", "-b:a", str(AUDIO_BPS), "-ar", "48000", "-ac", "2",
            "-f", "flv", tmp,
        ]  # fmt: skip
        subprocess.run(cmd, check=True, timeout=600)
        tags = parse_flv(open(tmp, "rb").read())
        media = [t for t in tags if t.is_media]
        video = [t for t in media if t.type == 9]
        audio = [t for t in media if t.type == 8]
        duration_ms = clip_duration_ms(media)
        media_bytes = sum(len(t.body) for t in media) + SEI_BYTES * sum(t.is_coded_avc for t in video)
        flv_bytes = media_bytes + 15 * len(media)
        manifest = {
            "clip": os.path.basename(path),
            "bitrate": bitrate,
            "duration_s": duration_ms / 1000,
            "fps": FPS,
            "gop_s": 1.0,
            "video_frames": len(video),
            "keyframes": sum(t.is_keyframe for t in video),
            "audio_frames": len(audio),
            "media_bps": round(media_bytes * 8 / (duration_ms / 1000)),
            "flv_bps": round(flv_bytes * 8 / (duration_ms / 1000)),
            "tags_per_s": round(len(media) / (duration_ms / 1000), 2),
            "sei_uuid": SEI_UUID.decode(),
            "note": "media_bps counts audio+video FLV tag bodies including the timestamp SEI",
        }
        os.replace(tmp, path)
        with open(mpath, "w") as f:
            json.dump(manifest, f, indent=2)
    return path, json.load(open(mpath))


def clip_duration_ms(media: list[Tag]) -> int:
    last_v = max((t.ts for t in media if t.type == 9), default=0) + 1000 // FPS
    last_a = max((t.ts for t in media if t.type == 8), default=0) + 21
    return max(last_v, last_a)


def stamp(body: bytes, now_us: int) -> bytes:
    """Insert the send-time SEI as the first NAL unit of an AVC coded frame."""
    sei = b"\x06\x05\x20" + SEI_UUID + b"%016x" % now_us + b"\x80"
    return body[:5] + struct.pack(">I", len(sei)) + sei + body[5:]


# --------------------------------------------------------------------------- AMF0


def amf_str(s: str) -> bytes:
    b = s.encode()
    return b"\x02" + struct.pack(">H", len(b)) + b


def amf_num(x: float) -> bytes:
    return b"\x00" + struct.pack(">d", x)


def amf_obj(d: dict) -> bytes:
    out = b"\x03"
    for k, v in d.items():
        kb = k.encode()
        out += struct.pack(">H", len(kb)) + kb
        if isinstance(v, bool):
            out += b"\x01" + bytes([v])
        elif isinstance(v, (int, float)):
            out += amf_num(v)
        else:
            out += amf_str(str(v))
    return out + b"\x00\x00\x09"


def amf_read(b: bytes, pos: int):
    """Decode one AMF0 value (enough for command replies). Returns (value, new_pos)."""
    t = b[pos]
    pos += 1
    if t == 0:
        return struct.unpack(">d", b[pos : pos + 8])[0], pos + 8
    if t == 1:
        return bool(b[pos]), pos + 1
    if t == 2:
        n = struct.unpack(">H", b[pos : pos + 2])[0]
        return b[pos + 2 : pos + 2 + n].decode("utf-8", "replace"), pos + 2 + n
    if t in (3, 8):
        if t == 8:
            pos += 4
        d = {}
        while pos + 3 <= len(b):
            n = struct.unpack(">H", b[pos : pos + 2])[0]
            if n == 0 and b[pos + 2] == 9:
                return d, pos + 3
            k = b[pos + 2 : pos + 2 + n].decode("utf-8", "replace")
            d[k], pos = amf_read(b, pos + 2 + n)
        return d, pos
    if t in (5, 6):
        return None, pos
    raise ValueError(f"AMF0 type {t} not handled")


def amf_read_all(b: bytes) -> list:
    vals, pos = [], 0
    try:
        while pos < len(b):
            v, pos = amf_read(b, pos)
            vals.append(v)
    except (ValueError, IndexError, struct.error):
        pass
    return vals


# --------------------------------------------------------------------------- RTMP


class RtmpReader:
    """Incremental RTMP chunk-stream parser; yields (type, msid, payload)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.chunk = 128
        self.streams: dict[int, dict] = {}

    def feed(self, data: bytes):
        self.buf += data
        out = []
        while True:
            b = self.buf
            if not b:
                break
            fmt, csid, pos = b[0] >> 6, b[0] & 63, 1
            if csid == 0:
                if len(b) < 2:
                    break
                csid, pos = 64 + b[1], 2
            elif csid == 1:
                if len(b) < 3:
                    break
                csid, pos = 64 + b[1] + 256 * b[2], 3
            mh = (11, 7, 3, 0)[fmt]
            if len(b) < pos + mh:
                break
            st = self.streams.setdefault(csid, {"ts": 0, "len": 0, "type": 0, "msid": 0, "data": bytearray(), "ext": False})
            m = b[pos : pos + mh]
            pos += mh
            ext = (int.from_bytes(m[0:3], "big") == 0xFFFFFF) if fmt < 3 else st["ext"]
            if ext:
                if len(b) < pos + 4:
                    break
                pos += 4
            if fmt <= 1:
                length, mtype = int.from_bytes(m[3:6], "big"), m[6]
            else:
                length, mtype = st["len"], st["type"]
            have = len(st["data"]) if fmt == 3 else 0
            n = min(self.chunk, length - have)
            if len(b) < pos + n:
                break
            if fmt < 3:
                st["ext"] = ext
                st["len"], st["type"] = length, mtype
                if fmt == 0:
                    st["msid"] = int.from_bytes(m[7:11], "little")
                st["data"] = bytearray()
            st["data"] += b[pos : pos + n]
            del self.buf[: pos + n]
            if len(st["data"]) >= st["len"]:
                payload = bytes(st["data"])
                st["data"] = bytearray()
                if st["type"] == 1 and len(payload) >= 4:
                    self.chunk = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
                out.append((st["type"], st["msid"], payload))
        return out


def rtmp_chunks(csid: int, mtype: int, msid: int, ts: int, payload: bytes, chunk: int) -> bytes:
    ext = ts >= 0xFFFFFF
    hdr = bytes([csid]) + (0xFFFFFF if ext else ts).to_bytes(3, "big") + len(payload).to_bytes(3, "big")
    hdr += bytes([mtype]) + msid.to_bytes(4, "little")
    if ext:
        hdr += ts.to_bytes(4, "big")
    cont = bytes([0xC0 | csid]) + (ts.to_bytes(4, "big") if ext else b"")
    parts = [hdr, payload[:chunk]]
    for i in range(chunk, len(payload), chunk):
        parts += [cont, payload[i : i + chunk]]
    return b"".join(parts)


class Sink:
    """Common interface of the three publishing transports."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send_all(self, data: bytes) -> None:
        self.sock.sendall(data)

    def poll(self) -> None:
        """Read whatever the server sent (non-blocking); raise ConnectionError when it closed."""
        while True:
            r, _, _ = select.select([self.sock], [], [], 0)
            if not r:
                return
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.on_data(data)

    def on_data(self, data: bytes) -> None:
        pass


class RtmpSink(Sink):
    CHUNK = 4096

    def __init__(self, sock: socket.socket, url) -> None:
        super().__init__(sock)
        self.reader = RtmpReader()
        self.msid = 1
        self.win_ack = 0
        self.received = 0
        self.acked = 0
        parts = url.path.strip("/").split("/")
        if len(parts) < 2:
            raise SystemExit("rtmp URL must be rtmp://host:port/app/stream")
        self.app, self.stream = "/".join(parts[:-1]), parts[-1]
        self.tc_url = f"rtmp://{url.hostname}:{url.port or 1935}/{self.app}"
        self.handshake()
        self.connect()

    def handshake(self) -> None:
        c1 = struct.pack(">II", 0, 0) + os.urandom(1528)
        self.sock.sendall(b"\x03" + c1)
        s = self.recv_exact(1 + 1536 + 1536)
        if s[0] != 3:
            raise ConnectionError(f"bad S0 {s[0]}")
        self.sock.sendall(s[1:1537])  # C2 = S1

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            d = self.sock.recv(n - len(buf))
            if not d:
                raise ConnectionError("closed during handshake")
            buf += d
        return bytes(buf)

    def send_msg(self, csid: int, mtype: int, msid: int, ts: int, payload: bytes) -> None:
        self.sock.sendall(rtmp_chunks(csid, mtype, msid, ts, payload, self.CHUNK))

    def wait_for(self, pred, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed while waiting for {what}")
            for msg in self.handle(data):
                res = pred(msg)
                if res is not None:
                    return res
        raise TimeoutError(f"timed out waiting for {what}")

    def handle(self, data: bytes) -> list:
        """Process control messages; return decoded command messages."""
        self.received += len(data)
        cmds = []
        for mtype, _msid, payload in self.reader.feed(data):
            if mtype == 5 and len(payload) >= 4:
                self.win_ack = struct.unpack(">I", payload[:4])[0]
            elif mtype == 4 and len(payload) >= 6 and payload[:2] == b"\x00\x06":
                self.send_msg(2, 4, 0, 0, b"\x00\x07" + payload[2:6])
            elif mtype == 20:
                cmds.append(amf_read_all(payload))
        if self.win_ack and self.received - self.acked >= self.win_ack:
            self.send_msg(2, 3, 0, 0, struct.pack(">I", self.received & 0xFFFFFFFF))
            self.acked = self.received
        return cmds

    def on_data(self, data: bytes) -> None:
        for cmd in self.handle(data):
            if cmd and cmd[0] == "onStatus" and len(cmd) > 3 and isinstance(cmd[3], dict):
                level = cmd[3].get("level")
                if level == "error":
                    raise ConnectionError(f"server: {cmd[3].get('code')}")

    def connect(self) -> None:
        self.send_msg(2, 1, 0, 0, struct.pack(">I", self.CHUNK))
        self.send_msg(3, 20, 0, 0, amf_str("connect") + amf_num(1) + amf_obj(
            {"app": self.app, "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; rtmpd-bench)",
             "tcUrl": self.tc_url}))  # fmt: skip

        def result(tx):
            def pred(cmd):
                if cmd and cmd[0] in ("_result", "_error") and len(cmd) > 1 and cmd[1] == tx:
                    if cmd[0] == "_error":
                        raise ConnectionError(f"RTMP {cmd}")
                    return cmd
                return None

            return pred

        self.wait_for(result(1), "connect result")
        self.send_msg(3, 20, 0, 0, amf_str("releaseStream") + amf_num(2) + b"\x05" + amf_str(self.stream))
        self.send_msg(3, 20, 0, 0, amf_str("FCPublish") + amf_num(3) + b"\x05" + amf_str(self.stream))
        self.send_msg(3, 20, 0, 0, amf_str("createStream") + amf_num(4) + b"\x05")
        cmd = self.wait_for(result(4), "createStream result")
        self.msid = int(cmd[3]) if len(cmd) > 3 and isinstance(cmd[3], float) else 1
        self.send_msg(4, 20, self.msid, 0, amf_str("publish") + amf_num(5) + b"\x05" + amf_str(self.stream) + amf_str("live"))

        def started(cmd):
            if cmd and cmd[0] == "onStatus" and len(cmd) > 3 and isinstance(cmd[3], dict):
                code = cmd[3].get("code", "")
                if code == "NetStream.Publish.Start":
                    return True
                if cmd[3].get("level") == "error":
                    raise ConnectionError(f"publish refused: {code}")
            return None

        self.wait_for(started, "NetStream.Publish.Start")

    def metadata(self, body: bytes) -> None:
        # onMetaData as @setDataFrame, like encoders send it
        self.send_msg(5, 18, self.msid, 0, amf_str("@setDataFrame") + body)

    def tag(self, t: int, ts: int, body: bytes) -> None:
        self.send_msg(6 if t == 9 else 4, t, self.msid, ts, body)


def flv_tag(t: int, ts: int, body: bytes) -> bytes:
    n = len(body)
    return (
        bytes([t]) + n.to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big") + bytes([(ts >> 24) & 0xFF])
        + b"\x00\x00\x00" + body + (n + 11).to_bytes(4, "big")
    )  # fmt: skip


FLV_HEADER = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"


class HttpSink(Sink):
    def __init__(self, sock: socket.socket, url) -> None:
        super().__init__(sock)
        path = url.path + (("?" + url.query) if url.query else "")
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUser-Agent: rtmpd-bench-publish\r\n"
            "Content-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        self.write(FLV_HEADER)

    def write(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")

    def on_data(self, data: bytes) -> None:
        if data.startswith(b"HTTP/1.") and not data[9:12] in (b"100", b"200", b"201", b"204"):
            raise ConnectionError(f"server answered {data[:64]!r}")

    def metadata(self, body: bytes) -> None:
        self.write(flv_tag(18, 0, body))

    def tag(self, t: int, ts: int, body: bytes) -> None:
        self.write(flv_tag(t, ts, body))


class WsSink(Sink):
    def __init__(self, sock: socket.socket, url) -> None:
        super().__init__(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        path = url.path + (("?" + url.query) if url.query else "")
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            d = sock.recv(4096)
            if not d:
                raise ConnectionError("closed during WebSocket upgrade")
            head += d
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:80]!r}")
        self.pending = head.split(b"\r\n\r\n", 1)[1]
        self.write(FLV_HEADER)

    def frame(self, opcode: int, data: bytes) -> bytes:
        n = len(data)
        hdr = bytes([0x80 | opcode])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            hdr += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        masked = (int.from_bytes(data, "big") ^ m).to_bytes(n, "big") if n else b""
        return hdr + mask + masked

    def write(self, data: bytes) -> None:
        self.sock.sendall(self.frame(2, data))

    def on_data(self, data: bytes) -> None:
        data = self.pending + data
        self.pending = b""
        while len(data) >= 2:
            op, n, pos = data[0] & 0x0F, data[1] & 0x7F, 2
            if n == 126:
                n, pos = int.from_bytes(data[2:4], "big"), 4
            elif n == 127:
                n, pos = int.from_bytes(data[2:10], "big"), 10
            if len(data) < pos + n:
                break
            payload = data[pos : pos + n]
            data = data[pos + n :]
            if op == 9:
                self.sock.sendall(self.frame(10, payload))
            elif op == 8:
                raise ConnectionError("server closed the WebSocket")
        self.pending = data

    def metadata(self, body: bytes) -> None:
        self.write(flv_tag(18, 0, body))

    def tag(self, t: int, ts: int, body: bytes) -> None:
        self.write(flv_tag(t, ts, body))


# --------------------------------------------------------------------------- main loop


def open_sink(url_s: str, timeout: float) -> Sink:
    url = urlsplit(url_s)
    port = url.port or {"rtmp": 1935, "http": 80, "ws": 80}.get(url.scheme, 0)
    sock = socket.create_connection((url.hostname, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    if url.scheme == "rtmp":
        return RtmpSink(sock, url)
    if url.scheme == "http":
        return HttpSink(sock, url)
    if url.scheme == "ws":
        return WsSink(sock, url)
    raise SystemExit(f"unsupported URL scheme {url.scheme!r}")


def publish(sink: Sink, tags: list[Tag], deadline: float, log) -> None:
    meta = next((t for t in tags if t.type == 18), None)
    heads = [t for t in tags if t.is_seq_header]
    media = [t for t in tags if t.is_media]
    loop_ms = clip_duration_ms(media)
    if meta:
        sink.metadata(meta.body)
    for t in heads:
        sink.tag(t.type, 0, t.body)
    start = time.monotonic()
    base = media[0].ts
    loop = 0
    sent = 0
    next_log = start + 10
    while True:
        off = loop * loop_ms
        for t in media:
            ts = t.ts - base + off
            due = start + ts / 1000.0
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return
                if now >= due:
                    break
                sink.poll()
                time.sleep(min(due - now, 0.005))
            body = stamp(t.body, time.time_ns() // 1000) if t.is_coded_avc else t.body
            sink.tag(t.type, ts, body)
            sent += 1
            if now >= next_log:
                next_log += 10
                lag = (time.monotonic() - due) * 1000
                log(f"{ts / 1000:.0f} s published, {sent} tags, lag {lag:.1f} ms")
        loop += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="rtmp://127.0.0.1:1935/live/bench",
                    help="rtmp://host:port/app/stream, http://host:port/app/stream (POST) or ws://...")  # fmt: skip
    ap.add_argument("--bitrate", default="1M", help="1M or 4M (total stream bitrate; any NNNk/NM works)")
    ap.add_argument("--duration", type=float, default=3600, help="stop after this many seconds (default 3600)")
    ap.add_argument("--retry", type=float, default=0, help="keep reconnecting for this many seconds on failure")
    ap.add_argument("--make-clip", action="store_true", help="only make the clip and print its manifest")
    ap.add_argument("--force", action="store_true", help="remake the clip")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    s = a.bitrate.upper()
    bitrate = int(float(s[:-1]) * 1_000_000) if s.endswith("M") else int(float(s[:-1]) * 1000) if s.endswith("K") else int(s)
    path, manifest = make_clip(bitrate, force=a.force)
    if a.make_clip:
        print(json.dumps(manifest, indent=2))
        return 0
    tags = parse_flv(open(path, "rb").read())

    def log(msg: str) -> None:
        if not a.quiet:
            print(f"publish: {msg}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + a.duration
    retry_until = time.monotonic() + a.retry
    while True:
        try:
            sink = open_sink(a.url, timeout=10)
            log(f"publishing {manifest['clip']} ({manifest['media_bps'] / 1e6:.2f} Mbit/s media) to {a.url}")
            publish(sink, tags, deadline, log)
            return 0
        except (OSError, ConnectionError, TimeoutError) as e:
            log(f"error: {e}")
            if time.monotonic() >= min(retry_until, deadline):
                return 1
            time.sleep(0.5)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
