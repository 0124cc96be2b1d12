"""RTMP message bodies: protocol control, user control, commands, aggregates.

Each ``encode_*`` returns a message payload (put it in a chunk stream with the
type id named here); each ``decode_*`` parses one and raises only
:class:`RemoteProtocolError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from rtmpd.codec import amf0, amf3
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ABORT",
    "ACK",
    "AGGREGATE",
    "AMF3_FORMAT_BYTE",
    "AUDIO",
    "COMMAND_AMF0",
    "COMMAND_AMF3",
    "DATA_AMF0",
    "DATA_AMF3",
    "LIMIT_DYNAMIC",
    "LIMIT_HARD",
    "LIMIT_SOFT",
    "MAX_PLAY_DURATION_MS",
    "PING_REQUEST",
    "PING_RESPONSE",
    "SET_BUFFER_LENGTH",
    "SET_CHUNK_SIZE",
    "SET_PEER_BANDWIDTH",
    "SHARED_OBJECT_AMF0",
    "SHARED_OBJECT_AMF3",
    "STREAM_BEGIN",
    "STREAM_DRY",
    "STREAM_EOF",
    "STREAM_IS_RECORDED",
    "USER_CONTROL",
    "VIDEO",
    "WINDOW_ACK_SIZE",
    "Command",
    "UserControl",
    "decode_command",
    "decode_set_peer_bandwidth",
    "decode_u32",
    "decode_user_control",
    "encode_abort",
    "encode_ack",
    "encode_aggregate",
    "encode_command",
    "encode_command_amf3",
    "encode_data_amf3",
    "encode_set_chunk_size",
    "encode_set_peer_bandwidth",
    "encode_user_control",
    "encode_window_ack_size",
    "normalize_data_amf3",
    "play_duration_ms",
    "split_aggregate",
]

# --- message type ids (RTMP spec 5.4, 7.1) ---------------------------------------
SET_CHUNK_SIZE: Final = 1
ABORT: Final = 2
ACK: Final = 3
USER_CONTROL: Final = 4
WINDOW_ACK_SIZE: Final = 5
SET_PEER_BANDWIDTH: Final = 6
AUDIO: Final = 8
VIDEO: Final = 9
DATA_AMF3: Final = 15
SHARED_OBJECT_AMF3: Final = 16
COMMAND_AMF3: Final = 17
DATA_AMF0: Final = 18
SHARED_OBJECT_AMF0: Final = 19
COMMAND_AMF0: Final = 20
AGGREGATE: Final = 22

# --- user control event types (RTMP spec 7.1.7) ----------------------------------
STREAM_BEGIN: Final = 0
STREAM_EOF: Final = 1
STREAM_DRY: Final = 2
SET_BUFFER_LENGTH: Final = 3
STREAM_IS_RECORDED: Final = 4
PING_REQUEST: Final = 6
PING_RESPONSE: Final = 7

# --- Set Peer Bandwidth limit types -------------------------------------------------
LIMIT_HARD: Final = 0
LIMIT_SOFT: Final = 1
LIMIT_DYNAMIC: Final = 2

_U32_MAX: Final = 0xFFFFFFFF


def _u32(value: int, what: str) -> bytes:
    if not 0 <= value <= _U32_MAX:
        raise LocalProtocolError(f"{what} {value} outside 0..2**32-1")
    return value.to_bytes(4, "big")


def decode_u32(payload: bytes, what: str) -> int:
    """The leading 4-byte big-endian value of a control message body."""
    if len(payload) < 4:
        raise RemoteProtocolError(f"{what} body of {len(payload)} bytes (needs 4)")
    return int.from_bytes(payload[:4], "big")


def encode_set_chunk_size(chunk_size: int) -> bytes:
    """Set Chunk Size body (1..2**31-1 bytes)."""
    if not 1 <= chunk_size <= 0x7FFFFFFF:
        raise LocalProtocolError(f"chunk size {chunk_size} outside 1..{0x7FFFFFFF}")
    return chunk_size.to_bytes(4, "big")


def encode_abort(chunk_stream_id: int) -> bytes:
    """Abort body: the chunk stream whose partial message to drop."""
    return _u32(chunk_stream_id, "chunk stream id")


def encode_ack(sequence_number: int) -> bytes:
    """Acknowledgement body: bytes received so far, modulo 2**32."""
    return (sequence_number & _U32_MAX).to_bytes(4, "big")


def encode_window_ack_size(size: int) -> bytes:
    """Window Acknowledgement Size body, in bytes."""
    return _u32(size, "window acknowledgement size")


def encode_set_peer_bandwidth(size: int, limit_type: int = LIMIT_DYNAMIC) -> bytes:
    """Set Peer Bandwidth body: window size in bytes and limit type (0, 1, 2)."""
    if limit_type not in (LIMIT_HARD, LIMIT_SOFT, LIMIT_DYNAMIC):
        raise LocalProtocolError(f"peer bandwidth limit type {limit_type} not 0, 1 or 2")
    return _u32(size, "peer bandwidth") + bytes((limit_type,))


def decode_set_peer_bandwidth(payload: bytes) -> tuple[int, int]:
    """``(window size in bytes, limit type)`` from a Set Peer Bandwidth body."""
    if len(payload) < 5:
        raise RemoteProtocolError(f"Set Peer Bandwidth body of {len(payload)} bytes (needs 5)")
    return int.from_bytes(payload[:4], "big"), payload[4]


@dataclass(frozen=True, slots=True, kw_only=True)
class UserControl:
    """A User Control message.

    ``value`` is the stream id for the stream events, the timestamp for the
    ping events and the raw first 4 bytes otherwise; ``buffer_length_ms`` is
    set for Set Buffer Length only.
    """

    event_type: int
    value: int
    buffer_length_ms: int | None = None


def encode_user_control(event_type: int, value: int, buffer_length_ms: int | None = None) -> bytes:
    """User Control body: event type (2 bytes) and its data."""
    if not 0 <= event_type <= 0xFFFF:
        raise LocalProtocolError(f"user control event type {event_type} outside 0..65535")
    body = event_type.to_bytes(2, "big") + (value & _U32_MAX).to_bytes(4, "big")
    if event_type == SET_BUFFER_LENGTH:
        if buffer_length_ms is None:
            raise LocalProtocolError("Set Buffer Length needs buffer_length_ms")
        body += _u32(buffer_length_ms, "buffer length")
    return body


def decode_user_control(payload: bytes) -> UserControl:
    """Parse a User Control body."""
    if len(payload) < 6:
        raise RemoteProtocolError(f"User Control body of {len(payload)} bytes (needs 6)")
    event_type = int.from_bytes(payload[:2], "big")
    value = int.from_bytes(payload[2:6], "big")
    if event_type == SET_BUFFER_LENGTH:
        if len(payload) < 10:
            raise RemoteProtocolError(f"Set Buffer Length body of {len(payload)} bytes (needs 10)")
        return UserControl(
            event_type=event_type,
            value=value,
            buffer_length_ms=int.from_bytes(payload[6:10], "big"),
        )
    return UserControl(event_type=event_type, value=value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """An RTMP command: ``name(transaction_id, command_object, *args)``."""

    name: str
    transaction_id: float
    command_object: object = None
    args: tuple[object, ...] = ()


def encode_command(
    name: str, transaction_id: float, command_object: object = None, *args: object
) -> bytes:
    """AMF0 command body (message type 20)."""
    return amf0.encode_all(name, float(transaction_id), command_object, *args)


#: The first byte of an AMF3 command (17) or data (15) body: the encoding of
#: what follows, always 0 (AMF0 values, each of which may switch to AMF3).
AMF3_FORMAT_BYTE: Final = b"\x00"


def _switched(value: object) -> bytes:
    """One argument of an AMF3 body: AMF0 null as it is (one byte, as FMS
    writes it), anything else behind the AVM+ switch in its own AMF3 context."""
    if value is None:
        return b"\x05"
    return b"\x11" + amf3.encode(value)


def encode_command_amf3(
    name: str, transaction_id: float, command_object: object = None, *args: object
) -> bytes:
    """AMF3 command body (message type 17): the format byte, the name and
    transaction id in AMF0, the command object and arguments in AMF3."""
    parts = [AMF3_FORMAT_BYTE, amf0.encode_all(name, float(transaction_id))]
    parts.append(_switched(command_object))
    parts.extend(_switched(arg) for arg in args)
    return b"".join(parts)


def encode_data_amf3(name: str, *values: object) -> bytes:
    """AMF3 data body (message type 15): the format byte, the handler name in
    AMF0, the values in AMF3 (``@setDataFrame`` takes ``"onMetaData"`` and the
    metadata)."""
    return b"".join([AMF3_FORMAT_BYTE, amf0.encode(name), *map(_switched, values)])


def normalize_data_amf3(payload: bytes, *, max_size: int) -> bytes:
    """The AMF0 form of an AMF3 data body (type 15), as an FLV script tag
    carries it: players and recorders read AMF0 only.

    ``max_size`` bounds the result: AMF3 references let a small body stand
    for a large tree (up to ``amf0.MAX_AMF_VALUES`` values), and the AMF0
    form spells every one out, so the result may be no larger than the
    largest message the connection accepts. A value with no AMF0 form (a byte
    array) is the peer's error too.
    """
    if payload[:1] == AMF3_FORMAT_BYTE:
        payload = payload[1:]
    values = amf0.decode_all(payload)
    try:
        converted = amf0.encode_all(*values)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"AMF3 data message has no AMF0 form: {exc}") from None
    if len(converted) > max_size:
        raise RemoteProtocolError(
            f"AMF3 data message expands to {len(converted)} bytes of AMF0, "
            f"over the message limit ({max_size})"
        )
    return converted


def decode_command(payload: bytes, *, amf3: bool = False) -> Command:
    """Parse a command body; ``amf3=True`` for type 17 (leading format byte).

    Type 17 bodies start with one 0x00 byte, then AMF0 values that may switch
    to AMF3 per value (marker 0x11).
    """
    if amf3 and payload[:1] == b"\x00":
        payload = payload[1:]
    values = amf0.decode_all(payload)
    if not values or not isinstance(values[0], str):
        raise RemoteProtocolError("command body does not start with a command name string")
    name = values[0]
    transaction_id = 0.0
    if len(values) > 1:
        tid = values[1]
        if isinstance(tid, bool) or not isinstance(tid, int | float):
            raise RemoteProtocolError(f"command {name!r}: transaction id is not a number")
        transaction_id = float(tid)
    command_object = values[2] if len(values) > 2 else None
    return Command(
        name=name,
        transaction_id=transaction_id,
        command_object=command_object,
        args=tuple(values[3:]),
    )


# --- the play command's duration (RTMP spec 7.2.2.1) -----------------------------

#: The longest finite play duration honoured, in ms. Media timestamps are
#: 32 bits and two of them compare only within 2**31 ms of each other (about
#: 24.8 days), so a longer span cannot be measured on the media: such a play
#: goes on until the stream ends, as if it had asked for no duration.
MAX_PLAY_DURATION_MS: Final = 2**31 - 1

#: ``start`` values that only a client writing the spec's seconds sends: the
#: live markers -2 (live, else recorded) and -1 (live only) unscaled. Clients
#: that write milliseconds send them as -2000 and -1000.
_STARTS_IN_SECONDS: Final = frozenset({-2.0, -1.0})


def play_duration_ms(start: float, duration: float) -> int | None:
    """The media a ``play(name, start, duration)`` asks for, in ms (0: one
    frame), or None: until the stream ends.

    The spec gives start and duration in seconds (duration -1 until the end,
    0 a single frame, positive that long, any other negative as -1). What
    clients put on the wire is milliseconds. Decoded by rtmpd from the real
    clients: rtmpdump 2.4 ``-B 5`` sends start 0 and duration 5000; ``-v -B
    5`` start -1000 and 5000; ``-A 2 -B 5`` start 2000 and duration 3000 (the
    stop minus the start); ``-v`` alone start -1000 and no duration. ffmpeg
    sends start -2000 (``-rtmp_live live``: -1000, ``recorded``: 0) and
    never a duration. Red5, written against the Flash Player, reads both in
    milliseconds too. So the duration is milliseconds, except after a start
    of exactly -2 or -1, the spec's markers in its own unit: such a client
    follows the spec's seconds, and so does its duration. (A start of 0 or
    more says nothing of the unit; librtmp sends 0 by default, so it reads
    as milliseconds.)

    NaN, negative and infinite durations, and any longer than
    :data:`MAX_PLAY_DURATION_MS`, mean until the end; a fraction of a
    millisecond rounds up, so only 0 asks for a single frame.
    """
    if math.isnan(duration) or duration < 0:
        return None
    ms = duration * 1000.0 if start in _STARTS_IN_SECONDS else duration
    if ms > MAX_PLAY_DURATION_MS:
        return None
    return math.ceil(ms)


# Aggregate sub-message: type (1) size (3) timestamp (3) timestamp extension
# (1) stream id (3) body (size) back pointer (4, = size + 11): an FLV tag.
_AGG_HEADER: Final = 11
_AGG_TRAILER: Final = 4


def split_aggregate(payload: bytes, message_timestamp_ms: int) -> list[tuple[int, int, bytes]]:
    """Split an Aggregate message into ``(type_id, timestamp_ms, body)``.

    Sub-message timestamps are re-based: the first sub-message gets the
    aggregate message's own timestamp and the others keep their offsets from
    it (modulo 2**32). Back pointers must equal body size + 11.
    """
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    end = len(payload)
    first_ts: int | None = None
    view = memoryview(payload)
    while pos < end:
        if end - pos < _AGG_HEADER:
            raise RemoteProtocolError(
                f"aggregate sub-message header truncated at offset {pos} ({end - pos} bytes left)"
            )
        type_id = payload[pos]
        size = int.from_bytes(payload[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(payload[pos + 4 : pos + 7], "big") | (payload[pos + 7] << 24)
        body_end = pos + _AGG_HEADER + size
        if body_end + _AGG_TRAILER > end:
            raise RemoteProtocolError(
                f"aggregate sub-message of {size} bytes at offset {pos} overruns the "
                f"{end}-byte aggregate"
            )
        back = int.from_bytes(payload[body_end : body_end + _AGG_TRAILER], "big")
        if back != size + _AGG_HEADER:
            raise RemoteProtocolError(
                f"aggregate back pointer {back} at offset {body_end} does not match "
                f"sub-message size {size} + 11"
            )
        if first_ts is None:
            first_ts = ts
        rebased = (message_timestamp_ms + ts - first_ts) & _U32_MAX
        out.append((type_id, rebased, bytes(view[pos + _AGG_HEADER : body_end])))
        pos = body_end + _AGG_TRAILER
    return out


def encode_aggregate(messages: list[tuple[int, int, bytes]]) -> bytes:
    """Build an Aggregate body from ``(type_id, timestamp_ms, body)`` (for tests and tools)."""
    parts: list[bytes] = []
    for type_id, ts, body in messages:
        if len(body) > 0xFFFFFF:
            raise LocalProtocolError(f"aggregate sub-message of {len(body)} bytes is too large")
        ts &= _U32_MAX
        parts.append(
            bytes((type_id,))
            + len(body).to_bytes(3, "big")
            + (ts & 0xFFFFFF).to_bytes(3, "big")
            + bytes((ts >> 24,))
            + b"\x00\x00\x00"
        )
        parts.append(body)
        parts.append((len(body) + _AGG_HEADER).to_bytes(4, "big"))
    return b"".join(parts)
