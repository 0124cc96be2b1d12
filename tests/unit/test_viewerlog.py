"""Viewer lines: written up to a rate, then summarised once a second."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, formatEvent, globalLogPublisher

from rtmpd.viewerlog import ViewerLog, ViewerLogService

log = Logger(namespace="rtmpd")


@pytest.fixture
def lines() -> Iterator[list[str]]:
    seen: list[str] = []

    def observer(event: LogEvent) -> None:
        if event.get("log_namespace") == "rtmpd":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def test_lines_up_to_the_rate_are_written_as_they_come(lines: list[str]) -> None:
    clock = Clock()
    vlog = ViewerLog(clock, lines_per_s=3)
    for i in range(3):
        vlog.line(log, "play", "live/a", "play {path} by {peer}", peer=f"p{i}")
    assert lines == ["play live/a by p0", "play live/a by p1", "play live/a by p2"]
    clock.advance(5)
    assert len(lines) == 3  # nothing left out, no summary


def test_a_storm_is_summarised_per_kind_and_stream(lines: list[str]) -> None:
    clock = Clock()
    vlog = ViewerLog(clock, lines_per_s=2)
    for i in range(10):
        vlog.line(log, "play", "live/a", "play {path} by {peer}", peer=f"p{i}")
    for i in range(3):
        vlog.line(log, "stop", "live/b", "stop play {path} by {peer}", peer=f"q{i}")
    assert len(lines) == 2
    clock.advance(1)
    assert lines[2] == (
        "more than 2 viewer lines a second; not shown one by one: "
        "8 play on live/a, 3 stop on live/b"
    )
    # A new second: lines are written again.
    vlog.line(log, "play", "live/a", "play {path} by {peer}", peer="late")
    assert lines[-1] == "play live/a by late"


def test_shutdown_writes_the_pending_summary(lines: list[str]) -> None:
    clock = Clock()
    vlog = ViewerLog(clock, lines_per_s=0)
    svc = ViewerLogService(vlog)
    svc.startService()
    vlog.line(log, "stop", "live/a", "stop {path}")
    svc.stopService()
    assert lines == ["more than 0 viewer lines a second; not shown one by one: 1 stop on live/a"]
    assert not clock.getDelayedCalls()
