"""Thin Twisted adapters between sockets and the pure core."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from rtmpd.codec import enhanced
from rtmpd.media import Frame

if TYPE_CHECKING:
    from rtmpd.fanout import OutputFormat
    from rtmpd.registry import Stream

log = Logger()

#: The protocol of a play by another ``--workers`` worker's relay (on this
#: worker's Unix socket): admitted as the server's own, and not a viewer in
#: the stats (the viewers it serves are counted on the relaying worker).
RELAY_PROTOCOL = "relay"

#: The query parameter an HTTP-FLV or WS-FLV player adds to get only what
#: a player without Enhanced RTMP decodes: ``/live/cam1.flv?codecs=legacy``.
LEGACY_QUERY = ("codecs", "legacy")


class LegacyFormat:
    """Another output format: ``base``'s bytes of the legacy FLV form of each
    frame (:func:`rtmpd.codec.enhanced.adapt` for a client that announced
    nothing), ``b""`` for frames it has none of. Encoded once per frame for
    all its viewers, like ``base``."""

    __slots__ = ("base", "key")

    def __init__(self, base: OutputFormat) -> None:
        self.base = base
        self.key: Hashable = (base.key, "legacy")

    def encode(self, frame: Frame) -> bytes:
        body = enhanced.adapt(frame.kind, frame.payload, enhanced.LEGACY)
        if body is None:
            return b""
        return self.base.encode(frame if body is frame.payload else replace(frame, payload=body))

    def preamble(self, stream: Stream) -> list[bytes]:
        return self.base.preamble(stream)


def say_what_is_left_out(
    stream: Stream, acceptance: enhanced.Acceptance, peer: str, why: str
) -> None:
    """One line for a viewer that will get none of some of the stream's
    codecs (a legacy client and an HEVC stream, say), so whoever is asked
    about a black picture finds why; nothing when it gets them all. Bounded
    with the other viewer lines."""
    if acceptance.everything:
        return
    headers = [(frame.kind, frame.payload) for frame in stream.headers.values()]
    missing = enhanced.dropped_codecs(acceptance, headers)
    if missing:
        stream.registry.viewer_log.line(
            log, "legacy", stream.path,
            "play {path} by {peer}: {why}, so it gets no {missing}; it gets the rest",
            peer=peer, why=why, missing=" and no ".join(missing),
        )


def set_no_delay(transport: Any) -> None:
    """Turn Nagle off on a media connection (small messages would wait for
    the peer's ACK otherwise); transports that are not TCP have no such knob."""
    set_it = getattr(transport, "setTcpNoDelay", None)
    if set_it is not None:
        set_it(True)


def host_and_port(address: object) -> tuple[str, int]:
    """The host and port of a peer's address ("?" and 0 when it has none,
    e.g. a Unix socket)."""
    return str(getattr(address, "host", "?")), int(getattr(address, "port", 0))
