"""RTMP on the ``--rtmp`` port: a thin adapter between the socket and the
pure :class:`rtmpd.codec.rtmp.connection.ServerConnection`."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from twisted.internet import protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd._twisted import socket_fd, write_now
from rtmpd.admission import (
    MAX_QUERY_CHARS,
    Action,
    Admission,
    AdmissionRefused,
    AdmissionRequest,
    Publisher,
    Refusal,
)
from rtmpd.codec import enhanced
from rtmpd.codec.errors import ProtocolError
from rtmpd.codec.rtmp import chunk, events
from rtmpd.codec.rtmp.chunk import NEED_DATA, encoded_messages
from rtmpd.codec.rtmp.connection import (
    AUDIO_CSID,
    DATA_CSID,
    VIDEO_CSID,
    ServerConnection,
)
from rtmpd.codec.rtmp.handshake import S1_RANDOM_SIZE
from rtmpd.errors import InvalidStreamName
from rtmpd.fanout import ViewerOutput, unread_output_excess
from rtmpd.interfaces import IPacedSource
from rtmpd.media import Frame, FrameKind
from rtmpd.protocols import host_and_port, say_what_is_left_out, set_no_delay
from rtmpd.protocols.readpacing import READ_BYTES, ReadPacer, paceable
from rtmpd.registry import Stream, validate_name
from rtmpd.shared import NO_ENTRIES, own

log = Logger()

#: The close reason of a connection the peer ended normally.
_PEER_CLOSED = "closed by the peer"

#: Seconds a publisher told to stop may take to close before it is cut.
STOP_LINGER_S = 2.0

#: Most reads of a paced publisher's socket taken at once when it is told
#: to stop (what it sent during the pause waits there): 2 MiB.
MAX_STOP_READS = 8

#: Output formats the factory keeps for reuse. One per message stream id
#: and kind of client (what its connect said it takes); a client picks its
#: own list of FourCCs, so this bounds what a stream of odd connects costs.
MAX_RTMP_FORMATS = 256

_CSID_BY_KIND = {
    FrameKind.AUDIO: AUDIO_CSID,
    FrameKind.VIDEO: VIDEO_CSID,
    FrameKind.SCRIPT: DATA_CSID,
}


class RtmpFormat:
    """RTMP media messages with full type-0 headers on fixed chunk streams:
    the same bytes suit every viewer with this chunk size and stream id,
    and what the viewer's connect said it takes of Enhanced RTMP.

    A viewer that takes everything (its connect announced the wildcard
    ``*`` and ``capsEx`` Multitrack, as rtmpd's own pulls do) gets each
    message as published. Any other is a format of its own, shared by every
    viewer that takes the same: each frame is cut down to what they take
    (:func:`rtmpd.codec.enhanced.adapt`) once for all of them, and a frame
    they take nothing of is encoded as ``b""``, which the fan-out skips.
    """

    __slots__ = ("acceptance", "chunk_size", "key", "stream_id")

    def __init__(
        self, chunk_size: int, stream_id: int,
        acceptance: enhanced.Acceptance = enhanced.ANYTHING,
    ) -> None:
        self.chunk_size = chunk_size
        self.stream_id = stream_id
        self.acceptance = acceptance
        self.key: Hashable = (
            ("rtmp", chunk_size, stream_id) if acceptance.everything
            else ("rtmp", chunk_size, stream_id, acceptance)
        )

    def encode(self, frame: Frame) -> bytes:
        payload = frame.payload
        if not self.acceptance.everything:
            adapted = enhanced.adapt(frame.kind, payload, self.acceptance)
            if adapted is None:
                return b""
            payload = adapted
        return chunk.encode_message(
            chunk_size=self.chunk_size,
            chunk_stream_id=_CSID_BY_KIND[frame.kind],
            type_id=frame.kind,
            stream_id=self.stream_id,
            timestamp_ms=frame.timestamp_ms,
            payload=payload,
        )

    def preamble(self, stream: Stream) -> list[bytes]:
        return []


class RtmpViewer(ViewerOutput):
    """The playing side of one RTMP message stream."""

    __slots__ = ("connection", "stream_id")

    def __init__(
        self, proto: RtmpServerProtocol, stream: Stream, stream_id: int, transport: ITransport
    ) -> None:
        output = proto.factory.format_for(stream_id, proto.conn.peer_capabilities.acceptance)
        super().__init__(
            transport, proto.peer, stream=stream, output=output,
            protocol="rtmp", client_id=proto.client_id,
        )
        self.connection = proto
        self.stream_id = stream_id

    def stream_ended(self, reason: str) -> None:
        self.finish(f"stream ended: {reason}")
        self.connection.viewer_stream_ended(self)

    def drop(self, reason: str) -> None:
        self.finish(f"dropped: {reason}", dropped=True)
        self.connection.close(f"dropped: {reason}", abort=True)


_AUDIO_VIDEO = frozenset({FrameKind.AUDIO, FrameKind.VIDEO})
_TS_MODULUS = 1 << 32
_TS_HALF = 1 << 31


class TimedRtmpViewer(RtmpViewer):
    """An RTMP viewer whose play asked for ``limit_ms`` of media (0: a
    single frame); only such a play gets this class, so a viewer without a
    duration pays nothing for it.

    The time is measured on the media it is sent: from the first audio or
    video timestamp it got (the burst's sequence headers carry the first
    cached frame's time), per 32-bit serial arithmetic; metadata and data
    messages do not count. Each send to it (a join's burst, then one pass's
    bytes per flush window) is read header by header
    (:func:`~rtmpd.codec.rtmp.chunk.encoded_messages`) and cut before the
    first audio or video message more than ``limit_ms`` after that first
    one: it never gets more than it asked for, and with a duration of 0 it
    gets the headers and the keyframe. The end is noticed at the send that
    carries that message, so up to one flush window after the limit in wall
    time (none for a small audience); it is then told the play is over on
    the next reactor turn (:meth:`RtmpServerProtocol.viewer_played_out`),
    not from inside the fan-out's pass, and gets nothing more meanwhile.

    Time spent paused does not count: after an unpause the count goes on
    from the media already played.
    """

    __slots__ = ("_chunk_size", "_first_ms", "_over", "last_ms", "limit_ms", "played_ms")

    def __init__(
        self, proto: RtmpServerProtocol, stream: Stream, stream_id: int, transport: ITransport,
        limit_ms: int,
    ) -> None:
        super().__init__(proto, stream, stream_id, transport)
        #: The media the play asked for, ms.
        self.limit_ms = limit_ms
        #: The media sent so far, ms (the last timestamp kept minus the first).
        self.played_ms = 0
        #: The timestamp of the last audio or video message sent, ms.
        self.last_ms = 0
        self._first_ms: int | None = None
        self._over = False
        self._chunk_size = proto.factory.chunk_size

    def send(self, chunks: Sequence[bytes], size: int) -> None:
        if self._over:
            return
        kept = self._within_limit(chunks)[0]
        if kept:
            super().send(kept, sum(map(len, kept)))

    def send_bytes(self, data: bytes, frames: int) -> None:
        if self._over:
            return
        kept, messages = self._within_limit((data,))
        if kept:
            super().send_bytes(kept[0], messages)

    def resume_output(self) -> bool:
        # The next media counts on from what was played, not from the
        # time that went by while paused.
        self._first_ms = None
        return super().resume_output()

    def _within_limit(self, chunks: Sequence[bytes]) -> tuple[list[bytes], int]:
        """What of ``chunks`` is within the limit, and how many messages
        that is; past the limit, the end is set off."""
        kept: list[bytes] = []
        messages = 0
        for data in chunks:
            start = 0
            for end, type_id, timestamp_ms in encoded_messages(data, self._chunk_size):
                if type_id in _AUDIO_VIDEO and not self._counts(timestamp_ms):
                    if start:
                        kept.append(data[:start])
                    self._end()
                    return kept, messages
                messages += 1
                start = end
            kept.append(data)
        return kept, messages

    def _counts(self, timestamp_ms: int) -> bool:
        """Whether a message at ``timestamp_ms`` is within the limit (and
        count it as played)."""
        first = self._first_ms
        if first is None:
            first = self._first_ms = (timestamp_ms - self.played_ms) % _TS_MODULUS
        elapsed = (timestamp_ms - first) % _TS_MODULUS
        if elapsed >= _TS_HALF:
            # Before the first one (audio a little behind the keyframe).
            return True
        if elapsed > self.limit_ms:
            return False
        self.played_ms = max(self.played_ms, elapsed)
        self.last_ms = timestamp_ms
        return True

    def _end(self) -> None:
        if not self._over:
            self._over = True
            self.connection.clock.callLater(0, self.connection.viewer_played_out, self)


#: How each refusal of a publish reaches an RTMP client: the onStatus code,
#: and whether the connection is closed after it. A busy name keeps the
#: classic BadName (encoders and rtmpd-push retry it); a refusal of
#: credentials or for a full server is final for this connection.
_PUBLISH_REFUSALS: dict[Refusal, tuple[str, bool]] = {
    Refusal.BAD_NAME: ("NetStream.Publish.BadName", False),
    Refusal.BUSY: ("NetStream.Publish.BadName", False),
    Refusal.UNAUTHORIZED: ("NetStream.Publish.Unauthorized", True),
    Refusal.FORBIDDEN: ("NetStream.Publish.Rejected", True),
    Refusal.LIMIT: ("NetStream.Publish.Rejected", True),
}
_PLAY_REFUSALS: dict[Refusal, tuple[str, bool]] = {
    Refusal.BAD_NAME: ("NetStream.Play.StreamNotFound", False),
    Refusal.NOT_FOUND: ("NetStream.Play.StreamNotFound", False),
    Refusal.UNAUTHORIZED: ("NetStream.Play.Unauthorized", True),
    Refusal.FORBIDDEN: ("NetStream.Play.Failed", True),
    Refusal.LIMIT: ("NetStream.Play.Failed", True),
    Refusal.UNAVAILABLE: ("NetStream.Play.Failed", False),
}


@implementer(IPacedSource)
class RtmpServerProtocol(protocol.Protocol):
    """One RTMP connection: a publisher, a viewer, or (rarely) several of each
    on separate message streams."""

    def __init__(self, factory: RtmpServerFactory) -> None:
        self.factory = factory
        self.admission = factory.admission
        self.clock = factory.clock
        self.conn = ServerConnection(
            out_chunk_size=factory.chunk_size, s1_random=factory.s1_random
        )
        self.peer = "rtmp ?"
        self.peer_host = "?"
        self.peer_port = 0
        self.client_id = 0
        self.app: str | None = None
        #: The connect's query (``rtmp://host/app?key=…`` or its tcUrl).
        self.connect_query = ""
        # Shared empties until used (a player publishes nothing, pauses rarely).
        self.publishing: dict[int, Publisher] = NO_ENTRIES
        self.viewers: dict[int, RtmpViewer] = NO_ENTRIES
        self.paused: dict[int, RtmpViewer] = NO_ENTRIES
        self.close_reason: str | None = None
        self._timer: IDelayedCall | None = None
        #: Cuts a connection that does not finish closing (see stop_publishing).
        self._linger: IDelayedCall | None = None
        self._started = False
        #: The socket, for direct writes (-1: let the transport write).
        self._fd = -1
        #: The last stream played, and whether anything was published: a
        #: connection that only played logs its close as a viewer line.
        self._played: str | None = None
        self._published = False
        #: connectionLost has run: nothing may start on this connection.
        self._lost = False
        #: A connection refused by the limits: its close is not logged again.
        self._quiet_close = False
        #: Inside _drain: a decision made synchronously must not drain again.
        self._draining = False
        #: Batches a publisher's reads while nobody watches (--publish-read-ms).
        self._pacer: ReadPacer | None = None

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
        self.peer_host, self.peer_port = host_and_port(peer)
        self.peer = f"rtmp {self.peer_host}:{self.peer_port}"
        try:
            self.client_id = self.admission.open_connection(
                self.peer_host, self.peer_port, "rtmp", self._kick
            )
        except AdmissionRefused as e:
            # Nothing can be said before the handshake: close at once. The
            # refusal was logged (bounded); the close line is not repeated.
            self.client_id = 0
            self.close(f"refused: {e.message}", abort=False)
            self._quiet_close = True
            return
        set_no_delay(self.transport)
        self._fd = socket_fd(self.transport)
        self._timer = self.clock.callLater(self.factory.handshake_timeout, self._check_timeout)

    def _kick(self, reason: str) -> None:
        self.close(reason, abort=True)

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._started:
            self.close(
                f"timed out: no publish or play within {self.factory.handshake_timeout:g} s",
                abort=True,
            )

    def dataReceived(self, data: bytes) -> None:
        if self.close_reason is not None:
            return
        try:
            self.conn.receive_data(data)
        except ProtocolError as e:
            self._flush()
            self.close(f"protocol error: {e}", abort=False)
            return
        self._drain()
        if self._pacer is not None and self.publishing and not self._watched_live():
            self._pacer.after_read(len(data))

    def wake_reading(self) -> bool:
        """See :class:`IPacedSource`: a publish of a name this connection
        holds asks whether it is still there."""
        return self._pacer is not None and self._pacer.wake()

    def _watched_live(self) -> bool:
        """Whether a stream this connection publishes has viewers (forwards and
        gateway pulls included): then every read is at once, since they would
        see the pause. Recorders do not mind it."""
        return any(publisher.stream.viewers for publisher in self.publishing.values())

    def _drain(self) -> None:
        """Handle the events the codec has, until it needs more data (or
        waits for a decision). A decision made while draining (no authorizer
        answers later) just lets the loop go on; one made later drains again."""
        if self._draining:
            return
        self._draining = True
        conn = self.conn
        try:
            while not self.closing:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                self._handle(event)
        except ProtocolError as e:
            self._flush()
            self.close(f"protocol error: {e}", abort=False)
            return
        finally:
            self._draining = False
        self._flush()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            # At once, not on the next reactor turn: a handshake or a play
            # takes four round trips, and each would wait for one.
            write_now(self.transport, self._fd, (out,), len(out))
            self._check_output_bound()

    def _check_output_bound(self) -> None:
        """A peer that never reads (flooding Ping Requests, say) must not
        grow our replies without bound: past the limit it is dropped."""
        excess = unread_output_excess(self.transport, self.factory.viewer_queue_bytes)
        if excess is not None:
            log.warn("{peer} reads nothing: {excess}; dropped", peer=self.peer, excess=excess)
            self.close(f"dropped: {excess}", abort=True)

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
        self._lost = True
        if self._pacer is not None:
            self._pacer.stop()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        why = self.close_reason or (
            _PEER_CLOSED if reason.check(ConnectionDone) else reason.getErrorMessage()
        )
        for publisher in list(self.publishing.values()):
            publisher.end(f"disconnected ({why})")
        self.publishing.clear()
        playing = [*self.viewers.values(), *self.paused.values()]
        for viewer in playing:
            viewer.finish(why)
        self.viewers.clear()
        self.paused.clear()
        if self.client_id:
            self.admission.close_connection(self.client_id)
        if self._quiet_close:
            return
        if playing and not self._published:
            # Each play's stop line has just said why (a reset viewer was
            # logged twice, once as the play and once as the connection).
            return
        if self._played is not None and not self._published and why == _PEER_CLOSED:
            # A viewer hanging up: bounded with the other viewer lines.
            # Errors, timeouts and drops are always logged.
            self.admission.registry.viewer_log.line(
                log, "close", self._played, "close {peer}: {why}", peer=self.peer, why=why
            )
        else:
            log.info("close {peer}: {why}", peer=self.peer, why=why)

    # -- IMediaSource --------------------------------------------------------------

    def stop_publishing(self, reason: str) -> None:
        """Told to stop (takeover, timeout, kick, shutdown): say so on each
        published stream, then close; a peer that does not take the close
        (it stopped reading) is cut after :data:`STOP_LINGER_S`."""
        if self.closing or self._lost:
            return
        for stream_id, publisher in list(self.publishing.items()):
            self.conn.unpublish_success(stream_id, publisher.stream.name)
        self._flush()
        self.close(reason, abort=False)
        if self.transport is not None:
            self._linger = self.clock.callLater(STOP_LINGER_S, self._cut)

    def read_waiting(self) -> None:
        """See :class:`IPacedSource`: read what this publisher sent during
        the current pause (it waits in the socket), before admission ends
        its publish, so that the recordings end where it was stopped, not up
        to a pause earlier. No more pauses after it."""
        pacer, self._pacer = self._pacer, None
        if pacer is None or not pacer.paused:
            return
        pacer.stop()
        read = getattr(self.transport, "doRead", None)
        if read is None:
            return
        for _ in range(MAX_STOP_READS):
            before = self.conn.bytes_received
            if read() is not None or self.close_reason is not None:
                break  # the peer is gone (the reactor will see it), or it broke the protocol
            if self.conn.bytes_received - before < READ_BYTES:
                break  # a short read: the socket is empty

    def _cut(self) -> None:
        self._linger = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- events --------------------------------------------------------------------

    def _handle(self, event: object) -> None:
        if isinstance(event, events.MediaReceived):
            publisher = self.publishing.get(event.stream_id)
            # Some encoders send empty audio/video messages at start: skip them.
            if publisher is not None and event.payload:
                publisher.push(Frame.from_tag(event.type_id, event.timestamp_ms, event.payload))
        elif isinstance(event, events.DataReceived):
            publisher = self.publishing.get(event.stream_id)
            if publisher is not None and event.payload:
                publisher.push(Frame.from_tag(FrameKind.SCRIPT, event.timestamp_ms, event.payload))
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
        self.connect_query = event.query[:MAX_QUERY_CHARS]
        # No line for a connect: viewers connect by the thousand, and the
        # play or publish line that follows names the app and stream.
        self.conn.accept_connect(event.transaction_id)

    def _request(self, action: Action, name: str, query: str) -> AdmissionRequest:
        # The stream name's query first: its parameters win over the connect's.
        both = "&".join(q for q in (query[:MAX_QUERY_CHARS], self.connect_query) if q)
        return AdmissionRequest(
            action=action, app=self.app or "", stream=name, query=both,
            peer_host=self.peer_host, peer_port=self.peer_port, protocol="rtmp",
            client_id=self.client_id,
        )

    def _alive(self) -> bool:
        return not self.closing and not self._lost

    def _publish(self, event: events.PublishRequested) -> None:
        stream_id = event.stream_id
        name = event.name
        if self.app is None:
            self.conn.publish_bad_name(stream_id, name[:128], "connect first")
            return
        request = self._request(Action.PUBLISH, name, event.query)

        def started(publisher: Publisher) -> None:
            self._end_stream(stream_id, "published again on its message stream")
            self.publishing = own(self.publishing)
            self.publishing[stream_id] = publisher
            self._published = True
            read_ms = self.factory.publish_read_ms
            # Plain TCP only: through TLS (RTMPS) or another wrapper a read
            # of the socket reaches the protocol in pieces, and neither the
            # read size nor the receive buffer is the wrapper's to set or
            # ask, so a pause could gather less than the publisher sends.
            if read_ms and self._pacer is None and paceable(self.transport):
                self._pacer = ReadPacer(self.transport, self.clock, read_ms)  # type: ignore[arg-type]
            self._mark_started()
            self.conn.publish_start(stream_id, name)
            self._drain()

        def answer(code: str, message: str) -> None:
            self.conn.publish_rejected(stream_id, name[:128], message, code=code)

        self.admission.publish(request, self, alive=self._alive).addCallbacks(
            started, self._refused, errbackArgs=(_PUBLISH_REFUSALS, answer, "publish")
        )

    def _play(self, event: events.PlayRequested) -> None:
        stream_id = event.stream_id
        name = event.name
        if self.app is None:
            self.conn.play_not_found(stream_id, name[:128])
            return
        request = self._request(Action.PLAY, name, event.query)
        limit_ms = event.duration_ms

        def start(stream: Stream) -> RtmpViewer | None:
            if not self._alive():
                return None
            self._end_stream(stream_id, "played again on its message stream")
            self._mark_started()
            self.conn.play_start(stream_id, name)
            # Status messages must reach the socket before any shared media.
            self._flush()
            transport: Any = self.transport
            viewer = (
                RtmpViewer(self, stream, stream_id, transport) if limit_ms is None
                else TimedRtmpViewer(self, stream, stream_id, transport, limit_ms)
            )
            self._register(viewer)
            self._played = stream.path
            if self.app == stream.app:
                self.app = stream.app  # the stream's string, not one per player
            self._say_what_is_left_out(stream)
            return viewer

        def started(viewer: ViewerOutput) -> None:
            self._drain()

        def answer(code: str, message: str) -> None:
            if code == "NetStream.Play.StreamNotFound":
                self.conn.play_not_found(stream_id, name[:128])
            else:
                self.conn.play_rejected(stream_id, name[:128], message, code=code)

        self.admission.play(request, start).addCallbacks(
            started, self._refused, errbackArgs=(_PLAY_REFUSALS, answer, "play")
        )

    def _say_what_is_left_out(self, stream: Stream) -> None:
        """One line for a viewer that will not get some of the stream's
        codecs (a legacy client and an HEVC stream, say), so an operator
        asked about a black picture finds why."""
        caps = self.conn.peer_capabilities
        if not caps.announced:
            why = "its connect announced no Enhanced RTMP codecs (no fourCcList: a legacy client)"
        else:
            taken = sorted(caps.video | caps.audio)
            why = f"its connect announced only {','.join(taken) or 'no codecs'}"
        say_what_is_left_out(stream, caps.acceptance, self.peer, why)

    def request_reconnect(self, description: str, tc_url: str | None = None) -> bool:
        """Ask this client to reconnect elsewhere (or to the same URL, to a
        server that will be there), if its connect said it can (``capsEx``
        Reconnect). It goes on publishing here until it moves; True if asked."""
        if self.closing or self._lost or not self.conn.peer_capabilities.reconnect:
            return False
        try:
            self.conn.request_reconnect(description, tc_url)
        except ProtocolError:
            return False
        self._flush()
        return True

    def _refused(
        self, failure: Failure, table: dict[Refusal, tuple[str, bool]],
        answer: Callable[[str, str], None], what: str,
    ) -> None:
        """Answer a refused publish or play with its onStatus (``table``:
        the code, and whether the connection closes after it)."""
        failure.trap(AdmissionRefused)
        error: AdmissionRefused = failure.value  # type: ignore[assignment]
        if error.refusal is Refusal.GONE or not self._alive():
            return
        code, final = table.get(error.refusal, table[Refusal.LIMIT])
        answer(code, error.message)
        if final:
            self._flush()
            self.close(f"{what} refused: {error.message}", abort=False)
        else:
            self._drain()

    def _register(self, viewer: RtmpViewer) -> None:
        """Make the viewer one of the connection's; the first one is the
        socket's producer (a play after a stop or an unpause replaces it)."""
        self.viewers = own(self.viewers)
        self.viewers[viewer.stream_id] = viewer
        transport: Any = self.transport
        if len(self.viewers) == 1:
            if getattr(transport, "producer", None) is not None:
                transport.unregisterProducer()
            transport.registerProducer(viewer, True)

    def _mark_started(self) -> None:
        if not self._started:
            self._started = True
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _end_stream(self, stream_id: int, why: str | None = None) -> None:
        """End what a message stream publishes or plays: the client stopped
        it (``why`` None), or starts something new on it."""
        publisher = self.publishing.pop(stream_id, None)
        if publisher is not None:
            if why is None:
                self.conn.unpublish_success(stream_id, publisher.stream.name)
            publisher.end(why or "stopped")
        viewer = self.viewers.pop(stream_id, None) or self.paused.pop(stream_id, None)
        if viewer is not None:
            viewer.finish(why or "stopped by the player")

    def _pause(self, event: events.PauseRequested) -> None:
        stream_id = event.stream_id
        if event.paused:
            viewer = self.viewers.pop(stream_id, None)
            if viewer is not None:
                # Out of the fan-out, still this connection's (admitted) viewer.
                viewer.pause_output()
                self.paused = own(self.paused)
                self.paused[stream_id] = viewer
            return
        viewer = self.paused.pop(stream_id, None)
        if viewer is None:
            return
        self._register(viewer)
        if not viewer.resume_output():
            del self.viewers[stream_id]
            viewer.finish("stream ended while paused")
            if viewer.stream is not None:
                self.conn.play_unpublish_notify(stream_id, viewer.stream.name)

    def viewer_played_out(self, viewer: TimedRtmpViewer) -> None:
        """A viewer got the media its play asked for: it is finished, and
        the player told so (Play.Stop, Play.Complete, Stream EOF). The
        connection stays, for another play, as after UnpublishNotify:
        rtmpdump and ffmpeg close it themselves."""
        if viewer.finished:
            return  # stopped, ended or gone before this turn came
        stream_id = viewer.stream_id
        if self.viewers.get(stream_id) is viewer:
            del self.viewers[stream_id]
        if self.paused.get(stream_id) is viewer:
            del self.paused[stream_id]
        viewer.finish(f"played the {viewer.limit_ms} ms asked for")
        if self.transport is not None and self._alive() and viewer.stream is not None:
            self.conn.play_complete(stream_id, viewer.stream.name, viewer.last_ms)
            self._flush()

    def viewer_stream_ended(self, viewer: RtmpViewer) -> None:
        """The publisher went away: tell the player (paused or not), keep
        the connection."""
        if self.viewers.get(viewer.stream_id) is viewer:
            del self.viewers[viewer.stream_id]
        if self.paused.get(viewer.stream_id) is viewer:
            del self.paused[viewer.stream_id]
        if self.transport is not None and self.close_reason is None:
            self.conn.play_unpublish_notify(viewer.stream_id, viewer.stream.name)  # type: ignore[union-attr]
            self._flush()


class RtmpServerFactory(protocol.Factory):
    """Creates one :class:`RtmpServerProtocol` per connection."""

    def __init__(
        self,
        admission: Admission,
        *,
        clock: IReactorTime,
        chunk_size: int = 4096,
        handshake_timeout: float = 15.0,
    ) -> None:
        self.admission = admission
        self.clock = clock
        self.chunk_size = chunk_size
        self.handshake_timeout = handshake_timeout
        self.viewer_queue_bytes = admission.registry.config.viewer_queue_bytes
        #: A publisher's socket is read at most once per this many ms (0: at once).
        self.publish_read_ms = admission.registry.config.publish_read_ms
        self._formats: dict[tuple[int, enhanced.Acceptance], RtmpFormat] = {}
        #: What every connection's S1 carries after its header: drawn once,
        #: so a join does not read the system's randomness (a syscall)
        #: (:class:`~rtmpd.codec.rtmp.handshake.ServerHandshake`).
        self.s1_random = secrets.token_bytes(S1_RANDOM_SIZE)

    def format_for(
        self, stream_id: int, acceptance: enhanced.Acceptance = enhanced.ANYTHING
    ) -> RtmpFormat:
        """The shared output format for viewers playing on ``stream_id``
        that take ``acceptance`` of Enhanced RTMP."""
        key = (stream_id, acceptance)
        fmt = self._formats.get(key)
        if fmt is None:
            if len(self._formats) >= MAX_RTMP_FORMATS:
                # Clients choose their acceptance: keep the cache bounded.
                self._formats.clear()
            fmt = self._formats[key] = RtmpFormat(self.chunk_size, stream_id, acceptance)
        return fmt

    def buildProtocol(self, addr: object) -> RtmpServerProtocol:
        return RtmpServerProtocol(self)
