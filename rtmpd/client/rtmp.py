"""RTMP publish: our sans-IO client (:class:`~rtmpd.codec.rtmp.connection.ClientConnection`)
under a thin protocol.

``rtmp://host[:port]/{app}/{stream}[?query]``: connect, releaseStream, FCPublish,
createStream, publish; the metadata goes as ``@setDataFrame``, frames as audio / video
messages. The end is FCUnpublish + deleteStream, then the close.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from rtmpd.client.session import SessionBase, SessionListener, Tag
from rtmpd.client.target import PushTarget
from rtmpd.codec import amf0
from rtmpd.codec.errors import ProtocolError
from rtmpd.codec.flv import TAG_SCRIPT
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp import messages as msg
from rtmpd.codec.rtmp.chunk import NEED_DATA
from rtmpd.codec.rtmp.connection import DATA_CSID, ClientConnection

__all__ = ["DEFAULT_CHUNK_SIZE", "RtmpPublishProtocol", "rtmp_factory"]

#: The chunk size announced to the server before publishing.
DEFAULT_CHUNK_SIZE = 4096

_SET_DATA_FRAME = amf0.encode("@setDataFrame")
_ON_METADATA = amf0.encode("onMetaData")


class RtmpPublishProtocol(protocol.Protocol, SessionBase):
    """Publishes over RTMP with :class:`ClientConnection`: connect, releaseStream,
    FCPublish, createStream, publish; ends with FCUnpublish and deleteStream."""

    def __init__(self, target: PushTarget, listener: SessionListener, clock: IReactorTime,
                 *, chunk_size: int = DEFAULT_CHUNK_SIZE):
        SessionBase.__init__(self, target, listener, clock)
        #: Outgoing chunk size, announced before ``publish``.
        self.chunk_size = chunk_size
        self.conn = ClientConnection(out_chunk_size=chunk_size)
        #: The message stream the server created for the publish (0 before).
        self.stream_id = 0

    def _transport(self) -> Any:
        return self.transport

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def connectionMade(self) -> None:
        self._started()
        t = self.target
        self.conn.connect(t.app, f"{t.scheme}://{t.authority}/{t.app}")
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
            while (event := self.conn.next_event()) is not NEED_DATA:
                self._on_event(event)
        except ProtocolError as e:
            self._fail(f"RTMP error from the server: {e}")
            self._flush()
            self._transport().abortConnection()
            return
        self._flush()

    def _publish_name(self) -> str:
        t = self.target
        return f"{t.stream}?{t.query}" if t.query else t.stream

    def _on_event(self, event: object) -> None:
        name = self._publish_name()
        if isinstance(event, ev.Connected):
            self.conn.send_command("releaseStream", None, name)
            self.conn.send_command("FCPublish", None, name)
            self.conn.create_stream()
        elif isinstance(event, ev.ConnectFailed):
            self._fail(f"connect refused: {event.code} {event.description}".strip(),
                       permanent=True)
            self._transport().loseConnection()
        elif isinstance(event, ev.StreamCreated) and not self.stream_id:
            self.stream_id = event.stream_id
            self.conn.publish(self.stream_id, name)
        elif isinstance(event, ev.StatusReceived):
            if event.code == "NetStream.Publish.Start":
                self._flush()
                self._mark_ready()
            elif event.level == "error" or event.code.endswith(("BadName", "Rejected", "Failed")):
                # BadName for a valid name means busy (our old session may linger): retry.
                busy = event.code == "NetStream.Publish.BadName"
                self._fail(f"{event.code} {event.description}".strip(), permanent=not busy)
                self._transport().loseConnection()

    def send_tags(self, tags: Sequence[Tag]) -> None:
        conn, sid = self.conn, self.stream_id
        for tag_type, ts, body in tags:
            ts &= 0xFFFFFFFF
            if tag_type == TAG_SCRIPT:
                payload = _SET_DATA_FRAME + body if body.startswith(_ON_METADATA) else body
                conn.send_message(DATA_CSID, msg.DATA_AMF0, sid, ts, payload)
            else:
                conn.send_media(sid, tag_type, ts, body)
        self._flush()

    def finish(self) -> Deferred[None]:
        if not self.finishing:
            self._begin_finish()
            if self.stream_id:
                self.conn.send_command("FCUnpublish", None, self._publish_name())
                self.conn.delete_stream(self.stream_id)
            self._flush()
            if self.transport is not None:
                self.transport.loseConnection()
        return self.finished

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost(f"connection lost ({reason.getErrorMessage()})", reason)


def rtmp_factory(
    target: PushTarget, listener: SessionListener, clock: IReactorTime, *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> protocol.Factory:
    """Builds the one :class:`RtmpPublishProtocol` of a connection attempt."""
    return protocol.Factory.forProtocol(
        lambda: RtmpPublishProtocol(target, listener, clock, chunk_size=chunk_size)
    )
