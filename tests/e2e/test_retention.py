"""Retention end to end: a name republished again and again does not fill
the disk (``--record-max-bytes``), and below ``--record-min-free`` nothing is
recorded while play goes on."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import WAIT_S, Server, run, start_server, stop_server

#: Publishes of the same name: each leaves an FLV and an fMP4 directory.
REPUBLISHES = 15
BUDGET = 1024 * 1024


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of H.264 + AAC, about 100 KB."""
    out = tmp_path_factory.mktemp("short") / "short.flv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440", "-t", "2", "-c:v", "libx264",
         "-preset", "veryfast", "-g", "25", "-b:v", "300k", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "64k", "-f", "flv", str(out)],
        check=True, timeout=120,
    )
    return out


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def publish_once(server: Server, clip: Path, name: str) -> None:
    result = run(["ffmpeg", "-v", "error", "-i", str(clip), "-c", "copy", "-f", "flv",
                  server.rtmp_url(name)], timeout=WAIT_S)
    assert result.returncode == 0, result.stderr


def wait_until(what: str, check: object, server: Server) -> None:
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what}; log:\n{server.log()[-3000:]}")


def test_republishing_a_name_many_times_stays_within_the_byte_budget(
    short_clip: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, "--record", "flv,fmp4", "--record-max-bytes", str(BUDGET))
    try:
        one = 0
        for n in range(REPUBLISHES):
            publish_once(server, short_clip, "again")
            wait_until("recordings never finalised",
                       lambda n=n: all(server.log().count(f"{fmt} recording of live/again "
                                                          "finalised") > n
                                       for fmt in ("flv", "fmp4")), server)
            if n == 0:
                one = tree_bytes(server.root)  # what one publish leaves
        assert one * REPUBLISHES > 2 * BUDGET  # without retention it would not fit
        # Retention scans a second after each recording ends.
        wait_until("retention never brought the recordings within the budget",
                   lambda: tree_bytes(server.root) <= BUDGET, server)
    finally:
        stop_server(server)
    flv_dir = server.root / "flv" / "live" / "again"
    kept = sorted(p.name for p in flv_dir.glob("index*.flv"))
    assert 1 <= len(kept) < REPUBLISHES
    assert "index.flv" in kept  # the newest survives: the oldest went first
    assert "retention: deleted" in server.log()


def test_below_the_free_disk_floor_nothing_is_recorded_but_play_goes_on(
    short_clip: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, "--record", "flv,hls", "--record-min-free", "1000000T")
    try:
        publisher = server.publish(short_clip, "full")
        server.wait_live("full")
        result = run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name",
                      "-of", "csv=p=0", server.flv_url("full")], timeout=WAIT_S)
        assert sorted(result.stdout.split()) == ["aac", "h264"], result.stderr
        assert publisher.poll() is None
    finally:
        stop_server(server)
    assert not (server.root / "flv").exists() and not (server.root / "hls").exists()
    refusals = [x for x in server.log().splitlines() if "not recording live/full" in x]
    assert len(refusals) == 1 and "below --record-min-free" in refusals[0]
