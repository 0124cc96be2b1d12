"""MP4 sample entries for the Enhanced RTMP codecs: ``av01``/``av1C``, ``vp09``/``vpcC``
(version 1) and ``fLaC``/``dfLa``, byte for byte, and read back by the demuxer from init
segments, fragments and progressive files (what the merge and rtmpd-push read)."""

from __future__ import annotations

import pytest

from rtmpd.codec.errors import RemoteProtocolError
from rtmpd.codec.mp4 import Sample, TrackConfig
from rtmpd.codec.mp4.demux import Mp4Demuxer
from rtmpd.codec.mp4.fmp4 import fragment, init_segment
from rtmpd.codec.mp4.progressive import write_progressive
from tests.unit.test_ertmp_codecs import SEQUENCE_OBU, STREAMINFO, VPCC_BOX, VPCC_RECORD

AV1C = b"\x81\x08\x0c\x00" + SEQUENCE_OBU


def visual_entry(codec: bytes, width: int, height: int, config_box: bytes) -> bytes:
    """A VisualSampleEntry (ISO/IEC 14496-12 12.1.3) spelt out field by field."""
    body = (
        bytes(6) + b"\x00\x01"  # reserved, data_reference_index 1
        + bytes(16)  # pre_defined, reserved, pre_defined[3]
        + width.to_bytes(2, "big") + height.to_bytes(2, "big")
        + b"\x00\x48\x00\x00" * 2  # 72 dpi both ways
        + bytes(4) + b"\x00\x01"  # reserved, frame_count 1
        + bytes(32)  # compressorname
        + b"\x00\x18\xff\xff"  # depth 24, pre_defined -1
        + config_box
    )
    return (8 + len(body)).to_bytes(4, "big") + codec + body


ENTRIES = [
    # (track, sample entry bytes)
    (
        TrackConfig(track_id=1, kind="video", codec="av01", timescale=1000,
                    decoder_config=AV1C, width=640, height=360),
        visual_entry(b"av01", 640, 360, b"\x00\x00\x00\x16av1C" + AV1C),
    ),
    (
        # A bare VP codec configuration record is written as vpcC version 1, flags 0.
        TrackConfig(track_id=1, kind="video", codec="vp09", timescale=1000,
                    decoder_config=VPCC_RECORD, width=320, height=180),
        visual_entry(b"vp09", 320, 180, b"\x00\x00\x00\x14vpcC\x01\x00\x00\x00" + VPCC_RECORD),
    ),
    (
        TrackConfig(track_id=1, kind="video", codec="vp09", timescale=1000,
                    decoder_config=VPCC_BOX, width=320, height=180),
        visual_entry(b"vp09", 320, 180, b"\x00\x00\x00\x14vpcC" + VPCC_BOX),
    ),
    (
        # FLAC: channels, sample size and rate come from STREAMINFO, not the config's
        # fields.
        TrackConfig(track_id=2, kind="audio", codec="fLaC", timescale=44100,
                    decoder_config=STREAMINFO, sample_rate=8000, channel_count=1),
        b"\x00\x00\x00\x56fLaC"
        + bytes(6) + b"\x00\x01"  # reserved, data_reference_index
        + bytes(8) + b"\x00\x02\x00\x10"  # reserved, channelcount 2, samplesize 16
        + bytes(4) + b"\xac\x44\x00\x00"  # pre_defined, reserved, samplerate 44100 << 16
        + b"\x00\x00\x00\x32dfLa\x00\x00\x00\x00"  # full box, version 0
        + b"\x80\x00\x00\x22" + STREAMINFO,  # last block, STREAMINFO, 34 bytes
    ),
]


@pytest.mark.parametrize(("track", "entry"), ENTRIES)
def test_init_segment_writes_the_sample_entry_byte_for_byte(
    track: TrackConfig, entry: bytes
) -> None:
    init = init_segment([track])
    assert init.count(entry) == 1


@pytest.mark.parametrize(("track", "entry"), ENTRIES)
def test_the_demuxer_reads_the_sample_entry_back(track: TrackConfig, entry: bytes) -> None:
    init = init_segment([track])
    (parsed,) = Mp4Demuxer(lambda o, s: init[o : o + s], len(init)).tracks
    assert (parsed.kind, parsed.codec, parsed.timescale) == (
        track.kind, track.codec, track.timescale
    )
    if track.kind == "video":
        assert (parsed.width, parsed.height) == (track.width, track.height)
        # vpcC comes back as the box payload, whichever form went in.
        assert parsed.decoder_config == (VPCC_BOX if track.codec == "vp09" else AV1C)
    else:
        assert parsed.decoder_config == STREAMINFO
        assert (parsed.sample_rate, parsed.channel_count) == (44100, 2)
    # What the merge does: the track written again gives the same sample entry.
    again = init_segment([parsed.track_config()])
    assert again.count(entry) == 1


def test_fragments_and_the_progressive_file_keep_sync_samples_of_av1_and_flac() -> None:
    video = ENTRIES[0][0]
    audio = ENTRIES[3][0]
    frames = [
        Sample(dts=i * 40, cts_offset=0, duration=40, keyframe=i % 3 == 0, data=bytes([i]) * 5)
        for i in range(6)
    ]
    blocks = [
        Sample(dts=i * 4608, cts_offset=0, duration=4608, keyframe=True, data=b"\xff\xf8" * 4)
        for i in range(3)
    ]
    init = init_segment([video, audio])
    data = init + fragment(1, {1: frames[:3], 2: blocks[:2]}) + fragment(2, {1: frames[3:],
                                                                          2: blocks[2:]})
    demuxer = Mp4Demuxer(lambda o, s: data[o : o + s], len(data))
    got = list(demuxer.track_samples(1))
    assert [s.keyframe for s in got] == [True, False, False, True, False, False]
    assert [demuxer.read_sample(s) for s in got] == [s.data for s in frames]
    assert [s.dts for s in demuxer.track_samples(2)] == [0, 4608, 9216]
    progressive = write_progressive([video, audio], {1: frames, 2: blocks})
    reread = Mp4Demuxer(lambda o, s: progressive[o : o + s], len(progressive))
    assert [t.codec for t in reread.tracks] == ["av01", "fLaC"]
    assert [s.keyframe for s in reread.track_samples(1)] == [s.keyframe for s in frames]


def test_a_vp09_entry_without_vpcc_is_the_demuxers_error() -> None:
    init = init_segment([ENTRIES[1][0]])
    broken = init.replace(b"vpcC", b"xxxx")
    with pytest.raises(RemoteProtocolError, match="vp09 has no vpcC box"):
        Mp4Demuxer(lambda o, s: broken[o : o + s], len(broken))


def test_a_bad_dfla_is_the_demuxers_error() -> None:
    init = init_segment([ENTRIES[3][0]])
    broken = init.replace(b"dfLa\x00", b"dfLa\x01")
    with pytest.raises(RemoteProtocolError, match="dfLa version 1 is not 0"):
        Mp4Demuxer(lambda o, s: broken[o : o + s], len(broken))
