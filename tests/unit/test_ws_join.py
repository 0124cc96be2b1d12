"""A WebSocket join does not pretty-print Autobahn's configuration."""

from __future__ import annotations

import pprint

import autobahn.websocket.protocol as autobahn_protocol

import rtmpd.protocols.flvws  # noqa: F401  (applies the patch)


def test_autobahn_debug_formatting_is_replaced_by_a_cheap_stand_in() -> None:
    pformat = autobahn_protocol.__dict__["pformat"]
    assert pformat is not pprint.pformat
    assert pformat([("openHandshakeTimeout", 5, "Factory")] * 40) == "(list, not formatted)"
