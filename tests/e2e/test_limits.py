"""Limits that hold against a running server: clients that flood, stall or
trickle are dropped with bounded memory, every limit refuses clearly while
the server goes on serving others, takeover lets a reconnecting encoder in,
and the admin endpoints need their token."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import struct
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rtmpd.codec import flv
from rtmpd.codec.rtmp import chunk
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp import messages as msg
from tests.e2e.conftest import WAIT_S, Server, head_status, start_server, stop_server
from tests.e2e.hookserver import hook_server
from tests.e2e.rtmpclient import RtmpTestClient

#: Memory a flooding client may cost the server before it is dropped: the
#: bounds are a few MB; this leaves room for the allocator's own slack.
RSS_GROWTH_LIMIT_KIB = 64 * 1024


def ws_handshake(port: int, path: str) -> socket.socket:
    """A raw WebSocket connection (so the test controls what it reads)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    # A small receive buffer: the server's replies back up sooner.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        data = sock.recv(4096)
        assert data, "closed during the WebSocket handshake"
        answer += data
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payload under 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def flood_until_dropped(sock: socket.socket, message: bytes, deadline_s: float) -> bool:
    """Send ``message`` over and over, never reading; True once the server
    has cut the connection."""
    batch = message * max(64, 65536 // len(message))
    end = time.monotonic() + deadline_s
    sock.settimeout(1.0)
    while time.monotonic() < end:
        try:
            sock.sendall(batch)
        except (BrokenPipeError, ConnectionResetError):
            return True
        except TimeoutError:
            # Our send buffer is full: the server stopped reading us. Has it
            # closed the connection?
            try:
                sock.setblocking(False)
                while sock.recv(1 << 20):
                    pass
                return True  # EOF
            except BlockingIOError:
                pass
            except ConnectionResetError:
                return True
            finally:
                sock.settimeout(1.0)
    return False


def assert_flood_dropped(server: Server, sock: socket.socket, message: bytes) -> None:
    """Flooding ``message`` without reading gets the client dropped, the
    server's memory grows by a bounded amount, and the stream "other" is
    still served."""
    before = server.rss_kib()
    try:
        assert flood_until_dropped(sock, message, WAIT_S)
    finally:
        sock.close()
    assert server.rss_kib() - before < RSS_GROWTH_LIMIT_KIB
    assert "reads nothing" in server.log()
    assert head_status(server, "other") == 200


@pytest.fixture
def server_defaults(tmp_path: Path) -> Server:
    srv = start_server(tmp_path)
    yield srv  # type: ignore[misc]
    stop_server(srv)


@pytest.fixture
def small_server(tmp_path: Path) -> Server:
    srv = start_server(tmp_path, "--publisher-timeout", "2", "--header-timeout", "2")
    yield srv  # type: ignore[misc]
    stop_server(srv)


def test_ws_ping_flood_that_reads_no_pongs_is_dropped_with_bounded_memory(
    small_server: Server, clip: Path
) -> None:
    server = small_server
    server.publish(clip, "other")
    server.wait_live("other")
    sock = ws_handshake(server.http_port, "/live/flood")
    assert_flood_dropped(server, sock, ws_frame(0x9, b"p" * 125))


def test_rtmp_ping_request_flood_is_dropped_with_bounded_memory(
    server_defaults: Server, clip: Path
) -> None:
    # The default publisher timeout (30 s): the output bound must act first.
    server = server_defaults
    server.publish(clip, "other")
    server.wait_live("other")
    client = RtmpTestClient(server.rtmp_port)
    assert client.publish("flooder") == "NetStream.Publish.Start"
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ping = chunk.encode_message(
        chunk_size=128, chunk_stream_id=2, type_id=msg.USER_CONTROL, stream_id=0,
        timestamp_ms=0, payload=msg.encode_user_control(msg.PING_REQUEST, 1234),
    )
    assert_flood_dropped(server, client.sock, ping)


def test_ws_publisher_that_sends_only_the_flv_header_loses_its_name(
    small_server: Server,
) -> None:
    server = small_server
    url = f"ws://127.0.0.1:{server.http_port}/live/idle"
    with connect(url, open_timeout=WAIT_S) as ws:
        ws.send(flv.encode_header(has_audio=True, has_video=True))
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=WAIT_S)
    # Dropped by the publisher timeout, which counts media (an FLV header
    # is none), not by any other timeout.
    assert "publish live/idle by ws" in server.log()
    assert "timed out: no media" in server.log()
    # The name is free again: a new publisher gets it.
    with connect(url, open_timeout=WAIT_S) as ws:
        ws.send(flv.encode_header(has_audio=True, has_video=True))
        time.sleep(0.3)
        assert "refused" not in server.log().split("no media")[-1]


def test_http_client_trickling_its_headers_is_closed(small_server: Server) -> None:
    server = small_server
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=WAIT_S)
    closed = False
    try:
        for byte in b"GET /live/x.flv HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.5)
            try:
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
                break
    finally:
        sock.close()
    assert closed, "a client trickling header bytes was never closed"
    # Closed by --header-timeout, not by Twisted's idle timeout (which each
    # byte restarts).
    assert "no complete request headers within 2 s" in server.log()


def test_connection_limits_refuse_the_next_client_and_keep_serving(
    tmp_path: Path, clip: Path
) -> None:
    server = start_server(tmp_path, "--max-connections", "3")
    try:
        publisher = server.publish(clip, "cam")
        server.wait_live("cam")  # the publisher is one connection
        time.sleep(0.5)  # the probes of wait_live have closed
        held = [socket.create_connection(("127.0.0.1", server.rtmp_port)) for _ in range(2)]
        time.sleep(0.3)
        # Full: an RTMP client is closed at once, an HTTP one gets a 503.
        extra = socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=WAIT_S)
        assert extra.recv(16) == b""  # closed at once
        extra.close()
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=WAIT_S)
        conn.request("HEAD", "/live/cam.flv")
        assert conn.getresponse().status == 503
        conn.close()
        for sock in held:
            sock.close()
        time.sleep(0.3)
        # Room again: served, and the publisher never noticed.
        assert head_status(server, "cam") == 200
        assert publisher.poll() is None
        assert "--max-connections" in server.log()
    finally:
        stop_server(server)


def test_connections_per_address_are_limited(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--max-connections-per-ip", "2")
    try:
        # Let the server see the start-up probe connections close.
        time.sleep(0.5)
        held = [socket.create_connection(("127.0.0.1", server.rtmp_port)) for _ in range(2)]
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", server.http_port), timeout=WAIT_S)
        extra.sendall(b"HEAD /live/x.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(4096).startswith(b"HTTP/1.1 503")
        extra.close()
        held.pop().close()
        time.sleep(0.3)
        assert head_status(server, "x") == 404
        for sock in held:
            sock.close()
        assert "--max-connections-per-ip" in server.log()
    finally:
        stop_server(server)


def test_stream_and_viewer_limits_refuse_on_every_protocol(tmp_path: Path, clip: Path) -> None:
    server = start_server(tmp_path, "--max-streams", "1", "--max-viewers-per-stream", "1")
    try:
        server.publish(clip, "cam")
        server.wait_live("cam")
        second = RtmpTestClient(server.rtmp_port)
        assert second.publish("cam2") == "NetStream.Publish.Rejected"
        second.close()
        first = RtmpTestClient(server.rtmp_port)
        assert first.play("cam") == "NetStream.Play.Start"
        assert first.media(2)
        # The one viewer place is taken: refused on every protocol.
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=WAIT_S)
        conn.request("GET", "/live/cam.flv")
        response = conn.getresponse()
        assert response.status == 503
        assert b"--max-viewers-per-stream" in response.read()
        conn.close()
        with connect(f"ws://127.0.0.1:{server.http_port}/live/cam.flv",
                     open_timeout=WAIT_S) as ws, pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
        other = RtmpTestClient(server.rtmp_port)
        assert other.play("cam") == "NetStream.Play.Failed"
        other.close()
        # The viewer that got in is still being served.
        assert first.media(40)
        first.close()
        assert "--max-streams" in server.log()
    finally:
        stop_server(server)


def test_takeover_lets_a_reconnecting_encoder_in_and_fires_publish_done(
    tmp_path: Path, clip: Path
) -> None:
    with hook_server() as hooks:
        server = start_server(tmp_path, "--takeover", "--on-publish-done", hooks.url("/done"))
        try:
            stalled = server.publish(clip, "cam")
            server.wait_live("cam")
            watcher = RtmpTestClient(server.rtmp_port)
            assert watcher.play("cam") == "NetStream.Play.Start"
            watcher.media(5)
            # The encoder's network stops without a close: TCP stays open,
            # nothing more arrives.
            os.kill(stalled.pid, signal.SIGSTOP)
            time.sleep(0.5)
            seen = sum(isinstance(e, ev.MediaReceived) for e in watcher.events)
            try:
                fresh = server.publish(clip, "cam")
                deadline = time.monotonic() + WAIT_S
                while "replaced by a new publisher" not in server.log():
                    assert time.monotonic() < deadline, server.log()[-2000:]
                    time.sleep(0.1)
                done = hooks.wait_for("/done")
                assert done[0]["action"] == "publish" and done[0]["stream"] == "cam"
                assert "replaced" in done[0]["reason"]
                # The new encoder holds the name and streams.
                time.sleep(1)
                assert fresh.poll() is None
                assert head_status(server, "cam") == 200
                client = RtmpTestClient(server.rtmp_port)
                assert client.play("cam") == "NetStream.Play.Start"
                assert client.media(10)
                client.close()
                # The viewer from before the drop stayed on and gets the new
                # encoder's media, in the same stream.
                assert len(watcher.media(seen + 50)) == seen + 50
                assert not any(isinstance(e, ev.StatusReceived)
                               and e.code == "NetStream.Play.UnpublishNotify"
                               for e in watcher.events)
                watcher.close()
            finally:
                os.kill(stalled.pid, signal.SIGCONT)
        finally:
            stop_server(server)


def _get(server: Server, path: str, token: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.web_port, timeout=WAIT_S)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_api_and_metrics_need_the_token(tmp_path: Path, clip: Path) -> None:
    server = start_server(tmp_path, "--api-token", "s3cret-token")
    try:
        server.publish(clip, "cam")
        server.wait_live("cam")
        for path in ("/api/streams", "/metrics"):
            assert _get(server, path, None)[0] == 401
            assert _get(server, path, "wrong")[0] == 401
        status, body = _get(server, "/api/streams", "s3cret-token")
        assert status == 200
        streams = json.loads(body)["streams"]
        assert [(s["app"], s["name"]) for s in streams] == [("live", "cam")]
        # Live from the publish on; media follows a moment later.
        deadline = time.monotonic() + WAIT_S
        while True:
            status, body = _get(server, "/metrics", "s3cret-token")
            assert status == 200
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            assert families["rtmpd_streams"].samples[0].value == 1
            if any(s.value > 0 for s in families["rtmpd_bytes_in"].samples):
                break
            assert time.monotonic() < deadline, "no bytes in after the stream went live"
            time.sleep(0.2)
        assert "s3cret-token" not in server.log()
    finally:
        stop_server(server)


def test_ping_payload_helper_encodes_what_the_server_parses() -> None:
    """The flood above sends real Ping Requests (event type 6)."""
    payload = msg.encode_user_control(msg.PING_REQUEST, 1234)
    assert struct.unpack(">HI", payload) == (msg.PING_REQUEST, 1234)
