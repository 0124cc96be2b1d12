"""Full garbage collections paced by connections that close (rtmpd.gcpacing)."""

from __future__ import annotations

import gc

from twisted.internet.task import Clock

from rtmpd import gcpacing
from rtmpd.admission import Admission
from rtmpd.gcpacing import PacedCollection
from rtmpd.registry import StreamRegistry


def _opened(admission: Admission, n: int) -> list[int]:
    return [admission.open_connection("127.0.0.1", 1000 + i, "rtmp", lambda why: None)
            for i in range(n)]


def test_automatic_full_collections_are_off_while_running_and_restored_after() -> None:
    before = gc.get_threshold()
    clock = Clock()
    paced = PacedCollection(Admission(StreamRegistry(clock)), clock)
    paced.startService()
    try:
        assert gc.get_threshold()[:2] == before[:2]
        assert gc.get_threshold()[2] == gcpacing.NEVER
    finally:
        paced.stopService()
    assert gc.get_threshold() == before
    assert not clock.getDelayedCalls()


def test_joins_do_not_collect_a_quarter_of_the_open_connections_closing_does() -> None:
    clock = Clock()
    admission = Admission(StreamRegistry(clock))
    paced = PacedCollection(admission, clock)
    paced.startService()
    try:
        ids = _opened(admission, 2000)
        clock.advance(gcpacing.CHECK_INTERVAL_S)
        assert paced.collections == 0
        for client_id in ids[:300]:  # under a quarter of the 1700 still open
            admission.close_connection(client_id)
        clock.advance(gcpacing.CHECK_INTERVAL_S)
        assert paced.collections == 0
        for client_id in ids[300:400]:  # 400 closed: a quarter of the 1600 open
            admission.close_connection(client_id)
        clock.advance(gcpacing.CHECK_INTERVAL_S)
        assert paced.collections == 1
        clock.advance(gcpacing.CHECK_INTERVAL_S)
        assert paced.collections == 1
    finally:
        paced.stopService()


def test_a_few_closes_wait_for_the_minimum_or_the_longest_interval() -> None:
    clock = Clock()
    admission = Admission(StreamRegistry(clock))
    paced = PacedCollection(admission, clock)
    paced.startService()
    try:
        for client_id in _opened(admission, 10):
            admission.close_connection(client_id)
        clock.advance(gcpacing.CHECK_INTERVAL_S)
        assert paced.collections == 0
        clock.pump([gcpacing.CHECK_INTERVAL_S] * int(gcpacing.FULL_COLLECTION_MAX_INTERVAL_S))
        assert paced.collections == 1
    finally:
        paced.stopService()
