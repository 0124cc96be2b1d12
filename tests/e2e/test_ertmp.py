"""Enhanced RTMP through the real server: ffmpeg 9 publishes HEVC + AAC, AV1 + Opus
and VP9 + Opus; each plays back over RTMP, HTTP-FLV and WS-FLV in its own codecs and
decodes clean; a legacy RTMP client (Debian's ffmpeg 5.1) gets only what it decodes,
with one log line; a publisher that announced capsEx Reconnect is asked to reconnect
on SIGTERM and the server waits for it to leave.

The encoders are those of the ``imageio-ffmpeg`` wheel's ffmpeg 9 (libx265,
libsvtav1, libvpx-vp9, libopus; Debian's ffmpeg 5.1 can put none of these in FLV).
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rtmpd.codec import enhanced, flv
from rtmpd.codec.errors import RemoteProtocolError
from rtmpd.codec.rtmp import events as ev
from tests.e2e.conftest import WAIT_S, Server, run, start_server, stop_server
from tests.e2e.rtmpclient import RtmpTestClient
from tests.e2e.test_flv_transports import record_ws
from tests.e2e.test_opus import FFMPEG9, capture_http_flv, decode_errors, wait_for_log

CLIP_S = 6
#: What ffmpeg 9 announces when it plays: without it, it is a legacy client.
ENHANCED_CODECS = "hvc1,av01,vp09,Opus,mp4a"

#: name -> (video encoder and options, audio encoder and options, video FourCC, audio codec)
CODECS: dict[str, tuple[list[str], list[str], bytes, int]] = {
    "hevc_aac": (
        ["-c:v", "libx265", "-preset", "ultrafast",
         "-x265-params", "keyint=25:min-keyint=25:scenecut=0:bframes=2:log-level=error"],
        ["-c:a", "aac", "-b:a", "64k"],
        b"hvc1", flv.AUDIO_AAC,
    ),
    "av1_opus": (
        ["-c:v", "libsvtav1", "-preset", "12", "-g", "25", "-svtav1-params", "scd=0"],
        ["-c:a", "libopus", "-b:a", "64k", "-ac", "2"],
        b"av01", flv.FOURCC_OPUS,
    ),
    "vp9_opus": (
        ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-g", "25",
         "-b:v", "300k"],
        ["-c:a", "libopus", "-b:a", "64k", "-ac", "2"],
        b"vp09", flv.FOURCC_OPUS,
    ),
}


def make_clip(directory: Path, name: str) -> Path:
    video, audio, _, _ = CODECS[name]
    out = directory / f"{name}.flv"
    subprocess.run(
        [FFMPEG9, "-v", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(CLIP_S), *video, "-pix_fmt", "yuv420p", *audio, "-f", "flv", str(out)],
        check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return out


def tags(data: bytes) -> list[tuple[int, bytes]]:
    """(tag type, body) of every whole tag of an FLV stream or captured prefix."""
    reader = flv.FlvReader()
    reader.receive_data(data)
    out = []
    while True:
        try:
            event = reader.next_event()
        except RemoteProtocolError:  # a capture cut in the middle of a tag
            break
        if isinstance(event, flv.TagReceived):
            out.append((event.tag_type, event.body))
        elif not isinstance(event, flv.FlvHeaderReceived):
            break
    return out


def check_codecs(data: bytes, video_fourcc: bytes, audio_codec: int) -> None:
    """Video in ``video_fourcc`` (a sequence start, then a second of frames), audio in
    ``audio_codec``, and nothing else."""
    video = [flv.describe_tag(t, b) for t, b in tags(data) if t == flv.TAG_VIDEO]
    audio = [flv.describe_tag(t, b) for t, b in tags(data) if t == flv.TAG_AUDIO]
    assert {i.codec for i in video} == {flv.fourcc(video_fourcc)}, {i.codec for i in video}
    assert {i.codec for i in audio} == {audio_codec}, {i.codec for i in audio}
    # The configuration first (ffmpeg may put a Metadata colorInfo packet before it).
    assert any(i.sequence_header for i in video[:2]) and audio[0].sequence_header
    assert sum(not i.sequence_header for i in video) >= 25
    assert any(i.keyframe for i in video)


def get_for(server: Server, path: str, seconds: float) -> bytes:
    """What an HTTP-FLV GET of ``path`` brings in ``seconds`` (less if the stream
    goes quiet for as long)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=WAIT_S)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        assert conn.sock is not None
        conn.sock.settimeout(seconds)
        data = bytearray()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data += response.read1(65536)
            except TimeoutError:
                break
        return bytes(data)
    finally:
        conn.close()


def publish9(server: Server, clip: Path, name: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [FFMPEG9, "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
         "-f", "flv", server.rtmp_url(name)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    server.children.append(proc)
    server.wait_live(name)
    return proc


def play_rtmp(ffmpeg: str, server: Server, name: str, out: Path, *extra: str) -> bytes:
    """Play over RTMP for 3 s of media, keeping the tags as they came (stream copy)."""
    result = run([ffmpeg, "-nostdin", "-v", "error", *extra, "-i", server.rtmp_url(name),
                  "-t", "3", "-c", "copy", "-f", "flv", "-y", str(out)])
    assert result.returncode == 0, result.stderr
    return out.read_bytes()


@pytest.mark.parametrize("name", list(CODECS))
def test_enhanced_codecs_play_back_over_rtmp_http_flv_and_ws_flv_and_decode_clean(
    name: str, server: Server, tmp_path: Path
) -> None:
    _, _, video_fourcc, audio_codec = CODECS[name]
    clip = make_clip(tmp_path, name)
    publish9(server, clip, name)

    rtmp = play_rtmp(FFMPEG9, server, name, tmp_path / "rtmp.flv",
                     "-rtmp_enhanced_codecs", ENHANCED_CODECS)
    check_codecs(rtmp, video_fourcc, audio_codec)
    assert decode_errors(FFMPEG9, tmp_path / "rtmp.flv") == ""

    http_flv = tmp_path / "http.flv"
    http_flv.write_bytes(capture_http_flv(server, name, 2.5))
    check_codecs(http_flv.read_bytes(), video_fourcc, audio_codec)
    assert decode_errors(FFMPEG9, http_flv) == ""

    ws_flv = tmp_path / "ws.flv"
    record_ws(server, name, ws_flv, 2.5)
    check_codecs(ws_flv.read_bytes(), video_fourcc, audio_codec)
    assert decode_errors(FFMPEG9, ws_flv) == ""
    assert "legacy client" not in server.log()


def test_a_legacy_rtmp_client_gets_the_aac_of_an_hevc_stream_and_one_line_says_why(
    server: Server, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path, "hevc_aac")
    publish9(server, clip, "legacy")
    # Debian's ffmpeg 5.1 announces no FourCC: HEVC would be garbage to it. Its RTMP
    # reader announces video in the FLV header it makes up, so with audio alone it probes
    # until -probesize (5 MB, minutes of AAC): a small one lets it start.
    legacy = play_rtmp("ffmpeg", server, "legacy", tmp_path / "legacy.flv",
                       "-probesize", "32768")
    got = tags(legacy)
    assert not [b for t, b in got if t == flv.TAG_VIDEO]
    audio = [flv.describe_tag(t, b) for t, b in got if t == flv.TAG_AUDIO]
    assert len(audio) >= 50 and {i.codec for i in audio} == {flv.AUDIO_AAC}
    assert decode_errors("ffmpeg", tmp_path / "legacy.flv") == ""
    wait_for_log(server, "a legacy client), so it gets no hvc1 video; it gets the rest")
    assert server.log().count("so it gets no hvc1 video") == 1
    # An HTTP-FLV player that predates Enhanced RTMP asks for the legacy form.
    legacy_http = tmp_path / "legacy-http.flv"
    legacy_http.write_bytes(get_for(server, "/live/legacy.flv?codecs=legacy", 2.5))
    assert {t for t, _ in tags(legacy_http.read_bytes())} == {flv.TAG_AUDIO, flv.TAG_SCRIPT}
    assert decode_errors("ffmpeg", legacy_http) == ""
    wait_for_log(server, "it asked for ?codecs=legacy, so it gets no hvc1 video")
    # ffmpeg 9 without -rtmp_enhanced_codecs is a legacy client too.
    ffmpeg9 = play_rtmp(FFMPEG9, server, "legacy", tmp_path / "9.flv", "-probesize", "32768")
    assert not [t for t, _ in tags(ffmpeg9) if t == flv.TAG_VIDEO]


def test_sigterm_asks_a_publisher_that_announced_reconnect_to_reconnect(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        mover = RtmpTestClient(server.rtmp_port, connect={"capsEx": 1.0})
        assert mover.publish("moving") == "NetStream.Publish.Start"
        plain = RtmpTestClient(server.rtmp_port)  # no Reconnect: stopped at once
        assert plain.publish("staying") == "NetStream.Publish.Start"
        server.wait_live("moving")
        server.process.send_signal(signal.SIGTERM)
        request = mover.wait_for(lambda e: isinstance(e, ev.StatusReceived)
                                 and e.code == "NetConnection.Connect.ReconnectRequest")
        assert isinstance(request, ev.StatusReceived) and request.stream_id == 0
        stopped = plain.wait_for(lambda e: isinstance(e, ev.StatusReceived)
                                 and e.code == "NetStream.Unpublish.Success")
        assert isinstance(stopped, ev.StatusReceived)
        # Still live for its viewers while it moves.
        time.sleep(0.5)
        assert server.process.poll() is None
        mover.close()  # it reconnected elsewhere and left
        plain.close()
        server.process.wait(timeout=WAIT_S / 3)
        log = server.log()
        assert "asked 1 publisher(s) to reconnect (live/moving)" in log
        assert "did not reconnect in time" not in log
    finally:
        stop_server(server)


def multitrack(kind: int, packet_type: int, tracks: list[tuple[bytes, int, bytes]]) -> bytes:
    """A ManyTracksManyCodecs message, built by hand (no encoder sends Multitrack yet)."""
    return bytes(enhanced.ExMedia(
        kind=kind, packet_type=packet_type, frame_type=1 if kind == flv.TAG_VIDEO else 0,
        multitrack=flv.MULTITRACK_MANY_TRACKS_MANY_CODECS,
        tracks=tuple(enhanced.Track(fourcc=c, track_id=i, data=d) for c, i, d in tracks),
    ))


def test_hand_built_multitrack_messages_reach_rtmp_and_http_flv_viewers(server: Server) -> None:
    avcc = b"\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f\x01\x00\x04\x68\xeb\xe3\xcb"
    published = [
        (flv.TAG_VIDEO, multitrack(9, 0, [(b"avc1", 0, avcc), (b"hvc1", 1, b"\x01" * 23)])),
        (flv.TAG_AUDIO, multitrack(8, 0, [(b"mp4a", 0, b"\x12\x10"), (b"Opus", 1, b"O" * 19)])),
        (flv.TAG_VIDEO, multitrack(9, 1, [(b"avc1", 0, b"\0\0\0" + b"K" * 300),
                                          (b"hvc1", 1, b"\0\0\0" + b"H" * 200)])),
        (flv.TAG_AUDIO, multitrack(8, 1, [(b"mp4a", 0, b"\x21\x00"), (b"Opus", 1, b"\xfc")])),
    ]
    publisher = RtmpTestClient(server.rtmp_port)
    sid = publisher.create_stream()
    publisher.conn.publish(sid, "tracks")
    assert publisher.status(sid).code == "NetStream.Publish.Start"
    for kind, body in published:
        publisher.conn.send_media(sid, kind, 0, body)
    publisher.sock.sendall(publisher.conn.data_to_send())
    server.wait_live("tracks")
    time.sleep(0.3)
    viewer = RtmpTestClient(server.rtmp_port)  # rtmpd's client: any codec, Multitrack
    assert viewer.play("tracks") == "NetStream.Play.Start"
    assert [(m.type_id, m.payload) for m in viewer.media(4)] == published
    got = tags(get_for(server, "/live/tracks.flv", 1.0))
    assert [(t, b) for t, b in got if t != flv.TAG_SCRIPT] == published
    legacy = RtmpTestClient(server.rtmp_port, connect={"fourCcList": None, "capsEx": None})
    assert legacy.play("tracks") == "NetStream.Play.Start"
    assert [(m.type_id, m.payload) for m in legacy.media(4)] == [
        (flv.TAG_VIDEO, b"\x17\x00\x00\x00\x00" + avcc), (flv.TAG_AUDIO, b"\xaf\x00\x12\x10"),
        (flv.TAG_VIDEO, b"\x17\x01\x00\x00\x00" + b"K" * 300), (flv.TAG_AUDIO, b"\xaf\x01\x21\x00"),
    ]
    for client in (publisher, viewer, legacy):
        client.close()
