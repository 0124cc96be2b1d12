"""Bit-level reader and writer, MSB first, with Exp-Golomb codes.

Used for H.264/H.265 parameter sets (``ue(v)``/``se(v)``, ISO/IEC 14496-10
§9.1) and MPEG-4 audio configs. Reading past the end raises
:class:`RemoteProtocolError`: the bits always come from a peer.
"""

from __future__ import annotations

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

# ue(v) codes with more leading zeros than this do not fit 32 bits: H.264
# and H.265 never code a value above 2**32 - 2, so more zeros mean garbage.
MAX_EXP_GOLOMB_LEADING_ZEROS = 31


class BitReader:
    """Reads bits from ``data``, most significant bit first.

    ``what`` names the structure in error messages ("SPS", "AudioSpecificConfig").
    """

    __slots__ = ("_data", "_pos", "_size", "what")

    def __init__(self, data: bytes, *, what: str = "bitstream") -> None:
        self._data = data
        self._pos = 0
        self._size = len(data) * 8
        self.what = what

    @property
    def position(self) -> int:
        """Bits read so far."""
        return self._pos

    @property
    def bits_left(self) -> int:
        """Bits not yet read."""
        return self._size - self._pos

    def _overrun(self, n: int) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"truncated {self.what}: reading {n} bits at bit {self._pos} of {self._size}"
        )

    def bits(self, n: int) -> int:
        """Read an ``n``-bit unsigned integer (``u(n)``)."""
        if n < 0:
            raise LocalProtocolError(f"cannot read {n} bits")
        end = self._pos + n
        if end > self._size:
            raise self._overrun(n)
        if n == 0:
            return 0
        first = self._pos >> 3
        last = (end + 7) >> 3
        chunk = int.from_bytes(self._data[first:last], "big")
        self._pos = end
        return (chunk >> (last * 8 - end)) & ((1 << n) - 1)

    def flag(self) -> bool:
        """Read one bit as a bool (``u(1)``)."""
        if self._pos >= self._size:
            raise self._overrun(1)
        byte = self._data[self._pos >> 3]
        bit = (byte >> (7 - (self._pos & 7))) & 1
        self._pos += 1
        return bool(bit)

    def skip(self, n: int) -> None:
        """Skip ``n`` bits."""
        if n < 0:
            raise LocalProtocolError(f"cannot skip {n} bits")
        if self._pos + n > self._size:
            raise self._overrun(n)
        self._pos += n

    def ue(self) -> int:
        """Read an unsigned Exp-Golomb code (``ue(v)``)."""
        zeros = 0
        while not self.flag():
            zeros += 1
            if zeros > MAX_EXP_GOLOMB_LEADING_ZEROS:
                raise RemoteProtocolError(
                    f"Exp-Golomb code in {self.what} has more than "
                    f"{MAX_EXP_GOLOMB_LEADING_ZEROS} leading zeros "
                    "(MAX_EXP_GOLOMB_LEADING_ZEROS)"
                )
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """Read a signed Exp-Golomb code (``se(v)``): 1, -1, 2, -2, ..."""
        k = self.ue()
        return (k + 1) >> 1 if k & 1 else -(k >> 1)

    def byte_align(self) -> None:
        """Skip to the next byte boundary."""
        self._pos = min(self._size, (self._pos + 7) & ~7)


class BitWriter:
    """Builds a bit string, most significant bit first."""

    __slots__ = ("_count", "_value")

    def __init__(self) -> None:
        self._value = 0
        self._count = 0

    @property
    def bit_count(self) -> int:
        """Bits written so far."""
        return self._count

    def bits(self, value: int, n: int) -> None:
        """Append ``value`` as an ``n``-bit unsigned integer."""
        if n < 0 or not 0 <= value < (1 << n) or (n == 0 and value):
            raise LocalProtocolError(f"value {value} does not fit in {n} bits")
        self._value = (self._value << n) | value
        self._count += n

    def flag(self, value: bool) -> None:
        """Append one bit."""
        self.bits(1 if value else 0, 1)

    def ue(self, value: int) -> None:
        """Append an unsigned Exp-Golomb code."""
        if not 0 <= value <= (1 << (MAX_EXP_GOLOMB_LEADING_ZEROS + 1)) - 2:
            raise LocalProtocolError(f"ue(v) value {value} out of range")
        code = value + 1
        length = code.bit_length()
        self.bits(0, length - 1)
        self.bits(code, length)

    def se(self, value: int) -> None:
        """Append a signed Exp-Golomb code."""
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def to_bytes(self) -> bytes:
        """The bits written, zero-padded to a whole byte."""
        pad = -self._count % 8
        return (self._value << pad).to_bytes((self._count + pad) // 8, "big")
