"""The parent of ``--workers`` (rtmpd.services.workers) and the box's
stream directory it keeps for them over AMP (rtmpd.workerdirectory): worker
connections joined to the parent's server in memory (``twisted.test.iosim``),
worker processes faked, time on a ``task.Clock``."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from twisted.internet import defer, error, task
from twisted.logger import LogLevel, eventAsJSON, formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.web.client import URI

from rtmpd.services.workers import (
    RESTART_INITIAL_S,
    RESTART_MAX_S,
    WorkerEndpoints,
    WorkerPool,
    WorkerProcess,
    parse_worker,
)
from rtmpd.tap.rtmpd import Options, parse_workers
from rtmpd.workerdirectory import (
    DirectoryClient,
    DirectoryConnection,
    DirectoryServer,
    Hello,
    SharedDirectory,
    worker_location,
)

W1, W2 = worker_location(1), worker_location(2)


class Worker:
    """One worker's end of the directory, joined to the parent's server."""

    def __init__(self, server: DirectoryServer, index: int) -> None:
        self.directory = DirectoryClient()
        self.connection: amp.AMP
        self.connection, self.parent_side, self.pump = connectedServerAndClient(
            lambda: server.buildProtocol(None), amp.AMP)
        self.index = index

    def hello(self) -> None:
        d = self.connection.callRemote(Hello, worker=self.index, pid=1000 + self.index)
        self.pump.flush()
        assert d.called
        self.directory.attach(self.connection)

    def result(self, d: defer.Deferred[Any]) -> Any:
        self.pump.flush()
        results: list[Any] = []
        d.addBoth(results.append)
        [value] = results
        if isinstance(value, Failure):
            value.raiseException()
        return value

    def lose(self) -> None:
        self.pump.server.transport.loseConnection()  # type: ignore[attr-defined]
        self.pump.flush()


@pytest.fixture
def parent() -> DirectoryServer:
    return DirectoryServer(SharedDirectory())


def test_claims_lookups_and_releases_go_through_amp_as_in_memory(
        parent: DirectoryServer) -> None:
    one, two = Worker(parent, 1), Worker(parent, 2)
    one.hello()
    two.hello()
    assert one.result(one.directory.claim("live", "cam", W1)) is True
    assert two.result(two.directory.claim("live", "cam", W2)) is False
    assert one.result(one.directory.claim("live", "cam", W1)) is True  # a refresh
    assert two.result(two.directory.lookup("live", "cam")) == W1
    assert two.result(two.directory.lookup("live", "other")) is None
    # A release by a worker that does not hold the name changes nothing.
    two.result(two.directory.release("live", "cam", W2))
    assert two.result(two.directory.lookup("live", "cam")) == W1
    one.result(one.directory.release("live", "cam", W1))
    assert two.result(two.directory.lookup("live", "cam")) is None
    assert two.result(two.directory.claim("live", "cam", W2)) is True


def test_names_are_unicode_both_ways(parent: DirectoryServer) -> None:
    one = Worker(parent, 1)
    one.hello()
    assert one.result(one.directory.claim("app_1", "Cam-9", W1)) is True
    assert parent.directory.holders == {("app_1", "Cam-9"): W1}


def test_a_worker_whose_connection_ends_frees_its_names(parent: DirectoryServer) -> None:
    one, two = Worker(parent, 1), Worker(parent, 2)
    one.hello()
    two.hello()
    one.result(one.directory.claim("live", "a", W1))
    one.result(one.directory.claim("live", "b", W1))
    two.result(two.directory.claim("live", "c", W2))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        one.lose()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert parent.directory.holders == {("live", "c"): W2}
    assert 1 not in parent.workers and 2 in parent.workers
    [line] = [e for e in events if "freed" in e.get("log_format", "")]
    assert line["paths"] == "live/a, live/b"
    # The publisher reconnecting to the other worker gets its name.
    assert two.result(two.directory.claim("live", "a", W2)) is True


def test_a_restarted_worker_replaces_its_old_connection_without_losing_new_names(
        parent: DirectoryServer) -> None:
    old = Worker(parent, 1)
    old.hello()
    new = Worker(parent, 1)
    new.hello()
    assert new.result(new.directory.claim("live", "cam", W1)) is True
    old.pump.flush()  # the parent closed the old connection
    assert parent.workers[1] is new.parent_side
    assert parent.directory.holders == {("live", "cam"): W1}


def test_hello_tells_the_parent_which_worker_is_up(parent: DirectoryServer) -> None:
    heard: list[tuple[int, int]] = []
    parent.on_hello = lambda worker, pid: heard.append((worker, pid))
    Worker(parent, 2).hello()
    assert heard == [(2, 1002)]


def test_calls_before_the_connection_wait_for_it(parent: DirectoryServer) -> None:
    one = Worker(parent, 1)
    d = one.directory.claim("live", "cam", W1)
    assert not d.called
    one.hello()
    assert one.result(d) is True


def test_calls_without_a_parent_fail(parent: DirectoryServer) -> None:
    client = DirectoryClient()
    waiting = client.lookup("live", "cam")
    client.detach("the connection to the parent closed")
    with pytest.raises(ConnectionError, match="no stream directory"):
        Worker(parent, 1).result(waiting)
    with pytest.raises(ConnectionError, match="the parent is gone"):
        Worker(parent, 1).result(client.claim("live", "cam", W1))


def test_a_connection_that_never_said_hello_frees_nothing(parent: DirectoryServer) -> None:
    parent.directory.holders[("live", "cam")] = W1
    connection = parent.buildProtocol(None)
    assert isinstance(connection, DirectoryConnection)
    parent.disconnected(connection)
    assert parent.directory.holders == {("live", "cam"): W1}


# -- the relays' endpoints ------------------------------------------------------------


def test_worker_locations_map_to_their_unix_sockets(tmp_path: Any) -> None:
    endpoints = WorkerEndpoints(task.Clock(), str(tmp_path))
    endpoint = endpoints.endpointForURI(URI.fromBytes(b"http://worker-2/live/cam.flv"))
    assert endpoint._path == str(tmp_path / "worker-2.sock")  # type: ignore[attr-defined]
    for url in (b"http://example.com/live/cam.flv", b"http://worker-x/live/cam.flv"):
        with pytest.raises(ValueError, match="is not a worker of this box"):
            endpoints.endpointForURI(URI.fromBytes(url))


# -- options -------------------------------------------------------------------------------


def test_workers_option(tmp_path: Any) -> None:
    assert parse_workers("1") == 1
    assert parse_workers("auto") >= 1
    for bad in ("0", "-2", "many", "257"):
        with pytest.raises(usage.UsageError, match="--workers"):
            parse_workers(bad)
    options = Options()
    options.parseOptions(["--workers", "2", "--root", str(tmp_path)])
    assert options["workers"] == 2
    assert options.argv == ["--workers", "2", "--root", str(tmp_path)]


@pytest.mark.parametrize(("args", "message"), [
    (["--http", "unix:/tmp/x.sock"], "listeners must be tcp:, tcp6:, ssl:"),
    (["--pull", "live/a=http://origin:8501/live/a.flv"], "--pull works with one process"),
])
def test_what_workers_cannot_do_is_refused(args: list[str], message: str) -> None:
    options = Options()
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        options.parseOptions(["--workers", "2", *args])


def test_a_worker_with_directory_claims_at_the_boxs_location_before_the_boxs_directory(
        tmp_path: Any) -> None:
    """The box's directory is the last authorizer: Redis says whether the
    box may have the name, then the box which worker; its busy leaves the
    Redis claim alone. And the worker's /api and /metrics gather the box's."""
    from twisted.internet.testing import MemoryReactorClock

    from rtmpd.protocols.siblings import Siblings
    from rtmpd.services.directory import DirectoryClaims
    from rtmpd.tap.rtmpd import makeService

    options = Options()
    options.parseOptions([
        "--workers", "2", "--worker", f"1:{tmp_path}", "--record", "none",
        "--root", str(tmp_path / "media"), "--http", "tcp:8501:interface=10.0.0.5",
        "--directory", "redis://127.0.0.1:6379/0"])
    top = makeService(options, MemoryReactorClock())
    claims = [a for a in top.admission.authorizers  # type: ignore[attr-defined]
              if isinstance(a, DirectoryClaims)]
    assert [(c.location, c.shared) for c in claims] == [
        ("http://10.0.0.5:8501", True), ("http://worker-1", False)]
    assert top.admission.authorizers[-1] is claims[1]  # type: ignore[attr-defined]
    siblings = top.getServiceNamed("web").factory.resource.children[b"api"].siblings
    assert isinstance(siblings, Siblings) and (siblings.index, siblings.count) == (1, 2)
    # Worker 1 of 2 deals the odd client ids.
    admission = top.admission  # type: ignore[attr-defined]
    assert [admission.open_connection("192.0.2.1", 5000 + i, "rtmp", lambda _: None)
            for i in range(3)] == [1, 3, 5]


def test_worker_option_names_an_index_and_a_run_directory(tmp_path: Any) -> None:
    assert parse_worker(f"3:{tmp_path}") == (3, str(tmp_path))
    for bad in ("3", f"0:{tmp_path}", f"x:{tmp_path}", "2:/no/such/dir"):
        with pytest.raises(ValueError, match="INDEX:RUN_DIR"):
            parse_worker(bad)


# -- the parent's pool ------------------------------------------------------------------------


class FakeProcessTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakePort:
    listening = True

    def stopListening(self) -> None:
        self.listening = False


class ProcessReactor(task.Clock):
    """A clock that records the processes it is asked to start."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[WorkerProcess, list[str], FakeProcessTransport]] = []
        self.unix: list[tuple[str, object, int]] = []

    def listenUNIX(self, path: str, factory: object, mode: int) -> FakePort:
        self.unix.append((path, factory, mode))
        return FakePort()

    def spawnProcess(self, process: WorkerProcess, executable: str, args: list[str],
                     env: Any = None, path: Any = None) -> FakeProcessTransport:
        transport = FakeProcessTransport(100 + len(self.spawned))
        process.makeConnection(transport)  # type: ignore[arg-type]
        self.spawned.append((process, args, transport))
        return transport


def ended(process: WorkerProcess, *, signal: int | None = None, code: int = 0) -> None:
    reason = (error.ProcessTerminated(signal=signal) if signal is not None
              else error.ProcessDone(None) if code == 0 else error.ProcessTerminated(code))
    process.processEnded(Failure(reason))


@pytest.fixture
def pool(parent: DirectoryServer, tmp_path: Any) -> tuple[WorkerPool, ProcessReactor]:
    reactor = ProcessReactor()
    workers = WorkerPool(reactor, 2, ["--rtmp", "tcp:1935"], parent, run_dir=str(tmp_path))
    workers.startService()
    return workers, reactor


def test_each_worker_runs_twistd_rtmpd_with_the_same_options_and_its_index(
        pool: tuple[WorkerPool, ProcessReactor], parent: DirectoryServer,
        tmp_path: Any) -> None:
    _, reactor = pool
    assert reactor.unix == [(str(tmp_path / "directory.sock"), parent, 0o600)]
    assert [p.index for p, _, _ in reactor.spawned] == [1, 2]
    _, args, _ = reactor.spawned[1]
    assert args[args.index("rtmpd"):] == ["rtmpd", "--rtmp", "tcp:1935",
                                           "--worker", f"2:{tmp_path}"]
    assert "--logger=rtmpd.services.workers.log_to_parent" in args


def test_workers_run_on_the_parents_kind_of_reactor(
        parent: DirectoryServer, tmp_path: Any) -> None:
    from twisted.internet.pollreactor import PollReactor

    from rtmpd.services.workers import reactor_name

    assert reactor_name(PollReactor()) == "poll"
    assert reactor_name(ProcessReactor()) is None

    class Polled(ProcessReactor):
        """A test reactor that passes for twistd's ``poll``."""

    Polled.__module__ = "twisted.internet.pollreactor"
    reactor = Polled()
    WorkerPool(reactor, 1, ["--rtmp", "tcp:1935"], parent, run_dir=str(tmp_path)).startService()
    _, args, _ = reactor.spawned[0]
    assert args[args.index("rtmpd") - 1] == "--reactor=poll"


def test_a_dead_worker_is_restarted_with_backoff_and_its_names_freed(
        pool: tuple[WorkerPool, ProcessReactor], parent: DirectoryServer) -> None:
    workers, reactor = pool
    parent.directory.holders[("live", "cam")] = W2
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor.advance(5)
        ended(reactor.spawned[1][0], signal=9)
        assert parent.directory.holders == {}
        assert 2 not in workers.workers
        reactor.advance(RESTART_INITIAL_S)
        assert [p.index for p, _, _ in reactor.spawned] == [1, 2, 2]
        # Dying again at once doubles the wait.
        ended(reactor.spawned[2][0], code=1)
        reactor.advance(RESTART_INITIAL_S)
        assert len(reactor.spawned) == 3
        reactor.advance(RESTART_INITIAL_S)
        assert len(reactor.spawned) == 4
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if "restarting in" in e.get("log_format", "")]
    assert [(e["how"], e["delay"]) for e in lines] == [("signal 9, SIGKILL", 1.0),
                                                       ("exit code 1", 2.0)]
    assert RESTART_MAX_S >= 2.0


def test_stopping_terms_every_worker_and_fires_when_all_have_ended(
        pool: tuple[WorkerPool, ProcessReactor]) -> None:
    workers, reactor = pool
    d = workers.stopService()
    assert d is not None and not d.called
    assert [t.signals for _, _, t in reactor.spawned] == [["TERM"], ["TERM"]]
    ended(reactor.spawned[0][0], signal=15)
    assert not d.called
    ended(reactor.spawned[1][0], signal=15)
    assert d.called
    reactor.advance(3600)
    assert len(reactor.spawned) == 2  # no restart while stopping


def test_workers_that_do_not_stop_are_killed(pool: tuple[WorkerPool, ProcessReactor]) -> None:
    workers, reactor = pool
    d = workers.stopService()
    ended(reactor.spawned[0][0], signal=15)
    reactor.advance(workers.stop_timeout_s)
    assert reactor.spawned[1][2].signals == ["TERM", "KILL"]
    ended(reactor.spawned[1][0], signal=9)
    assert d is not None and d.called


def test_a_workers_log_events_are_logged_by_the_parent_with_its_index(
        pool: tuple[WorkerPool, ProcessReactor]) -> None:
    _, reactor = pool
    process = reactor.spawned[1][0]
    worker_event = {"log_format": "play {path} by {peer}", "path": "live/cam",
                    "peer": "rtmp 127.0.0.1:5000", "log_level": LogLevel.info,
                    "log_namespace": "rtmpd.admission", "log_time": 1.5}
    record = ("\x1e" + eventAsJSON(worker_event) + "\n").encode()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        # Split anywhere, in several reads; logged once whole, without
        # waiting for the next record. Then a line on standard error.
        process.outReceived(record[:10])
        assert not events
        process.outReceived(record[10:])
        assert [formatEvent(e) for e in events] == [
            "worker 2: play live/cam by rtmp 127.0.0.1:5000"]
        process.outReceived(b"\x1e{not json")
        process.errReceived(b"Traceback (most recent call last):\n  File")
        process.processEnded(Failure(error.ProcessDone(None)))
    finally:
        globalLogPublisher.removeObserver(events.append)

    texts = [formatEvent(e) for e in events if "worker" in formatEvent(e)]
    assert texts[0] == "worker 2: play live/cam by rtmp 127.0.0.1:5000"
    assert events[0]["log_namespace"] == "rtmpd.admission"
    assert events[0]["log_time"] == 1.5
    assert "worker 2: {not json" in texts
    assert "worker 2: Traceback (most recent call last):" in texts
    assert "worker 2:   File" in texts
    json.dumps([str(t) for t in texts])


def test_the_run_directory_is_private_and_removed_once_the_workers_stopped(
        parent: DirectoryServer) -> None:
    reactor = ProcessReactor()
    workers = WorkerPool(reactor, 1, [], parent)
    workers.startService()
    run_dir = workers.run_dir
    assert os.stat(run_dir).st_mode & 0o777 == 0o700
    assert reactor.spawned[0][1][-1] == f"1:{run_dir}"
    workers.stopService()
    assert os.path.isdir(run_dir)  # the worker may still use it
    ended(reactor.spawned[0][0], signal=15)
    assert not os.path.exists(run_dir)
