"""Sans-IO RTMP connections: :class:`ServerConnection` and :class:`ClientConnection`.

Shaped like h11's ``Connection``::

    conn.receive_data(data)          # b"" means the peer closed
    while (event := conn.next_event()) is not NEED_DATA:
        handle(event)                # events from rtmpd.codec.rtmp.events
    transport.write(conn.data_to_send())

Each connection runs the handshake, then the chunk stream, and answers the
protocol chatter by itself: Acknowledgements once the peer's window is
crossed, Ping Responses, the peer's Set Chunk Size, and the housekeeping
commands encoders send (releaseStream, FCPublish, FCUnpublish, getStreamLength,
createStream, checkBandwidth, play2). Application decisions come out as events
and go back in through the response methods (``accept_connect`` …).

**Pending decisions pause input.** After ``ConnectRequested``,
``PublishRequested`` or ``PlayRequested`` the server connection parses no
further messages (``next_event`` returns ``NEED_DATA``; bytes keep being
buffered and acknowledged) until the application answers with the matching
response method, so it may decide asynchronously and nothing the client
pipelined behind the request (metadata, media) is seen before the answer.
After answering, call ``next_event()`` again to drain what was buffered.

**Commands in the wrong state.** Any command other than ``connect`` before the
connection is accepted, a second ``connect``, and stream commands on a message
stream that was not created raise :class:`RemoteProtocolError` (hint
``"_error"``): the adapter closes the connection. Unknown commands that carry
a transaction id are answered with ``_error`` and the connection goes on.

**AMF3.** A client whose ``connect`` asks for ``objectEncoding`` 3 is
answered 3 (any other value is answered 0), in the message type its connect
came in (20, or 17); from then on every command the server sends is an AMF3
command (type 17: the format byte, name and transaction id in AMF0, the rest
behind the AVM+ switch). AMF3 data messages (type 15, ``@setDataFrame`` /
``onMetaData`` from an AMF3 publisher) come out as the AMF0 script-tag body
FLV, players and recorders read. Media and data sent to viewers stay the
shared AMF0 bytes, which every client reads whatever it negotiated.

**Media chunk streams.** The server sends audio, video and data messages with
full type-0 headers on the fixed chunk streams :data:`AUDIO_CSID`,
:data:`VIDEO_CSID` and :data:`DATA_CSID` at :attr:`ServerConnection.out_chunk_size`
(``chunk.encode_message``). The connection's own :class:`ChunkWriter` never
uses those chunk stream ids, so an adapter may write shared, pre-encoded media
bytes straight to the socket between ``data_to_send()`` results, once
:attr:`ServerConnection.chunk_size_sent` is true and that output was written.
"""

from __future__ import annotations

import enum
import functools
import secrets
from collections.abc import Callable, Hashable
from typing import Final

from rtmpd.codec import amf0, enhanced
from rtmpd.codec.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from rtmpd.codec.rtmp import messages as msg
from rtmpd.codec.rtmp.chunk import (
    MAX_MESSAGE_SIZE,
    NEED_DATA,
    ChunkReader,
    ChunkWriter,
    HeaderStates,
    Message,
    NeedData,
    encode_message,
)
from rtmpd.codec.rtmp.events import (
    Connected,
    ConnectFailed,
    ConnectionClosed,
    ConnectRequested,
    DataReceived,
    Event,
    HandshakeCompleted,
    MediaReceived,
    PauseRequested,
    PingResponseReceived,
    PlayRequested,
    PublishRequested,
    ReceiveMediaChanged,
    StatusReceived,
    StreamCreated,
    StreamDeleted,
    StreamEofReceived,
    UnpublishRequested,
)
from rtmpd.codec.rtmp.handshake import ClientHandshake, ServerHandshake
from rtmpd.shared import NO_ENTRIES, own, shared

__all__ = [
    "AMF0_ENCODING",
    "AMF3_ENCODING",
    "AUDIO_CSID",
    "COMMAND_CSID",
    "CONTROL_CSID",
    "DATA_CSID",
    "MAX_BUFFERED_WHILE_PAUSED",
    "MAX_MESSAGE_SIZE",
    "MAX_STREAMS_PER_CONNECTION",
    "MEDIA_CHUNK_STREAM_IDS",
    "MIN_ACK_WINDOW",
    "VIDEO_CSID",
    "ClientConnection",
    "ClientState",
    "ConnectionState",
    "ServerConnection",
]

# --- chunk stream ids we send on -------------------------------------------------
CONTROL_CSID: Final = 2  # protocol control and user control (required by the spec)
COMMAND_CSID: Final = 3  # commands and onStatus
AUDIO_CSID: Final = 4  # audio, full headers (shared bytes)
DATA_CSID: Final = 5  # data messages, full headers (shared bytes)
VIDEO_CSID: Final = 6  # video, full headers (shared bytes)
MEDIA_CHUNK_STREAM_IDS: Final = frozenset({AUDIO_CSID, DATA_CSID, VIDEO_CSID})
"""Chunk stream ids reserved for full-header media; the connection's ChunkWriter never uses them."""

# --- limits ----------------------------------------------------------------------
# Message streams one connection may hold at once. A publisher or player needs
# one; OBS/FFmpeg create exactly one. 16 leaves room for multi-stream tools
# while bounding per-connection state.
MAX_STREAMS_PER_CONNECTION: Final = 16
# Bytes a paused connection (waiting for the application to answer connect /
# publish / play) buffers before giving up. A well-behaved client sends a few
# small messages in that time; a publisher pipelining media before its
# publish is accepted is cut off rather than buffered without bound.
MAX_BUFFERED_WHILE_PAUSED: Final = 4 * 1024 * 1024
# Smallest acknowledgement window honoured. A peer announcing a tiny window
# would make us send an Acknowledgement for every few bytes it sends.
MIN_ACK_WINDOW: Final = 4096

_FMS_VERSION: Final = "FMS/3,5,7,7009"
_CAPABILITIES: Final = 31.0
_ACK_MODULUS: Final = 1 << 32


#: Encoded responses are cached: a storm of viewers of one stream gets the
#: same few status messages thousands of times a second, and AMF encoding
#: them was a fifth of what a join cost. Keyed on every varying field;
#: bounded, since names come from clients.
_ENCODED_CACHE_SIZE: Final = 1024

_SAMPLE_ACCESS: Final = amf0.encode_all("|RtmpSampleAccess", True, True)


@functools.lru_cache(maxsize=_ENCODED_CACHE_SIZE)
def _play_complete_payload(name: str) -> bytes:
    return amf0.encode_all(
        "onPlayStatus",
        {"level": "status", "code": "NetStream.Play.Complete", "description": f"{name} played."},
    )


#: ``objectEncoding`` values of ``connect``: AMF0, and AMF3, which a client
#: asks for with 3 and gets only if the answer says 3 too (any other value
#: is answered 0).
AMF0_ENCODING: Final = 0.0
AMF3_ENCODING: Final = 3.0


@functools.lru_cache(maxsize=_ENCODED_CACHE_SIZE)
def _status_payload(
    level: str, code: str, description: str, extra: tuple[tuple[str, str], ...],
    amf3: bool = False,
) -> bytes:
    info: dict[str, object] = {"level": level, "code": code, "description": description}
    info.update(extra)
    encode = msg.encode_command_amf3 if amf3 else msg.encode_command
    return encode("onStatus", 0.0, None, info)


@functools.lru_cache(maxsize=_ENCODED_CACHE_SIZE)
def _connect_result_payload(
    transaction_id: float, object_encoding: float, amf3: bool = False,
    ertmp: bool = False,
) -> bytes:
    encode = msg.encode_command_amf3 if amf3 else msg.encode_command
    properties: dict[str, object] = {
        "fmsVer": _FMS_VERSION, "capabilities": _CAPABILITIES, "mode": 1.0,
    }
    if ertmp:
        # Enhanced RTMP: what we forward, stated to clients that asked.
        properties.update(enhanced.server_capabilities())
    return encode(
        "_result",
        transaction_id,
        properties,
        {
            "level": "status",
            "code": "NetConnection.Connect.Success",
            "description": "Connection succeeded.",
            "objectEncoding": object_encoding,
        },
    )


def _connect_reply(
    writer: ChunkWriter, window_ack_size: int, peer_bandwidth: int, out_chunk_size: int,
    connect_type: int, transaction_id: float, object_encoding: float, ertmp: bool,
) -> bytes:
    """What accepts a connect, written with ``writer``: Window Ack Size, Set
    Peer Bandwidth, Set Chunk Size (``writer`` takes the new size), then the
    ``_result`` in the message type the connect came in."""
    out = [
        writer.write(CONTROL_CSID, msg.WINDOW_ACK_SIZE, 0, 0,
                     msg.encode_window_ack_size(window_ack_size)),
        writer.write(CONTROL_CSID, msg.SET_PEER_BANDWIDTH, 0, 0,
                     msg.encode_set_peer_bandwidth(peer_bandwidth, msg.LIMIT_DYNAMIC)),
        writer.write(CONTROL_CSID, msg.SET_CHUNK_SIZE, 0, 0,
                     msg.encode_set_chunk_size(out_chunk_size)),
    ]
    writer.set_chunk_size(out_chunk_size)
    # After the _result every command we send is AMF3 (type 17) if
    # objectEncoding 3 was agreed.
    amf3 = connect_type == msg.COMMAND_AMF3
    payload = _connect_result_payload(transaction_id, object_encoding, amf3, ertmp)
    out.append(writer.write(COMMAND_CSID, connect_type, 0, 0, payload))
    return b"".join(out)


#: Connect replies by every field they depend on, each with the writer as a
#: new connection's is left after it (see accept_connect). Bounded: the
#: transaction id comes from the client.
_CONNECT_REPLIES: dict[
    tuple[int, int, int, int, float, float, bool], tuple[bytes, ChunkWriter]
] = {}


#: Command bodies up to this size are decoded once per distinct body and
#: the decoded command shared (:func:`_decode_shared_command`). In a join
#: storm every player of one kind sends the same connect, createStream and
#: play; a connect with Enhanced RTMP's lists is ~300 bytes, and the bound
#: keeps what the cache holds small (256 x 1 KiB).
MAX_SHARED_COMMAND_BYTES: Final = 1024


@functools.lru_cache(maxsize=256)
def _decode_shared_command(payload: bytes, amf3: bool) -> msg.Command:
    """``decode_command`` once per distinct body (about 12 us for a plain
    connect, 5 for a play). The result is shared by every connection that
    sent these bytes, so nothing may change it: the handlers read it, and
    ConnectRequested gets a copy of the connect object. A body that does not
    decode raises each time (errors are not cached)."""
    return msg.decode_command(payload, amf3=amf3)


#: The chunk streams play_start writes on with compressed headers (its
#: data message has a full header on DATA_CSID).
_PLAY_START_CSIDS: Final = (CONTROL_CSID, COMMAND_CSID)

#: play_start's bytes by what they depend on (see ServerConnection.play_start),
#: with the header state they leave on _PLAY_START_CSIDS.
_PLAY_STARTS: dict[Hashable, tuple[bytes, HeaderStates]] = {}


def _split_query(text: str) -> tuple[str, str]:
    base, _sep, query = text.partition("?")
    return base, query


def _info_field(info: object, key: str) -> str:
    if isinstance(info, dict):
        value = info.get(key)
        if isinstance(value, str):
            return value
    return ""


def _dict_get(value: object, key: str) -> object:
    return value.get(key) if isinstance(value, dict) else None


def _number(value: object, default: float) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return default


class _Connection:
    """What both sides share: handshake, chunk stream, acks, pings, output."""

    # Slotted, as are the reader and writer: a server connection lives as
    # long as its viewer plays, and an attribute dict was ~300 bytes of it.
    __slots__ = (
        "_amf3_commands", "_bytes_received", "_closed_reported", "_eof", "_events", "_failed",
        "_handshake_done", "_last_ack", "_max_message_size", "_out", "_peer_window", "_reader",
        "_writer",
    )

    def __init__(self, *, max_message_size: int) -> None:
        self._reader = ChunkReader(max_message_size=max_message_size)
        self._max_message_size = max_message_size
        # Commands go out as AMF3 (type 17) once connect settled objectEncoding 3.
        self._amf3_commands = False
        self._writer = ChunkWriter()
        self._out = bytearray()
        # A list, not a deque: it holds a few events at a time, and an empty
        # deque takes 760 bytes for each of thousands of idle viewers.
        self._events: list[Event] = []
        self._bytes_received = 0
        self._peer_window: int | None = None
        self._last_ack = 0
        self._eof = False
        self._closed_reported = False
        self._failed = False
        self._handshake_done = False

    # -- public plumbing ------------------------------------------------------------

    @property
    def bytes_received(self) -> int:
        """All bytes received from the peer, handshake included."""
        return self._bytes_received

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA``. Raises ``RemoteProtocolError`` on
        bad input; after that the connection is failed for good."""
        if self._failed:
            raise LocalProtocolError("next_event() after the connection failed")
        try:
            return self._next_event()
        except ProtocolError:
            self._failed = True
            raise

    def _next_event(self) -> Event | NeedData:
        raise NotImplementedError

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer; clears them."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def send_ping(self, timestamp_ms: int) -> None:
        """Queue a Ping Request; the answer arrives as ``PingResponseReceived``."""
        self._send_control(
            msg.USER_CONTROL, msg.encode_user_control(msg.PING_REQUEST, timestamp_ms)
        )

    # -- plumbing for the subclasses -------------------------------------------------

    def _feed_handshake(self, data: bytes) -> None:
        raise NotImplementedError

    def _receive(self, data: bytes) -> None:
        if self._failed:
            raise LocalProtocolError("receive_data() after the connection failed")
        if not data:
            self._eof = True
            return
        self._bytes_received += len(data)
        if not self._handshake_done:
            try:
                self._feed_handshake(data)
            except RemoteProtocolError:
                self._failed = True
                raise
        else:
            self._reader.receive_data(data)
            self._maybe_ack()

    def _maybe_ack(self) -> None:
        window = self._peer_window
        if window is not None and self._bytes_received - self._last_ack >= window:
            self._last_ack = self._bytes_received
            self._send_control(msg.ACK, msg.encode_ack(self._bytes_received % _ACK_MODULUS))

    def _send_control(self, type_id: int, payload: bytes) -> None:
        self._out += self._writer.write(CONTROL_CSID, type_id, 0, 0, payload)

    def _command_type(self) -> int:
        return msg.COMMAND_AMF3 if self._amf3_commands else msg.COMMAND_AMF0

    def _encode_command(
        self, name: str, transaction_id: float, obj: object, *args: object
    ) -> bytes:
        if self._amf3_commands:
            return msg.encode_command_amf3(name, transaction_id, obj, *args)
        return msg.encode_command(name, transaction_id, obj, *args)

    def _send_command(
        self, stream_id: int, name: str, transaction_id: float, obj: object, *args: object
    ) -> None:
        payload = self._encode_command(name, transaction_id, obj, *args)
        self._out += self._writer.write(COMMAND_CSID, self._command_type(), stream_id, 0, payload)

    def _send_status(
        self, stream_id: int, level: str, code: str, description: str, **extra: str
    ) -> None:
        payload = _status_payload(
            level, code, description, tuple(extra.items()), self._amf3_commands
        )
        self._out += self._writer.write(COMMAND_CSID, self._command_type(), stream_id, 0, payload)

    def _next_message(self) -> Message | NeedData:
        try:
            return self._reader.next_event()
        except RemoteProtocolError:
            self._failed = True
            raise

    def _closed_event(self) -> Event | NeedData:
        if self._eof and not self._closed_reported:
            self._closed_reported = True
            return ConnectionClosed()
        return NEED_DATA

    def _handle_common(self, message: Message) -> bool:
        """Protocol chatter both sides answer the same way; True if handled."""
        type_id = message.type_id
        if type_id in (msg.SET_CHUNK_SIZE, msg.ABORT, msg.ACK):
            return True  # the reader applied Set Chunk Size / Abort already
        if type_id == msg.WINDOW_ACK_SIZE:
            size = msg.decode_u32(message.payload, "Window Acknowledgement Size")
            self._peer_window = max(size, MIN_ACK_WINDOW)
            self._maybe_ack()
            return True
        if type_id == msg.USER_CONTROL:
            control = msg.decode_user_control(message.payload)
            if control.event_type == msg.PING_REQUEST:
                self._send_control(
                    msg.USER_CONTROL, msg.encode_user_control(msg.PING_RESPONSE, control.value)
                )
            elif control.event_type == msg.PING_RESPONSE:
                self._events.append(PingResponseReceived(timestamp_ms=control.value))
            return True
        return False

    def _data_event(
        self, stream_id: int, timestamp_ms: int, payload: bytes, *, amf3: bool = False
    ) -> None:
        """Queue a DataReceived with an FLV script-tag body (AMF0: an AMF3
        body, type 15, is converted)."""
        if amf3:
            payload = msg.normalize_data_amf3(payload, max_size=self._max_message_size)
        decoder = amf0.Decoder(payload)
        name = decoder.decode()
        if name == "@setDataFrame":
            payload = payload[decoder.offset :]
            if not payload:
                return
        elif name == "@clearDataFrame":
            return
        self._events.append(
            DataReceived(stream_id=stream_id, timestamp_ms=timestamp_ms, payload=payload)
        )

    def _media_events(self, message: Message) -> None:
        """Queue MediaReceived/DataReceived for audio, video, data and aggregate messages."""
        sid = message.stream_id
        type_id = message.type_id
        if type_id in (msg.AUDIO, msg.VIDEO):
            self._events.append(
                MediaReceived(
                    stream_id=sid,
                    type_id=type_id,
                    timestamp_ms=message.timestamp_ms,
                    payload=message.payload,
                )
            )
        elif type_id == msg.DATA_AMF0:
            self._data_event(sid, message.timestamp_ms, message.payload)
        elif type_id == msg.DATA_AMF3:
            self._data_event(sid, message.timestamp_ms, message.payload, amf3=True)
        elif type_id == msg.AGGREGATE:
            for sub_type, ts, body in msg.split_aggregate(message.payload, message.timestamp_ms):
                if sub_type in (msg.AUDIO, msg.VIDEO):
                    self._events.append(
                        MediaReceived(
                            stream_id=sid, type_id=sub_type, timestamp_ms=ts, payload=body
                        )
                    )
                elif sub_type in (msg.DATA_AMF0, msg.DATA_AMF3):
                    self._data_event(sid, ts, body, amf3=sub_type == msg.DATA_AMF3)


# =============================================================================
# Server
# =============================================================================


class ConnectionState(enum.Enum):
    """Where a :class:`ServerConnection` is in its life."""

    HANDSHAKE = "handshake"
    AWAIT_CONNECT = "await connect"  # handshake done, no connect yet
    CONNECT_PENDING = "connect pending"  # ConnectRequested emitted, app deciding
    CONNECTED = "connected"
    REJECTED = "rejected"  # reject_connect sent; input is ignored
    CLOSED = "closed"  # peer sent EOF


class _Input(enum.Enum):
    HANDSHAKE_DONE = "handshake done"
    CONNECT = "connect"
    ACCEPT = "accept_connect"
    REJECT = "reject_connect"
    EOF = "EOF"


_S = ConnectionState
_TRANSITIONS: Final[dict[tuple[ConnectionState, _Input], ConnectionState]] = {
    (_S.HANDSHAKE, _Input.HANDSHAKE_DONE): _S.AWAIT_CONNECT,
    (_S.AWAIT_CONNECT, _Input.CONNECT): _S.CONNECT_PENDING,
    (_S.CONNECT_PENDING, _Input.ACCEPT): _S.CONNECTED,
    (_S.CONNECT_PENDING, _Input.REJECT): _S.REJECTED,
    (_S.HANDSHAKE, _Input.EOF): _S.CLOSED,
    (_S.AWAIT_CONNECT, _Input.EOF): _S.CLOSED,
    (_S.CONNECT_PENDING, _Input.EOF): _S.CLOSED,
    (_S.CONNECTED, _Input.EOF): _S.CLOSED,
    (_S.REJECTED, _Input.EOF): _S.CLOSED,
}
# Inputs that come from the peer (a missing pair is the peer's fault).
_REMOTE_INPUTS: Final = frozenset({_Input.HANDSHAKE_DONE, _Input.CONNECT, _Input.EOF})


class _Role(enum.Enum):
    IDLE = "idle"
    PUBLISH_PENDING = "publish pending"
    PUBLISHING = "publishing"
    PLAY_PENDING = "play pending"
    PLAYING = "playing"


class ServerConnection(_Connection):
    """The server side of one RTMP connection (see the module docstring)."""

    __slots__ = (
        "_chunk_size_sent", "_connect_type", "_handshake", "_handshake_reported",
        "_next_stream_id", "_object_encoding", "_out_chunk_size", "_peer_bandwidth",
        "_peer_capabilities", "_publish_names", "_state", "_streams", "_window_ack_size",
    )

    def __init__(
        self,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        window_ack_size: int = 2_500_000,
        peer_bandwidth: int = 2_500_000,
        out_chunk_size: int = 4096,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        s1_random: bytes | None = None,
    ) -> None:
        super().__init__(max_message_size=max_message_size)
        ChunkWriter(out_chunk_size)  # validates the size
        #: Dropped once done: a viewer holds its connection for hours.
        self._handshake: ServerHandshake | None = ServerHandshake(
            random_bytes=random_bytes, s1_random=s1_random
        )
        self._state = ConnectionState.HANDSHAKE
        self._window_ack_size = window_ack_size
        self._peer_bandwidth = peer_bandwidth
        self._out_chunk_size = out_chunk_size
        self._chunk_size_sent = False
        self._handshake_reported = False
        self._object_encoding = AMF0_ENCODING
        self._connect_type = msg.COMMAND_AMF0
        self._peer_capabilities = enhanced.ClientCapabilities()
        #: Message stream ids and their roles: a :func:`shared` dict, changed
        #: only through :meth:`_set_role` and :meth:`_drop_stream`.
        self._streams: dict[int, _Role] = NO_ENTRIES
        self._publish_names: dict[int, str] = NO_ENTRIES
        self._next_stream_id = 1

    # -- properties --------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection state."""
        return self._state

    @property
    def out_chunk_size(self) -> int:
        """Chunk size (bytes) of everything we send once ``chunk_size_sent``."""
        return self._out_chunk_size

    @property
    def chunk_size_sent(self) -> bool:
        """Whether Set Chunk Size(out_chunk_size) is already in our output.

        Shared media encoded at ``out_chunk_size`` may be written only after
        this is true and the output containing it has been written.
        """
        return self._chunk_size_sent

    @property
    def peer_capabilities(self) -> enhanced.ClientCapabilities:
        """What the client's connect announced of Enhanced RTMP (nothing
        before the connect: a legacy client)."""
        return self._peer_capabilities

    @property
    def paused(self) -> bool:
        """True while a connect/publish/play awaits the application's answer."""
        if self._state is ConnectionState.CONNECT_PENDING:
            return True
        for role in self._streams.values():
            if role is _Role.PUBLISH_PENDING or role is _Role.PLAY_PENDING:
                return True
        return False

    # -- state ------------------------------------------------------------------------

    def _transition(self, event: _Input) -> None:
        new = _TRANSITIONS.get((self._state, event))
        if new is None:
            text = f"{event.value} in state {self._state.value}"
            if event in _REMOTE_INPUTS:
                raise RemoteProtocolError(text, hint="_error")
            raise LocalProtocolError(text)
        self._state = new

    # -- input -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed.

        After ``reject_connect`` further bytes are counted but not kept.
        """
        if self._state is ConnectionState.REJECTED and data:
            self._bytes_received += len(data)
            return
        self._receive(data)
        if self.paused and self._reader.buffered > MAX_BUFFERED_WHILE_PAUSED:
            self._failed = True
            raise RemoteProtocolError(
                f"{self._reader.buffered} bytes received while awaiting a decision exceed "
                f"MAX_BUFFERED_WHILE_PAUSED ({MAX_BUFFERED_WHILE_PAUSED})"
            )

    def _feed_handshake(self, data: bytes) -> None:
        handshake = self._handshake
        assert handshake is not None, "fed after the handshake was done"
        handshake.receive_data(data)
        self._out += handshake.data_to_send()
        if handshake.done:
            self._handshake = None
            self._handshake_done = True
            self._transition(_Input.HANDSHAKE_DONE)
            self._reader.receive_data(handshake.leftover())

    def _next_event(self) -> Event | NeedData:
        if self._handshake_done and not self._handshake_reported:
            self._handshake_reported = True
            return HandshakeCompleted()
        while True:
            if self._events:
                return self._events.pop(0)
            if self._state in (ConnectionState.HANDSHAKE, ConnectionState.REJECTED) or self.paused:
                return self._closed_event()
            if self._state is ConnectionState.CLOSED:
                return NEED_DATA
            message = self._next_message()
            if message is NEED_DATA:
                event = self._closed_event()
                if event is not NEED_DATA:
                    self._state = ConnectionState.CLOSED
                return event
            self._handle(message)

    def _closed_event(self) -> Event | NeedData:
        event = super()._closed_event()
        if event is not NEED_DATA and self._state is not ConnectionState.CLOSED:
            self._transition(_Input.EOF)
        return event

    def _handle(self, message: Message) -> None:
        if self._handle_common(message):
            return
        type_id = message.type_id
        if type_id in (msg.COMMAND_AMF0, msg.COMMAND_AMF3):
            payload = message.payload
            amf3 = type_id == msg.COMMAND_AMF3
            if len(payload) <= MAX_SHARED_COMMAND_BYTES:
                command = _decode_shared_command(payload, amf3)
            else:
                command = msg.decode_command(payload, amf3=amf3)
            if command.name == "connect":
                self._connect_type = type_id
            self._on_command(message.stream_id, command)
        elif (
            type_id in (msg.AUDIO, msg.VIDEO, msg.DATA_AMF0, msg.DATA_AMF3, msg.AGGREGATE)
            and self._streams.get(message.stream_id) is _Role.PUBLISHING
        ):
            # Media only counts on a stream whose publish was accepted.
            self._media_events(message)
        # SET_PEER_BANDWIDTH, shared objects and unknown types are ignored.

    # -- commands ----------------------------------------------------------------------

    def _on_command(self, stream_id: int, command: msg.Command) -> None:
        name = command.name
        if name == "connect":
            self._on_connect(command)
            return
        if name in ("_result", "_error", "onStatus", "_checkbw", "checkBandwidth", "play2"):
            return  # answers to our calls, bandwidth probes, play2: nothing to do
        if self._state is not ConnectionState.CONNECTED:
            raise RemoteProtocolError(
                f"command {name!r} before connect was accepted (state {self._state.value})",
                hint="_error",
            )
        handler = _SERVER_COMMANDS.get(name)
        if handler is not None:
            handler(self, stream_id, command)
        elif command.transaction_id:
            self._send_command(
                stream_id,
                "_error",
                command.transaction_id,
                None,
                {
                    "level": "error",
                    "code": "NetConnection.Call.Failed",
                    "description": f"Method not found ({name}).",
                },
            )

    def _on_connect(self, command: msg.Command) -> None:
        self._transition(_Input.CONNECT)
        obj = command.command_object
        if isinstance(obj, amf0.TypedObject):
            obj = obj.members
        if not isinstance(obj, dict):
            raise RemoteProtocolError("connect without a command object", hint="_error")
        app_raw = obj.get("app", "")
        tc_url = obj.get("tcUrl", "")
        if not isinstance(app_raw, str) or not isinstance(tc_url, str):
            raise RemoteProtocolError("connect: app and tcUrl must be strings", hint="_error")
        app, query = _split_query(app_raw)
        if not query:
            query = _split_query(tc_url)[1]
        asked = _number(obj.get("objectEncoding"), AMF0_ENCODING)
        self._object_encoding = AMF3_ENCODING if asked == AMF3_ENCODING else AMF0_ENCODING
        self._peer_capabilities = enhanced.ClientCapabilities.from_connect(obj)
        self._events.append(
            ConnectRequested(
                transaction_id=command.transaction_id,
                app=app.rstrip("/"),
                tc_url=tc_url,
                query=query,
                command_object=dict(obj),
            )
        )

    def _set_role(self, stream_id: int, role: _Role) -> None:
        roles = dict(self._streams)
        roles[stream_id] = role
        self._streams = shared(roles)

    def _drop_stream(self, stream_id: int) -> None:
        roles = dict(self._streams)
        del roles[stream_id]
        self._streams = shared(roles)

    def _require_stream(self, stream_id: int, name: str) -> _Role:
        role = self._streams.get(stream_id)
        if role is None:
            raise RemoteProtocolError(
                f"{name} on message stream {stream_id}, which was not created", hint="_error"
            )
        return role

    def _cmd_create_stream(self, stream_id: int, command: msg.Command) -> None:
        tid = command.transaction_id
        if len(self._streams) >= MAX_STREAMS_PER_CONNECTION:
            self._send_command(
                0,
                "_error",
                tid,
                None,
                {
                    "level": "error",
                    "code": "NetConnection.Call.Failed",
                    "description": f"more than MAX_STREAMS_PER_CONNECTION "
                    f"({MAX_STREAMS_PER_CONNECTION}) streams",
                },
            )
            return
        new_id = self._next_stream_id
        self._next_stream_id += 1
        self._set_role(new_id, _Role.IDLE)
        self._send_command(0, "_result", tid, None, float(new_id))

    def _cmd_release_stream(self, stream_id: int, command: msg.Command) -> None:
        if command.transaction_id:
            self._send_command(stream_id, "_result", command.transaction_id, None, amf0.UNDEFINED)

    def _cmd_fc_publish(self, stream_id: int, command: msg.Command) -> None:
        name = command.args[0] if command.args and isinstance(command.args[0], str) else ""
        self._send_command(
            stream_id,
            "onFCPublish",
            0.0,
            None,
            {"code": "NetStream.Publish.Start", "description": name},
        )

    def _cmd_fc_unpublish(self, stream_id: int, command: msg.Command) -> None:
        name = command.args[0] if command.args and isinstance(command.args[0], str) else ""
        self._send_command(
            stream_id,
            "onFCUnpublish",
            0.0,
            None,
            {"code": "NetStream.Unpublish.Success", "description": name},
        )
        base = _split_query(name)[0]
        target = stream_id
        for sid, published in self._publish_names.items():
            if published == base:
                target = sid
                break
        self._events.append(UnpublishRequested(stream_id=target, name=base))

    def _cmd_get_stream_length(self, stream_id: int, command: msg.Command) -> None:
        if command.transaction_id:
            self._send_command(stream_id, "_result", command.transaction_id, None, 0.0)

    def _cmd_delete_stream(self, stream_id: int, command: msg.Command) -> None:
        if not command.args:
            raise RemoteProtocolError("deleteStream without a stream id", hint="_error")
        target = _number(command.args[0], -1.0)
        if not target.is_integer() or int(target) not in self._streams:
            return  # unknown or already deleted: nothing to stop
        sid = int(target)
        self._drop_stream(sid)
        self._publish_names.pop(sid, None)
        self._events.append(StreamDeleted(stream_id=sid))

    def _cmd_close_stream(self, stream_id: int, command: msg.Command) -> None:
        self._require_stream(stream_id, "closeStream")
        self._set_role(stream_id, _Role.IDLE)
        self._publish_names.pop(stream_id, None)
        self._events.append(StreamDeleted(stream_id=stream_id))

    def _cmd_publish(self, stream_id: int, command: msg.Command) -> None:
        self._require_stream(stream_id, "publish")
        args = command.args
        raw_name = args[0] if args else None
        if not isinstance(raw_name, str):
            # publish(false/null) stops publishing (Flash NetStream.publish(null)).
            self._cmd_close_stream(stream_id, command)
            return
        publish_type = args[1] if len(args) > 1 and isinstance(args[1], str) else "live"
        name, query = _split_query(raw_name)
        self._set_role(stream_id, _Role.PUBLISH_PENDING)
        self._publish_names = own(self._publish_names)
        self._publish_names[stream_id] = name
        self._events.append(
            PublishRequested(stream_id=stream_id, name=name, query=query, publish_type=publish_type)
        )

    def _cmd_play(self, stream_id: int, command: msg.Command) -> None:
        self._require_stream(stream_id, "play")
        args = command.args
        raw_name = args[0] if args else None
        if not isinstance(raw_name, str):
            raise RemoteProtocolError("play without a stream name", hint="_error")
        name, query = _split_query(raw_name)
        start = _number(args[1] if len(args) > 1 else None, -2.0)
        duration = _number(args[2] if len(args) > 2 else None, -1.0)
        reset_arg = args[3] if len(args) > 3 else True
        reset = bool(reset_arg) if isinstance(reset_arg, bool | int | float) else True
        self._set_role(stream_id, _Role.PLAY_PENDING)
        self._events.append(
            PlayRequested(
                stream_id=stream_id,
                name=name,
                query=query,
                start=start,
                duration=duration,
                reset=reset,
            )
        )

    def _cmd_pause(self, stream_id: int, command: msg.Command) -> None:
        self._require_stream(stream_id, "pause")
        args = command.args
        paused = bool(args[0]) if args and isinstance(args[0], bool | int | float) else True
        position = _number(args[1] if len(args) > 1 else None, 0.0)
        if paused:
            self._send_status(stream_id, "status", "NetStream.Pause.Notify", "Paused.")
        else:
            self._send_status(stream_id, "status", "NetStream.Unpause.Notify", "Unpaused.")
        self._events.append(
            PauseRequested(stream_id=stream_id, paused=paused, position_ms=position)
        )

    def _cmd_receive_audio(self, stream_id: int, command: msg.Command) -> None:
        self._require_stream(stream_id, "receiveAudio")
        flag = bool(command.args[0]) if command.args else True
        self._events.append(ReceiveMediaChanged(stream_id=stream_id, audio=flag, video=None))

    def _cmd_receive_video(self, stream_id: int, command: msg.Command) -> None:
        self._require_stream(stream_id, "receiveVideo")
        flag = bool(command.args[0]) if command.args else True
        self._events.append(ReceiveMediaChanged(stream_id=stream_id, audio=None, video=flag))

    # -- responses ---------------------------------------------------------------------

    def accept_connect(self, transaction_id: float) -> None:
        """Accept ``connect``: Window Ack Size, Set Peer Bandwidth, Set Chunk Size, ``_result``."""
        self._transition(_Input.ACCEPT)
        key = (
            self._window_ack_size, self._peer_bandwidth, self._out_chunk_size,
            self._connect_type, transaction_id, self._object_encoding,
            self._peer_capabilities.announced,
        )
        if self._writer.pristine:
            # As nearly always (nothing sent since the handshake): the same
            # bytes as every such connection's, and the writer they leave.
            reply = _CONNECT_REPLIES.get(key)
            if reply is None:
                if len(_CONNECT_REPLIES) >= _ENCODED_CACHE_SIZE:
                    _CONNECT_REPLIES.clear()
                writer = ChunkWriter()
                reply = _CONNECT_REPLIES[key] = (_connect_reply(writer, *key), writer)
            data, writer = reply
            self._writer = writer.copy()
        else:
            data = _connect_reply(self._writer, *key)
        self._out += data
        self._chunk_size_sent = True
        self._amf3_commands = self._object_encoding == AMF3_ENCODING

    def request_reconnect(self, description: str, tc_url: str | None = None) -> None:
        """Ask the client to reconnect (Enhanced RTMP v2): onStatus
        NetConnection.Connect.ReconnectRequest on the connection (stream 0),
        with ``tc_url`` (absolute or relative to the current one) if given,
        else the client reconnects to its current tcUrl. The client goes on
        sending until the next keyframe, then moves; keep reading until it
        closes. Only for a client whose connect announced ``capsEx``
        Reconnect (:attr:`peer_capabilities`); others would not understand."""
        if self._state is not ConnectionState.CONNECTED:
            raise LocalProtocolError(f"reconnect request in state {self._state.value}")
        extra = {"tcUrl": tc_url} if tc_url else {}
        self._send_status(
            0, "status", "NetConnection.Connect.ReconnectRequest", description, **extra
        )

    def reject_connect(self, transaction_id: float, description: str) -> None:
        """Refuse ``connect``: ``_error`` NetConnection.Connect.Rejected; input is then ignored."""
        self._transition(_Input.REJECT)
        self._amf3_commands = self._connect_type == msg.COMMAND_AMF3  # answered in kind
        self._send_command(
            0,
            "_error",
            transaction_id,
            None,
            {
                "level": "error",
                "code": "NetConnection.Connect.Rejected",
                "description": description,
            },
        )

    def _answer(self, stream_id: int, role: _Role) -> None:
        if self._state is not ConnectionState.CONNECTED:
            raise LocalProtocolError(f"stream response in state {self._state.value}")
        if stream_id not in self._streams:
            raise LocalProtocolError(f"message stream {stream_id} does not exist")
        self._set_role(stream_id, role)

    def publish_start(self, stream_id: int, name: str) -> None:
        """Accept ``publish``: Stream Begin and onStatus NetStream.Publish.Start."""
        self._answer(stream_id, _Role.PUBLISHING)
        self._send_control(msg.USER_CONTROL, msg.encode_user_control(msg.STREAM_BEGIN, stream_id))
        self._send_status(
            stream_id,
            "status",
            "NetStream.Publish.Start",
            f"{name} is now published.",
            details=name,
        )

    def publish_bad_name(self, stream_id: int, name: str, description: str) -> None:
        """Refuse ``publish``: onStatus error NetStream.Publish.BadName (name invalid or in use)."""
        self._answer(stream_id, _Role.IDLE)
        self._publish_names.pop(stream_id, None)
        self._send_status(
            stream_id, "error", "NetStream.Publish.BadName", description, details=name
        )

    def publish_rejected(
        self, stream_id: int, name: str, description: str,
        code: str = "NetStream.Publish.Rejected",
    ) -> None:
        """Refuse ``publish`` for lack of permission or room: onStatus error
        ``code`` (NetStream.Publish.Rejected, or e.g. NetStream.Publish.Unauthorized).

        Any level-"error" onStatus fails FFmpeg; OBS's librtmp knows Rejected.
        """
        self._answer(stream_id, _Role.IDLE)
        self._publish_names.pop(stream_id, None)
        self._send_status(stream_id, "error", code, description, details=name)

    def unpublish_success(self, stream_id: int, name: str) -> None:
        """Confirm the end of a publish: onStatus NetStream.Unpublish.Success."""
        if stream_id in self._streams:
            self._set_role(stream_id, _Role.IDLE)
        self._publish_names.pop(stream_id, None)
        self._send_status(
            stream_id,
            "status",
            "NetStream.Unpublish.Success",
            f"{name} is now unpublished.",
            details=name,
        )

    def play_start(self, stream_id: int, name: str) -> None:
        """Accept ``play``: Stream Begin, Play.Reset, Play.Start, |RtmpSampleAccess.

        Media for this player may be written after this output. (FMS also
        sends an ``onStatus NetStream.Data.Start`` data message; ffmpeg turns
        any such unknown script message into a spurious data stream, so it is
        left out.)
        """
        self._answer(stream_id, _Role.PLAYING)
        if not self._chunk_size_sent:
            self._write_play_start(stream_id, name)  # which raises in send_data
            return
        # A join storm plays one name on one stream id with the same header
        # state: the bytes are written once for all (bounded: names come
        # from clients), with the header state they leave.
        key = (
            self._writer.state_of(_PLAY_START_CSIDS), stream_id, name, self._amf3_commands,
            self._out_chunk_size,
        )
        reply = _PLAY_STARTS.get(key)
        if reply is None:
            start = len(self._out)
            self._write_play_start(stream_id, name)
            if len(_PLAY_STARTS) >= _ENCODED_CACHE_SIZE:
                _PLAY_STARTS.clear()
            _PLAY_STARTS[key] = (bytes(self._out[start:]), self._writer.states(_PLAY_START_CSIDS))
            return
        data, states = reply
        self._out += data
        self._writer.restore(states)

    def _write_play_start(self, stream_id: int, name: str) -> None:
        self._send_control(msg.USER_CONTROL, msg.encode_user_control(msg.STREAM_BEGIN, stream_id))
        self._send_status(
            stream_id,
            "status",
            "NetStream.Play.Reset",
            f"Playing and resetting {name}.",
            details=name,
        )
        self._send_status(
            stream_id, "status", "NetStream.Play.Start", f"Started playing {name}.", details=name
        )
        self.send_data(stream_id, 0, _SAMPLE_ACCESS)

    def play_not_found(self, stream_id: int, name: str) -> None:
        """Refuse ``play``: onStatus error NetStream.Play.StreamNotFound."""
        self._answer(stream_id, _Role.IDLE)
        self._send_status(
            stream_id,
            "error",
            "NetStream.Play.StreamNotFound",
            f"Stream not found: {name}.",
            details=name,
        )

    def play_rejected(
        self, stream_id: int, name: str, description: str, code: str = "NetStream.Play.Failed"
    ) -> None:
        """Refuse ``play``: onStatus error ``code`` (NetStream.Play.Failed, or
        e.g. NetStream.Play.Unauthorized)."""
        self._answer(stream_id, _Role.IDLE)
        self._send_status(stream_id, "error", code, description, details=name)

    def play_unpublish_notify(self, stream_id: int, name: str) -> None:
        """The played stream ended: onStatus NetStream.Play.UnpublishNotify and Stream EOF."""
        if stream_id in self._streams:
            self._set_role(stream_id, _Role.IDLE)
        self._send_status(
            stream_id,
            "status",
            "NetStream.Play.UnpublishNotify",
            f"{name} is now unpublished.",
            details=name,
        )
        self._send_control(msg.USER_CONTROL, msg.encode_user_control(msg.STREAM_EOF, stream_id))

    def play_complete(self, stream_id: int, name: str, timestamp_ms: int) -> None:
        """The play got all the media it asked for (its duration): onStatus
        NetStream.Play.Stop, an ``onPlayStatus`` NetStream.Play.Complete data
        message at ``timestamp_ms`` (the last media time sent), then Stream
        EOF ("playback of data is over as requested", spec 7.1.7). The
        message stream stays, for another play.

        librtmp (rtmpdump) and ffmpeg both end a play at the onStatus
        Play.Stop, so it comes first and they never see the data message,
        which is for Flash-style clients (``NetStream.client.onPlayStatus``).
        """
        if stream_id in self._streams:
            self._set_role(stream_id, _Role.IDLE)
        self._send_status(
            stream_id, "status", "NetStream.Play.Stop", f"Stopped playing {name}.", details=name
        )
        self.send_data(stream_id, timestamp_ms, _play_complete_payload(name))
        self._send_control(msg.USER_CONTROL, msg.encode_user_control(msg.STREAM_EOF, stream_id))

    def _require_chunk_size(self) -> None:
        if not self._chunk_size_sent:
            raise LocalProtocolError("media sent before accept_connect sent Set Chunk Size")

    def send_media(self, stream_id: int, type_id: int, timestamp_ms: int, payload: bytes) -> None:
        """Queue one audio (8) or video (9) message for this viewer only.

        Encoded exactly like the shared path (``encode_message`` on
        AUDIO_CSID/VIDEO_CSID at ``out_chunk_size``), so both may be mixed.
        """
        if type_id not in (msg.AUDIO, msg.VIDEO):
            raise LocalProtocolError(f"media type id {type_id} is not 8 or 9")
        self._require_chunk_size()
        self._out += encode_message(
            chunk_size=self._out_chunk_size,
            chunk_stream_id=AUDIO_CSID if type_id == msg.AUDIO else VIDEO_CSID,
            type_id=type_id,
            stream_id=stream_id,
            timestamp_ms=timestamp_ms,
            payload=payload,
        )

    def send_data(self, stream_id: int, timestamp_ms: int, payload: bytes) -> None:
        """Queue one AMF0 data message (an FLV script tag body) on DATA_CSID."""
        self._require_chunk_size()
        self._out += encode_message(
            chunk_size=self._out_chunk_size,
            chunk_stream_id=DATA_CSID,
            type_id=msg.DATA_AMF0,
            stream_id=stream_id,
            timestamp_ms=timestamp_ms,
            payload=payload,
        )


_ServerCommand = Callable[[ServerConnection, int, msg.Command], None]
_SERVER_COMMANDS: Final[dict[str, _ServerCommand]] = {
    "createStream": ServerConnection._cmd_create_stream,
    "releaseStream": ServerConnection._cmd_release_stream,
    "FCPublish": ServerConnection._cmd_fc_publish,
    "FCUnpublish": ServerConnection._cmd_fc_unpublish,
    "getStreamLength": ServerConnection._cmd_get_stream_length,
    "deleteStream": ServerConnection._cmd_delete_stream,
    "closeStream": ServerConnection._cmd_close_stream,
    "publish": ServerConnection._cmd_publish,
    "play": ServerConnection._cmd_play,
    "pause": ServerConnection._cmd_pause,
    "pauseRaw": ServerConnection._cmd_pause,
    "receiveAudio": ServerConnection._cmd_receive_audio,
    "receiveVideo": ServerConnection._cmd_receive_video,
}


# =============================================================================
# Client
# =============================================================================


class ClientState(enum.Enum):
    """Where a :class:`ClientConnection` is in its life."""

    HANDSHAKE = "handshake"
    READY = "ready"  # handshake done, not connected
    CONNECTING = "connecting"  # connect sent
    CONNECTED = "connected"
    FAILED = "failed"  # connect refused
    CLOSED = "closed"


_C = ClientState
_CLIENT_TRANSITIONS: Final[dict[tuple[ClientState, str], ClientState]] = {
    (_C.HANDSHAKE, "handshake done"): _C.READY,
    (_C.HANDSHAKE, "connect"): _C.CONNECTING,  # queued until the handshake is done
    (_C.READY, "connect"): _C.CONNECTING,
    (_C.CONNECTING, "handshake done"): _C.CONNECTING,
    (_C.CONNECTING, "_result"): _C.CONNECTED,
    (_C.CONNECTING, "_error"): _C.FAILED,
    **{(state, "EOF"): _C.CLOSED for state in _C},
}


class ClientConnection(_Connection):
    """The client side of an RTMP connection, for our tools and tests.

    Calls made before the handshake finishes are queued and sent after it.
    """

    __slots__ = (
        "_calls", "_chunk_size_sent", "_handshake", "_handshake_reported", "_next_tid",
        "_object_encoding", "_out_chunk_size", "_queued", "_sent_window", "_state",
    )

    def __init__(
        self,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        out_chunk_size: int = 4096,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        complex_handshake: bool = True,
        object_encoding: float = AMF0_ENCODING,
    ) -> None:
        """``object_encoding`` 3 asks for AMF3: if the server's connect
        ``_result`` agrees, commands go out as type 17 and metadata as type
        15 from then on."""
        super().__init__(max_message_size=max_message_size)
        self._object_encoding = float(object_encoding)
        ChunkWriter(out_chunk_size)  # validates the size
        self._handshake = ClientHandshake(random_bytes=random_bytes, complex=complex_handshake)
        self._state = ClientState.HANDSHAKE
        self._out_chunk_size = out_chunk_size
        self._chunk_size_sent = False
        self._handshake_reported = False
        self._queued = bytearray()  # chunk stream output made before the handshake ended
        self._calls: dict[float, str] = {}
        self._next_tid = 1
        self._sent_window: int | None = None
        self._out += self._handshake.data_to_send()

    @property
    def state(self) -> ClientState:
        """The connection state."""
        return self._state

    @property
    def amf3_commands(self) -> bool:
        """True once the server agreed to objectEncoding 3: commands go out
        as type 17 and metadata as type 15."""
        return self._amf3_commands

    def _transition(self, event: str) -> None:
        new = _CLIENT_TRANSITIONS.get((self._state, event))
        if new is None:
            text = f"{event} in state {self._state.value}"
            if event in ("connect",):
                raise LocalProtocolError(text)
            raise RemoteProtocolError(text)
        self._state = new

    # -- plumbing ------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write to the server; clears them."""
        if self._handshake_done and self._queued:
            self._out += self._queued
            self._queued.clear()
        return super().data_to_send()

    def _write(self, csid: int, type_id: int, stream_id: int, ts: int, payload: bytes) -> None:
        data = self._writer.write(csid, type_id, stream_id, ts, payload)
        if self._handshake_done:
            self._out += data
        else:
            self._queued += data

    def _send_control(self, type_id: int, payload: bytes) -> None:
        self._write(CONTROL_CSID, type_id, 0, 0, payload)

    def _send_command(
        self, stream_id: int, name: str, transaction_id: float, obj: object, *args: object
    ) -> None:
        payload = self._encode_command(name, transaction_id, obj, *args)
        self._write(COMMAND_CSID, self._command_type(), stream_id, 0, payload)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means the server closed."""
        self._receive(data)

    def _feed_handshake(self, data: bytes) -> None:
        self._handshake.receive_data(data)
        self._out += self._handshake.data_to_send()
        if self._handshake.done:
            self._handshake_done = True
            self._transition("handshake done")
            self._out += self._queued
            self._queued.clear()
            self._reader.receive_data(self._handshake.leftover())

    def _next_event(self) -> Event | NeedData:
        if self._handshake_done and not self._handshake_reported:
            self._handshake_reported = True
            return HandshakeCompleted()
        while True:
            if self._events:
                return self._events.pop(0)
            if not self._handshake_done:
                return self._closed_event()
            message = self._next_message()
            if message is NEED_DATA:
                event = self._closed_event()
                if event is not NEED_DATA:
                    self._transition("EOF")
                return event
            self._handle(message)

    def _handle(self, message: Message) -> None:
        if message.type_id == msg.USER_CONTROL:
            control = msg.decode_user_control(message.payload)
            if control.event_type == msg.STREAM_EOF:
                self._events.append(StreamEofReceived(stream_id=control.value))
                return
        if self._handle_common(message):
            return
        type_id = message.type_id
        if type_id == msg.SET_PEER_BANDWIDTH:
            size, _limit = msg.decode_set_peer_bandwidth(message.payload)
            if size != self._sent_window:
                self._sent_window = size
                self._send_control(msg.WINDOW_ACK_SIZE, msg.encode_window_ack_size(size))
        elif type_id in (msg.COMMAND_AMF0, msg.COMMAND_AMF3):
            command = msg.decode_command(message.payload, amf3=type_id == msg.COMMAND_AMF3)
            self._on_command(message.stream_id, command)
        else:
            self._media_events(message)

    def _on_command(self, stream_id: int, command: msg.Command) -> None:
        name = command.name
        info = command.args[0] if command.args else None
        if name in ("_result", "_error"):
            call = self._calls.pop(command.transaction_id, None)
            if call == "connect":
                self._transition(name)
                if name == "_result":
                    agreed = _number(_dict_get(info, "objectEncoding"), AMF0_ENCODING)
                    self._amf3_commands = (
                        self._object_encoding == AMF3_ENCODING == agreed
                    )
                    self._events.append(
                        Connected(info=dict(info) if isinstance(info, dict) else {})
                    )
                else:
                    self._events.append(
                        ConnectFailed(
                            description=_info_field(info, "description"),
                            code=_info_field(info, "code"),
                        )
                    )
            elif call == "createStream" and name == "_result":
                sid = _number(info, -1.0)
                if not sid.is_integer() or not 0 < sid <= 0xFFFFFFFF:
                    raise RemoteProtocolError(f"createStream result {info!r} is not a stream id")
                self._events.append(
                    StreamCreated(stream_id=int(sid), transaction_id=command.transaction_id)
                )
            elif name == "_error":
                self._events.append(
                    StatusReceived(
                        stream_id=stream_id,
                        level=_info_field(info, "level") or "error",
                        code=_info_field(info, "code"),
                        description=_info_field(info, "description"),
                    )
                )
        elif name == "onStatus":
            self._events.append(
                StatusReceived(
                    stream_id=stream_id,
                    level=_info_field(info, "level"),
                    code=_info_field(info, "code"),
                    description=_info_field(info, "description"),
                )
            )
        # onBWDone, onFCPublish, onFCUnpublish and others need no answer.

    # -- calls ---------------------------------------------------------------------

    def send_command(
        self, name: str, command_object: object = None, *args: object, stream_id: int = 0
    ) -> float:
        """Send any command with a fresh transaction id; returns the id."""
        tid = float(self._next_tid)
        self._next_tid += 1
        self._calls[tid] = name
        self._send_command(stream_id, name, tid, command_object, *args)
        return tid

    def connect(self, app: str, tc_url: str, **extra: object) -> float:
        """Send ``connect``; answered by ``Connected`` or ``ConnectFailed``."""
        self._transition("connect")
        obj: dict[str, object] = {
            "app": app,
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; rtmpd)",
            "tcUrl": tc_url,
            "fpad": False,
            "capabilities": 15.0,
            "audioCodecs": 4071.0,
            "videoCodecs": 252.0,
            "videoFunction": 1.0,
            "objectEncoding": self._object_encoding,
            # Enhanced RTMP: we take and forward any codec and multitrack.
            "fourCcList": ["*"],
            "capsEx": float(enhanced.CAPS_EX_MULTITRACK | enhanced.CAPS_EX_MOD_EX),
        }
        obj.update(extra)
        return self.send_command("connect", obj)

    def create_stream(self) -> float:
        """Send ``createStream``; answered by ``StreamCreated``."""
        return self.send_command("createStream")

    def _ensure_chunk_size(self) -> None:
        if not self._chunk_size_sent:
            self._send_control(msg.SET_CHUNK_SIZE, msg.encode_set_chunk_size(self._out_chunk_size))
            self._writer.set_chunk_size(self._out_chunk_size)
            self._chunk_size_sent = True

    def publish(self, stream_id: int, name: str, publish_type: str = "live") -> None:
        """Set our chunk size, then ``publish``; answered by ``StatusReceived``."""
        self._ensure_chunk_size()
        self._send_command(stream_id, "publish", 0.0, None, name, publish_type)

    def play(
        self, stream_id: int, name: str, start: float = -2.0, buffer_ms: int = 1000,
        duration: float | None = None,
    ) -> None:
        """Send ``play`` (with ``duration`` when given, as it is: see
        :func:`rtmpd.codec.rtmp.messages.play_duration_ms`) and Set Buffer
        Length; answered by ``StatusReceived``."""
        args: tuple[object, ...] = (name, start) if duration is None else (name, start, duration)
        self._send_command(stream_id, "play", 0.0, None, *args)
        self._send_control(
            msg.USER_CONTROL,
            msg.encode_user_control(msg.SET_BUFFER_LENGTH, stream_id, buffer_length_ms=buffer_ms),
        )

    def delete_stream(self, stream_id: int) -> None:
        """Send ``deleteStream``."""
        self._send_command(0, "deleteStream", 0.0, None, float(stream_id))

    def send_media(self, stream_id: int, type_id: int, timestamp_ms: int, payload: bytes) -> None:
        """Send one audio (8) or video (9) message."""
        if type_id not in (msg.AUDIO, msg.VIDEO):
            raise LocalProtocolError(f"media type id {type_id} is not 8 or 9")
        self._ensure_chunk_size()
        csid = AUDIO_CSID if type_id == msg.AUDIO else VIDEO_CSID
        self._write(csid, type_id, stream_id, timestamp_ms, payload)

    def send_metadata(self, stream_id: int, metadata: dict[str, object]) -> None:
        """Send ``@setDataFrame("onMetaData", metadata)`` as encoders do (as
        AMF3 data, type 15, once AMF3 was agreed)."""
        if self._amf3_commands:
            payload = msg.encode_data_amf3(
                "@setDataFrame", "onMetaData", amf0.ECMAArray(metadata)
            )
            self.send_message(DATA_CSID, msg.DATA_AMF3, stream_id, 0, payload)
            return
        payload = amf0.encode_all("@setDataFrame", "onMetaData", amf0.ECMAArray(metadata))
        self.send_message(DATA_CSID, msg.DATA_AMF0, stream_id, 0, payload)

    def send_message(
        self, chunk_stream_id: int, type_id: int, stream_id: int, timestamp_ms: int, payload: bytes
    ) -> None:
        """Send any message (aggregates, raw data, tests)."""
        self._ensure_chunk_size()
        self._write(chunk_stream_id, type_id, stream_id, timestamp_ms, payload)
