"""push.html in headless Chromium against the real server: the fake camera
and microphone, encoded by WebCodecs in the page, muxed to FLV by
web/js/flvmux.js and published over WS-FLV.

What comes out is judged by ffmpeg: Chromium here encodes Opus, not AAC,
and Debian's ffmpeg 5.1 reads no Enhanced-RTMP audio in FLV, so the checks
use the static ffmpeg 9 of the ``imageio-ffmpeg`` wheel (a test extra)."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest

from rtmpd.codec import amf0, flv
from tests.e2e.conftest import (
    WAIT_S,
    BrowserPage,
    Server,
    run,
    start_server,
    stop_server,
)

#: The static ffmpeg 9 of the imageio-ffmpeg wheel: it reads Opus in FLV.
FFMPEG9 = str(imageio_ffmpeg.get_ffmpeg_exe())


def stream_codecs(url: str) -> list[str]:
    """The codec of each stream ffmpeg finds in ``url`` (``["h264", "opus"]``)."""
    result = run([FFMPEG9, "-hide_banner", "-i", url], timeout=WAIT_S)
    return re.findall(r"Stream #0:\d+.*?: (?:Video|Audio): (\w+)", result.stderr)


def decode_errors(url: str, *extra: str) -> str:
    """What ``ffmpeg -v error`` says while decoding ``url`` (empty: clean).

    Frames keep the input's time base (``-enc_time_base demux``): capture
    times are not on a constant frame-rate grid, and at ffmpeg's default
    1/frame-rate time base two frames less than one nominal frame apart
    would share a tick, which the null muxer reports as non-monotonic DTS."""
    result = run([FFMPEG9, "-v", "error", "-i", url, *extra, "-enc_time_base", "demux",
                  "-f", "null", "-"], timeout=WAIT_S * 2)
    return result.stderr.strip() or ("" if result.returncode == 0 else f"exit {result.returncode}")


def viewer_tags(url: str, enough: Callable[[list[flv.TagReceived]], bool]) -> list[
        flv.TagReceived]:
    """The tags a viewer of ``url`` gets, from the first, until ``enough``
    of them have come."""
    reader = flv.FlvReader()
    tags: list[flv.TagReceived] = []
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        while not enough(tags):
            data = response.read1(65536)
            assert data, f"{url} ended after {len(tags)} tags"
            reader.receive_data(data)
            while not isinstance(event := reader.next_event(), flv.NeedData):
                if isinstance(event, flv.TagReceived):
                    tags.append(event)
    return tags


def is_keyframe(tag: flv.TagReceived) -> bool:
    return tag.tag_type == flv.TAG_VIDEO and flv.describe_tag(tag.tag_type, tag.body).keyframe


def keyframe_times(url: str, count: int) -> list[int]:
    """Timestamps (ms) of the first ``count`` video keyframes a viewer of
    ``url`` gets."""
    tags = viewer_tags(url, lambda tags: sum(map(is_keyframe, tags)) >= count)
    return [tag.timestamp_ms for tag in tags if is_keyframe(tag)][:count]


def state(page: BrowserPage) -> str:
    return str(page.page.evaluate("document.body.dataset.state"))


def wait_state(page: BrowserPage, wanted: str) -> None:
    page.page.wait_for_function(f"document.body.dataset.state === '{wanted}'")


def status(page: BrowserPage) -> str:
    return str(page.page.locator("#status").text_content())


def start_push(page: BrowserPage, server: Server, name: str, *,
               resolution: str = "640x360", keyframe_s: float = 2) -> None:
    """Open push.html for ``live/{name}``, press Push, wait for the outcome.
    The default resolution is light on the CPU."""
    page.page.goto(server.web_url(f"push.html?app=live&stream={name}"))
    assert page.page.input_value("input[name=stream]") == name
    page.page.select_option("select[name=resolution]", resolution)
    page.page.fill("input[name=keyframe]", str(keyframe_s))
    page.page.click("#push")
    page.page.wait_for_function("['pushing', 'error'].includes(document.body.dataset.state)")


def stat(page: BrowserPage, name: str) -> str:
    return str(page.page.text_content(f"[data-stat={name}]"))


def wait_frames(page: BrowserPage, count: int) -> None:
    page.page.wait_for_function(
        f"Number(document.querySelector('[data-stat=frames]').textContent) >= {count}"
    )


def plays_past_2_s(beside: BrowserPage, url: str) -> list[str]:
    """Open the player page ``url`` in another tab beside the push page, wait
    until its video has played 2 s; return its uncaught exceptions and
    console errors."""
    viewer = beside.page.context.new_page()
    problems: list[str] = []
    viewer.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    viewer.on("console", lambda message: problems.append(message.text)
              if message.type == "error" else None)
    viewer.goto(url)
    viewer.wait_for_function("document.querySelector('video')?.currentTime > 2")
    viewer.close()
    return problems


def stop_push(page: BrowserPage) -> None:
    page.page.click("#push")
    page.page.wait_for_function("document.body.dataset.state === 'idle'")


def wait_for_file(path: Path) -> None:
    end = time.monotonic() + WAIT_S
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.1)


@pytest.fixture
def recording_server(tmp_path: Path) -> Any:
    srv = start_server(tmp_path, "--record", "hls,fmp4")
    yield srv
    stop_server(srv)


def test_pushed_camera_plays_back_and_records_cleanly(
    recording_server: Server, browser_page: BrowserPage
) -> None:
    """The fake camera and microphone pushed from the page: HTTP-FLV carries
    H.264 and audio that decode without an error, index.html and play.html
    play it, and the HLS and merged MP4 recordings decode cleanly after the
    stop."""
    server = recording_server
    start_push(browser_page, server, "web1", keyframe_s=1)
    assert state(browser_page) == "pushing", status(browser_page) + browser_page.report()
    server.wait_live("web1")
    wait_frames(browser_page, 40)  # two seconds of the fake camera's 20 fps
    browser_page.screenshot("push-page")
    assert stat(browser_page, "resolution") == "640\N{MULTIPLICATION SIGN}360"
    assert "video: processor" in stat(browser_page, "capture")
    assert re.fullmatch(r"[1-9]\d* kbit/s", stat(browser_page, "bitrate"))
    assert re.fullmatch(r"(Opus|AAC), [1-9]\d* frames", stat(browser_page, "audio"))

    url = server.flv_url("web1")
    script, video_header, audio_header = viewer_tags(url, lambda tags: len(tags) >= 3)[:3]
    name, meta = amf0.decode_all(script.body)
    assert name == "onMetaData" and isinstance(meta, dict)
    assert (meta["width"], meta["height"], meta["videocodecid"]) == (640, 360, 7)
    assert meta["audiocodecid"] in (flv.FOURCC_OPUS, 10) and meta["audiosamplerate"] == 48000
    assert flv.describe_tag(video_header.tag_type, video_header.body).sequence_header
    assert flv.describe_tag(audio_header.tag_type, audio_header.body).sequence_header
    codecs = stream_codecs(url)
    assert codecs[:1] == ["h264"] and codecs[1:] in (["opus"], ["aac"]), codecs
    assert decode_errors(url, "-t", "4") == ""
    # "Keyframe every 1 s": forced at the first frame 1 s (capture time)
    # after the last one; the fake camera's frames are ~50 ms apart (more on a busy
    # machine, hence the slack).
    times = keyframe_times(url, 4)
    assert all(1000 <= b - a <= 1500 for a, b in itertools.pairwise(times)), times

    for page in ("index.html", "play.html"):  # HTTP-FLV with mpegts.js, HLS with hls.js
        assert plays_past_2_s(browser_page, server.web_url(f"{page}?app=live&stream=web1")) == []

    stop_push(browser_page)
    assert status(browser_page) == "idle: stopped"
    browser_page.assert_clean()

    playlist = server.root / "hls" / "live" / "web1" / "index.m3u8"
    merged = server.root / "mp4" / "live" / "web1" / "output_merge" / "stream_full.mp4"
    wait_for_file(merged)
    end = time.monotonic() + WAIT_S
    while "#EXT-X-ENDLIST" not in playlist.read_text():
        assert time.monotonic() < end, "the HLS playlist was never ended"
        time.sleep(0.1)
    for recording in (playlist, merged):
        assert decode_errors(str(recording)) == "", recording
        assert stream_codecs(str(recording))[:1] == ["h264"], recording
    assert stream_codecs(str(merged))[1:] in (["opus"], ["aac"])


def test_push_without_track_processor_reads_a_video_element_and_a_worklet(
    server: Server, browser_page: BrowserPage
) -> None:
    """Browsers without MediaStreamTrackProcessor (Firefox, Safari) push
    frames taken from a <video> and an AudioWorklet; the stream decodes
    clean all the same."""
    browser_page.page.add_init_script("delete window.MediaStreamTrackProcessor;")
    start_push(browser_page, server, "fallback")
    assert state(browser_page) == "pushing", status(browser_page) + browser_page.report()
    wait_frames(browser_page, 30)
    assert stat(browser_page, "capture") in (
        "video: video-element, audio: worklet", "audio: worklet, video: video-element")
    url = server.flv_url("fallback")
    codecs = stream_codecs(url)
    assert codecs[:1] == ["h264"] and codecs[1:] in (["opus"], ["aac"]), codecs
    assert decode_errors(url, "-t", "3") == ""
    stop_push(browser_page)
    browser_page.assert_clean()


class StallingProxy:
    """A TCP forwarder to ``127.0.0.1:target`` that can stop reading what its
    clients send (:meth:`stall`), so their socket backs up as on a slow
    uplink, and read again (:meth:`resume`)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.socket()
        # Small buffers on the stalled side: the sender's window closes soon.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, stallable: bool) -> None:
        try:
            while True:
                if stallable:
                    self.flowing.wait()
                data = source.recv(16384)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.flowing.set()
        for sock in self.sockets:
            sock.close()


#: How long the stalled push may take to back up: the kernel first takes
#: megabytes into the browser's socket buffer (loopback segments are 64 KiB),
#: at the fake camera's ~1 Mbit/s about half a minute.
BACKUP_S = 120


@pytest.fixture
def patient_server(tmp_path: Path) -> Iterator[Server]:
    """A server that waits longer than :data:`BACKUP_S` for a silent publisher."""
    srv = start_server(tmp_path, "--publisher-timeout", str(BACKUP_S + 30))
    yield srv
    stop_server(srv)


@pytest.fixture
def stalling_proxy(patient_server: Server) -> Iterator[StallingProxy]:
    proxy = StallingProxy(patient_server.http_port)
    yield proxy
    proxy.close()


def test_backed_up_socket_drops_delta_frames_and_says_so(
    patient_server: Server, stalling_proxy: StallingProxy, browser_page: BrowserPage
) -> None:
    """While the WebSocket holds more than its bound, the page encodes no
    delta frames and shows that it drops them; when the network drains it
    goes on, and what reached the server still decodes cleanly."""
    server = patient_server
    with urllib.request.urlopen(server.web_url("config.json"), timeout=WAIT_S) as response:
        config = json.load(response)
    # The page publishes to the HTTP port /config.json names: here the proxy.
    config["http"]["port"] = stalling_proxy.port
    browser_page.page.route("**/config.json", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(config)))
    # Big frames and frequent keyframes, so the buffers fill sooner.
    start_push(browser_page, server, "slow", resolution="1920x1080", keyframe_s=0.5)
    assert state(browser_page) == "pushing", status(browser_page) + browser_page.report()
    wait_frames(browser_page, 20)
    assert stat(browser_page, "dropped") == "0"
    stalling_proxy.stall()
    browser_page.page.wait_for_function(
        "!document.getElementById('backpressure').hidden"
        " && Number(document.querySelector('[data-stat=dropped]').textContent) > 0",
        timeout=BACKUP_S * 1000)
    browser_page.screenshot("push-page-backpressure")
    assert state(browser_page) == "pushing"
    stalling_proxy.resume()
    browser_page.page.wait_for_function("document.getElementById('backpressure').hidden")
    sent = int(stat(browser_page, "frames"))
    wait_frames(browser_page, sent + 20)
    assert decode_errors(server.flv_url("slow"), "-t", "3") == ""
    stop_push(browser_page)
    browser_page.assert_clean()


def test_screen_toggle_pushes_the_screen(server: Server, browser_page: BrowserPage) -> None:
    """``source=screen`` (the toggle) shares the screen (Chromium's fake one
    here) with the microphone."""
    browser_page.page.goto(server.web_url("push.html?stream=screen&source=screen"))
    assert browser_page.page.is_checked("input[name=source][value=screen]")
    browser_page.page.click("#push")
    wait_state(browser_page, "pushing")
    surface = browser_page.page.evaluate(
        "document.getElementById('preview').srcObject.getVideoTracks()[0]"
        ".getSettings().displaySurface")
    assert surface in ("monitor", "window", "browser"), surface  # a screen share, no camera
    wait_frames(browser_page, 10)
    codecs = stream_codecs(server.flv_url("screen"))
    assert codecs[:1] == ["h264"] and codecs[1:] in (["opus"], ["aac"]), codecs
    stop_push(browser_page)
    browser_page.assert_clean()


def test_push_to_a_busy_name_shows_the_refusal(
    server: Server, clip: Path, browser_page: BrowserPage
) -> None:
    """A name already published by ffmpeg: the page shows the server's
    refusal (close code 4409) and the first publisher stays on."""
    server.publish(clip, "taken")
    server.wait_live("taken")
    start_push(browser_page, server, "taken")
    # The refusal comes after the WebSocket opened: the page may say
    # "pushing" for a moment first.
    wait_state(browser_page, "error")
    shown = status(browser_page)
    assert "busy" in shown and "4409" in shown, shown
    assert browser_page.page.text_content("#push") == "Push"
    browser_page.screenshot("push-page-refused")
    assert server.is_live("taken")
    browser_page.assert_clean()


def test_publish_key_from_the_address_is_passed_on(
    tmp_path: Path, browser_page: BrowserPage
) -> None:
    """With --publish-key, ``?key=`` in the page's address publishes; the
    page never shows the key; without it the refusal (4403) is shown."""
    server = start_server(tmp_path, "--publish-key", "s3cret")
    try:
        start_push(browser_page, server, "nokey")
        wait_state(browser_page, "error")
        assert "not authorized" in status(browser_page) and "4403" in status(browser_page)

        browser_page.page.goto(server.web_url("push.html?stream=keyed&key=s3cret"))
        browser_page.page.select_option("select[name=resolution]", "640x360")
        browser_page.page.click("#push")
        browser_page.page.wait_for_function("document.body.dataset.state === 'pushing'")
        server.wait_live("keyed")
        assert "s3cret" not in status(browser_page) + stat(browser_page, "url")
        stop_push(browser_page)
        browser_page.assert_clean()
    finally:
        stop_server(server)


def test_bad_name_is_refused_on_the_page_before_connecting(
    server: Server, browser_page: BrowserPage
) -> None:
    browser_page.page.goto(server.web_url("push.html?stream=no%20spaces"))
    browser_page.page.click("#push")
    browser_page.page.wait_for_function("document.body.dataset.state === 'error'")
    assert "bad stream name" in status(browser_page)
    assert "publish" not in server.log()
    browser_page.assert_clean()


def test_a_browser_without_webcodecs_is_told_so(
    server: Server, browser_page: BrowserPage
) -> None:
    browser_page.page.add_init_script("delete window.VideoEncoder; delete window.AudioEncoder;")
    browser_page.page.goto(server.web_url("push.html"))
    assert "lacks WebCodecs" in status(browser_page)
    browser_page.page.click("#push")
    assert state(browser_page) == "error"
    assert "VideoEncoder, AudioEncoder" in status(browser_page)
    browser_page.assert_clean()


def test_denied_camera_permission_is_told(server: Server, browser_page: BrowserPage) -> None:
    """A browser that denies the permission prompt (not the fake UI that
    grants it): the page says so."""
    browser_type = browser_page.page.context.browser.browser_type  # type: ignore[union-attr]
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS

    flags = [f for f in CHROMIUM_FLAGS if f != "--use-fake-ui-for-media-stream"]
    denying = browser_type.launch(executable_path=str(CHROMIUM), headless=True,
                                  args=[*flags, "--deny-permission-prompts"])
    try:
        page = denying.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.web_url("push.html?stream=denied"))
        page.click("#push")
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=WAIT_S * 1000)
        shown = str(page.text_content("#status"))
        assert "Permission" in shown and "denied" in shown, shown
        assert errors == []
    finally:
        denying.close()
    assert "publish" not in server.log()


# --------------------------------------------------------------------------- the muxer

# Runs web/js/flvmux.js in the page on known inputs and returns the bytes.
# The video's configuration changes at the chunk numbered ``newConfigAt``.
MUX_SCRIPT = """async ([audioCodec, videoPts, reorderDepth, newConfigAt, videoFirst]) => {
  const m = await import("/js/flvmux.js");
  const out = [];
  const mux = new m.FlvMuxer({hasVideo: true, hasAudio: true, reorderDepth,
    metadata: {width: 64, height: 48}, onData: (bytes) => out.push(...bytes)});
  const avcc = new Uint8Array([1, 0x42, 0xe0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x42, 0xe0, 0x1f,
                               1, 0, 2, 0x68, 0xce]);
  const audioConfig = audioCodec === "opus"
    ? m.opusHead({channels: 2, sampleRate: 48000, preSkip: 312}) : new Uint8Array([0x11, 0x90]);
  // Capture clocks start at 5 s; audio (20 ms frames) starts 10 ms before video.
  const base = 5000000;
  const events = [];
  const avcc2 = avcc.slice();
  avcc2[3] = 0x28;  // another level: as after a change of size
  videoPts.forEach((pts, i) => events.push([base + 40000 * i, () => mux.addVideo({
    timestampUs: base + pts * 1000, keyframe: i === 0 || i === newConfigAt,
    data: new Uint8Array([0, 0, 0, 1, i]),
    description: i === 0 ? avcc : i === newConfigAt ? avcc2 : undefined})]));
  for (let i = 0; i < 20; i++) {
    const at = base - 10000 + 20000 * i;
    events.push([at, () => mux.addAudio({timestampUs: at,
      data: new Uint8Array([0xfc, i]), codec: audioCodec,
      description: i === 0 ? audioConfig : undefined})]);
  }
  // Each encoder's output arrives in its own order: by capture time, or
  // (videoFirst) all the video before any audio.
  const video = events.slice(0, videoPts.length);
  const audio = events.slice(videoPts.length);
  (videoFirst ? [...video, ...audio] : events.sort((a, b) => a[0] - b[0]))
    .forEach(([, add]) => add());
  mux.flush();
  return out;
}"""


def mux_in_page(page: BrowserPage, server: Server, audio: str, video_pts: list[int],
                depth: int, new_config_at: int = -1,
                video_first: bool = False) -> list[tuple[int, int, bytes]]:
    page.page.goto(server.web_url("push.html"))
    data = bytes(page.page.evaluate(
        MUX_SCRIPT, [audio, video_pts, depth, new_config_at, video_first]))
    reader = flv.FlvReader()
    reader.receive_data(data)
    reader.receive_data(b"")
    header = reader.next_event()
    assert header == flv.FlvHeaderReceived(has_audio=True, has_video=True)
    tags = []
    while isinstance(event := reader.next_event(), flv.TagReceived):
        tags.append((event.tag_type, event.timestamp_ms, event.body))
    assert isinstance(event, flv.EndOfStream)
    assert reader.previous_size_mismatches == 0
    return tags


# Decode order of I P B B P B B: presentation times (ms) of each chunk.
B_FRAME_PTS = [0, 120, 40, 80, 240, 160, 200]


@pytest.mark.parametrize(("audio", "video_first"), [("opus", False), ("aac", False),
                                                     ("opus", True)])
def test_muxer_writes_metadata_sequence_headers_then_interleaved_frames(
    server: Server, browser_page: BrowserPage, audio: str, video_first: bool
) -> None:
    """Whatever order the encoders' outputs arrive in (``video_first``: all
    the video before any audio), tags go out in timestamp order."""
    tags = mux_in_page(browser_page, server, audio, B_FRAME_PTS, 2, video_first=video_first)
    kinds = [t[0] for t in tags]
    assert kinds[:3] == [flv.TAG_SCRIPT, flv.TAG_VIDEO, flv.TAG_AUDIO]
    name, meta = amf0.decode_all(tags[0][2])
    assert name == "onMetaData"
    assert isinstance(meta, dict)
    assert meta["videocodecid"] == 7 and meta["width"] == 64
    assert meta["audiocodecid"] == (flv.FOURCC_OPUS if audio == "opus" else 10)

    video_header, audio_header = tags[1][2], tags[2][2]
    assert video_header[:5] == b"\x17\x00\x00\x00\x00" and video_header[5:6] == b"\x01"
    if audio == "opus":
        # Enhanced RTMP: ExHeader | SequenceStart, FourCC, RFC 7845 OpusHead.
        assert audio_header == (b"\x90Opus" + b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00"
                                + b"\x00\x00\x00")
        frames = [t for t in tags[3:] if t[0] == flv.TAG_AUDIO]
        assert all(body[:5] == b"\x91Opus" for _, _, body in frames)
    else:
        assert audio_header == b"\xaf\x00\x11\x90"
        frames = [t for t in tags[3:] if t[0] == flv.TAG_AUDIO]
        assert all(body[:2] == b"\xaf\x01" for _, _, body in frames)
    assert len(frames) == 20

    # Audio started 10 ms before video: time 0 is the audio's first frame.
    assert [ts for kind, ts, _ in tags if kind == flv.TAG_AUDIO][:4] == [0, 0, 20, 40]
    stamps = [ts for _, ts, _ in tags]
    assert stamps == sorted(stamps), "tags are not in timestamp order"

    video = [(ts, body) for kind, ts, body in tags[3:] if kind == flv.TAG_VIDEO]
    assert [body[9] for _, body in video] == list(range(7))  # decode order kept
    assert video[0][1][0] == 0x17 and all(body[0] == 0x27 for _, body in video[1:])
    for (dts, body), pts in zip(video, B_FRAME_PTS, strict=True):
        info = flv.describe_tag(flv.TAG_VIDEO, body)
        assert dts + info.composition_ms == pts + 10, (dts, info.composition_ms, pts)
        assert info.composition_ms >= 0


def test_muxer_without_reordering_writes_zero_composition_times(
    server: Server, browser_page: BrowserPage
) -> None:
    pts = [0, 40, 80, 120, 160]
    tags = mux_in_page(browser_page, server, "opus", pts, 0)
    video = [(ts, body) for kind, ts, body in tags[3:] if kind == flv.TAG_VIDEO]
    assert [ts for ts, _ in video] == [p + 10 for p in pts]
    assert all(flv.describe_tag(flv.TAG_VIDEO, body).composition_ms == 0 for _, body in video)


def test_muxer_sends_a_new_sequence_header_before_a_reconfigured_frame(
    server: Server, browser_page: BrowserPage
) -> None:
    tags = mux_in_page(browser_page, server, "opus", [0, 40, 80, 120, 160], 0, new_config_at=3)
    video = [(ts, body) for kind, ts, body in tags if kind == flv.TAG_VIDEO]
    headers = [i for i, (_, body) in enumerate(video) if body[1] == flv.AVC_SEQUENCE_HEADER]
    assert headers == [0, 4]  # first, and right before chunk 3 (the 5th video tag)
    assert video[4][1][5 + 3] == 0x28 and video[0][1][5 + 3] == 0x1F
    assert video[4][0] == video[5][0] == 130  # stamped as the frame it configures
    assert video[5][1][0] == 0x17 and video[5][1][9] == 3
