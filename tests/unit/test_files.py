"""The static file resource (rtmpd.protocols.files) through the real Site,
one raw request at a time over a StringTransport, with a fake clock."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.test.requesthelper import DummyRequest

from rtmpd.protocols.files import (
    MAX_UNPAUSED_BYTES,
    MEDIA_TYPES,
    SEND_CHUNK_BYTES,
    SEND_STALL_TIMEOUT_S,
    RootedFile,
    hidden_name,
    safe_segment,
)
from rtmpd.protocols.web import file_access_log_line, make_file_site, make_web_site
from rtmpd.services.recorder import MARKER_NAME

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
DATA = bytes(range(256)) * 40 + b"end"  # 10 243 bytes


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def parse(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Response(status, headers, body)


class Server:
    """A file site on a fake clock; each request gets a fresh connection."""

    def __init__(self, root: Path, *, listing: bool = False) -> None:
        self.clock = Clock()
        self.root = root
        self.site = make_file_site(RootedFile(str(root), listing=listing, clock=self.clock),
                                   reactor=self.clock)

    def connect(self, transport: StringTransport | None = None) -> tuple[object, StringTransport]:
        channel = self.site.buildProtocol(PEER)
        transport = transport or StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        return channel, transport

    def raw(self, data: bytes, transport: StringTransport | None = None) -> bytes:
        channel, transport = self.connect(transport)
        channel.dataReceived(data)  # type: ignore[attr-defined]
        return transport.value()

    def request(self, method: str, path: str, **headers: str) -> Response:
        lines = [f"{method} {path} HTTP/1.1", "Host: files.test"]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        return parse(self.raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "hls" / "live" / "cam").mkdir(parents=True)
    (root / "data.bin").write_bytes(DATA)
    (root / "empty.flv").write_bytes(b"")
    (root / "hls" / "live" / "cam" / "index.m3u8").write_text("#EXTM3U\n")
    (root / "hls" / "live" / "cam" / MARKER_NAME).write_text("{}")
    (root / "hls" / "live" / "cam" / "index.m3u8.tmp").write_text("half")
    (root / "secret.txt.tmp").write_text("tmp")
    (root / ".env").write_text("SECRET=1")
    (root / "<script>.flv").write_bytes(b"x")
    (tmp_path / "outside.txt").write_text("OUTSIDE")
    (root / "link-out").symlink_to(tmp_path / "outside.txt")
    (root / "dir-out").symlink_to(tmp_path)
    (root / "link-in.mp4").symlink_to(root / "data.bin")
    (root / "link-hidden").symlink_to(root / ".env")
    return root


@pytest.fixture
def server(root: Path) -> Server:
    return Server(root)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "segment",
    [b"..", b".", b".recording", b".recording.failed", b".git", b"index.m3u8.tmp",
     b"stream_full.mp4.TMP", b"a/b", b"a\\b", b"..\\x", b"a\x00b", b"\x00", b"a\x1fb", b"a\x7fb",
     b"\xff\xfe", b"x" * 256],
)
def test_unsafe_segments_name_no_file(segment: bytes) -> None:
    assert safe_segment(segment) is None


@pytest.mark.parametrize("segment", [b"index.m3u8", b"0.ts", b"<script>.flv", "é.mp4".encode()])
def test_ordinary_segments_name_their_file(segment: bytes) -> None:
    assert safe_segment(segment) == segment.decode()


def test_visible_child_is_what_a_request_may_name(root: Path) -> None:
    files = RootedFile(str(root))
    assert files.visible_child("data.bin") is not None
    assert files.visible_child("link-in.mp4") is not None
    for name in (".env", "secret.txt.tmp", "link-out", "dir-out", "link-hidden", "..",
                 "hls/live", "missing.flv", ""):
        assert files.visible_child(name) is None, name


def test_every_internal_name_the_recorders_write_is_hidden() -> None:
    """Markers (and what recovery renames them to), and what write_atomically
    and the MP4 merge write before their rename."""
    for name in (MARKER_NAME, MARKER_NAME + ".failed", MARKER_NAME + ".tmp",
                 "index.m3u8.tmp", "stream_full.mp4.tmp", "000001.m4s.tmp", "init.mp4.tmp"):
        assert hidden_name(name), name
    assert not hidden_name("stream_full.mp4")


# --------------------------------------------------------------------------- whole files


def test_get_sends_the_file_with_its_validators_and_cors(server: Server, root: Path) -> None:
    response = server.request("GET", "/data.bin")
    assert response.status == 200
    assert response.body == DATA
    assert response.header("content-length") == str(len(DATA))
    assert response.header("accept-ranges") == "bytes"
    assert response.header("content-type") == "application/octet-stream"
    assert response.header("x-content-type-options") == "nosniff"
    assert response.header("access-control-allow-origin") == "*"
    exposed = response.header("access-control-expose-headers") or ""
    for name in ("Content-Range", "Accept-Ranges", "ETag", "Content-Length"):
        assert name in exposed
    info = os.stat(root / "data.bin")
    assert response.header("etag") == f'"{info.st_size:x}-{info.st_mtime_ns:x}"'
    assert response.header("last-modified") == datetimeToString(int(info.st_mtime)).decode()


def test_head_sends_the_headers_and_no_body(server: Server) -> None:
    raw = server.raw(b"HEAD /data.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n")
    _, _, body = raw.partition(b"\r\n\r\n")
    assert body == b""
    response = parse(raw)
    assert response.status == 200  # Range applies to GET only
    assert response.header("content-length") == str(len(DATA))


def test_empty_file_is_an_empty_200(server: Server) -> None:
    response = server.request("GET", "/empty.flv")
    assert (response.status, response.body, response.header("content-length")) == (200, b"", "0")


@pytest.mark.parametrize(
    ("name", "expected"),
    [(name, MEDIA_TYPES[ext]) for ext, name in (
        (".flv", "a.flv"), (".mp4", "a.mp4"), (".m4s", "a.m4s"), (".m3u8", "a.m3u8"),
        (".ts", "a.ts"), (".aac", "a.aac"), (".json", "a.json"), (".html", "a.html"),
        (".js", "a.js"), (".css", "a.css"), (".m4a", "a.M4A"),
    )] + [("a.unknownext", "application/octet-stream"), ("a.json.gz", None)],
)
def test_content_type_by_extension(root: Path, name: str, expected: str | None) -> None:
    (root / name).write_bytes(b"x")
    response = Server(root).request("GET", "/" + name)
    assert response.status == 200
    if expected is not None:
        assert response.header("content-type") == expected
    assert response.header("content-encoding") is None


def test_cache_rules_by_type(root: Path) -> None:
    for name, rule in (("a.m3u8", "no-cache"), ("0.ts", "public, max-age=86400"),
                       ("1.m4s", "public, max-age=86400"), ("s.mp4", "no-cache")):
        (root / name).write_bytes(b"x")
        assert Server(root).request("GET", "/" + name).header("cache-control") == rule


# --------------------------------------------------------------------------- methods


def test_options_is_a_cors_preflight(server: Server) -> None:
    raw = server.raw(b"OPTIONS /data.bin HTTP/1.1\r\nHost: x\r\nOrigin: http://other\r\n"
                     b"Access-Control-Request-Method: GET\r\n"
                     b"Access-Control-Request-Headers: range\r\n\r\n")
    response = parse(raw)
    assert response.status == 204
    assert response.header("content-length") is None
    assert response.header("access-control-allow-origin") == "*"
    assert "Range" in (response.header("access-control-allow-headers") or "")
    assert response.header("access-control-allow-methods") == "GET, HEAD, OPTIONS"
    assert response.header("allow") == "GET, HEAD, OPTIONS"


def test_a_preflight_for_a_missing_file_passes_so_the_page_sees_the_404(server: Server) -> None:
    assert server.request("OPTIONS", "/nope.mp4").status == 204
    missing = server.request("GET", "/nope.mp4")
    assert missing.status == 404
    assert missing.header("access-control-allow-origin") == "*"


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "TRACE", "BREW"])
def test_other_methods_are_405_with_allow(server: Server, method: str) -> None:
    response = server.request(method, "/data.bin")
    assert response.status == 405
    assert response.header("allow") == "GET, HEAD, OPTIONS"


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("value", "start", "stop"),
    [("bytes=0-99", 0, 100), ("bytes=100-", 100, len(DATA)), ("bytes=-100", len(DATA) - 100,
     len(DATA)), ("bytes=-99999", 0, len(DATA)), ("bytes=10000-99999", 10000, len(DATA)),
     ("bytes=0-0", 0, 1), ("bytes=5-9,0-4", 0, 10), ("bytes=0-,0-,0-", 0, len(DATA))],
)
def test_a_single_range_is_206_with_those_bytes(
    server: Server, value: str, start: int, stop: int
) -> None:
    response = server.request("GET", "/data.bin", Range=value)
    assert response.status == 206
    assert response.body == DATA[start:stop]
    assert response.header("content-range") == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert response.header("content-length") == str(stop - start)


def _multipart(response: Response) -> list[tuple[str, bytes]]:
    content_type = response.header("content-type") or ""
    boundary = content_type.split("boundary=")[1].encode()
    parts = []
    for chunk in response.body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        content_range = re.search(rb"Content-Range: (.*)", head)
        assert content_range is not None
        parts.append((content_range.group(1).strip().decode(), data[:-2]))  # CRLF before --
    return parts


def test_several_ranges_are_multipart_in_the_order_asked(server: Server) -> None:
    response = server.request("GET", "/data.bin", Range="bytes=9000-9099,0-9")
    assert response.status == 206
    assert (response.header("content-type") or "").startswith("multipart/byteranges; boundary=")
    assert response.body.endswith(b"--\r\n")
    assert len(response.body) == int(response.header("content-length") or 0)
    assert _multipart(response) == [
        (f"bytes 9000-9099/{len(DATA)}", DATA[9000:9100]),
        (f"bytes 0-9/{len(DATA)}", DATA[0:10]),
    ]


def test_ranges_whose_framing_costs_more_than_the_file_get_the_file(server: Server) -> None:
    many = ",".join(f"{i}-{i}" for i in range(0, 32, 2))  # 16 one-byte ranges
    response = server.request("GET", "/data.bin", Range="bytes=" + many)
    assert response.status == 206  # 16 parts of framing are still less than 10 KB
    tiny = server.root / "tiny.bin"
    tiny.write_bytes(b"0123456789" * 10)
    response = server.request("GET", "/tiny.bin", Range="bytes=" + many)
    assert response.status == 200
    assert response.body == tiny.read_bytes()


@pytest.mark.parametrize(
    "value", ["bytes=" + ",".join(["0-"] * 1500), "bytes=" + ",".join(["-1"] * 17), "bytes=9-0",
              "bytes=x", "lines=1-2"],
)
def test_abusive_or_malformed_ranges_get_the_whole_file_once(server: Server, value: str) -> None:
    response = server.request("GET", "/data.bin", Range=value)
    assert response.status == 200
    assert response.body == DATA
    assert response.header("content-range") is None


@pytest.mark.parametrize("value", ["bytes=10243-", "bytes=20000-30000", "bytes=-0"])
def test_unsatisfiable_ranges_are_416_with_the_size(server: Server, value: str) -> None:
    response = server.request("GET", "/data.bin", Range=value)
    assert response.status == 416
    assert response.header("content-range") == f"bytes */{len(DATA)}"
    assert response.header("access-control-allow-origin") == "*"


def test_ranges_of_an_empty_file(server: Server) -> None:
    assert server.request("GET", "/empty.flv", Range="bytes=0-").status == 416
    suffix = server.request("GET", "/empty.flv", Range="bytes=-5")
    assert (suffix.status, suffix.body) == (200, b"")


# --------------------------------------------------------------------------- conditions


def test_if_none_match_gives_304_and_wins_over_if_modified_since(server: Server) -> None:
    etag = server.request("GET", "/data.bin").header("etag") or ""
    cached = server.request("GET", "/data.bin", If_None_Match=f'"x", {etag}')
    assert cached.status == 304
    assert cached.body == b""
    assert cached.header("etag") == etag
    assert cached.header("content-length") is None
    assert cached.header("content-type") is None
    assert server.request("HEAD", "/data.bin", If_None_Match="*").status == 304
    # A stale tag: the file is sent although If-Modified-Since alone would say 304.
    future = datetimeToString(4102444800).decode()
    stale = server.request("GET", "/data.bin", If_None_Match='"old"', If_Modified_Since=future)
    assert (stale.status, stale.body) == (200, DATA)


def test_if_modified_since(server: Server, root: Path) -> None:
    mtime = int(os.stat(root / "data.bin").st_mtime)
    same = datetimeToString(mtime).decode()
    before = datetimeToString(mtime - 10).decode()
    assert server.request("GET", "/data.bin", If_Modified_Since=same).status == 304
    assert server.request("GET", "/data.bin", If_Modified_Since=before).status == 200
    assert server.request("GET", "/data.bin", If_Modified_Since="garbage").status == 200


def test_if_range_uses_the_range_only_while_the_file_is_unchanged(
    server: Server, root: Path
) -> None:
    info = os.stat(root / "data.bin")
    server.clock.advance(info.st_mtime + 10)
    etag = server.request("GET", "/data.bin").header("etag") or ""
    last_modified = datetimeToString(int(info.st_mtime)).decode()
    for validator in (etag, last_modified):
        response = server.request("GET", "/data.bin", Range="bytes=0-9", If_Range=validator)
        assert (response.status, response.body) == (206, DATA[:10]), validator
    for validator in ('"changed"', "W/" + etag, datetimeToString(10).decode()):
        response = server.request("GET", "/data.bin", Range="bytes=0-9", If_Range=validator)
        assert (response.status, response.body) == (200, DATA), validator


def test_if_range_date_of_a_file_changed_this_second_is_weak(server: Server, root: Path) -> None:
    info = os.stat(root / "data.bin")
    server.clock.advance(info.st_mtime + 0.2)
    last_modified = datetimeToString(int(info.st_mtime)).decode()
    response = server.request("GET", "/data.bin", Range="bytes=0-9", If_Range=last_modified)
    assert response.status == 200


# --------------------------------------------------------------------------- the tree


@pytest.mark.parametrize(
    "path",
    ["/../outside.txt", "/%2e%2e/outside.txt", "/..%2foutside.txt", "/%2e%2e%2foutside.txt",
     "/hls/..%5c..%5coutside.txt", "/..\\outside.txt", "/%00", "/data.bin%00.txt",
     "/link-out", "/dir-out/outside.txt", "/link-hidden", "/.env", "/%2eenv",
     "/hls/live/cam/.recording", "/hls/live/cam/index.m3u8.tmp", "/secret.txt.tmp",
     "//outside.txt", "/./data.bin", "/%ff", "/data.bin/", "/data.bin/x",
     "../outside.txt", "http://x/../outside.txt", "/hls//live"],
)
def test_nothing_outside_the_root_nor_internal_is_served(server: Server, path: str) -> None:
    raw = server.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
    assert parse(raw).status in (400, 404), (path, raw[:200])
    assert b"OUTSIDE" not in raw and b"SECRET" not in raw and b"half" not in raw


def test_symlinks_inside_the_root_are_followed(server: Server) -> None:
    response = server.request("GET", "/link-in.mp4")
    assert (response.status, response.body) == (200, DATA)
    assert response.header("content-type") == "video/mp4"


def test_a_fifo_is_not_opened(server: Server, root: Path) -> None:
    os.mkfifo(root / "pipe.ts")
    assert server.request("GET", "/pipe.ts").status == 404


def test_no_listing_without_the_flag(server: Server) -> None:
    assert server.request("GET", "/").status == 404
    assert server.request("GET", "/hls/").status == 404
    assert server.request("GET", "/hls").status == 404


def test_listing_shows_visible_names_escaped(root: Path) -> None:
    server = Server(root, listing=True)
    page = server.request("GET", "/")
    assert page.status == 200
    assert page.header("content-type") == "text/html; charset=utf-8"
    html = page.body.decode()
    assert "&lt;script&gt;.flv" in html and 'href="%3Cscript%3E.flv"' in html
    assert "<script>" not in html
    for hidden in (".env", "secret.txt.tmp", "link-out", "dir-out", "link-hidden"):
        assert hidden not in html
    assert 'href="data.bin"' in html and 'href="link-in.mp4"' in html
    inner = server.request("GET", "/hls/live/cam/").body.decode()
    assert "index.m3u8" in inner and ".recording" not in inner and ".tmp" not in inner
    redirect = server.request("GET", "/hls/live/cam")
    assert (redirect.status, redirect.header("location")) == (301, "cam/")


def test_a_directory_index_page_is_served(root: Path) -> None:
    (root / "hls" / "index.html").write_text("<p>hi</p>")
    server = Server(root)
    page = server.request("GET", "/hls/")
    assert (page.status, page.body) == (200, b"<p>hi</p>")
    assert page.header("content-type") == "text/html; charset=utf-8"


# --------------------------------------------------------------------------- the body


class GrowingFileTransport(StringTransport):
    """A transport whose first write appends to a file, as a recorder
    writing a live FLV does while the file is being sent."""

    def __init__(self, path: Path, extra: bytes) -> None:
        super().__init__(peerAddress=PEER)
        self.path = path
        self.extra = extra

    def write(self, data: bytes) -> None:
        if self.extra:
            with open(self.path, "ab") as f:
                f.write(self.extra)
            self.extra = b""
        super().write(data)


def test_a_file_growing_while_sent_sends_exactly_its_content_length(
    server: Server, root: Path
) -> None:
    path = root / "live.flv"
    body = os.urandom(300_000)
    path.write_bytes(body)
    raw = server.raw(b"GET /live.flv HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /data.bin HTTP/1.1\r\nHost: x\r\n\r\n",
                     GrowingFileTransport(path, b"G" * 100_000))
    first = parse(raw)
    assert first.header("content-length") == "300000"
    assert first.body == body
    # The next response on the connection starts right after: nothing overran.
    rest = raw[raw.index(b"\r\n\r\n") + 4 + 300_000 :]
    assert rest.startswith(b"HTTP/1.1 200 OK")
    assert parse(rest).body == DATA


class ShrinkingFileTransport(StringTransport):
    """A transport whose first write truncates the file being sent."""

    def __init__(self, path: Path) -> None:
        super().__init__(peerAddress=PEER)
        self.path = path
        self.aborted = False

    def write(self, data: bytes) -> None:
        os.truncate(self.path, 1000)
        super().write(data)

    def abortConnection(self) -> None:
        self.aborted = True
        super().loseConnection()


def test_a_file_shrinking_while_sent_aborts_the_connection(server: Server, root: Path) -> None:
    path = root / "cut.mp4"
    path.write_bytes(os.urandom(300_000))
    transport = ShrinkingFileTransport(path)
    server.raw(b"GET /cut.mp4 HTTP/1.1\r\nHost: x\r\n\r\n", transport)
    assert transport.aborted
    assert len(transport.value()) < 300_000


class SlowClientTransport(StringTransport):
    """Asks its producer to pause whenever it holds more than 64 KiB the
    client has not read, as a TCP transport does; :meth:`read` is the client
    reading it all."""

    HIGH_WATER = 64 * 1024

    def __init__(self) -> None:
        super().__init__(peerAddress=PEER)
        self.read_up_to = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) - self.read_up_to > self.HIGH_WATER and self.producer is not None:
            self.producer.pauseProducing()

    def read(self) -> None:
        self.read_up_to = len(self.value())
        if self.producer is not None:
            self.producer.resumeProducing()


def _request_big_file(server: Server, root: Path, size: int) -> tuple[object, SlowClientTransport]:
    (root / "big.mp4").write_bytes(os.urandom(size))
    transport = SlowClientTransport()
    channel, _ = server.connect(transport)
    channel.dataReceived(b"GET /big.mp4 HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[attr-defined]
    return channel, transport


def test_a_response_follows_the_transports_pauses(server: Server, root: Path) -> None:
    _, transport = _request_big_file(server, root, 1_000_000)
    assert len(transport.value()) < 200_000
    reads = 0
    while parse(transport.value()).body != (root / "big.mp4").read_bytes():
        server.clock.advance(SEND_STALL_TIMEOUT_S - 1)  # slow, but reading
        transport.read()
        reads += 1
        assert reads < 100
    assert reads > 5
    assert not transport.disconnecting


def test_a_client_that_reads_nothing_is_closed_after_the_stall_timeout(
    server: Server, root: Path
) -> None:
    _, transport = _request_big_file(server, root, 1_000_000)
    server.clock.advance(SEND_STALL_TIMEOUT_S - 0.5)
    assert not transport.disconnecting
    server.clock.advance(0.5)
    assert transport.disconnecting
    assert len(transport.value()) < 200_000


def test_a_response_on_an_already_paused_connection_is_bounded(server: Server, root: Path) -> None:
    """A transport paused before the response began does not ask again
    (TLS behind a pipelined response): at most MAX_UNPAUSED_BYTES go out
    until it resumes."""
    size = MAX_UNPAUSED_BYTES + 2_000_000
    (root / "big.mp4").write_bytes(os.urandom(size))
    channel, transport = server.connect()
    channel.pauseProducing()  # type: ignore[attr-defined]
    channel.dataReceived(b"GET /big.mp4 HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[attr-defined]
    assert len(transport.value()) <= MAX_UNPAUSED_BYTES + SEND_CHUNK_BYTES + 1000
    channel.resumeProducing()  # type: ignore[attr-defined]
    assert parse(transport.value()).body == (root / "big.mp4").read_bytes()


def _open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def test_a_client_gone_mid_response_closes_the_file(server: Server, root: Path) -> None:
    before = _open_fds()
    channel, _ = _request_big_file(server, root, 1_000_000)
    assert _open_fds() == before + 1
    channel.connectionLost(Failure(ConnectionLost()))  # type: ignore[attr-defined]
    assert _open_fds() == before
    assert server.clock.getDelayedCalls() == [] or all(
        "_stalled" not in repr(c) for c in server.clock.getDelayedCalls()
    )


# --------------------------------------------------------------------------- the web port


def test_the_web_port_uses_the_same_resource_without_listings(tmp_path: Path) -> None:
    (tmp_path / "hls").mkdir()
    (tmp_path / "hls" / ".recording").write_text("{}")
    site = make_web_site(str(tmp_path), reactor=Clock())
    assert isinstance(site.resource.files, RootedFile)
    assert not site.resource.files.listing
    channel = site.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(b"OPTIONS /hls/x.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /hls/ HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /hls/.recording HTTP/1.1\r\nHost: x\r\n\r\n")
    statuses = re.findall(rb"HTTP/1.1 (\d+)", transport.value())
    assert statuses == [b"204", b"404", b"404"]


def test_the_access_log_line_shows_the_range_bounded_and_escaped() -> None:
    request = DummyRequest([b"x.mp4"])
    request.uri = b"/x.mp4?key=secret"
    request.requestHeaders.setRawHeaders(b"range", [b'bytes=0-99"\x01'])
    request.client = PEER  # type: ignore[assignment]
    request.code = 206
    request.sentLength = 100
    line = file_access_log_line("ts", request)
    assert "key=secret" not in line
    assert line.endswith(' range="bytes=0-99\\"\\x01"')
    request.requestHeaders.setRawHeaders(b"range", [b"bytes=" + b"0-," * 1500])
    assert len(file_access_log_line("ts", request)) < len(line) + 120


# --------------------------------------------------------------------------- twistd filegateway


def test_filegateway_options_and_service(tmp_path: Path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from rtmpd.tap import filegateway

    options = filegateway.Options()
    options.parseOptions(["--listen", "tcp:18082:interface=127.0.0.1", "--root", str(tmp_path),
                          "--listing", "--max-connections", "7", "--header-timeout", "3"])
    reactor = MemoryReactorClock()  # type: ignore[no-untyped-call]
    top = filegateway.makeService(options, reactor)
    top.privilegedStartService()
    top.startService()
    port, factory, _, interface = reactor.tcpServers[0]
    assert (port, interface) == (18082, "127.0.0.1")
    assert isinstance(factory.resource, RootedFile) and factory.resource.listing
    assert (factory.max_connections, factory.header_timeout) == (7, 3.0)
    top.stopService()


def test_filegateway_defaults() -> None:
    from rtmpd.tap import filegateway

    options = filegateway.Options()
    options.parseOptions([])
    assert (options["listen"], options["root"], options["listing"]) == ("tcp:8082", "./media", 0)
    assert options["max-connections"] == filegateway.DEFAULT_MAX_CONNECTIONS
    assert (options["header-timeout"], options["max-header-bytes"]) == (10.0, 16384)


def test_filegateway_refuses_a_root_it_cannot_serve(tmp_path: Path) -> None:
    from rtmpd.tap import filegateway

    with pytest.raises(SystemExit, match="does not exist"):
        filegateway.check_root(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is not a directory"):
        filegateway.check_root(str(tmp_path / "file"))
    assert filegateway.check_root(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize(
    "argv", [["--listen", "nonsense:1"], ["--max-connections", "-1"], ["--header-timeout", "0"]]
)
def test_filegateway_bad_options_are_usage_errors(argv: list[str]) -> None:
    from twisted.python import usage

    from rtmpd.tap import filegateway

    with pytest.raises(usage.UsageError):
        filegateway.Options().parseOptions(argv)


def test_listing_of_a_non_ascii_directory(root: Path) -> None:
    (root / "é").mkdir()
    (root / "é" / "ü.mp4").write_bytes(b"x")
    server = Server(root, listing=True)
    page = server.request("GET", "/%C3%A9/")
    assert page.status == 200
    assert 'href="%C3%BC.mp4"' in page.body.decode()
    assert "Directory listing for /é/" in page.body.decode()
    assert server.request("GET", "/%C3%A9/%C3%BC.mp4").body == b"x"
    # Twisted's lister reads the URI as ASCII; raw UTF-8 in the request
    # line never reaches it (Twisted answers 400 first).
    raw = server.raw("GET /é/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert parse(raw).status == 400
