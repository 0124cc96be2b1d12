"""AMF3: the ActionScript 3 encoding, met in RTMP as AMF3 commands (type 17),
AMF3 data (type 15) and as single values behind the AMF0 AVM+ switch (0x11).

Decoding covers every AMF3 type RTMP peers send: undefined, null, false, true,
integer (U29), double, string (with the string reference table), XML document,
date, array (associative and dense parts), object (traits with sealed and
dynamic members, the traits and object reference tables), XML and byte array.
Externalizable objects, vectors and dictionaries are refused with
:class:`RemoteProtocolError` (they need application classes to decode).

Python mapping (shared with :mod:`rtmpd.codec.amf0`): ``None``,
:data:`~rtmpd.codec.amf0.UNDEFINED`, ``bool``, ``int`` (integer), ``float``
(double), ``str``, :class:`~rtmpd.codec.amf0.XMLDocument` (XML and XML
document), ``datetime`` (UTC), ``list`` (array with only a dense part),
:class:`~rtmpd.codec.amf0.ECMAArray` (array with an associative part; dense
items keyed ``"0"``, ``"1"``…), ``dict`` (anonymous object),
:class:`~rtmpd.codec.amf0.TypedObject` (object with a class name), ``bytes``
(byte array).

The :class:`Encoder` writes the same types, with the three reference tables
used where a reference is shorter than the value (and always for a container
met again, which keeps the sharing). Both directions bound nesting by
:data:`rtmpd.codec.amf0.MAX_AMF_DEPTH`; the decoder also bounds items per
container and values per message (``amf0.MAX_AMF_ITEMS``,
``amf0.MAX_AMF_VALUES``), and every length it reads is checked against the
bytes left before anything is allocated, so no table or string can outgrow
the message that carried it.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Final

from rtmpd.codec import amf0
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_INLINE_LENGTH",
    "MAX_REFERENCE_INDEX",
    "MAX_TRAITS_INDEX",
    "Decoder",
    "Encoder",
    "decode_all",
    "encode",
    "encode_all",
    "encode_u29",
]

UNDEFINED_MARKER: Final = 0x00
NULL: Final = 0x01
FALSE: Final = 0x02
TRUE: Final = 0x03
INTEGER: Final = 0x04
DOUBLE: Final = 0x05
STRING: Final = 0x06
XML_DOC: Final = 0x07
DATE: Final = 0x08
ARRAY: Final = 0x09
OBJECT: Final = 0x0A
XML: Final = 0x0B
BYTE_ARRAY: Final = 0x0C
VECTOR_INT: Final = 0x0D
VECTOR_UINT: Final = 0x0E
VECTOR_DOUBLE: Final = 0x0F
VECTOR_OBJECT: Final = 0x10
DICTIONARY: Final = 0x11

INTEGER_MIN: Final = -(1 << 28)
INTEGER_MAX: Final = (1 << 28) - 1
U29_MAX: Final = (1 << 29) - 1

_DOUBLE = struct.Struct(">d")
_INCOMPLETE = -1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- encoding ----------------------------------------------------------------

#: Longest string, byte array or dense array the encoder writes, in bytes or
#: items. A length shares its U29 with the "inline" flag bit, which leaves 28
#: bits (256 MiB), far beyond any RTMP message (``chunk.MAX_MESSAGE_SIZE``).
MAX_INLINE_LENGTH: Final = U29_MAX >> 1
#: Highest string or object reference index: the index shares its U29 with
#: the flag bit that tells a reference from an inline value. Past it the
#: encoder writes values inline (always valid), never a wrapped index.
MAX_REFERENCE_INDEX: Final = U29_MAX >> 1
#: Highest traits reference index: two flag bits share that U29.
MAX_TRAITS_INDEX: Final = U29_MAX >> 2

#: U29O-traits of an inline, dynamic, not externalizable traits with no sealed
#: members: ``0b1011`` (inline object, inline traits, not externalizable,
#: dynamic), sealed count 0. Every object this encoder writes has that shape.
_DYNAMIC_TRAITS: Final = 0x0B


def encode_u29(value: int) -> bytes:
    """Encode an unsigned 29-bit integer in AMF3's 1-4 byte variable form."""
    if value < 0 or value > U29_MAX:
        raise LocalProtocolError(f"U29 value {value} out of range 0..{U29_MAX}")
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value >> 7) | 0x80, value & 0x7F))
    if value < 0x200000:
        return bytes(((value >> 14) | 0x80, ((value >> 7) & 0x7F) | 0x80, value & 0x7F))
    return bytes(
        (
            (value >> 22) | 0x80,
            ((value >> 15) & 0x7F) | 0x80,
            ((value >> 8) & 0x7F) | 0x80,
            value & 0xFF,
        )
    )


def _u29_size(value: int) -> int:
    if value < 0x80:
        return 1
    if value < 0x4000:
        return 2
    return 3 if value < 0x200000 else 4


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"string is not encodable as UTF-8: {exc}") from None


def _inline_length(length: int, what: str) -> bytes:
    if length > MAX_INLINE_LENGTH:
        raise LocalProtocolError(
            f"AMF3 {what} of {length} exceeds MAX_INLINE_LENGTH ({MAX_INLINE_LENGTH})"
        )
    return encode_u29((length << 1) | 1)


class Encoder:
    """One AMF3 encoding context, the mirror of :class:`Decoder`.

    It keeps the three reference tables a decoder of its output builds
    (strings; objects, arrays, dates, XML and byte arrays; traits), entry for
    entry, and writes a reference instead of a value where that is shorter:

    * a string already sent, when its index takes fewer bytes than the string
      (the empty string is never a reference, as the format says);
    * a date, XML document or byte array of a value already sent, likewise;
    * a container (``list``, ``dict``, :class:`~rtmpd.codec.amf0.ECMAArray`,
      :class:`~rtmpd.codec.amf0.TypedObject`) that is the same Python object as
      one already sent: always, so the decoder gets the sharing back;
    * the traits of an object (its class name, dynamic, no sealed members)
      already sent, when the reference is shorter than the traits.

    A value sent inline again is added to the tables again, as the decoder
    does. A container that contains itself cannot be written (the format has
    no reference to an unfinished object): :class:`LocalProtocolError`.
    Successive :meth:`encode` calls share the tables, like one
    :class:`Decoder` reading them back; a value behind the AMF0 AVM+ switch
    (0x11) starts a fresh context, so encode each of those with
    :func:`encode`.
    """

    __slots__ = (
        "_depth",
        "_keep",
        "_object_count",
        "_objects",
        "_open",
        "_string_count",
        "_strings",
        "_traits",
        "_traits_count",
    )

    def __init__(self, *, depth: int = 0) -> None:
        self._depth = depth
        self._strings: dict[str, int] = {}
        self._string_count = 0
        # Keys: ("id", id(container)) or (kind, value) for immutable values.
        self._objects: dict[tuple[str, object], int] = {}
        self._object_count = 0
        self._traits: dict[str, int] = {}  # class name -> index (dynamic, no sealed)
        self._traits_count = 0
        self._open: set[int] = set()
        # Containers referenced by id() stay alive as long as the context, so
        # an id is never reused by a later value.
        self._keep: list[object] = []

    def encode(self, value: object) -> bytes:
        """Encode one value (see the module docstring for the mapping)."""
        out: list[bytes] = []
        self._value(out, value, self._depth)
        return b"".join(out)

    # tables

    def _string_ref(self, text: str, raw: bytes) -> bytes | None:
        index = self._strings.get(text)
        if index is None or index > MAX_REFERENCE_INDEX:
            return None
        if _u29_size(index << 1) < _u29_size((len(raw) << 1) | 1) + len(raw):
            return encode_u29(index << 1)
        return None

    def _string(self, out: list[bytes], text: str, what: str = "string") -> None:
        raw = _utf8(text)
        ref = self._string_ref(text, raw) if raw else None
        if ref is not None:
            out.append(ref)
            return
        out.append(_inline_length(len(raw), what))
        out.append(raw)
        if raw:
            self._strings[text] = self._string_count
            self._string_count += 1

    def _string_size(self, text: str) -> int:
        raw = _utf8(text)
        ref = self._string_ref(text, raw) if raw else None
        if ref is not None:
            return len(ref)
        return _u29_size((len(raw) << 1) | 1) + len(raw)

    def _add_object(self, key: tuple[str, object]) -> None:
        self._objects[key] = self._object_count
        self._object_count += 1

    def _object_ref(self, key: tuple[str, object], inline_size: int | None) -> bytes | None:
        """The reference for ``key``, if sent before and (with an
        ``inline_size``) shorter than sending it again."""
        index = self._objects.get(key)
        if index is None or index > MAX_REFERENCE_INDEX:
            return None
        if inline_size is not None and _u29_size(index << 1) >= inline_size:
            return None
        return encode_u29(index << 1)

    # values

    def _value(self, out: list[bytes], value: object, depth: int) -> None:
        if depth > amf0.MAX_AMF_DEPTH:
            raise LocalProtocolError(
                f"value nests deeper than MAX_AMF_DEPTH ({amf0.MAX_AMF_DEPTH})"
            )
        if value is None:
            out.append(b"\x01")
        elif value is amf0.UNDEFINED:
            out.append(b"\x00")
        elif value is True:
            out.append(b"\x03")
        elif value is False:
            out.append(b"\x02")
        elif isinstance(value, int) and INTEGER_MIN <= value <= INTEGER_MAX:
            out.append(b"\x04")
            out.append(encode_u29(value & U29_MAX))
        elif isinstance(value, int | float):
            try:
                number = float(value)
            except OverflowError:
                raise LocalProtocolError(f"integer {value} does not fit an AMF3 double") from None
            out.append(b"\x05")
            out.append(_DOUBLE.pack(number))
        elif isinstance(value, amf0.XMLDocument):
            self._immutable(out, b"\x07", ("xml", str(value)), _utf8(value), "XML document")
        elif isinstance(value, str):
            out.append(b"\x06")
            self._string(out, value)
        elif isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            self._immutable(out, b"\x0c", ("bytes", raw), raw, "byte array")
        elif isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise LocalProtocolError("AMF3 dates must be timezone-aware datetimes")
            millis = (value - _EPOCH) / timedelta(milliseconds=1)
            key = ("date", millis)
            ref = self._object_ref(key, 1 + 8)
            out.append(b"\x08")
            if ref is not None:
                out.append(ref)
            else:
                self._add_object(key)
                out.append(b"\x01")
                out.append(_DOUBLE.pack(millis))
        elif isinstance(value, list | tuple | dict | amf0.TypedObject):
            self._container(out, value, depth)
        else:
            raise LocalProtocolError(f"no AMF3 encoding for {type(value).__name__}")

    def _immutable(
        self, out: list[bytes], marker: bytes, key: tuple[str, object], raw: bytes, what: str
    ) -> None:
        out.append(marker)
        header = _inline_length(len(raw), what)
        ref = self._object_ref(key, len(header) + len(raw))
        if ref is not None:
            out.append(ref)
            return
        self._add_object(key)
        out.append(header)
        out.append(raw)

    def _container(self, out: list[bytes], value: object, depth: int) -> None:
        ident = id(value)
        if ident in self._open:
            raise LocalProtocolError(
                f"{type(value).__name__} contains itself: AMF3 has no reference to an "
                "object still being written"
            )
        key = ("id", ident)
        ref = self._object_ref(key, None)
        if isinstance(value, list | tuple | amf0.ECMAArray):
            out.append(b"\x09")
        else:
            out.append(b"\x0a")
        if ref is not None:
            out.append(ref)
            return
        self._add_object(key)
        self._keep.append(value)
        self._open.add(ident)
        try:
            if isinstance(value, amf0.ECMAArray):
                out.append(b"\x01")  # no dense part
                self._members(out, value, depth)
            elif isinstance(value, list | tuple):
                out.append(_inline_length(len(value), "array"))
                out.append(b"\x01")  # empty associative part
                for item in value:
                    self._value(out, item, depth + 1)
            elif isinstance(value, dict):
                self._object_traits(out, "")
                self._members(out, value, depth)
            else:
                assert isinstance(value, amf0.TypedObject)
                self._object_traits(out, value.class_name)
                self._members(out, value.members, depth)
        finally:
            self._open.discard(ident)

    def _object_traits(self, out: list[bytes], class_name: str) -> None:
        index = self._traits.get(class_name)
        if index is not None and index <= MAX_TRAITS_INDEX:
            ref_size = _u29_size((index << 2) | 1)
            if ref_size < 1 + self._string_size(class_name):
                out.append(encode_u29((index << 2) | 1))
                return
        self._traits[class_name] = self._traits_count
        self._traits_count += 1
        out.append(bytes((_DYNAMIC_TRAITS,)))
        self._string(out, class_name, "class name")

    def _members(self, out: list[bytes], members: dict[str, object], depth: int) -> None:
        for key, item in members.items():
            if not isinstance(key, str) or not key:
                raise LocalProtocolError("AMF3 member names must be non-empty str")
            self._string(out, key, "member name")
            self._value(out, item, depth + 1)
        out.append(b"\x01")  # the empty name ends the dynamic members


def encode(value: object) -> bytes:
    """Encode one value as AMF3, in a fresh reference context."""
    return Encoder().encode(value)


def encode_all(*values: object) -> bytes:
    """Encode several AMF3 values back to back in one reference context (what
    :func:`decode_all` reads back)."""
    encoder = Encoder()
    return b"".join(encoder.encode(value) for value in values)


# --- decoding ----------------------------------------------------------------


class _Traits:
    __slots__ = ("class_name", "dynamic", "sealed")

    def __init__(self, class_name: str, dynamic: bool, sealed: list[str]) -> None:
        self.class_name = class_name
        self.dynamic = dynamic
        self.sealed = sealed


class Decoder:
    """Decode AMF3 values from ``data`` starting at ``offset``.

    One ``Decoder`` is one AMF3 context: its string, object and traits
    reference tables span every value it decodes. ``depth`` is the nesting
    level already used by an enclosing AMF0 value. ``values_decoded`` counts
    values including referenced subtrees (see ``amf0.MAX_AMF_VALUES``).
    """

    __slots__ = ("_data", "_depth", "_objects", "_pos", "_strings", "_traits", "values_decoded")

    def __init__(self, data: bytes, offset: int = 0, *, depth: int = 0) -> None:
        self._data = bytes(data)
        if not 0 <= offset <= len(self._data):
            raise LocalProtocolError(f"offset {offset} outside data of {len(self._data)} bytes")
        self._pos = offset
        self._depth = depth
        self._strings: list[str] = []
        self._objects: list[tuple[object, int]] = []
        self._traits: list[_Traits] = []
        self.values_decoded = 0

    @property
    def offset(self) -> int:
        """Offset of the next undecoded byte."""
        return self._pos

    @property
    def remaining(self) -> int:
        """Bytes not yet consumed."""
        return len(self._data) - self._pos

    def decode(self) -> object:
        """Decode and return the next value; ``RemoteProtocolError`` if bad or truncated."""
        if self._pos >= len(self._data):
            raise RemoteProtocolError("AMF3: no value left to decode")
        return self._value(self._depth)

    # primitives

    def _take(self, size: int, what: str) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise RemoteProtocolError(
                f"AMF3 {what} truncated: needs {size} bytes, {len(self._data) - self._pos} left"
            )
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def _u29(self, what: str) -> int:
        data = self._data
        value = 0
        for i in range(4):
            if self._pos >= len(data):
                raise RemoteProtocolError(f"AMF3 {what} truncated")
            byte = data[self._pos]
            self._pos += 1
            if i == 3:
                return (value << 8) | byte
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                return value
        raise AssertionError("unreachable")  # pragma: no cover

    def _add_values(self, count: int) -> None:
        self.values_decoded += count
        if self.values_decoded > amf0.MAX_AMF_VALUES:
            raise RemoteProtocolError(
                f"AMF3 data expands to more than MAX_AMF_VALUES ({amf0.MAX_AMF_VALUES}) values"
            )

    def _check_count(self, count: int, what: str) -> None:
        if count > amf0.MAX_AMF_ITEMS:
            raise RemoteProtocolError(
                f"AMF3 {what} of {count} items exceeds MAX_AMF_ITEMS ({amf0.MAX_AMF_ITEMS})"
            )
        if count > self.remaining:
            raise RemoteProtocolError(
                f"AMF3 {what} of {count} items but only {self.remaining} bytes left"
            )

    def _string(self, what: str = "string") -> str:
        header = self._u29(f"{what} header")
        if not header & 1:
            index = header >> 1
            if index >= len(self._strings):
                raise RemoteProtocolError(
                    f"AMF3 string reference {index} but only {len(self._strings)} strings"
                )
            return self._strings[index]
        raw = self._take(header >> 1, what)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"AMF3 {what} is not valid UTF-8: {exc.reason}") from None
        if text:
            self._strings.append(text)
        return text

    def _object_reference(self, header: int) -> object:
        index = header >> 1
        if index >= len(self._objects):
            raise RemoteProtocolError(
                f"AMF3 object reference {index} but only {len(self._objects)} objects"
            )
        target, weight = self._objects[index]
        if weight == _INCOMPLETE:
            raise RemoteProtocolError(f"AMF3 reference {index} to an object still being decoded")
        self._add_values(weight - 1)
        return target

    def _begin(self, obj: object) -> tuple[int, int]:
        self._objects.append((obj, _INCOMPLETE))
        return len(self._objects) - 1, self.values_decoded

    def _finish(self, token: tuple[int, int], obj: object) -> None:
        index, start = token
        self._objects[index] = (obj, self.values_decoded - start + 1)

    # values

    def _value(self, depth: int) -> object:
        if depth > amf0.MAX_AMF_DEPTH:
            raise RemoteProtocolError(f"AMF3 nesting exceeds MAX_AMF_DEPTH ({amf0.MAX_AMF_DEPTH})")
        if self._pos >= len(self._data):
            raise RemoteProtocolError("AMF3 marker truncated")
        marker = self._data[self._pos]
        self._pos += 1
        self._add_values(1)
        if marker == UNDEFINED_MARKER:
            return amf0.UNDEFINED
        if marker == NULL:
            return None
        if marker == FALSE:
            return False
        if marker == TRUE:
            return True
        if marker == INTEGER:
            raw = self._u29("integer")
            return raw - (1 << 29) if raw & (1 << 28) else raw
        if marker == DOUBLE:
            number: float = _DOUBLE.unpack(self._take(8, "double"))[0]
            return number
        if marker == STRING:
            return self._string()
        if marker in (XML_DOC, XML):
            return self._xml()
        if marker == DATE:
            return self._date()
        if marker == ARRAY:
            return self._array(depth)
        if marker == OBJECT:
            return self._object(depth)
        if marker == BYTE_ARRAY:
            return self._byte_array()
        if marker in (VECTOR_INT, VECTOR_UINT, VECTOR_DOUBLE, VECTOR_OBJECT, DICTIONARY):
            raise RemoteProtocolError(f"AMF3 marker 0x{marker:02x} (vector/dictionary) unsupported")
        raise RemoteProtocolError(f"AMF3 marker 0x{marker:02x} is not defined")

    def _xml(self) -> object:
        header = self._u29("XML header")
        if not header & 1:
            return self._object_reference(header)
        raw = self._take(header >> 1, "XML")
        try:
            text = amf0.XMLDocument(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"AMF3 XML is not valid UTF-8: {exc.reason}") from None
        self._objects.append((text, 1))
        return text

    def _date(self) -> object:
        header = self._u29("date header")
        if not header & 1:
            return self._object_reference(header)
        millis: float = _DOUBLE.unpack(self._take(8, "date"))[0]
        if not math.isfinite(millis):
            raise RemoteProtocolError(f"AMF3 date {millis} is not a finite number")
        try:
            value = _EPOCH + timedelta(milliseconds=millis)
        except OverflowError:
            raise RemoteProtocolError(f"AMF3 date {millis} ms is out of range") from None
        self._objects.append((value, 1))
        return value

    def _byte_array(self) -> object:
        header = self._u29("byte array header")
        if not header & 1:
            return self._object_reference(header)
        value = self._take(header >> 1, "byte array")
        self._objects.append((value, 1))
        return value

    def _array(self, depth: int) -> object:
        header = self._u29("array header")
        if not header & 1:
            return self._object_reference(header)
        dense_count = header >> 1
        self._check_count(dense_count, "array")
        # The associative part comes first; whether the result is a list or an
        # ECMAArray depends on it, so remember the placeholder's index.
        assoc = amf0.ECMAArray()
        token = self._begin(assoc)
        while True:
            key = self._string("array key")
            if not key:
                break
            if len(assoc) >= amf0.MAX_AMF_ITEMS:
                raise RemoteProtocolError(
                    f"AMF3 array has more than MAX_AMF_ITEMS ({amf0.MAX_AMF_ITEMS}) members"
                )
            assoc[key] = self._value(depth + 1)
        dense = [self._value(depth + 1) for _ in range(dense_count)]
        if not assoc:
            self._finish(token, dense)
            return dense
        for i, item in enumerate(dense):
            assoc[str(i)] = item
        self._finish(token, assoc)
        return assoc

    def _object(self, depth: int) -> object:
        header = self._u29("object header")
        if not header & 1:
            return self._object_reference(header)
        if not header & 2:
            index = header >> 2
            if index >= len(self._traits):
                raise RemoteProtocolError(
                    f"AMF3 traits reference {index} but only {len(self._traits)} traits"
                )
            traits = self._traits[index]
        elif header & 4:
            raise RemoteProtocolError("AMF3 externalizable objects are not supported")
        else:
            dynamic = bool(header & 8)
            sealed_count = header >> 4
            self._check_count(sealed_count, "sealed member list")
            class_name = self._string("class name")
            sealed = [self._string("member name") for _ in range(sealed_count)]
            traits = _Traits(class_name, dynamic, sealed)
            self._traits.append(traits)
        members: dict[str, object] = {}
        result: object = (
            amf0.TypedObject(traits.class_name, members) if traits.class_name else members
        )
        token = self._begin(result)
        for name in traits.sealed:
            members[name] = self._value(depth + 1)
        if traits.dynamic:
            while True:
                key = self._string("member name")
                if not key:
                    break
                if len(members) >= amf0.MAX_AMF_ITEMS:
                    raise RemoteProtocolError(
                        f"AMF3 object has more than MAX_AMF_ITEMS ({amf0.MAX_AMF_ITEMS}) members"
                    )
                members[key] = self._value(depth + 1)
        self._finish(token, result)
        return result


def decode_all(data: bytes) -> list[object]:
    """Decode every AMF3 value in ``data`` with one shared reference context."""
    decoder = Decoder(data)
    values: list[object] = []
    while decoder.remaining:
        values.append(decoder.decode())
    return values
