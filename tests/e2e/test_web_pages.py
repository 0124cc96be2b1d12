"""The player pages of the web port in headless Chromium against the real
server: each plays a stream that ffmpeg publishes (its ``<video>`` moves on
by 2 s and past 2 s, with no media error and nothing at error level in the
console), says so when the stream does not exist and keeps asking, and is
photographed while playing (under tests/artifacts/ or
$RTMPD_TEST_ARTIFACTS)."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import WAIT_S, BrowserPage, Server, start_server, stop_server

#: Every recorder on, so each page has something to play.
RECORD = "hls,flv,fmp4,fmp4-separate"
#: The stream every live test plays (published, looped, for the module).
LIVE = "cam"
#: Seconds a test waits for a page to reach a state: generous, only so a
#: broken run does not hang (the pages retry every 3 s).
PAGE_WAIT_S = 45.0

VIDEO = "document.querySelector('video')"
STATE = "document.body.dataset.state"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, clip: Path) -> Iterator[Server]:
    """One server recording everything, with ``live/cam`` published in a loop."""
    server = start_server(tmp_path_factory.mktemp("pages"), "--record", RECORD)
    try:
        server.publish(clip, LIVE)
        server.wait_live(LIVE)
        yield server
    finally:
        stop_server(server)


def wait_for_file(path: Path, deadline_s: float = WAIT_S) -> None:
    end = time.monotonic() + deadline_s
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.2)


def plays(browser_page: BrowserPage, url: str, shot: str, *, advance_s: float = 2.0) -> None:
    """Open ``url`` and check that its video plays cleanly for ``advance_s``;
    saves a screenshot named ``shot`` while it plays."""
    page = browser_page.page
    page.goto(url)
    try:
        page.wait_for_function(f"{STATE} === 'playing' && {VIDEO}.currentTime > 0",
                               timeout=PAGE_WAIT_S * 1000)
        first = page.evaluate(f"{VIDEO}.currentTime")
        page.wait_for_function(
            f"{VIDEO}.currentTime >= Math.max(2, {first} + {advance_s})",
            timeout=PAGE_WAIT_S * 1000,
        )
    except Exception as e:
        status = page.evaluate("document.getElementById('status').textContent")
        raise AssertionError(
            f"{url} did not play ({status}): {e}\n{browser_page.report()}"
        ) from None
    assert page.evaluate(f"{VIDEO}.error") is None
    assert page.evaluate(f"{VIDEO}.videoWidth") == 640
    browser_page.screenshot(shot)
    browser_page.assert_clean()


def status_text(browser_page: BrowserPage) -> str:
    text: str = browser_page.page.evaluate("document.getElementById('status').textContent")
    return text


# --------------------------------------------------------------------------- the web port


def get(server: Server, path: str, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.web_port, timeout=WAIT_S)
    try:
        conn.request("GET", path, headers={"Host": f"{host}:{server.web_port}"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/play.html", "text/html; charset=utf-8"),
        ("/play_merge.html", "text/html; charset=utf-8"),
        ("/mp4.html", "text/html; charset=utf-8"),
        ("/video.html", "text/html; charset=utf-8"),
        ("/js/common.js", "text/javascript; charset=utf-8"),
        ("/css/rtmpd.css", "text/css; charset=utf-8"),
        ("/vendor/hls.min.mjs", "text/javascript; charset=utf-8"),
        ("/vendor/mpegts.js", "text/javascript; charset=utf-8"),
        ("/config.json", "application/json"),
        ("/recordings.json", "application/json"),
    ],
)
def test_the_web_port_serves_the_pages_their_modules_and_libraries(
    live_server: Server, path: str, content_type: str
) -> None:
    status, headers, body = get(live_server, path, host="streams.example")
    assert status == 200, (path, body[:200])
    assert headers["content-type"] == content_type
    assert body


def test_config_json_tells_the_pages_the_ports_and_recorders(live_server: Server) -> None:
    config = json.loads(get(live_server, "/config.json")[2])
    assert config["http"] == {"port": live_server.http_port, "tls": False}
    assert config["web"] == {"port": live_server.web_port, "tls": False}
    assert config["rtmp"] == {"port": live_server.rtmp_port, "tls": False}
    assert config["record"] == RECORD.split(",")


@pytest.mark.parametrize(
    "path", ["/package.json", "/package-lock.json", "/node_modules/hls.js/package.json",
             "/vendor/.installed", "/nothing.html"],
)
def test_npm_files_are_not_served(live_server: Server, path: str) -> None:
    assert get(live_server, path)[0] == 404


def test_recordings_stay_at_their_paths_beside_the_pages(live_server: Server) -> None:
    wait_for_file(live_server.root / "hls" / "live" / LIVE / "index.m3u8")
    status, headers, body = get(live_server, f"/hls/live/{LIVE}/index.m3u8")
    assert status == 200
    assert headers["content-type"] == "application/vnd.apple.mpegurl"
    assert body.startswith(b"#EXTM3U")
    assert get(live_server, "/api/streams")[0] == 200


# --------------------------------------------------------------------------- playing


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_index_plays_the_live_stream_over_http_flv_and_ws_flv(
    live_server: Server, browser_page: BrowserPage, transport: str
) -> None:
    # Reached as "localhost", not the address the server was given: the page
    # finds the FLV port from /config.json and its own host name.
    url = live_server.web_url(f"index.html?app=live&stream={LIVE}&transport={transport}",
                              host="localhost")
    plays(browser_page, url, f"index-{transport}")
    page = browser_page.page
    expected = "WS-FLV" if transport == "ws" else "HTTP-FLV"
    assert expected in status_text(browser_page)
    shown = page.evaluate("document.querySelector('[data-stat=url]').textContent")
    scheme = "ws" if transport == "ws" else "http"
    assert shown == f"{scheme}://localhost:{live_server.http_port}/live/{LIVE}.flv"
    latency = page.evaluate("document.querySelector('[data-stat=latency]').textContent")
    assert latency.endswith(" s"), latency


def test_index_catches_up_when_it_falls_behind_live(
    live_server: Server, browser_page: BrowserPage
) -> None:
    """Paused for 6 s, the player is that far behind the newest data; on
    playing again it jumps back near live and counts a catch-up."""
    page = browser_page.page
    plays(browser_page, live_server.web_url(f"index.html?app=live&stream={LIVE}"),
          "index-before-catch-up")
    page.evaluate(f"{VIDEO}.pause()")
    page.wait_for_timeout(6000)
    behind = page.evaluate(f"{VIDEO}.buffered.end({VIDEO}.buffered.length - 1)"
                           f" - {VIDEO}.currentTime")
    assert behind > 4.0
    page.evaluate(f"{VIDEO}.play()")
    page.wait_for_function("document.querySelector('[data-stat=catchups]').textContent !== '0'",
                           timeout=PAGE_WAIT_S * 1000)
    page.wait_for_timeout(1000)
    behind = page.evaluate(f"{VIDEO}.buffered.end({VIDEO}.buffered.length - 1)"
                           f" - {VIDEO}.currentTime")
    assert behind < 3.0
    browser_page.assert_clean()


@pytest.mark.parametrize("engine", ["auto"])
def test_play_plays_the_live_hls(
    live_server: Server, browser_page: BrowserPage, engine: str
) -> None:
    wait_for_file(live_server.root / "hls" / "live" / LIVE / "index.m3u8")
    plays(browser_page, live_server.web_url(f"play.html?app=live&stream={LIVE}&engine={engine}"),
          "play")
    assert "over HLS (hls.js)" in status_text(browser_page)


@pytest.mark.parametrize("layout", ["merge", "separate"])
def test_play_merge_plays_the_live_fmp4_with_codecs_from_its_init_segment(
    live_server: Server, browser_page: BrowserPage, layout: str
) -> None:
    plays(browser_page,
          live_server.web_url(f"play_merge.html?app=live&stream={LIVE}&layout={layout}"),
          f"play_merge-{layout}")
    page = browser_page.page
    codecs = page.evaluate("document.querySelector('[data-stat=codecs]').textContent")
    # The clip is H.264 High (avcC: profile 0x64) + AAC LC, as ffprobe would say.
    assert "avc1.64" in codecs and "mp4a.40.2" in codecs, codecs
    # Fragments appended in order leave one continuous buffered range.
    page.wait_for_timeout(3000)
    assert page.evaluate(f"{VIDEO}.buffered.length") == 1
    browser_page.assert_clean()


def test_play_merge_stops_cleanly_when_the_stream_ends(
    live_server: Server, browser_page: BrowserPage, clip: Path
) -> None:
    publisher = live_server.publish(clip, "short", loops=0)
    live_server.wait_live("short")
    page = browser_page.page
    page.goto(live_server.web_url("play_merge.html?app=live&stream=short"))
    page.wait_for_function(f"{STATE} === 'playing'", timeout=PAGE_WAIT_S * 1000)
    publisher.wait(timeout=WAIT_S)
    page.wait_for_function(f"{VIDEO}.ended && {STATE} === 'ended'", timeout=PAGE_WAIT_S * 1000)
    assert page.evaluate(f"{VIDEO}.error") is None
    assert page.evaluate(f"{VIDEO}.buffered.length") == 1
    assert "ended" in status_text(browser_page)
    browser_page.assert_clean()


@pytest.mark.parametrize("kind", ["http-flv", "ws-flv", "hls", "mp4-of-a-finished-stream"])
def test_video_plays_each_kind_of_url(
    live_server: Server, browser_page: BrowserPage, kind: str, clip: Path
) -> None:
    if kind == "mp4-of-a-finished-stream":
        finished = live_server.root / "mp4" / "live" / "done" / "output_merge" / "stream_full.mp4"
        if not finished.exists():
            live_server.publish(clip, "done", loops=0).wait(timeout=WAIT_S)
            wait_for_file(finished)
        target = live_server.web_url("mp4/live/done/output_merge/stream_full.mp4")
    elif kind == "hls":
        wait_for_file(live_server.root / "hls" / "live" / LIVE / "index.m3u8")
        target = live_server.web_url(f"hls/live/{LIVE}/index.m3u8")
    else:
        scheme = "ws" if kind == "ws-flv" else "http"
        target = f"{scheme}://127.0.0.1:{live_server.http_port}/live/{LIVE}.flv"
    plays(browser_page, live_server.web_url(f"video.html?url={target}"), f"video-{kind}")


def test_mp4_lists_the_recordings_and_plays_and_seeks_them(
    live_server: Server, browser_page: BrowserPage, clip: Path
) -> None:
    root = live_server.root
    live_server.publish(clip, "rec", loops=0).wait(timeout=WAIT_S)
    wait_for_file(root / "mp4" / "live" / "rec" / "output_merge" / "stream_full.mp4")
    page = browser_page.page
    # The stream's newest finished recording plays by itself: stream_full.mp4.
    plays(browser_page, live_server.web_url("mp4.html?app=live&stream=rec"), "mp4")
    assert "stream_full.mp4" in status_text(browser_page)
    listed = page.evaluate(
        "[...document.querySelectorAll('#list tbody tr')].map(tr => tr.dataset.path)")
    assert "mp4/live/rec/output_merge/stream_full.mp4" in listed
    assert "flv/live/rec/index.flv" in listed
    seek(browser_page, 4.5)
    # The FLV recording from its row: mpegts.js, seeking by range requests.
    page.click("#list tr[data-path='flv/live/rec/index.flv'] button")
    page.wait_for_function(f"{STATE} === 'playing' && {VIDEO}.currentTime > 2",
                           timeout=PAGE_WAIT_S * 1000)
    assert "index.flv" in status_text(browser_page)
    seek(browser_page, 4.5)
    browser_page.screenshot("mp4-flv")
    browser_page.assert_clean()


def seek(browser_page: BrowserPage, target_s: float) -> None:
    """Seek the page's video and check it lands there and plays on."""
    landed = browser_page.page.evaluate(
        """(target) => new Promise((resolve, reject) => {
          const v = document.querySelector('video');
          v.addEventListener('error', () => reject(new Error('media error')), {once: true});
          v.addEventListener('seeked', () => {
            const at = v.currentTime;
            setTimeout(() => resolve({at, later: v.currentTime}), 1200);
          }, {once: true});
          v.currentTime = target;
        })""",
        target_s,
    )
    assert abs(landed["at"] - target_s) < 1.0, landed
    assert landed["later"] > landed["at"], landed


def test_index_says_when_the_stream_ends_and_waits_for_it(
    live_server: Server, browser_page: BrowserPage, clip: Path
) -> None:
    publisher = live_server.publish(clip, "brief", loops=0)
    live_server.wait_live("brief")
    page = browser_page.page
    page.goto(live_server.web_url("index.html?app=live&stream=brief"))
    page.wait_for_function(f"{STATE} === 'playing'", timeout=PAGE_WAIT_S * 1000)
    publisher.wait(timeout=WAIT_S)
    page.wait_for_function(f"{STATE} === 'ended'", timeout=PAGE_WAIT_S * 1000)
    assert "the stream ended" in status_text(browser_page)
    page.wait_for_function(f"{STATE} === 'missing'", timeout=PAGE_WAIT_S * 1000)
    assert browser_page.page_errors == []
    assert all("404" in line for line in browser_page.console_errors), browser_page.console_errors


def test_index_passes_its_play_key_on_to_the_flv_port(
    tmp_path: Path, browser_page: BrowserPage, clip: Path
) -> None:
    server = start_server(tmp_path, "--record", "none", "--play-key", "letmein")
    try:
        server.publish(clip, "locked")
        server.wait_live("locked")
        assert json.loads(get(server, "/config.json")[2])["play_key"] is True
        page = browser_page.page
        page.goto(server.web_url("index.html?app=live&stream=locked&transport=ws&key=letmein"))
        page.wait_for_function(f"{STATE} === 'playing' && {VIDEO}.currentTime > 1",
                               timeout=PAGE_WAIT_S * 1000)
        shown = page.evaluate("document.querySelector('[data-stat=url]').textContent")
        assert shown.endswith("/live/locked.flv?key=letmein")
        browser_page.assert_clean()
    finally:
        stop_server(server)


# --------------------------------------------------------------------------- missing streams

MISSING_PAGES = {
    "index": "index.html?app=live&stream=nothing",
    "index-ws": "index.html?app=live&stream=nothing&transport=ws",
    "play": "play.html?app=live&stream=nothing",
    "play_merge": "play_merge.html?app=live&stream=nothing",
    "video": "video.html?app=live&stream=nothing",
    "mp4": "mp4.html?app=live&stream=nothing",
}


@pytest.mark.parametrize("name", list(MISSING_PAGES))
def test_a_missing_stream_is_reported_on_the_first_answer_and_asked_for_again(
    live_server: Server, browser_page: BrowserPage, name: str
) -> None:
    page = browser_page.page
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(live_server.web_url(MISSING_PAGES[name]))
    page.wait_for_function(f"{STATE} === 'missing'", timeout=PAGE_WAIT_S * 1000)
    assert "nothing" in status_text(browser_page)
    before = sum("nothing" in url for url in asked)
    page.wait_for_timeout(7000)
    after = sum("nothing" in url for url in asked)
    # Asked again (quietly), and "missing" came with the first answer: at
    # least one more round of the same requests followed, so the page had
    # not spent several rounds before saying so.
    assert before >= 1 and after >= 2 * before, asked
    assert page.evaluate(STATE) == "missing"
    assert browser_page.page_errors == []
    # The only console lines at error level are the browser's own notes of
    # the 404s that answer the page's questions.
    assert all("404" in line for line in browser_page.console_errors), browser_page.console_errors


def test_a_page_waiting_for_a_stream_plays_it_once_it_is_published(
    live_server: Server, browser_page: BrowserPage, clip: Path
) -> None:
    page = browser_page.page
    page.goto(live_server.web_url("index.html?app=live&stream=later"))
    page.wait_for_function(f"{STATE} === 'missing'", timeout=PAGE_WAIT_S * 1000)
    live_server.publish(clip, "later")
    page.wait_for_function(f"{STATE} === 'playing' && {VIDEO}.currentTime > 1",
                           timeout=PAGE_WAIT_S * 1000)
    assert page.evaluate(f"{VIDEO}.error") is None
    assert browser_page.page_errors == []


@pytest.mark.parametrize(
    "page_path", ["index.html", "play.html", "play_merge.html", "mp4.html", "video.html"],
)
def test_a_page_without_a_query_waits_for_the_play_button(
    live_server: Server, browser_page: BrowserPage, page_path: str
) -> None:
    page = browser_page.page
    page.goto(live_server.web_url(page_path))
    page.wait_for_timeout(1000)
    assert page.evaluate(STATE) == "idle"
    assert page.evaluate(f"{VIDEO}.currentTime") == 0
    if page_path != "video.html":
        assert page.input_value("input[name=app]") == "live"
        assert page.input_value("input[name=stream]") == "test"
    assert page.locator("button[type=submit]").is_visible()
    browser_page.assert_clean()


def test_the_stream_field_offers_the_live_streams_from_the_stats_api(
    live_server: Server, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    page.goto(live_server.web_url("play.html"))
    page.wait_for_function("document.querySelectorAll('#live-streams option').length > 0",
                           timeout=PAGE_WAIT_S * 1000)
    offered = page.evaluate(
        "[...document.querySelectorAll('#live-streams option')].map(o => o.label)")
    assert f"live/{LIVE}, 640\u00d7360" in offered
    assert page.get_attribute("input[name=stream]", "list") == "live-streams"
    browser_page.assert_clean()


def test_the_play_button_plays_what_the_fields_name(
    live_server: Server, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    page.goto(live_server.web_url("index.html"))
    page.fill("input[name=stream]", LIVE)
    page.check("input[name=transport][value=ws]")
    page.click("button[type=submit]")
    page.wait_for_function(f"{STATE} === 'playing' && {VIDEO}.currentTime > 1",
                           timeout=PAGE_WAIT_S * 1000)
    assert page.url.endswith(f"?app=live&stream={LIVE}&transport=ws")
    assert "WS-FLV" in status_text(browser_page)
    browser_page.assert_clean()


def test_a_bad_name_is_an_error_on_the_page_not_an_exception(
    live_server: Server, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    page.goto(live_server.web_url("index.html?app=live&stream=bad%2Fname"))
    page.wait_for_function(f"{STATE} === 'error'", timeout=PAGE_WAIT_S * 1000)
    assert "bad stream name" in status_text(browser_page)
    browser_page.assert_clean()


# --------------------------------------------------------------------------- init segments

#: Fragmented MP4s from ffmpeg (each begins with its init segment): the
#: encoder arguments and the codec string its sample entry must give.
INIT_SEGMENTS = {
    "h264-aac.mp4": (
        ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine",
         "-c:v", "libx264", "-profile:v", "high", "-level", "1.3", "-c:a", "aac"],
        # avcC: profile_idc 100, no compatibility flags, level_idc 13; AAC LC.
        ["avc1.64000d", "mp4a.40.2"],
    ),
    "hevc.mp4": (
        ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-c:v", "libx265",
         "-x265-params", "log-level=error", "-tag:v", "hvc1"],
        # hvcC: Main (1), compatible with Main and Main 10 (flags 0x60000000,
        # written bit-reversed: 6), main tier level 2 (60), progressive and
        # frame-only constraint flags (0x90).
        ["hvc1.1.6.L60.90"],
    ),
    "opus.mp4": (["-f", "lavfi", "-i", "sine", "-c:a", "libopus"], ["opus"]),
}


def test_codecs_are_read_from_the_init_segment_boxes(
    live_server: Server, browser_page: BrowserPage
) -> None:
    directory = live_server.root / "inits"
    directory.mkdir(exist_ok=True)
    for name, (arguments, _) in INIT_SEGMENTS.items():
        made = subprocess.run(
            ["ffmpeg", "-v", "error", "-y", *arguments, "-t", "1",
             "-movflags", "frag_keyframe+empty_moov", "-f", "mp4", str(directory / name)],
            capture_output=True, text=True, timeout=120,
        )
        assert made.returncode == 0, made.stderr
    page = browser_page.page
    page.goto(live_server.web_url("index.html"))
    found = page.evaluate(
        """async (names) => {
          const { tracksOfInit, mimeOfTracks } = await import('./js/mp4box.js');
          const out = {};
          for (const name of names) {
            const bytes = await (await fetch('inits/' + name)).arrayBuffer();
            const tracks = tracksOfInit(bytes);
            out[name] = { codecs: tracks.map((t) => t.codec),
                          playable: MediaSource.isTypeSupported(mimeOfTracks(tracks)) };
          }
          return out;
        }""",
        list(INIT_SEGMENTS),
    )
    assert {name: got["codecs"] for name, got in found.items()} == {
        name: codecs for name, (_, codecs) in INIT_SEGMENTS.items()
    }
    # The strings are ones the browser understands (HEVC decoding varies by build).
    assert found["h264-aac.mp4"]["playable"] and found["opus.mp4"]["playable"], found
    browser_page.assert_clean()
