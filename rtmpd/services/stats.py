"""What the admin endpoints show: stream summaries for ``/api`` and the
Prometheus metrics for ``/metrics`` (``ARCHITECTURE.md`` sections 5 and 8).

Nothing here runs per frame. The JSON views and the metrics are read from
the live objects when they are asked for (the registry's streams, their
viewers, admission's clients and totals); the only thing kept over time is
:class:`StatsSampler`, which records each stream's byte counters every few
seconds so that bitrates are recent ones rather than lifetime averages.

Labels are bounded: protocol, refusal reason, record format, hook action
and outcome. Nothing per stream or per viewer becomes a label; per-stream
numbers are in ``/api/streams``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from rtmpd.admission import Admission, Refusal
from rtmpd.codec import aac, avc, flv, opus
from rtmpd.codec.errors import ProtocolError
from rtmpd.interfaces import IUpstreamSource
from rtmpd.media import Frame, FrameKind
from rtmpd.protocols import RELAY_PROTOCOL
from rtmpd.services.recorder import FORMATS, metadata_fields

if TYPE_CHECKING:
    from rtmpd.fanout import ViewerOutput
    from rtmpd.registry import Stream, StreamRegistry

log = Logger()

#: Seconds between two samples of every stream's byte counters: the window a
#: "recent" bitrate is measured over. Long enough to smooth out GOP bursts
#: (a keyframe is often a tenth of a second's worth of bytes at once), short
#: enough that a stalled encoder shows within seconds.
SAMPLE_INTERVAL_S = 5.0

#: Largest ``onMetaData`` body decoded for a summary. Encoders send well
#: under 1 KiB; files pushed with a keyframe index reach tens of KiB (18
#: bytes per keyframe). A bigger one is not worth decoding on every API call,
#: so its fields are left out rather than letting a publisher make the admin
#: endpoints slow.
MAX_METADATA_BYTES = 256 * 1024

#: GOP-cache frames looked at to estimate a frame rate when the metadata
#: gives none: a few seconds of video, at little cost per call.
FRAME_RATE_FRAMES = 240

#: Viewer protocols, and connection protocols (an HTTP connection is "http"
#: until it upgrades to a WebSocket, "ws"), always present as label values so
#: a dashboard's series exist before the first viewer.
VIEWER_PROTOCOLS = ("rtmp", "http-flv", "ws-flv")
CONNECTION_PROTOCOLS = ("rtmp", "http", "ws")

#: Names of the legacy FLV CodecIDs and SoundFormats.
VIDEO_CODEC_NAMES: dict[int, str] = {
    flv.VIDEO_H263: "h263",
    flv.VIDEO_SCREEN: "screen",
    flv.VIDEO_VP6: "vp6",
    flv.VIDEO_VP6_ALPHA: "vp6a",
    flv.VIDEO_SCREEN_V2: "screen2",
    flv.VIDEO_AVC: "h264",
    flv.VIDEO_HEVC: "hevc",
}
AUDIO_CODEC_NAMES: dict[int, str] = {
    flv.AUDIO_PCM: "pcm",
    flv.AUDIO_ADPCM: "adpcm",
    flv.AUDIO_MP3: "mp3",
    flv.AUDIO_PCM_LE: "pcm_le",
    flv.AUDIO_NELLYMOSER_16K: "nellymoser",
    flv.AUDIO_NELLYMOSER_8K: "nellymoser",
    flv.AUDIO_NELLYMOSER: "nellymoser",
    flv.AUDIO_G711_ALAW: "g711_alaw",
    flv.AUDIO_G711_MULAW: "g711_mulaw",
    flv.AUDIO_AAC: "aac",
    flv.AUDIO_SPEEX: "speex",
    flv.AUDIO_MP3_8K: "mp3",
    flv.AUDIO_DEVICE_SPECIFIC: "device_specific",
}
#: Names of the Enhanced RTMP FourCCs (carried as big-endian ints).
FOURCC_NAMES: dict[int, str] = {
    flv.FOURCC_AVC1: "h264",
    flv.FOURCC_HVC1: "hevc",
    flv.FOURCC_VVC1: "vvc",
    flv.FOURCC_AV01: "av1",
    flv.FOURCC_VP08: "vp8",
    flv.FOURCC_VP09: "vp9",
    flv.FOURCC_MP4A: "aac",
    flv.FOURCC_OPUS: "opus",
    flv.FOURCC_FLAC: "flac",
    flv.FOURCC_AC3: "ac3",
    flv.FOURCC_EC3: "eac3",
    flv.FOURCC_MP3: "mp3",
}


def codec_name(kind: FrameKind, codec: int) -> str:
    """A codec's short name (``h264``, ``aac``, ``av1``) from a
    :attr:`Frame.codec`: a legacy FLV id (0..15) or an Enhanced RTMP FourCC.
    An unknown FourCC is shown as its four characters, an unknown id as
    ``codec N``."""
    if codec > 0xFF:
        name = FOURCC_NAMES.get(codec)
        if name is not None:
            return name
        raw = codec.to_bytes(4, "big") if codec <= 0xFFFFFFFF else b""
        if len(raw) == 4 and all(0x20 < b < 0x7F for b in raw):
            return raw.decode("ascii")
        return f"codec {codec}"
    names = VIDEO_CODEC_NAMES if kind is FrameKind.VIDEO else AUDIO_CODEC_NAMES
    return names.get(codec, f"codec {codec}")


# --------------------------------------------------------------------------- sampler


class _Sample:
    """One stream's counters at one time, and the rates since the one before."""

    __slots__ = ("bytes_in", "bytes_out", "rate_in_bps", "rate_out_bps", "time")

    def __init__(
        self, time: float, bytes_in: int, bytes_out: int,
        rate_in_bps: float | None, rate_out_bps: float | None,
    ) -> None:
        self.time = time
        self.bytes_in = bytes_in
        #: The stream's bytes out then (:func:`_bytes_out`). Two numbers per
        #: stream, nothing per viewer: a sample lives for an interval, and
        #: per-viewer counts cost ~150 bytes a viewer (viewers themselves
        #: would keep those that left alive past the full collection their
        #: leaving sets off, :mod:`rtmpd.gcpacing`).
        self.bytes_out = bytes_out
        self.rate_in_bps = rate_in_bps
        self.rate_out_bps = rate_out_bps


def _viewers(stream: Stream) -> Iterator[ViewerOutput]:
    """Every viewer of the stream: those admitted (paused ones included, so
    byte counters never go down while one pauses) and any in its groups."""
    seen = dict.fromkeys(stream.viewers)
    for group in tuple(stream.groups.values()):
        seen.update(dict.fromkeys(group.viewers()))
    yield from seen


def _bytes_out(stream: Stream) -> int:
    """Bytes the stream has sent to its viewers, those that left included
    (relays to sibling workers left out, as in :func:`_audience`): its
    growth over a window is what went out in it, whoever left meanwhile."""
    ended = sum(n for protocol, n in stream.ended_bytes_out.items() if protocol != RELAY_PROTOCOL)
    return ended + sum(v.bytes_sent for v in _audience(stream))


def _audience(stream: Stream) -> Iterator[ViewerOutput]:
    """The stream's viewers but the relays to sibling workers (their
    viewers' bytes are counted on the relaying worker)."""
    return (v for v in _viewers(stream) if v.protocol != RELAY_PROTOCOL)


class StatsSampler:
    """Samples every live stream's bytes in and out each
    :data:`SAMPLE_INTERVAL_S` on ``clock``, for recent bitrates.

    Costs one pass over the viewers per interval, nothing per frame. Until a
    stream has two samples its rates are its lifetime averages.
    """

    def __init__(
        self, registry: StreamRegistry, clock: IReactorTime | None = None,
        *, interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self.registry = registry
        self.clock: IReactorTime = clock if clock is not None else registry.clock
        self.interval_s = interval_s
        self._samples: dict[Stream, _Sample] = {}
        self._loop: task.LoopingCall | None = None

    @property
    def running(self) -> bool:
        """Whether samples are being taken."""
        return self._loop is not None

    def start(self) -> None:
        """Take a sample now and every interval after (idempotent)."""
        if self._loop is not None:
            return
        loop = task.LoopingCall(self.sample)
        loop.clock = self.clock
        self._loop = loop
        loop.start(self.interval_s, now=True).addErrback(
            lambda f: log.failure("stream sampling stopped", f)
        )

    def stop(self) -> None:
        """Stop sampling (idempotent); no timer is left behind."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def sample(self) -> None:
        """Record every live stream's counters now; forget ended streams."""
        now = self.clock.seconds()
        old = self._samples
        new: dict[Stream, _Sample] = {}
        for stream in tuple(self.registry.streams.values()):
            bytes_out = _bytes_out(stream)
            prev = old.get(stream)
            rate_in = rate_out = None
            if prev is not None and now > prev.time:
                elapsed = now - prev.time
                rate_in = max(0, stream.bytes_in - prev.bytes_in) * 8 / elapsed
                rate_out = max(0, bytes_out - prev.bytes_out) * 8 / elapsed
            elif prev is not None:
                rate_in, rate_out = prev.rate_in_bps, prev.rate_out_bps
            new[stream] = _Sample(now, stream.bytes_in, bytes_out, rate_in, rate_out)
        self._samples = new

    def rates_bps(self, stream: Stream) -> tuple[float, float]:
        """(in, out) in bits per second over the last sample window, or the
        stream's lifetime averages before it has one."""
        sample = self._samples.get(stream)
        if sample is not None and sample.rate_in_bps is not None:
            return sample.rate_in_bps, sample.rate_out_bps or 0.0
        return lifetime_rates_bps(stream)


def lifetime_rates_bps(stream: Stream) -> tuple[float, float]:
    """(in, out) in bits per second since the stream started (out counts the
    viewers it has now)."""
    uptime = stream.clock.seconds() - stream.started_at
    if uptime <= 0:
        return 0.0, 0.0
    sent = sum(v.bytes_sent for v in _audience(stream))
    return stream.bytes_in * 8 / uptime, sent * 8 / uptime


# --------------------------------------------------------------------------- JSON views


def _positive_number(value: object) -> float | None:
    """A metadata number that can be shown (AMF numbers are doubles)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        return None
    return number


def _metadata(stream: Stream) -> dict[str, object]:
    meta = stream.metadata
    if meta is None or meta.size > MAX_METADATA_BYTES:
        return {}
    return metadata_fields(meta)


def _first_codec(stream: Stream, kind: FrameKind, header: Frame | None) -> int | None:
    if header is not None:
        return header.codec
    for frame in stream.gop.frames:
        if frame.kind is kind:
            return frame.codec
    return None


def _avc_record(header: Frame) -> bytes | None:
    """The AVCDecoderConfigurationRecord of an H.264 sequence header tag:
    after the 5-byte legacy header (flags, AVCPacketType, CompositionTime) or
    the Enhanced RTMP one (flags with SequenceStart, FourCC ``avc1``)."""
    body = header.payload
    if len(body) < 5:
        return None
    if body[0] & flv.VIDEO_EX_HEADER:
        packet_type = body[0] & 0x0F
        if packet_type == flv.VIDEO_PACKET_SEQUENCE_START and body[1:5] == b"avc1":
            return body[5:]
        return None
    if body[0] & 0x0F == flv.VIDEO_AVC and body[1] == flv.AVC_SEQUENCE_HEADER:
        return body[5:]
    return None


def _picture_size(header: Frame | None) -> tuple[int, int] | None:
    """Width and height from an H.264 sequence header's first SPS; None for
    other codecs or anything that does not parse."""
    if header is None:
        return None
    record = _avc_record(header)
    if record is None:
        return None
    try:
        config = avc.AVCDecoderConfigurationRecord.parse(record)
        if not config.sps:
            return None
        info = avc.parse_sps(config.sps[0])
    except ProtocolError:
        return None
    return info.width, info.height


def _measured_frame_rate(stream: Stream) -> float | None:
    """Video frames a second over the tail of the GOP cache."""
    frames = stream.gop.frames[-FRAME_RATE_FRAMES:]
    times = [f.timestamp_ms for f in frames if f.kind is FrameKind.VIDEO]
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) * 1000 / (times[-1] - times[0])


def _video(stream: Stream, meta: dict[str, object]) -> dict[str, Any] | None:
    if not stream.has_video:
        return None
    out: dict[str, Any] = {}
    codec = _first_codec(stream, FrameKind.VIDEO, stream.video_header)
    if codec is not None:
        out["codec"] = codec_name(FrameKind.VIDEO, codec)
    width = _positive_number(meta.get("width"))
    height = _positive_number(meta.get("height"))
    if width is not None and height is not None:
        out["width"], out["height"] = int(width), int(height)
    else:
        size = _picture_size(stream.video_header)
        if size is not None:
            out["width"], out["height"] = size
    rate = _positive_number(meta.get("framerate")) or _positive_number(meta.get("fps"))
    if rate is None:
        rate = _measured_frame_rate(stream)
    if rate is not None:
        out["framerate"] = round(rate, 3)
    return out


def _aac_config(header: Frame | None) -> aac.AudioSpecificConfig | None:
    """The AudioSpecificConfig of a legacy AAC sequence header tag."""
    if header is None or header.codec != flv.AUDIO_AAC:
        return None
    body = header.payload
    if len(body) < 3 or body[1] != flv.AAC_SEQUENCE_HEADER:
        return None
    try:
        return aac.AudioSpecificConfig.parse(body[2:])
    except ProtocolError:
        return None


def _opus_head(header: Frame | None) -> opus.OpusHead | None:
    """The OpusHead of an Enhanced RTMP Opus SequenceStart tag."""
    if header is None or header.codec != flv.FOURCC_OPUS:
        return None
    try:
        return opus.OpusHead.parse(flv.audio_packet(header.payload).data)
    except ProtocolError:
        return None


def _audio(stream: Stream, meta: dict[str, object]) -> dict[str, Any] | None:
    if not stream.has_audio:
        return None
    out: dict[str, Any] = {}
    codec = _first_codec(stream, FrameKind.AUDIO, stream.audio_header)
    if codec is not None:
        out["codec"] = codec_name(FrameKind.AUDIO, codec)
    head = _opus_head(stream.audio_header)
    if head is not None:
        # Opus decodes at 48 kHz whatever rate went into the encoder.
        out["sample_rate"] = opus.SAMPLE_RATE
        out["channels"] = head.channel_count
        return out
    config = _aac_config(stream.audio_header)
    rate = _positive_number(meta.get("audiosamplerate"))
    if rate is not None:
        out["sample_rate"] = int(rate)
    elif config is not None:
        out["sample_rate"] = config.sample_rate
    channels = _positive_number(meta.get("audiochannels"))
    stereo = meta.get("stereo")
    if channels is not None:
        out["channels"] = int(channels)
    elif isinstance(stereo, bool):
        out["channels"] = 2 if stereo else 1
    elif config is not None and 1 <= config.channel_configuration <= 6:
        out["channels"] = config.channel_configuration
    elif config is not None and config.channel_configuration == 7:
        out["channels"] = 8  # channelConfiguration 7 is 7.1
    return out


def _publisher(stream: Stream, admission: Admission | None) -> dict[str, Any]:
    publisher = None if admission is None else admission.publishers.get((stream.app, stream.name))
    if publisher is not None and publisher.stream is stream:
        request = publisher.request
        return {
            "address": request.peer_host,
            "port": request.peer_port,
            "protocol": request.protocol,
            "client_id": request.client_id,
        }
    # Not admitted here (a relay, a test): the source's "protocol host:port".
    description = str(stream.source.description)
    protocol, _, where = description.partition(" ")
    host, _, port = where.rpartition(":")
    if protocol and host and port.isdigit():
        return {"address": host, "port": int(port), "protocol": protocol, "client_id": None}
    return {"address": description, "port": None, "protocol": None, "client_id": None}


def _kbps(bps: float) -> float:
    return round(bps / 1000, 1)


def stream_summary(
    stream: Stream, admission: Admission | None, sampler: StatsSampler | None = None
) -> dict[str, Any]:
    """One stream as ``GET /api/streams`` lists it (JSON-ready).

    ``video`` / ``audio`` are None for a track the stream does not carry;
    inside them a field that cannot be known (odd metadata, an SPS that does
    not parse, a codec we cannot read) is left out. Bitrates are over the
    sampler's last window, lifetime averages without one.
    """
    meta = _metadata(stream)
    if sampler is not None:
        rate_in, rate_out = sampler.rates_bps(stream)
    else:
        rate_in, rate_out = lifetime_rates_bps(stream)
    counts: Counter[str] = Counter()
    relays = 0
    for viewer in _viewers(stream):
        if viewer.protocol == RELAY_PROTOCOL:
            relays += 1
        else:
            counts[viewer.protocol or "unknown"] += 1
    return {
        "app": stream.app,
        "name": stream.name,
        "publisher": _publisher(stream, admission),
        "uptime_s": round(stream.clock.seconds() - stream.started_at, 3),
        "video": _video(stream, meta),
        "audio": _audio(stream, meta),
        "bitrate_in_kbps": _kbps(rate_in),
        "bitrate_out_kbps": _kbps(rate_out),
        "frames_in": stream.frames_in,
        "bytes_in": stream.bytes_in,
        "viewers": dict(counts),
        "viewers_total": sum(counts.values()),
        # Sibling workers relaying it (--workers): their viewers are counted
        # where they play, so a relay is not one.
        "relays": relays,
        # A gateway's stream: its upstream pull (None for published ones).
        "upstream": source.status() if (source := IUpstreamSource(stream.source, None)) else None,
        # Its forwards to other servers (--forward, hooks).
        "forwards": [forward.status() for forward in stream.forwards],
    }


def viewer_detail(viewer: ViewerOutput) -> dict[str, Any]:
    """One viewer as ``GET /api/streams/{app}/{stream}`` shows it."""
    return {
        "client_id": viewer.client_id,
        "protocol": viewer.protocol,
        "address": viewer.description,
        "bytes_sent": viewer.bytes_sent,
        "frames_sent": viewer.frames_sent,
        "frames_skipped": viewer.frames_dropped,
        "lag_ms": viewer.lag_ms(),
        "state": viewer.state.value,
    }


def stream_detail(
    stream: Stream, admission: Admission | None, sampler: StatsSampler | None = None
) -> dict[str, Any]:
    """The summary, with ``viewers`` the list of viewers (:func:`viewer_detail`)
    and the per-protocol counts moved to ``viewers_by_protocol``."""
    out = stream_summary(stream, admission, sampler)
    out["viewers_by_protocol"] = out.pop("viewers")
    out["viewers"] = [viewer_detail(v) for v in _viewers(stream)]
    return out


# --------------------------------------------------------------------------- metrics


class _StateCollector(Collector):
    """Reads the server's state when Prometheus scrapes: nothing per frame."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        registry = self.metrics.registry
        admission = self.metrics.admission
        streams = tuple(registry.streams.values())

        viewers: Counter[str] = Counter(dict.fromkeys(VIEWER_PROTOCOLS, 0))
        bytes_out: Counter[str] = Counter(dict.fromkeys(VIEWER_PROTOCOLS, 0))
        skipped: Counter[str] = Counter(dict.fromkeys(VIEWER_PROTOCOLS, 0))
        connections: Counter[str] = Counter(dict.fromkeys(CONNECTION_PROTOCOLS, 0))
        bytes_in = sum(s.bytes_in for s in streams)
        relays = 0
        for stream in streams:
            for viewer in _viewers(stream):
                protocol = viewer.protocol or "unknown"
                if protocol == RELAY_PROTOCOL:
                    # The box's own traffic: its viewers are the relaying worker's.
                    relays += 1
                    continue
                viewers[protocol] += 1
                bytes_out[protocol] += viewer.bytes_sent
                skipped[protocol] += viewer.frames_dropped
        refusals: Counter[Refusal] = Counter()
        if admission is not None:
            for client in tuple(admission.clients.values()):
                connections[client.protocol] += 1
            bytes_in += admission.ended_bytes_in
            bytes_out.update(_viewer_protocols(admission.ended_bytes_out))
            skipped.update(_viewer_protocols(admission.ended_frames_dropped))
            refusals = admission.refusals

        yield _by_label(
            GaugeMetricFamily(
                "rtmpd_connections", "Open connections on the media ports.",
                labels=["protocol"],
            ),
            connections,
        )
        yield GaugeMetricFamily("rtmpd_streams", "Live streams.", value=len(streams))
        yield _by_label(
            GaugeMetricFamily("rtmpd_viewers", "Viewers playing.", labels=["protocol"]),
            viewers,
        )
        yield GaugeMetricFamily(
            "rtmpd_relays", "Relays of streams held here to sibling workers (--workers); "
            "not viewers.", value=relays,
        )
        yield CounterMetricFamily(
            "rtmpd_bytes_in", "Media bytes received from publishers.", value=bytes_in
        )
        yield _by_label(
            CounterMetricFamily("rtmpd_bytes_out", "Bytes sent to viewers.", labels=["protocol"]),
            bytes_out,
        )
        yield _by_label(
            CounterMetricFamily(
                "rtmpd_frames_skipped", "Frames viewers skipped because they fell behind.",
                labels=["protocol"],
            ),
            skipped,
        )
        yield _by_label(
            CounterMetricFamily(
                "rtmpd_refusals", "Publish, play and connection requests refused.",
                labels=["reason"],
            ),
            {r.value: refusals.get(r, 0) for r in Refusal},
        )


_Family = TypeVar("_Family", GaugeMetricFamily, CounterMetricFamily)


def _viewer_protocols(totals: Mapping[str, int]) -> dict[str, int]:
    """Ended viewers' totals without the relays' (the box's own traffic)."""
    return {protocol: n for protocol, n in totals.items() if protocol != RELAY_PROTOCOL}


def _by_label(family: _Family, values: Mapping[str, int]) -> _Family:
    """``family`` with one sample per label value, in a stable order."""
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


class Metrics:
    """The ``/metrics`` exposition, on its own ``CollectorRegistry`` (not the
    process-wide default one, so tests and several servers in one process do
    not share series).

    State (connections, streams, viewers, byte and refusal totals) is read at
    scrape time; the only things counted as they happen are hook durations
    (:meth:`observe_hook`) and recorder failures (:meth:`count_recorder_error`).
    """

    def __init__(self, registry: StreamRegistry) -> None:
        self.registry = registry
        self.admission: Admission | None = None
        self.collector_registry = CollectorRegistry()
        self.collector_registry.register(_StateCollector(self))
        self._hook_seconds = Histogram(
            "rtmpd_hook_duration_seconds",
            "Time the on-publish / on-play HTTP hooks took to answer.",
            ["action", "outcome"],
            registry=self.collector_registry,
        )
        self._recorder_errors = PromCounter(
            "rtmpd_recorder_errors",
            "Recordings stopped by a failure (disk error, writer queue full).",
            ["format"],
            registry=self.collector_registry,
        )
        for fmt in FORMATS:
            self._recorder_errors.labels(fmt)

    def add_collector(self, collector: Collector) -> None:
        """More series read at scrape time (a gateway's upstream)."""
        self.collector_registry.register(collector)

    def attach(self, admission: Admission) -> None:
        """Read connections, refusals and ended totals from ``admission``."""
        self.admission = admission

    def observe_hook(self, action: str, seconds: float, outcome: str) -> None:
        """An HTTP hook for ``action`` (publish, play) answered ``outcome``
        (allow, deny, timeout, error) after ``seconds``."""
        self._hook_seconds.labels(action, outcome).observe(max(0.0, seconds))

    def count_recorder_error(self, fmt: str) -> None:
        """A ``fmt`` recording (hls, flv, fmp4, fmp4-separate) failed."""
        self._recorder_errors.labels(fmt).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its Content-Type."""
        return generate_latest(self.collector_registry), CONTENT_TYPE_LATEST
