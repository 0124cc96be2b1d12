"""Recordings cannot be turned against files outside ``--root``, and crash
recovery tells a live recording from a dead one by a lock, not a PID.

Real symlinks in a tmp dir, a real second process holding a lock, the real
recorders and recovery (rtmpd.services.confine, recorder, recovery).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import LogEvent

from rtmpd.services.confine import OutsideRoot, confined, create_new, open_existing
from rtmpd.services.flvrec import finalize_flv
from rtmpd.services.recorder import MARKER_NAME, write_atomically
from rtmpd.services.recovery import recover
from tests.unit.test_recorder import Rig, clip_frames, die, logged, messages

__all__ = ["logged"]  # the fixture, used by name

FORMATS = ("hls", "flv", "fmp4", "fmp4-separate")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the root whose files must never change."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_bytes(b"keep me")
    return elsewhere


@pytest.fixture
def root(tmp_path: Path) -> Path:
    media = tmp_path / "media"
    media.mkdir()
    return media


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def crashed_recordings(root: Path, name: str = "cam") -> Rig:
    """Every format recorded into ``root`` by a process that then died."""
    rig = Rig(root)
    rig.publish(clip_frames(3), name, end=False)
    die()
    return rig


# --------------------------------------------------------------------------- confine


def test_confined_accepts_paths_under_the_root_and_links_that_stay_inside(root: Path) -> None:
    (root / "flv").mkdir()
    (root / "alias").symlink_to(root / "flv")
    assert confined(str(root), str(root / "flv" / "live" / "new")) == str(
        (root / "flv" / "live" / "new").resolve())
    assert confined(str(root), str(root / "alias" / "x")) == str((root / "flv" / "x").resolve())


def test_confined_refuses_a_link_out_of_the_root(root: Path, outside: Path) -> None:
    (root / "flv").symlink_to(outside)
    with pytest.raises(OutsideRoot, match="leads out of the root"):
        confined(str(root), str(root / "flv" / "live" / "cam"))
    (root / "up").symlink_to("..")
    with pytest.raises(OutsideRoot):
        confined(str(root), str(root / "up"))


def test_confined_allows_a_root_that_is_itself_a_link(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "bigdisk"
    link.symlink_to(root)
    assert confined(str(link), str(link / "hls" / "a")) == str(root.resolve() / "hls" / "a")


def test_confined_does_not_take_a_sibling_with_the_same_prefix(tmp_path: Path, root: Path) -> None:
    sibling = tmp_path / "media2"
    sibling.mkdir()
    (root / "x").symlink_to(sibling)
    with pytest.raises(OutsideRoot):
        confined(str(root), str(root / "x"))


def test_create_new_replaces_a_planted_symlink_instead_of_writing_through_it(
    root: Path, outside: Path
) -> None:
    planted = root / "index.m3u8.tmp"
    planted.symlink_to(outside / "precious.txt")
    with create_new(str(planted)) as f:
        f.write(b"ours")
    assert not planted.is_symlink() and planted.read_bytes() == b"ours"
    assert (outside / "precious.txt").read_bytes() == b"keep me"


def test_write_atomically_never_writes_through_a_planted_tmp_link(
    root: Path, outside: Path
) -> None:
    (root / "index.m3u8.tmp").symlink_to(outside / "precious.txt")
    write_atomically(str(root / "index.m3u8"), b"#EXTM3U\n")
    assert (root / "index.m3u8").read_bytes() == b"#EXTM3U\n"
    assert (outside / "precious.txt").read_bytes() == b"keep me"


def test_open_existing_refuses_a_symlink(root: Path, outside: Path) -> None:
    (root / "index.flv").symlink_to(outside / "precious.txt")
    with pytest.raises(OSError):
        open_existing(str(root / "index.flv"), update=True)
    with pytest.raises(OSError):
        finalize_flv(str(root / "index.flv"))
    assert (outside / "precious.txt").read_bytes() == b"keep me"


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("top", ["hls", "flv", "mp4"])
def test_recovery_never_follows_a_top_directory_link_out_of_the_root(
    top: str, tmp_path: Path, root: Path
) -> None:
    """The reported case: ``root/flv/evil -> /elsewhere`` holding recordings
    (here real unfinished ones, made elsewhere) that recovery would rewrite."""
    elsewhere = tmp_path / "elsewhere"
    crashed_recordings(elsewhere)
    before = snapshot(elsewhere)
    (root / top).mkdir()
    (root / top / "evil").symlink_to(elsewhere / top / "live")
    lines = recover(str(root))
    assert lines and all(line.startswith("skipped unfinished") for line in lines), lines
    assert all("leads out of the root" in line for line in lines)
    assert snapshot(elsewhere) == before


def test_recovery_never_follows_a_stream_directory_link_out_of_the_root(
    tmp_path: Path, root: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    crashed_recordings(elsewhere)
    before = snapshot(elsewhere)
    (root / "flv" / "live").mkdir(parents=True)
    (root / "flv" / "live" / "cam").symlink_to(elsewhere / "flv" / "live" / "cam")
    [line] = recover(str(root))
    assert line.startswith("skipped unfinished flv recording flv/live/cam: it leads out")
    assert snapshot(elsewhere) == before


def test_recovery_still_finalises_through_links_that_stay_inside(root: Path) -> None:
    real = root / "store"
    crashed_recordings(real)
    (root / "flv").symlink_to(real / "flv")
    lines = recover(str(root))
    assert lines == [line for line in lines if line.startswith("recovered")]
    assert len(lines) == 1  # only flv/ links in; the rest stay under store/
    assert not (real / "flv" / "live" / "cam" / MARKER_NAME).exists()


def test_recovery_does_not_rewrite_a_file_linked_in_from_outside(
    root: Path, outside: Path
) -> None:
    rig = crashed_recordings(root)
    flv_path = rig.dir("flv") / "index.flv"
    flv_path.unlink()
    flv_path.symlink_to(outside / "precious.txt")
    hls_tmp = rig.dir("hls") / "index.m3u8.tmp"
    hls_tmp.symlink_to(outside / "precious.txt")
    lines = recover(str(root))
    assert any("recovery of unfinished flv recording flv/live/cam failed" in x for x in lines)
    assert any(x.startswith("recovered unfinished hls") for x in lines)
    assert (outside / "precious.txt").read_bytes() == b"keep me"
    assert snapshot(outside) == {"precious.txt": b"keep me"}


# --------------------------------------------------------------------------- recorders


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_recorder_writes_nothing_through_a_link_out_of_the_root(
    fmt: str, root: Path, outside: Path, logged: list[LogEvent]
) -> None:
    top = {"hls": "hls", "flv": "flv"}.get(fmt, "mp4")
    (root / top).mkdir()
    (root / top / "live").symlink_to(outside)
    rig = Rig(root, (fmt,))
    stream = rig.publish(clip_frames(3), end=False)
    assert stream.live  # the stream goes on
    rig.registry.unpublish(stream, "publisher left")
    assert snapshot(outside) == {"precious.txt": b"keep me"}
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    [error] = messages(logged, "error")
    assert f"{fmt} recording of live/cam failed" in error and "leads out of the root" in error


def test_a_live_recording_stops_when_its_directory_is_swapped_for_a_link_out(
    root: Path, outside: Path, logged: list[LogEvent]
) -> None:
    rig = Rig(root, ("hls",))
    stream = rig.publish(clip_frames(2), end=False)
    directory = rig.dir("hls")
    directory.rename(root / "moved")
    directory.symlink_to(outside)
    for frame in clip_frames(3, start_ms=2000)[3:]:
        stream.push(frame)
    rig.registry.unpublish(stream, "publisher left")
    assert snapshot(outside) == {"precious.txt": b"keep me"}
    assert any("leads out of the root" in m for m in messages(logged, "error"))


# --------------------------------------------------------------------------- markers


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """Another live process (whose PID a stale marker may name)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_stale_marker_naming_a_live_unrelated_pid_is_recovered(
    root: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """PIDs are reused: the dead recorder's PID now belongs to someone else."""
    rig = crashed_recordings(root)
    for marker in root.rglob(MARKER_NAME):
        body = json.loads(marker.read_text())
        marker.write_text(json.dumps({**body, "pid": sleeper.pid}))
    lines = recover(str(root))
    assert len(lines) == 4 and all(x.startswith("recovered unfinished") for x in lines), lines
    assert (rig.dir("hls") / "index.m3u8").read_text().endswith("#EXT-X-ENDLIST\n")
    assert not list(root.rglob(MARKER_NAME))


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_marker_locked_by_another_live_process_is_left_alone_and_logged(root: Path) -> None:
    rig = crashed_recordings(root)
    marker = rig.dir("flv") / MARKER_NAME
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(marker)],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        lines = recover(str(root))
        skipped = [x for x in lines if x.startswith("left unfinished")]
        assert skipped == [f"left unfinished flv recording flv/live/cam alone: another live "
                           f"process (pid {os.getpid()}) is still recording it"]
        assert marker.exists()
    finally:
        holder.kill()
        holder.wait()
    [line] = recover(str(root))  # its holder is gone: now it is recovered
    assert line.startswith("recovered unfinished flv recording flv/live/cam")
    assert not marker.exists()
