"""Who may publish what: one publisher per name, the name free again at once
when it leaves, and bad names refused on every protocol with nothing created
outside --root."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rtmpd.codec import flv
from tests.e2e.conftest import WAIT_S, Server
from tests.e2e.rtmpclient import RtmpTestClient

BAD_NAMES = ["../x", "a/b", "", "x" * 300, "%2e%2e", ".."]


def test_second_publisher_is_refused_and_republish_works(server: Server, clip: Path) -> None:
    first = server.publish(clip, "cam1")
    server.wait_live("cam1")
    second = RtmpTestClient(server.rtmp_port)
    assert second.publish("cam1") == "NetStream.Publish.BadName"
    second.close()
    # ffmpeg as a second publisher fails too.
    rival = server.publish(clip, "cam1", loops=0)
    assert rival.wait(timeout=WAIT_S) != 0
    first.kill()
    first.wait()
    # The name is free as soon as the first publisher's connection is gone.
    third = RtmpTestClient(server.rtmp_port)
    end_code = ""
    for _ in range(50):
        end_code = third.publish("cam1")
        if end_code == "NetStream.Publish.Start":
            break
    assert end_code == "NetStream.Publish.Start"
    third.close()
    server.publish(clip, "cam1")
    server.wait_live("cam1")


def test_viewers_see_the_end_when_the_publisher_leaves(server: Server, clip: Path) -> None:
    from rtmpd.codec.rtmp import events as ev

    publisher = server.publish(clip, "cam1")
    server.wait_live("cam1")
    viewer = RtmpTestClient(server.rtmp_port)
    assert viewer.play("cam1") == "NetStream.Play.Start"
    viewer.media(5)
    publisher.kill()
    notify = viewer.wait_for(
        lambda e: isinstance(e, ev.StatusReceived) and e.code == "NetStream.Play.UnpublishNotify"
    )
    assert notify
    viewer.close()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_on_every_protocol(server: Server, name: str) -> None:
    before = set(os.listdir(server.root.parent))
    client = RtmpTestClient(server.rtmp_port)
    assert client.publish(name) == "NetStream.Publish.BadName"
    assert client.play(name) == "NetStream.Play.StreamNotFound"
    client.close()
    quoted = urllib.request.quote(name, safe="%/.")
    for method, path in (("GET", f"/live/{quoted}.flv"), ("POST", f"/live/{quoted}")):
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}{path}", method=method,
            data=flv.encode_header(has_audio=True, has_video=True) if method == "POST" else None,
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=WAIT_S)
        assert info.value.code in (400, 404), (method, path, info.value.code)
    assert set(os.listdir(server.root.parent)) == before
    assert not any(server.root.rglob("*x*")) if server.root.exists() else True


def test_bad_app_name_is_refused_at_connect(server: Server) -> None:
    from rtmpd.codec.rtmp import events as ev

    client = RtmpTestClient(server.rtmp_port, app="a.b")
    assert isinstance(client.connect_result, ev.ConnectFailed)
    client.close()


def test_web_port_serves_nothing_outside_root(server: Server) -> None:
    (server.root / "hello.txt").write_text("hi")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.web_port}/hello.txt",
                                timeout=WAIT_S) as response:
        assert response.read() == b"hi"
    # "/" is the player pages' index.html, never a listing of the root.
    with urllib.request.urlopen(f"http://127.0.0.1:{server.web_port}/", timeout=WAIT_S) as response:
        page = response.read()
    assert b"<!doctype html>" in page.lower() and b"hello.txt" not in page
    for path in ("/../rtmpd.log", "/%2e%2e/rtmpd.log", "/..%2frtmpd.log"):
        with socket.create_connection(("127.0.0.1", server.web_port), timeout=WAIT_S) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.split(b" ")[1] in (b"400", b"403", b"404"), (path, reply[:100])
        assert b"twistd" not in reply


def test_web_port_cache_rules_let_a_cdn_keep_segments_not_playlists(server: Server) -> None:
    hls = server.root / "hls" / "live" / "cam"
    hls.mkdir(parents=True)
    for name in ("index.m3u8", "0.ts", "x.m4s", "stream_full.mp4"):
        (hls / name).write_bytes(b"x")
    expected = {
        "index.m3u8": ("no-cache", "application/vnd.apple.mpegurl"),
        "0.ts": ("public, max-age=86400", "video/mp2t"),
        "x.m4s": ("public, max-age=86400", "video/iso.segment"),
        "stream_full.mp4": ("no-cache", "video/mp4"),
    }
    for name, (cache, mime) in expected.items():
        url = f"http://127.0.0.1:{server.web_port}/hls/live/cam/{name}"
        with urllib.request.urlopen(url, timeout=WAIT_S) as response:
            assert response.headers["Cache-Control"] == cache, name
            assert response.headers["Content-Type"] == mime, name
            assert response.headers["Access-Control-Allow-Origin"] == "*"
