"""Pulling one live stream over RTMP play: our sans-IO client
(:class:`~rtmpd.codec.rtmp.connection.ClientConnection`) under a thin protocol.

``rtmp(s)://host[:port]/{app}/{stream}[?query]``: connect, createStream, play; the
media and the ``onMetaData`` that follow become Frames. :class:`RtmpPull` has the
shape of :class:`~rtmpd.client.pull.FlvPull` and reports to the same
:class:`~rtmpd.client.pull.PullListener`, so a gateway's upstream
(:mod:`rtmpd.services.upstream`) takes a stream from an RTMP server (nginx-rtmp,
which has no HTTP-FLV, or any other) as it takes one over HTTP-FLV. RTMP names no
publish, so a reconnect is always treated as a new publish (rebased).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from rtmpd.client.connector import client_endpoint
from rtmpd.client.pull import IDLE_TIMEOUT_S, RESPONSE_TIMEOUT_S, PullListener
from rtmpd.client.target import parse_target
from rtmpd.client.tls import certificate_failure
from rtmpd.codec import amf0
from rtmpd.codec.errors import ProtocolError
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp.chunk import NEED_DATA
from rtmpd.codec.rtmp.connection import ClientConnection
from rtmpd.media import Frame, FrameKind

if TYPE_CHECKING:
    from rtmpd.client.tls import TrustRoot

__all__ = ["RtmpPull"]

_ON_METADATA = amf0.encode("onMetaData")
#: Play statuses after which no media will come (the play failed or ended).
_NOT_FOUND = "NetStream.Play.StreamNotFound"
_ENDED = frozenset({"NetStream.Play.UnpublishNotify", "NetStream.Play.Stop",
                    "NetStream.Play.Complete"})


class RtmpPull:
    """One RTMP play of one stream; :meth:`stop` ends it. ``url`` is the
    stream's URL (``rtmp://host/app/stream``)."""

    def __init__(
        self, reactor: Any, url: bytes, clock: IReactorTime, listener: PullListener, *,
        response_timeout: float = RESPONSE_TIMEOUT_S, idle_timeout: float = IDLE_TIMEOUT_S,
        trust_root: TrustRoot | None = None,
    ) -> None:
        self.reactor = reactor
        self.trust_root = trust_root
        self.url = url
        self.target = parse_target(url.decode("ascii"))
        self.clock = clock
        self.listener = listener
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.bytes_in = 0
        self.last_data_at: float | None = None
        self.done = False
        self.playing = False
        self._protocol: _RtmpPlayProtocol | None = None
        self._timer: IDelayedCall | None = None
        self._stop_reason = ""

    def start(self) -> None:
        """Connect and ask to play."""
        self._timer = self.clock.callLater(self.response_timeout, self._no_answer)
        d = client_endpoint(self.reactor, self.target, self.trust_root).connect(
            protocol.Factory.forProtocol(lambda: _RtmpPlayProtocol(self)))
        d.addCallbacks(self._connected, self._unreachable)

    def stop(self, reason: str) -> None:
        """Abort the play; the listener hears :meth:`PullListener.pull_ended`
        (or nothing more if it had been refused already)."""
        if self.done:
            return
        self._stop_reason = reason
        proto = self._protocol
        if proto is not None and proto.transport is not None:
            _abort(proto)
            return
        self._end(reason)

    # -- what the protocol reports ---------------------------------------------------

    def _connected(self, proto: _RtmpPlayProtocol) -> None:
        if self.done:
            _abort(proto)
            return
        self._protocol = proto

    def _unreachable(self, failure: Failure) -> None:
        if not self.done:
            tls = certificate_failure(failure)
            self._refuse(tls or f"cannot connect: {failure.getErrorMessage()}")

    def _no_answer(self) -> None:
        self._timer = None
        if not self.playing:
            self.stop(f"no answer within {self.response_timeout:g} s")

    def _watch_idle(self) -> None:
        """Every quarter of the idle timeout, look at when data last came."""
        self._timer = None
        if self.done:
            return
        now = self.clock.seconds()
        since = self.last_data_at if self.last_data_at is not None else now
        if now - since >= self.idle_timeout:
            self.stop(f"no data for {now - since:.0f} s")
            return
        self._timer = self.clock.callLater(self.idle_timeout / 4, self._watch_idle)

    def _data(self, size: int) -> None:
        self.bytes_in += size
        self.last_data_at = self.clock.seconds()

    def _play_started(self) -> None:
        if self.playing or self.done:
            return
        self.playing = True
        self._cancel_timer()
        self.last_data_at = self.clock.seconds()
        self._timer = self.clock.callLater(self.idle_timeout / 4, self._watch_idle)
        self.listener.pull_answered(None)

    def _frame(self, frame: Frame) -> None:
        if self.playing and not self.done:
            self.listener.pull_frame(frame)

    def _refuse(self, reason: str, status: int | None = None) -> None:
        if self.done:
            return
        if self.playing:
            self._end(reason)
            return
        self._finish()
        self.listener.pull_refused(status, reason)

    def _end(self, reason: str) -> None:
        if self.done:
            return
        self._finish()
        if self.playing or self._stop_reason:
            self.listener.pull_ended(reason)
        else:
            self.listener.pull_refused(None, reason)

    def _lost(self, reason: str) -> None:
        self._protocol = None
        self._end(self._stop_reason or reason)

    def _finish(self) -> None:
        self.done = True
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


def _abort(proto: protocol.Protocol) -> None:
    transport: Any = proto.transport
    if transport is not None:
        transport.abortConnection()


class _RtmpPlayProtocol(protocol.Protocol):
    """connect, createStream, play; media and metadata to the pull."""

    def __init__(self, pull: RtmpPull) -> None:
        self.pull = pull
        self.conn = ClientConnection()
        self.stream_id = 0

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        t = self.pull.target
        self.conn.connect(t.app, f"{t.scheme}://{t.authority}/{t.app}")
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        pull = self.pull
        pull._data(len(data))
        try:
            self.conn.receive_data(data)
            while not pull.done and (event := self.conn.next_event()) is not NEED_DATA:
                self._on_event(event)
        except ProtocolError as e:
            pull._refuse(f"RTMP error from the server: {e}")
        self._flush()
        if pull.done:
            _abort(self)

    def _on_event(self, event: object) -> None:
        pull = self.pull
        if isinstance(event, ev.Connected):
            self.conn.create_stream()
        elif isinstance(event, ev.ConnectFailed):
            pull._refuse(f"connect refused: {event.code} {event.description}".strip(), 403)
        elif isinstance(event, ev.StreamCreated) and not self.stream_id:
            self.stream_id = event.stream_id
            t = pull.target
            self.conn.play(self.stream_id, f"{t.stream}?{t.query}" if t.query else t.stream)
        elif isinstance(event, ev.StatusReceived):
            code = event.code
            if code == "NetStream.Play.Start":
                pull._play_started()
            elif code == _NOT_FOUND:
                pull._refuse(f"{code} {event.description}".strip(), 404)
            elif code in _ENDED:
                pull._end(f"the upstream ended the stream ({code})")
            elif event.level == "error":
                pull._refuse(f"{code} {event.description}".strip())
        elif isinstance(event, ev.MediaReceived):
            if event.payload:
                pull._frame(Frame.from_tag(event.type_id, event.timestamp_ms, event.payload))
        elif isinstance(event, ev.DataReceived):
            if event.payload.startswith(_ON_METADATA):
                pull._frame(Frame.from_tag(FrameKind.SCRIPT, 0, event.payload))
        elif isinstance(event, ev.StreamEofReceived):
            pull._end("the upstream ended the stream (Stream EOF)")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.pull._lost(certificate_failure(reason)
                        or f"the upstream connection broke: {reason.getErrorMessage()}")
