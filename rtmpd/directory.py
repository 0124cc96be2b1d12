"""Stream directories (:class:`rtmpd.interfaces.IStreamDirectory`): who holds
the publisher of each live stream.

:class:`MemoryDirectory` keeps the names in this process: the reference
behaviour the shared directories (the workers' one, Redis) are tested
against.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from rtmpd.interfaces import IStreamDirectory

__all__ = ["MemoryDirectory"]


@implementer(IStreamDirectory)
class MemoryDirectory:
    """A directory held in one process's memory."""

    def __init__(self) -> None:
        self.holders: dict[tuple[str, str], str] = {}

    def claim(self, app: str, stream: str, location: str) -> defer.Deferred[bool]:
        holder = self.holders.setdefault((app, stream), location)
        return defer.succeed(holder == location)

    def release(self, app: str, stream: str, location: str) -> defer.Deferred[None]:
        if self.holders.get((app, stream)) == location:
            del self.holders[(app, stream)]
        return defer.succeed(None)

    def lookup(self, app: str, stream: str) -> defer.Deferred[str | None]:
        return defer.succeed(self.holders.get((app, stream)))
