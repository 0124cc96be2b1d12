"""The admin endpoints (``/api``, ``/metrics``) and the stats behind them,
driven through a real StreamRegistry and Admission with a fake clock, fake
transports and DummyRequests: no reactor, no sockets."""

from __future__ import annotations

import gc
import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from rtmpd.admission import Action, Admission, AdmissionRequest, Publisher, Refusal
from rtmpd.codec import aac, amf0, avc, flv
from rtmpd.fanout import ViewerOutput
from rtmpd.interfaces import IMediaSource
from rtmpd.media import Frame, FrameKind
from rtmpd.protocols import RELAY_PROTOCOL
from rtmpd.protocols.api import ApiResource, MetricsResource, is_loopback
from rtmpd.protocols.web import make_web_site
from rtmpd.registry import Stream, StreamConfig, StreamRegistry
from rtmpd.services.flvrec import FlvRecorder
from rtmpd.services.recorder import RecorderSettings
from rtmpd.services.stats import (
    SAMPLE_INTERVAL_S,
    Metrics,
    StatsSampler,
    codec_name,
    lifetime_rates_bps,
    stream_detail,
    stream_summary,
)
from rtmpd.services.writer import WriterFull

# A 64x48 libx264 baseline SPS and its PPS (tests/unit/test_avc.py has the
# ffprobe check of its size).
SPS_BASELINE = bytes.fromhex("6742c00ad9047b011000000300100000030140f1226480")
PPS_BASELINE = bytes.fromhex("68cb83cb20")
AVC_RECORD = bytes(
    avc.AVCDecoderConfigurationRecord(
        profile=66, compatibility=0xC0, level=10, sps=(SPS_BASELINE,), pps=(PPS_BASELINE,)
    )
)
#: Legacy FLV video tag bodies: keyframe|AVC, AVCPacketType, CompositionTime.
AVC_HEADER = b"\x17\x00\x00\x00\x00" + AVC_RECORD
#: A sequence header whose 4-byte SPS is cut short (as in test_protocols.py).
AVC_HEADER_TRUNCATED_SPS = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f"
KEYFRAME = b"\x17\x01\x00\x00\x00" + b"k" * 200
INTER = b"\x27\x01\x00\x00\x00" + b"i" * 100
#: AAC (SoundFormat 10, 44 kHz, 16-bit, stereo), sequence header: AAC LC,
#: 48 kHz (index 3), 2 channels.
AAC_CONFIG = bytes(
    aac.AudioSpecificConfig(object_type=2, sampling_frequency_index=3, channel_configuration=2)
)
AAC_HEADER = b"\xaf\x00" + AAC_CONFIG
AAC_FRAME = b"\xaf\x01" + b"a" * 50

TOKEN = "s3cret-token"


@implementer(IMediaSource)
class FakeSource:
    """A publisher that remembers being stopped."""

    description = "rtmp 192.0.2.7:5000"

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def stop_publishing(self, reason: str) -> None:
        self.stopped.append(reason)


class FlvTags:
    """Plain FLV tags: the shared bytes of a test viewer."""

    key: Hashable = ("test", "flv")

    def encode(self, frame: Frame) -> bytes:
        return flv.encode_tag(frame.kind, frame.timestamp_ms, frame.payload)

    def preamble(self, stream: Stream) -> list[bytes]:
        return [flv.encode_header(has_audio=True, has_video=True)]


class FakeViewer(ViewerOutput):
    """A viewer over a StringTransport."""

    __slots__ = ("ended",)

    def __init__(self, stream: Stream, client_id: int, protocol: str = "http-flv") -> None:
        transport = StringTransport()  # type: ignore[no-untyped-call]
        super().__init__(
            transport, f"{protocol} 127.0.0.1:6000", stream=stream, output=FlvTags(),
            protocol=protocol, client_id=client_id,
        )
        self.ended: list[str] = []

    def stream_ended(self, reason: str) -> None:
        self.ended.append(reason)
        self.finish(f"stream ended: {reason}")

    def drop(self, reason: str) -> None:
        self.finish(f"dropped: {reason}", dropped=True)


def frame(kind: FrameKind, ts: int, payload: bytes) -> Frame:
    return Frame.from_tag(kind, ts, payload)


def metadata(**fields: object) -> Frame:
    return frame(FrameKind.SCRIPT, 0, amf0.encode_all("onMetaData", amf0.ECMAArray(fields)))


class Server:
    """A registry and admission, one live stream ``live/cam`` with a viewer."""

    def __init__(
        self, frames: list[Frame] | None = None, *, root: Path | None = None,
        start_sampler: bool = False,
    ) -> None:
        self.root = root
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = StreamRegistry(self.clock, StreamConfig(merge_ms=0))
        # No publisher watchdog: the clock holds only what the test starts.
        self.admission = Admission(self.registry, publisher_timeout_s=0)
        self.metrics = Metrics(self.registry)
        self.metrics.attach(self.admission)
        self.sampler = StatsSampler(self.registry, self.clock)
        if start_sampler:
            self.sampler.start()
        self.closed: dict[int, str] = {}
        self.source = FakeSource()
        self.publisher_id = self.connect("rtmp", "192.0.2.7", 5000)
        self.publisher = self.publish("cam", self.source, self.publisher_id)
        self.stream = self.publisher.stream
        self.frames = frames if frames is not None else [
            metadata(framerate=25.0, audiosamplerate=44100.0, audiochannels=2.0),
            frame(FrameKind.VIDEO, 0, AVC_HEADER),
            frame(FrameKind.AUDIO, 0, AAC_HEADER),
            frame(FrameKind.VIDEO, 0, KEYFRAME),
            frame(FrameKind.AUDIO, 10, AAC_FRAME),
            frame(FrameKind.VIDEO, 40, INTER),
        ]
        self.push(self.frames)
        self.viewer_id = self.connect("http", "127.0.0.1", 6000)
        self.viewer = self.play("cam", self.viewer_id)
        self.api = ApiResource(self.admission, self.sampler, token=None)
        self.metrics_page = MetricsResource(self.metrics, token=None)

    def connect(self, protocol: str, host: str, port: int) -> int:
        client_id = 0

        def close(reason: str) -> None:
            self.closed[client_id] = reason
            self.admission.close_connection(client_id)

        client_id = self.admission.open_connection(host, port, protocol, close)
        return client_id

    def request(self, action: Action, name: str, client_id: int, protocol: str) -> AdmissionRequest:
        client = self.admission.clients[client_id]
        return AdmissionRequest(
            action=action, app="live", stream=name, query="", peer_host=client.host,
            peer_port=client.port, protocol=protocol, client_id=client_id,
        )

    def publish(self, name: str, source: FakeSource, client_id: int) -> Publisher:
        results: list[Publisher] = []
        request = self.request(Action.PUBLISH, name, client_id, "rtmp")
        self.admission.publish(request, source).addCallback(results.append)
        return results[0]

    def play(self, name: str, client_id: int) -> ViewerOutput | Failure:
        results: list[ViewerOutput | Failure] = []

        def start(stream: Stream) -> FakeViewer:
            return FakeViewer(stream, client_id)

        d = self.admission.play(self.request(Action.PLAY, name, client_id, "http-flv"), start)
        d.addBoth(results.append)
        return results[0]

    def push(self, frames: list[Frame]) -> None:
        for f in frames:
            self.stream.push(f)


def call(
    root: IResource, method: bytes, path: str, *, peer: Any = None,
    authorization: bytes | None = None,
) -> DummyRequest:
    """Send one request through ``root``'s resource tree."""
    request = DummyRequest(path.lstrip("/").encode().split(b"/"))
    request.method = method
    request.client = peer if peer is not None else IPv4Address("TCP", "127.0.0.1", 40000)
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization])
    resource = getChildForRequest(root, request)  # type: ignore[no-untyped-call]
    request.render(resource)  # type: ignore[no-untyped-call]
    return request


def status(request: DummyRequest) -> int:
    """The response's status (DummyRequest leaves it None for 200)."""
    code = cast(int | None, request.responseCode)
    return 200 if code is None else code


def header(request: DummyRequest, name: bytes) -> bytes | None:
    values = request.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


def body_json(request: DummyRequest) -> Any:
    assert header(request, b"content-type") == b"application/json; charset=utf-8"
    assert header(request, b"cache-control") == b"no-store"
    return json.loads(b"".join(request.written))


def api_root(server: Server, *, token: str | None = None) -> IResource:
    """The web port's resource tree, as makeService builds it."""
    assert server.root is not None
    site = make_web_site(
        str(server.root), reactor=server.clock, admission=server.admission,
        metrics=server.metrics, api_token=token, sampler=server.sampler,
    )
    root: IResource = site.resource
    return root


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(root=tmp_path)


Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse_metrics(text: str) -> Scrape:
    """family -> {sorted labels: value} of its main samples."""
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name in (family.name, family.name + "_total"):
                samples[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(server: Server) -> Scrape:
    """``GET /metrics``, parsed."""
    request = call(api_root(server), b"GET", "/metrics")
    assert status(request) == 200
    content_type = header(request, b"content-type")
    assert content_type is not None and content_type.startswith(b"text/plain")
    assert header(request, b"cache-control") == b"no-store"
    return parse_metrics(b"".join(request.written).decode())


# --------------------------------------------------------------------------- /api/streams


def test_stream_list_summarises_each_live_stream(server: Server) -> None:
    request = call(api_root(server), b"GET", "/api/streams")
    assert status(request) == 200
    [summary] = body_json(request)["streams"]
    pushed = sum(f.size for f in server.frames)
    assert summary["app"] == "live" and summary["name"] == "cam"
    assert summary["publisher"] == {
        "address": "192.0.2.7", "port": 5000, "protocol": "rtmp",
        "client_id": server.publisher_id,
    }
    assert summary["uptime_s"] == 0
    # Width and height from the SPS (the metadata has none), the rest from it.
    assert summary["video"] == {"codec": "h264", "width": 64, "height": 48, "framerate": 25.0}
    assert summary["audio"] == {"codec": "aac", "sample_rate": 44100, "channels": 2}
    assert summary["frames_in"] == len(server.frames)
    assert summary["bytes_in"] == pushed
    assert summary["viewers"] == {"http-flv": 1}
    assert summary["viewers_total"] == 1
    assert summary["bitrate_in_kbps"] == 0.0  # no time has passed


def test_stream_detail_lists_the_viewers(server: Server) -> None:
    request = call(api_root(server), b"GET", "/api/streams/live/cam")
    detail = body_json(request)
    viewer = server.viewer
    assert isinstance(viewer, FakeViewer)
    assert detail["name"] == "cam"
    assert detail["viewers_by_protocol"] == {"http-flv": 1}
    assert detail["viewers"] == [
        {
            "client_id": server.viewer_id,
            "protocol": "http-flv",
            "address": "http-flv 127.0.0.1:6000",
            "bytes_sent": viewer.bytes_sent,
            "frames_sent": viewer.frames_sent,
            "frames_skipped": 0,
            "lag_ms": 0,
            "state": viewer.state.value,
        }
    ]
    assert viewer.bytes_sent > 0


def test_metadata_size_wins_over_the_sps_and_audio_falls_back_to_the_aac_header() -> None:
    s = Server([
        metadata(width=1280.0, height=720.0),
        frame(FrameKind.VIDEO, 0, AVC_HEADER),
        frame(FrameKind.AUDIO, 0, AAC_HEADER),
        frame(FrameKind.VIDEO, 0, KEYFRAME),
        frame(FrameKind.VIDEO, 40, INTER),
        frame(FrameKind.VIDEO, 80, INTER),
    ])
    summary = stream_summary(s.stream, s.admission)
    # No framerate in the metadata: measured over the GOP cache (3 frames in 80 ms).
    assert summary["video"] == {"codec": "h264", "width": 1280, "height": 720, "framerate": 25.0}
    assert summary["audio"] == {"codec": "aac", "sample_rate": 48000, "channels": 2}


def test_opus_audio_is_described_from_its_opus_head() -> None:
    """Enhanced RTMP Opus: 48 kHz (what Opus decodes at) and the OpusHead's channel count,
    whatever the publisher's metadata says."""
    opus_head = b"OpusHead\x01\x01\x38\x01\x44\xac\x00\x00\x00\x00\x00"  # mono, 44.1 kHz in
    s = Server([
        metadata(audiosamplerate=44100.0, audiochannels=2.0),
        frame(FrameKind.VIDEO, 0, AVC_HEADER),
        frame(FrameKind.AUDIO, 0, b"\x90Opus" + opus_head),
        frame(FrameKind.VIDEO, 0, KEYFRAME),
        frame(FrameKind.AUDIO, 0, b"\x91Opus\xfc\xff\xfe"),
    ])
    summary = stream_summary(s.stream, s.admission)
    assert summary["audio"] == {"codec": "opus", "sample_rate": 48000, "channels": 1}


@pytest.mark.parametrize(
    ("frames", "audio"),
    [
        ([frame(FrameKind.VIDEO, 0, AVC_HEADER_TRUNCATED_SPS)], None),
        ([frame(FrameKind.VIDEO, 0, b"\x17\x00\x00\x00\x00\x01\x42")], None),
        ([frame(FrameKind.SCRIPT, 0, b"\x02\x00\x0aonMetaData\x08\xff")], None),
        (
            [
                metadata(width="wide", height=-1.0, framerate=float("nan"), stereo="yes",
                         audiosamplerate=float("inf"), audiochannels=True),
                frame(FrameKind.AUDIO, 0, b"\xaf\x00\xf8"),  # reserved frequency index
            ],
            {"codec": "aac"},
        ),
    ],
    ids=["truncated SPS", "truncated avcC", "truncated metadata", "odd metadata"],
)
def test_odd_codec_data_leaves_fields_out_and_never_raises(
    frames: list[Frame], audio: dict[str, object] | None
) -> None:
    s = Server([*frames, frame(FrameKind.VIDEO, 0, KEYFRAME)])
    summary = stream_summary(s.stream, s.admission)
    assert summary["video"] == {"codec": "h264"}
    assert summary["audio"] == audio


def test_codec_names_cover_legacy_ids_and_enhanced_rtmp_fourccs() -> None:
    assert codec_name(FrameKind.VIDEO, flv.VIDEO_AVC) == "h264"
    assert codec_name(FrameKind.VIDEO, flv.VIDEO_HEVC) == "hevc"
    assert codec_name(FrameKind.VIDEO, flv.FOURCC_AV01) == "av1"
    assert codec_name(FrameKind.VIDEO, flv.fourcc(b"hvc1")) == "hevc"
    assert codec_name(FrameKind.AUDIO, flv.AUDIO_AAC) == "aac"
    assert codec_name(FrameKind.AUDIO, flv.AUDIO_MP3) == "mp3"
    assert codec_name(FrameKind.AUDIO, flv.FOURCC_OPUS) == "opus"
    assert codec_name(FrameKind.VIDEO, flv.fourcc(b"xyz1")) == "xyz1"
    assert codec_name(FrameKind.VIDEO, 13) == "codec 13"


def test_enhanced_rtmp_avc_sequence_start_gives_the_picture_size() -> None:
    ex_header = bytes((0x80 | (flv.VIDEO_FRAME_KEY << 4) | flv.VIDEO_PACKET_SEQUENCE_START,))
    ex_keyframe = bytes((0x80 | (flv.VIDEO_FRAME_KEY << 4) | flv.VIDEO_PACKET_CODED_FRAMES_X,))
    s = Server([
        frame(FrameKind.VIDEO, 0, ex_header + b"avc1" + AVC_RECORD),
        frame(FrameKind.VIDEO, 0, ex_keyframe + b"avc1" + b"k" * 100),
    ])
    assert stream_summary(s.stream, s.admission)["video"] == {
        "codec": "h264", "width": 64, "height": 48,
    }


def test_bitrates_are_measured_over_the_last_sample_window() -> None:
    s = Server(start_sampler=True)
    s.clock.advance(2)
    # Before a full window: the lifetime average.
    lifetime = stream_summary(s.stream, s.admission, s.sampler)
    assert lifetime["bitrate_in_kbps"] == round(s.stream.bytes_in * 8 / 2 / 1000, 1)
    # The stream's first sample comes at the next tick; rates from the one after.
    s.clock.advance(SAMPLE_INTERVAL_S - 2)
    viewer = s.viewer
    assert isinstance(viewer, FakeViewer)
    sent_before = viewer.bytes_sent
    extra = [frame(FrameKind.VIDEO, 80 + 40 * i, INTER) for i in range(50)]
    s.push(extra)
    s.clock.advance(SAMPLE_INTERVAL_S)
    summary = stream_summary(s.stream, s.admission, s.sampler)
    assert summary["bitrate_in_kbps"] == round(
        sum(f.size for f in extra) * 8 / SAMPLE_INTERVAL_S / 1000, 1
    )
    assert summary["bitrate_out_kbps"] == round(
        (viewer.bytes_sent - sent_before) * 8 / SAMPLE_INTERVAL_S / 1000, 1
    )
    s.sampler.stop()
    assert s.clock.getDelayedCalls() == []


def test_a_viewer_that_left_is_not_kept_alive_by_the_last_sample() -> None:
    s = Server(start_sampler=True)
    s.clock.advance(SAMPLE_INTERVAL_S)  # a sample with the viewer in it
    viewer = s.viewer
    assert isinstance(viewer, FakeViewer)
    viewer.finish("closed by the client")
    s.admission.close_connection(s.viewer_id)
    del viewer
    s.viewer = None  # type: ignore[assignment]
    gc.collect()
    left = [o for o in gc.get_objects() if isinstance(o, FakeViewer)]
    assert left == []
    s.sampler.stop()


def test_two_viewers_of_one_connection_both_count_in_the_bitrate() -> None:
    s = Server(start_sampler=True)
    second = s.play("cam", s.viewer_id)  # an RTMP connection may play twice
    assert isinstance(second, FakeViewer)
    s.clock.advance(SAMPLE_INTERVAL_S)
    viewers = [s.viewer, second]
    before = sum(v.bytes_sent for v in viewers)
    s.push([frame(FrameKind.VIDEO, 80 + 40 * i, INTER) for i in range(50)])
    s.clock.advance(SAMPLE_INTERVAL_S)
    sent = sum(v.bytes_sent for v in viewers) - before
    assert sent > 0
    summary = stream_summary(s.stream, s.admission, s.sampler)
    assert summary["bitrate_out_kbps"] == round(sent * 8 / SAMPLE_INTERVAL_S / 1000, 1)
    s.sampler.stop()


def test_a_viewer_that_leaves_mid_window_still_counts_and_samples_hold_no_viewer() -> None:
    """The bitrate out is the growth of the stream's bytes out: a viewer
    that left during the window counts what it was sent in it, and a sample
    keeps two numbers per stream, nothing per viewer."""
    s = Server(start_sampler=True)
    s.clock.advance(SAMPLE_INTERVAL_S)
    leaving = s.play("cam", s.connect("http", "127.0.0.1", 6001))
    assert isinstance(leaving, FakeViewer)
    stayed = s.viewer
    before = stayed.bytes_sent
    s.push([frame(FrameKind.VIDEO, 80 + 40 * i, INTER) for i in range(50)])
    gone_sent = leaving.bytes_sent
    assert gone_sent > 0
    leaving.finish("closed by the client")
    s.clock.advance(SAMPLE_INTERVAL_S)
    summary = stream_summary(s.stream, s.admission, s.sampler)
    sent = stayed.bytes_sent - before + gone_sent
    assert summary["bitrate_out_kbps"] == round(sent * 8 / SAMPLE_INTERVAL_S / 1000, 1)
    (sample,) = s.sampler._samples.values()
    assert not any(isinstance(getattr(sample, name), dict) for name in sample.__slots__)
    s.sampler.stop()


def test_sampler_forgets_ended_streams_and_leaves_no_timer() -> None:
    s = Server(start_sampler=True)
    s.admission.kick_publisher("live", "cam", "test")
    s.clock.advance(SAMPLE_INTERVAL_S)
    assert not s.sampler._samples
    s.sampler.stop()
    assert s.clock.getDelayedCalls() == []


def test_unknown_stream_is_404_json(server: Server) -> None:
    request = call(api_root(server), b"GET", "/api/streams/live/nope")
    assert status(request) == 404
    assert body_json(request) == {"error": "stream live/nope is not live"}


@pytest.mark.parametrize(
    "path",
    ["/api", "/api/", "/api/nothing", "/api/streams/live", "/api/streams/a/b/c", "/api/x%ff"],
)
def test_unknown_api_paths_are_404_json(server: Server, path: str) -> None:
    request = call(api_root(server), b"GET", path)
    assert status(request) == 404
    assert "error" in body_json(request)


def test_a_path_that_is_not_utf8_is_404_json(server: Server) -> None:
    request = DummyRequest([b"api", b"streams", b"\xff", b"cam"])
    request.client = IPv4Address("TCP", "127.0.0.1", 40000)
    request.render(getChildForRequest(api_root(server), request))  # type: ignore[no-untyped-call]
    assert status(request) == 404
    assert "error" in body_json(request)


def test_a_trailing_slash_is_the_same_path(server: Server) -> None:
    request = call(api_root(server), b"GET", "/api/streams/")
    assert len(body_json(request)["streams"]) == 1


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        (b"POST", "/api/streams", b"GET, HEAD"),
        (b"PUT", "/api/streams/live/cam", b"GET, DELETE, HEAD"),
        (b"GET", "/api/clients/1", b"DELETE"),
        (b"DELETE", "/metrics", b"GET, HEAD"),
    ],
)
def test_wrong_method_is_405_json_with_allow(
    server: Server, method: bytes, path: str, allow: bytes
) -> None:
    request = call(api_root(server), method, path)
    assert status(request) == 405
    assert header(request, b"allow") == allow
    assert "not allowed" in body_json(request)["error"]


def test_delete_stream_stops_its_publisher(server: Server) -> None:
    root = api_root(server)
    request = call(root, b"DELETE", "/api/streams/live/cam")
    assert status(request) == 204
    assert b"".join(request.written) == b""
    assert server.source.stopped == ["stopped through the API"]
    assert server.registry.streams == {}
    viewer = server.viewer
    assert isinstance(viewer, FakeViewer) and viewer.ended
    again = call(root, b"DELETE", "/api/streams/live/cam")
    assert status(again) == 404
    assert body_json(again) == {"error": "stream live/cam is not live"}


def test_client_list_and_delete_client_closes_the_connection(server: Server) -> None:
    root = api_root(server)
    server.clock.advance(3)
    clients = body_json(call(root, b"GET", "/api/clients"))["clients"]
    assert clients == [
        {"id": server.publisher_id, "protocol": "rtmp", "address": "192.0.2.7", "port": 5000,
         "connected_s": 3.0},
        {"id": server.viewer_id, "protocol": "http", "address": "127.0.0.1", "port": 6000,
         "connected_s": 3.0},
    ]
    request = call(root, b"DELETE", f"/api/clients/{server.viewer_id}")
    assert status(request) == 204
    assert server.closed == {server.viewer_id: "closed through the API"}
    for missing in (str(server.viewer_id), "999", "abc", "-1"):
        request = call(root, b"DELETE", f"/api/clients/{missing}")
        assert status(request) == 404
        assert "error" in body_json(request)


# --------------------------------------------------------------------------- access


@pytest.mark.parametrize("path", ["/api/streams", "/metrics"])
def test_with_a_token_requests_without_it_are_401(server: Server, path: str) -> None:
    root = api_root(server, token=TOKEN)
    for authorization in (None, b"Basic dXNlcjpwYXNz", b"Bearer", b"Bearer wrong"):
        request = call(root, b"GET", path, authorization=authorization)
        assert status(request) == 401
        challenge = header(request, b"www-authenticate")
        assert challenge is not None and challenge.startswith(b"Bearer")
        assert "error" in body_json(request)


@pytest.mark.parametrize("path", ["/api/streams", "/metrics"])
def test_with_a_token_the_right_one_is_served_from_anywhere(server: Server, path: str) -> None:
    root = api_root(server, token=TOKEN)
    request = call(
        root, b"GET", path, peer=IPv4Address("TCP", "203.0.113.5", 1234),
        authorization=b"bearer  " + TOKEN.encode(),
    )
    assert status(request) == 200
    assert request.written


def test_a_token_stops_deletes_too(server: Server) -> None:
    request = call(api_root(server, token=TOKEN), b"DELETE", "/api/streams/live/cam")
    assert status(request) == 401
    assert server.source.stopped == []


@pytest.mark.parametrize("path", ["/api/streams", "/api/clients/1", "/metrics", "/api/nothing"])
def test_without_a_token_other_hosts_are_403(server: Server, path: str) -> None:
    request = call(
        api_root(server), b"DELETE" if "clients" in path else b"GET", path,
        peer=IPv4Address("TCP", "203.0.113.5", 1234),
    )
    assert status(request) == 403
    assert "--api-token" in body_json(request)["error"]
    assert server.closed == {}


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        (IPv4Address("TCP", "127.0.0.1", 1), True),
        (IPv4Address("TCP", "127.255.0.9", 1), True),
        (IPv6Address("TCP", "::1", 1), True),
        (IPv6Address("TCP", "::ffff:127.0.0.1", 1), True),
        (IPv4Address("TCP", "203.0.113.5", 1), False),
        (IPv4Address("TCP", "10.0.0.1", 1), False),
        (IPv6Address("TCP", "::ffff:10.0.0.1", 1), False),
        (IPv6Address("TCP", "2001:db8::1", 1), False),
        (UNIXAddress(b"/tmp/sock"), False),
        (None, False),
    ],
)
def test_loopback_peers(address: object, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_an_empty_token_is_refused() -> None:
    s = Server()
    with pytest.raises(ValueError, match="empty API token"):
        ApiResource(s.admission, s.sampler, token="")


# --------------------------------------------------------------------------- /metrics


def test_metrics_read_the_servers_state(server: Server) -> None:
    pushed = sum(f.size for f in server.frames)
    refused = server.play("nothing", server.viewer_id)
    assert isinstance(refused, Failure)
    metrics = scrape(server)
    assert metrics["rtmpd_streams"] == {(): 1}
    assert metrics["rtmpd_bytes_in"] == {(): pushed}
    assert metrics["rtmpd_connections"] == {
        (("protocol", "http"),): 1, (("protocol", "rtmp"),): 1, (("protocol", "ws"),): 0,
    }
    assert metrics["rtmpd_viewers"] == {
        (("protocol", "http-flv"),): 1, (("protocol", "rtmp"),): 0, (("protocol", "ws-flv"),): 0,
    }
    viewer = server.viewer
    assert isinstance(viewer, FakeViewer)
    assert metrics["rtmpd_bytes_out"][(("protocol", "http-flv"),)] == viewer.bytes_sent
    assert metrics["rtmpd_frames_skipped"][(("protocol", "http-flv"),)] == 0
    refusals = metrics["rtmpd_refusals"]
    assert {labels[0][1] for labels in refusals} == {r.value for r in Refusal}
    assert refusals[(("reason", "not_found"),)] == 1
    assert sum(refusals.values()) == 1
    assert metrics["rtmpd_recorder_errors"] == {
        (("format", f),): 0 for f in ("hls", "flv", "fmp4", "fmp4-separate")
    }


def test_a_sibling_workers_relay_is_not_a_viewer(server: Server) -> None:
    """With --workers, the holder's relay to another worker is the box's own
    traffic: the viewers it feeds are counted on that worker."""
    relay_id = server.connect("http", "?", 0)
    request = server.request(Action.PLAY, "cam", relay_id, RELAY_PROTOCOL)
    relays: list[ViewerOutput] = []
    server.admission.play(
        request, lambda stream: FakeViewer(stream, relay_id, RELAY_PROTOCOL), internal=True,
    ).addCallback(relays.append)
    server.push([frame(FrameKind.VIDEO, 80, INTER)])
    assert relays and relays[0].bytes_sent > 0
    metrics = scrape(server)
    assert metrics["rtmpd_viewers"] == {
        (("protocol", "http-flv"),): 1, (("protocol", "rtmp"),): 0, (("protocol", "ws-flv"),): 0,
    }
    assert metrics["rtmpd_relays"] == {(): 1}
    summary = body_json(call(api_root(server), b"GET", "/api/streams"))["streams"][0]
    assert (summary["viewers"], summary["viewers_total"], summary["relays"]) == (
        {"http-flv": 1}, 1, 1)
    # Nor are its bytes the stream's output.
    server.clock.advance(1)
    viewer = server.viewer
    assert isinstance(viewer, FakeViewer)
    assert lifetime_rates_bps(server.stream)[1] == viewer.bytes_sent * 8 / 1
    relays[0].finish("closed by the client")
    after = scrape(server)
    assert after["rtmpd_relays"] == {(): 0}
    assert {labels for labels in after["rtmpd_bytes_out"]} == {
        (("protocol", p),) for p in ("http-flv", "rtmp", "ws-flv")}


def test_metric_totals_keep_what_ended_streams_and_viewers_counted(server: Server) -> None:
    viewer = server.viewer
    assert isinstance(viewer, FakeViewer)
    before = scrape(server)
    server.admission.kick_publisher("live", "cam", "test")
    after = scrape(server)
    assert after["rtmpd_streams"] == {(): 0}
    assert after["rtmpd_bytes_in"] == before["rtmpd_bytes_in"]
    assert after["rtmpd_bytes_out"] == before["rtmpd_bytes_out"]
    assert after["rtmpd_viewers"][(("protocol", "http-flv"),)] == 0


def test_hook_durations_are_a_histogram(server: Server) -> None:
    server.metrics.observe_hook("publish", 0.02, "allow")
    server.metrics.observe_hook("publish", 7.0, "timeout")
    body, content_type = server.metrics.render()
    assert content_type.startswith("text/plain")
    [family] = [
        f for f in text_string_to_metric_families(body.decode())
        if f.name == "rtmpd_hook_duration_seconds"
    ]
    counts = {
        s.labels["outcome"]: s.value for s in family.samples
        if s.name.endswith("_count")
    }
    assert counts == {"allow": 1, "timeout": 1}


def test_a_failed_recording_is_counted_by_format(tmp_path: Path) -> None:
    class FullWriter:
        def submit(self, job: Any, *, size: int = 0, quiet: bool = False) -> Any:
            raise WriterFull("disk writer queue full")

    s = Server([])
    recorder = FlvRecorder(s.registry, FullWriter(), RecorderSettings(root=str(tmp_path)))
    recorder.on_failure = s.metrics.count_recorder_error
    recorder.startService()
    s.admission.kick_publisher("live", "cam", "restart")
    s.publisher = s.publish("cam", FakeSource(), s.publisher_id)
    s.stream = s.publisher.stream
    s.push([frame(FrameKind.VIDEO, 0, AVC_HEADER), frame(FrameKind.VIDEO, 0, KEYFRAME)])
    errors = parse_metrics(s.metrics.render()[0].decode())["rtmpd_recorder_errors"]
    assert errors[(("format", "flv"),)] == 1
    assert errors[(("format", "hls"),)] == 0
    recorder.stopService()


def test_metrics_have_their_own_registry() -> None:
    from prometheus_client import REGISTRY

    Server()
    assert REGISTRY.get_sample_value("rtmpd_streams") is None


# --------------------------------------------------------------------------- the web site


def test_api_and_metrics_win_over_files_of_those_names(server: Server) -> None:
    root = server.root
    assert root is not None
    (root / "api").mkdir()
    (root / "api" / "streams").write_text("a file")
    (root / "metrics").write_text("a file")
    (root / "index.html").write_text("hello")
    tree = api_root(server)
    assert "streams" in body_json(call(tree, b"GET", "/api/streams"))
    assert b"rtmpd_streams" in b"".join(call(tree, b"GET", "/metrics").written)
    page = call(tree, b"GET", "/index.html")
    assert b"".join(page.written) == b"hello"
    assert header(page, b"access-control-allow-origin") == b"*"


def test_admin_answers_carry_no_cors(server: Server) -> None:
    request = call(api_root(server), b"GET", "/api/streams")
    assert header(request, b"access-control-allow-origin") is None


def test_web_site_without_admission_serves_no_admin_endpoints(tmp_path: Path) -> None:
    site = make_web_site(str(tmp_path))
    assert set(site.resource.children) == {b"recordings.json"}


def test_web_site_runs_its_own_sampler_only_while_listening(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()  # type: ignore[no-untyped-call]
    registry = StreamRegistry(reactor)
    admission = Admission(registry)
    site = make_web_site(
        str(tmp_path), reactor=reactor, admission=admission, metrics=Metrics(registry),
        api_token=None,
    )

    def sampling() -> int:
        return sum("StatsSampler.sample" in repr(c) for c in reactor.getDelayedCalls())

    assert reactor.getDelayedCalls() == []
    site.doStart()  # type: ignore[no-untyped-call]
    assert sampling() == 1
    reactor.advance(SAMPLE_INTERVAL_S)
    assert sampling() == 1
    site.doStop()  # type: ignore[no-untyped-call]
    assert reactor.getDelayedCalls() == []


def test_stream_detail_helper_matches_the_endpoint(server: Server) -> None:
    direct = stream_detail(server.stream, server.admission, server.sampler)
    served = body_json(call(api_root(server), b"GET", "/api/streams/live/cam"))
    assert served == json.loads(json.dumps(direct))
