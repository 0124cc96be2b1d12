"""Every recording of an Enhanced RTMP stream, through the real server.

ffmpeg 9 (the static build of the ``imageio-ffmpeg`` wheel, a test extra) publishes
H.265 + AAC, AV1 + Opus, VP9 + Opus and H.264 + FLAC over RTMP to a server recording
``hls,flv,fmp4,fmp4-separate``. Each recording must decode clean (``-v error``) and
ffprobe must show the published codecs and picture size: ``stream_full.mp4``, the HLS
playlist (fMP4 segments behind ``EXT-X-MAP``, since TS carries none of these), the FLV as
received, and the separate audio and video tracks. ``stream_full.mp4`` must also play in
headless Chromium for the codecs Debian's Chromium decodes (VP9, AV1; not H.265, see
``test_chromium_decodes_vp9_and_av1_but_not_hevc``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest

from tests.e2e.conftest import BrowserPage, Server, run, start_server, stop_server
from tests.e2e.test_opus import FFMPEG9, PLAY, decode_errors, wait_for_log

CLIP_S = 4
WIDTH, HEIGHT = 320, 180  # 180 is no multiple of 8: H.265 and AV1 code 184 rows and crop
RECORD = ("--record", "hls,flv,fmp4,fmp4-separate", "--hls-fragment", "1",
          "--hls-window", "20")
GOP = ["-g", "25", "-keyint_min", "25"]


@dataclass(frozen=True)
class Case:
    name: str
    video: str  # ffprobe codec_name
    audio: str
    args: tuple[str, ...]  # ffmpeg 9 encoder arguments
    chromium: bool  # whether Debian's Chromium decodes the video


CASES = [
    Case("hevc_aac", "hevc", "aac", (
        "-c:v", "libx265", "-preset", "ultrafast", "-x265-params",
        "log-level=error:keyint=25:min-keyint=25:scenecut=0:bframes=2", "-b:v", "300k",
        "-c:a", "aac", "-b:a", "96k",
    ), chromium=False),
    Case("av1_opus", "av1", "opus", (
        "-c:v", "libsvtav1", "-preset", "12", *GOP, "-b:v", "300k",
        "-c:a", "libopus", "-b:a", "64k",
    ), chromium=True),
    Case("vp9_opus", "vp9", "opus", (
        "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", *GOP, "-b:v", "300k",
        "-c:a", "libopus", "-b:a", "64k",
    ), chromium=True),
    Case("h264_flac", "h264", "flac", (
        "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", *GOP, "-b:v", "300k",
        "-c:a", "flac",
    ), chromium=True),
]


def make_clip(directory: Path, case: Case) -> Path:
    out = directory / f"{case.name}.flv"
    result = run([
        FFMPEG9, "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(CLIP_S), "-pix_fmt", "yuv420p", "-ac", "2", *case.args,
        "-f", "flv", str(out),
    ], timeout=180)
    assert result.returncode == 0, result.stderr
    return out


def streams(path: Path | str) -> list[str]:
    """``codec_name,width,height`` of each stream, as Debian's ffprobe reads them."""
    result = run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
                  "-of", "csv=p=0", str(path)])
    assert result.returncode == 0, result.stderr
    return sorted({line.strip(",") for line in result.stdout.split()})


def clean(path: Path | str) -> str:
    """Decode errors of both ffmpegs (Debian's 5.1 reads these MP4s, not the FLV)."""
    return decode_errors(FFMPEG9, path) + decode_errors("ffmpeg", path)


def concatenated(directory: Path, kind: str, out: Path) -> Path:
    out.write_bytes(b"".join(
        p.read_bytes()
        for p in [directory / f"{kind}_init.mp4", *sorted(directory.glob(f"{kind}_*.m4s"))]
    ))
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Every case published once to one server, all its recordings finalised; the server
    goes on serving them (the web port) until the module's tests are done."""
    base = tmp_path_factory.mktemp("ertmp")
    clips = {case.name: make_clip(base, case) for case in CASES}
    server = start_server(base, *RECORD)
    try:
        for case in CASES:
            publish = run([FFMPEG9, "-nostdin", "-v", "error", "-i", str(clips[case.name]),
                           "-c", "copy", "-f", "flv", server.rtmp_url(case.name)], timeout=120)
            assert publish.returncode == 0, publish.stderr
        for case in CASES:
            for fmt in ("hls", "flv", "fmp4", "fmp4-separate"):
                wait_for_log(server, f"{fmt} recording of live/{case.name} finalised")
        assert not list(server.root.rglob(".recording")), "a recording was left unfinished"
        yield server
    finally:
        stop_server(server)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_recording_decodes_clean_with_the_published_codecs_and_size(
    recorded: Server, case: Case, tmp_path: Path
) -> None:
    root = recorded.root
    video = f"{case.video},{WIDTH},{HEIGHT}"
    full = root / "mp4" / "live" / case.name / "output_merge" / "stream_full.mp4"
    assert streams(full) == sorted([video, case.audio])
    assert clean(full) == ""
    duration = run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                    "-of", "csv=p=0", str(full)]).stdout
    assert abs(float(duration) - CLIP_S) < 0.5, duration
    # HLS: TS carries none of these pairs, so fMP4 segments behind EXT-X-MAP.
    playlist = root / "hls" / "live" / case.name / "index.m3u8"
    text = playlist.read_text()
    assert '#EXT-X-MAP:URI="init.mp4"\n' in text and ".ts\n" not in text, text
    assert text.endswith("#EXT-X-ENDLIST\n")
    assert streams(playlist) == sorted([video, case.audio])
    assert clean(playlist) == ""
    # The FLV is the stream as published (only ffmpeg 9 reads these codecs in FLV).
    assert decode_errors(FFMPEG9, root / "flv" / "live" / case.name / "index.flv") == ""
    separate = root / "mp4" / "live" / case.name / "output_separate"
    alone = concatenated(separate, "video", tmp_path / "video.mp4")
    assert streams(alone) == [video]
    assert clean(alone) == ""
    alone = concatenated(separate, "audio", tmp_path / "audio.mp4")
    assert streams(alone) == [case.audio]
    assert clean(alone) == ""


SUPPORT = """() => {
  const v = document.createElement('video');
  return Object.fromEntries(Object.entries({
    hevc: 'video/mp4; codecs="hvc1.1.6.L93.B0"',
    h264: 'video/mp4; codecs="avc1.64001f"',
    aac: 'audio/mp4; codecs="mp4a.40.2"',
    av1: 'video/mp4; codecs="av01.0.05M.08"',
    vp9: 'video/mp4; codecs="vp09.00.21.08"',
    flac: 'audio/mp4; codecs="flac"',
    opus: 'audio/mp4; codecs="opus"',
  }).map(([name, type]) => [name, v.canPlayType(type)]));
}"""


def test_chromium_decodes_vp9_and_av1_but_not_hevc(browser_page: BrowserPage) -> None:
    """What the playback test below relies on: Debian's Chromium has no H.265 decoder."""
    browser_page.page.set_content("<!doctype html><title>codecs</title><body></body>")
    support: dict[str, str] = browser_page.page.evaluate(SUPPORT)
    assert support["hevc"] == "", support
    assert all(support[name] for name in ("h264", "av1", "vp9", "aac", "flac", "opus")), support


@pytest.mark.parametrize("case", [c for c in CASES if c.chromium], ids=lambda c: c.name)
def test_stream_full_mp4_plays_in_chromium(
    recorded: Server, case: Case, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    page.set_content("<!doctype html><title>MP4</title><body></body>")
    src = recorded.web_url(f"mp4/live/{case.name}/output_merge/stream_full.mp4")
    played: dict[str, Any] = page.evaluate(PLAY, src)
    assert played["error"] is None, browser_page.report()
    assert played["time"] >= 2.5, (played, browser_page.report())
    assert played["width"] == WIDTH
    assert played["audio"] > 0 and played["video"] > 0, played


def test_the_ffmpeg_9_encoders_used_here_are_there() -> None:
    """Which encoders the imageio-ffmpeg build has decides the cases above."""
    result = run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"])
    names = {line.split()[1] for line in result.stdout.splitlines() if len(line.split()) > 1}
    assert {"libx265", "libsvtav1", "libvpx-vp9", "libopus", "flac", "aac"} <= names
