"""``twistd flvgateway`` end to end: a real rtmpd origin fed by ffmpeg, real
gateways (one, and two cascaded) in front of it, real players (ffmpeg over
HTTP-FLV, a WebSocket client over WS-FLV) whose media must decode clean."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rtmpd.codec import flv
from tests.e2e.conftest import (
    VENV_BIN,
    WAIT_S,
    Server,
    free_ports,
    run,
    start_server,
    stop_server,
    wait_for_port,
)
from tests.e2e.test_flv_transports import check_clean, record_ws


@dataclass
class Gateway:
    """A running ``twistd -n flvgateway``."""

    http_port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    stopped: bool = field(default=False)

    def flv_url(self, name: str, app: str = "live") -> str:
        return f"http://127.0.0.1:{self.http_port}/{app}/{name}.flv"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=WAIT_S) as response:
            return json.load(response)

    def wait_log(self, text: str, deadline_s: float = WAIT_S) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if text in self.log():
                return
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared in the gateway log:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("flvgateway did not stop on SIGTERM") from None
        assert "Traceback" not in self.log(), self.log()[-5000:]


def start_gateway(tmp: Path, upstream: str, *extra: str, port: int | None = None) -> Gateway:
    (port,) = (port,) if port is not None else free_ports(1)
    log_path = tmp / f"gateway-{port}.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", "flvgateway",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--upstream", upstream, *extra],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp,
        )
    gateway = Gateway(port, log_path, process)
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise RuntimeError("flvgateway did not start:\n" + gateway.log()) from None
    return gateway


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path, "--record", "none")
    yield srv
    stop_server(srv)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[Gateway]]:
    """Gateways a test starts (appended to the list), stopped after it."""
    started: list[Gateway] = []
    yield started
    for gateway in started:
        gateway.stop()


def origin_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def status_of(port: int, path: str, method: str = "GET") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    finally:
        conn.close()


def origin_viewers(server: Server, name: str) -> int:
    """Viewers of the stream at the origin, from its /api."""
    url = f"http://127.0.0.1:{server.web_port}/api/streams/live/{name}"
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        return int(json.load(response)["viewers_total"])


def test_ffmpeg_plays_through_one_and_two_cascaded_gateways_over_http_and_ws(
    origin: Server, gateways: list[Gateway], clip: Path, tmp_path: Path
) -> None:
    origin.publish(clip, "cascade")
    origin.wait_live("cascade")
    edge = start_gateway(tmp_path, origin_url(origin))
    gateways.append(edge)
    second = start_gateway(tmp_path, edge.url)
    gateways.append(second)
    for gateway in (edge, second):
        assert check_clean(gateway.flv_url("cascade"), seconds=3) == {"h264", "aac"}
        out = tmp_path / f"ws-{gateway.http_port}.flv"
        record_ws(gateway, "cascade", out, 3)  # type: ignore[arg-type]
        assert check_clean(str(out)) == {"h264", "aac"}
    # The second gateway's stream came from the first, not from the origin.
    assert f"publish live/cascade by upstream 127.0.0.1:{edge.http_port}" in second.log()


class RawViewer:
    """An HTTP-FLV viewer on a plain socket, reading as fast as data comes."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.data = bytearray()

    def read_some(self) -> None:
        self.data += self.sock.recv(1 << 16)

    def close(self) -> None:
        self.sock.close()


def test_fifty_gateway_viewers_make_one_upstream_connection(
    origin: Server, gateways: list[Gateway], clip: Path, tmp_path: Path
) -> None:
    origin.publish(clip, "crowd")
    origin.wait_live("crowd")
    edge = start_gateway(tmp_path, origin_url(origin))
    gateways.append(edge)
    viewers = [RawViewer(edge.http_port, "/live/crowd.flv") for _ in range(50)]
    try:
        for viewer in viewers:
            while b"FLV" not in viewer.data:
                viewer.read_some()
        detail = edge.api("/api/streams/live/crowd")
        assert isinstance(detail, dict)
        assert detail["viewers_total"] == 50
        assert detail["publisher"]["protocol"] == "upstream"
        assert detail["upstream"]["state"] == "streaming"
        assert detail["upstream"]["connects"] == 1
        assert origin_viewers(origin, "crowd") == 1
        assert origin.log().count("play live/crowd by http-flv") == 1
    finally:
        for viewer in viewers:
            viewer.close()


def read_for(url: str, seconds: float, out: Path) -> None:
    """One HTTP-FLV GET, its body written to ``out`` for ``seconds``."""
    end = time.monotonic() + seconds
    with urllib.request.urlopen(url, timeout=WAIT_S) as response, open(out, "wb") as f:
        while time.monotonic() < end:
            chunk = response.read1(1 << 16)
            if not chunk:
                raise AssertionError("the gateway ended the viewer's response")
            f.write(chunk)


def flv_tags(path: Path) -> list[flv.TagReceived]:
    """Every tag of an FLV file; the reader refuses a second header."""
    reader = flv.FlvReader()
    reader.receive_data(path.read_bytes())
    tags = []
    while True:
        event = reader.next_event()
        if isinstance(event, flv.TagReceived):
            tags.append(event)
        elif event is flv.NEED_DATA or isinstance(event, flv.EndOfStream):
            return tags


def assert_one_clean_flv(path: Path) -> list[flv.TagReceived]:
    data = path.read_bytes()
    assert data[:3] == b"FLV"
    tags = flv_tags(path)
    # One header: every byte after it parses as tags (a second header would
    # not), timestamps never go back per track.
    last: dict[int, int] = {}
    for tag in tags:
        if tag.tag_type == flv.TAG_SCRIPT:
            continue
        assert tag.timestamp_ms >= last.get(tag.tag_type, 0), (tag.tag_type, tag.timestamp_ms)
        last[tag.tag_type] = tag.timestamp_ms
    result = run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"])
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    return tags


def test_publisher_restart_keeps_one_gateway_connection_and_one_flv_stream(
    origin: Server, gateways: list[Gateway], clip: Path, tmp_path: Path
) -> None:
    publisher = origin.publish(clip, "again")
    origin.wait_live("again")
    edge = start_gateway(tmp_path, origin_url(origin))
    gateways.append(edge)
    out = tmp_path / "across.flv"
    reader = threading.Thread(target=read_for, args=(edge.flv_url("again"), 12, out))
    reader.start()
    time.sleep(4)
    publisher.kill()
    edge.wait_log("pull live/again: the upstream ended the stream")
    time.sleep(1)
    origin.publish(clip, "again")
    edge.wait_log("came back with a new publish")
    reader.join(timeout=WAIT_S * 2)
    tags = assert_one_clean_flv(out)
    video = [t.timestamp_ms for t in tags if t.tag_type == flv.TAG_VIDEO]
    # Media from before and after the gap: the viewer's timeline goes past
    # the first publish's few seconds.
    assert video and video[-1] - video[0] > 5000
    # One play, ended only by the client itself when it had read enough.
    log = edge.log()
    assert log.count("] play live/again by http-flv") == 1
    stops = [line for line in log.splitlines() if "stop play live/again" in line]
    assert len(stops) == 1 and "closed by the client" in stops[0], stops


def test_unknown_streams_are_404_on_head_get_and_ws(
    origin: Server, gateways: list[Gateway], clip: Path, tmp_path: Path
) -> None:
    edge = start_gateway(tmp_path, origin_url(origin))
    gateways.append(edge)
    assert status_of(edge.http_port, "/live/nobody.flv", "HEAD") == 404
    assert status_of(edge.http_port, "/live/nobody.flv") == 404
    with (
        connect(f"ws://127.0.0.1:{edge.http_port}/live/nobody.flv", open_timeout=WAIT_S) as ws,
        pytest.raises(ConnectionClosed) as info,
    ):
        ws.recv(timeout=WAIT_S)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4404
    assert status_of(edge.http_port, "/live/bad%20name.flv") == 400
    origin.publish(clip, "there")
    origin.wait_live("there")
    assert status_of(edge.http_port, "/live/there.flv", "HEAD") == 200
    # Publishing to a gateway is refused.
    conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=WAIT_S)
    conn.request("POST", "/live/pushed", body=flv.encode_header(has_audio=True, has_video=True))
    assert conn.getresponse().status == 403
    conn.close()


def test_an_unreachable_upstream_is_502_and_a_full_stream_503(
    origin: Server, gateways: list[Gateway], clip: Path, tmp_path: Path
) -> None:
    (closed_port,) = free_ports(1)
    nowhere = start_gateway(tmp_path, f"http://127.0.0.1:{closed_port}")
    gateways.append(nowhere)
    assert status_of(nowhere.http_port, "/live/any.flv") == 502
    assert "Connection refused" in nowhere.log()

    origin.publish(clip, "full")
    origin.wait_live("full")
    edge = start_gateway(tmp_path, origin_url(origin), "--max-viewers-per-stream", "1")
    gateways.append(edge)
    first = RawViewer(edge.http_port, "/live/full.flv")
    try:
        while b"FLV" not in first.data:
            first.read_some()
        assert status_of(edge.http_port, "/live/full.flv") == 503
    finally:
        first.close()


def test_last_viewer_leaving_closes_the_upstream_after_the_linger(
    origin: Server, gateways: list[Gateway], clip: Path, tmp_path: Path
) -> None:
    origin.publish(clip, "brief")
    origin.wait_live("brief")
    edge = start_gateway(tmp_path, origin_url(origin), "--linger", "1", "--stats-interval", "1")
    gateways.append(edge)
    viewer = RawViewer(edge.http_port, "/live/brief.flv")
    while b"FLV" not in viewer.data:
        viewer.read_some()
    edge.wait_log("gateway stats: 1 streams (1 streaming")
    viewer.close()
    edge.wait_log("unpublish live/brief: publisher upstream")
    assert "no viewers for 1 s" in edge.log()
    end = time.monotonic() + WAIT_S
    while origin_viewers(origin, "brief") != 0 and time.monotonic() < end:
        time.sleep(0.1)
    assert origin_viewers(origin, "brief") == 0
    with urllib.request.urlopen(edge.url + "/metrics", timeout=WAIT_S) as response:
        metrics = response.read().decode()
    assert 'rtmpd_upstream_streams{state="streaming"} 0.0' in metrics
    assert "rtmpd_upstream_connects_total 1.0" in metrics


def test_a_broken_upstream_connection_resumes_the_same_publish_without_repeats(
    origin: Server, gateways: list[Gateway], clip: Path, tmp_path: Path
) -> None:
    origin.publish(clip, "blip")
    origin.wait_live("blip")
    edge = start_gateway(tmp_path, origin_url(origin))
    gateways.append(edge)
    out = tmp_path / "blip.flv"
    reader = threading.Thread(target=read_for, args=(edge.flv_url("blip"), 8, out))
    reader.start()
    edge.wait_log("publish live/blip by upstream")
    time.sleep(2)
    # Cut the gateway's pull at the origin (DELETE /api/clients/{id}): the
    # stream goes on there, and the gateway finds the same publish again.
    api = f"http://127.0.0.1:{origin.web_port}/api/clients"
    with urllib.request.urlopen(api, timeout=WAIT_S) as response:
        clients = json.load(response)["clients"]
    (pull,) = [c for c in clients if c["protocol"] == "http"]
    kick = urllib.request.Request(f"{api}/{pull['id']}", method="DELETE")
    with urllib.request.urlopen(kick, timeout=WAIT_S) as response:
        assert response.status == 204
    # The origin's stop line for that play says why it ended.
    stop_line = re.compile(r"stop play live/blip by http-flv \S+: (.*?) \(\d+ bytes sent")
    found = origin.wait_log(stop_line)
    assert found.group(1) == "closed through the API", origin.log()[-2000:]
    edge.wait_log("the upstream is back (the same publish)")
    reader.join(timeout=WAIT_S * 2)
    tags = assert_one_clean_flv(out)
    # Nothing twice: the GOP the origin replays to the new pull is skipped.
    for kind in (flv.TAG_VIDEO, flv.TAG_AUDIO):
        times = [t.timestamp_ms for t in tags if t.tag_type == kind and t.body[1:2] != b"\x00"]
        assert times == sorted(set(times)), f"track {kind} repeats frames"
    assert "came back with a new publish" not in edge.log()
