"""AMF3: case table (value, exact bytes), reference tables, limits and fuzzing."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec import amf3
from rtmpd.codec.amf0 import UNDEFINED, ECMAArray, TypedObject, XMLDocument
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

CASES: list[tuple[str, object, bytes]] = [
    ("undefined", UNDEFINED, b"\x00"),
    ("null", None, b"\x01"),
    ("false", False, b"\x02"),
    ("true", True, b"\x03"),
    ("integer 0", 0, b"\x04\x00"),
    ("integer 127", 127, b"\x04\x7f"),
    ("integer 128", 128, b"\x04\x81\x00"),
    ("integer 16383", 16383, b"\x04\xff\x7f"),
    ("integer 16384", 16384, b"\x04\x81\x80\x00"),
    ("integer 2**21", 1 << 21, b"\x04\x80\xc0\x80\x00"),
    ("integer max", (1 << 28) - 1, b"\x04\xbf\xff\xff\xff"),
    ("integer -1", -1, b"\x04\xff\xff\xff\xff"),
    ("integer min", -(1 << 28), b"\x04\xc0\x80\x80\x00"),
    ("large int as double", 1 << 28, b"\x05" + struct.pack(">d", float(1 << 28))),
    ("double", 1.5, b"\x05" + struct.pack(">d", 1.5)),
    ("string", "abc", b"\x06\x07abc"),
    ("empty string", "", b"\x06\x01"),
    ("xml doc", XMLDocument("<a/>"), b"\x07\x09<a/>"),
    ("date", datetime(2021, 1, 1, tzinfo=UTC), b"\x08\x01" + struct.pack(">d", 1609459200000.0)),
    ("dense array", [1, "x"], b"\x09\x05\x01\x04\x01\x06\x03x"),
    ("associative array", ECMAArray(k=1), b"\x09\x01\x03k\x04\x01\x01"),
    ("anonymous object", {"a": 1}, b"\x0a\x0b\x01\x03a\x04\x01\x01"),
    ("typed object", TypedObject("C", {"a": 1}), b"\x0a\x0b\x03C\x03a\x04\x01\x01"),
    ("byte array", b"\x00\xff", b"\x0c\x05\x00\xff"),
]


@pytest.mark.parametrize(("name", "value", "wire"), CASES, ids=[c[0] for c in CASES])
def test_encode_gives_exact_bytes(name: str, value: object, wire: bytes) -> None:
    assert amf3.encode(value) == wire


@pytest.mark.parametrize(("name", "value", "wire"), CASES, ids=[c[0] for c in CASES])
def test_decode_gives_value(name: str, value: object, wire: bytes) -> None:
    decoded = amf3.decode_all(wire)
    expected = float(value) if name == "large int as double" else value  # type: ignore[arg-type]
    assert decoded == [expected]


@pytest.mark.parametrize(("name", "value", "wire"), CASES, ids=[c[0] for c in CASES])
def test_every_truncation_raises_remote_protocol_error(
    name: str, value: object, wire: bytes
) -> None:
    for cut in range(1, len(wire)):
        with pytest.raises(RemoteProtocolError):
            amf3.decode_all(wire[:cut])


_SHARED_DICT: dict[str, object] = {"a": 1}
_DATE = datetime(2021, 1, 1, tzinfo=UTC)
_DATE_BYTES = struct.pack(">d", 1609459200000.0)

#: (name, values given to encode_all, exact bytes): where the encoder writes a
#: reference, and where it does not.
REFERENCE_CASES: list[tuple[str, tuple[object, ...], bytes]] = [
    ("string again is a reference", (["abc", "abc"],), b"\x09\x05\x01\x06\x07abc\x06\x00"),
    ("one-letter string again is a reference", (["a", "a"],), b"\x09\x05\x01\x06\x03a\x06\x00"),
    ("empty string is never a reference", (["", ""],), b"\x09\x05\x01\x06\x01\x06\x01"),
    (
        "same dict twice is an object reference",
        ([_SHARED_DICT, _SHARED_DICT],),
        b"\x09\x05\x01\x0a\x0b\x01\x03a\x04\x01\x01\x0a\x02",
    ),
    (
        "equal dicts share traits and member names",
        ([{"a": 1}, {"a": 2}],),
        b"\x09\x05\x01\x0a\x0b\x01\x03a\x04\x01\x01\x0a\x01\x00\x04\x02\x01",
    ),
    (
        "typed objects of one class share traits",
        ([TypedObject("C", {"a": 1}), TypedObject("C", {"a": 2})],),
        b"\x09\x05\x01\x0a\x0b\x03C\x03a\x04\x01\x01\x0a\x01\x02\x04\x02\x01",
    ),
    (
        "byte array again is a reference",
        ([b"xy", b"xy"],),
        b"\x09\x05\x01\x0c\x05xy\x0c\x02",
    ),
    (
        "empty byte array again is not (the reference is no shorter)",
        ([b"", b""],),
        b"\x09\x05\x01\x0c\x01\x0c\x01",
    ),
    (
        "date again is a reference",
        ([_DATE, _DATE],),
        b"\x09\x05\x01\x08\x01" + _DATE_BYTES + b"\x08\x02",
    ),
    (
        "xml again is a reference",
        ([XMLDocument("<a/>"), XMLDocument("<a/>")],),
        b"\x09\x05\x01\x07\x09<a/>\x07\x02",
    ),
    ("encode_all shares one context", ("abc", "abc"), b"\x06\x07abc\x06\x00"),
    (
        "member names and string values share the table",
        ({"k": "k"},),
        b"\x0a\x0b\x01\x03k\x06\x00\x01",
    ),
]


@pytest.mark.parametrize(
    ("name", "values", "wire"), REFERENCE_CASES, ids=[c[0] for c in REFERENCE_CASES]
)
def test_encoder_writes_references_where_shorter(
    name: str, values: tuple[object, ...], wire: bytes
) -> None:
    assert amf3.encode_all(*values) == wire


@pytest.mark.parametrize(
    ("name", "values", "wire"), REFERENCE_CASES, ids=[c[0] for c in REFERENCE_CASES]
)
def test_reference_cases_decode_to_their_values(
    name: str, values: tuple[object, ...], wire: bytes
) -> None:
    assert amf3.decode_all(wire) == list(values)


@pytest.mark.parametrize(
    ("name", "values", "wire"), REFERENCE_CASES, ids=[c[0] for c in REFERENCE_CASES]
)
def test_every_truncation_of_a_reference_case_raises_remote_protocol_error(
    name: str, values: tuple[object, ...], wire: bytes
) -> None:
    for cut in range(1, len(wire)):
        with contextlib.suppress(RemoteProtocolError):
            decoded = amf3.decode_all(wire[:cut])
            # A prefix may end exactly after a whole value (encode_all cases).
            assert decoded == list(values[: len(decoded)])


def test_shared_dict_decodes_as_one_object() -> None:
    (items,) = amf3.decode_all(amf3.encode([_SHARED_DICT, _SHARED_DICT]))
    assert isinstance(items, list)
    assert items[0] is items[1]


def test_string_whose_reference_is_no_shorter_is_sent_again_and_tables_stay_in_step() -> None:
    # 64 strings fill indices 0..63; "a" lands at 64 and "bc" at 65. The
    # reference to 64 (U29 128, two bytes) is as long as "a" inline, so "a" goes
    # inline again and takes index 66, as the decoder counts it; the reference
    # to "bc" (U29 130) is shorter than "bc" inline.
    names = [f"s{i}" for i in range(64)]
    value = [*names, "a", "bc", "a", "bc"]
    wire = amf3.encode(value)
    assert wire.endswith(b"\x06\x03a\x06\x05bc\x06\x03a\x06\x81\x02")
    assert amf3.decode_all(wire) == [value]


def test_container_containing_itself_is_refused() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(LocalProtocolError, match="contains itself"):
        amf3.encode(loop)


def test_encoder_nesting_past_max_depth_is_refused() -> None:
    value: object = None
    for _ in range(100):
        value = [value]
    with pytest.raises(LocalProtocolError, match="MAX_AMF_DEPTH"):
        amf3.encode(value)


def test_encoder_context_keeps_earlier_containers_alive() -> None:
    # A temporary list freed between two encode() calls must not let a new
    # list with a reused id() be written as a reference to it.
    encoder = amf3.Encoder()
    first = encoder.encode([1])
    second = encoder.encode([2])
    assert first == b"\x09\x03\x01\x04\x01"
    assert second == b"\x09\x03\x01\x04\x02"


def test_string_references_resolve() -> None:
    # ["abc", ref 0] -> the second string is a reference to the first.
    wire = b"\x09\x05\x01\x06\x07abc\x06\x00"
    assert amf3.decode_all(wire) == [["abc", "abc"]]


def test_object_reference_returns_same_object() -> None:
    wire = b"\x09\x05\x01\x0a\x0b\x01\x03a\x04\x01\x01\x0a\x02"
    (items,) = amf3.decode_all(wire)
    assert isinstance(items, list)
    assert items[1] is items[0]


def test_traits_reference_reuses_sealed_members() -> None:
    # Two objects of class "P" with one sealed member "x"; the second refers to the traits.
    first = b"\x0a\x13\x03P\x03x\x04\x01"  # U29O: 1 sealed, not dynamic, inline
    second = b"\x0a\x01\x04\x02"  # traits reference 0
    wire = b"\x09\x05\x01" + first + second
    assert amf3.decode_all(wire) == [[TypedObject("P", {"x": 1}), TypedObject("P", {"x": 2})]]


def test_mixed_array_puts_dense_items_under_index_keys() -> None:
    wire = b"\x09\x03\x03k\x04\x01\x01\x04\x02"
    assert amf3.decode_all(wire) == [ECMAArray(k=1, **{"0": 2})]


def test_externalizable_object_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="externalizable"):
        amf3.decode_all(b"\x0a\x07\x03C")


@pytest.mark.parametrize("marker", [0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0xFF])
def test_unsupported_markers_are_rejected(marker: int) -> None:
    with pytest.raises(RemoteProtocolError):
        amf3.decode_all(bytes((marker,)) + b"\x01")


def test_bad_references_are_rejected() -> None:
    for wire in (b"\x06\x02", b"\x0a\x00", b"\x0a\x05", b"\x09\x04", b"\x08\x02"):
        with pytest.raises(RemoteProtocolError, match="reference"):
            amf3.decode_all(wire)


def test_self_reference_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="still being decoded"):
        amf3.decode_all(b"\x09\x03\x01\x09\x00")


def test_array_count_beyond_data_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match=r"bytes left|MAX_AMF_ITEMS"):
        amf3.decode_all(b"\x09\xbf\xff\xff\xff\x01")


def test_deep_nesting_hits_max_depth() -> None:
    with pytest.raises(RemoteProtocolError, match="MAX_AMF_DEPTH"):
        amf3.decode_all(b"\x09\x03\x01" * 5000 + b"\x01")


def test_reference_bomb_hits_max_values() -> None:
    # An outer array of [null] then 40 arrays, each holding the previous twice.
    flat = bytearray(b"\x09" + amf3.encode_u29((41 << 1) | 1) + b"\x01")
    flat += b"\x09\x03\x01\x01"  # object 1: [null]
    for level in range(1, 41):
        ref = amf3.encode_u29(level << 1)
        flat += b"\x09\x05\x01\x09" + ref + b"\x09" + ref
    with pytest.raises(RemoteProtocolError, match="MAX_AMF_VALUES"):
        amf3.decode_all(bytes(flat))


def test_u29_encoding_range() -> None:
    with pytest.raises(LocalProtocolError):
        amf3.encode_u29(1 << 29)
    with pytest.raises(LocalProtocolError):
        amf3.encode_u29(-1)


values = st.recursive(
    st.none()
    | st.just(UNDEFINED)
    | st.booleans()
    | st.integers(min_value=-(1 << 28), max_value=(1 << 28) - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(min_size=1), children, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_round_trip_property(value: object) -> None:
    assert amf3.decode_all(amf3.encode(value)) == [value]


_few_strings = st.sampled_from(["", "a", "bc", "onMetaData", "width"])
repetitive = st.recursive(
    _few_strings | st.integers(min_value=0, max_value=3) | st.sampled_from([b"", b"xy"]),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(_few_strings.filter(bool), children, max_size=3)
        | st.builds(
            TypedObject,
            st.sampled_from(["P", "Q"]),
            st.dictionaries(_few_strings.filter(bool), children, max_size=3),
        )
    ),
    max_leaves=30,
)


@given(st.lists(repetitive, min_size=1, max_size=4))
def test_round_trip_with_references_property(values: list[object]) -> None:
    """Values full of repeats (strings, traits, byte arrays, shared
    containers) come back equal from one shared context."""
    wire = amf3.encode_all(*values)
    assert amf3.decode_all(wire) == values


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        amf3.decode_all(data)
