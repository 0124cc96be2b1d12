"""MPEG-2 Transport Stream (ISO/IEC 13818-1) muxer for HLS, and a reader for checks.

Pure: bytes in, bytes out. :class:`TsMuxer` turns FLV-style samples (AVC in
AVCC form, raw AAC) into 188-byte TS packets; :class:`TsReader` parses TS
back into PES packets, for tests and for checking recordings.

Output layout of one segment::

    PAT (PID 0)            program 1 -> PMT PID
    PMT (pmt_pid)          PCR PID, [0x1B H.264 video_pid], [0x0F AAC-ADTS audio_pid]
    PES video (video_pid)  first packet: adaptation field with PCR (+ random_access on IDR)
                           payload: AUD, [SPS, PPS on IDR], NAL units in Annex B
    PES audio (audio_pid)  one ADTS frame per AAC frame (several if batching is on)
    ...                    PAT + PMT again before every keyframe

Timestamps: all input timestamps are in milliseconds on one clock (FLV's).
The first sample written, of either track, is placed at
:data:`TIMESTAMP_BASE_90K` (1 s at 90 kHz); every later sample of both
tracks keeps its published offset from it, so audio and video start exactly
as far apart as the publisher sent them. Values wrap at 33 bits.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from rtmpd.codec import aac, avc, flv
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.sentinel import NEED_DATA as NEED_DATA
from rtmpd.codec.sentinel import NeedData as NeedData

# --------------------------------------------------------------------------- constants

TS_PACKET_SIZE = 188
SYNC_BYTE = 0x47
_TS_HEADER_SIZE = 4
_TS_PAYLOAD_SIZE = TS_PACKET_SIZE - _TS_HEADER_SIZE  # 184

PAT_PID = 0x0000
NULL_PID = 0x1FFF
_MIN_ES_PID = 0x0010  # 0x0000..0x000F are reserved for PAT, CAT, TSDT, ...
_MAX_ES_PID = 0x1FFE

TABLE_ID_PAT = 0x00
TABLE_ID_PMT = 0x02

STREAM_TYPE_AAC_ADTS = 0x0F  # ISO/IEC 13818-7 Audio with ADTS transport syntax
STREAM_TYPE_H264 = 0x1B  # AVC video stream (ITU-T H.264)
STREAM_TYPE_HEVC = 0x24  # HEVC video stream (ITU-T H.265); read only, not muxed

STREAM_ID_AUDIO = 0xC0  # first MPEG audio stream id
STREAM_ID_VIDEO = 0xE0  # first MPEG video stream id

PROGRAM_NUMBER = 1
TRANSPORT_STREAM_ID = 1

#: The FLV codec ids (CodecID / SoundFormat, or an Enhanced RTMP FourCC as an int)
#: :class:`TsMuxer` writes. Opus can only travel in TS as a private stream (PES with an
#: ``Opus`` registration descriptor) that few HLS players read, so it is not muxed here.
MUXED_VIDEO_CODECS = frozenset({flv.VIDEO_AVC})
MUXED_AUDIO_CODECS = frozenset({flv.AUDIO_AAC})


def carries(*, video_codec: int | None, audio_codec: int | None) -> bool:
    """Whether :class:`TsMuxer` can carry a stream of these codecs (None: no such track).

    HLS writes a stream it cannot carry as fMP4 segments instead.
    """
    return (video_codec is None or video_codec in MUXED_VIDEO_CODECS) and (
        audio_codec is None or audio_codec in MUXED_AUDIO_CODECS
    )

CLOCK_90K = 90  # 90 kHz ticks per millisecond
PCR_TICKS_PER_90K = 300  # the 27 MHz PCR extension counts 0..299 per 90 kHz tick
MASK_33 = (1 << 33) - 1  # PTS, DTS and PCR base are 33-bit counters

#: Where the first sample of the stream lands on the 90 kHz clock: 1 s.
#: Non-zero so the PCR, which runs a little behind the DTS, starts positive.
TIMESTAMP_BASE_90K = 90_000

#: The PCR is sent this far behind the DTS of the PES that carries it, so a
#: decoder has the access unit in its buffer before it is due (T-STD).
PCR_DELAY_90K = 100 * CLOCK_90K

#: Access unit delimiter, primary_pic_type 7 (any slice type).
AUD_NAL = b"\x00\x00\x00\x01\x09\xf0"

#: Largest number of AAC frames batched into one audio PES.
MAX_AUDIO_FRAMES_PER_PES = 16

# Reader limits.

#: Largest PES we reassemble. A 4K IDR frame at a high bitrate is a few MB;
#: anything past this is garbage or an attack on our memory.
MAX_PES_SIZE = 16 * 1024 * 1024

#: ISO 13818-1 2.4.4.3/2.4.4.8: section_length of PAT and PMT "shall not
#: exceed 1021", so a whole section is at most 3 + 1021 bytes.
MAX_SECTION_LENGTH = 1021

#: Elementary streams we track per reader: one PMT entry is 5 bytes, so a
#: single section cannot describe more than about 200; this bounds the
#: per-PID state even across many PMTs.
MAX_TRACKED_PIDS = 256

_PES_HEADER_FIXED = 6  # packet_start_code_prefix(24) stream_id(8) PES_packet_length(16)
_MAX_PES_PACKET_LENGTH = 0xFFFF

# Stream ids without the optional PES header (13818-1 table 2-21 conditions).
_PES_NO_OPTIONAL_HEADER = frozenset((0xBC, 0xBE, 0xBF, 0xF0, 0xF1, 0xF2, 0xF8, 0xFF))


# --------------------------------------------------------------------------- CRC


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 of ``data`` (ISO 13818-1 Annex A).

    Polynomial 0x04C11DB7, initial value 0xFFFFFFFF, MSB first, no final
    XOR. A section followed by its own CRC gives 0.
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc


# --------------------------------------------------------------------------- encoders


def encode_pat(*, pmt_pid: int, version: int = 0) -> bytes:
    """program_association_section for program 1 (without pointer_field)."""
    body = bytes(
        (
            TRANSPORT_STREAM_ID >> 8,
            TRANSPORT_STREAM_ID & 0xFF,
            0xC1 | (version & 0x1F) << 1,  # reserved '11', version, current_next_indicator
            0x00,  # section_number
            0x00,  # last_section_number
            PROGRAM_NUMBER >> 8,
            PROGRAM_NUMBER & 0xFF,
            0xE0 | pmt_pid >> 8,  # reserved '111', program_map_PID
            pmt_pid & 0xFF,
        )
    )
    return _section(TABLE_ID_PAT, body)


def encode_pmt(*, pcr_pid: int, streams: list[tuple[int, int]], version: int = 0) -> bytes:
    """TS_program_map_section for program 1 (without pointer_field).

    ``streams`` lists ``(stream_type, elementary_PID)``; no descriptors.
    """
    body = bytearray(
        (
            PROGRAM_NUMBER >> 8,
            PROGRAM_NUMBER & 0xFF,
            0xC1 | (version & 0x1F) << 1,
            0x00,
            0x00,
            0xE0 | pcr_pid >> 8,  # reserved '111', PCR_PID
            pcr_pid & 0xFF,
            0xF0,  # reserved '1111', program_info_length = 0
            0x00,
        )
    )
    for stream_type, pid in streams:
        body += bytes((stream_type, 0xE0 | pid >> 8, pid & 0xFF, 0xF0, 0x00))
    return _section(TABLE_ID_PMT, bytes(body))


def _section(table_id: int, body: bytes) -> bytes:
    section_length = len(body) + 4  # + CRC_32
    head = bytes((table_id, 0xB0 | section_length >> 8, section_length & 0xFF))
    # section_syntax_indicator '1', '0', reserved '11', section_length(12)
    data = head + body
    return data + crc32_mpeg2(data).to_bytes(4, "big")


def encode_timestamp(prefix: int, ticks_90k: int) -> bytes:
    """The 5-byte PTS or DTS field: prefix(4) ts[32..30] 1 ts[29..15] 1 ts[14..0] 1."""
    ts = ticks_90k & MASK_33
    return bytes(
        (
            prefix << 4 | (ts >> 29) & 0x0E | 1,
            (ts >> 22) & 0xFF,
            (ts >> 14) & 0xFE | 1,
            (ts >> 7) & 0xFF,
            (ts << 1) & 0xFE | 1,
        )
    )


def encode_pes_header(
    *, stream_id: int, pts_90k: int, dts_90k: int | None, payload_size: int | None
) -> bytes:
    """PES header with PTS (and DTS if given and different from PTS).

    ``payload_size`` None writes PES_packet_length 0 ("unbounded"), which
    13818-1 allows only for video in a transport stream.
    """
    if dts_90k is not None and (dts_90k & MASK_33) == (pts_90k & MASK_33):
        dts_90k = None
    if dts_90k is None:
        optional = b"\x84\x80\x05" + encode_timestamp(0b0010, pts_90k)
    else:
        optional = (
            b"\x84\xc0\x0a" + encode_timestamp(0b0011, pts_90k) + encode_timestamp(0b0001, dts_90k)
        )
    # '10' scrambling 00 priority 0 data_alignment_indicator 1 copyright 0 original 0;
    # PTS_DTS_flags, no other flags; PES_header_data_length.
    if payload_size is None:
        length = 0
    else:
        length = len(optional) + payload_size
        if length > _MAX_PES_PACKET_LENGTH:
            raise LocalProtocolError(
                f"PES packet of {length} bytes exceeds PES_packet_length limit "
                f"({_MAX_PES_PACKET_LENGTH})"
            )
    return b"\x00\x00\x01" + bytes((stream_id, length >> 8, length & 0xFF)) + optional


def encode_adaptation_field(
    *, size: int, pcr_27m: int | None = None, random_access: bool = False
) -> bytes:
    """An adaptation field of exactly ``size`` bytes (length byte included).

    Size 1 is the bare ``adaptation_field_length = 0`` (one stuffing byte);
    otherwise flags, optional PCR, then 0xFF stuffing.
    """
    needed = (
        1 + (1 if (pcr_27m is not None or random_access) else 0) + (6 if pcr_27m is not None else 0)
    )
    if size < needed or size > _TS_PAYLOAD_SIZE:
        raise LocalProtocolError(f"adaptation field of {size} bytes cannot hold {needed} bytes")
    if size == 1:
        return b"\x00"
    flags = (0x40 if random_access else 0) | (0x10 if pcr_27m is not None else 0)
    out = bytearray((size - 1, flags))
    if pcr_27m is not None:
        base = (pcr_27m // PCR_TICKS_PER_90K) & MASK_33
        ext = pcr_27m % PCR_TICKS_PER_90K
        value = base << 15 | 0x3F << 9 | ext  # base(33) reserved '111111' extension(9)
        out += value.to_bytes(6, "big")
    out += b"\xff" * (size - len(out))
    return bytes(out)


#: Full packets whose payloads one cached :class:`struct.Struct` cuts out of a
#: PES at once: a struct per count up to this (65 of them, about 80 KB in all),
#: and a PES of any size takes as many calls as it has 64-packet runs (11.8 KB).
_PAYLOADS_PER_UNPACK = 64
_PAYLOAD_STRUCTS = tuple(
    struct.Struct(f"{_TS_PAYLOAD_SIZE}s" * n) for n in range(_PAYLOADS_PER_UNPACK + 1)
)
#: The last header byte of a payload-only packet (adaptation_field_control '01'
#: and continuity_counter), for counters 0..15 twice: any 16 in a row are one slice.
_CC_CYCLE = bytes(0x10 | (cc & 0x0F) for cc in range(32))


def _full_payloads(data: bytes, pos: int, count: int) -> list[bytes]:
    """``count`` consecutive 184-byte payloads of ``data`` from ``pos``."""
    payloads: list[bytes] = []
    while count:
        n = min(count, _PAYLOADS_PER_UNPACK)
        payloads += _PAYLOAD_STRUCTS[n].unpack_from(data, pos)
        pos += n * _TS_PAYLOAD_SIZE
        count -= n
    return payloads


def packetize(
    pid: int,
    data: bytes,
    counters: dict[int, int],
    *,
    pcr_27m: int | None = None,
    random_access: bool = False,
) -> bytes:
    """Split one PES (or pointer_field + PSI section) into TS packets.

    The first packet has payload_unit_start_indicator set and carries the
    PCR / random_access_indicator if given; the last one is filled with
    adaptation-field stuffing. ``counters`` maps PID to the last
    continuity_counter used and is updated.

    This runs for every byte of recorded HLS, so it does no Python work per
    packet: the payloads after the first packet are cut out 64 at a time by
    a cached :class:`struct.Struct`, joined with one payload-only header
    between them, and then every following header's continuity_counter (and
    the last packet's adaptation_field_control) is written by one stepped
    slice assignment.
    """
    cc = (counters.get(pid, 0x0F) + 1) & 0x0F
    if pcr_27m is not None:
        room = _TS_PAYLOAD_SIZE - 8
    elif random_access:
        room = _TS_PAYLOAD_SIZE - 2
    else:
        room = _TS_PAYLOAD_SIZE
    total = len(data)
    # First packet (payload_unit_start_indicator set).
    pos = min(room, total)
    af_size = _TS_PAYLOAD_SIZE - pos
    if af_size:
        first = (
            bytes((SYNC_BYTE, 0x40 | pid >> 8, pid & 0xFF, 0x30 | cc))
            + encode_adaptation_field(size=af_size, pcr_27m=pcr_27m, random_access=random_access)
            + data[:pos]
        )
    else:
        first = bytes((SYNC_BYTE, 0x40 | pid >> 8, pid & 0xFF, 0x10 | cc)) + data[:pos]
    if pos == total:
        counters[pid] = cc
        return first
    # Full packets in the middle, then the last, partly filled one padded
    # with adaptation-field stuffing.
    full = (total - pos) // _TS_PAYLOAD_SIZE
    full_end = pos + full * _TS_PAYLOAD_SIZE
    parts = [first]
    parts += _full_payloads(data, pos, full)
    following = full
    if full_end < total:
        rest = data[full_end:]
        parts.append(encode_adaptation_field(size=_TS_PAYLOAD_SIZE - len(rest)) + rest)
        following += 1
    out = bytearray(bytes((SYNC_BYTE, pid >> 8, pid & 0xFF, 0x10)).join(parts))
    # Byte 3 of each following packet: continuity counters cc+1, cc+2, ...
    start = (cc + 1) & 0x0F
    counter_bytes = bytearray(_CC_CYCLE[start : start + 16] * (following // 16 + 1))
    del counter_bytes[following:]
    if full_end < total:
        counter_bytes[-1] |= 0x20  # adaptation_field_control '11': stuffing, then payload
    out[TS_PACKET_SIZE + 3 :: TS_PACKET_SIZE] = counter_bytes
    counters[pid] = (cc + following) & 0x0F
    return bytes(out)


# --------------------------------------------------------------------------- muxer


class TsMuxer:
    """Turns AVC (AVCC) and AAC (raw) samples into TS packets for HLS.

    Call :meth:`start_segment` at the start of each segment file, then
    :meth:`write_video` / :meth:`write_audio` in decode order; each returns
    whole 188-byte packets to append to the current segment. Continuity
    counters and the timestamp offset carry across segments, so segments
    play back to back.

    ``audio_frames_per_pes`` > 1 batches that many AAC frames per PES
    (less overhead, coarser interleaving); pending frames go out when the
    batch is full, on :meth:`flush` and on :meth:`start_segment`. Call
    :meth:`flush` before closing a segment so its audio stays in it.
    """

    def __init__(
        self,
        *,
        has_audio: bool,
        has_video: bool,
        video_pid: int = 0x100,
        audio_pid: int = 0x101,
        pmt_pid: int = 0x1000,
        audio_frames_per_pes: int = 1,
    ) -> None:
        if not (has_audio or has_video):
            raise LocalProtocolError("TsMuxer needs audio, video or both")
        for name, pid in (("video_pid", video_pid), ("audio_pid", audio_pid), ("pmt_pid", pmt_pid)):
            if not _MIN_ES_PID <= pid <= _MAX_ES_PID:
                raise LocalProtocolError(
                    f"{name} 0x{pid:04X} is outside 0x{_MIN_ES_PID:04X}..0x{_MAX_ES_PID:04X}"
                )
        if len({video_pid, audio_pid, pmt_pid}) != 3:
            raise LocalProtocolError("video_pid, audio_pid and pmt_pid must differ")
        if not 1 <= audio_frames_per_pes <= MAX_AUDIO_FRAMES_PER_PES:
            raise LocalProtocolError(
                f"audio_frames_per_pes {audio_frames_per_pes} is outside "
                f"1..{MAX_AUDIO_FRAMES_PER_PES}"
            )
        self.has_audio = has_audio
        self.has_video = has_video
        self.video_pid = video_pid
        self.audio_pid = audio_pid
        self.pmt_pid = pmt_pid
        self.pcr_pid = video_pid if has_video else audio_pid
        self._audio_frames_per_pes = audio_frames_per_pes
        streams = []
        if has_video:
            streams.append((STREAM_TYPE_H264, video_pid))
        if has_audio:
            streams.append((STREAM_TYPE_AAC_ADTS, audio_pid))
        # pointer_field + section, then 0xFF stuffing to fill the packet's payload
        # (13818-1 2.4.4: stuffing after a PSI section, as other muxers do).
        self._pat = (b"\x00" + encode_pat(pmt_pid=pmt_pid)).ljust(_TS_PAYLOAD_SIZE, b"\xff")
        self._pmt = (b"\x00" + encode_pmt(pcr_pid=self.pcr_pid, streams=streams)).ljust(
            _TS_PAYLOAD_SIZE, b"\xff"
        )
        self._counters: dict[int, int] = {}
        self._offset_90k: int | None = None
        self._tables_last = False  # the last packets emitted were PAT + PMT
        self._audio_pending: list[bytes] = []
        self._audio_pending_size = 0  # bytes in _audio_pending
        self._audio_pending_pts = 0

    @property
    def offset_90k(self) -> int | None:
        """Added to ``ms * 90`` to get a PTS/DTS; None until the first sample."""
        return self._offset_90k

    def to_90k(self, timestamp_ms: int) -> int:
        """The 33-bit 90 kHz value of a millisecond timestamp (fixes the offset on first use)."""
        if self._offset_90k is None:
            self._offset_90k = TIMESTAMP_BASE_90K - timestamp_ms * CLOCK_90K
        return (timestamp_ms * CLOCK_90K + self._offset_90k) & MASK_33

    def start_segment(self) -> bytes:
        """Pending audio, then PAT + PMT: the first bytes of a new segment."""
        return self.flush() + self._tables()

    def flush(self) -> bytes:
        """Batched audio frames not yet written, as one PES (or b"")."""
        if not self._audio_pending:
            return b""
        header = encode_pes_header(
            stream_id=STREAM_ID_AUDIO,
            pts_90k=self._audio_pending_pts,
            dts_90k=None,
            payload_size=self._audio_pending_size,
        )
        pes = b"".join((header, *self._audio_pending))
        self._audio_pending = []
        self._audio_pending_size = 0
        audio_only = not self.has_video
        pcr = None
        if audio_only:
            pcr = ((self._audio_pending_pts - PCR_DELAY_90K) & MASK_33) * PCR_TICKS_PER_90K
        self._tables_last = False
        return packetize(
            self.audio_pid,
            pes,
            self._counters,
            pcr_27m=pcr,
            random_access=audio_only,
        )

    def write_video(
        self,
        *,
        dts_ms: int,
        cts_ms: int,
        keyframe: bool,
        avcc_payload: bytes,
        config: avc.AVCDecoderConfigurationRecord,
    ) -> bytes:
        """TS packets for one H.264 access unit.

        ``avcc_payload`` holds the NAL units with ``config``'s length
        prefixes (an FLV AVC NALU tag body after its 5-byte header).
        ``cts_ms`` is the composition offset: PTS = DTS + CTS. A keyframe
        is preceded by PAT + PMT and, unless the access unit already has
        them, gets ``config``'s SPS and PPS. Raises
        :class:`RemoteProtocolError` for a malformed payload.
        """
        if not self.has_video:
            raise LocalProtocolError("write_video on a TsMuxer without video")
        nals = [
            nal
            for nal in avc.split_length_prefixed(avcc_payload, config.length_size)
            if nal and nal[0] & 0x1F != avc.NAL_AUD
        ]
        types = {nal[0] & 0x1F for nal in nals}
        if (keyframe or avc.NAL_IDR in types) and avc.NAL_SPS not in types:
            nals = [*config.sps, *config.pps, *nals]
        dts = self.to_90k(dts_ms)
        pts = self.to_90k(dts_ms + cts_ms)
        out = self._tables() if keyframe else b""
        header = encode_pes_header(
            stream_id=STREAM_ID_VIDEO, pts_90k=pts, dts_90k=dts, payload_size=None
        )
        # PES header, then the access unit in Annex B: AUD, then each NAL
        # unit after a start code; joined once.
        parts = [header, AUD_NAL]
        for nal in nals:
            parts.append(avc.START_CODE)
            parts.append(nal)
        self._tables_last = False
        return out + packetize(
            self.video_pid,
            b"".join(parts),
            self._counters,
            pcr_27m=((dts - PCR_DELAY_90K) & MASK_33) * PCR_TICKS_PER_90K,
            random_access=keyframe,
        )

    def write_audio(self, *, dts_ms: int, aac_raw: bytes, asc: aac.AudioSpecificConfig) -> bytes:
        """TS packets for one raw AAC frame, wrapped in an ADTS header.

        With batching on, this may return b"" and emit the frame later.
        """
        if not self.has_audio:
            raise LocalProtocolError("write_audio on a TsMuxer without audio")
        header = aac.adts_header(asc, len(aac_raw))
        size = len(header) + len(aac_raw)
        out = b""
        if self._audio_pending_size + size + 13 > _MAX_PES_PACKET_LENGTH:
            out = self.flush()
        pts = self.to_90k(dts_ms)
        pending = self._audio_pending
        if not pending:
            self._audio_pending_pts = pts
        pending.append(header)
        pending.append(aac_raw)
        self._audio_pending_size += size
        if len(pending) >= 2 * self._audio_frames_per_pes:  # ADTS header + frame each
            out += self.flush()
        return out

    def _tables(self) -> bytes:
        if self._tables_last:
            return b""
        self._tables_last = True
        return packetize(PAT_PID, self._pat, self._counters) + packetize(
            self.pmt_pid, self._pmt, self._counters
        )


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True, slots=True, kw_only=True)
class PesPacket:
    """One reassembled PES packet.

    ``pts`` / ``dts`` are 90 kHz ticks (``dts`` equals ``pts`` when the
    header has no DTS; both None if absent). ``pcr_27m`` and
    ``random_access`` come from the adaptation field of the PES's first TS
    packet. ``payload`` is the elementary-stream data.
    """

    pid: int
    stream_type: int
    stream_id: int
    pts: int | None
    dts: int | None
    payload: bytes
    random_access: bool = False
    pcr_27m: int | None = None


class _PesAssembly:
    __slots__ = ("data", "pcr_27m", "random_access")

    def __init__(self, data: bytes, pcr_27m: int | None, random_access: bool) -> None:
        self.data = bytearray(data)
        self.pcr_27m = pcr_27m
        self.random_access = random_access


class TsReader:
    """Incremental TS demuxer: PAT, PMT, and PES reassembly per PID.

    Feed bytes with :meth:`receive_data` (``b""`` means EOF) and call
    :meth:`next_event` until it returns :data:`NEED_DATA`. A PES of
    unbounded length (video) completes when the next one on its PID starts,
    or at EOF. Packets on PIDs not announced in a PMT are skipped.

    Raises :class:`RemoteProtocolError` for lost sync, bad adaptation
    fields, PSI with a bad CRC or length, malformed PES headers, sizes over
    the module limits, and EOF inside a packet or a PES of declared length.
    Continuity-counter gaps are not errors: they are counted in
    :attr:`continuity_errors` (the data is kept).
    """

    def __init__(self, *, max_pes_size: int = MAX_PES_SIZE) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._eof = False
        self._max_pes_size = max_pes_size
        self._events: deque[PesPacket] = deque()
        self._error: RemoteProtocolError | None = None
        self._pmt_pids: set[int] = set()
        self._sections: dict[int, bytearray] = {}
        self._last_cc: dict[int, int] = {}
        self._pes: dict[int, _PesAssembly] = {}
        #: elementary PID -> stream_type, from the PMTs seen so far.
        self.stream_types: dict[int, int] = {}
        #: PCR PID of the last PMT, or None.
        self.pcr_pid: int | None = None
        #: Number of payload packets whose continuity_counter skipped.
        self.continuity_errors = 0
        #: Number of TS packets read.
        self.packets = 0

    def receive_data(self, data: bytes) -> None:
        """Append received bytes; ``b""`` signals EOF."""
        if self._eof:
            if data:
                raise LocalProtocolError("TS data received after EOF")
            return
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> PesPacket | NeedData:
        """The next complete PES packet, or :data:`NEED_DATA`.

        Once this raised :class:`RemoteProtocolError`, every later call
        raises it again.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> PesPacket | NeedData:
        while not self._events:
            if len(self._buffer) - self._pos >= TS_PACKET_SIZE:
                packet = bytes(self._buffer[self._pos : self._pos + TS_PACKET_SIZE])
                self._pos += TS_PACKET_SIZE
                if self._pos > 65536 and self._pos * 2 > len(self._buffer):
                    del self._buffer[: self._pos]
                    self._pos = 0
                self._read_packet(packet)
                continue
            if not self._eof:
                return NEED_DATA
            left = len(self._buffer) - self._pos
            if left:
                raise RemoteProtocolError(
                    f"truncated TS packet: EOF after {left} of {TS_PACKET_SIZE} bytes"
                )
            if not self._pes:
                return NEED_DATA
            pid = next(iter(self._pes))
            self._finish_pes(pid, self._pes.pop(pid), at_eof=True)
        return self._events.popleft()

    # -- packets

    def _read_packet(self, packet: bytes) -> None:
        if packet[0] != SYNC_BYTE:
            raise RemoteProtocolError(
                f"lost TS sync: packet starts with 0x{packet[0]:02X}, expected 0x47"
            )
        self.packets += 1
        if packet[1] & 0x80:
            raise RemoteProtocolError("TS packet with transport_error_indicator set")
        pusi = bool(packet[1] & 0x40)
        pid = (packet[1] & 0x1F) << 8 | packet[2]
        afc = (packet[3] >> 4) & 0x03
        cc = packet[3] & 0x0F
        if pid == NULL_PID:
            return
        if afc == 0:
            raise RemoteProtocolError(
                f"TS packet on PID 0x{pid:04X} has reserved adaptation_field_control 0"
            )
        pos = _TS_HEADER_SIZE
        discontinuity = False
        random_access = False
        pcr: int | None = None
        if afc & 0x02:
            af_len = packet[4]
            limit = 183 if afc == 0x02 else 182
            if af_len > limit:
                raise RemoteProtocolError(
                    f"adaptation_field_length {af_len} exceeds {limit} on PID 0x{pid:04X}"
                )
            if af_len:
                flags = packet[5]
                discontinuity = bool(flags & 0x80)
                random_access = bool(flags & 0x40)
                if flags & 0x10:
                    if af_len < 7:
                        raise RemoteProtocolError(
                            f"adaptation field of {af_len} bytes cannot hold its PCR"
                        )
                    value = int.from_bytes(packet[6:12], "big")
                    pcr = (value >> 15) * PCR_TICKS_PER_90K + (value & 0x1FF)
            pos = 5 + af_len
        if not afc & 0x01:
            return
        last = self._last_cc.get(pid)
        if last is not None and not discontinuity and cc != (last + 1) & 0x0F:
            self.continuity_errors += 1
        self._last_cc[pid] = cc
        payload = packet[pos:]
        if pid == PAT_PID or pid in self._pmt_pids:
            self._read_psi(pid, pusi, payload)
        elif pid in self.stream_types:
            self._read_pes_payload(pid, pusi, payload, pcr, random_access)

    # -- PSI

    def _read_psi(self, pid: int, pusi: bool, payload: bytes) -> None:
        tail = self._sections.pop(pid, None)
        if pusi:
            pointer = payload[0]
            if 1 + pointer > len(payload):
                raise RemoteProtocolError(f"pointer_field {pointer} runs past the TS packet")
            if tail is not None:
                # Bytes before the pointed-to start end the previous section; if
                # that is still incomplete, it was cut short and is dropped.
                self._read_sections(pid, tail + payload[1 : 1 + pointer])
            rest = self._read_sections(pid, bytearray(payload[1 + pointer :]))
        elif tail is not None:
            rest = self._read_sections(pid, tail + payload)
        else:
            return  # joined in the middle of a section
        if rest:
            self._sections[pid] = rest

    def _read_sections(self, pid: int, buf: bytearray) -> bytearray:
        """Read the complete sections in ``buf``; return an incomplete last one."""
        while buf and buf[0] != 0xFF:  # 0xFF: stuffing after the last section
            if len(buf) < 3:
                return buf
            section_length = (buf[1] & 0x0F) << 8 | buf[2]
            if section_length > MAX_SECTION_LENGTH:
                raise RemoteProtocolError(
                    f"PSI section_length {section_length} exceeds MAX_SECTION_LENGTH "
                    f"({MAX_SECTION_LENGTH})"
                )
            if len(buf) < 3 + section_length:
                return buf
            section = bytes(buf[: 3 + section_length])
            del buf[: 3 + section_length]
            self._read_section(pid, section)
        return bytearray()

    def _read_section(self, pid: int, section: bytes) -> None:
        if len(section) < 12:
            raise RemoteProtocolError(f"PSI section of {len(section)} bytes is too short (12)")
        if crc32_mpeg2(section) != 0:
            raise RemoteProtocolError(f"PSI section on PID 0x{pid:04X} fails its CRC_32")
        table_id = section[0]
        if not section[1] & 0x80:
            raise RemoteProtocolError(
                f"PSI table 0x{table_id:02X} without section_syntax_indicator"
            )
        if not section[5] & 0x01:  # current_next_indicator 0: not yet applicable
            return
        body = section[8:-4]
        if pid == PAT_PID:
            if table_id != TABLE_ID_PAT:
                raise RemoteProtocolError(f"table_id 0x{table_id:02X} on the PAT PID")
            if len(body) % 4:
                raise RemoteProtocolError(f"PAT loop of {len(body)} bytes is not 4-byte entries")
            for i in range(0, len(body), 4):
                program_number = body[i] << 8 | body[i + 1]
                if program_number:  # program 0 names the network PID
                    self._pmt_pids.add((body[i + 2] & 0x1F) << 8 | body[i + 3])
            if len(self._pmt_pids) > MAX_TRACKED_PIDS:
                raise RemoteProtocolError(
                    f"PAT lists {len(self._pmt_pids)} PMTs, over MAX_TRACKED_PIDS "
                    f"({MAX_TRACKED_PIDS})"
                )
            return
        if table_id != TABLE_ID_PMT:
            return  # another table sharing the PMT PID
        if len(body) < 4:
            raise RemoteProtocolError(f"PMT body of {len(body)} bytes is too short (4)")
        self.pcr_pid = (body[0] & 0x1F) << 8 | body[1]
        program_info_length = (body[2] & 0x0F) << 8 | body[3]
        pos = 4 + program_info_length
        if pos > len(body):
            raise RemoteProtocolError(
                f"program_info_length {program_info_length} runs past the PMT section"
            )
        while pos < len(body):
            if pos + 5 > len(body):
                raise RemoteProtocolError("truncated PMT elementary stream entry")
            stream_type = body[pos]
            es_pid = (body[pos + 1] & 0x1F) << 8 | body[pos + 2]
            es_info_length = (body[pos + 3] & 0x0F) << 8 | body[pos + 4]
            pos += 5 + es_info_length
            if pos > len(body):
                raise RemoteProtocolError(
                    f"ES_info_length {es_info_length} runs past the PMT section"
                )
            self.stream_types[es_pid] = stream_type
        if len(self.stream_types) > MAX_TRACKED_PIDS:
            raise RemoteProtocolError(
                f"PMTs list {len(self.stream_types)} streams, over MAX_TRACKED_PIDS "
                f"({MAX_TRACKED_PIDS})"
            )

    # -- PES

    def _read_pes_payload(
        self, pid: int, pusi: bool, payload: bytes, pcr: int | None, random_access: bool
    ) -> None:
        if pusi:
            previous = self._pes.pop(pid, None)
            if previous is not None:
                self._finish_pes(pid, previous, at_eof=False)
            assembly = _PesAssembly(payload, pcr, random_access)
            self._pes[pid] = assembly
        else:
            found = self._pes.get(pid)
            if found is None:
                return  # joined mid-PES: skip to the next start
            assembly = found
            assembly.data += payload
        data = assembly.data
        if len(data) > self._max_pes_size:
            raise RemoteProtocolError(
                f"PES on PID 0x{pid:04X} of over {len(data)} bytes exceeds MAX_PES_SIZE "
                f"({self._max_pes_size})"
            )
        if len(data) >= _PES_HEADER_FIXED:
            length = data[4] << 8 | data[5]
            if length and len(data) >= _PES_HEADER_FIXED + length:
                del self._pes[pid]
                self._finish_pes(pid, assembly, at_eof=False)

    def _finish_pes(self, pid: int, assembly: _PesAssembly, *, at_eof: bool) -> None:
        data = bytes(assembly.data)
        if len(data) < _PES_HEADER_FIXED or data[:3] != b"\x00\x00\x01":
            raise RemoteProtocolError(
                f"PES on PID 0x{pid:04X} does not start with packet_start_code_prefix"
            )
        stream_id = data[3]
        length = data[4] << 8 | data[5]
        if length:
            end = _PES_HEADER_FIXED + length
            if len(data) < end:
                where = "EOF" if at_eof else "the next PES start"
                raise RemoteProtocolError(
                    f"truncated PES on PID 0x{pid:04X}: {where} after {len(data)} of {end} bytes"
                )
            data = data[:end]
        pts: int | None = None
        dts: int | None = None
        if stream_id in _PES_NO_OPTIONAL_HEADER:
            es = data[_PES_HEADER_FIXED:]
        else:
            if len(data) < 9:
                raise RemoteProtocolError(f"PES header on PID 0x{pid:04X} is truncated")
            if data[6] & 0xC0 != 0x80:
                raise RemoteProtocolError(
                    f"PES header on PID 0x{pid:04X} lacks the '10' marker bits"
                )
            flags = data[7] >> 6
            header_length = data[8]
            start = 9 + header_length
            if start > len(data):
                raise RemoteProtocolError(
                    f"PES_header_data_length {header_length} runs past the PES on PID 0x{pid:04X}"
                )
            if flags == 0b01:
                raise RemoteProtocolError("PES with PTS_DTS_flags '01' (forbidden)")
            need = 10 if flags == 0b11 else 5 if flags == 0b10 else 0
            if header_length < need:
                raise RemoteProtocolError(
                    f"PES_header_data_length {header_length} cannot hold {need} bytes of PTS/DTS"
                )
            if flags & 0b10:
                pts = _decode_timestamp(data[9:14])
                dts = _decode_timestamp(data[14:19]) if flags == 0b11 else pts
            es = data[start:]
        self._events.append(
            PesPacket(
                pid=pid,
                stream_type=self.stream_types[pid],
                stream_id=stream_id,
                pts=pts,
                dts=dts,
                payload=es,
                random_access=assembly.random_access,
                pcr_27m=assembly.pcr_27m,
            )
        )


def _decode_timestamp(field: bytes) -> int:
    return (
        (field[0] >> 1 & 0x07) << 30
        | field[1] << 22
        | (field[2] >> 1) << 15
        | field[3] << 7
        | field[4] >> 1
    )


def read_all(data: bytes) -> list[PesPacket]:
    """Every PES packet in a whole TS byte string (EOF at its end)."""
    reader = TsReader()
    reader.receive_data(data)
    reader.receive_data(b"")
    out: list[PesPacket] = []
    while True:
        event = reader.next_event()
        if isinstance(event, NeedData):
            return out
        out.append(event)
