"""Retention: finished recordings age out and fit a byte budget, and no new
recording starts on a nearly full disk.

Any publisher can fill a disk: every publish of a name starts new recordings
(the FLV and fMP4 ones move their predecessors aside and keep them). So:

* ``--record-max-age``: a finished recording whose newest file is older is
  deleted;
* ``--record-max-bytes``: while everything under ``--root`` (live recordings
  included) takes more, the oldest finished recording is deleted;
* ``--record-min-free``: while the root's file system has less free space,
  a new publish is not recorded (one log line per stream); live play is
  not affected, nor are recordings already running.

Live recordings (those with a ``.recording`` marker) are never deleted.

What a recording is, for retention (:func:`scan`): an FLV file
(``flv/{app}/{stream}/index*.flv``; ``index.flv`` is live while its
directory has a marker), an fMP4 directory (``mp4/{app}/{stream}/output_*``)
and an HLS directory (``hls/{app}/{stream}``), each live while it has a
marker.

Nothing here blocks the reactor: the scan (a walk of the tree with ``stat``
calls, and ``statvfs``) runs in a thread; the deletions run as jobs of the
recorders' disk writer, where recordings are opened, and check the marker
again right before deleting, so a recording that started since the scan is
never touched. Scans run every :data:`SCAN_INTERVAL_S` and soon after a
recording is finalised (coalesced), so a name republished in a loop stays
within the budget.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from rtmpd.registry import Stream
from rtmpd.services.confine import OutsideRoot, confined
from rtmpd.services.recorder import MARKER_NAME
from rtmpd.services.writer import DiskWriter, WriterFull

log = Logger()
T = TypeVar("T")

#: Seconds between scans when nothing asks for one sooner: the age limit is
#: kept to within a minute, and a scan of a large tree costs a thread a
#: moment once a minute.
SCAN_INTERVAL_S = 60.0
#: Seconds between free-space checks: a flood of publishes (400 in 8 s were
#: seen to add 500 MB) meets the floor within this.
FREE_CHECK_INTERVAL_S = 5.0
#: Seconds after a recording is finalised before the scan it asks for, so a
#: burst of ends makes one scan.
SCAN_DELAY_S = 1.0
#: Default ``--record-min-free``: below this, recordings would soon fail
#: mid-stream with "No space left"; refusing new ones keeps the running
#: ones (and the rest of the machine) going.
DEFAULT_MIN_FREE_BYTES = 1024**3

_FLV_FILE = re.compile(r"index(-\d{8}T\d{6}Z(-\d{1,6})?)?\.flv")
_MP4_DIRECTORY = re.compile(r"output_(merge|separate)(-\d{8}T\d{6}Z(-\d{1,6})?)?")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: object) -> int:
    """``"500M"``, ``"2G"``, ``"1048576"`` (binary units; ``0``: no limit)
    -> bytes. Raises ValueError."""
    match = _SIZE.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"{value!r} is not a size (a number of bytes, or with K, M, G or T)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def parse_duration(value: object) -> float:
    """``"7d"``, ``"12h"``, ``"90m"``, ``"3600"`` (seconds; ``0``: no limit)
    -> seconds. Raises ValueError."""
    match = _DURATION.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"{value!r} is not a duration (seconds, or with s, m, h or d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionSettings:
    """0 means no limit for each."""

    max_age_s: float = 0.0
    max_bytes: int = 0
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One recording on disk: a file or a directory, with its bytes and the
    modification time (s) of its newest file."""

    path: str
    size: int
    mtime: float
    live: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Scan:
    items: list[Item]
    free_bytes: int | None


def _tree(path: str) -> tuple[int, float]:
    """Bytes and newest mtime of the regular files under ``path`` (no links followed)."""
    size, newest = 0, 0.0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(directory, name))
                if stat.S_ISREG(info.st_mode):
                    size += info.st_size
                    newest = max(newest, info.st_mtime)
    return size, newest


def _directories(path: str) -> list[str]:
    """Real (not symlinked) subdirectories of ``path``, sorted."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _streams(root: str, kind: str) -> list[str]:
    """``{kind}/{app}/{stream}`` directories: ``{kind}`` may be a link that
    stays inside the root (a bigger disk mounted in it); below it, links
    are not followed."""
    top = os.path.join(root, kind)
    try:
        confined(root, top)
    except OutsideRoot:
        return []
    return [d for app in _directories(top) for d in _directories(app)]


def scan(root: str) -> Scan:
    """Every recording under ``root`` and the free bytes of its file system.
    Blocking: run it in a thread. No link out of the root is followed."""
    items: list[Item] = []
    for stream_dir in _streams(root, "flv"):
        live = os.path.lexists(os.path.join(stream_dir, MARKER_NAME))
        with contextlib.suppress(OSError), os.scandir(stream_dir) as entries:
            for entry in entries:
                if _FLV_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    items.append(Item(path=entry.path, size=info.st_size, mtime=info.st_mtime,
                                      live=live and entry.name == "index.flv"))
    for stream_dir in _streams(root, "mp4"):
        for directory in _directories(stream_dir):
            if _MP4_DIRECTORY.fullmatch(os.path.basename(directory)):
                size, mtime = _tree(directory)
                live = os.path.lexists(os.path.join(directory, MARKER_NAME))
                items.append(Item(path=directory, size=size, mtime=mtime, live=live))
    for stream_dir in _streams(root, "hls"):
        size, mtime = _tree(stream_dir)
        live = os.path.lexists(os.path.join(stream_dir, MARKER_NAME))
        items.append(Item(path=stream_dir, size=size, mtime=mtime, live=live))
    return Scan(items=items, free_bytes=_free_bytes(root))


def choose(items: list[Item], settings: RetentionSettings, now_s: float) -> list[Item]:
    """The finished recordings to delete, oldest first: those past the age
    limit, then the oldest until the total fits the byte budget."""
    finished = sorted((i for i in items if not i.live), key=lambda i: (i.mtime, i.path))
    doomed: list[Item] = []
    total = sum(i.size for i in items)
    for item in finished:
        too_old = settings.max_age_s > 0 and now_s - item.mtime > settings.max_age_s
        too_big = settings.max_bytes > 0 and total > settings.max_bytes
        if not (too_old or too_big):
            continue
        doomed.append(item)
        total -= item.size
    return doomed


def delete(root: str, item: Item) -> bool:
    """Delete a finished recording unless it has since become live (a
    marker appeared) or leads out of the root. Writer thread only."""
    try:
        confined(root, os.path.dirname(item.path))
    except OutsideRoot:
        return False
    directory = item.path if os.path.isdir(item.path) else os.path.dirname(item.path)
    if os.path.lexists(os.path.join(directory, MARKER_NAME)) and (
        directory == item.path or os.path.basename(item.path) == "index.flv"
    ):
        return False  # recording again since the scan
    try:
        info = os.lstat(item.path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(item.path)  # never follows symlinks inside
    else:
        os.unlink(item.path)
    return True


def in_thread(reactor: object) -> Callable[[Callable[[], T]], defer.Deferred[T]]:
    """Run a blocking function in ``reactor``'s thread pool; inline where
    the reactor has no threads (``MemoryReactorClock`` in tests)."""
    from twisted.internet import threads

    def run(f: Callable[[], T]) -> defer.Deferred[T]:
        if IReactorThreads.providedBy(reactor):
            return threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), f)
        return defer.maybeDeferred(f)

    return run


class Retention(service.Service):
    """Keeps ``root`` within :class:`RetentionSettings`; the recorders ask
    :meth:`may_record` before each new recording.

    ``run_in_thread(f)`` runs a blocking scan off the reactor (default: the
    reactor's thread pool); ``writer`` runs the deletions.
    """

    name = "retention"

    def __init__(
        self, root: str, settings: RetentionSettings, writer: DiskWriter, clock: IReactorTime,
        *, run_in_thread: Callable[[Callable[[], Scan]], defer.Deferred[Scan]] | None = None,
    ) -> None:
        self.root = root
        self.settings = settings
        self.writer = writer
        self.clock = clock
        self.run_in_thread = run_in_thread or in_thread(clock)
        #: Free bytes at the last check (None: not known yet, or not available).
        self.free_bytes: int | None = None
        self.deleted = 0
        self._scanning = False
        self._again = False
        self._timer: IDelayedCall | None = None
        self._free_timer: IDelayedCall | None = None
        self._soon: IDelayedCall | None = None
        self._refused: weakref.WeakSet[Stream] = weakref.WeakSet()

    @property
    def limits_deletion(self) -> bool:
        return self.settings.max_age_s > 0 or self.settings.max_bytes > 0

    def startService(self) -> None:
        super().startService()
        if self.limits_deletion:
            self.scan_now()
        if self.settings.min_free_bytes > 0:
            self._check_free()

    def stopService(self) -> None:
        super().stopService()
        for call in (self._timer, self._free_timer, self._soon):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._free_timer = self._soon = None

    # -- the floor -------------------------------------------------------------

    def may_record(self, stream: Stream, fmt: str) -> bool:
        """Whether a new ``fmt`` recording of ``stream`` may start (logs a
        refusal once per stream)."""
        floor = self.settings.min_free_bytes
        free = self.free_bytes
        if floor <= 0 or free is None or free >= floor:
            return True
        if stream not in self._refused:
            self._refused.add(stream)
            log.warn(
                "not recording {path}: {free} MiB free on the disk of {root}, below "
                "--record-min-free ({floor} MiB); live play goes on",
                path=stream.path, free=free // 1024**2, root=self.root, floor=floor // 1024**2,
            )
        return False

    def _check_free(self) -> None:
        self._free_timer = None
        d = self.run_in_thread(lambda: Scan(items=[], free_bytes=_free_bytes(self.root)))
        d.addCallbacks(self._got_free, self._failed)

        def again(_: object) -> None:
            if self.running:
                self._free_timer = self.clock.callLater(FREE_CHECK_INTERVAL_S, self._check_free)

        d.addBoth(again)

    def _got_free(self, result: Scan) -> None:
        self.free_bytes = result.free_bytes

    # -- scans and deletions ---------------------------------------------------

    def recording_finished(self) -> None:
        """A recording was finalised: scan soon (coalesced)."""
        if self.running and self.limits_deletion and self._soon is None:
            self._soon = self.clock.callLater(SCAN_DELAY_S, self._scan_soon)

    def _scan_soon(self) -> None:
        self._soon = None
        self.scan_now()

    def scan_now(self) -> defer.Deferred[Any] | None:
        """Scan and delete what the limits say; one scan at a time (a request
        during a scan makes one more after it). Fires when done."""
        if self._scanning:
            self._again = True
            return None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._scanning = True
        d = self.run_in_thread(lambda: scan(self.root))
        d.addCallback(self._apply)
        d.addErrback(self._failed)
        d.addBoth(self._scanned)
        return d

    def _apply(self, result: Scan) -> defer.Deferred[Any] | None:
        self.free_bytes = result.free_bytes
        doomed = choose(result.items, self.settings, self.clock.seconds())
        if not doomed:
            return None
        try:
            d = self.writer.submit(lambda: [item for item in doomed if delete(self.root, item)])
        except WriterFull:
            return None  # the disk is busy: next scan
        d.addCallback(self._deleted, result)
        return d

    def _deleted(self, gone: list[Item], result: Scan) -> None:
        if not gone:
            return
        self.deleted += len(gone)
        total = sum(i.size for i in result.items) - sum(i.size for i in gone)
        log.info(
            "retention: deleted {count} finished recording(s), {bytes} MiB, oldest first "
            "({first}); {total} MiB of recordings left",
            count=len(gone), bytes=sum(i.size for i in gone) // 1024**2,
            first=os.path.relpath(gone[0].path, self.root), total=total // 1024**2,
        )

    def _failed(self, failure: Failure) -> None:
        log.error("retention scan of {root} failed: {error}", root=self.root,
                  error=failure.getErrorMessage())

    def _scanned(self, _: object) -> None:
        self._scanning = False
        if not self.running:
            return
        if self._again:
            self._again = False
            self.scan_now()
        elif self._timer is None:
            self._timer = self.clock.callLater(SCAN_INTERVAL_S, self.scan_now)


def _free_bytes(root: str) -> int | None:
    try:
        info = os.statvfs(root)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize
