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


class IStreamObserver(Interface):
    """Hears streams come and go (recorders, stats, directories)."""

    def stream_published(stream: object) -> None:
        """A stream went live."""

    def stream_unpublished(stream: object) -> None:
        """A stream ended."""
