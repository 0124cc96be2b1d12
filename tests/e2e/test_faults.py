"""Fault injection end to end (issue 16 part 2): the real server, real
clients, and a fault that real deployments meet. For each fault, every
other client keeps working, every recording that should exist is valid
(ffprobe reads it, ``ffmpeg -v error`` decodes it clean), and the server's
log says what happened exactly once.

Faults that have an end-to-end test elsewhere are extended here rather than
repeated: ``test_record.py`` checks SIGTERM and ``kill -9`` with one
publisher and no viewers, ``test_gateway.py`` a gateway's pull cut at the
origin (``DELETE /api/clients``) while the origin stays up, and
``test_auth.py`` a hanging on-play hook.

The slow disk is tested both ways. End to end, the recorders write to a
FUSE file system (:mod:`tests.e2e.slowfs`, plain Python over ``/dev/fuse``:
root and FUSE are all it needs; ``dm-delay`` would need device-mapper, which
the test container lacks, and a cgroup ``io.max`` limit throttles writeback,
not the writes a recorder waits for) that can stop its writes and slow them.
In process (:func:`test_writer_that_falls_behind_fails_the_recording_not_the_stream`),
the real registry, recorders and bounded writer meet a disk whose every job
blocks until the writer's queue is full.
"""

from __future__ import annotations

import http.client
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import m3u8
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from zope.interface import implementer

from rtmpd.codec import flv
from rtmpd.codec.rtmp import events as ev
from rtmpd.interfaces import IMediaSink, IMediaSource
from rtmpd.media import Frame
from rtmpd.registry import StreamConfig, StreamRegistry
from rtmpd.services.recorder import RecorderSettings
from rtmpd.services.recorders import RECORDER_CLASSES
from rtmpd.services.recovery import recover
from rtmpd.services.writer import ThreadedDiskWriter
from tests.e2e import slowfs
from tests.e2e.conftest import WAIT_S, Server, start_server, stop_server
from tests.e2e.rtmpclient import RtmpTestClient
from tests.e2e.test_gateway import start_gateway
from tests.e2e.test_record import (
    ALL,
    check_all_outputs,
    decode_errors,
    dirs,
    duration,
    probe,
    wait_for,
)

# --------------------------------------------------------------------------- viewers


class Viewer(threading.Thread):
    """A viewer over ``protocol`` (``rtmp``, ``http`` or ``ws``) that reads
    until the server ends the play or :meth:`stop` is called, counting the
    media bytes it got and saying how the play ended (:attr:`end`):
    ``unpublish`` (RTMP UnpublishNotify), ``eof`` (the end of the HTTP
    body), ``ws 1000`` (a WebSocket close code), ``stopped`` (by the test) or
    ``error ...``."""

    def __init__(self, port: int, name: str, protocol: str) -> None:
        super().__init__(daemon=True, name=f"{protocol} viewer of {name}")
        self.port = port
        self.name = name
        self.protocol = protocol
        self.received = 0
        self.end: str | None = None
        self.ended = threading.Event()
        self._quit = threading.Event()

    def stop(self) -> None:
        self._quit.set()

    def wait_media(self, count: int = 50_000, deadline_s: float = WAIT_S) -> None:
        """Wait until at least ``count`` more bytes came."""
        target = self.received + count
        end = time.monotonic() + deadline_s
        while self.received < target:
            if self.end is not None or time.monotonic() > end:
                raise AssertionError(f"{self.name} by {self.protocol}: {self.received} bytes, "
                                     f"ended {self.end!r}")
            time.sleep(0.05)

    def run(self) -> None:
        try:
            {"rtmp": self._rtmp, "http": self._http, "ws": self._ws}[self.protocol]()
        except Exception as e:  # reported through .end
            self.end = f"error {e!r}"
        finally:
            self.ended.set()

    def _http(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_S)
        conn.request("GET", f"/live/{self.name}.flv")
        response = conn.getresponse()
        assert response.status == 200, response.status
        while not self._quit.is_set():
            data = response.read1(1 << 16)
            if not data:
                self.end = "eof"
                return
            self.received += len(data)
        conn.close()
        self.end = "stopped"

    def _ws(self) -> None:
        with connect(f"ws://127.0.0.1:{self.port}/live/{self.name}.flv",
                     open_timeout=WAIT_S, max_size=None) as ws:
            while not self._quit.is_set():
                try:
                    message = ws.recv(timeout=WAIT_S)
                except ConnectionClosed as e:
                    self.end = f"ws {e.rcvd.code if e.rcvd else None}"
                    return
                self.received += len(message)
        self.end = "stopped"

    def _rtmp(self) -> None:
        client = RtmpTestClient(self.port, timeout_s=WAIT_S)
        try:
            assert client.play(self.name) == "NetStream.Play.Start"
            while not self._quit.is_set():
                alive = client._pump()
                for event in client.events:
                    if isinstance(event, ev.MediaReceived):
                        self.received += len(event.payload)
                    elif (isinstance(event, ev.StatusReceived)
                          and event.code == "NetStream.Play.UnpublishNotify"):
                        self.end = "unpublish"
                        return
                client.events.clear()
                if not alive:
                    self.end = "closed"
                    return
            self.end = "stopped"
        finally:
            client.close()


def viewers_of(server: Server, name: str, protocols: tuple[str, ...]) -> list[Viewer]:
    started = []
    for protocol in protocols:
        port = server.rtmp_port if protocol == "rtmp" else server.http_port
        viewer = Viewer(port, name, protocol)
        viewer.start()
        started.append(viewer)
    return started


def wait_ended(viewers: list[Viewer], deadline_s: float = WAIT_S) -> dict[str, str | None]:
    for viewer in viewers:
        viewer.ended.wait(deadline_s)
    return {f"{v.protocol} {v.name} {i}": v.end for i, v in enumerate(viewers)}


def stop_viewers(viewers: list[Viewer]) -> None:
    for viewer in viewers:
        viewer.stop()
    for viewer in viewers:
        viewer.join(WAIT_S)


END_OF = {"rtmp": "unpublish", "http": "eof", "ws": "ws 1000"}


def wait_log(server: Server, text: str, count: int = 1, deadline_s: float = WAIT_S) -> None:
    wait_for(f"{text!r} was not logged {count} time(s)",
             lambda: server.log().count(text) >= count, server, deadline_s)


def assert_valid(path: Path) -> None:
    """ffprobe reads it with both tracks, ffmpeg decodes it without a word."""
    info = probe(path)
    streams = info["streams"]
    assert isinstance(streams, list) and streams, path
    assert decode_errors(path) == "", path


# --------------------------------------------------------------------------- publisher killed


def test_publisher_killed_mid_gop_ends_its_viewers_and_finalises_its_recordings(
    clip: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, *ALL)
    try:
        victim = server.publish(clip, "victim")
        server.publish(clip, "other")
        server.wait_live("victim")
        server.wait_live("other")
        viewers = viewers_of(server, "victim", ("rtmp", "http", "ws"))
        others = viewers_of(server, "other", ("rtmp", "http", "ws"))
        for viewer in viewers + others:
            viewer.wait_media()
        # The clip has a keyframe every second: 2.5 s in, ffmpeg is half a GOP
        # into one (its frames keep coming at the clip's pace from -re).
        time.sleep(2.5)
        victim.send_signal(signal.SIGKILL)
        ends = wait_ended(viewers)
        assert ends == {f"{p} victim {i}": END_OF[p] for i, p in enumerate(("rtmp", "http", "ws"))}
        for fmt in ("hls", "flv", "fmp4", "fmp4-separate"):
            wait_log(server, f"{fmt} recording of live/victim finalised")
        # Everyone else goes on: the other stream's viewers still get media.
        for viewer in others:
            viewer.wait_media()
        assert all(v.end is None for v in others)
        assert server.is_live("other") and not server.is_live("victim")
        stop_viewers(others)
    finally:
        stop_server(server)
    log = server.log()
    for fmt in ("hls", "flv", "fmp4", "fmp4-separate"):
        assert log.count(f"{fmt} recording of live/victim finalised") == 1, fmt
    assert log.count("unpublish live/victim: publisher rtmp") == 1, log[-3000:]
    assert "disconnected (closed by the peer)" in log
    for protocol in ("rtmp", "http-flv", "ws"):
        assert log.count(f"stop play live/victim by {protocol} ") == 1, protocol
    check_all_outputs(server.root, "victim", tmp_path, expect_s=None)


# --------------------------------------------------------------------------- viewer RST


def raw_http_viewer(server: Server, name: str, *, websocket: bool = False) -> socket.socket:
    """An HTTP-FLV (or WS-FLV) play on a bare socket with a small receive buffer."""
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=WAIT_S)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    upgrade = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") if websocket else ""
    sock.sendall(f"GET /live/{name}.flv HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n".encode())
    return sock


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST, not FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_viewer_reset_mid_frame_leaves_the_publisher_and_other_viewers_playing(
    clip: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, "--record", "flv")
    try:
        publisher = server.publish(clip, "rst")
        server.wait_live("rst")
        others = viewers_of(server, "rst", ("rtmp", "http", "ws"))
        for viewer in others:
            viewer.wait_media()
        victims = []
        for websocket in (False, False, True):
            sock = raw_http_viewer(server, "rst", websocket=websocket)
            # A small receive buffer and an odd count: the server is in the
            # middle of a frame (a keyframe of the GOP is ~30 KB) when the RST
            # comes, with more of it queued behind.
            got = 0
            while got < 20_001:
                data = sock.recv(20_001 - got)
                assert data, "the server closed the viewer before the reset"
                got += len(data)
            victims.append(sock.getsockname()[1])
            reset(sock)
        client = RtmpTestClient(server.rtmp_port, timeout_s=WAIT_S)
        assert client.play("rst") == "NetStream.Play.Start"
        client.media(20)  # mid-stream, more chunks on their way
        rtmp = client.sock
        victims.append(rtmp.getsockname()[1])
        reset(rtmp)
        for port in victims:
            wait_log(server, f"127.0.0.1:{port}: ")
        for viewer in others:
            viewer.wait_media(200_000)
        assert publisher.poll() is None and server.is_live("rst")
        assert all(v.end is None for v in others)
        stop_viewers(others)
        publisher.kill()
        wait_log(server, "flv recording of live/rst finalised")
    finally:
        stop_server(server)
    log = server.log()
    for port in victims:
        lines = [line for line in log.splitlines() if f"127.0.0.1:{port}: " in line]
        assert len(lines) == 1 and "stop play live/rst by " in lines[0], lines
    assert_valid(dirs(server.root, "rst")["flv"] / "index.flv")


# --------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/media`` on a 2 MiB tmpfs (root only)."""
    root = tmp_path / "media"
    root.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_full_disk_stops_each_recording_once_and_live_play_goes_on(
    clip: Path, tmp_path: Path, small_disk: Path
) -> None:
    server = start_server(tmp_path, "--record", "hls,flv,fmp4", "--hls-fragment", "1",
                          "--record-min-free", "0")
    try:
        publisher = server.publish(clip, "full")
        server.wait_live("full")
        viewers = viewers_of(server, "full", ("rtmp", "http", "ws"))
        paths = ("hls recording of live/full", "flv recording of live/full",
                 "fmp4 recording of live/full")
        for what in paths:
            wait_log(server, f"{what} failed:")
        # Live play goes on after every recorder gave up.
        for viewer in viewers:
            viewer.wait_media(200_000)
        assert publisher.poll() is None and all(v.end is None for v in viewers)
        stop_viewers(viewers)
        publisher.kill()
        time.sleep(1)
    finally:
        stop_server(server)
    log = server.log()
    for what in paths:
        lines = [line for line in log.splitlines() if f"{what} failed:" in line]
        assert len(lines) == 1, lines
        assert "No space left on device" in lines[0] or "ENOSPC" in lines[0], lines[0]
    d = dirs(server.root, "full")
    # The FLV is cut back to its last whole tag and finalised at once.
    assert not (d["flv"] / ".recording").exists()
    assert_valid(d["flv"] / "index.flv")
    assert duration(probe(d["flv"] / "index.flv")) > 1
    # HLS and fMP4 finalise what reached the disk at once too, as far as the
    # full disk lets them (closing a playlist needs a few hundred bytes, the
    # merge of stream_full.mp4 as much as the fragments): what does not fit
    # keeps its marker, says so once, and the next start repairs it.
    left = []
    for fmt in ("hls", "fmp4"):
        done = log.count(f"{fmt} recording of live/full: finalised what reached the disk")
        later = log.count(f"{fmt} recording of live/full: left unfinished for the next start")
        assert done + later == 1, (fmt, log[-3000:])
        assert (d[fmt] / ".recording").exists() == bool(later), fmt
        if later:
            left.append(fmt)
    playlist = m3u8.load(str(d["hls"] / "index.m3u8"))
    assert playlist.segments and playlist.is_endlist == ("hls" not in left)
    for segment in playlist.segments:
        assert decode_errors(d["hls"] / segment.uri) == "", segment.uri
    (d["flv"] / "index.flv").unlink()
    (tmp_path / "rtmpd.log").rename(tmp_path / "full.log")
    again = start_server(tmp_path, "--record", "hls,flv,fmp4", "--record-min-free", "0")
    try:
        wait_for("recovery never finished",
                 lambda: not list(again.root.rglob(".recording")), again)
    finally:
        stop_server(again)
    for fmt in ("hls", "fmp4"):
        assert again.log().count(f"recovered unfinished {fmt} recording") == (fmt in left), fmt
    assert m3u8.load(str(d["hls"] / "index.m3u8")).is_endlist
    assert decode_errors(d["hls"] / "index.m3u8") == ""
    # fMP4 writes a fragment a second: it may have failed before its first.
    if list(d["fmp4"].glob("*.m4s")):
        assert_valid(d["fmp4"] / "stream_full.mp4")
    else:
        assert "no samples to merge" in log + again.log()


# --------------------------------------------------------------------------- hook hangs


class StuckHook:
    """An on-publish hook that allows every publish but one stream name's,
    whose request it accepts and never answers."""

    def __init__(self, stuck: str) -> None:
        self.asked = threading.Event()
        release = self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if f'"{stuck}"'.encode() in body:
                    owner.asked.set()
                    release.wait(WAIT_S * 2)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/publish"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_hanging_publish_hook_refuses_that_publish_after_the_timeout_and_others_go_on(
    clip: Path, tmp_path: Path
) -> None:
    hook = StuckHook("stuck")
    server = start_server(tmp_path, "--on-publish", hook.url, "--hook-timeout", "2")
    try:
        server.publish(clip, "fine")
        server.wait_live("fine")
        viewers = viewers_of(server, "fine", ("rtmp", "http", "ws"))
        answer: dict[str, str] = {}

        def publish_stuck() -> None:
            client = RtmpTestClient(server.rtmp_port, timeout_s=WAIT_S)
            try:
                answer["code"] = client.publish("stuck")
            finally:
                client.close()

        stuck = threading.Thread(target=publish_stuck, daemon=True)
        stuck.start()
        assert hook.asked.wait(WAIT_S)
        # While the hook hangs, another publish goes live and is played.
        server.publish(clip, "second")
        server.wait_live("second")
        (late,) = viewers_of(server, "second", ("http",))
        late.wait_media()
        stuck.join(WAIT_S)
        assert answer == {"code": "NetStream.Publish.Rejected"}
        assert not server.is_live("stuck")
        for viewer in [*viewers, late]:
            viewer.wait_media()
            assert viewer.end is None
        stop_viewers([*viewers, late])
    finally:
        stop_server(server)
        hook.close()
    refused = [line for line in server.log().splitlines()
               if "live/stuck" in line and "on-publish hook timed out after 2 s" in line]
    assert len(refused) == 1, refused


# --------------------------------------------------------------------------- gateway upstream


def start_origin(tmp: Path, ports: tuple[int, int, int] | None = None) -> Server:
    return start_server(tmp, "--record", "none", ports=ports)


def kill9(server: Server) -> None:
    """SIGKILL the server, then its publishers (the other way round it would
    see them leave and start finalising)."""
    server.process.kill()
    server.process.wait()
    for child in server.children:
        child.kill()
        child.wait()


@pytest.mark.parametrize("comes_back", [False, True], ids=["stays-away", "comes-back"])
def test_gateway_viewers_outlive_a_killed_origin_until_the_upstream_timeout(
    clip: Path, tmp_path: Path, comes_back: bool
) -> None:
    (tmp_path / "origin-1").mkdir()
    (tmp_path / "origin-2").mkdir()
    origin = start_origin(tmp_path / "origin-1")
    edge = start_gateway(tmp_path, f"http://127.0.0.1:{origin.http_port}",
                         "--upstream-timeout", "6")
    again: Server | None = None
    try:
        origin.publish(clip, "up")
        origin.wait_live("up")
        viewers = [Viewer(edge.http_port, "up", p) for p in ("http", "ws")]
        for viewer in viewers:
            viewer.start()
        for viewer in viewers:
            viewer.wait_media()
        kill9(origin)
        if comes_back:
            ports = (origin.rtmp_port, origin.http_port, origin.web_port)
            again = start_origin(tmp_path / "origin-2", ports)
            again.publish(clip, "up")
            again.wait_live("up")
            for viewer in viewers:
                viewer.wait_media(200_000)
            assert all(v.end is None for v in viewers), [v.end for v in viewers]
            edge.wait_log("came back with a new publish")
            stop_viewers(viewers)
        else:
            time.sleep(3)
            # Within the timeout they are still connected, waiting.
            assert all(v.end is None for v in viewers), [v.end for v in viewers]
            ends = wait_ended(viewers)
            assert ends == {"http up 0": "eof", "ws up 1": "ws 1000"}
    finally:
        edge.stop()
        if again is not None:
            stop_server(again)
        if origin.process.poll() is None:
            stop_server(origin)
    log = edge.log()
    if comes_back:
        assert log.count("came back with a new publish") == 1, log[-3000:]
    else:
        timed_out = [line for line in log.splitlines()
                     if "timed out: no media" in line and "stop play" not in line]
        assert len(timed_out) == 1 and "unpublish live/up" in timed_out[0], log[-3000:]
        # Ended by --upstream-timeout (checked every quarter of it), not sooner.
        assert re.search(r"no media for [67] s", timed_out[0]), timed_out
        for protocol in ("http-flv", "ws"):
            assert log.count(f"stop play live/up by {protocol} ") == 1, protocol


# --------------------------------------------------------------------------- SIGTERM


@pytest.fixture(scope="module")
def clip60(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 s, 400 kbit/s: the publish outlasts the test and 50 viewers stay light."""
    out = tmp_path_factory.mktemp("clip60") / "clip60.flv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
         "-t", "60", "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "25",
         "-keyint_min", "25", "-sc_threshold", "0", "-b:v", "300k", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "64k", "-f", "flv", str(out)],
        check=True, timeout=300,
    )
    return out


def test_sigterm_with_fifty_viewers_and_every_recorder_exits_clean_with_valid_recordings(
    clip60: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, *ALL)
    try:
        publisher = server.publish(clip60, "many")
        server.wait_live("many")
        viewers = viewers_of(server, "many", ("rtmp", "http", "ws") * 16 + ("http", "ws"))
        assert len(viewers) == 50
        for viewer in viewers:
            viewer.wait_media(10_000)
        wait_for("no HLS segment yet",
                 lambda: (dirs(server.root, "many")["hls"] / "index.m3u8").exists(), server)
        time.sleep(2)
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=WAIT_S)
        ends = wait_ended(viewers)
        publisher.wait(timeout=WAIT_S)
    finally:
        stop_server(server)
    # twistd exits by the signal that stopped it, once the services have stopped.
    assert code in (0, -signal.SIGTERM), server.log()[-3000:]
    assert server.log().count("Server Shut Down.") == 1
    # Every viewer saw the server end its play, none an error.
    assert ends == {f"{v.protocol} many {i}": END_OF[v.protocol]
                    for i, v in enumerate(viewers)}
    log = server.log()
    for fmt in ("hls", "flv", "fmp4", "fmp4-separate"):
        assert log.count(f"{fmt} recording of live/many finalised") == 1, fmt
    assert log.count("shutting down: stopping 1 publisher(s)") == 1, log[-3000:]
    assert log.count("unpublish live/many: publisher rtmp") == 1
    assert log.count("stop play live/many by ") == 50
    check_all_outputs(server.root, "many", tmp_path, expect_s=None)


# --------------------------------------------------------------------------- kill -9


def test_kill_9_then_restart_repairs_every_unfinished_recording_once(
    clip60: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, *ALL)
    names = ("crash1", "crash2")
    for name in names:
        server.publish(clip60, name)
    for name in names:
        playlist = dirs(server.root, name)["hls"] / "index.m3u8"
        wait_for("no HLS segments yet",
                 lambda p=playlist: p.exists() and p.read_text().count(".ts") >= 2, server)
    # Every recorder of both streams has its files open (a marker each).
    wait_for("not every recording started",
             lambda: len(list(server.root.rglob(".recording"))) == 8, server)
    time.sleep(1)
    kill9(server)
    markers = list(server.root.rglob(".recording"))
    assert len(markers) == 8, markers

    (tmp_path / "rtmpd.log").rename(tmp_path / "crashed.log")
    again = start_server(tmp_path, *ALL)
    try:
        wait_for("recovery never finished",
                 lambda: not list(again.root.rglob(".recording")), again)
        # Live work goes on beside recovery and after it.
        again.publish(clip60, "after")
        again.wait_live("after")
    finally:
        stop_server(again)
    log = again.log()
    for name in names:
        for fmt in ("hls", "flv", "fmp4", "fmp4-separate"):
            lines = [line for line in log.splitlines()
                     if f"recovered unfinished {fmt} recording" in line and f"/{name}" in line]
            assert len(lines) == 1, (fmt, name, lines)
        check_all_outputs(again.root, name, tmp_path, expect_s=None)

    # A third start finds nothing left to repair and says nothing about it.
    (tmp_path / "rtmpd.log").rename(tmp_path / "second.log")
    third = start_server(tmp_path, *ALL)
    try:
        time.sleep(1)
    finally:
        stop_server(third)
    assert "recovered unfinished" not in third.log()


# --------------------------------------------------------------------------- slow disk


class SlowDisk:
    """:mod:`tests.e2e.slowfs` mounted on ``mountpoint`` over ``backing``."""

    def __init__(self, backing: Path, mountpoint: Path, write_delay_ms: int) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.slowfs", str(backing), str(mountpoint),
             "--write-delay-ms", str(write_delay_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=Path(__file__).parents[2],
        )  # fmt: skip
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def expect(self, line: str) -> None:
        """Wait for the file system to say ``line`` (what it says meanwhile is skipped)."""
        end = time.monotonic() + WAIT_S
        said = []
        while time.monotonic() < end:
            try:
                said.append(self.lines.get(timeout=0.1))
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if said[-1] == line:
                return
        raise AssertionError(f"slowfs never said {line!r}: {said}")

    def stop_writes(self) -> None:
        """Hold the next write and everything behind it; returns once one is held."""
        self.process.send_signal(signal.SIGUSR1)
        self.expect("holding")

    def resume_writes(self) -> None:
        self.process.send_signal(signal.SIGUSR2)
        self.expect("released")

    def unmount(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR2)
            self.process.terminate()
            self.process.wait(WAIT_S)
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)


def disk_usage(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def slow_disk(tmp_path: Path) -> Iterator[SlowDisk]:
    """``tmp_path/media`` on a FUSE file system over ``tmp_path/disk`` whose
    writes each take 20 ms and can be stopped altogether."""
    reason = slowfs.available()
    if reason is not None:
        pytest.skip(f"no FUSE mount here: {reason}")
    (tmp_path / "disk").mkdir()
    (tmp_path / "media").mkdir()
    disk = SlowDisk(tmp_path / "disk", tmp_path / "media", write_delay_ms=20)
    try:
        disk.expect("mounted")
    except AssertionError as e:
        disk.unmount()
        pytest.skip(f"no FUSE mount here: {e}")
    try:
        yield disk
    finally:
        disk.unmount()


def test_stalled_then_slow_disk_keeps_live_play_going_and_loses_no_recording(
    clip: Path, tmp_path: Path, slow_disk: SlowDisk
) -> None:
    """A real server over a real slow disk: the recorders' writes stop
    altogether (a disk that hangs: every write, open and ``stat`` on it waits
    behind the held one) and later go on slowly. Meanwhile viewers of every
    protocol keep getting the stream and a second publisher goes live, so
    nothing on the reactor thread waits for the disk; once the disk moves,
    the writer catches up and every recording is whole and valid, with no
    line about a lost recording."""
    server = start_server(tmp_path, *ALL)
    try:
        publisher = server.publish(clip, "slow")
        server.wait_live("slow")
        viewers = viewers_of(server, "slow", ("rtmp", "http", "ws"))
        for viewer in viewers:
            viewer.wait_media()
        wait_for("not every recording started",
                 lambda: len(list(slow_disk.backing.rglob(".recording"))) == 4, server)
        wait_for("no HLS segment yet", lambda: any(slow_disk.backing.rglob("*.ts")), server)
        slow_disk.stop_writes()
        on_disk = disk_usage(slow_disk.backing)
        # The disk has stopped; the stream goes on (~4 s of media each) ...
        for viewer in viewers:
            viewer.wait_media(500_000)
        assert disk_usage(slow_disk.backing) == on_disk
        # ... and a new publish goes live, its recordings waiting for the disk.
        server.publish(clip, "second")
        server.wait_live("second")
        (late,) = viewers_of(server, "second", ("http",))
        late.wait_media()
        assert server.is_live("slow") and publisher.poll() is None
        slow_disk.resume_writes()
        for viewer in [*viewers, late]:
            viewer.wait_media(200_000)
        assert all(v.end is None for v in [*viewers, late]), [v.end for v in viewers]
        stop_viewers([*viewers, late])
        for child in server.children:
            child.kill()
        for name in ("slow", "second"):
            for fmt in ("hls", "flv", "fmp4", "fmp4-separate"):
                wait_log(server, f"{fmt} recording of live/{name} finalised")
    finally:
        if slow_disk.process.poll() is None:
            slow_disk.process.send_signal(signal.SIGUSR2)  # never stop rtmpd on a held disk
        stop_server(server)
    assert "failed" not in server.log(), server.log()[-3000:]
    for name in ("slow", "second"):
        check_all_outputs(slow_disk.backing, name, tmp_path, expect_s=None)


class StalledDiskWriter(ThreadedDiskWriter):
    """The recorders' real bounded writer over a disk that stalls: every job
    waits at :attr:`gate` (a write blocked in the kernel) before it runs."""

    def __init__(self, call_from_thread: Callable[..., Any], **bounds: int) -> None:
        super().__init__(call_from_thread, **bounds)
        self.gate = threading.Event()

    def submit(
        self, job: Callable[[], Any], *, size: int = 0, quiet: bool = False
    ) -> defer.Deferred[Any]:
        def stalled() -> Any:
            self.gate.wait(WAIT_S)
            return job()

        return super().submit(stalled, size=size, quiet=quiet)


@implementer(IMediaSource)
class _Publisher:
    description = "test publisher"

    def stop_publishing(self, reason: str) -> None:
        pass


@implementer(IMediaSink)
class _Viewer:
    def __init__(self) -> None:
        self.frames = 0

    def on_frame(self, frame: object) -> None:
        self.frames += 1

    def on_stream_end(self, reason: str) -> None:
        pass


def clip_frames(path: Path) -> list[Frame]:
    reader = flv.FlvReader()
    reader.receive_data(path.read_bytes())
    reader.receive_data(b"")
    frames = []
    while not isinstance(event := reader.next_event(), (flv.NeedData, flv.EndOfStream)):
        if isinstance(event, flv.TagReceived):
            frames.append(Frame.from_tag(event.tag_type, event.timestamp_ms, event.body))
    return frames


def test_writer_that_falls_behind_fails_the_recording_not_the_stream(
    clip: Path, tmp_path: Path
) -> None:
    """In process (see the module docstring for why): the real registry,
    recorders and threaded writer, with a disk that stalls. The live viewer
    gets every frame while the writer's queue fills; each recording that
    cannot queue its next job is failed with one error line (counted in the
    metrics); once the disk moves again, what it had queued reaches the disk
    and is finalised at once into a valid recording, without waiting for the
    next start's recovery."""
    done: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
    writer = StalledDiskWriter(lambda f, *a: done.put((f, a)), max_bytes=300_000)
    writer.start()
    registry = StreamRegistry(Clock(), StreamConfig(merge_ms=0))
    settings = RecorderSettings(root=str(tmp_path), fragment_ms=1000, window=3)
    recorders = [RECORDER_CLASSES[fmt](registry, writer, settings)
                 for fmt in ("hls", "flv", "fmp4")]
    failures: list[str] = []
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for recorder in recorders:
            recorder.on_failure = failures.append
            recorder.startService()
        viewer = _Viewer()
        stream = registry.publish("live", "slow", _Publisher())
        stream.add_sink(viewer)
        frames = clip_frames(clip)
        for frame in frames:
            stream.push(frame)
        # The disk has taken nothing yet; the viewer has every frame.
        assert viewer.frames == len(frames)
        assert sorted(failures) == ["flv", "fmp4", "hls"], writer.pending_bytes
        registry.unpublish(stream, "publisher left")
        writer.gate.set()  # the disk moves again
        stopped = defer.gatherResults([defer.maybeDeferred(r.stopService) for r in recorders])
        writer.stop()
        assert writer._thread is not None
        writer._thread.join(WAIT_S)
        while not done.empty():
            f, args = done.get()
            f(*args)
        assert stopped.called
    finally:
        globalLogPublisher.removeObserver(events.append)
    errors = [formatEvent(e) for e in events if e["log_level"] is LogLevel.error]
    assert len(errors) == 3, errors
    for fmt in ("hls", "flv", "fmp4"):
        (line,) = [e for e in errors if e.startswith(f"{fmt} recording of live/slow failed")]
        assert "disk writer queue full" in line and "recording stopped" in line, line
    # Finalised at once, once the disk moved: what it had queued, each with
    # one line, nothing left for the next start's recovery.
    salvaged = [formatEvent(e) for e in events
                if "finalised what reached the disk" in formatEvent(e)]
    assert len(salvaged) == 3, salvaged
    assert not list(tmp_path.rglob(".recording"))
    assert recover(str(tmp_path)) == []
    d = dirs(tmp_path, "slow")
    assert_valid(d["flv"] / "index.flv")
    assert m3u8.load(str(d["hls"] / "index.m3u8")).is_endlist
    assert decode_errors(d["hls"] / "index.m3u8") == ""
    # fMP4 writes a fragment a second: it may have failed before its first.
    (fmp4_line,) = [line for line in salvaged if line.startswith("fmp4 recording")]
    if list(d["fmp4"].glob("*.m4s")):
        assert_valid(d["fmp4"] / "stream_full.mp4")
    else:
        assert "no samples to merge" in fmp4_line
