"""The RTMP handshake, server and client side, plain and with digests.

Wire layout (RTMP spec 5.2, plus the digest scheme Flash Player and FMS use)::

    client                                   server
    C0 (1 byte: version 3)  ------------->
    C1 (1536 bytes)         ------------->
                            <-------------   S0 (1 byte: version 3)
                            <-------------   S1 (1536 bytes)
                            <-------------   S2 (1536 bytes)
    C2 (1536 bytes)         ------------->
    chunk stream ...        <------------>   chunk stream ...

C1/S1 = time (4) | version (4, zero in the plain handshake) | 1528 random
bytes. In the plain handshake S2 echoes C1 and C2 echoes S1.

In the digest ("complex") handshake, C1 and S1 carry a 32-byte HMAC-SHA256
digest of the other 1504 bytes, placed at an offset derived from four bytes
of the packet itself:

* scheme 0: offset = (C1[8] + C1[9] + C1[10] + C1[11]) % 728 + 12
* scheme 1: offset = (C1[772] + ... + C1[775]) % 728 + 776

The client keys its digest with the first 30 bytes of :data:`FP_KEY`, the
server with the first 36 bytes of :data:`FMS_KEY`. The last 32 bytes of S2
are ``HMAC(key=HMAC(FMS_KEY, client digest), S2[:1504])`` and those of C2
``HMAC(key=HMAC(FP_KEY, server digest), C2[:1504])``. Some clients (FFmpeg,
Flash Player when playing) verify S1/S2 this way and give up otherwise.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Final

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ENCRYPTED_VERSION",
    "FMS_KEY",
    "FP_KEY",
    "HANDSHAKE_SIZE",
    "RTMP_VERSION",
    "S1_RANDOM_SIZE",
    "ClientHandshake",
    "ServerHandshake",
    "digest_offset",
    "find_digest",
    "make_digest",
]

RTMP_VERSION: Final = 3
# C0 = 6 asks for RTMPE (Diffie-Hellman + RC4), which we do not implement.
ENCRYPTED_VERSION: Final = 6
HANDSHAKE_SIZE: Final = 1536
DIGEST_SIZE: Final = 32

_KEY_TAIL: Final = bytes.fromhex("f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae")
# Flash Media Server key: its first 36 bytes sign S1; all 68 sign S2.
FMS_KEY: Final = b"Genuine Adobe Flash Media Server 001" + _KEY_TAIL
# Flash Player key: its first 30 bytes sign C1; all 62 sign C2.
FP_KEY: Final = b"Genuine Adobe Flash Player 001" + _KEY_TAIL
FMS_KEY_PARTIAL_LEN: Final = 36
FP_KEY_PARTIAL_LEN: Final = 30

# Version field of our S1 in the digest handshake. Clients such as FFmpeg only
# verify the server digest when the first byte is >= 3, so claim FMS 5.0.3.1.
SERVER_VERSION: Final = bytes((5, 0, 3, 1))
# Version field of our C1 in the digest handshake (a Flash Player 9 build:
# the first version that used the digest scheme).
CLIENT_VERSION: Final = bytes((9, 0, 124, 2))

#: Bytes of S1 after its time and version fields: random, or anything.
S1_RANDOM_SIZE: Final = HANDSHAKE_SIZE - 8
#: S0 and the start of a plain S1: version 3, time 0, zero field.
_PLAIN_S0S1_HEAD: Final = bytes((RTMP_VERSION,)) + bytes(8)

_SCHEME_BASES: Final = ((8, 12), (772, 776))  # (where the offset bytes are, base)


def digest_offset(packet: bytes, scheme: int) -> int:
    """Where the 32-byte digest sits in a 1536-byte C1/S1 for ``scheme`` 0 or 1."""
    at, base = _SCHEME_BASES[scheme]
    return sum(packet[at : at + 4]) % 728 + base


def make_digest(packet: bytes, offset: int, key: bytes) -> bytes:
    """HMAC-SHA256 of ``packet`` without the 32 bytes at ``offset``."""
    mac = hmac.new(key, packet[:offset], hashlib.sha256)
    mac.update(packet[offset + DIGEST_SIZE :])
    return mac.digest()


def find_digest(packet: bytes, key: bytes) -> tuple[int, bytes] | None:
    """Return ``(scheme, digest)`` if ``packet`` carries a valid digest keyed by ``key``."""
    for scheme in (0, 1):
        offset = digest_offset(packet, scheme)
        expected = make_digest(packet, offset, key)
        if hmac.compare_digest(expected, packet[offset : offset + DIGEST_SIZE]):
            return scheme, expected
    return None


def _imprint(packet: bytearray, scheme: int, key: bytes) -> bytes:
    """Write a digest into ``packet`` (in place) and return it."""
    offset = digest_offset(bytes(packet), scheme)
    digest = make_digest(bytes(packet), offset, key)
    packet[offset : offset + DIGEST_SIZE] = digest
    return digest


def _signature(random_part: bytes, full_key: bytes, peer_digest: bytes) -> bytes:
    """Trailing 32 bytes of S2/C2: HMAC(HMAC(full_key, peer_digest), random_part)."""
    key = hmac.new(full_key, peer_digest, hashlib.sha256).digest()
    return hmac.new(key, random_part, hashlib.sha256).digest()


def _check_version(version: int, who: str) -> None:
    if version == RTMP_VERSION:
        return
    if version == ENCRYPTED_VERSION:
        raise RemoteProtocolError(
            f"{who} asks for encrypted RTMPE (version 6), which is not supported; use RTMP or RTMPS"
        )
    if version in b"GPHOC":  # GET, POST, HEAD, OPTIONS, CONNECT
        raise RemoteProtocolError(
            f"{who} version byte 0x{version:02x} ({chr(version)!r}) looks like HTTP, not RTMP"
        )
    raise RemoteProtocolError(f"{who} RTMP version {version} is not supported (expected 3)")


class _State(enum.Enum):
    AWAIT_C0C1 = "await C0+C1"  # server
    AWAIT_C2 = "await C2"  # server
    AWAIT_S0S1 = "await S0+S1"  # client
    AWAIT_S2 = "await S2"  # client
    DONE = "done"


class _Handshake:
    """What both sides share: injected randomness, the output buffer, and
    the bytes that arrive after the handshake (the start of the chunk stream)."""

    _random_bytes: Callable[[int], bytes]
    _state: _State
    _buffer: bytearray
    _out: bytearray

    def _random(self, size: int) -> bytes:
        data = self._random_bytes(size)
        if len(data) != size:
            raise LocalProtocolError(f"random_bytes({size}) returned {len(data)} bytes")
        return data

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer; clears them."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def leftover(self) -> bytes:
        """Bytes received after the peer's last handshake packet (chunk
        stream data); clears them."""
        if self._state is not _State.DONE:
            raise LocalProtocolError("leftover() called before the handshake is done")
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


class ServerHandshake(_Handshake):
    """Server side: read C0+C1, answer S0+S1+S2, read C2.

    ``receive_data`` raises :class:`RemoteProtocolError` on a bad version;
    after ``done`` becomes true, ``leftover()`` returns the bytes that followed
    C2 (the start of the chunk stream). ``complex`` says whether the client
    used the digest handshake (known once C1 arrived).

    ``s1_random``, if given, fills S1 after its time and version fields
    (:data:`S1_RANDOM_SIZE` bytes) instead of fresh random bytes. Nothing
    depends on those bytes being new: the client echoes them in C2, which is
    not checked, and in the digest handshake they are what the digest signs.
    A server takes one block for all its connections, so that a join storm
    does not read the system's randomness once per viewer.
    """

    def __init__(
        self,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        s1_random: bytes | None = None,
    ) -> None:
        if s1_random is not None and len(s1_random) != S1_RANDOM_SIZE:
            raise LocalProtocolError(
                f"s1_random of {len(s1_random)} bytes, not S1_RANDOM_SIZE ({S1_RANDOM_SIZE})"
            )
        self._random_bytes = random_bytes
        self._s1_random = s1_random
        self._state = _State.AWAIT_C0C1
        self._buffer = bytearray()
        self._out = bytearray()
        self.complex = False
        self.client_version = b"\x00\x00\x00\x00"

    @property
    def done(self) -> bool:
        """True once C2 has been received."""
        return self._state is _State.DONE

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client."""
        if self._state is _State.DONE:
            self._buffer += data
            return
        if (
            self._state is _State.AWAIT_C0C1
            and not self._buffer
            and len(data) >= 1 + HANDSHAKE_SIZE
        ):
            # C0+C1 in one read, as clients send it: answer from ``data``
            # without copying it through the buffer.
            _check_version(data[0], "client C0")
            self._out += self._answer(data[1 : 1 + HANDSHAKE_SIZE])
            self._state = _State.AWAIT_C2
            data = data[1 + HANDSHAKE_SIZE :]
        self._buffer += data
        if self._state is _State.AWAIT_C0C1:
            if self._buffer:
                _check_version(self._buffer[0], "client C0")
            if len(self._buffer) < 1 + HANDSHAKE_SIZE:
                return
            c1 = bytes(self._buffer[1 : 1 + HANDSHAKE_SIZE])
            del self._buffer[: 1 + HANDSHAKE_SIZE]
            self._out += self._answer(c1)
            self._state = _State.AWAIT_C2
        if self._state is _State.AWAIT_C2 and len(self._buffer) >= HANDSHAKE_SIZE:
            # C2 is not checked: clients fill it inconsistently, and nothing
            # that follows depends on it.
            del self._buffer[:HANDSHAKE_SIZE]
            self._state = _State.DONE

    def _answer(self, c1: bytes) -> bytes:
        self.client_version = c1[4:8]
        found = None
        if self.client_version != b"\x00\x00\x00\x00":
            found = find_digest(c1, FP_KEY[:FP_KEY_PARTIAL_LEN])
        random_part = self._s1_random or self._random(S1_RANDOM_SIZE)
        if found is None:
            return b"".join((_PLAIN_S0S1_HEAD, random_part, c1))
        self.complex = True
        scheme, client_digest = found
        s1_buf = bytearray(b"\x00\x00\x00\x00" + SERVER_VERSION + random_part)
        _imprint(s1_buf, scheme, FMS_KEY[:FMS_KEY_PARTIAL_LEN])
        s2_random = self._random(HANDSHAKE_SIZE - DIGEST_SIZE)
        s2 = s2_random + _signature(s2_random, FMS_KEY, client_digest)
        return bytes((RTMP_VERSION,)) + bytes(s1_buf) + s2



class ClientHandshake(_Handshake):
    """Client side: send C0+C1, read S0+S1, send C2, read S2.

    With ``complex=True`` C1 carries a digest (``scheme`` 0 or 1). The server
    may answer either way: if S1 carries a valid FMS digest, C2 is signed and
    S2's signature must match (or S2 must echo C1); otherwise C2 echoes S1 and
    S2 is not checked, as plain clients do.
    """

    def __init__(
        self,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        complex: bool = True,
        scheme: int = 0,
    ) -> None:
        if scheme not in (0, 1):
            raise LocalProtocolError(f"digest scheme must be 0 or 1, not {scheme}")
        self._random_bytes = random_bytes
        self._state = _State.AWAIT_S0S1
        self._buffer = bytearray()
        self._client_digest: bytes | None = None
        self._server_complex = False
        if complex:
            c1 = bytearray(b"\x00\x00\x00\x00" + CLIENT_VERSION + self._random(HANDSHAKE_SIZE - 8))
            self._client_digest = _imprint(c1, scheme, FP_KEY[:FP_KEY_PARTIAL_LEN])
        else:
            c1 = bytearray(b"\x00\x00\x00\x00\x00\x00\x00\x00" + self._random(HANDSHAKE_SIZE - 8))
        self._c1 = bytes(c1)
        self._out = bytearray(bytes((RTMP_VERSION,)) + self._c1)

    @property
    def done(self) -> bool:
        """True once S2 has been received and checked."""
        return self._state is _State.DONE

    @property
    def server_complex(self) -> bool:
        """Whether the server answered with a valid digest handshake."""
        return self._server_complex

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server."""
        self._buffer += data
        if self._state is _State.AWAIT_S0S1:
            if self._buffer:
                _check_version(self._buffer[0], "server S0")
            if len(self._buffer) < 1 + HANDSHAKE_SIZE:
                return
            s1 = bytes(self._buffer[1 : 1 + HANDSHAKE_SIZE])
            del self._buffer[: 1 + HANDSHAKE_SIZE]
            self._out += self._c2(s1)
            self._state = _State.AWAIT_S2
        if self._state is _State.AWAIT_S2 and len(self._buffer) >= HANDSHAKE_SIZE:
            s2 = bytes(self._buffer[:HANDSHAKE_SIZE])
            del self._buffer[:HANDSHAKE_SIZE]
            self._check_s2(s2)
            self._state = _State.DONE

    def _c2(self, s1: bytes) -> bytes:
        found = None
        if self._client_digest is not None and s1[4:8] != b"\x00\x00\x00\x00":
            found = find_digest(s1, FMS_KEY[:FMS_KEY_PARTIAL_LEN])
        if found is None:
            return s1
        self._server_complex = True
        c2_random = self._random(HANDSHAKE_SIZE - DIGEST_SIZE)
        return c2_random + _signature(c2_random, FP_KEY, found[1])

    def _check_s2(self, s2: bytes) -> None:
        if not self._server_complex or self._client_digest is None:
            return
        expected = _signature(s2[:-DIGEST_SIZE], FMS_KEY, self._client_digest)
        if hmac.compare_digest(expected, s2[-DIGEST_SIZE:]):
            return
        if s2[8:] == self._c1[8:]:
            return  # the server signed S1 but echoed C1 in S2; accept it
        raise RemoteProtocolError("server S2 signature does not match our C1 digest")

