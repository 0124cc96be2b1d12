"""Static files over HTTP: the one resource rtmpd serves a directory tree
with, on the ``--web`` port (the recordings under ``--root``) and as
``twistd filegateway``.

:class:`RootedFile` is :class:`twisted.web.static.File` for walking the tree
and naming types, with what that class gets wrong for a public server
replaced:

* **Paths.** Each request path segment is checked before it reaches the
  file system (:func:`safe_segment`): no ``..``, dotfiles, ``/`` or ``\\``
  (however percent-encoded), NUL or control characters, invalid UTF-8. File
  let ``GET /%00`` reach ``stat`` and answered 500 with a traceback in the
  log, and logged one for every non-UTF-8 segment. What a name resolves to,
  symlinks followed, must stay under the root and be visible too.
* **Internal files** are never served or listed (:func:`hidden_name`): the
  recorders' ``.recording`` markers (and ``.recording.failed``) and every
  ``*.tmp`` file written before a rename (``index.m3u8.tmp``,
  ``stream_full.mp4.tmp``, fragments).
* **Methods.** GET, HEAD and OPTIONS (a CORS preflight, answered 204); any
  other method 405 with ``Allow``. File answered OPTIONS 501, which broke
  browser preflights.
* **Ranges** (RFC 9110 §14, :mod:`rtmpd.codec.http_ranges`): single, open
  and suffix ranges; several ranges merged where they overlap or touch, at
  most :data:`~rtmpd.codec.http_ranges.MAX_RANGE_SPECS` of them, and a
  multipart answer only when it is smaller than the file (else 200 with the
  file), so no response body is ever larger than the file. File sent each
  listed range as asked (1 500 copies of ``0-`` in a 4.5 KB header sent a
  124 MB file 1 500 times), and a suffix longer than the file made it seek
  before the start.
* **Validators.** ``ETag`` (size and modification time), ``Last-Modified``,
  ``If-None-Match`` (which wins over ``If-Modified-Since``) and ``If-Range``;
  File sent no ETag and honoured no ``If-Range``.
* **The body** is exactly ``Content-Length`` bytes of the opened file. File
  read to end of file, so a file growing while sent (a live FLV recording)
  overran its ``Content-Length`` and corrupted the connection, and one that
  shrank left the connection hanging (a multi-range answer spun forever).
  Here a shrinking file aborts the connection with one log line, and a
  client that reads nothing for :data:`SEND_STALL_TIMEOUT_S` is closed.
* **Types.** :data:`MEDIA_TYPES` for streaming files; anything unknown is
  ``application/octet-stream`` with ``nosniff`` (File defaulted to
  ``text/html``), and ``.gz`` is not sent as ``Content-Encoding``.
* **Listings** only when asked for (``listing=True``), of visible names
  only, HTML-escaped by Twisted's :class:`~twisted.web.static.DirectoryLister`.

Every answer carries open CORS (players on other origins, e.g. hls.js,
fetch recordings) and exposes the range headers to pages.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python import filepath
from twisted.web import http, resource, server, static
from zope.interface import implementer

from rtmpd.codec.http_ranges import (
    ByteRange,
    RangeNotUsed,
    SuffixRange,
    entity_tag,
    if_range_holds,
    multipart_content_type,
    multipart_frames,
    none_match,
    parse_http_date,
    parse_range,
    resolve,
    unsatisfied_range,
)

log = Logger()

#: MIME types by extension; they win over the system's table (which varies
#: from machine to machine and lacks or gets wrong several streaming types).
MEDIA_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".m4a": "audio/mp4",
    ".flv": "video/x-flv",
    ".aac": "audio/aac",
    ".mpd": "application/dash+xml",
    ".webm": "video/webm",
    ".vtt": "text/vtt; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".ico": "image/x-icon",
}
#: The type of anything else: browsers download it rather than guess.
DEFAULT_TYPE = "application/octet-stream"

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

#: Names never served nor listed: dotfiles (``.recording``, its
#: ``.recording.failed`` and ``.recording.tmp``, anyone's ``.git``), and
#: files the recorders write under a temporary name before renaming them.
INTERNAL_SUFFIXES = (".tmp",)
#: A path segment longer than this cannot name a file (NAME_MAX on Linux).
MAX_NAME_BYTES = 255
#: Most names in one directory listing (a page of a huge directory would
#: take the reactor a long while to build).
MAX_LISTED_NAMES = 5000
#: The one index page a directory may have.
INDEX_NAME = "index.html"

#: Bytes read from the file per write; the size Twisted's own transports use.
SEND_CHUNK_BYTES = 64 * 1024
#: Most bytes a response writes without the transport asking it to pause.
#: A TCP transport asks once it holds 64 KiB; one whose producer chain was
#: already paused when the response began (TLS, behind a pipelined response)
#: does not ask again, so past this the response waits for a resume.
MAX_UNPAUSED_BYTES = 4 * 1024 * 1024
#: Seconds a response may wait for its client to read before the connection
#: is closed (Twisted's idle timeout does not run while a response is sent).
SEND_STALL_TIMEOUT_S = 60.0

ALLOWED_METHODS = (b"GET", b"HEAD", b"OPTIONS")
ALLOW = b", ".join(ALLOWED_METHODS)
#: On every answer: open to pages on any origin, with what a player needs
#: to read from a range answer.
CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Expose-Headers": (
        b"Content-Range, Accept-Ranges, ETag, Content-Length, Last-Modified"
    ),
}
#: ... and on a preflight (OPTIONS): what such a page may send.
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    b"Access-Control-Allow-Methods": ALLOW,
    b"Access-Control-Allow-Headers": (
        b"Range, If-Range, If-None-Match, If-Modified-Since, Cache-Control"
    ),
    b"Access-Control-Max-Age": b"86400",
    b"Allow": ALLOW,
}


def hidden_name(name: str) -> bool:
    """Whether a file name is internal: never served, never listed."""
    return name.startswith(".") or name.lower().endswith(INTERNAL_SUFFIXES)


def safe_segment(segment: bytes) -> str | None:
    """The file name a request path segment (already percent-decoded by
    twisted.web) names, ``""`` for an empty segment, or None if it may not
    name a file: hidden (dotfiles, ``.``, ``..``, internal names), not UTF-8,
    too long, or holding a separator (``/``, ``\\``), NUL or a control
    character."""
    if len(segment) > MAX_NAME_BYTES:
        return None
    try:
        name = segment.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if hidden_name(name):
        return None
    if any(c in "/\\" or c < " " or c == "\x7f" for c in name):
        return None
    return name


def _text(request: server.Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    for name, value in CORS_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return (message + "\n").encode()


def _empty(request: server.Request, code: int) -> int:
    """Finish a 204 or 304 answer, which has no body and no Content-Length."""
    request.setResponseCode(code)
    request.write(b"")
    request.finish()
    return server.NOT_DONE_YET


def _preflight(request: server.Request) -> int:
    for name, value in PREFLIGHT_HEADERS.items():
        request.setHeader(name, value)
    return _empty(request, http.NO_CONTENT)


def _dispatch(request: server.Request) -> bytes | int | None:
    """The answer to a method other than GET and HEAD, or None for those."""
    if request.method in (b"GET", b"HEAD"):
        return None
    if request.method == b"OPTIONS":
        return _preflight(request)
    request.setHeader(b"Allow", ALLOW)
    return _text(request, http.NOT_ALLOWED, "only GET, HEAD and OPTIONS are allowed here")


class NotFound(resource.Resource):
    """404 for any path below it, with CORS, so a page sees the 404 (and a
    preflight for it passes)."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes | int:
        answer = _dispatch(request)
        if answer is not None:
            return answer
        return _text(request, http.NOT_FOUND, "not found")


NOT_FOUND = NotFound()


class FileListing(static.DirectoryLister):
    """A directory's visible names as an HTML page (Twisted's lister, which
    escapes each name and quotes each link), for GET and HEAD only."""

    def __init__(self, directory: RootedFile) -> None:
        super().__init__(
            directory.path, directory.visible_names(), directory.contentTypes, {}, DEFAULT_TYPE,
        )

    def render(self, request: server.Request) -> bytes | int:
        answer = _dispatch(request)
        if answer is not None:
            return answer
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        body: bytes = super().render(request)
        return body


class RootedFile(static.File):
    """A file or directory under ``root``, served read-only.

    ``listing`` turns directory listings on (off: a directory without
    ``index.html`` is 404). ``hidden`` names more files and directories
    that are neither served nor listed, at any depth. ``clock`` runs the send-stall timeout and says
    the time for ``If-Range`` dates (default: the global reactor, looked up
    when needed).
    """

    contentEncodings: dict[str, str] = {}
    indexNames = [INDEX_NAME]

    def __init__(
        self, path: str, root: str | None = None, *, listing: bool = False,
        clock: IReactorTime | None = None, hidden: Collection[str] = (),
    ) -> None:
        super().__init__(path, defaultType=DEFAULT_TYPE)
        self.root = os.path.realpath(root or path)
        self.listing = listing
        self.clock = clock
        self.hidden = frozenset(hidden)
        self.contentTypes = {**self.contentTypes, **MEDIA_TYPES}

    def createSimilarFile(self, path: str) -> RootedFile:
        return RootedFile(path, self.root, listing=self.listing, clock=self.clock,
                          hidden=self.hidden)

    def directoryListing(self) -> resource.IResource:
        if not self.listing:
            return NOT_FOUND
        return FileListing(self)

    # ------------------------------------------------------------------ the tree

    def _visible(self, real: str) -> bool:
        """Whether a resolved path is under the root with every part visible."""
        if real == self.root:
            return True
        if not real.startswith(self.root + os.sep):
            return False
        return not any(
            hidden_name(part) or part in self.hidden
            for part in real[len(self.root) + 1 :].split(os.sep)
        )

    def _child(self, name: str) -> filepath.FilePath[str] | None:
        """The existing, visible child ``name`` (already a safe segment)."""
        try:
            child = self.child(name)
        except filepath.InsecurePath:
            return None
        real = os.path.realpath(child.path)
        if not self._visible(real) or not os.path.exists(real):
            return None
        return child

    def visible_child(self, name: str) -> filepath.FilePath[str] | None:
        """The child ``name`` of this directory if a request may name it
        and it exists, else None: what :meth:`getChild` would serve."""
        if not name or safe_segment(name.encode("utf-8", "surrogateescape")) != name:
            return None
        return self._child(name)

    def visible_names(self) -> list[str]:
        """Names in this directory a request may name, sorted; at most
        :data:`MAX_LISTED_NAMES`."""
        names: list[str] = []
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    name = entry.name
                    try:
                        encoded = name.encode("utf-8")
                    except UnicodeEncodeError:
                        continue  # not UTF-8 on disk: no request can name it
                    if safe_segment(encoded) == name and self._child(name) is not None:
                        names.append(name)
                        if len(names) >= MAX_LISTED_NAMES:
                            break
        except OSError:
            return []
        names.sort()
        return names

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        name = safe_segment(path)
        if name is None:
            return NOT_FOUND
        self.restat(reraise=False)
        if not self.isdir():
            return NOT_FOUND
        if name == "":
            if request.postpath:
                return NOT_FOUND  # an empty segment inside the path ("//")
            return self._index()
        child = self._child(name)
        if child is None:
            return NOT_FOUND
        return self.createSimilarFile(child.path)

    def _index(self) -> resource.IResource:
        index = self._child(INDEX_NAME)
        if index is not None and index.isfile():
            return self.createSimilarFile(index.path)
        return self.directoryListing()

    # ------------------------------------------------------------------ answers

    def render(self, request: server.Request) -> bytes | int:
        answer = _dispatch(request)
        if answer is not None:
            return answer
        real = os.path.realpath(self.path)
        if not self._visible(real):
            return NOT_FOUND.render(request)
        try:
            # The resolved path, so a symlink swapped in since is not followed.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except PermissionError:
            return _text(request, http.FORBIDDEN, "forbidden")
        except OSError:
            return NOT_FOUND.render(request)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                os.close(fd)
                return self._directory(request)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)  # a FIFO or device would block the reactor
                return NOT_FOUND.render(request)
            return self._file(request, fd, info)
        except BaseException:
            os.close(fd)
            raise

    def _directory(self, request: server.Request) -> bytes | int:
        """A directory named without its trailing slash: redirect to it
        (relative, so the Host header plays no part) if it has a page."""
        index = self._child(INDEX_NAME)
        if not self.listing and (index is None or not index.isfile()):
            return NOT_FOUND.render(request)
        request.setHeader(b"Location", quote(self.basename()).encode("ascii") + b"/")
        return _text(request, http.MOVED_PERMANENTLY, "moved: add a slash")

    def _file(self, request: server.Request, fd: int, info: os.stat_result) -> bytes | int:
        """Headers, conditions and ranges for the open file ``fd``; takes
        ownership of ``fd``."""
        size = info.st_size
        last_modified = info.st_mtime_ns // 1_000_000_000
        etag = entity_tag(size, info.st_mtime_ns)
        ext = os.path.splitext(self.path)[1].lower()
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"ETag", etag)
        request.setHeader(b"Last-Modified", http.datetimeToString(last_modified))
        request.setHeader(b"Cache-Control", CACHE_CONTROL.get(ext, DEFAULT_CACHE_CONTROL))
        if self._not_modified(request, etag, last_modified):
            os.close(fd)
            return _empty(request, http.NOT_MODIFIED)
        content_type = self.contentTypes.get(ext, DEFAULT_TYPE).encode("ascii")
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        ranges = self._wanted_ranges(request, size, etag, last_modified, info)
        closing = b""
        if ranges == []:
            os.close(fd)
            request.setHeader(b"Content-Range", unsatisfied_range(size))
            return _text(request, http.REQUESTED_RANGE_NOT_SATISFIABLE,
                         f"range not satisfiable: the file has {size} bytes")
        if ranges is not None and len(ranges) > 1:
            boundary = secrets.token_hex(16).encode("ascii")
            headers, closing = multipart_frames(ranges, size, content_type, boundary)
            parts = list(zip(headers, ranges, strict=True))
            if _length(parts, closing) < size:
                request.setHeader(b"Content-Type", multipart_content_type(boundary))
            else:
                ranges, closing = None, b""  # the framing would cost more than the file
        if ranges is None:
            parts = [(b"", ByteRange(0, size))] if size else []
        elif len(ranges) == 1:
            request.setHeader(b"Content-Range", ranges[0].content_range(size))
            parts = [(b"", ranges[0])]
        if ranges is not None:
            request.setResponseCode(http.PARTIAL_CONTENT)
        length = _length(parts, closing)
        request.setHeader(b"Content-Length", b"%d" % length)
        if request.method == b"HEAD" or not length:
            os.close(fd)
            return b""
        FileBody(request, fd, parts, closing, self._clock(), self._shown()).start()
        return server.NOT_DONE_YET

    def _wanted_ranges(
        self, request: server.Request, size: int, etag: bytes, last_modified: int,
        info: os.stat_result,
    ) -> list[ByteRange] | None:
        """The ranges to send (206), ``[]`` if none can be (416), or None
        for the whole file (200): no ``Range``, not a GET, an ``If-Range``
        that does not hold, a ``Range`` that is malformed or asks for too
        many ranges."""
        wanted = request.getHeader(b"range")
        if wanted is None or request.method != b"GET":
            return None
        if not self._if_range(request, etag, last_modified, info):
            return None
        try:
            specs = parse_range(wanted)
        except RangeNotUsed as e:
            log.info("range ignored, whole file sent: {path}: {reason}",
                     path=self._shown(), reason=str(e))
            return None
        ranges = resolve(specs, size)
        if not ranges and size == 0 and any(isinstance(s, SuffixRange) and s.length for s in specs):
            # RFC 9110 §14.1.1: a suffix of an empty file is satisfiable but
            # no Content-Range can name it; the (empty) whole answers it.
            return None
        return ranges

    @staticmethod
    def _not_modified(request: server.Request, etag: bytes, last_modified: int) -> bool:
        """RFC 9110 §13.2.2 steps 3 and 4 for GET and HEAD."""
        if_none_match = request.getHeader(b"if-none-match")
        if if_none_match is not None:
            return none_match(if_none_match, etag)
        since = request.getHeader(b"if-modified-since")
        if since is not None:
            date = parse_http_date(since)
            return date is not None and last_modified <= date
        return False

    def _if_range(
        self, request: server.Request, etag: bytes, last_modified: int, info: os.stat_result
    ) -> bool:
        value = request.getHeader(b"if-range")
        if value is None:
            return True
        return if_range_holds(
            value, etag=etag, last_modified_s=last_modified,
            mtime_s=info.st_mtime_ns / 1e9, now_s=self._clock().seconds(),
        )

    def _clock(self) -> IReactorTime:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        assert self.clock is not None
        return self.clock

    def _shown(self) -> str:
        """This file's path relative to the root, for log lines."""
        return os.path.relpath(self.path, self.root)


def _length(parts: list[tuple[bytes, ByteRange]], closing: bytes) -> int:
    return sum(len(header) + r.length for header, r in parts) + len(closing)


@dataclass(slots=True)
class _Part:
    """What is left to send of one part: its header, then bytes
    ``offset`` up to ``stop`` of the file."""

    header: bytes
    offset: int
    stop: int


@implementer(IPushProducer)
class FileBody:
    """Writes the parts of an open file to a response: each part's header
    (multipart framing, or nothing) then its bytes, then ``closing``.

    It writes while the transport does not ask it to pause, at most
    :data:`MAX_UNPAUSED_BYTES` at a time. A file that turns out shorter than
    announced aborts the connection, as does a client that reads nothing
    for :data:`SEND_STALL_TIMEOUT_S`.
    """

    def __init__(
        self, request: server.Request, fd: int, parts: list[tuple[bytes, ByteRange]],
        closing: bytes, clock: IReactorTime, shown: str,
    ) -> None:
        self.request = request
        self.fd: int | None = fd
        self.parts = deque(_Part(header, r.start, r.stop) for header, r in parts)
        self.closing = closing
        self.clock = clock
        self.shown = shown
        self.paused = False
        self._unpaused_bytes = 0
        self._sending = False
        self._stall: IDelayedCall | None = None

    def start(self) -> None:
        self.request.notifyFinish().addErrback(lambda _: self._close())
        self.request.registerProducer(self, True)
        self._send()

    def pauseProducing(self) -> None:
        self.paused = True
        self._unpaused_bytes = 0
        self._arm_stall()

    def resumeProducing(self) -> None:
        self.paused = False
        self._unpaused_bytes = 0
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self._send()

    def stopProducing(self) -> None:
        self._close()

    def _arm_stall(self) -> None:
        if self._stall is None and self.fd is not None:
            self._stall = self.clock.callLater(SEND_STALL_TIMEOUT_S, self._stalled)

    def _send(self) -> None:
        if self._sending:
            return  # a write that called back into us
        self._sending = True
        try:
            self._send_some()
        finally:
            self._sending = False

    def _send_some(self) -> None:
        while self.fd is not None and not self.paused:
            if not self.parts:
                self._finish()
                return
            if self._unpaused_bytes >= MAX_UNPAUSED_BYTES:
                # The transport has not asked for a pause it should have:
                # wait for its next resumeProducing.
                self.paused = True
                self._arm_stall()
                return
            part = self.parts[0]
            try:
                data = os.pread(self.fd, min(SEND_CHUNK_BYTES, part.stop - part.offset),
                                part.offset)
            except OSError as e:
                self._abort(f"read failed: {e.strerror}")
                return
            if not data:
                self._abort(f"the file ended {part.stop - part.offset} bytes early (it shrank)")
                return
            header, part.header = part.header, b""
            part.offset += len(data)
            if part.offset >= part.stop:
                self.parts.popleft()
            self._unpaused_bytes += len(data)
            self.request.write(header + data if header else data)

    def _finish(self) -> None:
        closing, self.closing = self.closing, b""
        if closing:
            self.request.write(closing)
        self._close()
        self.request.unregisterProducer()
        self.request.finish()

    def _stalled(self) -> None:
        self._stall = None
        self._abort(f"the client read nothing for {SEND_STALL_TIMEOUT_S:g} s")

    def _abort(self, reason: str) -> None:
        log.info("file response aborted: {path}: {reason}", path=self.shown, reason=reason)
        self._close()
        self.request.unregisterProducer()
        transport: Any = getattr(self.request.channel, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            self.request.loseConnection()

    def _close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
