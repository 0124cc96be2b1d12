"""RTMP chunk stream: one case table of (messages, chunk size) -> exact bytes,
feeding the writer test, the reader round trips and the truncation/fuzz tests."""

from __future__ import annotations

import contextlib
import itertools
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.rtmp.chunk import (
    MAX_MESSAGE_SIZE,
    NEED_DATA,
    ChunkReader,
    ChunkWriter,
    Message,
    encode_message,
)

M = tuple[int, int, int, int, bytes]  # csid, type, stream id, timestamp, payload


def basic(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    return bytes(((fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8))


def u24(v: int) -> bytes:
    return v.to_bytes(3, "big")


def h0(csid: int, ts: int, length: int, type_id: int, sid: int) -> bytes:
    if ts >= 0xFFFFFF:
        return (
            basic(0, csid)
            + b"\xff\xff\xff"
            + u24(length)
            + bytes((type_id,))
            + sid.to_bytes(4, "little")
            + ts.to_bytes(4, "big")
        )
    return basic(0, csid) + u24(ts) + u24(length) + bytes((type_id,)) + sid.to_bytes(4, "little")


def h1(csid: int, delta: int, length: int, type_id: int) -> bytes:
    return basic(1, csid) + u24(delta) + u24(length) + bytes((type_id,))


def h2(csid: int, delta: int) -> bytes:
    if delta >= 0xFFFFFF:
        return basic(2, csid) + b"\xff\xff\xff" + delta.to_bytes(4, "big")
    return basic(2, csid) + u24(delta)


def h3(csid: int, ext: int | None = None) -> bytes:
    return basic(3, csid) + (b"" if ext is None else ext.to_bytes(4, "big"))


def pay(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


@dataclass(frozen=True)
class Case:
    name: str
    chunk_size: int
    messages: list[M]
    wire: bytes


P300, P5000, P70000 = pay(300), pay(5000, 1), pay(70000, 2)

CASES = [
    Case("type 0 single chunk", 128, [(3, 20, 0, 0, b"hello")], h0(3, 0, 5, 20, 0) + b"hello"),
    Case(
        "types 0, 2, 3, 1, 1, 0 (new stream id), 0 (timestamp backwards)",
        128,
        [
            (4, 8, 1, 1000, b"aaaa"),
            (4, 8, 1, 1020, b"bbbb"),
            (4, 8, 1, 1040, b"cccc"),
            (4, 8, 1, 1060, b"dddddd"),
            (4, 9, 1, 1070, b"eeeeee"),
            (4, 9, 2, 1080, b"ff"),
            (4, 9, 2, 500, b"gg"),
        ],
        h0(4, 1000, 4, 8, 1)
        + b"aaaa"
        + h2(4, 20)
        + b"bbbb"
        + h3(4)
        + b"cccc"
        + h1(4, 20, 6, 8)
        + b"dddddd"
        + h1(4, 10, 6, 9)
        + b"eeeeee"
        + h0(4, 1080, 2, 9, 2)
        + b"ff"
        + h0(4, 500, 2, 9, 2)
        + b"gg",
    ),
    Case(
        "type 3 after type 0 repeats the timestamp as delta",
        128,
        [(5, 18, 1, 40, b"x"), (5, 18, 1, 80, b"y")],
        h0(5, 40, 1, 18, 1) + b"x" + h3(5) + b"y",
    ),
    Case(
        "chunk size 128 splits 300 bytes",
        128,
        [(6, 9, 1, 0, P300)],
        h0(6, 0, 300, 9, 1) + P300[:128] + h3(6) + P300[128:256] + h3(6) + P300[256:],
    ),
    Case(
        "chunk size 1",
        1,
        [(3, 20, 0, 0, b"abc")],
        h0(3, 0, 3, 20, 0) + b"a" + h3(3) + b"b" + h3(3) + b"c",
    ),
    Case(
        "chunk size 4096",
        4096,
        [(6, 9, 1, 33, P5000)],
        h0(6, 33, 5000, 9, 1) + P5000[:4096] + h3(6) + P5000[4096:],
    ),
    Case(
        "chunk size 65536",
        65536,
        [(6, 9, 1, 33, P70000)],
        h0(6, 33, 70000, 9, 1) + P70000[:65536] + h3(6) + P70000[65536:],
    ),
    Case(
        "extended timestamp repeated on continuation chunks",
        128,
        [(4, 9, 1, 0x1000000, P300)],
        h0(4, 0x1000000, 300, 9, 1)
        + P300[:128]
        + h3(4, 0x1000000)
        + P300[128:256]
        + h3(4, 0x1000000)
        + P300[256:],
    ),
    Case(
        "extended delta on type 2, repeated on a type-3 message",
        128,
        [(4, 8, 1, 0, b"a"), (4, 8, 1, 0x1000000, b"b"), (4, 8, 1, 0x2000000, b"c")],
        h0(4, 0, 1, 8, 1) + b"a" + h2(4, 0x1000000) + b"b" + h3(4, 0x1000000) + b"c",
    ),
    Case(
        "timestamp exactly 0xFFFFFF is extended",
        128,
        [(4, 8, 1, 0xFFFFFF, b"z")],
        h0(4, 0xFFFFFF, 1, 8, 1) + b"z",
    ),
    Case(
        "two-byte and three-byte chunk stream ids",
        128,
        [(100, 8, 1, 0, b"two"), (400, 8, 1, 0, b"three"), (65599, 8, 1, 0, b"max")],
        bytes((0x00, 36))
        + h0(100, 0, 3, 8, 1)[2:]
        + b"two"
        + bytes((0x01, 0x50, 0x01))
        + h0(400, 0, 5, 8, 1)[3:]
        + b"three"
        + bytes((0x01, 0xFF, 0xFF))
        + h0(65599, 0, 3, 8, 1)[3:]
        + b"max",
    ),
    Case(
        "empty payload",
        128,
        [(3, 20, 0, 7, b"")],
        h0(3, 7, 0, 20, 0),
    ),
]
IDS = [c.name for c in CASES]


def write_all(case: Case) -> bytes:
    writer = ChunkWriter(case.chunk_size)
    return b"".join(writer.write(*m) for m in case.messages)


def reader_for(case: Case) -> ChunkReader:
    reader = ChunkReader()
    reader._chunk_size = case.chunk_size  # as if Set Chunk Size had been received
    return reader


def drain(reader: ChunkReader) -> list[M]:
    out: list[M] = []
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            return out
        assert isinstance(event, Message)
        out.append(
            (
                event.chunk_stream_id,
                event.type_id,
                event.stream_id,
                event.timestamp_ms,
                event.payload,
            )
        )


def feed(case: Case, pieces: list[bytes]) -> list[M]:
    reader = reader_for(case)
    out: list[M] = []
    for piece in pieces:
        reader.receive_data(piece)
        out += drain(reader)
    assert reader.bytes_received == sum(map(len, pieces))
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_writer_gives_exact_bytes(case: Case) -> None:
    assert write_all(case) == case.wire


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reader_whole(case: Case) -> None:
    assert feed(case, [case.wire]) == case.messages


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reader_byte_by_byte(case: Case) -> None:
    if len(case.wire) > 20_000:
        pieces = [case.wire[i : i + 997] for i in range(0, len(case.wire), 997)]
    else:
        pieces = [case.wire[i : i + 1] for i in range(len(case.wire))]
    assert feed(case, pieces) == case.messages


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reader_random_splits(case: Case) -> None:
    rng = random.Random(case.name)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(case.wire)), min(8, len(case.wire) - 1)))
        bounds = [0, *cuts, len(case.wire)]
        pieces = [case.wire[a:b] for a, b in itertools.pairwise(bounds)]
        assert feed(case, pieces) == case.messages


@pytest.mark.parametrize("case", [c for c in CASES if len(c.wire) < 2000], ids=lambda c: c.name)
def test_every_prefix_parses_a_prefix_of_the_messages(case: Case) -> None:
    for cut in range(len(case.wire) + 1):
        got = feed(case, [case.wire[:cut]])
        assert got == case.messages[: len(got)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_encode_message_matches_a_fresh_writer_for_the_first_message(case: Case) -> None:
    csid, type_id, sid, ts, payload = case.messages[0]
    shared = encode_message(
        chunk_size=case.chunk_size,
        chunk_stream_id=csid,
        type_id=type_id,
        stream_id=sid,
        timestamp_ms=ts,
        payload=payload,
    )
    assert shared == ChunkWriter(case.chunk_size).write(*case.messages[0])


def test_encode_message_always_uses_full_headers_and_reads_back() -> None:
    messages = [(6, 9, 1, t, pay(300, t)) for t in (0, 40, 80, 0x1000000, 5)]
    wire = b"".join(
        encode_message(
            chunk_size=128, chunk_stream_id=c, type_id=ty, stream_id=s, timestamp_ms=t, payload=p
        )
        for c, ty, s, t, p in messages
    )
    reader = ChunkReader()
    reader.receive_data(wire)
    assert drain(reader) == messages


def test_timestamps_wrap_modulo_2_32() -> None:
    writer = ChunkWriter()
    wire = writer.write(4, 8, 1, 2**32 + 5, b"a")
    assert wire == h0(4, 5, 1, 8, 1) + b"a"
    # deltas accumulate and wrap in the reader too
    reader = ChunkReader()
    reader.receive_data(h0(4, 0xFFFFFFF0, 1, 8, 1) + b"a" + h2(4, 0x20) + b"b")
    assert [m[3] for m in drain(reader)] == [0xFFFFFFF0, 0x10]


def test_interleaved_chunk_streams() -> None:
    audio, video = pay(200, 3), pay(300, 4)
    wire = (
        h0(6, 0, 300, 9, 1)
        + video[:128]
        + h0(4, 0, 200, 8, 1)
        + audio[:128]
        + h3(6)
        + video[128:256]
        + h3(4)
        + audio[128:]
        + h3(6)
        + video[256:]
    )
    reader = ChunkReader()
    reader.receive_data(wire)
    assert drain(reader) == [(4, 8, 1, 0, audio), (6, 9, 1, 0, video)]


def test_continuation_without_repeated_extended_timestamp_is_accepted() -> None:
    wire = h0(4, 0x1000000, 300, 9, 1) + P300[:128] + h3(4) + P300[128:256] + h3(4) + P300[256:]
    reader = ChunkReader()
    reader.receive_data(wire)
    assert drain(reader) == [(4, 9, 1, 0x1000000, P300)]


def test_set_chunk_size_applies_from_the_next_chunk() -> None:
    writer = ChunkWriter()
    wire = writer.write(2, 1, 0, 0, (4096).to_bytes(4, "big"))
    writer.set_chunk_size(4096)
    wire += writer.write(6, 9, 1, 0, P5000)
    reader = ChunkReader()
    reader.receive_data(wire)
    messages = drain(reader)
    assert reader.chunk_size == 4096
    assert messages[1] == (6, 9, 1, 0, P5000)


def test_set_chunk_size_with_bit_31_set_is_an_error() -> None:
    reader = ChunkReader()
    reader.receive_data(h0(2, 0, 4, 1, 0) + (2**31).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="bit 31"):
        reader.next_event()


@pytest.mark.parametrize("size", [1, 0x7FFFFFFF])
def test_set_chunk_size_extremes_are_accepted(size: int) -> None:
    reader = ChunkReader()
    reader.receive_data(h0(2, 0, 4, 1, 0) + size.to_bytes(4, "big"))
    reader.next_event()
    assert reader.chunk_size == size


def test_set_chunk_size_zero_is_an_error() -> None:
    reader = ChunkReader()
    reader.receive_data(h0(2, 0, 4, 1, 0) + bytes(4))
    with pytest.raises(RemoteProtocolError):
        reader.next_event()


def test_oversized_message_is_refused_from_its_header_before_buffering() -> None:
    reader = ChunkReader()
    reader.receive_data(h0(4, 0, 16_000_000, 9, 1))  # header only, no payload yet
    with pytest.raises(RemoteProtocolError, match=f"16000000 bytes.*{MAX_MESSAGE_SIZE}"):
        reader.next_event()


def test_message_size_limit_is_configurable() -> None:
    reader = ChunkReader(max_message_size=100)
    reader.receive_data(h0(4, 0, 101, 9, 1))
    with pytest.raises(RemoteProtocolError, match=r"101 bytes.*100"):
        reader.next_event()


def test_abort_drops_the_partial_message() -> None:
    wire = (
        h0(6, 0, 300, 9, 1)
        + P300[:128]
        + h0(2, 0, 4, 2, 0)
        + (6).to_bytes(4, "big")
        + h0(6, 0, 2, 9, 1)
        + b"ok"
    )
    reader = ChunkReader()
    reader.receive_data(wire)
    messages = drain(reader)
    assert [m[1] for m in messages] == [2, 9]
    assert messages[1][4] == b"ok"


def test_first_chunk_of_a_stream_must_be_type_0() -> None:
    for wire in (h1(4, 0, 1, 8) + b"a", h2(4, 0) + b"a", h3(4) + b"a"):
        reader = ChunkReader()
        reader.receive_data(wire)
        with pytest.raises(RemoteProtocolError, match="first must be type 0"):
            reader.next_event()


def test_new_header_inside_unfinished_message_is_an_error() -> None:
    reader = ChunkReader()
    reader.receive_data(h0(6, 0, 300, 9, 1) + P300[:128] + h0(6, 0, 1, 9, 1) + b"x")
    with pytest.raises(RemoteProtocolError, match="unfinished"):
        reader.next_event()


def test_too_many_chunk_streams_is_an_error() -> None:
    reader = ChunkReader(max_chunk_streams=3)
    reader.receive_data(b"".join(h0(c, 0, 1, 8, 1) + b"a" for c in range(3, 7)))
    with pytest.raises(RemoteProtocolError, match="max_chunk_streams"):
        drain(reader)


def test_many_partial_messages_are_bounded() -> None:
    reader = ChunkReader(max_message_size=1000)
    wire = b"".join(h0(c, 0, 1000, 9, 1) + bytes(128) for c in range(3, 30))
    reader.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="unfinished"):
        drain(reader)


def test_continuation_chunks_in_the_buffer_are_taken_in_one_call() -> None:
    """A message whose type-3 chunks are all buffered comes out of one
    next_event call with its chunks taken in one loop; a chunk of another
    stream in between, or a missing tail, leaves the rest to later calls."""
    body = pay(5000, seed=3)
    reader = ChunkReader()
    wire = h0(6, 40, len(body), 9, 1) + body[:128]
    wire += b"".join(h3(6) + body[i : i + 128] for i in range(128, 5000, 128))
    reader.receive_data(wire)
    assert drain(reader) == [(6, 9, 1, 40, body)]
    assert reader.buffered == 0
    # Interleaved with audio on csid 4, and the last chunk cut short.
    audio = pay(10, seed=1)
    wire = h0(6, 80, 300, 9, 1) + body[:128] + h3(6) + body[128:256]
    wire += h0(4, 80, 10, 8, 1) + audio + h3(6) + body[256:300]
    reader.receive_data(wire[:-10])
    assert drain(reader) == [(4, 8, 1, 80, audio)]
    reader.receive_data(wire[-10:])
    assert drain(reader) == [(6, 9, 1, 80, body[:300])]


def test_continuation_chunks_hit_the_partial_limit_where_one_by_one_would() -> None:
    """Taking continuation chunks together stops before the chunk that passes
    the partial-bytes limit, so the error names the same total as when each
    chunk is taken alone."""
    reader = ChunkReader(max_message_size=1000)  # at most 2000 bytes unfinished
    wire = b"".join(h0(c, 0, 1000, 9, 1) + bytes(128) for c in range(3, 18))  # 1920
    wire += h3(17) + bytes(128)  # 2048
    reader.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match=r"^2048 bytes of unfinished"):
        drain(reader)


def test_writer_rejects_bad_arguments() -> None:
    writer = ChunkWriter()
    with pytest.raises(LocalProtocolError):
        writer.write(1, 8, 1, 0, b"")
    with pytest.raises(LocalProtocolError):
        writer.write(65600, 8, 1, 0, b"")
    with pytest.raises(LocalProtocolError):
        writer.set_chunk_size(0)
    with pytest.raises(LocalProtocolError):
        ChunkWriter(2**31)
    with pytest.raises(LocalProtocolError):
        writer.write(3, 8, 1, 0, bytes(0x1000000))


def test_large_input_parses_in_linear_passes() -> None:
    # Many small messages in one buffer: the reader walks an offset and does not
    # re-slice the buffer per chunk (this would take minutes if it did).
    writer = ChunkWriter(128)
    wire = b"".join(writer.write(4, 8, 1, i, b"abcd") for i in range(50_000))
    reader = ChunkReader()
    reader.receive_data(wire)
    assert len(drain(reader)) == 50_000


@given(st.binary(max_size=400))
@settings(max_examples=500)
def test_random_bytes_give_messages_or_remote_protocol_error(data: bytes) -> None:
    reader = ChunkReader()
    reader.receive_data(data)
    with contextlib.suppress(RemoteProtocolError):
        drain(reader)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([3, 4, 6, 70, 400]),
            st.sampled_from([8, 9, 18, 20]),
            st.integers(0, 3),
            st.integers(0, 2**33),
            st.binary(max_size=600),
        ),
        max_size=8,
    ),
    st.sampled_from([1, 7, 128, 4096]),
    st.integers(1, 50),
)
@settings(max_examples=200)
def test_writer_reader_round_trip_property(messages: list[M], chunk_size: int, step: int) -> None:
    writer = ChunkWriter(chunk_size)
    wire = b"".join(writer.write(*m) for m in messages)
    reader = ChunkReader()
    reader._chunk_size = chunk_size
    out: list[M] = []
    for i in range(0, len(wire), step):
        reader.receive_data(wire[i : i + step])
        out += drain(reader)
    assert out == [(c, t, s, ts % 2**32, p) for c, t, s, ts, p in messages]
