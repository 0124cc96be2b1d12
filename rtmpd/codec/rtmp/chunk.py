"""The RTMP chunk stream (RTMP spec 5.3): messages cut into chunks, interleaved.

A chunk is a basic header, a message header whose size depends on its type
(``fmt``), an optional extended timestamp and up to ``chunk_size`` payload
bytes::

    basic header   fmt (2 bits) | csid (6 bits)        csid 2..63
                   fmt | 0, csid - 64 (1 byte)         csid 64..319
                   fmt | 1, csid - 64 (2 bytes, LE)    csid 320..65599
    message header fmt 0: timestamp (3) length (3) type (1) stream id (4, LE)
                   fmt 1: timestamp delta (3) length (3) type (1)
                   fmt 2: timestamp delta (3)
                   fmt 3: nothing (same as the previous chunk of this csid)
    extended ts    4 bytes when the 3-byte field is 0xFFFFFF, and repeated
                   on the type-3 chunks that follow (Flash/FFmpeg)

:class:`ChunkReader` turns bytes into :class:`Message` objects (applying Set
Chunk Size and Abort itself); :class:`ChunkWriter` does the reverse with
header compression; :func:`encode_message` encodes one message with a full
header, for bytes shared by many viewers, and :func:`encoded_messages`
reads the headers of such bytes back.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Final, cast

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.sentinel import NEED_DATA, NeedData
from rtmpd.shared import NO_ENTRIES, own, shared

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_CHUNK_STREAMS",
    "MAX_CHUNK_STREAM_ID",
    "MAX_MESSAGE_SIZE",
    "MIN_CHUNK_STREAM_ID",
    "NEED_DATA",
    "ChunkReader",
    "ChunkWriter",
    "HeaderStates",
    "Message",
    "NeedData",
    "encode_message",
    "encoded_messages",
]

# Chunk size both directions start with (RTMP spec 5.4.1).
DEFAULT_CHUNK_SIZE: Final = 128
# Set Chunk Size carries 31 bits; bit 31 must be zero (RTMP spec 5.4.1).
MAX_CHUNK_SIZE: Final = 0x7FFFFFFF
# Largest message we buffer. The wire allows 16 MiB - 1 (3-byte length); the
# largest legitimate messages are video keyframes, which at high bitrate 4K
# reach 2-3 MB. 8 MiB keeps headroom while bounding memory per connection.
MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
# Distinct chunk stream ids one peer may use. Encoders use fewer than ten
# (control, command, audio, video, data); each tracked id costs state and may
# hold a partial message.
MAX_CHUNK_STREAMS: Final = 64
# Bytes of unfinished messages held across all chunk streams, as a multiple of
# max_message_size: audio and video interleave, so two partial messages at
# once are normal, but many large ones at once are not.
PARTIAL_BYTES_FACTOR: Final = 2
MIN_CHUNK_STREAM_ID: Final = 2
MAX_CHUNK_STREAM_ID: Final = 65599

_TS_MASK: Final = 0xFFFFFFFF
_EXTENDED: Final = 0xFFFFFF
# Compact the input buffer once this many consumed bytes sit at its front.
_COMPACT_AT: Final = 64 * 1024

_TYPE_SET_CHUNK_SIZE: Final = 1
_TYPE_ABORT: Final = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One complete RTMP message.

    ``timestamp_ms`` is the absolute message timestamp (deltas already
    applied), modulo 2**32.
    """

    chunk_stream_id: int
    type_id: int
    stream_id: int
    timestamp_ms: int
    payload: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.type_id <= 0xFF:
            raise LocalProtocolError(f"message type {self.type_id} outside 0..255")
        if not 0 <= self.stream_id <= 0xFFFFFFFF:
            raise LocalProtocolError(f"message stream id {self.stream_id} outside 0..2**32-1")


def _check_chunk_size(size: int) -> None:
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise LocalProtocolError(f"chunk size {size} outside 1..{MAX_CHUNK_SIZE}")


def _check_csid(csid: int) -> None:
    if not MIN_CHUNK_STREAM_ID <= csid <= MAX_CHUNK_STREAM_ID:
        raise LocalProtocolError(
            f"chunk stream id {csid} outside {MIN_CHUNK_STREAM_ID}..{MAX_CHUNK_STREAM_ID}"
        )


#: The parts of a chunk stream with no message in progress: a list exists only
#: while one is (a tuple, so that an append to it would fail loudly). Every
#: connection tracks a few chunk streams for as long as it lives, and an empty
#: list each was 56 bytes of every RTMP viewer.
_NO_PARTS: Final[list[bytes]] = cast("list[bytes]", ())


class _ReadState:
    """What the reader remembers about one chunk stream id."""

    __slots__ = (
        "delta",
        "ext",
        "in_progress",
        "length",
        "parts",
        "received",
        "stream_id",
        "timestamp",
        "type_id",
    )

    def __init__(self) -> None:
        self.timestamp = 0  # absolute timestamp of the current/last message
        self.delta = 0  # timestamp field of the last fmt 0/1/2 header
        self.ext: int | None = None  # extended timestamp of the last header, if any
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.in_progress = False
        self.received = 0
        self.parts: list[bytes] = _NO_PARTS


class ChunkReader:
    """Reassemble RTMP messages from the chunk stream.

    ``receive_data`` appends bytes; ``next_event`` returns the next complete
    :class:`Message` or :data:`NEED_DATA`. Set Chunk Size (type 1) takes effect
    as soon as it is returned, Abort (type 2) drops the named chunk stream's
    partial message; both are still returned. Errors are
    :class:`RemoteProtocolError`; after one the reader is unusable.
    """

    __slots__ = (
        "_buf", "_chunk_size", "_max_chunk_streams", "_max_message_size", "_max_partial",
        "_partial_bytes", "_pos", "_streams", "bytes_received",
    )

    def __init__(
        self,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        max_chunk_streams: int = MAX_CHUNK_STREAMS,
    ) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._streams: dict[int, _ReadState] = {}
        self._chunk_size = DEFAULT_CHUNK_SIZE
        self._max_message_size = max_message_size
        self._max_chunk_streams = max_chunk_streams
        self._max_partial = PARTIAL_BYTES_FACTOR * max_message_size
        self._partial_bytes = 0
        self.bytes_received = 0
        """Total bytes passed to ``receive_data`` (for acknowledgements)."""

    @property
    def chunk_size(self) -> int:
        """Current incoming chunk size in bytes."""
        return self._chunk_size

    @property
    def buffered(self) -> int:
        """Received bytes not yet parsed into chunks."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self.bytes_received += len(data)
        if self._pos:
            if self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            elif self._pos >= _COMPACT_AT and 2 * self._pos >= len(self._buf):
                del self._buf[: self._pos]
                self._pos = 0
        self._buf += data

    def next_event(self) -> Message | NeedData:
        """Parse chunks until a message completes; :data:`NEED_DATA` if none can."""
        while True:
            result = self._next_chunk()
            if result is None:
                continue
            return result

    def _next_chunk(self) -> Message | NeedData | None:
        buf = self._buf
        end = len(buf)
        p = self._pos
        if p >= end:
            return NEED_DATA
        b0 = buf[p]
        fmt = b0 >> 6
        csid = b0 & 0x3F
        p += 1
        if csid == 0:
            if p + 1 > end:
                return NEED_DATA
            csid = buf[p] + 64
            p += 1
        elif csid == 1:
            if p + 2 > end:
                return NEED_DATA
            csid = buf[p] + (buf[p + 1] << 8) + 64
            p += 2

        st = self._streams.get(csid)
        if st is None and fmt != 0:
            raise RemoteProtocolError(
                f"chunk stream {csid} starts with a type-{fmt} header; the first must be type 0"
            )
        field = 0
        length = type_id = stream_id = 0
        if fmt == 0:
            if p + 11 > end:
                return NEED_DATA
            field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
            type_id = buf[p + 6]
            stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
            p += 11
        elif fmt == 1:
            if p + 7 > end:
                return NEED_DATA
            field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
            type_id = buf[p + 6]
            p += 7
        elif fmt == 2:
            if p + 3 > end:
                return NEED_DATA
            field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            p += 3

        ext: int | None = None
        if fmt != 3:
            assert st is not None or fmt == 0
            if st is not None and st.in_progress:
                raise RemoteProtocolError(
                    f"type-{fmt} header on chunk stream {csid} inside an unfinished message"
                )
            if field == _EXTENDED:
                if p + 4 > end:
                    return NEED_DATA
                ext = int.from_bytes(buf[p : p + 4], "big")
                field = ext
                p += 4
            if fmt != 2 and length > self._max_message_size:
                raise RemoteProtocolError(
                    f"message of {length} bytes (type {type_id}) exceeds "
                    f"max_message_size ({self._max_message_size})",
                    hint="close",
                )
        else:
            assert st is not None
            if st.ext is not None:
                # Type-3 chunks after an extended timestamp repeat it (Flash,
                # FFmpeg, the spec) or not (some encoders): accept both by
                # comparing with the stored value.
                if p + 4 > end:
                    return NEED_DATA
                if int.from_bytes(buf[p : p + 4], "big") == st.ext:
                    p += 4

        # Work out the payload size of this chunk before touching any state,
        # so that NEED_DATA leaves everything as it was.
        continuing = fmt == 3 and st is not None and st.in_progress
        if continuing:
            assert st is not None
            msg_length = st.length
            already = st.received
        elif fmt == 0 or fmt == 1:
            msg_length = length
            already = 0
        else:
            assert st is not None
            msg_length = st.length
            already = 0
        size = min(self._chunk_size, msg_length - already)
        if p + size > end:
            return NEED_DATA

        if st is None:
            if len(self._streams) >= self._max_chunk_streams:
                raise RemoteProtocolError(
                    f"more than max_chunk_streams ({self._max_chunk_streams}) chunk stream ids"
                )
            st = _ReadState()
            self._streams[csid] = st
        if not continuing:
            if fmt == 0:
                st.timestamp = field
                st.delta = field
                st.stream_id = stream_id
            elif fmt == 3:
                st.timestamp = (st.timestamp + st.delta) & _TS_MASK
            else:
                st.timestamp = (st.timestamp + field) & _TS_MASK
                st.delta = field
            if fmt != 3:
                st.ext = ext
            if fmt <= 1:
                st.length = length
                st.type_id = type_id
            st.received = 0

        with memoryview(buf) as view:
            piece = bytes(view[p : p + size])
        self._pos = p + size

        if already == 0 and size == msg_length:
            payload = piece
        else:
            if already == 0:
                st.parts = [piece]
            else:
                st.parts.append(piece)
            st.received += size
            self._partial_bytes += size
            if self._partial_bytes > self._max_partial:
                raise RemoteProtocolError(
                    f"{self._partial_bytes} bytes of unfinished messages exceed "
                    f"{PARTIAL_BYTES_FACTOR} x max_message_size ({self._max_partial})"
                )
            if st.received < msg_length and st.ext is None and csid < 64:
                self._take_continuations(st, csid, msg_length)
            if st.received < msg_length:
                st.in_progress = True
                return None
            payload = b"".join(st.parts)
            self._partial_bytes -= st.received
            st.parts = _NO_PARTS
            st.in_progress = False

        message = Message(
            chunk_stream_id=csid,
            type_id=st.type_id,
            stream_id=st.stream_id,
            timestamp_ms=st.timestamp,
            payload=payload,
        )
        if st.type_id == _TYPE_SET_CHUNK_SIZE:
            self._apply_set_chunk_size(payload)
        elif st.type_id == _TYPE_ABORT:
            self._apply_abort(payload)
        return message

    def _take_continuations(self, st: _ReadState, csid: int, msg_length: int) -> None:
        """Take the rest of ``st``'s message as far as the buffer holds it
        in whole type-3 chunks of the same chunk stream, one after another.

        A large message (a video frame: 5 chunks of 4096 bytes) mostly
        arrives like that, so this takes its chunks in one loop instead of
        one :meth:`_next_chunk` each, with the same effect: only one-byte
        basic headers (csid 2..63) without an extended timestamp qualify,
        and a chunk that would pass the partial-bytes limit is left to
        :meth:`_next_chunk`, which raises.
        """
        buf = self._buf
        end = len(buf)
        p = self._pos
        marker = 0xC0 | csid  # fmt 3
        chunk_size = self._chunk_size
        received = st.received
        room = self._max_partial - self._partial_bytes
        parts = st.parts
        with memoryview(buf) as view:
            while received < msg_length and p < end and buf[p] == marker:
                size = min(chunk_size, msg_length - received)
                if p + 1 + size > end or size > room:
                    break
                parts.append(bytes(view[p + 1 : p + 1 + size]))
                p += 1 + size
                received += size
                room -= size
        self._partial_bytes += received - st.received
        st.received = received
        self._pos = p

    def _apply_set_chunk_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise RemoteProtocolError(f"Set Chunk Size payload of {len(payload)} bytes (needs 4)")
        size = int.from_bytes(payload[:4], "big")
        if size & 0x80000000:
            raise RemoteProtocolError(
                f"Set Chunk Size {size} has bit 31 set (maximum {MAX_CHUNK_SIZE})"
            )
        if size == 0:
            raise RemoteProtocolError("Set Chunk Size 0 (minimum 1)")
        self._chunk_size = size

    def _apply_abort(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise RemoteProtocolError(f"Abort payload of {len(payload)} bytes (needs 4)")
        target = self._streams.get(int.from_bytes(payload[:4], "big"))
        if target is not None and target.in_progress:
            self._partial_bytes -= target.received
            target.in_progress = False
            target.received = 0
            target.parts = _NO_PARTS


# --- writing -----------------------------------------------------------------


def _make_basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes(((fmt << 6) | 1, rest & 0xFF, rest >> 8))


# Basic headers for the common one-byte chunk stream ids, indexed [fmt][csid].
_BASIC: Final = tuple(tuple(_make_basic_header(fmt, c) for c in range(64)) for fmt in range(4))


def _basic_header(fmt: int, csid: int) -> bytes:
    return _BASIC[fmt][csid] if csid < 64 else _make_basic_header(fmt, csid)


def _chunked(first_header: bytes, continuation: bytes, payload: bytes, chunk_size: int) -> bytes:
    """Header + payload cut into chunk_size pieces separated by ``continuation``."""
    size = len(payload)
    if size <= chunk_size:
        return first_header + payload
    view = memoryview(payload)
    parts: list[bytes | memoryview] = [first_header, view[:chunk_size]]
    for start in range(chunk_size, size, chunk_size):
        parts.append(continuation)
        parts.append(view[start : start + chunk_size])
    return b"".join(parts)


def _check_message(csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
    _check_csid(csid)
    if not 0 <= type_id <= 0xFF:
        raise LocalProtocolError(f"message type {type_id} outside 0..255")
    if not 0 <= stream_id <= 0xFFFFFFFF:
        raise LocalProtocolError(f"message stream id {stream_id} outside 0..2**32-1")
    if len(payload) > 0xFFFFFF:
        raise LocalProtocolError(f"message of {len(payload)} bytes exceeds the 3-byte length")


def encode_message(
    *,
    chunk_size: int,
    chunk_stream_id: int,
    type_id: int,
    stream_id: int,
    timestamp_ms: int,
    payload: bytes,
) -> bytes:
    """Encode one message with a type-0 header (type-3 continuation chunks).

    The result depends on nothing but the arguments, so the server encodes
    each media message once and sends the same bytes to every viewer whose
    outgoing chunk size is ``chunk_size``. ``timestamp_ms`` is taken mod 2**32.
    """
    _check_chunk_size(chunk_size)
    _check_message(chunk_stream_id, type_id, stream_id, payload)
    ts = timestamp_ms & _TS_MASK
    basic = _basic_header(0, chunk_stream_id)
    stream_le = stream_id.to_bytes(4, "little")
    if ts >= _EXTENDED:
        ext = ts.to_bytes(4, "big")
        header = b"".join(
            (
                basic,
                ((_EXTENDED << 32) | (len(payload) << 8) | type_id).to_bytes(7, "big"),
                stream_le,
                ext,
            )
        )
        continuation = _basic_header(3, chunk_stream_id) + ext
    else:
        header = b"".join(
            (basic, ((ts << 32) | (len(payload) << 8) | type_id).to_bytes(7, "big"), stream_le)
        )
        continuation = _basic_header(3, chunk_stream_id)
    return _chunked(header, continuation, payload, chunk_size)


def encoded_messages(data: bytes, chunk_size: int) -> Iterator[tuple[int, int, int]]:
    """``(end, type_id, timestamp_ms)`` of each message in ``data``, which is
    :func:`encode_message` results at ``chunk_size`` laid end to end.

    Only headers are read: a message's chunk count follows from its length,
    so each costs the same whatever its size. ``end`` is the offset just
    past the message. Bytes that are not such messages (another header
    type, a cut message) raise :class:`LocalProtocolError`: they are ours,
    so that is a caller's mistake.
    """
    _check_chunk_size(chunk_size)
    size = len(data)
    pos = 0
    while pos < size:
        first = data[pos]
        if first >> 6:
            raise LocalProtocolError(
                f"chunk header type {first >> 6} at offset {pos}; encode_message writes type 0"
            )
        low = first & 0x3F
        basic = 1 if low > 1 else 2 if low == 0 else 3
        head = pos + basic
        body = head + 11
        if body > size:
            raise LocalProtocolError(f"message header cut at offset {pos} of {size} bytes")
        field = int.from_bytes(data[head : head + 6], "big")
        timestamp, length = field >> 24, field & 0xFFFFFF
        continuation = basic
        if timestamp == _EXTENDED:
            if body + 4 > size:
                raise LocalProtocolError(f"extended timestamp cut at offset {pos}")
            timestamp = int.from_bytes(data[body : body + 4], "big")
            body += 4
            continuation += 4
        chunks = -(-length // chunk_size) if length else 1
        end = body + length + (chunks - 1) * continuation
        if end > size:
            raise LocalProtocolError(
                f"message of {length} bytes at offset {pos} runs past the {size} bytes given"
            )
        yield end, data[head + 6], timestamp
        pos = end


class _WriteState:
    """The last header a writer sent on one chunk stream; never changed once
    stored (the writer stores a new one), so copies of a writer share them."""

    __slots__ = ("delta", "ext", "length", "stream_id", "timestamp", "type_id")

    def __init__(
        self, timestamp: int, delta: int, ext: int | None, length: int, type_id: int, stream_id: int
    ) -> None:
        self.timestamp = timestamp
        self.delta = delta
        self.ext = ext
        self.length = length
        self.type_id = type_id
        self.stream_id = stream_id


#: The last headers of some chunk streams, saved by :meth:`ChunkWriter.states`.
HeaderStates = dict[int, _WriteState | None]


class ChunkWriter:
    """Encode messages into chunks, compressing headers per chunk stream id.

    The header type is chosen against the previous message on the same
    chunk stream: type 0 for the first message, a different message stream
    id or a timestamp going backwards; type 1 when length or type changed;
    type 2 when only the timestamp delta changed; type 3 otherwise.
    """

    __slots__ = ("_chunk_size", "_streams")

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _check_chunk_size(chunk_size)
        self._chunk_size = chunk_size
        #: Each chunk stream's last header: a :func:`rtmpd.shared.shared` dict
        #: after copy() and restore(), one of its own once it writes.
        self._streams: dict[int, _WriteState] = NO_ENTRIES

    @property
    def chunk_size(self) -> int:
        """Current outgoing chunk size in bytes."""
        return self._chunk_size

    def set_chunk_size(self, chunk_size: int) -> None:
        """Use ``chunk_size`` from now on (send Set Chunk Size to the peer first)."""
        _check_chunk_size(chunk_size)
        self._chunk_size = chunk_size

    @property
    def pristine(self) -> bool:
        """Whether nothing was written yet and the chunk size is the default:
        what this writer produces next is what any new writer would."""
        return not self._streams and self._chunk_size == DEFAULT_CHUNK_SIZE

    def copy(self) -> ChunkWriter:
        """An independent writer in the same state (chunk size and each
        chunk stream's last header): it goes on as this one would."""
        twin = ChunkWriter(self._chunk_size)
        # The states themselves are shared: a writer never changes one it
        # stored (it stores a new one), and each RTMP connection starts as a
        # copy of one connect reply's writer, for as long as it lives. So is
        # the dict holding them, until one of the two writes (copy on write).
        self._streams = twin._streams = shared(self._streams)
        return twin

    def state_of(self, chunk_stream_ids: tuple[int, ...]) -> Hashable:
        """What the next messages written on ``chunk_stream_ids`` depend on
        besides their own fields (the chunk size and each one's last header),
        as a hashable value: equal values, equal bytes."""
        streams = self._streams
        return (self._chunk_size, *(
            None if (state := streams.get(csid)) is None
            else (state.timestamp, state.delta, state.ext, state.length,
                  state.type_id, state.stream_id)
            for csid in chunk_stream_ids
        ))

    def states(self, chunk_stream_ids: tuple[int, ...]) -> HeaderStates:
        """The last headers on ``chunk_stream_ids``, for :meth:`restore`
        (shared, not copied: a writer never changes a state it stored)."""
        streams = self._streams
        return {csid: streams.get(csid) for csid in chunk_stream_ids}

    def restore(self, states: HeaderStates) -> None:
        """Take up the header state :meth:`states` returned, as if this
        writer had written what the writer it came from wrote since."""
        streams = dict(self._streams)
        for csid, state in states.items():
            if state is None:
                streams.pop(csid, None)
            else:
                streams[csid] = state
        # Writers that restore the same shared states (every player after
        # the same play reply) hold one dict.
        self._streams = shared(streams)

    def forget(self, chunk_stream_id: int) -> None:
        """Drop header state for a csid, e.g. after other code wrote on it."""
        if chunk_stream_id in self._streams:
            self._streams = own(self._streams)
            del self._streams[chunk_stream_id]

    def write(
        self,
        chunk_stream_id: int,
        type_id: int,
        stream_id: int,
        timestamp_ms: int,
        payload: bytes,
    ) -> bytes:
        """Encode one message; returns the bytes to send."""
        csid = chunk_stream_id
        _check_message(csid, type_id, stream_id, payload)
        ts = timestamp_ms & _TS_MASK
        length = len(payload)
        prev = self._streams.get(csid)
        if prev is None or prev.stream_id != stream_id or ts < prev.timestamp:
            fmt, field = 0, ts
        else:
            delta = ts - prev.timestamp
            if length != prev.length or type_id != prev.type_id:
                fmt, field = 1, delta
            elif delta != prev.delta:
                fmt, field = 2, delta
            else:
                fmt, field = 3, delta

        if fmt == 3:
            assert prev is not None
            ext = prev.ext
            header = _basic_header(3, csid)
            if ext is not None:
                header += ext.to_bytes(4, "big")
            if ts != prev.timestamp:
                # A new state, not a change to this one: copies share them.
                self._streams = own(self._streams)
                self._streams[csid] = _WriteState(
                    ts, prev.delta, ext, prev.length, prev.type_id, prev.stream_id
                )
        else:
            ext = field if field >= _EXTENDED else None
            ts_field = _EXTENDED if ext is not None else field
            basic = _basic_header(fmt, csid)
            if fmt == 0:
                body = ((ts_field << 32) | (length << 8) | type_id).to_bytes(7, "big")
                body += stream_id.to_bytes(4, "little")
            elif fmt == 1:
                body = ((ts_field << 32) | (length << 8) | type_id).to_bytes(7, "big")
            else:
                body = ts_field.to_bytes(3, "big")
            header = basic + body
            if ext is not None:
                header += ext.to_bytes(4, "big")
            self._streams = own(self._streams)
            self._streams[csid] = _WriteState(ts, field, ext, length, type_id, stream_id)
        continuation = _basic_header(3, csid)
        if ext is not None:
            continuation += ext.to_bytes(4, "big")
        return _chunked(header, continuation, payload, self._chunk_size)
