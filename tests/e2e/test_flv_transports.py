"""FLV over HTTP and WebSocket in both directions: ffmpeg POST publish and a
WebSocket publisher, played back over RTMP, HTTP-FLV and WS-FLV and decoded
clean; bad input on both."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rtmpd.codec import flv
from tests.e2e.conftest import WAIT_S, Server, run


def ws_url(server: Server, path: str) -> str:
    return f"ws://127.0.0.1:{server.http_port}{path}"


def record_ws(server: Server, name: str, out: Path, seconds: float) -> None:
    """Play over WS-FLV for ``seconds`` and write the bytes to an .flv file."""
    data = bytearray()
    with connect(ws_url(server, f"/live/{name}.flv"), open_timeout=WAIT_S,
                 max_size=None) as ws:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            message = ws.recv(timeout=WAIT_S)
            assert isinstance(message, bytes)
            data += message
    out.write_bytes(bytes(data))


def check_clean(path_or_url: str, seconds: int = 2) -> set[str]:
    """Decode with ffmpeg (no errors allowed) and return the codecs ffprobe sees."""
    result = run(["ffmpeg", "-v", "error", "-i", path_or_url, "-t", str(seconds),
                  "-f", "null", "-"])
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    probe = run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", path_or_url])
    assert probe.returncode == 0, probe.stderr
    return {s["codec_name"] for s in json.loads(probe.stdout)["streams"]}


def check_every_protocol(server: Server, name: str, tmp_path: Path) -> None:
    assert check_clean(server.rtmp_url(name)) == {"h264", "aac"}
    assert check_clean(server.flv_url(name)) == {"h264", "aac"}
    out = tmp_path / f"{name}-ws.flv"
    record_ws(server, name, out, 3)
    assert check_clean(str(out)) == {"h264", "aac"}


def post_publish(server: Server, clip: Path, name: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
         "-f", "flv", "-method", "POST", f"http://127.0.0.1:{server.http_port}/live/{name}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    server.children.append(proc)
    return proc


def test_ffmpeg_http_post_publish_plays_on_every_protocol(
    server: Server, clip: Path, tmp_path: Path
) -> None:
    post_publish(server, clip, "posted")
    server.wait_live("posted")
    check_every_protocol(server, "posted", tmp_path)


def chunks_of(data: bytes, sizes: tuple[int, ...]) -> Iterator[bytes]:
    """``data`` cut into pieces of the given sizes, cycling."""
    offset, i = 0, 0
    while offset < len(data):
        size = sizes[i % len(sizes)]
        yield data[offset : offset + size]
        offset += size
        i += 1


def paced_tags(data: bytes, loops: int) -> Iterator[tuple[int, bytes]]:
    """(timestamp, raw bytes) of each tag of an FLV file played ``loops``
    times with continuous timestamps; the FLV header first."""
    reader = flv.FlvReader()
    reader.receive_data(data)
    reader.receive_data(b"")
    tags = []
    while True:
        event = reader.next_event()
        if isinstance(event, flv.TagReceived):
            tags.append(event)
        elif not isinstance(event, flv.FlvHeaderReceived):
            break
    yield 0, data[:13]
    length = max(t.timestamp_ms for t in tags) + 40
    for loop in range(loops):
        for tag in tags:
            if loop and tag.tag_type == flv.TAG_SCRIPT:
                continue
            ts = tag.timestamp_ms + loop * length
            yield ts, flv.encode_tag(tag.tag_type, ts, tag.body)


class WsPublisher(threading.Thread):
    """Publishes an FLV file over WebSocket in real time, in odd-sized
    binary messages, from a thread so the test can play meanwhile."""

    def __init__(self, url: str, data: bytes, loops: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.data = data
        self.loops = loops
        self.subprotocol: str | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with connect(self.url, open_timeout=WAIT_S,
                         subprotocols=["post"]) as ws:  # type: ignore[list-item]
                self.subprotocol = ws.subprotocol
                start = time.monotonic()
                for ts, raw in paced_tags(self.data, self.loops):
                    delay = ts / 1000 - (time.monotonic() - start)
                    if delay > 0:
                        time.sleep(delay)
                    for piece in chunks_of(raw, (1, 7, 1000, 333, 4096)):
                        ws.send(piece)
        except BaseException as e:
            self.error = e
        finally:
            self.done.set()


def test_websocket_publisher_with_odd_sized_messages_plays_everywhere(
    server: Server, clip: Path, tmp_path: Path
) -> None:
    publisher = WsPublisher(ws_url(server, "/live/wspub"), clip.read_bytes(), loops=4)
    publisher.start()
    server.wait_live("wspub")
    check_every_protocol(server, "wspub", tmp_path)
    assert publisher.subprotocol == "post"
    publisher.done.wait(WAIT_S * 2)
    assert publisher.error is None, publisher.error
    # The publisher closed: the name is free again.
    end = time.monotonic() + WAIT_S
    while server.is_live("wspub") and time.monotonic() < end:
        time.sleep(0.05)
    assert not server.is_live("wspub")


def test_ws_viewers_get_close_1000_when_the_publisher_ends(server: Server, clip: Path) -> None:
    publisher = post_publish(server, clip, "ending")
    server.wait_live("ending")
    with connect(ws_url(server, "/live/ending.flv"), open_timeout=WAIT_S, max_size=None) as ws:
        first = ws.recv(timeout=WAIT_S)
        assert isinstance(first, bytes) and first[:3] == b"FLV"
        publisher.kill()
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(timeout=WAIT_S)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000


def test_ws_play_of_unknown_stream_closes_4404(server: Server) -> None:
    with (
        connect(ws_url(server, "/live/nobody.flv"), open_timeout=WAIT_S) as ws,
        pytest.raises(ConnectionClosed) as info,
    ):
        ws.recv(timeout=WAIT_S)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4404
    assert "not live" in info.value.rcvd.reason


def test_ws_text_message_closes_1003(server: Server) -> None:
    with connect(ws_url(server, "/live/texty"), open_timeout=WAIT_S) as ws:
        ws.send("hello")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=WAIT_S)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1003


def test_ws_message_over_the_limit_closes_1009(server: Server) -> None:
    from rtmpd.protocols.flvws import MAX_MESSAGE_BYTES

    with (
        connect(ws_url(server, "/live/huge"), open_timeout=WAIT_S) as ws,
        pytest.raises(ConnectionClosed) as info,
    ):
        ws.send(b"\x00" * (MAX_MESSAGE_BYTES + 1))
        ws.recv(timeout=WAIT_S)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def raw_post(server: Server, name: str, body: bytes, *, chunked: bool = True) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=WAIT_S)
    conn.request("POST", f"/live/{name}", body=iter([body]) if chunked else body,
                 encode_chunked=chunked)
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, text


def test_post_body_that_is_not_flv_is_400(server: Server) -> None:
    status, text = raw_post(server, "junk", b"this is not an flv stream at all" * 10)
    assert status == 400 and "not an FLV" in text
    assert not server.is_live("junk")


def test_post_to_a_busy_name_is_409_and_bad_name_400(server: Server, clip: Path) -> None:
    post_publish(server, clip, "busy")
    server.wait_live("busy")
    status, _ = raw_post(server, "busy", clip.read_bytes()[:1000])
    assert status == 409
    status, _ = raw_post(server, "a.b", clip.read_bytes()[:1000])
    assert status == 400


def test_truncated_post_body_ends_the_stream_cleanly(server: Server, clip: Path) -> None:
    data = clip.read_bytes()
    status, text = raw_post(server, "short", data[: len(data) // 3 + 17], chunked=False)
    assert status == 200 and "ended early" in text
    assert not server.is_live("short")


def test_post_with_a_16_mb_tag_is_cut_off(server: Server) -> None:
    header = flv.encode_header(has_audio=False, has_video=True)
    tag = bytes([9]) + (0xFFFFFF).to_bytes(3, "big") + b"\x00" * 7
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=WAIT_S) as sock:
        sock.sendall(b"POST /live/bigtag HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
                     + header + tag + b"\x00" * 1000)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    assert reply.startswith(b"HTTP/1.1 413")
    log = server.log()
    assert "MAX_TAG_SIZE" in log or "exceeds" in log, log[-2000:]
    assert not server.is_live("bigtag")
