"""Make the fuzz seed corpora, ``tests/fuzz/corpus/<target>/``, from real
captures: ``.venv/bin/python -m tests.fuzz.make_corpus``.

It starts ``twistd rtmpd`` (recording HLS, FLV and fMP4), puts a recording
TCP proxy in front of its RTMP port, publishes two seconds of H.264 + AAC
with ffmpeg through the proxy while ffmpeg plays it back through the proxy
too, then cuts seeds from what went over the wire and what was recorded,
plus the ffmpeg-made files in ``tests/data``, plus what OBS Studio sends when
it publishes (:func:`obs_seeds`: built here from its public sources, kept
under ``obs-*`` names beside the captures). Seeds of the streaming targets
start with the byte that sets the piece size (``0xff``: 256-byte pieces; see
``targets.pieces``). Each seed is at most :data:`MAX_SEED` bytes.
Re-running replaces the corpora (captures differ in their random bytes);
``--obs-only`` writes the OBS seeds alone and leaves the captures as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from rtmpd.codec import amf0, amf3, enhanced, flv
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


# --------------------------------------------------------------------------- OBS

#: OBS Studio's RTMP output (plugins/obs-outputs: rtmp-stream.c and its copy
#: of librtmp, flv-mux.c), as read from its public sources. After the
#: handshake it sets its chunk size to 4096 before anything else, sends
#: ``connect`` (app, type "nonprivate", flashVer, swfUrl = tcUrl, tcUrl; since
#: 29.1 also ``fourCcList`` for Enhanced RTMP), and on its result
#: ``releaseStream``, ``FCPublish`` and ``createStream`` without waiting,
#: then ``publish(key, "live")`` on the new stream. Data goes out through
#: librtmp's RTMP_Write: everything on chunk stream 4 with the smallest header
#: that fits (a type-0 header first, then deltas), ``@setDataFrame`` put in
#: front of ``onMetaData``, then the audio and the video sequence headers.
#: It ends with ``FCUnpublish`` and ``deleteStream``.
OBS_FLASH_VER = "FMLE/3.0 (compatible; FMSc/1.0)"
OBS_ENCODER = "obs-output module (libobs version 30.2.3)"
OBS_CHUNK_SIZE = 4096
OBS_KEY = "live_123456789_AbCdEfGhIjKlMnOpQrStUvWxYz"
#: OBS's usual audio: AAC-LC, 48 kHz, stereo (the AudioSpecificConfig).
OBS_AAC_CONFIG = b"\x11\x90"


def obs_metadata(*, channels: int, numeric_ids: bool) -> bytes:
    """``onMetaData`` as flv-mux.c builds it: an ECMA array of 20 entries,
    one flag per channel layout (``stereo``, ``2.1`` ... ``7.1``) and the
    libobs version in ``encoder``. Older versions name the codecs ``avc1``
    and ``mp4a``; numbers (7, 10) are what most encoders send."""
    layouts = {"stereo": 2, "2.1": 3, "3.1": 4, "4.0": 4, "4.1": 5, "5.1": 6, "7.1": 8}
    fields: dict[str, object] = {
        "duration": 0.0, "fileSize": 0.0, "width": 1280.0, "height": 720.0,
        "videocodecid": 7.0 if numeric_ids else "avc1", "videodatarate": 2500.0,
        "framerate": 30.0, "audiocodecid": 10.0 if numeric_ids else "mp4a",
        "audiodatarate": 160.0, "audiosamplerate": 48000.0, "audiosamplesize": 16.0,
        "audiochannels": float(channels),
        **{name: count == channels for name, count in layouts.items()},
        "encoder": OBS_ENCODER,
    }  # fmt: skip
    return amf0.encode_all("onMetaData", amf0.ECMAArray(fields))


class LibrtmpChunker:
    """Messages into chunks the way librtmp's RTMP_SendPacket cuts them: per
    chunk stream, a type-0 header for a new message stream, else type 1
    (timestamp delta), or type 2 when length and type repeat; type-3
    continuation chunks of at most ``chunk_size`` bytes."""

    def __init__(self) -> None:
        self.chunk_size = 128
        self.last: dict[int, tuple[int, int, int, int]] = {}  # msid, length, type, ts

    def message(self, csid: int, type_id: int, msid: int, ts: int, payload: bytes) -> bytes:
        previous = self.last.get(csid)
        self.last[csid] = (msid, len(payload), type_id, ts)
        if previous is None or previous[0] != msid:
            header = bytes([csid]) + ts.to_bytes(3, "big") + len(payload).to_bytes(3, "big")
            header += bytes([type_id]) + msid.to_bytes(4, "little")
        elif previous[1:3] == (len(payload), type_id):
            header = bytes([0x80 | csid]) + (ts - previous[3]).to_bytes(3, "big")
        else:
            header = bytes([0x40 | csid]) + (ts - previous[3]).to_bytes(3, "big")
            header += len(payload).to_bytes(3, "big") + bytes([type_id])
        out = [header, payload[: self.chunk_size]]
        for start in range(self.chunk_size, len(payload), self.chunk_size):
            out += [bytes([0xC0 | csid]), payload[start : start + self.chunk_size]]
        if type_id == 1:
            self.chunk_size = int.from_bytes(payload[:4], "big")
        return b"".join(out)


def obs_command(name: str, transaction: float, *args: object) -> bytes:
    return amf0.encode_all(name, transaction, None, *args)


def obs_media(numeric_ids: bool) -> list[tuple[int, int, bytes]]:
    """(type, timestamp ms, body) of an OBS publish: ``@setDataFrame``, the
    audio and video sequence headers, then a few frames (tests/data/tiny.flv's,
    with OBS's 48 kHz stereo AudioSpecificConfig)."""
    tags = flv_tags((DATA / "tiny.flv").read_bytes())
    video = [t for t in tags if t.tag_type == flv.TAG_VIDEO]
    audio = [t for t in tags if t.tag_type == flv.TAG_AUDIO and t.body[1:2] == b"\x01"]
    channels = 2 if not numeric_ids else 3
    out = [
        (flv.TAG_SCRIPT, 0, amf0.encode("@setDataFrame") + obs_metadata(
            channels=channels, numeric_ids=numeric_ids)),
        (flv.TAG_AUDIO, 0, b"\xaf\x00" + OBS_AAC_CONFIG),
        (flv.TAG_VIDEO, 0, video[0].body),
    ]
    frames = [(t.timestamp_ms, flv.TAG_VIDEO, t.body) for t in video[1:3]]
    frames += [(round(i * 1024 / 48), flv.TAG_AUDIO, t.body) for i, t in enumerate(audio[:4])]
    out += [(kind, ts, body) for ts, kind, body in sorted(frames, key=lambda f: f[:2])]
    return out


def obs_session(*, numeric_ids: bool) -> tuple[bytes, list[bytes]]:
    """The bytes OBS sends in one publish (C0 C1 C2, then chunks) and the
    payloads of its command and data messages."""
    chunker = LibrtmpChunker()
    tc_url = "rtmp://127.0.0.1:1935/live"
    connect: dict[str, object] = {"app": "live", "type": "nonprivate",
                                  "flashVer": OBS_FLASH_VER, "swfUrl": tc_url, "tcUrl": tc_url}
    if numeric_ids:
        connect["fourCcList"] = ["av01", "vp09", "hvc1"]
    commands = [
        (3, 0, amf0.encode_all("connect", 1.0, connect)),
        (3, 0, obs_command("releaseStream", 2.0, OBS_KEY)),
        (3, 0, obs_command("FCPublish", 3.0, OBS_KEY)),
        (3, 0, obs_command("createStream", 4.0)),
        (4, 1, obs_command("publish", 5.0, OBS_KEY, "live")),
    ]  # fmt: skip
    # C1: librtmp's uptime stamp, four zero bytes, then its random fill;
    # C2 echoes S1, whose bytes a server under test makes zeros.
    c1 = (123_456).to_bytes(4, "big") + bytes(4) + hashlib.shake_256(b"obs").digest(1528)
    wire = [b"\x03", c1, bytes(HANDSHAKE_SIZE)]
    wire.append(chunker.message(2, 1, 0, 0, OBS_CHUNK_SIZE.to_bytes(4, "big")))
    for csid, msid, payload in commands:
        wire.append(chunker.message(csid, 20, msid, 0, payload))
    media = obs_media(numeric_ids)
    for kind, ts, body in media:
        wire.append(chunker.message(4, kind, 1, ts, body))
    closing = [obs_command("FCUnpublish", 6.0, OBS_KEY), obs_command("deleteStream", 7.0, 1.0)]
    for payload in closing:
        wire.append(chunker.message(3, 20, 0, 0, payload))
    return b"".join(wire), [p for _, _, p in commands] + [media[0][2]] + closing


def obs_flv(numeric_ids: bool) -> bytes:
    """An FLV as flv-mux.c writes it (OBS's FLV recording, or an HTTP-FLV
    publish of the same tags): header, onMetaData without ``@setDataFrame``,
    sequence headers and frames, each tag followed by its size."""
    out = [b"FLV\x01\x05" + (9).to_bytes(4, "big") + bytes(4)]
    for kind, ts, body in obs_media(numeric_ids):
        if kind == flv.TAG_SCRIPT:
            body = body[len(amf0.encode("@setDataFrame")):]
        tag = bytes([kind]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
        tag += bytes([ts >> 24]) + bytes(3) + body
        out += [tag, len(tag).to_bytes(4, "big")]
    return b"".join(out)


def obs_seeds() -> dict[str, dict[str, bytes]]:
    """Seeds by target and name: OBS's publish over RTMP (older and newer
    metadata, fed in 256- and 128-byte pieces), its messages, its metadata
    and the FLV its muxer writes."""
    out: dict[str, dict[str, bytes]] = defaultdict(dict)
    for numeric_ids, era, split in ((False, "28", SPLIT), (True, "30", b"\x7f")):
        wire, payloads = obs_session(numeric_ids=numeric_ids)
        out["rtmp_server"][f"obs-{era}-publish"] = split + wire
        out["flv_ingest"][f"obs-{era}-flv"] = split + obs_flv(numeric_ids)
        connect, release, _, _, publish, metadata, unpublish, _ = payloads
        out["amf0"][f"obs-{era}-metadata"] = metadata
        out["rtmp_messages"][f"obs-{era}-connect"] = connect
        if not numeric_ids:
            out["amf0"]["obs-connect"] = connect
            out["rtmp_messages"]["obs-releasestream"] = release
            out["rtmp_messages"]["obs-publish"] = publish
            out["rtmp_messages"]["obs-fcunpublish"] = unpublish
    return out


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


def write_obs_seeds() -> None:
    for target, named in sorted(obs_seeds().items()):
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("obs-*"):
            old.unlink()
        for name, item in sorted(named.items()):
            assert len(item) <= MAX_SEED, (target, name, len(item))
            (directory / name).write_bytes(item)
        print(f"{target}: {len(named)} OBS seeds")


def main(argv: list[str]) -> None:
    if argv != ["--obs-only"]:
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
    write_obs_seeds()


if __name__ == "__main__":
    main(sys.argv[1:])
