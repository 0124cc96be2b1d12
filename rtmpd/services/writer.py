"""The recorders' disk writer: file work off the reactor thread, bounded.

Every recorder turns frames into bytes on the reactor (cheap, no I/O) and
hands the file work to one :class:`DiskWriter` as a *job*: a callable that
runs on the writer's own thread and may block (open, write, rename, fsync,
the CPU-heavy ``moov`` build of a merge). Its result or exception comes back
on the reactor thread as a Deferred. Jobs run one at a time in submission
order, so a recording's jobs (open, append, ..., finalise) never overtake
each other and need no locks.

The queue is bounded by jobs and by bytes: a disk slower than the streams
must not grow memory without limit. When a bound would be passed,
:meth:`DiskWriter.submit` raises :class:`WriterFull` at once and the caller
marks that recording failed; live viewers never wait for the disk.

:class:`ImmediateDiskWriter` runs each job at once on the caller's thread:
for unit tests and for reactors without threads (``MemoryReactorClock``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application import service
from twisted.internet import defer
from twisted.python.failure import Failure

T = TypeVar("T")

#: Jobs waiting at most. A live recording submits about one job per second
#: (a fragment, a batch of FLV tags), so this is minutes of backlog for a
#: few dozen streams: past it the disk is not keeping up.
MAX_PENDING_JOBS = 4096

#: Bytes of media waiting to be written, at most: about 30 s of thirty
#: 4 Mbit/s streams. Past it a recording is failed rather than memory grown.
MAX_PENDING_BYTES = 64 * 1024 * 1024


class WriterFull(Exception):
    """The writer's queue is full (or the writer stopped): the job was not taken."""


class DiskWriter(Protocol):
    """Runs blocking file jobs in order, off the reactor thread."""

    def submit(
        self, job: Callable[[], T], *, size: int = 0, quiet: bool = False
    ) -> defer.Deferred[T]:
        """Queue ``job`` (``size``: bytes of media it carries, for the bound).

        Returns a Deferred firing on the reactor thread with the job's result
        or failure; with ``quiet``, only with its failure (it never fires if
        the job succeeds). Raises :class:`WriterFull` when the job cannot be
        taken.

        ``quiet`` is for a recording's frequent jobs (a segment, a second of
        FLV tags) whose success nobody waits for: reporting it would wake an
        otherwise idle reactor once per job, which costs a paced ingest about
        as much as one more read of its publisher.
        """


class ImmediateDiskWriter:
    """Runs every job at once, on the caller's thread (tests, fake reactors)."""

    def __init__(self) -> None:
        self.jobs_run = 0

    def submit(
        self, job: Callable[[], T], *, size: int = 0, quiet: bool = False
    ) -> defer.Deferred[T]:
        self.jobs_run += 1
        try:
            result = job()
        except Exception:
            return defer.fail(Failure())
        return defer.Deferred() if quiet else defer.succeed(result)

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)


_STOP = object()


class ThreadedDiskWriter:
    """One daemon thread behind a bounded FIFO of jobs.

    ``call_from_thread`` is the reactor's ``callFromThread``: results are
    delivered through it, so Deferreds fire on the reactor thread.
    """

    def __init__(
        self,
        call_from_thread: Callable[..., Any],
        *,
        max_jobs: int = MAX_PENDING_JOBS,
        max_bytes: int = MAX_PENDING_BYTES,
        name: str = "rtmpd-writer",
    ) -> None:
        self._call_from_thread = call_from_thread
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending_jobs = 0
        self._pending_bytes = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped: defer.Deferred[None] | None = None

    @property
    def pending_jobs(self) -> int:
        """Jobs queued or running."""
        return self._pending_jobs

    @property
    def pending_bytes(self) -> int:
        """Media bytes carried by queued or running jobs."""
        return self._pending_bytes

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def submit(
        self, job: Callable[[], T], *, size: int = 0, quiet: bool = False
    ) -> defer.Deferred[T]:
        if self._stopping or self._thread is None:
            raise WriterFull("the disk writer is not running")
        with self._lock:
            if self._pending_jobs >= self.max_jobs:
                raise WriterFull(f"disk writer queue full: {self._pending_jobs} jobs pending")
            if size and self._pending_bytes + size > self.max_bytes:
                raise WriterFull(
                    f"disk writer queue full: {self._pending_bytes} bytes pending "
                    f"(MAX_PENDING_BYTES {self.max_bytes})"
                )
            self._pending_jobs += 1
            self._pending_bytes += size
        d: defer.Deferred[T] = defer.Deferred()
        self._queue.put((job, d, size, quiet))
        return d

    def stop(self) -> defer.Deferred[None]:
        """Run every job already queued, then end the thread; the Deferred
        fires (on the reactor) once it has. Later submits raise WriterFull."""
        if self._stopped is None:
            self._stopping = True
            self._stopped = defer.Deferred()
            if self._thread is None:
                self._stopped.callback(None)
            else:
                self._queue.put(_STOP)
        return self._stopped

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            job, d, size, quiet = item
            try:
                result = job()
            except BaseException:
                outcome: Any = Failure()
                fire = d.errback
            else:
                outcome = result
                fire = d.callback
                if quiet:
                    fire = None  # a success nobody waits for: the reactor sleeps on
            with self._lock:
                self._pending_jobs -= 1
                self._pending_bytes -= size
            if fire is not None:
                self._call_from_thread(fire, outcome)
        stopped = self._stopped
        assert stopped is not None
        self._call_from_thread(stopped.callback, None)


class WriterService(service.Service):
    """Owns the writer thread: started first, stopped after the recorders
    (they queue their finalising jobs in their own ``stopService``), and
    ``stopService`` fires once every queued job has run."""

    def __init__(self, writer: ThreadedDiskWriter | ImmediateDiskWriter) -> None:
        self.writer = writer
        self._on_start: list[Callable[[], object]] = []

    def call_when_started(self, f: Callable[[], object]) -> None:
        """Run ``f`` (on the reactor thread) right after the writer starts."""
        self._on_start.append(f)

    def startService(self) -> None:
        super().startService()
        if isinstance(self.writer, ThreadedDiskWriter):
            self.writer.start()
        for f in self._on_start:
            f()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.writer.stop()
