"""Fragmented MP4 (ISO/IEC 14496-12 section 8.8): init segment and media fragments.

An init segment (``ftyp`` + ``moov`` with empty sample tables and ``mvex``) followed by any
number of fragments (``moof`` + ``mdat``) is a playable file, and each piece can be appended
to a browser ``SourceBuffer`` (Media Source Extensions). The same two functions serve a
"mixed" recording (audio and video tracks in one init segment and each fragment) and a
"separate" one (one track per init segment and per fragment).

The ``moov`` building blocks below (``write_ftyp``, ``write_mvhd``, ``write_trak``) are shared
with :mod:`rtmpd.codec.mp4.progressive`, which adds full sample tables and edit lists.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise

from rtmpd.codec import flac, opus, vp9
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.mp4 import EditListEntry, Sample, SampleTiming, TrackConfig
from rtmpd.codec.mp4.boxes import BoxWriter

__all__ = [
    "FMP4_BRANDS",
    "SAMPLE_FLAGS_NON_SYNC",
    "SAMPLE_FLAGS_SYNC",
    "TFHD_DEFAULT_BASE_IS_MOOF",
    "TRUN_DATA_OFFSET_PRESENT",
    "check_decode_order",
    "fragment",
    "init_segment",
    "sample_flags",
    "write_ftyp",
    "write_mvhd",
    "write_trak",
]

#: ``ftyp`` of the init segment: ``iso5`` (default-base-is-moof, tfdt), ``iso6`` (signed
#: ``trun`` composition offsets, version 1), ``mp41`` for older players.
FMP4_BRANDS = (b"iso5", b"iso6", b"mp41")

# tfhd flags (8.8.7.1)
TFHD_BASE_DATA_OFFSET_PRESENT = 0x000001
TFHD_SAMPLE_DESCRIPTION_INDEX_PRESENT = 0x000002
TFHD_DEFAULT_SAMPLE_DURATION_PRESENT = 0x000008
TFHD_DEFAULT_SAMPLE_SIZE_PRESENT = 0x000010
TFHD_DEFAULT_SAMPLE_FLAGS_PRESENT = 0x000020
TFHD_DURATION_IS_EMPTY = 0x010000
TFHD_DEFAULT_BASE_IS_MOOF = 0x020000

# trun flags (8.8.8.1)
TRUN_DATA_OFFSET_PRESENT = 0x000001
TRUN_FIRST_SAMPLE_FLAGS_PRESENT = 0x000004
TRUN_SAMPLE_DURATION_PRESENT = 0x000100
TRUN_SAMPLE_SIZE_PRESENT = 0x000200
TRUN_SAMPLE_FLAGS_PRESENT = 0x000400
TRUN_SAMPLE_COMPOSITION_TIME_OFFSETS_PRESENT = 0x000800

# sample flags (8.8.3.1): reserved(4) is_leading(2) sample_depends_on(2)
# sample_is_depended_on(2) sample_has_redundancy(2) sample_padding_value(3)
# sample_is_non_sync_sample(1) sample_degradation_priority(16)
SAMPLE_IS_NON_SYNC = 0x00010000
#: A sync sample: depends on no other sample (sample_depends_on = 2).
SAMPLE_FLAGS_SYNC = 0x02000000
#: A non-sync sample: depends on others (sample_depends_on = 1), sample_is_non_sync_sample.
SAMPLE_FLAGS_NON_SYNC = 0x01000000 | SAMPLE_IS_NON_SYNC

_IDENTITY_MATRIX = (0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_HANDLERS = {"video": (b"vide", b"VideoHandler"), "audio": (b"soun", b"SoundHandler")}
#: Video sample entry -> its configuration box, written as a plain box around
#: ``decoder_config`` (vp09's ``vpcC`` is a full box: see _video_config).
_CONFIG_BOX = {
    "avc1": b"avcC",
    "avc3": b"avcC",
    "hvc1": b"hvcC",
    "hev1": b"hvcC",
    "av01": b"av1C",
    "vp09": b"vpcC",
}

# ES descriptor tags (ISO/IEC 14496-1 section 7.2.2.1)
_ES_DESCR_TAG = 0x03
_DECODER_CONFIG_DESCR_TAG = 0x04
_DEC_SPECIFIC_INFO_TAG = 0x05
_SL_CONFIG_DESCR_TAG = 0x06
_OBJECT_TYPE_AAC = 0x40  # Audio ISO/IEC 14496-3
_STREAM_TYPE_AUDIO = 0x05


def sample_flags(keyframe: bool) -> int:
    """``trun``/``trex`` sample flags for a sync (key) or non-sync sample."""
    return SAMPLE_FLAGS_SYNC if keyframe else SAMPLE_FLAGS_NON_SYNC


def _fits_u32(*values: int) -> bool:
    return all(0 <= v <= 0xFFFFFFFF for v in values)


def write_ftyp(
    w: BoxWriter, major_brand: bytes, minor_version: int, brands: Sequence[bytes]
) -> None:
    """ftyp: major_brand, minor_version, compatible_brands[]."""
    with w.box(b"ftyp"):
        w.fourcc(major_brand)
        w.u32(minor_version)
        for brand in brands:
            w.fourcc(brand)


def write_mvhd(w: BoxWriter, *, timescale: int, duration: int, next_track_id: int) -> None:
    """mvhd (8.2.2): version 1 only when the duration needs 64 bits."""
    version = 0 if _fits_u32(duration) else 1
    with w.full_box(b"mvhd", version=version, flags=0):
        if version == 1:
            w.u64(0)  # creation_time
            w.u64(0)  # modification_time
            w.u32(timescale)
            w.u64(duration)
        else:
            w.u32(0)
            w.u32(0)
            w.u32(timescale)
            w.u32(duration)
        w.u32(0x00010000)  # rate 1.0
        w.u16(0x0100)  # volume 1.0
        w.zeros(2 + 8)  # reserved
        for value in _IDENTITY_MATRIX:
            w.u32(value)
        w.zeros(24)  # pre_defined
        w.u32(next_track_id)


def _write_tkhd(w: BoxWriter, track: TrackConfig, duration: int) -> None:
    version = 0 if _fits_u32(duration) else 1
    # flags: track_enabled | track_in_movie
    with w.full_box(b"tkhd", version=version, flags=0x000003):
        if version == 1:
            w.u64(0)
            w.u64(0)
            w.u32(track.track_id)
            w.u32(0)  # reserved
            w.u64(duration)
        else:
            w.u32(0)
            w.u32(0)
            w.u32(track.track_id)
            w.u32(0)
            w.u32(duration)
        w.zeros(8)  # reserved
        w.u16(0)  # layer
        w.u16(0)  # alternate_group
        w.u16(0x0100 if track.kind == "audio" else 0)  # volume
        w.u16(0)  # reserved
        for value in _IDENTITY_MATRIX:
            w.u32(value)
        w.u32(track.width << 16)  # 16.16 fixed point
        w.u32(track.height << 16)


def _write_elst(w: BoxWriter, edits: Sequence[EditListEntry]) -> None:
    version = 0
    for edit in edits:
        if not _fits_u32(edit.segment_duration) or not -(2**31) <= edit.media_time < 2**31:
            version = 1
    with w.full_box(b"elst", version=version, flags=0):
        w.u32(len(edits))
        for edit in edits:
            if version == 1:
                w.u64(edit.segment_duration)
                w.i64(edit.media_time)
            else:
                w.u32(edit.segment_duration)
                w.i32(edit.media_time)
            w.i16(edit.media_rate)
            w.i16(0)  # media_rate_fraction


def _write_mdhd(w: BoxWriter, track: TrackConfig, duration: int) -> None:
    version = 0 if _fits_u32(duration) else 1
    with w.full_box(b"mdhd", version=version, flags=0):
        if version == 1:
            w.u64(0)
            w.u64(0)
            w.u32(track.timescale)
            w.u64(duration)
        else:
            w.u32(0)
            w.u32(0)
            w.u32(track.timescale)
            w.u32(duration)
        # pad(1) language(15): three 5-bit letters, each 'a' - 1 based
        lang = 0
        for char in track.language:
            lang = (lang << 5) | (ord(char) - 0x60)
        w.u16(lang)
        w.u16(0)  # pre_defined


def _descriptor(tag: int, payload: bytes) -> bytes:
    """An MPEG-4 descriptor: tag(8), size as 7-bit groups with a continuation bit."""
    size = len(payload)
    groups = [size & 0x7F]
    size >>= 7
    while size:
        groups.append(0x80 | (size & 0x7F))
        size >>= 7
    if len(groups) > 4:
        raise LocalProtocolError(f"descriptor of {len(payload)} bytes exceeds 2**28")
    return bytes([tag, *reversed(groups)]) + payload


def _write_esds(w: BoxWriter, track: TrackConfig) -> None:
    # ES_Descriptor { ES_ID, flags, DecoderConfigDescriptor { objectTypeIndication,
    #   streamType, bufferSizeDB, maxBitrate, avgBitrate, DecoderSpecificInfo }, SLConfig }
    decoder_config = _descriptor(
        _DECODER_CONFIG_DESCR_TAG,
        bytes([_OBJECT_TYPE_AAC, (_STREAM_TYPE_AUDIO << 2) | 0x01])  # upStream 0, reserved 1
        + bytes(3)  # bufferSizeDB
        + bytes(4)  # maxBitrate
        + bytes(4)  # avgBitrate
        + _descriptor(_DEC_SPECIFIC_INFO_TAG, track.decoder_config),
    )
    sl_config = _descriptor(_SL_CONFIG_DESCR_TAG, b"\x02")  # predefined: reserved for MP4
    es = _descriptor(_ES_DESCR_TAG, b"\x00\x00\x00" + decoder_config + sl_config)  # ES_ID 0
    with w.full_box(b"esds", version=0, flags=0):
        w.write(es)


def _opus_head(track: TrackConfig) -> opus.OpusHead:
    try:
        return opus.OpusHead.parse(track.decoder_config)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"track {track.track_id}: {exc}") from None


def _stream_info(track: TrackConfig) -> flac.StreamInfo:
    try:
        return flac.StreamInfo.parse(track.decoder_config)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"track {track.track_id}: {exc}") from None


def _video_config(track: TrackConfig) -> bytes:
    """The payload of the video configuration box: the record as given, except vpcC,
    which is always written as version 1 with flags (whichever form came in)."""
    if track.codec != "vp09":
        return track.decoder_config
    try:
        return vp9.VPCodecConfigurationRecord.parse(track.decoder_config).box_payload()
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"track {track.track_id}: {exc}") from None


def _write_sample_entry(w: BoxWriter, track: TrackConfig) -> None:
    codec = track.codec.encode("ascii")
    with w.box(codec):
        w.zeros(6)  # reserved
        w.u16(1)  # data_reference_index
        if track.kind == "video":
            # VisualSampleEntry (12.1.3)
            w.zeros(2 + 2 + 12)  # pre_defined, reserved, pre_defined
            w.u16(track.width)
            w.u16(track.height)
            w.u32(0x00480000)  # horizresolution 72 dpi
            w.u32(0x00480000)  # vertresolution
            w.u32(0)  # reserved
            w.u16(1)  # frame_count
            w.zeros(32)  # compressorname
            w.u16(0x0018)  # depth
            w.i16(-1)  # pre_defined
            with w.box(_CONFIG_BOX[track.codec]):
                w.write(_video_config(track))
        else:
            # AudioSampleEntry (12.2.3). For Opus (Opus in ISO BMFF 4.3.1) channelcount is
            # the OutputChannelCount and samplerate 48000, whatever the input rate was; for
            # FLAC (FLAC in ISO BMFF 3.3.1) both and samplesize come from STREAMINFO.
            head = _opus_head(track) if track.codec == "Opus" else None
            info = _stream_info(track) if track.codec == "fLaC" else None
            channel_count, sample_size, sample_rate = track.channel_count, 16, track.sample_rate
            if head is not None:
                channel_count, sample_rate = head.channel_count, opus.SAMPLE_RATE
            elif info is not None:
                channel_count, sample_size = info.channels, info.bits_per_sample
                sample_rate = info.sample_rate
            w.zeros(8)  # reserved
            w.u16(channel_count)
            w.u16(sample_size)
            w.u16(0)  # pre_defined
            w.u16(0)  # reserved
            # samplerate is 16.16; rates above 65535 Hz do not fit (0), the config carries them
            w.u32((sample_rate if sample_rate <= 0xFFFF else 0) << 16)
            if head is not None:
                # OpusSpecificBox (4.3.2): a plain box, the OpusHead's fields big-endian.
                with w.box(b"dOps"):
                    w.write(head.dops())
            elif info is not None:
                # FLACSpecificBox (3.3.2): a full box of metadata blocks, STREAMINFO first.
                with w.box(b"dfLa"):
                    w.write(info.dfla())
            else:
                _write_esds(w, track)


def write_trak(
    w: BoxWriter,
    track: TrackConfig,
    *,
    track_duration: int,
    media_duration: int,
    edits: Sequence[EditListEntry] = (),
    write_sample_tables: Callable[[BoxWriter], None],
) -> None:
    """One track. ``track_duration`` is in the movie timescale, ``media_duration`` in the
    track's; ``write_sample_tables`` writes the boxes after ``stsd`` in ``stbl``.

    ::

        trak
          tkhd
          edts            (only when edits are given)
            elst
          mdia
            mdhd
            hdlr
            minf
              vmhd | smhd
              dinf
                dref
                  url
              stbl
                stsd
                  avc1 | avc3 | hvc1 | hev1 | av01 | vp09 | mp4a | Opus | fLaC
                    avcC | hvcC | av1C | vpcC | esds | dOps | dfLa
                <write_sample_tables>
    """
    handler_type, handler_name = _HANDLERS[track.kind]
    with w.box(b"trak"):
        _write_tkhd(w, track, track_duration)
        if edits:
            with w.box(b"edts"):
                _write_elst(w, edits)
        with w.box(b"mdia"):
            _write_mdhd(w, track, media_duration)
            with w.full_box(b"hdlr", version=0, flags=0):
                w.u32(0)  # pre_defined
                w.fourcc(handler_type)
                w.zeros(12)  # reserved
                w.write(handler_name + b"\x00")
            with w.box(b"minf"):
                if track.kind == "video":
                    with w.full_box(b"vmhd", version=0, flags=1):
                        w.zeros(2 + 6)  # graphicsmode, opcolor
                else:
                    with w.full_box(b"smhd", version=0, flags=0):
                        w.zeros(2 + 2)  # balance, reserved
                with w.box(b"dinf"), w.full_box(b"dref", version=0, flags=0):
                    w.u32(1)  # entry_count
                    with w.full_box(b"url ", version=0, flags=1):  # media in this file
                        pass
                with w.box(b"stbl"):
                    with w.full_box(b"stsd", version=0, flags=0):
                        w.u32(1)  # entry_count
                        _write_sample_entry(w, track)
                    write_sample_tables(w)


def _write_empty_sample_tables(w: BoxWriter) -> None:
    for box_type in (b"stts", b"stsc", b"stco"):
        with w.full_box(box_type, version=0, flags=0):
            w.u32(0)  # entry_count
    with w.full_box(b"stsz", version=0, flags=0):
        w.u32(0)  # sample_size
        w.u32(0)  # sample_count


def _check_tracks(tracks: Sequence[TrackConfig]) -> None:
    if not tracks:
        raise LocalProtocolError("an MP4 needs at least one track")
    ids = [t.track_id for t in tracks]
    if len(set(ids)) != len(ids):
        raise LocalProtocolError(f"duplicate track ids {ids}")


# ftyp
# moov
#   mvhd                  (duration 0: the fragments carry the samples)
#   trak ...              (one per track, see write_trak; empty stts/stsc/stsz/stco)
#   mvex
#     trex ...            (one per track)
def init_segment(tracks: Sequence[TrackConfig], *, movie_timescale: int = 1000) -> bytes:
    """The init segment (``ftyp`` + ``moov``) for ``tracks``, in that order."""
    _check_tracks(tracks)
    w = BoxWriter()
    write_ftyp(w, b"iso5", 512, FMP4_BRANDS)
    with w.box(b"moov"):
        write_mvhd(
            w,
            timescale=movie_timescale,
            duration=0,
            next_track_id=max(t.track_id for t in tracks) + 1,
        )
        for track in tracks:
            write_trak(
                w,
                track,
                track_duration=0,
                media_duration=0,
                write_sample_tables=_write_empty_sample_tables,
            )
        with w.box(b"mvex"):
            for track in tracks:
                with w.full_box(b"trex", version=0, flags=0):
                    w.u32(track.track_id)
                    w.u32(1)  # default_sample_description_index
                    w.u32(0)  # default_sample_duration
                    w.u32(0)  # default_sample_size
                    w.u32(SAMPLE_FLAGS_NON_SYNC if track.kind == "video" else SAMPLE_FLAGS_SYNC)
    return w.getvalue()


def check_decode_order(track_id: int, samples: Sequence[SampleTiming]) -> None:
    """Raise unless each sample's ``dts + duration`` is the next sample's ``dts``.

    MP4 stores only durations, so a gap or overlap would silently move later samples.
    """
    for prev, cur in pairwise(samples):
        if prev.dts + prev.duration != cur.dts:
            raise LocalProtocolError(
                f"track {track_id}: sample at dts {prev.dts} with duration {prev.duration} "
                f"is followed by dts {cur.dts}; durations must fill the gaps"
            )


#: A version-1 ``trun`` entry: sample_duration, sample_size, sample_flags, and
#: with composition offsets the signed sample_composition_time_offset.
_TRUN_ENTRY = struct.Struct(">III")
_TRUN_ENTRY_WITH_OFFSET = struct.Struct(">IIIi")


def _write_trun_entries(w: BoxWriter, samples: Sequence[Sample], has_offsets: bool) -> None:
    """The ``trun`` entries of ``samples``, one struct pack each (every
    recorded frame passes here). A value that does not fit its field is
    reported by :class:`BoxWriter`'s field writers, as before."""
    try:
        if has_offsets:
            pack = _TRUN_ENTRY_WITH_OFFSET.pack
            entries = [
                pack(s.duration, len(s.data), sample_flags(s.keyframe), s.cts_offset)
                for s in samples
            ]
        else:
            pack = _TRUN_ENTRY.pack
            entries = [pack(s.duration, len(s.data), sample_flags(s.keyframe)) for s in samples]
    except struct.error:
        for s in samples:
            w.u32(s.duration)
            w.u32(s.size)
            w.u32(sample_flags(s.keyframe))
            if has_offsets:
                w.i32(s.cts_offset)
        return
    w.write(b"".join(entries))


# moof
#   mfhd                  sequence_number
#   traf ...              (one per track with samples, in the mapping's order)
#     tfhd                flags default-base-is-moof
#     tfdt                version 1: baseMediaDecodeTime (64 bits) = first sample's dts
#     trun                version 1: data_offset (patched), per sample duration, size,
#                         flags, signed composition offset (only if any is non-zero)
# mdat                    every traf's sample data, in traf order
def fragment(sequence_number: int, track_samples: Mapping[int, Sequence[Sample]]) -> bytes:
    """One media fragment (``moof`` + ``mdat``) holding ``track_samples``.

    ``track_samples`` maps a track id to its samples in decode order (tracks without samples
    are left out). ``sequence_number`` starts at 1 and increases by one per fragment.
    Audio samples should all be ``keyframe=True``: each one is marked sync or non-sync as
    given. Each track's ``tfdt`` is its first sample's ``dts``, so consecutive fragments need
    no state here, and the published timestamps are kept as they are (there is no edit
    list: a player presents video from its first frame's ``dts + cts_offset``).
    """
    trafs = [(tid, samples) for tid, samples in track_samples.items() if samples]
    if not trafs:
        raise LocalProtocolError("a fragment needs at least one sample")
    w = BoxWriter()
    data_offset_fields: list[int] = []
    with w.box(b"moof"):
        with w.full_box(b"mfhd", version=0, flags=0):
            w.u32(sequence_number)
        for track_id, samples in trafs:
            check_decode_order(track_id, samples)
            if samples[0].dts < 0:
                raise LocalProtocolError(f"track {track_id}: negative dts {samples[0].dts}")
            with w.box(b"traf"):
                with w.full_box(b"tfhd", version=0, flags=TFHD_DEFAULT_BASE_IS_MOOF):
                    w.u32(track_id)
                with w.full_box(b"tfdt", version=1, flags=0):
                    w.u64(samples[0].dts)
                flags = (
                    TRUN_DATA_OFFSET_PRESENT
                    | TRUN_SAMPLE_DURATION_PRESENT
                    | TRUN_SAMPLE_SIZE_PRESENT
                    | TRUN_SAMPLE_FLAGS_PRESENT
                )
                has_offsets = any(s.cts_offset for s in samples)
                if has_offsets:
                    flags |= TRUN_SAMPLE_COMPOSITION_TIME_OFFSETS_PRESENT
                with w.full_box(b"trun", version=1, flags=flags):
                    w.u32(len(samples))
                    data_offset_fields.append(w.reserve_u32())
                    _write_trun_entries(w, samples, has_offsets)
    moof_size = len(w)
    payload = b"".join(s.data for _, samples in trafs for s in samples)
    mdat_header = 8 if len(payload) + 8 <= 0xFFFFFFFF else 16
    offset = moof_size + mdat_header
    for pos, (_, samples) in zip(data_offset_fields, trafs, strict=True):
        w.patch_i32(pos, offset)
        offset += sum(s.size for s in samples)
    with w.box(b"mdat", large=mdat_header == 16):
        w.write(payload)
    return w.getvalue()
