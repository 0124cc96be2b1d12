"""ServerConnection driven by ClientConnection in memory, plus transcripts and fuzzing."""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec import amf0, amf3
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.rtmp import connection
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp import messages as msg
from rtmpd.codec.rtmp.chunk import NEED_DATA, ChunkReader, Message, encode_message
from rtmpd.codec.rtmp.connection import (
    AUDIO_CSID,
    COMMAND_CSID,
    DATA_CSID,
    MAX_STREAMS_PER_CONNECTION,
    MEDIA_CHUNK_STREAM_IDS,
    VIDEO_CSID,
    ClientConnection,
    ClientState,
    ConnectionState,
    ServerConnection,
)


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def drain(conn: ServerConnection | ClientConnection) -> list[object]:
    out: list[object] = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
    return out


class Spy:
    """Parses one direction's bytes after the handshake into messages."""

    def __init__(self, handshake_size: int) -> None:
        self.skip = handshake_size
        self.reader = ChunkReader()
        self.messages: list[Message] = []

    def feed(self, data: bytes) -> None:
        if self.skip:
            cut = min(self.skip, len(data))
            self.skip -= cut
            data = data[cut:]
        self.reader.receive_data(data)
        while (m := self.reader.next_event()) is not NEED_DATA:
            assert isinstance(m, Message)
            self.messages.append(m)

    def take(self) -> list[Message]:
        out, self.messages = self.messages, []
        return out


class Pair:
    """A client and a server joined in memory; remembers every client byte."""

    def __init__(
        self, *, complex_handshake: bool = True, object_encoding: float = 0.0,
        **server_kwargs: object,
    ) -> None:
        self.server = ServerConnection(random_bytes=seeded(1), **server_kwargs)  # type: ignore[arg-type]
        self.client = ClientConnection(
            random_bytes=seeded(2), complex_handshake=complex_handshake,
            object_encoding=object_encoding,
        )
        self.client_bytes = bytearray()
        self.server_events: list[object] = []
        self.client_events: list[object] = []
        # Spies: every message each side sent, parsed independently.
        self.server_spy = Spy(1 + 2 * 1536)
        self.client_spy = Spy(1 + 2 * 1536)

    def pump(self) -> None:
        for _ in range(100):
            moved = False
            data = self.client.data_to_send()
            if data:
                moved = True
                self.client_bytes += data
                self.client_spy.feed(data)
                self.server.receive_data(data)
            self.server_events += drain(self.server)
            data = self.server.data_to_send()
            if data:
                moved = True
                self.server_spy.feed(data)
                self.client.receive_data(data)
            self.client_events += drain(self.client)
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def take_server(self) -> list[object]:
        self.pump()
        events, self.server_events = self.server_events, []
        return events

    def take_client(self) -> list[object]:
        self.pump()
        events, self.client_events = self.client_events, []
        return events

    def connect(self, app: str = "live", tc_url: str = "rtmp://h/live") -> ev.ConnectRequested:
        self.client.connect(app, tc_url)
        events = self.take_server()
        assert isinstance(events[0], ev.HandshakeCompleted)
        request = events[1]
        assert isinstance(request, ev.ConnectRequested)
        self.server.accept_connect(request.transaction_id)
        client_events = self.take_client()
        assert any(isinstance(e, ev.Connected) for e in client_events)
        return request

    def create_stream(self) -> int:
        self.client.create_stream()
        self.take_server()
        (created,) = [e for e in self.take_client() if isinstance(e, ev.StreamCreated)]
        return created.stream_id

    def publishing(self, name: str = "cam") -> int:
        self.connect()
        sid = self.create_stream()
        self.client.publish(sid, name)
        (request,) = self.take_server()
        assert isinstance(request, ev.PublishRequested)
        self.server.publish_start(sid, request.name)
        self.take_client()
        return sid


def server_messages(data: bytes, chunk_size: int = 128) -> list[Message]:
    """Parse raw server output (after the handshake) into messages."""
    reader = ChunkReader()
    reader._chunk_size = chunk_size
    reader.receive_data(data)
    out: list[Message] = []
    while (m := reader.next_event()) is not NEED_DATA:
        assert isinstance(m, Message)
        out.append(m)
    return out


def statuses(events: list[object]) -> list[tuple[int, str, str]]:
    return [(e.stream_id, e.level, e.code) for e in events if isinstance(e, ev.StatusReceived)]


# --- connect -------------------------------------------------------------------------


@pytest.mark.parametrize("complex_handshake", [True, False])
def test_connect_is_reported_and_accepted(complex_handshake: bool) -> None:
    pair = Pair(complex_handshake=complex_handshake)
    request = pair.connect("live/?key=abc", "rtmp://h/live")
    assert request.app == "live"
    assert request.query == "key=abc"
    assert request.tc_url == "rtmp://h/live"
    assert request.command_object["flashVer"] == "FMLE/3.0 (compatible; rtmpd)"
    assert pair.server.state is ConnectionState.CONNECTED
    assert pair.client.state is ClientState.CONNECTED
    assert pair.server.chunk_size_sent
    assert pair.client._reader.chunk_size == 4096  # the server's Set Chunk Size applied
    assert pair.client._peer_window == 2_500_000


def test_query_falls_back_to_tc_url() -> None:
    pair = Pair()
    request = pair.connect("live", "rtmp://h/live?token=t")
    assert (request.app, request.query) == ("live", "token=t")


def test_accept_connect_sends_control_messages_before_result() -> None:
    pair = Pair()
    pair.client.connect("live", "rtmp://h/live")
    pair.take_server()
    pair.server.accept_connect(1.0)
    messages = server_messages(pair.server.data_to_send())
    assert [m.type_id for m in messages] == [
        msg.WINDOW_ACK_SIZE,
        msg.SET_PEER_BANDWIDTH,
        msg.SET_CHUNK_SIZE,
        msg.COMMAND_AMF0,
    ]
    result = msg.decode_command(messages[3].payload)
    assert result.name == "_result"
    assert result.transaction_id == 1.0
    assert isinstance(result.command_object, dict)
    assert "fmsVer" in result.command_object
    info = result.args[0]
    assert isinstance(info, dict)
    assert info["code"] == "NetConnection.Connect.Success"
    assert info["objectEncoding"] == 0.0


def _play_session_output(pair: Pair) -> bytes:
    """Everything the server sends after the handshake for connect,
    createStream, play and one video message."""
    pair.connect()
    sid = pair.create_stream()
    pair.client.play(sid, "cam")
    (request,) = [e for e in pair.take_server() if isinstance(e, ev.PlayRequested)]
    pair.server.play_start(sid, request.name)
    pair.server.send_media(sid, msg.VIDEO, 40, b"\x17\x01" + bytes(300))
    # Messages on the control and command chunk streams after the play's
    # own: their headers are compressed against the play's.
    pair.server.play_unpublish_notify(sid, request.name)
    pair.pump()
    return b"".join(m.payload for m in pair.server_spy.take())


@pytest.mark.parametrize("object_encoding", [0.0, 3.0])
def test_connect_and_play_replies_are_the_same_bytes_for_every_connection(
    object_encoding: float,
) -> None:
    """The second connection's connect reply and play start (shared, written
    once by the first) and all that follows them are what the first got,
    byte for byte, and the client reads them alike."""
    connection._CONNECT_REPLIES.clear()  # the first connection writes them
    connection._PLAY_STARTS.clear()
    first = Pair(object_encoding=object_encoding)
    first_output = _play_session_output(first)
    assert len(connection._CONNECT_REPLIES) == len(connection._PLAY_STARTS) == 1
    second = Pair(object_encoding=object_encoding)
    assert _play_session_output(second) == first_output
    assert first.server_events == second.server_events
    assert first.client_events == second.client_events
    assert statuses(second.client_events)[-3:] == [
        (1, "status", "NetStream.Play.Reset"),
        (1, "status", "NetStream.Play.Start"),
        (1, "status", "NetStream.Play.UnpublishNotify"),
    ]


def test_play_start_after_other_output_is_written_for_its_own_header_state() -> None:
    """A ping between createStream and play changes the control chunk
    stream's last header: that play start is written anew, and the client
    reads every message."""
    plain, pinged = Pair(), Pair()
    for pair in (plain, pinged):
        pair.connect()
        sid = pair.create_stream()
        if pair is pinged:
            pair.server.send_ping(5)
        pair.client.play(sid, "cam")
        pair.take_server()
        pair.server.play_start(sid, "cam")
        pair.take_client()
    plain_messages = plain.server_spy.take()
    pinged_messages = pinged.server_spy.take()
    assert [m.type_id for m in pinged_messages] == [
        m.type_id for m in plain_messages[:-4]
    ] + [msg.USER_CONTROL] + [m.type_id for m in plain_messages[-4:]]
    assert [m.payload for m in pinged_messages[-4:]] == [m.payload for m in plain_messages[-4:]]


def test_accept_connect_after_other_output_still_compresses_headers_right() -> None:
    """Output before the connect reply (a ping) rules out the shared reply:
    the reply is written on the connection's own chunk streams, and the
    client reads every message that follows."""
    pair = Pair()
    pair.client.connect("live", "rtmp://h/live")
    (_done, request) = pair.take_server()
    assert isinstance(request, ev.ConnectRequested)
    pair.server.send_ping(7)
    pair.server.accept_connect(request.transaction_id)
    assert any(isinstance(e, ev.Connected) for e in pair.take_client())
    types = [m.type_id for m in pair.server_spy.take()]
    assert types == [
        msg.USER_CONTROL, msg.WINDOW_ACK_SIZE, msg.SET_PEER_BANDWIDTH, msg.SET_CHUNK_SIZE,
        msg.COMMAND_AMF0,
    ]
    sid = pair.create_stream()
    assert sid == 1


def test_connect_replies_differ_by_transaction_id_and_chunk_size() -> None:
    outputs = set()
    for tid, chunk_size in ((1.0, 4096), (2.0, 4096), (1.0, 60000)):
        pair = Pair(out_chunk_size=chunk_size)
        pair.client.connect("live", "rtmp://h/live")
        pair.take_server()
        pair.server.accept_connect(tid)
        messages = server_messages(pair.server.data_to_send())
        assert int.from_bytes(messages[2].payload, "big") == chunk_size
        assert msg.decode_command(messages[3].payload).transaction_id == tid
        outputs.add(b"".join(m.payload for m in messages))
    assert len(outputs) == 3


def test_connections_sending_the_same_connect_get_connect_objects_of_their_own() -> None:
    """The decoded connect is shared between connections that sent the
    same bytes; each ConnectRequested still has its own object."""
    first, second = Pair(), Pair()
    first_request = first.connect()
    second_request = second.connect()
    assert first_request == second_request
    first_request.command_object["app"] = "changed"
    assert second_request.command_object["app"] == "live"


def test_a_bad_command_body_fails_every_connection_that_sends_it() -> None:
    body = amf0.encode_all("createStream", 2.0)[:-3]  # a truncated number
    for _ in range(2):
        pair = Pair()
        pair.connect()
        pair.server.receive_data(
            encode_message(
                chunk_size=128, chunk_stream_id=3, type_id=msg.COMMAND_AMF0, stream_id=0,
                timestamp_ms=0, payload=body,
            )
        )
        with pytest.raises(RemoteProtocolError, match="AMF0"):
            drain(pair.server)


def test_reject_connect_gives_connect_failed_and_ignores_more_input() -> None:
    pair = Pair()
    pair.client.connect("nope", "rtmp://h/nope")
    request = pair.take_server()[1]
    assert isinstance(request, ev.ConnectRequested)
    pair.server.reject_connect(request.transaction_id, "no such app")
    (failed,) = [e for e in pair.take_client() if isinstance(e, ev.ConnectFailed)]
    assert failed.description == "no such app"
    assert failed.code == "NetConnection.Connect.Rejected"
    assert pair.client.state is ClientState.FAILED
    pair.server.receive_data(b"\xff" * 100)
    assert drain(pair.server) == []


def test_accept_twice_is_a_local_error() -> None:
    pair = Pair()
    pair.connect()
    with pytest.raises(LocalProtocolError):
        pair.server.accept_connect(1.0)


def test_second_connect_is_a_remote_error() -> None:
    pair = Pair()
    pair.connect()
    pair.client._send_command(0, "connect", 5.0, {"app": "x"})
    with pytest.raises(RemoteProtocolError, match="connect") as info:
        pair.pump()
    assert info.value.hint == "_error"


# --- publishing ------------------------------------------------------------------------


def test_publish_session_connect_to_delete() -> None:
    pair = Pair()
    pair.connect()
    pair.client.send_command("releaseStream", None, "cam")
    pair.client.send_command("FCPublish", None, "cam")
    sid = pair.create_stream()
    assert sid == 1
    pair.client.publish(sid, "cam?key=abc")
    (request,) = pair.take_server()
    assert request == ev.PublishRequested(
        stream_id=1, name="cam", query="key=abc", publish_type="live"
    )
    pair.server.publish_start(sid, "cam")
    assert statuses(pair.take_client()) == [(1, "status", "NetStream.Publish.Start")]

    pair.client.send_metadata(sid, {"width": 640.0, "height": 360.0})
    pair.client.send_media(sid, msg.VIDEO, 0, b"\x17\x00video-config")
    pair.client.send_media(sid, msg.AUDIO, 0, b"\xaf\x00")
    pair.client.send_media(sid, msg.VIDEO, 40, b"\x27\x01" + bytes(9000))
    aggregate = msg.encode_aggregate(
        [
            (msg.AUDIO, 1000, b"\xaf\x01a"),
            (msg.VIDEO, 1020, b"\x27\x01b"),
            (msg.AUDIO, 1043, b"\xaf\x01c"),
        ]
    )
    pair.client.send_message(VIDEO_CSID, msg.AGGREGATE, sid, 80, aggregate)
    events = pair.take_server()
    assert events == [
        ev.DataReceived(
            stream_id=1,
            timestamp_ms=0,
            payload=amf0.encode_all("onMetaData", amf0.ECMAArray(width=640.0, height=360.0)),
        ),
        ev.MediaReceived(stream_id=1, type_id=9, timestamp_ms=0, payload=b"\x17\x00video-config"),
        ev.MediaReceived(stream_id=1, type_id=8, timestamp_ms=0, payload=b"\xaf\x00"),
        ev.MediaReceived(
            stream_id=1, type_id=9, timestamp_ms=40, payload=b"\x27\x01" + bytes(9000)
        ),
        ev.MediaReceived(stream_id=1, type_id=8, timestamp_ms=80, payload=b"\xaf\x01a"),
        ev.MediaReceived(stream_id=1, type_id=9, timestamp_ms=100, payload=b"\x27\x01b"),
        ev.MediaReceived(stream_id=1, type_id=8, timestamp_ms=123, payload=b"\xaf\x01c"),
    ]

    pair.client.send_command("FCUnpublish", None, "cam")
    assert pair.take_server() == [ev.UnpublishRequested(stream_id=1, name="cam")]
    pair.server.unpublish_success(sid, "cam")
    assert statuses(pair.take_client()) == [(1, "status", "NetStream.Unpublish.Success")]
    pair.client.delete_stream(sid)
    assert pair.take_server() == [ev.StreamDeleted(stream_id=1)]
    pair.server.receive_data(b"")
    assert drain(pair.server) == [ev.ConnectionClosed()]
    assert drain(pair.server) == []
    assert pair.server.state is ConnectionState.CLOSED


def test_housekeeping_commands_are_answered() -> None:
    pair = Pair()
    pair.connect()
    pair.client.send_command("releaseStream", None, "cam")
    pair.client.send_command("FCPublish", None, "cam")
    pair.client.send_command("getStreamLength", None, "cam")
    pair.client.send_command("checkBandwidth")
    pair.client.send_command("_checkbw")
    pair.client.send_command("play2", None, {})
    pair.server_spy.take()
    assert pair.take_server() == []
    answers = [msg.decode_command(m.payload) for m in pair.server_spy.take()]
    assert [(a.name, a.transaction_id) for a in answers] == [
        ("_result", 2.0),
        ("onFCPublish", 0.0),
        ("_result", 4.0),
    ]
    assert answers[2].args == (0.0,)


def test_unknown_command_with_transaction_id_gets_error_answer() -> None:
    pair = Pair()
    pair.connect()
    pair.client.send_command("frobnicate", None, 1.0)
    pair.client._send_command(0, "silentThing", 0.0, None)
    assert pair.take_server() == []
    assert statuses(pair.take_client()) == [(0, "error", "NetConnection.Call.Failed")]


def test_media_waits_while_publish_is_pending() -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    pair.client.publish(sid, "cam")
    pair.client.send_media(sid, msg.AUDIO, 0, b"\xaf\x00")
    events = pair.take_server()
    assert [type(e) for e in events] == [ev.PublishRequested]
    assert pair.server.paused
    assert drain(pair.server) == []
    pair.server.publish_start(sid, "cam")
    assert drain(pair.server) == [
        ev.MediaReceived(stream_id=sid, type_id=8, timestamp_ms=0, payload=b"\xaf\x00")
    ]


def test_media_on_a_stream_that_is_not_publishing_is_dropped() -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    pair.client.send_media(sid, msg.AUDIO, 0, b"\xaf\x00")
    assert pair.take_server() == []


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("publish_bad_name", "NetStream.Publish.BadName"),
        ("publish_rejected", "NetStream.Publish.Rejected"),
    ],
)
def test_publish_refusals_are_level_error(method: str, code: str) -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    pair.client.publish(sid, "cam")
    pair.take_server()
    getattr(pair.server, method)(sid, "cam", "busy")
    assert statuses(pair.take_client()) == [(sid, "error", code)]
    pair.client.send_media(sid, msg.AUDIO, 0, b"\xaf\x00")
    assert pair.take_server() == []


def test_amf3_data_and_commands_are_accepted() -> None:
    pair = Pair()
    sid = pair.publishing()
    body = amf0.encode_all("onTextData", {"text": "hi"})
    pair.client.send_message(DATA_CSID, msg.DATA_AMF3, sid, 5, b"\x00" + body)
    assert pair.take_server() == [ev.DataReceived(stream_id=sid, timestamp_ms=5, payload=body)]
    command = b"\x00" + amf0.encode_all("FCUnpublish", 0.0, None) + b"\x11" + amf3.encode("cam")
    pair.client.send_message(COMMAND_CSID, msg.COMMAND_AMF3, 0, 0, command)
    assert pair.take_server() == [ev.UnpublishRequested(stream_id=sid, name="cam")]


def test_amf3_connect_is_accepted() -> None:
    server = ServerConnection(random_bytes=seeded(3))
    client = ClientConnection(random_bytes=seeded(4))
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    drain(client)
    body = (
        b"\x00"
        + amf0.encode_all("connect", 1.0)
        + b"\x11"
        + amf3.encode({"app": "live", "tcUrl": "rtmp://h/live"})
    )
    client.send_message(COMMAND_CSID, msg.COMMAND_AMF3, 0, 0, body)
    server.receive_data(client.data_to_send())
    events = drain(server)
    assert isinstance(events[-1], ev.ConnectRequested)
    assert events[-1].app == "live"


def test_publish_before_connect_is_a_remote_error_with_error_hint() -> None:
    pair = Pair()
    pair.pump()  # handshake only
    pair.client._send_command(1, "publish", 0.0, None, "cam", "live")
    with pytest.raises(RemoteProtocolError, match="before connect") as info:
        pair.pump()
    assert info.value.hint == "_error"
    with pytest.raises(LocalProtocolError):  # the connection stays failed
        pair.server.next_event()


def test_publish_on_a_stream_that_was_not_created_is_a_remote_error() -> None:
    pair = Pair()
    pair.connect()
    pair.client.publish(7, "cam")
    with pytest.raises(RemoteProtocolError, match="not created"):
        pair.pump()


def test_create_stream_is_limited() -> None:
    pair = Pair()
    pair.connect()
    ids = [pair.create_stream() for _ in range(MAX_STREAMS_PER_CONNECTION)]
    assert ids == list(range(1, MAX_STREAMS_PER_CONNECTION + 1))
    pair.client.create_stream()
    assert statuses(pair.take_client()) == [(0, "error", "NetConnection.Call.Failed")]


def test_close_stream_and_publish_null_end_the_stream() -> None:
    pair = Pair()
    sid = pair.publishing()
    pair.client._send_command(sid, "closeStream", 0.0, None)
    assert pair.take_server() == [ev.StreamDeleted(stream_id=sid)]
    pair.client._send_command(sid, "publish", 0.0, None, False)
    assert pair.take_server() == [ev.StreamDeleted(stream_id=sid)]


# --- playing -----------------------------------------------------------------------------


def test_player_session() -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    pair.client.play(sid, "cam?token=t")
    (request,) = pair.take_server()
    assert request == ev.PlayRequested(
        stream_id=sid, name="cam", query="token=t", start=-2.0, duration=-1.0, reset=True
    )
    pair.server.play_start(sid, "cam")
    events = pair.take_client()
    assert statuses(events) == [
        (sid, "status", "NetStream.Play.Reset"),
        (sid, "status", "NetStream.Play.Start"),
    ]
    data = [e for e in events if isinstance(e, ev.DataReceived)]
    # No "onStatus NetStream.Data.Start" data message: ffmpeg would show it
    # as a spurious data stream.
    assert [amf0.decode_all(d.payload) for d in data] == [["|RtmpSampleAccess", True, True]]
    # Per-viewer media and shared pre-encoded bytes can be mixed.
    pair.server.send_media(sid, msg.VIDEO, 0, b"\x17\x00cfg")
    pair.client.receive_data(pair.server.data_to_send())
    pair.client.receive_data(
        encode_message(
            chunk_size=pair.server.out_chunk_size,
            chunk_stream_id=VIDEO_CSID,
            type_id=msg.VIDEO,
            stream_id=sid,
            timestamp_ms=40,
            payload=b"\x27\x01" + bytes(10000),
        )
    )
    pair.server.send_media(sid, msg.AUDIO, 41, b"\xaf\x01")
    pair.server.send_data(sid, 42, amf0.encode_all("onMetaData", {"a": 1.0}))
    assert pair.take_client() == [
        ev.MediaReceived(stream_id=sid, type_id=9, timestamp_ms=0, payload=b"\x17\x00cfg"),
        ev.MediaReceived(
            stream_id=sid, type_id=9, timestamp_ms=40, payload=b"\x27\x01" + bytes(10000)
        ),
        ev.MediaReceived(stream_id=sid, type_id=8, timestamp_ms=41, payload=b"\xaf\x01"),
        ev.DataReceived(
            stream_id=sid, timestamp_ms=42, payload=amf0.encode_all("onMetaData", {"a": 1.0})
        ),
    ]
    pair.server.play_unpublish_notify(sid, "cam")
    assert statuses(pair.take_client()) == [(sid, "status", "NetStream.Play.UnpublishNotify")]


def test_play_start_output_uses_only_control_command_and_data_csids() -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    pair.client.play(sid, "cam")
    pair.take_server()
    pair.server_spy.take()
    pair.server.play_start(sid, "cam")
    pair.pump()
    messages = pair.server_spy.take()
    assert {m.chunk_stream_id for m in messages} <= {2, 3, DATA_CSID}
    assert {AUDIO_CSID, DATA_CSID, VIDEO_CSID} == MEDIA_CHUNK_STREAM_IDS


@pytest.mark.parametrize(
    ("method", "args", "code"),
    [
        ("play_not_found", (), "NetStream.Play.StreamNotFound"),
        ("play_rejected", ("not allowed",), "NetStream.Play.Failed"),
    ],
)
def test_play_refusals_are_level_error(method: str, args: tuple[str, ...], code: str) -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    pair.client.play(sid, "cam")
    pair.take_server()
    getattr(pair.server, method)(sid, "cam", *args)
    assert statuses(pair.take_client()) == [(sid, "error", code)]


def test_pause_and_receive_media_commands() -> None:
    pair = Pair()
    pair.connect()
    sid = pair.create_stream()
    pair.client.play(sid, "cam")
    pair.take_server()
    pair.server.play_start(sid, "cam")
    pair.take_client()
    pair.client._send_command(sid, "pause", 0.0, None, True, 1500.0)
    pair.client._send_command(sid, "pause", 0.0, None, False, 1500.0)
    pair.client._send_command(sid, "receiveAudio", 0.0, None, False)
    pair.client._send_command(sid, "receiveVideo", 0.0, None, True)
    assert pair.take_server() == [
        ev.PauseRequested(stream_id=sid, paused=True, position_ms=1500.0),
        ev.PauseRequested(stream_id=sid, paused=False, position_ms=1500.0),
        ev.ReceiveMediaChanged(stream_id=sid, audio=False, video=None),
        ev.ReceiveMediaChanged(stream_id=sid, audio=None, video=True),
    ]
    assert statuses(pair.take_client()) == [
        (sid, "status", "NetStream.Pause.Notify"),
        (sid, "status", "NetStream.Unpause.Notify"),
    ]


def test_send_media_before_accept_is_a_local_error() -> None:
    server = ServerConnection()
    assert not server.chunk_size_sent
    with pytest.raises(LocalProtocolError):
        server.send_media(1, msg.VIDEO, 0, b"x")


# --- acknowledgements and pings ---------------------------------------------------------


def test_server_acknowledges_after_the_clients_window() -> None:
    pair = Pair()
    sid = pair.publishing()
    # The client answered Set Peer Bandwidth with Window Ack Size 2_500_000.
    assert pair.server._peer_window == 2_500_000
    for i in range(30):
        pair.client.send_media(sid, msg.VIDEO, i, bytes(100_000))
    pair.server_spy.take()
    pair.pump()
    acks = [
        msg.decode_u32(m.payload, "ack") for m in pair.server_spy.take() if m.type_id == msg.ACK
    ]
    assert len(acks) == 1
    assert acks[0] == pair.server.bytes_received
    assert acks[0] >= 2_500_000


def test_client_acknowledges_after_the_servers_window() -> None:
    pair = Pair(window_ack_size=10_000)
    pair.connect()
    sid = pair.create_stream()
    pair.client.play(sid, "cam")
    pair.take_server()
    pair.server.play_start(sid, "cam")
    for i in range(5):
        pair.server.send_media(sid, msg.VIDEO, i, bytes(6_000))
    pair.client_spy.take()
    pair.pump()
    acks = [m for m in pair.client_spy.take() if m.type_id == msg.ACK]
    values = [msg.decode_u32(m.payload, "ack") for m in acks]
    assert values
    assert values[0] >= 10_000
    assert values[-1] <= pair.client.bytes_received


def test_pings_are_answered_both_ways() -> None:
    pair = Pair()
    pair.connect()
    pair.client.send_ping(1234)
    pair.server.send_ping(99)
    assert pair.take_server() == [ev.PingResponseReceived(timestamp_ms=99)]
    assert pair.take_client() == [ev.PingResponseReceived(timestamp_ms=1234)]


# --- transcripts, truncation and fuzzing --------------------------------------------------


def auto_answer(server: ServerConnection, event: object) -> None:
    """What a permissive application does."""
    if isinstance(event, ev.ConnectRequested):
        server.accept_connect(event.transaction_id)
    elif isinstance(event, ev.PublishRequested):
        server.publish_start(event.stream_id, event.name)
    elif isinstance(event, ev.PlayRequested):
        server.play_start(event.stream_id, event.name)


def run_server(pieces: list[bytes], seed: int = 1) -> list[object]:
    server = ServerConnection(random_bytes=seeded(seed))
    events: list[object] = []
    for piece in pieces:
        server.receive_data(piece)
        while (event := server.next_event()) is not NEED_DATA:
            events.append(event)
            auto_answer(server, event)
        server.data_to_send()
    return events


def recorded_publish_session() -> bytes:
    pair = Pair()
    sid = pair.publishing()
    pair.client.send_metadata(sid, {"duration": 0.0})
    pair.client.send_media(sid, msg.VIDEO, 0, b"\x17\x00" + bytes(300))
    pair.client.send_media(sid, msg.AUDIO, 0x1000000, b"\xaf\x01" + bytes(10))
    pair.client.send_message(
        AUDIO_CSID,
        msg.AGGREGATE,
        sid,
        20,
        msg.encode_aggregate([(8, 0, b"\xaf\x01"), (9, 5, b"\x27")]),
    )
    pair.client.send_command("FCUnpublish", None, "cam")
    pair.client.delete_stream(sid)
    pair.pump()
    return bytes(pair.client_bytes)


def test_transcript_fed_byte_by_byte_gives_the_same_events() -> None:
    transcript = recorded_publish_session()
    whole = run_server([transcript])
    assert [type(e).__name__ for e in whole] == [
        "HandshakeCompleted",
        "ConnectRequested",
        "PublishRequested",
        "DataReceived",
        "MediaReceived",
        "MediaReceived",
        "MediaReceived",
        "MediaReceived",
        "UnpublishRequested",
        "StreamDeleted",
    ]
    assert run_server([transcript[i : i + 1] for i in range(len(transcript))]) == whole
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(transcript)), 40))
    bounds = [0, *cuts, len(transcript)]
    assert run_server([transcript[a:b] for a, b in itertools.pairwise(bounds)]) == whole


def test_every_prefix_of_a_session_gives_need_data_or_events() -> None:
    transcript = recorded_publish_session()
    whole = run_server([transcript])
    for cut in range(1, len(transcript) + 1, 7):
        events = run_server([transcript[:cut]])
        assert events == whole[: len(events)]


def test_eof_during_handshake_reports_connection_closed() -> None:
    server = ServerConnection()
    server.receive_data(b"\x03" + bytes(100))
    server.receive_data(b"")
    assert drain(server) == [ev.ConnectionClosed()]


def handshaken_server() -> ServerConnection:
    server = ServerConnection(random_bytes=seeded(11))
    client = ClientConnection(random_bytes=seeded(12))
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    assert drain(server) == [ev.HandshakeCompleted()]
    return server


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_random_bytes_after_handshake_give_events_or_remote_protocol_error(data: bytes) -> None:
    server = handshaken_server()
    with contextlib.suppress(RemoteProtocolError):
        server.receive_data(data)
        for event in drain(server):
            auto_answer(server, event)
            drain(server)


@given(st.lists(st.binary(max_size=60), max_size=6))
@settings(max_examples=200)
def test_random_commands_give_events_or_remote_protocol_error(bodies: list[bytes]) -> None:
    """Well-framed command messages with garbage AMF inside."""
    server = handshaken_server()
    connect = msg.encode_command("connect", 1.0, {"app": "live"})
    wire = encode_message(
        chunk_size=128, chunk_stream_id=3, type_id=20, stream_id=0, timestamp_ms=0, payload=connect
    )
    for body in bodies:
        wire += encode_message(
            chunk_size=128,
            chunk_stream_id=3,
            type_id=20,
            stream_id=1,
            timestamp_ms=0,
            payload=amf0.encode("publish") + body,
        )
    with contextlib.suppress(RemoteProtocolError):
        server.receive_data(wire)
        while (event := server.next_event()) is not NEED_DATA:
            auto_answer(server, event)


# --- AMF3 (objectEncoding 3) -----------------------------------------------------------


def _commands(messages: list[Message]) -> list[tuple[int, str, object]]:
    """(type id, name, first argument) of each command message."""
    out: list[tuple[int, str, object]] = []
    for m in messages:
        if m.type_id in (msg.COMMAND_AMF0, msg.COMMAND_AMF3):
            command = msg.decode_command(m.payload, amf3=m.type_id == msg.COMMAND_AMF3)
            out.append((m.type_id, command.name, command.args[0] if command.args else None))
    return out


def test_connect_asking_amf3_is_answered_3_and_then_commands_are_amf3_both_ways() -> None:
    pair = Pair(object_encoding=3)
    pair.connect()
    ((kind, name, info),) = _commands(pair.server_spy.take())
    # The answer comes in the connect's own type (20) and agrees to AMF3.
    assert (kind, name) == (msg.COMMAND_AMF0, "_result")
    assert isinstance(info, dict) and info["objectEncoding"] == 3.0
    assert pair.client.amf3_commands
    pair.client_spy.take()
    sid = pair.create_stream()
    pair.client.publish(sid, "cam")
    (request,) = pair.take_server()
    assert request == ev.PublishRequested(stream_id=sid, name="cam", query="", publish_type="live")
    pair.server.publish_start(sid, "cam")
    assert statuses(pair.take_client()) == [(sid, "status", "NetStream.Publish.Start")]
    sent = [(kind, name) for kind, name, _ in _commands(pair.client_spy.take())]
    assert sent == [(msg.COMMAND_AMF3, "createStream"), (msg.COMMAND_AMF3, "publish")]
    answered = [(kind, name) for kind, name, _ in _commands(pair.server_spy.take())]
    assert answered == [(msg.COMMAND_AMF3, "_result"), (msg.COMMAND_AMF3, "onStatus")]


def test_amf3_command_body_switches_to_amf3_after_name_and_transaction_id() -> None:
    pair = Pair(object_encoding=3)
    pair.connect()
    pair.server_spy.take()
    sid = pair.create_stream()
    pair.client.play(sid, "cam")
    (request,) = pair.take_server()
    assert isinstance(request, ev.PlayRequested)
    pair.server.play_not_found(sid, "cam")
    pair.take_client()
    onstatus = [m for m in pair.server_spy.take() if m.type_id == msg.COMMAND_AMF3][-1]
    head = b"\x00" + amf0.encode_all("onStatus", 0.0, None) + b"\x11\x0a\x0b\x01"
    assert onstatus.payload.startswith(head)


@pytest.mark.parametrize("asked", [0.0, 1.0, 5.0, "3"])
def test_connect_asking_other_encodings_is_answered_0_and_stays_amf0(asked: object) -> None:
    pair = Pair()
    pair.client.connect("live", "rtmp://h/live", objectEncoding=asked)
    (_, request) = pair.take_server()
    assert isinstance(request, ev.ConnectRequested)
    pair.server.accept_connect(request.transaction_id)
    pair.take_client()
    ((kind, _name, info),) = _commands(pair.server_spy.take())
    assert kind == msg.COMMAND_AMF0
    assert isinstance(info, dict) and info["objectEncoding"] == 0.0
    pair.create_stream()
    assert {m.type_id for m in pair.server_spy.take() if m.type_id >= 17} == {msg.COMMAND_AMF0}


def test_connect_sent_as_amf3_command_is_answered_as_amf3_command() -> None:
    pair = Pair()
    pair.pump()
    body = msg.encode_command_amf3(
        "connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live", "objectEncoding": 3}
    )
    pair.client.send_message(COMMAND_CSID, msg.COMMAND_AMF3, 0, 0, body)
    request = pair.take_server()[-1]
    assert isinstance(request, ev.ConnectRequested) and request.app == "live"
    pair.server.accept_connect(request.transaction_id)
    pair.pump()
    ((kind, name, info),) = _commands(pair.server_spy.take())
    assert (kind, name) == (msg.COMMAND_AMF3, "_result")
    assert isinstance(info, dict) and info["code"] == "NetConnection.Connect.Success"


def test_amf3_connect_rejected_is_answered_as_amf3_command() -> None:
    pair = Pair()
    pair.pump()
    body = msg.encode_command_amf3("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"})
    pair.client.send_message(COMMAND_CSID, msg.COMMAND_AMF3, 0, 0, body)
    request = pair.take_server()[-1]
    assert isinstance(request, ev.ConnectRequested)
    pair.server.reject_connect(request.transaction_id, "no")
    pair.pump()
    ((kind, name, _info),) = _commands(pair.server_spy.take())
    assert (kind, name) == (msg.COMMAND_AMF3, "_error")


def test_amf3_metadata_reaches_the_application_as_amf0_script_data() -> None:
    pair = Pair(object_encoding=3)
    pair.connect()
    sid = pair.create_stream()
    pair.client.publish(sid, "cam")
    pair.take_server()
    pair.server.publish_start(sid, "cam")
    pair.take_client()
    pair.client_spy.take()
    metadata: dict[str, object] = {"width": 1280, "height": 720, "encoder": "amf3"}
    pair.client.send_metadata(sid, metadata)
    (event,) = pair.take_server()
    (sent,) = pair.client_spy.take()
    assert sent.type_id == msg.DATA_AMF3
    assert sent.payload.startswith(b"\x00" + amf0.encode("@setDataFrame"))
    assert event == ev.DataReceived(
        stream_id=sid, timestamp_ms=0,
        payload=amf0.encode_all("onMetaData", amf0.ECMAArray(metadata)),
    )


def test_amf3_data_with_a_byte_array_is_a_remote_error() -> None:
    pair = Pair()
    sid = pair.publishing()
    body = msg.encode_data_amf3("onCuePoint", {"blob": b"\x00\x01"})
    pair.client.send_message(DATA_CSID, msg.DATA_AMF3, sid, 0, body)
    with pytest.raises(RemoteProtocolError, match="no AMF0 form"):
        pair.pump()


def test_amf3_data_expanding_past_the_message_limit_is_a_remote_error() -> None:
    # 600 references to one 200-byte string: about 1.4 KB of AMF3, 120 KB of AMF0.
    pair = Pair(max_message_size=65_536)
    sid = pair.publishing()
    body = msg.encode_data_amf3("onTextData", ["x" * 200] * 600)
    assert len(body) < 2048
    pair.client.send_message(DATA_CSID, msg.DATA_AMF3, sid, 0, body)
    with pytest.raises(RemoteProtocolError, match="over the message limit"):
        pair.pump()


def test_amf3_data_inside_an_aggregate_is_converted_too() -> None:
    pair = Pair()
    sid = pair.publishing()
    data = msg.encode_data_amf3("onTextData", {"text": "hi"})
    aggregate = msg.encode_aggregate([(msg.DATA_AMF3, 7, data)])
    pair.client.send_message(DATA_CSID, msg.AGGREGATE, sid, 7, aggregate)
    assert pair.take_server() == [
        ev.DataReceived(
            stream_id=sid, timestamp_ms=7, payload=amf0.encode_all("onTextData", {"text": "hi"})
        )
    ]
