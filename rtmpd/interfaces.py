"""zope.interface definitions that the layers meet at."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMediaSink(Interface):
    """Something that receives every Frame of one stream, in order.

    Recorders and relays implement this. Viewers do not: they join a
    :class:`rtmpd.fanout.FanoutGroup`, which shares serialized bytes among
    all viewers of one output format (see ``ARCHITECTURE.md`` section 5).
    """

    def on_frame(frame: object) -> None:
        """Take one :class:`rtmpd.media.Frame`. Must not block."""

    def on_stream_end(reason: str) -> None:
        """The publisher went away; no more frames will come."""


class IMediaSource(Interface):
    """A publisher: whatever feeds frames into a Stream."""

    description = Attribute("Short text for logs, e.g. 'rtmp 127.0.0.1:5000'.")

    def stop_publishing(reason: str) -> None:
        """Stop feeding the stream and close the ingest connection."""


class IPacedSource(IMediaSource):
    """A publisher whose socket may be left unread for a while (batched
    reads, :mod:`rtmpd.protocols.readpacing`): while it is, its close is not
    seen, so admission wakes it before refusing its name to another."""

    def wake_reading() -> bool:
        """Read at once again, so that a peer already gone is noticed within
        a reactor turn or two. Returns whether reading was paused."""

    def read_waiting() -> None:
        """Read now, into the stream, what the peer sent during a pause (it
        waits in the socket): called before the publish is ended."""


class IStreamOrigin(Interface):
    """Where a played stream that is not live here comes from: a gateway's
    upstream (later, a worker's relay). Admission asks it after the
    authorizers, before the viewer starts."""

    def open(request: object) -> object:
        """Make the stream of a :class:`rtmpd.admission.AdmissionRequest`
        live in the registry. Returns a Deferred that fires once it is (its
        headers and first media in), or fails with
        :class:`rtmpd.admission.AdmissionRefused` (``NOT_FOUND``,
        ``UNAVAILABLE``, ...). Concurrent requests for one stream share one
        attempt."""

    def probe(app: str, name: str) -> object:
        """Whether the stream could be played (``HEAD``): a Deferred of a
        :class:`rtmpd.admission.Refusal`, or None when it could."""


class IUpstreamSource(IMediaSource):
    """A source that pulls a stream from elsewhere: what ``/api`` and the
    periodic stats line show about it."""

    def status() -> object:
        """A JSON-ready dict: url, state, connects, bytes in, seconds since
        the last data, last error."""


class IStreamObserver(Interface):
    """Hears streams come and go (recorders, stats, directories)."""

    def stream_published(stream: object) -> None:
        """A stream went live."""

    def stream_unpublished(stream: object) -> None:
        """A stream ended."""


class IViewer(Interface):
    """One viewer of one stream, whatever its protocol (RTMP, HTTP-FLV,
    WS-FLV, a gateway's or a forward's client): what the fan-out sends to,
    what the stats show, and what admission counts.

    :class:`rtmpd.fanout.ViewerOutput` implements it; protocol adapters
    subclass that and fill in :meth:`stream_ended` and :meth:`drop`.
    """

    description = Attribute("Short text for logs, e.g. 'http-flv 127.0.0.1:5000'.")
    protocol = Attribute("The protocol's name: 'rtmp', 'http-flv', 'ws-flv'.")
    client_id = Attribute("The connection's id (as in /api/clients/{id}), 0 if none.")
    stream = Attribute("The Stream it plays.")
    bytes_sent = Attribute("Bytes sent so far.")
    frames_sent = Attribute("Frames sent so far.")
    frames_dropped = Attribute("Frames skipped because the viewer was too slow.")

    def stream_ended(reason: str) -> None:
        """The stream is over: end this viewer's output politely."""

    def drop(reason: str) -> None:
        """Close this viewer's connection now (it broke a limit)."""

    def finish(why: str) -> None:
        """The viewer is gone, for ``why``: leave the stream, write the one
        stop line, count it. Idempotent; every way a viewer ends calls it."""

    def lag_ms() -> int:
        """How far behind live this viewer is, in ms (0 when in sync)."""


class IAuthorizer(Interface):
    """Says whether a publish or play may go ahead (``ARCHITECTURE.md`` §8).

    Authorizers compose: admission asks each in turn and the first refusal
    wins. They are asked before any status says "started".
    """

    def authorize(request: object) -> object:
        """Decide on a :class:`rtmpd.admission.AdmissionRequest`.

        Returns a :class:`rtmpd.admission.Decision`, or a Deferred that fires
        with one (an HTTP hook). A failure counts as a refusal.
        """


class IAdmissionListener(Interface):
    """Hears what admission decided and when admitted clients end: done
    hooks, metrics. Must not block; called on the reactor thread."""

    def refused(request: object, refusal: object, message: str) -> None:
        """A request was refused (:class:`rtmpd.admission.Refusal`)."""

    def started(request: object) -> None:
        """A publish or play was admitted and has started."""

    def ended(request: object, why: str) -> None:
        """An admitted publish or play ended, cleanly or not."""


class IStreamDirectory(Interface):
    """Which process or machine holds the publisher of each live stream
    (``ARCHITECTURE.md`` section 9): the workers of one box share one, and
    gateways find their origin in one kept in Redis.

    A *location* is the base URL a stream is pulled from with HTTP-FLV
    (``http://10.0.0.5:8501``, or ``unix:/run/rtmpd/worker-2.sock`` between
    the workers of one box); the stream's own path is added by the puller.
    Every method returns a Deferred, so a directory may live in another
    process; none of them blocks.
    """

    def claim(app: str, stream: str, location: str) -> object:
        """Record that ``location`` now publishes ``app/stream``: a Deferred
        of True, or of False when another location holds it (the publish is
        then refused as busy). Claiming again from the same location is
        True. A claim lives until :meth:`release`, or, in a shared
        directory, until its holder stops refreshing it (a dead holder's
        names come free by themselves)."""

    def release(app: str, stream: str, location: str) -> object:
        """The stream ended at ``location``: forget it (a Deferred of None).
        A release by a location that does not hold the name changes
        nothing."""

    def lookup(app: str, stream: str) -> object:
        """A Deferred of the location holding ``app/stream``, or of None."""
