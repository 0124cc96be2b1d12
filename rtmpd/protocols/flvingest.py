"""Publishing an FLV byte stream (HTTP POST/PUT body or WebSocket messages)
into a Stream: the part both ingest adapters share."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from rtmpd.admission import Publisher
from rtmpd.codec import flv
from rtmpd.codec.errors import RemoteProtocolError
from rtmpd.interfaces import IMediaSource
from rtmpd.media import Frame

log = Logger()

#: Bytes of FLV a publisher may send while admission is still deciding (an
#: HTTP hook can take seconds): an encoder sends its header and a first GOP
#: in that time; more than this is cut off rather than buffered without bound.
MAX_BUFFERED_BEFORE_DECISION = 4 * 1024 * 1024


@implementer(IMediaSource)
class FlvIngest:
    """Parses FLV bytes split anywhere and pushes the frames into a stream.

    Until admission lets the publisher in (:meth:`started`) the bytes are
    kept, up to :data:`MAX_BUFFERED_BEFORE_DECISION`. ``feed`` raises
    :class:`rtmpd.codec.errors.RemoteProtocolError` for bytes that are not
    FLV (or break its limits); the adapter then closes the connection and
    calls :meth:`finish`.
    """

    def __init__(self, description: str, close: Callable[[str], None]) -> None:
        self.description = description
        self._close = close
        self.reader = flv.FlvReader()
        self.publisher: Publisher | None = None
        self.finished = False
        self.bytes_in = 0
        self.tags_in = 0
        self._early: list[bytes] = []
        self._early_size = 0

    def started(self, publisher: Publisher) -> None:
        """Admission said yes: the bytes kept so far go into the stream."""
        if self.finished:
            publisher.end("left before the publish started")
            return
        self.publisher = publisher
        early, self._early = self._early, []
        self._early_size = 0
        for data in early:
            self.feed(data)

    def feed(self, data: bytes) -> None:
        """Take the next piece of the FLV byte stream."""
        if self.finished:
            return
        publisher = self.publisher
        if publisher is None:
            self._early_size += len(data)
            if self._early_size > MAX_BUFFERED_BEFORE_DECISION:
                raise RemoteProtocolError(
                    f"{self._early_size} bytes sent while awaiting a decision exceed "
                    f"MAX_BUFFERED_BEFORE_DECISION ({MAX_BUFFERED_BEFORE_DECISION})"
                )
            self._early.append(data)
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
                    publisher.push(
                        Frame.from_tag(event.tag_type, event.timestamp_ms, event.body)
                    )
            elif isinstance(event, flv.EndOfStream):
                return

    def finish(self, reason: str) -> None:
        """The input ended (cleanly or not): end the stream, free the name."""
        if self.finished:
            return
        self.finished = True
        self._early = []
        publisher = self.publisher
        if publisher is not None:
            publisher.end(reason)

    def stop_publishing(self, reason: str) -> None:
        """Asked to stop (shutdown, takeover, timeout, kick): close the
        ingest connection (which then calls :meth:`finish`)."""
        self._close(reason)
