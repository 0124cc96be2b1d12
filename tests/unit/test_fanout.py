"""What a partial writev leaves is handed to the transport in order."""

from __future__ import annotations

import pytest
from twisted.internet.testing import StringTransport

from rtmpd.fanout import _write_rest

CHUNKS = [b"abc", b"defgh", b"i", b"jklm"]
ALL = b"".join(CHUNKS)


@pytest.mark.parametrize("written", range(len(ALL) + 1))
def test_rest_of_a_partial_writev_follows_in_order(written: int) -> None:
    transport = StringTransport()
    _write_rest(transport, CHUNKS, 0, written)
    assert transport.value() == ALL[written:]


@pytest.mark.parametrize("written", range(len(b"ijklm") + 1))
def test_rest_of_a_later_batch(written: int) -> None:
    transport = StringTransport()
    _write_rest(transport, CHUNKS, 2, written)
    assert transport.value() == b"ijklm"[written:]
