"""Errors raised by the pure codecs.

Every parser in :mod:`rtmpd.codec` raises only these. Any other exception
escaping a parser is a bug.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: something about the bytes or the API use was wrong.

    ``hint`` suggests what the adapter might send back (for example an RTMP
    ``_error`` description or an HTTP status code); it is advisory.
    """

    def __init__(self, message: str, *, hint: str | int | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __new__(cls, *args: object, **kwargs: object) -> ProtocolError:
        if cls is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise Local/RemoteProtocolError")
        return super().__new__(cls)


class LocalProtocolError(ProtocolError):
    """The caller misused the codec API (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol or exceed a limit."""
