"""A slow disk for the end-to-end fault tests: a FUSE file system, in plain
Python over ``/dev/fuse`` (no libfuse), that passes every operation through
to a backing directory and can hold or slow its writes.

    python -m tests.e2e.slowfs BACKING MOUNTPOINT

Needs root (``mount``) and ``/dev/fuse``; :func:`available` says whether
this machine has them. It serves one request at a time, as a disk with one
queue does: while a write is held, every other operation on the mount
waits behind it (a ``stat``, an ``open``), so a server that touches the
recording tree from its event loop would stall with it.

Controlled by signals, and it says what it does on stdout, one line each:

* ``mounted``: the mount is up (first line);
* ``SIGUSR1``: hold the next write until ``SIGUSR2``; ``holding`` when one
  is held (the disk has stopped);
* ``SIGUSR2``: let writes through again, each after ``--write-delay-ms``;
  ``released``;
* ``SIGTERM``: unmount (lazily) and end.

The protocol is the kernel's (``include/uapi/linux/fuse.h``, 7.31): only
what a recorder, ffprobe and ``ls`` use is served; every other request gets
``ENOSYS``, which the kernel takes as "not supported" (extended attributes,
locks and ``lseek`` are then handled by the kernel itself).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

#: Opcodes served (fuse.h ``enum fuse_opcode``).
LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
MKDIR, UNLINK, RMDIR, RENAME = 9, 10, 11, 12
OPEN, READ, WRITE, STATFS, RELEASE, FSYNC, FLUSH, INIT = 14, 15, 16, 17, 18, 20, 25, 26
OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, CREATE, INTERRUPT, DESTROY = 27, 28, 29, 30, 35, 36, 38
BATCH_FORGET, RENAME2 = 42, 45
NO_REPLY = (FORGET, BATCH_FORGET, INTERRUPT)

IN_HEADER = struct.Struct("<IIQQIIII")  # len, opcode, unique, nodeid, uid, gid, pid, extlen+pad
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
#: fuse_attr: ino size blocks atime mtime ctime, nsecs, mode nlink uid gid rdev blksize flags.
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
FUSE_BIG_WRITES = 1 << 5
MAX_WRITE = 128 * 1024
#: Bytes of one read from /dev/fuse: a whole write request and its header.
BUFFER = MAX_WRITE + 4096
#: setattr ``valid`` bits.
FATTR_MODE, FATTR_SIZE, FATTR_ATIME, FATTR_MTIME, FATTR_FH = 1, 8, 16, 32, 64
FATTR_ATIME_NOW, FATTR_MTIME_NOW = 128, 256
RENAME_NOREPLACE = 1
MS_NOSUID, MS_NODEV = 2, 4


def available() -> str | None:
    """Why this machine cannot mount it (None when it can)."""
    if os.geteuid() != 0:
        return "not root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if "fuse" not in Path("/proc/filesystems").read_text():
        return "the kernel has no FUSE"
    return None


def attr_of(st: os.stat_result) -> bytes:
    return ATTR.pack(
        st.st_ino, st.st_size, st.st_blocks,
        int(st.st_atime), int(st.st_mtime), int(st.st_ctime),
        st.st_atime_ns % 10**9, st.st_mtime_ns % 10**9, st.st_ctime_ns % 10**9,
        st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, st.st_blksize, 0,
    )  # fmt: skip


class SlowFs:
    """The file system: node ids map to paths under ``backing``."""

    def __init__(self, backing: str, write_delay_s: float) -> None:
        self.backing = backing
        self.write_delay_s = write_delay_s
        self.paths: dict[int, str] = {1: ""}
        self.ids: dict[str, int] = {"": 1}
        self.dirs: dict[int, list[str]] = {}
        self.next_id = 2
        self.next_dir = 1
        self.hold = False
        self.holding = False

    # ---------------------------------------------------------------- nodes

    def real(self, node: int, name: bytes | None = None) -> str:
        path = self.paths[node]
        if name is not None:
            path = os.path.join(path, os.fsdecode(name))
        return os.path.join(self.backing, path)

    def entry(self, node: int, name: bytes) -> bytes:
        """fuse_entry_out of ``name`` in ``node`` (raises OSError when missing)."""
        path = os.path.join(self.paths[node], os.fsdecode(name))
        st = os.lstat(os.path.join(self.backing, path))
        child = self.ids.get(path)
        if child is None:
            child = self.ids[path] = self.next_id
            self.paths[child] = path
            self.next_id += 1
        # Nothing cached: every lookup comes here, as on a disk nobody else writes.
        return struct.pack("<QQQQII", child, 0, 0, 0, 0, 0) + attr_of(st)

    def moved(self, old: str, new: str) -> None:
        for path, node in list(self.ids.items()):
            if path == old or path.startswith(old + "/"):
                del self.ids[path]
                moved = new + path[len(old) :]
                self.ids[moved] = node
                self.paths[node] = moved

    # ---------------------------------------------------------------- writes

    def wait_for_disk(self, say: list[str]) -> None:
        """Hold while told to (SIGUSR1 .. SIGUSR2), then the write delay."""
        while self.hold:
            if not self.holding:
                self.holding = True
                say.append("holding")
                flush_lines(say)
            time.sleep(0.02)
        self.holding = False
        if self.write_delay_s:
            time.sleep(self.write_delay_s)

    # ---------------------------------------------------------------- requests

    def handle(self, opcode: int, node: int, body: bytes, say: list[str]) -> bytes:
        """The reply's payload for one request; OSError for an error reply."""
        if opcode == INIT:
            _major, minor, readahead, _flags = struct.unpack_from("<IIII", body)
            return struct.pack("<IIIIHHIIHHI7I", 7, min(minor, 31), readahead, FUSE_BIG_WRITES,
                               16, 12, MAX_WRITE, 1, 0, 0, 0, *[0] * 7)  # fmt: skip
        if opcode == LOOKUP:
            return self.entry(node, body.rstrip(b"\0"))
        if opcode in (GETATTR, SETATTR):
            if opcode == SETATTR:
                self.setattr(node, body)
            return struct.pack("<QII", 0, 0, 0) + attr_of(os.lstat(self.real(node)))
        if opcode == MKDIR:
            mode, umask = struct.unpack_from("<II", body)
            name = body[8:].rstrip(b"\0")
            os.mkdir(self.real(node, name), mode & ~umask & 0o7777)
            return self.entry(node, name)
        if opcode in (UNLINK, RMDIR):
            (os.unlink if opcode == UNLINK else os.rmdir)(self.real(node, body.rstrip(b"\0")))
            return b""
        if opcode in (RENAME, RENAME2):
            (new_dir,) = struct.unpack_from("<Q", body)
            flags = struct.unpack_from("<I", body, 8)[0] if opcode == RENAME2 else 0
            names = body[16 if opcode == RENAME2 else 8 :].split(b"\0")
            old, new = self.real(node, names[0]), self.real(new_dir, names[1])
            if flags & ~RENAME_NOREPLACE:
                raise OSError(errno.EINVAL, "rename flags")
            if flags & RENAME_NOREPLACE and os.path.lexists(new):
                raise OSError(errno.EEXIST, "exists")
            os.rename(old, new)
            self.moved(os.path.relpath(old, self.backing), os.path.relpath(new, self.backing))
            return b""
        if opcode == OPEN:
            (flags,) = struct.unpack_from("<I", body)
            fd = os.open(self.real(node), flags & ~(os.O_CREAT | os.O_EXCL | os.O_APPEND))
            return struct.pack("<QII", fd, 0, 0)
        if opcode == CREATE:
            flags, mode, umask = struct.unpack_from("<III", body)
            name = body[16:].rstrip(b"\0")
            fd = os.open(self.real(node, name), (flags | os.O_CREAT) & ~os.O_APPEND,
                         mode & ~umask & 0o7777)  # fmt: skip
            return self.entry(node, name) + struct.pack("<QII", fd, 0, 0)
        if opcode == READ:
            fh, offset, size = struct.unpack_from("<QQI", body)
            return os.pread(fh, size, offset)
        if opcode == WRITE:
            fh, offset, size = struct.unpack_from("<QQI", body)
            self.wait_for_disk(say)
            written = os.pwrite(fh, body[40 : 40 + size], offset)
            return struct.pack("<II", written, 0)
        if opcode == FSYNC:
            (fh,) = struct.unpack_from("<Q", body)
            self.wait_for_disk(say)
            os.fsync(fh)
            return b""
        if opcode == RELEASE:
            (fh,) = struct.unpack_from("<Q", body)
            os.close(fh)
            return b""
        if opcode in (FLUSH, FSYNCDIR):
            return b""
        if opcode == STATFS:
            v = os.statvfs(self.backing)
            return struct.pack("<QQQQQIII7I", v.f_blocks, v.f_bfree, v.f_bavail, v.f_files,
                               v.f_ffree, v.f_bsize, v.f_namemax, v.f_frsize, *[0] * 7)  # fmt: skip
        if opcode == OPENDIR:
            fh = self.next_dir
            self.next_dir += 1
            self.dirs[fh] = [".", "..", *sorted(os.listdir(self.real(node)))]
            return struct.pack("<QII", fh, 0, 0)
        if opcode == READDIR:
            fh, offset, size = struct.unpack_from("<QQI", body)
            return self.readdir(node, self.dirs.get(fh, []), offset, size)
        if opcode == RELEASEDIR:
            self.dirs.pop(struct.unpack_from("<Q", body)[0], None)
            return b""
        raise OSError(errno.ENOSYS, "not served")

    def setattr(self, node: int, body: bytes) -> None:
        valid, _, fh, size = struct.unpack_from("<IIQQ", body)
        atime, mtime = struct.unpack_from("<QQ", body, 32)
        atime_ns, mtime_ns = struct.unpack_from("<II", body, 56)
        (mode,) = struct.unpack_from("<I", body, 68)
        path = self.real(node)
        if valid & FATTR_SIZE:
            self.wait_for_disk([])
            if valid & FATTR_FH:
                os.ftruncate(fh, size)
            else:
                os.truncate(path, size)
        if valid & FATTR_MODE:
            os.chmod(path, stat.S_IMODE(mode))
        if valid & (FATTR_ATIME | FATTR_MTIME):
            st = os.lstat(path)
            now = time.time_ns()
            a = now if valid & FATTR_ATIME_NOW else atime * 10**9 + atime_ns
            m = now if valid & FATTR_MTIME_NOW else mtime * 10**9 + mtime_ns
            os.utime(path, ns=(a if valid & FATTR_ATIME else st.st_atime_ns,
                               m if valid & FATTR_MTIME else st.st_mtime_ns))  # fmt: skip

    def readdir(self, node: int, names: list[str], offset: int, size: int) -> bytes:
        out = b""
        for index in range(offset, len(names)):
            name = os.fsencode(names[index])
            try:
                st = os.lstat(self.real(node, name)) if names[index] not in (".", "..") else None
            except FileNotFoundError:
                continue
            kind = stat.S_IFMT(st.st_mode) >> 12 if st else stat.S_IFDIR >> 12
            dirent = struct.pack("<QQII", st.st_ino if st else 1, index + 1, len(name), kind) + name
            dirent += bytes(-len(dirent) % 8)
            if len(out) + len(dirent) > size:
                break
            out += dirent
        return out


def flush_lines(say: list[str]) -> None:
    for line in say:
        print(line, flush=True)
    say.clear()


def mount(mountpoint: str) -> int:
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"slowfs", os.fsencode(mountpoint), b"fuse.slowfs", MS_NOSUID | MS_NODEV,
                  options) != 0:  # fmt: skip
        code = ctypes.get_errno()
        raise OSError(code, f"mount {mountpoint}: {os.strerror(code)}")
    return fd


def serve(fd: int, fs: SlowFs) -> None:
    say: list[str] = []
    while True:
        try:
            request = os.read(fd, BUFFER)
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EBADF):
                return  # unmounted
            if e.errno == errno.ENOENT:
                continue  # the request was interrupted and withdrawn
            raise
        length, opcode, unique, node, *_ = IN_HEADER.unpack_from(request)
        body = request[IN_HEADER.size : length]
        try:
            payload, error = fs.handle(opcode, node, body, say), 0
        except OSError as e:
            payload, error = b"", -(e.errno or errno.EIO)
        except KeyError:  # a node forgotten by a rename race
            payload, error = b"", -errno.ENOENT
        flush_lines(say)
        if opcode in NO_REPLY:
            continue
        reply = OUT_HEADER.pack(OUT_HEADER.size + len(payload), error, unique) + payload
        try:
            os.write(fd, reply)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
                raise
        if opcode == DESTROY:
            return


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    ap.add_argument("--write-delay-ms", type=float, default=0)
    a = ap.parse_args(argv)
    fs = SlowFs(os.path.abspath(a.backing), a.write_delay_ms / 1000)
    fd = mount(a.mountpoint)

    def hold(signum: int, frame: object) -> None:
        fs.hold = True

    def release(signum: int, frame: object) -> None:
        fs.hold = False
        print("released", flush=True)

    def end(signum: int, frame: object) -> None:
        fs.hold = False
        subprocess.run(["umount", "-l", a.mountpoint], check=False)
        sys.exit(0)

    signal.signal(signal.SIGUSR1, hold)
    signal.signal(signal.SIGUSR2, release)
    signal.signal(signal.SIGTERM, end)
    print("mounted", flush=True)
    serve(fd, fs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
