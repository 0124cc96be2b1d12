"""WS-FLV publish: an Autobahn WebSocket client sending binary messages of FLV bytes.

``ws(s)://host[:port]/{app}/{stream}[?query]``: the FLV header and the tags of each
pacing batch make one binary message; the end is a close with 1000. The server closes
with rtmpd's codes (4400 bad name, 4401, 4403, 4404, 4409 busy) to refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from rtmpd.client.session import (
    FINISH_TIMEOUT_S,
    SETUP_TIMEOUT_S,
    USER_AGENT,
    SessionBase,
    SessionListener,
    Tag,
)
from rtmpd.client.target import PushTarget
from rtmpd.codec.flv import encode_header, encode_tag

__all__ = ["WsPublishProtocol", "ws_factory"]

#: WS close codes (rtmpd's, as other FLV servers use them) that retrying will not change.
_WS_PERMANENT = frozenset({4400, 4401, 4403, 4404})


class WsPublishProtocol(WebSocketClientProtocol, SessionBase):  # type: ignore[misc]
    """Publishes over WebSocket: binary messages of FLV bytes, one per pacing batch."""

    def __init__(self, target: PushTarget, listener: SessionListener, clock: IReactorTime,
                 *, has_audio: bool, has_video: bool):
        WebSocketClientProtocol.__init__(self)
        SessionBase.__init__(self, target, listener, clock)
        self._header: bytes | None = encode_header(has_audio=has_audio, has_video=has_video)

    def _transport(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        WebSocketClientProtocol.connectionMade(self)
        self._started()

    def onOpen(self) -> None:
        self._mark_ready()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        pass  # the server has nothing to say to a publisher

    def send_tags(self, tags: Sequence[Tag]) -> None:
        parts = [encode_tag(tag_type, ts, body) for tag_type, ts, body in tags]
        if self._header is not None:
            parts.insert(0, self._header)
            self._header = None
        if parts:
            self.sendMessage(b"".join(parts), isBinary=True)

    def write_flv(self, data: bytes) -> None:
        """Send FLV bytes as they are (the FLV header and tags a live source
        serialized already): one binary message."""
        if data:
            self.sendMessage(data, isBinary=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if code is not None and code != 1000 and code != 1006:
            self._fail(f"WebSocket closed with {code} {reason or ''}".strip(),
                       permanent=code in _WS_PERMANENT)
        elif not self.ready:
            self._fail(f"WebSocket handshake failed ({reason or 'no reason'})")

    def finish(self) -> Deferred[None]:
        if not self.finishing:
            self._begin_finish()
            self.sendClose(1000, "end of stream")
        return self.finished

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        WebSocketClientProtocol.connectionLost(self, reason)
        self._lost(f"connection lost ({reason.getErrorMessage()})", reason)


class _WsFactory(WebSocketClientFactory):
    def __init__(self, make: Callable[[], WsPublishProtocol], url: str) -> None:
        super().__init__(url, useragent=USER_AGENT)
        self.setProtocolOptions(openHandshakeTimeout=SETUP_TIMEOUT_S,
                                closeHandshakeTimeout=FINISH_TIMEOUT_S)
        self._make = make

    def buildProtocol(self, addr: object) -> WsPublishProtocol:
        proto = self._make()
        proto.factory = self
        return proto


def ws_factory(
    target: PushTarget, listener: SessionListener, clock: IReactorTime, *,
    has_audio: bool, has_video: bool,
) -> WebSocketClientFactory:
    """Builds the one :class:`WsPublishProtocol` of a connection attempt."""
    return _WsFactory(
        lambda: WsPublishProtocol(target, listener, clock,
                                  has_audio=has_audio, has_video=has_video),
        target.url(),
    )
