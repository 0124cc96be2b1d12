"""``twistd -n filegateway`` end to end: the real server in a subprocess on a
loopback port; raw sockets (so nothing normalises a path or a header),
http.client, and headless Chromium playing and seeking a recording that the
real rtmpd made from an ffmpeg publish."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    VENV_BIN,
    WAIT_S,
    BrowserPage,
    free_ports,
    run,
    start_server,
    stop_server,
    wait_for_port,
)

#: An odd size, so no range arithmetic comes out even by luck.
DATA = os.urandom(1_000_003)
SECRET = b"SECRET-OUTSIDE-THE-ROOT"


@dataclass
class Gateway:
    """A running ``twistd -n filegateway``."""

    port: int
    root: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def raw(self, request: bytes) -> bytes:
        """Send ``request`` as is; everything the server sends until it closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_S) as sock:
            sock.sendall(request)
            reply = bytearray()
            while chunk := sock.recv(1 << 16):
                reply += chunk
        return bytes(reply)

    def get(self, path: str, method: str = "GET", **headers: str
            ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_S)
        try:
            conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()


def start_gateway(tmp: Path, root: Path, *extra: str) -> Gateway:
    (port,) = free_ports(1)
    log_path = tmp / f"filegateway-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", "filegateway",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--root", str(root), *extra],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp,
        )
    gateway = Gateway(port, root, log_path, process)
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise RuntimeError("filegateway did not start:\n" + gateway.log()) from None
    return gateway


def stop_gateway(gateway: Gateway) -> None:
    gateway.process.send_signal(signal.SIGTERM)
    try:
        gateway.process.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()
        raise AssertionError("filegateway did not stop on SIGTERM") from None
    log = gateway.log()
    assert "Traceback" not in log, f"filegateway logged a traceback:\n{log[-5000:]}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root like rtmpd's, with internal files, odd names and symlinks out."""
    base = tmp_path_factory.mktemp("files")
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_bytes(SECRET)
    root = base / "media"
    cam = root / "hls" / "live" / "cam"
    cam.mkdir(parents=True)
    (root / "data.bin").write_bytes(DATA)
    (cam / "index.m3u8").write_text("#EXTM3U\n")
    (cam / ".recording").write_text('{"format": "hls"}')
    (cam / ".recording.failed").write_text("{}")
    (cam / "index.m3u8.tmp").write_text("half-written")
    merge = root / "mp4" / "live" / "cam" / "output_merge"
    merge.mkdir(parents=True)
    (merge / "stream_full.mp4.tmp").write_bytes(b"half-written")
    (merge / ".recording").write_text('{"format": "fmp4"}')
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("hidden")
    (root / "<script>.flv").write_bytes(b"FLV")
    (root / "q\"uote'&amp.flv").write_bytes(b"FLV")
    (root / "link-out.txt").symlink_to(base / "outside" / "secret.txt")
    (root / "dir-out").symlink_to(base / "outside")
    for ext in MIME:
        (root / f"file{ext}").write_bytes(b"x")
    return root


@pytest.fixture(scope="module")
def gateway(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gw"), tree)
    yield gw
    stop_gateway(gw)


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("value", "start", "stop"),
    [("bytes=0-99", 0, 100), ("bytes=100-", 100, len(DATA)),
     ("bytes=-100", len(DATA) - 100, len(DATA)), ("bytes=999999-2000000", 999999, len(DATA)),
     ("bytes=-5000000", 0, len(DATA))],
)
def test_each_range_form_returns_those_bytes_of_the_file(
    gateway: Gateway, value: str, start: int, stop: int
) -> None:
    status, headers, body = gateway.get("/data.bin", Range=value)
    assert status == 206
    assert body == DATA[start:stop]
    assert headers["content-range"] == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert headers["accept-ranges"] == "bytes"


def test_two_ranges_come_as_multipart_with_the_right_bytes(gateway: Gateway) -> None:
    status, headers, body = gateway.get("/data.bin", Range="bytes=500000-500999,0-99")
    assert status == 206
    boundary = headers["content-type"].split("boundary=")[1].encode()
    parts = body.split(b"--" + boundary)
    assert parts[-1] == b"--\r\n"
    got = []
    for part in parts[1:-1]:
        head, _, data = part.partition(b"\r\n\r\n")
        match = re.search(rb"Content-Range: bytes (\d+)-(\d+)/(\d+)", head)
        assert match is not None
        first, last, size = map(int, match.groups())
        assert size == len(DATA)
        got.append((first, data[:-2]))
        assert data[:-2] == DATA[first : last + 1]
    assert [first for first, _ in got] == [500000, 0]


def test_the_whole_file_and_an_unsatisfiable_range(gateway: Gateway) -> None:
    status, headers, body = gateway.get("/data.bin")
    assert (status, body) == (200, DATA)
    status, headers, _ = gateway.get("/data.bin", Range=f"bytes={len(DATA)}-")
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(DATA)}"


def _body_bytes_received(gateway: Gateway, range_value: str) -> tuple[int, int]:
    """Status and body bytes of one GET with ``range_value``, counted off
    the socket."""
    reply = gateway.raw(
        f"GET /data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\nRange: {range_value}\r\n\r\n"
        .encode()
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), len(body)


@pytest.mark.parametrize(
    "value",
    [
        "bytes=" + ",".join(["0-"] * 1500),  # the 4.5 KB header that sent a file 1 500 times
        "bytes=" + ",".join(["0-"] * 16),
        "bytes=" + ",".join(f"{i}-" for i in range(16)),  # overlapping, each nearly all
        "bytes=" + ",".join(["-1000003"] * 16),
        "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 32, 2)),  # many small ones
        "bytes=" + ",".join(f"{i * 1000}-{i * 1000 + 998}" for i in range(16)),
        "bytes=" + ",".join(f"{i}-" for i in range(1000, 0, -1)),
    ],
)
def test_multi_range_abuse_never_sends_more_than_the_file(gateway: Gateway, value: str) -> None:
    status, received = _body_bytes_received(gateway, value)
    assert status in (200, 206, 416)
    assert received <= len(DATA), (value[:60], received)


def test_head_gives_the_length_and_no_body(gateway: Gateway) -> None:
    reply = gateway.raw(b"HEAD /data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"Content-Length: {len(DATA)}".encode() in head
    assert b"ETag: " in head and b"Last-Modified: " in head
    assert body == b""


def test_validators_give_304_and_if_range_guards_the_range(gateway: Gateway) -> None:
    _, headers, _ = gateway.get("/data.bin", method="HEAD")
    etag = headers["etag"]
    status, _, body = gateway.get("/data.bin", If_None_Match=etag)
    assert (status, body) == (304, b"")
    status, _, body = gateway.get("/data.bin", Range="bytes=0-9", If_Range=etag)
    assert (status, body) == (206, DATA[:10])
    status, _, body = gateway.get("/data.bin", Range="bytes=0-9", If_Range='"another"')
    assert (status, len(body)) == (200, len(DATA))


# --------------------------------------------------------------------------- methods and types

MIME = {
    ".flv": "video/x-flv",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".aac": "audio/aac",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".m4a": "audio/mp4",
    ".wasm": "application/wasm",
    ".bin": "application/octet-stream",
}


@pytest.mark.parametrize(("ext", "mime"), list(MIME.items()))
def test_mime_type_per_extension(gateway: Gateway, ext: str, mime: str) -> None:
    status, headers, _ = gateway.get(f"/file{ext}")
    assert status == 200
    assert headers["content-type"] == mime
    assert headers["access-control-allow-origin"] == "*"


def test_options_is_a_204_preflight_and_other_methods_405(gateway: Gateway) -> None:
    status, headers, body = gateway.get(
        "/data.bin", method="OPTIONS", Origin="http://elsewhere.test",
        Access_Control_Request_Method="GET", Access_Control_Request_Headers="range",
    )
    assert (status, body) == (204, b"")
    assert "Range" in headers["access-control-allow-headers"]
    assert "GET" in headers["access-control-allow-methods"]
    for method in ("DELETE", "PUT", "PROPFIND"):
        status, headers, _ = gateway.get("/data.bin", method=method)
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD, OPTIONS"


# --------------------------------------------------------------------------- the tree

TRAVERSALS = [
    "/../outside/secret.txt",
    "/%2e%2e/outside/secret.txt",
    "/%2E%2E/outside/secret.txt",
    "/..%2foutside%2fsecret.txt",
    "/%2e%2e%2foutside%2fsecret.txt",
    "/hls/../../outside/secret.txt",
    "/hls/%2e%2e/%2e%2e/outside/secret.txt",
    "/..\\outside\\secret.txt",
    "/..%5coutside%5csecret.txt",
    "/%00",
    "/data.bin%00.txt",
    "/%00/../outside/secret.txt",
    "/link-out.txt",
    "/dir-out/secret.txt",
    "/.hidden/x.txt",
    "/%2ehidden/x.txt",
    "//outside/secret.txt",
    "/./data.bin",
    "/%252e%252e/outside/secret.txt",
    "/%c0%ae%c0%ae/outside/secret.txt",  # overlong UTF-8 dots
    "../outside/secret.txt",
    "http://127.0.0.1/../outside/secret.txt",
    "/hls/live/cam/.recording",
    "/hls/live/cam/.recording.failed",
    "/hls/live/cam/index.m3u8.tmp",
    "/mp4/live/cam/output_merge/stream_full.mp4.tmp",
    "/mp4/live/cam/output_merge/.recording",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_nothing_outside_the_root_or_internal_is_served(gateway: Gateway, path: str) -> None:
    reply = gateway.raw(f"GET {path} HTTP/1.0\r\n\r\n".encode("latin-1"))
    assert reply.split(b" ")[1] in (b"400", b"404"), (path, reply[:200])
    for leaked in (SECRET, b"half-written", b'"format"', b"hidden"):
        assert leaked not in reply, (path, leaked)


def test_the_server_is_fine_after_every_refused_path(gateway: Gateway) -> None:
    for path in TRAVERSALS:
        gateway.raw(f"GET {path} HTTP/1.0\r\n\r\n".encode("latin-1"))
    assert gateway.get("/data.bin")[0] == 200
    assert "Traceback" not in gateway.log()
    assert " 500 " not in gateway.log()


def test_no_listing_without_the_flag(gateway: Gateway) -> None:
    for path in ("/", "/hls/", "/hls/live/cam/"):
        assert gateway.get(path)[0] == 404, path


def test_listing_with_the_flag_is_escaped_and_hides_internal_files(
    tree: Path, tmp_path: Path
) -> None:
    listing = start_gateway(tmp_path, tree, "--listing")
    try:
        status, _, body = listing.get("/")
        assert status == 200
        page = body.decode()
        assert '<a href="%3Cscript%3E.flv">&lt;script&gt;.flv</a>' in page
        assert "<script>" not in page
        assert '<a href="q%22uote%27%26amp.flv">q&quot;uote&#x27;&amp;amp.flv</a>' in page
        assert listing.get("/%3Cscript%3E.flv")[2] == b"FLV"
        for hidden in (".hidden", "link-out.txt", "dir-out"):
            assert hidden not in page, hidden
        assert 'href="data.bin"' in page and 'href="hls/"' in page
        cam = listing.get("/hls/live/cam/")[2].decode()
        assert "index.m3u8" in cam
        assert ".recording" not in cam and ".tmp" not in cam
        merge = listing.get("/mp4/live/cam/output_merge/")[2].decode()
        assert "stream_full" not in merge and ".recording" not in merge
    finally:
        stop_gateway(listing)


def test_a_missing_root_is_one_clear_line(tmp_path: Path) -> None:
    result = run([str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "filegateway",
                  "--root", str(tmp_path / "nope"), "--listen", "tcp:0:interface=127.0.0.1"])
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"--root {tmp_path / 'nope'} does not exist" in output
    assert "Traceback" not in output


# ------------------------------------------------------------------ a recording in Chromium

PLAYER = """<!doctype html>
<meta charset="utf-8">
<title>seek</title>
<video id="v" preload="metadata" muted playsinline crossorigin="anonymous"></video>
<script>
const v = document.getElementById("v");
v.src = new URLSearchParams(location.search).get("src");
</script>
"""

#: Seek to the middle; once there, wait for a frame to be presented and
#: report where the element is and what it decoded.
SEEK = """new Promise((resolve, reject) => {
  v.addEventListener("error", () => reject(new Error("media error " + v.error.code + ": "
                                                     + v.error.message)));
  v.addEventListener("seeked", () => {
    v.requestVideoFrameCallback((now, frame) => resolve({
      target: v.duration / 2, currentTime: v.currentTime, mediaTime: frame.mediaTime,
      decoded: v.getVideoPlaybackQuality().totalVideoFrames,
      width: v.videoWidth, height: v.videoHeight,
    }));
    v.play().catch(reject);
  }, {once: true});
  v.currentTime = v.duration / 2;
})"""

#: A cross-origin fetch with a header that needs a preflight: the page must
#: be able to read the range answer's headers.
FETCH = """fetch(SRC, {headers: {"Range": "bytes=0-99", "If-None-Match": '"none"'}})
  .then(async (r) => ({status: r.status, contentRange: r.headers.get("Content-Range"),
                       etag: r.headers.get("ETag"), length: (await r.arrayBuffer()).byteLength}))"""


@pytest.fixture(scope="module")
def clip_4mbit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of H.264 (B-frames, 1 s GOP) + AAC at ~4 Mbit/s: a recording of
    ~5 MB, more than a player reads ahead, so a seek needs new ranges."""
    out = tmp_path_factory.mktemp("clip4") / "clip.flv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
         "-t", "10", "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "25",
         "-keyint_min", "25", "-sc_threshold", "0", "-b:v", "4M", "-minrate", "4M",
         "-maxrate", "4M", "-bufsize", "4M", "-x264-params", "nal-hrd=cbr",
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-f", "flv", str(out)],
        check=True, timeout=120,
    )
    return out


def _record_mp4(clip: Path, tmp: Path) -> Path:
    """Publish ``clip`` to a real rtmpd with ``--record fmp4`` and return the
    root once ``stream_full.mp4`` is merged."""
    server = start_server(tmp, "--record", "fmp4")
    try:
        publish = run(["ffmpeg", "-v", "error", "-i", str(clip), "-c", "copy", "-f", "flv",
                       server.rtmp_url("cam")], timeout=120)
        assert publish.returncode == 0, publish.stderr
        deadline = time.monotonic() + WAIT_S
        while "fmp4 recording of live/cam finalised" not in server.log():
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.1)
    finally:
        stop_server(server)
    full = server.root / "mp4" / "live" / "cam" / "output_merge" / "stream_full.mp4"
    assert full.stat().st_size > 3_000_000
    return server.root


def test_a_recording_plays_in_chromium_and_seeks_by_range_requests(
    clip_4mbit: Path, tmp_path: Path, browser_page: BrowserPage
) -> None:
    root = _record_mp4(clip_4mbit, tmp_path)
    (root / "player.html").write_text(PLAYER)
    full = root / "mp4" / "live" / "cam" / "output_merge" / "stream_full.mp4"
    size = full.stat().st_size
    gateway = start_gateway(tmp_path, root)
    page = browser_page.page
    try:
        src = f"http://127.0.0.1:{gateway.port}/mp4/live/cam/output_merge/stream_full.mp4"
        # The page comes from another origin (localhost, not 127.0.0.1),
        # so the crossorigin video and the fetch go through CORS.
        page.goto(f"http://localhost:{gateway.port}/player.html?src={src}")
        page.wait_for_function(
            "typeof v !== 'undefined' && (v.readyState >= 1 || v.error !== null)",
            timeout=WAIT_S * 1000,
        )
        assert page.evaluate("v.error") is None, browser_page.report()
        duration = page.evaluate("v.duration")
        assert 9.5 <= duration <= 10.5
        seek = page.evaluate(SEEK)
        fetched = page.evaluate(FETCH.replace("SRC", repr(src)))
    finally:
        stop_gateway(gateway)
    assert abs(seek["currentTime"] - seek["target"]) < 1.0, seek
    assert seek["mediaTime"] >= seek["target"] - 1.0, seek
    assert seek["decoded"] > 0, seek
    assert (seek["width"], seek["height"]) == (640, 360)
    assert fetched["etag"]
    assert fetched == {"status": 206, "contentRange": f"bytes 0-99/{size}",
                       "etag": fetched["etag"], "length": 100}
    # The player's range requests, in the access log: from the start, then
    # from the middle after the seek (206, or 304 for what it had cached).
    log = gateway.log()
    starts = [int(m) for m in re.findall(
        r'"GET /mp4/live/cam/output_merge/stream_full\.mp4 HTTP/1\.1" (?:206|304) .*'
        r'range="bytes=(\d+)-', log)]
    assert 0 in starts, log[-3000:]
    assert any(size // 4 <= start < size for start in starts), (starts, size)
    assert '"OPTIONS /mp4/live/cam/output_merge/stream_full.mp4 HTTP/1.1" 204' in log
