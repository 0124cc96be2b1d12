"""What a playing viewer keeps for as long as it plays (issue 14: memory per
viewer at 12 000 viewers): state only the join needed is gone, and what it
still needs to answer its peer works. No test here measures speed."""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import pytest
import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rtmpd.admission import Admission
from rtmpd.protocols.flvhttp import FlvHttpResource, FlvRequest, FlvSite
from rtmpd.protocols.flvws import make_ws_resource
from rtmpd.registry import StreamConfig, StreamRegistry
from tests.unit.test_churn_memory import python_growth
from tests.unit.test_registry import FakeSource, video


class Site:
    """A published stream behind the HTTP port, and WS-FLV viewers of it."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.registry = StreamRegistry(self.clock, StreamConfig(merge_ms=0))
        self.admission = Admission(self.registry)
        stream = self.registry.publish("live", "bench", FakeSource())
        stream.push(video(0, key=True, size=3000))
        self.site = FlvSite(
            FlvHttpResource(self.admission, websocket=make_ws_resource(self.admission, self.clock)),
            reactor=self.clock,
        )

    def ws_viewer(self, port: int = 5000) -> tuple[Any, StringTransport]:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            "GET /live/bench.flv HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        # A host string of its own, as each accepted socket has.
        addr = IPv4Address("TCP", ".".join(["127", "0", "0", str(port % 250 + 1)]), port)
        proto = self.site.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        transport.protocol = proto  # Autobahn's resource looks for it
        proto.dataReceived(request)
        assert transport.value().startswith(b"HTTP/1.1 101")
        transport.clear()
        ws: Any = transport.protocol
        assert ws.viewer is not None
        return ws, transport


    def get(self, path: bytes) -> tuple[Any, StringTransport]:
        """An HTTP GET of ``path``: the channel and what it was sent."""
        addr = IPv4Address("TCP", "127.0.0.1", 5000)
        proto = self.site.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        proto.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        return proto, transport

    def http_viewer(self) -> tuple[Any, StringTransport]:
        proto, transport = self.get(b"/live/bench.flv")
        assert transport.value().startswith(b"HTTP/1.1 200")
        transport.clear()  # a socket keeps nothing it sent
        return proto, transport


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked frame, as a client sends it (payload < 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Site:
    site = Site()
    monkeypatch.setattr(txaio.config, "loop", site.clock)
    return site


def test_playing_ws_viewer_keeps_no_utf8_validator_nor_handshake(site: Site) -> None:
    ws, _ = site.ws_viewer()
    assert ws.utf8validator is None
    assert ws.http_request_data == b"" and ws.http_request_uri == ""
    assert not ws.http_headers


def test_playing_ws_viewer_leaves_autobahns_constant_flags_to_its_class(site: Site) -> None:
    """Autobahn sets ~70 attributes per connection; a playing viewer's own
    dict keeps only what differs from the class's (it held 67, 1.6 KB; then
    24, 832 B): 10 names, the handshake's key and transport details gone,
    the event table and the factory its class's."""
    first, _ = site.ws_viewer(5000)
    second, _ = site.ws_viewer(5001)
    for ws in (first, second):
        assert len(ws.__dict__) <= 10, sorted(ws.__dict__)
        assert "wasMaxMessagePayloadSizeExceeded" not in ws.__dict__
        assert ws.wasMaxMessagePayloadSizeExceeded is False
        assert ws.state == ws.STATE_OPEN
        assert ws._wskey is None and ws.transport_details is None and ws.request is None
        for name in ("_valid_events", "_results", "factory", "websocket_version"):
            assert name not in ws.__dict__, name
    assert first._results is second._results and first._valid_events == ["message"]
    assert first.factory is second.factory and first.websocket_version == 13


def test_playing_ws_viewer_still_answers_a_ping(site: Site) -> None:
    ws, transport = site.ws_viewer()
    ws.dataReceived(_client_frame(0x9, b"hello"))
    assert transport.value() == b"\x8a\x05hello"


def test_playing_ws_viewer_refuses_a_text_message_with_1003(site: Site) -> None:
    ws, transport = site.ws_viewer()
    ws.dataReceived(_client_frame(0x1, b"\xff\xfe not utf-8"))
    out = transport.value()
    assert out[0] == 0x88 and struct.unpack("!H", out[2:4])[0] == 1003
    assert ws.close_reason == "sent a text message"


def test_rtmp_clients_announcing_the_same_share_one_capabilities_object() -> None:
    """Each RTMP connection holds what its connect announced as long as it
    plays: thousands of clients of one player hold one object."""
    from rtmpd.codec import enhanced

    def connect() -> dict[str, object]:
        return {"app": "live", "fourCcList": ["hvc1", "av01", "mp4a"], "capsEx": 2.0}

    first = enhanced.ClientCapabilities.from_connect(connect())
    second = enhanced.ClientCapabilities.from_connect(connect())
    assert second is first
    assert first.video == {"hvc1", "av01", "mp4a"} and first.multitrack
    other = enhanced.ClientCapabilities.from_connect({"fourCcList": ["hvc1"]})
    assert other is not first and other.video == {"hvc1"}


def test_shared_capabilities_stay_bounded_whatever_clients_announce() -> None:
    from rtmpd.codec import enhanced

    for i in range(3 * enhanced.MAX_SHARED_CAPABILITIES):
        enhanced.ClientCapabilities.from_connect({"capsEx": float(i)})
    assert len(enhanced._shared_capabilities) <= enhanced.MAX_SHARED_CAPABILITIES


def test_playing_http_flv_request_shares_empty_parsed_query_and_cookies(site: Site) -> None:
    addr = IPv4Address("TCP", "127.0.0.1", 5001)
    channel: Any = site.site.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /live/bench.flv?x=1 HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")
    other: Any = site.site.buildProtocol(addr)
    other.makeConnection(StringTransport(peerAddress=addr))
    other.dataReceived(b"GET /live/bench.flv HTTP/1.1\r\nHost: h\r\n\r\n")
    first, second = channel.requests[0], other.requests[0]
    for name in ("args", "received_cookies", "cookies", "prepath", "postpath", "sitepath",
                 "method", "clientproto"):
        assert getattr(first, name) is getattr(second, name), name
    assert not first.args and not first.sitepath
    assert (first.method, first.clientproto) == (b"GET", b"HTTP/1.1")
    # The names the viewer's admission request keeps are one string each.
    stream = site.registry.get("live", "bench")
    assert stream is not None
    one, two = (viewer._request for viewer in stream.viewers)
    assert one.stream is two.stream and one.app is two.app
    # They are the live stream's own strings (not interned: names come from
    # clients, and interned strings are never freed on some Pythons).
    assert one.stream is stream.name and one.app is stream.app


def test_rtmp_connection_state_is_slotted() -> None:
    """A server connection lives as long as its viewer plays: its codec
    objects carry no attribute dicts."""
    from rtmpd.codec.rtmp.chunk import ChunkReader, ChunkWriter
    from rtmpd.codec.rtmp.connection import ClientConnection, ServerConnection

    for obj in (ServerConnection(), ClientConnection(), ChunkReader(), ChunkWriter()):
        assert not hasattr(obj, "__dict__"), type(obj).__name__


def test_idle_chunk_streams_hold_no_list_and_split_messages_still_join() -> None:
    from rtmpd.codec.rtmp.chunk import NEED_DATA, ChunkReader, ChunkWriter, Message

    writer = ChunkWriter(chunk_size=128)
    reader = ChunkReader()
    big = bytes(range(256)) * 3  # 6 chunks of 128 bytes
    data = writer.write(6, 9, 1, 40, big) + writer.write(4, 20, 1, 0, b"x" * 10)
    reader.receive_data(data[:300])
    assert reader.next_event() is NEED_DATA
    assert reader._streams[6].parts  # a message in progress has its parts
    reader.receive_data(data[300:])
    first, second = reader.next_event(), reader.next_event()
    assert isinstance(first, Message) and first.payload == big
    assert isinstance(second, Message) and second.payload == b"x" * 10
    for state in reader._streams.values():
        assert not isinstance(state.parts, list)


def test_a_streams_path_is_one_string_for_all_who_keep_it(site: Site) -> None:
    stream = site.registry.get("live", "bench")
    assert stream is not None
    assert stream.path == "live/bench" and stream.path is stream.path


def test_ws_upgrade_leaves_no_http_channel_for_the_collector(site: Site) -> None:
    """The HTTP channel an upgrade came on, and its request, are freed when
    the upgrade returns, not at the next full collection (which rtmpd runs
    only as connections close)."""
    import gc
    import weakref

    from rtmpd.protocols.flvhttp import FlvHttpChannel

    channels: list[weakref.ref[FlvHttpChannel]] = []
    build = site.site.buildProtocol

    def tracked(addr: Any) -> Any:
        channel = build(addr)
        channels.append(weakref.ref(channel))
        return channel

    site.site.buildProtocol = tracked  # type: ignore[method-assign]
    gc.disable()
    try:
        ws, _ = site.ws_viewer()
        assert ws.viewer is not None
        assert channels and channels[0]() is None
    finally:
        gc.enable()


def test_writer_copies_share_header_states_and_still_go_on_alone() -> None:
    """Each RTMP connection's writer starts as a copy of a shared one: the
    copies hold the same header states, and a write through one (type-3
    headers included, which only move the timestamp) leaves the other
    writing what it would have written."""
    from rtmpd.codec.rtmp.chunk import ChunkWriter

    template = ChunkWriter(4096)
    template.write(3, 20, 0, 0, b"connect reply")
    template.write(4, 9, 1, 0, b"v" * 10)
    template.write(4, 9, 1, 40, b"v" * 10)  # the delta 40 is set
    first, second = template.copy(), template.copy()
    assert first._streams[3] is second._streams[3] is template._streams[3]
    alone = template.copy()
    expected = [alone.write(4, 9, 1, ts, b"v" * 10) for ts in (80, 120)]
    first.write(4, 9, 1, 80, b"v" * 10)  # type 3: only the timestamp moves
    first.write(4, 9, 1, 500, b"v" * 10)
    assert [second.write(4, 9, 1, ts, b"v" * 10) for ts in (80, 120)] == expected
    assert expected[0][0] >> 6 == 3  # it was a type-3 header
    saved = template.states((3, 4))
    restored = ChunkWriter(4096)
    restored.restore(saved)
    assert restored.write(4, 9, 1, 80, b"v" * 10) == expected[0]


def _held_per_http_play(*, refused_first: bool) -> float:
    """Python memory each of 200 playing HTTP-FLV viewers holds, on a site
    whose requests are of a class of their own (the attribute layout Python
    shares between instances is the class's, learnt from its first ones)."""

    class Fresh(FlvRequest):
        pass

    site = Site()
    site.site.requestFactory = Fresh
    if refused_first:
        _, transport = site.get(b"/live/nope.flv")  # not live: 404
        assert transport.value().startswith(b"HTTP/1.1 404")
    plays: list[tuple[Any, StringTransport]] = []
    grown, _ = python_growth(
        lambda: plays.append(site.http_viewer()),
        lambda: plays.extend(site.http_viewer() for _ in range(200)),
    )
    return grown / 200


def test_a_refused_request_first_does_not_make_later_plays_bigger() -> None:
    # A 404 before the stream went live used to leave every later play with
    # a request dict of its own, ~1 300 bytes more each.
    fresh = _held_per_http_play(refused_first=False)
    after_a_404 = _held_per_http_play(refused_first=True)
    assert after_a_404 < fresh + 300, f"{after_a_404:.0f} B per play, {fresh:.0f} B without the 404"


def test_playing_http_flv_request_holds_no_deferred_and_its_end_still_reaches_the_viewer(
    site: Site,
) -> None:
    """A play's Request tells its viewer when it ends without a
    ``notifyFinish()`` Deferred (held for as long as the viewer plays): on a
    lost connection, and when the server finishes it (the stream ended)."""
    stream = site.registry.get("live", "bench")
    assert stream is not None
    channel, transport = site.http_viewer()
    request = channel.requests[0]
    assert request.notifications == []
    assert len(stream.viewers) == 1
    channel.connectionLost(ConnectionDone())
    assert not stream.viewers
    assert request.viewer is None

    channel, transport = site.http_viewer()
    request = channel.requests[0]
    (viewer,) = stream.viewers
    assert request.viewer is viewer
    site.registry.unpublish(stream, "the publisher left")
    assert request.finished and request.viewer is None
    assert viewer.finished
    assert transport.value().endswith(b"0\r\n\r\n")  # the chunked body's end


def _play(site: Site, headers: bytes = b"") -> Any:
    """A playing HTTP-FLV channel; ``headers``: more request header lines."""
    addr = IPv4Address("TCP", "127.0.0.1", 5002)
    channel: Any = site.site.buildProtocol(addr)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "10.0.0.1", 8501),
                                peerAddress=addr)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /live/bench.flv HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")
    return channel


def test_playing_http_flv_requests_share_what_they_hold_alike(site: Site) -> None:
    """Requests that sent the same logged headers hold one copy of them, one
    local address and one (sent) response header set; a different user agent
    keeps its own, and the access log still reads each."""
    ua = b"User-Agent: player/1.0\r\nReferer: http://example.com/\r\n"
    first, second = (_play(site, ua).requests[0] for _ in range(2))
    other = _play(site, b"User-Agent: other/2\r\n").requests[0]
    assert first.requestHeaders is second.requestHeaders
    assert other.requestHeaders is not first.requestHeaders
    assert first.responseHeaders is second.responseHeaders is other.responseHeaders
    assert first.host is second.host is other.host
    assert first.host == IPv4Address("TCP", "10.0.0.1", 8501)
    assert first.getHeader(b"user-agent") == b"player/1.0"
    assert first.getHeader(b"referer") == b"http://example.com/"
    assert other.getHeader(b"user-agent") == b"other/2"
    assert other.getHeader(b"referer") is None
    assert first.getHeader(b"host") is None  # not logged: shed


def test_logged_headers_past_the_size_limit_are_not_held_for_sharing(site: Site) -> None:
    from rtmpd.protocols import flvhttp

    long_ua = b"User-Agent: " + b"x" * (flvhttp.ALIKE_MAX_BYTES + 1) + b"\r\n"
    first, second = (_play(site, long_ua).requests[0] for _ in range(2))
    assert first.requestHeaders is not second.requestHeaders
    assert first.getHeader(b"user-agent") == second.getHeader(b"user-agent")


def test_playing_http_flv_channel_leaves_what_its_site_shares_to_its_class(site: Site) -> None:
    """A playing channel's dict holds its own state only (10 names, the
    smaller dict size): its site, request class and callLater are its site's
    channel class's, and a second channel of the site still plays."""
    # As twistd builds it: an option's number, equal to the default but not it.
    site.site = FlvSite(site.site.flv, reactor=site.clock, max_header_bytes=int("16384"))
    channel = _play(site)
    assert len(channel.__dict__) <= 10, sorted(channel.__dict__)
    for name in ("site", "factory", "requestFactory", "callLater", "connected"):
        assert name not in channel.__dict__, name
    assert channel.site is site.site and channel.factory is site.site
    assert channel.callLater == site.clock.callLater
    again = _play(site)
    assert type(again) is type(channel) and again.connected


def test_a_new_channel_still_reads_requests_after_a_closing_play(site: Site) -> None:
    """The first play a site's channel class learns from asked to close
    (``Connection: close``, as ffmpeg does): a later connection's request is
    still read (its ``persistent`` is not taken from that play)."""
    closing = _play(site, b"Connection: close\r\n")
    closing.connectionLost(ConnectionDone())
    again = _play(site)
    assert again.requests and again.requests[0].viewer is not None


def _rtmp_publishing() -> tuple[StreamRegistry, Any, Any]:
    """An RTMP server with live/cam published (one keyframe): its registry,
    factory and publisher peer."""
    from rtmpd.protocols.rtmp import RtmpServerFactory
    from tests.unit.test_protocols import KEYFRAME, Peer

    clock = Clock()
    registry = StreamRegistry(clock, StreamConfig(merge_ms=0))
    factory = RtmpServerFactory(Admission(registry), clock=clock)
    publisher = Peer(factory)
    psid = publisher.open_stream()
    publisher.client.publish(psid, "cam")
    publisher.pump()
    publisher.client.send_media(psid, 9, 0, KEYFRAME)
    publisher.pump()
    return registry, factory, publisher


def test_rtmp_player_holds_shared_empties_and_a_write_to_one_is_refused() -> None:
    """A player's connection has no publish names, publishers or paused
    streams: it holds the one shared empty dict for each (64 bytes each of
    its own before), takes a dict of its own when it pauses, and writing to
    the shared one is an error, not a dict every connection would see."""
    from rtmpd.shared import NO_ENTRIES, own
    from tests.unit.test_protocols import Peer

    registry, factory, publisher = _rtmp_publishing()
    assert publisher.server.publishing and publisher.server.publishing is not NO_ENTRIES
    player = Peer(factory)
    sid = player.open_stream()
    player.client.play(sid, "cam")
    player.pump()
    server = player.server
    assert server.viewers
    assert server.publishing is NO_ENTRIES and server.paused is NO_ENTRIES
    assert server.conn._publish_names is NO_ENTRIES
    stream = registry.get("live", "cam")
    assert stream is not None and server.app is stream.app  # one string, not one per player
    with pytest.raises(TypeError):
        NO_ENTRIES[1] = "x"
    with pytest.raises(TypeError):
        NO_ENTRIES.update(x=1)
    assert not NO_ENTRIES and own(NO_ENTRIES) is not NO_ENTRIES
    player.client.send_command("pause", None, True, 0.0, stream_id=sid)
    player.pump()
    assert sid in server.paused and not NO_ENTRIES
    player.client.send_command("pause", None, False, 0.0, stream_id=sid)
    player.pump()
    assert sid in server.viewers and not server.paused


def test_rtmp_players_share_one_roles_dict_and_each_changes_only_its_own() -> None:
    """Every player's message streams are ``{1: playing}``: one shared dict.
    A change (deleteStream, a second createStream) gives that connection a
    new dict and leaves the others' as they were."""
    from rtmpd.shared import NO_ENTRIES, SharedDict, shared
    from tests.unit.test_protocols import Peer

    _registry, factory, publisher = _rtmp_publishing()
    players = []
    for _ in range(2):
        player = Peer(factory)
        sid = player.open_stream()
        player.client.play(sid, "cam")
        player.pump()
        players.append((player, sid))
    (one, sid1), (two, _sid2) = players
    roles = one.server.conn._streams
    assert isinstance(roles, SharedDict) and roles is two.server.conn._streams
    assert roles is not publisher.server.conn._streams
    one.client.create_stream()  # a second message stream on the first connection only
    one.pump()
    assert len(one.server.conn._streams) == 2 and two.server.conn._streams is roles
    one.client.send_command("deleteStream", None, float(sid1), stream_id=0)
    one.pump()
    assert sid1 not in one.server.conn._streams and sid1 in roles
    assert two.server.conn._streams is roles and len(roles) == 1
    with pytest.raises(TypeError):
        roles[9] = roles[sid1]
    with pytest.raises(TypeError):
        roles.pop(sid1)
    assert roles.pop(12345, None) is None
    assert shared({}) is NO_ENTRIES


def test_shared_logged_headers_keep_the_sets_used_last() -> None:
    """The table of shared values is bounded and keeps the most recently
    used: a set that keeps coming stays shared after many others passed."""
    from rtmpd.protocols.flvhttp import _Alike

    alike = _Alike(3)
    kept = alike.one("player", lambda: ["player"])
    for n in range(10):
        alike.one(f"other {n}", lambda n=n: [n])
        assert alike.one("player", lambda: ["new"]) is kept
    assert len(alike._held) == 3
    first = alike.one("other 0", lambda: ["again"])
    assert first == ["again"]  # evicted long ago: a new one


def test_rtmp_chunk_writers_share_their_header_states_until_one_writes() -> None:
    """A copied writer holds its original's dict of last headers, and writers
    that restore the same shared states hold one; a write gives the writer a
    dict of its own and leaves the other's, and both go on encoding as a
    writer of their own would."""
    from rtmpd.codec.rtmp.chunk import ChunkWriter

    template = ChunkWriter()
    template.write(3, 20, 0, 0, b"connect reply")
    one, two = template.copy(), template.copy()
    assert one._streams is two._streams is template._streams
    reference = ChunkWriter()
    reference.write(3, 20, 0, 0, b"connect reply")
    expected = reference.write(3, 20, 0, 40, b"x" * 13)
    states = two._streams
    assert one.write(3, 20, 0, 40, b"x" * 13) == expected
    assert one._streams is not states and two._streams is states
    assert two.write(3, 20, 0, 40, b"x" * 13) == expected  # one's write did not touch it
    first, second = ChunkWriter(), ChunkWriter()
    first.restore(one.states((3, 5)))
    second.restore(one.states((3, 5)))
    assert first._streams is second._streams
    assert first.write(3, 20, 0, 80, b"x" * 13) == one.write(3, 20, 0, 80, b"x" * 13)
