"""Publishing an FLV byte stream (HTTP POST/PUT body or WebSocket messages)
into a Stream: the part both ingest adapters share."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from rtmpd.codec import flv
from rtmpd.interfaces import IMediaSource
from rtmpd.media import Frame
from rtmpd.registry import Stream, StreamRegistry

log = Logger()


@implementer(IMediaSource)
class FlvIngest:
    """Parses FLV bytes split anywhere and pushes the frames into a stream.

    ``feed`` raises :class:`rtmpd.codec.errors.RemoteProtocolError` for bytes
    that are not FLV (or break its limits); the adapter then closes the
    connection and calls :meth:`finish`.
    """

    def __init__(
        self,
        registry: StreamRegistry,
        app: str,
        name: str,
        description: str,
        close: Callable[[str], None],
    ) -> None:
        self.registry = registry
        self.description = description
        self._close = close
        self.reader = flv.FlvReader()
        self.bytes_in = 0
        self.tags_in = 0
        # Raises InvalidStreamName / StreamBusy; the adapter maps those to
        # its own refusals before any body byte is consumed.
        self.stream: Stream | None = registry.publish(app, name, self)

    def feed(self, data: bytes) -> None:
        """Take the next piece of the FLV byte stream."""
        stream = self.stream
        if stream is None:
            return
        self.bytes_in += len(data)
        reader = self.reader
        reader.receive_data(data)
        while True:
            event = reader.next_event()
            if event is flv.NEED_DATA:
                return
            if isinstance(event, flv.TagReceived):
                self.tags_in += 1
                if event.body:  # an empty tag carries nothing to play
                    stream.push(
                        Frame.from_tag(event.tag_type, event.timestamp_ms, event.body)
                    )
            elif isinstance(event, flv.EndOfStream):
                return

    def finish(self, reason: str) -> None:
        """The input ended (cleanly or not): end the stream, free the name."""
        stream = self.stream
        if stream is None:
            return
        self.stream = None
        self.registry.unpublish(stream, f"publisher {self.description} {reason}")

    def stop_publishing(self, reason: str) -> None:
        """Asked to stop (e.g. shutdown): close the ingest connection."""
        self._close(reason)
