"""AMF0: one case table (value, exact bytes) for encode, decode and fuzzing."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec import amf0, amf3
from rtmpd.codec.amf0 import UNDEFINED, ECMAArray, TypedObject, XMLDocument
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError


def _num(x: float) -> bytes:
    return b"\x00" + struct.pack(">d", x)


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def _key(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">H", len(raw)) + raw


END = b"\x00\x00\x09"

CASES: list[tuple[str, object, bytes]] = [
    ("number", 1.5, _num(1.5)),
    ("number zero", 0.0, _num(0.0)),
    ("number negative", -3.25, _num(-3.25)),
    ("true", True, b"\x01\x01"),
    ("false", False, b"\x01\x00"),
    ("string", "connect", _str("connect")),
    ("empty string", "", b"\x02\x00\x00"),
    ("utf-8 string", "ünï", _str("ünï")),
    ("null", None, b"\x05"),
    ("undefined", UNDEFINED, b"\x06"),
    (
        "object",
        {"app": "live", "n": 1.0},
        b"\x03" + _key("app") + _str("live") + _key("n") + _num(1.0) + END,
    ),
    ("empty object", {}, b"\x03" + END),
    (
        "ecma array",
        ECMAArray(width=640.0),
        b"\x08\x00\x00\x00\x01" + _key("width") + _num(640.0) + END,
    ),
    ("strict array", ["a", 2.0], b"\x0a\x00\x00\x00\x02" + _str("a") + _num(2.0)),
    ("empty strict array", [], b"\x0a\x00\x00\x00\x00"),
    (
        "date",
        datetime(2021, 1, 1, tzinfo=UTC),
        b"\x0b" + struct.pack(">d", 1609459200000.0) + b"\x00\x00",
    ),
    ("long string", "x" * 70000, b"\x0c" + struct.pack(">I", 70000) + b"x" * 70000),
    (
        "typed object",
        TypedObject("flash.Foo", {"a": True}),
        b"\x10" + _key("flash.Foo") + _key("a") + b"\x01\x01" + END,
    ),
    ("xml document", XMLDocument("<a/>"), b"\x0f\x00\x00\x00\x04<a/>"),
    (
        "nested",
        {"o": {"l": [None]}},
        b"\x03" + _key("o") + b"\x03" + _key("l") + b"\x0a\x00\x00\x00\x01\x05" + END + END,
    ),
]


@pytest.mark.parametrize(("name", "value", "wire"), CASES, ids=[c[0] for c in CASES])
def test_encode_gives_exact_bytes(name: str, value: object, wire: bytes) -> None:
    assert amf0.encode(value) == wire


@pytest.mark.parametrize(("name", "value", "wire"), CASES, ids=[c[0] for c in CASES])
def test_decode_gives_value_and_type(name: str, value: object, wire: bytes) -> None:
    decoded = amf0.decode_all(wire)
    assert decoded == [value]
    assert type(decoded[0]) is type(value)


@pytest.mark.parametrize(("name", "value", "wire"), CASES, ids=[c[0] for c in CASES])
def test_every_truncation_raises_remote_protocol_error(
    name: str, value: object, wire: bytes
) -> None:
    for cut in range(1, len(wire)):
        if name == "ecma array" and cut in (5, len(wire) - 3):
            continue  # an ECMA array may end at the end of the body without END
        with pytest.raises(RemoteProtocolError):
            amf0.decode_all(wire[:cut])


def test_encode_all_and_decoder_offsets() -> None:
    wire = amf0.encode_all("_result", 1.0, None, {"code": "ok"})
    decoder = amf0.Decoder(wire)
    assert decoder.decode() == "_result"
    assert len(wire) - decoder.remaining == decoder.offset == 10
    assert decoder.decode() == 1.0
    assert decoder.decode() is None
    assert decoder.decode() == {"code": "ok"}
    assert decoder.remaining == 0
    with pytest.raises(RemoteProtocolError):
        decoder.decode()


def test_int_encodes_as_number_and_bool_as_boolean() -> None:
    assert amf0.encode(3) == _num(3.0)
    assert amf0.encode(True) == b"\x01\x01"


def test_ecma_array_without_end_marker_at_end_of_body_is_accepted() -> None:
    wire = b"\x08\x00\x00\x00\x01" + _key("a") + _num(1.0)
    assert amf0.decode_all(wire) == [ECMAArray(a=1.0)]


def test_ecma_array_count_is_advisory() -> None:
    wire = b"\x08\x00\x00\x00\x07" + _key("a") + _num(1.0) + END
    assert amf0.decode_all(wire) == [ECMAArray(a=1.0)]


def test_reference_resolves_to_the_earlier_object() -> None:
    inner = b"\x03" + _key("x") + _num(1.0) + END
    wire = b"\x0a\x00\x00\x00\x02" + inner + b"\x07\x00\x01"
    (items,) = amf0.decode_all(wire)
    assert isinstance(items, list)
    assert items[0] == {"x": 1.0}
    assert items[1] is items[0]


def test_reference_out_of_range_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="reference 3"):
        amf0.decode_all(b"\x07\x00\x03")


def test_reference_to_incomplete_object_is_rejected() -> None:
    wire = b"\x03" + _key("self") + b"\x07\x00\x00" + END
    with pytest.raises(RemoteProtocolError, match="still being decoded"):
        amf0.decode_all(wire)


def test_reference_bomb_hits_max_values() -> None:
    # Array n holds two references to array n-1: 2**40 values as a tree.
    flat = bytearray(b"\x0a\x00\x00\x00\x01\x05")
    for level in range(40):
        flat += b"\x0a\x00\x00\x00\x02" + (b"\x07" + struct.pack(">H", level)) * 2
    with pytest.raises(RemoteProtocolError, match="MAX_AMF_VALUES"):
        amf0.decode_all(bytes(flat))


def test_deep_nesting_hits_max_depth_not_recursion_error() -> None:
    wire = b"\x0a\x00\x00\x00\x01" * 10_000 + b"\x05"
    with pytest.raises(RemoteProtocolError, match="MAX_AMF_DEPTH"):
        amf0.decode_all(wire)


def test_strict_array_count_larger_than_data_is_rejected_before_allocating() -> None:
    with pytest.raises(RemoteProtocolError, match=r"MAX_AMF_ITEMS|bytes left"):
        amf0.decode_all(b"\x0a\xff\xff\xff\xff\x05")
    with pytest.raises(RemoteProtocolError, match="bytes left"):
        amf0.decode_all(b"\x0a\x00\x00\x01\x00\x05")


def test_invalid_utf8_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        amf0.decode_all(b"\x02\x00\x02\xff\xfe")


@pytest.mark.parametrize("marker", [0x04, 0x09, 0x0D, 0x0E, 0x12, 0xFF])
def test_unsupported_markers_are_rejected(marker: int) -> None:
    with pytest.raises(RemoteProtocolError):
        amf0.decode_all(bytes((marker,)) + b"\x00" * 8)


def test_bad_dates_are_rejected() -> None:
    for millis in (float("nan"), float("inf"), 1e300):
        with pytest.raises(RemoteProtocolError, match="date"):
            amf0.decode_all(b"\x0b" + struct.pack(">d", millis) + b"\x00\x00")


def test_avmplus_switch_decodes_one_amf3_value() -> None:
    wire = amf0.encode("a") + b"\x11" + amf3.encode({"k": [1, "v"]}) + amf0.encode(2.0)
    assert amf0.decode_all(wire) == ["a", {"k": [1, "v"]}, 2.0]


def test_encoding_unsupported_values_is_a_local_error() -> None:
    for bad in (object(), {1: "x"}, {"": 1}, datetime(2020, 1, 1), 10**400):
        with pytest.raises(LocalProtocolError):
            amf0.encode(bad)


def test_encoding_too_deep_is_a_local_error() -> None:
    value: list[object] = []
    for _ in range(amf0.MAX_AMF_DEPTH + 5):
        value = [value]
    with pytest.raises(LocalProtocolError):
        amf0.encode(value)


values = st.recursive(
    st.none() | st.just(UNDEFINED) | st.booleans() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1), children, max_size=4)
        | st.dictionaries(st.text(min_size=1), children, max_size=4).map(ECMAArray)
    ),
    max_leaves=20,
)


@given(values)
def test_round_trip_property(value: object) -> None:
    assert amf0.decode_all(amf0.encode(value)) == [value]


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        amf0.decode_all(data)


@given(st.lists(st.sampled_from([c[2] for c in CASES[:-3]]), max_size=5), st.binary(max_size=20))
def test_valid_values_followed_by_garbage_never_raise_other_errors(
    parts: list[bytes], tail: bytes
) -> None:
    with contextlib.suppress(RemoteProtocolError):
        amf0.decode_all(b"".join(parts) + tail)
