"""H.264 + Opus (Enhanced RTMP ExAudio, FourCC ``Opus``) through the real server.

Debian's ffmpeg 5.1 cannot put Opus in FLV, so the clip is made and published with the
static ffmpeg 9 of the ``imageio-ffmpeg`` wheel (a test extra). The published Opus tags
must reach RTMP, HTTP-FLV and WS-FLV viewers byte for byte; the recordings must decode
with ffmpeg (both builds): ``stream_full.mp4`` with an Opus track, HLS as fMP4 segments
behind ``EXT-X-MAP``; and ``stream_full.mp4`` must play, sound included, in Chromium.
"""

from __future__ import annotations

import http.client
import subprocess
import time
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest

from rtmpd.codec import flv, opus
from tests.e2e.conftest import WAIT_S, BrowserPage, Server, run, start_server, stop_server
from tests.e2e.test_flv_transports import WsPublisher, record_ws, ws_url

#: ffmpeg 9 (imageio-ffmpeg): Enhanced RTMP / FLV with Opus, both ways.
FFMPEG9 = imageio_ffmpeg.get_ffmpeg_exe()
#: Long enough for three viewers to watch a few seconds each, one after the other, while
#: it is published in real time.
CLIP_S = 15
RECORD = ("--record", "hls,flv,fmp4,fmp4-separate", "--hls-fragment", "1",
          "--hls-window", "20")


@pytest.fixture(scope="module")
def opus_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 s of H.264 (B-frames, 1 s GOP, 25 fps) + stereo Opus at 48 kHz, as FLV."""
    out = tmp_path_factory.mktemp("opus") / "h264_opus.flv"
    subprocess.run(
        [
            FFMPEG9, "-v", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(CLIP_S), "-c:v", "libx264", "-preset", "veryfast", "-bf", "2",
            "-g", "25", "-keyint_min", "25", "-sc_threshold", "0", "-b:v", "300k",
            "-pix_fmt", "yuv420p", "-c:a", "libopus", "-b:a", "64k", "-ac", "2",
            "-f", "flv", str(out),
        ],
        check=True,
        timeout=120,
    )
    return out


def audio_bodies(data: bytes) -> list[bytes]:
    """The audio tag bodies of an FLV stream (a whole file or a captured prefix)."""
    reader = flv.FlvReader()
    reader.receive_data(data)
    bodies = []
    while isinstance(event := reader.next_event(), (flv.FlvHeaderReceived, flv.TagReceived)):
        if isinstance(event, flv.TagReceived) and event.tag_type == flv.TAG_AUDIO:
            bodies.append(event.body)
    return bodies


def published_opus(clip: Path) -> tuple[bytes, set[bytes]]:
    """The clip's Opus SequenceStart body and its set of CodedFrames bodies."""
    bodies = audio_bodies(clip.read_bytes())
    head = next(b for b in bodies if b[:5] == b"\x90Opus")
    return head, {b for b in bodies if b[:5] == b"\x91Opus"}


def check_opus_passed_through(data: bytes, clip: Path) -> None:
    """What a viewer got has the published OpusHead first and only published packets."""
    head, packets = published_opus(clip)
    bodies = audio_bodies(data)
    assert bodies and bodies[0] == head, bodies[:1]
    assert opus.OpusHead.parse(head[5:]).channel_count == 2
    coded = [b for b in bodies if b[:5] == b"\x91Opus"]
    assert len(coded) >= 50, len(coded)  # over a second of 20 ms packets
    assert set(coded) <= packets


def decode_errors(ffmpeg: str, path: Path | str) -> str:
    """What ``ffmpeg -v error -i ... -f null -`` prints (nothing when clean)."""
    result = run([ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"])
    return result.stderr + ("" if result.returncode == 0 else f"exit {result.returncode}")


def stream_codecs(path: Path | str) -> list[str]:
    """Debian ffprobe's codec names (it reads Opus in MP4 and in fMP4 HLS)."""
    result = run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name",
                  "-of", "csv=p=0", str(path)])
    assert result.returncode == 0, result.stderr
    return sorted(set(result.stdout.split()))


def capture_http_flv(server: Server, name: str, seconds: float) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=WAIT_S)
    try:
        conn.request("GET", f"/live/{name}.flv")
        response = conn.getresponse()
        assert response.status == 200
        data = bytearray()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            data += response.read1(65536)
        return bytes(data)
    finally:
        conn.close()


def capture_rtmp(server: Server, name: str, out: Path, seconds: int) -> bytes:
    """Play over RTMP with ffmpeg 9 and keep the tags as they came (stream copy).

    Its connect announces the Enhanced RTMP codecs (``-rtmp_enhanced_codecs``): a
    connect without them is a legacy client, which gets no Opus."""
    result = run([FFMPEG9, "-nostdin", "-v", "error",
                  "-rtmp_enhanced_codecs", "hvc1,av01,vp09,Opus,fLaC,mp4a",
                  "-i", server.rtmp_url(name),
                  "-t", str(seconds), "-c", "copy", "-f", "flv", "-y", str(out)])
    assert result.returncode == 0, result.stderr
    return out.read_bytes()


def wait_for_log(server: Server, line: str) -> None:
    end = time.monotonic() + WAIT_S
    while line not in server.log():
        assert time.monotonic() < end, f"no {line!r} in the log:\n{server.log()[-3000:]}"
        time.sleep(0.1)


def test_opus_over_rtmp_reaches_every_viewer_and_every_recording_decodes(
    opus_clip: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, *RECORD)
    try:
        publisher = subprocess.Popen(
            [FFMPEG9, "-v", "error", "-re", "-i", str(opus_clip), "-c", "copy", "-f", "flv",
             server.rtmp_url("opus")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        server.children.append(publisher)
        server.wait_live("opus")
        # Viewers on the three protocols, each for a few seconds of the live stream.
        http_flv = capture_http_flv(server, "opus", 2.5)
        check_opus_passed_through(http_flv, opus_clip)
        (tmp_path / "http.flv").write_bytes(http_flv)
        assert decode_errors(FFMPEG9, tmp_path / "http.flv") == ""
        ws_out = tmp_path / "ws.flv"
        record_ws(server, "opus", ws_out, 2.5)
        check_opus_passed_through(ws_out.read_bytes(), opus_clip)
        assert decode_errors(FFMPEG9, ws_out) == ""
        rtmp = capture_rtmp(server, "opus", tmp_path / "rtmp.flv", 2)
        assert audio_bodies(rtmp)[0] == published_opus(opus_clip)[0]
        assert decode_errors(FFMPEG9, tmp_path / "rtmp.flv") == ""
        _, errors = publisher.communicate(timeout=CLIP_S * 4)
        assert publisher.returncode == 0, errors
        wait_for_log(server, "fmp4 recording of live/opus finalised")
        wait_for_log(server, "hls recording of live/opus finalised")
    finally:
        stop_server(server)
    root = server.root
    assert not list(root.rglob(".recording")), "a recording was left unfinished"
    # stream_full.mp4: an Opus track beside H.264, decoding clean in both ffmpegs.
    full = root / "mp4" / "live" / "opus" / "output_merge" / "stream_full.mp4"
    assert stream_codecs(full) == ["h264", "opus"]
    assert decode_errors("ffmpeg", full) == ""
    assert decode_errors(FFMPEG9, full) == ""
    duration = run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                    "-of", "csv=p=0", str(full)]).stdout
    assert abs(float(duration) - CLIP_S) < 0.5, duration
    # HLS: fMP4 segments behind EXT-X-MAP, decoding clean as one stream.
    playlist = root / "hls" / "live" / "opus" / "index.m3u8"
    text = playlist.read_text()
    assert "#EXT-X-VERSION:7\n" in text and '#EXT-X-MAP:URI="init.mp4"\n' in text
    assert text.endswith("#EXT-X-ENDLIST\n") and ".ts" not in text
    assert stream_codecs(playlist) == ["h264", "opus"]
    assert decode_errors("ffmpeg", playlist) == ""
    # The FLV recording is the stream as received; the separate audio track decodes.
    assert decode_errors(FFMPEG9, root / "flv" / "live" / "opus" / "index.flv") == ""
    separate = root / "mp4" / "live" / "opus" / "output_separate"
    audio = tmp_path / "audio.mp4"
    audio.write_bytes(b"".join(
        p.read_bytes()
        for p in [separate / "audio_init.mp4", *sorted(separate.glob("audio_*.m4s"))]
    ))
    assert stream_codecs(audio) == ["opus"]
    assert decode_errors("ffmpeg", audio) == ""


def test_opus_over_ws_flv_as_the_push_page_sends_it_plays_over_http_flv(
    server: Server, opus_clip: Path, tmp_path: Path
) -> None:
    """The browser push page publishes over WS-FLV; ffmpeg 9's tags stand in for its."""
    publisher = WsPublisher(ws_url(server, "/live/wsopus"), opus_clip.read_bytes(), loops=1)
    publisher.start()
    server.wait_live("wsopus")
    data = capture_http_flv(server, "wsopus", 2.5)
    check_opus_passed_through(data, opus_clip)
    (tmp_path / "viewer.flv").write_bytes(data)
    assert decode_errors(FFMPEG9, tmp_path / "viewer.flv") == ""
    publisher.done.wait(WAIT_S * 2)
    assert publisher.error is None, publisher.error
    # The default recorder: live HLS, already fMP4 for this stream.
    playlist = server.root / "hls" / "live" / "wsopus" / "index.m3u8"
    assert '#EXT-X-MAP:URI="init.mp4"' in playlist.read_text()


PLAY = """async (src) => {
  const v = document.createElement('video');
  v.muted = false;
  v.src = src;
  document.body.appendChild(v);
  await v.play();
  const end = Date.now() + 20000;
  while (v.currentTime < 2.5 && !v.error && Date.now() < end) {
    await new Promise(r => setTimeout(r, 100));
  }
  return {time: v.currentTime, error: v.error && v.error.message,
          audio: v.webkitAudioDecodedByteCount, video: v.webkitVideoDecodedByteCount,
          width: v.videoWidth};
}"""


def test_a_recorded_opus_stream_full_mp4_plays_with_sound_in_chromium(
    opus_clip: Path, tmp_path: Path, browser_page: BrowserPage
) -> None:
    server = start_server(tmp_path, "--record", "fmp4")
    try:
        publish = run([FFMPEG9, "-v", "error", "-i", str(opus_clip), "-c", "copy", "-f", "flv",
                       server.rtmp_url("cam")], timeout=120)
        assert publish.returncode == 0, publish.stderr
        wait_for_log(server, "fmp4 recording of live/cam finalised")
        page = browser_page.page
        page.set_content("<!doctype html><title>Opus MP4</title><body></body>")
        src = server.web_url("mp4/live/cam/output_merge/stream_full.mp4")
        played: dict[str, Any] = page.evaluate(PLAY, src)
    finally:
        stop_server(server)
    assert played["error"] is None, browser_page.report()
    assert played["time"] >= 2.5, (played, browser_page.report())
    assert played["width"] == 320
    assert played["audio"] > 0 and played["video"] > 0, played
