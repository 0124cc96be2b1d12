"""ISO BMFF (ISO/IEC 14496-12) box writer and reader.

A box is ``size(32) type(32) [largesize(64) if size == 1] [usertype(128) if type == 'uuid']``
followed by its payload; ``size == 0`` means "to the end of the enclosing container (or file)".
A *full box* adds ``version(8) flags(24)`` at the start of the payload.

The writer appends to one ``bytearray`` and patches each box size when the box closes, so
callers never compute a size by hand. The reader only walks headers: it checks that every
child fits its parent and never reads past the range it is given.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_BOX_DEPTH",
    "BoxHeader",
    "BoxWriter",
    "FieldReader",
    "iter_boxes",
    "parse_box_header",
]

#: Deepest nesting the reader follows. The deepest path we need is
#: moov/trak/mdia/minf/stbl/stsd/<sample entry>/<config> (8 levels); 16 leaves room for
#: wrappers (``wave``, ``sinf``) while stopping a crafted file from recursing without end.
MAX_BOX_DEPTH = 16

_U32_MAX = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _fourcc(box_type: bytes) -> bytes:
    if len(box_type) != 4:
        raise LocalProtocolError(f"box type {box_type!r} is not 4 bytes")
    return box_type


class BoxWriter:
    """Builds nested boxes into one buffer; box sizes are patched when each box closes.

    ::

        w = BoxWriter()
        with w.box(b"moov"):
            with w.full_box(b"mvhd", version=0, flags=0):
                w.u32(0)
        data = w.getvalue()

    A box whose size passes 2**32 - 1 gets a 64-bit ``largesize`` header when it closes
    (its payload moves 8 bytes); ``large=True`` reserves that header up front instead.
    """

    __slots__ = ("_buf", "_open")

    def __init__(self) -> None:
        self._buf = bytearray()
        # (start offset, box type, header is 16 bytes)
        self._open: list[tuple[int, bytes, bool]] = []

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def depth(self) -> int:
        """Number of boxes currently open."""
        return len(self._open)

    @contextmanager
    def box(self, box_type: bytes, *, large: bool = False) -> Iterator[None]:
        """Open a box of ``box_type``; its size is patched when the ``with`` block ends."""
        start = len(self._buf)
        if large:
            self._buf += b"\x00\x00\x00\x01" + _fourcc(box_type) + bytes(8)
        else:
            self._buf += bytes(4) + _fourcc(box_type)
        self._open.append((start, box_type, large))
        yield
        self._close(box_type)

    @contextmanager
    def full_box(
        self, box_type: bytes, *, version: int, flags: int, large: bool = False
    ) -> Iterator[None]:
        """Open a full box: the payload starts with ``version(8) flags(24)``."""
        if not 0 <= version <= 0xFF or not 0 <= flags <= 0xFFFFFF:
            raise LocalProtocolError(f"full box {box_type!r} version {version} flags {flags}")
        with self.box(box_type, large=large):
            self._buf += _U32.pack((version << 24) | flags)
            yield

    def _close(self, box_type: bytes) -> None:
        if not self._open or self._open[-1][1] != box_type:
            raise LocalProtocolError(f"closing {box_type!r} which is not the innermost open box")
        start, _, large = self._open.pop()
        size = len(self._buf) - start
        if large:
            self._buf[start + 8 : start + 16] = _U64.pack(size)
        elif size <= _U32_MAX:
            self._buf[start : start + 4] = _U32.pack(size)
        else:
            # Rare (a box over 4 GiB built in memory): switch to a 16-byte header.
            size += 8
            self._buf[start : start + 4] = _U32.pack(1)
            self._buf[start + 8 : start + 8] = _U64.pack(size)

    # -- fields -----------------------------------------------------------------------

    def _pack(self, fmt: str, value: int) -> None:
        try:
            self._buf += struct.pack(fmt, value)
        except struct.error as exc:
            raise LocalProtocolError(f"value {value} does not fit field {fmt!r}") from exc

    def u8(self, value: int) -> None:
        self._pack(">B", value)

    def u16(self, value: int) -> None:
        self._pack(">H", value)

    def i16(self, value: int) -> None:
        self._pack(">h", value)

    def u24(self, value: int) -> None:
        if not 0 <= value <= 0xFFFFFF:
            raise LocalProtocolError(f"value {value} does not fit 24 bits")
        self._buf += value.to_bytes(3, "big")

    def u32(self, value: int) -> None:
        self._pack(">I", value)

    def i32(self, value: int) -> None:
        self._pack(">i", value)

    def u64(self, value: int) -> None:
        self._pack(">Q", value)

    def i64(self, value: int) -> None:
        self._pack(">q", value)

    def u32_array(self, values: Sequence[int]) -> None:
        """Append many u32 fields at once (sample tables)."""
        self._pack_many("I", values)

    def u64_array(self, values: Sequence[int]) -> None:
        self._pack_many("Q", values)

    def _pack_many(self, code: str, values: Sequence[int]) -> None:
        try:
            self._buf += struct.pack(f">{len(values)}{code}", *values)
        except struct.error as exc:
            raise LocalProtocolError(f"a value does not fit field {code!r}: {exc}") from exc

    def fourcc(self, value: bytes) -> None:
        self._buf += _fourcc(value)

    def write(self, data: bytes) -> None:
        """Append raw bytes (a decoder configuration record, a string, sample data)."""
        self._buf += data

    def zeros(self, count: int) -> None:
        self._buf += bytes(count)

    def reserve_u32(self) -> int:
        """Write a 32-bit placeholder and return its offset, for :meth:`patch_i32`/`patch_u32`."""
        pos = len(self._buf)
        self._buf += bytes(4)
        return pos

    def patch_u32(self, pos: int, value: int) -> None:
        try:
            self._buf[pos : pos + 4] = _U32.pack(value)
        except struct.error as exc:
            raise LocalProtocolError(f"value {value} does not fit u32") from exc

    def patch_i32(self, pos: int, value: int) -> None:
        try:
            self._buf[pos : pos + 4] = struct.pack(">i", value)
        except struct.error as exc:
            raise LocalProtocolError(f"value {value} does not fit i32") from exc

    def getvalue(self) -> bytes:
        """Everything written so far; every box must be closed."""
        if self._open:
            names = "/".join(t.decode("latin-1") for _, t, _ in self._open)
            raise LocalProtocolError(f"boxes still open: {names}")
        return bytes(self._buf)


class BoxHeader(NamedTuple):
    """One box found by :func:`iter_boxes`; offsets are absolute within the data walked."""

    type: bytes
    start: int
    header_size: int
    end: int

    @property
    def payload_start(self) -> int:
        return self.start + self.header_size

    @property
    def size(self) -> int:
        return self.end - self.start


def parse_box_header(header: bytes, start: int, parent_end: int) -> BoxHeader:
    """Parse the header of the box at absolute offset ``start``.

    ``header`` holds the bytes from ``start`` on (up to 24 are used; fewer only when the
    parent ends sooner). ``parent_end`` bounds the box: a box that would pass it is an error.
    """
    avail = parent_end - start
    if avail < 8 or len(header) < 8:
        raise RemoteProtocolError(f"box header at {start} truncated ({max(avail, 0)} bytes left)")
    size, box_type = struct.unpack_from(">I4s", header, 0)
    header_size = 8
    if size == 1:
        if avail < 16 or len(header) < 16:
            raise RemoteProtocolError(f"box {box_type!r} at {start}: largesize truncated")
        (size,) = _U64.unpack_from(header, 8)
        header_size = 16
    elif size == 0:
        size = avail
    if box_type == b"uuid":
        header_size += 16
    if size < header_size:
        raise RemoteProtocolError(
            f"box {box_type!r} at {start} has size {size}, smaller than its header ({header_size})"
        )
    if size > avail:
        raise RemoteProtocolError(
            f"box {box_type!r} at {start} has size {size} but only {avail} bytes remain "
            "in its parent"
        )
    return BoxHeader(box_type, start, header_size, start + size)


def iter_boxes(
    data: bytes | memoryview, offset: int = 0, end: int | None = None, *, depth: int = 0
) -> Iterator[BoxHeader]:
    """Yield the boxes laid end to end in ``data[offset:end]``.

    ``depth`` is the nesting level of these boxes (0 for top level); passing one deeper
    than :data:`MAX_BOX_DEPTH` raises. Any box overrunning ``end`` raises
    :class:`RemoteProtocolError`.
    """
    if depth > MAX_BOX_DEPTH:
        raise RemoteProtocolError(
            f"boxes nested {depth} deep exceed MAX_BOX_DEPTH ({MAX_BOX_DEPTH})"
        )
    if end is None:
        end = len(data)
    if not 0 <= offset <= end <= len(data):
        raise LocalProtocolError(f"range {offset}..{end} outside data of {len(data)} bytes")
    pos = offset
    while pos < end:
        head = parse_box_header(bytes(data[pos : min(pos + 24, end)]), pos, end)
        yield head
        pos = head.end


class FieldReader:
    """Reads big-endian fields from ``data[pos:end]``; overrunning ``end`` raises
    :class:`RemoteProtocolError` naming ``what`` (usually the box type)."""

    __slots__ = ("data", "end", "pos", "what")

    def __init__(self, data: bytes | memoryview, pos: int, end: int, what: str) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.what = what

    @classmethod
    def for_box(cls, data: bytes | memoryview, box: BoxHeader) -> FieldReader:
        return cls(data, box.payload_start, box.end, box.type.decode("latin-1"))

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _take(self, count: int) -> int:
        pos = self.pos
        if count < 0 or pos + count > self.end:
            raise RemoteProtocolError(
                f"{self.what}: needs {count} bytes at {pos}, only {self.end - pos} left"
            )
        self.pos = pos + count
        return pos

    def u8(self) -> int:
        return self.data[self._take(1)]

    def u16(self) -> int:
        return int.from_bytes(self.data[self._take(2) : self.pos], "big")

    def i16(self) -> int:
        return int.from_bytes(self.data[self._take(2) : self.pos], "big", signed=True)

    def u24(self) -> int:
        return int.from_bytes(self.data[self._take(3) : self.pos], "big")

    def u32(self) -> int:
        return int.from_bytes(self.data[self._take(4) : self.pos], "big")

    def i32(self) -> int:
        return int.from_bytes(self.data[self._take(4) : self.pos], "big", signed=True)

    def u64(self) -> int:
        return int.from_bytes(self.data[self._take(8) : self.pos], "big")

    def i64(self) -> int:
        return int.from_bytes(self.data[self._take(8) : self.pos], "big", signed=True)

    def bytes(self, count: int) -> bytes:
        return bytes(self.data[self._take(count) : self.pos])

    def skip(self, count: int) -> None:
        self._take(count)

    def version_flags(self) -> tuple[int, int]:
        """Read a full box's ``version(8) flags(24)``."""
        value = self.u32()
        return value >> 24, value & 0xFFFFFF

    def need(self, count: int) -> None:
        """Raise unless ``count`` more bytes remain (used to bound table entry counts)."""
        if count > self.end - self.pos:
            raise RemoteProtocolError(
                f"{self.what}: table needs {count} bytes, only {self.end - self.pos} in the box"
            )
