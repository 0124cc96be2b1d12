"""The ``--web`` port: the ``--root`` tree, read-only, and nothing outside it."""

from __future__ import annotations

import os
from typing import Any

from twisted.python.filepath import FilePath
from twisted.web import pages, resource, server, static

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


def make_web_site(root: str) -> server.Site:
    """A Site serving ``root`` read-only."""
    FilePath(root).makedirs(ignoreExistingDirectory=True)
    site = server.Site(RootedFile(root), timeout=30)
    site.displayTracebacks = False
    return site
