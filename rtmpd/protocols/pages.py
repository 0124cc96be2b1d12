"""The web port's pages: ``web/`` at ``/``, beside the ``--root`` tree, with
two small JSON documents the pages read.

* :class:`WebRoot` answers ``/``: its own children first (``/api``,
  ``/metrics``, ``/config.json``, ``/recordings.json``), then the files of
  ``web/`` (``/`` is its ``index.html``), then the ``--root`` tree at its
  relative paths (``/hls/…``, ``/flv/…``, ``/mp4/…``). Both trees are served
  by :class:`rtmpd.protocols.files.RootedFile`; from ``web/`` the npm set-up
  files (:data:`PAGE_INTERNAL_NAMES`) are never served.
* ``/config.json`` (:func:`page_config`): what a page cannot learn from
  ``location``: the ports of the other listeners and whether they use TLS,
  the recorders that are on. Pages take the host name from ``location``, so
  they work behind any name the server is reached by.
* ``/recordings.json`` (:func:`list_recordings`): the finished and running
  FLV and MP4 recordings under ``--root`` (``?app=…&stream=…``: one
  stream's), found through the same visibility rules as the files
  themselves (valid stream names only, no internal files, nothing outside
  the root); for a live fMP4 recording, the number of its last fragment,
  so a page fetches each fragment once it exists rather than polling for
  it.

Where ``web/`` is (:func:`pages_directory`): inside the installed package
(``rtmpd/web``, which a wheel carries as package data; in the source tree a
symlink to the top-level ``web/``), else beside the package in a source
checkout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.web import resource, server

from rtmpd.protocols.files import CORS_HEADERS, NOT_FOUND, RootedFile
from rtmpd.registry import NAME_PATTERN
from rtmpd.services.recorder import MARKER_NAME

#: Files of ``web/`` that only set it up (npm's), never served.
PAGE_INTERNAL_NAMES = frozenset({"node_modules", "package.json", "package-lock.json"})
#: Most recordings ``/recordings.json`` lists (newest first): each costs a
#: few ``stat`` calls on the reactor, so the listing stays a few ms long.
MAX_LISTED_RECORDINGS = 1000

#: ``index.flv`` and what a republish moves it aside to
#: (``index-20260128T101502Z.flv``, ``-1``... when taken).
FLV_RECORDING = re.compile(r"index(-\d{8}T\d{6}Z(-\d{1,6})?)?\.flv")
#: ``output_merge`` and its moved-aside predecessors.
MERGE_DIRECTORY = re.compile(r"output_merge(-\d{8}T\d{6}Z(-\d{1,6})?)?")
MERGED_NAME = "stream_full.mp4"
#: The fMP4 recorders' current directories and the kind each is listed as.
CURRENT_DIRECTORIES = {"output_merge": "fmp4", "output_separate": "fmp4-separate"}
#: The init segments of either kind: a directory without one has nothing to play.
INIT_NAMES = frozenset({"init.mp4", "video_init.mp4", "audio_init.mp4"})
#: Fragment names per kind (rtmpd.services.fmp4rec.fragment_name): mixed
#: ``000001.m4s``; separate ``video_000001.m4s`` and ``audio_000001.m4s``
#: (same numbers). Temporary ``.tmp`` names never match.
FRAGMENT_NAMES = {
    "fmp4": re.compile(r"(\d{1,12})\.m4s"),
    "fmp4-separate": re.compile(r"(?:video|audio)_(\d{1,12})\.m4s"),
}


def pages_directory() -> str | None:
    """The directory of the page files, or None when this install has none."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(package, "web"), os.path.join(os.path.dirname(package), "web")):
        if os.path.isdir(candidate):
            return candidate
    return None


def listener_address(description: str) -> dict[str, Any]:
    """The port (None when not a TCP port) and TLS flag of a Twisted
    endpoint string: ``tcp:8501:interface=…`` gives ``{"port": 8501,
    "tls": False}``, ``ssl:port=443:…`` ``{"port": 443, "tls": True}``."""
    kind, _, rest = description.partition(":")
    kind = kind.strip().lower()
    port: int | None = None
    if kind in ("tcp", "tcp6", "ssl"):
        for position, field in enumerate(rest.split(":")):
            name, equals, value = field.partition("=")
            text = value if equals else name
            if (equals and name.strip() == "port") or (not equals and position == 0):
                port = int(text) if text.strip().isdigit() else None
                break
    return {"port": port, "tls": kind == "ssl"}


def page_config(options: Mapping[str, Any], version: str) -> dict[str, Any]:
    """``/config.json``: what the pages need to know of the server's options."""
    return {
        "version": version,
        "rtmp": listener_address(str(options["rtmp"])),
        "http": listener_address(str(options["http"])),
        "web": listener_address(str(options["web"])),
        # The TLS twins (--rtmps, --https, --web-https), null when not set: a
        # page loaded over HTTPS plays and publishes on "https" when it is there.
        **{
            twin.replace("-", "_"): (
                listener_address(str(options[twin])) if options.get(twin) else None
            )
            for twin in ("rtmps", "https", "web-https")
        },
        "record": list(options.get("record", ())),
        "hls_fragment_s": float(options.get("hls-fragment", 2.0)),
        "play_key": bool(options.get("play-key")),
        "signed": bool(options.get("sign-secret")),
        # Who may read /api/streams: pages offer its live streams only when
        # they can (loopback, no token), so others see no refused request.
        "api": "token" if options.get("api-token") else "loopback",
    }


def _visible_children(directory: RootedFile) -> list[tuple[str, RootedFile]]:
    return [
        (name, directory.createSimilarFile(os.path.join(directory.path, name)))
        for name in directory.visible_names()
    ]


def _stream_directories(
    files: RootedFile, kind: str, only: tuple[str, str] | None
) -> list[tuple[str, str, RootedFile]]:
    """``(app, stream, directory)`` under ``{kind}/{app}/{stream}`` with
    valid names (only those of stream ``only`` when given)."""
    top = files.createSimilarFile(os.path.join(files.path, kind))
    if not top.isdir():
        return []
    found = []
    for app, app_dir in _visible_children(top):
        if not NAME_PATTERN.fullmatch(app) or not app_dir.isdir():
            continue
        if only is not None and app != only[0]:
            continue
        for stream, stream_dir in _visible_children(app_dir):
            if only is not None and stream != only[1]:
                continue
            if NAME_PATTERN.fullmatch(stream) and stream_dir.isdir():
                found.append((app, stream, stream_dir))
    return found


def last_fragment(directory: str, pattern: re.Pattern[str]) -> int:
    """The highest fragment number in ``directory`` (0: none yet)."""
    last = 0
    try:
        with os.scandir(directory) as names:
            for entry in names:
                match = pattern.fullmatch(entry.name)
                if match:
                    last = max(last, int(match.group(1)))
    except OSError:
        return 0
    return last


def _entry(
    files: RootedFile, app: str, stream: str, kind: str, target: RootedFile, *, live: bool
) -> dict[str, Any] | None:
    try:
        info = os.stat(target.path)
    except OSError:
        return None
    entry: dict[str, Any] = {
        "app": app,
        "stream": stream,
        "kind": kind,
        "path": os.path.relpath(target.path, files.path).replace(os.sep, "/"),
        "size": None,
        "modified": int(info.st_mtime),
        "live": live,
    }
    if kind in FRAGMENT_NAMES:
        entry["fragments"] = last_fragment(target.path, FRAGMENT_NAMES[kind])
        entry["inits"] = _init_names(target)
    else:
        entry["size"] = info.st_size
    return entry


def _init_names(directory: RootedFile) -> list[str]:
    """The init segments in an fMP4 directory (looked up by name: the
    directory may hold thousands of fragments)."""
    return sorted(name for name in INIT_NAMES if directory.visible_child(name) is not None)


def _recording(directory: RootedFile) -> bool:
    """Whether a recorder is still writing ``directory`` (its marker is there)."""
    return os.path.exists(os.path.join(directory.path, MARKER_NAME))


def list_recordings(
    files: RootedFile, only: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """The recordings under the ``--root`` tree ``files`` (only those of
    the stream ``only`` = ``(app, stream)`` when given), newest first, at
    most :data:`MAX_LISTED_RECORDINGS`.

    Each entry has ``app``, ``stream``, ``kind``, ``path`` (relative to the
    root, as the web port serves it), ``size`` in bytes (None for a
    directory), ``modified`` (UNIX seconds) and ``live`` (a recorder is
    still writing it). Kinds: ``flv`` (``index.flv`` and the files moved
    aside by a republish), ``mp4`` (a merged ``stream_full.mp4``), and the
    current fMP4 directories ``fmp4`` (``output_merge``) and
    ``fmp4-separate`` (``output_separate``), which also have ``fragments``:
    the highest fragment number written so far (0: none yet), and ``inits``:
    the names of their init segments (one per track when separate)."""
    entries: list[dict[str, Any] | None] = []
    for app, stream, directory in _stream_directories(files, "flv", only):
        recording = _recording(directory)
        for name, child in _visible_children(directory):
            if FLV_RECORDING.fullmatch(name) and child.isfile():
                entries.append(_entry(files, app, stream, "flv", child,
                                      live=recording and name == "index.flv"))
    for app, stream, directory in _stream_directories(files, "mp4", only):
        for name, child in _visible_children(directory):
            if not child.isdir():
                continue
            if name in CURRENT_DIRECTORIES and _init_names(child):
                entries.append(_entry(files, app, stream, CURRENT_DIRECTORIES[name], child,
                                      live=_recording(child)))
            merged = child.visible_child(MERGED_NAME) if MERGE_DIRECTORY.fullmatch(name) else None
            if merged is not None and merged.isfile():
                entries.append(_entry(files, app, stream, "mp4",
                                      child.createSimilarFile(merged.path), live=False))
    found = [e for e in entries if e is not None]
    found.sort(key=lambda e: (-e["modified"], e["path"]))
    return found[:MAX_LISTED_RECORDINGS]


def recordings_of(request: server.Request) -> tuple[str, str] | None:
    """The ``(app, stream)`` of ``?app=…&stream=…``; None when not both given."""
    app = request.args.get(b"app", [b""])[0].decode("utf-8", "replace")
    stream = request.args.get(b"stream", [b""])[0].decode("utf-8", "replace")
    if not app or not stream:
        return None
    return app, stream


class JsonDocument(resource.Resource):
    """A JSON document made afresh for each GET or HEAD; open to pages on
    any origin, never cached without revalidation."""

    isLeaf = True

    def __init__(self, make: Callable[[server.Request], Any]) -> None:
        super().__init__()
        self.make = make

    def render(self, request: server.Request) -> bytes | int:
        if request.postpath not in ([], [b""]):
            return NOT_FOUND.render(request)
        if request.method not in (b"GET", b"HEAD"):
            # A preflight (204) or another method (405), as for files.
            return NOT_FOUND.render(request)
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        body = json.dumps(self.make(request), separators=(",", ":")).encode() + b"\n"
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body


class WebRoot(resource.Resource):
    """``/`` of the web port: its children (``putChild``), then the pages,
    then the ``--root`` tree."""

    def __init__(self, files: RootedFile, pages: RootedFile | None) -> None:
        super().__init__()
        self.files = files
        self.pages = pages

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        if self.pages is not None:
            child = self.pages.getChild(path, request)
            if child is not NOT_FOUND:
                return child
        return self.files.getChild(path, request)

    def render(self, request: server.Request) -> bytes | int:
        # Reached only for a request without any path ("GET ?x" style).
        return NOT_FOUND.render(request)


def make_pages(directory: str, *, clock: Any = None,
               hidden: Collection[str] = PAGE_INTERNAL_NAMES) -> RootedFile:
    """The page files of ``directory``, served like the recordings."""
    return RootedFile(directory, clock=clock, hidden=hidden)
