"""RTMP handshake: plain and digest modes, built and checked independently of the code."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.rtmp.handshake import (
    FMS_KEY,
    FP_KEY,
    HANDSHAKE_SIZE,
    ClientHandshake,
    ServerHandshake,
)

FP_KEY_SPEC = b"Genuine Adobe Flash Player 001" + bytes.fromhex(
    "F0EEC24A8068BEE82E00D0D1029E7E576EEC5D2D29806FAB93B8E636CFEB31AE"
)
FMS_KEY_SPEC = b"Genuine Adobe Flash Media Server 001" + FP_KEY_SPEC[30:]


def seeded(seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def spec_offset(packet: bytes, scheme: int) -> int:
    at, base = (8, 12) if scheme == 0 else (772, 776)
    return sum(packet[at : at + 4]) % 728 + base


def spec_digest(packet: bytes, offset: int, key: bytes) -> bytes:
    return hmac.new(key, packet[:offset] + packet[offset + 32 :], hashlib.sha256).digest()


def spec_c1(scheme: int, seed: int = 1) -> tuple[bytes, bytes]:
    """A digest C1 as Flash Player builds it: returns (C1, its digest)."""
    body = bytearray(b"\x00\x00\x00\x00\x09\x00\x7c\x02" + random.Random(seed).randbytes(1528))
    offset = spec_offset(bytes(body), scheme)
    digest = spec_digest(bytes(body), offset, FP_KEY_SPEC[:30])
    body[offset : offset + 32] = digest
    return bytes(body), digest


def pump(server: ServerHandshake, client: ClientHandshake, tail: bytes = b"") -> None:
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send() + tail)
    server.receive_data(client.data_to_send() + tail)


def test_keys_match_the_spec_constants() -> None:
    assert FP_KEY == FP_KEY_SPEC and len(FP_KEY) == 62
    assert FMS_KEY == FMS_KEY_SPEC and len(FMS_KEY) == 68


def test_plain_round_trip_echoes_c1_and_s1() -> None:
    server = ServerHandshake(random_bytes=seeded(1))
    client = ClientHandshake(random_bytes=seeded(2), complex=False)
    c0c1 = client.data_to_send()
    assert len(c0c1) == 1 + HANDSHAKE_SIZE and c0c1[0] == 3
    assert c0c1[5:9] == b"\x00\x00\x00\x00"
    server.receive_data(c0c1)
    s = server.data_to_send()
    assert len(s) == 1 + 2 * HANDSHAKE_SIZE and s[0] == 3
    assert s[5:9] == b"\x00\x00\x00\x00"  # plain S1: zero version
    assert s[1 + HANDSHAKE_SIZE :] == c0c1[1:]  # S2 echoes C1
    assert not server.complex
    client.receive_data(s)
    c2 = client.data_to_send()
    assert c2 == s[1 : 1 + HANDSHAKE_SIZE]  # C2 echoes S1
    assert client.done and not client.server_complex
    server.receive_data(c2 + b"chunks")
    assert server.done
    assert server.leftover() == b"chunks"


@pytest.mark.parametrize("scheme", [0, 1])
def test_digest_round_trip(scheme: int) -> None:
    server = ServerHandshake(random_bytes=seeded(3))
    client = ClientHandshake(random_bytes=seeded(4), complex=True, scheme=scheme)
    pump(server, client, tail=b"")
    assert server.complex and client.server_complex
    assert server.done and client.done


@pytest.mark.parametrize("scheme", [0, 1])
def test_spec_c1_is_recognised_and_answer_verifies_like_a_client(scheme: int) -> None:
    c1, client_digest = spec_c1(scheme)
    server = ServerHandshake(random_bytes=seeded(5))
    server.receive_data(b"\x03" + c1)
    assert server.complex
    out = server.data_to_send()
    s1 = out[1 : 1 + HANDSHAKE_SIZE]
    s2 = out[1 + HANDSHAKE_SIZE :]
    assert s1[4] >= 3  # FFmpeg checks the server digest only for version >= 3
    # S1 carries an FMS digest at the same scheme.
    offset = spec_offset(s1, scheme)
    assert s1[offset : offset + 32] == spec_digest(s1, offset, FMS_KEY_SPEC[:36])
    # S2 is signed with a key derived from the client's digest.
    key = hmac.new(FMS_KEY_SPEC, client_digest, hashlib.sha256).digest()
    assert s2[-32:] == hmac.new(key, s2[:-32], hashlib.sha256).digest()


def test_client_c2_is_signed_with_the_fp_key_and_server_digest() -> None:
    server = ServerHandshake(random_bytes=seeded(6))
    client = ClientHandshake(random_bytes=seeded(7))
    server.receive_data(client.data_to_send())
    out = server.data_to_send()
    s1 = out[1 : 1 + HANDSHAKE_SIZE]
    client.receive_data(out)
    c2 = client.data_to_send()
    offset = spec_offset(s1, 0)
    server_digest = s1[offset : offset + 32]
    key = hmac.new(FP_KEY_SPEC, server_digest, hashlib.sha256).digest()
    assert c2[-32:] == hmac.new(key, c2[:-32], hashlib.sha256).digest()


def test_c1_with_version_but_bad_digest_gets_plain_answer() -> None:
    c1 = b"\x00\x00\x00\x00\x09\x00\x7c\x02" + bytes(1528)
    server = ServerHandshake(random_bytes=seeded(8))
    server.receive_data(b"\x03" + c1)
    out = server.data_to_send()
    assert not server.complex
    assert out[1 + HANDSHAKE_SIZE :] == c1


def test_complex_client_accepts_plain_server() -> None:
    server = ServerHandshake(random_bytes=seeded(9))
    client = ClientHandshake(random_bytes=seeded(10))
    c0c1 = client.data_to_send()
    # A plain server: zero-version S1 and an echo of C1.
    s1 = bytes(8) + bytes(range(256)) * 5 + bytes(248)
    client.receive_data(b"\x03" + s1 + c0c1[1:])
    assert client.done and not client.server_complex
    assert client.data_to_send() == s1
    del server


def test_client_rejects_bad_s2_signature_from_digest_server() -> None:
    server = ServerHandshake(random_bytes=seeded(11))
    client = ClientHandshake(random_bytes=seeded(12))
    server.receive_data(client.data_to_send())
    out = bytearray(server.data_to_send())
    out[-1] ^= 0xFF
    with pytest.raises(RemoteProtocolError, match="S2 signature"):
        client.receive_data(bytes(out))


def test_byte_by_byte_gives_same_result_and_leftover() -> None:
    server = ServerHandshake(random_bytes=seeded(13))
    client = ClientHandshake(random_bytes=seeded(14))
    for byte in client.data_to_send():
        assert not server.done
        server.receive_data(bytes((byte,)))
    s = server.data_to_send()
    for byte in s:
        client.receive_data(bytes((byte,)))
    assert client.done
    c2 = client.data_to_send() + b"\x02tail"
    for byte in c2:
        server.receive_data(bytes((byte,)))
    assert server.done
    assert server.leftover() == b"\x02tail"


def test_short_input_needs_more_data() -> None:
    server = ServerHandshake()
    server.receive_data(b"\x03" + bytes(100))
    assert not server.done
    assert server.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        server.leftover()


def test_encrypted_handshake_is_refused_with_clear_message() -> None:
    with pytest.raises(RemoteProtocolError, match="RTMPE"):
        ServerHandshake().receive_data(b"\x06")


def test_http_on_the_rtmp_port_is_refused_with_clear_message() -> None:
    with pytest.raises(RemoteProtocolError, match="HTTP"):
        ServerHandshake().receive_data(b"GET / HTTP/1.1\r\n")


@pytest.mark.parametrize("version", [0, 1, 4, 255])
def test_other_versions_are_refused(version: int) -> None:
    with pytest.raises(RemoteProtocolError, match="version"):
        ServerHandshake().receive_data(bytes((version,)) + bytes(1536))


def test_client_refuses_bad_s0() -> None:
    client = ClientHandshake()
    with pytest.raises(RemoteProtocolError):
        client.receive_data(b"\x08")


def test_random_bytes_of_wrong_length_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        ClientHandshake(random_bytes=lambda n: b"x")


def test_shared_s1_random_fills_a_plain_s1_and_the_reply_is_otherwise_unchanged() -> None:
    shared = bytes(range(256)) * 5 + bytes(248)
    c0c1 = ClientHandshake(random_bytes=seeded(15), complex=False).data_to_send()
    server = ServerHandshake(random_bytes=seeded(16), s1_random=shared)
    server.receive_data(c0c1)
    out = server.data_to_send()
    assert out == b"\x03" + bytes(8) + shared + c0c1[1:]


@pytest.mark.parametrize("scheme", [0, 1])
def test_shared_s1_random_is_signed_in_a_digest_handshake(scheme: int) -> None:
    shared = random.Random(17).randbytes(1528)
    c1, _digest = spec_c1(scheme)
    server = ServerHandshake(random_bytes=seeded(18), s1_random=shared)
    server.receive_data(b"\x03" + c1)
    s1 = server.data_to_send()[1 : 1 + HANDSHAKE_SIZE]
    assert server.complex
    offset = spec_offset(s1, scheme)
    assert s1[offset : offset + 32] == spec_digest(s1, offset, FMS_KEY_SPEC[:36])
    # Outside its digest, S1 is the shared block.
    assert s1[8:offset] + s1[offset + 32 :] == shared[: offset - 8] + shared[offset + 24 :]


def test_shared_s1_random_of_the_wrong_size_is_refused() -> None:
    expected = r"s1_random of 100 bytes, not S1_RANDOM_SIZE \(1528\)"
    with pytest.raises(LocalProtocolError, match=expected):
        ServerHandshake(s1_random=bytes(100))


@pytest.mark.parametrize("c2_tail", [b"", b"\x02chunks"])
def test_c0c1_with_c2_in_one_read_answers_as_when_split(c2_tail: bytes) -> None:
    """A client that sends C0+C1 and C2 at once (a replay, or a pipelining
    client) is answered as one that waits; the rest is the chunk stream."""
    c0c1 = b"\x03" + bytes(8) + random.Random(19).randbytes(1528)
    c2 = random.Random(20).randbytes(HANDSHAKE_SIZE)
    whole = ServerHandshake(random_bytes=seeded(21))
    whole.receive_data(c0c1 + c2 + c2_tail)
    split = ServerHandshake(random_bytes=seeded(21))
    split.receive_data(c0c1[:700])
    split.receive_data(c0c1[700:] + c2[:5])
    split.receive_data(c2[5:] + c2_tail)
    assert whole.data_to_send() == split.data_to_send()
    assert whole.done and split.done
    assert whole.leftover() == split.leftover() == c2_tail
