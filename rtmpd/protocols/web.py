"""The ``--web`` port: the ``--root`` tree, read-only, and nothing outside it;
with an admission, the admin endpoints ``/api`` and ``/metrics`` beside it
(:mod:`rtmpd.protocols.api`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web import http, pages, resource, server, static

from rtmpd.protocols.flvhttp import (
    HEADER_TIMEOUT_S,
    MAX_HEADER_BYTES,
    DeadlineChannel,
    refuse_connection,
)

if TYPE_CHECKING:
    from rtmpd.admission import Admission
    from rtmpd.services.stats import Metrics, StatsSampler

#: MIME types the stock table lacks or gets wrong for streaming files.
MEDIA_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".flv": "video/x-flv",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
}


#: A live playlist changes with every segment, so caches must revalidate it;
#: a segment never changes under its name while its playlist lives (names go
#: on across republishes), so a CDN may keep it. FLV/MP4 files grow while live
#: or are replaced by the next publish.
CACHE_CONTROL = {
    ".m3u8": "no-cache",
    ".ts": "public, max-age=86400",
    ".m4s": "public, max-age=86400",
}
DEFAULT_CACHE_CONTROL = "no-cache"


class RootedFile(static.File):
    """static.File that lists no directories and follows no symlink out of
    its root."""

    def __init__(self, path: str, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.root = os.path.realpath(root or path)
        self.contentTypes = {**self.contentTypes, **MEDIA_TYPES}

    def createSimilarFile(self, path: str) -> static.File:
        f = RootedFile(path, self.root, defaultType=self.defaultType)
        f.processors = self.processors
        f.indexNames = self.indexNames[:]
        f.childNotFound = self.childNotFound
        return f

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        child: resource.IResource = super().getChild(path, request)
        if isinstance(child, static.File):
            real = os.path.realpath(child.path)
            if real != self.root and not real.startswith(self.root + os.sep):
                return self.childNotFound
        return child

    def render(self, request: server.Request) -> bytes | int:
        """Serve the file with cache rules per type and open CORS (players on
        other origins, e.g. hls.js, fetch recordings)."""
        ext = os.path.splitext(self.path)[1].lower()
        request.setHeader(b"Cache-Control", CACHE_CONTROL.get(ext, DEFAULT_CACHE_CONTROL))
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        result: bytes | int = super().render(request)
        return result

    def directoryListing(self) -> resource.IResource:
        return pages.notFound("Not Found", "Directory listings are off.")


#: Bytes of request body the web port reads: nothing it serves takes a
#: body (files, GET/DELETE /api), so anything more is refused, not buffered.
MAX_WEB_BODY_BYTES = 0


class WebRequest(server.Request):
    """A request on the web port: one with a body is answered 413 and the
    connection closed, before the body is read."""

    def gotLength(self, length: int | None) -> None:
        if length is None or length > MAX_WEB_BODY_BYTES:
            channel: Any = self.channel
            channel.persistent = False
            refuse_connection(channel.transport, "requests here have no body", code=413)
            self.refused = True
            return
        super().gotLength(length)

    refused = False

    def handleContentChunk(self, data: bytes) -> None:
        if not self.refused:
            super().handleContentChunk(data)

    def process(self) -> None:
        if not self.refused:
            super().process()


class WebChannel(DeadlineChannel):
    """A connection on the web port: a deadline for its headers, and counted
    against the port's own connection limit (separate from the media ports'
    so that ``/api`` stays reachable when those are full)."""

    site: WebSite
    _counted = False

    def connectionMade(self) -> None:
        site = self.site
        if site.max_connections and site.open_connections >= site.max_connections:
            http.HTTPChannel.connectionMade(self)
            refuse_connection(self.transport, "too many connections")
            return
        site.open_connections += 1
        self._counted = True
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._counted:
            self._counted = False
            self.site.open_connections -= 1
        super().connectionLost(reason)


class WebSite(server.Site):
    """The web port's Site; runs the stats sampler it was given to own while
    it listens (so a Site that never listens, as in a test, sets no timer)."""

    protocol = WebChannel  # type: ignore[assignment]

    def __init__(
        self, root: resource.IResource, *, owned_sampler: StatsSampler | None = None,
        max_connections: int = 0, header_timeout: float = HEADER_TIMEOUT_S,
        max_header_bytes: int = MAX_HEADER_BYTES, **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.owned_sampler = owned_sampler
        #: Most open connections on this port (0: no limit).
        self.max_connections = max_connections
        self.open_connections = 0
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes

    def startFactory(self) -> None:
        super().startFactory()
        if self.owned_sampler is not None:
            self.owned_sampler.start()

    def stopFactory(self) -> None:
        if self.owned_sampler is not None:
            self.owned_sampler.stop()
        super().stopFactory()


def make_web_site(
    root: str,
    *,
    reactor: IReactorTime | None = None,
    admission: Admission | None = None,
    metrics: Metrics | None = None,
    api_token: str | None = None,
    sampler: StatsSampler | None = None,
    max_connections: int = 0,
    header_timeout: float = HEADER_TIMEOUT_S,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> server.Site:
    """A Site serving ``root`` read-only, with ``/api`` when given an
    ``admission`` and ``/metrics`` when given ``metrics``; both follow
    :func:`rtmpd.protocols.api.access_denied` with ``api_token``.

    Without a ``sampler`` one is made on ``reactor`` (else the registry's
    clock) and runs while the site listens; a given one is the caller's to
    start. ``reactor`` also drives the Site's timeouts.
    """
    FilePath(root).makedirs(ignoreExistingDirectory=True)
    files = RootedFile(root)
    owned: StatsSampler | None = None
    if admission is not None or metrics is not None:
        from rtmpd.protocols.api import ApiResource, MetricsResource
        from rtmpd.services.stats import StatsSampler

        # Children win over files of the same names under --root.
        if admission is not None:
            if sampler is None:
                clock = reactor if reactor is not None else admission.clock
                sampler = owned = StatsSampler(admission.registry, clock)
            files.putChild(b"api", ApiResource(admission, sampler, token=api_token))
        if metrics is not None:
            files.putChild(b"metrics", MetricsResource(metrics, token=api_token))
    site = WebSite(
        files, owned_sampler=owned, timeout=30, reactor=reactor, requestFactory=WebRequest,
        max_connections=max_connections, header_timeout=header_timeout,
        max_header_bytes=max_header_bytes,
    )
    site.displayTracebacks = False
    return site
