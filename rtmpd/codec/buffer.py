"""A receive buffer consumed through a read offset, with commit/rollback.

Parsers append what arrives and read from a position that only moves
forward, so parsing a stream of ``n`` bytes costs O(n): nothing re-slices
the whole buffer per message. Consumed bytes are dropped in bulk at
:meth:`ByteBuffer.commit`, once they make up at least half of the buffer.

A parser that finds a header split across two reads calls
:meth:`ByteBuffer.rollback` to return to the last committed position and
waits for more data; once a whole unit is parsed it calls
:meth:`ByteBuffer.commit`.
"""

from __future__ import annotations

import struct
from typing import Any

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

# Consumed bytes are only compacted away once there are this many of them,
# so small messages do not pay for a memmove each.
_COMPACT_THRESHOLD = 64 * 1024


class ByteBuffer:
    """Bytes received but not yet parsed.

    ``max_size`` (bytes, optional) bounds the unconsumed data held, measured
    from the last commit; appending past it raises
    :class:`RemoteProtocolError`, since only a peer sending faster than the
    parser consumes can cause it.
    """

    __slots__ = ("_data", "_mark", "_max_size", "_pos")

    def __init__(self, *, max_size: int | None = None) -> None:
        if max_size is not None and max_size < 0:
            raise LocalProtocolError(f"max_size must be >= 0, got {max_size}")
        self._data = bytearray()
        self._pos = 0
        self._mark = 0
        self._max_size = max_size

    def __len__(self) -> int:
        """Bytes available to read from the current position."""
        return len(self._data) - self._pos

    @property
    def uncommitted(self) -> int:
        """Bytes read since the last commit (what a rollback would return)."""
        return self._pos - self._mark

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes at the end."""
        if self._max_size is not None:
            held = len(self._data) - self._mark + len(data)
            if held > self._max_size:
                raise RemoteProtocolError(
                    f"{held} buffered bytes exceed the buffer limit ({self._max_size})"
                )
        self._data += data

    def peek(self, n: int) -> bytes | None:
        """The next ``n`` bytes without consuming them, or None if fewer are held."""
        end = self._pos + n
        if n < 0 or end > len(self._data):
            return None
        with memoryview(self._data) as view:
            return bytes(view[self._pos : end])

    def read(self, n: int) -> bytes | None:
        """Consume and return the next ``n`` bytes, or None (consuming nothing)."""
        end = self._pos + n
        if n < 0 or end > len(self._data):
            return None
        with memoryview(self._data) as view:
            out = bytes(view[self._pos : end])
        self._pos = end
        return out

    def skip(self, n: int) -> bool:
        """Consume ``n`` bytes if held; return whether it did."""
        end = self._pos + n
        if n < 0 or end > len(self._data):
            return False
        self._pos = end
        return True

    def unpack(self, st: struct.Struct) -> tuple[Any, ...] | None:
        """Consume ``st.size`` bytes decoded by ``st``, or None (consuming nothing)."""
        end = self._pos + st.size
        if end > len(self._data):
            return None
        out = st.unpack_from(self._data, self._pos)
        self._pos = end
        return out

    def commit(self) -> None:
        """Forget everything read so far: it can no longer be rolled back."""
        self._mark = self._pos
        if self._mark >= _COMPACT_THRESHOLD and self._mark * 2 >= len(self._data):
            del self._data[: self._mark]
            self._pos = self._mark = 0

    def rollback(self) -> None:
        """Return the read position to the last commit."""
        self._pos = self._mark
