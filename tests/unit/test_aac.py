"""AudioSpecificConfig and ADTS."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec import aac, flv
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

DATA = Path(__file__).resolve().parent.parent / "data"
ASC = aac.AudioSpecificConfig

# config -> exact bytes (trailing bits include the zero padding, as parse gives them)
ASC_CASES = [
    # AAC LC, 44.1 kHz, stereo: the classic 12 10.
    (ASC(object_type=2, sampling_frequency_index=4, channel_configuration=2), b"\x12\x10"),
    # AAC LC, 48 kHz, stereo.
    (ASC(object_type=2, sampling_frequency_index=3, channel_configuration=2), b"\x11\x90"),
    # AAC LC, 44.1 kHz, mono, as ffmpeg's aac encoder writes it in tests/data/tiny.flv:
    # GASpecificConfig then the SBR sync extension 0x2b7 (AOT 5, sbrPresentFlag 0).
    (
        ASC(
            object_type=2,
            sampling_frequency_index=4,
            channel_configuration=1,
            trailing_bits=0x56E500 & 0x7FFFFFF,
            trailing_bit_count=27,
        ),
        b"\x12\x08\x56\xe5\x00",
    ),
    # Explicit 24-bit sampling frequency (index 15): 44100 Hz.
    (
        ASC(
            object_type=2,
            sampling_frequency_index=15,
            sampling_frequency=44100,
            channel_configuration=2,
        ),
        b"\x17\x80\x56\x22\x10",
    ),
    # Escaped object type 42 (31, then 6 bits of 42 - 32), 48 kHz stereo, 2 padding bits.
    (
        ASC(
            object_type=42,
            sampling_frequency_index=3,
            channel_configuration=2,
            trailing_bit_count=5,
        ),
        b"\xf9\x46\x40",
    ),
    # HE-AAC explicit: AOT 5, 24 kHz core, stereo, extension index 3 (48 kHz), then AOT 2
    # and GASpecificConfig; 7 padding bits.
    (
        ASC(
            object_type=5,
            sampling_frequency_index=6,
            channel_configuration=2,
            trailing_bits=0b0011_00010_000 << 7,
            trailing_bit_count=19,
        ),
        b"\x2b\x11\x88\x00",
    ),
    # frameLengthFlag set: 960-sample frames.
    (
        ASC(
            object_type=2,
            sampling_frequency_index=3,
            channel_configuration=2,
            trailing_bits=0b100,
        ),
        b"\x11\x94",
    ),
    # Largest escaped object type: 32 + 63 = 95; 96 kHz, channelConfiguration 0 (PCE).
    (
        ASC(
            object_type=95,
            sampling_frequency_index=0,
            channel_configuration=0,
            trailing_bit_count=5,
        ),
        b"\xff\xe0\x00",
    ),
]


@pytest.mark.parametrize(("config", "data"), ASC_CASES)
def test_audio_specific_config_encodes_to_exact_bytes(
    config: aac.AudioSpecificConfig, data: bytes
) -> None:
    assert bytes(config) == data


@pytest.mark.parametrize(("config", "data"), ASC_CASES)
def test_audio_specific_config_decodes_exact_bytes(
    config: aac.AudioSpecificConfig, data: bytes
) -> None:
    assert ASC.parse(data) == config


@pytest.mark.parametrize(("config", "data"), ASC_CASES)
def test_audio_specific_config_prefixes_raise_only_remote_errors(
    config: aac.AudioSpecificConfig, data: bytes
) -> None:
    for end in range(len(data)):
        try:
            got = ASC.parse(data[:end])
        except RemoteProtocolError:
            continue
        # A cut inside the trailing bits still names the same stream.
        assert (got.object_type, got.sample_rate, got.channel_configuration) == (
            config.object_type,
            config.sample_rate,
            config.channel_configuration,
        )


def test_audio_specific_config_properties() -> None:
    rates = [ASC.parse(data).sample_rate for _, data in ASC_CASES]
    assert rates == [44100, 48000, 44100, 44100, 48000, 24000, 48000, 96000]
    frames = [ASC.parse(data).samples_per_frame for _, data in ASC_CASES]
    assert frames == [1024] * 6 + [960, 1024]
    assert ASC.parse(b"\x12\x10").codec_string == "mp4a.40.2"


def test_escaped_object_type_is_padded_to_a_byte() -> None:
    config = ASC(object_type=42, sampling_frequency_index=3, channel_configuration=2)
    assert bytes(config) == b"\xf9\x46\x40"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated AudioSpecificConfig"),
        (b"\x12", "truncated AudioSpecificConfig"),
        (b"\x00\x00", "audioObjectType 0"),
        (b"\x16\x90", "samplingFrequencyIndex 13 is reserved"),
        (b"\x17\x80\x00\x00\x00", "samplingFrequency 0"),
        (b"\x17\x80\x56", "truncated"),
    ],
)
def test_audio_specific_config_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        ASC.parse(data)


def test_audio_specific_config_validates_fields_when_built() -> None:
    with pytest.raises(LocalProtocolError):
        ASC(object_type=0, sampling_frequency_index=3, channel_configuration=2)
    with pytest.raises(LocalProtocolError):
        ASC(object_type=2, sampling_frequency_index=13, channel_configuration=2)
    with pytest.raises(LocalProtocolError):
        ASC(object_type=2, sampling_frequency_index=15, channel_configuration=2)
    with pytest.raises(LocalProtocolError):
        ASC(
            object_type=2,
            sampling_frequency_index=3,
            sampling_frequency=48000,
            channel_configuration=2,
        )
    with pytest.raises(LocalProtocolError):
        ASC(object_type=2, sampling_frequency_index=3, channel_configuration=16)
    with pytest.raises(LocalProtocolError):
        ASC(object_type=2, sampling_frequency_index=3, channel_configuration=2, trailing_bits=8)


@settings(max_examples=500)
@given(st.binary(max_size=12))
def test_audio_specific_config_random_bytes_round_trip_or_remote_error(data: bytes) -> None:
    try:
        config = ASC.parse(data)
    except RemoteProtocolError:
        return
    assert bytes(config) == data


# --------------------------------------------------------------------------- ADTS

LC_44K_MONO = ASC(object_type=2, sampling_frequency_index=4, channel_configuration=1)
LC_48K_STEREO = ASC(object_type=2, sampling_frequency_index=3, channel_configuration=2)

# (config, payload length) -> 7-byte ADTS header
ADTS_CASES = [
    # frame length 107: FFF1 | LC, 48 kHz, 2 ch | length 0x6B | fullness 0x7FF | 1 block
    (LC_48K_STEREO, 100, b"\xff\xf1\x4c\x80\x0d\x7f\xfc"),
    # ffmpeg's first frame of tests/data/tiny.aac: frame length 265.
    (LC_44K_MONO, 258, b"\xff\xf1\x50\x40\x21\x3f\xfc"),
    # Largest frame: 8191 bytes.
    (LC_48K_STEREO, 8184, b"\xff\xf1\x4c\x83\xff\xff\xfc"),
    # HE-AAC is sent as LC at the core rate (SBR implicit).
    (
        ASC(object_type=5, sampling_frequency_index=6, channel_configuration=2),
        0,
        b"\xff\xf1\x58\x80\x00\xff\xfc",
    ),
]


@pytest.mark.parametrize(("config", "length", "header"), ADTS_CASES)
def test_adts_header_exact_bytes(
    config: aac.AudioSpecificConfig, length: int, header: bytes
) -> None:
    assert aac.adts_header(config, length) == header


@pytest.mark.parametrize(("config", "length", "header"), ADTS_CASES)
def test_adts_header_parses_back(
    config: aac.AudioSpecificConfig, length: int, header: bytes
) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    (frame,) = aac.parse_adts(header + payload)
    assert frame.payload == payload
    assert frame.config.sampling_frequency_index == config.sampling_frequency_index
    assert frame.config.channel_configuration == config.channel_configuration
    assert frame.config.object_type == min(config.object_type, 2)


def test_adts_header_rejects_frames_past_the_13_bit_length() -> None:
    with pytest.raises(
        RemoteProtocolError, match=r"8192 bytes exceeds ADTS_MAX_FRAME_LENGTH \(8191\)"
    ):
        aac.adts_header(LC_48K_STEREO, 8185)
    with pytest.raises(LocalProtocolError):
        aac.adts_header(LC_48K_STEREO, -1)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            ASC(object_type=23, sampling_frequency_index=3, channel_configuration=2),
            "object type 23",
        ),
        (
            ASC(
                object_type=2,
                sampling_frequency_index=15,
                sampling_frequency=44000,
                channel_configuration=2,
            ),
            "explicit sampling frequency",
        ),
        (
            ASC(object_type=2, sampling_frequency_index=3, channel_configuration=8),
            "channelConfiguration 8",
        ),
    ],
)
def test_adts_header_rejects_configs_adts_cannot_carry(
    config: aac.AudioSpecificConfig, message: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        aac.adts_header(config, 10)


def test_adts_from_flv_matches_ffmpeg_adts_output() -> None:
    """tests/data/tiny.aac is ffmpeg's ADTS remux of tiny.flv's audio (see README)."""
    reader = flv.FlvReader()
    reader.receive_data((DATA / "tiny.flv").read_bytes())
    reader.receive_data(b"")
    audio = []
    while not isinstance(event := reader.next_event(), flv.EndOfStream):
        if isinstance(event, flv.TagReceived) and event.tag_type == flv.TAG_AUDIO:
            audio.append(event.body)
    assert flv.describe_tag(flv.TAG_AUDIO, audio[0]).sequence_header
    config = ASC.parse(audio[0][2:])
    assert bytes(config) == audio[0][2:]
    assert (config.object_type, config.sample_rate, config.channel_configuration) == (2, 44100, 1)
    ours = b"".join(aac.adts_header(config, len(body) - 2) + body[2:] for body in audio[1:])
    assert ours == (DATA / "tiny.aac").read_bytes()


def test_parse_adts_of_ffmpeg_file() -> None:
    data = (DATA / "tiny.aac").read_bytes()
    frames = aac.parse_adts(data)
    assert len(frames) == 14
    assert all(f.config == LC_44K_MONO for f in frames)
    assert b"".join(aac.adts_header(f.config, len(f.payload)) + f.payload for f in frames) == data


def test_parse_adts_skips_crc() -> None:
    # protection_absent 0: 2 CRC bytes after the header, counted in the frame length.
    header = bytearray(aac.adts_header(LC_48K_STEREO, 5))
    header[1] &= 0xFE
    (frame,) = aac.parse_adts(bytes(header) + b"\xaa\xbb" + b"xyz")
    assert frame.payload == b"xyz"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xf1\x4c\x80", "truncated ADTS header"),
        (b"\xff\xf1\x4c\x80\x0d\x7f\xfc" + bytes(10), "truncated ADTS frame: 17 of 107"),
        (b"\xff\xe1\x4c\x80\x0d\x7f\xfc", "sync word missing at byte 0"),
        (b"\xff\xf1\x4c\x80\x00\x7f\xfc", "aac_frame_length 3 is shorter"),
        (b"\xff\xf1\x74\x80\x00\xff\xfc", "sampling_frequency_index 13"),
    ],
)
def test_parse_adts_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        aac.parse_adts(data)


def test_parse_adts_every_prefix_gives_whole_frames_or_truncated() -> None:
    data = (DATA / "tiny.aac").read_bytes()[:600]
    frames = aac.parse_adts((DATA / "tiny.aac").read_bytes())
    for end in range(len(data)):
        try:
            got = aac.parse_adts(data[:end])
        except RemoteProtocolError as exc:
            assert str(exc).startswith("truncated")
            continue
        assert got == frames[: len(got)]


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_parse_adts_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        aac.parse_adts(b"\xff\xf1" + data)
