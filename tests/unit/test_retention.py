"""Retention of recordings (rtmpd.services.retention): on a task.Clock, with
real files in a tmp dir, scans run inline and deletions on a synchronous
writer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.python import usage

from rtmpd.services.recorder import MARKER_NAME
from rtmpd.services.recorders import RECORDER_CLASSES
from rtmpd.services.retention import (
    FREE_CHECK_INTERVAL_S,
    SCAN_DELAY_S,
    SCAN_INTERVAL_S,
    Item,
    Retention,
    RetentionSettings,
    choose,
    delete,
    parse_duration,
    parse_size,
    scan,
)
from rtmpd.services.writer import ImmediateDiskWriter
from rtmpd.tap.rtmpd import Options
from tests.unit.test_recorder import CountingSink, Rig, clip_frames, logged, messages

__all__ = ["logged"]

T = TypeVar("T")
NOW = 1_800_000_000.0
DAY = 86400.0


def inline(f: Callable[[], T]) -> defer.Deferred[T]:
    return defer.maybeDeferred(f)


def put(path: Path, size: int, age_s: float, *, now: float = NOW) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (now - age_s, now - age_s))
    return path


def library(root: Path) -> dict[str, Path]:
    """Recordings of every kind, finished and live, of various ages."""
    flv = root / "flv" / "live" / "cam"
    merge = root / "mp4" / "live" / "cam"
    return {
        "old flv": put(flv / "index-20260101T000000Z.flv", 1000, 10 * DAY),
        "mid flv": put(flv / "index-20260105T000000Z.flv", 1000, 5 * DAY),
        "live flv": put(flv / "index.flv", 1000, 20 * DAY),
        "live marker": put(flv / MARKER_NAME, 10, 20 * DAY),
        "old mp4": put(merge / "output_merge-20260101T000000Z" / "stream_full.mp4", 2000, 9 * DAY),
        "new mp4": put(merge / "output_merge" / "stream_full.mp4", 2000, 1 * DAY),
        "hls": put(root / "hls" / "live" / "other" / "index.m3u8", 500, 3 * DAY),
    }


def service(root: Path, clock: Clock, **settings: int | float) -> Retention:
    keeper = Retention(str(root), RetentionSettings(**settings), ImmediateDiskWriter(), clock,
                       run_in_thread=inline)
    return keeper


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("1048576", 1048576), ("500M", 500 * 1024**2), ("2G", 2 * 1024**3),
    ("1.5k", 1536), ("3TiB", 3 * 1024**4), ("10 MB", 10 * 1024**2),
])
def test_sizes_read_with_binary_units(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("3600", 3600), ("90m", 5400), ("12h", 43200), ("7d", 7 * DAY), ("30s", 30),
])
def test_durations_read_in_seconds_or_with_units(text: str, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("argv", [["--record-max-age", "soon"], ["--record-max-bytes", "-1"],
                                  ["--record-min-free", "lots"]])
def test_bad_retention_options_are_usage_errors(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="record-max-age/-max-bytes/-min-free"):
        Options().parseOptions(["--root", str(tmp_path), *argv])


def test_retention_options_come_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "rtmpd.toml"
    config.write_text('record-max-age = "7d"\nrecord-max-bytes = "500G"\nrecord-min-free = 0\n')
    options = Options()
    options.parseOptions(["--config", str(config)])
    assert (options["record-max-age"], options["record-max-bytes"],
            options["record-min-free"]) == ("7d", "500G", "0")


def item(name: str, size: int, mtime: float, live: bool = False) -> Item:
    return Item(path=name, size=size, mtime=mtime, live=live)


def test_choose_takes_the_oldest_finished_until_the_total_fits() -> None:
    items = [item("a", 100, 1), item("live", 500, 0, live=True), item("b", 100, 2),
             item("c", 100, 3)]
    chosen = choose(items, RetentionSettings(max_bytes=650), NOW)
    assert [i.path for i in chosen] == ["a", "b"]  # the live one counts, never goes


def test_choose_never_takes_a_live_recording_even_over_budget() -> None:
    items = [item("live", 5000, 0, live=True)]
    assert choose(items, RetentionSettings(max_bytes=1, max_age_s=1), NOW) == []


def test_choose_takes_everything_past_the_age_limit() -> None:
    items = [item("old", 1, NOW - 3 * DAY), item("new", 1, NOW - 1)]
    assert [i.path for i in choose(items, RetentionSettings(max_age_s=DAY), NOW)] == ["old"]


def test_choose_with_no_limits_keeps_everything() -> None:
    assert choose([item("a", 10**12, 0)], RetentionSettings(), NOW) == []


def test_scan_finds_every_kind_and_knows_the_live_ones(tmp_path: Path) -> None:
    files = library(tmp_path)
    found = {os.path.relpath(i.path, tmp_path): (i.size, i.live) for i in scan(str(tmp_path)).items}
    assert found == {
        "flv/live/cam/index-20260101T000000Z.flv": (1000, False),
        "flv/live/cam/index-20260105T000000Z.flv": (1000, False),
        "flv/live/cam/index.flv": (1000, True),
        "mp4/live/cam/output_merge-20260101T000000Z": (2000, False),
        "mp4/live/cam/output_merge": (2000, False),
        "hls/live/other": (500, False),
    }
    assert files["old flv"].exists()


def test_scan_does_not_follow_links_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "media"
    library(tmp_path / "elsewhere")
    (root / "flv").mkdir(parents=True)
    (root / "flv" / "live").symlink_to(tmp_path / "elsewhere" / "flv" / "live")
    (root / "mp4").symlink_to(tmp_path / "elsewhere" / "mp4")
    assert scan(str(root)).items == []


def test_delete_leaves_a_recording_that_became_live_since_the_scan(tmp_path: Path) -> None:
    directory = put(tmp_path / "mp4" / "live" / "c" / "output_merge" / "1.m4s", 10, 0).parent
    [found] = scan(str(tmp_path)).items
    (directory / MARKER_NAME).write_text("{}")  # republished meanwhile
    assert not delete(str(tmp_path), found)
    assert directory.exists()


# --------------------------------------------------------------------------- the service


def test_budget_deletes_the_oldest_finished_recordings_first(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    files = library(tmp_path)  # 7500 bytes in all
    clock = Clock()
    clock.advance(NOW)
    keeper = service(tmp_path, clock, max_bytes=5000, min_free_bytes=0)
    keeper.startService()
    # The live FLV is the oldest (20 d) but live: it counts and stays. Then
    # the oldest finished go: the old FLV (10 d), the old fMP4 directory (9 d).
    assert not files["old flv"].exists()
    assert not files["old mp4"].parent.exists()  # 9 d: 7500 - 3000 = 4500 fits
    for name in ("mid flv", "live flv", "new mp4", "hls"):
        assert files[name].exists(), name
    [line] = [m for m in messages(logged) if m.startswith("retention:")]
    assert "deleted 2 finished recording(s)" in line
    keeper.stopService()


def test_age_limit_is_kept_by_the_periodic_scan(tmp_path: Path) -> None:
    files = library(tmp_path)
    clock = Clock()
    clock.advance(NOW)
    keeper = service(tmp_path, clock, max_age_s=4 * DAY, min_free_bytes=0)
    keeper.startService()
    assert not files["old flv"].exists() and not files["mid flv"].exists()
    assert not files["old mp4"].parent.exists()
    assert files["hls"].exists() and files["new mp4"].exists() and files["live flv"].exists()
    clock.advance(DAY)  # the HLS recording is now 4 days old and a bit
    assert files["hls"].exists()  # not scanned yet... until the next interval
    clock.advance(SCAN_INTERVAL_S)
    assert not files["hls"].parent.exists()
    assert files["live flv"].exists()
    keeper.stopService()
    assert not clock.getDelayedCalls()


def test_a_finished_recording_brings_a_scan_forward(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(NOW)
    keeper = service(tmp_path, clock, max_bytes=1500, min_free_bytes=0)
    keeper.startService()
    first = put(tmp_path / "flv" / "live" / "c" / "index-20260101T000000Z.flv", 1000, 10)
    put(tmp_path / "flv" / "live" / "c" / "index.flv", 1000, 0)
    keeper.recording_finished()
    keeper.recording_finished()  # coalesced
    assert len(clock.getDelayedCalls()) == 2  # the periodic scan and this one
    clock.advance(SCAN_DELAY_S)
    assert not first.exists()
    keeper.stopService()


def test_below_the_free_floor_new_streams_are_not_recorded_but_play(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    rig = Rig(tmp_path, ("flv", "hls"))
    clock = Clock()
    keeper = service(tmp_path, clock, min_free_bytes=2**62)  # more than any disk has
    keeper.startService()
    for recorder in rig.recorders:
        recorder.may_record = keeper.may_record
    stream = rig.publish(clip_frames(2), end=False)
    viewer = CountingSink()
    stream.add_sink(viewer)
    for frame in clip_frames(2, start_ms=2000)[3:]:
        stream.push(frame)
    assert viewer.frames > 0  # live play goes on
    assert all(not recorder.recordings for recorder in rig.recorders)
    assert not (tmp_path / "flv").exists() and not (tmp_path / "hls").exists()
    refusals = [m for m in messages(logged, "warn") if m.startswith("not recording")]
    assert len(refusals) == 1 and "below --record-min-free" in refusals[0]
    keeper.stopService()


def test_the_floor_is_checked_again_on_the_clock(tmp_path: Path) -> None:
    clock = Clock()
    keeper = service(tmp_path, clock, min_free_bytes=1)
    keeper.startService()
    assert keeper.free_bytes is not None and keeper.free_bytes > 0
    keeper.free_bytes = 0  # as if the disk had filled
    rig = Rig(tmp_path, ("flv",))
    rig.recorders[0].may_record = keeper.may_record
    rig.publish(clip_frames(1), "a", end=False)
    assert not rig.recorders[0].recordings
    clock.advance(FREE_CHECK_INTERVAL_S)  # space again
    rig.publish(clip_frames(1), "b", end=False)
    assert len(rig.recorders[0].recordings) == 1
    keeper.stopService()


def test_make_recorders_wires_retention_into_every_recorder(tmp_path: Path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from rtmpd.registry import StreamConfig, StreamRegistry
    from rtmpd.services.recorders import make_recorders

    services = make_recorders(
        StreamRegistry(Clock(), StreamConfig()), MemoryReactorClock(), root=str(tmp_path),
        formats="flv,hls", fragment_ms=1000, window=3,
        retention=RetentionSettings(max_bytes=10),
    )
    keeper = next(s for s in services if isinstance(s, Retention))
    recorders = [s for s in services if type(s) in RECORDER_CLASSES.values()]
    assert keeper.settings.max_bytes == 10 and len(recorders) == 2
    assert all(r.may_record == keeper.may_record for r in recorders)
