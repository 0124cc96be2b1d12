"""rtmpd-push's RTMP session on a StringTransport, against our sans-IO server connection:
publish, media, the clean end, refusals, the setup timeout and garbage."""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rtmpd.client.rtmp import RtmpPublishProtocol
from rtmpd.client.target import PushTarget
from rtmpd.codec import amf0, flv
from rtmpd.codec.errors import RemoteProtocolError
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp.chunk import NEED_DATA
from rtmpd.codec.rtmp.connection import ServerConnection
from tests.unit.test_push_pacing import METADATA, VIDEO_HEADER, RecordingListener


def exchange(proto: RtmpPublishProtocol, transport: StringTransport,
             server: ServerConnection) -> list[object]:
    """Move bytes both ways until quiet, answering as a server that accepts everything."""
    events: list[object] = []
    for _ in range(20):
        data = transport.value()
        transport.clear()
        if data:
            server.receive_data(data)
        while (event := server.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ev.ConnectRequested):
                server.accept_connect(event.transaction_id)
            elif isinstance(event, ev.PublishRequested):
                server.publish_start(event.stream_id, event.name)
        out = server.data_to_send()
        if out:
            proto.dataReceived(out)
        if not data and not out:
            break
    return events


def test_rtmp_session_publishes_sends_media_and_ends_with_fcunpublish_and_deletestream() -> None:
    listener = RecordingListener()
    proto = RtmpPublishProtocol(PushTarget("rtmp", "h", 1935, "live", "cam"), listener,
                                task.Clock())
    transport = StringTransport()
    proto.makeConnection(transport)
    server = ServerConnection()
    events = exchange(proto, transport, server)
    assert [type(e) for e in events if isinstance(e, ev.ConnectRequested | ev.PublishRequested)] \
        == [ev.ConnectRequested, ev.PublishRequested]
    assert listener.ready == [proto]
    proto.send_tags([(flv.TAG_SCRIPT, 0, METADATA), (flv.TAG_VIDEO, 0, VIDEO_HEADER),
                     (flv.TAG_AUDIO, 23, b"\xaf\x01zz")])
    events = exchange(proto, transport, server)
    data = [e for e in events if isinstance(e, ev.DataReceived)]
    media = [e for e in events if isinstance(e, ev.MediaReceived)]
    assert [amf0.decode_all(d.payload)[0] for d in data] == ["onMetaData"]
    assert [(m.type_id, m.timestamp_ms, m.payload) for m in media] == [
        (9, 0, VIDEO_HEADER), (8, 23, b"\xaf\x01zz")
    ]
    finished = proto.finish()
    events = exchange(proto, transport, server)
    assert any(isinstance(e, ev.UnpublishRequested) and e.name == "cam" for e in events)
    assert any(isinstance(e, ev.StreamDeleted) for e in events)
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionError("closed")))
    assert finished.called and listener.lost == []


@pytest.mark.parametrize(("answer", "permanent"), [("busy", False), ("reject", True)])
def test_rtmp_publish_refusal_is_reported(answer: str, permanent: bool) -> None:
    listener = RecordingListener()
    proto = RtmpPublishProtocol(PushTarget("rtmp", "h", 1935, "live", "cam"), listener,
                                task.Clock())
    transport = StringTransport()
    proto.makeConnection(transport)
    server = ServerConnection()
    for _ in range(20):
        data = transport.value()
        transport.clear()
        server.receive_data(data)
        while (event := server.next_event()) is not NEED_DATA:
            if isinstance(event, ev.ConnectRequested):
                if answer == "reject":
                    server.reject_connect(event.transaction_id, "no key")
                else:
                    server.accept_connect(event.transaction_id)
            elif isinstance(event, ev.PublishRequested):
                server.publish_bad_name(event.stream_id, event.name, "busy")
        out = server.data_to_send()
        if out:
            proto.dataReceived(out)
        if transport.disconnecting:
            break
    assert transport.disconnecting and listener.ready == []
    proto.connectionLost(Failure(ConnectionError("closed")))
    assert len(listener.lost) == 1 and listener.lost[0][1] is permanent


def test_rtmp_setup_timeout_drops_a_silent_server() -> None:
    listener = RecordingListener()
    clock = task.Clock()
    proto = RtmpPublishProtocol(PushTarget("rtmp", "h", 1935, "live", "cam"), listener, clock)
    transport = StringTransport()
    proto.makeConnection(transport)
    clock.advance(60)
    proto.connectionLost(Failure(ConnectionError("aborted")))
    assert listener.lost == [("publish setup took over 10 s", False)]


def test_rtmp_garbage_from_the_server_is_a_lost_session() -> None:
    listener = RecordingListener()
    proto = RtmpPublishProtocol(PushTarget("rtmp", "h", 1935, "live", "cam"), listener,
                                task.Clock())
    proto.makeConnection(StringTransport())
    proto.dataReceived(b"\x09" + b"\0" * 3072)  # version 9: not RTMP
    proto.connectionLost(Failure(RemoteProtocolError("x")))
    assert len(listener.lost) == 1 and "RTMP error" in listener.lost[0][0]
