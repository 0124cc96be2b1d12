"""RTMP on the ``--rtmp`` port: a thin adapter between the socket and the
pure :class:`rtmpd.codec.rtmp.connection.ServerConnection`."""

from __future__ import annotations

from collections.abc import Hashable

from twisted.internet import protocol, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd.codec.errors import ProtocolError
from rtmpd.codec.rtmp import chunk, events
from rtmpd.codec.rtmp.chunk import NEED_DATA
from rtmpd.codec.rtmp.connection import (
    AUDIO_CSID,
    DATA_CSID,
    VIDEO_CSID,
    ServerConnection,
)
from rtmpd.errors import InvalidStreamName, StreamBusy
from rtmpd.fanout import ViewerOutput, write_now
from rtmpd.interfaces import IMediaSource
from rtmpd.media import Frame, FrameKind
from rtmpd.registry import Stream, StreamRegistry, validate_name

log = Logger()

#: The close reason of a connection the peer ended normally.
_PEER_CLOSED = "closed by the peer"

_CSID_BY_KIND = {
    FrameKind.AUDIO: AUDIO_CSID,
    FrameKind.VIDEO: VIDEO_CSID,
    FrameKind.SCRIPT: DATA_CSID,
}


class RtmpFormat:
    """RTMP media messages with full type-0 headers on fixed chunk streams:
    the same bytes suit every viewer with this chunk size and stream id."""

    __slots__ = ("chunk_size", "key", "stream_id")

    def __init__(self, chunk_size: int, stream_id: int) -> None:
        self.chunk_size = chunk_size
        self.stream_id = stream_id
        self.key: Hashable = ("rtmp", chunk_size, stream_id)

    def encode(self, frame: Frame) -> bytes:
        return chunk.encode_message(
            chunk_size=self.chunk_size,
            chunk_stream_id=_CSID_BY_KIND[frame.kind],
            type_id=frame.kind,
            stream_id=self.stream_id,
            timestamp_ms=frame.timestamp_ms,
            payload=frame.payload,
        )

    def preamble(self, stream: Stream) -> list[bytes]:
        return []


class RtmpViewer(ViewerOutput):
    """The playing side of one RTMP connection."""

    __slots__ = ("protocol", "stream", "stream_id")

    def __init__(
        self, proto: RtmpServerProtocol, stream: Stream, stream_id: int, transport: ITransport
    ) -> None:
        super().__init__(transport, proto.peer)
        self.protocol = proto
        self.stream = stream
        self.stream_id = stream_id

    def stream_ended(self, reason: str) -> None:
        self.protocol.viewer_stream_ended(self, reason)

    def drop(self, reason: str) -> None:
        log.warn("play {path} by {peer} dropped: {reason}", path=self.stream.path,
                 peer=self.description, reason=reason)
        self.protocol.close(f"dropped: {reason}", abort=True)


@implementer(IMediaSource)
class RtmpServerProtocol(protocol.Protocol):
    """One RTMP connection: a publisher, a viewer, or (rarely) several of each
    on separate message streams."""

    def __init__(self, factory: RtmpServerFactory) -> None:
        self.factory = factory
        self.registry = factory.registry
        self.clock = factory.clock
        self.conn = ServerConnection(out_chunk_size=factory.chunk_size)
        self.peer = "rtmp ?"
        self.app: str | None = None
        self.publishing: dict[int, Stream] = {}
        self.viewers: dict[int, RtmpViewer] = {}
        self.paused: dict[int, Stream] = {}
        self.close_reason: str | None = None
        self._last_data = 0.0
        self._timer: IDelayedCall | None = None
        self._started = False
        #: The socket, for direct writes (-1: let the transport write).
        self._fd = -1
        #: The last stream played, and whether anything was published: a
        #: connection that only played logs its close as a viewer line.
        self._played: str | None = None
        self._published = False

    @property
    def description(self) -> str:
        return self.peer

    @property
    def closing(self) -> bool:
        """Whether close() was called; no more input is handled."""
        return self.close_reason is not None

    # -- connection life -------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = f"rtmp {getattr(peer, 'host', '?')}:{getattr(peer, 'port', 0)}"
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        transport: object = self.transport
        if isinstance(transport, tcp.Connection):
            self._fd = transport.fileno()
        self._last_data = self.clock.seconds()
        self._timer = self.clock.callLater(self.factory.handshake_timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        if not self._started:
            self.close(
                f"timed out: no publish or play within {self.factory.handshake_timeout:g} s",
                abort=True,
            )
            return
        if self.publishing:
            idle = now - self._last_data
            if idle >= self.factory.idle_timeout:
                self.close(f"timed out: publisher sent nothing for {idle:.0f} s", abort=True)
                return
            self._timer = self.clock.callLater(
                self.factory.idle_timeout - idle, self._check_timeout
            )

    def dataReceived(self, data: bytes) -> None:
        if self.close_reason is not None:
            return
        self._last_data = self.clock.seconds()
        conn = self.conn
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                self._handle(event)
                if self.closing:
                    break
        except ProtocolError as e:
            self._flush()
            self.close(f"protocol error: {e}", abort=False)
            return
        self._flush()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            # At once, not on the next reactor turn: a handshake or a play
            # takes four round trips, and each would wait for one.
            write_now(self.transport, self._fd, (out,), len(out))

    def close(self, reason: str, *, abort: bool) -> None:
        """Close the connection, remembering why for the close log line."""
        if self.close_reason is None:
            self.close_reason = reason
        transport = self.transport
        if transport is None:
            return
        if abort:
            transport.abortConnection()  # type: ignore[attr-defined]
        else:
            transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        why = self.close_reason or (
            _PEER_CLOSED if reason.check(ConnectionDone) else reason.getErrorMessage()
        )
        for stream in list(self.publishing.values()):
            self.registry.unpublish(stream, f"publisher {self.peer} disconnected ({why})")
        self.publishing.clear()
        viewer_log = self.registry.viewer_log
        for viewer in list(self.viewers.values()):
            viewer.stream.remove_viewer(viewer)
            viewer_log.line(
                log, "stop", viewer.stream.path,
                "stop play {path} by {peer}: {why} ({bytes} bytes sent, {dropped} frames skipped)",
                peer=self.peer, why=why, bytes=viewer.bytes_sent, dropped=viewer.frames_dropped,
            )
        self.viewers.clear()
        if self._played is not None and not self._published and why == _PEER_CLOSED:
            # A viewer hanging up: bounded with the other viewer lines.
            # Errors, timeouts and drops are always logged.
            viewer_log.line(log, "close", self._played, "close {peer}: {why}",
                            peer=self.peer, why=why)
        else:
            log.info("close {peer}: {why}", peer=self.peer, why=why)

    # -- IMediaSource --------------------------------------------------------------

    def stop_publishing(self, reason: str) -> None:
        self.close(reason, abort=False)

    # -- events --------------------------------------------------------------------

    def _handle(self, event: object) -> None:
        if isinstance(event, events.MediaReceived):
            stream = self.publishing.get(event.stream_id)
            # Some encoders send empty audio/video messages at start: skip them.
            if stream is not None and event.payload:
                stream.push(Frame.from_tag(event.type_id, event.timestamp_ms, event.payload))
        elif isinstance(event, events.DataReceived):
            stream = self.publishing.get(event.stream_id)
            if stream is not None and event.payload:
                stream.push(Frame.from_tag(FrameKind.SCRIPT, event.timestamp_ms, event.payload))
        elif isinstance(event, events.ConnectRequested):
            self._connect(event)
        elif isinstance(event, events.PublishRequested):
            self._publish(event)
        elif isinstance(event, events.PlayRequested):
            self._play(event)
        elif isinstance(event, (events.StreamDeleted, events.UnpublishRequested)):
            self._end_stream(event.stream_id)
        elif isinstance(event, events.PauseRequested):
            self._pause(event)
        elif isinstance(event, events.ConnectionClosed):
            self.close(_PEER_CLOSED, abort=False)

    def _connect(self, event: events.ConnectRequested) -> None:
        try:
            self.app = validate_name(event.app, "app name")
        except InvalidStreamName as e:
            log.info("connect refused for {peer}: {error}", peer=self.peer, error=str(e))
            self.conn.reject_connect(event.transaction_id, str(e))
            self._flush()
            self.close(f"connect refused: {e}", abort=False)
            return
        # No line for a connect: viewers connect by the thousand, and the
        # play or publish line that follows names the app and stream.
        self.conn.accept_connect(event.transaction_id)

    def _publish(self, event: events.PublishRequested) -> None:
        name = event.name
        if self.app is None:
            self.conn.publish_bad_name(event.stream_id, name, "connect first")
            return
        try:
            stream = self.registry.publish(self.app, name, self)
        except (InvalidStreamName, StreamBusy) as e:
            log.info("publish refused for {peer}: {error}", peer=self.peer, error=str(e))
            self.conn.publish_bad_name(event.stream_id, name[:128], str(e))
            return
        self.publishing[event.stream_id] = stream
        self._published = True
        self._mark_started()
        self.conn.publish_start(event.stream_id, name)

    def _play(self, event: events.PlayRequested) -> None:
        name = event.name
        stream: Stream | None = None
        if self.app is not None:
            try:
                stream = self.registry.get(self.app, name)
            except InvalidStreamName as e:
                log.info("play refused for {peer}: {error}", peer=self.peer, error=str(e))
                self.conn.play_not_found(event.stream_id, name[:128])
                return
        if stream is None:
            log.info("play {app}/{name} by {peer}: not found", app=self.app, name=name[:128],
                     peer=self.peer)
            self.conn.play_not_found(event.stream_id, name[:128])
            return
        old = self.viewers.pop(event.stream_id, None)
        if old is not None:
            old.stream.remove_viewer(old)
        self._mark_started()
        self.conn.play_start(event.stream_id, name)
        # Status messages must reach the socket before any shared media.
        self._flush()
        self._add_viewer(stream, event.stream_id)
        self._played = stream.path
        self.registry.viewer_log.line(log, "play", stream.path, "play {path} by {peer} (rtmp)",
                                      peer=self.peer)

    def _add_viewer(self, stream: Stream, stream_id: int) -> None:
        transport = self.transport
        assert transport is not None
        viewer = RtmpViewer(self, stream, stream_id, transport)
        self.viewers[stream_id] = viewer
        if len(self.viewers) == 1:
            # The socket's producer is the connection's first viewer; a play
            # after a stop or an unpause replaces the old one.
            if getattr(transport, "producer", None) is not None:
                transport.unregisterProducer()  # type: ignore[attr-defined]
            transport.registerProducer(viewer, True)  # type: ignore[attr-defined]
        stream.add_viewer(self.factory.format_for(stream_id), viewer)

    def _mark_started(self) -> None:
        if not self._started:
            self._started = True
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            if self.publishing:
                self._timer = self.clock.callLater(self.factory.idle_timeout, self._check_timeout)

    def _end_stream(self, stream_id: int) -> None:
        stream = self.publishing.pop(stream_id, None)
        if stream is not None:
            self.conn.unpublish_success(stream_id, stream.name)
            self.registry.unpublish(stream, f"publisher {self.peer} stopped")
        viewer = self.viewers.pop(stream_id, None)
        if viewer is not None:
            viewer.stream.remove_viewer(viewer)
            self.registry.viewer_log.line(
                log, "stop", viewer.stream.path,
                "stop play {path} by {peer}: stopped by the player ({bytes} bytes sent, "
                "{dropped} frames skipped)",
                peer=self.peer, bytes=viewer.bytes_sent, dropped=viewer.frames_dropped,
            )
        self.paused.pop(stream_id, None)

    def _pause(self, event: events.PauseRequested) -> None:
        if event.paused:
            viewer = self.viewers.pop(event.stream_id, None)
            if viewer is not None:
                viewer.stream.remove_viewer(viewer)
                self.paused[event.stream_id] = viewer.stream
        else:
            stream = self.paused.pop(event.stream_id, None)
            if stream is not None and stream.live:
                self._add_viewer(stream, event.stream_id)

    def viewer_stream_ended(self, viewer: RtmpViewer, reason: str) -> None:
        """The publisher went away: tell the player, keep the connection."""
        if self.viewers.get(viewer.stream_id) is viewer:
            del self.viewers[viewer.stream_id]
        self.registry.viewer_log.line(log, "stop", viewer.stream.path,
                                      "stop play {path} by {peer}: {reason}",
                                      peer=self.peer, reason=reason)
        if self.transport is not None and self.close_reason is None:
            self.conn.play_unpublish_notify(viewer.stream_id, viewer.stream.name)
            self._flush()


class RtmpServerFactory(protocol.Factory):
    """Creates one :class:`RtmpServerProtocol` per connection."""

    def __init__(
        self,
        registry: StreamRegistry,
        *,
        clock: IReactorTime,
        chunk_size: int = 4096,
        handshake_timeout: float = 15.0,
        idle_timeout: float = 30.0,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.chunk_size = chunk_size
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self._formats: dict[int, RtmpFormat] = {}

    def format_for(self, stream_id: int) -> RtmpFormat:
        """The shared output format for viewers playing on ``stream_id``."""
        fmt = self._formats.get(stream_id)
        if fmt is None:
            fmt = self._formats[stream_id] = RtmpFormat(self.chunk_size, stream_id)
        return fmt

    def buildProtocol(self, addr: object) -> RtmpServerProtocol:
        return RtmpServerProtocol(self)
