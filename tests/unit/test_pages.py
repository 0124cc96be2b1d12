"""The web port's pages, ``/config.json`` and ``/recordings.json``
(rtmpd.protocols.pages), through the real Site on a fake transport."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from rtmpd._version import __version__
from rtmpd.admission import Admission
from rtmpd.protocols.pages import (
    MAX_LISTED_RECORDINGS,
    listener_address,
    page_config,
    pages_directory,
)
from rtmpd.protocols.web import make_web_site
from rtmpd.registry import StreamRegistry
from rtmpd.services.recorder import MARKER_NAME
from rtmpd.tap import rtmpd as rtmpd_tap

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def get(site: object, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    channel = site.buildProtocol(PEER)  # type: ignore[attr-defined]
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: any.name.test\r\n\r\n".encode())
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return int(lines[0].split(" ")[1]), headers, body


@pytest.fixture
def pages(tmp_path: Path) -> Path:
    web = tmp_path / "web"
    (web / "js").mkdir(parents=True)
    (web / "vendor").mkdir()
    (web / "node_modules" / "hls.js").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>live</title>")
    (web / "play.html").write_text("<!doctype html><title>hls</title>")
    (web / "js" / "common.js").write_text("export const x = 1;\n")
    (web / "vendor" / "mpegts.js").write_text("var mpegts;\n")
    (web / "vendor" / ".installed").write_text("")
    (web / "package.json").write_text("{}")
    (web / "package-lock.json").write_text("{}")
    (web / "node_modules" / "hls.js" / "package.json").write_text("{}")
    return web


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    cam = root / "hls" / "live" / "cam"
    cam.mkdir(parents=True)
    (cam / "index.m3u8").write_text("#EXTM3U\n")
    return root


def test_slash_is_the_index_page_and_pages_sit_beside_the_recordings(
    pages: Path, media: Path
) -> None:
    site = make_web_site(str(media), reactor=Clock(), pages=str(pages))
    status, headers, body = get(site, "/")
    assert (status, body) == (200, b"<!doctype html><title>live</title>")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert get(site, "/play.html")[2] == b"<!doctype html><title>hls</title>"
    status, headers, _ = get(site, "/js/common.js")
    assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert get(site, "/vendor/mpegts.js")[0] == 200
    assert get(site, "/hls/live/cam/index.m3u8")[2] == b"#EXTM3U\n"


@pytest.mark.parametrize(
    "path",
    ["/package.json", "/package-lock.json", "/node_modules/hls.js/package.json",
     "/vendor/.installed", "/js/../package.json", "/%2e%2e/media/hls/live/cam/index.m3u8",
     "/nothing.html"],
)
def test_set_up_files_and_unknown_names_are_not_served(
    pages: Path, media: Path, path: str
) -> None:
    site = make_web_site(str(media), reactor=Clock(), pages=str(pages))
    assert get(site, path)[0] == 404


def test_without_pages_slash_is_404_and_recordings_are_still_served(media: Path) -> None:
    site = make_web_site(str(media), reactor=Clock())
    assert get(site, "/")[0] == 404
    assert get(site, "/hls/live/cam/index.m3u8")[0] == 200


def test_admin_endpoints_win_over_pages_of_the_same_name(pages: Path, media: Path) -> None:
    (pages / "api").mkdir()
    (pages / "api" / "index.html").write_text("not the api")
    reactor = MemoryReactorClock()  # type: ignore[no-untyped-call]
    admission = Admission(StreamRegistry(reactor))
    site = make_web_site(str(media), reactor=reactor, admission=admission, pages=str(pages))
    status, _, body = get(site, "/api/streams")
    assert status == 200
    assert json.loads(body) is not None
    assert b"not the api" not in body


def test_config_json_is_what_the_server_was_given(pages: Path, media: Path) -> None:
    config = {"http": {"port": 8501, "tls": False}}
    site = make_web_site(str(media), reactor=Clock(), pages=str(pages), config=config)
    status, headers, body = get(site, "/config.json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-cache"
    assert headers["access-control-allow-origin"] == "*"
    assert json.loads(body) == config
    status, headers, body = get(site, "/config.json", "HEAD")
    assert (status, body) == (200, b"")
    assert get(site, "/config.json", "POST")[0] == 405
    assert get(site, "/config.json/x")[0] == 404


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8501", {"port": 8501, "tls": False}),
        ("tcp:8501:interface=127.0.0.1", {"port": 8501, "tls": False}),
        ("tcp:interface=127.0.0.1:port=9000", {"port": 9000, "tls": False}),
        ("tcp6:8080:interface=\\:\\:1", {"port": 8080, "tls": False}),
        ("ssl:443:privateKey=key.pem:certKey=cert.pem", {"port": 443, "tls": True}),
        ("ssl:port=8443:privateKey=key.pem", {"port": 8443, "tls": True}),
        ("unix:/run/rtmpd.sock", {"port": None, "tls": False}),
    ],
)
def test_listener_address_reads_port_and_tls_from_an_endpoint(
    description: str, expected: dict[str, object]
) -> None:
    assert listener_address(description) == expected


def test_the_tap_writes_config_json_from_its_options(tmp_path: Path) -> None:
    options = rtmpd_tap.Options()
    options.parseOptions(["--http", "tcp:8601", "--web", "tcp:9090", "--root", str(tmp_path),
                          "--record", "hls,fmp4", "--play-key", "s3cr3t"])
    config = page_config(options, "1.2.3")
    assert config["http"] == {"port": 8601, "tls": False}
    assert config["web"] == {"port": 9090, "tls": False}
    assert config["rtmp"] == {"port": 1935, "tls": False}
    assert config["record"] == ["hls", "fmp4"]
    assert config["play_key"] is True
    assert config["signed"] is False
    assert config["api"] == "loopback"
    with_token = rtmpd_tap.Options()
    with_token.parseOptions(["--root", str(tmp_path), "--api-token", "t0ken"])
    assert page_config(with_token, "1")["api"] == "token"
    assert "t0ken" not in json.dumps(page_config(with_token, "1"))
    assert "s3cr3t" not in json.dumps(config)
    reactor = MemoryReactorClock()  # type: ignore[no-untyped-call]
    service = rtmpd_tap.makeService(options, reactor=reactor)
    web = service.getServiceNamed("web")
    served = json.loads(get(web.factory, "/config.json")[2])
    assert served == {**config, "version": __version__.public()}


def test_the_source_tree_install_finds_the_top_level_web_directory() -> None:
    found = pages_directory()
    assert found is not None
    top = Path(__file__).resolve().parent.parent.parent / "web"
    assert os.path.realpath(found) == str(top)


# --------------------------------------------------------------------------- recordings.json


def recordings(site: object, query: str = "") -> list[dict[str, object]]:
    status, _, body = get(site, "/recordings.json" + query)
    assert status == 200
    listed: list[dict[str, object]] = json.loads(body)["recordings"]
    return listed


def test_recordings_lists_flv_and_mp4_files_newest_first(media: Path, tmp_path: Path) -> None:
    flv = media / "flv" / "live" / "cam"
    flv.mkdir(parents=True)
    (flv / "index.flv").write_bytes(b"FLV" * 10)
    (flv / "index-20260101T000000Z.flv").write_bytes(b"FLV")
    (flv / MARKER_NAME).write_text("{}")
    merged = media / "mp4" / "live" / "cam" / "output_merge-20260101T000000Z"
    merged.mkdir(parents=True)
    (merged / "stream_full.mp4").write_bytes(b"MP4" * 5)
    running = media / "mp4" / "live" / "cam" / "output_merge"
    running.mkdir()
    (running / "init.mp4").write_bytes(b"x")
    for name in ("000001.m4s", "000002.m4s", "000003.m4s.tmp", "stream_full.mp4.tmp"):
        (running / name).write_bytes(b"x")
    (running / MARKER_NAME).write_text("{}")
    for age, path in enumerate([flv / "index.flv", running, merged / "stream_full.mp4",
                                flv / "index-20260101T000000Z.flv"]):
        os.utime(path, (1_800_000_000 - age * 10, 1_800_000_000 - age * 10))
    site = make_web_site(str(media), reactor=Clock())
    assert recordings(site) == [
        {"app": "live", "stream": "cam", "kind": "flv", "path": "flv/live/cam/index.flv",
         "size": 30, "modified": 1_800_000_000, "live": True},
        {"app": "live", "stream": "cam", "kind": "fmp4", "path": "mp4/live/cam/output_merge",
         "size": None, "modified": 1_799_999_990, "live": True, "fragments": 2,
         "inits": ["init.mp4"]},
        {"app": "live", "stream": "cam", "kind": "mp4",
         "path": "mp4/live/cam/output_merge-20260101T000000Z/stream_full.mp4",
         "size": 15, "modified": 1_799_999_980, "live": False},
        {"app": "live", "stream": "cam", "kind": "flv",
         "path": "flv/live/cam/index-20260101T000000Z.flv",
         "size": 3, "modified": 1_799_999_970, "live": False},
    ]


def test_recordings_of_one_stream_and_its_fmp4_fragments(media: Path) -> None:
    for stream in ("cam", "other"):
        separate = media / "mp4" / "live" / stream / "output_separate"
        separate.mkdir(parents=True)
        for name in ("video_init.mp4", "audio_init.mp4", "video_000001.m4s",
                     "audio_000001.m4s", "video_000002.m4s", "audio_000002.m4s.tmp"):
            (separate / name).write_bytes(b"x")
    site = make_web_site(str(media), reactor=Clock())
    listed = recordings(site, "?app=live&stream=cam")
    assert [(e["path"], e["kind"], e["live"], e["fragments"], e["inits"]) for e in listed] == [
        ("mp4/live/cam/output_separate", "fmp4-separate", False, 2,
         ["audio_init.mp4", "video_init.mp4"])]
    assert len(recordings(site)) == 2
    assert recordings(site, "?app=live&stream=nothing") == []
    assert recordings(site, "?app=..&stream=cam") == []


def test_recordings_never_lists_internal_odd_or_outside_files(
    media: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "cam").mkdir(parents=True)
    (outside / "cam" / "index.flv").write_bytes(b"SECRET")
    (media / "flv" / "live").mkdir(parents=True)
    (media / "flv" / "live" / "linked").symlink_to(outside / "cam")
    (media / "flv" / "bad name").mkdir()
    (media / "flv" / "bad name" / "cam").mkdir()
    (media / "flv" / "bad name" / "cam" / "index.flv").write_bytes(b"x")
    odd = media / "flv" / "live" / "odd"
    odd.mkdir()
    for name in ("index.flv.tmp", ".index.flv", "notes.flv", "index-x.flv", "index.flv.bak"):
        (odd / name).write_bytes(b"x")
    merge = media / "mp4" / "live" / "cam" / "output_merge"
    merge.mkdir(parents=True)
    (merge / "stream_full.mp4.tmp").write_bytes(b"half")
    (media / "mp4" / "live" / "cam" / "elsewhere").mkdir()
    (media / "mp4" / "live" / "cam" / "elsewhere" / "stream_full.mp4").write_bytes(b"x")
    site = make_web_site(str(media), reactor=Clock())
    assert recordings(site) == []


def test_recordings_listing_is_bounded(media: Path) -> None:
    cam = media / "flv" / "live" / "cam"
    cam.mkdir(parents=True)
    for n in range(MAX_LISTED_RECORDINGS + 5):
        (cam / f"index-20260101T000000Z-{n}.flv").write_bytes(b"x")
    site = make_web_site(str(media), reactor=Clock())
    assert len(recordings(site)) == MAX_LISTED_RECORDINGS
