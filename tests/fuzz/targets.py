"""Every parser that reads bytes from the network or from files, as fuzz
targets: ``TARGETS[name](data)`` feeds ``data`` to that parser the way the
server does, and may raise only :class:`RemoteProtocolError` (the codec's
"the peer sent bad data"). Anything else is a bug.

One table, two drivers: the Hypothesis properties in
``tests/unit/test_fuzz_properties.py`` (arbitrary bytes and mutated seeds,
deterministic, in the normal suite) and the coverage-guided atheris runner
``tests/fuzz/fuzz.py`` (``make fuzz TARGET=… SECONDS=…``). Seeds for both are
in ``tests/fuzz/corpus/<name>/``, cut from real ffmpeg captures by
``tests/fuzz/make_corpus.py``.

Streaming parsers take the input in pieces, as sockets deliver it: the first
byte of ``data`` sets the piece size (1..256 bytes), so every split point is
reachable by the fuzzer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rtmpd.codec import (
    aac,
    amf0,
    amf3,
    av1,
    avc,
    enhanced,
    flac,
    flv,
    hevc,
    hls,
    http_ranges,
    mpegts,
    opus,
    vp9,
)
from rtmpd.codec.errors import RemoteProtocolError
from rtmpd.codec.mp4.boxes import iter_boxes
from rtmpd.codec.mp4.demux import Mp4Demuxer
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp import messages
from rtmpd.codec.rtmp.chunk import NEED_DATA, ChunkReader
from rtmpd.codec.rtmp.connection import ServerConnection
from rtmpd.codec.rtmp.handshake import ClientHandshake, ServerHandshake
from rtmpd.media import Frame

__all__ = ["ALLOWED", "TARGETS", "pieces"]

#: The one exception a parser may raise for bad input.
ALLOWED = RemoteProtocolError

#: Most events a target takes from one input: a parser that keeps producing
#: events from a bounded input is looping.
MAX_EVENTS = 1_000_000


def pieces(data: bytes) -> Iterator[bytes]:
    """``data[1:]`` in pieces of ``data[0] + 1`` bytes (all of it if empty)."""
    if not data:
        return
    step = data[0] + 1
    body = data[1:]
    for start in range(0, len(body), step):
        yield body[start : start + step]


def _fixed_random(size: int) -> bytes:
    return bytes(size)


def rtmp_handshake_server(data: bytes) -> None:
    hs = ServerHandshake(random_bytes=_fixed_random)
    for piece in pieces(data):
        hs.receive_data(piece)
        hs.data_to_send()
    if hs.done:
        hs.leftover()


def rtmp_handshake_client(data: bytes) -> None:
    hs = ClientHandshake(random_bytes=_fixed_random)
    for piece in pieces(data):
        hs.receive_data(piece)
        hs.data_to_send()


def rtmp_chunk(data: bytes) -> None:
    reader = ChunkReader()
    events = 0
    for piece in pieces(data):
        reader.receive_data(piece)
        while reader.next_event() is not NEED_DATA:
            events += 1
            assert events < MAX_EVENTS


def rtmp_messages(data: bytes) -> None:
    """One message payload through each decoder the connection uses."""
    for decode in (messages.decode_command, messages.decode_user_control,
                   messages.decode_set_peer_bandwidth):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)
    with contextlib.suppress(RemoteProtocolError):
        messages.decode_command(data, amf3=True)
    with contextlib.suppress(RemoteProtocolError):
        messages.decode_u32(data, "value")
    messages.split_aggregate(data, 0)


def rtmp_server(data: bytes) -> None:
    """A whole client byte stream (handshake, then chunks) into the server
    connection, which accepts every connect, publish and play."""
    server = ServerConnection(random_bytes=_fixed_random)
    events = 0
    for piece in pieces(data):
        server.receive_data(piece)
        while (event := server.next_event()) is not NEED_DATA:
            events += 1
            assert events < MAX_EVENTS
            if isinstance(event, ev.ConnectRequested):
                server.accept_connect(event.transaction_id)
            elif isinstance(event, ev.PublishRequested):
                server.publish_start(event.stream_id, event.name)
            elif isinstance(event, ev.PlayRequested):
                server.play_start(event.stream_id, event.name)
            elif isinstance(event, ev.MediaReceived) and event.payload:
                Frame.from_tag(event.type_id, event.timestamp_ms, event.payload)
        server.data_to_send()


def amf0_values(data: bytes) -> None:
    amf0.decode_all(data)


def amf3_values(data: bytes) -> None:
    amf3.decode_all(data)


def flv_ingest(data: bytes) -> None:
    """The HTTP-FLV and WS-FLV publish path: an FLV byte stream split
    anywhere, each tag made a Frame, audio tags read as the recorders do."""
    reader = flv.FlvReader()
    events = 0
    for piece in [*pieces(data), b""]:
        reader.receive_data(piece)
        while True:
            event = reader.next_event()
            events += 1
            assert events < MAX_EVENTS
            if event is flv.NEED_DATA or isinstance(event, flv.EndOfStream):
                break
            if isinstance(event, flv.TagReceived) and event.body:
                frame = Frame.from_tag(event.tag_type, event.timestamp_ms, event.body)
                if event.tag_type == flv.TAG_AUDIO:
                    flv.audio_packet(frame.payload)
                elif event.tag_type == flv.TAG_VIDEO:
                    flv.video_packet(frame.payload)
        if event is not flv.NEED_DATA:
            return


#: The kinds of viewer an Enhanced RTMP message is cut down for.
_ACCEPTANCES = (
    enhanced.LEGACY,
    enhanced.Acceptance(frozenset({b"hvc1", b"Opus"}), frozenset({b"mp4a"}), False),
    enhanced.Acceptance(frozenset({b"av01"}), None, True),
)


def ertmp_message(data: bytes) -> None:
    """An Enhanced RTMP audio or video message read whole, written back, and
    cut down for each kind of viewer (``rtmpd.codec.enhanced``); the first
    byte picks video (even) or audio (odd)."""
    if not data:
        return
    kind = flv.TAG_VIDEO if data[0] % 2 == 0 else flv.TAG_AUDIO
    body = data[1:]
    for acceptance in _ACCEPTANCES:
        enhanced.adapt(kind, body, acceptance)
    message = enhanced.ExMedia.parse(kind, body)
    assert enhanced.ExMedia.parse(kind, bytes(message)) == message


def avc_config(data: bytes) -> None:
    record = avc.AVCDecoderConfigurationRecord.parse(data)
    for sps in record.sps:
        avc.parse_sps(sps)


def avc_sps(data: bytes) -> None:
    avc.parse_sps(data)


def hevc_config(data: bytes) -> None:
    record = hevc.HEVCDecoderConfigurationRecord.parse(data)
    for sps in record.sps:
        hevc.parse_sps(sps)


def av1_config(data: bytes) -> None:
    """An av1C as the recorders read it, and the same bytes as a temporal unit."""
    with contextlib.suppress(RemoteProtocolError):
        av1.sample_data(data)
        av1.size_of_temporal_unit(data)
    av1.AV1CodecConfigurationRecord.parse(data).sequence_header()


def vp9_config(data: bytes) -> None:
    """A vpcC as the recorders read it, and the same bytes as a keyframe."""
    with contextlib.suppress(RemoteProtocolError):
        vp9.keyframe_size(data)
    vp9.VPCodecConfigurationRecord.parse(data)


def flac_config(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        flac.StreamInfo.parse_dfla(data)
    flac.StreamInfo.parse(data)


def aac_config(data: bytes) -> None:
    aac.AudioSpecificConfig.parse(data)


def aac_adts(data: bytes) -> None:
    aac.parse_adts(data)


def opus_head(data: bytes) -> None:
    opus.OpusHead.parse(data)
    with contextlib.suppress(RemoteProtocolError):
        opus.OpusHead.parse_dops(data)


def mpegts_reader(data: bytes) -> None:
    """Segments read back (recovery, tests): TS split anywhere."""
    reader = mpegts.TsReader()
    events = 0
    for piece in [*pieces(data), b""]:
        reader.receive_data(piece)
        while reader.next_event() is not mpegts.NEED_DATA:
            events += 1
            assert events < MAX_EVENTS


def hls_playlist(data: bytes) -> None:
    """Playlists reopened by the HLS recorder and recovery (as UTF-8 text)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # the recorder treats such a file as not its own
    hls.MediaPlaylist.parse(text)
    hls.MediaPlaylist.parse(text, window=3)


def mp4_demux(data: bytes) -> None:
    """The MP4 reader of rtmpd-push and of the fMP4 merge: every sample."""
    demuxer = Mp4Demuxer(lambda offset, size: data[offset : offset + size], len(data))
    for track in demuxer.tracks:
        track.track_config()
    for _ in demuxer.samples():
        pass


def mp4_boxes(data: bytes) -> None:
    """Box headers, every box taken as a container, as deep as the limit allows."""
    def walk(start: int, end: int, depth: int) -> None:
        for box in iter_boxes(data, start, end, depth=depth):
            walk(box.start + box.header_size, box.end, depth + 1)

    walk(0, len(data), 0)


def http_range(data: bytes) -> None:
    specs = http_ranges.parse_range(data)
    for size in (0, 1, 1000):
        with contextlib.suppress(RemoteProtocolError):
            http_ranges.resolve(specs, size)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "rtmp_handshake_server": rtmp_handshake_server,
    "rtmp_handshake_client": rtmp_handshake_client,
    "rtmp_chunk": rtmp_chunk,
    "rtmp_messages": rtmp_messages,
    "rtmp_server": rtmp_server,
    "amf0": amf0_values,
    "amf3": amf3_values,
    "flv_ingest": flv_ingest,
    "ertmp_message": ertmp_message,
    "avc_config": avc_config,
    "avc_sps": avc_sps,
    "hevc_config": hevc_config,
    "av1_config": av1_config,
    "vp9_config": vp9_config,
    "flac_config": flac_config,
    "aac_config": aac_config,
    "aac_adts": aac_adts,
    "opus_head": opus_head,
    "mpegts": mpegts_reader,
    "hls_playlist": hls_playlist,
    "mp4_demux": mp4_demux,
    "mp4_boxes": mp4_boxes,
    "http_range": http_range,
}
