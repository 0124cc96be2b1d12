"""Recorders end to end: the real server records a real ffmpeg publish, and
ffmpeg / ffprobe / the m3u8 package check every file it wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import m3u8
import pytest

from tests.e2e.conftest import WAIT_S, Server, run, start_server, stop_server

ALL = ("--record", "hls,flv,fmp4,fmp4-separate", "--hls-fragment", "1", "--hls-window", "3")
CLIP_S = 20.0


@pytest.fixture(scope="module")
def clip20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20 s clip: H.264 with B-frames, 1 s GOP at 25 fps, + AAC 44.1 kHz."""
    out = tmp_path_factory.mktemp("clip20") / "clip20.flv"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", str(CLIP_S), "-c:v", "libx264", "-preset", "veryfast", "-bf", "2",
            "-g", "25", "-keyint_min", "25", "-sc_threshold", "0", "-b:v", "400k",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "flv", str(out),
        ],
        check=True,
        timeout=120,
    )
    return out


def decode_errors(*inputs: Path | str) -> str:
    """What ``ffmpeg -v error -i ... -f null -`` prints (nothing when clean)."""
    result = run(["ffmpeg", "-nostdin", "-v", "error", "-i", *map(str, inputs), "-f", "null", "-"])
    return result.stderr + ("" if result.returncode == 0 else f"exit {result.returncode}")


def probe(path: Path) -> dict[str, object]:
    result = run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def codecs(info: dict[str, object]) -> list[str]:
    streams = info["streams"]
    assert isinstance(streams, list)
    return sorted(str(s["codec_name"]) for s in streams)


def duration(info: dict[str, object]) -> float:
    fmt = info["format"]
    assert isinstance(fmt, dict)
    return float(fmt["duration"])


def top_level_boxes(path: Path) -> list[bytes]:
    data = path.read_bytes()
    pos, boxes = 0, []
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append(data[pos + 4 : pos + 8])
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        if size < 8:
            break
        pos += size
    return boxes


def concat(tmp: Path, name: str, parts: list[Path]) -> Path:
    out = tmp / name
    out.write_bytes(b"".join(p.read_bytes() for p in parts))
    return out


def wait_for(what: str, check: object, server: Server, deadline_s: float = WAIT_S) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what}; log:\n{server.log()[-3000:]}")


def dirs(root: Path, name: str) -> dict[str, Path]:
    return {
        "hls": root / "hls" / "live" / name,
        "flv": root / "flv" / "live" / name,
        "fmp4": root / "mp4" / "live" / name / "output_merge",
        "fmp4-separate": root / "mp4" / "live" / name / "output_separate",
    }


def check_all_outputs(root: Path, name: str, tmp: Path, *, expect_s: float | None) -> None:
    """Every recorder's files are complete and decode cleanly."""
    d = dirs(root, name)
    assert not list(root.rglob(".recording")), "a recording was left unfinished"
    flv_path = d["flv"] / "index.flv"
    full = d["fmp4"] / "stream_full.mp4"
    for path in (flv_path, full):
        info = probe(path)
        assert codecs(info) == ["aac", "h264"], path
        if expect_s is not None:
            assert abs(duration(info) - expect_s) <= 0.3, (path, duration(info))
        assert decode_errors(path) == "", path
    boxes = top_level_boxes(full)
    assert boxes.index(b"moov") < boxes.index(b"mdat")
    fragments = sorted(d["fmp4"].glob("*.m4s"))
    assert fragments
    assert decode_errors(concat(tmp, "mixed.mp4", [d["fmp4"] / "init.mp4", *fragments])) == ""
    for track, codec in (("audio", "aac"), ("video", "h264")):
        init = d["fmp4-separate"] / f"{track}_init.mp4"
        assert codecs(probe(init)) == [codec]
        parts = sorted(d["fmp4-separate"].glob(f"{track}_*.m4s"))
        assert parts
        assert decode_errors(concat(tmp, f"{track}.mp4", [init, *parts])) == ""
    playlist = m3u8.load(str(d["hls"] / "index.m3u8"))
    assert playlist.is_endlist
    assert playlist.segments
    for segment in playlist.segments:
        assert segment.duration <= playlist.target_duration + 0.5
        assert decode_errors(d["hls"] / segment.uri) == "", segment.uri


def test_every_recorder_writes_valid_files_for_a_20s_publish(clip20: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path, *ALL)
    try:
        publisher = server.publish(clip20, "rec", loops=0)
        hls_dir = dirs(server.root, "rec")["hls"]
        playlist_path = hls_dir / "index.m3u8"
        sequences: list[int] = []
        while publisher.poll() is None:
            if playlist_path.exists():
                playlist = m3u8.load(str(playlist_path))
                assert not playlist.is_endlist
                sequences.append(playlist.media_sequence or 0)
            time.sleep(0.5)
        assert publisher.returncode == 0
        wait_for(
            "the playlist never ended",
            lambda: "#EXT-X-ENDLIST" in playlist_path.read_text(),
            server,
        )
        wait_for(
            "the recordings were never finalised",
            lambda: not list(server.root.rglob(".recording")),
            server,
        )
        # The live playlist slid: media sequence went up, old segments are gone.
        assert sequences == sorted(sequences) and sequences[-1] > sequences[0] + 5
        assert not (hls_dir / "0.ts").exists()
        assert len(list(hls_dir.glob("*.ts"))) <= 2 * 3 + 1
    finally:
        stop_server(server)
    check_all_outputs(server.root, "rec", tmp_path, expect_s=CLIP_S)
    log = server.log()
    for fmt in ("hls", "flv", "fmp4", "fmp4-separate"):
        assert f"{fmt} recording of live/rec finalised" in log


def test_sigterm_during_a_live_recording_leaves_valid_files(clip20: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path, *ALL)
    publisher = server.publish(clip20, "term", loops=0)
    playlist_path = dirs(server.root, "term")["hls"] / "index.m3u8"
    wait_for(
        "no HLS segment after a while",
        lambda: playlist_path.exists() and playlist_path.read_text().count(".ts") >= 3,
        server,
    )
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=WAIT_S)
    publisher.kill()
    publisher.wait()
    stop_server(server)  # already stopped: checks the log for tracebacks
    assert publisher.stderr is not None
    check_all_outputs(server.root, "term", tmp_path, expect_s=None)


def test_kill_9_leaves_recordings_that_the_next_start_repairs(
    clip20: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, *ALL)
    server.publish(clip20, "crash", loops=0)
    d = dirs(server.root, "crash")
    playlist_path = d["hls"] / "index.m3u8"
    wait_for(
        "no HLS segment after a while",
        lambda: playlist_path.exists() and playlist_path.read_text().count(".ts") >= 3,
        server,
    )
    server.process.kill()
    server.process.wait()
    for child in server.children:
        child.kill()
        child.wait()
    markers = sorted(str(p.relative_to(server.root)) for p in server.root.rglob(".recording"))
    assert len(markers) == 4, markers
    assert "#EXT-X-ENDLIST" not in playlist_path.read_text()
    assert not (d["fmp4"] / "stream_full.mp4").exists()

    (tmp_path / "rtmpd.log").rename(tmp_path / "crashed.log")
    again = start_server(tmp_path, *ALL)
    try:
        wait_for(
            "recovery never finished",
            lambda: not list(again.root.rglob(".recording")),
            again,
        )
    finally:
        stop_server(again)
    log = again.log()
    for fmt in ("hls", "flv", "fmp4", "fmp4-separate"):
        assert f"recovered unfinished {fmt} recording" in log, log[-3000:]
    check_all_outputs(again.root, "crash", tmp_path, expect_s=None)


@pytest.mark.parametrize("formats", [("flv", "fmp4-separate"), ("hls", "fmp4"), ()])
def test_only_the_chosen_recorders_write_files(
    formats: tuple[str, ...], clip: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, "--record", ",".join(formats) or "none")
    try:
        server.publish(clip, "some", loops=0).wait(timeout=WAIT_S)
        if formats:
            wait_for(
                "the recordings were never finalised",
                lambda: not list(server.root.rglob(".recording")),
                server,
            )
    finally:
        stop_server(server)
    wanted = dirs(server.root, "some")
    for fmt, directory in wanted.items():
        assert directory.exists() == (fmt in formats), fmt
    if not formats:
        assert list(server.root.iterdir()) == []
