"""Make the fuzz seed corpora, ``tests/fuzz/corpus/<target>/``, from real
captures: ``.venv/bin/python -m tests.fuzz.make_corpus``.

It starts ``twistd rtmpd`` (recording HLS, FLV and fMP4), puts a recording
TCP proxy in front of its RTMP port, publishes two seconds of H.264 + AAC
with ffmpeg through the proxy while ffmpeg plays it back through the proxy
too, then cuts seeds from what went over the wire and what was recorded,
plus the ffmpeg-made files in ``tests/data``. Seeds of the streaming targets
start with the byte that sets the piece size (``0xff``: 256-byte pieces; see
``targets.pieces``). Each seed is at most :data:`MAX_SEED` bytes.
Re-running replaces the corpora (captures differ in their random bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from rtmpd.codec import amf3, enhanced, flv
from rtmpd.codec.mp4.demux import Mp4Demuxer
from rtmpd.codec.rtmp.chunk import NEED_DATA, ChunkReader, Message
from rtmpd.codec.rtmp.handshake import HANDSHAKE_SIZE
from tests.e2e.conftest import free_ports, start_server, stop_server

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
DATA = HERE.parent / "data"
#: Seeds stay small: the fuzzer mutates them, and the repository keeps them.
MAX_SEED = 32 * 1024
SPLIT = b"\xff"
HANDSHAKE_BYTES = 1 + 2 * HANDSHAKE_SIZE  # C0 C1 C2 (or S0 S1 S2)


class RecordingProxy:
    """Forwards 127.0.0.1:``port`` to ``target``, keeping each connection's
    client-to-server and server-to-client bytes."""

    def __init__(self, port: int, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port))
        self.sessions: list[tuple[bytearray, bytearray]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            up, down = bytearray(), bytearray()
            self.sessions.append((up, down))
            for src, dst, keep in ((client, server, up), (server, client, down)):
                threading.Thread(target=self._pump, args=(src, dst, keep), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, keep: bytearray) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            keep += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()


def messages_of(stream: bytes) -> list[Message]:
    """The RTMP messages in one direction's bytes after the handshake."""
    reader = ChunkReader()
    reader.receive_data(stream[HANDSHAKE_BYTES:])
    out = []
    try:
        while (event := reader.next_event()) is not NEED_DATA:
            if isinstance(event, Message):
                out.append(event)
    except Exception:  # a capture cut mid-message: keep what came before
        pass
    return out


def flv_tags(data: bytes) -> list[flv.TagReceived]:
    reader = flv.FlvReader()
    reader.receive_data(data)
    reader.receive_data(b"")
    tags = []
    try:
        while True:
            event = reader.next_event()
            if isinstance(event, flv.TagReceived):
                tags.append(event)
            elif event is flv.NEED_DATA or isinstance(event, flv.EndOfStream):
                return tags
    except Exception:
        return tags


def capture(work: Path) -> tuple[list[tuple[bytes, bytes]], Path]:
    """Publish and play through the proxy; the sessions and the media root."""
    clip = work / "clip.flv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "2",
         "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "25", "-b:v", "100k",
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "32k", "-f", "flv", str(clip)],
        check=True, timeout=120,
    )
    server = start_server(work, "--record", "hls,flv,fmp4", "--hls-fragment", "1")
    (proxy_port,) = free_ports(1)
    proxy = RecordingProxy(proxy_port, server.rtmp_port)
    url = f"rtmp://127.0.0.1:{proxy_port}/live/seed"
    try:
        publisher = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv", url],
            stdin=subprocess.DEVNULL)
        server.wait_live("seed")
        subprocess.run(["ffmpeg", "-v", "error", "-i", url, "-t", "1", "-c", "copy", "-f",
                        "null", "-"], stdin=subprocess.DEVNULL, timeout=60, check=False)
        publisher.wait(timeout=60)
        time.sleep(2)  # the recorders finalise
    finally:
        proxy.close()
        stop_server(server)
    return [(bytes(up), bytes(down)) for up, down in proxy.sessions], server.root


def ertmp_seeds(data: bytes, out: dict[str, list[bytes]]) -> None:
    """Seeds from ffmpeg 9's Enhanced RTMP FLVs: the configuration records of their
    SequenceStart tags, and AV1 / VP9 keyframes (the size parsers read those too)."""
    targets = {b"hvc1": "hevc_config", b"av01": "av1_config", b"vp09": "vp9_config",
               b"fLaC": "flac_config"}
    for tag in flv_tags(data):
        body = tag.body
        target = targets.get(body[1:5]) if body[:1] and body[0] & 0x80 else None
        if target is None:
            continue
        sequence_start = body[0] & 0x0F == 0
        keyframe = tag.tag_type == flv.TAG_VIDEO and body[0] >> 4 == 0x9
        if sequence_start or (keyframe and target in ("av1_config", "vp9_config")):
            out[target].append(body[5:])


def ertmp_message_seeds(data: bytes, out: dict[str, list[bytes]]) -> None:
    """Seeds of ``ertmp_message`` from ffmpeg 9's Enhanced RTMP FLVs: the kind byte and
    each kind's first ExHeader bodies, and the same tracks wrapped in Multitrack (which
    ffmpeg does not send) the three ways, with a ModEx in front of one."""
    bodies: dict[int, list[bytes]] = defaultdict(list)
    for tag in flv_tags(data):
        if tag.tag_type in (flv.TAG_VIDEO, flv.TAG_AUDIO) and enhanced.is_ex_header(
            tag.tag_type, tag.body
        ):
            bodies[tag.tag_type].append(tag.body)
    for kind, found in bodies.items():
        prefix = b"\x00" if kind == flv.TAG_VIDEO else b"\x01"
        out["ertmp_message"] += [prefix + body for body in found[:2]]
        message = enhanced.ExMedia.parse(kind, found[0])
        track = message.tracks[0]
        other = enhanced.Track(fourcc=track.fourcc, track_id=1, data=track.data[:16])
        for multitrack, tracks in ((0, (track,)), (1, (track, other)), (2, (other, track))):
            wrapped = enhanced.ExMedia(
                kind=kind, packet_type=message.packet_type, frame_type=message.frame_type,
                multitrack=multitrack, tracks=tracks,
                mod_ex=(enhanced.ModEx(mod_ex_type=0, data=b"\x00\x01\xf4"),)
                if multitrack == 2 else (),
            )
            out["ertmp_message"].append(prefix + bytes(wrapped))


def seeds(work: Path) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    sessions, root = capture(work)
    for up, down in sessions:
        out["rtmp_handshake_server"].append(SPLIT + up[:HANDSHAKE_BYTES])
        out["rtmp_handshake_client"].append(SPLIT + down[:HANDSHAKE_BYTES])
        out["rtmp_server"].append(SPLIT + up)
        out["rtmp_chunk"].append(SPLIT + up[HANDSHAKE_BYTES:])
        for direction in (up, down):
            for message in messages_of(direction):
                if message.type_id in (4, 6, 18, 20, 22):
                    out["rtmp_messages"].append(message.payload)
                if message.type_id in (18, 20):
                    out["amf0"].append(message.payload)
    recorded_flv = (root / "flv" / "live" / "seed" / "index.flv").read_bytes()
    ertmp = [p.read_bytes() for p in sorted((DATA / "ertmp").glob("*.flv"))]
    for data in (recorded_flv, (DATA / "tiny.flv").read_bytes(),
                 (DATA / "opus" / "h264_opus.flv").read_bytes(), *ertmp):
        out["flv_ingest"].append(SPLIT + data)
        for tag in flv_tags(data):
            body = tag.body
            if tag.tag_type == flv.TAG_VIDEO and body[:2] == b"\x17\x00":
                out["avc_config"].append(body[5:])
            elif tag.tag_type == flv.TAG_AUDIO and body[:2] == b"\xaf\x00":
                out["aac_config"].append(body[2:])
            elif tag.tag_type == flv.TAG_AUDIO and b"OpusHead" in body:
                out["opus_head"].append(body[body.find(b"OpusHead"):])
            elif tag.tag_type == flv.TAG_SCRIPT:
                out["amf0"].append(body)
    for config in out["avc_config"]:
        count = config[5] & 0x1F if len(config) > 6 else 0
        if count:
            size = int.from_bytes(config[6:8], "big")
            out["avc_sps"].append(config[8 : 8 + size])
    for data in ertmp:
        ertmp_seeds(data, out)
        ertmp_message_seeds(data, out)
    out["aac_adts"].append((DATA / "tiny.aac").read_bytes())
    hls_dir = root / "hls" / "live" / "seed"
    out["hls_playlist"].append((hls_dir / "index.m3u8").read_bytes())
    for segment in sorted(hls_dir.glob("*.ts"))[:2]:
        out["mpegts"].append(SPLIT + segment.read_bytes())
    out["mpegts"].append(SPLIT + (DATA / "ts" / "ffmpeg_pat_pmt.ts").read_bytes())
    merge = root / "mp4" / "live" / "seed" / "output_merge"
    fragmented = (merge / "init.mp4").read_bytes() + (merge / "000001.m4s").read_bytes()
    mp4s = [fragmented, *(p.read_bytes() for p in sorted((DATA / "mp4").glob("*.mp4")))]
    for data in mp4s:
        out["mp4_demux"].append(data)
        out["mp4_boxes"].append(data)
    hevc_file = (DATA / "mp4" / "tiny_hevc.mp4").read_bytes()
    demuxer = Mp4Demuxer(lambda o, n: hevc_file[o : o + n], len(hevc_file))
    for track in demuxer.tracks:
        config = track.track_config()
        if config.codec in ("hvc1", "hev1"):
            out["hevc_config"].append(config.decoder_config)
    out["amf3"] += [amf3.encode_all(1.5, "live", {"app": "live", "tcUrl": "rtmp://h/live"},
                                    [1, 2, 3], None, True, b"\x00\x01"),
                    amf3.encode_all({"a": {"b": {"c": "d"}}}, "ref", "ref")]
    out["http_range"] += [b"bytes=0-99", b"bytes=100-", b"bytes=-500", b"bytes=0-0,5-9,100-",
                          b"bytes=1-2, 4-5 ,7-"]
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        found = seeds(Path(tmp))
    for target, items in sorted(found.items()):
        directory = CORPUS / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        kept = {}
        for item in items:
            item = item[:MAX_SEED]
            if item:
                kept[hashlib.sha1(item).hexdigest()[:16]] = item
        for name, item in sorted(kept.items())[:12]:
            (directory / name).write_bytes(item)
        print(f"{target}: {min(len(kept), 12)} seeds")


if __name__ == "__main__":
    main()
