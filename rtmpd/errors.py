"""Exceptions of the server core (outside the pure codecs)."""

from __future__ import annotations


class RtmpdError(Exception):
    """Base class of the server's own errors."""


class InvalidStreamName(RtmpdError):
    """An app or stream name does not match ``[A-Za-z0-9_-]{1,128}``."""


class StreamBusy(RtmpdError):
    """The stream already has a live publisher."""


class StreamNotFound(RtmpdError):
    """No live stream by that name."""
