"""Crash recovery: finalise recordings a dead process left open.

Every open recording keeps a ``.recording`` marker in its directory (see
:mod:`rtmpd.services.recorder`). At start, before any stream can be
recorded, :func:`recover` looks for markers under ``--root`` and finalises
each recording the way its recorder would have:

* HLS: ``#EXT-X-ENDLIST`` added to the playlist, unlisted segments deleted;
* FLV: ``onMetaData`` patched (duration, size, keyframe index), a
  half-written last tag cut off;
* fMP4 mixed: ``stream_full.mp4`` merged from ``init.mp4`` and the fragments;
* fMP4 separate: leftover ``.tmp`` files deleted.

A marker whose recording is still open in another live process (same root,
several workers) is left alone with a log line: that process holds the
marker ``flock``-ed (PIDs are reused, locks die with their process). A
recording directory that resolves outside ``--root`` (a symlink such as
``root/flv/live -> /elsewhere``) is skipped with a log line: nothing there
is read, rewritten or renamed. A recording that cannot be finalised gets its marker renamed to
``.recording.failed``, so it is reported once and not retried on every start.
It runs as the first job of the writer thread, so a recording of the same
name opened right after start waits for it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os

from rtmpd.services.confine import OutsideRoot, confined
from rtmpd.services.flvrec import FILE_NAME as FLV_NAME
from rtmpd.services.flvrec import finalize_flv
from rtmpd.services.fmp4rec import finish_directory
from rtmpd.services.hls import close_playlist
from rtmpd.services.recorder import MARKER_NAME, marker_locked

#: Bytes of a marker read for its PID (for the log line); ours are ~80.
MAX_MARKER_BYTES = 4096

#: Where markers can be, relative to the root (app and stream are one path part each).
_PATTERNS = (
    ("hls", ("hls", "*", "*")),
    ("flv", ("flv", "*", "*")),
    ("fmp4", ("mp4", "*", "*", "output_merge")),
    ("fmp4-separate", ("mp4", "*", "*", "output_separate")),
)


def find_unfinished(root: str) -> list[tuple[str, str]]:
    """``(format, directory)`` of every recording with a marker under ``root``."""
    found = []
    for fmt, parts in _PATTERNS:
        for marker in sorted(glob.glob(os.path.join(glob.escape(root), *parts, MARKER_NAME))):
            found.append((fmt, os.path.dirname(marker)))
    return found


def recover_one(fmt: str, directory: str) -> str:
    """Finalise one recording; returns a summary."""
    if fmt == "hls":
        return close_playlist(directory)
    if fmt == "flv":
        path = os.path.join(directory, FLV_NAME)
        summary = finalize_flv(path) if os.path.exists(path) else "no index.flv"
        os.unlink(os.path.join(directory, MARKER_NAME))
        return summary
    return finish_directory(directory, merge=fmt == "fmp4")


def _marker_pid(fd: int) -> object:
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            return json.loads(f.read(MAX_MARKER_BYTES)).get("pid")
    except (OSError, ValueError, AttributeError):
        return None


def recover(root: str) -> list[str]:
    """Finalise every unfinished recording under ``root``; returns one log
    line each (recovered, failed or skipped). Blocking: run it in the writer
    thread."""
    lines = []
    for fmt, directory in find_unfinished(root):
        shown = os.path.relpath(directory, root)
        try:
            confined(root, directory)
        except OutsideRoot:
            lines.append(
                f"skipped unfinished {fmt} recording {shown}: it leads out of the root "
                f"(to {os.path.realpath(directory)}); nothing there was touched"
            )
            continue
        marker = os.path.join(directory, MARKER_NAME)
        try:
            fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # finished meanwhile
        except OSError as e:
            lines.append(f"skipped unfinished {fmt} recording {shown}: its marker: {e.strerror}")
            continue
        try:
            if marker_locked(fd):
                lines.append(
                    f"left unfinished {fmt} recording {shown} alone: another live process "
                    f"(pid {_marker_pid(fd)}) is still recording it"
                )
                continue
            try:
                same = os.stat(marker, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue  # another process recovered it while we waited for the lock
            try:
                summary = recover_one(fmt, directory)
            except Exception as e:
                with contextlib.suppress(OSError):
                    os.replace(marker, marker + ".failed")
                lines.append(f"recovery of unfinished {fmt} recording {shown} failed: {e}")
                continue
            lines.append(f"recovered unfinished {fmt} recording {shown}: {summary}")
        finally:
            os.close(fd)
    return lines
