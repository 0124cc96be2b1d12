"""The stream directory of one box's workers (``--workers N``): the parent
holds the names, the workers ask it over a Unix socket with AMP
(``ARCHITECTURE.md`` section 9).

The parent's :class:`SharedDirectory` is a :class:`~rtmpd.directory.MemoryDirectory`
served by :class:`DirectoryServer`, one AMP connection per worker. A worker
talks to it through :class:`DirectoryClient`, an
:class:`~rtmpd.interfaces.IStreamDirectory` whose calls are AMP commands.

A worker's location is the base URL its streams are relayed from,
``http://worker-N`` (:func:`worker_location`): the relays' Agent maps that host
to the worker's Unix socket. When a worker's connection ends (it died, or is
stopping), every name it held is freed at once: its streams have ended with
it, and a publisher reconnecting to another worker must not be refused as
busy. The first command on a connection is :class:`Hello`, which says which
worker it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd.directory import MemoryDirectory
from rtmpd.interfaces import IStreamDirectory

__all__ = [
    "Claim", "DirectoryClient", "DirectoryServer", "Hello", "Lookup", "Release",
    "SharedDirectory", "worker_location",
]

log = Logger()


def worker_location(index: int) -> str:
    """The directory location of worker ``index``: the base URL its streams
    are pulled from by the other workers."""
    return f"http://worker-{index}"


def call_remote(connection: amp.AMP, /, command: type[amp.Command], **arguments: Any
                ) -> defer.Deferred[dict[str, Any]]:
    """``connection.callRemote`` with its types (AMP's are not annotated)."""
    d: defer.Deferred[dict[str, Any]] = connection.callRemote(  # type: ignore[no-untyped-call]
        command, **arguments)
    return d


def _text() -> amp.Argument:
    return amp.Unicode()  # type: ignore[no-untyped-call]


def _optional_text() -> amp.Argument:
    return amp.Unicode(optional=True)  # type: ignore[no-untyped-call]


def _integer() -> amp.Argument:
    return amp.Integer()  # type: ignore[no-untyped-call]


def _boolean() -> amp.Argument:
    return amp.Boolean()  # type: ignore[no-untyped-call]


# -- the commands ------------------------------------------------------------------


class Hello(amp.Command):
    """A worker's first command: which worker it is (its index) and its pid."""

    arguments = [(b"worker", _integer()), (b"pid", _integer())]
    response: list[tuple[bytes, amp.Argument]] = []  # type: ignore[misc]


class Claim(amp.Command):
    """:meth:`IStreamDirectory.claim`: ``held`` is False when another
    location holds the name."""

    arguments = [(b"app", _text()), (b"stream", _text()), (b"location", _text())]
    response = [(b"held", _boolean())]


class Release(amp.Command):
    """:meth:`IStreamDirectory.release`."""

    arguments = [(b"app", _text()), (b"stream", _text()), (b"location", _text())]
    response: list[tuple[bytes, amp.Argument]] = []  # type: ignore[misc]


class Lookup(amp.Command):
    """:meth:`IStreamDirectory.lookup`: no ``location`` when nobody holds it."""

    arguments = [(b"app", _text()), (b"stream", _text())]
    response = [(b"location", _optional_text())]


# -- the parent's side ---------------------------------------------------------------


class SharedDirectory(MemoryDirectory):
    """The names of every worker of the box, in the parent."""

    def release_location(self, location: str) -> list[str]:
        """Free every name ``location`` holds (its worker is gone); the
        ``app/stream`` paths freed."""
        freed = [key for key, holder in self.holders.items() if holder == location]
        for key in freed:
            del self.holders[key]
        return [f"{app}/{stream}" for app, stream in freed]


class DirectoryConnection(amp.AMP):
    """One worker's connection to the parent's directory."""

    def __init__(self, server: DirectoryServer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.server = server
        #: The worker's index once it has said :class:`Hello` (0 before).
        self.worker = 0
        self.pid = 0

    @Hello.responder
    def hello(self, worker: int, pid: int) -> dict[str, Any]:
        self.worker = worker
        self.pid = pid
        self.server.connected(self)
        return {}

    @Claim.responder
    def claim(self, app: str, stream: str, location: str) -> defer.Deferred[dict[str, Any]]:
        d = self.server.directory.claim(app, stream, location)
        return d.addCallback(lambda held: {"held": held})

    @Release.responder
    def release(self, app: str, stream: str, location: str) -> defer.Deferred[dict[str, Any]]:
        return self.server.directory.release(app, stream, location).addCallback(lambda _: {})

    @Lookup.responder
    def lookup(self, app: str, stream: str) -> defer.Deferred[dict[str, Any]]:
        d = self.server.directory.lookup(app, stream)
        return d.addCallback(lambda location: {} if location is None else {"location": location})

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self.server.disconnected(self)


class DirectoryServer(Factory):
    """The parent's end: serves ``directory`` to the workers' connections;
    ``on_hello(worker, pid)`` hears each worker say who it is (it is up)."""

    noisy = False

    def __init__(
        self, directory: SharedDirectory,
        on_hello: Callable[[int, int], None] | None = None,
    ) -> None:
        self.directory = directory
        self.on_hello = on_hello
        #: The connection of each worker that has said Hello.
        self.workers: dict[int, DirectoryConnection] = {}

    def buildProtocol(self, addr: object) -> DirectoryConnection:
        return DirectoryConnection(self)

    def connected(self, connection: DirectoryConnection) -> None:
        old = self.workers.get(connection.worker)
        self.workers[connection.worker] = connection
        if old is not None and old is not connection and old.transport is not None:
            old.transport.loseConnection()
        if self.on_hello is not None:
            self.on_hello(connection.worker, connection.pid)

    def disconnected(self, connection: DirectoryConnection) -> None:
        """A worker's connection ended: its names are free (unless a newer
        connection of the same worker has taken its place)."""
        if not connection.worker or self.workers.get(connection.worker) is not connection:
            return
        del self.workers[connection.worker]
        self.free_worker(connection.worker)

    def free_worker(self, worker: int) -> None:
        """Free every name worker ``worker`` held, with one line if it held any."""
        freed = self.directory.release_location(worker_location(worker))
        if freed:
            log.info("worker {worker} is gone: freed {count} stream name(s): {paths}",
                     worker=worker, count=len(freed), paths=", ".join(freed))


# -- a worker's side -------------------------------------------------------------------


@implementer(IStreamDirectory)
class DirectoryClient:
    """The box's directory as a worker sees it: each call is one AMP
    command to the parent. Calls made before the connection is up wait for
    it; with no connection (the parent is gone), they fail."""

    def __init__(self) -> None:
        self.connection: amp.AMP | None = None
        self._waiting: list[defer.Deferred[amp.AMP]] = []
        self._lost = False

    def attach(self, connection: amp.AMP) -> None:
        """The connection to the parent is up (and has said Hello)."""
        self.connection = connection
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(connection)

    def detach(self, reason: str) -> None:
        """The connection to the parent is gone: every call fails from now on."""
        self.connection = None
        self._lost = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(ConnectionError(f"no stream directory: {reason}"))

    def _call(self, command: type[amp.Command], **arguments: Any
              ) -> defer.Deferred[dict[str, Any]]:
        if self.connection is not None:
            return call_remote(self.connection, command, **arguments)
        if self._lost:
            return defer.fail(ConnectionError("no stream directory: the parent is gone"))
        d: defer.Deferred[amp.AMP] = defer.Deferred()
        self._waiting.append(d)
        return d.addCallback(call_remote, command, **arguments)

    def claim(self, app: str, stream: str, location: str) -> defer.Deferred[bool]:
        d = self._call(Claim, app=app, stream=stream, location=location)
        return d.addCallback(lambda answer: bool(answer["held"]))

    def release(self, app: str, stream: str, location: str) -> defer.Deferred[None]:
        d = self._call(Release, app=app, stream=stream, location=location)
        return d.addCallback(lambda _: None)

    def lookup(self, app: str, stream: str) -> defer.Deferred[str | None]:
        d = self._call(Lookup, app=app, stream=stream)
        return d.addCallback(lambda answer: answer.get("location"))
