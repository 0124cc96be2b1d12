"""A WebSocket join does not pretty-print Autobahn's configuration, and
rtmpd patches nothing inside Autobahn to get there."""

from __future__ import annotations

import pprint

import autobahn.websocket.protocol as autobahn_protocol
from twisted.internet.task import Clock

from rtmpd.admission import Admission
from rtmpd.protocols.flvws import MAX_MESSAGE_BYTES, WsFlvFactory
from rtmpd.registry import StreamRegistry


def test_autobahn_module_is_left_as_it_is() -> None:
    assert autobahn_protocol.__dict__["pformat"] is pprint.pformat


def test_ws_protocols_carry_their_options_so_autobahn_copies_and_prints_none() -> None:
    """Autobahn copies (and pretty-prints) every option not already set on
    the protocol at each connection: ours are set on its class."""
    factory = WsFlvFactory(Admission(StreamRegistry(Clock())), Clock())
    proto = factory.buildProtocol(None)
    assert proto.CONFIG_ATTRS == ()
    assert proto.maxMessagePayloadSize == MAX_MESSAGE_BYTES
    assert not proto.autoPingInterval
    assert proto.failByDrop is False
    for name in autobahn_protocol.WebSocketServerProtocol.CONFIG_ATTRS:
        assert hasattr(type(proto), name), name


def test_send_queue_is_the_fifo_autobahn_expects() -> None:
    from rtmpd.protocols.flvws import SendQueue

    queue = SendQueue()
    assert len(queue) == 0
    queue.append((b"a", True))
    queue.append((b"b", False))
    assert queue.popleft() == (b"a", True) and len(queue) == 1
