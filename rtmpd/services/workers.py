"""All the cores of one box: ``twistd rtmpd --workers N`` (``ARCHITECTURE.md``
section 9).

The parent serves nothing itself. It starts N worker processes, each a
``twistd rtmpd`` with the same options and its index (``--worker``), keeps
the box's stream directory (:mod:`rtmpd.workerdirectory`) on a Unix socket
in a private run directory, restarts a worker that dies (with backoff; the
names it held are freed at once), and on ``SIGTERM`` stops every worker the
way a single server stops, then exits.

Each worker listens on the RTMP, HTTP and web ports with ``SO_REUSEPORT``
(:class:`ReusePortReactor`), so the kernel spreads connections over them,
and with HTTP-FLV on its own Unix socket in the run directory, where the
other workers relay its streams from. A viewer that lands on a worker
without the stream is served by a relay: the worker's upstream
(:class:`rtmpd.services.upstream.Upstream`) looks the stream up in the
directory and pulls it with an Agent that maps the location
``http://worker-N`` to that worker's socket (:func:`relay_agent`), one pull
per stream per worker, however many viewers.

The workers' log events come to the parent as JSON records on their
standard output (``--logger`` :func:`log_to_parent`) and are logged there
as they were, prefixed ``worker N:``; what a worker writes to its standard
error (a crash before its log started) is logged line by line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import reactors, service
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IStreamClientEndpoint
from twisted.logger import ILogObserver, Logger, eventFromJSON, formatEvent, jsonFileLogObserver
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer

from rtmpd._twisted import quiet_pool
from rtmpd.client.backoff import Backoff
from rtmpd.workerdirectory import DirectoryClient, DirectoryServer, Hello, call_remote

log = Logger()

#: The directory's socket, in the run directory.
DIRECTORY_SOCKET = "directory.sock"
#: First wait before a dead worker is started again, s; it doubles up to
#: :data:`RESTART_MAX_S` while workers keep dying soon after their start.
RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 30.0
#: A worker that ran this long before dying starts the doubling over.
STABLE_RUN_S = 30.0
#: Seconds the workers have to stop (publishers asked to reconnect, recorders
#: finalising, done hooks) before they are killed.
STOP_TIMEOUT_S = 60.0
#: Longest log record or standard error line kept from a worker, bytes: a
#: worker's events are small, and a runaway one must not grow the parent.
MAX_LOG_RECORD_BYTES = 256 * 1024
#: twistd, run with the parent's interpreter (the same virtualenv).
TWISTD = "from twisted.scripts.twistd import run; run()"
#: twisted.logger's JSON record separator.
RECORD_SEPARATOR = b"\x1e"


def worker_socket(run_dir: str, index: int) -> str:
    """The Unix socket worker ``index`` serves HTTP-FLV relays on."""
    return os.path.join(run_dir, f"worker-{index}.sock")


def view_socket(run_dir: str, index: int) -> str:
    """The Unix socket worker ``index`` serves its own ``/api`` lists and
    ``/metrics`` on, for the others (:mod:`rtmpd.protocols.siblings`): apart
    from the relays' socket, whose connections count as the worker's clients."""
    return os.path.join(run_dir, f"worker-{index}.view.sock")


def parse_worker(value: str) -> tuple[int, str]:
    """``--worker INDEX:RUN_DIR`` (set by the parent) as (index, run dir)."""
    index, sep, run_dir = value.partition(":")
    if not sep or not index.isdigit() or int(index) < 1 or not os.path.isdir(run_dir):
        raise ValueError(f"--worker {value!r} is not INDEX:RUN_DIR (it is set by --workers)")
    return int(index), run_dir


# -- listening with SO_REUSEPORT --------------------------------------------------------


class ReusePortReactor:
    """What a server endpoint (``tcp:``, ``tcp6:``, ``ssl:``) is made with in a
    worker: its ``listenTCP`` / ``listenSSL`` bind a socket of their own with
    ``SO_REUSEPORT`` and hand it to the real reactor (``adoptStreamPort``),
    so every worker listens on the same port and the kernel spreads the
    connections. TLS is Twisted's own wrapping, as ``listenSSL`` does it."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def listenTCP(
        self, port: int, factory: protocol.Factory, backlog: int = 50, interface: str = "",
    ) -> IListeningPort:
        return self._adopt(port, factory, backlog, interface)

    def listenSSL(
        self, port: int, factory: protocol.Factory, contextFactory: Any,
        backlog: int = 50, interface: str = "",
    ) -> IListeningPort:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return self._adopt(port, TLSMemoryBIOFactory(contextFactory, False, factory),
                           backlog, interface)

    def _adopt(
        self, port: int, factory: Any, backlog: int, interface: str
    ) -> IListeningPort:
        sock = bind_socket(port, interface, reuse_port=True)
        try:
            sock.listen(backlog)
            sock.setblocking(False)
            listening: IListeningPort = self.reactor.adoptStreamPort(
                sock.fileno(), sock.family, factory)
        except OSError as e:
            raise error.CannotListenError(interface, port, e) from None
        finally:
            # The reactor has its own copy of the socket.
            sock.close()
        return listening


def bind_socket(port: int, interface: str, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``interface:port`` (all IPv4 addresses for "",
    IPv6 for an address with a colon); CannotListenError if it cannot be."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
    except OSError as e:
        sock.close()
        raise error.CannotListenError(interface, port, e) from None
    return sock


class PortProbe:
    """The parent's check, before any worker starts, that each listener's
    port is free: a socket bound *without* ``SO_REUSEPORT`` fails if anything
    listens there, another rtmpd included (which the workers' own sockets
    would silently share the port with)."""

    def listenTCP(
        self, port: int, factory: object, backlog: int = 50, interface: str = "",
    ) -> None:
        bind_socket(port, interface, reuse_port=False).close()

    def listenSSL(
        self, port: int, factory: object, contextFactory: object,
        backlog: int = 50, interface: str = "",
    ) -> None:
        self.listenTCP(port, factory, backlog, interface)


# -- the relays' Agent ---------------------------------------------------------------------


@implementer(IAgentEndpointFactory)
class WorkerEndpoints:
    """Maps the host of a worker location (``worker-N``) to that worker's
    Unix socket (``socket(run_dir, N)``: its relays' by default); no other
    host is reachable."""

    def __init__(self, reactor: Any, run_dir: str, *, timeout: float = 10.0,
                 socket: Callable[[str, int], str] = worker_socket) -> None:
        self.reactor = reactor
        self.run_dir = run_dir
        self.timeout = timeout
        self.socket = socket

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii", "replace")
        prefix, _, index = host.partition("-")
        if prefix != "worker" or not index.isdigit():
            raise ValueError(f"{host!r} is not a worker of this box")
        return UNIXClientEndpoint(self.reactor, self.socket(self.run_dir, int(index)),
                                  timeout=self.timeout)


def relay_agent(reactor: Any, run_dir: str, *, connect_timeout: float = 10.0,
                socket: Callable[[str, int], str] = worker_socket) -> IAgent:
    """The Agent of a worker's relays: plain HTTP to the other workers'
    Unix sockets (``socket``: their relays' by default), no connection reuse
    (a pull holds its connection while the stream lasts)."""
    pool = quiet_pool(HTTPConnectionPool(reactor, persistent=False))
    agent: IAgent = Agent.usingEndpointFactory(
        reactor, WorkerEndpoints(reactor, run_dir, timeout=connect_timeout, socket=socket),
        pool=pool)
    return agent


# -- a worker's side -------------------------------------------------------------------------


def log_to_parent() -> ILogObserver:
    """The log observer of a worker (twistd ``--logger``): each event as one
    JSON record on standard output, which the parent reads."""
    return jsonFileLogObserver(sys.stdout)


class _ParentConnection(amp.AMP):
    def __init__(self, link: ParentLink) -> None:
        super().__init__()
        self.link = link

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.link.lost("the connection to the parent closed")


class ParentLink(service.Service):
    """A worker's connection to its parent: the directory's transport, and
    the worker's lifeline. Without its parent (killed, say) a worker would
    go on serving a port nobody manages, with names nobody else can see: it
    stops, the way it stops on ``SIGTERM``."""

    name = "parent-link"

    def __init__(self, reactor: Any, run_dir: str, index: int, directory: DirectoryClient) -> None:
        self.reactor = reactor
        self.path = os.path.join(run_dir, DIRECTORY_SOCKET)
        self.index = index
        self.directory = directory
        self._gone = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        # Its own process group: a Ctrl-C in the terminal reaches the parent
        # only, which stops the workers once, in order.
        os.setpgrp()

    def startService(self) -> None:
        super().startService()
        d = connectProtocol(UNIXClientEndpoint(self.reactor, self.path), _ParentConnection(self))
        d.addCallback(self._connected)
        d.addErrback(lambda failure: self.lost(failure.getErrorMessage()))

    def _connected(self, connection: _ParentConnection) -> defer.Deferred[None]:
        d: defer.Deferred[Any] = call_remote(connection, Hello, worker=self.index,
                                             pid=os.getpid())
        return d.addCallback(lambda _: self.directory.attach(connection))

    def lost(self, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        self.directory.detach(reason)
        if self.running:
            log.error("worker {worker}: lost its parent ({reason}); stopping",
                      worker=self.index, reason=reason)
            self.reactor.stop()

    def stopService(self) -> None:
        # The connection stays up while the other services stop (their last
        # releases go through it); it closes with the process.
        super().stopService()


# -- the parent's side ----------------------------------------------------------------------


def reactor_name(reactor: object) -> str | None:
    """twistd's ``--reactor`` name for ``reactor``'s kind (None for one it
    cannot name, such as a test's)."""
    module = type(reactor).__module__
    for kind in reactors.getReactorTypes():
        if getattr(kind, "moduleName", None) == module:
            return str(kind.shortName)
    return None


def _ending(reason: Failure) -> str:
    """How a worker ended, for the log: "exit code 1", "signal 9"."""
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig is not None:
        try:
            return f"signal {sig}, {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    return f"exit code {getattr(value, 'exitCode', None)}"


class WorkerProcess(protocol.ProcessProtocol):
    """One worker process as the parent sees it: its log comes in here."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid = 0
        self.started_at = 0.0
        self.ended = False
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        # A record is RS, JSON and a newline (jsonFileLogObserver); JSON
        # escapes newlines, so one ends at its newline: split there, not at
        # the next record's RS, or each event would wait for the next one.
        *records, rest = (self._out + data).split(b"\n")
        self._out = rest
        for record in records:
            self._event(record)
        if len(self._out) > MAX_LOG_RECORD_BYTES:
            self._out = b""
            log.warn("worker {worker}: a log record over {limit} bytes was left out",
                     worker=self.index, limit=MAX_LOG_RECORD_BYTES)

    def _event(self, record: bytes) -> None:
        """Log one of the worker's events here, as it was, prefixed with the worker."""
        text = record.decode("utf-8", "replace").strip().lstrip(RECORD_SEPARATOR.decode())
        if not text:
            return
        try:
            event = eventFromJSON(text)
        except ValueError:
            log.info("worker {worker}: {line}", worker=self.index, line=text)
            return
        # Its text as the worker would have written it (the JSON record
        # carries the fields flattened for that), then the worker's index.
        event["rtmpd_text"] = formatEvent(event)
        event.pop("log_flattened", None)
        event["log_format"] = "worker {rtmpd_worker}: {rtmpd_text}"
        event["rtmpd_worker"] = self.index
        log.observer(event)

    def errReceived(self, data: bytes) -> None:
        *lines, rest = (self._err + data).split(b"\n")
        self._err = rest[-MAX_LOG_RECORD_BYTES:]
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            log.warn("worker {worker}: {line}", worker=self.index, line=text)

    def processEnded(self, reason: Failure) -> None:
        if self._out:
            self._event(self._out)
        if self._err:
            self._line(self._err)
        self._out = self._err = b""
        self.ended = True
        self.pool.worker_ended(self, reason)

    def signal(self, name: str) -> None:
        """Send the worker ``name`` ("TERM", "KILL") unless it has ended."""
        if self.ended or self.transport is None:
            return
        with contextlib.suppress(error.ProcessExitedAlready):
            self.transport.signalProcess(name)


class WorkerPool(service.Service):
    """The parent's workers: started with the service, restarted when they
    die, stopped (``SIGTERM``, then ``SIGKILL`` after :data:`STOP_TIMEOUT_S`)
    with it. ``argv`` is the ``twistd rtmpd`` command line each worker gets,
    with its ``--worker INDEX:RUN_DIR`` added.

    The run directory (a new private one in ``$TMPDIR`` unless ``run_dir``
    is given) and the directory's socket in it are made when the service
    starts, that is after twistd's ``--uid``/``--gid`` switch, so the
    workers, which run as that user, can reach them; it is removed once
    every worker has stopped."""

    name = "workers"

    def __init__(
        self, reactor: Any, count: int, argv: Sequence[str], directory: DirectoryServer,
        *, run_dir: str | None = None, listeners: Sequence[tuple[str, str]] = (),
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.run_dir = run_dir or ""
        self._own_run_dir = run_dir is None
        self._directory_port: Any = None
        self.directory = directory
        directory.on_hello = self.worker_ready
        #: The ``(option, endpoint)`` listeners the workers will share.
        self.listeners = list(listeners)
        self.stop_timeout_s = stop_timeout_s
        self.workers: dict[int, WorkerProcess] = {}
        self._backoff = {index: Backoff(stable_s=STABLE_RUN_S, initial_s=RESTART_INITIAL_S,
                                        max_s=RESTART_MAX_S)
                         for index in range(1, count + 1)}
        self._restarts: dict[int, IDelayedCall] = {}
        self._stopped: defer.Deferred[None] | None = None
        self._kill_timer: IDelayedCall | None = None

    def command(self, index: int) -> list[str]:
        """The worker's command line: on the parent's kind of reactor, which
        the parent's own command line may have chosen (twistd ``--reactor``)."""
        from rtmpd.tap.rtmpd import WORKER_LOGGER

        name = reactor_name(self.reactor)
        chosen = [f"--reactor={name}"] if name is not None else []
        return [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=",
                f"--logger={WORKER_LOGGER}", *chosen, "rtmpd", *self.argv,
                "--worker", f"{index}:{self.run_dir}"]

    def privilegedStartService(self) -> None:
        """Every listener's port must be free before any worker binds it."""
        from twisted.internet import endpoints

        from rtmpd.tap.rtmpd import with_backlog

        super().privilegedStartService()
        for option, description in self.listeners:
            endpoint = endpoints.serverFromString(PortProbe(), with_backlog(description))
            d = endpoint.listen(None)
            failures: list[Failure] = []
            d.addErrback(failures.append)
            if failures:
                e = failures[0].value
                reason = getattr(getattr(e, "socketError", None), "strerror", None) or str(e)
                raise SystemExit(f"rtmpd: cannot listen on --{option} {description}: {reason}")

    def startService(self) -> None:
        super().startService()
        if self._own_run_dir:
            # mkdtemp makes it 0700: only this user reaches the sockets in it.
            self.run_dir = tempfile.mkdtemp(prefix="rtmpd-")
        self._directory_port = self.reactor.listenUNIX(
            os.path.join(self.run_dir, DIRECTORY_SOCKET), self.directory, mode=0o600)
        log.info("starting {count} workers (run directory {run_dir})",
                 count=self.count, run_dir=self.run_dir)
        for index in range(1, self.count + 1):
            self.start_worker(index)

    def start_worker(self, index: int) -> None:
        self._restarts.pop(index, None)
        worker = WorkerProcess(self, index)
        # The environment as it is: a worker is the same program, here.
        transport = self.reactor.spawnProcess(
            worker, sys.executable, self.command(index), env=dict(os.environ),
            path=os.getcwd(),
        )
        worker.pid = int(transport.pid or 0)
        worker.started_at = self.reactor.seconds()
        self.workers[index] = worker
        log.info("started worker {worker} (pid {pid})", worker=index, pid=worker.pid)

    def worker_ready(self, index: int, pid: int) -> None:
        log.info("worker {worker} (pid {pid}) is up", worker=index, pid=pid)

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        index = worker.index
        if self.workers.get(index) is worker:
            del self.workers[index]
        # Its streams ended with it: their names are free for other workers.
        self.directory.free_worker(index)
        how = _ending(reason)
        if self._stopped is not None:
            log.info("worker {worker} (pid {pid}) stopped ({how})", worker=index,
                     pid=worker.pid, how=how)
            if not self.workers:
                self._all_stopped()
            return
        backoff = self._backoff[index]
        backoff.session_ended(self.reactor.seconds() - worker.started_at)
        delay = backoff.next_delay()
        log.warn("worker {worker} (pid {pid}) exited ({how}), restarting in {delay:g} s",
                 worker=index, pid=worker.pid, how=how, delay=delay)
        self._restarts[index] = self.reactor.callLater(delay, self.start_worker, index)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        self._stopped = defer.Deferred()
        if not self.workers:
            self._all_stopped()
            return None
        log.info("stopping {count} worker(s)", count=len(self.workers))
        for worker in list(self.workers.values()):
            worker.signal("TERM")
        self._kill_timer = self.reactor.callLater(self.stop_timeout_s, self._kill_the_rest)
        return self._stopped

    def _kill_the_rest(self) -> None:
        self._kill_timer = None
        for worker in list(self.workers.values()):
            log.warn("worker {worker} (pid {pid}) did not stop within {timeout:g} s; "
                     "killing it", worker=worker.index, pid=worker.pid,
                     timeout=self.stop_timeout_s)
            worker.signal("KILL")

    def _all_stopped(self) -> None:
        timer, self._kill_timer = self._kill_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        port, self._directory_port = self._directory_port, None
        if port is not None:
            port.stopListening()
        if self._own_run_dir and self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        stopped = self._stopped
        if stopped is not None and not stopped.called:
            stopped.callback(None)
