"""ffmpeg publishes over RTMP; ffmpeg, ffprobe and rtmpdump play over RTMP and
HTTP-FLV, and what they get decodes with no error."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

from rtmpd.codec import flv
from tests.e2e.conftest import Server, run


def decode_errors(url: str, seconds: int = 3) -> str:
    """Decode ``seconds`` of ``url`` with ffmpeg and return its error output."""
    result = run(["ffmpeg", "-v", "error", "-i", url, "-t", str(seconds), "-f", "null", "-"])
    assert result.returncode == 0, result.stderr
    return result.stderr.strip()


def probe_codecs(url: str) -> set[str]:
    result = run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", url])
    assert result.returncode == 0, result.stderr
    return {s["codec_name"] for s in json.loads(result.stdout)["streams"]}


def test_rtmp_publish_plays_clean_over_rtmp_and_http_flv(server: Server, clip: Path) -> None:
    server.publish(clip, "cam1")
    server.wait_live("cam1")
    assert decode_errors(server.rtmp_url("cam1")) == ""
    assert decode_errors(server.flv_url("cam1")) == ""
    assert probe_codecs(server.rtmp_url("cam1")) == {"h264", "aac"}
    assert probe_codecs(server.flv_url("cam1")) == {"h264", "aac"}


def test_rtmpdump_plays_live(server: Server, clip: Path, tmp_path: Path) -> None:
    server.publish(clip, "cam1")
    server.wait_live("cam1")
    out = tmp_path / "dump.flv"
    # rtmpdump records a live stream until stopped; it finishes the file on SIGINT.
    dump = subprocess.Popen(
        ["rtmpdump", "-q", "-v", "-r", server.rtmp_url("cam1"), "-o", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(4)
    dump.send_signal(signal.SIGINT)
    _, stderr = dump.communicate(timeout=30)
    assert b"ERROR: RTMP_Connect" not in stderr, stderr
    assert out.stat().st_size > 50_000, stderr
    check = run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"])
    assert check.returncode == 0 and check.stderr.strip() == "", check.stderr
    assert probe_codecs(str(out)) == {"h264", "aac"}


def read_flv_tags(url_host: str, port: int, path: str, count: int) -> list[flv.TagReceived]:
    """Read the first ``count`` FLV tags of an HTTP-FLV response with a raw socket."""
    with socket.create_connection((url_host, port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.split(b" ")[1] == b"200", head
        reader = flv.FlvReader()
        reader.receive_data(body)
        tags: list[flv.TagReceived] = []
        while len(tags) < count:
            event = reader.next_event()
            if event is flv.NEED_DATA:
                chunk = sock.recv(65536)
                assert chunk, "server closed the stream early"
                reader.receive_data(chunk)
            elif isinstance(event, flv.TagReceived):
                tags.append(event)
        return tags


def test_late_joiner_first_video_frame_is_a_keyframe(server: Server, clip: Path) -> None:
    server.publish(clip, "cam1")
    server.wait_live("cam1")
    time.sleep(1.5)  # join in the middle of a GOP
    tags = read_flv_tags("127.0.0.1", server.http_port, "/live/cam1.flv", 30)
    assert tags[0].tag_type == flv.TAG_SCRIPT  # onMetaData first
    videos = [t for t in tags if t.tag_type == flv.TAG_VIDEO]
    header, first = videos[0], videos[1]
    assert flv.describe_tag(9, header.body).sequence_header
    info = flv.describe_tag(9, first.body)
    assert info.keyframe and not info.sequence_header
    times = [t.timestamp_ms for t in tags]
    assert times == sorted(times)
    # The viewer hung up: the server notices, forgets it and says so.
    end = time.monotonic() + 10
    while "closed by the client" not in server.log() and time.monotonic() < end:
        time.sleep(0.05)
    assert "closed by the client" in server.log()


def test_http_flv_unknown_stream_is_404_and_head_options_answer(server: Server) -> None:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(server.flv_url("nobody"), timeout=5)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as e:
        assert e.code == 404
        assert b"not live" in e.read()
    request = urllib.request.Request(server.flv_url("nobody"), method="OPTIONS")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_http_flv_headers_match_the_stream(server: Server, clip: Path) -> None:
    server.publish(clip, "cam1")
    server.wait_live("cam1")
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(b"GET /live/cam1.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 20:
            data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    headers = head.decode().lower()
    assert "content-type: video/x-flv" in headers
    assert "transfer-encoding: chunked" in headers
    assert "access-control-allow-origin: *" in headers
    size_line, rest = body.split(b"\r\n", 1)
    assert int(size_line, 16) == 13
    assert rest[:13] == flv.encode_header(has_audio=True, has_video=True)
