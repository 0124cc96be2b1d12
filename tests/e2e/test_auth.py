"""Authorization end to end, for publish and play on RTMP, HTTP(-FLV) and
WS-FLV: static keys (``--publish-key``, ``--play-key``), signed URLs
(``--sign-secret``, and ``rtmpd-sign`` making them) and HTTP hooks
(``--on-publish``, ``--on-play`` and the done hooks).

A refusal of credentials is RTMP ``*.Unauthorized``, HTTP 401 or WS close
4403; a hook's refusal (a denial, an error or a timeout) is RTMP
``NetStream.Publish.Rejected`` / ``NetStream.Play.Failed``, HTTP 403 or WS
close 4403. Every refusal is one log line, and no secret ever reaches the log.

One server per set of options (a class-scoped fixture), so each class starts
one ``twistd rtmpd`` and stops it when its tests are done.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rtmpd.codec.rtmp import events as ev
from tests.e2e.conftest import VENV_BIN, WAIT_S, Server, head_status, run, start_server, stop_server
from tests.e2e.hookserver import HookServer, hook_server
from tests.e2e.rtmpclient import RtmpTestClient
from tests.e2e.test_flv_transports import check_clean, ws_url

PUBLISH_KEY = "pubKey-5e1f77"
PLAY_KEY = "playKey-9c2d31"
SIGN_SECRET = "signSecret-a7b3c0"
#: A credential in the hook URLs' query: the log must not show it either.
HOOK_TOKEN = "hookToken-41d0aa"
#: How long a hanging hook takes to answer: far past --hook-timeout 1.
HANG_S = 20.0

PROTOCOLS = ("rtmp", "http", "ws")

#: What a client sees when its credentials are missing or wrong.
UNAUTHORIZED: dict[tuple[str, str], str | int] = {
    ("publish", "rtmp"): "NetStream.Publish.Unauthorized",
    ("play", "rtmp"): "NetStream.Play.Unauthorized",
    ("publish", "http"): 401,
    ("play", "http"): 401,
    ("publish", "ws"): 4403,
    ("play", "ws"): 4403,
}
#: What a client sees when a hook says no (or fails, or takes too long).
FORBIDDEN: dict[tuple[str, str], str | int] = {
    ("publish", "rtmp"): "NetStream.Publish.Rejected",
    ("play", "rtmp"): "NetStream.Play.Failed",
    ("publish", "http"): 403,
    ("play", "http"): 403,
    ("publish", "ws"): 4403,
    ("play", "ws"): 4403,
}


# -- clients ---------------------------------------------------------------------------------


def with_query(name: str, query: str) -> str:
    return f"{name}?{query}" if query else name


def wait_live(server: Server, name: str) -> None:
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        if head_status(server, name) == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"stream live/{name} never went live; log:\n{server.log()[-3000:]}")


def http_status(server: Server, method: str, path: str, body: bytes | None = None) -> int:
    """The status of one request; a 200 play is not read further."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=WAIT_S)
    try:
        conn.request(method, path, body=body)
        return conn.getresponse().status
    finally:
        conn.close()


def ws_close_code(url: str, *, publish: bytes | None = None) -> int:
    """Open a WebSocket (a publisher sending ``publish`` if given, else a
    viewer) and read until the server closes it: its close code."""
    subprotocols = ["post"] if publish is not None else None
    with (
        connect(url, open_timeout=WAIT_S, max_size=None,
                subprotocols=subprotocols) as ws,  # type: ignore[arg-type]
        pytest.raises(ConnectionClosed) as info,
    ):
        if publish is not None:
            ws.send(publish)
        while True:
            ws.recv(timeout=WAIT_S)
    assert info.value.rcvd is not None, "the server sent no close frame"
    return info.value.rcvd.code


def ws_frames(server: Server, name: str, query: str = "", count: int = 5) -> list[bytes]:
    """The first ``count`` messages a WS-FLV viewer gets."""
    got: list[bytes] = []
    # max_queue=None: the client library stops reading the socket once 16
    # messages wait unread, and would then not see the server's close frame
    # until its own 10 s close timeout.
    with connect(ws_url(server, f"/live/{with_query(name + '.flv', query)}"),
                 open_timeout=WAIT_S, max_size=None, max_queue=None) as ws:
        while len(got) < count:
            message = ws.recv(timeout=WAIT_S)
            assert isinstance(message, bytes)
            got.append(message)
    return got


def ws_publish_goes_live(server: Server, name: str, query: str, data: bytes) -> None:
    """Publish the first part of ``data`` over WebSocket and wait until the
    stream is live; closing the socket then ends it."""
    url = ws_url(server, f"/live/{with_query(name, query)}")
    with connect(url, open_timeout=WAIT_S,
                 subprotocols=["post"]) as ws:  # type: ignore[list-item]
        part = data[: len(data) // 3]
        for offset in range(0, len(part), 65536):
            ws.send(part[offset : offset + 65536])
        wait_live(server, name)


def post_publish(server: Server, clip: Path, name: str, query: str) -> subprocess.Popen[bytes]:
    """ffmpeg publishing ``clip`` by HTTP POST in real time (looped)."""
    proc = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
         "-f", "flv", "-method", "POST",
         f"http://127.0.0.1:{server.http_port}/live/{with_query(name, query)}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    server.children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=WAIT_S)


def assert_closed_by_server(client: RtmpTestClient) -> None:
    """The server closes the connection (reads until EOF; a connection
    still open after WAIT_S fails)."""
    client.sock.settimeout(WAIT_S)
    try:
        while client.sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError("the server kept the RTMP connection open after refusing") from None


def rtmp_code(server: Server, action: str, name: str, app: str = "live") -> str:
    """The onStatus code an RTMP publish or play of ``name`` gets; a refused
    one must also have its connection closed."""
    client = RtmpTestClient(server.rtmp_port, app=app, timeout_s=WAIT_S)
    try:
        assert isinstance(client.connect_result, ev.Connected), client.connect_result
        code = client.publish(name) if action == "publish" else client.play(name)
        if code in UNAUTHORIZED.values() or code in FORBIDDEN.values():
            assert_closed_by_server(client)
        return code
    finally:
        client.close()


def attempt(server: Server, action: str, protocol: str, name: str, query: str,
            body: bytes) -> str | int:
    """A publish or play of live/``name`` with ``query``: the RTMP status
    code, the HTTP status or the WebSocket close code the client got."""
    if protocol == "rtmp":
        return rtmp_code(server, action, with_query(name, query))
    if protocol == "http":
        if action == "publish":
            return http_status(server, "POST", f"/live/{with_query(name, query)}", body)
        return http_status(server, "GET", f"/live/{with_query(name + '.flv', query)}")
    if action == "publish":
        return ws_close_code(ws_url(server, f"/live/{with_query(name, query)}"), publish=body)
    return ws_close_code(ws_url(server, f"/live/{with_query(name + '.flv', query)}"))


# -- the log ---------------------------------------------------------------------------------


def refusal_lines(server: Server, action: str, name: str) -> list[str]:
    """The log's refusal lines for ``action`` of live/``name``."""
    pattern = re.compile(rf"\b{action} live/{re.escape(name)} by \S+ \S+ refused: ")
    return [line for line in server.log().splitlines() if pattern.search(line)]


def assert_refused(server: Server, action: str, protocol: str, name: str, query: str,
                   expected: str | int, body: bytes) -> None:
    """The attempt gets ``expected`` and makes exactly one refusal line."""
    before = len(refusal_lines(server, action, name))
    got = attempt(server, action, protocol, name, query, body)
    assert got == expected, f"{action} over {protocol} got {got!r}, expected {expected!r}; " \
                            f"log:\n{server.log()[-2000:]}"
    end = time.monotonic() + WAIT_S
    while len(refusal_lines(server, action, name)) <= before and time.monotonic() < end:
        time.sleep(0.05)
    lines = refusal_lines(server, action, name)
    assert len(lines) == before + 1, f"expected one refusal line, got {lines[before:]}"


def lines_showing(server: Server, *secrets: str) -> list[str]:
    """The log's lines that show any of ``secrets``."""
    return [line for line in server.log().splitlines() if any(s in line for s in secrets)]


def stop_and_check_log(server: Server, *secrets: str) -> None:
    stop_server(server)
    shown = lines_showing(server, *secrets)
    assert not shown, "the log shows a secret:\n" + "\n".join(shown)


def head(clip: Path) -> bytes:
    """A small FLV body: the clip's first bytes."""
    return clip.read_bytes()[:8192]


# -- static keys -----------------------------------------------------------------------------


@pytest.fixture(scope="class")
def keyed(tmp_path_factory: pytest.TempPathFactory, clip: Path) -> Iterator[Server]:
    """A server with both keys, and live/cam published over RTMP with its key."""
    srv = start_server(tmp_path_factory.mktemp("keys"),
                       "--publish-key", PUBLISH_KEY, "--play-key", PLAY_KEY)
    try:
        srv.publish(clip, f"cam?key={PUBLISH_KEY}")
        wait_live(srv, "cam")
        yield srv
    finally:
        stop_and_check_log(srv, PUBLISH_KEY, PLAY_KEY)


class TestStaticKeys:
    def test_rtmp_publish_with_the_key_goes_live_and_plays_back_clean_with_the_play_key(
        self, keyed: Server
    ) -> None:
        assert check_clean(f"{keyed.flv_url('cam')}?key={PLAY_KEY}") == {"h264", "aac"}
        assert check_clean(keyed.rtmp_url(f"cam?key={PLAY_KEY}")) == {"h264", "aac"}

    def test_rtmp_publish_key_on_the_connect_url_is_accepted(
        self, keyed: Server, clip: Path
    ) -> None:
        # ffmpeg sends rtmp://h/live?key=K/appcam as app "live?key=K" and
        # tcUrl rtmp://h/live?key=K, stream "appcam".
        proc = keyed.publish(clip, "appcam", app=f"live?key={PUBLISH_KEY}")
        wait_live(keyed, "appcam")
        stop(proc)
        assert rtmp_code(keyed, "publish", "appcam2",
                         app=f"live?key={PUBLISH_KEY}") == "NetStream.Publish.Start"

    def test_ffmpeg_rtmp_publish_without_or_with_a_wrong_key_fails(
        self, keyed: Server, clip: Path
    ) -> None:
        for name in ("nokey", "nokey?key=wrong", f"nokey?key={PLAY_KEY}"):
            proc = keyed.publish(clip, name, loops=0)
            assert proc.wait(timeout=WAIT_S) != 0, f"ffmpeg published {name}"
        assert head_status(keyed, "nokey") == 404

    @pytest.mark.parametrize("query", ["", "key=wrong", f"key={PLAY_KEY}", "key="],
                             ids=["no-key", "wrong-key", "play-key", "empty-key"])
    def test_rtmp_publish_without_the_key_is_unauthorized_and_closed(
        self, keyed: Server, clip: Path, query: str
    ) -> None:
        assert_refused(keyed, "publish", "rtmp", "refused", query,
                       "NetStream.Publish.Unauthorized", head(clip))

    def test_rtmp_publish_with_a_wrong_key_on_the_connect_url_is_unauthorized(
        self, keyed: Server
    ) -> None:
        before = len(refusal_lines(keyed, "publish", "appwrong"))
        assert rtmp_code(keyed, "publish", "appwrong",
                         app="live?key=wrong") == "NetStream.Publish.Unauthorized"
        assert len(refusal_lines(keyed, "publish", "appwrong")) == before + 1

    @pytest.mark.parametrize("query", ["", "key=wrong"], ids=["no-key", "wrong-key"])
    def test_http_post_publish_without_the_key_is_401(
        self, keyed: Server, clip: Path, query: str
    ) -> None:
        assert_refused(keyed, "publish", "http", "posted", query, 401, head(clip))
        assert head_status(keyed, "posted") == 404

    def test_http_post_publish_with_the_key_goes_live(self, keyed: Server, clip: Path) -> None:
        proc = post_publish(keyed, clip, "postkey", f"key={PUBLISH_KEY}")
        wait_live(keyed, "postkey")
        assert check_clean(f"{keyed.flv_url('postkey')}?key={PLAY_KEY}") == {"h264", "aac"}
        stop(proc)

    @pytest.mark.parametrize("query", ["", "key=wrong"], ids=["no-key", "wrong-key"])
    def test_ws_publish_without_the_key_closes_4403(
        self, keyed: Server, clip: Path, query: str
    ) -> None:
        assert_refused(keyed, "publish", "ws", "wspub", query, 4403, head(clip))
        assert head_status(keyed, "wspub") == 404

    def test_ws_publish_with_the_key_goes_live(self, keyed: Server, clip: Path) -> None:
        ws_publish_goes_live(keyed, "wskey", f"key={PUBLISH_KEY}", clip.read_bytes())

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    @pytest.mark.parametrize("query", ["", "key=wrong", f"key={PUBLISH_KEY}"],
                             ids=["no-key", "wrong-key", "publish-key"])
    def test_play_without_the_play_key_is_unauthorized(
        self, keyed: Server, clip: Path, protocol: str, query: str
    ) -> None:
        assert_refused(keyed, "play", protocol, "cam", query,
                       UNAUTHORIZED["play", protocol], head(clip))

    def test_http_flv_play_with_the_play_key_is_200(self, keyed: Server) -> None:
        assert http_status(keyed, "GET", f"/live/cam.flv?key={PLAY_KEY}") == 200

    def test_ws_flv_play_with_the_play_key_gets_frames(self, keyed: Server) -> None:
        frames = ws_frames(keyed, "cam", f"key={PLAY_KEY}")
        assert frames[0][:3] == b"FLV"

    def test_the_log_never_shows_a_key_even_of_requests_that_ended(
        self, keyed: Server, clip: Path
    ) -> None:
        # A finished play (the stream is not live) and a finished publish
        # (its short body ends), each with the right key.
        assert http_status(keyed, "GET", f"/live/gone.flv?key={PLAY_KEY}") == 404
        http_status(keyed, "POST", f"/live/short?key={PUBLISH_KEY}", head(clip))
        shown = lines_showing(keyed, PUBLISH_KEY, PLAY_KEY)
        assert not shown, "the log shows a key:\n" + "\n".join(shown)

    def test_rtmp_play_with_the_play_key_gets_media(self, keyed: Server) -> None:
        client = RtmpTestClient(keyed.rtmp_port, timeout_s=WAIT_S)
        try:
            assert client.play(f"cam?key={PLAY_KEY}") == "NetStream.Play.Start"
            assert len(client.media(5)) == 5
        finally:
            client.close()


# -- signed URLs ----------------------------------------------------------------------------


def signature(secret: str, action: str, stream: str, expires: int, app: str = "live") -> str:
    """The HMAC-SHA256 a signed URL carries, computed here independently."""
    message = f"{action}:{app}/{stream}:{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed(action: str, stream: str, *, expires_in: int = 3600, secret: str = SIGN_SECRET) -> str:
    expires = int(time.time()) + expires_in
    return f"expires={expires}&sig={signature(secret, action, stream, expires)}"


@pytest.fixture(scope="class")
def signing(tmp_path_factory: pytest.TempPathFactory, clip: Path) -> Iterator[Server]:
    """A server with --sign-secret, and live/cam published over RTMP signed."""
    srv = start_server(tmp_path_factory.mktemp("signed"), "--sign-secret", SIGN_SECRET)
    try:
        srv.publish(clip, f"cam?{signed('publish', 'cam')}")
        wait_live(srv, "cam")
        yield srv
    finally:
        stop_and_check_log(srv, SIGN_SECRET)


#: A bad query for ``action`` of ``stream``, by case.
BAD_SIGNATURES = {
    "missing": lambda action, stream: "",
    "expired": lambda action, stream: signed(action, stream, expires_in=-60),
    "wrong-signature": lambda action, stream: signed(action, stream, secret="another secret"),
    "another-stream": lambda action, stream: signed(action, stream + "x"),
    "the-other-action": lambda action, stream: signed(
        "play" if action == "publish" else "publish", stream),
    "no-expires": lambda action, stream: signed(action, stream).partition("&")[2],
}


class TestSignedUrls:
    def test_signed_rtmp_publish_goes_live_and_signed_http_flv_play_is_clean(
        self, signing: Server
    ) -> None:
        url = f"{signing.flv_url('cam')}?{signed('play', 'cam')}"
        assert check_clean(url) == {"h264", "aac"}

    def test_signed_rtmp_and_ws_play_get_media(self, signing: Server) -> None:
        client = RtmpTestClient(signing.rtmp_port, timeout_s=WAIT_S)
        try:
            assert client.play(f"cam?{signed('play', 'cam')}") == "NetStream.Play.Start"
            assert len(client.media(5)) == 5
        finally:
            client.close()
        assert ws_frames(signing, "cam", signed("play", "cam"))[0][:3] == b"FLV"

    def test_signed_http_post_and_ws_publish_go_live(self, signing: Server, clip: Path) -> None:
        proc = post_publish(signing, clip, "posted", signed("publish", "posted"))
        wait_live(signing, "posted")
        stop(proc)
        ws_publish_goes_live(signing, "wspub", signed("publish", "wspub"), clip.read_bytes())

    def test_ffmpeg_publish_with_an_expired_signature_fails(
        self, signing: Server, clip: Path
    ) -> None:
        proc = signing.publish(clip, f"old?{signed('publish', 'old', expires_in=-60)}", loops=0)
        assert proc.wait(timeout=WAIT_S) != 0
        assert head_status(signing, "old") == 404

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    @pytest.mark.parametrize("case", list(BAD_SIGNATURES))
    def test_publish_with_a_bad_signature_is_unauthorized(
        self, signing: Server, clip: Path, protocol: str, case: str
    ) -> None:
        query = BAD_SIGNATURES[case]("publish", "fresh")
        assert_refused(signing, "publish", protocol, "fresh", query,
                       UNAUTHORIZED["publish", protocol], head(clip))
        assert head_status(signing, "fresh") == 404

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    @pytest.mark.parametrize("case", list(BAD_SIGNATURES))
    def test_play_with_a_bad_signature_is_unauthorized(
        self, signing: Server, clip: Path, protocol: str, case: str
    ) -> None:
        query = BAD_SIGNATURES[case]("play", "cam")
        assert_refused(signing, "play", protocol, "cam", query,
                       UNAUTHORIZED["play", protocol], head(clip))

    def test_rtmpd_sign_urls_publish_and_play(self, signing: Server, clip: Path) -> None:
        sign = str(VENV_BIN / "rtmpd-sign")
        made = run([sign, "--secret", SIGN_SECRET, "--action", "publish", "--expires-in", "300",
                    signing.rtmp_url("bysign")])
        assert made.returncode == 0, made.stderr
        publish_url = made.stdout.strip()
        query = parse_qs(urlsplit(publish_url).query)
        expires = int(query["expires"][0])
        assert query["sig"] == [signature(SIGN_SECRET, "publish", "bysign", expires)]
        proc = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
             "-f", "flv", publish_url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        signing.children.append(proc)
        wait_live(signing, "bysign")
        # A .flv URL is signed for play unless --action says otherwise.
        made = run([sign, "--secret", SIGN_SECRET, "--expires-in", "300",
                    signing.flv_url("bysign")])
        assert made.returncode == 0, made.stderr
        play_url = made.stdout.strip()
        query = parse_qs(urlsplit(play_url).query)
        expires = int(query["expires"][0])
        assert query["sig"] == [signature(SIGN_SECRET, "play", "bysign", expires)]
        assert check_clean(play_url) == {"h264", "aac"}
        # The publish URL, rewritten for HTTP-FLV, is no play URL.
        publish_query = urlsplit(publish_url).query
        assert http_status(signing, "GET", f"/live/bysign.flv?{publish_query}") == 401
        stop(proc)


# -- hooks -----------------------------------------------------------------------------------


def hook_call(hook: HookServer, path: str, **match: Any) -> dict[str, Any]:
    """The first call to ``path`` whose JSON has all of ``match``'s items."""
    end = time.monotonic() + WAIT_S
    while True:
        for body in hook.calls_to(path):
            if all(body.get(k) == v for k, v in match.items()):
                return body
        if time.monotonic() > end:
            raise TimeoutError(f"no {path} call with {match}; got {hook.calls_to(path)}")
        time.sleep(0.05)


def check_client_fields(body: dict[str, Any], protocol: str) -> None:
    assert body["app"] == "live"
    assert body["protocol"] == protocol
    assert body["client_addr"] == "127.0.0.1"
    assert isinstance(body["client_port"], int) and body["client_port"] > 0
    assert isinstance(body["client_id"], int)


@pytest.fixture(scope="class")
def allowing(
    tmp_path_factory: pytest.TempPathFactory, clip: Path
) -> Iterator[tuple[Server, HookServer]]:
    """A server whose hooks all allow, with done hooks, and live/hooked
    published over RTMP with ``?token=abc``."""
    with hook_server() as hook:
        srv = start_server(
            tmp_path_factory.mktemp("hooks-allow"),
            "--on-publish", hook.url(f"/allow?token={HOOK_TOKEN}"),
            "--on-play", hook.url(f"/allow?token={HOOK_TOKEN}"),
            "--on-publish-done", hook.url(f"/done?token={HOOK_TOKEN}"),
            "--on-play-done", hook.url(f"/done?token={HOOK_TOKEN}"),
        )
        try:
            srv.publish(clip, "hooked?token=abc")
            wait_live(srv, "hooked")
            yield srv, hook
        finally:
            stop_and_check_log(srv, HOOK_TOKEN)


class TestAllowingHooks:
    def test_allowing_hook_lets_rtmp_publish_go_live_and_gets_the_request_json(
        self, allowing: tuple[Server, HookServer]
    ) -> None:
        _, hook = allowing
        body = hook_call(hook, "/allow", action="publish", stream="hooked")
        check_client_fields(body, "rtmp")
        assert body["query"] == "token=abc"
        assert body["params"] == {"token": "abc"}

    def test_allowing_hook_lets_http_flv_play_and_gets_the_request_json(
        self, allowing: tuple[Server, HookServer]
    ) -> None:
        srv, hook = allowing
        assert check_clean(f"{srv.flv_url('hooked')}?viewer=v1") == {"h264", "aac"}
        body = hook_call(hook, "/allow", action="play", stream="hooked",
                         params={"viewer": "v1"})
        check_client_fields(body, "http-flv")
        assert body["query"] == "viewer=v1"

    def test_allowing_hook_lets_ws_and_rtmp_play_and_names_their_protocol(
        self, allowing: tuple[Server, HookServer]
    ) -> None:
        srv, hook = allowing
        assert ws_frames(srv, "hooked", "viewer=ws1")[0][:3] == b"FLV"
        body = hook_call(hook, "/allow", action="play", params={"viewer": "ws1"})
        check_client_fields(body, "ws-flv")
        client = RtmpTestClient(srv.rtmp_port, timeout_s=WAIT_S)
        try:
            assert client.play("hooked?viewer=rtmp1") == "NetStream.Play.Start"
            assert len(client.media(5)) == 5
        finally:
            client.close()
        body = hook_call(hook, "/allow", action="play", params={"viewer": "rtmp1"})
        check_client_fields(body, "rtmp")
        assert body["stream"] == "hooked"

    def test_allowing_hook_lets_http_post_and_ws_publish_go_live(
        self, allowing: tuple[Server, HookServer], clip: Path
    ) -> None:
        srv, hook = allowing
        proc = post_publish(srv, clip, "posthook", "via=post")
        wait_live(srv, "posthook")
        stop(proc)
        check_client_fields(hook_call(hook, "/allow", action="publish", stream="posthook"),
                            "http-flv")
        ws_publish_goes_live(srv, "wshook", "via=ws", clip.read_bytes())
        check_client_fields(hook_call(hook, "/allow", action="publish", stream="wshook"),
                            "ws-flv")

    def test_publish_done_hook_fires_with_a_reason_when_the_publisher_is_killed(
        self, allowing: tuple[Server, HookServer], clip: Path
    ) -> None:
        srv, hook = allowing
        proc = srv.publish(clip, "dropme")
        wait_live(srv, "dropme")
        started = hook_call(hook, "/allow", action="publish", stream="dropme")
        assert not [b for b in hook.calls_to("/done") if b.get("stream") == "dropme"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
        body = hook_call(hook, "/done", action="publish", stream="dropme")
        check_client_fields(body, "rtmp")
        assert body["client_id"] == started["client_id"]
        assert isinstance(body["reason"], str) and body["reason"]

    def test_play_done_hook_fires_when_an_http_flv_viewer_disconnects(
        self, allowing: tuple[Server, HookServer]
    ) -> None:
        srv, hook = allowing
        conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=WAIT_S)
        try:
            conn.request("GET", "/live/hooked.flv?viewer=leaver")
            response = conn.getresponse()
            assert response.status == 200
            assert response.read(4096)[:3] == b"FLV"
            assert not [b for b in hook.calls_to("/done")
                        if b.get("params") == {"viewer": "leaver"}]
        finally:
            conn.close()
        body = hook_call(hook, "/done", action="play", stream="hooked",
                         params={"viewer": "leaver"})
        check_client_fields(body, "http-flv")
        assert isinstance(body["reason"], str) and body["reason"]


@pytest.fixture(scope="class")
def denying_publish(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, HookServer]]:
    """A server whose on-publish hook answers 403."""
    with hook_server() as hook:
        srv = start_server(tmp_path_factory.mktemp("hooks-deny-publish"),
                           "--on-publish", hook.url(f"/deny?token={HOOK_TOKEN}"))
        try:
            yield srv, hook
        finally:
            stop_and_check_log(srv, HOOK_TOKEN)


@pytest.fixture(scope="class")
def denying_play(
    tmp_path_factory: pytest.TempPathFactory, clip: Path
) -> Iterator[tuple[Server, HookServer]]:
    """A server whose on-play hook answers 403 (publishing is allowed), and
    live/cam published."""
    with hook_server() as hook:
        srv = start_server(tmp_path_factory.mktemp("hooks-deny-play"),
                           "--on-publish", hook.url("/allow"),
                           "--on-play", hook.url(f"/deny?token={HOOK_TOKEN}"))
        try:
            srv.publish(clip, "cam")
            wait_live(srv, "cam")
            yield srv, hook
        finally:
            stop_and_check_log(srv, HOOK_TOKEN)


class TestDenyingHooks:
    def test_ffmpeg_publish_is_refused_by_a_denying_hook(
        self, denying_publish: tuple[Server, HookServer], clip: Path
    ) -> None:
        srv, hook = denying_publish
        proc = srv.publish(clip, "denied", loops=0)
        assert proc.wait(timeout=WAIT_S) != 0
        assert head_status(srv, "denied") == 404
        hook_call(hook, "/deny", action="publish", stream="denied", protocol="rtmp")

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_publish_refused_by_a_denying_hook_is_forbidden(
        self, denying_publish: tuple[Server, HookServer], clip: Path, protocol: str
    ) -> None:
        srv, hook = denying_publish
        name = f"denied{protocol}"
        assert_refused(srv, "publish", protocol, name, "", FORBIDDEN["publish", protocol],
                       head(clip))
        assert head_status(srv, name) == 404
        hook_call(hook, "/deny", action="publish", stream=name)

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_play_refused_by_a_denying_hook_is_forbidden(
        self, denying_play: tuple[Server, HookServer], clip: Path, protocol: str
    ) -> None:
        srv, hook = denying_play
        assert_refused(srv, "play", protocol, "cam", f"viewer={protocol}",
                       FORBIDDEN["play", protocol], head(clip))
        hook_call(hook, "/deny", action="play", params={"viewer": protocol})


@pytest.fixture(scope="class")
def hanging(
    tmp_path_factory: pytest.TempPathFactory, clip: Path
) -> Iterator[tuple[Server, HookServer]]:
    """A server whose on-play hook never answers in time (--hook-timeout 1),
    and live/cam and live/other published."""
    with hook_server() as hook:
        hook.hang_s = HANG_S
        srv = start_server(tmp_path_factory.mktemp("hooks-hang"),
                           "--on-play", hook.url(f"/hang?token={HOOK_TOKEN}"),
                           "--hook-timeout", "1")
        try:
            srv.publish(clip, "cam")
            srv.publish(clip, "other")
            wait_live(srv, "cam")
            wait_live(srv, "other")
            yield srv, hook
        finally:
            stop_and_check_log(srv, HOOK_TOKEN)


class TestHangingHook:
    def test_hook_past_the_timeout_refuses_play_and_the_server_serves_others_meanwhile(
        self, hanging: tuple[Server, HookServer]
    ) -> None:
        srv, hook = hanging
        calls = len(hook.calls_to("/hang"))
        result: dict[str, Any] = {}

        def watch() -> None:
            result["status"] = http_status(srv, "GET", "/live/cam.flv?viewer=waiting")

        viewer = threading.Thread(target=watch, daemon=True)
        viewer.start()
        hook.wait_for("/hang", calls + 1, timeout_s=WAIT_S)
        # While the hook hangs, the server answers another client.
        assert head_status(srv, "other") == 200
        viewer.join(WAIT_S)
        assert not viewer.is_alive()
        assert result["status"] == 403
        # Refused by the timeout, not by the hook's late answer.
        assert "refused: on-play hook timed out after 1 s" in srv.log()

    @pytest.mark.parametrize("protocol", ["rtmp", "ws"])
    def test_hook_past_the_timeout_refuses_play_as_forbidden(
        self, hanging: tuple[Server, HookServer], clip: Path, protocol: str
    ) -> None:
        srv, hook = hanging
        timed_out = "refused: on-play hook timed out after 1 s"
        before = srv.log().count(timed_out)
        assert_refused(srv, "play", protocol, "cam", f"viewer={protocol}",
                       FORBIDDEN["play", protocol], head(clip))
        # Refused by the timeout, not by the hook's late answer.
        assert srv.log().count(timed_out) > before
        hook_call(hook, "/hang", action="play", params={"viewer": protocol})
