"""``rtmpd-push`` against the real server: every URL scheme delivers the file's frames with
their exact DTS and composition times, a restarted server gets the push back, SIGINT
ends the stream cleanly, and a refusal gives its exit status and the server's reason."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

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

PUSH = str(VENV_BIN / "rtmpd-push")


def _make_mp4(out: Path, *, seconds: int, gop: int, extra: tuple[str, ...] = ()) -> Path:
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-bf", "2",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p",
            "-c:a", "aac", *extra, str(out),
        ],
        check=True,
        timeout=120,
    )
    return out


@pytest.fixture(scope="module")
def one_gop_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of H.264 with B-frames in a single GOP, plus AAC: a viewer joining at any
    time during the push gets every frame from the GOP cache."""
    return _make_mp4(tmp_path_factory.mktemp("push") / "one_gop.mp4", seconds=4, gop=1000)


@pytest.fixture(scope="module")
def looping_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s with a 1 s GOP, for pushes that loop."""
    return _make_mp4(tmp_path_factory.mktemp("push") / "gop25.mp4", seconds=2, gop=25)


def _ms(value: int, time_base: Fraction) -> int:
    """ffprobe ticks to ms, rounded half away from zero (as FLV muxers do)."""
    exact = value * time_base * 1000
    magnitude = int(abs(exact) + Fraction(1, 2))
    return magnitude if exact >= 0 else -magnitude


def probe_packets(path: Path) -> tuple[list[tuple[int, int]], list[int]]:
    """From ffprobe: video (dts_ms, cts_ms) and audio dts_ms, in decode order."""
    out = run(["ffprobe", "-v", "error", "-show_streams", "-show_packets", "-of", "json",
               str(path)]).stdout
    data = json.loads(out)
    bases = {s["index"]: (s["codec_type"], Fraction(s["time_base"])) for s in data["streams"]}
    video: list[tuple[int, int]] = []
    audio: list[int] = []
    for packet in data["packets"]:
        kind, base = bases[packet["stream_index"]]
        dts = _ms(int(packet["dts"]), base)
        if kind == "video":
            video.append((dts, _ms(int(packet["pts"]), base) - dts))
        else:
            audio.append(dts)
    return video, audio


def read_flv_view(url: str, deadline_s: float = WAIT_S) -> list[flv.TagReceived]:
    """Play an HTTP-FLV URL as soon as it is live, until the stream ends."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            response = urllib.request.urlopen(url, timeout=10)
            break
        except urllib.error.HTTPError as e:
            if e.code != 404 or time.monotonic() > end:
                raise
            time.sleep(0.02)
    reader = flv.FlvReader()
    tags: list[flv.TagReceived] = []
    with response:
        while True:
            if time.monotonic() > end + 2 * WAIT_S:
                raise TimeoutError(f"{url} did not end; {len(tags)} tags so far")
            data = response.read1(65536)
            reader.receive_data(data)
            while (event := reader.next_event()) is not flv.NEED_DATA:
                if isinstance(event, flv.EndOfStream):
                    return tags
                if isinstance(event, flv.TagReceived):
                    tags.append(event)


def received_packets(tags: list[flv.TagReceived]) -> tuple[list[tuple[int, int]], list[int]]:
    video: list[tuple[int, int]] = []
    audio: list[int] = []
    for tag in tags:
        if tag.tag_type == flv.TAG_SCRIPT:
            continue
        info = flv.describe_tag(tag.tag_type, tag.body)
        if info.sequence_header:
            continue
        if tag.tag_type == flv.TAG_VIDEO:
            video.append((tag.timestamp_ms, info.composition_ms))
        else:
            audio.append(tag.timestamp_ms)
    return video, audio


def push_url(server: Server, scheme: str, name: str) -> str:
    if scheme == "rtmp":
        return server.rtmp_url(name)
    return f"{scheme}://127.0.0.1:{server.http_port}/live/{name}"


@pytest.mark.parametrize("scheme", ["rtmp", "http", "ws"])
def test_push_delivers_every_frame_with_exact_dts_and_cts(
    server: Server, one_gop_mp4: Path, scheme: str
) -> None:
    """The viewer gets as many video and audio frames as ffprobe lists in the MP4, with
    the same DTS steps and composition offsets in ms (B-frames), A/V offset included."""
    name = f"push_{scheme}"
    pusher = subprocess.Popen(
        [PUSH, str(one_gop_mp4), push_url(server, scheme, name), "--speed", "2",
         "--no-reconnect"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        tags = read_flv_view(server.flv_url(name))
        _, err = pusher.communicate(timeout=WAIT_S)
    finally:
        if pusher.poll() is None:
            pusher.kill()
            pusher.wait()
    assert pusher.returncode == 0, err

    want_video, want_audio = probe_packets(one_gop_mp4)
    got_video, got_audio = received_packets(tags)
    assert len(got_video) == len(want_video)
    assert len(got_audio) == len(want_audio)
    # Times relative to the first video frame: the server may rebase a viewer's clock.
    origin_want, origin_got = want_video[0][0], got_video[0][0]
    assert [(d - origin_got, c) for d, c in got_video] == [
        (d - origin_want, c) for d, c in want_video
    ]
    assert [d - origin_got for d in got_audio] == [d - origin_want for d in want_audio]
    assert any(c > 0 for _, c in got_video), "the clip should have B-frames"


def start_server_on(tmp: Path, rtmp_port: int, http_port: int, web_port: int) -> Server:
    """``conftest.start_server`` on given ports (to restart a server where it was)."""
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "rtmpd.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", "rtmpd",
                "--rtmp", f"tcp:{rtmp_port}:interface=127.0.0.1",
                "--http", f"tcp:{http_port}:interface=127.0.0.1",
                "--web", f"tcp:{web_port}:interface=127.0.0.1",
                "--root", str(tmp / "media"),
            ],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp,
        )
    server = Server(rtmp_port, http_port, web_port, tmp / "media", log_path, process)
    try:
        for port in (rtmp_port, http_port, web_port):
            wait_for_port(port)
    except TimeoutError:
        process.kill()
        process.wait()
        raise RuntimeError("rtmpd did not start:\n" + server.log()) from None
    return server


@pytest.mark.parametrize("scheme", ["rtmp", "http", "ws"])
def test_push_resumes_after_server_restart_and_new_viewer_decodes_clean(
    tmp_path: Path, looping_mp4: Path, scheme: str
) -> None:
    """Stop the server mid-push, start a new one on the same ports: the pusher
    reconnects by itself, and a viewer of the new session decodes without an error;
    SIGINT then ends the push with status 0."""
    ports = free_ports(3)
    first = start_server_on(tmp_path / "first", *ports)
    second: Server | None = None
    pusher = None
    try:
        pusher = subprocess.Popen(
            [PUSH, str(looping_mp4), push_url(first, scheme, "cam"), "--loop"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        first.wait_live("cam")
        time.sleep(1.5)
        stop_server(first)
        second = start_server_on(tmp_path / "second", *ports)
        second.wait_live("cam")
        view = run(["ffmpeg", "-v", "error", "-i", second.flv_url("cam"), "-t", "2",
                    "-f", "null", "-"], timeout=WAIT_S)
        assert view.returncode == 0
        assert view.stderr == ""
        pusher.send_signal(signal.SIGINT)
        _, err = pusher.communicate(timeout=WAIT_S)
        assert pusher.returncode == 0, err
        assert "reconnecting" in err
        # The clean end reached the new server (not its publisher timeout): it
        # may wait in the socket for one paced read, so wait for its line.
        second.wait_log(re.compile(r"unpublish live/cam: publisher \S+ \S+ (stopped|finished)"))
        assert not second.is_live("cam")
    finally:
        if pusher is not None and pusher.poll() is None:
            pusher.kill()
            pusher.wait()
        if second is not None:
            stop_server(second)
        elif first.process.poll() is None:
            stop_server(first)


PUBLISH_KEY = "pushkey"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server where publishing needs ``?key=`` :data:`PUBLISH_KEY`."""
    srv = start_server(tmp_path_factory.mktemp("keyed"), "--publish-key", PUBLISH_KEY)
    yield srv
    stop_server(srv)


def push_to(url: str, clip: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run([PUSH, str(clip), url, *options], timeout=WAIT_S)


@pytest.mark.parametrize("scheme", ["rtmp", "http", "ws"])
def test_push_refused_for_good_exits_3_with_the_reason(
    keyed: Server, looping_mp4: Path, scheme: str
) -> None:
    """The server refuses before reading any media (no key): exit 3, one line why."""
    done = push_to(push_url(keyed, scheme, "nokey"), looping_mp4)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtmpd-push: publish refused: "), lines
    if scheme == "http":
        assert lines[0] == "rtmpd-push: publish refused: HTTP 401 Unauthorized: no key given"


def test_http_push_to_a_busy_name_is_retried_or_exits_1_with_the_reason(
    keyed: Server, looping_mp4: Path
) -> None:
    """409 (the name has a publisher) while the body is being sent: worth retrying; with
    --no-reconnect, exit 1 with the server's reason."""
    url = push_url(keyed, "http", "busy") + f"?key={PUBLISH_KEY}"
    holder = subprocess.Popen([PUSH, str(looping_mp4), url, "--loop"],
                              stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        keyed.wait_live("busy")
        done = push_to(url, looping_mp4, "--no-reconnect")
        assert done.returncode == 1, done.stderr
        assert done.stderr == ("rtmpd-push: disconnected: HTTP 409 Conflict: "
                               "stream live/busy already has a publisher\n")
        retrying = subprocess.Popen([PUSH, str(looping_mp4), url], stdin=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
        try:
            assert retrying.stderr is not None
            line = retrying.stderr.readline()
            assert line == ("rtmpd-push: HTTP 409 Conflict: stream live/busy already has a "
                            "publisher; reconnecting in 0.5 s\n")
        finally:
            retrying.send_signal(signal.SIGINT)
            retrying.communicate(timeout=WAIT_S)
        assert retrying.returncode == 0
    finally:
        holder.send_signal(signal.SIGINT)
        holder.wait(timeout=WAIT_S)
