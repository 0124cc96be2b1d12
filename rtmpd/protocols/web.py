"""The ``--web`` port: the pages of ``web/`` at ``/``, ``/config.json`` and
``/recordings.json`` (:mod:`rtmpd.protocols.pages`), the ``--root`` tree,
read-only, and nothing outside it (:class:`rtmpd.protocols.files.RootedFile`,
no listings); with an admission, the admin endpoints ``/api`` and
``/metrics`` beside them (:mod:`rtmpd.protocols.api`).

The site, its requests (no bodies) and channels (a header deadline, a
connection limit of their own) also carry ``twistd filegateway``
(:func:`make_file_site`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web import http, resource, server

from rtmpd.protocols.files import RootedFile
from rtmpd.protocols.flvhttp import (
    HEADER_TIMEOUT_S,
    MAX_HEADER_BYTES,
    DeadlineChannel,
    access_log_line,
    refuse_connection,
)
from rtmpd.protocols.pages import (
    JsonDocument,
    WebRoot,
    list_recordings,
    make_pages,
    recordings_of,
)

if TYPE_CHECKING:
    from rtmpd.admission import Admission
    from rtmpd.protocols.siblings import Siblings
    from rtmpd.services.stats import Metrics, StatsSampler

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


#: Characters of a request's ``Range`` value shown in its access log line
#: (an abusive one may fill the whole header block).
MAX_LOGGED_RANGE_CHARS = 100


def file_access_log_line(timestamp: str, request: Any) -> str:
    """The access log line of a file request: the combined format without
    the query string (:func:`rtmpd.protocols.flvhttp.access_log_line`), and
    the ``Range`` asked for, if any, so range requests show in the log."""
    line = access_log_line(timestamp, request)
    wanted = request.getHeader(b"range")
    if wanted is None:
        return line
    shown = wanted[:MAX_LOGGED_RANGE_CHARS].decode("latin-1")
    shown = shown.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    more = "..." if len(wanted) > MAX_LOGGED_RANGE_CHARS else ""
    return f'{line} range="{shown}{more}"'


def make_file_site(
    files: resource.IResource,
    *,
    reactor: IReactorTime | None = None,
    owned_sampler: StatsSampler | None = None,
    max_connections: int = 0,
    header_timeout: float = HEADER_TIMEOUT_S,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> WebSite:
    """The Site of a port that serves files (the web port, filegateway):
    bodiless requests, a header deadline, its own connection limit (0: none),
    tracebacks kept out of answers, range requests in the access log."""
    site = WebSite(
        files, owned_sampler=owned_sampler, timeout=30, reactor=reactor,
        requestFactory=WebRequest, logFormatter=file_access_log_line,
        max_connections=max_connections, header_timeout=header_timeout,
        max_header_bytes=max_header_bytes,
    )
    site.displayTracebacks = False
    return site


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
    pages: str | None = None,
    config: dict[str, Any] | None = None,
    worker: dict[str, int] | None = None,
    siblings: Siblings | None = None,
) -> server.Site:
    """A Site serving ``root`` read-only, with ``/api`` when given an
    ``admission`` and ``/metrics`` when given ``metrics``; both follow
    :func:`rtmpd.protocols.api.access_denied` with ``api_token``.

    ``pages`` is the directory of the page files (``web/``), served at
    ``/`` in front of ``root``; ``config`` is ``/config.json``.
    ``/recordings.json`` lists the recordings under ``root``. ``worker``:
    which ``--workers`` worker serves it, for ``/api``'s answers;
    ``siblings``: the other workers, whose answers ``/api``'s lists and
    ``/metrics`` gather.

    Without a ``sampler`` one is made on ``reactor`` (else the registry's
    clock) and runs while the site listens; a given one is the caller's to
    start. ``reactor`` also drives the Site's timeouts.
    """
    FilePath(root).makedirs(ignoreExistingDirectory=True)
    files = RootedFile(root, clock=reactor)
    top = WebRoot(files, make_pages(pages, clock=reactor) if pages is not None else None)
    if config is not None:
        top.putChild(b"config.json", JsonDocument(lambda _: config))
    top.putChild(b"recordings.json", JsonDocument(
        lambda request: {"recordings": list_recordings(files, recordings_of(request))}))
    owned: StatsSampler | None = None
    if admission is not None or metrics is not None:
        from rtmpd.protocols.api import ApiResource, MetricsResource
        from rtmpd.services.stats import StatsSampler

        # Children win over pages and files of the same names.
        if admission is not None:
            if sampler is None:
                clock = reactor if reactor is not None else admission.clock
                sampler = owned = StatsSampler(admission.registry, clock)
            top.putChild(b"api", ApiResource(admission, sampler, token=api_token,
                                             worker=worker, siblings=siblings))
        if metrics is not None:
            top.putChild(b"metrics", MetricsResource(metrics, token=api_token,
                                                     siblings=siblings))
    return make_file_site(
        top, reactor=reactor, owned_sampler=owned, max_connections=max_connections,
        header_timeout=header_timeout, max_header_bytes=max_header_bytes,
    )
