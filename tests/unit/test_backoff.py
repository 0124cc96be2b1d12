"""The one reconnect rule of the clients (rtmpd.client.backoff)."""

import pytest

from rtmpd.client.backoff import BACKOFF_INITIAL_S, BACKOFF_MAX_S, Backoff


def test_waits_double_from_the_first_up_to_the_cap() -> None:
    backoff = Backoff(stable_s=2)
    waits = [backoff.next_delay() for _ in range(8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert waits[0] == BACKOFF_INITIAL_S and waits[-1] == BACKOFF_MAX_S


def test_a_session_that_ran_long_enough_starts_the_doubling_over() -> None:
    backoff = Backoff(stable_s=2)
    for _ in range(4):
        backoff.next_delay()
    backoff.session_ended(1.9)  # too short: still backing off
    assert backoff.next_delay() == 8.0
    backoff.session_ended(2.0)
    assert backoff.next_delay() == BACKOFF_INITIAL_S
    backoff.session_ended(None)  # never got going
    assert backoff.next_delay() == 1.0


def test_a_cap_below_the_first_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="backoff from 5 s to 1 s"):
        Backoff(stable_s=1, initial_s=5, max_s=1)
