"""Enhanced RTMP messages whole (rtmpd.codec.enhanced): one case table for
parse and write, truncation, errors, what each kind of client gets, and
what a connect announces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec import amf0, flv
from rtmpd.codec.enhanced import (
    ANYTHING,
    LEGACY,
    MAX_ANNOUNCED_FOURCCS,
    MAX_MOD_EX,
    MAX_TRACKS,
    SERVER_CAPS_EX,
    Acceptance,
    ClientCapabilities,
    ExMedia,
    ModEx,
    Track,
    adapt,
    dropped_codecs,
    is_ex_header,
    server_capabilities,
    to_legacy,
)
from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError

V, A = flv.TAG_VIDEO, flv.TAG_AUDIO
SEQ, CODED, END, CODED_X, META, TS_SEQ = 0, 1, 2, 3, 4, 5
KEY, INTER, COMMAND = 1, 2, 5

HVCC = (b"\x01\x01\x60\x00\x00\x00\x90\x00\x00\x00\x00\x00\x5d\xf0\x00\xfc\xfd\xf8\xf8"
        b"\x00\x00\x0f\x00")
AV1C = b"\x81\x00\x0c\x00"
VPCC = b"\x01\x00\x00\x00\x00\x1f\x80\x02\x02\x02\x00\x00"
AVCC = b"\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f\x01\x00\x04\x68\xeb\xe3\xcb"
OPUS_HEAD = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00"
FLAC_HEAD = b"fLaC\x80\x00\x00\x22" + bytes(34)
ASC = b"\x12\x10"
NANO = ModEx(mod_ex_type=0, data=b"\x00\x01\xf4")


def one(kind: int, packet: int, code: bytes, data: bytes, frame: int = 0, **kw: object) -> ExMedia:
    return ExMedia(kind=kind, packet_type=packet, frame_type=frame,
                   tracks=(Track(fourcc=code, data=data),), **kw)  # type: ignore[arg-type]


# (name, message, wire bytes): every packet type for each codec, ModEx, Multitrack of
# each kind; parse(wire) == message and bytes(message) == wire.
CASES: list[tuple[str, ExMedia, bytes]] = [
    ("hvc1 SequenceStart", one(V, SEQ, b"hvc1", HVCC, KEY), b"\x90hvc1" + HVCC),
    ("hvc1 CodedFrames key, CompositionTime 40",
     one(V, CODED, b"hvc1", b"\x00\x00\x28\x00\x00\x00\x02\x26\x01", KEY),
     b"\x91hvc1\x00\x00\x28\x00\x00\x00\x02\x26\x01"),
    ("hvc1 CodedFramesX inter", one(V, CODED_X, b"hvc1", b"\x00\x00\x00\x02\x02\x01", INTER),
     b"\xa3hvc1\x00\x00\x00\x02\x02\x01"),
    ("hvc1 SequenceEnd", one(V, END, b"hvc1", b"", KEY), b"\x92hvc1"),
    ("av01 SequenceStart", one(V, SEQ, b"av01", AV1C, KEY), b"\x90av01" + AV1C),
    ("av01 CodedFrames (no CompositionTime)", one(V, CODED, b"av01", b"\x12\x00\x32\x01", KEY),
     b"\x91av01\x12\x00\x32\x01"),
    ("av01 MPEG2TSSequenceStart", one(V, TS_SEQ, b"av01", b"\x80\x04\x81\x00\x0c\x00", KEY),
     b"\x95av01\x80\x04\x81\x00\x0c\x00"),
    ("vp09 SequenceStart", one(V, SEQ, b"vp09", VPCC, KEY), b"\x90vp09" + VPCC),
    ("vp09 CodedFrames inter", one(V, CODED, b"vp09", b"\x86\x00\x40", INTER),
     b"\xa1vp09\x86\x00\x40"),
    ("avc1 SequenceStart", one(V, SEQ, b"avc1", AVCC, KEY), b"\x90avc1" + AVCC),
    ("avc1 CodedFrames", one(V, CODED, b"avc1", b"\xff\xff\xd8\x00\x00\x00\x01\x65", KEY),
     b"\x91avc1\xff\xff\xd8\x00\x00\x00\x01\x65"),
    ("avc1 CodedFramesX", one(V, CODED_X, b"avc1", b"\x00\x00\x00\x01\x41", INTER),
     b"\xa3avc1\x00\x00\x00\x01\x41"),
    ("avc1 SequenceEnd", one(V, END, b"avc1", b"", KEY), b"\x92avc1"),
    ("hvc1 Metadata colorInfo", one(V, META, b"hvc1", amf0.encode_all("colorInfo", {}), KEY),
     b"\x94hvc1" + amf0.encode_all("colorInfo", {})),
    ("Metadata in a command frame", one(V, META, b"av01", b"\x02\x00\x00", COMMAND),
     b"\xd4av01\x02\x00\x00"),
    ("command frame: StartSeek, no FourCC",
     ExMedia(kind=V, packet_type=CODED, frame_type=COMMAND, command=0), b"\xd1\x00"),
    ("ModEx TimestampOffsetNano, then CodedFrames",
     one(V, CODED, b"hvc1", b"\x00\x00\x00\xaa", KEY, mod_ex=(NANO,)),
     b"\x97\x02\x00\x01\xf4\x01hvc1\x00\x00\x00\xaa"),
    ("ModEx of 256 bytes takes the UI16 size",
     one(V, CODED_X, b"vp09", b"\xbb", KEY, mod_ex=(ModEx(mod_ex_type=1, data=bytes(256)),)),
     b"\x97\xff\x00\xff" + bytes(256) + b"\x13vp09\xbb"),
    ("two ModEx blocks", one(A, CODED, b"Opus", b"\xfc", mod_ex=(NANO, NANO)),
     b"\x97\x02\x00\x01\xf4\x07\x02\x00\x01\xf4\x01Opus\xfc"),
    ("video OneTrack", ExMedia(kind=V, packet_type=CODED_X, frame_type=KEY,
                               multitrack=flv.MULTITRACK_ONE_TRACK,
                               tracks=(Track(fourcc=b"hvc1", track_id=2, data=b"\x01\x02"),)),
     b"\x96\x03hvc1\x02\x01\x02"),
    ("video ManyTracks, one codec", ExMedia(
        kind=V, packet_type=CODED, frame_type=KEY, multitrack=flv.MULTITRACK_MANY_TRACKS,
        tracks=(Track(fourcc=b"av01", track_id=0, data=b"abc"),
                Track(fourcc=b"av01", track_id=1, data=b"de"))),
     b"\x96\x11av01\x00\x00\x00\x03abc\x01\x00\x00\x02de"),
    ("video ManyTracksManyCodecs", ExMedia(
        kind=V, packet_type=SEQ, frame_type=KEY,
        multitrack=flv.MULTITRACK_MANY_TRACKS_MANY_CODECS,
        tracks=(Track(fourcc=b"hvc1", track_id=0, data=HVCC),
                Track(fourcc=b"avc1", track_id=1, data=AVCC))),
     b"\x96\x20hvc1\x00\x00\x00" + bytes((len(HVCC),)) + HVCC
     + b"avc1\x01\x00\x00" + bytes((len(AVCC),)) + AVCC),
    ("ModEx before Multitrack", ExMedia(
        kind=V, packet_type=CODED_X, frame_type=INTER, multitrack=flv.MULTITRACK_ONE_TRACK,
        tracks=(Track(fourcc=b"vp09", track_id=0, data=b"\x55"),), mod_ex=(NANO,)),
     b"\xa7\x02\x00\x01\xf4\x06\x03vp09\x00\x55"),
    ("Opus SequenceStart", one(A, SEQ, b"Opus", OPUS_HEAD), b"\x90Opus" + OPUS_HEAD),
    ("Opus CodedFrames", one(A, CODED, b"Opus", b"\xfc\xff\xfe"), b"\x91Opus\xfc\xff\xfe"),
    ("Opus SequenceEnd", one(A, END, b"Opus", b""), b"\x92Opus"),
    ("Opus MultichannelConfig", one(A, 4, b"Opus", b"\x01\x02\x00\x00\x00\x03"),
     b"\x94Opus\x01\x02\x00\x00\x00\x03"),
    ("fLaC SequenceStart", one(A, SEQ, b"fLaC", FLAC_HEAD), b"\x90fLaC" + FLAC_HEAD),
    ("fLaC CodedFrames", one(A, CODED, b"fLaC", b"\xff\xf8\x69\x08"), b"\x91fLaC\xff\xf8\x69\x08"),
    ("mp4a SequenceStart", one(A, SEQ, b"mp4a", ASC), b"\x90mp4a" + ASC),
    ("mp4a CodedFrames", one(A, CODED, b"mp4a", b"\x21\x00"), b"\x91mp4a\x21\x00"),
    ("ac-3 CodedFrames", one(A, CODED, b"ac-3", b"\x0b\x77\x01"), b"\x91ac-3\x0b\x77\x01"),
    ("ec-3 CodedFrames", one(A, CODED, b"ec-3", b"\x0b\x77\x02"), b"\x91ec-3\x0b\x77\x02"),
    (".mp3 CodedFrames", one(A, CODED, b".mp3", b"\xff\xfb\x90"), b"\x91.mp3\xff\xfb\x90"),
    ("audio OneTrack", ExMedia(kind=A, packet_type=CODED, multitrack=flv.MULTITRACK_ONE_TRACK,
                               tracks=(Track(fourcc=b"Opus", track_id=3, data=b"\xfc"),)),
     b"\x95\x01Opus\x03\xfc"),
    ("audio ManyTracks: two languages", ExMedia(
        kind=A, packet_type=CODED, multitrack=flv.MULTITRACK_MANY_TRACKS,
        tracks=(Track(fourcc=b"Opus", track_id=0, data=b"\xfc\x01"),
                Track(fourcc=b"Opus", track_id=1, data=b"\xfc\x02\x03"))),
     b"\x95\x11Opus\x00\x00\x00\x02\xfc\x01\x01\x00\x00\x03\xfc\x02\x03"),
    ("audio ManyTracksManyCodecs", ExMedia(
        kind=A, packet_type=SEQ, multitrack=flv.MULTITRACK_MANY_TRACKS_MANY_CODECS,
        tracks=(Track(fourcc=b"mp4a", track_id=0, data=ASC),
                Track(fourcc=b"Opus", track_id=1, data=OPUS_HEAD))),
     b"\x95\x20mp4a\x00\x00\x00\x02" + ASC + b"Opus\x01\x00\x00\x13" + OPUS_HEAD),
]
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("name", "message", "wire"), CASES, ids=IDS)
def test_case_table_parses_and_writes_byte_for_byte(
    name: str, message: ExMedia, wire: bytes
) -> None:
    assert ExMedia.parse(message.kind, wire) == message
    assert bytes(message) == wire
    assert is_ex_header(message.kind, wire)


@pytest.mark.parametrize(("name", "message", "wire"), CASES, ids=IDS)
def test_flv_describe_tag_agrees_with_the_first_track(
    name: str, message: ExMedia, wire: bytes
) -> None:
    info = flv.describe_tag(message.kind, wire)
    if message.command is not None:
        assert info.codec == 0
        return
    assert info.codec == int.from_bytes(message.tracks[0].fourcc, "big")
    assert info.sequence_header == (message.packet_type in (SEQ, TS_SEQ) if message.kind == V
                                    else message.packet_type == SEQ)


@pytest.mark.parametrize(("name", "message", "wire"), CASES, ids=IDS)
def test_every_prefix_is_refused_or_is_itself_a_whole_message(
    name: str, message: ExMedia, wire: bytes
) -> None:
    refused = 0
    for size in range(len(wire)):
        prefix = wire[:size]
        try:
            parsed = ExMedia.parse(message.kind, prefix)
        except RemoteProtocolError:
            refused += 1
            continue
        # A prefix that parses ends where a track's data may end: it writes back whole.
        assert bytes(parsed) == prefix
    assert refused >= 1  # at least the empty body


ERRORS: list[tuple[str, int, bytes, str]] = [
    ("empty", V, b"", "truncated Enhanced RTMP video"),
    ("legacy video", V, b"\x17\x00\x00\x00\x00", "IsExHeader clear"),
    ("legacy audio", A, b"\xaf\x01\x00", "SoundFormat 10"),
    ("FourCC cut", V, b"\x90hv", "FourCC needs 4 bytes"),
    ("reserved AvMultitrackType", V, b"\x96\x31hvc1\x00", "AvMultitrackType 3 is reserved"),
    ("Multitrack inside Multitrack", V, b"\x96\x06hvc1\x00", "packet type 6 inside Multitrack"),
    ("ModEx inside audio Multitrack", A, b"\x95\x07Opus\x00", "packet type 7 inside Multitrack"),
    ("sizeOfTrack past the end", V, b"\x96\x11av01\x00\x00\x00\x09abc", "track 0 data needs 9"),
    ("sizeOfTrack cut", A, b"\x95\x11Opus\x00\x00\x01", "sizeOfTrack needs 3"),
    ("ModEx data cut", V, b"\x97\x05\x00", "ModEx data needs 6"),
    ("too many ModEx", V, b"\x97" + b"\x00\x00\x07" * MAX_MOD_EX + b"\x00\x00\x01hvc1",
     f"more than MAX_MOD_EX ({MAX_MOD_EX})"),
    ("bytes after a command", V, b"\xd1\x00\x00", "1 bytes after the video command"),
    ("too many tracks", A, b"\x95\x11Opus" + b"\x00\x00\x00\x00" * (MAX_TRACKS + 1),
     f"more than MAX_TRACKS ({MAX_TRACKS})"),
]


@pytest.mark.parametrize(("name", "kind", "body", "message"), ERRORS,
                         ids=[e[0] for e in ERRORS])
def test_bad_bodies_are_remote_errors_that_say_what(
    name: str, kind: int, body: bytes, message: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExMedia.parse(kind, body)


def test_many_tracks_at_the_limit_parse() -> None:
    body = b"\x95\x11Opus" + b"".join(bytes((i,)) + b"\x00\x00\x00" for i in range(MAX_TRACKS))
    assert len(ExMedia.parse(A, body).tracks) == MAX_TRACKS


@pytest.mark.parametrize("build", [
    lambda: ExMedia(kind=18, packet_type=0, tracks=(Track(fourcc=b"hvc1"),)),
    lambda: ExMedia(kind=V, packet_type=7, tracks=(Track(fourcc=b"hvc1"),)),
    lambda: ExMedia(kind=V, packet_type=6, tracks=(Track(fourcc=b"hvc1"),)),
    lambda: ExMedia(kind=A, packet_type=1, frame_type=1, tracks=(Track(fourcc=b"Opus"),)),
    lambda: ExMedia(kind=V, packet_type=1),
    lambda: ExMedia(kind=V, packet_type=1, tracks=(Track(fourcc=b"hvc1", track_id=1),)),
    lambda: ExMedia(kind=V, packet_type=1, multitrack=1,
                    tracks=(Track(fourcc=b"hvc1"), Track(fourcc=b"av01", track_id=1))),
    lambda: ExMedia(kind=V, packet_type=1, frame_type=1, command=0),
    lambda: Track(fourcc=b"hvc"),
    lambda: Track(fourcc=b"hvc1", track_id=256),
    lambda: ModEx(mod_ex_type=0, data=b""),
    lambda: ModEx(mod_ex_type=16, data=b"x"),
])
def test_messages_that_cannot_be_written_are_local_errors(build: object) -> None:
    assert callable(build)
    with pytest.raises(LocalProtocolError):
        build()


# --------------------------------------------------------------------------- legacy form


@pytest.mark.parametrize(("kind", "ex", "legacy"), [
    (V, b"\x90avc1" + AVCC, b"\x17\x00\x00\x00\x00" + AVCC),
    (V, b"\x91avc1\x00\x00\x50\x00\x00\x00\x01\x65", b"\x17\x01\x00\x00\x50\x00\x00\x00\x01\x65"),
    (V, b"\xa3avc1\x00\x00\x00\x01\x41", b"\x27\x01\x00\x00\x00\x00\x00\x00\x01\x41"),
    (V, b"\x92avc1", b"\x17\x02\x00\x00\x00"),
    (A, b"\x90mp4a" + ASC, b"\xaf\x00" + ASC),
    (A, b"\x91mp4a\x21\x00", b"\xaf\x01\x21\x00"),
    (A, b"\x91.mp3\xff\xfb\x90", b"\x2f\xff\xfb\x90"),
    # Multitrack: the default track (0) is what a legacy client gets.
    (V, b"\x96\x21hvc1\x01\x00\x00\x01\xaaavc1\x00\x00\x00\x04\x00\x00\x00\x65",
     b"\x17\x01\x00\x00\x00\x65"),
])
def test_codecs_with_a_legacy_form_are_rewritten_into_it(
    kind: int, ex: bytes, legacy: bytes
) -> None:
    assert to_legacy(ExMedia.parse(kind, ex)) == legacy
    assert adapt(kind, ex, LEGACY) == legacy
    info = flv.describe_tag(kind, legacy)
    assert info.codec in (flv.VIDEO_AVC, flv.AUDIO_AAC, flv.AUDIO_MP3)


@pytest.mark.parametrize(("kind", "ex"), [
    (V, b"\x90hvc1" + HVCC), (V, b"\x91av01\x12\x00"), (V, b"\xa1vp09\x86"),
    (V, b"\x94avc1\x02\x00\x00"), (V, b"\xd1\x00"), (A, b"\x91Opus\xfc"),
    (A, b"\x91fLaC\xff\xf8"), (A, b"\x91ac-3\x0b\x77"), (A, b"\x91ec-3\x0b\x77"),
    (A, b"\x92mp4a"), (V, b"\x96\x11avc1\x01\x00\x00\x01\x00"),
])
def test_codecs_without_a_legacy_form_reach_no_legacy_client(kind: int, ex: bytes) -> None:
    assert adapt(kind, ex, LEGACY) is None


@pytest.mark.parametrize(("kind", "body"), [
    (V, b"\x17\x01\x00\x00\x00\x65"), (V, b"\x1c\x00\x00\x00\x00\x01"), (A, b"\xaf\x01\x21"),
    (A, b"\x2f\xff\xfb"), (flv.TAG_SCRIPT, amf0.encode_all("onMetaData", {})),
])
def test_legacy_tags_and_script_data_reach_every_client_unchanged(kind: int, body: bytes) -> None:
    for acceptance in (LEGACY, ANYTHING, Acceptance(frozenset({b"hvc1"}), frozenset(), False)):
        assert adapt(kind, body, acceptance) is body


HVC1_ONLY = Acceptance(frozenset({b"hvc1"}), frozenset({b"Opus"}), False)
AV01_MULTI = Acceptance(frozenset({b"av01"}), None, True)
MANY_CODECS = b"\x96\x21hvc1\x00\x00\x00\x02\x11\x22av01\x01\x00\x00\x01\x33"
MANY_TRACKS = b"\x96\x13hvc1\x00\x00\x00\x02\x11\x22\x01\x00\x00\x01\x33"


@pytest.mark.parametrize(("acceptance", "kind", "body", "out"), [
    (ANYTHING, V, MANY_CODECS, MANY_CODECS),
    # No Multitrack: the default track as a plain ExHeader message.
    (HVC1_ONLY, V, MANY_CODECS, b"\x91hvc1\x11\x22"),
    (HVC1_ONLY, V, MANY_TRACKS, b"\x93hvc1\x11\x22"),
    (HVC1_ONLY, V, b"\x96\x13hvc1\x01\x00\x00\x01\x33", None),  # track 1 only
    (HVC1_ONLY, V, b"\x91hvc1\x00\x00\x00\x65", b"\x91hvc1\x00\x00\x00\x65"),
    (HVC1_ONLY, V, b"\x91av01\x12", None),
    (HVC1_ONLY, A, b"\x91Opus\xfc", b"\x91Opus\xfc"),
    (HVC1_ONLY, A, b"\x91mp4a\x21", b"\xaf\x01\x21"),
    (HVC1_ONLY, A, b"\x95\x11Opus\x00\x00\x00\x01\xfc\x01\x00\x00\x01\xfd", b"\x91Opus\xfc"),
    # With Multitrack: the tracks it takes, in the same wrapper.
    (AV01_MULTI, V, MANY_CODECS, b"\x96\x21av01\x01\x00\x00\x01\x33"),
    (AV01_MULTI, V, MANY_TRACKS, None),
    (AV01_MULTI, A, b"\x95\x11Opus\x00\x00\x00\x01\xfc", b"\x95\x11Opus\x00\x00\x00\x01\xfc"),
    (AV01_MULTI, V, b"\xd1\x00", b"\xd1\x00"),
    (Acceptance(frozenset(), None, True), V, b"\xd1\x00", None),
    # What does not parse goes to nobody who needs it cut down.
    (HVC1_ONLY, V, b"\x96\x31hvc1\x00", None),
])
def test_each_kind_of_client_gets_the_tracks_it_takes(
    acceptance: Acceptance, kind: int, body: bytes, out: bytes | None
) -> None:
    assert adapt(kind, body, acceptance) == out


def test_dropped_codecs_name_what_a_legacy_viewer_misses() -> None:
    headers = [(V, b"\x90hvc1" + HVCC), (A, b"\xaf\x00" + ASC)]
    assert dropped_codecs(LEGACY, headers) == ["hvc1 video"]
    assert dropped_codecs(ANYTHING, headers) == []
    assert dropped_codecs(LEGACY, [(V, b"\x90avc1" + AVCC), (A, b"\x90Opus" + OPUS_HEAD)]) == [
        "Opus audio"
    ]


# --------------------------------------------------------------------------- connect

ALL_V2 = {
    "videoFourCcInfoMap": amf0.ECMAArray({"hvc1": 1.0, "av01": 5.0, "vp09": 2.0}),
    "audioFourCcInfoMap": {"Opus": 1.0, "*": 4.0},
    "capsEx": 3.0,
}


@pytest.mark.parametrize(("command_object", "video", "audio", "caps_ex", "acceptance"), [
    ({}, set(), set(), 0, LEGACY),
    ({"fourCcList": ["hvc1", "av01", "Opus"]}, {"hvc1", "av01", "Opus"},
     {"hvc1", "av01", "Opus"}, 0,
     Acceptance(frozenset({b"hvc1", b"av01", b"Opus"}), frozenset({b"hvc1", b"av01", b"Opus"}),
                False)),
    ({"fourCcList": ["*"], "capsEx": 7.0}, {"*"}, {"*"}, 7, ANYTHING),
    # CanEncode alone is not taking; "*" overrides the rest of its map.
    (ALL_V2, {"hvc1", "av01"}, {"*"}, 3, Acceptance(frozenset({b"hvc1", b"av01"}), None, True)),
    ({"videoFourCcInfoMap": {"*": 2.0, "hvc1": 1.0}}, set(), set(), 0,
     Acceptance(frozenset(), frozenset(), False)),
    # Junk is ignored, not fatal: wrong types, non-FourCC strings, odd flags.
    ({"fourCcList": "hvc1", "capsEx": True}, set(), set(), 0, LEGACY),
    ({"fourCcList": ["toolong", 5, "hvc1", ""], "capsEx": -1.0}, {"hvc1"}, {"hvc1"}, 0,
     Acceptance(frozenset({b"hvc1"}), frozenset({b"hvc1"}), False)),
    ({"videoFourCcInfoMap": {"hvc1": "yes", "av01": 1.5}, "capsEx": 2.5}, set(), set(), 0,
     Acceptance(frozenset(), frozenset(), False)),
])
def test_connect_announcements_are_read(
    command_object: dict[str, object], video: set[str], audio: set[str], caps_ex: int,
    acceptance: Acceptance,
) -> None:
    caps = ClientCapabilities.from_connect(command_object)
    assert (set(caps.video), set(caps.audio), caps.caps_ex) == (video, audio, caps_ex)
    assert caps.acceptance == acceptance
    assert caps.announced == (acceptance is not LEGACY)


def test_connect_lists_are_read_up_to_their_limit() -> None:
    names = [f"c{i:03d}" for i in range(MAX_ANNOUNCED_FOURCCS + 10)]
    caps = ClientCapabilities.from_connect({"fourCcList": names})
    assert caps.video == frozenset(names[:MAX_ANNOUNCED_FOURCCS])
    mapped = ClientCapabilities.from_connect(
        {"audioFourCcInfoMap": dict.fromkeys(names, 1.0)}
    )
    assert len(mapped.audio) == MAX_ANNOUNCED_FOURCCS


def test_reconnect_and_multitrack_flags() -> None:
    caps = ClientCapabilities.from_connect({"fourCcList": ["*"], "capsEx": 1.0})
    assert caps.reconnect and not caps.multitrack
    assert not ClientCapabilities.from_connect({}).reconnect


def test_server_capabilities_state_every_forwarded_codec_and_encode_in_amf0() -> None:
    caps = server_capabilities()
    decoded = amf0.decode_all(amf0.encode(caps))[0]
    assert decoded == caps
    read_back = ClientCapabilities.from_connect(caps)  # the same vocabulary both ways
    assert {"hvc1", "av01", "vp09", "avc1"} <= read_back.video
    assert {"Opus", "fLaC", "mp4a", "ac-3", "ec-3", ".mp3"} <= read_back.audio
    assert caps["capsEx"] == float(SERVER_CAPS_EX)


# --------------------------------------------------------------------------- arbitrary bytes

SOME_CLIENTS = [LEGACY, ANYTHING, HVC1_ONLY, AV01_MULTI]


@given(kind=st.sampled_from([V, A]), body=st.binary(max_size=200))
@settings(max_examples=400)
def test_arbitrary_bodies_are_refused_or_read_into_a_message_that_writes_back(
    kind: int, body: bytes
) -> None:
    for acceptance in SOME_CLIENTS:
        out = adapt(kind, body, acceptance)
        assert out is None or isinstance(out, bytes)
    try:
        message = ExMedia.parse(kind, body)
    except RemoteProtocolError:
        return
    assert ExMedia.parse(kind, bytes(message)) == message


@given(kind=st.sampled_from([V, A]), prefix=st.sampled_from([c[2] for c in CASES]),
       tail=st.binary(max_size=40))
@settings(max_examples=300)
def test_real_messages_with_anything_after_them_are_refused_or_read(
    kind: int, prefix: bytes, tail: bytes
) -> None:
    try:
        message = ExMedia.parse(kind, prefix + tail)
    except RemoteProtocolError:
        return
    assert ExMedia.parse(kind, bytes(message)) == message
