"""Keeping the recorders' and recovery's file work inside ``--root``.

Names from the network are validated before they become path parts
(``[A-Za-z0-9_-]{1,128}``), but the tree under ``--root`` is a file system
other people may write to: a symlink ``root/flv/live -> /elsewhere`` would
make a recorder write, rename and delete files there, and crash recovery
rewrite them. So:

* :func:`confined` resolves a directory the recorders are about to use and
  raises :class:`OutsideRoot` unless it lies under the root (symlinks inside
  the root that stay inside it are fine; the root itself may be a symlink,
  say to a bigger disk);
* files are created with :func:`create_new` (``O_EXCL``: never through an
  existing name, so never through a symlink planted there) and opened with
  :func:`open_existing` (``O_NOFOLLOW``: a symlink in a file's place is
  refused, not followed).

Plain blocking calls: the writer thread's, never the reactor's.
"""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO


class OutsideRoot(OSError):
    """A path the recorders were to use leads out of ``--root``."""


def inside(real_root: str, real: str) -> bool:
    """Whether the resolved path ``real`` is ``real_root`` or under it."""
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def confined(root: str, path: str) -> str:
    """``path`` with every symlink resolved, if that is under ``root`` (also
    resolved); else :class:`OutsideRoot`. Parts that do not exist yet are
    kept as they are, so a directory about to be made can be checked."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if not inside(real_root, real):
        raise OutsideRoot(f"{path} leads out of the root {root} (to {real})")
    return real


def create_new(path: str, *, buffering: int = -1) -> BinaryIO:
    """Open ``path`` for writing (binary) as a new file: whatever was at that
    name (a leftover, a symlink) is unlinked first, and ``O_EXCL`` makes
    sure the file opened is the one just created."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return open(path, "wb", buffering=buffering, opener=lambda p, _: os.open(p, flags, 0o666))


def open_existing(path: str, *, update: bool = False) -> BinaryIO:
    """Open an existing regular file for reading (binary), or reading and
    writing with ``update``; a symlink in its place raises ``OSError``
    (ELOOP) rather than being followed."""
    flags = (os.O_RDWR if update else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    return open(path, "r+b" if update else "rb", opener=lambda p, _: os.open(p, flags))
