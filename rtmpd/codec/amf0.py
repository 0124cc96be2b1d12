"""AMF0: the Action Message Format used by RTMP commands and FLV script data.

Python mapping (both directions):

=====================  ===============================================
AMF0 type (marker)     Python value
=====================  ===============================================
number (0x00)          ``float`` (``int`` is accepted when encoding)
boolean (0x01)         ``bool``
string (0x02)          ``str`` (UTF-8 of at most 65535 bytes)
object (0x03)          ``dict[str, object]``
null (0x05)            ``None``
undefined (0x06)       :data:`UNDEFINED`
reference (0x07)       the earlier decoded object itself (decode only)
ECMA array (0x08)      :class:`ECMAArray` (a ``dict`` subclass)
strict array (0x0A)    ``list``
date (0x0B)            ``datetime`` (tz-aware, UTC)
long string (0x0C)     ``str`` (UTF-8 longer than 65535 bytes)
XML document (0x0F)    :class:`XMLDocument` (a ``str`` subclass)
typed object (0x10)    :class:`TypedObject`
AVM+ switch (0x11)     one AMF3 value, decoded by :mod:`rtmpd.codec.amf3`
=====================  ===============================================

Decoding never raises anything but :class:`RemoteProtocolError`; encoding a
value that has no AMF0 form raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_AMF_DEPTH",
    "MAX_AMF_ITEMS",
    "MAX_AMF_VALUES",
    "UNDEFINED",
    "Decoder",
    "ECMAArray",
    "TypedObject",
    "Undefined",
    "XMLDocument",
    "decode_all",
    "encode",
    "encode_all",
]

# Nesting depth of objects/arrays. Real RTMP commands and onMetaData nest at
# most three or four levels; 64 is generous and keeps the recursive decoder far
# below Python's recursion limit (each level costs a few frames).
MAX_AMF_DEPTH: Final = 64

# Members of one object / ECMA array / strict array. onMetaData with keyframe
# index arrays reaches a few thousand entries; the count read from the wire is
# additionally bounded by the bytes left (each member needs at least one byte),
# so a 4-byte count can never make us allocate or loop beyond the input.
MAX_AMF_ITEMS: Final = 65_536

# Values in the decoded tree, counting a referenced object again at each place
# it is referenced. AMF references let a few hundred bytes describe a tree of
# 2**64 nodes (each level referencing the previous one twice); anyone who walks
# or re-encodes the result would never finish. One million values is far more
# than any real command or metadata message holds.
MAX_AMF_VALUES: Final = 1_048_576


class Undefined(enum.Enum):
    """Type of the :data:`UNDEFINED` sentinel (AMF ``undefined``, not ``null``)."""

    UNDEFINED = "undefined"

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = Undefined.UNDEFINED


class ECMAArray(dict[str, object]):
    """A dict that encodes as an AMF0 ECMA array (associative array).

    FLV ``onMetaData`` is conventionally an ECMA array; a plain ``dict``
    encodes as an anonymous object.
    """

    __slots__ = ()


class XMLDocument(str):
    """A string that encodes as an AMF0 XML document."""

    __slots__ = ()


@dataclass(slots=True)
class TypedObject:
    """An object with an ActionScript class name (AMF0 typed object)."""

    class_name: str
    members: dict[str, object] = field(default_factory=dict)


# --- markers -----------------------------------------------------------------

NUMBER: Final = 0x00
BOOLEAN: Final = 0x01
STRING: Final = 0x02
OBJECT: Final = 0x03
MOVIECLIP: Final = 0x04  # reserved, not supported
NULL: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
REFERENCE: Final = 0x07
ECMA_ARRAY: Final = 0x08
OBJECT_END: Final = 0x09
STRICT_ARRAY: Final = 0x0A
DATE: Final = 0x0B
LONG_STRING: Final = 0x0C
UNSUPPORTED: Final = 0x0D
RECORDSET: Final = 0x0E  # reserved, not supported
XML_DOCUMENT: Final = 0x0F
TYPED_OBJECT: Final = 0x10
AVMPLUS_OBJECT: Final = 0x11  # switch to AMF3 for one value

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE_TAIL = struct.Struct(">dh")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OBJECT_END_BYTES = b"\x00\x00\x09"
_INCOMPLETE = -1  # weight of a referenceable object still being decoded

# --- encoding ----------------------------------------------------------------


def encode(value: object) -> bytes:
    """Encode one Python value as AMF0 bytes (see the module table)."""
    out: list[bytes] = []
    _encode_into(out, value, 0)
    return b"".join(out)


def encode_all(*values: object) -> bytes:
    """Encode several values back to back (an RTMP command or data body)."""
    out: list[bytes] = []
    for value in values:
        _encode_into(out, value, 0)
    return b"".join(out)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"string is not encodable as UTF-8: {exc}") from None


def _encode_key(out: list[bytes], key: object) -> None:
    if not isinstance(key, str):
        raise LocalProtocolError(f"AMF0 object keys must be str, not {type(key).__name__}")
    raw = _utf8(key)
    if not raw:
        raise LocalProtocolError("AMF0 object keys must not be empty (that marks the end)")
    if len(raw) > 0xFFFF:
        raise LocalProtocolError(f"AMF0 object key of {len(raw)} bytes exceeds 65535")
    out.append(_U16.pack(len(raw)))
    out.append(raw)


def _encode_members(out: list[bytes], members: dict[str, object], depth: int) -> None:
    for key, item in members.items():
        _encode_key(out, key)
        _encode_into(out, item, depth + 1)
    out.append(_OBJECT_END_BYTES)


def _encode_into(out: list[bytes], value: object, depth: int) -> None:
    if depth > MAX_AMF_DEPTH:
        raise LocalProtocolError(f"value nests deeper than MAX_AMF_DEPTH ({MAX_AMF_DEPTH})")
    if value is None:
        out.append(b"\x05")
    elif value is UNDEFINED:
        out.append(b"\x06")
    elif isinstance(value, bool):
        out.append(b"\x01\x01" if value else b"\x01\x00")
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise LocalProtocolError(f"integer {value} does not fit an AMF0 number") from None
        out.append(b"\x00")
        out.append(_DOUBLE.pack(number))
    elif isinstance(value, str):
        raw = _utf8(value)
        if isinstance(value, XMLDocument):
            out.append(b"\x0f")
            out.append(_U32.pack(len(raw)))
        elif len(raw) <= 0xFFFF:
            out.append(b"\x02")
            out.append(_U16.pack(len(raw)))
        else:
            if len(raw) > 0xFFFFFFFF:
                raise LocalProtocolError(f"string of {len(raw)} bytes exceeds 2**32-1")
            out.append(b"\x0c")
            out.append(_U32.pack(len(raw)))
        out.append(raw)
    elif isinstance(value, ECMAArray):
        out.append(b"\x08")
        out.append(_U32.pack(len(value)))
        _encode_members(out, value, depth)
    elif isinstance(value, dict):
        out.append(b"\x03")
        _encode_members(out, value, depth)
    elif isinstance(value, list | tuple):
        out.append(b"\x0a")
        out.append(_U32.pack(len(value)))
        for item in value:
            _encode_into(out, item, depth + 1)
    elif isinstance(value, TypedObject):
        raw = _utf8(value.class_name)
        if len(raw) > 0xFFFF:
            raise LocalProtocolError(f"class name of {len(raw)} bytes exceeds 65535")
        out.append(b"\x10")
        out.append(_U16.pack(len(raw)))
        out.append(raw)
        _encode_members(out, value.members, depth)
    elif isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise LocalProtocolError("AMF0 dates must be timezone-aware datetimes")
        millis = (value - _EPOCH) / timedelta(milliseconds=1)
        out.append(b"\x0b")
        out.append(_DATE_TAIL.pack(millis, 0))
    else:
        raise LocalProtocolError(f"no AMF0 encoding for {type(value).__name__}")


# --- decoding ----------------------------------------------------------------


class Decoder:
    """Decode AMF0 values one at a time from a complete byte string.

    ``decode()`` returns the next value; ``remaining`` is the number of bytes
    not yet consumed, so ``len(data) - remaining`` is the offset of the next
    value. The reference table is shared by all values decoded from one
    ``Decoder`` (it spans one RTMP message body).
    """

    __slots__ = ("_data", "_pos", "_refs", "_values")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0
        # (object, weight) for each referenceable object in order; weight is
        # the number of values in its subtree or _INCOMPLETE while decoding.
        self._refs: list[tuple[object, int]] = []
        self._values = 0

    @property
    def remaining(self) -> int:
        """Bytes not yet consumed."""
        return len(self._data) - self._pos

    @property
    def offset(self) -> int:
        """Offset of the next undecoded byte."""
        return self._pos

    def decode(self) -> object:
        """Decode and return the next value; ``RemoteProtocolError`` if bad or truncated."""
        if self._pos >= len(self._data):
            raise RemoteProtocolError("AMF0: no value left to decode")
        return self._value(0)

    # helpers

    def _take(self, size: int, what: str) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise RemoteProtocolError(
                f"AMF0 {what} truncated: needs {size} bytes, {len(self._data) - self._pos} left"
            )
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def _u8(self, what: str) -> int:
        if self._pos >= len(self._data):
            raise RemoteProtocolError(f"AMF0 {what} truncated")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def _u16(self, what: str) -> int:
        value: int = _U16.unpack(self._take(2, what))[0]
        return value

    def _u32(self, what: str) -> int:
        value: int = _U32.unpack(self._take(4, what))[0]
        return value

    def _text(self, size: int, what: str) -> str:
        raw = self._take(size, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"AMF0 {what} is not valid UTF-8: {exc.reason}") from None

    def _count(self, count: int, what: str) -> int:
        if count > MAX_AMF_ITEMS:
            raise RemoteProtocolError(
                f"AMF0 {what} of {count} items exceeds MAX_AMF_ITEMS ({MAX_AMF_ITEMS})"
            )
        return count

    def _add_values(self, count: int) -> None:
        self._values += count
        if self._values > MAX_AMF_VALUES:
            raise RemoteProtocolError(
                f"AMF0 data expands to more than MAX_AMF_VALUES ({MAX_AMF_VALUES}) values"
            )

    def _value(self, depth: int) -> object:
        if depth > MAX_AMF_DEPTH:
            raise RemoteProtocolError(f"AMF0 nesting exceeds MAX_AMF_DEPTH ({MAX_AMF_DEPTH})")
        marker = self._u8("marker")
        self._add_values(1)
        if marker == NUMBER:
            number: float = _DOUBLE.unpack(self._take(8, "number"))[0]
            return number
        if marker == BOOLEAN:
            return self._u8("boolean") != 0
        if marker == STRING:
            return self._text(self._u16("string length"), "string")
        if marker == LONG_STRING:
            return self._text(self._u32("long string length"), "long string")
        if marker == XML_DOCUMENT:
            return XMLDocument(self._text(self._u32("XML length"), "XML document"))
        if marker == NULL:
            return None
        if marker == UNDEFINED_MARKER:
            return UNDEFINED
        if marker == OBJECT:
            obj: dict[str, object] = {}
            self._members(obj, depth, "object", allow_eof=False)
            return obj
        if marker == ECMA_ARRAY:
            # The count is advisory (encoders get it wrong); members run to the
            # object-end marker, which some encoders omit at the end of a body.
            self._u32("ECMA array count")
            ecma = ECMAArray()
            self._members(ecma, depth, "ECMA array", allow_eof=True)
            return ecma
        if marker == TYPED_OBJECT:
            class_name = self._text(self._u16("class name length"), "class name")
            typed = TypedObject(class_name, {})
            self._members(typed.members, depth, "typed object", allow_eof=False, ref=typed)
            return typed
        if marker == STRICT_ARRAY:
            return self._strict_array(depth)
        if marker == DATE:
            return self._date()
        if marker == REFERENCE:
            return self._reference()
        if marker == AVMPLUS_OBJECT:
            return self._amf3(depth)
        if marker == OBJECT_END:
            raise RemoteProtocolError("AMF0 object-end marker outside an object")
        raise RemoteProtocolError(f"AMF0 marker 0x{marker:02x} is not supported")

    def _members(
        self,
        target: dict[str, object],
        depth: int,
        what: str,
        *,
        allow_eof: bool,
        ref: object | None = None,
    ) -> None:
        index = len(self._refs)
        self._refs.append((target if ref is None else ref, _INCOMPLETE))
        start_values = self._values
        data = self._data
        # Error-message parts, formatted once per object, not per member.
        key_length_what = f"{what} key length"
        key_what = f"{what} key"
        while True:
            if allow_eof and self._pos == len(data):
                break
            key_len = self._u16(key_length_what)
            if key_len == 0:
                if self._u8(f"{what} end marker") != OBJECT_END:
                    raise RemoteProtocolError(f"AMF0 {what}: empty key not followed by end marker")
                break
            if len(target) >= MAX_AMF_ITEMS:
                raise RemoteProtocolError(
                    f"AMF0 {what} has more than MAX_AMF_ITEMS ({MAX_AMF_ITEMS}) members"
                )
            key = self._text(key_len, key_what)
            target[key] = self._value(depth + 1)
        entry = self._refs[index]
        self._refs[index] = (entry[0], self._values - start_values + 1)

    def _strict_array(self, depth: int) -> list[object]:
        count = self._count(self._u32("strict array count"), "strict array")
        if count > self.remaining:
            raise RemoteProtocolError(
                f"AMF0 strict array of {count} items but only {self.remaining} bytes left"
            )
        items: list[object] = []
        index = len(self._refs)
        self._refs.append((items, _INCOMPLETE))
        start_values = self._values
        for _ in range(count):
            items.append(self._value(depth + 1))
        self._refs[index] = (items, self._values - start_values + 1)
        return items

    def _date(self) -> datetime:
        millis, _tz = _DATE_TAIL.unpack(self._take(10, "date"))
        if not math.isfinite(millis):
            raise RemoteProtocolError(f"AMF0 date {millis} is not a finite number")
        try:
            return _EPOCH + timedelta(milliseconds=millis)
        except OverflowError:
            raise RemoteProtocolError(f"AMF0 date {millis} ms is out of range") from None

    def _reference(self) -> object:
        index = self._u16("reference")
        if index >= len(self._refs):
            raise RemoteProtocolError(
                f"AMF0 reference {index} but only {len(self._refs)} objects decoded"
            )
        target, weight = self._refs[index]
        if weight == _INCOMPLETE:
            raise RemoteProtocolError(f"AMF0 reference {index} to an object still being decoded")
        self._add_values(weight - 1)
        return target

    def _amf3(self, depth: int) -> object:
        # Imported here because amf3 builds on this module's types.
        from rtmpd.codec import amf3

        inner = amf3.Decoder(self._data, offset=self._pos, depth=depth)
        value = inner.decode()
        self._pos = inner.offset
        self._add_values(inner.values_decoded)
        return value


def decode_all(data: bytes) -> list[object]:
    """Decode every AMF0 value in ``data`` (for example a whole command body)."""
    decoder = Decoder(data)
    values: list[object] = []
    while decoder.remaining:
        values.append(decoder.decode())
    return values
