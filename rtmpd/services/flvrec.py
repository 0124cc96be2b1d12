"""FLV recorder: ``flv/{app}/{stream}/index.flv``, the stream as received.

Layout of the file::

    FLV header + PreviousTagSize0                      13 bytes
    script tag "onMetaData"  (DataSize = RESERVED)     written at open, patched at the end
      AMF0 "onMetaData", ECMA array { publisher's fields...,
            duration, filesize, lasttimestamp,
            keyframes: { times: [...], filepositions: [...] } }
      zero bytes up to the reserved size
    sequence headers and media tags, as received (timestamps from 0)

Seekable metadata: the ``onMetaData`` tag is written first with its final
size reserved (:data:`METADATA_RESERVED_BYTES`) and patched in place when the
recording ends, so finalising never copies the media. Players (ffmpeg,
flv.js) read the AMF values and skip the zero padding after them. The
keyframe index holds every video keyframe (tag position and time) while it
fits the reserved space (about 3,500 keyframes, two hours at a 2 s GOP); a
longer recording keeps an evenly spaced subset, so seeking still works,
to the nearest indexed keyframe.

Finalising (and crash recovery, the same function :func:`finalize_flv`)
scans the tag headers on disk: that gives the keyframe index and duration,
and cuts off a tag left half-written by a crash.

A new publish of the same name moves the previous ``index.flv`` to
``index-<UTC time of its last write>.flv``.

Tags are batched on the reactor and written about once a second of media
(or per :data:`FLUSH_BYTES`), one writer job per batch.
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Any

from twisted.internet import defer

from rtmpd.codec import amf0, flv
from rtmpd.codec.errors import ProtocolError
from rtmpd.media import Frame, FrameKind
from rtmpd.services.confine import create_new, open_existing
from rtmpd.services.recorder import (
    MARKER_NAME,
    DiskFiles,
    Recorder,
    Recording,
    metadata_fields,
    move_aside,
    remove_marker,
    write_marker,
)

FILE_NAME = "index.flv"

#: Body size of the reserved ``onMetaData`` tag. A keyframe entry costs 18
#: bytes (two AMF0 numbers) and the publisher's fields a few hundred, so 64 KiB
#: indexes about 3,500 keyframes before the index is thinned.
METADATA_RESERVED_BYTES = 64 * 1024

#: Tags are handed to the writer when this much media time has gathered ...
FLUSH_INTERVAL_MS = 1000
#: ... or this many bytes (a high bitrate keyframe burst).
FLUSH_BYTES = 1024 * 1024

_TAG_START = flv.FLV_HEADER_SIZE + flv.PREVIOUS_TAG_SIZE_SIZE  # 13
_AMF_NUMBER = struct.Struct(">Bd")

#: Fields we compute; the publisher's values of these are replaced.
_OURS = ("duration", "filesize", "lasttimestamp", "keyframes")


def metadata_body(fields: dict[str, object], size: int) -> bytes:
    """``onMetaData`` with ``fields``, zero-padded to exactly ``size`` bytes.

    Raises ValueError if the AMF0 encoding does not fit.
    """
    body = amf0.encode_all("onMetaData", amf0.ECMAArray(fields))
    if len(body) > size:
        raise ValueError(f"onMetaData of {len(body)} bytes exceeds the reserved {size}")
    return body + bytes(size - len(body))


def placeholder(fields: dict[str, object], *, has_audio: bool, has_video: bool) -> bytes:
    """FLV header and the reserved ``onMetaData`` tag that start the file."""
    clean = {k: v for k, v in fields.items() if k not in _OURS}
    clean.update(duration=0.0, filesize=0.0, lasttimestamp=0.0)
    clean["keyframes"] = {"times": [], "filepositions": []}
    body = metadata_body(clean, METADATA_RESERVED_BYTES)
    return flv.encode_header(has_audio=has_audio, has_video=has_video) + flv.encode_tag(
        flv.TAG_SCRIPT, 0, body
    )


def _is_video_keyframe(first: int, second: int) -> bool:
    """From a video tag's first two body bytes: a keyframe with a picture."""
    if first & 0x80:  # Enhanced RTMP: IsExHeader | FrameType(3) | PacketType(4)
        return (first >> 4) & 0x07 == flv.VIDEO_FRAME_KEY and first & 0x0F in (
            flv.VIDEO_PACKET_CODED_FRAMES,
            flv.VIDEO_PACKET_CODED_FRAMES_X,
        )
    if first >> 4 != flv.VIDEO_FRAME_KEY:
        return False
    if first & 0x0F in (flv.VIDEO_AVC, flv.VIDEO_HEVC):
        return second == flv.AVC_NALU
    return True


def finalize_flv(path: str) -> str:
    """Patch ``onMetaData`` of the FLV at ``path`` with its duration, size
    and keyframe index; cut a half-written tag off the end. Returns a
    summary. Used at the end of every recording and by crash recovery.
    """
    with open_existing(path, update=True) as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = f.read(_TAG_START + flv.TAG_HEADER_SIZE)
        if len(head) < _TAG_START or head[:3] != flv.FLV_SIGNATURE:
            raise ValueError(f"{path} does not start with an FLV header")
        meta_size = 0
        if len(head) == _TAG_START + flv.TAG_HEADER_SIZE and head[_TAG_START] == flv.TAG_SCRIPT:
            meta_size = int.from_bytes(head[_TAG_START + 1 : _TAG_START + 4], "big")
        pos = _TAG_START
        end_of_valid = pos
        times: list[float] = []
        positions: list[float] = []
        last_ts = 0
        steps: dict[int, tuple[int, int]] = {}  # tag type -> (last ts, last step)
        while True:
            f.seek(pos)
            header = f.read(flv.TAG_HEADER_SIZE + 2)
            if len(header) < flv.TAG_HEADER_SIZE:
                break
            tag_type = header[0] & 0x1F
            data_size = int.from_bytes(header[1:4], "big")
            ts = int.from_bytes(header[4:7], "big") | header[7] << 24
            tag_end = pos + flv.TAG_HEADER_SIZE + data_size + flv.PREVIOUS_TAG_SIZE_SIZE
            if tag_type not in flv.TAG_TYPES or tag_end > size:
                break
            if tag_type != flv.TAG_SCRIPT and data_size >= 2:
                last = steps.get(tag_type)
                step = ts - last[0] if last is not None else 0
                steps[tag_type] = (ts, step if step > 0 else (last[1] if last else 0))
                last_ts = max(last_ts, ts)
                if tag_type == flv.TAG_VIDEO and _is_video_keyframe(header[11], header[12]):
                    times.append(ts / 1000)
                    positions.append(float(pos))
            pos = end_of_valid = tag_end
        if end_of_valid < size:
            f.truncate(end_of_valid)
            size = end_of_valid
        if meta_size == 0:
            return f"{size} bytes, no reserved metadata to patch"
        f.seek(_TAG_START + flv.TAG_HEADER_SIZE)
        fields = _read_metadata(f.read(meta_size))
        # Each track ends one frame step after its last frame; the file with the later.
        end_ms = max((ts + step for ts, step in steps.values()), default=0)
        fields.update(
            duration=end_ms / 1000,
            filesize=float(size),
            lasttimestamp=last_ts / 1000,
        )
        body = _fit_keyframes(fields, times, positions, meta_size)
        f.seek(_TAG_START + flv.TAG_HEADER_SIZE)
        f.write(body)
    return f"{size} bytes, {end_ms / 1000:.3f} s, {len(times)} keyframes"


def _read_metadata(body: bytes) -> dict[str, object]:
    try:
        decoder = amf0.Decoder(body)
        if decoder.decode() != "onMetaData":
            return {}
        value = decoder.decode()
    except ProtocolError:
        return {}
    return dict(value) if isinstance(value, dict) else {}


def _fit_keyframes(
    fields: dict[str, object], times: list[float], positions: list[float], size: int
) -> bytes:
    """Encode ``fields`` with as much of the keyframe index as fits ``size``."""
    step = 1
    while True:
        fields["keyframes"] = {"times": times[::step], "filepositions": positions[::step]}
        try:
            return metadata_body(fields, size)
        except ValueError:
            if len(times[::step]) <= 1:
                fields.pop("keyframes")
                return metadata_body(fields, size)
            step *= 2


class FlvFile(DiskFiles):
    """The disk half: one open ``index.flv``. Writer thread only."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.path = os.path.join(directory, FILE_NAME)
        self.file: Any = None
        #: Bytes in the file, all of them whole tags between writes.
        self.size = 0

    def open(self, start: bytes) -> None:
        os.makedirs(self.directory, exist_ok=True)
        move_aside(self.path, "index", ".flv")
        write_marker(self.directory, "flv")
        self.file = create_new(self.path, buffering=0)  # closed in finish
        self._write(start)

    def append(self, chunks: list[bytes]) -> None:
        """Write whole tags. When the disk refuses them (full, an I/O
        error), the file is cut back to the last whole tag and finalised
        before the error goes on to fail the recording: what was recorded
        stays a valid, seekable FLV (a half-written tag used to be left at
        its end, and the marker for the next start's recovery)."""
        data = b"".join(chunks)
        good = self.size
        try:
            self._write(data)
        except OSError:
            with contextlib.suppress(OSError):
                self.file.truncate(good)
            with contextlib.suppress(OSError, ValueError):
                self.finish()
            raise

    def _write(self, data: bytes) -> None:
        # Unbuffered writes can be short (a disk filling up): write the rest,
        # so the next write's error comes before anything lands out of place.
        view = memoryview(data)
        while view:
            written = self.file.write(view)
            view = view[written:]
            self.size += written

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
        super().release()

    def finish(self) -> str:
        self.file.close()
        summary = finalize_flv(self.path)
        remove_marker(self.directory)
        return summary

    def salvage(self) -> str | None:
        if not os.path.exists(os.path.join(self.directory, MARKER_NAME)):
            return None  # finalised already, when its write failed
        summary = finalize_flv(self.path)
        remove_marker(self.directory)
        return summary


class FlvRecording(Recording):
    """The reactor half: FLV tags, batched."""

    fmt = "flv"
    codec_only = False

    def open(self) -> None:
        self.disk = self.file = FlvFile(self.directory)
        start = placeholder(
            metadata_fields(self.metadata), has_audio=self.has_audio, has_video=self.has_video
        )
        self._chunks: list[bytes] = []
        self._size = 0
        self._flushed_ms = 0
        self.submit(lambda: self.file.open(start))

    def write_header(self, frame: Frame) -> None:
        ts = frame.timestamp_ms - self.base_ms
        self._append(frame.kind, ts if ts > 0 else 0, frame.payload)

    def write_media(self, frame: Frame, ts_ms: int) -> None:
        self._append(frame.kind, ts_ms, frame.payload)
        self.frames_written += 1
        if ts_ms - self._flushed_ms >= FLUSH_INTERVAL_MS or self._size >= FLUSH_BYTES:
            self._flushed_ms = ts_ms
            self._flush()

    def _append(self, kind: FrameKind, ts_ms: int, payload: bytes) -> None:
        try:
            tag = flv.encode_tag(kind, ts_ms, payload)
        except ProtocolError:
            return
        self._chunks.append(tag)
        self._size += len(tag)

    def _flush(self) -> None:
        if self._chunks:
            chunks, size = self._chunks, self._size
            self._chunks, self._size = [], 0
            file = self.file
            self.submit(lambda: file.append(chunks), size=size, quiet=True)

    def close(self) -> defer.Deferred[Any] | None:
        self._flush()
        return self.submit(self.file.finish)


class FlvRecorder(Recorder):
    """``--record flv``."""

    recording_class = FlvRecording
