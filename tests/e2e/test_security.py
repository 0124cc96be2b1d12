"""Security regressions against the real programs: every input that can name
a stream or a file, huge and odd names, header injection, and every admin
surface without credentials.

One rtmpd (``--api-token``, FLV and HLS recording) serves a root that holds
symlinks leading out of it, next to an ``outside`` directory with a secret;
flvgateway and filegateway run beside it. After the attacks nothing outside
the root has changed, nothing new exists anywhere, and no answer carries the
secret.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.e2e.conftest import VENV_BIN, WAIT_S, Server, free_ports, start_server, stop_server
from tests.e2e.rtmpclient import RtmpTestClient
from tests.e2e.test_filegateway import TRAVERSALS

TOKEN = "s3cret-token"
#: An FLV header with audio and video and an empty first previous-tag size.
FLV_HEADER = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"
#: The servers' default --max-header-bytes.
MAX_HEADER_BYTES = 16384
SECRET = b"TOP-SECRET-CONTENTS"
#: A non-loopback address of this machine, if it has one (admin surfaces
#: refuse it without a token).
OUTWARD: str | None
try:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as _probe:
        _probe.connect(("192.0.2.254", 9))  # no packet is sent for a UDP connect
        OUTWARD = _probe.getsockname()[0]
    if OUTWARD is not None and OUTWARD.startswith("127."):
        OUTWARD = None
except OSError:
    OUTWARD = None


@dataclass
class Target:
    tmp: Path
    outside: Path
    server: Server
    gateway_port: int
    files_port: int
    procs: list[subprocess.Popen[bytes]]


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every entry under ``directory`` (links as their targets), not following links."""
    out: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            out[key] = f"-> {path.readlink()}"
        elif path.is_file():
            out[key] = path.read_bytes()
        else:
            out[key] = "dir"
    return out


def start_twistd(tmp: Path, name: str, host: str, port: int, *args: str
                 ) -> subprocess.Popen[bytes]:
    with open(tmp / f"{name}-{port}.log", "ab") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", name, *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        )
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not start: {(tmp / f'{name}-{port}.log').read_text()}")


def stop_twistd(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("security")
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "index.flv").write_bytes(SECRET)
    root = tmp / "media"
    for kind in ("flv", "hls", "mp4"):
        (root / kind).mkdir(parents=True)
    (root / "flv" / "evil").symlink_to(outside)
    (root / "hls" / "live").symlink_to(outside)
    (root / "mp4" / "live").mkdir()
    (root / "mp4" / "live" / "cam").symlink_to(outside)
    server = start_server(tmp, "--record", "flv,hls,fmp4", "--api-token", TOKEN)
    gateway_port, files_port = free_ports(2)
    procs = [
        start_twistd(tmp, "flvgateway", "127.0.0.1", gateway_port,
                     "--listen", f"tcp:{gateway_port}:interface=127.0.0.1",
                     "--upstream", f"http://127.0.0.1:{server.http_port}",
                     "--api-token", TOKEN),
        start_twistd(tmp, "filegateway", "127.0.0.1", files_port,
                     "--listen", f"tcp:{files_port}:interface=127.0.0.1", "--root", str(root)),
    ]
    yield Target(tmp, outside, server, gateway_port, files_port, procs)
    for proc in procs:
        stop_twistd(proc)
    stop_server(server)
    for log in tmp.glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log


@pytest.fixture
def untouched(target: Target) -> Iterator[None]:
    """Whatever the test sends, nothing is created or changed anywhere."""
    before_outside = snapshot(target.outside)
    before_root = snapshot(target.server.root)
    yield
    assert snapshot(target.outside) == before_outside
    assert snapshot(target.server.root) == before_root


def raw(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``request`` as is; the whole answer (the server closes: HTTP/1.0)."""
    with socket.create_connection((host, port), timeout=WAIT_S) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
            if sum(map(len, chunks)) > 1 << 20:
                break
    return b"".join(chunks)


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0


def head_lines(reply: bytes) -> list[bytes]:
    return reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def get(port: int, path: str, method: str = "GET", headers: str = "",
        host: str = "127.0.0.1") -> bytes:
    return raw(port, f"{method} {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n".encode("latin-1"),
               host)


# --------------------------------------------------------------------------- stream names

#: (app, stream) pairs that must never become a stream, let alone a path.
BAD_NAMES = [
    ("live", "../../outside/x"), ("live", ".."), ("live", "."), ("..", "x"),
    ("live/../..", "x"), ("live", "a/b"), ("live", "a\\b"), ("evil", "x/../../y"),
    ("live", "x" * 129), ("live", "x" * 70000), ("x" * 129, "cam"), ("live", "cam\x00.flv"),
    ("live", "cam\r\nX-Injected: yes"), ("live", "caf\u00e9"), ("live", "%2e%2e"),
    ("live", ".recording"), ("live", "cam name"), ("live", "~root"), ("", "cam"),
]


@pytest.mark.parametrize(("app", "name"), BAD_NAMES, ids=lambda v: repr(v)[:24])
def test_rtmp_publish_and_play_of_bad_names_are_refused_and_touch_no_file(
    target: Target, untouched: None, app: str, name: str
) -> None:
    client = RtmpTestClient(target.server.rtmp_port, app=app)
    try:
        codes = []
        for action in (client.publish, client.play):
            try:
                codes.append(action(name))
            except (ConnectionError, TimeoutError):
                codes.append("closed")
                break
    finally:
        client.close()
    assert "NetStream.Publish.Start" not in codes and "NetStream.Play.Start" not in codes
    assert codes[0] in ("NetStream.Publish.BadName", "closed"), codes
    assert not target.server.is_live("x")


def http_paths(app: str, name: str) -> list[str]:
    """The request paths an app/stream pair makes, raw and percent-encoded."""
    quoted = "/" + urllib.parse.quote(app, safe="") + "/" + urllib.parse.quote(name, safe="")
    paths = [quoted]
    if all(32 < ord(c) < 127 for c in app + name):
        paths.append(f"/{app}/{name}")
    return paths


@pytest.mark.parametrize(("app", "name"), BAD_NAMES[:-1], ids=lambda v: repr(v)[:24])
def test_http_flv_play_head_and_publish_of_bad_names_are_refused(
    target: Target, untouched: None, app: str, name: str
) -> None:
    http, gateway = target.server.http_port, target.gateway_port
    attempts = [(http, "GET", ".flv"), (http, "HEAD", ".flv"), (http, "POST", ""),
                (http, "PUT", ""),
                # The gateway must not pass a bad name on into its upstream's URL.
                (gateway, "GET", ".flv"), (gateway, "HEAD", ".flv")]
    for path in http_paths(app, name):
        for port, method, suffix in attempts:
            body = FLV_HEADER if method in ("POST", "PUT") else b""
            request = (f"{method} {path}{suffix} HTTP/1.0\r\nHost: x\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
            reply = raw(port, request)
            # Past --max-header-bytes the connection is closed unanswered.
            allowed = (400, 404, 414, 431) + ((0,) if len(request) > MAX_HEADER_BYTES else ())
            assert status(reply) in allowed, (port, method, path[:80], reply[:200])
            assert SECRET not in reply


@pytest.mark.parametrize(("app", "name"), BAD_NAMES[:-1], ids=lambda v: repr(v)[:24])
def test_ws_flv_play_and_publish_of_bad_names_are_refused(
    target: Target, untouched: None, app: str, name: str
) -> None:
    attempts = [(target.server.http_port, ".flv"), (target.server.http_port, ""),
                (target.gateway_port, ".flv")]
    for path in http_paths(app, name)[:1]:
        for port, suffix in attempts:
            url = f"ws://127.0.0.1:{port}{path}{suffix}"
            if len(url) > 8000:
                url = url[:8000]  # the client's own limit; still a bad name
            try:
                with connect(url, open_timeout=WAIT_S, close_timeout=2) as ws:
                    try:
                        if suffix == "":
                            ws.send(FLV_HEADER)
                        ws.recv(timeout=WAIT_S)
                    except ConnectionClosed as closed:
                        code = closed.rcvd.code if closed.rcvd else None
                        assert code in (4400, 4404), (path[:80], suffix, code)
                    else:
                        raise AssertionError(f"{path[:80]}{suffix}: got a message, no close")
            except InvalidStatus as e:
                assert e.response.status_code in (400, 404, 414, 431)


def test_a_name_of_a_symlinked_app_directory_records_nothing_outside(
    target: Target, clip: Path
) -> None:
    """``flv/evil`` leads out of the root: publishing ``evil/x`` is a valid
    name and plays, but its FLV recording must not be written there."""
    before = snapshot(target.outside)
    publisher = subprocess.run(
        ["ffmpeg", "-v", "error", "-t", "2", "-i", str(clip), "-c", "copy", "-f", "flv",
         target.server.rtmp_url("x", "evil")],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT_S,
    )
    assert publisher.returncode == 0, publisher.stderr
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and "hls recording of evil/x finalised" not in (
        target.server.log()
    ):
        time.sleep(0.1)
    assert snapshot(target.outside) == before
    log = target.server.log()
    assert "flv recording of evil/x failed" in log and "leads out of the root" in log
    assert "hls recording of evil/x finalised" in log  # hls/evil is a real directory


# --------------------------------------------------------------------------- files


SYMLINKED = ["/flv/evil/secret.txt", "/flv/evil/index.flv", "/hls/live/secret.txt",
             "/mp4/live/cam/secret.txt", "/flv/evil/", "/hls/live/"]


@pytest.mark.parametrize("path", TRAVERSALS + SYMLINKED)
def test_web_port_and_filegateway_serve_nothing_outside_the_root(
    target: Target, untouched: None, path: str
) -> None:
    for port in (target.server.web_port, target.files_port):
        reply = raw(port, f"GET {path} HTTP/1.0\r\n\r\n".encode("latin-1"))
        assert status(reply) in (400, 404), (port, path, reply[:200])
        assert SECRET not in reply


@pytest.mark.parametrize("query", [
    "app=../..&stream=outside", "app=evil&stream=x", "app=live&stream=cam", "app=..&stream=..",
    "app=%2e%2e&stream=%2e%2e", "app=live&stream=" + "x" * 5000, "app=live%00&stream=cam",
    "app=live&stream=cam%0d%0aX-Injected:%20yes", "app=hls&stream=live", "",
])
def test_recordings_json_lists_nothing_outside_the_root(
    target: Target, untouched: None, query: str
) -> None:
    reply = get(target.server.web_port, "/recordings.json?" + query)
    assert status(reply) in (200, 400, 404), reply[:200]
    assert SECRET not in reply and b"outside" not in reply.split(b"\r\n\r\n", 1)[-1]
    assert not any(line.lower().startswith(b"x-injected") for line in head_lines(reply))
    if status(reply) == 200:
        root = target.server.root.resolve()
        for entry in json.loads(reply.split(b"\r\n\r\n", 1)[1])["recordings"]:
            real = (target.server.root / entry["path"]).resolve()
            assert real == root or root in real.parents, entry


# --------------------------------------------------------------------------- injection


INJECTIONS = [
    "/live/cam%0d%0aX-Injected:%20yes.flv",
    "/live/cam.flv?key=%0d%0aX-Injected:%20yes",
    "/%0d%0aX-Injected:%20yes",
    "/hls%0d%0aX-Injected:%20yes/",
    "/api/streams/live/cam%0d%0aX-Injected:%20yes",
    "/api/clients/1%0d%0aX-Injected:%20yes",
    "/recordings.json?app=%0d%0aX-Injected:%20yes",
    "/flv%0aX-Injected:%20yes",
]


@pytest.mark.parametrize("path", INJECTIONS)
def test_no_answer_carries_a_header_from_the_request(target: Target, path: str) -> None:
    ports = (target.server.http_port, target.server.web_port, target.gateway_port,
             target.files_port)
    for port in ports:
        for method in ("GET", "HEAD", "OPTIONS"):
            reply = get(port, path, method, f"Authorization: Bearer {TOKEN}\r\n")
            assert reply.startswith(b"HTTP/1."), (port, path)
            lines = head_lines(reply)
            assert not any(b"x-injected" in line.lower() for line in lines), (port, lines)
            assert all(b"\r" not in line and b"\n" not in line for line in lines)


def test_a_raw_line_break_in_the_request_line_is_a_bad_request(target: Target) -> None:
    for port in (target.server.http_port, target.server.web_port, target.gateway_port,
                 target.files_port):
        reply = raw(port, b"GET /live/cam\rX-Injected: yes.flv HTTP/1.0\r\n\r\n")
        assert status(reply) in (0, 400), reply[:200]
        assert not any(b"x-injected" in line.lower() for line in head_lines(reply))


def test_a_redirect_location_never_carries_the_raw_request(target: Target) -> None:
    """The one echo of a path: a directory named without its slash."""
    pages = get(target.server.web_port, "/js")
    if status(pages) == 301:
        [location] = [x for x in head_lines(pages) if x.lower().startswith(b"location:")]
        assert location == b"Location: js/"
    for path in ("/js%0d%0aX-Injected:%20yes", "/js%0aLocation:%20http://evil"):
        reply = get(target.server.web_port, path)
        assert status(reply) == 404
        assert not any(x.lower().startswith((b"x-injected", b"location"))
                       for x in head_lines(reply))


def test_huge_request_heads_are_refused_and_the_server_serves_on(target: Target) -> None:
    for port in (target.server.http_port, target.server.web_port, target.gateway_port,
                 target.files_port):
        reply = get(port, "/" + "a" * 100_000 + ".flv")
        assert status(reply) in (0, 400, 404, 414, 431), (port, reply[:200])
        reply = get(port, "/x", headers="X-Long: " + "b" * 100_000 + "\r\n")
        assert status(reply) in (0, 400, 404, 431), (port, reply[:200])
    assert status(get(target.server.web_port, "/config.json")) == 200
    assert target.procs[0].poll() is None and target.procs[1].poll() is None


# --------------------------------------------------------------------------- admin


ADMIN = [("GET", "/api/streams"), ("GET", "/api/streams/live/cam"), ("GET", "/api/clients"),
         ("GET", "/metrics"), ("DELETE", "/api/streams/live/cam"), ("DELETE", "/api/clients/1"),
         ("POST", "/api/streams"), ("GET", "/api/"), ("GET", "/api")]


@pytest.mark.parametrize(("method", "path"), ADMIN)
def test_admin_surfaces_need_the_token_on_rtmpd_and_flvgateway(
    target: Target, method: str, path: str
) -> None:
    for port in (target.server.web_port, target.gateway_port):
        for headers in ("", "Authorization: Bearer wrong\r\n", "Authorization: Basic eDp5\r\n",
                        f"Authorization: Bearer {TOKEN}x\r\n", "Authorization: Bearer\r\n",
                        f"Authorization: bearer {TOKEN[:-1]}\r\n"):
            reply = get(port, path, method, headers)
            # A POST there is a publish to the app "api" on the gateway: refused too.
            refusals = (401, 403) if method == "POST" else (401,)
            assert status(reply) in refusals, (port, method, path, headers, reply[:300])
            if status(reply) == 401:
                assert b"WWW-Authenticate: Bearer" in reply
            assert b"rtmpd_" not in reply and b'"streams"' not in reply
        allowed = status(get(port, path, method, f"Authorization: Bearer {TOKEN}\r\n"))
        assert allowed in (200, 204, 403, 404, 405), (port, method, path, allowed)


@pytest.mark.parametrize("path", ["/api/streams", "/api/clients", "/metrics"])
def test_admin_surfaces_are_not_on_the_media_port_nor_the_file_server(
    target: Target, path: str
) -> None:
    for port in (target.server.http_port, target.files_port):
        reply = get(port, path, headers=f"Authorization: Bearer {TOKEN}\r\n")
        assert status(reply) in (400, 404), (port, path, reply[:200])
        assert b"rtmpd_" not in reply


@pytest.mark.skipif(OUTWARD is None, reason="this machine has no non-loopback address")
def test_without_a_token_admin_surfaces_refuse_non_loopback_clients(tmp_path: Path) -> None:
    assert OUTWARD is not None
    rtmp, http_port, web, gateway = free_ports(4)
    root = tmp_path / "media"
    procs = [start_twistd(
        tmp_path, "rtmpd", OUTWARD, web, "--rtmp", f"tcp:{rtmp}:interface=127.0.0.1",
        "--http", f"tcp:{http_port}:interface=127.0.0.1", "--web",
        f"tcp:{web}:interface={OUTWARD}", "--root", str(root), "--record", "none")]
    try:
        procs.append(start_twistd(
            tmp_path, "flvgateway", OUTWARD, gateway,
            "--listen", f"tcp:{gateway}:interface={OUTWARD}",
            "--upstream", f"http://127.0.0.1:{http_port}"))
        for port in (web, gateway):
            for method, path in ADMIN:
                reply = get(port, path, method, host=OUTWARD)
                assert status(reply) == 403, (port, method, path, reply[:300])
                assert b"rtmpd_" not in reply and b'"streams"' not in reply
    finally:
        for proc in procs:
            stop_twistd(proc)
    for log in tmp_path.glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace")


# --------------------------------------------------------------------------- reflection


@pytest.mark.parametrize("request_line", [
    "GET /live/%3Cscript%3Ealert(1)%3C%2Fscript%3E.flv",
    "HEAD /live/%3Cscript%3E.flv",
    "POST /live/%3Cb%3Ex%3C%2Fb%3E",
    "GET /api/streams/%3Cscript%3E/x",
    "DELETE /api/clients/%3Cscript%3E",
    "GET /%3Cscript%3E/%3Cscript%3E.flv",
])
def test_answers_quoting_the_request_are_never_sniffed_as_html(
    target: Target, request_line: str
) -> None:
    """Refusals quote the refused name (``invalid stream name '<script>'``):
    they are text or JSON, marked ``nosniff``, on every port that answers."""
    for port in (target.server.http_port, target.server.web_port, target.gateway_port,
                 target.files_port):
        reply = raw(port, f"{request_line} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n"
                          f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        lines = [x.lower() for x in head_lines(reply)]
        assert status(reply) >= 400, (port, request_line, reply[:300])
        if b"<script>" in reply or b"<b>" in reply:
            assert b"x-content-type-options: nosniff" in lines, (port, request_line, lines)
            [kind] = [x for x in lines if x.startswith(b"content-type:")]
            assert b"text/plain" in kind or b"application/json" in kind
