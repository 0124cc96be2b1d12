"""RTMP message bodies: control, user control, commands and aggregates."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec import amf0, amf3
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.rtmp import messages as msg


def test_type_ids_match_the_spec() -> None:
    assert (msg.SET_CHUNK_SIZE, msg.ABORT, msg.ACK, msg.USER_CONTROL) == (1, 2, 3, 4)
    assert (msg.WINDOW_ACK_SIZE, msg.SET_PEER_BANDWIDTH, msg.AUDIO, msg.VIDEO) == (5, 6, 8, 9)
    assert (msg.DATA_AMF3, msg.COMMAND_AMF3, msg.DATA_AMF0, msg.COMMAND_AMF0) == (15, 17, 18, 20)
    assert msg.AGGREGATE == 22
    assert (msg.STREAM_BEGIN, msg.STREAM_EOF, msg.STREAM_DRY, msg.SET_BUFFER_LENGTH) == (0, 1, 2, 3)
    assert (msg.STREAM_IS_RECORDED, msg.PING_REQUEST, msg.PING_RESPONSE) == (4, 6, 7)


def test_protocol_control_bodies() -> None:
    assert msg.encode_set_chunk_size(4096) == b"\x00\x00\x10\x00"
    assert msg.encode_abort(6) == b"\x00\x00\x00\x06"
    assert msg.encode_ack(2**32 + 5) == b"\x00\x00\x00\x05"
    assert msg.encode_window_ack_size(2_500_000) == b"\x00\x26\x25\xa0"
    assert msg.encode_set_peer_bandwidth(2_500_000) == b"\x00\x26\x25\xa0\x02"
    assert msg.decode_set_peer_bandwidth(b"\x00\x26\x25\xa0\x01") == (2_500_000, 1)
    assert msg.decode_u32(b"\x00\x00\x10\x00", "x") == 4096
    with pytest.raises(RemoteProtocolError, match="needs 4"):
        msg.decode_u32(b"\x00", "Window Acknowledgement Size")
    with pytest.raises(RemoteProtocolError):
        msg.decode_set_peer_bandwidth(b"\x00\x00\x00\x01")
    with pytest.raises(LocalProtocolError):
        msg.encode_set_chunk_size(2**31)
    with pytest.raises(LocalProtocolError):
        msg.encode_set_peer_bandwidth(1, 3)


def test_user_control_bodies() -> None:
    assert msg.encode_user_control(msg.STREAM_BEGIN, 1) == b"\x00\x00\x00\x00\x00\x01"
    body = msg.encode_user_control(msg.SET_BUFFER_LENGTH, 1, buffer_length_ms=3000)
    assert body == b"\x00\x03\x00\x00\x00\x01\x00\x00\x0b\xb8"
    assert msg.decode_user_control(body) == msg.UserControl(
        event_type=3, value=1, buffer_length_ms=3000
    )
    assert msg.decode_user_control(b"\x00\x06\x00\x00\x04\xd2") == msg.UserControl(
        event_type=6, value=1234
    )
    for bad in (b"", b"\x00\x06\x00", b"\x00\x03\x00\x00\x00\x01\x00"):
        with pytest.raises(RemoteProtocolError):
            msg.decode_user_control(bad)
    with pytest.raises(LocalProtocolError):
        msg.encode_user_control(msg.SET_BUFFER_LENGTH, 1)


def test_command_round_trip() -> None:
    body = msg.encode_command("publish", 5, None, "cam", "live")
    assert body == amf0.encode_all("publish", 5.0, None, "cam", "live")
    assert msg.decode_command(body) == msg.Command(
        name="publish", transaction_id=5.0, command_object=None, args=("cam", "live")
    )


def test_command_with_only_a_name() -> None:
    assert msg.decode_command(amf0.encode("onBWDone")) == msg.Command(
        name="onBWDone", transaction_id=0.0
    )


def test_amf3_command_skips_format_byte_and_follows_switches() -> None:
    body = b"\x00" + amf0.encode_all("play", 0.0, None) + b"\x11" + amf3.encode("cam")
    assert msg.decode_command(body, amf3=True).args == ("cam",)


@pytest.mark.parametrize(
    "body",
    [b"", amf0.encode(1.0), amf0.encode_all("x", "not a number"), amf0.encode_all("x", True)],
)
def test_bad_commands_are_remote_errors(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        msg.decode_command(body)


def test_split_aggregate_rebases_timestamps() -> None:
    subs = [(8, 5000, b"a"), (9, 5020, b"bb"), (8, 5040, b"")]
    payload = msg.encode_aggregate(subs)
    assert msg.split_aggregate(payload, 100) == [(8, 100, b"a"), (9, 120, b"bb"), (8, 140, b"")]


def test_split_aggregate_uses_the_timestamp_extension_byte() -> None:
    payload = msg.encode_aggregate([(9, 0x01000000, b"x"), (9, 0x01000010, b"y")])
    assert payload[7] == 0x01
    assert msg.split_aggregate(payload, 0) == [(9, 0, b"x"), (9, 0x10, b"y")]


def test_split_aggregate_empty() -> None:
    assert msg.split_aggregate(b"", 0) == []


def test_split_aggregate_checks_back_pointers_and_sizes() -> None:
    good = msg.encode_aggregate([(8, 0, b"abc")])
    bad_back = good[:-4] + (3).to_bytes(4, "big")
    with pytest.raises(RemoteProtocolError, match="back pointer"):
        msg.split_aggregate(bad_back, 0)
    too_big = good[:1] + (1000).to_bytes(3, "big") + good[4:]
    with pytest.raises(RemoteProtocolError, match="overruns"):
        msg.split_aggregate(too_big, 0)
    for cut in range(1, len(good)):
        with pytest.raises(RemoteProtocolError):
            msg.split_aggregate(good[:cut], 0)


@given(st.binary(max_size=100), st.integers(0, 2**32 - 1))
@settings(max_examples=300)
def test_split_aggregate_random_bytes(payload: bytes, ts: int) -> None:
    with contextlib.suppress(RemoteProtocolError):
        for _type, sub_ts, _body in msg.split_aggregate(payload, ts):
            assert 0 <= sub_ts < 2**32


@given(st.binary(max_size=100))
@settings(max_examples=300)
def test_decode_command_random_bytes(payload: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        msg.decode_command(payload)
    with contextlib.suppress(RemoteProtocolError):
        msg.decode_user_control(payload)


def test_amf3_command_body_is_format_byte_amf0_head_then_switched_values() -> None:
    body = msg.encode_command_amf3("onStatus", 0.0, None, {"code": "c"}, "x")
    assert body == (
        b"\x00\x02\x00\x08onStatus\x00" + bytes(8)
        + b"\x05"  # null stays AMF0
        + b"\x11\x0a\x0b\x01\x09code\x06\x03c\x01"
        + b"\x11\x06\x03x"
    )
    command = msg.decode_command(body, amf3=True)
    assert command == msg.Command(
        name="onStatus", transaction_id=0.0, command_object=None, args=({"code": "c"}, "x")
    )


def test_amf3_data_body_normalizes_to_the_amf0_body() -> None:
    meta = amf0.ECMAArray(width=1280, codec="avc1")
    body = msg.encode_data_amf3("@setDataFrame", "onMetaData", meta)
    assert body[:1] == b"\x00"
    assert msg.normalize_data_amf3(body, max_size=1 << 20) == amf0.encode_all(
        "@setDataFrame", "onMetaData", meta
    )


def test_every_truncation_of_an_amf3_data_body_is_a_remote_error_or_a_prefix() -> None:
    body = msg.encode_data_amf3("onTextData", {"text": "hello", "n": 3})
    for cut in range(1, len(body)):
        try:
            out = msg.normalize_data_amf3(body[:cut], max_size=1 << 20)
        except RemoteProtocolError:
            continue
        # Only cuts before any value or right after the name leave whole values.
        assert out in (b"", amf0.encode("onTextData"))
