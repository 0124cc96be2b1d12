"""HLS playlist model and segment cutter: exact text, invariants, read-back."""

from __future__ import annotations

import contextlib

import m3u8
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec.errors import LocalProtocolError, RemoteProtocolError
from rtmpd.codec.hls import (
    MAX_TIMESTAMP_JUMP_MS,
    Cut,
    MediaPlaylist,
    SegmentCutter,
)

# --------------------------------------------------------------------------- playlist


def test_render_exact_text_with_window_and_discontinuity() -> None:
    """Two slid out (one of them after a discontinuity): sequences move, text is exact."""
    playlist = MediaPlaylist(2, 3)
    assert playlist.add_segment("0.ts", 2.0) == []
    assert playlist.add_segment("1.ts", 2.002, discontinuity=True) == []
    assert playlist.add_segment("2.ts", 1.96) == []
    assert playlist.add_segment("3.ts", 2.4) == ["0.ts"]
    assert playlist.add_segment("4.ts", 2.0, discontinuity=True) == ["1.ts"]
    playlist.end()
    assert playlist.render() == (
        "#EXTM3U\n"
        "#EXT-X-VERSION:3\n"
        "#EXT-X-TARGETDURATION:2\n"
        "#EXT-X-MEDIA-SEQUENCE:2\n"
        "#EXT-X-DISCONTINUITY-SEQUENCE:1\n"
        "#EXTINF:1.960,\n"
        "2.ts\n"
        "#EXTINF:2.400,\n"
        "3.ts\n"
        "#EXT-X-DISCONTINUITY\n"
        "#EXTINF:2.000,\n"
        "4.ts\n"
        "#EXT-X-ENDLIST\n"
    )


@pytest.mark.parametrize(
    ("duration_s", "target"),
    [
        (2.499, 2),
        (2.5, 3),  # half rounds up (RFC 8216 4.3.3.1)
        (2.501, 3),
        (0.4, 1),  # the starting target is kept
        (10.0, 10),
    ],
)
def test_target_duration_covers_rounded_extinf(duration_s: float, target: int) -> None:
    playlist = MediaPlaylist(1, 5)
    playlist.add_segment("a.ts", duration_s)
    assert playlist.target_duration_s == target


def test_target_duration_never_decreases_after_long_segment_slides_out() -> None:
    playlist = MediaPlaylist(2, 1)
    playlist.add_segment("a.ts", 7.6)
    playlist.add_segment("b.ts", 2.0)
    assert playlist.segments[0].uri == "b.ts"
    assert playlist.target_duration_s == 8


def test_unlimited_window_keeps_every_segment() -> None:
    playlist = MediaPlaylist(2, None)
    for i in range(50):
        assert playlist.add_segment(f"{i}.ts", 2.0) == []
    assert len(playlist.segments) == 50
    assert playlist.media_sequence == 0


@pytest.mark.parametrize("uri", ["", "#x.ts", "a\nb.ts", " a.ts", "a.ts\r", "x" * 1025, "a\x00.ts"])
def test_uri_that_is_not_one_playlist_line_is_refused(uri: str) -> None:
    with pytest.raises(LocalProtocolError):
        MediaPlaylist(2, 3).add_segment(uri, 2.0)


def test_add_after_end_and_bad_arguments_are_refused() -> None:
    playlist = MediaPlaylist(2, 3)
    playlist.end()
    with pytest.raises(LocalProtocolError, match="after the playlist ended"):
        playlist.add_segment("a.ts", 2.0)
    with pytest.raises(LocalProtocolError):
        MediaPlaylist(0, 3)
    with pytest.raises(LocalProtocolError):
        MediaPlaylist(2, 0)
    with pytest.raises(LocalProtocolError):
        MediaPlaylist(2, 3).add_segment("a.ts", -1.0)


def test_parse_recovers_state_and_trims_to_window_on_next_add() -> None:
    original = MediaPlaylist(3, None)
    for i in range(6):
        original.add_segment(f"s{i}.ts", 2.5 + i / 1000, discontinuity=(i == 1))
    text = original.render()
    recovered = MediaPlaylist.parse(text, window=4)
    assert recovered.render() == text
    assert recovered.add_segment("s6.ts", 2.0) == ["s0.ts", "s1.ts", "s2.ts"]
    assert recovered.media_sequence == 3
    assert recovered.discontinuity_sequence == 1


def test_parse_keeps_endlist() -> None:
    playlist = MediaPlaylist(2, 3)
    playlist.add_segment("a.ts", 2.0)
    playlist.end()
    parsed = MediaPlaylist.parse(playlist.render())
    assert parsed.ended
    assert parsed.render() == playlist.render()


def test_fmp4_segments_render_ext_x_map_where_the_map_changes_and_version_7() -> None:
    """An fMP4 republish continues the playlist with its own init segment."""
    playlist = MediaPlaylist(2, 3)
    playlist.add_segment("0.m4s", 2.0, map_uri="init.mp4")
    playlist.add_segment("1.m4s", 2.0, map_uri="init.mp4")
    slid = playlist.add("2.m4s", 1.5, True, map_uri="init-2.mp4")
    assert slid == []
    slid = playlist.add("3.m4s", 2.0, map_uri="init-2.mp4")
    assert [(s.uri, s.map_uri) for s in slid] == [("0.m4s", "init.mp4")]
    text = playlist.render()
    assert text == (
        "#EXTM3U\n"
        "#EXT-X-VERSION:7\n"
        "#EXT-X-TARGETDURATION:2\n"
        "#EXT-X-MEDIA-SEQUENCE:1\n"
        "#EXT-X-DISCONTINUITY-SEQUENCE:0\n"
        '#EXT-X-MAP:URI="init.mp4"\n'
        "#EXTINF:2.000,\n"
        "1.m4s\n"
        "#EXT-X-DISCONTINUITY\n"
        '#EXT-X-MAP:URI="init-2.mp4"\n'
        "#EXTINF:1.500,\n"
        "2.m4s\n"
        "#EXTINF:2.000,\n"
        "3.m4s\n"
    )
    parsed = MediaPlaylist.parse(text, window=3)
    assert [s.map_uri for s in parsed.segments] == ["init.mp4", "init-2.mp4", "init-2.mp4"]
    assert parsed.render() == text
    # The m3u8 package reads the same maps.
    loaded = m3u8.loads(text)
    assert [seg.init_section.uri for seg in loaded.segments] == [
        "init.mp4", "init-2.mp4", "init-2.mp4"
    ]


def test_a_new_playlist_can_go_on_numbering_from_an_old_one() -> None:
    playlist = MediaPlaylist(2, 3, media_sequence=17)
    playlist.add_segment("17.m4s", 2.0, map_uri="init.mp4")
    assert playlist.media_sequence == 17 and playlist.next_sequence == 18
    with pytest.raises(LocalProtocolError):
        MediaPlaylist(2, 3, media_sequence=-1)


@pytest.mark.parametrize("uri", ['in"it.mp4', "", "#init.mp4", "a\nb"])
def test_a_map_uri_that_is_not_a_quoted_string_is_refused(uri: str) -> None:
    with pytest.raises(LocalProtocolError):
        MediaPlaylist(2, 3).add_segment("0.m4s", 2.0, map_uri=uri)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:BYTERANGE=10\n", "without URI"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=init.mp4\n", "not quoted"),
        ('#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=""\n', "segment URI of 0"),
    ],
)
def test_parse_rejects_malformed_maps(text: str, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        MediaPlaylist.parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "#EXTM3U"),
        ("#EXT-X-TARGETDURATION:2\n", "#EXTM3U"),
        ("#EXTM3U\n#EXTINF:2.0,\na.ts\n", "no #EXT-X-TARGETDURATION"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\na.ts\n", "without #EXTINF"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n", "no segment URI"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:x\n", "decimal-integer"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:0\n", "outside"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:abc,\na.ts\n", "not a number"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:-1,\na.ts\n", "outside"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:nan,\na.ts\n", "outside"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:-3\n", "decimal-integer"),
        (
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-ENDLIST\n#EXTINF:2,\na.ts\n",
            "after #EXT-X-ENDLIST",
        ),
    ],
)
def test_parse_rejects_malformed_playlists(text: str, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        MediaPlaylist.parse(text)


@given(st.text(max_size=300))
def test_parse_of_arbitrary_text_returns_or_raises_remote_error(text: str) -> None:
    with contextlib.suppress(RemoteProtocolError):
        MediaPlaylist.parse("#EXTM3U\n" + text)


segment_specs = st.lists(
    st.tuples(st.integers(min_value=0, max_value=20_000), st.booleans()),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200)
@given(
    specs=segment_specs,
    window=st.integers(min_value=1, max_value=6),
    target=st.integers(min_value=1, max_value=4),
)
def test_playlist_invariants(specs: list[tuple[int, bool]], window: int, target: int) -> None:
    """Window respected, sequences right, target >= every rounded EXTINF ever listed."""
    playlist = MediaPlaylist(target, window)
    added: list[tuple[str, int, bool]] = []
    removed_all: list[str] = []
    previous_sequence = -1
    previous_target = target
    for i, (duration_ms, discontinuity) in enumerate(specs):
        uri = f"seg{i}.ts"
        removed = playlist.add_segment(uri, duration_ms / 1000, discontinuity)
        added.append((uri, duration_ms, discontinuity))
        removed_all += removed
        listed = playlist.segments
        assert len(listed) == min(window, len(added))
        assert [s.uri for s in listed] == [a[0] for a in added[len(removed_all) :]]
        assert removed_all == [a[0] for a in added[: len(removed_all)]]
        assert playlist.media_sequence == len(removed_all)
        if removed:
            assert playlist.media_sequence > previous_sequence
        previous_sequence = playlist.media_sequence
        gone = added[: len(removed_all)]
        assert playlist.discontinuity_sequence == sum(1 for a in gone if a[2])
        assert playlist.target_duration_s >= previous_target
        previous_target = playlist.target_duration_s
        assert all(playlist.target_duration_s >= (a[1] + 500) // 1000 for a in added)

        parsed = m3u8.loads(playlist.render())
        assert parsed.media_sequence == playlist.media_sequence
        assert parsed.target_duration == playlist.target_duration_s
        assert parsed.discontinuity_sequence == playlist.discontinuity_sequence
        assert [s.uri for s in parsed.segments] == [s.uri for s in listed]
        assert [round(s.duration * 1000) for s in parsed.segments] == [
            s.duration_ms for s in listed
        ]
        assert [bool(s.discontinuity) for s in parsed.segments] == [s.discontinuity for s in listed]
        assert MediaPlaylist.parse(playlist.render(), window=window).render() == playlist.render()


# --------------------------------------------------------------------------- cutter


def _feed(cutter: SegmentCutter, frames: list[tuple[int, bool, bool]]) -> list[tuple[int, Cut]]:
    cuts = []
    for index, (dts_ms, keyframe, is_video) in enumerate(frames):
        cut = cutter.push(dts_ms=dts_ms, keyframe=keyframe, is_video=is_video)
        if cut is not None:
            cuts.append((index, cut))
    return cuts


def _av_frames(seconds: int, gop_ms: int) -> list[tuple[int, bool, bool]]:
    """25 fps video with a keyframe every gop_ms, AAC (~23 ms) interleaved."""
    frames = [(t, t % gop_ms == 0, True) for t in range(0, seconds * 1000, 40)]
    audio = [(i * 1024 * 1000 // 44100, True, False) for i in range(seconds * 44100 // 1024)]
    return sorted(frames + audio, key=lambda f: (f[0], not f[2]))


def test_video_cuts_at_keyframes_once_fragment_elapsed() -> None:
    frames = _av_frames(7, 1200)
    cutter = SegmentCutter(has_video=True, fragment_ms=2000)
    cuts = _feed(cutter, frames)
    starts = [frames[i][0] for i, _ in cuts]
    assert starts == [2400, 4800]
    assert [c.duration_ms for _, c in cuts] == [2400, 2400]
    assert not any(c.discontinuity for _, c in cuts)
    assert all(frames[i][1] and frames[i][2] for i, _ in cuts)
    assert cutter.finish() == 6960 + 40 - 4800


def test_audio_only_cuts_on_time() -> None:
    frames = [(i * 23, True, False) for i in range(300)]
    cutter = SegmentCutter(has_video=False, fragment_ms=2000)
    cuts = _feed(cutter, frames)
    assert [frames[i][0] for i, _ in cuts] == [2001, 4002, 6003]
    assert [c.duration_ms for _, c in cuts] == [2001, 2001, 2001]


def test_audio_frames_never_cut_a_video_stream() -> None:
    cutter = SegmentCutter(has_video=True, fragment_ms=2000)
    cuts = _feed(cutter, [(0, True, True)] + [(t, True, False) for t in range(0, 9000, 23)])
    assert cuts == []


@pytest.mark.parametrize(
    "jump_to",
    [1000, 4000 + MAX_TIMESTAMP_JUMP_MS + 1],
    ids=["backwards", "forward-beyond-limit"],
)
def test_timestamp_jump_cuts_with_discontinuity(jump_to: int) -> None:
    cutter = SegmentCutter(has_video=True, fragment_ms=2000)
    frames = [(t, t == 2000, True) for t in range(2000, 4040, 40)]
    frames.append((jump_to, False, True))
    frames.append((jump_to + 40, False, True))
    cuts = _feed(cutter, frames)
    assert len(cuts) == 1
    index, cut = cuts[0]
    assert frames[index][0] == jump_to
    assert cut == Cut(duration_ms=2040, discontinuity=True)
    assert cutter.segment_start_ms == jump_to


def test_forward_gap_within_limit_is_not_a_discontinuity() -> None:
    cutter = SegmentCutter(has_video=True, fragment_ms=2000)
    cuts = _feed(cutter, [(0, True, True), (MAX_TIMESTAMP_JUMP_MS, True, True)])
    assert cuts == [(1, Cut(duration_ms=MAX_TIMESTAMP_JUMP_MS))]


def test_finish_without_frames_is_none() -> None:
    assert SegmentCutter(has_video=False).finish() is None
    with pytest.raises(LocalProtocolError):
        SegmentCutter(has_video=True, fragment_ms=0)


@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=200), st.booleans(), st.booleans()),
        max_size=200,
    )
)
def test_cut_durations_add_up_to_the_timeline(steps: list[tuple[int, bool, bool]]) -> None:
    """Without jumps, segment durations sum to the span between the cut points."""
    cutter = SegmentCutter(has_video=True, fragment_ms=500)
    t = 0
    cut_points = [0]
    total = 0
    assert cutter.push(dts_ms=0, keyframe=True, is_video=True) is None
    for step, keyframe, is_video in steps:
        t += step
        cut = cutter.push(dts_ms=t, keyframe=keyframe, is_video=is_video)
        if cut is not None:
            assert not cut.discontinuity
            assert keyframe and is_video
            assert cut.duration_ms >= 500
            total += cut.duration_ms
            cut_points.append(t)
    assert total == cut_points[-1]
