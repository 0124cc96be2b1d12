"""Box writer and reader: one case table feeds encode, decode and fuzz tests."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.mp4.boxes import (
    MAX_BOX_DEPTH,
    BoxHeader,
    BoxWriter,
    FieldReader,
    iter_boxes,
)


def _empty_free(w: BoxWriter) -> None:
    with w.box(b"free"):
        pass


def _full_box(w: BoxWriter) -> None:
    with w.full_box(b"mfhd", version=0, flags=0):
        w.u32(7)


def _nested(w: BoxWriter) -> None:
    with w.box(b"moov"):
        with w.full_box(b"mvhd", version=1, flags=0x000102):
            w.u8(1)
        with w.box(b"trak"):
            w.write(b"ab")


def _large(w: BoxWriter) -> None:
    with w.box(b"mdat", large=True):
        w.write(b"xyz")


def _two_top_level(w: BoxWriter) -> None:
    with w.box(b"ftyp"):
        w.fourcc(b"isom")
    with w.box(b"free"):
        w.u16(0xBEEF)


def _arrays(w: BoxWriter) -> None:
    with w.full_box(b"stco", version=0, flags=0):
        w.u32_array([1, 0xFFFFFFFF])
        w.u64_array([2**40])


# (name, build, exact bytes, expected top-level headers)
CASES: list[tuple[str, Callable[[BoxWriter], None], bytes, list[BoxHeader]]] = [
    ("empty box", _empty_free, b"\x00\x00\x00\x08free", [BoxHeader(b"free", 0, 8, 8)]),
    (
        "full box",
        _full_box,
        b"\x00\x00\x00\x10mfhd\x00\x00\x00\x00\x00\x00\x00\x07",
        [BoxHeader(b"mfhd", 0, 8, 16)],
    ),
    (
        "nested boxes",
        _nested,
        b"\x00\x00\x00\x1fmoov"
        + b"\x00\x00\x00\x0dmvhd\x01\x00\x01\x02\x01"
        + b"\x00\x00\x00\x0atrakab",
        [BoxHeader(b"moov", 0, 8, 31)],
    ),
    (
        "64-bit largesize",
        _large,
        b"\x00\x00\x00\x01mdat" + struct.pack(">Q", 19) + b"xyz",
        [BoxHeader(b"mdat", 0, 16, 19)],
    ),
    (
        "field arrays",
        _arrays,
        b"\x00\x00\x00\x1cstco\x00\x00\x00\x00"
        + b"\x00\x00\x00\x01\xff\xff\xff\xff"
        + b"\x00\x00\x01\x00\x00\x00\x00\x00",
        [BoxHeader(b"stco", 0, 8, 28)],
    ),
    (
        "boxes end to end",
        _two_top_level,
        b"\x00\x00\x00\x0cftypisom\x00\x00\x00\x0afree\xbe\xef",
        [BoxHeader(b"ftyp", 0, 8, 12), BoxHeader(b"free", 12, 8, 22)],
    ),
]


@pytest.mark.parametrize(("name", "build", "data", "headers"), CASES, ids=[c[0] for c in CASES])
def test_box_writer_produces_exact_bytes(
    name: str, build: Callable[[BoxWriter], None], data: bytes, headers: list[BoxHeader]
) -> None:
    w = BoxWriter()
    build(w)
    assert w.getvalue() == data


@pytest.mark.parametrize(("name", "build", "data", "headers"), CASES, ids=[c[0] for c in CASES])
def test_box_reader_finds_the_written_boxes(
    name: str, build: Callable[[BoxWriter], None], data: bytes, headers: list[BoxHeader]
) -> None:
    assert list(iter_boxes(data)) == headers


@pytest.mark.parametrize(("name", "build", "data", "headers"), CASES, ids=[c[0] for c in CASES])
def test_every_prefix_of_a_case_parses_or_raises_remote_error(
    name: str, build: Callable[[BoxWriter], None], data: bytes, headers: list[BoxHeader]
) -> None:
    for cut in range(len(data)):
        with contextlib.suppress(RemoteProtocolError):
            list(iter_boxes(data[:cut]))


def test_nested_reader_walks_children_of_a_container() -> None:
    w = BoxWriter()
    _nested(w)
    data = w.getvalue()
    (moov,) = iter_boxes(data)
    children = list(iter_boxes(data, moov.payload_start, moov.end, depth=1))
    assert [c.type for c in children] == [b"mvhd", b"trak"]
    reader = FieldReader.for_box(data, children[0])
    assert reader.version_flags() == (1, 0x000102)
    assert reader.u8() == 1
    with pytest.raises(RemoteProtocolError, match="mvhd"):
        reader.u8()


def test_size_zero_box_extends_to_the_end_of_its_parent() -> None:
    data = b"\x00\x00\x00\x00mdat" + b"payload"
    assert list(iter_boxes(data)) == [BoxHeader(b"mdat", 0, 8, len(data))]


def test_uuid_box_header_includes_the_user_type() -> None:
    data = b"\x00\x00\x00\x1auuid" + bytes(range(16)) + b"\x01\x02"
    assert list(iter_boxes(data)) == [BoxHeader(b"uuid", 0, 24, 26)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x10free", "only 8 bytes remain"),
        (b"\x00\x00\x00\x04free", "smaller than its header"),
        (b"\x00\x00\x00\x01mdat\x00\x00\x00\x00\x00\x00\x00\x08", "smaller than its header"),
        (b"\x00\x00\x00\x01mdat\x00\x00", "largesize truncated"),
        (b"\x00\x00\x00", "truncated"),
    ],
)
def test_malformed_box_headers_raise_remote_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        list(iter_boxes(data))


def test_child_overrunning_its_parent_is_rejected() -> None:
    data = b"\x00\x00\x00\x10moov" + b"\x00\x00\x00\x20free"
    (moov,) = iter_boxes(data)
    with pytest.raises(RemoteProtocolError, match="in its parent"):
        list(iter_boxes(data, moov.payload_start, moov.end, depth=1))


def test_nesting_past_max_box_depth_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="MAX_BOX_DEPTH"):
        list(iter_boxes(b"", depth=MAX_BOX_DEPTH + 1))


def test_writer_rejects_misuse() -> None:
    w = BoxWriter()
    with pytest.raises(LocalProtocolError):
        w.fourcc(b"abc")
    with pytest.raises(LocalProtocolError):
        w.u16(70000)
    with pytest.raises(LocalProtocolError):
        w.u24(-1)
    with pytest.raises(LocalProtocolError):
        w.u32_array([1, -1])
    with pytest.raises(LocalProtocolError), w.full_box(b"tkhd", version=256, flags=0):
        pass
    w2 = BoxWriter()
    cm = w2.box(b"moov")
    cm.__enter__()
    with pytest.raises(LocalProtocolError, match="still open: moov"):
        w2.getvalue()


def test_box_over_u32_size_switches_to_largesize_on_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A box that outgrows 32 bits gets a 16-byte header; the threshold is lowered so the
    test does not allocate 4 GiB."""
    import rtmpd.codec.mp4.boxes as boxes

    monkeypatch.setattr(boxes, "_U32_MAX", 16)
    w = BoxWriter()
    with w.box(b"moov"), w.box(b"mdat"):
        w.write(b"0123456789")
    data = w.getvalue()
    assert data == (
        b"\x00\x00\x00\x01moov"
        + struct.pack(">Q", 42)
        + b"\x00\x00\x00\x01mdat"
        + struct.pack(">Q", 26)
        + b"0123456789"
    )
    (moov,) = iter_boxes(data)
    assert moov == BoxHeader(b"moov", 0, 16, 42)
    assert list(iter_boxes(data, 16, 42, depth=1)) == [BoxHeader(b"mdat", 16, 16, 42)]


@given(st.binary(max_size=64))
def test_arbitrary_bytes_give_boxes_or_remote_protocol_error(data: bytes) -> None:
    try:
        for head in iter_boxes(data):
            assert 0 <= head.start < head.end <= len(data)
            assert head.header_size <= head.size
    except RemoteProtocolError:
        pass
