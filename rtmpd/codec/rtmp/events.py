"""Events produced by :mod:`rtmpd.codec.rtmp.connection`.

Every event is a frozen, slotted, keyword-only dataclass, checked when built.
``next_event()`` returns one of these or :data:`NEED_DATA`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rtmpd.codec.errors import LocalProtocolError
from rtmpd.codec.rtmp.chunk import NEED_DATA, NeedData
from rtmpd.codec.rtmp.messages import play_duration_ms

__all__ = [
    "NEED_DATA",
    "ConnectFailed",
    "ConnectRequested",
    "Connected",
    "ConnectionClosed",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "MediaReceived",
    "NeedData",
    "PauseRequested",
    "PingResponseReceived",
    "PlayRequested",
    "PublishRequested",
    "ReceiveMediaChanged",
    "StatusReceived",
    "StreamCreated",
    "StreamDeleted",
    "StreamEofReceived",
    "UnpublishRequested",
]


def _check_stream_id(stream_id: int) -> None:
    if not 0 <= stream_id <= 0xFFFFFFFF:
        raise LocalProtocolError(f"message stream id {stream_id} outside 0..2**32-1")


def _check_timestamp(timestamp_ms: int) -> None:
    if not 0 <= timestamp_ms <= 0xFFFFFFFF:
        raise LocalProtocolError(f"timestamp {timestamp_ms} ms outside 0..2**32-1")


# --- both sides ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeCompleted:
    """The RTMP handshake finished; chunk stream traffic follows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The peer closed its side (``receive_data(b"")``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaReceived:
    """An audio (8) or video (9) message: ``payload`` is the FLV tag body."""

    stream_id: int
    type_id: int
    timestamp_ms: int
    payload: bytes

    def __post_init__(self) -> None:
        if self.type_id not in (8, 9):
            raise LocalProtocolError(f"media type id {self.type_id} is not 8 (audio) or 9 (video)")
        _check_stream_id(self.stream_id)
        _check_timestamp(self.timestamp_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived:
    """A data message as an FLV script tag body (AMF0 name + values).

    ``@setDataFrame`` has been stripped, so metadata arrives as
    ``"onMetaData", {...}``; AMF3 data (type 15) lost its leading 0 byte.
    """

    stream_id: int
    timestamp_ms: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        _check_timestamp(self.timestamp_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class PingResponseReceived:
    """The peer answered our ping with ``timestamp_ms`` (the value we sent)."""

    timestamp_ms: int


# --- server side ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRequested:
    """``connect``: answer with ``accept_connect`` or ``reject_connect``.

    ``app`` has its ``?query`` moved to ``query`` and a trailing ``/``
    removed; ``command_object`` is the client's whole connect object.
    """

    transaction_id: float
    app: str
    tc_url: str
    query: str
    command_object: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishRequested:
    """``publish``: answer with ``publish_start``/``publish_bad_name``/``publish_rejected``.

    ``name`` is the stream name without its ``?query`` (moved to ``query``);
    ``publish_type`` is "live", "record" or "append".
    """

    stream_id: int
    name: str
    query: str
    publish_type: str

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayRequested:
    """``play``: answer with ``play_start``/``play_not_found``/``play_rejected``.

    ``start`` and ``duration`` are the command's numbers as sent (defaults
    -2 and -1); :attr:`duration_ms` says what the duration means.
    """

    stream_id: int
    name: str
    query: str
    start: float
    duration: float
    reset: bool

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)

    @property
    def duration_ms(self) -> int | None:
        """The media asked for in ms (0: a single frame), or None: until the
        stream ends (see :func:`rtmpd.codec.rtmp.messages.play_duration_ms`)."""
        return play_duration_ms(self.start, self.duration)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamDeleted:
    """``deleteStream`` or ``closeStream``: stop whatever runs on ``stream_id``."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnpublishRequested:
    """``FCUnpublish``: the publisher is about to stop ``name``."""

    stream_id: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseRequested:
    """``pause``/``pauseRaw`` from a player; the codec already answered with
    NetStream.Pause.Notify or NetStream.Unpause.Notify."""

    stream_id: int
    paused: bool
    position_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiveMediaChanged:
    """``receiveAudio``/``receiveVideo``: ``None`` means that kind did not change."""

    stream_id: int
    audio: bool | None
    video: bool | None


# --- client side ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    """The server accepted ``connect``; ``info`` is its status object."""

    info: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectFailed:
    """The server answered ``connect`` with ``_error``."""

    description: str
    code: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamCreated:
    """``createStream`` succeeded with a new message stream id."""

    stream_id: int
    transaction_id: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEofReceived:
    """User Control Stream EOF: the server sent all it will of what was
    played on ``stream_id``."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReceived:
    """An ``onStatus`` (or an ``_error`` to a stream command) from the server."""

    stream_id: int
    level: str
    code: str
    description: str


Event = (
    HandshakeCompleted
    | ConnectionClosed
    | MediaReceived
    | DataReceived
    | PingResponseReceived
    | ConnectRequested
    | PublishRequested
    | PlayRequested
    | StreamDeleted
    | UnpublishRequested
    | PauseRequested
    | ReceiveMediaChanged
    | Connected
    | ConnectFailed
    | StreamCreated
    | StreamEofReceived
    | StatusReceived
)
"""Any event either connection may return."""
